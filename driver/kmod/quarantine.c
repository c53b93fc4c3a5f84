// SPDX-License-Identifier: GPL-2.0
/*
 * DMA isolation: the quarantine.
 *
 * VFIO type1 neither pins nor references VM_PFNMAP memory: an IOMMU mapping
 * made from a mapping of a pagelessfs file outlives the file's extents.  It
 * lasts until its process unmaps it or closes its VFIO container and device
 * fds, which happens at the latest when that process exits: do_exit() closes
 * the files after the mm is gone, so an mm going away is not enough.
 *
 * So every file remembers the processes (thread groups) that ever mapped it
 * (pl_mappers_add(), from ->mmap; the mappings are VM_DONTCOPY, so fork()
 * never makes one behind our back).  Extents freed from such a file
 * (truncate, eviction) go to the quarantine together with a reference to
 * each of those processes that still lives, and reach the scrubber only when
 * all of them have exited and closed their files: their thread group is gone,
 * or is a zombie leader without other threads.  A delayed work checks twice
 * a second while anything is quarantined; an allocation that does not fit
 * checks at once.  While memory is quarantined the module holds a reference
 * on itself, so it cannot be unloaded and its ranges handed to anyone else
 * under a live DMA mapping.
 *
 * Locking: pl_inode->mappers_lock protects pl_inode->mappers; pl_quar.lock
 * protects the quarantine.  Both are leaves: extents are handed to the
 * scrubber (pl_pool.lock) after dropping them.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/list.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/overflow.h>
#include <linux/pid.h>
#include <linux/rcupdate.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/workqueue.h>

#include "pageless.h"

/* How often the quarantine is checked while it is not empty. */
#define PL_QUARANTINE_PERIOD	(HZ / 2)

/* A set of processes (thread group ids, referenced). */
struct pl_pids {
	unsigned int nr;
	unsigned int cap;
	struct pid *pid[] __counted_by(cap);
};

/* Extents held back until every process in @pids is gone. */
struct pl_held {
	struct list_head node;
	struct pl_extents *ex;
	u64 bytes;
	struct pl_pids *pids;
};

static void pl_quarantine_work(struct work_struct *work);

static struct {
	struct mutex lock;		/* everything below */
	struct list_head held;		/* struct pl_held */
	u64 bytes;
} pl_quar = {
	.lock = __MUTEX_INITIALIZER(pl_quar.lock),
	.held = LIST_HEAD_INIT(pl_quar.held),
};

static DECLARE_DELAYED_WORK(pl_quar_work, pl_quarantine_work);

static struct pl_pids *pl_pids_alloc(unsigned int cap, gfp_t gfp)
{
	struct pl_pids *p = kvzalloc(struct_size(p, pid, cap), gfp);

	if (p)
		p->cap = cap;
	return p;
}

static void pl_pids_free(struct pl_pids *p)
{
	unsigned int i;

	if (!p)
		return;
	for (i = 0; i < p->nr; i++)
		put_pid(p->pid[i]);
	kvfree(p);
}

/*
 * Whether the process @pid can no longer hold a DMA mapping: its thread
 * group is gone, or only its zombie leader is left.  Every thread ran
 * exit_files() before it was released, and the leader before it became a
 * zombie.
 */
static bool pl_pid_gone(struct pid *pid)
{
	struct task_struct *leader;
	bool gone;

	rcu_read_lock();
	leader = pid_task(pid, PIDTYPE_TGID);
	gone = !leader || (leader->exit_state && thread_group_empty(leader));
	rcu_read_unlock();
	return gone;
}

/* Drop the processes of @p that are gone. */
static void pl_pids_prune(struct pl_pids *p)
{
	unsigned int i, n = 0;

	for (i = 0; i < p->nr; i++) {
		if (pl_pid_gone(p->pid[i]))
			put_pid(p->pid[i]);
		else
			p->pid[n++] = p->pid[i];
	}
	p->nr = n;
}

/*
 * Remember that @pid maps @pi.  Called from ->mmap; -ENOMEM makes the mmap
 * fail, never map untracked.
 */
int pl_mappers_add(struct pl_inode *pi, struct pid *pid)
{
	struct pl_pids *p, *grown;
	unsigned int i;
	int ret = 0;

	mutex_lock(&pi->mappers_lock);
	p = pi->mappers;
	for (i = 0; p && i < p->nr; i++)
		if (p->pid[i] == pid)
			goto out;
	if (p && p->nr == p->cap)
		pl_pids_prune(p);
	if (!p || p->nr == p->cap) {
		grown = pl_pids_alloc(p ? 2 * p->cap : 4, GFP_KERNEL);
		if (!grown) {
			ret = -ENOMEM;
			goto out;
		}
		if (p) {
			memcpy(grown->pid, p->pid, p->nr * sizeof(*p->pid));
			grown->nr = p->nr;
			kvfree(p);
		}
		pi->mappers = grown;
		p = grown;
	}
	p->pid[p->nr++] = get_pid(pid);
out:
	mutex_unlock(&pi->mappers_lock);
	return ret;
}

