// SPDX-License-Identifier: GPL-2.0
/*
 * The module's extent allocator (driver/kmod/alloc.c, built with
 * PL_USERSPACE) behind a few plain functions for Rust: pageless_tests::alloc.
 */
#include <string.h>

#include "pl_shim.h"
#include "../../driver/kmod/alloc.h"

/* Allocations left before kmalloc() fails; negative: never fail. */
static __thread long pl_fail_after = -1;

void *pl_shim_alloc(size_t size)
{
	if (pl_fail_after == 0)
		return NULL;
	if (pl_fail_after > 0)
		pl_fail_after--;
	return calloc(1, size ? size : 1);
}

void pl_shim_free(void *p)
{
	free(p);
}

void plh_fail_after(long n)
{
	pl_fail_after = n;
}

struct plh {
	struct list_head free;
};

struct plh *plh_new(void)
{
	struct plh *h = calloc(1, sizeof(*h));

	if (!h)
		abort();
	INIT_LIST_HEAD(&h->free);
	return h;
}

void plh_destroy(struct plh *h)
{
	while (h->free.next != &h->free) {
		struct pl_free *f = list_first_entry(&h->free, struct pl_free, node);

		list_del(&f->node);
		free(f);
	}
	free(h);
}

/* Return [phys, phys + len) on node @nid to the free list. */
void plh_free(struct plh *h, u64 phys, u64 len, int nid)
{
	struct pl_free *spare = calloc(1, sizeof(*spare));

	if (!spare)
		abort();
	pl_free_insert(&h->free, phys, len, nid, &spare);
	free(spare);
}

u64 plh_avail(struct plh *h, u64 align, int nid)
{
	return pl_free_avail(&h->free, align, nid);
}

/*
 * Carve a request: 0 or -errno; on success *@nr extents, (phys, len) pairs
 * in @out (room for @cap pairs; more is a harness bug).
 */
int plh_alloc(struct plh *h, u64 bytes, u64 align, int nid, u64 *out,
	      unsigned int cap, unsigned int *nr)
{
	struct pl_extents *ex;
	unsigned int i;
	int ret;

	*nr = 0;
	ret = pl_free_carve(&h->free, bytes, align, nid, &ex);
	if (ret)
		return ret;
	if (ex->nr > cap)
		abort();
	for (i = 0; i < ex->nr; i++) {
		out[2 * i] = ex->ext[i].phys;
		out[2 * i + 1] = ex->ext[i].len;
	}
	*nr = ex->nr;
	pl_extents_free(ex);
	return 0;
}

/* The free list: (phys, len, nid) triples; returns the number of entries. */
unsigned int plh_dump(struct plh *h, u64 *out, unsigned int cap)
{
	struct pl_free *f;
	unsigned int n = 0;

	list_for_each_entry(f, &h->free, node) {
		if (n < cap) {
			out[3 * n] = f->phys;
			out[3 * n + 1] = f->len;
			out[3 * n + 2] = (u64)(int64_t)f->nid;
		}
		n++;
	}
	return n;
}
