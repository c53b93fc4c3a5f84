// SPDX-License-Identifier: GPL-2.0
/*
 * Pool metadata that survives kexec (and rmmod/insmod): every volume (the
 * files of mounts with one set of options), directory and regular file with
 * its name(s), mode, owner, size, seals and physical extents, kept in a small
 * area of the reserved memory itself.
 *
 * The area is PL_META_SIZE bytes at the top of one range (pl_meta_place()):
 * two slots, written alternately, each a header (magic, format version,
 * generation, the ranges= set, checksums) and a payload of records.  A commit
 * serialises the whole state into the slot of the next generation: it clears
 * the slot's magic, writes the payload, then the header, magic last.  A torn
 * commit leaves that slot failing its checksum and the other slot, one
 * generation older, valid: that one is believed.  Extents are handed back to
 * the pool only after the commit that drops them, so neither slot ever names
 * memory another file may own.
 *
 * At load the slot with the newest valid generation is believed if its ranges
 * are exactly this load's ranges= set and every record passes the checks in
 * pl_meta_parse(): extents aligned, inside the pool, on the volume's node,
 * overlapping nothing; names unique, directories a tree.  Anything else means
 * the whole pool is scrubbed and starts empty, with the reason in the log.
 *
 * Locking: pl_meta.lock (mutex), taken under i_rwsem, never under
 * pl_inode->lock; it protects every pl_vol, pl_pnode and pl_pname and the
 * area itself.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/align.h>
#include <linux/crc32.h>
#include <linux/dcache.h>
#include <linux/fs.h>
#include <linux/list.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>
#include <linux/numa.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/string.h>

#include "compat.h"
#include "pageless.h"

#define PL_META_MAGIC		0x444d4c50	/* "PLMD" */
#define PL_META_VERSION		1
#define PL_META_SLOT		(PL_META_SIZE / 2)
#define PL_META_HDR		4096		/* header room in a slot */
#define PL_META_CAP		(PL_META_SLOT - PL_META_HDR)
#define PL_META_MAX_RANGES	64
#define PL_NAME_MAX		255

enum { PL_REC_VOL = 1, PL_REC_NODE = 2, PL_REC_NAME = 3 };

struct pl_meta_range {
	__le64 start;
	__le64 size;
};

struct pl_meta_hdr {
	__le32 magic;
	__le32 version;
	__le64 gen;
	__le32 payload_len;
	__le32 payload_crc;
	__le32 nr_ranges;
	__le32 hdr_crc;		/* of the header with this field 0 */
	struct pl_meta_range range[PL_META_MAX_RANGES];
};

/* Every record starts so; len (a multiple of 8) includes this header. */
struct pl_meta_rec {
	__le16 type;
	__le16 name_len;	/* PL_REC_NAME */
	__le32 len;
};

struct pl_meta_vol {
	struct pl_meta_rec rec;
	__le64 psize;
	__le32 nid;		/* -1: any */
	__le32 root;		/* node id of the root directory */
	__le32 uid;		/* mount options */
	__le32 gid;
	__le32 mode;
	__le32 pad;
};

struct pl_meta_ext {
	__le64 phys;
	__le64 len;
};

struct pl_meta_node {
	struct pl_meta_rec rec;
	__le32 id;
	__le32 vol;		/* root id of its volume */
	__le32 mode;
	__le32 uid;
	__le32 gid;
	__le32 seals;
	__le64 size;
	__le32 nr_ext;
	__le32 pad;
	struct pl_meta_ext ext[];
};

struct pl_meta_name {
	struct pl_meta_rec rec;
	__le32 parent;
	__le32 target;
	char name[];
};

static bool discard;
module_param(discard, bool, 0444);
MODULE_PARM_DESC(discard,
		 "Discard the files recorded in the pool's metadata: scrub the whole pool and start empty");

static struct {
	struct mutex lock;	/* everything below */
	void *area;		/* kernel mapping of the area, NULL: none */
	u64 phys;
	u64 gen;		/* generation of the last commit */
	u64 bytes;		/* payload size of the current state */
	u32 next_id;
	bool broken;		/* a commit failed: stop writing */
	struct list_head vols;	/* struct pl_sb_info */
	struct list_head nodes;	/* struct pl_pnode */
	struct list_head names;	/* struct pl_pname */
	unsigned int nr_ranges;
	struct pl_meta_range range[PL_META_MAX_RANGES];
} pl_meta = {
	.lock = __MUTEX_INITIALIZER(pl_meta.lock),
	.vols = LIST_HEAD_INIT(pl_meta.vols),
	.nodes = LIST_HEAD_INIT(pl_meta.nodes),
	.names = LIST_HEAD_INIT(pl_meta.names),
	.next_id = 1,
};

static u64 pl_rec_vol_len(void)
{
	return sizeof(struct pl_meta_vol);
}

static u64 pl_rec_node_len(unsigned int nr_ext)
{
	return sizeof(struct pl_meta_node) + nr_ext * sizeof(struct pl_meta_ext);
}

static u64 pl_rec_name_len(unsigned int len)
{
	return round_up(sizeof(struct pl_meta_name) + len, 8);
}

/* Whether @pn is recorded: named, or the root of its volume. */
static bool pl_pn_recorded(const struct pl_pnode *pn)
{
	return pn->names || (pn->vol && pn->vol->root == pn);
}

static bool pl_meta_fits(u64 more)
{
	if (pl_meta.bytes + more <= PL_META_CAP)
		return true;
	pr_err_ratelimited("metadata area full (%llu of %lu bytes used): too many files, names or extents to record\n",
			   pl_meta.bytes, (unsigned long)PL_META_CAP);
	return false;
}

