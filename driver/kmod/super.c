// SPDX-License-Identifier: GPL-2.0
/*
 * pagelessfs: superblock, mount options (fs_context), directories, inodes.
 *
 * Directories are the libfs "simple" ones (dentries pin their inodes, as in
 * ramfs).  Every mount is its own superblock with its own page size; all
 * mounts share the one pool.  An inode's extents go back to the pool, through
 * the scrubber, when it is evicted: after the last link, fd and mapping are
 * gone (mappings hold a file reference).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/fs_context.h>
#include <linux/fs_parser.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/numa.h>
#include <linux/pagemap.h>
#include <linux/security.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/statfs.h>
#include <linux/string.h>

#include "compat.h"
#include "pageless.h"

#define PL_DEFAULT_MODE	0755

static const struct super_operations pl_sops;
static const struct inode_operations pl_dir_iops;
static struct kmem_cache *pl_inode_cachep;

/* A new inode, without a persistent record. */
struct inode *pl_new_inode(struct super_block *sb, const struct inode *dir,
			   umode_t mode)
{
	struct inode *inode = new_inode(sb);

	if (!inode)
		return NULL;
	inode->i_ino = get_next_ino();
	inode_init_owner(&nop_mnt_idmap, inode, dir, mode);
	simple_inode_init_ts(inode);
	switch (mode & S_IFMT) {
	case S_IFREG:
		inode->i_op = &pl_file_iops;
		inode->i_fop = &pl_file_fops;
		/* S_DAX where the THP policy needs it: see compat.h */
		inode->i_flags |= pl_file_iflags();
		pl_files_add(PL_I(inode));
		break;
	case S_IFDIR:
		inode->i_op = &pl_dir_iops;
		inode->i_fop = &simple_dir_operations;
		/* "." */
		inc_nlink(inode);
		break;
	default:
		iput(inode);
		return NULL;
	}
	return inode;
}

/* A new inode with a new persistent record (named by pl_meta_link()). */
static struct inode *pl_get_inode(struct super_block *sb,
				  const struct inode *dir, umode_t mode)
{
	struct inode *inode = pl_new_inode(sb, dir, mode);

	if (inode && pl_meta_new(PL_I(inode), PL_SB(sb))) {
		iput(inode);
		return NULL;
	}
	return inode;
}

/* Directory operations.  The VFS holds the parent's i_rwsem. */
static int pl_mknod(struct inode *dir, struct dentry *dentry, umode_t mode)
{
	struct inode *inode = pl_get_inode(dir->i_sb, dir, mode);
	int ret;

	if (!inode)
		return -ENOSPC;
	ret = security_inode_init_security(inode, dir, &dentry->d_name,
					   NULL, NULL);
	if (!ret)
		ret = pl_meta_link(dir, dentry, inode);
	if (ret) {
		iput(inode);
		return ret;
	}
	pl_d_pin(dentry, inode);	/* until unlink, as in ramfs */
	inode_set_mtime_to_ts(dir, inode_set_ctime_current(dir));
	return 0;
}

/* ->create and ->mkdir: compat.h adapts them to the kernel's signatures */
int pl_do_create(struct inode *dir, struct dentry *dentry, umode_t mode)
{
	return pl_mknod(dir, dentry, (mode & ~S_IFMT) | S_IFREG);
}

int pl_do_mkdir(struct inode *dir, struct dentry *dentry, umode_t mode)
{
	int ret = pl_mknod(dir, dentry, (mode & ~S_IFMT) | S_IFDIR);

	if (!ret)
		inc_nlink(dir);
	return ret;
}

static int pl_tmpfile(struct mnt_idmap *idmap, struct inode *dir,
		      struct file *file, umode_t mode)
{
	struct inode *inode;
	int ret;

	inode = pl_get_inode(dir->i_sb, dir, (mode & ~S_IFMT) | S_IFREG);
	if (!inode)
		return -ENOSPC;
	ret = security_inode_init_security(inode, dir,
					   &file_dentry(file)->d_name,
					   NULL, NULL);
	if (ret) {
		iput(inode);
		return finish_open_simple(file, ret);
	}
	d_tmpfile(file, inode);
	return finish_open_simple(file, 0);
}

/* The name changes below are recorded in the metadata (persist.c). */
static int pl_link(struct dentry *old_dentry, struct inode *dir,
		   struct dentry *dentry)
{
	int ret = pl_meta_link(dir, dentry, d_inode(old_dentry));

