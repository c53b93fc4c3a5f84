// SPDX-License-Identifier: GPL-2.0
/*
 * pagelessfs regular files: size changes, read/write through the kernel
 * mapping, mmap with PTE/PMD/PUD special entries, FIEMAP.
 *
 * Locking: see pageless.h.  In short, pl_inode->lock (read) covers every look
 * up of the extent table and every page table insertion; truncate takes it
 * for writing to change the table and zap user mappings, then waits for
 * in-flight read()/write() copies (pl_io_srcu) before freed extents are
 * scrubbed.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/capability.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/pgtable.h>
#include <linux/sched/mm.h>
#include <linux/uaccess.h>
#include <linux/uio.h>

#include "compat.h"
#include "pageless.h"

/* read()/write() copy at most this much per extent look-up. */
#define PL_IO_CHUNK	(2UL << 20)

/* The extent containing file offset @off, or NULL.  Caller holds pi->lock. */
const struct pl_extent *pl_lookup(const struct pl_extents *ex, u64 off)
{
	unsigned int lo = 0, hi;

	if (!ex)
		return NULL;
	hi = ex->nr;
	while (lo < hi) {
		unsigned int mid = lo + (hi - lo) / 2;
		const struct pl_extent *e = &ex->ext[mid];

		if (off < e->off)
			hi = mid;
		else if (off - e->off >= e->len)
			lo = mid + 1;
		else
			return e;
	}
	return NULL;
}

/* Grow from @old to @newsize bytes.  Called with i_rwsem held. */
static int pl_grow(struct inode *inode, u64 old, u64 newsize)
{
	struct pl_sb_info *sbi = PL_SB(inode->i_sb);
	struct pl_inode *pi = PL_I(inode);
	struct pl_extents *cur = pi->layout, *add, *nl;
	unsigned int i;
	u64 off = old;
	int ret;

	ret = pl_pool_alloc(newsize - old, sbi->psize, sbi->nid, &add);
	if (ret)
		return ret;
	nl = pl_extents_alloc((cur ? cur->nr : 0) + add->nr);
	if (!nl) {
		pl_pool_release_clean(add);
		return -ENOMEM;
	}
	if (cur) {
		memcpy(nl->ext, cur->ext, cur->nr * sizeof(*nl->ext));
		nl->nr = cur->nr;
	}
	for (i = 0; i < add->nr; i++) {
		struct pl_extent *last = nl->nr ? &nl->ext[nl->nr - 1] : NULL;
		const struct pl_extent *a = &add->ext[i];

		if (last && last->phys + last->len == a->phys &&
		    pl_pool_same_node(last->phys, a->phys)) {
			last->len += a->len;
		} else {
			nl->ext[nl->nr].off = off;
			nl->ext[nl->nr].phys = a->phys;
			nl->ext[nl->nr].len = a->len;
			nl->nr++;
		}
		off += a->len;
	}
	/* Recorded before the new extents are used. */
	ret = pl_meta_layout(pi, nl, newsize);
	if (ret) {
		pl_extents_free(nl);
		pl_pool_release_clean(add);
		return ret;
	}

	down_write(&pi->lock);
	pi->layout = nl;
	i_size_write(inode, newsize);
	inode->i_blocks = newsize >> 9;
	up_write(&pi->lock);
	pl_mf_sync(pi);

	/* Nobody uses the old table after up_write(): readers copy values. */
	pl_extents_free(cur);
	pl_extents_free(add);
	return 0;
}

/* Shrink to @newsize bytes.  Called with i_rwsem held. */
static int pl_shrink(struct inode *inode, u64 newsize)
{
	struct pl_inode *pi = PL_I(inode);
	struct pl_extents *cur = pi->layout, *tail, *gone = NULL;
	unsigned int i, first, keep;

	for (first = 0; first < cur->nr; first++)
		if (cur->ext[first].off + cur->ext[first].len > newsize)
			break;
	tail = pl_extents_alloc(cur->nr - first);
	if (!tail)
		return -ENOMEM;

	down_write(&pi->lock);
	i_size_write(inode, newsize);
	inode->i_blocks = newsize >> 9;
	/*
	 * Zap every user mapping of the tail while faults are excluded: from
	 * now on a fault there sees the new size and gets SIGBUS.
	 */
	unmap_mapping_range(inode->i_mapping, newsize, 0, 1);
	keep = first;
	for (i = first; i < cur->nr; i++) {
		struct pl_extent *e = &cur->ext[i];
		u64 cut = newsize > e->off ? newsize - e->off : 0;

		tail->ext[tail->nr].off = e->off + cut;
		tail->ext[tail->nr].phys = e->phys + cut;
		tail->ext[tail->nr].len = e->len - cut;
		tail->nr++;
		if (cut) {
			e->len = cut;
			keep = i + 1;
		}
	}
	cur->nr = keep;
	if (!keep) {
		pi->layout = NULL;
		gone = cur;
	}
	up_write(&pi->lock);
	pl_mf_sync(pi);
	/* Recorded before the tail can go to another file. */
	pl_meta_layout(pi, pi->layout, newsize);

	/* Let read()/write() copies that looked the tail up finish. */
	synchronize_srcu(&pl_io_srcu);
	/* A device may still reach the tail by DMA: see quarantine.c. */
	pl_quarantine_free(pi, tail, false);
	pl_extents_free(gone);
	return 0;
}

