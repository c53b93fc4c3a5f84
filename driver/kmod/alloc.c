// SPDX-License-Identifier: GPL-2.0
/*
 * The extent allocator (see alloc.h): free-list bookkeeping and placement.
 *
 * Placement: a request of @align-aligned pages (4K, 2M or 1G) first takes
 * free space that lies in no wholly free block of a larger class, then space
 * that breaks a free 2 MiB block but no free 1 GiB block, and only then free
 * 1 GiB blocks.  So a 4K or 2M file never splits a free 1 GiB-aligned GiB
 * while other free space can hold it, and 1 GiB files find whole GiBs as long
 * as the smaller files fit elsewhere.  Within one class, 1 GiB requests take
 * the lowest addresses and smaller ones the highest, and pieces are cut from
 * the edges of a free extent, keeping the rest of it in one piece.
 *
 * Allocation is exact and all-or-nothing: pl_free_avail() is the space a
 * request can use, pl_free_carve() succeeds whenever it is large enough, and
 * it changes nothing when it fails.
 */
#ifndef PL_USERSPACE
#include <linux/align.h>
#include <linux/minmax.h>
#include <linux/overflow.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#endif

#include "alloc.h"

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
 * Return [phys, phys + len), which lies on node @nid, to @free, merging with
 * neighbours of the same node.  @spare is used if a new entry is needed (and
 * set to NULL then).
 */
void pl_free_insert(struct list_head *free, u64 phys, u64 len, int nid,
		    struct pl_free **spare)
{
	struct pl_free *f, *prev = NULL, *next = NULL, *n;

	list_for_each_entry(f, free, node) {
		if (f->phys > phys) {
			next = f;
			break;
		}
		prev = f;
	}
	if (prev && prev->nid == nid && prev->phys + prev->len == phys) {
		prev->len += len;
		if (next && next->nid == nid &&
		    prev->phys + prev->len == next->phys) {
			prev->len += next->len;
			list_del(&next->node);
			kfree(next);
		}
		return;
	}
	if (next && next->nid == nid && phys + len == next->phys) {
		next->phys = phys;
		next->len += len;
		return;
	}
	n = *spare;
	*spare = NULL;
	n->phys = phys;
	n->len = len;
	n->nid = nid;
	if (next)
		list_add_tail(&n->node, &next->node);
	else
		list_add_tail(&n->node, free);
}

/*
 * Remove [phys, phys + len) from @free if one entry holds all of it; false
 * if none does.  @spare is used if the entry splits in two (and set to NULL
 * then).
 */
bool pl_free_take(struct list_head *free, u64 phys, u64 len,
		  struct pl_free **spare)
{
	struct pl_free *f, *r;

	list_for_each_entry(f, free, node) {
		u64 end = f->phys + f->len;

		if (phys < f->phys || phys + len > end)
			continue;
		if (phys + len < end) {
			r = *spare;
			*spare = NULL;
			r->phys = phys + len;
			r->len = end - r->phys;
			r->nid = f->nid;
			list_add(&r->node, &f->node);
		}
		f->len = phys - f->phys;
		if (!f->len) {
			list_del(&f->node);
			kfree(f);
		}
		return true;
	}
	return false;
}

/* Whether @f is usable for a request on node @nid (NUMA_NO_NODE: any). */
static bool pl_node_ok(const struct pl_free *f, int nid)
{
	return nid == NUMA_NO_NODE || f->nid == nid;
}

/* The @align-aligned part of a free extent: [*a, *e), empty if *a >= *e. */
static void pl_aligned(const struct pl_free *f, u64 align, u64 *a, u64 *e)
{
	*a = round_up(f->phys, align);
	*e = round_down(f->phys + f->len, align);
}

/* Bytes of @free allocatable with @align on node @nid. */
u64 pl_free_avail(const struct list_head *free, u64 align, int nid)
{
	struct pl_free *f;
	u64 sum = 0, a, e;

	list_for_each_entry(f, free, node) {
		if (!pl_node_ok(f, nid))
			continue;
		pl_aligned(f, align, &a, &e);
		if (e > a)
			sum += e - a;
	}
	return sum;
}

/* A request being planned: where its pieces go, before anything changes. */
struct pl_plan {
	u64 left;			/* bytes still to place */
	bool up;			/* take from the bottom (1 GiB pages) */
	unsigned int nr;		/* pieces planned */
	struct pl_extent *out;		/* NULL: count only */
	const struct pl_free *last;	/* entry of the last piece */
};

