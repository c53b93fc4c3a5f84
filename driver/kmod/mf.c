// SPDX-License-Identifier: GPL-2.0
/*
 * Memory errors through memory_failure(), on kernels that have
 * register_pfn_address_space() (6.19+; built only there, see Kbuild and
 * compat.h).
 *
 * memory_failure() of a PFN without struct page looks the PFN up among the
 * registered address spaces, walks the VMAs of that space's mapping and sends
 * SIGBUS to the processes mapping it: BUS_MCEERR_AR to the one that consumed
 * the error, BUS_MCEERR_AO to the others that asked for early kills
 * (PR_MCE_KILL_EARLY, as QEMU does).  One space has one mapping and spaces
 * must not overlap, so every extent of a file is registered with that file's
 * mapping, for as long as the file owns the extent.
 *
 * pl_mf_pgoff() turns a PFN into the file page offset for a VMA.  It runs
 * under rcu_read_lock() and i_mmap_rwsem, with the kernel's pfn_space_lock
 * held, so it takes no lock: it reads the inode's registered copy of its
 * extents (pl_inode->mf), which is replaced only after every node of the old
 * copy has been unregistered (unregistering waits for pfn_space_lock, hence
 * for any memory_failure() that could be reading the old copy).  It also
 * queues the PFN for pl_memory_error(), which retires the page as for an
 * error reported through the MCE decode chain.
 *
 * pl_mf_sync() and pl_mf_clear() are called by the one thread that changes
 * the layout (under i_rwsem, or at eviction), and never under pi->lock.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/memory-failure.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>

#include "compat.h"
#include "pageless.h"

struct pl_mf_space {
	struct pfn_address_space space;
	u64 off;	/* file offset of the extent */
	u64 phys;
	u64 len;
};

struct pl_mf {
	unsigned int nr;
	struct pl_mf_space s[] __counted_by(nr);
};

/* PFNs reported by memory_failure(), waiting for pl_memory_error() */
static DEFINE_XARRAY(pl_mf_pending);

static void pl_mf_work_fn(struct work_struct *work)
{
	unsigned long pfn = 0;
	void *entry;

	xa_for_each(&pl_mf_pending, pfn, entry) {
		xa_erase(&pl_mf_pending, pfn);
		pl_memory_error(PFN_PHYS(pfn));
	}
}

static DECLARE_WORK(pl_mf_work, pl_mf_work_fn);

static int pl_mf_pgoff(struct vm_area_struct *vma, unsigned long pfn,
		       pgoff_t *pgoff)
{
	struct pl_inode *pi = PL_I(file_inode(vma->vm_file));
	const struct pl_mf *mf = READ_ONCE(pi->mf);
	u64 phys = PFN_PHYS(pfn);
	unsigned int i;

	for (i = 0; mf && i < mf->nr; i++) {
		const struct pl_mf_space *s = &mf->s[i];
		pgoff_t off;

		if (phys < s->phys || phys - s->phys >= s->len)
			continue;
		/* Retire the page whoever maps it (GFP_ATOMIC: RCU section). */
		if (!xa_store(&pl_mf_pending, pfn, xa_mk_value(1), GFP_ATOMIC))
			schedule_work(&pl_mf_work);
		off = (s->off + (phys - s->phys)) >> PAGE_SHIFT;
		if (off < vma->vm_pgoff || off - vma->vm_pgoff >= vma_pages(vma))
			return -EFAULT;
		*pgoff = off;
		return 0;
	}
	return -EFAULT;
}

/* Unregister and free @mf. */
static void pl_mf_free(struct pl_mf *mf)
{
	unsigned int i;

	if (!mf)
		return;
	for (i = 0; i < mf->nr; i++)
		unregister_pfn_address_space(&mf->s[i].space);
	kfree(mf);
}

/* Unregister every extent of @pi, before they go back to the pool. */
void pl_mf_clear(struct pl_inode *pi)
{
	struct pl_mf *old = pi->mf;

	WRITE_ONCE(pi->mf, NULL);
	pl_mf_free(old);
}

/*
 * Register the extents of @pi's current layout (after it changed), instead
 * of the old ones.  Without memory (or registration) the file's memory
 * errors are handled as on older kernels: by the MCE decode chain only.
 */
void pl_mf_sync(struct pl_inode *pi)
{
	const struct pl_extents *ex = pi->layout;
	struct pl_mf *mf = NULL;
	unsigned int i, done = 0;
	int ret = 0;

	if (ex && ex->nr) {
		mf = kzalloc(struct_size(mf, s, ex->nr), GFP_KERNEL);
		if (!mf)
			ret = -ENOMEM;
	}
	pl_mf_clear(pi);
	if (!mf)
		goto out;
	mf->nr = ex->nr;
	for (i = 0; i < ex->nr; i++) {
		struct pl_mf_space *s = &mf->s[i];

		s->off = ex->ext[i].off;
		s->phys = ex->ext[i].phys;
		s->len = ex->ext[i].len;
		s->space.node.start = PHYS_PFN(s->phys);
		s->space.node.last = PHYS_PFN(s->phys + s->len) - 1;
		s->space.mapping = pi->vfs_inode.i_mapping;
		s->space.pfn_to_vma_pgoff = pl_mf_pgoff;
	}
	/* Published before registering: pl_mf_pgoff() may run at once. */
	WRITE_ONCE(pi->mf, mf);
	for (done = 0; done < mf->nr; done++) {
		ret = register_pfn_address_space(&mf->s[done].space);
		if (ret)
			break;
	}
	if (ret) {
		mf->nr = done;	/* unregister only what was registered */
		pl_mf_clear(pi);
	}
out:
	if (ret)
		pr_warn_ratelimited("inode %llu: cannot register its memory with memory_failure() (%d): memory errors reach it through the MCE decode chain only\n",
				    (u64)pi->vfs_inode.i_ino, ret);
}

/* At unload, once no file exists. */
void pl_mf_exit(void)
{
	flush_work(&pl_mf_work);
	xa_destroy(&pl_mf_pending);
}