/*
 * Set the size of a regular file: a multiple of the mount page size, or
 * -EINVAL; -EPERM if a seal forbids the change.  Growing allocates (all or
 * nothing; -ENOSPC), shrinking zaps the tail and frees it through the
 * quarantine (scrubbed before reuse).  Called with i_rwsem held.
 */
int pl_setsize(struct inode *inode, loff_t newsize)
{
	struct pl_sb_info *sbi = PL_SB(inode->i_sb);
	loff_t old = i_size_read(inode);
	u32 seals = PL_I(inode)->seals;

	if (newsize < 0 || !IS_ALIGNED(newsize, sbi->psize))
		return -EINVAL;
	if (newsize == old)
		return 0;
	if (newsize > old) {
		if (seals & PAGELESS_SEAL_GROW)
			return -EPERM;
		return pl_grow(inode, old, newsize);
	}
	if (seals & PAGELESS_SEAL_SHRINK)
		return -EPERM;
	return pl_shrink(inode, newsize);
}

static int pl_setattr(struct mnt_idmap *idmap, struct dentry *dentry,
		      struct iattr *attr)
{
	struct inode *inode = d_inode(dentry);
	int ret;

	ret = setattr_prepare(idmap, dentry, attr);
	if (ret)
		return ret;
	if (attr->ia_valid & ATTR_SIZE) {
		ret = pl_setsize(inode, attr->ia_size);
		if (ret)
			return ret;
	}
	setattr_copy(idmap, inode, attr);
	pl_meta_attr(inode);
	return 0;
}

/*
 * Look up the physical address of @pos for read()/write(): returns the
 * number of contiguous bytes there (0 at or past EOF), stopping short of a
 * poisoned page, or -EIO at one.
 */
static ssize_t pl_io_map(struct inode *inode, loff_t pos, size_t want,
			 u64 *phys)
{
	struct pl_inode *pi = PL_I(inode);
	const struct pl_extent *e;
	unsigned long bad;
	ssize_t n = 0;
	loff_t size;
	u64 avail;

	down_read(&pi->lock);
	size = i_size_read(inode);
	if (pos < size) {
		e = pl_lookup(pi->layout, pos);
		if (e) {
			*phys = e->phys + (pos - e->off);
			n = min3((u64)want, e->off + e->len - pos,
				 (u64)PL_IO_CHUNK);
		}
	}
	up_read(&pi->lock);
	if (n <= 0)
		return n;
	/* Stay inside one range's kernel mapping. */
	if (!pl_pool_virt_len(*phys, &avail))
		return -EIO;
	n = min_t(u64, n, avail);
	bad = pl_poison_first(PHYS_PFN(*phys), PHYS_PFN(*phys + n - 1));
	if (unlikely(bad != ULONG_MAX)) {
		if (PFN_PHYS(bad) <= *phys)
			return -EIO;
		n = PFN_PHYS(bad) - *phys;
	}
	return n;
}

/*
 * A copy out of pool memory stopped short at @phys.  Either the caller's
 * buffer faulted (-EFAULT) or the source raised a machine check, which
 * _copy_mc_to_iter() survives (-EIO): probe the byte, machine-check-safely.
 * Called inside the pl_io_srcu read section.
 */
static int pl_short_copy(u64 phys)
{
	u8 byte;

	if (pl_poison_first(PHYS_PFN(phys), PHYS_PFN(phys)) != ULONG_MAX ||
	    copy_mc_to_kernel(&byte, pl_pool_virt(phys), 1))
		return -EIO;
	return -EFAULT;
}