	if (ret)
		return ret;
	ret = simple_link(old_dentry, dir, dentry);
	if (ret)
		pl_meta_unlink(dentry);
	return ret;
}

static int pl_unlink(struct inode *dir, struct dentry *dentry)
{
	/* Recorded gone before the extents can be freed (eviction). */
	pl_meta_unlink(dentry);
	return simple_unlink(dir, dentry);
}

static int pl_rmdir(struct inode *dir, struct dentry *dentry)
{
	int ret = simple_rmdir(dir, dentry);

	if (!ret)
		pl_meta_unlink(dentry);
	return ret;
}

static int pl_rename(struct mnt_idmap *idmap, struct inode *old_dir,
		     struct dentry *old_dentry, struct inode *new_dir,
		     struct dentry *new_dentry, unsigned int flags)
{
	int ret = pl_meta_rename_check(old_dentry, new_dentry, flags);

	if (ret)
		return ret;
	ret = simple_rename(idmap, old_dir, old_dentry, new_dir, new_dentry,
			    flags);
	if (!ret)
		pl_meta_rename(old_dir, old_dentry, new_dir, new_dentry, flags);
	return ret;
}

static int pl_dir_setattr(struct mnt_idmap *idmap, struct dentry *dentry,
			  struct iattr *attr)
{
	int ret = simple_setattr(idmap, dentry, attr);

	if (!ret)
		pl_meta_attr(d_inode(dentry));
	return ret;
}

static const struct inode_operations pl_dir_iops = {
	.create		= pl_create,
	.lookup		= simple_lookup,
	.link		= pl_link,
	.unlink		= pl_unlink,
	.mkdir		= pl_mkdir,
	.rmdir		= pl_rmdir,
	.rename		= pl_rename,
	.tmpfile	= pl_tmpfile,
	.getattr	= simple_getattr,
	.setattr	= pl_dir_setattr,
};

/* Inodes */
static struct inode *pl_alloc_inode(struct super_block *sb)
{
	struct pl_inode *pi = alloc_inode_sb(sb, pl_inode_cachep, GFP_KERNEL);

	if (!pi)
		return NULL;
	pi->layout = NULL;
	pi->mappers = NULL;
	pi->seals = 0;
	pi->mf = NULL;
	pi->pn = NULL;
	INIT_LIST_HEAD(&pi->files);
	return &pi->vfs_inode;
}

static void pl_free_inode(struct inode *inode)
{
	kmem_cache_free(pl_inode_cachep, PL_I(inode));
}

static void pl_inode_init_once(void *p)
{
	struct pl_inode *pi = p;

	init_rwsem(&pi->lock);
	mutex_init(&pi->mappers_lock);
	inode_init_once(&pi->vfs_inode);
}

/*
 * The last reference is gone: no fd, no mapping, no link.  No process can
 * reach the extents any more, but a device may, by DMA: they are scrubbed and
 * freed once every process that mapped the file is gone (quarantine.c).
 * Or the superblock is going away with the file still linked: the file
 * persists, its extents stay its own (persist.c).
 */
static void pl_evict_inode(struct inode *inode)
{
	struct pl_inode *pi = PL_I(inode);

	truncate_inode_pages_final(&inode->i_data);
	clear_inode(inode);
	if (!list_empty(&pi->files))
		pl_files_del(pi);
	pl_mf_clear(pi);
	if (pl_meta_evict(pi))
		pl_extents_free(pi->layout);
	else
		pl_quarantine_free(pi, pi->layout, true);
	pi->layout = NULL;
	pl_mappers_free(pi);
}

static int pl_statfs(struct dentry *dentry, struct kstatfs *buf)
{
	struct pl_sb_info *sbi = PL_SB(dentry->d_sb);
	u64 blocks, bfree;
	int ret;

	ret = simple_statfs(dentry, buf);
	if (ret)
		return ret;
	/* Quarantined memory is not free; what no process holds any more is. */
	pl_quarantine_reap();
	pl_pool_stat(sbi->psize, sbi->nid, &blocks, &bfree);
	buf->f_bsize = sbi->psize;
	buf->f_frsize = sbi->psize;
	buf->f_blocks = blocks;
	buf->f_bfree = bfree;
	buf->f_bavail = bfree;
	return 0;
}

