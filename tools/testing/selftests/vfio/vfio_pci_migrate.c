// SPDX-License-Identifier: GPL-2.0-only
/*
 * vfio_pci_migrate: migrate one ivshmem-vfio-pci device to another through
 * the VFIO migration v2 uAPI, the way QEMU drives it, and show each step.
 *
 *   vfio_pci_migrate [-s SEED] [-r ROUNDS] SOURCE_BDF DESTINATION_BDF
 *
 * Fills the source's BAR2 with a seeded pattern (through mmap) and its BAR0
 * state registers, then: source RUNNING -> PRE_COPY, destination
 * RUNNING -> STOP -> RESUMING; streams the pre-copy data while printing the
 * precopy information; source -> STOP_COPY, streams the rest; source -> STOP,
 * destination -> STOP -> RUNNING; compares every byte of BAR2 and the
 * registers. Exits 0 only if the destination is identical.
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <libvfio/migration.h>

#define CHUNK (1 << 20)
#define INTRMASK 0
#define INTRSTATUS 4

struct dev {
	struct vfio_mig_device mig;
	struct vfio_region_info bar0, bar2;
	unsigned char *mem;
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what, int err)
{
	fprintf(stderr, "vfio_pci_migrate: %s: %s\n", what, strerror(err));
	exit(1);
}

static void region(int fd, unsigned int index, struct vfio_region_info *info)
{
	memset(info, 0, sizeof(*info));
	info->argsz = sizeof(*info);
	info->index = index;
	if (ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, info))
		die("VFIO_DEVICE_GET_REGION_INFO", errno);
}

static void open_dev(struct dev *d, const char *bdf)
{
	int ret = vfio_mig_device_lookup(&d->mig, bdf);

	if (!ret)
		ret = vfio_mig_device_open(&d->mig, 0);
	if (ret)
		die(bdf, -ret);
	region(d->mig.fd, VFIO_PCI_BAR0_REGION_INDEX, &d->bar0);
	region(d->mig.fd, VFIO_PCI_BAR2_REGION_INDEX, &d->bar2);
	d->mem = mmap(NULL, d->bar2.size, PROT_READ | PROT_WRITE, MAP_SHARED,
		      d->mig.fd, d->bar2.offset);
	if (d->mem == MAP_FAILED)
		die("mmap BAR2", errno);
}

static u32 reg_read(struct dev *d, unsigned int off)
{
	u32 v;

	if (pread(d->mig.fd, &v, 4, d->bar0.offset + off) != 4)
		die("read BAR0", errno);
	return v;
}

static void reg_write(struct dev *d, unsigned int off, u32 v)
{
	if (pwrite(d->mig.fd, &v, 4, d->bar0.offset + off) != 4)
		die("write BAR0", errno);
}

static int set_state(struct dev *d, const char *who, u32 to, int *data_fd)
{
	u32 from = 0;
	int ret;

	vfio_mig_get_state(d->mig.fd, &from);
	ret = vfio_mig_set_state(d->mig.fd, to, data_fd);
	printf("%s: %s -> %s%s%s\n", who, vfio_mig_state_name(from),
	       vfio_mig_state_name(to), ret ? ": " : "",
	       ret ? strerror(-ret) : "");
	if (ret)
		exit(1);
	return ret;
}

/*
 * DMA dirty logging over the first 1 GiB of IOVA, as QEMU asks it of devices when the
 * IOMMU cannot track: START, REPORT (returns the number of dirty pages), STOP.
 */
#define LOG_IOVA_LEN (1ULL << 30)

static int dma_log(struct dev *d, u32 feature, u64 *dirty_pages)
{
	static u64 bitmap[LOG_IOVA_LEN / 4096 / 64];
	struct vfio_device_feature_dma_logging_range range = { 0, LOG_IOVA_LEN };
	struct vfio_device_feature_dma_logging_control ctl = {
		.page_size = 4096, .num_ranges = 1, .ranges = (uintptr_t)&range,
	};
	struct vfio_device_feature_dma_logging_report rep = {
		.iova = 0, .length = LOG_IOVA_LEN, .page_size = 4096,
		.bitmap = (uintptr_t)bitmap,
	};
	size_t i;
	int ret;

	switch (feature) {
	case VFIO_DEVICE_FEATURE_DMA_LOGGING_START:
		return vfio_mig_feature(d->mig.fd, VFIO_DEVICE_FEATURE_SET | feature,
					&ctl, sizeof(ctl));
	case VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT:
		memset(bitmap, 0, sizeof(bitmap));
		ret = vfio_mig_feature(d->mig.fd, VFIO_DEVICE_FEATURE_GET | feature,
				       &rep, sizeof(rep));
		*dirty_pages = 0;
		for (i = 0; !ret && i < sizeof(bitmap) / sizeof(bitmap[0]); i++)
			*dirty_pages += __builtin_popcountll(bitmap[i]);
		return ret;
	default:
		return vfio_mig_feature(d->mig.fd, VFIO_DEVICE_FEATURE_SET | feature, NULL, 0);
	}
}

