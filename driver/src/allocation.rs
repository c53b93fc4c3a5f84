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

/// A file's identity: the same device and inode means the same memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    /// The identity of an open file.
    pub fn of(file: impl AsFd) -> std::io::Result<FileId> {
        let st = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&file.as_fd()))?;
        Ok(FileId { dev: st.st_dev, ino: st.st_ino })
    }
}

/// A named file of guest memory, its size a multiple of its pool's page size.
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

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file's path in a directory pool; `None` for memfd.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn kind(&self) -> PoolKind {
        self.kind
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    pub fn id(&self) -> FileId {
        self.id
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether `file` is this allocation (same device and inode).
    pub fn is_same_file(&self, file: impl AsFd) -> bool {
        FileId::of(file).is_ok_and(|id| id == self.id)
    }

    /// The physical extents (pagelessfs), or one extent of unknown placement where the
    /// filesystem does not report them.
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

    /// Maps the whole allocation shared, read-write.
    pub fn map(&self) -> Result<Mapping> {
        Mapping::new(&self.file, self.size)
    }

    /// Makes sure every page of the allocation exists now, so that the guest cannot fail for
    /// lack of memory later. pagelessfs memory exists from the moment the file has its size.
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

    /// Removes the allocation's file from its directory pool. The memory is released when the
    /// last fd and mapping of it are gone.
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
