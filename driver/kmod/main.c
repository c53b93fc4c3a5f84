// SPDX-License-Identifier: GPL-2.0
/*
 * pageless: module parameters, claiming the boot-reserved ranges, load and
 * unload.
 *
 * ranges=SIZE@START[,SIZE@START...] names memory the kernel's map marks
 * "Reserved" because the kernel was booted with memmap=SIZE$START.  Each range
 * is checked (2 MiB aligned, outside System RAM, usable RAM in the firmware's
 * own memory map, wholly reserved, unclaimed), claimed with
 * request_mem_region(), mapped write-back with memremap() (which also records
 * WB in the x86 PAT memtype tree, so user mappings of it are WB rather than
 * UC-), and added to the pool.  Any failure undoes everything.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/align.h>
#include <linux/cpufeature.h>
#include <linux/err.h>
#include <linux/fcntl.h>
#include <linux/fs.h>
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

#if defined(CONFIG_X86) && defined(CONFIG_FIRMWARE_MEMMAP)
/*
 * The firmware's memory map as the kernel received it, before memmap= added
 * its "Reserved" entries: memmap=SIZE$START reserves a hole or MMIO just as
 * readily as RAM, so the kernel's map alone cannot tell them apart.  The
 * kernel keeps that map in e820_table_firmware, but e820__mapped_raw_any(),
 * the only exported reader, is exported to the KVM modules alone since 6.19;
 * /sys/firmware/memmap (Documentation/ABI/testing/sysfs-firmware-memmap) shows
 * the same map on every kernel, so it is read from there, once per load.
 */
#define PL_FW_MEMMAP	"/sys/firmware/memmap"
#define PL_FW_RAM	"System RAM"

struct pl_fw_entry {
	u64 start;
	u64 end;			/* inclusive, as the map shows it */
	char type[40];
};

static struct pl_fw_entry *pl_fw;
static unsigned int pl_fw_nr;

struct pl_fw_dir {
	struct dir_context ctx;
	unsigned int *ids;
	unsigned int nr;
	unsigned int cap;
	int err;
};

/* Collects the entry numbers; the entries are read once the walk is over. */
static bool pl_fw_dir_actor(struct dir_context *ctx, const char *name,
			    int len, loff_t off, u64 ino, unsigned int type)
{
	struct pl_fw_dir *d = container_of(ctx, struct pl_fw_dir, ctx);
	unsigned int id, *ids;
	char num[12];

	if (len <= 0 || len >= sizeof(num))
		return true;
	memcpy(num, name, len);
	num[len] = '\0';
	if (kstrtouint(num, 10, &id))
		return true;		/* "." and ".." */
	if (d->nr == d->cap) {
		ids = krealloc_array(d->ids, d->cap * 2 + 16, sizeof(*ids),
				     GFP_KERNEL);
		if (!ids) {
			d->err = -ENOMEM;
			return false;
		}
		d->ids = ids;
		d->cap = d->cap * 2 + 16;
	}
	d->ids[d->nr++] = id;
	return true;
}

static int pl_fw_read(unsigned int id, const char *attr, char *buf,
		      size_t len)
{
	struct file *f;
	loff_t pos = 0;
	char path[64];
	ssize_t n;

	snprintf(path, sizeof(path), PL_FW_MEMMAP "/%u/%s", id, attr);
	f = filp_open(path, O_RDONLY, 0);
	if (IS_ERR(f))
		return PTR_ERR(f);
	n = kernel_read(f, buf, len - 1, &pos);
	filp_close(f, NULL);
	if (n < 0)
		return n;
	buf[n] = '\0';
	if (n && buf[n - 1] == '\n')
		buf[n - 1] = '\0';
	return 0;
}

static int pl_fw_read_entry(unsigned int id, struct pl_fw_entry *e)
{
	char num[32];
	int ret;

	ret = pl_fw_read(id, "start", num, sizeof(num));
	if (!ret)
		ret = kstrtoull(num, 0, &e->start);
	if (!ret)
		ret = pl_fw_read(id, "end", num, sizeof(num));
	if (!ret)
		ret = kstrtoull(num, 0, &e->end);
	if (!ret)
		ret = pl_fw_read(id, "type", e->type, sizeof(e->type));
	if (!ret && e->end < e->start)
		ret = -EINVAL;
	return ret;
}

static void pl_fw_free(void)
{
	kfree(pl_fw);
	pl_fw = NULL;
	pl_fw_nr = 0;
}

