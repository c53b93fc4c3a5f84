// SPDX-License-Identifier: GPL-2.0
/*
 * The pool: every range named by the ranges= parameter, as one free list of
 * physical extents (alloc.c), plus a queue of extents waiting to be zeroed.
 *
 * Each range is on one NUMA node: the node the kernel's NUMA map (the
 * firmware's SRAT on x86, via phys_to_target_node()) gives its addresses,
 * probed every 2 MiB; a range spanning nodes is split where the node changes.
 * Without NUMA, or for addresses the map does not cover, node 0.  Free
 * extents of different nodes never merge, so a request restricted to a node
 * (mount option node=) gets memory of that node only.
 *
 * Allocation is all-or-nothing: either every extent of a request is carved
 * from the free list or nothing changes.  Freed extents (truncate, eviction of
 * an unlinked file, the whole pool at load time) are zeroed by work items on
 * an unbound workqueue before they return to the free list; an allocation
 * that only fits once they are back waits for them (pl_pool.wq) instead of
 * failing.  Locking: pl_pool.lock (mutex), see pageless.h.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/align.h>
#include <linux/minmax.h>
#include <linux/mm.h>
#include <linux/mutex.h>
#include <linux/numa.h>
#include <linux/overflow.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/string.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "pageless.h"

#define PL_MAX_RANGES		64
#define PL_MAX_SCRUBBERS	16
/* Scrub work is handed out in pieces of at most this size. */
#define PL_SCRUB_PIECE		(256ULL << 20)
/* ... and zeroed in steps of this size, rescheduling in between. */
#define PL_SCRUB_STEP		(2ULL << 20)
/* Granularity of the node probe: ranges are 2 MiB aligned. */
#define PL_NODE_STEP		SZ_2M

struct pl_range {
	u64 start;
	u64 size;
	int nid;		/* NUMA node */
	void *virt;		/* memremap(MEMREMAP_WB) of the range */
};

static struct {
	struct mutex lock;		/* everything below but the ranges */
	struct list_head free;		/* struct pl_free, sorted, coalesced */
	struct list_head scrub;		/* struct pl_extents waiting for zeroing */
	u64 scrub_bytes;		/* queued or being zeroed */
	u64 gen;			/* bumped whenever bytes become free */
	bool stopping;			/* abandon scrubbing (failed load) */
	unsigned long poisoned;		/* pages retired after memory errors */
	wait_queue_head_t wq;		/* allocators waiting for scrubbing */
	struct workqueue_struct *wqueue;
	unsigned int nr_scrubbers;
	struct work_struct scrubbers[PL_MAX_SCRUBBERS];
	struct pl_piece {
		u64 phys;
		u64 len;	/* 0: idle */
		int nid;
	} inflight[PL_MAX_SCRUBBERS];	/* piece each scrubber is zeroing */
	unsigned int nr_ranges;		/* written only at load time */
	struct pl_range ranges[PL_MAX_RANGES];
} pl_pool;

/*
 * The kernel mapping of @phys, or NULL if it is not in the pool; *@avail
 * (if not NULL) gets the bytes up to the end of its range.  Adjacent ranges
 * coalesce in the free list, so an extent may span ranges whose kernel
 * mappings are not adjacent: kernel accesses must stop at *@avail.
 */
void *pl_pool_virt_len(u64 phys, u64 *avail)
{
	/* Pairs with the release in pl_pool_add_range_node(). */
	unsigned int i, n = smp_load_acquire(&pl_pool.nr_ranges);

	for (i = 0; i < n; i++) {
		struct pl_range *r = &pl_pool.ranges[i];

		if (phys >= r->start && phys - r->start < r->size) {
			if (avail)
				*avail = r->size - (phys - r->start);
			return r->virt + (phys - r->start);
		}
	}
	return NULL;
}

/* The node of @phys, which lies in a pool range. */
static int pl_range_nid(u64 phys)
{
	/* Pairs with the release in pl_pool_add_range_node(). */
	unsigned int i, n = smp_load_acquire(&pl_pool.nr_ranges);

	for (i = 0; i < n; i++) {
		struct pl_range *r = &pl_pool.ranges[i];

		if (phys >= r->start && phys - r->start < r->size)
			return r->nid;
	}
	WARN_ONCE(1, "phys %llx outside the pool\n", phys);
	return 0;
}

