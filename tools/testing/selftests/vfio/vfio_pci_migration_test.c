// SPDX-License-Identifier: GPL-2.0-only
/*
 * The VFIO migration v2 uAPI (include/uapi/linux/vfio.h) as QEMU uses it.
 *
 *   vfio_pci_migration_test [harness options] DEVICE_A [DEVICE_B]
 *
 * A device is a PCI BDF (e.g. 0000:01:00.0) or an mdev UUID. The fixture
 * vfio_migration checks what every migration driver must do (tests that
 * need a destination are skipped without DEVICE_B); the fixtures
 * ivshmem_vfio_pci* check the stream of the ivshmem-vfio-pci driver and its
 * tracking of writes to BAR2, and are skipped for any other driver.
 * Behaviour of the mtty sample driver that contradicts the uAPI text is
 * reported as XFAIL ("mtty known deviation"), for mtty only.
 */
#include <ctype.h>
#include <endian.h>
#include <stdarg.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <linux/bits.h>
#include <linux/pci_regs.h>
#include <linux/sizes.h>

#include <libvfio/migration.h>

#include "kselftest_harness.h"

#define MTTY_DRIVER		"mtty"
#define IVSHMEM_DRIVER		"ivshmem-vfio-pci"

/* Seconds a single read() or write() of a data fd may take. */
#define IO_TIMEOUT		20

#define STOP			VFIO_DEVICE_STATE_STOP
#define RUNNING			VFIO_DEVICE_STATE_RUNNING
#define STOP_COPY		VFIO_DEVICE_STATE_STOP_COPY
#define RESUMING		VFIO_DEVICE_STATE_RESUMING
#define RUNNING_P2P		VFIO_DEVICE_STATE_RUNNING_P2P
#define PRE_COPY		VFIO_DEVICE_STATE_PRE_COPY
#define PRE_COPY_P2P		VFIO_DEVICE_STATE_PRE_COPY_P2P
#define NR_STATES		VFIO_DEVICE_STATE_NR

/*
 * The ivshmem-vfio-pci migration stream, version 1, little-endian: a
 * sequence of records, each a 24-byte header and @length payload bytes.
 * Every record of a stream carries the random, non-zero id of its saving
 * session. An unknown record type is skipped when it is OPTIONAL and an
 * error otherwise.
 */
struct mig_rec_hdr {
	__le32 type;
	__le32 flags;
	__le64 length;
	__le64 session;
};

#define MIG_REC_HDR_SIZE	24
#define MIG_REC_OPTIONAL	BIT(0)
/* First and exactly once: magic[8], le32 version, le32 identity_len, identity */
#define MIG_REC_HEADER		1
/* Last: le64 records before END (HEADER included), le64 stream bytes before END */
#define MIG_REC_END		2
/* le64 offset into BAR2, then at most MIG_MEM_MAX_DATA bytes of data */
#define MIG_REC_MEM		0x100
/* le32 INTRMASK, le32 INTRSTATUS */
#define MIG_REC_REGS		0x101

#define MIG_MAGIC		"RVFIOMIG"
#define MIG_VERSION		1
/* ivshmem identity: le16 vendor, device, subsystem vendor, subsystem; le64 BAR2 size */
#define MIG_IDENTITY_LEN	16
#define MIG_HEADER_LEN		(8 + 4 + 4 + MIG_IDENTITY_LEN)
#define MIG_MEM_MAX_DATA	SZ_1M
#define MIG_END_LEN		16

/* ivshmem BAR0 registers */
#define IVSHMEM_INTRMASK	0
#define IVSHMEM_INTRSTATUS	4
#define IVSHMEM_BAR2		2

static const char *device_names[2];
static int nr_devices;

/* ------------------------------------------------------------------ */
/* The migration FSM of include/uapi/linux/vfio.h                      */

static bool is_saving(u32 state)
{
	return state == PRE_COPY || state == PRE_COPY_P2P || state == STOP_COPY;
}

static bool has_session(u32 state)
{
	return is_saving(state) || state == RESUMING;
}

static bool state_supported(u64 flags, u32 state)
{
	switch (state) {
	case STOP:
	case RUNNING:
	case STOP_COPY:
	case RESUMING:
		return true;
	case RUNNING_P2P:
		return flags & VFIO_MIGRATION_P2P;
	case PRE_COPY:
		return flags & VFIO_MIGRATION_PRE_COPY;
	case PRE_COPY_P2P:
		return (flags & VFIO_MIGRATION_P2P) &&
		       (flags & VFIO_MIGRATION_PRE_COPY);
	default:
		/* ERROR "cannot be specified as a device state" */
		return false;
	}
}

/* The FSM arcs the uAPI defines, for a device with all optional states. */
static const u32 fsm_arcs[][2] = {
	{ RUNNING_P2P, STOP },
	{ STOP_COPY, STOP },
	{ RESUMING, STOP },
	{ PRE_COPY, RUNNING },
	{ RUNNING_P2P, RUNNING },
	{ PRE_COPY_P2P, RUNNING_P2P },
	{ RUNNING, RUNNING_P2P },
	{ STOP, RUNNING_P2P },
	{ RUNNING, PRE_COPY },
	{ RUNNING_P2P, PRE_COPY_P2P },
	{ STOP, STOP_COPY },
	{ PRE_COPY, PRE_COPY_P2P },
	{ PRE_COPY_P2P, PRE_COPY },
	{ PRE_COPY_P2P, STOP_COPY },
	{ STOP, RESUMING },
};

/*
 * "For the purpose of specification the states behave as though the
 * device was fully running if not supported": without P2P, RUNNING_P2P is
 * RUNNING and PRE_COPY_P2P is PRE_COPY.
 */
static u32 fold_state(u64 flags, u32 state)
{
	if (!(flags & VFIO_MIGRATION_P2P)) {
		if (state == RUNNING_P2P)
			return RUNNING;
		if (state == PRE_COPY_P2P)
			return PRE_COPY;
	}
	return state;
}

static bool fsm_arc(u64 flags, u32 from, u32 to)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(fsm_arcs); i++) {
		u32 a = fsm_arcs[i][0], b = fsm_arcs[i][1];

		/* "Arcs touching PRE_COPY and PRE_COPY_P2P are removed ..." */
		if (!(flags & VFIO_MIGRATION_PRE_COPY) &&
		    (a == PRE_COPY || a == PRE_COPY_P2P ||
		     b == PRE_COPY || b == PRE_COPY_P2P))
			continue;
		if (fold_state(flags, a) == from && fold_state(flags, b) == to &&
		    from != to)
			return true;
	}
	return false;
}

/*
 * Whether SET @from -> @to must succeed: some path of arcs between
 * supported states leads there without a saving group state as an interior
 * step. Moving inside the saving group keeps its session and is allowed
 * (PRE_COPY -> PRE_COPY_P2P -> STOP_COPY); leaving it and coming back is
 * not ("STOP_COPY -> PRE_COPY, STOP_COPY -> PRE_COPY_P2P: These arcs are
 * not permitted and return error if requested").
 */
enum { IN_START_GROUP, OUTSIDE, ENTERED_GROUP, LEFT_GROUP, NR_PHASES };

static bool transition_legal(u64 flags, u32 from, u32 to)
{
	bool seen[NR_STATES][NR_PHASES] = {};
	u32 queue[NR_STATES * NR_PHASES][2];
	int head = 0, tail = 0;
	u32 next;

	if (!state_supported(flags, from) || !state_supported(flags, to))
		return false;
	if (from == to)
		return true;

	queue[tail][0] = from;
	queue[tail++][1] = is_saving(from) ? IN_START_GROUP : OUTSIDE;
	while (head < tail) {
		u32 state = queue[head][0], phase = queue[head++][1];

		for (next = 0; next < NR_STATES; next++) {
			u32 nphase;

			if (!state_supported(flags, next) || !fsm_arc(flags, state, next))
				continue;
			if (phase == IN_START_GROUP)
				nphase = is_saving(next) ? IN_START_GROUP : LEFT_GROUP;
			else if (phase == OUTSIDE)
				nphase = is_saving(next) ? ENTERED_GROUP : OUTSIDE;
			else if (!is_saving(next))
				nphase = LEFT_GROUP;
			else
				continue;
			if (next == to)
				return true;
			/* A saving state entered from outside must be the end. */
			if (nphase == ENTERED_GROUP || seen[next][nphase])
				continue;
			seen[next][nphase] = true;
			queue[tail][0] = next;
			queue[tail++][1] = nphase;
		}
	}
	return false;
}

/* The arc into PRE_COPY, PRE_COPY_P2P, STOP_COPY or RESUMING returns a new data_fd. */
static bool opens_session(u32 from, u32 to)
{
	return from != to &&
	       ((is_saving(to) && !is_saving(from)) || to == RESUMING);
}

/* Leaving the saving group, or RESUMING, ends the session of the old fd. */
static bool ends_session(u32 from, u32 to)
{
	return from != to && has_session(from) &&
	       !(is_saving(from) && is_saving(to));
}

/* ------------------------------------------------------------------ */
/* Data fds and streams                                               */

struct mig_buf {
	u8 *data;
	size_t len;
	size_t cap;
};

static void mig_buf_reserve(struct mig_buf *buf, size_t more)
{
	if (buf->len + more <= buf->cap)
		return;
	buf->cap = (buf->len + more) * 2;
	buf->data = realloc(buf->data, buf->cap);
	if (!buf->data) {
		perror("realloc");
		abort();
	}
}

static void mig_buf_free(struct mig_buf *buf)
{
	free(buf->data);
	memset(buf, 0, sizeof(*buf));
}

static void on_alarm(int sig)
{
}

/* read() that gives up with EINTR after IO_TIMEOUT seconds: 0, n or -errno */
static ssize_t timed_read(int fd, void *p, size_t len)
{
	ssize_t n;
	int err;

	alarm(IO_TIMEOUT);
	n = read(fd, p, len);
	err = errno;
	alarm(0);
	return n < 0 ? -err : n;
}

static ssize_t timed_write(int fd, const void *p, size_t len)
{
	ssize_t n;
	int err;

	alarm(IO_TIMEOUT);
	n = write(fd, p, len);
	err = errno;
	alarm(0);
	return n < 0 ? -err : n;
}

/*
 * Read what @fd has: until read() returns 0 (end of stream) or fails
 * (ENOMSG: the temporary end of stream in PRE_COPY). Appends to @buf if
 * not NULL. Returns 0 or the -errno that ended it; *nread counts bytes.
 */
static int read_available(int fd, struct mig_buf *buf, u64 *nread)
{
	static u8 scratch[SZ_1M];
	ssize_t n;

	*nread = 0;
	for (;;) {
		u8 *dst = scratch;

		if (buf) {
			mig_buf_reserve(buf, SZ_1M);
			dst = buf->data + buf->len;
		}
		n = timed_read(fd, dst, SZ_1M);
		if (n <= 0)
			return n;
		if (buf)
			buf->len += n;
		*nread += n;
	}
}

/*
 * Write @len bytes in chunks of changing sizes (a record header may span
 * writes: the user "is not required to preserve buffer segmentation").
 * Returns 0 or the -errno of the first failed write(); *done counts bytes.
 */
static int write_stream(int fd, const u8 *p, size_t len, size_t *done)
{
	static const size_t chunks[] = { 1, 23, 4099, 65543, SZ_1M + 5 };
	size_t off = 0;
	int i = 0;

	while (off < len) {
		size_t n = chunks[i++ % ARRAY_SIZE(chunks)];
		ssize_t ret;

		ret = timed_write(fd, p + off, n < len - off ? n : len - off);
		if (ret <= 0) {
			if (done)
				*done = off;
			return ret ? ret : -EIO;
		}
		off += ret;
	}
	if (done)
		*done = off;
	return 0;
}

/* Use a data fd once: read a byte from a saving one, write one to a resuming one. */
static int probe_data_fd(int fd, bool saving)
{
	u8 byte = 0;

	return saving ? timed_read(fd, &byte, 1) : timed_write(fd, &byte, 1);
}

/* ------------------------------------------------------------------ */
/* Device state helpers                                               */

static void check_state(struct __test_metadata *_metadata, struct vfio_mig_device *dev,
			u32 want, bool fatal)
{
	u32 state;

	ASSERT_EQ(0, vfio_mig_get_state(dev->fd, &state));
	if (state == want)
		return;
	TH_LOG("%s is in %s, expected %s", dev->name, vfio_mig_state_name(state),
	       vfio_mig_state_name(want));
	if (fatal)
		ASSERT_EQ(want, state);
	EXPECT_EQ(want, state);
}

#define ASSERT_STATE(_dev, _state) check_state(_metadata, _dev, _state, true)
#define EXPECT_STATE(_dev, _state) check_state(_metadata, _dev, _state, false)

/*
 * Deviations of mtty from the uAPI text are collected here and turn a
 * passing test into XFAIL; for any other driver they are failures.
 */
static char deviations[900];

static void expect_or_mtty_deviation(struct __test_metadata *_metadata, bool mtty,
				     bool ok, int line, const char *fmt, ...)
{
	size_t len = strlen(deviations);
	char what[160];
	va_list ap;

	if (ok)
		return;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	fprintf(TH_LOG_STREAM, "# %s:%d:%s:%s%s\n", __FILE__, line, _metadata->name,
		mtty ? "mtty known deviation: " : "", what);
	if (!mtty) {
		_metadata->exit_code = KSFT_FAIL;
		return;
	}
	snprintf(deviations + len, sizeof(deviations) - len, "%s%s", len ? "; " : "", what);
}

#define EXPECT_OR_MTTY_DEVIATION(_ok, ...) \
	expect_or_mtty_deviation(_metadata, self->mtty, _ok, __LINE__, __VA_ARGS__)

static void report_deviations(struct __test_metadata *_metadata)
{
	if (!deviations[0] || _metadata->exit_code != KSFT_PASS)
		return;
	snprintf(_metadata->results->reason, sizeof(_metadata->results->reason),
		 "mtty known deviation: %s", deviations);
	_metadata->exit_code = KSFT_XFAIL;
}

/* Back to RUNNING by SET, or by VFIO_DEVICE_RESET from RESUMING and ERROR. */
static int to_running(struct vfio_mig_device *dev)
{
	u32 state;
	int ret;

	ret = vfio_mig_get_state(dev->fd, &state);
	if (ret)
		return ret;
	if (state == RUNNING)
		return 0;
	if (state != RESUMING && state != VFIO_DEVICE_STATE_ERROR &&
	    !vfio_mig_set_state(dev->fd, RUNNING, NULL))
		return 0;
	ret = vfio_mig_reset(dev->fd);
	if (ret)
		return ret;
	ret = vfio_mig_get_state(dev->fd, &state);
	return ret ? ret : state == RUNNING ? 0 : -EIO;
}

/*
 * RUNNING -> @state in one SET (a legal transition for every state); the
 * data_fd in *fd. In RESUMING, the first @resume_len bytes of @stream are
 * written.
 */
static void reach_state(struct __test_metadata *_metadata,
			struct vfio_mig_device *dev, u32 state,
			const struct mig_buf *stream, size_t resume_len, int *fd)
{
	ASSERT_STATE(dev, RUNNING);
	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, state, fd))
		TH_LOG("RUNNING -> %s", vfio_mig_state_name(state));
	if (has_session(state)) {
		ASSERT_LE(0, *fd) TH_LOG("RUNNING -> %s: no data_fd",
					 vfio_mig_state_name(state));
	} else {
		ASSERT_EQ(-1, *fd) TH_LOG("RUNNING -> %s: data_fd %d",
					  vfio_mig_state_name(state), *fd);
	}
	if (state == RESUMING && resume_len)
		ASSERT_EQ(0, write_stream(*fd, stream->data, resume_len, NULL));
}

/* A stream of a save session started in STOP_COPY; @dev ends in RUNNING. */
static void save_stop_copy(struct __test_metadata *_metadata,
			   struct vfio_mig_device *dev, struct mig_buf *out)
{
	u64 n;
	int fd;

	reach_state(_metadata, dev, STOP_COPY, NULL, 0, &fd);
	ASSERT_EQ(0, read_available(fd, out, &n));
	ASSERT_LT(0, n) TH_LOG("STOP_COPY streamed nothing");
	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, RUNNING, NULL));
	ASSERT_EQ(0, close(fd));
}

/*
 * Save as QEMU does: RUNNING -> PRE_COPY, read until the temporary end of
 * stream, (-> PRE_COPY_P2P) -> STOP_COPY, read until the end, -> STOP.
 * Without PRE_COPY: RUNNING -> STOP -> STOP_COPY. *precopy_len gets the
 * bytes read in PRE_COPY.
 */
static void save_qemu_way(struct __test_metadata *_metadata,
			  struct vfio_mig_device *dev, u64 flags, bool mtty,
			  struct mig_buf *out, size_t *precopy_len)
{
	int fd = -1, nfd, ret;
	u64 n;

	*precopy_len = 0;
	if (flags & VFIO_MIGRATION_PRE_COPY) {
		reach_state(_metadata, dev, PRE_COPY, NULL, 0, &fd);
		ret = read_available(fd, out, &n);
		/* mtty returns 0 here (see precopy_drained_read_returns_enomsg) */
		if (!(mtty && ret == 0))
			EXPECT_EQ(-ENOMSG, ret) TH_LOG("PRE_COPY read: %s", strerror(-ret));
		*precopy_len = out->len;
		if (flags & VFIO_MIGRATION_P2P) {
			ASSERT_EQ(0, vfio_mig_set_state(dev->fd, PRE_COPY_P2P, &nfd));
			EXPECT_EQ(-1, nfd);
		}
	} else {
		ASSERT_EQ(0, vfio_mig_set_state(dev->fd, STOP, NULL));
	}
	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, STOP_COPY, &nfd));
	if (flags & VFIO_MIGRATION_PRE_COPY)
		EXPECT_EQ(-1, nfd) TH_LOG("PRE_COPY_P2P -> STOP_COPY returned a new data_fd");
	if (!(flags & VFIO_MIGRATION_PRE_COPY))
		fd = nfd;
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, read_available(fd, out, &n));
	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, STOP, &nfd));
	EXPECT_EQ(-1, nfd);
	EXPECT_EQ(-ENODEV, probe_data_fd(fd, true));
	ASSERT_EQ(0, close(fd));
}

/* Resume as QEMU does: RUNNING -> STOP -> RESUMING, write, -> STOP -> RUNNING. */
static void resume_qemu_way(struct __test_metadata *_metadata,
			    struct vfio_mig_device *dev, const u8 *stream, size_t len)
{
	int fd, nfd, ret;

	ASSERT_STATE(dev, RUNNING);
	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, STOP, &nfd));
	EXPECT_EQ(-1, nfd);
	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, RESUMING, &fd));
	ASSERT_LE(0, fd);
	ret = write_stream(fd, stream, len, NULL);
	ASSERT_EQ(0, ret) TH_LOG("writing the stream: %s", strerror(-ret));
	ret = vfio_mig_set_state(dev->fd, STOP, &nfd);
	ASSERT_EQ(0, ret) TH_LOG("RESUMING -> STOP: %s", strerror(-ret));
	EXPECT_EQ(-1, nfd);
	EXPECT_EQ(-ENODEV, probe_data_fd(fd, false));
	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, RUNNING, NULL));
	ASSERT_STATE(dev, RUNNING);
	ASSERT_EQ(0, close(fd));
}

static int region_info(int fd, u32 index, struct vfio_region_info *info)
{
	memset(info, 0, sizeof(*info));
	info->argsz = sizeof(*info);
	info->index = index;
	return vfio_mig_errno(ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, info));
}

/* ------------------------------------------------------------------ */
/* Device-independent tests                                           */

FIXTURE(vfio_migration) {
	struct vfio_mig_device dev[2];
	int nr_devs;
	u64 flags;
	bool mtty;
};