static int pl_fw_load(void)
{
	struct pl_fw_dir d = { .ctx.actor = pl_fw_dir_actor };
	struct file *dir;
	unsigned int i, seen;
	int ret;

	dir = filp_open(PL_FW_MEMMAP, O_RDONLY | O_DIRECTORY, 0);
	if (IS_ERR(dir)) {
		ret = PTR_ERR(dir);
		goto err;
	}
	do {
		seen = d.nr;
		ret = iterate_dir(dir, &d.ctx);
	} while (!ret && !d.err && d.nr != seen);
	filp_close(dir, NULL);
	if (!ret)
		ret = d.err;
	if (!ret && !d.nr)
		ret = -ENOENT;
	if (ret)
		goto err_ids;

	pl_fw = kcalloc(d.nr, sizeof(*pl_fw), GFP_KERNEL);
	if (!pl_fw) {
		ret = -ENOMEM;
		goto err_ids;
	}
	for (i = 0; i < d.nr; i++) {
		ret = pl_fw_read_entry(d.ids[i], &pl_fw[pl_fw_nr]);
		if (ret == -ENOENT)	/* removed meanwhile (memory hot-remove) */
			continue;
		if (ret)
			goto err_free;
		pl_fw_nr++;
	}
	kfree(d.ids);
	return 0;

err_free:
	pl_fw_free();
err_ids:
	kfree(d.ids);
err:
	pr_err("cannot read the firmware memory map %s: %d\n", PL_FW_MEMMAP,
	       ret);
	return ret;
}

/* The entry holding @addr, of type @ram or of any other type. */
static const struct pl_fw_entry *pl_fw_find(u64 addr, bool ram)
{
	unsigned int i;

	for (i = 0; i < pl_fw_nr; i++) {
		if (addr < pl_fw[i].start || addr > pl_fw[i].end)
			continue;
		if ((strcmp(pl_fw[i].type, PL_FW_RAM) == 0) == ram)
			return &pl_fw[i];
	}
	return NULL;
}

/*
 * Is all of [start, end] usable RAM in the firmware's map?  Walks the range
 * from RAM entry to RAM entry; the first address no RAM entry holds is
 * reported with what the firmware has there: another type, or nothing.
 */
static int pl_fw_check(u64 start, u64 end)
{
	const struct pl_fw_entry *e;
	u64 pos = start, stop;
	unsigned int i;

	for (;;) {
		e = pl_fw_find(pos, true);
		if (!e)
			break;
		if (e->end >= end)
			return 0;
		pos = e->end + 1;
	}
	e = pl_fw_find(pos, false);
	if (e) {
		pr_err("range [%#llx-%#llx]: firmware reports \"%s\" at [%#llx-%#llx], not RAM (see %s)\n",
		       start, end, e->type, pos, min(e->end, end),
		       PL_FW_MEMMAP);
		return -EINVAL;
	}
	stop = end;
	for (i = 0; i < pl_fw_nr; i++)
		if (pl_fw[i].start > pos && pl_fw[i].start <= stop)
			stop = pl_fw[i].start - 1;
	pr_err("range [%#llx-%#llx]: firmware reports no memory at [%#llx-%#llx] (see %s)\n",
	       start, end, pos, stop, PL_FW_MEMMAP);
	return -EINVAL;
}
#else
/*
 * No firmware map to consult (not x86, or CONFIG_FIRMWARE_MEMMAP=n): ranges
 * are checked against the kernel's map only, as memmap= left it.
 */
static int pl_fw_load(void)
{
	if (IS_ENABLED(CONFIG_X86))
		pr_warn("no firmware memory map (CONFIG_FIRMWARE_MEMMAP=n): ranges are not checked against it\n");
	return 0;
}

static void pl_fw_free(void)
{
}

static int pl_fw_check(u64 start, u64 end)
{
	return 0;
}
#endif

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
	ret = pl_fw_check(start, end);
	if (ret)
		return ret;
	walk_iomem_res_desc(IORES_DESC_RESERVED, IORESOURCE_MEM, start, end,
			    &covered, pl_count_reserved);
	if (covered != size) {
		pr_err("range [%#llx-%#llx] is not wholly reserved memory (%llu of %llu bytes are): boot with memmap=%#llx$%#llx\n",
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

/*
 * Every range is claimed: believe the metadata or not, then scrub everything
 * but the recovered files.
 */
static int pl_load_meta(void)
{
	u64 start[PL_MAX_RANGES], size[PL_MAX_RANGES];
	unsigned int i;

	for (i = 0; i < pl_nr_claims; i++) {
		start[i] = pl_claims[i].start;
		size[i] = pl_claims[i].size;
	}
	return pl_meta_load(pl_nr_claims, start, size);
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
	ret = pl_fw_load();
	if (ret)
		return ret;
	buf = kstrdup(ranges, GFP_KERNEL);
	if (!buf) {
		ret = -ENOMEM;
		goto out_fw;
	}
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
	if (!ret)
		ret = pl_load_meta();
out_fw:
	pl_fw_free();
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
	ret = pl_sysfs_init();
	if (ret) {
		pr_err("cannot create /sys/fs/pagelessfs: %d\n", ret);
		goto err_fs;
	}
	pl_mce_init();
	pr_info("pagelessfs ready%s\n",
		pl_pud_ok ? "" : " (no 1 GiB page table entries on this CPU)");
	return 0;

err_fs:
	pl_fs_unregister();
err_pool:
	pl_pool_exit(false);
	pl_meta_exit();
	pl_unclaim_all();
	return ret;
}

static void __exit pl_exit(void)
{
	/*
	 * No mount exists (the filesystem holds a module reference) and nothing
	 * is quarantined (so does the quarantine).
	 */
	pl_sysfs_exit();
	pl_fs_unregister();
	pl_quarantine_exit();
	pl_mce_exit();
	pl_pool_exit(true);
	pl_meta_exit();
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
