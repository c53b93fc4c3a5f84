//! Which filesystem a pool directory or allocation lives on, from `statfs`.

use std::fmt;
use std::path::Path;

use nix::sys::statfs::{statfs, Statfs};

use crate::{Error, Result};

/// `statfs.f_type` of tmpfs and memfd (shmem).
pub const TMPFS_MAGIC: i64 = 0x0102_1994;
/// `statfs.f_type` of hugetlbfs (and hugetlb memfds).
pub const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
/// `statfs.f_type` of pagelessfs ("PGLS"), see `driver/kmod/README.md`.
pub const PAGELESSFS_MAGIC: i64 = 0x5047_4c53;

/// The filesystem kinds pageless knows about, from `statfs`'s `f_type`. Displays as the
/// filesystem's name; serializes as `"tmpfs"`, `"hugetlbfs"`, `"pagelessfs"` or
/// `{"other": MAGIC}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    /// tmpfs (shmem): page-cache memory of the host's base page size, swappable.
    Tmpfs,
    /// hugetlbfs: memory in huge pages from the host's hugetlb pool, of the mount's page size.
    Hugetlbfs,
    /// pagelessfs: boot-reserved memory without `struct page`, see `driver/kmod/README.md`.
    Pagelessfs,
    /// Any other filesystem (disk-backed: works, but is not memory).
    Other(i64),
}

impl FsKind {
    fn from_magic(magic: i64) -> Self {
        match magic {
            TMPFS_MAGIC => FsKind::Tmpfs,
            HUGETLBFS_MAGIC => FsKind::Hugetlbfs,
            PAGELESSFS_MAGIC => FsKind::Pagelessfs,
            other => FsKind::Other(other),
        }
    }
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsKind::Tmpfs => f.write_str("tmpfs"),
            FsKind::Hugetlbfs => f.write_str("hugetlbfs"),
            FsKind::Pagelessfs => f.write_str("pagelessfs"),
            FsKind::Other(magic) => write!(f, "non-memory (magic {magic:#x})"),
        }
    }
}

/// What `statfs` says about a filesystem, in bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FsInfo {
    pub kind: FsKind,
    pub block_size: u64,
    /// Total and free bytes, when the filesystem has a limit.
    pub total: Option<u64>,
    pub free: Option<u64>,
}

impl FsInfo {
    fn from_statfs(st: &Statfs) -> Self {
        let block_size = st.block_size() as u64;
        let blocks = st.blocks();
        // hugetlbfs and unlimited mounts report 0 or -1 blocks: no limit known.
        let limited = blocks != 0 && blocks != u64::MAX;
        FsInfo {
            kind: FsKind::from_magic(st.filesystem_type().0),
            block_size,
            total: limited.then(|| blocks.saturating_mul(block_size)),
            free: limited.then(|| st.blocks_available().saturating_mul(block_size)),
        }
    }

    pub fn of_path(path: &Path) -> Result<Self> {
        statfs(path)
            .map(|st| Self::from_statfs(&st))
            .map_err(|e| Error::io(format!("statfs {}", path.display()), e))
    }
}
