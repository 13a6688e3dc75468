// SPDX-License-Identifier: GPL-2.0

#include <linux/pgtable.h>

__rust_helper pgprot_t rust_helper_pgprot_modify(pgprot_t oldprot, pgprot_t newprot)
{
	return pgprot_modify(oldprot, newprot);
}