FIXTURE_VARIANT(vfio_migration) {
	int group;
};

FIXTURE_VARIANT_ADD(vfio_migration, cdev_iommufd) {
	.group = 0,
};

FIXTURE_VARIANT_ADD(vfio_migration, group_type1) {
	.group = 1,
};

FIXTURE_SETUP(vfio_migration)
{
	struct vfio_mig_device *dev;
	int i, ret;

	for (i = 0; i < nr_devices; i++) {
		dev = &self->dev[i];
		ASSERT_EQ(0, vfio_mig_device_lookup(dev, device_names[i]));
		ret = vfio_mig_device_open(dev, variant->group);
		if (ret && variant->group)
			SKIP(return, "%s (%s): no group/container path: %s",
			     dev->name, dev->driver, strerror(-ret));
		ASSERT_EQ(0, ret) TH_LOG("opening %s (%s): %s", dev->name,
					 dev->driver, strerror(-ret));
		self->nr_devs++;
	}

	dev = &self->dev[0];
	ret = vfio_mig_get_flags(dev->fd, &self->flags);
	if (ret)
		SKIP(return, "%s (%s) does not support migration: %s",
		     dev->name, dev->driver, strerror(-ret));
	ASSERT_TRUE(self->flags & VFIO_MIGRATION_STOP_COPY);
	self->mtty = !strcmp(dev->driver, MTTY_DRIVER);

	/* mtty keeps its migration state across close and re-open */
	for (i = 0; i < self->nr_devs; i++)
		ASSERT_EQ(0, to_running(&self->dev[i]));
}

FIXTURE_TEARDOWN(vfio_migration)
{
	int i;

	report_deviations(_metadata);
	for (i = 0; i < self->nr_devs; i++) {
		to_running(&self->dev[i]);
		vfio_mig_device_close(&self->dev[i]);
	}
}

TEST_F_TIMEOUT(vfio_migration, state_transition_matrix, 600)
{
	struct vfio_mig_device *dev = &self->dev[0];
	struct mig_buf stream = {};
	int from_fd, to_fd, ret, legal_n = 0, illegal_n = 0;
	u32 from, to, state;

	/* A complete stream to leave RESUMING with */
	save_stop_copy(_metadata, dev, &stream);

	for (from = 0; from < NR_STATES; from++) {
		if (!state_supported(self->flags, from))
			continue;
		for (to = STOP; to < NR_STATES; to++) {
			bool legal = transition_legal(self->flags, from, to);
			const char *f = vfio_mig_state_name(from);
			const char *t = vfio_mig_state_name(to);

			reach_state(_metadata, dev, from, &stream, stream.len, &from_fd);
			ret = vfio_mig_set_state(dev->fd, to, &to_fd);
			ASSERT_EQ(0, vfio_mig_get_state(dev->fd, &state));

			if (legal) {
				legal_n++;
				EXPECT_EQ(0, ret) TH_LOG("%s -> %s: %s", f, t, strerror(-ret));
				EXPECT_EQ(to, state) TH_LOG("%s -> %s left %s", f, t,
							    vfio_mig_state_name(state));
				if (opens_session(from, to)) {
					EXPECT_LE(0, to_fd)
						TH_LOG("%s -> %s: no data_fd", f, t);
				} else {
					EXPECT_EQ(-1, to_fd)
						TH_LOG("%s -> %s: unexpected data_fd", f, t);
				}
				if (from_fd >= 0 && ends_session(from, to)) {
					EXPECT_EQ(-ENODEV, probe_data_fd(from_fd, is_saving(from)))
						TH_LOG("%s -> %s: old data_fd still usable", f, t);
				} else if (from_fd >= 0 && is_saving(from)) {
					EXPECT_NE(-ENODEV, probe_data_fd(from_fd, true))
						TH_LOG("%s -> %s: data_fd ended", f, t);
				}
			} else {
				illegal_n++;
				EXPECT_EQ(-EINVAL, ret) TH_LOG("%s -> %s: %s", f, t,
							       strerror(-ret));
				EXPECT_EQ(from, state) TH_LOG("failed %s -> %s left %s", f, t,
							      vfio_mig_state_name(state));
				EXPECT_EQ(-1, to_fd);
				if (from_fd >= 0 && is_saving(from)) {
					EXPECT_NE(-ENODEV, probe_data_fd(from_fd, true))
						TH_LOG("failed %s -> %s ended the data_fd", f, t);
				}
			}

			/* A new resuming session needs data to leave RESUMING */
			if (state == RESUMING && from != RESUMING && to_fd >= 0)
				ASSERT_EQ(0, write_stream(to_fd, stream.data, stream.len, NULL));
			if (state != RUNNING)
				ASSERT_EQ(0, vfio_mig_set_state(dev->fd, RUNNING, NULL))
					TH_LOG("%s -> RUNNING", vfio_mig_state_name(state));
			if (from_fd >= 0)
				close(from_fd);
			if (to_fd >= 0)
				close(to_fd);
		}
	}
	TH_LOG("%s (%s), migration flags %#llx: %d legal, %d illegal transitions",
	       dev->name, dev->driver, (unsigned long long)self->flags,
	       legal_n, illegal_n);
	mig_buf_free(&stream);
}

TEST_F(vfio_migration, set_error_or_undefined_state_fails)
{
	static const u32 bad[] = { VFIO_DEVICE_STATE_ERROR, NR_STATES, 0x80000000, ~0U };
	struct vfio_mig_device *dev = &self->dev[0];
	struct mig_buf stream = {};
	u32 from, state;
	int i, fd, nfd;

	save_stop_copy(_metadata, dev, &stream);
	for (from = STOP; from < NR_STATES; from++) {
		if (!state_supported(self->flags, from))
			continue;
		reach_state(_metadata, dev, from, &stream, stream.len, &fd);
		for (i = 0; i < ARRAY_SIZE(bad); i++) {
			EXPECT_EQ(-EINVAL, vfio_mig_set_state(dev->fd, bad[i], &nfd))
				TH_LOG("%s -> %#x", vfio_mig_state_name(from), bad[i]);
			ASSERT_EQ(0, vfio_mig_get_state(dev->fd, &state));
			EXPECT_EQ(from, state);
		}
		ASSERT_EQ(0, vfio_mig_set_state(dev->fd, RUNNING, NULL));
		if (fd >= 0)
			ASSERT_EQ(0, close(fd));
	}
	mig_buf_free(&stream);
}

static void expect_data_fd_modes(struct __test_metadata *_metadata, int fd,
				 bool saving)
{
	u8 byte = 0;

	EXPECT_EQ(saving ? O_RDONLY : O_WRONLY, fcntl(fd, F_GETFL) & O_ACCMODE);
	EXPECT_TRUE(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	EXPECT_EQ(-1, lseek(fd, 0, SEEK_SET));
	EXPECT_EQ(ESPIPE, errno);
	EXPECT_EQ(-1, lseek(fd, 0, SEEK_CUR));
	EXPECT_EQ(ESPIPE, errno);
	EXPECT_EQ(-1, pread(fd, &byte, 1, 0));
	EXPECT_EQ(ESPIPE, errno);
	EXPECT_EQ(-1, pwrite(fd, &byte, 1, 0));
	EXPECT_EQ(ESPIPE, errno);
	if (saving) {
		EXPECT_EQ(-1, write(fd, &byte, 1));
		EXPECT_EQ(EBADF, errno);
	} else {
		EXPECT_EQ(-1, read(fd, &byte, 1));
		EXPECT_EQ(EBADF, errno);
	}
}

TEST_F(vfio_migration, data_fd_file_modes)
{
	struct vfio_mig_device *dev = &self->dev[0];
	int fd;

	if (self->flags & VFIO_MIGRATION_PRE_COPY) {
		reach_state(_metadata, dev, PRE_COPY, NULL, 0, &fd);
		expect_data_fd_modes(_metadata, fd, true);
		ASSERT_EQ(0, vfio_mig_set_state(dev->fd, RUNNING, NULL));
		ASSERT_EQ(0, close(fd));
	}
	reach_state(_metadata, dev, STOP_COPY, NULL, 0, &fd);
	expect_data_fd_modes(_metadata, fd, true);
	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, RUNNING, NULL));
	ASSERT_EQ(0, close(fd));

	reach_state(_metadata, dev, RESUMING, NULL, 0, &fd);
	expect_data_fd_modes(_metadata, fd, false);
	ASSERT_EQ(0, vfio_mig_reset(dev->fd));
	ASSERT_EQ(0, close(fd));
}

TEST_F(vfio_migration, data_fd_shared_by_saving_group)
{
	struct vfio_mig_device *dev = &self->dev[0];
	struct pollfd pfd;
	u64 n, size;
	int fd, nfd, i;
	u8 byte;

	if (!(self->flags & VFIO_MIGRATION_PRE_COPY))
		SKIP(return, "%s (%s) has no PRE_COPY", dev->name, dev->driver);
	reach_state(_metadata, dev, PRE_COPY, NULL, 0, &fd);
	ASSERT_EQ(1, timed_read(fd, &byte, 1));
	if (self->flags & VFIO_MIGRATION_P2P) {
		ASSERT_EQ(0, vfio_mig_set_state(dev->fd, PRE_COPY_P2P, &nfd));
		EXPECT_EQ(-1, nfd) TH_LOG("PRE_COPY -> PRE_COPY_P2P returned a new data_fd");
	}
	ASSERT_EQ(0, vfio_mig_get_data_size(dev->fd, &size));
	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, STOP_COPY, &nfd));
	EXPECT_EQ(-1, nfd) TH_LOG("-> STOP_COPY returned a new data_fd");

	/* The same fd streams on; STOP_COPY ends it with EOF, never ENOMSG */
	ASSERT_EQ(0, read_available(fd, NULL, &n));
	EXPECT_LT(0, n) TH_LOG("STOP_COPY streamed nothing after PRE_COPY");
	TH_LOG("%s: PRE_COPY session streamed %llu bytes after its first, MIG_DATA_SIZE was %llu",
	       dev->driver, (unsigned long long)n, (unsigned long long)size);
	/* Nothing was written: MIG_DATA_SIZE was what the session still had to stream */
	if (!strcmp(dev->driver, IVSHMEM_DRIVER))
		EXPECT_EQ(size, n) TH_LOG("MIG_DATA_SIZE in a saving session after one byte");
	for (i = 0; i < 3; i++)
		EXPECT_EQ(0, timed_read(fd, &byte, 1));
	pfd = (struct pollfd){ .fd = fd, .events = POLLIN };
	EXPECT_EQ(1, poll(&pfd, 1, 1000));
	EXPECT_TRUE(pfd.revents & POLLIN);

	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, STOP, &nfd));
	EXPECT_EQ(-1, nfd);
	EXPECT_EQ(-ENODEV, probe_data_fd(fd, true));
	EXPECT_EQ(0, close(fd));
}

TEST_F(vfio_migration, precopy_drained_read_returns_enomsg)
{
	struct vfio_mig_device *dev = &self->dev[0];
	struct timespec t0, t1;
	int fd, nfd, ret;
	u64 n;

	if (!(self->flags & VFIO_MIGRATION_PRE_COPY))
		SKIP(return, "%s (%s) has no PRE_COPY", dev->name, dev->driver);
	reach_state(_metadata, dev, PRE_COPY, NULL, 0, &fd);
	ret = read_available(fd, NULL, &n);
	EXPECT_LT(0, n) TH_LOG("PRE_COPY streamed no initial data");
	EXPECT_OR_MTTY_DEVIATION(ret == -ENOMSG,
				 "drained PRE_COPY read() returned %d, not -1/ENOMSG", ret);
	ret = timed_read(fd, &n, 1);
	EXPECT_OR_MTTY_DEVIATION(ret == -ENOMSG,
				 "second drained read() returned %d", ret);

	if (self->flags & VFIO_MIGRATION_P2P) {
		ASSERT_EQ(0, vfio_mig_set_state(dev->fd, PRE_COPY_P2P, &nfd));
		ret = timed_read(fd, &n, 1);
		EXPECT_OR_MTTY_DEVIATION(ret == -ENOMSG,
					 "drained PRE_COPY_P2P read() returned %d", ret);
	}

	/* Non-blocking, too: same answer, at once */
	ASSERT_EQ(0, fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ret = timed_read(fd, &n, 1);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	EXPECT_NE(-EINTR, ret) TH_LOG("O_NONBLOCK read() blocked");
	EXPECT_GT(2, t1.tv_sec - t0.tv_sec);
	EXPECT_OR_MTTY_DEVIATION(ret == -ENOMSG,
				 "drained O_NONBLOCK read() returned %d", ret);
	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, RUNNING, NULL));
	EXPECT_EQ(-ENODEV, probe_data_fd(fd, true));
	ASSERT_EQ(0, close(fd));
}

TEST_F(vfio_migration, stop_copy_reads_to_eof)
{
	struct vfio_mig_device *dev = &self->dev[0];
	struct pollfd pfd;
	int fd, i, ret;
	u64 n;
	u8 byte;

	reach_state(_metadata, dev, STOP_COPY, NULL, 0, &fd);
	pfd = (struct pollfd){ .fd = fd, .events = POLLIN };
	EXPECT_EQ(1, poll(&pfd, 1, 1000));
	EXPECT_TRUE(pfd.revents & POLLIN) TH_LOG("no POLLIN with STOP_COPY data ready");

	ret = read_available(fd, NULL, &n);
	EXPECT_EQ(0, ret) TH_LOG("STOP_COPY read: %s", strerror(-ret));
	EXPECT_LT(0, n);
	for (i = 0; i < 3; i++)
		EXPECT_EQ(0, timed_read(fd, &byte, 1)) TH_LOG("read() after EOF");
	ASSERT_EQ(0, fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK));
	EXPECT_EQ(0, timed_read(fd, &byte, 1));
	pfd.revents = 0;
	EXPECT_EQ(1, poll(&pfd, 1, 1000));
	EXPECT_TRUE(pfd.revents & POLLIN) TH_LOG("no POLLIN at the end of stream");

	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, STOP, NULL));
	EXPECT_EQ(-ENODEV, probe_data_fd(fd, true));
	ASSERT_EQ(0, close(fd));
}

TEST_F(vfio_migration, precopy_poll_and_nonblocking_reads)
{
	struct vfio_mig_device *dev = &self->dev[0];
	struct vfio_precopy_info info;
	struct timespec t0, t1;
	struct pollfd pfd;
	int fd, ret;
	u64 n;

	if (!(self->flags & VFIO_MIGRATION_PRE_COPY))
		SKIP(return, "%s (%s) has no PRE_COPY", dev->name, dev->driver);
	reach_state(_metadata, dev, PRE_COPY, NULL, 0, &fd);
	ASSERT_EQ(0, vfio_mig_precopy_info(fd, &info));
	pfd = (struct pollfd){ .fd = fd, .events = POLLIN };
	EXPECT_EQ(1, poll(&pfd, 1, 1000));
	EXPECT_TRUE(pfd.revents & POLLIN)
		TH_LOG("no POLLIN with %llu initial bytes ready",
		       (unsigned long long)info.initial_bytes);

	ASSERT_EQ(0, fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ret = read_available(fd, NULL, &n);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	EXPECT_NE(-EINTR, ret) TH_LOG("O_NONBLOCK read() blocked");
	EXPECT_NE(-EAGAIN, ret) TH_LOG("EAGAIN instead of the temporary end of stream");
	EXPECT_EQ(info.initial_bytes + info.dirty_bytes, n);
	TH_LOG("%s: %llu PRE_COPY bytes in %ld s without blocking", dev->driver,
	       (unsigned long long)n, (long)(t1.tv_sec - t0.tv_sec));
	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, RUNNING, NULL));
	ASSERT_EQ(0, close(fd));
}

TEST_F(vfio_migration, precopy_info_only_in_precopy)
{
	struct vfio_mig_device *dev = &self->dev[0];
	struct vfio_precopy_info info;
	int fd, ret;

	if (!(self->flags & VFIO_MIGRATION_PRE_COPY))
		SKIP(return, "%s (%s) has no PRE_COPY", dev->name, dev->driver);

	reach_state(_metadata, dev, PRE_COPY, NULL, 0, &fd);
	EXPECT_EQ(0, vfio_mig_precopy_info(fd, &info));
	memset(&info, 0, sizeof(info));
	info.argsz = offsetof(struct vfio_precopy_info, dirty_bytes);
	EXPECT_EQ(-1, ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &info));
	EXPECT_EQ(EINVAL, errno) TH_LOG("short argsz");
	if (self->flags & VFIO_MIGRATION_P2P) {
		ASSERT_EQ(0, vfio_mig_set_state(dev->fd, PRE_COPY_P2P, NULL));
		EXPECT_EQ(0, vfio_mig_precopy_info(fd, &info));
	}
	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, STOP_COPY, NULL));
	EXPECT_EQ(-EINVAL, vfio_mig_precopy_info(fd, &info)) TH_LOG("in STOP_COPY");
	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, STOP, NULL));
	EXPECT_EQ(-EINVAL, vfio_mig_precopy_info(fd, &info)) TH_LOG("ended fd, in STOP");
	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, RUNNING, NULL));
	ASSERT_EQ(0, close(fd));

	reach_state(_metadata, dev, STOP_COPY, NULL, 0, &fd);
	EXPECT_EQ(-EINVAL, vfio_mig_precopy_info(fd, &info)) TH_LOG("fresh STOP_COPY");
	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, RUNNING, NULL));
	ASSERT_EQ(0, close(fd));

	reach_state(_metadata, dev, RESUMING, NULL, 0, &fd);
	ret = vfio_mig_precopy_info(fd, &info);
	EXPECT_OR_MTTY_DEVIATION(ret == -EINVAL,
				 "VFIO_MIG_GET_PRECOPY_INFO on the RESUMING fd: %s, not EINVAL",
				 strerror(-ret));
	ASSERT_EQ(0, vfio_mig_reset(dev->fd));
	ASSERT_EQ(0, close(fd));
}

TEST_F_TIMEOUT(vfio_migration, precopy_info_counts_down, 300)
{
	struct vfio_mig_device *dev = &self->dev[0];
	struct vfio_precopy_info first, prev, cur;
	u64 chunk, total = 0, reads = 0;
	static u8 buf[SZ_1M];
	ssize_t n;
	int fd;

	if (!(self->flags & VFIO_MIGRATION_PRE_COPY))
		SKIP(return, "%s (%s) has no PRE_COPY", dev->name, dev->driver);
	reach_state(_metadata, dev, PRE_COPY, NULL, 0, &fd);
	ASSERT_EQ(0, vfio_mig_precopy_info(fd, &first));
	EXPECT_LT(0, first.initial_bytes) TH_LOG("initial_bytes starts at 0");
	chunk = first.initial_bytes / 13;
	chunk = chunk < 1 ? 1 : chunk > SZ_1M ? SZ_1M : chunk;
	prev = first;
	for (;;) {
		n = timed_read(fd, buf, chunk);
		if (n <= 0)
			break;
		total += n;
		reads++;
		ASSERT_EQ(0, vfio_mig_precopy_info(fd, &cur));
		EXPECT_GE(prev.initial_bytes, cur.initial_bytes)
			TH_LOG("initial_bytes went up from %llu to %llu after a %zd-byte read",
			       (unsigned long long)prev.initial_bytes,
			       (unsigned long long)cur.initial_bytes, n);
		if (!prev.dirty_bytes && !cur.dirty_bytes)
			EXPECT_EQ(prev.initial_bytes - cur.initial_bytes, n)
				TH_LOG("read %zd bytes, initial_bytes %llu -> %llu", n,
				       (unsigned long long)prev.initial_bytes,
				       (unsigned long long)cur.initial_bytes);
		prev = cur;
		if (_metadata->exit_code)
			break;
	}
	/* mtty ends with 0 (see precopy_drained_read_returns_enomsg) */
	if (!(self->mtty && n == 0))
		EXPECT_EQ(-ENOMSG, n);
	ASSERT_EQ(0, vfio_mig_precopy_info(fd, &cur));
	EXPECT_EQ(0, cur.initial_bytes) TH_LOG("initial_bytes after draining");
	EXPECT_EQ(0, cur.dirty_bytes) TH_LOG("dirty_bytes of an idle device");
	if (!first.dirty_bytes)
		EXPECT_EQ(first.initial_bytes, total);
	TH_LOG("%s: initial_bytes %llu, dirty_bytes %llu, read %llu bytes in %llu reads",
	       dev->driver, (unsigned long long)first.initial_bytes,
	       (unsigned long long)first.dirty_bytes, (unsigned long long)total,
	       (unsigned long long)reads);
	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, RUNNING, NULL));
	ASSERT_EQ(0, close(fd));
}