/* Serialise the whole state into slot @gen & 1.  pl_meta.lock held. */
static void pl_meta_commit(void)
{
	struct pl_meta_hdr *h;
	struct pl_sb_info *v;
	struct pl_pnode *pn;
	struct pl_pname *nm;
	u64 gen = pl_meta.gen + 1;
	u8 *slot, *p, *end;
	unsigned int i;

	if (!pl_meta.area || pl_meta.broken)
		return;
	slot = pl_meta.area + (gen & 1) * PL_META_SLOT;
	h = (struct pl_meta_hdr *)slot;
	WRITE_ONCE(h->magic, 0);
	wmb();	/* the old header is invalid before the payload changes */
	p = slot + PL_META_HDR;
	end = slot + PL_META_SLOT;

	list_for_each_entry(v, &pl_meta.vols, node) {
		struct pl_meta_vol *r = (void *)p;

		if (!v->root)
			continue;
		if (WARN_ON_ONCE(p + pl_rec_vol_len() > end))
			goto overflow;
		memset(r, 0, sizeof(*r));
		r->rec.type = cpu_to_le16(PL_REC_VOL);
		r->rec.len = cpu_to_le32(pl_rec_vol_len());
		r->psize = cpu_to_le64(v->psize);
		r->nid = cpu_to_le32(v->nid);
		r->root = cpu_to_le32(v->root->id);
		r->uid = cpu_to_le32(from_kuid(&init_user_ns, v->uid));
		r->gid = cpu_to_le32(from_kgid(&init_user_ns, v->gid));
		r->mode = cpu_to_le32(v->mode);
		p += pl_rec_vol_len();
	}
	list_for_each_entry(pn, &pl_meta.nodes, node) {
		struct pl_meta_node *r = (void *)p;

		if (!pl_pn_recorded(pn))
			continue;
		if (WARN_ON_ONCE(p + pl_rec_node_len(pn->nr_ext) > end))
			goto overflow;
		memset(r, 0, sizeof(*r));
		r->rec.type = cpu_to_le16(PL_REC_NODE);
		r->rec.len = cpu_to_le32(pl_rec_node_len(pn->nr_ext));
		r->id = cpu_to_le32(pn->id);
		r->vol = cpu_to_le32(pn->vol->root->id);
		r->mode = cpu_to_le32(pn->mode);
		r->uid = cpu_to_le32(from_kuid(&init_user_ns, pn->uid));
		r->gid = cpu_to_le32(from_kgid(&init_user_ns, pn->gid));
		r->seals = cpu_to_le32(pn->seals);
		r->size = cpu_to_le64(pn->size);
		r->nr_ext = cpu_to_le32(pn->nr_ext);
		for (i = 0; i < pn->nr_ext; i++) {
			r->ext[i].phys = cpu_to_le64(pn->ext[i].phys);
			r->ext[i].len = cpu_to_le64(pn->ext[i].len);
		}
		p += pl_rec_node_len(pn->nr_ext);
	}
	list_for_each_entry(nm, &pl_meta.names, node) {
		struct pl_meta_name *r = (void *)p;
		u64 len = pl_rec_name_len(nm->len);

		if (WARN_ON_ONCE(p + len > end))
			goto overflow;
		memset(r, 0, len);
		r->rec.type = cpu_to_le16(PL_REC_NAME);
		r->rec.name_len = cpu_to_le16(nm->len);
		r->rec.len = cpu_to_le32(len);
		r->parent = cpu_to_le32(nm->parent->id);
		r->target = cpu_to_le32(nm->target->id);
		memcpy(r->name, nm->name, nm->len);
		p += len;
	}

	memset(h, 0, sizeof(*h));
	h->version = cpu_to_le32(PL_META_VERSION);
	h->gen = cpu_to_le64(gen);
	h->payload_len = cpu_to_le32(p - (slot + PL_META_HDR));
	h->payload_crc = cpu_to_le32(crc32_le(~0, slot + PL_META_HDR,
					      p - (slot + PL_META_HDR)));
	h->nr_ranges = cpu_to_le32(pl_meta.nr_ranges);
	memcpy(h->range, pl_meta.range, sizeof(h->range));
	h->hdr_crc = cpu_to_le32(crc32_le(~0, (const u8 *)h, sizeof(*h)));
	wmb();	/* the payload and header are complete before the magic */
	WRITE_ONCE(h->magic, cpu_to_le32(PL_META_MAGIC));
	pl_meta.gen = gen;
	pl_meta.bytes = p - (slot + PL_META_HDR);
	return;

overflow:
	pr_err("metadata at %#llx: state larger than the area: no more updates are recorded\n",
	       pl_meta.phys);
	pl_meta.broken = true;
}

/* --- in-memory state ---------------------------------------------------- */

static struct pl_pnode *pl_pn_alloc(void)
{
	struct pl_pnode *pn = kzalloc(sizeof(*pn), GFP_KERNEL);

	if (pn)
		INIT_LIST_HEAD(&pn->node);
	return pn;
}

static void pl_pn_free(struct pl_pnode *pn)
{
	list_del(&pn->node);
	kvfree(pn->ext);
	kfree(pn);
}

static struct pl_pname *pl_name_alloc(struct pl_pnode *parent,
				      struct pl_pnode *target,
				      const char *name, unsigned int len)
{
	struct pl_pname *nm = kmalloc(sizeof(*nm) + len, GFP_KERNEL);

	if (!nm)
		return NULL;
	nm->parent = parent;
	nm->target = target;
	nm->len = len;
	memcpy(nm->name, name, len);
	return nm;
}

static void pl_name_del(struct pl_pname *nm)
{
	list_del(&nm->node);
	nm->target->names--;
	pl_meta.bytes -= pl_rec_name_len(nm->len);
	if (!pl_pn_recorded(nm->target))
		pl_meta.bytes -= pl_rec_node_len(nm->target->nr_ext);
	kfree(nm);
}

static void pl_name_add(struct pl_pname *nm)
{
	if (!pl_pn_recorded(nm->target))
		pl_meta.bytes += pl_rec_node_len(nm->target->nr_ext);
	nm->target->names++;
	pl_meta.bytes += pl_rec_name_len(nm->len);
	list_add_tail(&nm->node, &pl_meta.names);
}

/*
 * The volume for the mount options @opts: the recorded one with the same
 * page size, node, uid, gid and mode, or a new one.  The caller holds a
 * reference until pl_meta_vol_put(): the volume is not forgotten meanwhile.
 */