static ssize_t pl_read_iter(struct kiocb *iocb, struct iov_iter *to)
{
	struct file *file = iocb->ki_filp;
	struct inode *inode = file_inode(file);
	loff_t pos = iocb->ki_pos;
	ssize_t done = 0;

	while (iov_iter_count(to)) {
		size_t copied;
		ssize_t n;
		u64 phys;
		int idx, err;

		idx = srcu_read_lock(&pl_io_srcu);
		n = pl_io_map(inode, pos, iov_iter_count(to), &phys);
		if (n <= 0) {
			srcu_read_unlock(&pl_io_srcu, idx);
			if (n < 0 && !done)
				done = n;
			break;
		}
		/* Never consume poison without recovery: a memory error is EIO. */
		copied = _copy_mc_to_iter(pl_pool_virt(phys), n, to);
		err = copied < (size_t)n ? pl_short_copy(phys + copied) : 0;
		srcu_read_unlock(&pl_io_srcu, idx);
		pos += copied;
		done += copied;
		if (err) {
			if (!done)
				done = err;
			break;
		}
		cond_resched();
	}
	iocb->ki_pos = pos;
	file_accessed(file);
	return done;
}

/*
 * Writes never change the size (only truncate does): a write at or past EOF
 * fails with -EFBIG, one crossing EOF is short.
 */
static ssize_t pl_write_iter(struct kiocb *iocb, struct iov_iter *from)
{
	struct file *file = iocb->ki_filp;
	struct inode *inode = file_inode(file);
	ssize_t ret, done = 0;
	loff_t pos;

	inode_lock(inode);
	ret = generic_write_checks(iocb, from);
	if (ret <= 0)
		goto out;
	ret = file_modified(file);
	if (ret)
		goto out;
	pos = iocb->ki_pos;
	while (iov_iter_count(from)) {
		size_t copied;
		ssize_t n;
		u64 phys;
		int idx;

		idx = srcu_read_lock(&pl_io_srcu);
		n = pl_io_map(inode, pos, iov_iter_count(from), &phys);
		if (n <= 0) {
			srcu_read_unlock(&pl_io_srcu, idx);
			if (!done)
				done = n ? n : -EFBIG;
			break;
		}
		copied = copy_from_iter(pl_pool_virt(phys), n, from);
		srcu_read_unlock(&pl_io_srcu, idx);
		pos += copied;
		done += copied;
		if (copied < (size_t)n) {
			if (!done)
				done = -EFAULT;
			break;
		}
		cond_resched();
	}
	if (done > 0)
		iocb->ki_pos = pos;
	ret = done;
out:
	inode_unlock(inode);
	return ret;
}

/*
 * Page faults.  @order is 0 (PTE), PMD_ORDER or PUD_ORDER, never more than
 * the mount page size.  A huge entry is inserted only if the whole aligned
 * range lies in the VMA and in one extent of the file, the file offset and
 * physical address are aligned, and the range is below EOF; otherwise
 * VM_FAULT_FALLBACK lets the core retry with a smaller one.
 *
 * The entries are "special" (PFN_DEV without PFN_MAP; pte_special), so the
 * core never looks for a struct page.  Their caching mode comes from the PAT
 * memtype reserved by memremap(MEMREMAP_WB) at load time: write-back.
 */
