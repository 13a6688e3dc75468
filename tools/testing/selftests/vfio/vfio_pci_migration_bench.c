// SPDX-License-Identifier: GPL-2.0-only
/*
 * vfio_pci_migration_bench: what migrating an ivshmem-vfio-pci device costs,
 * measured through the VFIO migration v2 uAPI, next to plain memcpy.
 *
 *   vfio_pci_migration_bench [-o FILE] [-a FILE] [-s SECTIONS] [-m MODE]
 *       [-p PASSES] [-n CALLS] [-w PERCENT] [-r ROUNDS] [-T BYTES]
 *       [-W SECONDS] [-q] A B [SMALL LARGE]
 *
 * A and B are ivshmem-plain devices of the same size bound to
 * ivshmem-vfio-pci (source and destination); SMALL and LARGE two more of
 * other sizes, for the precopy-info latency. Sections (-s, default abcde):
 *
 *   a  memcpy from A's BAR2 mmap vs saving: a fresh RUNNING -> PRE_COPY
 *      session read until ENOMSG, a fresh STOP -> STOP_COPY session read to
 *      EOF (1 MiB read()s, data dropped); save_ratio = min of the two / memcpy
 *   b  memcpy into B's BAR2 mmap vs resuming a saved stream (STOP ->
 *      RESUMING, 1 MiB write()s, -> STOP); resume_ratio = resume / memcpy
 *      (a and b: memcpy is timed both as one call for the whole BAR and as
 *      1 MiB calls, which libc may copy differently; the faster of the two
 *      is the ratios' memcpy. On x86 also a copy with "rep movsl", the
 *      instruction of the kernel's memcpy_fromio()/memcpy_toio() there, as
 *      the ceiling of a kernel copy from or to the BAR, outside the ratios. The best of PASSES passes, PASSES + 2 for
 *      memcpy, as the ratios' inputs; the medians are kept too; times
 *      include the state changes)
 *   c  convergence: a writer thread dirties PERCENT of BAR2's pages per
 *      pre-copy round (random distinct pages, 8 bytes each, paced by the
 *      round's progress, the rest at once after ENOMSG) while the stream
 *      goes to B; a round reads until ENOMSG, then gets the precopy info;
 *      stop when dirty_bytes < BYTES (default a quarter of a round's share)
 *      or after ROUNDS; the writer dirties one more round's share (the guest
 *      runs until it is stopped) and stops; initial + dirty is the estimate;
 *      STOP_COPY to EOF; B must then equal A byte for byte (else the run
 *      fails)
 *   d  VFIO_MIG_GET_PRECOPY_INFO latency (median of CALLS, in PRE_COPY with
 *      nothing read yet) on SMALL and LARGE, in alternating blocks
 *   e  writer throughput (one 8-byte write per page, all pages in order,
 *      passes for at least SECONDS) without a session vs with a PRE_COPY
 *      session drained concurrently: tracking_slowdown; also the first pass
 *      of the session (every page written once since PRE_COPY began) against
 *      an idle pass: first_pass_slowdown
 *
 * Whether ivshmem-vfio-pci tracks writes (MODE: on, off, or absent for a
 * driver without the track_writes parameter, which does not track) is given
 * with -m, else read from /sys/module/ivshmem_vfio_pci/parameters/track_writes
 * (Y or N), else taken as absent. Rust module parameters of Linux 7.3 are
 * not in sysfs (the module! macro registers them with perm 0), so the plan
 * passes -m. Section c checks it: a tracking driver resends pages or
 * reports dirty_bytes, one that does not never does; a contradiction fails
 * the run. Results of c, d and e are keyed by the mode: "stop_copy_share"
 * with tracking, "..._off" without; a, b and d are also kept under the plain
 * keys of the first run.
 * -a FILE merges the JSON of an earlier run (the plan runs the program once
 * with the module's default, then with track_writes=0 and -s cde -a), -o
 * FILE writes the merged JSON object (one line), and the table of every
 * result known so far is printed unless -q. MB/s are 10^6 bytes per second.
 *
 * Exits 0 when every section ran and every resumed device equals its source.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <libvfio/migration.h>

#define CHUNK		(1 << 20)
#define PAGE		4096UL
/* The stream size of one page resent by a tracking driver: MEM record of a page. */
#define PAGE_RECORD	(PAGE + 32)
#define INTRMASK	0
#define INTRSTATUS	4
#define TRACK_PARAM	"/sys/module/ivshmem_vfio_pci/parameters/track_writes"

struct dev {
	struct vfio_mig_device mig;
	struct vfio_region_info bar0, bar2;
	unsigned char *mem;
	size_t size;
};

static const char *prog = "vfio_pci_migration_bench";
static int passes = 5;
static int calls = 10000;
static double share_pct = 1.0;
static int max_rounds = 10;
static long long threshold = -1;
static double window = 1.0;
static char *buf;		/* CHUNK bytes for read()/write() */
static int failed;

