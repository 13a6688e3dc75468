// SPDX-License-Identifier: GPL-2.0
/*
 * L2 firmware: a bare-metal workload for an ivshmem-plain device passed to a
 * TCG QEMU with vfio-pci, so that QEMU's VFIO live migration can be checked
 * against device state that keeps changing.
 *
 * Finds 1af4:1110 on bus 0, maps its BAR2 at L2_BAR2_ADDR and, per fw_cfg
 * opt/l2/mode:
 *   idle   - writes each page once (round 1), then halts;
 *   writer - rewrites the first opt/l2/pages pages (0: all) round after
 *            round, spinning opt/l2/delay times after each page.
 * Page p of BAR2 holds, as 64-bit words:
 *   [0] the round that last wrote it (never goes backwards),
 *   [1] (seed << 32) | p, so stale data from another run does not match,
 *   [2 + round % L2_SLOTS] l2_pattern(seed, p, round), a moving pattern.
 * State lives in BAR2; RAM only holds the stack and the status block at
 * L2_STATUS_ADDR (magic, state, BDF, BAR2 size, rounds).
 * Without an ivshmem-plain device (e.g. mtty passed instead) it halts.
 */
#include <stdint.h>
#include "l2.h"

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

static inline void outb(u16 port, u8 v) { asm volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { asm volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { asm volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; asm volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static u32 pci_read(u32 bdf, u32 off)
{
	outl(0xcf8, 0x80000000 | bdf << 8 | (off & 0xfc));
	return inl(0xcfc);
}

static void pci_write(u32 bdf, u32 off, u32 v)
{
	outl(0xcf8, 0x80000000 | bdf << 8 | (off & 0xfc));
	outl(0xcfc, v);
}

/* fw_cfg over I/O ports: selector at 0x510, data bytes at 0x511. */
#define FW_CFG_SEL	0x510
#define FW_CFG_DATA	0x511
#define FW_CFG_FILE_DIR	0x19

static u32 fw_cfg_be32(void)
{
	u32 v = 0;
	int i;

	for (i = 0; i < 4; i++)
		v = v << 8 | inb(FW_CFG_DATA);
	return v;
}

static int streq(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}

/* Read fw_cfg file NAME into BUF (NUL-terminated); 0 if absent. */
static int fw_cfg_file(const char *name, char *buf, u32 len)
{
	char fname[56];
	u32 n, i, j, size;
	u16 sel;

	outw(FW_CFG_SEL, FW_CFG_FILE_DIR);
	n = fw_cfg_be32();
	for (i = 0; i < n; i++) {
		size = fw_cfg_be32();
		sel = inb(FW_CFG_DATA) << 8;
		sel |= inb(FW_CFG_DATA);
		inb(FW_CFG_DATA);
		inb(FW_CFG_DATA);
		for (j = 0; j < sizeof(fname); j++)
			fname[j] = inb(FW_CFG_DATA);
		fname[sizeof(fname) - 1] = 0;
		if (!streq(fname, name))
			continue;
		outw(FW_CFG_SEL, sel);
		for (j = 0; j < size && j < len - 1; j++)
			buf[j] = inb(FW_CFG_DATA);
		buf[j] = 0;
		return 1;
	}
	return 0;
}

/* Decimal or 0x-hex number from fw_cfg file NAME, DEF when absent. */
static u32 fw_cfg_u32(const char *name, u32 def)
{
	char buf[24], *p = buf;
	u32 v = 0, base = 10, d;

	if (!fw_cfg_file(name, buf, sizeof(buf)))
		return def;
	if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
		base = 16;
		p += 2;
	}
	for (; *p; p++) {
		if (*p >= '0' && *p <= '9')
			d = *p - '0';
		else if (base == 16 && (*p | 0x20) >= 'a' && (*p | 0x20) <= 'f')
			d = (*p | 0x20) - 'a' + 10;
		else
			break;
		v = v * base + d;
	}
	return v;
}

static void write_page(volatile u64 *page, u32 seed, u32 p, u32 round)
{
	/* Pattern before the round number: a page never claims a round it lacks. */
	page[2 + round % L2_SLOTS] = l2_pattern(seed, p, round);
	page[1] = (u64)seed << 32 | p;
	page[0] = round;
}

void fw_main(void)
{
	volatile struct l2_status *st = (void *)L2_STATUS_ADDR;
	u32 bdf, id, lo, hi, i, seed, pages, delay, round, p, npages;
	volatile u64 *bar;
	char mode[16];
	u64 size;

	st->magic = L2_MAGIC;
	st->state = L2_ST_SCAN;
	st->rounds = 0;
	for (bdf = 0; bdf < 32 << 3; bdf++) {
		id = pci_read(bdf, 0);
		if (id == 0x11101af4)
			break;
	}
	if (bdf == 32 << 3) {
		st->state = L2_ST_NONE;
		return;
	}
	st->bdf = bdf;

	/* Size the 64-bit BAR2 (decoding is still off), then place it. */
	pci_write(bdf, 0x04, 0);
	pci_write(bdf, 0x18, 0xffffffff);
	pci_write(bdf, 0x1c, 0xffffffff);
	lo = pci_read(bdf, 0x18) & ~0xfu;
	hi = pci_read(bdf, 0x1c);
	size = ~((u64)hi << 32 | lo) + 1;
	st->bar2_size = size;
	if (size > L2_BAR2_MAX || size < 4096) {
		st->state = L2_ST_BAD;
		return;
	}
	pci_write(bdf, 0x18, L2_BAR2_ADDR);
	pci_write(bdf, 0x1c, 0);
	pci_write(bdf, 0x10, L2_BAR0_ADDR);
	pci_write(bdf, 0x04, 0x0002);	/* memory space only: no DMA */

	bar = (volatile u64 *)L2_BAR2_ADDR;
	npages = size / 4096;
	seed = fw_cfg_u32("opt/l2/seed", 0);
	pages = fw_cfg_u32("opt/l2/pages", 0);
	delay = fw_cfg_u32("opt/l2/delay", 0);
	if (!pages || pages > npages)
		pages = npages;
	if (!fw_cfg_file("opt/l2/mode", mode, sizeof(mode)))
		mode[0] = 0;

	for (p = 0; p < npages; p++)
		write_page(bar + p * 512, seed, p, 1);
	st->rounds = 1;
	if (!streq(mode, "writer")) {
		st->state = L2_ST_IDLE;
		return;
	}
	st->state = L2_ST_WRITER;
	for (round = 2;; round++) {
		for (p = 0; p < pages; p++) {
			write_page(bar + p * 512, seed, p, round);
			for (i = 0; i < delay; i++)
				asm volatile("pause");
		}
		st->rounds = round;
	}
}