/* Copy what the saving fd has now to the resuming fd; return bytes moved. */
static long long pump(int save, int resume, char *buf, int precopy)
{
	long long total = 0;
	ssize_t n, w, off;

	for (;;) {
		n = read(save, buf, CHUNK);
		if (n < 0 && errno == ENOMSG && precopy)
			return total;
		if (n < 0)
			die("read data_fd", errno);
		if (n == 0)
			return total;
		for (off = 0; off < n; off += w) {
			w = write(resume, buf + off, n - off);
			if (w < 0)
				die("write data_fd", errno);
		}
		total += n;
	}
}

int main(int argc, char **argv)
{
	struct vfio_precopy_info info = { .argsz = sizeof(info) };
	int opt, save_fd = -1, resume_fd = -1, bad = 0, ret;
	u64 dma_dirty = 0;
	long long pre = 0, stop, initial0;
	unsigned int seed = 1, rounds = 4, r, rng;
	u64 flags, size;
	struct dev a, b;
	double t0, t;
	u32 x, mask, status;
	char *buf;
	size_t i;

	while ((opt = getopt(argc, argv, "s:r:")) != -1) {
		if (opt == 's')
			seed = strtoul(optarg, NULL, 0);
		else
			rounds = strtoul(optarg, NULL, 0);
	}
	if (argc - optind != 2) {
		fprintf(stderr, "usage: %s [-s SEED] [-r ROUNDS] SOURCE_BDF DESTINATION_BDF\n",
			argv[0]);
		return 2;
	}
	open_dev(&a, argv[optind]);
	open_dev(&b, argv[optind + 1]);
	buf = malloc(CHUNK);
	if (!buf)
		die("malloc", ENOMEM);

	if (vfio_mig_get_flags(a.mig.fd, &flags))
		die("VFIO_DEVICE_FEATURE_MIGRATION", errno);
	printf("source %s (%s), destination %s (%s), BAR2 %llu MiB, migration flags:%s%s%s\n",
	       a.mig.name, a.mig.driver, b.mig.name, b.mig.driver,
	       (unsigned long long)a.bar2.size >> 20,
	       flags & VFIO_MIGRATION_STOP_COPY ? " STOP_COPY" : "",
	       flags & VFIO_MIGRATION_P2P ? " P2P" : "",
	       flags & VFIO_MIGRATION_PRE_COPY ? " PRE_COPY" : "");

	/* The device state: a pattern in BAR2, two registers. */
	x = seed * 2654435761u + 1;
	for (i = 0; i < a.bar2.size; i += 4) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		memcpy(a.mem + i, &x, 4);
	}
	memset(b.mem, 0, b.bar2.size);
	reg_write(&a, INTRMASK, 0xa5a50000 | (seed & 0xffff));
	reg_write(&a, INTRSTATUS, 0x00005a5a);
	printf("source: BAR2 filled with pattern seed %u, INTRMASK 0x%08x INTRSTATUS 0x%08x\n",
	       seed, 0xa5a50000 | (seed & 0xffff), 0x00005a5a);

	if (!vfio_mig_get_data_size(a.mig.fd, &size))
		printf("source: stop-copy size %llu bytes\n", (unsigned long long)size);

	t0 = now();
	ret = dma_log(&a, VFIO_DEVICE_FEATURE_DMA_LOGGING_START, NULL);
	printf("source: DMA dirty logging start: %s\n", ret ? strerror(-ret) : "ok");
	if (ret)
		bad++;
	set_state(&a, "source", VFIO_DEVICE_STATE_PRE_COPY, &save_fd);
	set_state(&b, "destination", VFIO_DEVICE_STATE_STOP, NULL);
	set_state(&b, "destination", VFIO_DEVICE_STATE_RESUMING, &resume_fd);

	if (vfio_mig_precopy_info(save_fd, &info))
		die("VFIO_MIG_GET_PRECOPY_INFO", errno);
	initial0 = info.initial_bytes;
	printf("pre-copy: initial_bytes %llu dirty_bytes %llu\n",
	       (unsigned long long)info.initial_bytes, (unsigned long long)info.dirty_bytes);
	for (;;) {
		ssize_t n = read(save_fd, buf, CHUNK);

		if (n < 0 && errno == ENOMSG)
			break;
		if (n <= 0)
			die("read data_fd in PRE_COPY", n ? errno : EIO);
		if (write(resume_fd, buf, n) != n)
			die("write data_fd", errno);
		pre += n;
		if (pre % (16 << 20) < n || pre == initial0) {
			vfio_mig_precopy_info(save_fd, &info);
			printf("pre-copy: %lld bytes sent, initial_bytes %llu dirty_bytes %llu\n",
			       pre, (unsigned long long)info.initial_bytes,
			       (unsigned long long)info.dirty_bytes);
		}
	}
	vfio_mig_precopy_info(save_fd, &info);
	printf("pre-copy: drained (read: ENOMSG) after %lld bytes, initial_bytes %llu dirty_bytes %llu\n",
	       pre, (unsigned long long)info.initial_bytes, (unsigned long long)info.dirty_bytes);

	/* The source keeps running: write, stream what was written, repeat. */
	rng = seed;
	for (r = 1; r <= rounds; r++) {
		size_t pages = a.bar2.size / 4096, n = pages / (8u << (r - 1)), k;
		long long sent;

		for (k = 0; k < n; k++) {
			size_t page = (size_t)rand_r(&rng) % pages;

			x ^= x << 13;
			x ^= x >> 17;
			x ^= x << 5;
			memcpy(a.mem + page * 4096 + (x % 4093), &x, 3);
		}
		vfio_mig_precopy_info(save_fd, &info);
		printf("round %u: wrote %zu pages; initial_bytes %llu dirty_bytes %llu\n", r, n,
		       (unsigned long long)info.initial_bytes,
		       (unsigned long long)info.dirty_bytes);
		sent = pump(save_fd, resume_fd, buf, 1);
		pre += sent;
		vfio_mig_precopy_info(save_fd, &info);
		printf("round %u: sent %lld bytes; initial_bytes %llu dirty_bytes %llu\n", r, sent,
		       (unsigned long long)info.initial_bytes,
		       (unsigned long long)info.dirty_bytes);
	}
	printf("before STOP_COPY: initial_bytes + dirty_bytes = %llu\n",
	       (unsigned long long)(info.initial_bytes + info.dirty_bytes));
	ret = dma_log(&a, VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, &dma_dirty);
	printf("source: DMA dirty logging report: %s, %llu pages written by DMA (the device does none)\n",
	       ret ? strerror(-ret) : "ok", (unsigned long long)dma_dirty);
	bad += ret || dma_dirty;
	ret = dma_log(&a, VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, NULL);
	bad += !!ret;

	set_state(&a, "source", VFIO_DEVICE_STATE_STOP_COPY, NULL);
	t = now();
	stop = pump(save_fd, resume_fd, buf, 0);
	printf("stop-copy: %lld bytes (%.2f%% of BAR2) in %.3f s, then end of stream\n", stop,
	       100.0 * stop / a.bar2.size, now() - t);
	set_state(&a, "source", VFIO_DEVICE_STATE_STOP, NULL);
	set_state(&b, "destination", VFIO_DEVICE_STATE_STOP, NULL);
	set_state(&b, "destination", VFIO_DEVICE_STATE_RUNNING, NULL);
	set_state(&a, "source", VFIO_DEVICE_STATE_RUNNING, NULL);
	printf("migrated %lld bytes (%lld pre-copy, %lld stop-copy) in %.3f s\n",
	       pre + stop, pre, stop, now() - t0);

	for (i = 0; i < a.bar2.size; i++)
		bad += a.mem[i] != b.mem[i];
	mask = reg_read(&b, INTRMASK);
	status = reg_read(&b, INTRSTATUS);
	printf("verify: BAR2 %s (%d bytes differ), INTRMASK 0x%08x %s, INTRSTATUS 0x%08x %s\n",
	       bad ? "DIFFERS" : "identical", bad,
	       mask, mask == (0xa5a50000 | (seed & 0xffff)) ? "ok" : "WRONG",
	       status, status == 0x00005a5a ? "ok" : "WRONG");
	close(save_fd);
	close(resume_fd);
	return bad || mask != (0xa5a50000 | (seed & 0xffff)) || status != 0x5a5a;
}