static void pl_show_size(struct seq_file *m, u64 size)
{
	if (size >= SZ_1G)
		seq_printf(m, ",pagesize=%lluG", size >> 30);
	else if (size >= SZ_1M)
		seq_printf(m, ",pagesize=%lluM", size >> 20);
	else
		seq_printf(m, ",pagesize=%lluK", size >> 10);
}

static int pl_show_options(struct seq_file *m, struct dentry *root)
{
	struct pl_sb_info *sbi = PL_SB(root->d_sb);

	pl_show_size(m, sbi->psize);
	if (sbi->nid != NUMA_NO_NODE)
		seq_printf(m, ",node=%d", sbi->nid);
	if (!uid_eq(sbi->uid, GLOBAL_ROOT_UID))
		seq_printf(m, ",uid=%u",
			   from_kuid_munged(&init_user_ns, sbi->uid));
	if (!gid_eq(sbi->gid, GLOBAL_ROOT_GID))
		seq_printf(m, ",gid=%u",
			   from_kgid_munged(&init_user_ns, sbi->gid));
	if (sbi->mode != PL_DEFAULT_MODE)
		seq_printf(m, ",mode=%o", sbi->mode);
	return 0;
}

static const struct super_operations pl_sops = {
	.alloc_inode	= pl_alloc_inode,
	.free_inode	= pl_free_inode,
	.evict_inode	= pl_evict_inode,
	.drop_inode	= pl_drop_inode,
	.statfs		= pl_statfs,
	.show_options	= pl_show_options,
};

/* Mount options */
enum { PL_OPT_PAGESIZE, PL_OPT_UID, PL_OPT_GID, PL_OPT_MODE, PL_OPT_NODE };

static const struct fs_parameter_spec pl_fs_parameters[] = {
	fsparam_string("pagesize", PL_OPT_PAGESIZE),
	fsparam_uid("uid", PL_OPT_UID),
	fsparam_gid("gid", PL_OPT_GID),
	fsparam_u32oct("mode", PL_OPT_MODE),
	fsparam_u32("node", PL_OPT_NODE),
	{}
};

struct pl_fs_context {
	struct pl_sb_info opts;
	struct pl_sb_info *vol;	/* referenced, from get_tree */
	bool pagesize_set;	/* given explicitly (default 2M) */
	bool node_set;		/* node= given */
};

static int pl_parse_param(struct fs_context *fc, struct fs_parameter *param)
{
	struct pl_fs_context *ctx = fc->fs_private;
	struct fs_parse_result result;
	unsigned long long size;
	char *end;
	int opt;

	opt = fs_parse(fc, pl_fs_parameters, param, &result);
	if (opt < 0)
		return opt;	/* the VFS reports unknown parameters */

	switch (opt) {
	case PL_OPT_PAGESIZE:
		size = memparse(param->string, &end);
		if (end == param->string || *end)
			return invalfc(fc, "pagesize=%s: not a size (use 4K, 2M or 1G)",
				       param->string);
		if (size != SZ_4K && size != SZ_2M && size != SZ_1G)
			return invalfc(fc, "pagesize=%s: unsupported (use 4K, 2M or 1G)",
				       param->string);
		ctx->opts.psize = size;
		ctx->pagesize_set = true;
		break;
	case PL_OPT_UID:
		ctx->opts.uid = result.uid;
		break;
	case PL_OPT_GID:
		ctx->opts.gid = result.gid;
		break;
	case PL_OPT_MODE:
		ctx->opts.mode = result.uint_32 & S_IALLUGO;
		break;
	case PL_OPT_NODE:
		if (result.uint_32 >= MAX_NUMNODES ||
		    !pl_pool_has_node(result.uint_32))
			return invalfc(fc, "node=%u: no pagelessfs range on that node",
				       result.uint_32);
		ctx->opts.nid = result.uint_32;
		ctx->node_set = true;
		break;
	}
	return 0;
}

/*
 * A new superblock of the volume sb->s_fs_info (get_tree_keyed()): its
 * recorded files come back (pl_meta_attach()).
 */
