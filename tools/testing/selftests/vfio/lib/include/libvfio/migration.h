/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Helpers for tests of the VFIO migration v2 uAPI: open any VFIO device
 * (a PCI function by BDF or an mdev by UUID) through the cdev/iommufd or
 * the group/container path, and thin wrappers around the migration
 * ioctls that return 0 or -errno instead of asserting, so that tests can
 * check the errors themselves.
 */
#ifndef SELFTESTS_VFIO_LIB_INCLUDE_LIBVFIO_MIGRATION_H
#define SELFTESTS_VFIO_LIB_INCLUDE_LIBVFIO_MIGRATION_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <linux/iommufd.h>
#include <linux/types.h>
#include <linux/vfio.h>

struct vfio_mig_device {
	/* PCI BDF or mdev UUID, as given on the command line */
	char name[64];
	/* Name of the driver the device is bound to, e.g. "mtty" */
	char driver[64];
	/* /sys/bus/pci/devices/NAME or /sys/bus/mdev/devices/NAME */
	char sysfs[PATH_MAX];
	/* Opened through the group/container path instead of the cdev */
	int group;
	int fd;
	int iommufd;
	int container_fd;
	int group_fd;
	u32 ioas_id;
};

static inline int vfio_mig_errno(int ret)
{
	return ret < 0 ? -errno : ret;
}

/* Find @name in sysfs and the driver it is bound to. */
static inline int vfio_mig_device_lookup(struct vfio_mig_device *dev,
					 const char *name)
{
	static const char * const buses[] = { "pci", "mdev" };
	char link[PATH_MAX], path[PATH_MAX + 16];
	struct stat st;
	ssize_t len;
	int i;

	memset(dev, 0, sizeof(*dev));
	dev->fd = -1;
	dev->iommufd = -1;
	dev->container_fd = -1;
	dev->group_fd = -1;
	snprintf(dev->name, sizeof(dev->name), "%s", name);

	for (i = 0; i < 2; i++) {
		snprintf(dev->sysfs, sizeof(dev->sysfs),
			 "/sys/bus/%s/devices/%s", buses[i], name);
		if (!stat(dev->sysfs, &st))
			break;
	}
	if (i == 2)
		return -ENODEV;

	snprintf(path, sizeof(path), "%s/driver", dev->sysfs);
	len = readlink(path, link, sizeof(link) - 1);
	if (len < 0)
		return -errno;
	link[len] = '\0';
	snprintf(dev->driver, sizeof(dev->driver), "%.63s",
		 strrchr(link, '/') ? strrchr(link, '/') + 1 : link);
	return 0;
}

static inline int vfio_mig_cdev_open(struct vfio_mig_device *dev)
{
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind) };
	struct vfio_device_attach_iommufd_pt attach = {
		.argsz = sizeof(attach),
	};
	struct iommu_ioas_alloc alloc = { .size = sizeof(alloc) };
	char path[PATH_MAX + 16];
	struct dirent *entry;
	DIR *dir;

	snprintf(path, sizeof(path), "%s/vfio-dev", dev->sysfs);
	dir = opendir(path);
	if (!dir)
		return -errno;
	while ((entry = readdir(dir))) {
		if (!strncmp(entry->d_name, "vfio", 4))
			break;
	}
	if (!entry) {
		closedir(dir);
		return -ENOENT;
	}
	snprintf(path, sizeof(path), "/dev/vfio/devices/%s", entry->d_name);
	closedir(dir);

	dev->fd = open(path, O_RDWR);
	if (dev->fd < 0)
		return -errno;
	dev->iommufd = open("/dev/iommu", O_RDWR);
	if (dev->iommufd < 0)
		return -errno;
	bind.iommufd = dev->iommufd;
	if (ioctl(dev->fd, VFIO_DEVICE_BIND_IOMMUFD, &bind))
		return -errno;
	if (ioctl(dev->iommufd, IOMMU_IOAS_ALLOC, &alloc))
		return -errno;
	dev->ioas_id = alloc.out_ioas_id;
	attach.pt_id = dev->ioas_id;
	if (ioctl(dev->fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach))
		return -errno;
	return 0;
}

static inline int vfio_mig_group_open(struct vfio_mig_device *dev)
{
	struct vfio_group_status status = { .argsz = sizeof(status) };
	char link[PATH_MAX], path[PATH_MAX + 16];
	ssize_t len;

	snprintf(path, sizeof(path), "%s/iommu_group", dev->sysfs);
	len = readlink(path, link, sizeof(link) - 1);
	if (len < 0)
		return -errno;
	link[len] = '\0';
	snprintf(path, sizeof(path), "/dev/vfio/%s",
		 strrchr(link, '/') ? strrchr(link, '/') + 1 : link);

	dev->container_fd = open("/dev/vfio/vfio", O_RDWR);
	if (dev->container_fd < 0)
		return -errno;
	if (ioctl(dev->container_fd, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) <= 0)
		return -EOPNOTSUPP;
	dev->group_fd = open(path, O_RDWR);
	if (dev->group_fd < 0)
		return -errno;
	if (ioctl(dev->group_fd, VFIO_GROUP_GET_STATUS, &status))
		return -errno;
	if (!(status.flags & VFIO_GROUP_FLAGS_VIABLE))
		return -EBUSY;
	if (ioctl(dev->group_fd, VFIO_GROUP_SET_CONTAINER, &dev->container_fd))
		return -errno;
	if (ioctl(dev->container_fd, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU))
		return -errno;
	dev->fd = ioctl(dev->group_fd, VFIO_GROUP_GET_DEVICE_FD, dev->name);
	if (dev->fd < 0)
		return -errno;
	return 0;
}