struct pl_sb_info *pl_meta_vol(const struct pl_sb_info *opts)
{
	struct pl_sb_info *v;

	mutex_lock(&pl_meta.lock);
	list_for_each_entry(v, &pl_meta.vols, node) {
		if (v->psize == opts->psize && v->nid == opts->nid &&
		    uid_eq(v->uid, opts->uid) && gid_eq(v->gid, opts->gid) &&
		    v->mode == opts->mode)
			goto out;
	}
	v = kmemdup(opts, sizeof(*v), GFP_KERNEL);
	if (!v)
		goto unlock;
	v->root = NULL;
	v->sb = NULL;
	v->refs = 0;
	list_add_tail(&v->node, &pl_meta.vols);
out:
	v->refs++;
unlock:
	mutex_unlock(&pl_meta.lock);
	return v;
}

/* Record a new inode (not yet named) of volume @vol. */
int pl_meta_new(struct pl_inode *pi, struct pl_sb_info *vol)
{
	struct inode *inode = &pi->vfs_inode;
	struct pl_pnode *pn = pl_pn_alloc();
	int ret = 0;

	if (!pn)
		return -ENOMEM;
	mutex_lock(&pl_meta.lock);
	pn->vol = vol;
	pn->mode = inode->i_mode;
	pn->uid = inode->i_uid;
	pn->gid = inode->i_gid;
	pn->pi = pi;
	pn->id = pl_meta.next_id++;
	pi->pn = pn;
	list_add_tail(&pn->node, &pl_meta.nodes);
	if (!vol->root) {
		/* The root of a new volume: recorded at once. */
		if (!pl_meta_fits(pl_rec_vol_len() + pl_rec_node_len(0))) {
			pl_pn_free(pn);
			pi->pn = NULL;
			ret = -ENOSPC;
			goto out;
		}
		vol->root = pn;
		pl_meta.bytes += pl_rec_vol_len() + pl_rec_node_len(0);
		pl_meta_commit();
	}
out:
	mutex_unlock(&pl_meta.lock);
	return ret;
}

/*
 * @dentry in @dir now names @inode (create, mkdir, link): record the name.
 * -ENOSPC if the area cannot hold it; nothing changes then.
 */
int pl_meta_link(struct inode *dir, struct dentry *dentry, struct inode *inode)
{
	struct pl_pnode *parent = PL_I(dir)->pn, *target = PL_I(inode)->pn;
	struct pl_pname *nm;
	u64 more;

	if (!parent || !target)
		return 0;
	nm = pl_name_alloc(parent, target, dentry->d_name.name,
			   dentry->d_name.len);
	if (!nm)
		return -ENOMEM;
	mutex_lock(&pl_meta.lock);
	more = pl_rec_name_len(nm->len);
	if (!pl_pn_recorded(target))
		more += pl_rec_node_len(target->nr_ext);
	if (!pl_meta_fits(more)) {
		mutex_unlock(&pl_meta.lock);
		kfree(nm);
		return -ENOSPC;
	}
	pl_name_add(nm);
	dentry->d_fsdata = nm;
	pl_meta_commit();
	mutex_unlock(&pl_meta.lock);
	return 0;
}

/* @dentry is being unlinked or removed. */
void pl_meta_unlink(struct dentry *dentry)
{
	struct pl_pname *nm = dentry->d_fsdata;

	if (!nm)
		return;
	mutex_lock(&pl_meta.lock);
	dentry->d_fsdata = NULL;
	pl_name_del(nm);
	pl_meta_commit();
	mutex_unlock(&pl_meta.lock);
}

/*
 * Before a rename of @old to @new (in @new_dir): whether the area holds the
 * longer name.  -ENOSPC if not.
 */
int pl_meta_rename_check(struct dentry *old, struct dentry *new,
			 unsigned int flags)
{
	struct pl_pname *a = old->d_fsdata, *b = new->d_fsdata;
	u64 more = 0;
	int ret = 0;

	mutex_lock(&pl_meta.lock);
	if (a)
		more += pl_rec_name_len(new->d_name.len) - pl_rec_name_len(a->len);
	if (b && (flags & RENAME_EXCHANGE))
		more += pl_rec_name_len(old->d_name.len) - pl_rec_name_len(b->len);
	if ((s64)more > 0 && !pl_meta_fits(more))
		ret = -ENOSPC;
	mutex_unlock(&pl_meta.lock);
	return ret;
}

/* Point @nm at (@parent, @name); false if out of memory. */
static struct pl_pname *pl_name_move(struct pl_pname *nm,
				     struct pl_pnode *parent,
				     const struct qstr *name)
{
	struct pl_pname *n = pl_name_alloc(parent, nm->target, name->name,
					   name->len);

	if (!n)
		return NULL;
	list_replace(&nm->node, &n->node);
	pl_meta.bytes += pl_rec_name_len(n->len) - pl_rec_name_len(nm->len);
	kfree(nm);
	return n;
}

/*
 * After a successful rename of @old (in @old_dir) to @new (in @new_dir),
 * called before the VFS moves the dentries (their names are the old ones).
 */
void pl_meta_rename(struct inode *old_dir, struct dentry *old,
		    struct inode *new_dir, struct dentry *new,
		    unsigned int flags)
{
	struct pl_pname *a = old->d_fsdata, *b = new->d_fsdata, *n;
	struct pl_pnode *op = PL_I(old_dir)->pn, *np = PL_I(new_dir)->pn;

	mutex_lock(&pl_meta.lock);
	if (flags & RENAME_EXCHANGE) {
		if (b) {
			n = pl_name_move(b, op, &old->d_name);
			new->d_fsdata = n ? n : b;
		}
	} else if (b) {
		/* The victim was unlinked by simple_rename(). */
		new->d_fsdata = NULL;
		pl_name_del(b);
	}
	if (a) {
		n = pl_name_move(a, np, &new->d_name);
		old->d_fsdata = n ? n : a;
	}
	pl_meta_commit();
	mutex_unlock(&pl_meta.lock);
}