TEST_F(vfio_migration, precopy_info_v2_flags)
{
#if defined(VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2) && defined(VFIO_PRECOPY_INFO_REINIT)
	struct vfio_mig_device *dev = &self->dev[0];
	struct vfio_precopy_info info;
	const u32 v2 = VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2;
	int fd, ret;
	u64 n;

	ret = vfio_mig_feature(dev->fd, VFIO_DEVICE_FEATURE_PROBE |
			       VFIO_DEVICE_FEATURE_SET | v2, NULL, 0);
	if (!(self->flags & VFIO_MIGRATION_PRE_COPY)) {
		EXPECT_EQ(-EINVAL, ret);
		SKIP(return, "%s (%s) has no PRE_COPY", dev->name, dev->driver);
	}
	if (ret)
		SKIP(return, "MIG_PRECOPY_INFOv2 probe: %s", strerror(-ret));
	EXPECT_EQ(-EINVAL, vfio_mig_feature(dev->fd, VFIO_DEVICE_FEATURE_GET | v2, NULL, 0));
	ASSERT_EQ(0, vfio_mig_feature(dev->fd, VFIO_DEVICE_FEATURE_SET | v2, NULL, 0));

	/* With the opt-in, flags is output only: input garbage must not come back */
	reach_state(_metadata, dev, PRE_COPY, NULL, 0, &fd);
	memset(&info, 0, sizeof(info));
	info.argsz = sizeof(info);
	info.flags = ~VFIO_PRECOPY_INFO_REINIT;
	ASSERT_EQ(0, ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &info));
	EXPECT_EQ(0, info.flags & ~VFIO_PRECOPY_INFO_REINIT);
	TH_LOG("%s: flags %#x, initial_bytes %llu", dev->driver, info.flags,
	       (unsigned long long)info.initial_bytes);
	read_available(fd, NULL, &n);
	info.flags = ~0U;
	ASSERT_EQ(0, ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &info));
	EXPECT_EQ(0, info.flags & ~VFIO_PRECOPY_INFO_REINIT);
	/* Nothing re-initialised an idle device */
	EXPECT_EQ(0, info.flags);
	EXPECT_EQ(0, info.initial_bytes);
	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, RUNNING, NULL));
	ASSERT_EQ(0, close(fd));
#else
	SKIP(return, "no VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 in this uAPI");
#endif
}

/*
 * MIG_DATA_SIZE is "the estimated data length that will be required to
 * complete stop copy": without a saving session (STOP) that is a whole new
 * STOP_COPY stream, and in a session just started in STOP_COPY the same.
 * Inside a session it shrinks as the session is read (ivshmem:
 * data_size_is_what_stop_copy_streams); a driver may also report a constant
 * upper bound (mtty).
 */
TEST_F_TIMEOUT(vfio_migration, data_size_bounds_stop_copy, 300)
{
	struct vfio_mig_device *dev = &self->dev[0];
	u64 size, in_session, n;
	u32 state;
	int fd, ret;

	for (state = STOP; state < NR_STATES; state++) {
		if (!state_supported(self->flags, state))
			continue;
		reach_state(_metadata, dev, state, NULL, 0, &fd);
		ret = vfio_mig_get_data_size(dev->fd, &size);
		EXPECT_EQ(0, ret) TH_LOG("MIG_DATA_SIZE in %s: %s",
					 vfio_mig_state_name(state), strerror(-ret));
		EXPECT_LT(0, size) TH_LOG("MIG_DATA_SIZE 0 in %s", vfio_mig_state_name(state));
		ASSERT_EQ(0, to_running(dev));
		if (fd >= 0)
			ASSERT_EQ(0, close(fd));
	}

	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, STOP, NULL));
	ASSERT_EQ(0, vfio_mig_get_data_size(dev->fd, &size));
	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, STOP_COPY, &fd));
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, vfio_mig_get_data_size(dev->fd, &in_session));
	ASSERT_EQ(0, read_available(fd, NULL, &n));
	TH_LOG("%s: MIG_DATA_SIZE %llu in STOP, %llu in STOP_COPY, which streamed %llu",
	       dev->driver, (unsigned long long)size, (unsigned long long)in_session,
	       (unsigned long long)n);
	EXPECT_GE(size, n);
	EXPECT_GE(in_session, n);
	if (!strcmp(dev->driver, IVSHMEM_DRIVER)) {
		EXPECT_EQ(size, n);
		EXPECT_EQ(in_session, n);
	}
	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, RUNNING, NULL));
	ASSERT_EQ(0, close(fd));
}

/* After a reset or a re-open, a new saving session streams data. */
static void new_session_works(struct __test_metadata *_metadata,
			      struct vfio_mig_device *dev)
{
	int fd;
	u8 byte;

	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, STOP_COPY, &fd));
	ASSERT_LE(0, fd);
	EXPECT_EQ(1, timed_read(fd, &byte, 1));
	ASSERT_EQ(0, vfio_mig_set_state(dev->fd, RUNNING, NULL));
	ASSERT_EQ(0, close(fd));
}

TEST_F_TIMEOUT(vfio_migration, reset_in_every_state, 300)
{
	struct vfio_mig_device *dev = &self->dev[0];
	struct mig_buf stream = {};
	u32 state;
	int fd, ret;

	save_stop_copy(_metadata, dev, &stream);
	for (state = STOP; state < NR_STATES; state++) {
		if (!state_supported(self->flags, state))
			continue;
		reach_state(_metadata, dev, state, &stream, stream.len / 2, &fd);
		ret = vfio_mig_reset(dev->fd);
		ASSERT_EQ(0, ret) TH_LOG("VFIO_DEVICE_RESET in %s: %s",
					 vfio_mig_state_name(state), strerror(-ret));
		EXPECT_STATE(dev, RUNNING);
		if (fd >= 0) {
			EXPECT_EQ(-ENODEV, probe_data_fd(fd, is_saving(state)))
				TH_LOG("data_fd of %s usable after reset",
				       vfio_mig_state_name(state));
			EXPECT_EQ(0, close(fd));
		}
		new_session_works(_metadata, dev);
	}
	mig_buf_free(&stream);
}

TEST_F_TIMEOUT(vfio_migration, close_device_in_every_state, 300)
{
	struct vfio_mig_device *dev = &self->dev[0];
	struct vfio_precopy_info info;
	struct mig_buf stream = {};
	int fd, ret;
	u32 state, now;

	save_stop_copy(_metadata, dev, &stream);
	for (state = STOP; state < NR_STATES; state++) {
		if (state == RUNNING || !state_supported(self->flags, state))
			continue;
		reach_state(_metadata, dev, state, &stream, stream.len / 2, &fd);
		ASSERT_EQ(0, vfio_mig_device_close(dev));
		if (fd >= 0) {
			EXPECT_EQ(-ENODEV, probe_data_fd(fd, is_saving(state)))
				TH_LOG("data_fd of %s usable after the device was closed",
				       vfio_mig_state_name(state));
			if (is_saving(state))
				EXPECT_NE(0, vfio_mig_precopy_info(fd, &info));
		}

		ret = vfio_mig_device_open(dev, variant->group);
		ASSERT_EQ(0, ret) TH_LOG("re-open after closing in %s: %s",
					 vfio_mig_state_name(state), strerror(-ret));
		ASSERT_EQ(0, vfio_mig_get_state(dev->fd, &now));
		EXPECT_OR_MTTY_DEVIATION(now == RUNNING, "closed in %s, re-opened in %s",
					 vfio_mig_state_name(state), vfio_mig_state_name(now));
		if (fd >= 0) {
			EXPECT_EQ(-ENODEV, probe_data_fd(fd, is_saving(state)));
			EXPECT_EQ(0, close(fd));
		}
		ASSERT_EQ(0, to_running(dev));

		new_session_works(_metadata, dev);
	}
	mig_buf_free(&stream);
}

/* mtty: the scratch register of each port, carried in its migration data */
#define MTTY_UART_SCR	7

static void mtty_scr(struct __test_metadata *_metadata, struct vfio_mig_device *dev,
		     int port, u8 *val, bool write)
{
	struct vfio_region_info info;
	ssize_t n;

	ASSERT_EQ(0, region_info(dev->fd, VFIO_PCI_BAR0_REGION_INDEX + port, &info));
	ASSERT_LE(MTTY_UART_SCR + 1, info.size);
	if (write)
		n = pwrite(dev->fd, val, 1, info.offset + MTTY_UART_SCR);
	else
		n = pread(dev->fd, val, 1, info.offset + MTTY_UART_SCR);
	ASSERT_EQ(1, n) TH_LOG("UART scratch register of port %d", port);
}

TEST_F_TIMEOUT(vfio_migration, save_resume_round_trip, 300)
{
	struct vfio_mig_device *a = &self->dev[0], *b = &self->dev[1];
	struct mig_buf stream = {};
	u8 scr_a = 0x5a, scr_b = 0xc3, val;
	size_t precopy;
	u64 flags_b;

	if (self->nr_devs < 2)
		SKIP(return, "needs a second device to resume on");
	ASSERT_EQ(0, vfio_mig_get_flags(b->fd, &flags_b));
	if (self->mtty) {
		mtty_scr(_metadata, a, 0, &scr_a, true);
		mtty_scr(_metadata, b, 0, &scr_b, true);
	}

	save_qemu_way(_metadata, a, self->flags, self->mtty, &stream, &precopy);
	TH_LOG("%s %s -> %s %s: %zu bytes, %zu in PRE_COPY", a->driver, a->name,
	       b->driver, b->name, stream.len, precopy);
	resume_qemu_way(_metadata, b, stream.data, stream.len);
	ASSERT_EQ(0, vfio_mig_set_state(a->fd, RUNNING, NULL));

	if (self->mtty) {
		mtty_scr(_metadata, b, 0, &val, false);
		EXPECT_EQ(scr_a, val) TH_LOG("UART scratch register not migrated");
	}
	mig_buf_free(&stream);
}

/* ------------------------------------------------------------------ */
/* ivshmem-vfio-pci: its stream, byte for byte                         */

static u64 prng(u64 *s)
{
	u64 x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545f4914f6cdd1dULL;
}

static void prng_fill(u64 seed, u8 *p, size_t len)
{
	u64 s = seed | 1, v;
	size_t i;

	for (i = 0; i + 8 <= len; i += 8) {
		v = prng(&s);
		memcpy(p + i, &v, 8);
	}
	for (v = prng(&s); i < len; i++, v >>= 8)
		p[i] = v;
}

struct ivshmem_ctx {
	struct vfio_mig_device dev[2];
	int nr_open;
	u64 flags;
	struct vfio_region_info cfg[2], bar0[2], bar2[2];
	u8 *mem[2];
	u64 size;
	/* what A's BAR2 holds */
	u8 *expect;
	u32 intrmask, intrstatus;
	u64 seed;
};

static u32 ivshmem_reg(struct __test_metadata *_metadata, struct ivshmem_ctx *c,
		       int i, u32 reg)
{
	u32 val = 0;

	ASSERT_EQ(4, pread(c->dev[i].fd, &val, 4, c->bar0[i].offset + reg));
	return le32toh(val);
}

static void ivshmem_set_reg(struct __test_metadata *_metadata, struct ivshmem_ctx *c,
			    int i, u32 reg, u32 val)
{
	val = htole32(val);
	ASSERT_EQ(4, pwrite(c->dev[i].fd, &val, 4, c->bar0[i].offset + reg));
}

static u16 config_word(struct __test_metadata *_metadata, struct ivshmem_ctx *c,
		       int i, u32 reg)
{
	u16 val = 0;

	ASSERT_EQ(2, pread(c->dev[i].fd, &val, 2, c->cfg[i].offset + reg));
	return le16toh(val);
}

static void set_config_word(struct __test_metadata *_metadata, struct ivshmem_ctx *c,
			    int i, u32 reg, u16 val)
{
	val = htole16(val);
	ASSERT_EQ(2, pwrite(c->dev[i].fd, &val, 2, c->cfg[i].offset + reg));
}

static void ivshmem_setup(struct __test_metadata *_metadata, struct ivshmem_ctx *c)
{
	const char *env = getenv("VFIO_MIGRATION_SEED");
	int i, ret;

	if (nr_devices < 2)
		SKIP(return, "needs two %s devices", IVSHMEM_DRIVER);
	for (i = 0; i < 2; i++) {
		ASSERT_EQ(0, vfio_mig_device_lookup(&c->dev[i], device_names[i]));
		if (strcmp(c->dev[i].driver, IVSHMEM_DRIVER))
			SKIP(return, "%s is bound to %s, not %s", c->dev[i].name,
			     c->dev[i].driver, IVSHMEM_DRIVER);
	}
	for (i = 0; i < 2; i++) {
		struct vfio_mig_device *dev = &c->dev[i];

		ret = vfio_mig_device_open(dev, 0);
		ASSERT_EQ(0, ret) TH_LOG("opening %s: %s", dev->name, strerror(-ret));
		c->nr_open++;
		ret = vfio_mig_get_flags(dev->fd, &c->flags);
		if (ret)
			SKIP(return, "%s (%s) does not support migration: %s",
			     dev->name, dev->driver, strerror(-ret));
		ASSERT_EQ(0, to_running(dev));
		ASSERT_EQ(0, region_info(dev->fd, VFIO_PCI_CONFIG_REGION_INDEX, &c->cfg[i]));
		ASSERT_EQ(0, region_info(dev->fd, VFIO_PCI_BAR0_REGION_INDEX, &c->bar0[i]));
		ASSERT_EQ(0, region_info(dev->fd, IVSHMEM_BAR2, &c->bar2[i]));
		ASSERT_LE(8, c->bar0[i].size);
		ASSERT_TRUE(c->bar2[i].flags & VFIO_REGION_INFO_FLAG_MMAP);
		c->mem[i] = mmap(NULL, c->bar2[i].size, PROT_READ | PROT_WRITE,
				 MAP_SHARED, dev->fd, c->bar2[i].offset);
		ASSERT_NE(MAP_FAILED, c->mem[i]);
	}
	c->size = c->bar2[0].size;
	ASSERT_EQ(c->size, c->bar2[1].size) TH_LOG("BAR2 sizes differ");
	c->expect = malloc(c->size);
	ASSERT_NE(NULL, c->expect);
	c->seed = env ? strtoull(env, NULL, 0) : 0x6976736d656d3031ULL;
}

static void ivshmem_teardown(struct ivshmem_ctx *c)
{
	int i;

	for (i = 0; i < c->nr_open; i++) {
		if (c->mem[i] && c->mem[i] != MAP_FAILED)
			munmap(c->mem[i], c->bar2[i].size);
		to_running(&c->dev[i]);
		vfio_mig_device_close(&c->dev[i]);
	}
	free(c->expect);
}

/* Write through pwrite() on the region, and mirror it into c->expect. */
static void ivshmem_pwrite(struct __test_metadata *_metadata, struct ivshmem_ctx *c,
			   u64 off, size_t len, u64 seed)
{
	if (off + len > c->size)
		return;
	prng_fill(seed, c->expect + off, len);
	ASSERT_EQ(len, pwrite(c->dev[0].fd, c->expect + off, len, c->bar2[0].offset + off));
}

/*
 * A: a seeded pattern through the mmap, then other patterns through
 * pwrite() (sub-page, across page and 2 MiB boundaries, the last bytes),
 * INTRMASK and INTRSTATUS (disjoint bits, so that no INTx is raised).
 * B: something else everywhere.
 */
static void ivshmem_fill(struct __test_metadata *_metadata, struct ivshmem_ctx *c)
{
	static const struct { u64 off; size_t len; } ranges[] = {
		{ 0, 1 }, { 7, 3 }, { 4095, 2 }, { 3 * 4096 + 17, 100 },
		{ SZ_1M + 4000, 2 * 4096 + 300 }, { SZ_2M - 3, 7 },
		{ SZ_2M + SZ_1M - 1, 4097 }, { SZ_4M - 4096, 4096 },
	};
	u64 s = c->seed;
	int i;

	TH_LOG("seed %#llx (VFIO_MIGRATION_SEED)", (unsigned long long)c->seed);
	prng_fill(prng(&s), c->expect, c->size);
	memcpy(c->mem[0], c->expect, c->size);
	for (i = 0; i < ARRAY_SIZE(ranges); i++)
		ivshmem_pwrite(_metadata, c, ranges[i].off, ranges[i].len, prng(&s));
	ivshmem_pwrite(_metadata, c, c->size - 5, 5, prng(&s));
	c->intrmask = (prng(&s) & 0x55555555) | 1;
	c->intrstatus = (prng(&s) & 0xaaaaaaaa) | 2;
	ivshmem_set_reg(_metadata, c, 0, IVSHMEM_INTRMASK, c->intrmask);
	ivshmem_set_reg(_metadata, c, 0, IVSHMEM_INTRSTATUS, c->intrstatus);

	memset(c->mem[1], 0xa5, c->size);
	ivshmem_set_reg(_metadata, c, 1, IVSHMEM_INTRMASK, c->intrmask ^ 4);
	ivshmem_set_reg(_metadata, c, 1, IVSHMEM_INTRSTATUS, c->intrstatus ^ 8);
}

static void expect_mem(struct __test_metadata *_metadata, const u8 *have,
		       const u8 *want, u64 size, const char *what)
{
	u64 i, first = 0, bad = 0;

	if (!memcmp(have, want, size))
		return;
	for (i = 0; i < size; i++) {
		if (have[i] != want[i] && !bad++)
			first = i;
	}
	EXPECT_EQ(0, bad) TH_LOG("%s: %llu bytes differ, the first at %#llx", what,
				 (unsigned long long)bad, (unsigned long long)first);
}

/* B holds what A held; A's registers were not consumed by saving. */
static void ivshmem_check(struct __test_metadata *_metadata, struct ivshmem_ctx *c)
{
	expect_mem(_metadata, c->mem[1], c->expect, c->size, "B's BAR2");
	EXPECT_EQ(c->intrmask, ivshmem_reg(_metadata, c, 1, IVSHMEM_INTRMASK));
	EXPECT_EQ(c->intrstatus, ivshmem_reg(_metadata, c, 1, IVSHMEM_INTRSTATUS));
}

static void ivshmem_check_source(struct __test_metadata *_metadata, struct ivshmem_ctx *c)
{
	expect_mem(_metadata, c->mem[0], c->expect, c->size, "A's BAR2 after saving");
	EXPECT_EQ(c->intrmask, ivshmem_reg(_metadata, c, 0, IVSHMEM_INTRMASK));
	EXPECT_EQ(c->intrstatus, ivshmem_reg(_metadata, c, 0, IVSHMEM_INTRSTATUS))
		TH_LOG("saving consumed A's INTRSTATUS (reading it clears it)");
}

struct mig_rec {
	size_t off;
	u32 type;
	u32 flags;
	u64 length;
	u64 session;
};