/* Close the device and everything opened for it; 0 or the first -errno. */
static inline int vfio_mig_device_close(struct vfio_mig_device *dev)
{
	int *fds[] = { &dev->fd, &dev->group_fd, &dev->container_fd,
		       &dev->iommufd };
	int i, ret = 0;

	for (i = 0; i < 4; i++) {
		if (*fds[i] >= 0 && close(*fds[i]) && !ret)
			ret = -errno;
		*fds[i] = -1;
	}
	return ret;
}

/*
 * Open the device looked up before, through the group/container path
 * (VFIO type1v2) when @group is set, else through its cdev bound to a new
 * iommufd with an IOAS attached. Returns 0 or -errno, with nothing left
 * open on failure.
 */
static inline int vfio_mig_device_open(struct vfio_mig_device *dev, int group)
{
	int ret;

	dev->group = group;
	ret = group ? vfio_mig_group_open(dev) : vfio_mig_cdev_open(dev);
	if (ret)
		vfio_mig_device_close(dev);
	return ret;
}

/* VFIO_DEVICE_FEATURE with @size bytes of @data (in and out). */
static inline int vfio_mig_feature(int fd, u32 flags, void *data, size_t size)
{
	u64 buf[8] = {};
	struct vfio_device_feature *feature = (void *)buf;
	int ret;

	if (size > sizeof(buf) - sizeof(*feature))
		return -E2BIG;
	feature->argsz = sizeof(*feature) + size;
	feature->flags = flags;
	if (size)
		memcpy(feature->data, data, size);
	ret = vfio_mig_errno(ioctl(fd, VFIO_DEVICE_FEATURE, feature));
	if (!ret && size)
		memcpy(data, feature->data, size);
	return ret;
}

static inline int vfio_mig_get_flags(int fd, u64 *flags)
{
	struct vfio_device_feature_migration mig = {};
	int ret;

	ret = vfio_mig_feature(fd, VFIO_DEVICE_FEATURE_GET |
			       VFIO_DEVICE_FEATURE_MIGRATION, &mig, sizeof(mig));
	*flags = mig.flags;
	return ret;
}

static inline int vfio_mig_get_state(int fd, u32 *state)
{
	struct vfio_device_feature_mig_state mig = { .data_fd = -1 };
	int ret;

	ret = vfio_mig_feature(fd, VFIO_DEVICE_FEATURE_GET |
			       VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
			       &mig, sizeof(mig));
	*state = ret ? VFIO_DEVICE_STATE_ERROR : mig.device_state;
	return ret;
}

/*
 * Request @state. Returns 0 or -errno; *data_fd (if not NULL) gets the
 * data_fd the kernel returned, -1 when none. On failure the kernel reports
 * data_fd -1 too, but only copies it out on some paths; -1 is stored then.
 */
static inline int vfio_mig_set_state(int fd, u32 state, int *data_fd)
{
	u64 buf[2] = {};
	struct vfio_device_feature *feature = (void *)buf;
	struct vfio_device_feature_mig_state *mig = (void *)feature->data;
	int ret;

	feature->argsz = sizeof(*feature) + sizeof(*mig);
	feature->flags = VFIO_DEVICE_FEATURE_SET |
			 VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE;
	mig->device_state = state;
	mig->data_fd = -2;
	ret = vfio_mig_errno(ioctl(fd, VFIO_DEVICE_FEATURE, feature));
	if (data_fd)
		*data_fd = ret ? -1 : mig->data_fd;
	return ret;
}

static inline int vfio_mig_get_data_size(int fd, u64 *size)
{
	struct vfio_device_feature_mig_data_size ds = {};
	int ret;

	ret = vfio_mig_feature(fd, VFIO_DEVICE_FEATURE_GET |
			       VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, &ds, sizeof(ds));
	*size = ds.stop_copy_length;
	return ret;
}

static inline int vfio_mig_precopy_info(int data_fd, struct vfio_precopy_info *info)
{
	info->argsz = sizeof(*info);
	return vfio_mig_errno(ioctl(data_fd, VFIO_MIG_GET_PRECOPY_INFO, info));
}

/* VFIO_DEVICE_RESET, retried while the device is busy (-EAGAIN). */
static inline int vfio_mig_reset(int fd)
{
	int retries = 50, ret;

	do {
		ret = vfio_mig_errno(ioctl(fd, VFIO_DEVICE_RESET));
		if (ret == -EAGAIN)
			usleep(10000);
	} while (ret == -EAGAIN && retries-- > 0);
	return ret;
}

static inline const char *vfio_mig_state_name(u32 state)
{
	static const char * const names[] = {
		[VFIO_DEVICE_STATE_ERROR] = "ERROR",
		[VFIO_DEVICE_STATE_STOP] = "STOP",
		[VFIO_DEVICE_STATE_RUNNING] = "RUNNING",
		[VFIO_DEVICE_STATE_STOP_COPY] = "STOP_COPY",
		[VFIO_DEVICE_STATE_RESUMING] = "RESUMING",
		[VFIO_DEVICE_STATE_RUNNING_P2P] = "RUNNING_P2P",
		[VFIO_DEVICE_STATE_PRE_COPY] = "PRE_COPY",
		[VFIO_DEVICE_STATE_PRE_COPY_P2P] = "PRE_COPY_P2P",
	};

	return state < VFIO_DEVICE_STATE_NR ? names[state] : "invalid";
}

#endif /* SELFTESTS_VFIO_LIB_INCLUDE_LIBVFIO_MIGRATION_H */
