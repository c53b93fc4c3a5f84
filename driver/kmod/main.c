// SPDX-License-Identifier: GPL-2.0
/*
 * pageless: module parameters, claiming the boot-reserved ranges, load and
 * unload.
 *
 * ranges=SIZE@START[,SIZE@START...] names memory the firmware map marks
 * "Reserved" because the kernel was booted with memmap=SIZE$START.  Each range
 * is checked (outside System RAM, wholly reserved, unclaimed, 2 MiB aligned),
 * claimed with request_mem_region(), mapped write-back with memremap() (which
 * also records WB in the x86 PAT memtype tree, so user mappings of it are WB
 * rather than UC-), and added to the pool.  Any failure undoes everything.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/align.h>
#include <linux/cpufeature.h>
#include <linux/init.h>
#include <linux/io.h>
#include <linux/ioport.h>
#include <linux/kernel.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/slab.h>
#include <linux/string.h>

#ifdef CONFIG_X86_PAT
#include <asm/memtype.h>
#endif

#include "pageless.h"

#ifdef CONFIG_X86_PAT
/*
 * Whether @virt (a memremap() of a range) is mapped write-back: PWT and PCD
 * both clear, whatever the PAT bit, in Linux's PAT layout.  User mappings of
 * the range get the same memory type (the PAT memtype tree).  Read from the
 * kernel page table: 7.3 exports pat_pfn_immune_to_uc_mtrr() to KVM only.
 */
static bool pl_mapped_wb(void *virt)
{
	unsigned int level;
	pte_t *pte = lookup_address((unsigned long)virt, &level);

	return pte && !(pte_flags(*pte) & (_PAGE_PWT | _PAGE_PCD));
}
#endif

#define PL_MAX_RANGES	64
/* Ranges must be aligned to the smallest huge page. */
#define PL_RANGE_ALIGN	PMD_SIZE
/* Memory sections: a range sharing one with System RAM works but wastes. */
#define PL_SECTION	(128ULL << 20)

static char *ranges;
module_param(ranges, charp, 0444);
MODULE_PARM_DESC(ranges,
		 "Boot-reserved memory for the pool: SIZE@START[,SIZE@START...], the numbers of memmap=SIZE$START (K/M/G suffixes, hex or decimal); each 2 MiB aligned");

DEFINE_SRCU(pl_io_srcu);
/* PUD (1 GiB) entries can be used: arch support and CPU gbpages. */
bool pl_pud_ok;

struct pl_claim {
	u64 start;
	u64 size;
	struct resource *res;
	void *virt;
};

static struct pl_claim pl_claims[PL_MAX_RANGES];
static unsigned int pl_nr_claims;

static int pl_count_reserved(struct resource *res, void *arg)
{
	u64 *covered = arg;

	*covered += resource_size(res);
	return 0;
}

static int pl_parse_one(char *s, u64 *start, u64 *size)
{
	char *end;

	*size = memparse(s, &end);
	if (end == s || *end != '@')
		return -EINVAL;
	s = end + 1;
	*start = memparse(s, &end);
	if (end == s || *end)
		return -EINVAL;
	return 0;
}

