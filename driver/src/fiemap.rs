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
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_UNKNOWN: u32 = 0x2;
const EXTENTS_PER_CALL: usize = 512;

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

/// `struct fiemap` without its extents.
#[repr(C)]
#[derive(Default)]
struct FiemapHeader {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
}

/// `struct fiemap` with room for [`EXTENTS_PER_CALL`] extents.
#[repr(C)]
struct Fiemap {
    header: FiemapHeader,
    fm_extents: [FiemapExtent; EXTENTS_PER_CALL],
}

/// Asks the filesystem for the physical extents of `file`'s first `size` bytes. Without
/// FIEMAP_FLAG_SYNC: on a disk filesystem, data not yet written back shows as extents of unknown
/// placement (memory filesystems have nothing to write back), and a large pool is listed without
/// writing the guest's memory to disk first.
/// Returns `Ok(None)` when the filesystem does not support FIEMAP (tmpfs, hugetlbfs).
pub(crate) fn physical_extents(file: impl AsFd, size: u64) -> std::io::Result<Option<Vec<Extent>>> {
    let mut extents = Vec::new();
    let mut start = Some(0u64);
    while let Some(from) = start {
        let Some(page) = extents_page(file.as_fd(), from, size, usize::MAX)? else { return Ok(None) };
        extents.extend(page.extents);
        start = page.next;
    }
    Ok(Some(extents))
}

/// Some extents of a file, and where the next ones start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentPage {
    /// Extents in file order.
    pub extents: Vec<Extent>,
    /// The file offset to ask for the next page from; `None` after the last extent.
    pub next: Option<u64>,
}

/// At most `max` extents of `file` between `start` and `end` (the first may begin before
/// `start`: it is the one that contains it). `Ok(None)` where FIEMAP is not supported.
pub(crate) fn extents_page(
    file: impl AsFd,
    start: u64,
    end: u64,
    max: usize,
) -> std::io::Result<Option<ExtentPage>> {
    let mut extents = Vec::new();
    let mut from = start;
    while from < end && extents.len() < max {
        let want = (max - extents.len()).min(EXTENTS_PER_CALL);
        let Some((batch, last)) = fiemap(file.as_fd(), from, end - from, want)? else { return Ok(None) };
        let Some(tail) = batch.last() else {
            return Ok(Some(ExtentPage { extents, next: None }));
        };
        from = tail.logical.saturating_add(tail.length).max(from.saturating_add(1));
        extents.extend(batch);
        if last {
            return Ok(Some(ExtentPage { extents, next: None }));
        }
    }
    let next = (from < end).then_some(from);
    Ok(Some(ExtentPage { extents, next }))
}

/// How many extents `file` has between `start` and `end` (FIEMAP with no extent buffer).
/// `Ok(None)` where FIEMAP is not supported.
pub(crate) fn extent_count(file: impl AsFd, start: u64, end: u64) -> std::io::Result<Option<u64>> {
    if start >= end {
        return Ok(Some(0));
    }
    let mut request = FiemapHeader { fm_start: start, fm_length: end - start, ..Default::default() };
    // SAFETY: with fm_extent_count 0, FS_IOC_FIEMAP reads and writes only the `struct fiemap`
    // header, which is exactly the layout and size of `request`; it only counts the extents.
    let rc = unsafe { libc::ioctl(file.as_fd().as_raw_fd(), FS_IOC_FIEMAP, &mut request) };
    if rc < 0 {
        return unsupported_or(std::io::Error::last_os_error());
    }
    Ok(Some(u64::from(request.fm_mapped_extents)))
}

fn unsupported_or<T>(err: std::io::Error) -> std::io::Result<Option<T>> {
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) => Ok(None),
        _ => Err(err),
    }
}

/// One FS_IOC_FIEMAP call for at most `count` (≤ [`EXTENTS_PER_CALL`]) extents of
/// `[start, start + length)`; returns them and whether the last one is the file's last.
fn fiemap(
    file: impl AsFd,
    start: u64,
    length: u64,
    count: usize,
) -> std::io::Result<Option<(Vec<Extent>, bool)>> {
    let count = count.min(EXTENTS_PER_CALL);
    let mut request = Box::new(Fiemap {
        header: FiemapHeader {
            fm_start: start,
            fm_length: length,
            fm_extent_count: count as u32,
            ..Default::default()
        },
        fm_extents: [FiemapExtent::default(); EXTENTS_PER_CALL],
    });
    // SAFETY: FS_IOC_FIEMAP reads and writes a `struct fiemap` followed by `fm_extent_count`
    // (≤ EXTENTS_PER_CALL) extents, which fit in `request`'s layout and size.
    let rc = unsafe { libc::ioctl(file.as_fd().as_raw_fd(), FS_IOC_FIEMAP, &mut *request) };
    if rc < 0 {
        return unsupported_or(std::io::Error::last_os_error());
    }
    let mapped = (request.header.fm_mapped_extents as usize).min(count);
    let extents: Vec<Extent> = request.fm_extents[..mapped]
        .iter()
        .map(|fe| Extent {
            logical: fe.fe_logical,
            physical: (fe.fe_flags & FIEMAP_EXTENT_UNKNOWN == 0).then_some(fe.fe_physical),
            length: fe.fe_length,
        })
        .collect();
    let last = request.fm_extents[..mapped].iter().any(|fe| fe.fe_flags & FIEMAP_EXTENT_LAST != 0);
    Ok(Some((extents, last)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// A file with `count` one-block extents separated by holes, on the filesystem of the
    /// build directory (FIEMAP needs a disk filesystem; tmpfs has none).
    fn holey_file(count: u64) -> Option<std::fs::File> {
        let file = tempfile::tempfile_in(env!("CARGO_MANIFEST_DIR")).ok()?;
        file.set_len(count * 8192).ok()?;
        for i in 0..count {
            file.write_all_at(&[1u8; 4096], i * 8192).ok()?;
        }
        Some(file)
    }

    #[test]
    fn pages_through_every_extent_and_counts_them() {
        let file = holey_file(300).expect("a temporary file next to the crate");
        let size = 300 * 8192;
        let all = physical_extents(&file, size)
            .unwrap()
            .expect("FIEMAP on the build directory's filesystem (ext4, xfs, btrfs: not tmpfs)");
        assert_eq!(all.len(), 300, "one extent per written block: {all:?}");
        assert_eq!(extent_count(&file, 0, size).unwrap(), Some(300));
        let mut paged = Vec::new();
        let mut start = Some(0);
        let mut pages = 0;
        while let Some(from) = start {
            let page = extents_page(&file, from, size, 7).unwrap().unwrap();
            assert!(page.extents.len() <= 7);
            paged.extend(page.extents);
            start = page.next;
            pages += 1;
        }
        assert_eq!(paged, all);
        assert_eq!(pages, 300usize.div_ceil(7));
        let tail = extents_page(&file, 299 * 8192, size, 10).unwrap().unwrap();
        assert_eq!((tail.extents.len(), tail.next), (1, None));
    }
}
