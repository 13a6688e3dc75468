/* SPDX-License-Identifier: GPL-2.0 */
/* Layout of the L2 firmware; tools/overlay/guest/plans-qemu.sh repeats it (Q_*). */
#ifndef L2_H
#define L2_H

#include <stdint.h>

/* Inside q35's 32-bit PCI hole: MMCONFIG would be 0xb0000000-0xbfffffff
 * (off without firmware that sets PCIEXBAR), the IOAPIC is at 0xfec00000,
 * so 256 MiB aligned at 0xc0000000 fit, BAR0 after it. */
#define L2_BAR2_ADDR	0xc0000000u
#define L2_BAR2_MAX	0x10000000u
#define L2_BAR0_ADDR	0xd0000000u

#define L2_STATUS_ADDR	0x1000u
#define L2_MAGIC	0x5746324cu	/* "L2FW" */
#define L2_ST_SCAN	1
#define L2_ST_NONE	2	/* no ivshmem-plain: halted */
#define L2_ST_BAD	3	/* BAR2 missing or too big: halted */
#define L2_ST_IDLE	4	/* pattern written once: halted */
#define L2_ST_WRITER	5

#define L2_SLOTS	500

struct l2_status {
	uint32_t magic;
	uint32_t state;
	uint32_t bdf;
	uint32_t rounds;
	uint64_t bar2_size;
};

static inline uint64_t l2_pattern(uint32_t seed, uint32_t page, uint32_t round)
{
	return (uint64_t)(seed ^ round) << 32 | (page * 0x9e3779b1u ^ round);
}

#endif
