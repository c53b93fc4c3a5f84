// SPDX-License-Identifier: GPL-2.0
/*
 * The pool: every range named by the ranges= parameter, as one free list of
 * physical extents, plus a queue of extents waiting to be zeroed.
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

struct pl_range {
	u64 start;
	u64 size;
	void *virt;		/* memremap(MEMREMAP_WB) of the whole range */
};

struct pl_free {
	struct list_head node;
	u64 phys;
	u64 len;
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
	} inflight[PL_MAX_SCRUBBERS];	/* piece each scrubber is zeroing */
	unsigned int nr_ranges;		/* written only at load time */
	struct pl_range ranges[PL_MAX_RANGES];
} pl_pool;

struct pl_extents *pl_extents_alloc(unsigned int cap)
{
	struct pl_extents *ex;

	ex = kvzalloc(struct_size(ex, ext, cap), GFP_KERNEL);
	if (!ex)
		return NULL;
	ex->cap = cap;
	INIT_LIST_HEAD(&ex->node);
	return ex;
}

void pl_extents_free(struct pl_extents *ex)
{
	kvfree(ex);
}

/*
 * The kernel mapping of @phys, or NULL if it is not in the pool; *@avail
 * (if not NULL) gets the bytes up to the end of its range.  Adjacent ranges
 * coalesce in the free list, so an extent may span ranges whose kernel
 * mappings are not adjacent: kernel accesses must stop at *@avail.
 */