static vm_fault_t pl_huge_fault(struct vm_fault *vmf, unsigned int order)
{
	struct vm_area_struct *vma = vmf->vma;
	struct inode *inode = file_inode(vma->vm_file);
	struct pl_sb_info *sbi = PL_SB(inode->i_sb);
	struct pl_inode *pi = PL_I(inode);
	unsigned long size = PAGE_SIZE << order;
	unsigned long addr = vmf->address & ~(size - 1);
	const struct pl_extent *e;
	u64 off, phys, isize;
	unsigned long pfn;
	vm_fault_t ret;
	bool write;

	if (order) {
		if (size > sbi->psize)
			return VM_FAULT_FALLBACK;
		if (order != PMD_ORDER && (order != PUD_ORDER || !pl_pud_ok))
			return VM_FAULT_FALLBACK;
		if (addr < vma->vm_start || addr + size > vma->vm_end)
			return VM_FAULT_FALLBACK;
	}
	off = ((u64)vma->vm_pgoff << PAGE_SHIFT) + (addr - vma->vm_start);
	if (off & (size - 1))
		return VM_FAULT_FALLBACK;

	down_read(&pi->lock);
	isize = i_size_read(inode);
	if (((u64)vmf->pgoff << PAGE_SHIFT) >= isize) {
		ret = VM_FAULT_SIGBUS;
		goto out;
	}
	ret = VM_FAULT_FALLBACK;
	if (off + size > isize)
		goto out;
	e = pl_lookup(pi->layout, off);
	if (WARN_ON_ONCE(!e)) {
		ret = VM_FAULT_SIGBUS;
		goto out;
	}
	if (off + size > e->off + e->len)
		goto out;
	phys = e->phys + (off - e->off);
	if (phys & (size - 1))
		goto out;
	pfn = PHYS_PFN(phys);
	/* Memory error: SIGBUS (BUS_MCEERR_AR) on the page, smaller entries around. */
	if (unlikely(pl_poison_first(pfn, pfn + (size >> PAGE_SHIFT) - 1) !=
		     ULONG_MAX)) {
		ret = order ? VM_FAULT_FALLBACK : VM_FAULT_HWPOISON;
		goto out;
	}

	/*
	 * What is at this level decides @write: a fresh entry is made from
	 * vm_page_prot (writable for a shared writable mapping); an existing
	 * huge entry (a write fault on a read-only one) maps this very pfn,
	 * since truncate zaps before anything is freed, and is made writable;
	 * a page table (a concurrent smaller fault under an older layout)
	 * means falling back.  Passing @write only for an existing entry of
	 * ours keeps insert_pfn_pmd/pud() from warning about a mismatch.
	 */
	switch (order) {
	case 0:
		/* A racing PMD fault won: retry rather than allocate a PTE table. */
		if (vmf->pmd && pmd_leaf(pmdp_get_lockless(vmf->pmd))) {
			ret = VM_FAULT_NOPAGE;
			break;
		}
		ret = vmf_insert_pfn(vma, vmf->address, pfn);
		break;
#ifdef CONFIG_ARCH_SUPPORTS_PMD_PFNMAP
	case PMD_ORDER: {
		pmd_t pmd = pmdp_get_lockless(vmf->pmd);

		if (pmd_none(pmd))
			write = false;
		else if (pmd_leaf(pmd))
			write = vmf->flags & FAULT_FLAG_WRITE;
		else
			break;
		ret = pl_insert_pfn_pmd(vmf, pfn, write);
		break;
	}
#endif
#ifdef CONFIG_ARCH_SUPPORTS_PUD_PFNMAP
	case PUD_ORDER: {
		pud_t pud = pudp_get(vmf->pud);

		if (pud_none(pud))
			write = false;
		else if (pud_leaf(pud))
			write = vmf->flags & FAULT_FLAG_WRITE;
		else
			break;
		ret = pl_insert_pfn_pud(vmf, pfn, write);
		break;
	}
#endif
	default:
		break;
	}
out:
	up_read(&pi->lock);
	return ret;
}

static vm_fault_t pl_fault(struct vm_fault *vmf)
{
	return pl_huge_fault(vmf, 0);
}

static const struct vm_operations_struct pl_vm_ops = {
	.fault		= pl_fault,
	.huge_fault	= pl_huge_fault,
#ifdef CONFIG_HAVE_IOREMAP_PROT
	.access		= generic_access_phys,	/* ptrace, /proc/PID/mem */
#endif
};

/*
 * Shared mappings only (no struct page, no copy-on-write).  Every process
 * that maps the file is remembered, for the quarantine; VM_DONTCOPY keeps
 * fork() from giving a child the mapping without this (MADV_DOFORK is refused
 * on VM_IO mappings), so a child maps the file itself.
 */
static int pl_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct inode *inode = file_inode(file);
	struct pl_sb_info *sbi = PL_SB(inode->i_sb);
	vm_flags_t flags = VM_PFNMAP | VM_IO | VM_DONTEXPAND | VM_DONTDUMP |
			   VM_DONTCOPY;
	int ret;

	if (!(vma->vm_flags & VM_MAYSHARE))
		return -EINVAL;
	ret = pl_mappers_add(PL_I(inode), task_tgid(current));
	if (ret)
		return ret;
	if (sbi->psize > PAGE_SIZE)
		flags |= VM_HUGEPAGE;
	file_accessed(file);
	vm_flags_set(vma, flags);
	vma->vm_ops = &pl_vm_ops;
	return 0;
}

/*
 * Place mappings without an address hint so that file offsets and virtual
 * addresses are congruent modulo the mount page size (as device-dax does):
 * search for a range one page longer, then slide into it.
 */
