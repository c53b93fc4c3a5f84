/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The extent allocator: a free list of physical extents, each on one NUMA
 * node, and the placement policy that carves requests from it.  Pure
 * bookkeeping (no locking, no memory access), so that it also builds in user
 * space for the property tests (PL_USERSPACE, tests/alloc/).  The caller
 * serialises every call (pl_pool.lock).
 */
#ifndef PAGELESS_ALLOC_H
#define PAGELESS_ALLOC_H

#ifdef PL_USERSPACE
#include "pl_shim.h"
#else
#include <linux/list.h>
#include <linux/numa.h>
#include <linux/types.h>
#endif

/* One physically contiguous piece of a file. */
struct pl_extent {
	u64 off;	/* file offset */
	u64 phys;	/* physical address */
	u64 len;	/* bytes */
};

/*
 * A list of extents: an inode's layout (sorted by file offset, covering
 * [0, i_size) without holes), a fresh allocation, or extents queued for
 * scrubbing (then owned by the pool).
 */
struct pl_extents {
	struct list_head node;	/* pl_pool scrub queue */
	unsigned int nr;	/* extents in use */
	unsigned int cap;	/* extents allocated */
	unsigned int pos;	/* scrub cursor: index into ext[] */
	u64 done;		/* scrub cursor: bytes done in ext[pos] */
	struct pl_extent ext[] __counted_by(cap);
};

struct pl_extents *pl_extents_alloc(unsigned int cap);
void pl_extents_free(struct pl_extents *ex);

/*
 * A free extent.  The list is sorted by address; neighbours merge only when
 * they are on the same node, so an extent never spans two nodes.
 */
struct pl_free {
	struct list_head node;
	u64 phys;
	u64 len;
	int nid;
};

void pl_free_insert(struct list_head *free, u64 phys, u64 len, int nid,
		    struct pl_free **spare);
bool pl_free_take(struct list_head *free, u64 phys, u64 len,
		  struct pl_free **spare);
u64 pl_free_avail(const struct list_head *free, u64 align, int nid);
int pl_free_carve(struct list_head *free, u64 bytes, u64 align, int nid,
		  struct pl_extents **res);

#endif /* PAGELESS_ALLOC_H */