/* Split @len bytes into records; -EINVAL if the last one is cut short. */
static int parse_stream(const u8 *p, size_t len, struct mig_rec **recs, int *nr)
{
	size_t off = 0;
	int n = 0;

	*recs = NULL;
	while (off < len) {
		struct mig_rec_hdr h;
		struct mig_rec *r;

		if (len - off < MIG_REC_HDR_SIZE)
			break;
		memcpy(&h, p + off, sizeof(h));
		r = realloc(*recs, (n + 1) * sizeof(*r));
		if (!r)
			return -ENOMEM;
		*recs = r;
		r += n++;
		r->off = off;
		r->type = le32toh(h.type);
		r->flags = le32toh(h.flags);
		r->length = le64toh(h.length);
		r->session = le64toh(h.session);
		if (r->length > len - off - MIG_REC_HDR_SIZE)
			break;
		off += MIG_REC_HDR_SIZE + r->length;
	}
	*nr = n;
	return off == len ? 0 : -EINVAL;
}

static const u8 *rec_payload(const u8 *stream, const struct mig_rec *r)
{
	return stream + r->off + MIG_REC_HDR_SIZE;
}

static u64 get_le64(const u8 *p)
{
	u64 v;

	memcpy(&v, p, 8);
	return le64toh(v);
}

static u32 get_le32(const u8 *p)
{
	u32 v;

	memcpy(&v, p, 4);
	return le32toh(v);
}

static void put_le64(u8 *p, u64 v)
{
	v = htole64(v);
	memcpy(p, &v, 8);
}

static void put_le32(u8 *p, u32 v)
{
	v = htole32(v);
	memcpy(p, &v, 4);
}

FIXTURE(ivshmem_vfio_pci) {
	struct ivshmem_ctx c;
};

FIXTURE_SETUP(ivshmem_vfio_pci)
{
	ivshmem_setup(_metadata, &self->c);
}

FIXTURE_TEARDOWN(ivshmem_vfio_pci)
{
	ivshmem_teardown(&self->c);
}

TEST_F_TIMEOUT(ivshmem_vfio_pci, migrate_bar2_and_registers, 600)
{
	struct ivshmem_ctx *c = &self->c;
	struct mig_buf stream = {};
	size_t precopy;

	ivshmem_fill(_metadata, c);
	save_qemu_way(_metadata, &c->dev[0], c->flags, false, &stream, &precopy);
	resume_qemu_way(_metadata, &c->dev[1], stream.data, stream.len);
	ivshmem_check(_metadata, c);
	ASSERT_EQ(0, vfio_mig_set_state(c->dev[0].fd, RUNNING, NULL));
	ivshmem_check_source(_metadata, c);
	mig_buf_free(&stream);
}

TEST_F_TIMEOUT(ivshmem_vfio_pci, migrate_writes_during_precopy, 600)
{
	struct ivshmem_ctx *c = &self->c;
	struct vfio_precopy_info info;
	struct mig_buf stream = {};
	int fd, nfd, ret;
	u64 n, s = ~c->seed;

	if (!(c->flags & VFIO_MIGRATION_PRE_COPY))
		SKIP(return, "no PRE_COPY");
	ivshmem_fill(_metadata, c);
	reach_state(_metadata, &c->dev[0], PRE_COPY, NULL, 0, &fd);
	ret = read_available(fd, &stream, &n);
	EXPECT_EQ(-ENOMSG, ret);

	/* The guest goes on writing: through the mmap and through pwrite() */
	prng_fill(prng(&s), c->expect + SZ_1M, SZ_1M);
	memcpy(c->mem[0] + SZ_1M, c->expect + SZ_1M, SZ_1M);
	c->expect[5] ^= 0xff;
	c->mem[0][5] = c->expect[5];
	c->expect[c->size - 4097] ^= 0x11;
	c->mem[0][c->size - 4097] = c->expect[c->size - 4097];
	ivshmem_pwrite(_metadata, c, 3 * 4096 - 2, 5, prng(&s));
	ivshmem_pwrite(_metadata, c, c->size / 2 + 100, 3000, prng(&s));
	c->intrmask ^= 0x10;
	ivshmem_set_reg(_metadata, c, 0, IVSHMEM_INTRMASK, c->intrmask);

	ASSERT_EQ(0, vfio_mig_precopy_info(fd, &info));
	TH_LOG("after the writes: initial_bytes %llu, dirty_bytes %llu",
	       (unsigned long long)info.initial_bytes, (unsigned long long)info.dirty_bytes);
	ret = read_available(fd, &stream, &n);
	EXPECT_EQ(-ENOMSG, ret);
	if (c->flags & VFIO_MIGRATION_P2P)
		ASSERT_EQ(0, vfio_mig_set_state(c->dev[0].fd, PRE_COPY_P2P, NULL));
	ASSERT_EQ(0, vfio_mig_set_state(c->dev[0].fd, STOP_COPY, &nfd));
	EXPECT_EQ(-1, nfd);
	ASSERT_EQ(0, read_available(fd, &stream, &n));
	ASSERT_EQ(0, vfio_mig_set_state(c->dev[0].fd, STOP, NULL));
	ASSERT_EQ(0, close(fd));

	resume_qemu_way(_metadata, &c->dev[1], stream.data, stream.len);
	ivshmem_check(_metadata, c);
	mig_buf_free(&stream);
}

/*
 * Save A by read()s into @rd and resume B by write()s from @wr, one window
 * each (unaligned, reused for every call), with odd sizes that also cut
 * through the BAR data of records; then B must hold what A held.
 */
static void migrate_through_windows(struct __test_metadata *_metadata,
				    struct ivshmem_ctx *c, u8 *rd, u8 *wr)
{
	static const size_t sizes[] = { 1, 4096 + 3, 65537, SZ_1M, 31, 8, SZ_1M + 4 };
	struct mig_buf stream = {};
	size_t off;
	ssize_t n;
	int fd, ret, i = 0;

	ivshmem_fill(_metadata, c);
	ASSERT_EQ(0, vfio_mig_set_state(c->dev[0].fd, STOP, NULL));
	ASSERT_EQ(0, vfio_mig_set_state(c->dev[0].fd, STOP_COPY, &fd));
	ASSERT_LE(0, fd);
	do {
		n = timed_read(fd, rd, sizes[i++ % ARRAY_SIZE(sizes)]);
		ASSERT_LE(0, n) TH_LOG("read: %s", strerror(-n));
		mig_buf_reserve(&stream, n);
		memcpy(stream.data + stream.len, rd, n);
		stream.len += n;
	} while (n > 0);
	ASSERT_EQ(0, vfio_mig_set_state(c->dev[0].fd, STOP, NULL));
	ASSERT_EQ(0, vfio_mig_set_state(c->dev[0].fd, RUNNING, NULL));
	ASSERT_EQ(0, close(fd));

	ASSERT_EQ(0, vfio_mig_set_state(c->dev[1].fd, STOP, NULL));
	ASSERT_EQ(0, vfio_mig_set_state(c->dev[1].fd, RESUMING, &fd));
	ASSERT_LE(0, fd);
	for (off = 0; off < stream.len; off += n) {
		size_t len = sizes[i++ % ARRAY_SIZE(sizes)];

		if (len > stream.len - off)
			len = stream.len - off;
		memcpy(wr, stream.data + off, len);
		n = timed_write(fd, wr, len);
		ASSERT_LT(0, n) TH_LOG("write: %s", strerror(-n));
	}
	ret = vfio_mig_set_state(c->dev[1].fd, STOP, NULL);
	ASSERT_EQ(0, ret) TH_LOG("RESUMING -> STOP: %s", strerror(-ret));
	ASSERT_EQ(0, vfio_mig_set_state(c->dev[1].fd, RUNNING, NULL));
	ASSERT_EQ(0, close(fd));
	ivshmem_check(_metadata, c);
	mig_buf_free(&stream);
}

/*
 * The data_fd copies device memory straight between the BAR and the pinned
 * pages of the user's buffer, with 64-bit or 32-bit accesses depending on
 * alignment: unaligned and odd-sized buffers must work.
 */
TEST_F_TIMEOUT(ivshmem_vfio_pci, data_fd_odd_buffers, 600)
{
	u8 *rd = malloc(2 * SZ_1M + 64), *wr = malloc(2 * SZ_1M + 64);

	ASSERT_NE(NULL, rd);
	ASSERT_NE(NULL, wr);
	migrate_through_windows(_metadata, &self->c, rd + 5, wr + 3);
	migrate_through_windows(_metadata, &self->c, rd + 8, wr + 16);
	free(rd);
	free(wr);
}

/*
 * A buffer that cannot be pinned (an mmap() of device memory is VM_PFNMAP)
 * must still work, through a bounce buffer: save A into a window of B's
 * BAR2 mapping and resume B from a window of A's BAR2 mapping.
 */
TEST_F_TIMEOUT(ivshmem_vfio_pci, data_fd_buffers_in_device_memory, 600)
{
	struct ivshmem_ctx *c = &self->c;

	ASSERT_LE(2 * SZ_1M + 64, c->size);
	migrate_through_windows(_metadata, c, c->mem[1] + 5, c->mem[0] + 3);
}

/*
 * The kernel performs the writes of an ioeventfd itself, behind the write
 * tracking's back, and which BAR a request targets cannot be checked
 * without racing the VFIO core's own copy of it: ivshmem-vfio-pci refuses
 * every VFIO_DEVICE_IOEVENTFD while it tracks writes (QEMU then handles such
 * accesses in userspace), on BAR2 as on BAR0, and the device still works.
 */
TEST_F(ivshmem_vfio_pci, ioeventfd_refused_while_tracking)
{
	struct ivshmem_ctx *c = &self->c;
	struct vfio_device_ioeventfd ioe = {
		.argsz = sizeof(ioe),
		.flags = VFIO_DEVICE_IOEVENTFD_32,
		.data = 0x5a5a5a5a,
	};
	const u64 offsets[] = {
		c->bar2[0].offset + 4096, c->bar0[0].offset + IVSHMEM_INTRMASK,
	};
	int efd, i;

	efd = eventfd(0, EFD_CLOEXEC);
	ASSERT_LE(0, efd);
	for (i = 0; i < ARRAY_SIZE(offsets); i++) {
		ioe.fd = efd;
		ioe.offset = offsets[i];
		EXPECT_EQ(-1, ioctl(c->dev[0].fd, VFIO_DEVICE_IOEVENTFD, &ioe))
			TH_LOG("ioeventfd at %#llx accepted", (unsigned long long)ioe.offset);
		EXPECT_EQ(EOPNOTSUPP, errno);
		ioe.fd = -1;
		EXPECT_EQ(-1, ioctl(c->dev[0].fd, VFIO_DEVICE_IOEVENTFD, &ioe));
	}
	ASSERT_EQ(0, close(efd));
	ivshmem_set_reg(_metadata, c, 0, IVSHMEM_INTRMASK, 0x00ff00f1);
	EXPECT_EQ(0x00ff00f1, ivshmem_reg(_metadata, c, 0, IVSHMEM_INTRMASK));
}

/*
 * Map @len bytes of @mem read+write for DMA at @iova in @dev's type1 container, then unmap;
 * 0 or -errno of the map.
 */
static int type1_map_rw(struct vfio_mig_device *dev, void *mem, u64 len, u64 iova)
{
	struct vfio_iommu_type1_dma_map map = {
		.argsz = sizeof(map),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uintptr_t)mem,
		.iova = iova,
		.size = len,
	};
	struct vfio_iommu_type1_dma_unmap unmap = {
		.argsz = sizeof(unmap),
		.iova = iova,
		.size = len,
	};

	if (ioctl(dev->container_fd, VFIO_IOMMU_MAP_DMA, &map))
		return -errno;
	return ioctl(dev->container_fd, VFIO_IOMMU_UNMAP_DMA, &unmap) ? -errno : 0;
}

/*
 * A BAR2 page that was read through the device's mmap() must stay mappable for peer-to-peer
 * DMA (what QEMU does with every BAR it maps): the type1 driver, like KVM, finds the page with
 * follow_pfnmap() and fails on a present read-only PTE. Outside a saving session and inside
 * one (where sent pages are unmapped and faulted in again), in the group/type1 path. The
 * iommufd path cannot map a BAR's mmap() at all in 7.3 (upstream's
 * vfio_dma_mapping_mmio_test expects that failure), so it is not tested here.
 */
TEST(ivshmem_read_bar2_then_map_dma)
{
	struct vfio_mig_device dev = {};
	struct vfio_region_info bar2;
	const u64 page = getpagesize();
	u8 *mem;
	int ret, data_fd = -1;
	u32 i;

	if (nr_devices < 1)
		SKIP(return, "needs an %s device", IVSHMEM_DRIVER);
	ASSERT_EQ(0, vfio_mig_device_lookup(&dev, device_names[0]));
	if (strcmp(dev.driver, IVSHMEM_DRIVER))
		SKIP(return, "%s is bound to %s, not %s", dev.name, dev.driver, IVSHMEM_DRIVER);
	ret = vfio_mig_device_open(&dev, 1);
	ASSERT_EQ(0, ret) TH_LOG("opening %s (group): %s", dev.name, strerror(-ret));
	ASSERT_EQ(0, to_running(&dev));
	ASSERT_EQ(0, region_info(dev.fd, IVSHMEM_BAR2, &bar2));
	ASSERT_LE(8 * page, bar2.size);
	mem = mmap(NULL, bar2.size, PROT_READ | PROT_WRITE, MAP_SHARED, dev.fd, bar2.offset);
	ASSERT_NE(MAP_FAILED, mem);

	for (i = 0; i < 2; i++) {
		u8 *p = mem + (2 * i + 1) * page;

		if (i == 1)
			ASSERT_EQ(0, vfio_mig_set_state(dev.fd, VFIO_DEVICE_STATE_PRE_COPY,
							&data_fd));
		/* A read fault first, then the DMA mapping of that page, read+write. */
		(void)READ_ONCE(*p);
		ret = type1_map_rw(&dev, p, page, (1ULL << 32) + i * page);
		EXPECT_EQ(0, ret) TH_LOG("%s session: MAP_DMA of a read BAR2 page: %s",
					 i ? "in a" : "outside a", strerror(-ret));
		/* An untouched page, and a page written first. */
		ret = type1_map_rw(&dev, p + page, page, (1ULL << 33) + i * page);
		EXPECT_EQ(0, ret) TH_LOG("MAP_DMA of an untouched page: %s", strerror(-ret));
		WRITE_ONCE(p[-page], READ_ONCE(p[-page]));
		ret = type1_map_rw(&dev, p - page, page, (1ULL << 34) + i * page);
		EXPECT_EQ(0, ret) TH_LOG("MAP_DMA of a written page: %s", strerror(-ret));
	}
	if (data_fd >= 0)
		close(data_fd);
	munmap(mem, bar2.size);
	to_running(&dev);
	vfio_mig_device_close(&dev);
}

/* Write @val to the sysfs attribute @path; 0 or -errno. */
static int sysfs_write(const char *path, const char *val)
{
	ssize_t n;
	int fd, err;

	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = write(fd, val, strlen(val));
	err = n < 0 ? -errno : 0;
	close(fd);
	return err;
}

/*
 * A data fd holds a reference to the device, not the device open: the
 * device can be closed and its driver unbound while a data fd is open. The
 * fd then fails with ENODEV, closing it frees what is left (the plan checks
 * kmemleak and the kernel log), and the device, bound again, migrates.
 */
TEST_F_TIMEOUT(ivshmem_vfio_pci, unbind_with_open_data_fd, 600)
{
	struct ivshmem_ctx *c = &self->c;
	struct vfio_mig_device *a = &c->dev[0];
	struct vfio_precopy_info info;
	char path[PATH_MAX + 32], name[sizeof(a->name)];
	struct mig_buf stream = {};
	size_t precopy;
	u8 buf[4096];
	int fd, ret;

	ASSERT_EQ(0, vfio_mig_set_state(a->fd, STOP, NULL));
	ASSERT_EQ(0, vfio_mig_set_state(a->fd, STOP_COPY, &fd));
	ASSERT_LE(0, fd);
	ASSERT_LT(0, timed_read(fd, buf, sizeof(buf)));

	munmap(c->mem[0], c->bar2[0].size);
	c->mem[0] = NULL;
	ASSERT_EQ(0, vfio_mig_device_close(a));
	snprintf(name, sizeof(name), "%s", a->name);
	snprintf(path, sizeof(path), "%s/driver/unbind", a->sysfs);
	ret = sysfs_write(path, name);
	ASSERT_EQ(0, ret) TH_LOG("unbinding %s: %s", name, strerror(-ret));

	/* Unbound: no checks that stop the test before it binds again. */
	EXPECT_EQ(-ENODEV, timed_read(fd, buf, sizeof(buf)));
	EXPECT_NE(0, vfio_mig_precopy_info(fd, &info));
	EXPECT_EQ(0, close(fd));
	snprintf(path, sizeof(path), "/sys/bus/pci/drivers/%s/bind", IVSHMEM_DRIVER);
	ret = sysfs_write(path, name);
	ASSERT_EQ(0, ret) TH_LOG("binding %s again: %s", name, strerror(-ret));

	ASSERT_EQ(0, vfio_mig_device_lookup(a, name));
	ASSERT_STREQ(IVSHMEM_DRIVER, a->driver);
	ret = vfio_mig_device_open(a, 0);
	ASSERT_EQ(0, ret) TH_LOG("opening %s again: %s", name, strerror(-ret));
	ASSERT_EQ(0, to_running(a));
	c->mem[0] = mmap(NULL, c->bar2[0].size, PROT_READ | PROT_WRITE, MAP_SHARED, a->fd,
			 c->bar2[0].offset);
	ASSERT_NE(MAP_FAILED, c->mem[0]);
	ivshmem_fill(_metadata, c);
	save_qemu_way(_metadata, a, c->flags, false, &stream, &precopy);
	resume_qemu_way(_metadata, &c->dev[1], stream.data, stream.len);
	ivshmem_check(_metadata, c);
	mig_buf_free(&stream);
}