void *pl_pool_virt_len(u64 phys, u64 *avail)
{
	/* Pairs with the release in pl_pool_add_range(). */
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
 * Return [phys, phys + len) to the free list, merging with neighbours.
 * @spare is used if a new node is needed (and set to NULL then).
 * Called with pl_pool.lock held.
 */
static void pl_free_insert(u64 phys, u64 len, struct pl_free **spare)
{
	struct pl_free *f, *prev = NULL, *next = NULL, *n;

	list_for_each_entry(f, &pl_pool.free, node) {
		if (f->phys > phys) {
			next = f;
			break;
		}
		prev = f;
	}
	if (prev && prev->phys + prev->len == phys) {
		prev->len += len;
		if (next && prev->phys + prev->len == next->phys) {
			prev->len += next->len;
			list_del(&next->node);
			kfree(next);
		}
		return;
	}
	if (next && phys + len == next->phys) {
		next->phys = phys;
		next->len += len;
		return;
	}
	n = *spare;
	*spare = NULL;
	n->phys = phys;
	n->len = len;
	if (next)
		list_add_tail(&n->node, &next->node);
	else
		list_add_tail(&n->node, &pl_pool.free);
}

/* Return extents to the free list.  Called with pl_pool.lock held. */
static void pl_free_extents_locked(u64 phys, u64 len)
{
	struct pl_free *spare;

	/*
	 * A free path cannot fail: the node is a few bytes, and the page
	 * allocator does not fail such requests in practice.
	 */
	spare = kmalloc(sizeof(*spare), GFP_KERNEL | __GFP_NOFAIL);
	pl_free_insert(phys, len, &spare);
	kfree(spare);
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
	struct pl_free *f, *n;

	n = kmalloc(sizeof(*n), GFP_KERNEL | __GFP_NOFAIL);
	mutex_lock(&pl_pool.lock);
	list_for_each_entry(f, &pl_pool.free, node) {
		u64 end = f->phys + f->len;

		if (phys < f->phys || phys >= end)
			continue;
		f->len = phys - f->phys;
		if (end > phys + PAGE_SIZE) {
			n->phys = phys + PAGE_SIZE;
			n->len = end - n->phys;
			list_add(&n->node, &f->node);
			n = NULL;
		}
		if (!f->len) {
			list_del(&f->node);
			kfree(f);
		}
		break;
	}
	pl_pool.poisoned++;
	mutex_unlock(&pl_pool.lock);
	kfree(n);
}

/* The aligned part of a free extent: [*a, *e), empty if *a >= *e. */
static void pl_aligned(const struct pl_free *f, u64 align, u64 *a, u64 *e)
{
	*a = round_up(f->phys, align);
	*e = round_down(f->phys + f->len, align);
}

/* Bytes allocatable with @align.  Called with pl_pool.lock held. */
static u64 pl_avail_locked(u64 align)
{
	struct pl_free *f;
	u64 sum = 0, a, e;

	list_for_each_entry(f, &pl_pool.free, node) {
		pl_aligned(f, align, &a, &e);
		if (e > a)
			sum += e - a;
	}
	return sum;
}

/* The free list's first entry from the bottom (@up) or from the top. */
static struct pl_free *pl_first_free(bool up)
{
	return up ? list_first_entry(&pl_pool.free, struct pl_free, node) :
		    list_last_entry(&pl_pool.free, struct pl_free, node);
}

/* The entry after @f, going up or down the free list. */
static struct pl_free *pl_next_free(struct pl_free *f, bool up)
{
	return up ? list_next_entry(f, node) : list_prev_entry(f, node);
}

/*
 * Carve @bytes (a multiple of @align) from the free list, in extents aligned
 * to @align.  Requests of 1 GiB pages take the lowest addresses, smaller pages
 * the highest, which keeps 1 GiB-aligned space together when several mount
 * page sizes share the pool.  Called with pl_pool.lock held, after
 * pl_avail_locked() said it fits.  Returns -ENOMEM with nothing changed if
 * the bookkeeping cannot be allocated.
 */
static int pl_carve_locked(u64 bytes, u64 align, struct pl_extents **res)
{
	bool up = align >= PUD_SIZE;
	struct pl_free *f, **spares;
	struct pl_extents *ex;
	unsigned int n = 0, i, used = 0;
	u64 left = bytes, a, e;
	int ret = -ENOMEM;

	/* Count the pieces first, to allocate all bookkeeping up front. */
	for (f = pl_first_free(up); left && !list_entry_is_head(f, &pl_pool.free, node);
	     f = pl_next_free(f, up)) {
		pl_aligned(f, align, &a, &e);
		if (e > a) {
			n++;
			left -= min(left, e - a);
		}
	}
	if (WARN_ON_ONCE(left))
		return -ENOSPC;

	ex = pl_extents_alloc(n);
	spares = kcalloc(n, sizeof(*spares), GFP_KERNEL);
	if (!ex || !spares)
		goto out;
	for (i = 0; i < n; i++) {
		spares[i] = kmalloc(sizeof(**spares), GFP_KERNEL);
		if (!spares[i])
			goto out;
	}

	left = bytes;
	f = pl_first_free(up);
	while (left) {
		struct pl_free *next = pl_next_free(f, up);
		u64 take, lo, hi;

		pl_aligned(f, align, &a, &e);
		if (e > a) {
			take = min(left, e - a);
			lo = up ? a : e - take;
			hi = lo + take;
			ex->ext[ex->nr].phys = lo;
			ex->ext[ex->nr].len = take;
			ex->nr++;
			left -= take;
			/* Keep [f->phys, lo) in f, [hi, end) in a new node. */
			if (hi < f->phys + f->len) {
				struct pl_free *r = spares[used++];

				r->phys = hi;
				r->len = f->phys + f->len - hi;
				list_add(&r->node, &f->node);
			}
			f->len = lo - f->phys;
			if (!f->len) {
				list_del(&f->node);
				kfree(f);
			}
		}
		f = next;
	}
	*res = ex;
	ex = NULL;
	ret = 0;
out:
	if (spares) {
		for (i = used; i < n; i++)
			kfree(spares[i]);
		kfree(spares);
	}
	pl_extents_free(ex);
	return ret;
}

/*
 * Allocate @bytes in extents aligned to @align (file offsets left 0).
 * Waits while extents being scrubbed would make the request fit; -ENOSPC if
 * the pool cannot satisfy it even then (quarantined memory whose processes
 * still live does not count), -EINTR if killed while waiting.
 */
int pl_pool_alloc(u64 bytes, u64 align, struct pl_extents **res)
{
	int ret;

	*res = NULL;
	if (!bytes)
		return 0;
	for (;;) {
		u64 gen;

		mutex_lock(&pl_pool.lock);
		if (pl_avail_locked(align) >= bytes)
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
	ret = pl_carve_locked(bytes, align, res);
	mutex_unlock(&pl_pool.lock);
	return ret;
}

static int pl_span_cmp(const void *a, const void *b)
{
	const struct pl_piece *x = a, *y = b;

	return x->phys < y->phys ? -1 : x->phys > y->phys;
}

/*
 * @align-sized blocks that will be allocatable once scrubbing is done: the
 * free list, the scrub queue and the pieces being zeroed, coalesced.  Called
 * with pl_pool.lock held.
 */
static u64 pl_avail_pending_locked(u64 align)
{
	struct pl_extents *ex;
	struct pl_piece *v;
	unsigned int n = 0, i, k;
	struct pl_free *f;
	u64 blocks = 0;

	if (!pl_pool.scrub_bytes)
		return pl_avail_locked(align) / align;
	list_for_each_entry(f, &pl_pool.free, node)
		n++;
	list_for_each_entry(ex, &pl_pool.scrub, node)
		n += ex->nr - ex->pos;
	n += pl_pool.nr_scrubbers;
	v = kvmalloc_array(n, sizeof(*v), GFP_KERNEL);
	if (!v)	/* an estimate then */
		return (pl_avail_locked(align) + pl_pool.scrub_bytes) / align;
	k = 0;
	list_for_each_entry(f, &pl_pool.free, node)
		v[k++] = (struct pl_piece){ f->phys, f->len };
	list_for_each_entry(ex, &pl_pool.scrub, node) {
		for (i = ex->pos; i < ex->nr; i++) {
			u64 skip = i == ex->pos ? ex->done : 0;

			v[k++] = (struct pl_piece){ ex->ext[i].phys + skip,
						    ex->ext[i].len - skip };
		}
	}
	for (i = 0; i < pl_pool.nr_scrubbers; i++)
		if (pl_pool.inflight[i].len)
			v[k++] = pl_pool.inflight[i];
	sort(v, k, sizeof(*v), pl_span_cmp, NULL);
	for (i = 0; i < k;) {
		u64 start = v[i].phys, end = v[i].phys + v[i].len;

		for (i++; i < k && v[i].phys <= end; i++)
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
 * statfs numbers in @align-sized blocks: @blocks is the capacity, @bfree the
 * allocatable space including extents still being scrubbed (allocations wait
 * for those).
 */
void pl_pool_stat(u64 align, u64 *blocks, u64 *bfree)
{
	/* Pairs with the release in pl_pool_add_range(). */
	unsigned int i, n = smp_load_acquire(&pl_pool.nr_ranges);
	struct pl_piece r[PL_MAX_RANGES];
	u64 total = 0;

	/* Capacity: adjacent ranges coalesce, as in the free list. */
	for (i = 0; i < n; i++)
		r[i] = (struct pl_piece){ pl_pool.ranges[i].start,
					  pl_pool.ranges[i].size };
	sort(r, n, sizeof(*r), pl_span_cmp, NULL);
	for (i = 0; i < n;) {
		u64 a = r[i].phys, e = r[i].phys + r[i].len;

		for (i++; i < n && r[i].phys == e; i++)
			e += r[i].len;
		a = round_up(a, align);
		e = round_down(e, align);
		if (e > a)
			total += (e - a) / align;
	}
	*blocks = total;
	mutex_lock(&pl_pool.lock);
	*bfree = pl_avail_pending_locked(align);
	mutex_unlock(&pl_pool.lock);
	*bfree = min(*bfree, total);
}

void pl_pool_counts(struct pl_counts *c)
{
	/* Pairs with the release in pl_pool_add_range(). */
	unsigned int i, n = smp_load_acquire(&pl_pool.nr_ranges);
	struct pl_free *f;

	c->capacity = 0;
	for (i = 0; i < n; i++)
		c->capacity += pl_pool.ranges[i].size;
	c->free = 0;
	mutex_lock(&pl_pool.lock);
	list_for_each_entry(f, &pl_pool.free, node)
		c->free += f->len;
	c->scrubbing = pl_pool.scrub_bytes;
	c->poisoned = pl_pool.poisoned;
	mutex_unlock(&pl_pool.lock);
}

/*
 * Add a claimed and mapped range.  Its old contents are unknown, so it enters
 * the pool through the scrubber.  Called at load time only.
 */
int pl_pool_add_range(u64 start, u64 size, void *virt)
{
	struct pl_extents *ex;
	struct pl_range *r;

	if (pl_pool.nr_ranges == PL_MAX_RANGES)
		return -E2BIG;
	ex = pl_extents_alloc(1);
	if (!ex)
		return -ENOMEM;
	r = &pl_pool.ranges[pl_pool.nr_ranges];
	r->start = start;
	r->size = size;
	r->virt = virt;
	/* Published before any extent of it can be scrubbed or allocated. */
	smp_store_release(&pl_pool.nr_ranges, pl_pool.nr_ranges + 1);
	ex->ext[0].phys = start;
	ex->ext[0].len = size;
	ex->nr = 1;
	pl_pool_release(ex);
	return 0;
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
