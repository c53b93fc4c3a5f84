//! A process's own shared mapping of an allocation, on vm-memory's `MmapRegion`.

use std::fs::File;

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

    /// Copies `buf.len()` bytes at byte `offset` of the mapping into `buf`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the range does not lie inside the mapping; nothing is copied then.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        let slice = self.range(offset, buf.len())?;
        slice.copy_to(buf);
        Ok(())
    }

    /// Copies `data` into the mapping at byte `offset`. Other mappings of the file (QEMU's, the
    /// guest's) see the bytes at once.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the range does not lie inside the mapping; nothing is written then.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        let slice = self.range(offset, data.len())?;
        slice.copy_from(data);
        Ok(())
    }

    /// Byte offsets of the occurrences of `pattern` in the mapping, in increasing order, at most
    /// `limit` of them (the first ones). Scans 1 MiB chunks copied out of the mapping, so it
    /// sees a snapshot that others may change while it runs; matches across chunk boundaries
    /// are found. An empty pattern, or one longer than 1 MiB, finds nothing.
    pub fn find(&self, pattern: &[u8], limit: usize) -> Vec<u64> {
        const CHUNK: usize = 1 << 20;
        let mut found = Vec::new();
        if pattern.is_empty() || pattern.len() > CHUNK {
            return found;
        }
        let overlap = pattern.len() - 1;
        let mut buf = vec![0u8; CHUNK + overlap];
        let mut offset = 0usize;
        while offset < self.len() && found.len() < limit {
            let len = (CHUNK + overlap).min(self.len() - offset);
            self.slice()
                .subslice(offset, len)
                .expect("chunk lies inside the mapping")
                .copy_to(&mut buf[..len]);
            for (i, window) in buf[..len].windows(pattern.len()).enumerate() {
                // Matches starting in the overlap are found again by the next chunk.
                if i < CHUNK && window == pattern {
                    found.push((offset + i) as u64);
                    if found.len() == limit {
                        break;
                    }
                }
            }
            offset += CHUNK;
        }
        found
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
