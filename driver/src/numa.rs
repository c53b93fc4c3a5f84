//! Placing an allocation's memory on one host NUMA node.
//!
//! * shmem memory (plain `memfd`, `dir:` on tmpfs): `mbind(MPOL_BIND)` on a mapping of the
//!   file sets the *file's* shared policy, so every page of it, faulted by any process (QEMU,
//!   a device backend) or by `fallocate`, comes from that node.
//! * hugetlb memory (`memfd:2M`/`memfd:1G`, `hugetlbfs:`): hugetlbfs has no shared policy, a
//!   page comes from the policy of whoever faults it first. [`bind_to_node`] therefore
//!   allocates every huge page at once (`fallocate`) from a thread bound to the node
//!   (`set_mempolicy(MPOL_BIND)`), taking the node's own huge pages
//!   (`/sys/devices/system/node/nodeN/hugepages/`).
//! * pagelessfs: the memory is where the mount's reserved ranges are; refused here (use a
//!   pagelessfs mount of that node).

use std::os::fd::AsRawFd;
use std::path::Path;

use log::info;

use crate::{Allocation, Error, FsKind, PoolKind, Result};

/// `MPOL_BIND` from `<linux/mempolicy.h>`.
const MPOL_BIND: libc::c_long = 2;
/// `MPOL_DEFAULT`.
const MPOL_DEFAULT: libc::c_long = 0;
/// Highest node number a mask here can name (the kernel's usual `MAX_NUMNODES` is 1024).
const MAX_NODES: u32 = 1024;

/// Whether host node `node` exists (`/sys/devices/system/node/node<node>`).
pub fn host_node_exists(node: u32) -> bool {
    Path::new(&format!("/sys/devices/system/node/node{node}")).is_dir()
}

/// A node mask with only `node` set, as mbind/set_mempolicy take it, and its `maxnode`.
fn node_mask(node: u32) -> (Vec<libc::c_ulong>, libc::c_ulong) {
    let bits = libc::c_ulong::BITS;
    let mut mask = vec![0 as libc::c_ulong; (MAX_NODES / bits) as usize];
    mask[(node / bits) as usize] |= 1 << (node % bits);
    // maxnode counts bits; the kernel reads maxnode - 1 of them.
    (mask, libc::c_ulong::from(MAX_NODES) + 1)
}

/// Places every page of `allocation` on host node `node` (see the module documentation), or
/// says why it cannot.
///
/// # Errors
///
/// [`Error::NoHostNode`] for a node the host does not have, [`Error::NodeUnsupported`] for a
/// pagelessfs pool or a `dir:` pool that is not on tmpfs, [`Error::Io`] when `mbind`,
/// `set_mempolicy` or `fallocate` fail (`ENOMEM`/`ENOSPC`: the node has not enough free
/// memory, or free huge pages of that size).
pub fn bind_to_node(allocation: &Allocation, pool: &str, node: u32) -> Result<()> {
    if node >= MAX_NODES || !host_node_exists(node) {
        return Err(Error::NoHostNode { node });
    }
    let unsupported = |why: &str| Error::NodeUnsupported { pool: pool.into(), node, why: why.into() };
    let hugetlb = allocation.page_size() > crate::pool::base_page_size();
    match allocation.kind() {
        PoolKind::Directory(FsKind::Pagelessfs) => Err(unsupported(
            "pagelessfs memory is where the mount's reserved ranges are: use a pagelessfs mount of that node as the cell's pool",
        )),
        PoolKind::Directory(FsKind::Other(_)) => {
            Err(unsupported("only memfd, tmpfs (dir:) and hugetlb pools can be bound to a node"))
        }
        PoolKind::Memfd | PoolKind::Directory(FsKind::Hugetlbfs) if hugetlb => {
            prefault_on_node(allocation, node)
        }
        PoolKind::Directory(FsKind::Hugetlbfs) => Err(unsupported("a hugetlbfs pool with base pages")),
        PoolKind::Memfd | PoolKind::Directory(FsKind::Tmpfs) => mbind_file(allocation, node),
    }
}