/* Mode, owner or seals of @inode changed. */
void pl_meta_attr(struct inode *inode)
{
	struct pl_pnode *pn = PL_I(inode)->pn;

	if (!pn)
		return;
	mutex_lock(&pl_meta.lock);
	if (pn->mode == inode->i_mode && uid_eq(pn->uid, inode->i_uid) &&
	    gid_eq(pn->gid, inode->i_gid) && pn->seals == PL_I(inode)->seals)
		goto out;	/* times only: not recorded */
	pn->mode = inode->i_mode;
	pn->uid = inode->i_uid;
	pn->gid = inode->i_gid;
	pn->seals = PL_I(inode)->seals;
	if (pl_pn_recorded(pn))
		pl_meta_commit();
out:
	mutex_unlock(&pl_meta.lock);
}

/*
 * @pi's extents become @ex (NULL: none) and its size @size.  Growing calls
 * it before the new extents are used, shrinking before the cut ones are
 * freed.  -ENOSPC if the area cannot hold more extents, -ENOMEM; nothing
 * changes then.
 */
int pl_meta_layout(struct pl_inode *pi, const struct pl_extents *ex, u64 size)
{
	struct pl_pnode *pn = pi->pn;
	unsigned int nr = ex ? ex->nr : 0;
	struct pl_extent *copy = NULL;

	if (!pn)
		return 0;
	/* Shrinking needs no memory: it cannot fail. */
	if (nr > pn->nr_ext) {
		copy = kvmalloc_array(nr, sizeof(*copy), GFP_KERNEL);
		if (!copy)
			return -ENOMEM;
	}
	mutex_lock(&pl_meta.lock);
	if (copy && pl_pn_recorded(pn) &&
	    !pl_meta_fits(pl_rec_node_len(nr) - pl_rec_node_len(pn->nr_ext))) {
		mutex_unlock(&pl_meta.lock);
		kvfree(copy);
		return -ENOSPC;
	}
	if (pl_pn_recorded(pn))
		pl_meta.bytes += pl_rec_node_len(nr) - pl_rec_node_len(pn->nr_ext);
	if (copy)
		swap(pn->ext, copy);
	if (nr)
		memcpy(pn->ext, ex->ext, nr * sizeof(*pn->ext));
	pn->nr_ext = nr;
	pn->size = size;
	if (pl_pn_recorded(pn))
		pl_meta_commit();
	mutex_unlock(&pl_meta.lock);
	kvfree(copy);
	return 0;
}

/*
 * @pi is being evicted.  If it is still recorded (a superblock going away
 * with the file linked), its record stays, with the processes that mapped it
 * (for the quarantine once it is freed), and true is returned: its extents
 * stay allocated.  Else the record goes and false is returned.
 */
bool pl_meta_evict(struct pl_inode *pi)
{
	struct pl_pnode *pn = pi->pn;
	bool keep;

	if (!pn)
		return false;
	mutex_lock(&pl_meta.lock);
	pi->pn = NULL;
	pn->pi = NULL;
	keep = pl_pn_recorded(pn);
	if (keep) {
		pn->mappers = pl_mappers_take(pi);
		/* Until it is mounted again: see pl_meta_attach(). */
		if (pn->mappers)
			__module_get(THIS_MODULE);
	} else {
		pl_pn_free(pn);
	}
	mutex_unlock(&pl_meta.lock);
	return keep;
}

static struct pl_pname *pl_name_find_child(struct pl_pname *from,
					   struct pl_pnode *parent)
{
	struct pl_pname *nm = from ? list_next_entry(from, node) :
			      list_first_entry(&pl_meta.names,
					       struct pl_pname, node);

	for (; !list_entry_is_head(nm, &pl_meta.names, node);
	     nm = list_next_entry(nm, node))
		if (nm->parent == parent)
			return nm;
	return NULL;
}

/* An inode for @pn, with its extents, attributes and mappers. */
static struct inode *pl_pn_inode(struct super_block *sb, struct pl_pnode *pn)
{
	struct inode *inode;
	struct pl_inode *pi;
	unsigned int i;
	u64 off = 0;

	if (pn->pi)
		return igrab(&pn->pi->vfs_inode);
	inode = pl_new_inode(sb, NULL, pn->mode);
	if (!inode)
		return NULL;
	pi = PL_I(inode);
	inode->i_uid = pn->uid;
	inode->i_gid = pn->gid;
	pi->seals = pn->seals;
	if (S_ISREG(pn->mode) && pn->nr_ext) {
		pi->layout = pl_extents_alloc(pn->nr_ext);
		if (!pi->layout) {
			iput(inode);
			return NULL;
		}
		for (i = 0; i < pn->nr_ext; i++) {
			pi->layout->ext[i] = pn->ext[i];
			pi->layout->ext[i].off = off;
			off += pn->ext[i].len;
		}
		pi->layout->nr = pn->nr_ext;
		i_size_write(inode, pn->size);
		inode->i_blocks = pn->size >> 9;
	}
	pi->pn = pn;
	pn->pi = pi;
	if (pn->mappers) {
		pl_mappers_give(pi, pn->mappers);
		pn->mappers = NULL;
		module_put(THIS_MODULE);
	}
	if (S_ISREG(pn->mode))
		pl_mf_sync(pi);
	return inode;
}

/*
 * Populate the new superblock @sb of volume @vol, whose root inode exists:
 * every recorded directory and file of the volume gets its inode and
 * dentries back.  Directories have one name, so parents come first in a
 * walk from the root.
 */