TEST_F_TIMEOUT(ivshmem_vfio_pci, stream_format, 600)
{
	struct ivshmem_ctx *c = &self->c;
	struct mig_buf stream = {}, fresh = {};
	struct mig_rec *recs, *frecs;
	int nr, fnr, i, regs = 0;
	size_t precopy;
	const u8 *p;
	u8 *image;
	u64 data_size;

	ivshmem_fill(_metadata, c);
	save_qemu_way(_metadata, &c->dev[0], c->flags, false, &stream, &precopy);
	ASSERT_EQ(0, vfio_mig_set_state(c->dev[0].fd, RUNNING, NULL));
	ASSERT_EQ(0, parse_stream(stream.data, stream.len, &recs, &nr))
		TH_LOG("the stream does not split into whole records");
	ASSERT_LE(3, nr);

	/* HEADER: first, magic, version, identity */
	ASSERT_EQ(MIG_REC_HEADER, recs[0].type);
	ASSERT_EQ(MIG_HEADER_LEN, recs[0].length);
	p = rec_payload(stream.data, &recs[0]);
	EXPECT_EQ(0, memcmp(p, MIG_MAGIC, 8));
	EXPECT_EQ(MIG_VERSION, get_le32(p + 8));
	EXPECT_EQ(MIG_IDENTITY_LEN, get_le32(p + 12));
	p += 16;
	EXPECT_EQ(config_word(_metadata, c, 0, PCI_VENDOR_ID), get_le32(p) & 0xffff);
	EXPECT_EQ(config_word(_metadata, c, 0, PCI_DEVICE_ID), get_le32(p) >> 16);
	EXPECT_EQ(config_word(_metadata, c, 0, PCI_SUBSYSTEM_VENDOR_ID), get_le32(p + 4) & 0xffff);
	EXPECT_EQ(config_word(_metadata, c, 0, PCI_SUBSYSTEM_ID), get_le32(p + 4) >> 16);
	EXPECT_EQ(c->size, get_le64(p + 8));
	EXPECT_NE(0, recs[0].session);

	/* Replaying the MEM records gives BAR2 back */
	image = calloc(1, c->size);
	ASSERT_NE(NULL, image);
	for (i = 1; i < nr; i++) {
		const struct mig_rec *r = &recs[i];
		u64 off, len;

		EXPECT_EQ(recs[0].session, r->session) TH_LOG("record %d", i);
		if (r->off < precopy)
			EXPECT_EQ(MIG_REC_MEM, r->type) TH_LOG("PRE_COPY record %d", i);
		if (i == nr - 1)
			ASSERT_EQ(MIG_REC_END, r->type) TH_LOG("last record");
		switch (r->type) {
		case MIG_REC_MEM:
			ASSERT_LE(8, r->length);
			ASSERT_GE(MIG_MEM_MAX_DATA + 8, r->length);
			off = get_le64(rec_payload(stream.data, r));
			len = r->length - 8;
			ASSERT_GE(c->size, off);
			ASSERT_GE(c->size - off, len);
			memcpy(image + off, rec_payload(stream.data, r) + 8, len);
			break;
		case MIG_REC_REGS:
			regs++;
			ASSERT_EQ(8, r->length);
			EXPECT_EQ(c->intrmask, get_le32(rec_payload(stream.data, r)));
			EXPECT_EQ(c->intrstatus, get_le32(rec_payload(stream.data, r) + 4));
			break;
		case MIG_REC_END:
			EXPECT_EQ(nr - 1, i) TH_LOG("END is not last");
			ASSERT_EQ(MIG_END_LEN, r->length);
			EXPECT_EQ(i, get_le64(rec_payload(stream.data, r)));
			EXPECT_EQ(r->off, get_le64(rec_payload(stream.data, r) + 8));
			break;
		default:
			EXPECT_TRUE(r->flags & MIG_REC_OPTIONAL)
				TH_LOG("unknown mandatory record type %#x", r->type);
		}
	}
	EXPECT_EQ(1, regs);
	expect_mem(_metadata, image, c->expect, c->size, "BAR2 replayed from the stream");
	free(image);

	/*
	 * A session started in STOP_COPY: its own id, as many bytes as
	 * MIG_DATA_SIZE reported before, in STOP (no session: a whole new stream)
	 */
	ASSERT_EQ(0, vfio_mig_set_state(c->dev[0].fd, STOP, NULL));
	ASSERT_EQ(0, vfio_mig_get_data_size(c->dev[0].fd, &data_size));
	ASSERT_EQ(0, vfio_mig_set_state(c->dev[0].fd, RUNNING, NULL));
	save_stop_copy(_metadata, &c->dev[0], &fresh);
	ASSERT_EQ(0, parse_stream(fresh.data, fresh.len, &frecs, &fnr));
	EXPECT_NE(recs[0].session, frecs[0].session) TH_LOG("two sessions, one id");
	EXPECT_EQ(MIG_REC_END, frecs[fnr - 1].type);
	EXPECT_EQ(data_size, fresh.len);
	free(recs);
	free(frecs);
	mig_buf_free(&stream);
	mig_buf_free(&fresh);
}

/* A stream to write: pieces of a valid stream and of new records. */
struct stream_builder {
	struct { const u8 *p; size_t len; } seg[32];
	int nseg;
	u64 bytes;
	u64 records;
};

static void sb_put(struct stream_builder *b, const void *p, size_t len, int records)
{
	if (b->nseg == ARRAY_SIZE(b->seg))
		abort();
	b->seg[b->nseg].p = p;
	b->seg[b->nseg++].len = len;
	b->bytes += len;
	b->records += records;
}

/* Records @first..@last of @s as they are */
static void sb_recs(struct stream_builder *b, const u8 *s, const struct mig_rec *recs,
		    int first, int last)
{
	if (last < first)
		return;
	sb_put(b, s + recs[first].off,
	       recs[last].off + MIG_REC_HDR_SIZE + recs[last].length - recs[first].off,
	       last - first + 1);
}

/* A new record; its header says @length, @plen payload bytes follow. */
static u8 *sb_new(struct stream_builder *b, u32 type, u32 flags, u64 length,
		  u64 session, const void *payload, size_t plen)
{
	u8 *r = calloc(1, MIG_REC_HDR_SIZE + plen);

	if (!r)
		abort();
	put_le32(r, type);
	put_le32(r + 4, flags);
	put_le64(r + 8, length);
	put_le64(r + 16, session);
	if (payload)
		memcpy(r + MIG_REC_HDR_SIZE, payload, plen);
	sb_put(b, r, MIG_REC_HDR_SIZE + plen, 1);
	return r;
}

/* A copy of record @r of @s, to be changed. */
static u8 *sb_copy(struct stream_builder *b, const u8 *s, const struct mig_rec *r)
{
	return sb_new(b, r->type, r->flags, r->length, r->session,
		      rec_payload(s, r), r->length);
}

/* END with counts that match what was added, plus deltas */
static void sb_end(struct stream_builder *b, u64 session, int drecords, int dbytes)
{
	u8 payload[MIG_END_LEN];

	put_le64(payload, b->records + drecords);
	put_le64(payload + 8, b->bytes + dbytes);
	sb_new(b, MIG_REC_END, 0, MIG_END_LEN, session, payload, MIG_END_LEN);
}

enum corruption {
	BAD_MAGIC,
	BAD_VERSION,
	WRONG_IDENTITY,
	UNKNOWN_MANDATORY_RECORD,
	UNKNOWN_OPTIONAL_RECORD,
	MEM_OFFSET_PAST_END,
	MEM_RANGE_CROSSES_END,
	MEM_OFFSET_LENGTH_OVERFLOW,
	OVERSIZED_LENGTH,
	MEM_RECORD_TOO_SHORT,
	TRUNCATED_NO_END,
	TRUNCATED_IN_RECORD,
	TRUNCATED_IN_HEADER,
	SECOND_HEADER,
	RECORD_AFTER_END,
	FOREIGN_SESSION_RECORD,
	END_WRONG_RECORD_COUNT,
	END_WRONG_BYTE_COUNT,
};

enum resume_outcome {
	/* The stream is valid: resume succeeds, B holds A's state */
	ACCEPTED,
	/* A write() or RESUMING -> STOP fails */
	REJECTED,
	/* Every write() succeeds, RESUMING -> STOP fails */
	REJECTED_AT_STOP,
};

FIXTURE(ivshmem_vfio_pci_resume) {
	struct ivshmem_ctx c;
	/* A session of A started in STOP_COPY, and the start of another */
	struct mig_buf stream, foreign;
	struct mig_rec *recs, *frecs;
	int nr, fnr;
};

FIXTURE_VARIANT(ivshmem_vfio_pci_resume) {
	enum corruption corruption;
	enum resume_outcome outcome;
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_resume, bad_magic) {
	.corruption = BAD_MAGIC,
	.outcome = REJECTED,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_resume, bad_version) {
	.corruption = BAD_VERSION,
	.outcome = REJECTED,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_resume, wrong_identity) {
	.corruption = WRONG_IDENTITY,
	.outcome = REJECTED,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_resume, unknown_mandatory_record) {
	.corruption = UNKNOWN_MANDATORY_RECORD,
	.outcome = REJECTED,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_resume, unknown_optional_record) {
	.corruption = UNKNOWN_OPTIONAL_RECORD,
	.outcome = ACCEPTED,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_resume, mem_offset_past_end) {
	.corruption = MEM_OFFSET_PAST_END,
	.outcome = REJECTED,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_resume, mem_range_crosses_end) {
	.corruption = MEM_RANGE_CROSSES_END,
	.outcome = REJECTED,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_resume, mem_offset_length_overflow) {
	.corruption = MEM_OFFSET_LENGTH_OVERFLOW,
	.outcome = REJECTED,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_resume, oversized_length) {
	.corruption = OVERSIZED_LENGTH,
	.outcome = REJECTED,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_resume, mem_record_too_short) {
	.corruption = MEM_RECORD_TOO_SHORT,
	.outcome = REJECTED,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_resume, truncated_no_end) {
	.corruption = TRUNCATED_NO_END,
	.outcome = REJECTED_AT_STOP,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_resume, truncated_in_record) {
	.corruption = TRUNCATED_IN_RECORD,
	.outcome = REJECTED_AT_STOP,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_resume, truncated_in_header) {
	.corruption = TRUNCATED_IN_HEADER,
	.outcome = REJECTED_AT_STOP,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_resume, second_header) {
	.corruption = SECOND_HEADER,
	.outcome = REJECTED,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_resume, record_after_end) {
	.corruption = RECORD_AFTER_END,
	.outcome = REJECTED,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_resume, foreign_session_record) {
	.corruption = FOREIGN_SESSION_RECORD,
	.outcome = REJECTED,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_resume, end_wrong_record_count) {
	.corruption = END_WRONG_RECORD_COUNT,
	.outcome = REJECTED,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_resume, end_wrong_byte_count) {
	.corruption = END_WRONG_BYTE_COUNT,
	.outcome = REJECTED,
};

FIXTURE_SETUP(ivshmem_vfio_pci_resume)
{
	struct ivshmem_ctx *c = &self->c;
	int fd, ret;
	u64 n;

	ivshmem_setup(_metadata, c);
	if (_metadata->exit_code)
		return;
	ivshmem_fill(_metadata, c);
	save_stop_copy(_metadata, &c->dev[0], &self->stream);
	ASSERT_EQ(0, parse_stream(self->stream.data, self->stream.len, &self->recs,
				  &self->nr));
	ASSERT_LE(4, self->nr);
	ASSERT_EQ(MIG_REC_HEADER, self->recs[0].type);
	ASSERT_EQ(MIG_REC_MEM, self->recs[1].type);
	ASSERT_EQ(MIG_REC_END, self->recs[self->nr - 1].type);

	/* The HEADER and first MEM record of another session */
	reach_state(_metadata, &c->dev[0], STOP_COPY, NULL, 0, &fd);
	do {
		mig_buf_reserve(&self->foreign, SZ_1M);
		ret = timed_read(fd, self->foreign.data + self->foreign.len, SZ_1M);
		ASSERT_LT(0, ret);
		self->foreign.len += ret;
		free(self->frecs);
		parse_stream(self->foreign.data, self->foreign.len, &self->frecs, &self->fnr);
	} while (self->fnr < 3);
	n = self->frecs[2].off;
	self->foreign.len = n;
	self->fnr = 2;
	ASSERT_EQ(MIG_REC_MEM, self->frecs[1].type);
	ASSERT_NE(self->recs[0].session, self->frecs[0].session);
	ASSERT_EQ(0, vfio_mig_set_state(c->dev[0].fd, RUNNING, NULL));
	ASSERT_EQ(0, close(fd));
}

FIXTURE_TEARDOWN(ivshmem_vfio_pci_resume)
{
	ivshmem_teardown(&self->c);
	mig_buf_free(&self->stream);
	mig_buf_free(&self->foreign);
	free(self->recs);
	free(self->frecs);
}

TEST_F_TIMEOUT(ivshmem_vfio_pci_resume, corrupt_stream, 600)
{
	struct ivshmem_ctx *c = &self->c;
	struct vfio_mig_device *b = &c->dev[1];
	const struct mig_rec *recs = self->recs, *mem = &self->recs[1];
	const u8 *s = self->stream.data;
	int nr = self->nr, end = nr - 1, last_mem = 1;
	u64 session = recs[0].session;
	struct stream_builder sb = {};
	u8 *r, zeros[16] = {};
	int i, fd, ret, werr = 0, again = 0;
	u32 state;

	for (i = 1; i < end; i++) {
		if (recs[i].type == MIG_REC_MEM)
			last_mem = i;
	}

	switch (variant->corruption) {
	case BAD_MAGIC:
	case BAD_VERSION:
	case WRONG_IDENTITY:
		r = sb_copy(&sb, s, &recs[0]) + MIG_REC_HDR_SIZE;
		if (variant->corruption == BAD_MAGIC)
			r[0] ^= 0xff;
		else if (variant->corruption == BAD_VERSION)
			put_le32(r + 8, MIG_VERSION + 1);
		else
			put_le64(r + 16 + 8, c->size * 2);
		sb_recs(&sb, s, recs, 1, end);
		break;
	case UNKNOWN_MANDATORY_RECORD:
	case UNKNOWN_OPTIONAL_RECORD:
		sb_recs(&sb, s, recs, 0, 0);
		sb_new(&sb, 0x7ff0, variant->corruption == UNKNOWN_OPTIONAL_RECORD ?
		       MIG_REC_OPTIONAL : 0, sizeof(zeros), session, zeros, sizeof(zeros));
		sb_recs(&sb, s, recs, 1, end - 1);
		sb_end(&sb, session, 0, 0);
		break;
	case MEM_OFFSET_PAST_END:
	case MEM_RANGE_CROSSES_END:
	case MEM_OFFSET_LENGTH_OVERFLOW:
	case OVERSIZED_LENGTH: {
		u64 len = mem->length - 8;

		/* The first MEM record (recs[1]) with a new header and offset */
		sb_recs(&sb, s, recs, 0, 0);
		r = sb_new(&sb, MIG_REC_MEM, mem->flags, mem->length, session,
			   rec_payload(s, mem), 8);
		if (variant->corruption == MEM_OFFSET_PAST_END)
			put_le64(r + MIG_REC_HDR_SIZE, c->size);
		else if (variant->corruption == MEM_RANGE_CROSSES_END)
			put_le64(r + MIG_REC_HDR_SIZE, c->size - len / 2);
		else if (variant->corruption == MEM_OFFSET_LENGTH_OVERFLOW)
			put_le64(r + MIG_REC_HDR_SIZE, ~0ULL - len / 2);
		else
			put_le64(r + 8, 1ULL << 40);
		sb_put(&sb, rec_payload(s, mem) + 8, len, 0);
		sb_recs(&sb, s, recs, 2, end);
		break;
	}
	case MEM_RECORD_TOO_SHORT:
		sb_recs(&sb, s, recs, 0, 0);
		sb_new(&sb, MIG_REC_MEM, 0, 4, session, zeros, 4);
		sb_recs(&sb, s, recs, 1, end - 1);
		sb_end(&sb, session, 0, 0);
		break;
	case TRUNCATED_NO_END:
		sb_recs(&sb, s, recs, 0, end - 1);
		break;
	case TRUNCATED_IN_RECORD:
		sb_recs(&sb, s, recs, 0, last_mem - 1);
		sb_put(&sb, s + recs[last_mem].off,
		       MIG_REC_HDR_SIZE + recs[last_mem].length / 2, 1);
		break;
	case TRUNCATED_IN_HEADER:
		sb_recs(&sb, s, recs, 0, end - 1);
		sb_put(&sb, s + recs[end].off, MIG_REC_HDR_SIZE / 2, 1);
		break;
	case SECOND_HEADER:
		sb_recs(&sb, s, recs, 0, 1);
		sb_recs(&sb, s, recs, 0, 0);
		sb_recs(&sb, s, recs, 2, end - 1);
		sb_end(&sb, session, 0, 0);
		break;
	case RECORD_AFTER_END:
		sb_recs(&sb, s, recs, 0, end);
		sb_recs(&sb, s, recs, 1, 1);
		break;
	case FOREIGN_SESSION_RECORD:
		sb_recs(&sb, s, recs, 0, 0);
		sb_recs(&sb, self->foreign.data, self->frecs, 1, 1);
		sb_recs(&sb, s, recs, 2, end - 1);
		sb_end(&sb, session, 0, 0);
		break;
	case END_WRONG_RECORD_COUNT:
	case END_WRONG_BYTE_COUNT:
		sb_recs(&sb, s, recs, 0, end - 1);
		if (variant->corruption == END_WRONG_RECORD_COUNT)
			sb_end(&sb, session, 1, 0);
		else
			sb_end(&sb, session, 0, 1);
		break;
	}

	/* B: RUNNING -> STOP -> RESUMING, write until the first failure */
	ASSERT_EQ(0, vfio_mig_set_state(b->fd, STOP, NULL));
	ASSERT_EQ(0, vfio_mig_set_state(b->fd, RESUMING, &fd));
	ASSERT_LE(0, fd);
	for (i = 0; i < sb.nseg && !werr; i++) {
		size_t done;

		werr = write_stream(fd, sb.seg[i].p, sb.seg[i].len, &done);
		if (werr)
			again = timed_write(fd, sb.seg[i].p + done, sb.seg[i].len - done);
	}
	ret = vfio_mig_set_state(b->fd, STOP, NULL);

	if (variant->outcome == ACCEPTED) {
		EXPECT_EQ(0, werr) TH_LOG("write(): %s", strerror(-werr));
		ASSERT_EQ(0, ret) TH_LOG("RESUMING -> STOP: %s", strerror(-ret));
		ASSERT_EQ(0, vfio_mig_set_state(b->fd, RUNNING, NULL));
		ivshmem_check(_metadata, c);
		ASSERT_EQ(0, close(fd));
		return;
	}

	TH_LOG("write(): %s; RESUMING -> STOP: %s", werr ? strerror(-werr) : "ok",
	       ret ? strerror(-ret) : "ok");
	if (variant->outcome == REJECTED_AT_STOP)
		EXPECT_EQ(0, werr) TH_LOG("a write() of a valid prefix failed");
	if (werr)
		EXPECT_GT(0, again) TH_LOG("a write() after the failed one succeeded");
	EXPECT_NE(0, ret) TH_LOG("RESUMING -> STOP accepted the stream");
	ASSERT_EQ(0, vfio_mig_get_state(b->fd, &state));
	if (ret)
		EXPECT_TRUE(state == RESUMING || state == VFIO_DEVICE_STATE_ERROR)
			TH_LOG("in %s after the failed RESUMING -> STOP",
			       vfio_mig_state_name(state));

	/* B recovers: reset, then a clean resume */
	ASSERT_EQ(0, vfio_mig_reset(b->fd));
	ASSERT_STATE(b, RUNNING);
	EXPECT_EQ(-ENODEV, probe_data_fd(fd, false));
	ASSERT_EQ(0, close(fd));
	resume_qemu_way(_metadata, b, self->stream.data, self->stream.len);
	ivshmem_check(_metadata, c);
}

/* ------------------------------------------------------------------ */
/* ivshmem-vfio-pci: dirty tracking of BAR2 during a saving session    */

/*
 * While a saving session is open, every write to BAR2 (through the mmap or
 * pwrite() on the region) marks its 4 KiB page. PRE_COPY streams the initial
 * image, then each page written since it was sent as a MEM record of its own;
 * dirty_bytes counts those records exactly, the unread ones included.
 * STOP_COPY streams what is left, then REGS and END.
 */
#define DIRTY_PAGE		SZ_4K
#define PAGE_REC_SIZE		(MIG_REC_HDR_SIZE + 8 + DIRTY_PAGE)
#define IMAGE_REC_SIZE		(MIG_REC_HDR_SIZE + 8 + MIG_MEM_MAX_DATA)
#define HEADER_REC_SIZE		(MIG_REC_HDR_SIZE + MIG_HEADER_LEN)
#define STOP_COPY_TAIL		(2 * MIG_REC_HDR_SIZE + 8 + MIG_END_LEN)

/*
 * The pages of A's BAR2 a test wrote since they were last sent: PAGE_SENT
 * when they had been sent before the write (dirty_bytes must count them),
 * PAGE_MAYBE when the test cannot tell whether the record holding them was
 * produced yet.
 */
enum { PAGE_UNTOUCHED, PAGE_MAYBE, PAGE_SENT };