/*
 * Whether @a and @b, in pool ranges, are on one node: extents of a file merge
 * only then, so that no extent spans two nodes.
 */
bool pl_pool_same_node(u64 a, u64 b)
{
	return pl_range_nid(a) == pl_range_nid(b);
}

void *pl_pool_virt_quiet(u64 phys)
{
	return pl_pool_virt_len(phys, NULL);
}

/* The kernel mapping of @phys, which must lie in a pool range. */
void *pl_pool_virt(u64 phys)
{
	void *p = pl_pool_virt_quiet(phys);

	WARN_ONCE(!p, "phys %llx outside the pool\n", phys);
	return p;
}

/*
 * Return [phys, phys + len) to the free list, each part with the node of its
 * range (extents do not span nodes, but nothing here relies on it).  Called
 * with pl_pool.lock held.
 */
static void pl_free_extents_locked(u64 phys, u64 len)
{
	/* Pairs with the release in pl_pool_add_range_node(). */
	unsigned int i, n = smp_load_acquire(&pl_pool.nr_ranges);

	while (len) {
		struct pl_free *spare;
		u64 part = len;
		int nid = 0;

		for (i = 0; i < n; i++) {
			struct pl_range *r = &pl_pool.ranges[i];

			if (phys >= r->start && phys - r->start < r->size) {
				part = min(len, r->size - (phys - r->start));
				nid = r->nid;
				break;
			}
		}
		WARN_ONCE(i == n, "phys %llx outside the pool\n", phys);
		/*
		 * A free path cannot fail: the node is a few bytes, and the
		 * page allocator does not fail such requests in practice.
		 */
		spare = kmalloc(sizeof(*spare), GFP_KERNEL | __GFP_NOFAIL);
		pl_free_insert(&pl_pool.free, phys, part, nid, &spare);
		kfree(spare);
		phys += part;
		len -= part;
	}
}

/*
 * Zero [phys, phys + len) through the kernel mapping, in steps that never
 * cross a 2 MiB boundary, hence never a range boundary (ranges are 2 MiB
 * aligned).
 */
static void pl_zero_range(u64 phys, u64 len)
{
	while (len) {
		u64 n = min(len, PL_SCRUB_STEP - (phys & (PL_SCRUB_STEP - 1)));
		u8 *p = pl_pool_virt(phys);

		if (p)
			memset(p, 0, n);
		phys += n;
		len -= n;
		cond_resched();
	}
}

/*
 * Zero (@zero) or free (pl_pool.lock held) the runs of [phys, phys + len)
 * without a poisoned page.  Never touch those: reading or writing them raises
 * another machine check; they stay out of the free list for good.
 */
static void pl_clean_runs(u64 phys, u64 len, bool zero)
{
	u64 end = phys + len;

	while (phys < end) {
		unsigned long bad = pl_poison_first(PHYS_PFN(phys),
						    PHYS_PFN(end - 1));
		u64 stop = bad == ULONG_MAX ? end : PFN_PHYS(bad);

		if (stop > phys && zero)
			pl_zero_range(phys, stop - phys);
		else if (stop > phys)
			pl_free_extents_locked(phys, stop - phys);
		if (bad == ULONG_MAX)
			break;
		phys = stop + PAGE_SIZE;
	}
}

static void pl_scrub_work(struct work_struct *work)
{
	struct pl_piece *me = &pl_pool.inflight[work - pl_pool.scrubbers];

	for (;;) {
		struct pl_extents *ex, *done = NULL;
		struct pl_extent *e;
		u64 phys, len;

		mutex_lock(&pl_pool.lock);
		ex = list_first_entry_or_null(&pl_pool.scrub,
					      struct pl_extents, node);
		if (!ex || pl_pool.stopping) {
			mutex_unlock(&pl_pool.lock);
			return;
		}
		e = &ex->ext[ex->pos];
		phys = e->phys + ex->done;
		len = min(e->len - ex->done, PL_SCRUB_PIECE);
		ex->done += len;
		if (ex->done == e->len) {
			ex->pos++;
			ex->done = 0;
		}
		if (ex->pos == ex->nr) {
			list_del_init(&ex->node);
			done = ex;
		}
		me->phys = phys;
		me->len = len;
		me->nid = pl_range_nid(phys);
		mutex_unlock(&pl_pool.lock);

		pl_clean_runs(phys, len, true);

		mutex_lock(&pl_pool.lock);
		/* A page poisoned meanwhile is seen here: pl_pool_retire(). */
		pl_clean_runs(phys, len, false);
		me->len = 0;
		pl_pool.scrub_bytes -= len;
		pl_pool.gen++;
		mutex_unlock(&pl_pool.lock);
		pl_extents_free(done);
		wake_up_all(&pl_pool.wq);
	}
}