int pl_meta_attach(struct super_block *sb, struct pl_sb_info *vol)
{
	struct dentry *dir = sb->s_root, *d;
	struct pl_pname *nm = NULL;
	struct inode *inode;
	struct qstr q;
	int ret = 0;

	mutex_lock(&pl_meta.lock);
	vol->sb = sb;
	for (;;) {
		struct pl_pnode *parent = PL_I(d_inode(dir))->pn;

		nm = pl_name_find_child(nm, parent);
		if (!nm) {
			/* Done with @dir: back to the entry that named it. */
			if (dir == sb->s_root)
				break;
			nm = dir->d_fsdata;
			dir = dir->d_parent;
			continue;
		}
		q.name = nm->name;
		q.hash_len = hashlen_create(full_name_hash(dir, nm->name,
							   nm->len), nm->len);
		d = d_alloc(dir, &q);
		if (!d) {
			ret = -ENOMEM;
			break;
		}
		inode = pl_pn_inode(sb, nm->target);
		if (!inode) {
			dput(d);
			ret = -ENOMEM;
			break;
		}
		d->d_fsdata = nm;
		d_add(d, NULL);
		pl_d_pin(d, inode);
		if (S_ISDIR(inode->i_mode)) {
			inc_nlink(d_inode(dir));
			dput(d);
			dir = d;
			nm = NULL;
			continue;
		}
		if (nm->target->names > 1)
			set_nlink(inode, nm->target->names);
		dput(d);
	}
	mutex_unlock(&pl_meta.lock);
	return ret;
}

/*
 * The root inode of @vol for a new superblock @sb: NULL if the volume has
 * none yet (new), else its recorded root.
 */
struct inode *pl_meta_root(struct super_block *sb, struct pl_sb_info *vol)
{
	struct inode *inode = NULL;

	mutex_lock(&pl_meta.lock);
	if (vol->root) {
		inode = pl_pn_inode(sb, vol->root);
		if (!inode)
			inode = ERR_PTR(-ENOMEM);
	}
	mutex_unlock(&pl_meta.lock);
	return inode;
}

/*
 * Forget @vol if it is unused (not mounted, no mount being set up) and has no
 * file or directory.  pl_meta.lock held.
 */
static void pl_vol_gc(struct pl_sb_info *vol)
{
	struct pl_pname *nm;

	if (vol->sb || vol->refs)
		return;
	list_for_each_entry(nm, &pl_meta.names, node)
		if (nm->parent == vol->root)
			return;
	if (vol->root) {
		if (vol->root->mappers) {
			pl_mappers_drop(vol->root->mappers);
			module_put(THIS_MODULE);
		}
		pl_pn_free(vol->root);
		pl_meta.bytes -= pl_rec_node_len(0) + pl_rec_vol_len();
	}
	list_del(&vol->node);
	kfree(vol);
	pl_meta_commit();
}

/* The superblock of @vol is gone (every inode evicted). */
void pl_meta_umount(struct pl_sb_info *vol)
{
	mutex_lock(&pl_meta.lock);
	vol->sb = NULL;
	pl_vol_gc(vol);
	mutex_unlock(&pl_meta.lock);
}

/* Drop the reference of pl_meta_vol(). */
void pl_meta_vol_put(struct pl_sb_info *vol)
{
	if (!vol)
		return;
	mutex_lock(&pl_meta.lock);
	vol->refs--;
	pl_vol_gc(vol);
	mutex_unlock(&pl_meta.lock);
}

/* --- load --------------------------------------------------------------- */

/*
 * Where the area goes for the ranges= set: the top PL_META_SIZE bytes of the
 * highest range whose top does not lie in a 1 GiB-aligned GiB wholly inside
 * it (so no 1 GiB page is lost), else of the highest range; ranges of
 * PL_META_SIZE or less are never used.  False if no range can hold it.
 */
static bool pl_meta_place(unsigned int n, const u64 *start, const u64 *size,
			  u64 *phys)
{
	u64 best = 0, any = 0;
	unsigned int i;

	for (i = 0; i < n; i++) {
		u64 end = start[i] + size[i];
		u64 gib = round_down(end - 1, SZ_1G);

		if (size[i] <= PL_META_SIZE)
			continue;
		any = max(any, end);
		if (gib < start[i] || gib + SZ_1G > end)
			best = max(best, end);
	}
	if (!best)
		best = any;
	*phys = best - PL_META_SIZE;
	return best;
}

static int pl_range_cmp(const void *a, const void *b)
{
	u64 x = le64_to_cpu(((const struct pl_meta_range *)a)->start);
	u64 y = le64_to_cpu(((const struct pl_meta_range *)b)->start);

	return x < y ? -1 : x > y;
}

/* Validated records, while the payload is parsed. */
struct pl_meta_load {
	struct xarray ids;		/* id -> struct pl_pnode */
	struct list_head vols;
	struct list_head nodes;
	struct list_head names;
	u32 max_id;
	struct pl_extent *ext;		/* every extent, for the overlap check */
	unsigned int nr_ext;
	unsigned int cap_ext;
};

static void pl_load_free(struct pl_meta_load *l)
{
	struct pl_pname *nm, *tnm;
	struct pl_pnode *pn, *tpn;
	struct pl_sb_info *v, *tv;

	list_for_each_entry_safe(nm, tnm, &l->names, node) {
		list_del(&nm->node);
		kfree(nm);
	}
	list_for_each_entry_safe(pn, tpn, &l->nodes, node)
		pl_pn_free(pn);
	list_for_each_entry_safe(v, tv, &l->vols, node) {
		list_del(&v->node);
		kfree(v);
	}
	xa_destroy(&l->ids);
	kvfree(l->ext);
}

static int pl_ext_cmp(const void *a, const void *b)
{
	const struct pl_extent *x = a, *y = b;

	return x->phys < y->phys ? -1 : x->phys > y->phys;
}

static int pl_name_cmp(const void *a, const void *b)
{
	const struct pl_pname *x = *(struct pl_pname * const *)a;
	const struct pl_pname *y = *(struct pl_pname * const *)b;
	int c;

	if (x->parent != y->parent)
		return x->parent->id < y->parent->id ? -1 : 1;
	c = memcmp(x->name, y->name, min(x->len, y->len));
	if (c)
		return c;
	return x->len < y->len ? -1 : x->len > y->len;
}

static struct pl_pnode *pl_load_id(struct pl_meta_load *l, u32 id)
{
	return xa_load(&l->ids, id);
}

