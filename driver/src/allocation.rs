//! An allocation: one named file of guest memory.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use log::info;
use serde::Serialize;

use crate::fiemap::{extent_count, extents_page, physical_extents, Extent, ExtentPage};
use crate::fs::FsKind;
use crate::mapping::Mapping;
use crate::pool::PoolKind;
use crate::size::Size;
use crate::{Error, Result};

/// A file's identity: the same device and inode means the same memory, whatever fd or path
/// it was reached by. Used to check that an fd a peer passes (e.g. QEMU's memory region) is
/// the VM's allocation and not some other file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct FileId {
    /// The device of the file's filesystem (`st_dev`).
    pub dev: u64,
    /// The inode number on that device (`st_ino`).
    pub ino: u64,
}

impl FileId {
    /// The identity of an open file, from `fstat`.
    ///
    /// # Errors
    ///
    /// The `fstat` error, e.g. `EBADF`.
    pub fn of(file: impl AsFd) -> std::io::Result<FileId> {
        let st = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&file.as_fd()))?;
        Ok(FileId { dev: st.st_dev, ino: st.st_ino })
    }
}

/// A named file of guest memory, made by [`Pool::allocate`](crate::Pool::allocate) or found
/// again by [`Pool::attach`](crate::Pool::attach).
///
/// Invariants: the size is non-zero and a multiple of [`page_size`](Self::page_size); the file
/// is open read-write (close-on-exec); memfd and pagelessfs files are sealed against shrinking
/// and growing (see [`PAGELESS_SIZE_SEALS`](crate::PAGELESS_SIZE_SEALS)), tmpfs and hugetlbfs
/// files cannot be sealed. The memory lives as long as any fd or mapping of the file, or, in a
/// directory pool, until the file is also [removed](Self::remove). Dropping the `Allocation`
/// closes its fd; the file stays.
#[derive(Debug)]
pub struct Allocation {
    file: File,
    name: String,
    path: Option<PathBuf>,
    kind: PoolKind,
    size: u64,
    page_size: u64,
    id: FileId,
}

impl Allocation {
    pub(crate) fn new(
        file: File,
        name: &str,
        path: Option<PathBuf>,
        kind: PoolKind,
        page_size: u64,
    ) -> Result<Self> {
        let meta = file.metadata().map_err(|e| Error::io(format!("stat allocation {name:?}"), e))?;
        Ok(Allocation {
            id: FileId { dev: meta.dev(), ino: meta.ino() },
            size: meta.len(),
            file,
            name: name.into(),
            path,
            kind,
            page_size,
        })
    }

    /// The allocation's name: its file name in a directory pool; a memfd is created with the
    /// name `pageless:NAME` (shown in `/proc/PID/fd`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file's path in a directory pool (the pool directory joined with the name); `None`
    /// for memfd.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The kind of pool the allocation came from, and so what its memory is.
    pub fn kind(&self) -> PoolKind {
        self.kind
    }

    /// The allocation's size in bytes, as the file had it when it was allocated or attached (a
    /// multiple of [`page_size`](Self::page_size)).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The pool's page size in bytes: the host's base page size (4K on x86-64) for tmpfs and
    /// plain memfd, the huge page size for hugetlb, the mount's `pagesize=` for pagelessfs.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The file's device and inode, taken when the allocation was opened.
    pub fn id(&self) -> FileId {
        self.id
    }

    /// The open file, read-write, e.g. to pass its fd to QEMU. Its size cannot be changed where
    /// the allocation is sealed (memfd, pagelessfs): `set_len` fails with `EPERM`.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether `file` is this allocation (same device and inode). `false` also when `fstat` of
    /// `file` fails.
    pub fn is_same_file(&self, file: impl AsFd) -> bool {
        FileId::of(file).is_ok_and(|id| id == self.id)
    }

    /// Where the allocation's memory is, from the FIEMAP ioctl, in file-offset order.
    ///
    /// On pagelessfs: one extent per physically contiguous piece, each aligned to the mount's
    /// page size, with `physical` its byte address; the module shows addresses to
    /// `CAP_SYS_ADMIN` only, so others get `physical: None`. On filesystems without FIEMAP
    /// (tmpfs, hugetlbfs, memfd): one extent covering the whole allocation with `physical: None`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the ioctl fails for another reason than lack of support.
    pub fn extents(&self) -> Result<Vec<Extent>> {
        let extents = physical_extents(&self.file, self.size)
            .map_err(|e| Error::io(format!("FIEMAP of allocation {:?}", self.name), e))?;
        Ok(extents.unwrap_or_else(|| vec![Extent { logical: 0, physical: None, length: self.size }]))
    }

    /// At most `max` extents from file offset `start` on, and where the next ones start;
    /// one extent of unknown placement where the filesystem does not report them.
    pub fn extents_page(&self, start: u64, max: usize) -> Result<ExtentPage> {
        let page = extents_page(&self.file, start, self.size, max.max(1))
            .map_err(|e| Error::io(format!("FIEMAP of allocation {:?} from {start:#x}", self.name), e))?;
        Ok(page.unwrap_or_else(|| ExtentPage {
            extents: if start < self.size {
                vec![Extent { logical: 0, physical: None, length: self.size }]
            } else {
                Vec::new()
            },
            next: None,
        }))
    }

    /// How many extents [`Allocation::extents`] would list, without listing them.
    pub fn extent_count(&self) -> Result<u64> {
        let count = extent_count(&self.file, 0, self.size)
            .map_err(|e| Error::io(format!("FIEMAP of allocation {:?}", self.name), e))?;
        Ok(count.unwrap_or(1))
    }

    /// Maps the whole allocation shared, read-write, into this process. Each call makes a new
    /// mapping on a duplicate of the fd; it stays valid after the `Allocation` is dropped and is
    /// unmapped when the [`Mapping`] is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the fd cannot be duplicated or `mmap` fails (e.g. `ENOMEM`).
    pub fn map(&self) -> Result<Mapping> {
        Mapping::new(&self.file, self.size)
    }

    /// Makes sure every page of the allocation exists now, so that the guest cannot fail for
    /// lack of memory later: `fallocate` over the whole file, which may take a while for large
    /// allocations. pagelessfs memory exists from the moment the file has its size, so this is
    /// a no-op there.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] from `fallocate`, typically `ENOSPC`/`ENOMEM` when the pool or host has
    /// not enough memory left.
    pub fn prefault(&self) -> Result<()> {
        if self.kind == PoolKind::Directory(FsKind::Pagelessfs) {
            return Ok(());
        }
        let start = std::time::Instant::now();
        nix::fcntl::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&self.file),
            nix::fcntl::FallocateFlags::empty(),
            0,
            self.size as i64,
        )
        .map_err(|e| {
            Error::io(format!("pre-fault {} of allocation {:?} (fallocate)", Size(self.size), self.name), e)
        })?;
        info!("pre-faulted {:?}: {} in {:?}", self.name, Size(self.size), start.elapsed());
        Ok(())
    }

    /// Removes the allocation's file from its directory pool, so it can no longer be attached.
    /// The memory is released when the last fd and mapping of it are gone (on pagelessfs, after
    /// the module's quarantine). A no-op for memfd, whose memory goes with its last fd.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] from `unlink`, e.g. `ENOENT` when the file was already removed.
    pub fn remove(&self) -> Result<()> {
        if let Some(path) = &self.path {
            std::fs::remove_file(path).map_err(|e| Error::io(format!("remove {}", path.display()), e))?;
            info!("removed {}", path.display());
        }
        Ok(())
    }
}

impl AsFd for Allocation {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