static void pl_kick_scrubbers(void)
{
	unsigned int i;

	for (i = 0; i < pl_pool.nr_scrubbers; i++)
		queue_work(pl_pool.wqueue, &pl_pool.scrubbers[i]);
}

/*
 * Hand @ex to the scrubber: its extents are zeroed, then freed.  Takes
 * ownership of @ex.  Callers guarantee that nothing maps or accesses them
 * any more.
 */
void pl_pool_release(struct pl_extents *ex)
{
	unsigned int i;
	u64 bytes = 0;

	if (!ex)
		return;
	for (i = 0; i < ex->nr; i++)
		bytes += ex->ext[i].len;
	if (!bytes) {
		pl_extents_free(ex);
		return;
	}
	ex->pos = 0;
	ex->done = 0;
	mutex_lock(&pl_pool.lock);
	pl_pool.scrub_bytes += bytes;
	list_add_tail(&ex->node, &pl_pool.scrub);
	mutex_unlock(&pl_pool.lock);
	pl_kick_scrubbers();
}

/* Free extents that were never exposed (a failed grow): no zeroing. */
void pl_pool_release_clean(struct pl_extents *ex)
{
	unsigned int i;

	if (!ex)
		return;
	mutex_lock(&pl_pool.lock);
	for (i = 0; i < ex->nr; i++)
		pl_clean_runs(ex->ext[i].phys, ex->ext[i].len, false);
	pl_pool.gen++;
	mutex_unlock(&pl_pool.lock);
	pl_extents_free(ex);
	wake_up_all(&pl_pool.wq);
}

/*
 * Take the page @pfn out of service after a memory error: remove it from the
 * free list if it is there.  Pages being scrubbed or owned by files are kept
 * out by pl_clean_runs() when they are freed.
 */
void pl_pool_retire(unsigned long pfn)
{
	u64 phys = PFN_PHYS(pfn);
	struct pl_free *n;

	n = kmalloc(sizeof(*n), GFP_KERNEL | __GFP_NOFAIL);
	mutex_lock(&pl_pool.lock);
	pl_free_take(&pl_pool.free, phys, PAGE_SIZE, &n);
	pl_pool.poisoned++;
	mutex_unlock(&pl_pool.lock);
	kfree(n);
}

/*
 * Allocate @bytes in extents aligned to @align (file offsets left 0) on node
 * @nid (NUMA_NO_NODE: any), placed as alloc.c says.  Waits while extents
 * being scrubbed would make the request fit; -ENOSPC if
 * the pool cannot satisfy it even then (quarantined memory whose processes
 * still live does not count), -EINTR if killed while waiting.
 */
int pl_pool_alloc(u64 bytes, u64 align, int nid, struct pl_extents **res)
{
	int ret;

	*res = NULL;
	if (!bytes)
		return 0;
	for (;;) {
		u64 gen;

		mutex_lock(&pl_pool.lock);
		if (pl_free_avail(&pl_pool.free, align, nid) >= bytes)
			break;
		if (!pl_pool.scrub_bytes) {
			mutex_unlock(&pl_pool.lock);
			/* Quarantined memory whose processes are gone: scrub it. */
			if (pl_quarantine_reap())
				continue;
			return -ENOSPC;
		}
		gen = pl_pool.gen;
		mutex_unlock(&pl_pool.lock);
		if (wait_event_killable(pl_pool.wq, READ_ONCE(pl_pool.gen) != gen))
			return -EINTR;
	}
	ret = pl_free_carve(&pl_pool.free, bytes, align, nid, res);
	mutex_unlock(&pl_pool.lock);
	return ret;
}

static int pl_span_cmp(const void *a, const void *b)
{
	const struct pl_piece *x = a, *y = b;

	if (x->nid != y->nid)
		return x->nid < y->nid ? -1 : 1;
	return x->phys < y->phys ? -1 : x->phys > y->phys;
}