static int pl_load_vol(struct pl_meta_load *l, const struct pl_meta_vol *r,
		       const char **why)
{
	struct pl_sb_info *v, *o;
	s32 nid = (s32)le32_to_cpu(r->nid);

	v = kzalloc(sizeof(*v), GFP_KERNEL);
	if (!v)
		return -ENOMEM;
	list_add_tail(&v->node, &l->vols);
	v->psize = le64_to_cpu(r->psize);
	v->nid = nid < 0 ? NUMA_NO_NODE : nid;
	v->uid = make_kuid(&init_user_ns, le32_to_cpu(r->uid));
	v->gid = make_kgid(&init_user_ns, le32_to_cpu(r->gid));
	v->mode = le32_to_cpu(r->mode);
	/* The root id, resolved once the nodes are read. */
	v->root = (struct pl_pnode *)(uintptr_t)le32_to_cpu(r->root);
	*why = "volume with a bad page size, node, owner or mode";
	if (v->psize != SZ_4K && v->psize != SZ_2M && v->psize != SZ_1G)
		return -EINVAL;
	if (nid != -1 && (nid < 0 || nid >= MAX_NUMNODES ||
			  !pl_pool_has_node(nid)))
		return -EINVAL;
	if (!uid_valid(v->uid) || !gid_valid(v->gid) || v->mode & ~S_IALLUGO)
		return -EINVAL;
	*why = "two volumes with the same mount options";
	list_for_each_entry(o, &l->vols, node)
		if (o != v && o->psize == v->psize && o->nid == v->nid &&
		    uid_eq(o->uid, v->uid) && gid_eq(o->gid, v->gid) &&
		    o->mode == v->mode)
			return -EINVAL;
	return 0;
}

static int pl_load_node(struct pl_meta_load *l, const struct pl_meta_node *r,
			unsigned int nr_ext, const char **why)
{
	struct pl_pnode *pn = pl_pn_alloc();
	u64 sum = 0;
	unsigned int i;
	int ret;

	if (!pn)
		return -ENOMEM;
	list_add_tail(&pn->node, &l->nodes);
	pn->id = le32_to_cpu(r->id);
	pn->mode = le32_to_cpu(r->mode);
	pn->uid = make_kuid(&init_user_ns, le32_to_cpu(r->uid));
	pn->gid = make_kgid(&init_user_ns, le32_to_cpu(r->gid));
	pn->seals = le32_to_cpu(r->seals);
	pn->size = le64_to_cpu(r->size);
	/* The volume's root id, resolved later. */
	pn->vol = (struct pl_sb_info *)(uintptr_t)le32_to_cpu(r->vol);
	*why = "node with a bad id, type, owner or seals";
	if (!pn->id || !uid_valid(pn->uid) || !gid_valid(pn->gid) ||
	    (pn->mode & ~(S_IFMT | S_IALLUGO)) ||
	    (!S_ISREG(pn->mode) && !S_ISDIR(pn->mode)) ||
	    (pn->seals & ~PAGELESS_SEALS_ALL))
		return -EINVAL;
	*why = "directory with extents";
	if (S_ISDIR(pn->mode) && (nr_ext || pn->size))
		return -EINVAL;
	*why = "two nodes with one id";
	ret = xa_insert(&l->ids, pn->id, pn, GFP_KERNEL);
	if (ret)
		return ret == -EBUSY ? -EINVAL : ret;
	l->max_id = max(l->max_id, pn->id);
	if (nr_ext) {
		pn->ext = kvmalloc_array(nr_ext, sizeof(*pn->ext), GFP_KERNEL);
		if (!pn->ext)
			return -ENOMEM;
	}
	for (i = 0; i < nr_ext; i++) {
		pn->ext[i].off = sum;
		pn->ext[i].phys = le64_to_cpu(r->ext[i].phys);
		pn->ext[i].len = le64_to_cpu(r->ext[i].len);
		*why = "empty or wrapping extent";
		if (!pn->ext[i].len ||
		    pn->ext[i].phys + pn->ext[i].len < pn->ext[i].phys ||
		    sum + pn->ext[i].len < sum)
			return -EINVAL;
		sum += pn->ext[i].len;
	}
	pn->nr_ext = nr_ext;
	*why = "size is not the sum of the extents";
	if (sum != pn->size)
		return -EINVAL;
	return 0;
}

static int pl_load_name(struct pl_meta_load *l, const struct pl_meta_name *r,
			unsigned int len, const char **why)
{
	struct pl_pnode *parent = pl_load_id(l, le32_to_cpu(r->parent));
	struct pl_pnode *target = pl_load_id(l, le32_to_cpu(r->target));
	struct pl_pname *nm;

	*why = "name of an unknown node or in an unknown directory";
	if (!parent || !target || !S_ISDIR(parent->mode))
		return -EINVAL;
	*why = "bad name ('/', NUL, \".\" or \"..\")";
	if (memchr(r->name, '/', len) || memchr(r->name, '\0', len) ||
	    (len == 1 && r->name[0] == '.') ||
	    (len == 2 && r->name[0] == '.' && r->name[1] == '.'))
		return -EINVAL;
	nm = pl_name_alloc(parent, target, r->name, len);
	if (!nm)
		return -ENOMEM;
	list_add_tail(&nm->node, &l->names);
	target->names++;
	*why = "directory with two names";
	if (S_ISDIR(target->mode)) {
		if (target->up)
			return -EINVAL;
		target->up = nm;
	}
	return 0;
}

/* Read the records of @p (@len bytes); the nodes must precede the names. */
static int pl_load_records(struct pl_meta_load *l, const u8 *p, u32 len,
			   const char **why)
{
	const u8 *end = p + len;
	int ret;

	while (p < end) {
		const struct pl_meta_rec *rec = (const void *)p;
		u32 rlen, n;

		*why = "truncated or misaligned record";
		if (end - p < sizeof(*rec))
			return -EINVAL;
		rlen = le32_to_cpu(rec->len);
		if (rlen < sizeof(*rec) || rlen % 8 || rlen > end - p)
			return -EINVAL;
		switch (le16_to_cpu(rec->type)) {
		case PL_REC_VOL:
			if (rlen != pl_rec_vol_len())
				return -EINVAL;
			ret = pl_load_vol(l, (const void *)p, why);
			break;
		case PL_REC_NODE:
			if (rlen < pl_rec_node_len(0))
				return -EINVAL;
			n = le32_to_cpu(((const struct pl_meta_node *)p)->nr_ext);
			if (n > (rlen - pl_rec_node_len(0)) /
				sizeof(struct pl_meta_ext) ||
			    rlen != pl_rec_node_len(n))
				return -EINVAL;
			ret = pl_load_node(l, (const void *)p, n, why);
			break;
		case PL_REC_NAME:
			n = le16_to_cpu(rec->name_len);
			if (!n || n > PL_NAME_MAX || rlen != pl_rec_name_len(n))
				return -EINVAL;
			ret = pl_load_name(l, (const void *)p, n, why);
			break;
		default:
			*why = "unknown record type";
			return -EINVAL;
		}
		if (ret)
			return ret;
		p += rlen;
	}
	return 0;
}