struct page_set {
	u8 *state;
	u64 nr;
	u64 sent;
	u64 maybe;
};

static int pages_init(struct page_set *ps, u64 size)
{
	ps->nr = size / DIRTY_PAGE;
	ps->state = calloc(ps->nr, 1);
	ps->sent = 0;
	ps->maybe = 0;
	return ps->state ? 0 : -ENOMEM;
}

static void pages_clear(struct page_set *ps)
{
	memset(ps->state, PAGE_UNTOUCHED, ps->nr);
	ps->sent = 0;
	ps->maybe = 0;
}

static void pages_add(struct page_set *ps, u64 off, u64 len, u8 how)
{
	u64 p;

	for (p = off / DIRTY_PAGE; p <= (off + len - 1) / DIRTY_PAGE; p++) {
		if (ps->state[p] >= how)
			continue;
		if (ps->state[p] == PAGE_MAYBE)
			ps->maybe--;
		ps->state[p] = how;
		if (how == PAGE_SENT)
			ps->sent++;
		else
			ps->maybe++;
	}
}

/* dirty_bytes must be within what the test knows of the pages it wrote */
static void expect_dirty(struct __test_metadata *_metadata, int fd,
			 const struct page_set *ps, const char *when)
{
	struct vfio_precopy_info info;

	ASSERT_EQ(0, vfio_mig_precopy_info(fd, &info));
	EXPECT_LE(ps->sent * PAGE_REC_SIZE, info.dirty_bytes)
		TH_LOG("%s: dirty_bytes %llu, %llu pages written after they were sent",
		       when, (unsigned long long)info.dirty_bytes,
		       (unsigned long long)ps->sent);
	EXPECT_GE((ps->sent + ps->maybe) * PAGE_REC_SIZE, info.dirty_bytes)
		TH_LOG("%s: dirty_bytes %llu, %llu pages written after they were sent, %llu maybe",
		       when, (unsigned long long)info.dirty_bytes,
		       (unsigned long long)ps->sent, (unsigned long long)ps->maybe);
}

/* Write a pattern to A's BAR2 through the mmap or pwrite(), mirrored in c->expect. */
static void ivshmem_write(struct __test_metadata *_metadata, struct ivshmem_ctx *c,
			  u64 off, size_t len, u64 seed, bool by_mmap)
{
	ASSERT_TRUE(len && off < c->size && len <= c->size - off);
	prng_fill(seed, c->expect + off, len);
	if (by_mmap)
		memcpy(c->mem[0] + off, c->expect + off, len);
	else
		ASSERT_EQ(len, pwrite(c->dev[0].fd, c->expect + off, len,
				      c->bar2[0].offset + off));
}

/*
 * A random range of 1 byte to 3 pages in [@lo, @hi) (page-aligned, at least
 * 4 pages): whole pages, a part of one page, across a page boundary, or
 * anywhere.
 */
static void random_range(u64 *s, u64 lo, u64 hi, u64 *off, size_t *len)
{
	u64 pages = (hi - lo) / DIRTY_PAGE, before;

	switch (prng(s) % 4) {
	case 0:
		*len = DIRTY_PAGE * (1 + prng(s) % 3);
		*off = lo + DIRTY_PAGE * (prng(s) % (pages - 2));
		break;
	case 1:
		*len = 1 + prng(s) % (DIRTY_PAGE / 2);
		*off = lo + DIRTY_PAGE * (prng(s) % pages) +
		       prng(s) % (DIRTY_PAGE - *len + 1);
		break;
	case 2:
		before = 1 + prng(s) % (DIRTY_PAGE - 1);
		*len = before + 1 + prng(s) % (3 * DIRTY_PAGE - before);
		*off = lo + DIRTY_PAGE * (1 + prng(s) % (pages - 3)) - before;
		break;
	default:
		*len = 1 + prng(s) % (3 * DIRTY_PAGE);
		*off = lo + prng(s) % (hi - lo - *len + 1);
	}
}

/*
 * During the initial image, after @done bytes of the session were read:
 * [0, *sent) was sent, [*unsent, size) was not. Initial records are produced
 * one at a time, when the previous one was read to its end.
 */
static void image_zones(u64 size, u64 done, u64 *sent, u64 *unsent)
{
	u64 full = 0;

	if (done > HEADER_REC_SIZE)
		full = (done - HEADER_REC_SIZE) / IMAGE_REC_SIZE;
	*sent = full * SZ_1M < size ? full * SZ_1M : size;
	*unsent = (full + 1) * SZ_1M < size ? (full + 1) * SZ_1M : size;
}

static u8 pump_buf[SZ_1M];

/*
 * One read() of at most @max bytes of A's saving fd, written on to B's
 * resuming fd (if @to >= 0). Returns the bytes moved, 0 at the end of the
 * stream or -errno.
 */
static ssize_t pump(struct __test_metadata *_metadata, int from, int to, size_t max)
{
	ssize_t n;
	int ret;

	n = timed_read(from, pump_buf, max < sizeof(pump_buf) ? max : sizeof(pump_buf));
	if (n > 0 && to >= 0) {
		ret = write_stream(to, pump_buf, n, NULL);
		ASSERT_EQ(0, ret) TH_LOG("resuming fd: %s", strerror(-ret));
	}
	return n;
}

/* Read exactly @len bytes of a saving fd; *done counts them. */
static void pump_exactly(struct __test_metadata *_metadata, int from, int to,
			 u64 len, u64 *done)
{
	ssize_t n;

	while (len) {
		n = pump(_metadata, from, to, len);
		ASSERT_LT(0, n) TH_LOG("read: %s", n ? strerror(-n) : "end of stream");
		len -= n;
		*done += n;
	}
}

TEST_F_TIMEOUT(ivshmem_vfio_pci, dirty_bytes_follow_writes_and_reads, 300)
{
	struct ivshmem_ctx *c = &self->c;
	struct vfio_precopy_info info, prev;
	const u64 chunk = 2 * PAGE_REC_SIZE + 100;
	const u64 mid = c->size / 2;
	struct mig_buf got = {};
	struct mig_rec *recs = NULL;
	struct page_set ps = {};
	int fd, ret, nr = 0, i, reads = 0;
	static u8 page[DIRTY_PAGE];
	struct pollfd pfd;
	u64 n, s = c->seed;
	ssize_t r;

	if (!(c->flags & VFIO_MIGRATION_PRE_COPY))
		SKIP(return, "no PRE_COPY");
	ASSERT_LE(SZ_1M, c->size);
	ASSERT_EQ(0, pages_init(&ps, c->size));
	reach_state(_metadata, &c->dev[0], PRE_COPY, NULL, 0, &fd);
	ret = read_available(fd, NULL, &n);
	EXPECT_EQ(-ENOMSG, ret) TH_LOG("draining the initial image: %s", strerror(-ret));
	ASSERT_EQ(0, vfio_mig_precopy_info(fd, &info));
	EXPECT_EQ(0, info.initial_bytes);
	EXPECT_EQ(0, info.dirty_bytes) TH_LOG("dirty_bytes before any write");

	/* 13 pages: sub-page, whole pages, across page boundaries, the last byte */
	ivshmem_write(_metadata, c, 10 * DIRTY_PAGE + 100, 1, prng(&s), true);
	ivshmem_write(_metadata, c, 20 * DIRTY_PAGE, DIRTY_PAGE, prng(&s), true);
	ivshmem_write(_metadata, c, 31 * DIRTY_PAGE - 5, 10, prng(&s), true);
	ivshmem_write(_metadata, c, c->size - 1, 1, prng(&s), true);
	ivshmem_write(_metadata, c, 40 * DIRTY_PAGE + 7, 1, prng(&s), false);
	ivshmem_write(_metadata, c, 51 * DIRTY_PAGE - 1, 2, prng(&s), false);
	ivshmem_write(_metadata, c, 60 * DIRTY_PAGE, 3 * DIRTY_PAGE, prng(&s), false);
	ivshmem_write(_metadata, c, mid + DIRTY_PAGE - 3000, 6000, prng(&s), false);
	/* Pages written before, through the other path: no new page */
	ivshmem_write(_metadata, c, 20 * DIRTY_PAGE + 9, 1, prng(&s), false);
	ivshmem_write(_metadata, c, 40 * DIRTY_PAGE + 8, 1, prng(&s), true);
	ivshmem_write(_metadata, c, c->size - 1, 1, prng(&s), false);
	pages_add(&ps, 10 * DIRTY_PAGE + 100, 1, PAGE_SENT);
	pages_add(&ps, 20 * DIRTY_PAGE, DIRTY_PAGE, PAGE_SENT);
	pages_add(&ps, 31 * DIRTY_PAGE - 5, 10, PAGE_SENT);
	pages_add(&ps, c->size - 1, 1, PAGE_SENT);
	pages_add(&ps, 40 * DIRTY_PAGE + 7, 1, PAGE_SENT);
	pages_add(&ps, 51 * DIRTY_PAGE - 1, 2, PAGE_SENT);
	pages_add(&ps, 60 * DIRTY_PAGE, 3 * DIRTY_PAGE, PAGE_SENT);
	pages_add(&ps, mid + DIRTY_PAGE - 3000, 6000, PAGE_SENT);
	ASSERT_EQ(13, ps.sent);

	ASSERT_EQ(0, vfio_mig_precopy_info(fd, &info));
	EXPECT_EQ(0, info.initial_bytes);
	EXPECT_EQ(ps.sent * PAGE_REC_SIZE, info.dirty_bytes)
		TH_LOG("%llu pages written: dirty_bytes %llu, expected %llu",
		       (unsigned long long)ps.sent, (unsigned long long)info.dirty_bytes,
		       (unsigned long long)(ps.sent * PAGE_REC_SIZE));
	pfd = (struct pollfd){ .fd = fd, .events = POLLIN };
	EXPECT_EQ(1, poll(&pfd, 1, 0)) TH_LOG("no POLLIN with dirty pages");

	/* Reads of a fixed size end in the middle of records */
	for (;;) {
		prev = info;
		mig_buf_reserve(&got, chunk);
		r = timed_read(fd, got.data + got.len, chunk);
		if (r <= 0)
			break;
		got.len += r;
		reads++;
		ASSERT_EQ(0, vfio_mig_precopy_info(fd, &info));
		EXPECT_EQ(0, info.initial_bytes);
		EXPECT_EQ(prev.dirty_bytes - r, info.dirty_bytes)
			TH_LOG("read %zd bytes: dirty_bytes %llu -> %llu", r,
			       (unsigned long long)prev.dirty_bytes,
			       (unsigned long long)info.dirty_bytes);
		if (_metadata->exit_code || info.dirty_bytes > prev.dirty_bytes)
			break;
	}
	EXPECT_EQ(-ENOMSG, r) TH_LOG("read() with nothing pending: %zd", r);
	EXPECT_EQ(0, info.dirty_bytes);
	EXPECT_LE(ps.sent * PAGE_REC_SIZE / chunk, reads);
	TH_LOG("%llu pages written, %zu bytes read in %d reads of %llu bytes",
	       (unsigned long long)ps.sent, got.len, reads, (unsigned long long)chunk);

	/* What was read: each written page once, in a record of its own, as it is now */
	EXPECT_EQ(ps.sent * PAGE_REC_SIZE, got.len);
	EXPECT_EQ(0, parse_stream(got.data, got.len, &recs, &nr));
	EXPECT_EQ(ps.sent, nr);
	for (i = 0; i < nr; i++) {
		const u8 *p = rec_payload(got.data, &recs[i]);
		u64 off = get_le64(p);

		EXPECT_EQ(MIG_REC_MEM, recs[i].type);
		ASSERT_EQ(8 + DIRTY_PAGE, recs[i].length) TH_LOG("record %d", i);
		ASSERT_EQ(0, off % DIRTY_PAGE);
		ASSERT_GT(c->size, off);
		EXPECT_EQ(PAGE_SENT, ps.state[off / DIRTY_PAGE])
			TH_LOG("page %#llx sent, not written or sent twice",
			       (unsigned long long)off);
		ps.state[off / DIRTY_PAGE] = PAGE_UNTOUCHED;
		/* Through the region: a fault on the mmap counts as a write, reads too */
		ASSERT_EQ(DIRTY_PAGE, pread(c->dev[0].fd, page, DIRTY_PAGE,
					    c->bar2[0].offset + off));
		EXPECT_EQ(0, memcmp(p + 8, page, DIRTY_PAGE))
			TH_LOG("page %#llx: stale content", (unsigned long long)off);
	}
	free(recs);

	/* Sent again, the pages are tracked again */
	pages_clear(&ps);
	ivshmem_write(_metadata, c, 20 * DIRTY_PAGE + 1, 1, prng(&s), true);
	ivshmem_write(_metadata, c, 61 * DIRTY_PAGE + 1, 1, prng(&s), false);
	ASSERT_EQ(0, vfio_mig_precopy_info(fd, &info));
	EXPECT_EQ(2 * PAGE_REC_SIZE, info.dirty_bytes) TH_LOG("writes to pages sent again");
	ret = read_available(fd, NULL, &n);
	EXPECT_EQ(-ENOMSG, ret);
	EXPECT_EQ(2 * PAGE_REC_SIZE, n);

	ASSERT_EQ(0, vfio_mig_set_state(c->dev[0].fd, RUNNING, NULL));
	ASSERT_EQ(0, close(fd));
	mig_buf_free(&got);
	free(ps.state);
}

/*
 * Just before STOP_COPY, initial_bytes + dirty_bytes is what STOP_COPY
 * streams before REGS and END: in the middle of the initial image, and
 * after it with some dirty pages read, some not.
 */
TEST_F_TIMEOUT(ivshmem_vfio_pci, precopy_info_predicts_stop_copy, 300)
{
	struct ivshmem_ctx *c = &self->c;
	struct vfio_precopy_info info;
	u64 n, done, sent, unsent, want, s = ~c->seed;
	int pass, fd, ret;

	if (!(c->flags & VFIO_MIGRATION_PRE_COPY))
		SKIP(return, "no PRE_COPY");
	ASSERT_LE(8 * SZ_1M, c->size);
	for (pass = 0; pass < 2; pass++) {
		reach_state(_metadata, &c->dev[0], PRE_COPY, NULL, 0, &fd);
		done = 0;
		if (pass == 0) {
			/* Three records and a bit of the fourth */
			pump_exactly(_metadata, fd, -1, HEADER_REC_SIZE + 3 * IMAGE_REC_SIZE + 17,
				     &done);
			image_zones(c->size, done, &sent, &unsent);
			ASSERT_EQ(3 * SZ_1M, sent);
			ivshmem_write(_metadata, c, 0, 1, prng(&s), false);
			ivshmem_write(_metadata, c, SZ_1M - 3, 6, prng(&s), true);
			ivshmem_write(_metadata, c, sent + 5, 3, prng(&s), true);
			ivshmem_write(_metadata, c, unsent + SZ_1M, DIRTY_PAGE, prng(&s), false);
			ivshmem_write(_metadata, c, c->size - 1, 1, prng(&s), true);
		} else {
			ret = read_available(fd, NULL, &done);
			EXPECT_EQ(-ENOMSG, ret);
			ivshmem_write(_metadata, c, 0, 3 * DIRTY_PAGE, prng(&s), true);
			ivshmem_write(_metadata, c, 9 * DIRTY_PAGE, 1, prng(&s), false);
			ivshmem_write(_metadata, c, c->size - 2, 2, prng(&s), false);
			/* The first record and a bit of the second */
			pump_exactly(_metadata, fd, -1, PAGE_REC_SIZE + 50, &done);
			ivshmem_write(_metadata, c, 1, 1, prng(&s), true);
			ivshmem_write(_metadata, c, 2 * DIRTY_PAGE + 1, 1, prng(&s), false);
			ivshmem_write(_metadata, c, SZ_2M - 1, 2, prng(&s), true);
		}
		ASSERT_EQ(0, vfio_mig_precopy_info(fd, &info));
		EXPECT_LT(0, info.dirty_bytes) TH_LOG("pass %d: writes to sent pages", pass);
		want = info.initial_bytes + info.dirty_bytes + STOP_COPY_TAIL;
		if (c->flags & VFIO_MIGRATION_P2P)
			ASSERT_EQ(0, vfio_mig_set_state(c->dev[0].fd, PRE_COPY_P2P, NULL));
		ASSERT_EQ(0, vfio_mig_set_state(c->dev[0].fd, STOP_COPY, NULL));
		ret = read_available(fd, NULL, &n);
		EXPECT_EQ(0, ret) TH_LOG("STOP_COPY read: %s", strerror(-ret));
		EXPECT_EQ(want, n) TH_LOG("pass %d: STOP_COPY streamed %llu, expected %llu",
					  pass, (unsigned long long)n,
					  (unsigned long long)want);
		TH_LOG("pass %d: read %llu, initial_bytes %llu + dirty_bytes %llu, STOP_COPY %llu",
		       pass, (unsigned long long)done, (unsigned long long)info.initial_bytes,
		       (unsigned long long)info.dirty_bytes, (unsigned long long)n);
		ASSERT_EQ(0, vfio_mig_set_state(c->dev[0].fd, RUNNING, NULL));
		ASSERT_EQ(0, close(fd));
	}
}

/* A thread that writes random ranges of A's BAR2 through the mmap until stopped */
struct mmap_writer {
	pthread_t thread;
	bool started;
	int stop;
	u8 *mem;
	u64 size;
	u64 seed;
	u64 writes;
};

