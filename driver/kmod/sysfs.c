// SPDX-License-Identifier: GPL-2.0
/*
 * /sys/fs/pagelessfs/: the pool's numbers, one decimal value per file.
 *
 *   capacity_bytes	every range added to the pool
 *   free_bytes		in the free list now
 *   scrubbing_bytes	freed, being zeroed; allocatable once done
 *   quarantined_bytes	freed from files whose mappers still live (DMA)
 *   poisoned_pages	retired after memory errors
 *   ranges		one line per range: start (hex), size in bytes, node
 *   node<N>/		per NUMA node with a range:
 *     capacity_bytes	its ranges
 *     free_bytes	in the free list now
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/kobject.h>
#include <linux/kstrtox.h>
#include <linux/numa.h>
#include <linux/sysfs.h>

#include "pageless.h"

static struct kobject *pl_kobj;
static struct kobject *pl_node_kobjs[MAX_NUMNODES];

static ssize_t capacity_bytes_show(struct kobject *kobj,
				   struct kobj_attribute *attr, char *buf)
{
	struct pl_counts c;

	pl_pool_counts(NUMA_NO_NODE, &c);
	return sysfs_emit(buf, "%llu\n", c.capacity);
}

static ssize_t free_bytes_show(struct kobject *kobj,
			       struct kobj_attribute *attr, char *buf)
{
	struct pl_counts c;

	pl_pool_counts(NUMA_NO_NODE, &c);
	return sysfs_emit(buf, "%llu\n", c.free);
}

static ssize_t scrubbing_bytes_show(struct kobject *kobj,
				    struct kobj_attribute *attr, char *buf)
{
	struct pl_counts c;

	pl_pool_counts(NUMA_NO_NODE, &c);
	return sysfs_emit(buf, "%llu\n", c.scrubbing);
}

static ssize_t quarantined_bytes_show(struct kobject *kobj,
				      struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%llu\n", pl_quarantine_bytes());
}

static ssize_t poisoned_pages_show(struct kobject *kobj,
				   struct kobj_attribute *attr, char *buf)
{
	struct pl_counts c;

	pl_pool_counts(NUMA_NO_NODE, &c);
	return sysfs_emit(buf, "%lu\n", c.poisoned);
}

static ssize_t ranges_show(struct kobject *kobj, struct kobj_attribute *attr,
			   char *buf)
{
	unsigned int i;
	int len = 0, nid;
	u64 start, size;

	for (i = 0; pl_pool_range(i, &start, &size, &nid); i++)
		len += sysfs_emit_at(buf, len, "%#llx %llu %d\n",
				     start, size, nid);
	return len;
}

static struct kobj_attribute pl_attr_capacity = __ATTR_RO(capacity_bytes);
static struct kobj_attribute pl_attr_free = __ATTR_RO(free_bytes);
static struct kobj_attribute pl_attr_scrubbing = __ATTR_RO(scrubbing_bytes);
static struct kobj_attribute pl_attr_quarantined = __ATTR_RO(quarantined_bytes);
static struct kobj_attribute pl_attr_poisoned = __ATTR_RO(poisoned_pages);
static struct kobj_attribute pl_attr_ranges = __ATTR_RO(ranges);

static struct attribute *pl_attrs[] = {
	&pl_attr_capacity.attr,
	&pl_attr_free.attr,
	&pl_attr_scrubbing.attr,
	&pl_attr_quarantined.attr,
	&pl_attr_poisoned.attr,
	&pl_attr_ranges.attr,
	NULL,
};

static const struct attribute_group pl_attr_group = {
	.attrs = pl_attrs,
};

/* The node of a node<N> directory. */
static int pl_kobj_nid(struct kobject *kobj)
{
	int nid = 0;

	if (kstrtoint(kobject_name(kobj) + 4, 10, &nid))
		return 0;
	return nid;
}

static ssize_t node_capacity_show(struct kobject *kobj,
				  struct kobj_attribute *attr, char *buf)
{
	struct pl_counts c;

	pl_pool_counts(pl_kobj_nid(kobj), &c);
	return sysfs_emit(buf, "%llu\n", c.capacity);
}

static ssize_t node_free_show(struct kobject *kobj,
			      struct kobj_attribute *attr, char *buf)
{
	struct pl_counts c;

	pl_pool_counts(pl_kobj_nid(kobj), &c);
	return sysfs_emit(buf, "%llu\n", c.free);
}

static struct kobj_attribute pl_attr_node_capacity =
	__ATTR(capacity_bytes, 0444, node_capacity_show, NULL);
static struct kobj_attribute pl_attr_node_free =
	__ATTR(free_bytes, 0444, node_free_show, NULL);

static struct attribute *pl_node_attrs[] = {
	&pl_attr_node_capacity.attr,
	&pl_attr_node_free.attr,
	NULL,
};

static const struct attribute_group pl_node_group = {
	.attrs = pl_node_attrs,
};

static void pl_nodes_exit(void)
{
	int nid;

	for (nid = 0; nid < MAX_NUMNODES; nid++) {
		kobject_put(pl_node_kobjs[nid]);
		pl_node_kobjs[nid] = NULL;
	}
}

/* node<N>/ for each node with a range. */
static int pl_nodes_init(void)
{
	unsigned int i;
	u64 start, size;
	int nid, ret;

	for (i = 0; pl_pool_range(i, &start, &size, &nid); i++) {
		char name[16];

		if (nid < 0 || nid >= MAX_NUMNODES || pl_node_kobjs[nid])
			continue;
		snprintf(name, sizeof(name), "node%d", nid);
		pl_node_kobjs[nid] = kobject_create_and_add(name, pl_kobj);
		if (!pl_node_kobjs[nid])
			return -ENOMEM;
		ret = sysfs_create_group(pl_node_kobjs[nid], &pl_node_group);
		if (ret)
			return ret;
	}
	return 0;
}

int pl_sysfs_init(void)
{
	int ret;

	pl_kobj = kobject_create_and_add("pagelessfs", fs_kobj);
	if (!pl_kobj)
		return -ENOMEM;
	ret = sysfs_create_group(pl_kobj, &pl_attr_group);
	if (!ret)
		ret = pl_nodes_init();
	if (ret) {
		pl_nodes_exit();
		kobject_put(pl_kobj);
		pl_kobj = NULL;
	}
	return ret;
}

void pl_sysfs_exit(void)
{
	pl_nodes_exit();
	kobject_put(pl_kobj);	/* removes the group with the directory */
	pl_kobj = NULL;
}
