//! Physical extents of a file, via the FIEMAP ioctl.

use std::os::fd::{AsFd, AsRawFd};

use serde::Serialize;

/// One extent of an allocation, as [`Allocation::extents`](crate::Allocation::extents) reports
/// it: `length` bytes at file offset `logical`, stored at `physical`. All values are in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Extent {
    /// Offset of the extent in the file, in bytes.
    pub logical: u64,
    /// Physical byte address of the extent's first byte on pagelessfs; `None` where the
    /// filesystem does not say (no FIEMAP support, or FIEMAP flags the placement unknown, as
    /// pagelessfs does for callers without `CAP_SYS_ADMIN`).
    pub physical: Option<u64>,
    /// Length of the extent, in bytes.
    pub length: u64,
}

const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_UNKNOWN: u32 = 0x2;
const EXTENTS_PER_CALL: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

#[repr(C)]
struct Fiemap {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
    fm_extents: [FiemapExtent; EXTENTS_PER_CALL],
}

/// Asks the filesystem for the physical extents of `file`'s first `size` bytes.
/// Returns `Ok(None)` when the filesystem does not support FIEMAP (tmpfs, hugetlbfs).
pub(crate) fn physical_extents(file: impl AsFd, size: u64) -> std::io::Result<Option<Vec<Extent>>> {
    let mut extents = Vec::new();
    let mut start = 0u64;
    while start < size {
        let mut request = Fiemap {
            fm_start: start,
            fm_length: size - start,
            fm_flags: FIEMAP_FLAG_SYNC,
            fm_mapped_extents: 0,
            fm_extent_count: EXTENTS_PER_CALL as u32,
            fm_reserved: 0,
            fm_extents: [FiemapExtent::default(); EXTENTS_PER_CALL],
        };
        // SAFETY: FS_IOC_FIEMAP reads and writes a `struct fiemap` followed by
        // `fm_extent_count` extents, which is exactly the layout and size of `request`.
        let rc = unsafe { libc::ioctl(file.as_fd().as_raw_fd(), FS_IOC_FIEMAP, &mut request) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) => Ok(None),
                _ => Err(err),
            };
        }
        let mapped = (request.fm_mapped_extents as usize).min(EXTENTS_PER_CALL);
        if mapped == 0 {
            break;
        }
        let mut last = false;
        for fe in &request.fm_extents[..mapped] {
            extents.push(Extent {
                logical: fe.fe_logical,
                physical: (fe.fe_flags & FIEMAP_EXTENT_UNKNOWN == 0).then_some(fe.fe_physical),
                length: fe.fe_length,
            });
            start = fe.fe_logical.saturating_add(fe.fe_length);
            last |= fe.fe_flags & FIEMAP_EXTENT_LAST != 0;
        }
        if last {
            break;
        }
    }
    Ok(Some(extents))
}