static void *mmap_writer_main(void *arg)
{
	struct mmap_writer *w = arg;
	u8 data[3 * DIRTY_PAGE];
	u64 s = w->seed | 1, off;
	sigset_t set;
	size_t len;

	/* The IO_TIMEOUT alarm is for the main thread */
	sigemptyset(&set);
	sigaddset(&set, SIGALRM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	while (!__atomic_load_n(&w->stop, __ATOMIC_RELAXED)) {
		random_range(&s, 0, w->size, &off, &len);
		prng_fill(prng(&s), data, len);
		memcpy(w->mem + off, data, len);
		if (!(++w->writes % 16))
			usleep(500);
	}
	return NULL;
}

static int mmap_writer_start(struct mmap_writer *w, u8 *mem, u64 size, u64 seed)
{
	int ret;

	w->mem = mem;
	w->size = size;
	w->seed = seed;
	w->writes = 0;
	w->stop = 0;
	ret = pthread_create(&w->thread, NULL, mmap_writer_main, w);
	w->started = !ret;
	return -ret;
}

static void mmap_writer_stop(struct mmap_writer *w)
{
	if (!w->started)
		return;
	__atomic_store_n(&w->stop, 1, __ATOMIC_RELAXED);
	pthread_join(w->thread, NULL);
	w->started = false;
}

FIXTURE(ivshmem_vfio_pci_dirty) {
	struct ivshmem_ctx c;
	struct page_set ps;
	struct mmap_writer w;
};

FIXTURE_VARIANT(ivshmem_vfio_pci_dirty) {
	u64 seed;
	/* Writes through the mmap too, not only through pwrite() */
	bool by_mmap;
	/* A thread writes through the mmap all through PRE_COPY */
	bool thread;
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_dirty, mixed_seed1) {
	.seed = 1,
	.by_mmap = true,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_dirty, mixed_seed2) {
	.seed = 2,
	.by_mmap = true,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_dirty, mixed_thread_seed3) {
	.seed = 3,
	.by_mmap = true,
	.thread = true,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_dirty, pwrite_seed4) {
	.seed = 4,
	.by_mmap = false,
};

FIXTURE_SETUP(ivshmem_vfio_pci_dirty)
{
	ivshmem_setup(_metadata, &self->c);
}

FIXTURE_TEARDOWN(ivshmem_vfio_pci_dirty)
{
	mmap_writer_stop(&self->w);
	free(self->ps.state);
	ivshmem_teardown(&self->c);
}

#define DIRTY_ROUNDS		4
#define WRITES_PER_ROUND	32
/* Stops in the initial image, with writes at each */
#define IMAGE_STOPS		8
/* Bytes a drain may read while the thread writes */
#define THREAD_DRAIN_BUDGET	(8 * SZ_1M)

/*
 * Read what PRE_COPY has, into B. Without concurrent writes, dirty_bytes
 * must fall by what each read returned and reach 0 with ENOMSG.
 */
static void drain_precopy(struct __test_metadata *_metadata, int from, int to,
			  u64 *s, bool exact, u64 *done)
{
	struct vfio_precopy_info info, prev;
	u64 total = 0;
	ssize_t n;

	ASSERT_EQ(0, vfio_mig_precopy_info(from, &info));
	for (;;) {
		prev = info;
		n = pump(_metadata, from, to,
			 exact ? 1 + prng(s) % (3 * PAGE_REC_SIZE) : SZ_1M);
		if (n <= 0)
			break;
		total += n;
		ASSERT_EQ(0, vfio_mig_precopy_info(from, &info));
		EXPECT_EQ(0, info.initial_bytes);
		if (exact)
			EXPECT_EQ(prev.dirty_bytes - n, info.dirty_bytes)
				TH_LOG("read %zd bytes: dirty_bytes %llu -> %llu", n,
				       (unsigned long long)prev.dirty_bytes,
				       (unsigned long long)info.dirty_bytes);
		if (_metadata->exit_code || (!exact && total >= THREAD_DRAIN_BUDGET))
			break;
	}
	if (exact || n <= 0)
		EXPECT_EQ(-ENOMSG, n) TH_LOG("drained PRE_COPY read: %zd", n);
	if (exact)
		EXPECT_EQ(0, info.dirty_bytes);
	*done += total;
}

/*
 * A -> B as QEMU does, B's resuming fd fed while A's saving fd is read,
 * with random writes to A's BAR2 all along: while the initial image is read
 * (to pages sent and not sent yet), between PRE_COPY rounds, by a thread
 * through the mmap (one variant), and a last batch before STOP_COPY. B ends
 * up with all of A's BAR2; dirty_bytes and the STOP_COPY size are exact
 * whenever the test knows what was written.
 */
TEST_F_TIMEOUT(ivshmem_vfio_pci_dirty, random_writes_migrate, 300)
{
	struct ivshmem_ctx *c = &self->c;
	struct vfio_mig_device *a = &c->dev[0], *b = &c->dev[1];
	u64 s = c->seed ^ (variant->seed * 0x9e3779b97f4a7c15ULL);
	u64 done = 0, step, left, n, sent, unsent, off, want;
	struct vfio_precopy_info info, prev;
	struct page_set *ps = &self->ps;
	int a_fd, b_fd, round, i, ret;
	bool exact = !variant->thread;
	size_t len;
	ssize_t r;

	if (!(c->flags & VFIO_MIGRATION_PRE_COPY))
		SKIP(return, "no PRE_COPY");
	ASSERT_LE(8 * SZ_1M, c->size);
	ASSERT_EQ(0, pages_init(ps, c->size));
	ivshmem_fill(_metadata, c);
	TH_LOG("variant seed %#llx: writes through %s%s", (unsigned long long)s,
	       variant->by_mmap ? "the mmap and pwrite()" : "pwrite() only",
	       variant->thread ? ", and a thread through the mmap" : "");

	ASSERT_EQ(0, vfio_mig_set_state(b->fd, STOP, NULL));
	ASSERT_EQ(0, vfio_mig_set_state(b->fd, RESUMING, &b_fd));
	ASSERT_LE(0, b_fd);
	reach_state(_metadata, a, PRE_COPY, NULL, 0, &a_fd);
	if (variant->thread)
		ASSERT_EQ(0, mmap_writer_start(&self->w, c->mem[0], c->size, prng(&s)));

	/* The initial image, with writes before and behind what was read */
	ASSERT_EQ(0, vfio_mig_precopy_info(a_fd, &info));
	step = info.initial_bytes / IMAGE_STOPS + 4099;
	while (info.initial_bytes) {
		left = step < info.initial_bytes ? step : info.initial_bytes;
		while (left) {
			prev = info;
			r = pump(_metadata, a_fd, b_fd, left);
			ASSERT_LT(0, r) TH_LOG("initial image: %s", r ? strerror(-r) : "EOF");
			left -= r;
			done += r;
			ASSERT_EQ(0, vfio_mig_precopy_info(a_fd, &info));
			EXPECT_EQ(prev.initial_bytes - r, info.initial_bytes)
				TH_LOG("read %zd bytes: initial_bytes %llu -> %llu", r,
				       (unsigned long long)prev.initial_bytes,
				       (unsigned long long)info.initial_bytes);
		}
		if (!info.initial_bytes)
			break;
		image_zones(c->size, done, &sent, &unsent);
		for (i = 0; i < 6; i++) {
			bool by_mmap = variant->by_mmap && (prng(&s) & 1);
			u64 lo = 0, hi = sent;
			u8 how = PAGE_SENT;

			if (i == 2) {
				lo = sent;
				hi = unsent;
				how = PAGE_MAYBE;
			} else if (i > 2) {
				lo = unsent;
				hi = c->size;
				how = PAGE_UNTOUCHED;
			}
			if (hi - lo < 4 * DIRTY_PAGE)
				continue;
			random_range(&s, lo, hi, &off, &len);
			ivshmem_write(_metadata, c, off, len, prng(&s), by_mmap);
			if (how != PAGE_UNTOUCHED)
				pages_add(ps, off, len, how);
		}
		if (exact)
			expect_dirty(_metadata, a_fd, ps, "in the initial image");
	}
	if (exact)
		expect_dirty(_metadata, a_fd, ps, "at the end of the initial image");
	TH_LOG("initial image read: %llu bytes, %llu pages written behind it, %llu maybe",
	       (unsigned long long)done, (unsigned long long)ps->sent,
	       (unsigned long long)ps->maybe);

	/* PRE_COPY rounds: drain, write; the thread stops before the last */
	for (round = 0; round <= DIRTY_ROUNDS; round++) {
		drain_precopy(_metadata, a_fd, b_fd, &s, exact, &done);
		if (round == DIRTY_ROUNDS && variant->thread) {
			mmap_writer_stop(&self->w);
			TH_LOG("the thread wrote %llu times", (unsigned long long)self->w.writes);
			EXPECT_LT(0, self->w.writes);
			exact = true;
			drain_precopy(_metadata, a_fd, b_fd, &s, exact, &done);
		}
		pages_clear(ps);
		for (i = 0; i < WRITES_PER_ROUND; i++) {
			random_range(&s, 0, c->size, &off, &len);
			ivshmem_write(_metadata, c, off, len, prng(&s),
				      variant->by_mmap && (prng(&s) & 1));
			pages_add(ps, off, len, PAGE_SENT);
		}
		if (round == 1) {
			c->intrmask ^= 0x10;
			ivshmem_set_reg(_metadata, c, 0, IVSHMEM_INTRMASK, c->intrmask);
		}
		if (exact)
			expect_dirty(_metadata, a_fd, ps, "after a round of writes");
	}

	/* STOP_COPY: exactly what PRE_COPY still had, REGS and END */
	ASSERT_EQ(0, vfio_mig_precopy_info(a_fd, &info));
	EXPECT_EQ(0, info.initial_bytes);
	want = info.initial_bytes + info.dirty_bytes + STOP_COPY_TAIL;
	if (c->flags & VFIO_MIGRATION_P2P)
		ASSERT_EQ(0, vfio_mig_set_state(a->fd, PRE_COPY_P2P, NULL));
	ASSERT_EQ(0, vfio_mig_set_state(a->fd, STOP_COPY, NULL));
	n = 0;
	while ((r = pump(_metadata, a_fd, b_fd, SZ_1M)) > 0)
		n += r;
	EXPECT_EQ(0, r) TH_LOG("STOP_COPY read: %s", strerror(-r));
	EXPECT_EQ(want, n) TH_LOG("dirty_bytes %llu before STOP_COPY, which streamed %llu",
				  (unsigned long long)info.dirty_bytes, (unsigned long long)n);
	TH_LOG("%llu bytes in PRE_COPY, %llu in STOP_COPY", (unsigned long long)done,
	       (unsigned long long)n);
	ASSERT_EQ(0, vfio_mig_set_state(a->fd, STOP, NULL));

	ret = vfio_mig_set_state(b->fd, STOP, NULL);
	ASSERT_EQ(0, ret) TH_LOG("B: RESUMING -> STOP: %s", strerror(-ret));
	ASSERT_EQ(0, vfio_mig_set_state(b->fd, RUNNING, NULL));
	ASSERT_EQ(0, vfio_mig_set_state(a->fd, RUNNING, NULL));
	ASSERT_EQ(0, close(a_fd));
	ASSERT_EQ(0, close(b_fd));

	expect_mem(_metadata, c->mem[1], c->mem[0], c->size, "B's BAR2 against A's");
	if (!variant->thread)
		expect_mem(_metadata, c->mem[0], c->expect, c->size, "A's BAR2 against the writes");
	EXPECT_EQ(c->intrmask, ivshmem_reg(_metadata, c, 1, IVSHMEM_INTRMASK));
	EXPECT_EQ(c->intrstatus, ivshmem_reg(_metadata, c, 1, IVSHMEM_INTRSTATUS));
	EXPECT_EQ(c->intrmask, ivshmem_reg(_metadata, c, 0, IVSHMEM_INTRMASK));
	EXPECT_EQ(c->intrstatus, ivshmem_reg(_metadata, c, 0, IVSHMEM_INTRSTATUS));
}

/* ------------------------------------------------------------------ */
/* ivshmem-vfio-pci: memory decoding, MIG_DATA_SIZE, wake-ups, ends    */

/*
 * QEMU resets a resuming device and restores its config space only after
 * the device data, and a guest may clear memory decoding while it is being
 * saved: saving and resuming must work whatever the user set in the command
 * register, and must leave it as the user set it.
 */
enum decoding_off {
	/* B, before STOP -> RESUMING, until B is RUNNING again */
	DECODING_OFF_RESUME,
	/* A, right after RUNNING -> PRE_COPY, before the initial image is read */
	DECODING_OFF_SAVE_PRE_COPY,
	/* A, after the initial image and a few writes, before -> STOP_COPY */
	DECODING_OFF_SAVE_STOP_COPY,
};

FIXTURE(ivshmem_vfio_pci_decoding_off) {
	struct ivshmem_ctx c;
	/* The command registers as the setup found them */
	u16 cmd[2];
};

FIXTURE_VARIANT(ivshmem_vfio_pci_decoding_off) {
	enum decoding_off when;
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_decoding_off, resume) {
	.when = DECODING_OFF_RESUME,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_decoding_off, save_in_pre_copy) {
	.when = DECODING_OFF_SAVE_PRE_COPY,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_decoding_off, save_before_stop_copy) {
	.when = DECODING_OFF_SAVE_STOP_COPY,
};

FIXTURE_SETUP(ivshmem_vfio_pci_decoding_off)
{
	struct ivshmem_ctx *c = &self->c;
	int i;

	ivshmem_setup(_metadata, c);
	if (_metadata->exit_code)
		return;
	for (i = 0; i < 2; i++) {
		self->cmd[i] = config_word(_metadata, c, i, PCI_COMMAND);
		ASSERT_TRUE(self->cmd[i] & PCI_COMMAND_MEMORY)
			TH_LOG("%s: memory decoding off after open", c->dev[i].name);
	}
}

FIXTURE_TEARDOWN(ivshmem_vfio_pci_decoding_off)
{
	struct ivshmem_ctx *c = &self->c;
	int i;

	for (i = 0; i < c->nr_open; i++) {
		u16 val = htole16(self->cmd[i]);

		if (self->cmd[i])
			pwrite(c->dev[i].fd, &val, 2, c->cfg[i].offset + PCI_COMMAND);
	}
	ivshmem_teardown(c);
}

TEST_F_TIMEOUT(ivshmem_vfio_pci_decoding_off, migrate, 120)
{
	struct ivshmem_ctx *c = &self->c;
	struct vfio_mig_device *a = &c->dev[0], *b = &c->dev[1];
	const u16 off_a = self->cmd[0] & ~PCI_COMMAND_MEMORY;
	const u16 off_b = self->cmd[1] & ~PCI_COMMAND_MEMORY;
	struct mig_buf stream = {};
	u64 n, s = ~c->seed;
	int fd, ret;

	if (variant->when != DECODING_OFF_RESUME && !(c->flags & VFIO_MIGRATION_PRE_COPY))
		SKIP(return, "no PRE_COPY");
	ivshmem_fill(_metadata, c);

	if (variant->when == DECODING_OFF_RESUME) {
		save_stop_copy(_metadata, a, &stream);
		set_config_word(_metadata, c, 1, PCI_COMMAND, off_b);
		ASSERT_EQ(off_b, config_word(_metadata, c, 1, PCI_COMMAND));
		ASSERT_EQ(0, vfio_mig_set_state(b->fd, STOP, NULL));
		ASSERT_EQ(0, vfio_mig_set_state(b->fd, RESUMING, &fd));
		ASSERT_LE(0, fd);
		ret = write_stream(fd, stream.data, stream.len, NULL);
		EXPECT_EQ(0, ret) TH_LOG("writing the stream, memory decoding off: %s",
					 strerror(-ret));
		ret = vfio_mig_set_state(b->fd, STOP, NULL);
		ASSERT_EQ(0, ret) TH_LOG("RESUMING -> STOP, memory decoding off: %s",
					 strerror(-ret));
		ASSERT_EQ(0, vfio_mig_set_state(b->fd, RUNNING, NULL));
		ASSERT_EQ(0, close(fd));
		EXPECT_EQ(off_b, config_word(_metadata, c, 1, PCI_COMMAND))
			TH_LOG("resuming changed B's command register");
		set_config_word(_metadata, c, 1, PCI_COMMAND, self->cmd[1]);
		ivshmem_check(_metadata, c);
		ivshmem_check_source(_metadata, c);
		mig_buf_free(&stream);
		return;
	}

	reach_state(_metadata, a, PRE_COPY, NULL, 0, &fd);
	if (variant->when == DECODING_OFF_SAVE_PRE_COPY)
		set_config_word(_metadata, c, 0, PCI_COMMAND, off_a);
	ret = read_available(fd, &stream, &n);
	EXPECT_EQ(-ENOMSG, ret) TH_LOG("PRE_COPY read, memory decoding %s: %s",
				       variant->when == DECODING_OFF_SAVE_PRE_COPY ? "off" : "on",
				       strerror(-ret));
	if (variant->when == DECODING_OFF_SAVE_STOP_COPY) {
		/* Pages for STOP_COPY to send with decoding off */
		ivshmem_write(_metadata, c, 5 * DIRTY_PAGE + 3, 10, prng(&s), false);
		ivshmem_write(_metadata, c, c->size - DIRTY_PAGE, 2, prng(&s), true);
		set_config_word(_metadata, c, 0, PCI_COMMAND, off_a);
	}
	ASSERT_EQ(off_a, config_word(_metadata, c, 0, PCI_COMMAND));
	if (c->flags & VFIO_MIGRATION_P2P)
		ASSERT_EQ(0, vfio_mig_set_state(a->fd, PRE_COPY_P2P, NULL));
	ASSERT_EQ(0, vfio_mig_set_state(a->fd, STOP_COPY, NULL));
	ret = read_available(fd, &stream, &n);
	EXPECT_EQ(0, ret) TH_LOG("STOP_COPY read, memory decoding off: %s", strerror(-ret));
	ASSERT_EQ(0, vfio_mig_set_state(a->fd, STOP, NULL));
	ASSERT_EQ(0, close(fd));
	EXPECT_EQ(off_a, config_word(_metadata, c, 0, PCI_COMMAND))
		TH_LOG("saving changed A's command register");

	resume_qemu_way(_metadata, b, stream.data, stream.len);
	ivshmem_check(_metadata, c);
	set_config_word(_metadata, c, 0, PCI_COMMAND, self->cmd[0]);
	ASSERT_EQ(0, vfio_mig_set_state(a->fd, RUNNING, NULL));
	ivshmem_check_source(_metadata, c);
	mig_buf_free(&stream);
}

/*
 * VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, "the estimated data length that will
 * be required to complete stop copy", is what STOP_COPY would still stream
 * from the saving session (QEMU switches over once that fits in its
 * downtime), and without a session that of a whole new STOP_COPY stream:
 * in PRE_COPY initial_bytes + dirty_bytes + the records only STOP_COPY
 * produces (the tail: REGS and END), so after the initial image just the
 * tail, whatever the size of BAR2.
 */
TEST_F_TIMEOUT(ivshmem_vfio_pci, data_size_is_what_stop_copy_streams, 120)
{
	struct ivshmem_ctx *c = &self->c;
	struct vfio_mig_device *a = &c->dev[0];
	struct vfio_precopy_info start, info, prev;
	u64 ds_start, ds_drained, ds, ds_full, tail, n, half, done = 0, s = c->seed;
	const u64 nr_mem = (c->size + MIG_MEM_MAX_DATA - 1) / MIG_MEM_MAX_DATA;
	const int k = 5;
	int fd, ret, i;

	if (!(c->flags & VFIO_MIGRATION_PRE_COPY))
		SKIP(return, "no PRE_COPY");
	reach_state(_metadata, a, PRE_COPY, NULL, 0, &fd);
	ASSERT_EQ(0, vfio_mig_precopy_info(fd, &start));
	ASSERT_EQ(0, vfio_mig_get_data_size(a->fd, &ds_start));
	ret = read_available(fd, NULL, &n);
	EXPECT_EQ(-ENOMSG, ret) TH_LOG("draining the initial image: %s", strerror(-ret));
	EXPECT_EQ(start.initial_bytes + start.dirty_bytes, n);
	ASSERT_EQ(0, vfio_mig_precopy_info(fd, &info));
	EXPECT_EQ(0, info.initial_bytes);
	EXPECT_EQ(0, info.dirty_bytes);
	ASSERT_EQ(0, vfio_mig_get_data_size(a->fd, &ds_drained));
	TH_LOG("PRE_COPY: MIG_DATA_SIZE %llu at the start (initial_bytes %llu), %llu drained",
	       (unsigned long long)ds_start, (unsigned long long)start.initial_bytes,
	       (unsigned long long)ds_drained);
	EXPECT_GT(c->size / 1024, ds_drained)
		TH_LOG("drained PRE_COPY: MIG_DATA_SIZE %llu, BAR2 has %llu bytes",
		       (unsigned long long)ds_drained, (unsigned long long)c->size);

	/* k pages written: it grows with dirty_bytes */
	prev = info;
	for (i = 0; i < k; i++)
		ivshmem_write(_metadata, c, (7 + 3 * i) * DIRTY_PAGE + i, 1 + i, prng(&s), false);
	ASSERT_EQ(0, vfio_mig_precopy_info(fd, &info));
	ASSERT_EQ(0, vfio_mig_get_data_size(a->fd, &ds));
	EXPECT_EQ(k * PAGE_REC_SIZE, info.dirty_bytes);
	EXPECT_EQ(ds_drained + info.dirty_bytes - prev.dirty_bytes, ds)
		TH_LOG("%d pages written: MIG_DATA_SIZE %llu -> %llu, dirty_bytes %llu -> %llu",
		       k, (unsigned long long)ds_drained, (unsigned long long)ds,
		       (unsigned long long)prev.dirty_bytes,
		       (unsigned long long)info.dirty_bytes);

	/* A record read in part: what is produced and not read yet counts */
	pump_exactly(_metadata, fd, -1, PAGE_REC_SIZE + 50, &done);
	ASSERT_EQ(0, vfio_mig_precopy_info(fd, &info));
	ASSERT_EQ(0, vfio_mig_get_data_size(a->fd, &ds));
	EXPECT_EQ(ds_drained + info.dirty_bytes, ds)
		TH_LOG("%llu bytes read: MIG_DATA_SIZE %llu, dirty_bytes %llu",
		       (unsigned long long)done, (unsigned long long)ds,
		       (unsigned long long)info.dirty_bytes);
	ret = read_available(fd, NULL, &n);
	EXPECT_EQ(-ENOMSG, ret);
	ASSERT_EQ(0, vfio_mig_get_data_size(a->fd, &ds));
	EXPECT_EQ(ds_drained, ds) TH_LOG("drained again");

	/* STOP_COPY streams exactly MIG_DATA_SIZE, the tail */
	if (c->flags & VFIO_MIGRATION_P2P) {
		ASSERT_EQ(0, vfio_mig_set_state(a->fd, PRE_COPY_P2P, NULL));
		ASSERT_EQ(0, vfio_mig_get_data_size(a->fd, &ds));
		EXPECT_EQ(ds_drained, ds) TH_LOG("in PRE_COPY_P2P");
	}
	ASSERT_EQ(0, vfio_mig_set_state(a->fd, STOP_COPY, NULL));
	ASSERT_EQ(0, vfio_mig_get_data_size(a->fd, &ds));
	ret = read_available(fd, NULL, &tail);
	EXPECT_EQ(0, ret) TH_LOG("STOP_COPY read: %s", strerror(-ret));
	TH_LOG("STOP_COPY after a drained PRE_COPY: MIG_DATA_SIZE %llu, streamed %llu",
	       (unsigned long long)ds, (unsigned long long)tail);
	EXPECT_EQ(ds, tail) TH_LOG("MIG_DATA_SIZE in STOP_COPY against what it streamed");
	EXPECT_EQ(STOP_COPY_TAIL, tail) TH_LOG("STOP_COPY after a drained PRE_COPY");
	EXPECT_EQ(tail, ds_drained) TH_LOG("MIG_DATA_SIZE of a drained PRE_COPY");
	EXPECT_EQ(start.initial_bytes + start.dirty_bytes + tail, ds_start)
		TH_LOG("MIG_DATA_SIZE at the start of PRE_COPY");
	ASSERT_EQ(0, vfio_mig_get_data_size(a->fd, &ds));
	EXPECT_EQ(0, ds) TH_LOG("MIG_DATA_SIZE at the end of the stream");
	ASSERT_EQ(0, vfio_mig_set_state(a->fd, STOP, NULL));
	ASSERT_EQ(0, close(fd));

	/* No session: a whole new stream; STOP -> STOP_COPY: what is left */
	ASSERT_EQ(0, vfio_mig_get_data_size(a->fd, &ds_full));
	EXPECT_EQ(HEADER_REC_SIZE + c->size + nr_mem * (MIG_REC_HDR_SIZE + 8) + tail, ds_full)
		TH_LOG("MIG_DATA_SIZE in STOP");
	ASSERT_EQ(0, vfio_mig_set_state(a->fd, STOP_COPY, &fd));
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, vfio_mig_get_data_size(a->fd, &ds));
	EXPECT_EQ(ds_full, ds) TH_LOG("MIG_DATA_SIZE of a new STOP_COPY session");
	half = ds / 2 + 13;
	done = 0;
	pump_exactly(_metadata, fd, -1, half, &done);
	ASSERT_EQ(0, vfio_mig_get_data_size(a->fd, &ds));
	EXPECT_EQ(ds_full - half, ds) TH_LOG("%llu of %llu bytes read: MIG_DATA_SIZE %llu",
					     (unsigned long long)half,
					     (unsigned long long)ds_full,
					     (unsigned long long)ds);
	ret = read_available(fd, NULL, &n);
	EXPECT_EQ(0, ret) TH_LOG("STOP_COPY read: %s", strerror(-ret));
	EXPECT_EQ(ds_full - half, n) TH_LOG("the rest of the STOP_COPY stream");
	ASSERT_EQ(0, vfio_mig_set_state(a->fd, STOP, NULL));
	ASSERT_EQ(0, vfio_mig_set_state(a->fd, RUNNING, NULL));
	ASSERT_EQ(0, close(fd));
}

