// SPDX-License-Identifier: GPL-2.0
/*
 * Memory errors in pool memory.
 *
 * memory_failure() ignores PFNs without struct page, so the module listens to
 * the x86 MCE decode chain itself.  For an uncorrected memory error with a
 * usable address inside the pool it
 *   - records the PFN (pl_poison) for good: faults on it get
 *     VM_FAULT_HWPOISON (SIGBUS BUS_MCEERR_AR, which QEMU turns into a guest
 *     MCE) and larger entries covering it fall back; read()/write() stop
 *     short of it or fail with -EIO; the scrubber never touches it and never
 *     frees it;
 *   - takes it out of the free list if it was free;
 *   - zaps the user mappings of the page-size-aligned file range containing
 *     it, so it can only be reached again through a fault.
 *
 * Errors consumed synchronously by a user access are first handled by the
 * kernel's kill_me_maybe(): memory_failure() fails for these PFNs and the
 * task gets a plain SIGBUS; the record still reaches us and the page is
 * retired.
 *
 * The decode chain is a blocking notifier called from a workqueue, so this
 * may sleep.  Locking: pl_files_lock (mutex) protects pl_files; under it an
 * inode cannot be evicted (eviction unlinks it first).  pl_poison is an
 * xarray with its own lock.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/list.h>
#include <linux/mm.h>
#include <linux/mutex.h>
#include <linux/notifier.h>
#include <linux/xarray.h>

#ifdef CONFIG_X86_MCE
#include <asm/mce.h>
#endif

#include "compat.h"
#include "pageless.h"

static DEFINE_XARRAY(pl_poison);
static DEFINE_MUTEX(pl_files_lock);
static LIST_HEAD(pl_files);

/* First poisoned PFN in [pfn, last], or ULONG_MAX.  Lockless. */
unsigned long pl_poison_first(unsigned long pfn, unsigned long last)
{
	unsigned long idx = pfn;

	if (xa_empty(&pl_poison))
		return ULONG_MAX;
	if (xa_find(&pl_poison, &idx, last, XA_PRESENT))
		return idx;
	return ULONG_MAX;
}

void pl_files_add(struct pl_inode *pi)
{
	mutex_lock(&pl_files_lock);
	list_add(&pi->files, &pl_files);
	mutex_unlock(&pl_files_lock);
}

void pl_files_del(struct pl_inode *pi)
{
	mutex_lock(&pl_files_lock);
	list_del_init(&pi->files);
	mutex_unlock(&pl_files_lock);
}

/* File offset of @phys in @pi, or -1. */
static s64 pl_phys_to_off(struct pl_inode *pi, u64 phys)
{
	const struct pl_extents *ex;
	s64 off = -1;
	unsigned int i;

	down_read(&pi->lock);
	ex = pi->layout;
	for (i = 0; ex && i < ex->nr; i++) {
		if (phys >= ex->ext[i].phys &&
		    phys - ex->ext[i].phys < ex->ext[i].len) {
			off = ex->ext[i].off + (phys - ex->ext[i].phys);
			break;
		}
	}
	up_read(&pi->lock);
	return off;
}

/* Handle an uncorrected error at @phys (in the pool).  May sleep. */
void pl_memory_error(u64 phys)
{
	unsigned long pfn = PHYS_PFN(phys);
	struct pl_inode *pi;
	bool owned = false;
	int ret;

	ret = xa_insert(&pl_poison, pfn, xa_mk_value(1), GFP_KERNEL);
	if (ret == -EBUSY)
		return;		/* known already */
	if (ret)
		pr_err("memory error at %#llx: cannot record it (%d), handling it anyway\n",
		       phys, ret);
	/* Faults and the scrubber see the PFN from now on. */
	pl_pool_retire(pfn);

	mutex_lock(&pl_files_lock);
	list_for_each_entry(pi, &pl_files, files) {
		struct inode *inode = &pi->vfs_inode;
		u64 psize = PL_SB(inode->i_sb)->psize;
		s64 off = pl_phys_to_off(pi, phys & PAGE_MASK);

		if (off < 0)
			continue;
		/*
		 * Zap whole entries (they never exceed the page size and
		 * are aligned to it in the file) while faults are excluded:
		 * later faults see the poison.
		 */
		down_write(&pi->lock);
		unmap_mapping_range(inode->i_mapping, round_down(off, psize),
				    psize, 1);
		up_write(&pi->lock);
		pr_err("memory error at %#llx: file inode %llu offset %#llx unmapped; access gets SIGBUS (BUS_MCEERR_AR), read/write EIO\n",
		       phys, (u64)inode->i_ino, off);
		owned = true;
		break;
	}
	mutex_unlock(&pl_files_lock);
	if (!owned)
		pr_err("memory error at %#llx: not in any file; page retired from the pool\n",
		       phys);
}

#ifdef CONFIG_X86_MCE
static int pl_mce_notify(struct notifier_block *nb, unsigned long val,
			 void *data)
{
	struct mce *m = data;

	/* Uncorrected memory errors with a usable physical address only. */
	if (!m || !mce_is_memory_error(m) || mce_is_correctable(m) ||
	    !mce_usable_address(m))
		return NOTIFY_DONE;
	if (!pl_pool_virt_quiet(m->addr))
		return NOTIFY_DONE;
	pl_memory_error(m->addr);
	return NOTIFY_OK;
}

static struct notifier_block pl_mce_nb = {
	.notifier_call	= pl_mce_notify,
	.priority	= MCE_PRIO_NFIT,	/* like pmem: before logging */
};

void pl_mce_init(void)
{
	mce_register_decode_chain(&pl_mce_nb);
}

void pl_mce_exit(void)
{
	mce_unregister_decode_chain(&pl_mce_nb);
	pl_mf_exit();
}
#else
void pl_mce_init(void)
{
}

void pl_mce_exit(void)
{
	pl_mf_exit();
}
#endif

/* After the pool is gone: the scrubber consults pl_poison until then. */
void pl_poison_destroy(void)
{
	xa_destroy(&pl_poison);
}
