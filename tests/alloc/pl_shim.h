/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The kernel interfaces driver/kmod/alloc.c uses, in user space: enough to
 * build it unchanged for the allocator's property tests (tests/alloc/).
 * Memory allocation can be made to fail (plh_fail_after()), to test that a
 * failed request changes nothing.
 */
#ifndef PL_SHIM_H
#define PL_SHIM_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

typedef uint64_t u64;

#define GFP_KERNEL	0
#define NUMA_NO_NODE	(-1)
#define SZ_2M		(2ULL << 20)
#define SZ_1G		(1ULL << 30)
#define __counted_by(m)

#define round_up(x, y)		((((x) + (y) - 1) / (y)) * (y))
#define round_down(x, y)	(((x) / (y)) * (y))
#define min(a, b)		((a) < (b) ? (a) : (b))
#define struct_size(p, member, n) \
	(sizeof(*(p)) + sizeof((p)->member[0]) * (size_t)(n))

/* A kernel WARN is a bug of the allocator: stop the test. */
#define WARN_ON_ONCE(c)	({ bool __c = (c); if (__c) abort(); __c; })

void *pl_shim_alloc(size_t size);
void pl_shim_free(void *p);
#define kmalloc(size, gfp)	pl_shim_alloc(size)
#define kcalloc(n, size, gfp)	pl_shim_alloc((n) * (size))
#define kvzalloc(size, gfp)	pl_shim_alloc(size)
#define kfree(p)		pl_shim_free(p)
#define kvfree(p)		pl_shim_free(p)

struct list_head {
	struct list_head *next, *prev;
};

#define container_of(ptr, type, member) \
	((type *)((char *)(ptr) - offsetof(type, member)))
#define list_entry(ptr, type, member)	container_of(ptr, type, member)
#define list_first_entry(head, type, member) \
	list_entry((head)->next, type, member)
#define list_last_entry(head, type, member) \
	list_entry((head)->prev, type, member)
#define list_next_entry(pos, member) \
	list_entry((pos)->member.next, __typeof__(*(pos)), member)
#define list_prev_entry(pos, member) \
	list_entry((pos)->member.prev, __typeof__(*(pos)), member)
#define list_entry_is_head(pos, head, member)	(&(pos)->member == (head))
#define list_for_each_entry(pos, head, member) \
	for (pos = list_first_entry(head, __typeof__(*pos), member); \
	     !list_entry_is_head(pos, head, member); \
	     pos = list_next_entry(pos, member))

static inline void INIT_LIST_HEAD(struct list_head *l)
{
	l->next = l;
	l->prev = l;
}

static inline void pl_list_insert(struct list_head *n, struct list_head *prev,
				  struct list_head *next)
{
	next->prev = n;
	n->next = next;
	n->prev = prev;
	prev->next = n;
}

/* After @head. */
static inline void list_add(struct list_head *n, struct list_head *head)
{
	pl_list_insert(n, head, head->next);
}

/* Before @head. */
static inline void list_add_tail(struct list_head *n, struct list_head *head)
{
	pl_list_insert(n, head->prev, head);
}

static inline void list_del(struct list_head *e)
{
	e->prev->next = e->next;
	e->next->prev = e->prev;
	e->next = NULL;
	e->prev = NULL;
}

#endif /* PL_SHIM_H */