/*
 * A user waiting at the temporary end of a PRE_COPY stream, as the uAPI
 * tells it to, is woken when new data appears: a write to BAR2 by another
 * thread, through pwrite() or the mmap.
 */
struct late_writer {
	pthread_t thread;
	struct ivshmem_ctx *c;
	bool by_mmap;
	u64 off;
	ssize_t ret;
};

static void *late_writer_main(void *arg)
{
	struct late_writer *w = arg;
	struct ivshmem_ctx *c = w->c;
	u8 byte = 0x5a;
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGALRM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	usleep(200000);
	if (w->by_mmap) {
		__atomic_store_n(&c->mem[0][w->off], byte, __ATOMIC_RELAXED);
		w->ret = 1;
	} else {
		w->ret = pwrite(c->dev[0].fd, &byte, 1, c->bar2[0].offset + w->off);
	}
	return NULL;
}

static long ms_since(const struct timespec *t0)
{
	struct timespec t1;

	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (t1.tv_sec - t0->tv_sec) * 1000 + (t1.tv_nsec - t0->tv_nsec) / 1000000;
}

/* Wait in poll() (@epfd < 0) or epoll_wait() while a thread writes a byte at @off. */
static void wait_for_late_write(struct __test_metadata *_metadata, struct ivshmem_ctx *c,
				int fd, int epfd, bool by_mmap, u64 off)
{
	struct late_writer w = { .c = c, .by_mmap = by_mmap, .off = off };
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	const char *how = epfd < 0 ? "poll()" : "epoll_wait()";
	struct vfio_precopy_info info;
	struct epoll_event ev = {};
	struct timespec t0;
	bool in;
	int ret;
	long ms;
	u64 n;

	ASSERT_EQ(0, vfio_mig_precopy_info(fd, &info));
	ASSERT_EQ(0, info.initial_bytes + info.dirty_bytes);
	ret = epfd < 0 ? poll(&pfd, 1, 0) : epoll_wait(epfd, &ev, 1, 0);
	EXPECT_EQ(0, ret) TH_LOG("%s reports data at the temporary end of stream", how);

	ASSERT_EQ(0, pthread_create(&w.thread, NULL, late_writer_main, &w));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ret = epfd < 0 ? poll(&pfd, 1, 3000) : epoll_wait(epfd, &ev, 1, 3000);
	ms = ms_since(&t0);
	pthread_join(w.thread, NULL);
	ASSERT_EQ(1, w.ret) TH_LOG("the write at %#llx", (unsigned long long)off);
	in = epfd < 0 ? pfd.revents & POLLIN : ev.events & EPOLLIN;
	TH_LOG("%s: a write through %s 200 ms later, %s returned %d (%s) after %ld ms",
	       c->dev[0].name, by_mmap ? "the mmap" : "pwrite()", how, ret,
	       in ? "readable" : "not readable", ms);
	EXPECT_EQ(1, ret) TH_LOG("%s not woken by new PRE_COPY data", how);
	EXPECT_TRUE(in);
	EXPECT_GT(1000, ms) TH_LOG("%s returned after %ld ms", how, ms);
	EXPECT_LE(150, ms) TH_LOG("%s returned before the write", how);
	ret = read_available(fd, NULL, &n);
	EXPECT_EQ(-ENOMSG, ret);
	EXPECT_EQ(PAGE_REC_SIZE, n) TH_LOG("read after the wake-up");
}

FIXTURE(ivshmem_vfio_pci_poll) {
	struct ivshmem_ctx c;
};

FIXTURE_VARIANT(ivshmem_vfio_pci_poll) {
	bool by_mmap;
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_poll, pwrite) {
	.by_mmap = false,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_poll, mmap) {
	.by_mmap = true,
};

FIXTURE_SETUP(ivshmem_vfio_pci_poll)
{
	ivshmem_setup(_metadata, &self->c);
}

FIXTURE_TEARDOWN(ivshmem_vfio_pci_poll)
{
	ivshmem_teardown(&self->c);
}

TEST_F_TIMEOUT(ivshmem_vfio_pci_poll, precopy_poll_woken_by_new_data, 60)
{
	struct ivshmem_ctx *c = &self->c;
	struct epoll_event ev = { .events = EPOLLIN };
	int fd, epfd, ret;
	u64 n;

	if (!(c->flags & VFIO_MIGRATION_PRE_COPY))
		SKIP(return, "no PRE_COPY");
	reach_state(_metadata, &c->dev[0], PRE_COPY, NULL, 0, &fd);
	ret = read_available(fd, NULL, &n);
	ASSERT_EQ(-ENOMSG, ret) TH_LOG("draining the initial image: %s", strerror(-ret));
	wait_for_late_write(_metadata, c, fd, -1, variant->by_mmap, 5 * DIRTY_PAGE + 1);

	epfd = epoll_create1(EPOLL_CLOEXEC);
	ASSERT_LE(0, epfd);
	ev.data.fd = fd;
	ASSERT_EQ(0, epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev));
	wait_for_late_write(_metadata, c, fd, epfd, variant->by_mmap, c->size - 7);
	ASSERT_EQ(0, close(epfd));
	ASSERT_EQ(0, vfio_mig_set_state(c->dev[0].fd, RUNNING, NULL));
	ASSERT_EQ(0, close(fd));
}

/*
 * A saving fd whose session ended (the device left the saving group, or
 * was reset) answers ENODEV, even when part of a record it produced is
 * still unread, and poll() does not report it readable.
 */
enum session_end { END_SET_RUNNING, END_RESET, END_SET_STOP };

FIXTURE(ivshmem_vfio_pci_ended) {
	struct ivshmem_ctx c;
};

FIXTURE_VARIANT(ivshmem_vfio_pci_ended) {
	u32 state;
	enum session_end end;
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_ended, pre_copy_set_running) {
	.state = PRE_COPY,
	.end = END_SET_RUNNING,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_ended, pre_copy_reset) {
	.state = PRE_COPY,
	.end = END_RESET,
};

FIXTURE_VARIANT_ADD(ivshmem_vfio_pci_ended, stop_copy_set_stop) {
	.state = STOP_COPY,
	.end = END_SET_STOP,
};

FIXTURE_SETUP(ivshmem_vfio_pci_ended)
{
	ivshmem_setup(_metadata, &self->c);
}

FIXTURE_TEARDOWN(ivshmem_vfio_pci_ended)
{
	ivshmem_teardown(&self->c);
}

TEST_F(ivshmem_vfio_pci_ended, disabled_save_fd_keeps_nothing)
{
	struct ivshmem_ctx *c = &self->c;
	struct vfio_mig_device *a = &c->dev[0];
	struct pollfd pfd;
	u8 buf[100];
	int fd, ret;

	if (variant->state == PRE_COPY && !(c->flags & VFIO_MIGRATION_PRE_COPY))
		SKIP(return, "no PRE_COPY");
	reach_state(_metadata, a, variant->state, NULL, 0, &fd);
	/* 10 bytes of the HEADER record: the rest of it stays buffered */
	ASSERT_GT(HEADER_REC_SIZE, 10);
	ASSERT_EQ(10, timed_read(fd, buf, 10));
	if (variant->end == END_RESET) {
		ASSERT_EQ(0, vfio_mig_reset(a->fd));
	} else {
		ASSERT_EQ(0, vfio_mig_set_state(a->fd, variant->end == END_SET_STOP ?
						STOP : RUNNING, NULL));
	}

	pfd = (struct pollfd){ .fd = fd, .events = POLLIN };
	ret = poll(&pfd, 1, 0);
	EXPECT_FALSE(pfd.revents & POLLIN)
		TH_LOG("poll() of an ended data fd: %d, revents %#x", ret, pfd.revents);
	ret = timed_read(fd, buf, sizeof(buf));
	EXPECT_EQ(-ENODEV, ret) TH_LOG("read() of an ended data fd returned %d", ret);
	ret = timed_read(fd, buf, sizeof(buf));
	EXPECT_EQ(-ENODEV, ret) TH_LOG("second read() of an ended data fd returned %d", ret);
	ASSERT_EQ(0, close(fd));
	ASSERT_EQ(0, to_running(a));
	new_session_works(_metadata, a);
}

static int sb_write(int fd, const struct stream_builder *b)
{
	int i, ret;

	for (i = 0; i < b->nseg; i++) {
		ret = write_stream(fd, b->seg[i].p, b->seg[i].len, NULL);
		if (ret)
			return ret;
	}
	return 0;
}

/*
 * A complete, correctly framed stream that the driver rejects when
 * RESUMING -> STOP applies it (no REGS record) leaves the destination
 * partly restored with nothing to retry: the device goes to ERROR, which
 * only VFIO_DEVICE_RESET leaves, and then works again. (A stream that is
 * merely incomplete keeps RESUMING with its fd usable: corrupt_stream.)
 */
TEST_F_TIMEOUT(ivshmem_vfio_pci, resume_rejected_stream_leaves_error, 60)
{
	struct ivshmem_ctx *c = &self->c;
	struct vfio_mig_device *a = &c->dev[0], *b = &c->dev[1];
	const u64 want = HEADER_REC_SIZE + IMAGE_REC_SIZE;
	const u32 mask = 0x00050001, status = 0x000a0002;
	struct stream_builder bad = {}, good = {};
	struct mig_buf prefix = {};
	struct mig_rec *recs;
	u8 regs[8];
	int fd, nr, ret;
	u64 session;
	u32 state;
	ssize_t r;

	ASSERT_LE(SZ_1M, c->size);
	/* The HEADER and the first MEM record of a session of A */
	reach_state(_metadata, a, STOP_COPY, NULL, 0, &fd);
	mig_buf_reserve(&prefix, want);
	while (prefix.len < want) {
		r = timed_read(fd, prefix.data + prefix.len, want - prefix.len);
		ASSERT_LT(0, r) TH_LOG("read: %s", r ? strerror(-r) : "end of stream");
		prefix.len += r;
	}
	ASSERT_EQ(0, vfio_mig_set_state(a->fd, RUNNING, NULL));
	ASSERT_EQ(0, close(fd));
	ASSERT_EQ(0, parse_stream(prefix.data, prefix.len, &recs, &nr));
	ASSERT_EQ(2, nr);
	ASSERT_EQ(MIG_REC_HEADER, recs[0].type);
	ASSERT_EQ(MIG_REC_MEM, recs[1].type);
	ASSERT_EQ(0, get_le64(rec_payload(prefix.data, &recs[1])));
	session = recs[0].session;

	/* Complete and correctly framed, but no REGS */
	sb_recs(&bad, prefix.data, recs, 0, 1);
	sb_end(&bad, session, 0, 0);
	ASSERT_EQ(0, vfio_mig_set_state(b->fd, STOP, NULL));
	ASSERT_EQ(0, vfio_mig_set_state(b->fd, RESUMING, &fd));
	ASSERT_LE(0, fd);
	ret = sb_write(fd, &bad);
	ASSERT_EQ(0, ret) TH_LOG("writing a stream without REGS: %s", strerror(-ret));
	ret = vfio_mig_set_state(b->fd, STOP, NULL);
	ASSERT_NE(0, ret) TH_LOG("RESUMING -> STOP accepted a stream without REGS");
	ASSERT_EQ(0, vfio_mig_get_state(b->fd, &state));
	TH_LOG("RESUMING -> STOP: %s, then in %s", strerror(-ret), vfio_mig_state_name(state));
	EXPECT_EQ(VFIO_DEVICE_STATE_ERROR, state)
		TH_LOG("in %s after a rejected complete stream", vfio_mig_state_name(state));
	EXPECT_NE(0, vfio_mig_set_state(b->fd, STOP, NULL)) TH_LOG("SET STOP again");
	EXPECT_NE(0, vfio_mig_set_state(b->fd, RUNNING, NULL)) TH_LOG("SET RUNNING");
	EXPECT_GT(0, probe_data_fd(fd, false)) TH_LOG("write() after the rejection");
	ASSERT_EQ(0, vfio_mig_reset(b->fd));
	ASSERT_STATE(b, RUNNING);
	EXPECT_EQ(-ENODEV, probe_data_fd(fd, false));
	ASSERT_EQ(0, close(fd));

	/* B works again: a saving session, and a resume with REGS */
	new_session_works(_metadata, b);
	put_le32(regs, mask);
	put_le32(regs + 4, status);
	sb_recs(&good, prefix.data, recs, 0, 1);
	sb_new(&good, MIG_REC_REGS, 0, sizeof(regs), session, regs, sizeof(regs));
	sb_end(&good, session, 0, 0);
	ASSERT_EQ(0, vfio_mig_set_state(b->fd, STOP, NULL));
	ASSERT_EQ(0, vfio_mig_set_state(b->fd, RESUMING, &fd));
	ASSERT_LE(0, fd);
	ret = sb_write(fd, &good);
	ASSERT_EQ(0, ret) TH_LOG("writing a stream with REGS: %s", strerror(-ret));
	ret = vfio_mig_set_state(b->fd, STOP, NULL);
	ASSERT_EQ(0, ret) TH_LOG("RESUMING -> STOP after the reset: %s", strerror(-ret));
	ASSERT_EQ(0, vfio_mig_set_state(b->fd, RUNNING, NULL));
	ASSERT_EQ(0, close(fd));
	expect_mem(_metadata, c->mem[1], rec_payload(prefix.data, &recs[1]) + 8, SZ_1M,
		   "B's first MiB");
	EXPECT_EQ(mask, ivshmem_reg(_metadata, c, 1, IVSHMEM_INTRMASK));
	EXPECT_EQ(status, ivshmem_reg(_metadata, c, 1, IVSHMEM_INTRSTATUS));
	free(recs);
	mig_buf_free(&prefix);
}

/* ------------------------------------------------------------------ */

static bool is_device_name(const char *s)
{
	unsigned int seg, bus, dev, fn;
	int i, len = -1;

	if (sscanf(s, "%4x:%2x:%2x.%1x%n", &seg, &bus, &dev, &fn, &len) == 4 &&
	    len == strlen(s))
		return true;
	if (strlen(s) != 36)
		return false;
	for (i = 0; i < 36; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23 ? s[i] != '-' : !isxdigit(s[i]))
			return false;
	}
	return true;
}

int main(int argc, char *argv[])
{
	struct sigaction sa = { .sa_handler = on_alarm };
	struct vfio_mig_device dev;
	int i;

	while (nr_devices < 2 && argc > 1 && is_device_name(argv[argc - 1])) {
		nr_devices++;
		argc--;
	}
	for (i = 0; i < nr_devices; i++)
		device_names[i] = argv[argc + i];
	if (!nr_devices && getenv("VFIO_SELFTESTS_BDF")) {
		device_names[0] = getenv("VFIO_SELFTESTS_BDF");
		nr_devices = 1;
	}
	if (!nr_devices && argc == 2 && (!strcmp(argv[1], "-l") || !strcmp(argv[1], "-h")))
		return test_harness_run(argc, argv);
	if (!nr_devices) {
		fprintf(stderr, "usage: %s [harness options] DEVICE_A [DEVICE_B]\n"
			"  DEVICE: PCI BDF (segment:bus:device.function) or mdev UUID\n",
			argv[0]);
		return KSFT_SKIP;
	}
	for (i = 0; i < nr_devices; i++) {
		if (vfio_mig_device_lookup(&dev, device_names[i]))
			ksft_exit_fail_msg("%s: no such PCI device or mdev\n", device_names[i]);
		printf("# device %c: %s (%s)\n", 'A' + i, dev.name, dev.driver);
	}
	sigaction(SIGALRM, &sa, NULL);
	return test_harness_run(argc, argv);
}
