/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * pagelessfs user API: ioctls on regular files of pagelessfs.
 *
 * Seals, like memfd's F_SEAL_SHRINK/F_SEAL_GROW (same values): once added
 * they stay for the inode's life; a size change a seal forbids fails with
 * EPERM.  Adding needs a file open for writing (else EPERM); unknown bits
 * are EINVAL.
 */
#ifndef PAGELESS_UAPI_H
#define PAGELESS_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define PAGELESS_SEAL_SHRINK	0x0002U
#define PAGELESS_SEAL_GROW	0x0004U
#define PAGELESS_SEALS_ALL	(PAGELESS_SEAL_SHRINK | PAGELESS_SEAL_GROW)

#define PAGELESS_IOC_MAGIC	0xB7
#define PAGELESS_IOC_ADD_SEALS	_IOW(PAGELESS_IOC_MAGIC, 0x01, __u32)
#define PAGELESS_IOC_GET_SEALS	_IOR(PAGELESS_IOC_MAGIC, 0x02, __u32)

#endif /* PAGELESS_UAPI_H */