/* Add @p to @v at *@k if it is on node @nid (NUMA_NO_NODE: any). */
static void pl_piece_add(struct pl_piece *v, unsigned int *k,
			 struct pl_piece p, int nid)
{
	if (nid == NUMA_NO_NODE || p.nid == nid)
		v[(*k)++] = p;
}

/*
 * @align-sized blocks on node @nid that will be allocatable once scrubbing is
 * done: the free list, the scrub queue and the pieces being zeroed, coalesced
 * per node.  Called with pl_pool.lock held.
 */
static u64 pl_avail_pending_locked(u64 align, int nid)
{
	struct pl_extents *ex;
	struct pl_piece *v;
	unsigned int n = 0, i, k;
	struct pl_free *f;
	u64 blocks = 0;

	if (!pl_pool.scrub_bytes)
		return pl_free_avail(&pl_pool.free, align, nid) / align;
	list_for_each_entry(f, &pl_pool.free, node)
		n++;
	list_for_each_entry(ex, &pl_pool.scrub, node)
		n += ex->nr - ex->pos;
	n += pl_pool.nr_scrubbers;
	v = kvmalloc_array(n, sizeof(*v), GFP_KERNEL);
	if (!v)	/* an estimate then */
		return (pl_free_avail(&pl_pool.free, align, nid) +
			pl_pool.scrub_bytes) / align;
	k = 0;
	list_for_each_entry(f, &pl_pool.free, node)
		pl_piece_add(v, &k, (struct pl_piece){ f->phys, f->len, f->nid },
			     nid);
	list_for_each_entry(ex, &pl_pool.scrub, node) {
		for (i = ex->pos; i < ex->nr; i++) {
			u64 skip = i == ex->pos ? ex->done : 0;
			u64 phys = ex->ext[i].phys + skip;

			pl_piece_add(v, &k, (struct pl_piece){
					phys, ex->ext[i].len - skip,
					pl_range_nid(phys) }, nid);
		}
	}
	for (i = 0; i < pl_pool.nr_scrubbers; i++)
		if (pl_pool.inflight[i].len)
			pl_piece_add(v, &k, pl_pool.inflight[i], nid);
	sort(v, k, sizeof(*v), pl_span_cmp, NULL);
	for (i = 0; i < k;) {
		u64 start = v[i].phys, end = v[i].phys + v[i].len;
		int node = v[i].nid;

		for (i++; i < k && v[i].nid == node && v[i].phys <= end; i++)
			end = max(end, v[i].phys + v[i].len);
		start = round_up(start, align);
		end = round_down(end, align);
		if (end > start)
			blocks += (end - start) / align;
	}
	kvfree(v);
	return blocks;
}

/*
 * statfs numbers in @align-sized blocks on node @nid (NUMA_NO_NODE: all):
 * @blocks is the capacity, @bfree the allocatable space including extents
 * still being scrubbed (allocations wait for those).
 */
void pl_pool_stat(u64 align, int nid, u64 *blocks, u64 *bfree)
{
	/* Pairs with the release in pl_pool_add_range_node(). */
	unsigned int i, k = 0, n = smp_load_acquire(&pl_pool.nr_ranges);
	struct pl_piece r[PL_MAX_RANGES];
	u64 total = 0;

	/* Capacity: adjacent ranges of a node coalesce, as in the free list. */
	for (i = 0; i < n; i++) {
		struct pl_range *rg = &pl_pool.ranges[i];
		struct pl_piece p = { rg->start, rg->size, rg->nid };

		pl_piece_add(r, &k, p, nid);
	}
	n = k;
	sort(r, n, sizeof(*r), pl_span_cmp, NULL);
	for (i = 0; i < n;) {
		u64 a = r[i].phys, e = r[i].phys + r[i].len;
		int node = r[i].nid;

		for (i++; i < n && r[i].nid == node && r[i].phys == e; i++)
			e += r[i].len;
		a = round_up(a, align);
		e = round_down(e, align);
		if (e > a)
			total += (e - a) / align;
	}
	*blocks = total;
	mutex_lock(&pl_pool.lock);
	*bfree = pl_avail_pending_locked(align, nid);
	mutex_unlock(&pl_pool.lock);
	*bfree = min(*bfree, total);
}