/* The whole-state checks, after every record is read. */
static int pl_load_check(struct pl_meta_load *l, const char **why)
{
	struct pl_pname **sorted = NULL, *nm;
	struct pl_sb_info *v;
	struct pl_pnode *pn, *up;
	unsigned int i, n = 0, steps;
	int ret = -EINVAL;

	list_for_each_entry(v, &l->vols, node) {
		pn = pl_load_id(l, (uintptr_t)v->root);
		*why = "volume root is not a directory, or a root of two volumes";
		if (!pn || !S_ISDIR(pn->mode) || pn->up || pn->ok)
			return -EINVAL;
		pn->ok = true;	/* marks roots until the tree walk */
		v->root = pn;
	}
	list_for_each_entry(pn, &l->nodes, node) {
		u32 root = (uintptr_t)pn->vol;

		pn->vol = NULL;
		list_for_each_entry(v, &l->vols, node)
			if (v->root->id == root)
				pn->vol = v;
		*why = "node of an unknown volume";
		if (!pn->vol)
			return -EINVAL;
		*why = "node without a name";
		if (!pn->names && pn->vol->root != pn)
			return -EINVAL;
		*why = "root directory with a name";
		if (pn->vol->root == pn && pn->names)
			return -EINVAL;
		for (i = 0; i < pn->nr_ext; i++) {
			struct pl_extent *e = &pn->ext[i];

			*why = "extent not aligned to the volume's page size";
			if (!IS_ALIGNED(e->phys | e->len, pn->vol->psize))
				return -EINVAL;
			*why = "extent outside the pool or off the volume's node";
			if (!pl_pool_extent_ok(e->phys, e->len, pn->vol->nid))
				return -EINVAL;
			if (l->nr_ext == l->cap_ext) {
				struct pl_extent *g;

				g = kvrealloc(l->ext,
					      (l->cap_ext * 2 + 64) * sizeof(*g),
					      GFP_KERNEL);
				if (!g)
					return -ENOMEM;
				l->ext = g;
				l->cap_ext = l->cap_ext * 2 + 64;
			}
			l->ext[l->nr_ext++] = *e;
		}
	}
	sort(l->ext, l->nr_ext, sizeof(*l->ext), pl_ext_cmp, NULL);
	*why = "two extents overlap";
	for (i = 1; i < l->nr_ext; i++)
		if (l->ext[i - 1].phys + l->ext[i - 1].len > l->ext[i].phys)
			return -EINVAL;

	list_for_each_entry(nm, &l->names, node) {
		*why = "name and its node in different volumes";
		if (nm->parent->vol != nm->target->vol)
			return -EINVAL;
		n++;
	}
	sorted = kvmalloc_array(n ? n : 1, sizeof(*sorted), GFP_KERNEL);
	if (!sorted)
		return -ENOMEM;
	i = 0;
	list_for_each_entry(nm, &l->names, node)
		sorted[i++] = nm;
	sort(sorted, n, sizeof(*sorted), pl_name_cmp, NULL);
	*why = "two entries with one name in a directory";
	for (i = 1; i < n; i++)
		if (!pl_name_cmp(&sorted[i - 1], &sorted[i]))
			goto out;

	/* Every directory reaches its root: no cycles. */
	*why = "directories form a cycle";
	list_for_each_entry(pn, &l->nodes, node) {
		if (!S_ISDIR(pn->mode))
			continue;
		steps = 0;
		for (up = pn; !up->ok; up = up->up->parent)
			if (++steps > n)
				goto out;
		for (up = pn; !up->ok; up = up->up->parent)
			up->ok = true;
	}
	ret = 0;
out:
	kvfree(sorted);
	return ret;
}

/* Check @slot's header; its generation in *@gen.  NULL if valid. */
static const char *pl_slot_check(const u8 *slot, u64 *gen)
{
	struct pl_meta_hdr h;
	u32 crc, len;
	unsigned int i;

	memcpy(&h, slot, sizeof(h));
	if (le32_to_cpu(h.magic) != PL_META_MAGIC)
		return "no metadata";
	*gen = le64_to_cpu(h.gen);
	crc = le32_to_cpu(h.hdr_crc);
	h.hdr_crc = 0;
	h.magic = 0;
	if (crc32_le(~0, (const u8 *)&h, sizeof(h)) != crc)
		return "header checksum mismatch";
	if (le32_to_cpu(h.version) != PL_META_VERSION)
		return "unknown format version";
	len = le32_to_cpu(h.payload_len);
	if (len > PL_META_CAP ||
	    crc32_le(~0, slot + PL_META_HDR, len) !=
	    le32_to_cpu(h.payload_crc))
		return "payload checksum mismatch (torn or corrupted)";
	if (le32_to_cpu(h.nr_ranges) != pl_meta.nr_ranges)
		return "recorded for another ranges= set";
	for (i = 0; i < pl_meta.nr_ranges; i++)
		if (h.range[i].start != pl_meta.range[i].start ||
		    h.range[i].size != pl_meta.range[i].size)
			return "recorded for another ranges= set";
	return NULL;
}

/* Adopt the validated state of @l. */
static void pl_load_adopt(struct pl_meta_load *l)
{
	list_splice_tail_init(&l->vols, &pl_meta.vols);
	list_splice_tail_init(&l->nodes, &pl_meta.nodes);
	list_splice_tail_init(&l->names, &pl_meta.names);
	pl_meta.next_id = l->max_id + 1;
}