/* Plan a piece of up to plan->left bytes from [a, e) of @f. */
static void pl_plan_take(struct pl_plan *plan, const struct pl_free *f,
			 u64 a, u64 e, bool from_bottom)
{
	struct pl_extent *prev;
	u64 take, lo;

	if (e <= a || !plan->left)
		return;
	take = min(plan->left, e - a);
	lo = from_bottom ? a : e - take;
	plan->left -= take;
	prev = plan->out && plan->nr ? &plan->out[plan->nr - 1] : NULL;
	/*
	 * Pieces of one entry that touch form one extent.  Counting (no
	 * @out) counts every piece: an upper bound.
	 */
	if (prev && plan->last == f) {
		if (prev->phys + prev->len == lo) {
			prev->len += take;
			return;
		}
		if (lo + take == prev->phys) {
			prev->phys = lo;
			prev->len += take;
			return;
		}
	}
	if (plan->out) {
		plan->out[plan->nr].phys = lo;
		plan->out[plan->nr].len = take;
	}
	plan->nr++;
	plan->last = f;
}

/*
 * Plan a request of plan->left bytes in @align-aligned pieces on node @nid,
 * by the policy at the top of this file.  A dry run: @free does not change.
 */
static void pl_plan(const struct list_head *free, u64 align, int nid,
		    struct pl_plan *plan)
{
	u64 level[3], a, e, ia, ie;
	unsigned int nlevel = 0, p;
	const struct pl_free *f;

	/* The request's own alignment, then each larger class. */
	level[nlevel++] = align;
	if (align < SZ_2M)
		level[nlevel++] = SZ_2M;
	if (align < SZ_1G)
		level[nlevel++] = SZ_1G;

	for (p = 0; p < nlevel && plan->left; p++) {
		f = plan->up ? list_first_entry(free, struct pl_free, node) :
			       list_last_entry(free, struct pl_free, node);
		while (plan->left && !list_entry_is_head(f, free, node)) {
			if (!pl_node_ok(f, nid))
				goto next;
			/*
			 * Level p of @f: its level[p]-aligned part less the
			 * wholly free blocks of the next class, which is
			 * [a, ia) and [ie, e) or, without such blocks, [a, e).
			 */
			pl_aligned(f, level[p], &a, &e);
			ia = e;
			ie = e;
			if (p + 1 < nlevel) {
				pl_aligned(f, level[p + 1], &ia, &ie);
				if (ie <= ia) {
					ia = e;
					ie = e;
				}
			}
			if (e <= a)
				goto next;
			if (plan->up) {
				pl_plan_take(plan, f, a, ia, true);
				pl_plan_take(plan, f, ie, e, false);
			} else {
				pl_plan_take(plan, f, ie, e, false);
				pl_plan_take(plan, f, a, ia, ia != e);
			}
next:
			f = plan->up ? list_next_entry(f, node) :
				       list_prev_entry(f, node);
		}
	}
}

/*
 * Carve @bytes (a multiple of @align) from @free on node @nid (NUMA_NO_NODE:
 * any), in extents aligned to @align, file offsets left 0.  -ENOSPC if
 * pl_free_avail() is short of @bytes; -ENOMEM if the bookkeeping cannot be
 * allocated.  Nothing changes on failure.
 */
int pl_free_carve(struct list_head *free, u64 bytes, u64 align, int nid,
		  struct pl_extents **res)
{
	struct pl_plan plan = { .left = bytes, .up = align >= SZ_1G };
	struct pl_free **spares;
	struct pl_extents *ex;
	unsigned int i, n, used = 0;
	int ret = -ENOMEM;

	*res = NULL;
	if (pl_free_avail(free, align, nid) < bytes)
		return -ENOSPC;
	/* Count the pieces first, to allocate all bookkeeping up front. */
	pl_plan(free, align, nid, &plan);
	if (WARN_ON_ONCE(plan.left))
		return -ENOSPC;
	n = plan.nr;
	ex = pl_extents_alloc(n);
	spares = kcalloc(n, sizeof(*spares), GFP_KERNEL);
	if (!ex || !spares)
		goto out;
	for (i = 0; i < n; i++) {
		spares[i] = kmalloc(sizeof(**spares), GFP_KERNEL);
		if (!spares[i])
			goto out;
	}

	plan = (struct pl_plan){ .left = bytes, .up = align >= SZ_1G,
				 .out = ex->ext };
	pl_plan(free, align, nid, &plan);
	ex->nr = plan.nr;
	for (i = 0; i < ex->nr; i++) {
		bool taken = pl_free_take(free, ex->ext[i].phys,
					  ex->ext[i].len, &spares[used]);

		WARN_ON_ONCE(!taken);
		if (!spares[used])
			used++;
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
