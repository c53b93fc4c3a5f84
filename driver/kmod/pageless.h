/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pageless: boot-reserved memory (memmap=SIZE$START) without struct page,
 * exposed as files of the filesystem "pagelessfs".
 *
 * Objects and their locks (outermost first):
 *
 *   inode->i_rwsem (VFS inode lock)
 *	Serialises size changes (setattr) and write_iter on one file.
 *   pl_inode->lock (rw_semaphore)
 *	Protects pl_inode->layout (the extent table) and i_size changes.
 *	Readers: page faults (under mmap_lock or the per-VMA lock), the extent
 *	look-ups of read_iter/write_iter and FIEMAP; it is never held while
 *	copying to or from user memory, so a fault on a mapping of the same
 *	file during read()/write() cannot deadlock.  Writer: truncate, which
 *	also zaps the user mappings of a freed tail under it, so no fault can
 *	map a freed extent again.
 *   pl_io_srcu
 *	read_iter/write_iter copy through the kernel mapping inside an SRCU
 *	read section after dropping pl_inode->lock; truncate waits for them
 *	(synchronize_srcu) before it hands freed extents to the scrubber.
 *   pl_pool.lock (mutex)
 *	Protects the pool's free list, scrub queue and counters.  Leaf lock:
 *	nothing else is taken under it (memory allocation and the lockless
 *	pl_poison look-up aside).
 *
 *   pl_inode->mappers_lock (mutex), pl_quar.lock (mutex)
 *	The processes that mapped a file, and the quarantine (quarantine.c).
 *	Leaf locks: freed extents reach pl_pool.lock after dropping them.
 *
 * Memory errors (mce.c) take pl_files_lock, then pl_inode->lock; the poison
 * xarray pl_poison has its own internal lock.
 */
#ifndef PAGELESS_H
#define PAGELESS_H

#include <linux/fs.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/rwsem.h>
#include <linux/srcu.h>
#include <linux/types.h>

#include "alloc.h"
#include "pageless_uapi.h"

/* statfs f_type of pagelessfs: "PGLS" */
#define PAGELESSFS_MAGIC	0x50474c53

/* pool.c */
int pl_pool_init(void);
void pl_pool_exit(bool drain);
int pl_pool_add_range(u64 start, u64 size, void *virt);
void *pl_pool_virt(u64 phys);
void *pl_pool_virt_quiet(u64 phys);
void *pl_pool_virt_len(u64 phys, u64 *avail);
void pl_pool_retire(unsigned long pfn);
int pl_pool_alloc(u64 bytes, u64 align, int nid, struct pl_extents **res);
void pl_pool_release(struct pl_extents *ex);
void pl_pool_release_clean(struct pl_extents *ex);
void pl_pool_stat(u64 align, int nid, u64 *blocks, u64 *bfree);
bool pl_pool_range(unsigned int i, u64 *start, u64 *size, int *nid);
bool pl_pool_has_node(int nid);
bool pl_pool_same_node(u64 a, u64 b);

/* The pool's numbers, for sysfs. */
struct pl_counts {
	u64 capacity;
	u64 free;
	u64 scrubbing;
	unsigned long poisoned;
};

void pl_pool_counts(int nid, struct pl_counts *c);

/* sysfs.c */
int pl_sysfs_init(void);
void pl_sysfs_exit(void);

/* super.c */
int pl_fs_register(void);
void pl_fs_unregister(void);

/* Per-mount information. */
struct pl_sb_info {
	u64 psize;		/* mount page size: 4K, 2M or 1G */
	int nid;		/* node= or NUMA_NO_NODE: any */
	kuid_t uid;		/* root directory owner */
	kgid_t gid;
	umode_t mode;		/* root directory mode */
};

struct pl_mf;
struct pl_pids;

struct pl_inode {
	struct rw_semaphore lock;	/* see the top of this file */
	struct pl_extents *layout;	/* NULL while empty */
	struct mutex mappers_lock;
	struct pl_pids *mappers;	/* processes that mapped it, quarantine.c */
	u32 seals;			/* PAGELESS_SEAL_*, under i_rwsem */
	struct list_head files;		/* pl_files (regular files), mce.c */
	struct pl_mf *mf;		/* registered extents, mf.c (6.19+) */
	struct inode vfs_inode;
};

static inline struct pl_inode *PL_I(struct inode *inode)
{
	return container_of(inode, struct pl_inode, vfs_inode);
}

static inline struct pl_sb_info *PL_SB(struct super_block *sb)
{
	return sb->s_fs_info;
}

extern struct srcu_struct pl_io_srcu;
extern bool pl_pud_ok;

/* mce.c: memory errors */
unsigned long pl_poison_first(unsigned long pfn, unsigned long last);
void pl_memory_error(u64 phys);
void pl_files_add(struct pl_inode *pi);
void pl_files_del(struct pl_inode *pi);
void pl_mce_init(void);
void pl_mce_exit(void);
void pl_poison_destroy(void);

/* quarantine.c: memory a device may still reach by DMA */
int pl_mappers_add(struct pl_inode *pi, struct pid *pid);
void pl_mappers_free(struct pl_inode *pi);
void pl_quarantine_free(struct pl_inode *pi, struct pl_extents *ex, bool final);
unsigned int pl_quarantine_reap(void);
u64 pl_quarantine_bytes(void);
void pl_quarantine_exit(void);

/* file.c */
extern const struct file_operations pl_file_fops;
extern const struct inode_operations pl_file_iops;
int pl_setsize(struct inode *inode, loff_t newsize);
const struct pl_extent *pl_lookup(const struct pl_extents *ex, u64 off);

#endif /* PAGELESS_H */