static unsigned long pl_get_unmapped_area(struct file *file,
					  unsigned long addr, unsigned long len,
					  unsigned long pgoff,
					  unsigned long flags)
{
	struct pl_sb_info *sbi = PL_SB(file_inode(file)->i_sb);
	unsigned long align = min_t(u64, sbi->psize, PUD_SIZE);
	unsigned long off = pgoff << PAGE_SHIFT, ret;

	if (align > PAGE_SIZE && !addr && !(flags & MAP_FIXED) &&
	    round_up(off, align) < off + len &&
	    off + len - round_up(off, align) >= align &&
	    len + align > len) {
		ret = pl_unmapped_area(file, 0, len + align, pgoff, flags);
		if (!IS_ERR_VALUE(ret))
			return ret + ((off - ret) & (align - 1));
	}
	return pl_unmapped_area(file, addr, len, pgoff, flags);
}

/* PAGELESS_IOC_ADD_SEALS / PAGELESS_IOC_GET_SEALS, see pageless_uapi.h. */
static long pl_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct inode *inode = file_inode(file);
	struct pl_inode *pi = PL_I(inode);
	u32 __user *argp = (u32 __user *)arg;
	u32 seals;

	switch (cmd) {
	case PAGELESS_IOC_GET_SEALS:
		inode_lock_shared(inode);
		seals = pi->seals;
		inode_unlock_shared(inode);
		return put_user(seals, argp);
	case PAGELESS_IOC_ADD_SEALS:
		if (get_user(seals, argp))
			return -EFAULT;
		if (seals & ~PAGELESS_SEALS_ALL)
			return -EINVAL;
		if (!(file->f_mode & FMODE_WRITE))
			return -EPERM;
		inode_lock(inode);
		pi->seals |= seals;
		pl_meta_attr(inode);
		inode_unlock(inode);
		return 0;
	default:
		return -ENOTTY;
	}
}

static int pl_open(struct inode *inode, struct file *file)
{
	/* read()/write() never use the page cache: O_DIRECT is the same */
	file->f_mode |= FMODE_CAN_ODIRECT;
	return generic_file_open(inode, file);
}

/*
 * FIEMAP: one extent per physically contiguous piece, fe_physical the
 * physical address.  Physical addresses are shown to CAP_SYS_ADMIN only (as
 * for /proc/PID/pagemap); others get 0 and FIEMAP_EXTENT_UNKNOWN.
 */
#define PL_FIEMAP_BATCH	32

static int pl_fiemap(struct inode *inode, struct fiemap_extent_info *fi,
		     u64 start, u64 len)
{
	struct pl_extent batch[PL_FIEMAP_BATCH];
	struct pl_inode *pi = PL_I(inode);
	bool show = capable(CAP_SYS_ADMIN);
	u64 cursor = start, end;
	int ret;

	ret = fiemap_prep(inode, fi, start, &len, 0);
	if (ret)
		return ret;
	end = start + len;
	/* Copy batches out under the lock: filling may fault on user memory. */
	for (;;) {
		unsigned int n = 0, i;
		bool last = false;
		const struct pl_extent *e;

		down_read(&pi->lock);
		e = pl_lookup(pi->layout, cursor);
		if (e) {
			const struct pl_extent *stop = pi->layout->ext +
						       pi->layout->nr;

			for (; e < stop && n < PL_FIEMAP_BATCH && e->off < end;
			     e++)
				batch[n++] = *e;
			last = e == stop;
		}
		up_read(&pi->lock);
		if (!n)
			return 0;
		for (i = 0; i < n; i++) {
			u32 flags = 0;

			if (last && i == n - 1)
				flags |= FIEMAP_EXTENT_LAST;
			if (!show)
				flags |= FIEMAP_EXTENT_UNKNOWN;
			ret = fiemap_fill_next_extent(fi, batch[i].off,
						      show ? batch[i].phys : 0,
						      batch[i].len, flags);
			if (ret)
				return ret < 0 ? ret : 0;
		}
		cursor = batch[n - 1].off + batch[n - 1].len;
		if (last || cursor >= end)
			return 0;
	}
}

const struct file_operations pl_file_fops = {
	.open			= pl_open,
	.llseek			= generic_file_llseek,
	.read_iter		= pl_read_iter,
	.write_iter		= pl_write_iter,
	.mmap			= pl_mmap,
	.get_unmapped_area	= pl_get_unmapped_area,
	.fsync			= noop_fsync,
	.unlocked_ioctl		= pl_ioctl,
	.compat_ioctl		= compat_ptr_ioctl,
	.splice_read		= copy_splice_read,
	.splice_write		= iter_file_splice_write,
};

const struct inode_operations pl_file_iops = {
	.setattr	= pl_setattr,
	.getattr	= simple_getattr,
	.fiemap		= pl_fiemap,
};
