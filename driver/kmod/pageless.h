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
 *
 *   pl_meta.lock (mutex, persist.c)
 *	The persistent records and the metadata area.  Taken under i_rwsem,
 *	never under pl_inode->lock; under it only pl_files_lock (new inodes),
 *	pl_inode->mappers_lock (a file's mappers kept across umount) and the
 *	mf.c registration are taken.
 */
#ifndef PAGELESS_H
#define PAGELESS_H

#include <linux/fs.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/rwsem.h>
#include <linux/sizes.h>
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
int pl_pool_carve(u64 phys, u64 len);
bool pl_pool_extent_ok(u64 phys, u64 len, int nid);
int pl_pool_scrub_except(const struct pl_extent *keep, unsigned int n);
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

struct pl_pnode;

/*
 * A volume: the files of the mounts with one set of options.  Its one
 * superblock (keyed by the volume) exists while it is mounted; the volume and
 * its files persist (persist.c) until they are removed.
 */
struct pl_sb_info {
	u64 psize;		/* mount page size: 4K, 2M or 1G */
	int nid;		/* node= or NUMA_NO_NODE: any */
	kuid_t uid;		/* root directory owner */
	kgid_t gid;
	umode_t mode;		/* root directory mode */
	struct list_head node;	/* pl_meta.vols */
	struct pl_pnode *root;	/* root directory, NULL until created */
	struct super_block *sb;	/* while mounted */
	unsigned int refs;	/* mounts being set up (fs_context) */
};

struct pl_mf;
struct pl_pids;

/*
 * The persistent record of a directory or regular file (persist.c), under
 * pl_meta.lock.  It outlives its inode while the file is linked: a volume
 * that is not mounted keeps its files here.
 */
struct pl_pnode {
	struct list_head node;	/* pl_meta.nodes */
	u32 id;
	struct pl_sb_info *vol;
	umode_t mode;
	kuid_t uid;
	kgid_t gid;
	u32 seals;
	u64 size;
	unsigned int nr_ext;
	struct pl_extent *ext;	/* phys and len; a copy of the layout */
	unsigned int names;	/* struct pl_pname naming it */
	struct pl_inode *pi;	/* while mounted */
	struct pl_pids *mappers;	/* while not mounted: see quarantine.c */
	struct pl_pname *up;	/* load checks: a directory's name */
	bool ok;		/* load checks: reaches its root */
};

/* One name: @target is called @name in directory @parent. */
struct pl_pname {
	struct list_head node;	/* pl_meta.names */
	struct pl_pnode *parent;
	struct pl_pnode *target;
	unsigned int len;
	char name[];
};

struct pl_inode {
	struct rw_semaphore lock;	/* see the top of this file */
	struct pl_extents *layout;	/* NULL while empty */
	struct mutex mappers_lock;
	struct pl_pids *mappers;	/* processes that mapped it, quarantine.c */
	u32 seals;			/* PAGELESS_SEAL_*, under i_rwsem */
	struct list_head files;		/* pl_files (regular files), mce.c */
	struct pl_mf *mf;		/* registered extents, mf.c (6.19+) */
	struct pl_pnode *pn;		/* persistent record, persist.c */
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
struct pl_pids *pl_mappers_take(struct pl_inode *pi);
void pl_mappers_give(struct pl_inode *pi, struct pl_pids *p);
void pl_mappers_drop(struct pl_pids *p);

/* persist.c: metadata in the reserved memory that survives kexec */
#define PL_META_SIZE	SZ_2M
int pl_meta_load(unsigned int n, const u64 *start, const u64 *size);
void pl_meta_exit(void);
struct pl_sb_info *pl_meta_vol(const struct pl_sb_info *opts);
struct inode *pl_meta_root(struct super_block *sb, struct pl_sb_info *vol);
int pl_meta_attach(struct super_block *sb, struct pl_sb_info *vol);
void pl_meta_umount(struct pl_sb_info *vol);
void pl_meta_vol_put(struct pl_sb_info *vol);
int pl_meta_new(struct pl_inode *pi, struct pl_sb_info *vol);
int pl_meta_link(struct inode *dir, struct dentry *dentry, struct inode *inode);
void pl_meta_unlink(struct dentry *dentry);
int pl_meta_rename_check(struct dentry *old, struct dentry *new,
			 unsigned int flags);
void pl_meta_rename(struct inode *old_dir, struct dentry *old,
		    struct inode *new_dir, struct dentry *new,
		    unsigned int flags);
void pl_meta_attr(struct inode *inode);
int pl_meta_layout(struct pl_inode *pi, const struct pl_extents *ex, u64 size);
bool pl_meta_evict(struct pl_inode *pi);
struct inode *pl_new_inode(struct super_block *sb, const struct inode *dir,
			   umode_t mode);

/* file.c */
extern const struct file_operations pl_file_fops;
extern const struct inode_operations pl_file_iops;
int pl_setsize(struct inode *inode, loff_t newsize);
const struct pl_extent *pl_lookup(const struct pl_extents *ex, u64 off);

#endif /* PAGELESS_H */