/* Check and claim one range; on failure nothing of it is left behind. */
static int pl_claim_range(u64 start, u64 size)
{
	struct pl_claim *c = &pl_claims[pl_nr_claims];
	u64 end = start + size - 1, covered = 0;
	unsigned int i;
	int ret;

	if (!size || start + size < start) {
		pr_err("range %#llx@%#llx: empty or wraps around\n", size, start);
		return -EINVAL;
	}
	if (!IS_ALIGNED(start, PL_RANGE_ALIGN) ||
	    !IS_ALIGNED(size, PL_RANGE_ALIGN)) {
		pr_err("range [%#llx-%#llx]: start and size must be multiples of 2 MiB\n",
		       start, end);
		return -EINVAL;
	}
	for (i = 0; i < pl_nr_claims; i++) {
		if (start <= pl_claims[i].start + pl_claims[i].size - 1 &&
		    pl_claims[i].start <= end) {
			pr_err("range [%#llx-%#llx] overlaps range [%#llx-%#llx]\n",
			       start, end, pl_claims[i].start,
			       pl_claims[i].start + pl_claims[i].size - 1);
			return -EINVAL;
		}
	}
	if (region_intersects(start, size, IORESOURCE_SYSTEM_RAM,
			      IORES_DESC_NONE) != REGION_DISJOINT) {
		pr_err("range [%#llx-%#llx] overlaps System RAM: reserve it at boot with memmap=%#llx$%#llx\n",
		       start, end, size, start);
		return -EINVAL;
	}
	walk_iomem_res_desc(IORES_DESC_RESERVED, IORESOURCE_MEM, start, end,
			    &covered, pl_count_reserved);
	if (covered != size) {
		pr_err("range [%#llx-%#llx] is not wholly firmware-reserved memory (%llu of %llu bytes are): boot with memmap=%#llx$%#llx\n",
		       start, end, covered, size, size, start);
		return -EINVAL;
	}
	if (!IS_ALIGNED(start, PL_SECTION) || !IS_ALIGNED(size, PL_SECTION))
		pr_warn("range [%#llx-%#llx] is not 128 MiB aligned: a memory section shared with System RAM keeps its struct pages\n",
			start, end);

	c->res = request_mem_region(start, size, KBUILD_MODNAME);
	if (!c->res) {
		pr_err("range [%#llx-%#llx] is already claimed (see /proc/iomem)\n",
		       start, end);
		return -EBUSY;
	}
	c->virt = memremap(start, size, MEMREMAP_WB);
	if (!c->virt) {
		pr_err("range [%#llx-%#llx]: write-back memremap failed (conflicting memory type?)\n",
		       start, end);
		ret = -ENOMEM;
		goto err_release;
	}
#ifdef CONFIG_X86_PAT
	/*
	 * memremap() silently accepts UC- when an MTRR or an older mapping
	 * says so; user mappings would then be uncached too.
	 */
	if (pat_enabled() && !pl_mapped_wb(c->virt)) {
		pr_err("range [%#llx-%#llx]: memory type is not write-back (MTRR or an existing mapping): refusing\n",
		       start, end);
		ret = -EINVAL;
		goto err_unmap;
	}
#endif
	ret = pl_pool_add_range(start, size, c->virt);
	if (ret) {
		pr_err("range [%#llx-%#llx]: cannot add to the pool: %d\n",
		       start, end, ret);
		goto err_unmap;
	}
	c->start = start;
	c->size = size;
	pl_nr_claims++;
	pr_info("range [%#llx-%#llx] (%llu MiB) added to the pool\n",
		start, end, size >> 20);
	return 0;

err_unmap:
	memunmap(c->virt);
err_release:
	release_mem_region(start, size);
	return ret;
}

static void pl_unclaim_all(void)
{
	while (pl_nr_claims) {
		struct pl_claim *c = &pl_claims[--pl_nr_claims];

		memunmap(c->virt);
		release_mem_region(c->start, c->size);
	}
}

static int pl_claim_ranges(void)
{
	char *buf, *p, *item;
	u64 start, size;
	int ret = 0;

	if (!ranges || !*ranges) {
		pr_err("no memory: load with ranges=SIZE@START[,...] matching the memmap=SIZE$START boot parameters\n");
		return -EINVAL;
	}
	buf = kstrdup(ranges, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	p = buf;
	while ((item = strsep(&p, ",")) != NULL) {
		if (!*item)
			continue;
		if (pl_nr_claims == PL_MAX_RANGES) {
			pr_err("ranges=: more than %d ranges\n", PL_MAX_RANGES);
			ret = -E2BIG;
			break;
		}
		if (pl_parse_one(item, &start, &size)) {
			pr_err("ranges=: cannot parse '%s' (expected SIZE@START, e.g. 1G@4G)\n",
			       item);
			ret = -EINVAL;
			break;
		}
		ret = pl_claim_range(start, size);
		if (ret)
			break;
	}
	kfree(buf);
	if (!ret && !pl_nr_claims) {
		pr_err("ranges=: no range given\n");
		ret = -EINVAL;
	}
	return ret;
}

static int __init pl_init(void)
{
	int ret;

	pl_pud_ok = IS_ENABLED(CONFIG_ARCH_SUPPORTS_PUD_PFNMAP);
#ifdef CONFIG_X86
	pl_pud_ok = pl_pud_ok && boot_cpu_has(X86_FEATURE_GBPAGES);
#endif
	ret = pl_pool_init();
	if (ret)
		return ret;
	ret = pl_claim_ranges();
	if (ret)
		goto err_pool;
	ret = pl_fs_register();
	if (ret) {
		pr_err("cannot register filesystem pagelessfs: %d\n", ret);
		goto err_pool;
	}
	pl_mce_init();
	pr_info("pagelessfs ready%s\n",
		pl_pud_ok ? "" : " (no 1 GiB page table entries on this CPU)");
	return 0;

err_pool:
	pl_pool_exit(false);
	pl_unclaim_all();
	return ret;
}

static void __exit pl_exit(void)
{
	/* No mount exists: the filesystem holds a module reference. */
	pl_fs_unregister();
	pl_mce_exit();
	pl_pool_exit(true);
	pl_poison_destroy();
	pl_unclaim_all();
	pr_info("unloaded\n");
}

module_init(pl_init);
module_exit(pl_exit);

MODULE_DESCRIPTION("pagelessfs: files of boot-reserved memory without struct page");
MODULE_AUTHOR("pageless project");
MODULE_LICENSE("GPL");
MODULE_ALIAS_FS("pagelessfs");