/* The pool's numbers on node @nid (NUMA_NO_NODE: all); scrubbing is global. */
void pl_pool_counts(int nid, struct pl_counts *c)
{
	/* Pairs with the release in pl_pool_add_range_node(). */
	unsigned int i, n = smp_load_acquire(&pl_pool.nr_ranges);
	struct pl_free *f;

	c->capacity = 0;
	for (i = 0; i < n; i++)
		if (nid == NUMA_NO_NODE || pl_pool.ranges[i].nid == nid)
			c->capacity += pl_pool.ranges[i].size;
	c->free = 0;
	mutex_lock(&pl_pool.lock);
	list_for_each_entry(f, &pl_pool.free, node)
		if (nid == NUMA_NO_NODE || f->nid == nid)
			c->free += f->len;
	c->scrubbing = pl_pool.scrub_bytes;
	c->poisoned = pl_pool.poisoned;
	mutex_unlock(&pl_pool.lock);
}

/*
 * Range @i: its start, size and node, false past the last.  For sysfs.
 */
bool pl_pool_range(unsigned int i, u64 *start, u64 *size, int *nid)
{
	/* Pairs with the release in pl_pool_add_range_node(). */
	if (i >= smp_load_acquire(&pl_pool.nr_ranges))
		return false;
	*start = pl_pool.ranges[i].start;
	*size = pl_pool.ranges[i].size;
	*nid = pl_pool.ranges[i].nid;
	return true;
}

/* Whether some range is on node @nid. */
bool pl_pool_has_node(int nid)
{
	u64 start, size;
	unsigned int i;
	int node;

	for (i = 0; pl_pool_range(i, &start, &size, &node); i++)
		if (node == nid)
			return true;
	return false;
}

/*
 * The NUMA node of @phys as the kernel's NUMA map (SRAT) has it; reserved
 * memory is in that map too (numa_reserved_meminfo).  Node 0 without NUMA or
 * where the map says nothing.
 */
static int pl_phys_nid(u64 phys)
{
	int nid = phys_to_target_node(phys);

	return nid == NUMA_NO_NODE ? 0 : nid;
}

/* Add [start, start + size), all on node @nid, mapped at @virt. */
static void pl_pool_add_range_node(u64 start, u64 size, int nid, void *virt)
{
	struct pl_range *r = &pl_pool.ranges[pl_pool.nr_ranges];

	r->start = start;
	r->size = size;
	r->nid = nid;
	r->virt = virt;
	/* Published before any extent of it can be scrubbed or allocated. */
	smp_store_release(&pl_pool.nr_ranges, pl_pool.nr_ranges + 1);
	pr_info("range [%#llx-%#llx] (%llu MiB) is on node %d\n",
		start, start + size - 1, size >> 20, nid);
}

/* The end of the part of [start + off, start + size) on one node. */
static u64 pl_node_end(u64 start, u64 off, u64 size)
{
	int nid = pl_phys_nid(start + off);

	for (off += PL_NODE_STEP; off < size; off += PL_NODE_STEP)
		if (pl_phys_nid(start + off) != nid)
			return off;
	return size;
}

/*
 * Add a claimed and mapped range, split where its NUMA node changes.  Nothing
 * of it is allocatable until pl_pool_scrub_except().  Called at load time
 * only.  All or nothing: on failure no part is added.
 */
int pl_pool_add_range(u64 start, u64 size, void *virt)
{
	unsigned int n = 0;
	u64 off;

	for (off = 0; off < size; off = pl_node_end(start, off, size))
		n++;
	if (pl_pool.nr_ranges + n > PL_MAX_RANGES)
		return -E2BIG;
	for (off = 0; off < size;) {
		u64 end = pl_node_end(start, off, size);

		pl_pool_add_range_node(start + off, end - off,
				       pl_phys_nid(start + off), virt + off);
		off = end;
	}
	return 0;
}

/*
 * Take [phys, phys + len), the top of a range part, out of the pool for good
 * (the metadata area): the part shrinks.  At load time, before scrubbing.
 */
int pl_pool_carve(u64 phys, u64 len)
{
	unsigned int i;

	for (i = 0; i < pl_pool.nr_ranges; i++) {
		struct pl_range *r = &pl_pool.ranges[i];

		if (r->start + r->size == phys + len && r->size > len) {
			r->size -= len;
			return 0;
		}
	}
	WARN_ONCE(1, "no range part ends at %llx\n", phys + len);
	return -EINVAL;
}