/*
 * The processes that mapped @pi and still live: moved out of @pi if @final
 * (the inode is being evicted), else copied.  NULL if there are none.
 */
static struct pl_pids *pl_live_mappers(struct pl_inode *pi, bool final)
{
	struct pl_pids *p, *copy = NULL;
	unsigned int i;

	mutex_lock(&pi->mappers_lock);
	p = pi->mappers;
	if (p)
		pl_pids_prune(p);
	if (!p || !p->nr)
		goto out;
	if (final) {
		copy = p;
		pi->mappers = NULL;
		goto out;
	}
	/* A few pointers; a free path cannot fail. */
	copy = pl_pids_alloc(p->nr, GFP_KERNEL | __GFP_NOFAIL);
	for (i = 0; i < p->nr; i++)
		copy->pid[i] = get_pid(p->pid[i]);
	copy->nr = p->nr;
out:
	mutex_unlock(&pi->mappers_lock);
	return copy;
}

/*
 * The processes that mapped @pi and still live, moved out of it: its
 * superblock is going away with the file still linked (persist.c keeps them
 * for when it is mounted again).
 */
struct pl_pids *pl_mappers_take(struct pl_inode *pi)
{
	return pl_live_mappers(pi, true);
}

/* Give a re-created inode the processes that mapped the file before. */
void pl_mappers_give(struct pl_inode *pi, struct pl_pids *p)
{
	pi->mappers = p;
}

void pl_mappers_drop(struct pl_pids *p)
{
	pl_pids_free(p);
}

/* Forget the mappers of an inode being evicted. */
void pl_mappers_free(struct pl_inode *pi)
{
	pl_pids_free(pi->mappers);
	pi->mappers = NULL;
}

/*
 * Free extents @ex of @pi (a shrunk tail, or everything at eviction when
 * @final): straight to the scrubber if no process that mapped the file
 * lives, else to the quarantine until they are all gone.  Takes ownership of
 * @ex.
 */
void pl_quarantine_free(struct pl_inode *pi, struct pl_extents *ex, bool final)
{
	struct pl_pids *pids;
	struct pl_held *h;
	unsigned int i;
	bool first;

	if (!ex)
		return;
	pids = pl_live_mappers(pi, final);
	if (!pids) {
		pl_pool_release(ex);
		return;
	}
	h = kmalloc(sizeof(*h), GFP_KERNEL | __GFP_NOFAIL);
	h->ex = ex;
	h->pids = pids;
	h->bytes = 0;
	for (i = 0; i < ex->nr; i++)
		h->bytes += ex->ext[i].len;

	mutex_lock(&pl_quar.lock);
	first = list_empty(&pl_quar.held);
	list_add_tail(&h->node, &pl_quar.held);
	pl_quar.bytes += h->bytes;
	mutex_unlock(&pl_quar.lock);
	if (first) {
		/* Dropped when the quarantine is empty again. */
		__module_get(THIS_MODULE);
		schedule_delayed_work(&pl_quar_work, PL_QUARANTINE_PERIOD);
	}
}

/*
 * Hand every quarantined set of extents whose processes are all gone to the
 * scrubber.  Returns how many were released.
 */
unsigned int pl_quarantine_reap(void)
{
	struct pl_held *h, *tmp;
	unsigned int n = 0;
	LIST_HEAD(done);
	bool empty;

	mutex_lock(&pl_quar.lock);
	if (list_empty(&pl_quar.held)) {
		mutex_unlock(&pl_quar.lock);
		return 0;
	}
	list_for_each_entry_safe(h, tmp, &pl_quar.held, node) {
		pl_pids_prune(h->pids);
		if (!h->pids->nr) {
			list_move_tail(&h->node, &done);
			pl_quar.bytes -= h->bytes;
		}
	}
	empty = list_empty(&pl_quar.held);
	mutex_unlock(&pl_quar.lock);

	list_for_each_entry_safe(h, tmp, &done, node) {
		list_del(&h->node);
		pl_pool_release(h->ex);
		pl_pids_free(h->pids);
		kfree(h);
		n++;
	}
	if (n && empty)
		module_put(THIS_MODULE);
	else if (!empty)	/* no-op while already pending */
		schedule_delayed_work(&pl_quar_work, PL_QUARANTINE_PERIOD);
	return n;
}

static void pl_quarantine_work(struct work_struct *work)
{
	pl_quarantine_reap();
}

/* Bytes held in the quarantine. */
u64 pl_quarantine_bytes(void)
{
	u64 bytes;

	mutex_lock(&pl_quar.lock);
	bytes = pl_quar.bytes;
	mutex_unlock(&pl_quar.lock);
	return bytes;
}

/* Unload: the module reference kept the quarantine empty. */
void pl_quarantine_exit(void)
{
	cancel_delayed_work_sync(&pl_quar_work);
	WARN_ON_ONCE(!list_empty(&pl_quar.held));
}
