/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The differences between the kernels pageless builds for (6.12 LTS to 7.3),
 * in one place.  Kbuild probes the kernel headers and defines PL_*; the rest
 * of the module uses only what this file provides.
 */
#ifndef PAGELESS_COMPAT_H
#define PAGELESS_COMPAT_H

#include <linux/dcache.h>
#include <linux/err.h>
#include <linux/fs.h>
#include <linux/huge_mm.h>
#include <linux/mm.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#ifdef PL_HAVE_PFN_T
#include <linux/pfn_t.h>
#endif

struct pl_inode;

/*
 * Memory errors through memory_failure() (register_pfn_address_space(),
 * 6.19+): mf.c, built only there.  Elsewhere the MCE decode chain (mce.c)
 * is all there is.
 */
#ifdef PL_HAVE_PFN_ADDRESS_SPACE
void pl_mf_sync(struct pl_inode *pi);
void pl_mf_clear(struct pl_inode *pi);
void pl_mf_exit(void);
#else
static inline void pl_mf_sync(struct pl_inode *pi)
{
}

static inline void pl_mf_clear(struct pl_inode *pi)
{
}

static inline void pl_mf_exit(void)
{
}
#endif

/* super.c: the directory operations behind the ->create/->mkdir adapters */
int pl_do_create(struct inode *dir, struct dentry *dentry, umode_t mode);
int pl_do_mkdir(struct inode *dir, struct dentry *dentry, umode_t mode);

#ifdef PL_CREATE_HAS_EXCL
static inline int pl_create(struct mnt_idmap *idmap, struct inode *dir,
			    struct dentry *dentry, umode_t mode, bool excl)
{
	return pl_do_create(dir, dentry, mode);
}
#else
static inline int pl_create(struct mnt_idmap *idmap, struct inode *dir,
			    struct dentry *dentry, umode_t mode)
{
	return pl_do_create(dir, dentry, mode);
}
#endif

#ifdef PL_MKDIR_RETURNS_DENTRY
/* NULL: the dentry passed in was used */
static inline struct dentry *pl_mkdir(struct mnt_idmap *idmap,
				      struct inode *dir, struct dentry *dentry,
				      umode_t mode)
{
	return ERR_PTR(pl_do_mkdir(dir, dentry, mode));
}
#else
static inline int pl_mkdir(struct mnt_idmap *idmap, struct inode *dir,
			   struct dentry *dentry, umode_t mode)
{
	return pl_do_mkdir(dir, dentry, mode);
}
#endif

/*
 * Pin a new directory entry until unlink, as ramfs does; umount unpins what
 * is left (kill_litter_super() on old kernels, shrink_dcache_for_umount() of
 * persistent dentries on new ones).
 */
static inline void pl_d_pin(struct dentry *dentry, struct inode *inode)
{
#ifdef PL_HAVE_D_MAKE_PERSISTENT
	d_make_persistent(dentry, inode);
#else
	d_instantiate(dentry, inode);
	dget(dentry);
#endif
}

static inline void pl_kill_super(struct super_block *sb)
{
#ifdef PL_HAVE_D_MAKE_PERSISTENT
	kill_anon_super(sb);
#else
	kill_litter_super(sb);
#endif
}

/* ->drop_inode: evict as soon as the last reference goes (no inode cache) */
static inline int pl_drop_inode(struct inode *inode)
{
#ifdef PL_HAVE_INODE_JUST_DROP
	return inode_just_drop(inode);
#else
	return generic_delete_inode(inode);
#endif
}

/* Special (no struct page) huge entries */
static inline vm_fault_t pl_insert_pfn_pmd(struct vm_fault *vmf,
					   unsigned long pfn, bool write)
{
#ifdef PL_HAVE_PFN_T
	return vmf_insert_pfn_pmd(vmf, __pfn_to_pfn_t(pfn, PFN_DEV), write);
#else
	return vmf_insert_pfn_pmd(vmf, pfn, write);
#endif
}

static inline vm_fault_t pl_insert_pfn_pud(struct vm_fault *vmf,
					   unsigned long pfn, bool write)
{
#ifdef PL_HAVE_PFN_T
	return vmf_insert_pfn_pud(vmf, __pfn_to_pfn_t(pfn, PFN_DEV), write);
#else
	return vmf_insert_pfn_pud(vmf, pfn, write);
#endif
}

/*
 * Inode flags of a regular file.  S_DAX makes vma_is_dax() true, which is
 * what lets __thp_vma_allowable_orders() call ->huge_fault whatever the THP
 * sysfs policy on 6.12 before 6.12.115 (later ones also exempt huge VM_PFNMAP
 * mappings from the policy).  The file never uses fs/dax.c nor the page
 * cache; the other effects of S_DAX in 6.12 are harmless here: splice reads
 * go through copy_splice_read() (our read_iter), fadvise/MADV_WILLNEED are
 * no-ops, MAP_SYNC stays refused (no FOP_MMAP_SYNC), FOLL_LONGTERM/mlock/
 * mbind/KSM/khugepaged skip the VMA (they already do for VM_PFNMAP|VM_IO),
 * truncate's dax branches see an empty mapping, and statx reports
 * STATX_ATTR_DAX.  Where DAX huge entries are folios (6.15+) S_DAX is wrong:
 * zapping a special PUD of a "DAX" VMA would look up its struct page.
 */
static inline unsigned int pl_file_iflags(void)
{
#ifdef PL_DAX_HUGE_IS_FOLIO
	return 0;
#else
	return S_DAX;
#endif
}

/* Place a mapping of @file in current->mm */
static inline unsigned long pl_unmapped_area(struct file *file,
					     unsigned long addr,
					     unsigned long len,
					     unsigned long pgoff,
					     unsigned long flags)
{
#ifdef PL_UNMAPPED_AREA_HAS_MM
	return mm_get_unmapped_area(current->mm, file, addr, len, pgoff, flags);
#else
	return mm_get_unmapped_area(file, addr, len, pgoff, flags);
#endif
}

#endif /* PAGELESS_COMPAT_H */