/*
 * Whether [phys, phys + len) lies in the pool, all on one node, and that on
 * @nid unless it is NUMA_NO_NODE.  For recovered extents.
 */
bool pl_pool_extent_ok(u64 phys, u64 len, int nid)
{
	int first = NUMA_NO_NODE;
	unsigned int i;

	while (len) {
		struct pl_range *r = NULL;
		u64 part;

		for (i = 0; i < pl_pool.nr_ranges; i++) {
			r = &pl_pool.ranges[i];
			if (phys >= r->start && phys - r->start < r->size)
				break;
		}
		if (i == pl_pool.nr_ranges)
			return false;
		if (first == NUMA_NO_NODE)
			first = r->nid;
		if (r->nid != first || (nid != NUMA_NO_NODE && r->nid != nid))
			return false;
		part = min(len, r->start + r->size - phys);
		phys += part;
		len -= part;
	}
	return true;
}

/*
 * Hand every part of the pool but the sorted, non-overlapping extents @keep
 * (recovered files) to the scrubber: its old contents are unknown.  At load
 * time, once.
 */
int pl_pool_scrub_except(const struct pl_extent *keep, unsigned int n)
{
	struct pl_extents *ex[PL_MAX_RANGES] = {};
	unsigned int i, k;

	for (i = 0; i < pl_pool.nr_ranges; i++) {
		ex[i] = pl_extents_alloc(n + 1);
		if (!ex[i])
			goto err;
	}
	for (i = 0; i < pl_pool.nr_ranges; i++) {
		struct pl_range *r = &pl_pool.ranges[i];
		u64 pos = r->start, end = r->start + r->size;

		for (k = 0; k < n && pos < end; k++) {
			u64 ks = keep[k].phys, ke = keep[k].phys + keep[k].len;

			if (ke <= pos || ks >= end)
				continue;
			if (ks > pos) {
				ex[i]->ext[ex[i]->nr].phys = pos;
				ex[i]->ext[ex[i]->nr].len = ks - pos;
				ex[i]->nr++;
			}
			pos = min(ke, end);
		}
		if (pos < end) {
			ex[i]->ext[ex[i]->nr].phys = pos;
			ex[i]->ext[ex[i]->nr].len = end - pos;
			ex[i]->nr++;
		}
		pl_pool_release(ex[i]);
		ex[i] = NULL;
	}
	return 0;

err:
	for (i = 0; i < pl_pool.nr_ranges; i++)
		pl_extents_free(ex[i]);
	return -ENOMEM;
}

int pl_pool_init(void)
{
	unsigned int i;

	mutex_init(&pl_pool.lock);
	INIT_LIST_HEAD(&pl_pool.free);
	INIT_LIST_HEAD(&pl_pool.scrub);
	init_waitqueue_head(&pl_pool.wq);
	pl_pool.nr_scrubbers = clamp(num_online_cpus(), 1U, PL_MAX_SCRUBBERS);
	for (i = 0; i < pl_pool.nr_scrubbers; i++)
		INIT_WORK(&pl_pool.scrubbers[i], pl_scrub_work);
	pl_pool.wqueue = alloc_workqueue("pageless_scrub", WQ_UNBOUND, 0);
	if (!pl_pool.wqueue)
		return -ENOMEM;
	return 0;
}

/*
 * Tear the pool down.  With @drain, finish zeroing everything queued first
 * (normal unload: freed files must not leave data behind); without, abandon
 * it (failed load: only the initial scrub can be queued).  No allocation or
 * release may run concurrently.
 */
void pl_pool_exit(bool drain)
{
	struct pl_extents *ex, *tmp;
	struct pl_free *f, *ftmp;

	if (!drain) {
		mutex_lock(&pl_pool.lock);
		pl_pool.stopping = true;
		mutex_unlock(&pl_pool.lock);
	}
	destroy_workqueue(pl_pool.wqueue);	/* drains queued work */
	list_for_each_entry_safe(ex, tmp, &pl_pool.scrub, node) {
		list_del(&ex->node);
		pl_extents_free(ex);
	}
	list_for_each_entry_safe(f, ftmp, &pl_pool.free, node) {
		list_del(&f->node);
		kfree(f);
	}
	pl_pool.nr_ranges = 0;
	pl_pool.scrub_bytes = 0;
}
