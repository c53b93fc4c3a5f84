// SPDX-License-Identifier: GPL-2.0
/*
 * /sys/fs/pagelessfs/: the pool's numbers, one decimal value per file.
 *
 *   capacity_bytes	every range added to the pool
 *   free_bytes		in the free list now
 *   scrubbing_bytes	freed, being zeroed; allocatable once done
 *   quarantined_bytes	freed from files whose mappers still live (DMA)
 *   poisoned_pages	retired after memory errors
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/kobject.h>
#include <linux/sysfs.h>

#include "pageless.h"

static struct kobject *pl_kobj;

static ssize_t capacity_bytes_show(struct kobject *kobj,
				   struct kobj_attribute *attr, char *buf)
{
	struct pl_counts c;

	pl_pool_counts(&c);
	return sysfs_emit(buf, "%llu\n", c.capacity);
}

static ssize_t free_bytes_show(struct kobject *kobj,
			       struct kobj_attribute *attr, char *buf)
{
	struct pl_counts c;

	pl_pool_counts(&c);
	return sysfs_emit(buf, "%llu\n", c.free);
}

static ssize_t scrubbing_bytes_show(struct kobject *kobj,
				    struct kobj_attribute *attr, char *buf)
{
	struct pl_counts c;

	pl_pool_counts(&c);
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

	pl_pool_counts(&c);
	return sysfs_emit(buf, "%lu\n", c.poisoned);
}

static struct kobj_attribute pl_attr_capacity = __ATTR_RO(capacity_bytes);
static struct kobj_attribute pl_attr_free = __ATTR_RO(free_bytes);
static struct kobj_attribute pl_attr_scrubbing = __ATTR_RO(scrubbing_bytes);
static struct kobj_attribute pl_attr_quarantined = __ATTR_RO(quarantined_bytes);
static struct kobj_attribute pl_attr_poisoned = __ATTR_RO(poisoned_pages);

static struct attribute *pl_attrs[] = {
	&pl_attr_capacity.attr,
	&pl_attr_free.attr,
	&pl_attr_scrubbing.attr,
	&pl_attr_quarantined.attr,
	&pl_attr_poisoned.attr,
	NULL,
};

static const struct attribute_group pl_attr_group = {
	.attrs = pl_attrs,
};

int pl_sysfs_init(void)
{
	int ret;

	pl_kobj = kobject_create_and_add("pagelessfs", fs_kobj);
	if (!pl_kobj)
		return -ENOMEM;
	ret = sysfs_create_group(pl_kobj, &pl_attr_group);
	if (ret) {
		kobject_put(pl_kobj);
		pl_kobj = NULL;
	}
	return ret;
}

void pl_sysfs_exit(void)
{
	kobject_put(pl_kobj);	/* removes the group with the directory */
	pl_kobj = NULL;
}