static int pl_fill_super(struct super_block *sb, struct fs_context *fc)
{
	struct pl_sb_info *sbi = PL_SB(sb);
	struct inode *root;

	sb->s_maxbytes = MAX_LFS_FILESIZE;
	/* st_blksize: the I/O size tools use, not the mapping page size */
	sb->s_blocksize = PAGE_SIZE;
	sb->s_blocksize_bits = PAGE_SHIFT;
	sb->s_magic = PAGELESSFS_MAGIC;
	sb->s_op = &pl_sops;
	sb->s_time_gran = 1;

	root = pl_meta_root(sb, sbi);
	if (IS_ERR(root))
		return PTR_ERR(root);
	if (!root) {
		root = pl_new_inode(sb, NULL, S_IFDIR | sbi->mode);
		if (!root)
			return -ENOMEM;
		root->i_uid = sbi->uid;
		root->i_gid = sbi->gid;
		if (pl_meta_new(PL_I(root), sbi)) {
			iput(root);
			return -ENOSPC;
		}
	}
	sb->s_root = d_make_root(root);
	if (!sb->s_root)
		return -ENOMEM;
	return pl_meta_attach(sb, sbi);
}

static int pl_get_tree(struct fs_context *fc)
{
	struct pl_fs_context *ctx = fc->fs_private;

	if (ctx->opts.psize == SZ_1G && !pl_pud_ok)
		pr_info_once("pagesize=1G: no 1 GiB page table entries here, mapping with 2 MiB ones\n");
	/* One superblock per volume: mounts with the same options share it. */
	ctx->vol = pl_meta_vol(&ctx->opts);
	if (!ctx->vol)
		return -ENOMEM;
	return get_tree_keyed(fc, pl_fill_super, ctx->vol);
}

static int pl_reconfigure(struct fs_context *fc)
{
	struct pl_fs_context *ctx = fc->fs_private;
	struct pl_sb_info *sbi = PL_SB(fc->root->d_sb);

	if (ctx->pagesize_set && ctx->opts.psize != sbi->psize)
		return invalfc(fc, "pagesize cannot be changed by remount");
	if (ctx->node_set && ctx->opts.nid != sbi->nid)
		return invalfc(fc, "node cannot be changed by remount");
	return 0;
}

static void pl_free_fc(struct fs_context *fc)
{
	struct pl_fs_context *ctx = fc->fs_private;

	if (ctx)
		pl_meta_vol_put(ctx->vol);
	kfree(ctx);
}

static const struct fs_context_operations pl_context_ops = {
	.free		= pl_free_fc,
	.parse_param	= pl_parse_param,
	.get_tree	= pl_get_tree,
	.reconfigure	= pl_reconfigure,
};

static int pl_init_fs_context(struct fs_context *fc)
{
	struct pl_fs_context *ctx;

	ctx = kzalloc(sizeof(*ctx), GFP_KERNEL);
	if (!ctx)
		return -ENOMEM;
	ctx->opts.psize = SZ_2M;
	ctx->opts.uid = current_fsuid();
	ctx->opts.gid = current_fsgid();
	ctx->opts.mode = PL_DEFAULT_MODE;
	ctx->opts.nid = NUMA_NO_NODE;
	fc->fs_private = ctx;
	fc->ops = &pl_context_ops;
	return 0;
}

static void pl_kill_sb(struct super_block *sb)
{
	struct pl_sb_info *vol = PL_SB(sb);

	/* Evicts every inode: linked files persist, the rest is scrubbed. */
	pl_kill_super(sb);
	pl_meta_umount(vol);
	/* Release at once what only waited for processes that are gone. */
	pl_quarantine_reap();
}

static struct file_system_type pl_fs_type = {
	.owner			= THIS_MODULE,
	.name			= "pagelessfs",
	.init_fs_context	= pl_init_fs_context,
	.parameters		= pl_fs_parameters,
	.kill_sb		= pl_kill_sb,
};

int pl_fs_register(void)
{
	int ret;

	pl_inode_cachep = kmem_cache_create("pageless_inode",
					    sizeof(struct pl_inode), 0,
					    SLAB_RECLAIM_ACCOUNT | SLAB_ACCOUNT,
					    pl_inode_init_once);
	if (!pl_inode_cachep)
		return -ENOMEM;
	ret = register_filesystem(&pl_fs_type);
	if (ret)
		kmem_cache_destroy(pl_inode_cachep);
	return ret;
}

void pl_fs_unregister(void)
{
	unregister_filesystem(&pl_fs_type);
	/* Inodes are freed after an RCU grace period. */
	rcu_barrier();
	kmem_cache_destroy(pl_inode_cachep);
}