/*
 * Believe a slot's payload (1, the records in @l) or not (0: the pool starts
 * empty), or -ENOMEM.
 */
static int pl_meta_read(struct pl_meta_load *l)
{
	const char *why[2], *bad;
	unsigned int i, pick;
	struct pl_pnode *pn;
	u64 gen[2] = {};
	u8 *slot[2];
	int ret;

	for (i = 0; i < 2; i++) {
		slot[i] = pl_meta.area + i * PL_META_SLOT;
		why[i] = pl_slot_check(slot[i], &gen[i]);
	}
	if (why[0] && why[1]) {
		if (!strcmp(why[0], "no metadata") &&
		    !strcmp(why[1], "no metadata")) {
			pr_info("metadata at %#llx: none yet, the pool starts empty\n",
				pl_meta.phys);
		} else {
			pr_err("metadata at %#llx not believed: slot A: %s, slot B: %s; scrubbing the whole pool\n",
			       pl_meta.phys, why[0], why[1]);
		}
		pl_meta.gen = max(gen[0], gen[1]);
		return 0;
	}
	pick = why[0] ? 1 : why[1] ? 0 : gen[1] > gen[0];
	if (why[!pick] && strcmp(why[!pick], "no metadata"))
		pr_warn("metadata at %#llx: slot %c (generation %llu): %s; believing slot %c (generation %llu)\n",
			pl_meta.phys, 'A' + !pick, gen[!pick], why[!pick],
			'A' + pick, gen[pick]);
	pl_meta.gen = gen[pick];
	ret = pl_load_records(l, slot[pick] + PL_META_HDR,
			      le32_to_cpu(((struct pl_meta_hdr *)slot[pick])->payload_len),
			      &bad);
	if (!ret)
		ret = pl_load_check(l, &bad);
	if (ret == -ENOMEM)
		return ret;
	if (ret) {
		pr_err("metadata at %#llx not believed: generation %llu: %s; scrubbing the whole pool\n",
		       pl_meta.phys, gen[pick], bad);
		pl_load_free(l);
		xa_init(&l->ids);
		INIT_LIST_HEAD(&l->vols);
		INIT_LIST_HEAD(&l->nodes);
		INIT_LIST_HEAD(&l->names);
		l->ext = NULL;
		l->nr_ext = 0;
		l->cap_ext = 0;
		return 0;
	}
	i = 0;
	list_for_each_entry(pn, &l->nodes, node)
		i += S_ISREG(pn->mode);
	pr_info("metadata at %#llx: generation %llu: recovered %u files in %zu volumes, %u extents\n",
		pl_meta.phys, gen[pick], i, list_count_nodes(&l->vols),
		l->nr_ext);
	return 1;
}

/*
 * At load, after every range is claimed and before anything is scrubbed:
 * place the area, believe its metadata or not, and hand the pool everything
 * but the area and the recovered files' extents for scrubbing.
 */
int pl_meta_load(unsigned int n, const u64 *start, const u64 *size)
{
	struct pl_meta_load l = {
		.vols = LIST_HEAD_INIT(l.vols),
		.nodes = LIST_HEAD_INIT(l.nodes),
		.names = LIST_HEAD_INIT(l.names),
	};
	unsigned int i;
	int ret = 0;

	xa_init(&l.ids);
	/* The ranges= set, sorted: the order of the list does not matter. */
	for (i = 0; i < n && i < PL_META_MAX_RANGES; i++) {
		pl_meta.range[i].start = cpu_to_le64(start[i]);
		pl_meta.range[i].size = cpu_to_le64(size[i]);
	}
	pl_meta.nr_ranges = i;
	sort(pl_meta.range, i, sizeof(*pl_meta.range), pl_range_cmp, NULL);
	if (!pl_meta_place(n, start, size, &pl_meta.phys)) {
		pr_warn("no range larger than %lu MiB for the metadata: files do not survive a reload or kexec\n",
			(unsigned long)(PL_META_SIZE >> 20));
		goto scrub;
	}
	pl_meta.area = pl_pool_virt(pl_meta.phys);
	ret = pl_pool_carve(pl_meta.phys, PL_META_SIZE);
	if (ret)
		goto out;
	if (discard) {
		pr_info("discard=1: files recorded at %#llx are discarded, scrubbing the whole pool\n",
			pl_meta.phys);
		for (i = 0; i < 2; i++) {
			u64 gen = 0;

			pl_slot_check(pl_meta.area + i * PL_META_SLOT, &gen);
			pl_meta.gen = max(pl_meta.gen, gen);
		}
	} else {
		ret = pl_meta_read(&l);
		if (ret < 0)
			goto out;
	}
	if (ret <= 0) {
		/*
		 * Nothing believed: neither slot may be believed later either
		 * (the memory is scrubbed and given to new files now).
		 */
		for (i = 0; i < 2; i++)
			WRITE_ONCE(((struct pl_meta_hdr *)(pl_meta.area +
				     i * PL_META_SLOT))->magic, 0);
		wmb();	/* both invalid before the new generation */
	}
	mutex_lock(&pl_meta.lock);
	pl_load_adopt(&l);
	pl_meta_commit();
	mutex_unlock(&pl_meta.lock);
scrub:
	ret = pl_pool_scrub_except(l.ext, l.nr_ext);
out:
	pl_load_free(&l);
	return ret;
}

/* Unload: forget the in-memory state; the area keeps the files. */
void pl_meta_exit(void)
{
	struct pl_meta_load l = {
		.vols = LIST_HEAD_INIT(l.vols),
		.nodes = LIST_HEAD_INIT(l.nodes),
		.names = LIST_HEAD_INIT(l.names),
	};

	xa_init(&l.ids);
	mutex_lock(&pl_meta.lock);
	list_splice_init(&pl_meta.vols, &l.vols);
	list_splice_init(&pl_meta.nodes, &l.nodes);
	list_splice_init(&pl_meta.names, &l.names);
	pl_meta.area = NULL;
	mutex_unlock(&pl_meta.lock);
	pl_load_free(&l);
}