/// Sets the shmem file's shared policy through a temporary mapping of it.
fn mbind_file(allocation: &Allocation, node: u32) -> Result<()> {
    let mapping = allocation.map()?;
    let (mask, maxnode) = node_mask(node);
    let addr = mapping.slice().ptr_guard_mut().as_ptr();
    // SAFETY: `addr` and `mapping.len()` are a live shared mapping of ours; mbind only changes
    // the memory policy of that range (and, for shmem, the file's shared policy); `mask` holds
    // `maxnode - 1` bits and outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr as libc::c_ulong,
            mapping.len() as libc::c_ulong,
            MPOL_BIND,
            mask.as_ptr(),
            maxnode,
            0 as libc::c_ulong,
        )
    };
    if ret != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::io(format!("mbind allocation {:?} to host node {node}", allocation.name()), e));
    }
    info!("allocation {:?}: bound to host node {node} (shared memory policy)", allocation.name());
    Ok(())
}

/// Allocates every huge page now, from a thread whose memory policy is bound to `node`.
fn prefault_on_node(allocation: &Allocation, node: u32) -> Result<()> {
    let fd = allocation.file().as_raw_fd();
    let size = allocation.size();
    let name = allocation.name().to_string();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let (mask, maxnode) = node_mask(node);
                // SAFETY: set_mempolicy only changes this (short-lived) thread's policy; `mask`
                // holds `maxnode - 1` bits and outlives the call.
                let ret = unsafe { libc::syscall(libc::SYS_set_mempolicy, MPOL_BIND, mask.as_ptr(), maxnode) };
                if ret != 0 {
                    let e = std::io::Error::last_os_error();
                    return Err(Error::io(format!("set_mempolicy to host node {node}"), e));
                }
                let done = nix::fcntl::fallocate(fd, nix::fcntl::FallocateFlags::empty(), 0, size as i64)
                    .map_err(|e| {
                        Error::io(
                            format!("allocate the huge pages of {name:?} on host node {node} (fallocate; does the node have enough free huge pages? /sys/devices/system/node/node{node}/hugepages/)"),
                            e,
                        )
                    });
                // SAFETY: as above; MPOL_DEFAULT takes no mask.
                unsafe { libc::syscall(libc::SYS_set_mempolicy, MPOL_DEFAULT, std::ptr::null::<libc::c_ulong>(), 0) };
                done
            })
            .join()
            .unwrap_or_else(|_| Err(Error::io("bind to a host node", std::io::Error::other("thread panicked"))))
    })?;
    info!("allocation {name:?}: every huge page allocated on host node {node}");
    Ok(())
}

/// The host node of each page of `len` bytes at `addr` in this process (`move_pages(2)`
/// without moving), or a negative errno for a page that is not present.
///
/// # Safety
///
/// `addr..addr + len` must be mapped in this process for the duration of the call.
pub unsafe fn page_nodes(addr: *const u8, len: usize) -> std::io::Result<Vec<i32>> {
    let page = crate::pool::base_page_size() as usize;
    let pages: Vec<*const libc::c_void> =
        (0..len.div_ceil(page)).map(|i| addr.wrapping_add(i * page).cast()).collect();
    let mut status = vec![0i32; pages.len()];
    // SAFETY: `pages` and `status` have the same length; nodes NULL only queries.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0 as libc::c_long,
            pages.len() as libc::c_ulong,
            pages.as_ptr(),
            std::ptr::null::<i32>(),
            status.as_mut_ptr(),
            0 as libc::c_long,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_name_one_node() {
        let (mask, maxnode) = node_mask(0);
        assert_eq!((mask[0], maxnode), (1, 1025));
        let (mask, _) = node_mask(65);
        assert_eq!((mask[0], mask[1]), (0, 2));
    }

    #[test]
    fn a_memfd_is_bound_to_node_0_and_its_pages_are_there() {
        let pool = crate::Pool::open(&"memfd".parse().unwrap()).unwrap();
        let allocation = pool.allocate("numa-test", 1 << 20).unwrap();
        bind_to_node(&allocation, "memfd", 0).unwrap();
        let mapping = allocation.map().unwrap();
        mapping.write(0, &[1u8; 1 << 20]).unwrap();
        let addr = mapping.slice().ptr_guard().as_ptr();
        for offset in (0..mapping.len()).step_by(4096) {
            // SAFETY: inside the live mapping; faults the page into this process's page table.
            assert_eq!(unsafe { addr.add(offset).read_volatile() }, 1);
        }
        // SAFETY: the mapping lives across the call.
        let nodes = unsafe { page_nodes(addr, mapping.len()) }.unwrap();
        assert!(nodes.iter().all(|&n| n == 0), "{nodes:?}");
        assert!(matches!(bind_to_node(&allocation, "memfd", MAX_NODES + 1), Err(Error::NoHostNode { .. })));
        assert!(matches!(bind_to_node(&allocation, "memfd", 1000), Err(Error::NoHostNode { .. })));
    }
}
