//! Size seals: no process holding an allocation's fd (QEMU, a device backend) may shrink it
//! (which would free the VM's memory under the others, and under DMA mappings of it) or grow it.
//!
//! * memfd: `F_ADD_SEALS` with `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`.
//! * pagelessfs: the module's own ioctls on a regular file, same seal values as memfd's:
//!   `PAGELESS_IOC_ADD_SEALS = _IOW(0xB7, 0x01, __u32)`, `PAGELESS_IOC_GET_SEALS =
//!   _IOR(0xB7, 0x02, __u32)`. Adding needs an fd open for writing; seals are never removed; a
//!   size change a seal forbids fails with EPERM.
//!
//! tmpfs and hugetlbfs files cannot be sealed: only memfd and pagelessfs pools get seals.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use log::debug;

use crate::{Error, Result};

/// The file may not shrink (`F_SEAL_SHRINK`'s value).
pub const PAGELESS_SEAL_SHRINK: u32 = 0x0002;
/// The file may not grow (`F_SEAL_GROW`'s value).
pub const PAGELESS_SEAL_GROW: u32 = 0x0004;
/// What pageless seals every pagelessfs allocation with.
pub const PAGELESS_SIZE_SEALS: u32 = PAGELESS_SEAL_SHRINK | PAGELESS_SEAL_GROW;

const PAGELESS_IOC_MAGIC: u8 = 0xB7;

nix::ioctl_write_ptr!(pageless_add_seals, PAGELESS_IOC_MAGIC, 0x01, u32);
nix::ioctl_read!(pageless_get_seals, PAGELESS_IOC_MAGIC, 0x02, u32);

/// Seals a memfd's size so that no consumer can shrink it under the others (SIGBUS) or grow it.
pub(crate) fn seal_memfd(file: &File) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
    fcntl(file.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))
        .map(drop)
        .map_err(|e| Error::io("seal the memfd's size", e))
}

/// The seals of a pagelessfs file (`PAGELESS_IOC_GET_SEALS`): a bit set of
/// [`PAGELESS_SEAL_SHRINK`] and [`PAGELESS_SEAL_GROW`]. `path` is only used in error messages.
///
/// # Errors
///
/// [`Error::SealUnsupported`] when the file is not on pagelessfs or its module has no seal
/// ioctls (`ENOTTY`); [`Error::Seal`] for other ioctl errors.
pub fn pagelessfs_seals(file: &File, path: &Path) -> Result<u32> {
    let mut seals = 0u32;
    // SAFETY: PAGELESS_IOC_GET_SEALS writes one u32 through the pointer, which points to
    // `seals`, alive and writable for the call; the fd is valid for `file`'s lifetime.
    unsafe { pageless_get_seals(file.as_raw_fd(), &mut seals) }.map_err(|e| seal_error(path, "read", e))?;
    Ok(seals)
}

/// Seals a pagelessfs file against shrinking and growing. A file sealed before (re-attach) is
/// fine: seals only accumulate.
pub(crate) fn seal_pagelessfs(file: &File, path: &Path) -> Result<()> {
    let before = pagelessfs_seals(file, path)?;
    if before & PAGELESS_SIZE_SEALS != PAGELESS_SIZE_SEALS {
        let seals = PAGELESS_SIZE_SEALS;
        // SAFETY: PAGELESS_IOC_ADD_SEALS reads one u32 through the pointer, which points to
        // `seals`, alive for the call; the fd is valid for `file`'s lifetime.
        unsafe { pageless_add_seals(file.as_raw_fd(), &seals) }.map_err(|e| seal_error(path, "add", e))?;
    }
    let after = pagelessfs_seals(file, path)?;
    if after & PAGELESS_SIZE_SEALS != PAGELESS_SIZE_SEALS {
        return Err(Error::SealMissing { path: path.into(), seals: after });
    }
    debug!("{} sealed against shrinking and growing (seals {after:#x}, were {before:#x})", path.display());
    Ok(())
}

fn seal_error(path: &Path, what: &'static str, errno: nix::errno::Errno) -> Error {
    match errno {
        // An older module without the seal ioctls.
        nix::errno::Errno::ENOTTY => Error::SealUnsupported { path: path.into() },
        errno => Error::Seal { path: path.into(), what, source: errno.into() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_modules() {
        // _IOW(0xB7, 0x01, __u32) and _IOR(0xB7, 0x02, __u32) on x86-64 and arm64.
        assert_eq!(nix::request_code_write!(PAGELESS_IOC_MAGIC, 0x01, 4), 0x4004_B701);
        assert_eq!(nix::request_code_read!(PAGELESS_IOC_MAGIC, 0x02, 4), 0x8004_B702);
        assert_eq!(PAGELESS_SIZE_SEALS, libc::F_SEAL_SHRINK as u32 | libc::F_SEAL_GROW as u32);
    }

    #[test]
    fn a_file_without_the_ioctls_is_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        match seal_pagelessfs(&file, &path) {
            Err(Error::SealUnsupported { .. }) => {}
            other => panic!("expected SealUnsupported, got {other:?}"),
        }
    }

    #[test]
    fn a_sealed_memfd_refuses_size_changes() {
        let file = File::from(
            nix::sys::memfd::memfd_create(c"seal-test", nix::sys::memfd::MemFdCreateFlag::MFD_ALLOW_SEALING)
                .unwrap(),
        );
        file.set_len(8192).unwrap();
        seal_memfd(&file).unwrap();
        assert_eq!(file.set_len(0).unwrap_err().raw_os_error(), Some(libc::EPERM));
        assert_eq!(file.set_len(16384).unwrap_err().raw_os_error(), Some(libc::EPERM));
        assert_eq!(file.metadata().unwrap().len(), 8192);
    }
}