/* ------------------------------------------------------------------ util */

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fprintf(stderr, "%s: ", prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static void say(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ------------------------------------------------------------ results */

/*
 * The results: keys in order with their JSON text. A merged file (-a) is
 * read back with a small parser that only has to understand what we write:
 * one flat object whose values are numbers, strings, true/false/null or
 * arrays of arrays of numbers.
 */
#define MAX_KEYS 256
static char *keys[MAX_KEYS], *vals[MAX_KEYS];
static int nkeys;

static void put_raw(const char *key, const char *val)
{
	int i;

	for (i = 0; i < nkeys; i++) {
		if (!strcmp(keys[i], key)) {
			free(vals[i]);
			vals[i] = strdup(val);
			return;
		}
	}
	if (nkeys == MAX_KEYS)
		die("too many results");
	keys[nkeys] = strdup(key);
	vals[nkeys++] = strdup(val);
}

static const char *get_raw(const char *key)
{
	int i;

	for (i = 0; i < nkeys; i++)
		if (!strcmp(keys[i], key))
			return strcmp(vals[i], "null") ? vals[i] : NULL;
	return NULL;
}

static void put_num(const char *key, double v)
{
	char s[64];

	if (v != v)
		snprintf(s, sizeof(s), "null");
	else
		snprintf(s, sizeof(s), "%.6g", v);
	put_raw(key, s);
}

static void put_int(const char *key, long long v)
{
	char s[32];

	snprintf(s, sizeof(s), "%lld", v);
	put_raw(key, s);
}

static void put_str(const char *key, const char *v)
{
	char s[256];
	size_t i, j = 0;

	s[j++] = '"';
	for (i = 0; v[i] && j < sizeof(s) - 3; i++)
		if (v[i] != '"' && v[i] != '\\' && (unsigned char)v[i] >= 0x20)
			s[j++] = v[i];
	s[j++] = '"';
	s[j] = 0;
	put_raw(key, s);
}

static void put_bool(const char *key, int v)
{
	put_raw(key, v ? "true" : "false");
}

/* The key for the current tracking mode: "name" with tracking, "name_off" without. */
static const char *suffix = "";

static const char *K(const char *name)
{
	static char ring[8][64];
	static int next;
	char *s = ring[next++ % 8];

	snprintf(s, 64, "%s%s", name, suffix);
	return s;
}

static const char *skip_ws(const char *p)
{
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	return p;
}

static void merge_json(const char *path)
{
	char *text, key[128], *val;
	const char *p, *start;
	size_t len = 0, cap = 1 << 16;
	FILE *f = fopen(path, "r");
	int depth, in_str;

	if (!f)
		die("%s: %s", path, strerror(errno));
	text = malloc(cap);
	while (text && (len += fread(text + len, 1, cap - len - 1, f)) == cap - 1)
		text = realloc(text, cap *= 2);
	if (!text)
		die("out of memory");
	fclose(f);
	text[len] = 0;

	p = skip_ws(text);
	if (*p++ != '{')
		die("%s: not a JSON object", path);
	for (;;) {
		p = skip_ws(p);
		if (*p == '}')
			break;
		if (*p++ != '"')
			die("%s: bad key at offset %ld", path, (long)(p - text));
		start = p;
		while (*p && *p != '"')
			p++;
		if (!*p || p - start >= (long)sizeof(key))
			die("%s: bad key", path);
		memcpy(key, start, p - start);
		key[p - start] = 0;
		p = skip_ws(p + 1);
		if (*p++ != ':')
			die("%s: no ':' after %s", path, key);
		p = skip_ws(p);
		start = p;
		depth = 0;
		in_str = 0;
		for (; *p; p++) {
			if (in_str) {
				if (*p == '\\' && p[1])
					p++;
				else if (*p == '"')
					in_str = 0;
			} else if (*p == '"') {
				in_str = 1;
			} else if (*p == '[' || *p == '{') {
				depth++;
			} else if (*p == ']' || *p == '}') {
				if (!depth)
					break;
				depth--;
			} else if (*p == ',' && !depth) {
				break;
			}
		}
		if (!*p)
			die("%s: truncated", path);
		val = strndup(start, p - start);
		while (val[0] && strchr(" \t\r\n", val[strlen(val) - 1]))
			val[strlen(val) - 1] = 0;
		put_raw(key, val);
		free(val);
		if (*p == ',')
			p++;
	}
	free(text);
}

static void write_json(const char *path)
{
	FILE *f = fopen(path, "w");
	int i;

	if (!f)
		die("%s: %s", path, strerror(errno));
	fputc('{', f);
	for (i = 0; i < nkeys; i++)
		fprintf(f, "%s\"%s\":%s", i ? "," : "", keys[i], vals[i]);
	fputs("}\n", f);
	if (fclose(f))
		die("%s: %s", path, strerror(errno));
}

/* ------------------------------------------------------------- device */

static void region(int fd, unsigned int index, struct vfio_region_info *info)
{
	memset(info, 0, sizeof(*info));
	info->argsz = sizeof(*info);
	info->index = index;
	if (ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, info))
		die("VFIO_DEVICE_GET_REGION_INFO: %s", strerror(errno));
}

static void open_dev(struct dev *d, const char *bdf, int map)
{
	int ret = vfio_mig_device_lookup(&d->mig, bdf);

	if (!ret)
		ret = vfio_mig_device_open(&d->mig, 0);
	if (ret)
		die("%s: %s", bdf, strerror(-ret));
	region(d->mig.fd, VFIO_PCI_BAR0_REGION_INDEX, &d->bar0);
	region(d->mig.fd, VFIO_PCI_BAR2_REGION_INDEX, &d->bar2);
	d->size = d->bar2.size;
	d->mem = NULL;
	if (!map)
		return;
	d->mem = mmap(NULL, d->size, PROT_READ | PROT_WRITE, MAP_SHARED,
		      d->mig.fd, d->bar2.offset);
	if (d->mem == MAP_FAILED)
		die("%s: mmap BAR2: %s", bdf, strerror(errno));
}

static void close_dev(struct dev *d)
{
	if (d->mem)
		munmap(d->mem, d->size);
	vfio_mig_device_close(&d->mig);
}

static u32 reg_read(struct dev *d, unsigned int off)
{
	u32 v;

	if (pread(d->mig.fd, &v, 4, d->bar0.offset + off) != 4)
		die("%s: read BAR0: %s", d->mig.name, strerror(errno));
	return v;
}

static void reg_write(struct dev *d, unsigned int off, u32 v)
{
	if (pwrite(d->mig.fd, &v, 4, d->bar0.offset + off) != 4)
		die("%s: write BAR0: %s", d->mig.name, strerror(errno));
}

/* Move @d to @to; the new data fd, if any, in *data_fd. */
static void set_state(struct dev *d, u32 to, int *data_fd)
{
	u32 from = VFIO_DEVICE_STATE_ERROR;
	int ret, fd = -1;

	vfio_mig_get_state(d->mig.fd, &from);
	ret = vfio_mig_set_state(d->mig.fd, to, &fd);
	if (ret)
		die("%s: %s -> %s: %s", d->mig.name, vfio_mig_state_name(from),
		    vfio_mig_state_name(to), strerror(-ret));
	if (data_fd)
		*data_fd = fd;
	else if (fd >= 0)
		close(fd);
}

static void precopy_info(int fd, struct vfio_precopy_info *info)
{
	int ret = vfio_mig_precopy_info(fd, info);

	if (ret)
		die("VFIO_MIG_GET_PRECOPY_INFO: %s", strerror(-ret));
}

static void fill(struct dev *d, u32 seed)
{
	u32 x = seed * 2654435761u + 1, *p = (u32 *)d->mem;
	size_t i;

	for (i = 0; i < d->size / 4; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		p[i] = x;
	}
}

static void write_all(int fd, const char *p, size_t n)
{
	ssize_t w;

	while (n) {
		w = write(fd, p, n);
		if (w <= 0)
			die("write to the resuming data fd: %s", w ? strerror(errno) : "0 bytes");
		p += w;
		n -= w;
	}
}

/*
 * Read @save in 1 MiB read()s until ENOMSG (@precopy) or EOF, writing what
 * it reads to @resume if >= 0 and adding it to *@progress if not NULL.
 * Returns the bytes read.
 */
static long long drain(int save, int resume, int precopy, long long *progress)
{
	long long total = 0;
	ssize_t n;

	for (;;) {
		n = read(save, buf, CHUNK);
		if (n < 0 && errno == ENOMSG && precopy)
			return total;
		if (n < 0)
			die("read from the saving data fd: %s", strerror(errno));
		if (n == 0) {
			if (precopy)
				die("read from the saving data fd: EOF in PRE_COPY");
			return total;
		}
		if (resume >= 0)
			write_all(resume, buf, n);
		total += n;
		if (progress)
			__atomic_add_fetch(progress, n, __ATOMIC_RELAXED);
	}
}

static double mbps(long long bytes, double secs)
{
	return bytes / secs / 1e6;
}

/* ---------------------------------------------------- a: save vs memcpy */

/* Copy @size bytes with one memcpy() per CHUNK. */
static void memcpy_chunked(void *dst, const void *src, size_t size)
{
	size_t off;

	for (off = 0; off < size; off += CHUNK)
		memcpy((char *)dst + off, (const char *)src + off,
		       size - off < CHUNK ? size - off : CHUNK);
}

/*
 * Copy @size bytes (a multiple of 4) the way x86's memcpy_fromio() and
 * memcpy_toio() do: "rep movsl". Returns false elsewhere.
 */
static bool copy_movsl(void *dst, const void *src, size_t size)
{
#if defined(__x86_64__) || defined(__i386__)
	size_t n = size / 4;

	asm volatile("rep movsl" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
	return true;
#else
	return false;
#endif
}

/* put_num() under the key @key@suffix. */
static void put_num_suffixed(const char *key, const char *suffix, double v)
{
	char k[64];

	snprintf(k, sizeof(k), "%s%s", key, suffix);
	put_num(k, v);
}

/*
 * Time @np passes of memcpy of @size bytes from @src to @dst, alternating a
 * whole-buffer call and 1 MiB calls; keep the best and median of each under
 * @key and @key_chunked and return the best of both. The best "rep movsl"
 * copy goes under @key_movsl.
 */
static double bench_memcpy(void *dst, const void *src, size_t size, int np,
			   const char *key, const char *key_chunked, const char *key_movsl)
{
	double whole[64], chunked[64], movsl = 0, t;
	int i;

	for (i = 0; i < np; i++) {
		t = now();
		memcpy(dst, src, size);
		whole[i] = mbps(size, now() - t);
		t = now();
		memcpy_chunked(dst, src, size);
		chunked[i] = mbps(size, now() - t);
		t = now();
		if (copy_movsl(dst, src, size)) {
			t = mbps(size, now() - t);
			movsl = t > movsl ? t : movsl;
		}
	}
	if (movsl > 0)
		put_num_suffixed(key_movsl, "_mbps", movsl);
	put_num_suffixed(key, "_median_mbps", median(whole, np));
	put_num_suffixed(key_chunked, "_median_mbps", median(chunked, np));
	/* median() sorted them: the best is last. */
	put_num_suffixed(key, "_mbps", whole[np - 1]);
	put_num_suffixed(key_chunked, "_mbps", chunked[np - 1]);
	return whole[np - 1] > chunked[np - 1] ? whole[np - 1] : chunked[np - 1];
}

static void bench_save(struct dev *a, char *ram)
{
	double mc, pre[64], stop[64], t;
	long long pre_bytes = 0, stop_bytes = 0;
	int i, fd, np = passes + 2 < 64 ? passes + 2 : 64;

	mc = bench_memcpy(ram, a->mem, a->size, np, "memcpy_read", "memcpy_read_chunked",
			  "movsl_read");
	for (i = 0; i < passes; i++) {
		t = now();
		set_state(a, VFIO_DEVICE_STATE_PRE_COPY, &fd);
		pre_bytes = drain(fd, -1, 1, NULL);
		pre[i] = mbps(pre_bytes, now() - t);
		set_state(a, VFIO_DEVICE_STATE_RUNNING, NULL);
		close(fd);

		set_state(a, VFIO_DEVICE_STATE_STOP, NULL);
		t = now();
		set_state(a, VFIO_DEVICE_STATE_STOP_COPY, &fd);
		stop_bytes = drain(fd, -1, 0, NULL);
		stop[i] = mbps(stop_bytes, now() - t);
		set_state(a, VFIO_DEVICE_STATE_STOP, NULL);
		close(fd);
		set_state(a, VFIO_DEVICE_STATE_RUNNING, NULL);
	}
	put_num("precopy_median_mbps", median(pre, passes));
	put_num("stopcopy_median_mbps", median(stop, passes));
	/* median() sorted them: the best is last. */
	pre[0] = pre[passes - 1];
	stop[0] = stop[passes - 1];
	put_num("precopy_mbps", pre[0]);
	put_int("precopy_bytes_full", pre_bytes);
	put_num("stopcopy_mbps", stop[0]);
	put_int("stopcopy_bytes_full", stop_bytes);
	put_num("save_ratio", (pre[0] < stop[0] ? pre[0] : stop[0]) / mc);
	say("a: best of %d: memcpy BAR2->RAM %.1f MB/s (the faster way), PRE_COPY %.1f MB/s "
	    "(%lld bytes), STOP_COPY %.1f MB/s (%lld bytes)", passes, mc, pre[0], pre_bytes,
	    stop[0], stop_bytes);
}

/* -------------------------------------------------- b: resume vs memcpy */

static void bench_resume(struct dev *a, struct dev *b, char *ram)
{
	double mc, res[64], t;
	long long len = 0;
	size_t cap, off;
	char *stream;
	u64 size;
	ssize_t n;
	int i, fd, np = passes + 2 < 64 ? passes + 2 : 64;

	if (vfio_mig_get_data_size(a->mig.fd, &size))
		die("VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: %s", strerror(errno));
	cap = size + CHUNK;
	stream = malloc(cap);
	if (!stream)
		die("malloc %zu", cap);
	fill(a, 0xb);
	reg_write(a, INTRMASK, 0x1234000b);
	set_state(a, VFIO_DEVICE_STATE_STOP, NULL);
	set_state(a, VFIO_DEVICE_STATE_STOP_COPY, &fd);
	for (;;) {
		if ((size_t)len == cap)
			die("stream longer than VFIO_DEVICE_FEATURE_MIG_DATA_SIZE %llu + %d",
			    (unsigned long long)size, CHUNK);
		n = read(fd, stream + len, cap - len < CHUNK ? cap - len : CHUNK);
		if (n < 0)
			die("read STOP_COPY: %s", strerror(errno));
		if (!n)
			break;
		len += n;
	}
	close(fd);
	set_state(a, VFIO_DEVICE_STATE_STOP, NULL);
	set_state(a, VFIO_DEVICE_STATE_RUNNING, NULL);

	mc = bench_memcpy(b->mem, ram, b->size, np, "memcpy_write", "memcpy_write_chunked",
			  "movsl_write");
	for (i = 0; i < passes; i++) {
		t = now();
		set_state(b, VFIO_DEVICE_STATE_STOP, NULL);
		set_state(b, VFIO_DEVICE_STATE_RESUMING, &fd);
		for (off = 0; off < (size_t)len; off += CHUNK)
			write_all(fd, stream + off, len - off < CHUNK ? len - off : CHUNK);
		set_state(b, VFIO_DEVICE_STATE_STOP, NULL);
		res[i] = mbps(len, now() - t);
		close(fd);
		set_state(b, VFIO_DEVICE_STATE_RUNNING, NULL);
	}
	put_num("resume_median_mbps", median(res, passes));
	/* median() sorted them: the best is last. */
	res[0] = res[passes - 1];
	i = !memcmp(a->mem, b->mem, a->size) && reg_read(b, INTRMASK) == 0x1234000b;
	put_num("resume_mbps", res[0]);
	put_int("resume_stream_bytes", len);
	put_num("resume_ratio", res[0] / mc);
	put_bool("resume_identical", i);
	if (!i)
		failed = 1;
	say("b: best of %d: memcpy RAM->BAR2 %.1f MB/s (the faster way), resume %.1f MB/s "
	    "(%lld bytes, stop-copy size %llu), B %s A", passes, mc, res[0], len,
	    (unsigned long long)size,
	    i ? "identical to" : "DIFFERS from");
	free(stream);
}

/* ---------------------------------------------------- c: convergence */

struct writer {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned char *mem;
	u32 *perm;		/* a permutation of the page numbers */
	size_t pages;
	size_t k;		/* pages per round */
	int round, done, quit;
	long long expected;	/* stream bytes the round is expected to carry */
	long long progress;	/* stream bytes read in this round (atomic) */
	int drained;		/* the round hit ENOMSG (atomic) */
	u64 rng;
};

static u64 wrng(struct writer *w)
{
	w->rng ^= w->rng << 13;
	w->rng ^= w->rng >> 7;
	w->rng ^= w->rng << 17;
	return w->rng;
}

/*
 * Each round: K distinct random pages (the first K of a partial shuffle),
 * page i written once the round read i/(K+1) of what it was expected to
 * carry, or at once after ENOMSG; 8 bytes at a random aligned offset.
 */
static void *writer_main(void *arg)
{
	struct writer *w = arg;
	size_t i, j;
	u32 tmp;
	int r;

	for (;;) {
		pthread_mutex_lock(&w->lock);
		while (!w->quit && w->round == w->done)
			pthread_cond_wait(&w->cond, &w->lock);
		r = w->round;
		pthread_mutex_unlock(&w->lock);
		if (w->quit)
			return NULL;
		for (i = 0; i < w->k; i++) {
			long long target = (long long)((double)w->expected * (i + 1) / (w->k + 1));

			j = i + wrng(w) % (w->pages - i);
			tmp = w->perm[i];
			w->perm[i] = w->perm[j];
			w->perm[j] = tmp;
			while (!__atomic_load_n(&w->drained, __ATOMIC_ACQUIRE) &&
			       __atomic_load_n(&w->progress, __ATOMIC_RELAXED) < target)
				usleep(50);
			*(volatile u64 *)(w->mem + (size_t)w->perm[i] * PAGE +
					  (wrng(w) % (PAGE / 8)) * 8) = wrng(w);
		}
		pthread_mutex_lock(&w->lock);
		w->done = r;
		pthread_cond_broadcast(&w->cond);
		pthread_mutex_unlock(&w->lock);
	}
}

/* Let the writer dirty its pages for round @r, paced by @expected bytes. */
static void writer_round(struct writer *w, int r, long long expected, int drained)
{
	pthread_mutex_lock(&w->lock);
	w->expected = expected;
	__atomic_store_n(&w->progress, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&w->drained, drained, __ATOMIC_RELEASE);
	w->round = r;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

static void writer_wait(struct writer *w, int r)
{
	pthread_mutex_lock(&w->lock);
	while (w->done != r)
		pthread_cond_wait(&w->cond, &w->lock);
	pthread_mutex_unlock(&w->lock);
}

static void bench_converge(struct dev *a, struct dev *b, int tracking)
{
	struct vfio_precopy_info info = {};
	long long pre = 0, stop, estimate, n, thr;
	int save_fd, resume_fd, r, converged = 0, multiple = 1, identical, observed;
	long long initial0;
	char log[4096] = "[", *lp = log + 1;
	struct writer w = {};
	double t, t0, downtime, share, err;
	u32 mask = 0xc0de0000 | (tracking & 0xff), mask_b;
	size_t i, bad = 0, first = 0;

	w.mem = a->mem;
	w.pages = a->size / PAGE;
	w.k = (size_t)(w.pages * share_pct / 100 + 0.5);
	if (w.k < 1)
		w.k = 1;
	w.rng = 0x243f6a8885a308d3ull ^ tracking;
	w.perm = malloc(w.pages * sizeof(*w.perm));
	if (!w.perm)
		die("malloc");
	for (i = 0; i < w.pages; i++)
		w.perm[i] = i;
	thr = threshold >= 0 ? threshold : (long long)(w.k * PAGE_RECORD / 4);
	pthread_mutex_init(&w.lock, NULL);
	pthread_cond_init(&w.cond, NULL);

	fill(a, 0xc0 + tracking);
	reg_write(a, INTRMASK, mask);
	memset(b->mem, 0, b->size);
	reg_write(b, INTRMASK, 0);

	if (pthread_create(&w.thread, NULL, writer_main, &w))
		die("pthread_create");
	t0 = now();
	set_state(a, VFIO_DEVICE_STATE_PRE_COPY, &save_fd);
	set_state(b, VFIO_DEVICE_STATE_STOP, NULL);
	set_state(b, VFIO_DEVICE_STATE_RESUMING, &resume_fd);
	precopy_info(save_fd, &info);
	initial0 = info.initial_bytes + info.dirty_bytes;
	observed = 0;
	for (r = 1; r <= max_rounds; r++) {
		precopy_info(save_fd, &info);
		t = now();
		writer_round(&w, r, info.initial_bytes + info.dirty_bytes, 0);
		n = drain(save_fd, resume_fd, 1, &w.progress);
		__atomic_store_n(&w.drained, 1, __ATOMIC_RELEASE);
		writer_wait(&w, r);
		pre += n;

		precopy_info(save_fd, &info);
		if (info.dirty_bytes % PAGE_RECORD)
			multiple = 0;
		if (info.dirty_bytes)
			observed = 1;
		say("c: round %d: read %lld bytes in %.0f ms, wrote %zu pages; then initial_bytes "
		    "%llu dirty_bytes %llu", r, n, (now() - t) * 1e3, w.k,
		    (unsigned long long)info.initial_bytes, (unsigned long long)info.dirty_bytes);
		lp += snprintf(lp, log + sizeof(log) - lp, "%s[%d,%llu,%llu,%lld,%.1f]",
			       r > 1 ? "," : "", r, (unsigned long long)info.initial_bytes,
			       (unsigned long long)info.dirty_bytes, n, (now() - t) * 1e3);
		if ((long long)info.dirty_bytes < thr) {
			converged = 1;
			break;
		}
	}
	if (r > max_rounds)
		r = max_rounds;
	/*
	 * The guest runs on until the VMM stops it: the writer dirties one more
	 * round's share after the last round, then stops. STOP_COPY carries that.
	 */
	writer_round(&w, r + 1, 0, 1);
	writer_wait(&w, r + 1);
	pthread_mutex_lock(&w.lock);
	w.quit = 1;
	pthread_cond_broadcast(&w.cond);
	pthread_mutex_unlock(&w.lock);
	pthread_join(w.thread, NULL);

	/* The writer is stopped: what pre-copy says STOP_COPY will carry. */
	precopy_info(save_fd, &info);
	estimate = info.initial_bytes + info.dirty_bytes;
	t = now();
	set_state(a, VFIO_DEVICE_STATE_STOP_COPY, NULL);
	stop = drain(save_fd, resume_fd, 0, NULL);
	set_state(a, VFIO_DEVICE_STATE_STOP, NULL);
	set_state(b, VFIO_DEVICE_STATE_STOP, NULL);
	set_state(b, VFIO_DEVICE_STATE_RUNNING, NULL);
	downtime = now() - t;
	set_state(a, VFIO_DEVICE_STATE_RUNNING, NULL);
	close(save_fd);
	close(resume_fd);
	t0 = now() - t0;
	/* Tracking shows: pages resent in pre-copy, or dirty_bytes reported. */
	if (pre > initial0)
		observed = 1;

	for (i = 0; i < a->size; i += PAGE) {
		if (memcmp(a->mem + i, b->mem + i, PAGE)) {
			if (!bad++)
				first = i;
		}
	}
	mask_b = reg_read(b, INTRMASK);
	identical = !bad && mask_b == mask;
	if (!identical)
		failed = 1;
	if (observed != tracking) {
		say("c: WARNING: write tracking is %s but pre-copy %s (pre-copy %lld bytes, initial "
		    "image %lld bytes): the results are not what their labels say", tracking ?
		    "on" : "off", observed ? "resent pages or reported dirty_bytes" :
		    "resent no page and reported no dirty_bytes", pre, initial0);
		failed = 1;
	}

	share = (double)stop / a->size;
	err = (double)(estimate > stop ? estimate - stop : stop - estimate) / stop;
	lp += snprintf(lp, log + sizeof(log) - lp, "]");
	put_int(K("rounds"), r);
	put_bool(K("converged"), converged);
	put_int(K("threshold_bytes"), thr);
	put_int(K("dirty_pages_per_round"), w.k);
	put_num(K("dirty_share_per_round"), (double)w.k / w.pages);
	put_int(K("precopy_bytes"), pre);
	put_int(K("estimate_bytes"), estimate);
	put_int(K("stop_copy_bytes"), stop);
	put_num(K("stop_copy_share"), share);
	put_num(K("estimate_error"), err);
	put_num(K("downtime_ms"), downtime * 1e3);
	put_num(K("migration_s"), t0);
	put_bool(K("dirty_bytes_page_records"), multiple);
	put_bool(K("tracking_observed"), observed);
	put_bool(K("identical"), identical);
	put_raw(K("round_log"), log);
	say("c: %d rounds (%s, threshold %lld bytes), pre-copy %lld bytes; estimate %lld bytes, "
	    "STOP_COPY %lld bytes (%.4f of BAR2, estimate error %.4g) in %.0f ms",
	    r, converged ? "converged" : "round limit", thr, pre, estimate, stop, share, err,
	    downtime * 1e3);
	if (identical)
		say("c: verify: B identical to A (BAR2 and INTRMASK)");
	else
		say("c: verify: B DIFFERS from A: %zu pages differ, first at 0x%zx; INTRMASK 0x%08x, "
		    "want 0x%08x", bad, first, mask_b, mask);
	free(w.perm);
}

/* ------------------------------------------------ d: precopy info latency */

/* One timed VFIO_MIG_GET_PRECOPY_INFO on @fd, in ns. */
static double info_call(int fd, const char *bdf)
{
	struct vfio_precopy_info info;
	struct timespec t0, t1;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (vfio_mig_precopy_info(fd, &info))
		die("VFIO_MIG_GET_PRECOPY_INFO on %s: %s", bdf, strerror(errno));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
}

/*
 * Median latency of @calls precopy-info calls on each of two devices in
 * PRE_COPY, in alternating blocks of calls / 10, so that whatever drifts
 * under TCG drifts for both.
 */
static void info_latency(struct dev d[2], double med[2])
{
	double *ns[2] = { malloc(sizeof(double) * calls), malloc(sizeof(double) * calls) };
	int fd[2], i, j, k, n[2] = {}, block = calls / 10 ? calls / 10 : 1;

	if (!ns[0] || !ns[1])
		die("malloc");
	for (j = 0; j < 2; j++) {
		set_state(&d[j], VFIO_DEVICE_STATE_PRE_COPY, &fd[j]);
		for (i = 0; i < 100; i++)
			info_call(fd[j], d[j].mig.name);
	}
	while (n[0] < calls || n[1] < calls) {
		for (j = 0; j < 2; j++)
			for (k = 0; k < block && n[j] < calls; k++)
				ns[j][n[j]++] = info_call(fd[j], d[j].mig.name);
	}
	for (j = 0; j < 2; j++) {
		med[j] = median(ns[j], calls);
		set_state(&d[j], VFIO_DEVICE_STATE_RUNNING, NULL);
		close(fd[j]);
		free(ns[j]);
	}
}

static double clock_overhead(void)
{
	double ns[1001];
	struct timespec t0, t1;
	int i;

	for (i = 0; i < 1001; i++) {
		clock_gettime(CLOCK_MONOTONIC, &t0);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		ns[i] = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
	}
	return median(ns, 1001);
}

static void bench_latency(const char *small, const char *large, int main_run)
{
	struct dev d[2];
	double med[2], s, l, c = clock_overhead();
	size_t ssize, lsize;

	open_dev(&d[0], small, 0);
	open_dev(&d[1], large, 0);
	info_latency(d, med);
	s = med[0];
	l = med[1];
	ssize = d[0].size;
	lsize = d[1].size;
	close_dev(&d[0]);
	close_dev(&d[1]);

	put_num(K("precopy_info_ns_small"), s);
	put_num(K("precopy_info_ns_large"), l);
	if (main_run) {
		put_num("precopy_info_ns_small", s);
		put_num("precopy_info_ns_large", l);
		put_int("precopy_info_calls", calls);
		put_int("small_bytes", ssize);
		put_int("large_bytes", lsize);
		put_num("clock_gettime_ns", c);
	}
	say("d: VFIO_MIG_GET_PRECOPY_INFO median of %d: %.0f ns (%s, %zu MiB), %.0f ns (%s, %zu MiB); "
	    "clock_gettime pair %.0f ns", calls, s, small, ssize >> 20, l, large, lsize >> 20, c);
}

/* --------------------------------------------------- e: writer slowdown */

struct drainer {
	pthread_t thread;
	int fd, quit;
	long long bytes;
};

static void *drainer_main(void *arg)
{
	struct drainer *d = arg;
	struct pollfd pfd = { .fd = d->fd, .events = POLLIN };
	char *b = malloc(CHUNK);
	ssize_t n;

	while (b && !__atomic_load_n(&d->quit, __ATOMIC_ACQUIRE)) {
		n = read(d->fd, b, CHUNK);
		if (n > 0) {
			d->bytes += n;
		} else if (n < 0 && errno == ENOMSG) {
			poll(&pfd, 1, 1);
		} else {
			fprintf(stderr, "%s: drainer: read: %s\n", prog, n ? strerror(errno) : "EOF");
			break;
		}
	}
	free(b);
	return NULL;
}

/*
 * Page writes per second over at least @window seconds and two passes; the
 * number of passes and the time of the first in *@np and *@first_ms.
 */
static double writer_rate(struct dev *a, int *np, double *first_ms)
{
	size_t pages = a->size / PAGE, i;
	long long n = 0;
	int pass = 0;
	double t = now(), el;

	do {
		for (i = 0; i < pages; i++)
			*(volatile u64 *)(a->mem + i * PAGE + 8 * (pass % 512)) = n + i;
		n += pages;
		el = now() - t;
		if (!pass++)
			*first_ms = el * 1e3;
	} while (el < window || pass < 2);
	*np = pass;
	return n / el;
}

static void bench_writer(struct dev *a, int tracking)
{
	struct drainer d = {};
	double idle, busy, after, first_idle, first_busy, first_after;
	int np_idle, np_busy, np_after;

	writer_rate(a, &np_idle, &first_idle);	/* fault the mapping in */
	idle = writer_rate(a, &np_idle, &first_idle);
	set_state(a, VFIO_DEVICE_STATE_PRE_COPY, &d.fd);
	if (pthread_create(&d.thread, NULL, drainer_main, &d))
		die("pthread_create");
	busy = writer_rate(a, &np_busy, &first_busy);
	__atomic_store_n(&d.quit, 1, __ATOMIC_RELEASE);
	pthread_join(d.thread, NULL);
	set_state(a, VFIO_DEVICE_STATE_RUNNING, NULL);
	close(d.fd);
	/* Again without a session: the mapping may have changed under the session. */
	after = writer_rate(a, &np_after, &first_after);
	put_num(K("writer_idle_pps"), idle);
	put_num(K("writer_after_pps"), after);
	put_num(K("writer_session_pps"), busy);
	put_int(K("writer_drained_bytes"), d.bytes);
	put_num(K("tracking_slowdown"), idle / busy);
	put_int(K("writer_session_passes"), np_busy);
	put_num(K("writer_session_first_pass_ms"), first_busy);
	/*
	 * The first pass after PRE_COPY began writes every page once: with
	 * tracking each write faults. Its time against an idle pass is the
	 * steadier number under TCG, where the rates above swing with QEMU's
	 * softmmu TLB.
	 */
	put_num(K("first_pass_slowdown"), first_busy / (a->size / PAGE / idle * 1e3));
	say("e: writer %.0f pages/s without a session (%d passes, first %.1f ms), %.0f pages/s with "
	    "a PRE_COPY session drained concurrently (%d passes, first %.1f ms; %lld bytes "
	    "drained): slowdown %.2f (tracking %s); %.0f pages/s after the session (%d passes, "
	    "first %.1f ms)", idle, np_idle, first_idle, busy, np_busy, first_busy, d.bytes,
	    idle / busy, tracking ? "on" : "off", after, np_after, first_after);
}

/* -------------------------------------------------------------- table */

static void cell(char *out, size_t n, const char *key, const char *fmt, double scale)
{
	const char *v = get_raw(key);

	if (!v)
		snprintf(out, n, "n/a");
	else if (!strcmp(v, "true") || !strcmp(v, "false"))
		snprintf(out, n, "%s", v[0] == 't' ? "yes" : "no");
	else
		snprintf(out, n, fmt, strtod(v, NULL) * scale);
}

static void row1(const char *label, const char *key, const char *fmt, double scale)
{
	char c[64];

	cell(c, sizeof(c), key, fmt, scale);
	say("%-46s %14s", label, c);
}

static void row2(const char *label, const char *on, const char *off, const char *fmt,
		 double scale)
{
	char c1[64], c2[64];

	cell(c1, sizeof(c1), on, fmt, scale);
	cell(c2, sizeof(c2), off, fmt, scale);
	say("%-46s %14s %14s", label, c1, c2);
}

static const char *unquote(const char *v)
{
	static char s[2][160];
	static int n;
	char *p = s[n++ % 2];

	if (!v)
		return "?";
	snprintf(p, 160, "%s", v[0] == '"' ? v + 1 : v);
	if (p[0] && p[strlen(p) - 1] == '"')
		p[strlen(p) - 1] = 0;
	return p;
}

static void print_table(void)
{
	const char *tr = get_raw("tracking");
	int on = tr && !strcmp(tr, "\"on\"");
	char l1[64], l2[64];

	say("---- vfio_pci_migration_bench ----");
	say("guest: %s; MB/s = 10^6 bytes/s, best of %s passes", unquote(get_raw("guest")),
	    get_raw("passes") ? get_raw("passes") : "?");
	say("%-46s %14s", "a, b: once, track_writes as loaded:", unquote(tr));
	row1("BAR2 size (MiB)", "bar2_bytes", "%.0f", 1.0 / (1 << 20));
	row1("a memcpy BAR2 mmap -> RAM, one call (MB/s)", "memcpy_read_mbps", "%.1f", 1);
	row1("a memcpy BAR2 mmap -> RAM, 1 MiB calls (MB/s)", "memcpy_read_chunked_mbps",
	     "%.1f", 1);
	row1("a rep movsl BAR2 mmap -> RAM (MB/s)", "movsl_read_mbps", "%.1f", 1);
	row1("a save PRE_COPY initial image (MB/s)", "precopy_mbps", "%.1f", 1);
	row1("a save STOP -> STOP_COPY to EOF (MB/s)", "stopcopy_mbps", "%.1f", 1);
	row1("a save_ratio", "save_ratio", "%.3f", 1);
	row1("b memcpy RAM -> BAR2 mmap, one call (MB/s)", "memcpy_write_mbps", "%.1f", 1);
	row1("b memcpy RAM -> BAR2 mmap, 1 MiB calls (MB/s)", "memcpy_write_chunked_mbps",
	     "%.1f", 1);
	row1("b rep movsl RAM -> BAR2 mmap (MB/s)", "movsl_write_mbps", "%.1f", 1);
	row1("b resume STOP -> RESUMING -> STOP (MB/s)", "resume_mbps", "%.1f", 1);
	row1("b resume_ratio", "resume_ratio", "%.3f", 1);
	say("%-46s %14s %14s", "c, d, e:", "tracking on", "tracking off");
	row2("c pre-copy rounds", "rounds", "rounds_off", "%.0f", 1);
	row2("c converged (dirty_bytes < threshold)", "converged", "converged_off", "%.0f", 1);
	row2("c pre-copy bytes", "precopy_bytes", "precopy_bytes_off", "%.0f", 1);
	row2("c estimate before STOP_COPY (bytes)", "estimate_bytes", "estimate_bytes_off",
	     "%.0f", 1);
	row2("c STOP_COPY bytes", "stop_copy_bytes", "stop_copy_bytes_off", "%.0f", 1);
	row2("c stop_copy_share", "stop_copy_share", "stop_copy_share_off", "%.4g", 1);
	row2("c estimate_error", "estimate_error", "estimate_error_off", "%.4g", 1);
	row2("c STOP_COPY + resume to RUNNING (ms)", "downtime_ms", "downtime_ms_off", "%.0f", 1);
	row2("c B identical to A", "identical", "identical_off", "%s", 1);
	snprintf(l1, sizeof(l1), "d precopy info, small device (ns)");
	if (get_raw("small_bytes"))
		snprintf(l1, sizeof(l1), "d precopy info, %.0f MiB device (ns)",
			 strtod(get_raw("small_bytes"), NULL) / (1 << 20));
	snprintf(l2, sizeof(l2), "d precopy info, large device (ns)");
	if (get_raw("large_bytes"))
		snprintf(l2, sizeof(l2), "d precopy info, %.0f MiB device (ns)",
			 strtod(get_raw("large_bytes"), NULL) / (1 << 20));
	row2(l1, on ? "precopy_info_ns_small" : "-", "precopy_info_ns_small_off", "%.0f", 1);
	row2(l2, on ? "precopy_info_ns_large" : "-", "precopy_info_ns_large_off", "%.0f", 1);
	row2("e writer, no session (pages/s)", "writer_idle_pps", "writer_idle_pps_off", "%.0f", 1);
	row2("e writer, PRE_COPY drained (pages/s)", "writer_session_pps", "writer_session_pps_off",
	     "%.0f", 1);
	row2("e writer, after the session (pages/s)", "writer_after_pps", "writer_after_pps_off",
	     "%.0f", 1);
	row2("e first pass in the session (ms)", "writer_session_first_pass_ms",
	     "writer_session_first_pass_ms_off", "%.1f", 1);
	row2("e first_pass_slowdown", "first_pass_slowdown", "first_pass_slowdown_off", "%.1f", 1);
	row2("e tracking_slowdown", "tracking_slowdown", "tracking_slowdown_off", "%.2f", 1);
	say("---- end ----");
}

/* --------------------------------------------------------------- main */

static void guest_info(void)
{
	char line[256], model[160] = "?", s[256];
	FILE *f = fopen("/proc/cpuinfo", "r");
	char *p;

	while (f && fgets(line, sizeof(line), f)) {
		if (!strncmp(line, "model name", 10) && (p = strchr(line, ':'))) {
			snprintf(model, sizeof(model), "%s", p + 2);
			model[strcspn(model, "\n")] = 0;
			break;
		}
	}
	if (f)
		fclose(f);
	snprintf(s, sizeof(s), "%ld x %s", sysconf(_SC_NPROCESSORS_ONLN), model);
	put_str("guest", s);
}

/* "on", "off", or "absent" (a driver without the parameter does not track). */
static const char *tracking_mode(void)
{
	char v[8] = "";
	FILE *f = fopen(TRACK_PARAM, "r");

	if (!f)
		return "absent";
	if (!fgets(v, sizeof(v), f))
		v[0] = 0;
	fclose(f);
	return v[0] == 'Y' || v[0] == '1' ? "on" : "off";
}

int main(int argc, char **argv)
{
	const char *out = NULL, *merge = NULL, *sections = "abcde", *mode = NULL;
	int opt, quiet = 0, tracking;
	struct dev a, b;
	char *ram;
	double t0 = now();

	while ((opt = getopt(argc, argv, "o:a:s:m:p:n:w:r:T:W:q")) != -1) {
		switch (opt) {
		case 'o': out = optarg; break;
		case 'a': merge = optarg; break;
		case 's': sections = optarg; break;
		case 'm': mode = optarg; break;
		case 'p': passes = atoi(optarg); break;
		case 'n': calls = atoi(optarg); break;
		case 'w': share_pct = strtod(optarg, NULL); break;
		case 'r': max_rounds = atoi(optarg); break;
		case 'T': threshold = strtoll(optarg, NULL, 0); break;
		case 'W': window = strtod(optarg, NULL); break;
		case 'q': quiet = 1; break;
		default: goto usage;
		}
	}
	if ((argc - optind != 2 && argc - optind != 4) || passes < 1 || passes > 60 ||
	    calls < 1 || max_rounds < 1 || share_pct <= 0 || share_pct > 100 ||
	    (mode && strcmp(mode, "on") && strcmp(mode, "off") && strcmp(mode, "absent"))) {
usage:
		fprintf(stderr, "usage: %s [-o FILE] [-a FILE] [-s abcde] [-m on|off|absent] "
			"[-p PASSES] [-n CALLS] [-w PERCENT] [-r ROUNDS] [-T BYTES] [-W SECONDS] "
			"[-q] A B [SMALL LARGE]\n",
			prog);
		return 2;
	}
	if (strchr(sections, 'd') && argc - optind != 4)
		die("section d needs SMALL and LARGE devices");

	if (merge)
		merge_json(merge);
	if (!mode)
		mode = tracking_mode();
	tracking = !strcmp(mode, "on");
	suffix = tracking ? "" : "_off";
	if (!merge) {
		put_str("tracking", mode);
		guest_info();
	} else {
		put_str(K("tracking_run"), mode);
	}

	buf = malloc(CHUNK);
	open_dev(&a, argv[optind], 1);
	open_dev(&b, argv[optind + 1], 1);
	if (a.size != b.size)
		die("%s and %s differ in BAR2 size", a.mig.name, b.mig.name);
	ram = malloc(a.size);
	if (!buf || !ram)
		die("malloc");
	memset(ram, 0x5a, a.size);
	say("%s: A %s, B %s (%s), BAR2 %zu MiB, track_writes %s, sections %s",
	    prog, a.mig.name, b.mig.name, a.mig.driver, a.size >> 20, mode, sections);
	if (!merge) {
		put_int("bar2_bytes", a.size);
		put_int("passes", passes);
		/* A driver without tracking: the tracking-on results are n/a. */
		if (!tracking) {
			static const char * const na[] = {
				"rounds", "stop_copy_share", "estimate_error", "stop_copy_bytes",
				"identical", "tracking_slowdown",
			};
			unsigned int i;

			for (i = 0; i < sizeof(na) / sizeof(na[0]); i++)
				put_raw(na[i], "null");
		}
	}

	if (strchr(sections, 'a'))
		bench_save(&a, ram);
	if (strchr(sections, 'b'))
		bench_resume(&a, &b, ram);
	if (strchr(sections, 'c'))
		bench_converge(&a, &b, tracking);
	if (strchr(sections, 'd'))
		bench_latency(argv[optind + 2], argv[optind + 3], !merge);
	if (strchr(sections, 'e'))
		bench_writer(&a, tracking);

	put_num(K("run_s"), now() - t0);
	close_dev(&a);
	close_dev(&b);
	if (out)
		write_json(out);
	if (!quiet)
		print_table();
	say("%s: %s in %.1f s", prog, failed ? "FAILED" : "done", now() - t0);
	return failed;
}
