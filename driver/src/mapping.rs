//! A process's own shared mapping of an allocation, on vm-memory's `MmapRegion`.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, VolatileMemory, VolatileSlice};

use crate::{Error, Result};

/// A shared read-write mapping of a memory file. Other processes (QEMU, the guest, device
/// backends) write the same memory at any time, so all access is volatile.
#[derive(Debug)]
pub struct Mapping {
    region: MmapRegion<()>,
}

impl Mapping {
    /// Maps `len` bytes of `file` from offset 0, shared and read-write. The mapping holds its
    /// own duplicate of the fd, so `file` may be closed afterwards. `len` should not exceed the
    /// file's size: touching pages past the end of the file raises `SIGBUS`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the fd cannot be duplicated, `len` does not fit in `usize`, or `mmap`
    /// fails (e.g. a zero `len`, or `ENOMEM`).
    pub fn new(file: &File, len: u64) -> Result<Self> {
        let file = file.try_clone().map_err(|e| Error::io("duplicate the allocation's fd", e))?;
        let len =
            usize::try_from(len).map_err(|e| Error::io("map the allocation", std::io::Error::other(e)))?;
        let region = MmapRegion::<()>::build(
            Some(FileOffset::new(file, 0)),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .map_err(|e| Error::io(format!("mmap {len} bytes of the allocation"), std::io::Error::other(e)))?;
        Ok(Mapping { region })
    }

    /// The mapping's length in bytes.
    pub fn len(&self) -> usize {
        self.region.size()
    }

    /// Whether the mapping has no bytes (never the case for a mapping of an allocation).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole mapping as a volatile slice, for access that [`read`](Self::read) and
    /// [`write`](Self::write) do not cover.
    pub fn slice(&self) -> VolatileSlice<'_, <() as vm_memory::bitmap::WithBitmapSlice<'_>>::S> {
        self.region.as_volatile_slice()
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`, through the file (`pread`): a poisoned
    /// or missing page is an error (`EIO` from pagelessfs, hugetlbfs and shmem), never a
    /// `SIGBUS` that would kill the process.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the range does not lie inside the mapping (nothing is copied then),
    /// or the read fails (`EIO` on a poisoned page).
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.range(offset, buf.len())?;
        self.file()?.read_exact_at(buf, offset as u64).map_err(|e| {
            Error::io(format!("read {} bytes at offset {offset:#x} of the allocation", buf.len()), e)
        })
    }

    /// Copies `data` into the allocation at `offset`, through the file (`pwrite`) like
    /// [`Mapping::read`]; through the mapping where the file has no `write` (hugetlbfs).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the range does not lie inside the mapping (nothing is written then),
    /// or the write fails (`EIO` on a poisoned page).
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        let slice = self.range(offset, data.len())?;
        match self.file()?.write_all_at(data, offset as u64) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                slice.copy_from(data);
                Ok(())
            }
            Err(e) => Err(Error::io(
                format!("write {} bytes at offset {offset:#x} of the allocation", data.len()),
                e,
            )),
        }
    }

    /// Offsets of every occurrence of `pattern` (at most `limit`), scanning in chunks read as
    /// [`Mapping::read`] does: a poisoned or missing page fails the search.
    pub fn find(&self, pattern: &[u8], limit: usize) -> Result<Vec<u64>> {
        const CHUNK: usize = 1 << 20;
        let mut found = Vec::new();
        if pattern.is_empty() || pattern.len() > CHUNK {
            return Ok(found);
        }
        let overlap = pattern.len() - 1;
        let mut buf = vec![0u8; CHUNK + overlap];
        let mut offset = 0usize;
        while offset < self.len() && found.len() < limit {
            let len = (CHUNK + overlap).min(self.len() - offset);
            self.read(offset, &mut buf[..len])?;
            let mut start = 0;
            // Matches starting in the overlap are found again by the next chunk.
            while let Some(i) = memmem(&buf[start..len], pattern).map(|at| start + at).filter(|&i| i < CHUNK)
            {
                found.push((offset + i) as u64);
                if found.len() == limit {
                    break;
                }
                start = i + 1;
            }
            offset += CHUNK;
        }
        Ok(found)
    }

    fn file(&self) -> Result<&File> {
        self.region.file_offset().map(FileOffset::file).ok_or_else(|| {
            Error::io("access the allocation", std::io::Error::other("the mapping has no file"))
        })
    }

    fn range(&self, offset: usize, len: usize) -> Result<VolatileSlice<'_, impl BitmapSlice + '_>> {
        self.slice().subslice(offset, len).map_err(|e| {
            Error::io(
                format!("access {len} bytes at offset {offset} of the mapping"),
                std::io::Error::other(e),
            )
        })
    }
}

/// The offset of the first occurrence of `needle` in `haystack`: glibc's memmem, which is fast
/// (vectorised) in every build profile — a byte-by-byte search in a debug build takes seconds
/// per GiB, which slows tests that search guest memory under TCG.
fn memmem(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    // SAFETY: both pointers and lengths describe live slices, which memmem only reads; the
    // result is null or points into `haystack`.
    let hit = unsafe {
        libc::memmem(haystack.as_ptr().cast(), haystack.len(), needle.as_ptr().cast(), needle.len())
    };
    (!hit.is_null()).then(|| hit as usize - haystack.as_ptr() as usize)
}
