//! The fds of vhost-user messages that are not guest memory: the dirty log of live migration
//! (`SET_LOG_BASE`, `SET_LOG_FD`) and the virtqueues' eventfds (`SET_VRING_KICK`, `_CALL`,
//! `_ERR`). They stay QEMU's own fds (the owner never hands out its memory fd here), but a
//! backend writes into each of them, so a frontend must not be able to name other memory:
//!
//! * the log (`VhostUserLog { mmap_size, mmap_offset }` and one fd) must be a memfd sealed
//!   against shrinking (QEMU's `vhost-log` is sealed grow, shrink and seal) and hold the range
//!   the message claims, so the backend's mapping of it cannot fault later; it must be neither
//!   this VM's memory nor any pageless memfd (`pageless:<vm>`);
//! * every other fd must be an eventfd: a backend `write()`s 8 bytes to a call, error or log
//!   notification fd, which on a memory file would write into that file.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use thiserror::Error;

/// The size of `SET_LOG_BASE`'s payload, `VhostUserLog`.
pub(super) const LOG_PAYLOAD: usize = 16;
/// `VHOST_USER_VRING_NOFD_MASK`: the vring message carries no fd.
const VRING_NOFD: u64 = 1 << 8;

/// Why an fd-carrying message that is not guest memory was refused.
#[derive(Debug, Error)]
pub enum FdError {
    /// The payload's size is not what the message type has.
    #[error("a payload of {got} bytes, {want} expected")]
    Payload {
        /// The size received.
        got: usize,
        /// The message type's payload size.
        want: usize,
    },
    /// Not the number of fds the message needs.
    #[error("{got} fds, {want} expected")]
    FdCount {
        /// The number of fds attached.
        got: usize,
        /// What the message (and its no-fd flag) asks for.
        want: usize,
    },
    /// The log's range is empty or does not fit in 64 bits.
    #[error("the log's mmap_offset {offset:#x} + mmap_size {size:#x} is empty or overflows")]
    LogRange {
        /// `mmap_offset`.
        offset: u64,
        /// `mmap_size`.
        size: u64,
    },
    /// The log's fd is one of this VM's memory files.
    #[error("the log's fd is the VM's own memory: the backend would write its dirty bitmap into guest RAM")]
    LogIsGuestMemory,
    /// The log's fd is a pageless memfd (another VM's memory).
    #[error("the log's fd is VM memory ({0}), not QEMU's dirty log")]
    LogIsVmMemory(String),
    /// The log's fd is not a memfd sealed against shrinking.
    #[error("the log's fd ({what}) is not a memfd sealed against shrinking: {why}")]
    LogNotSealed {
        /// What the fd is, from /proc/self/fd.
        what: String,
        /// What is missing.
        why: String,
    },
    /// The log's file is smaller than the range the message claims.
    #[error(
        "the log's memfd holds {file:#x} bytes, less than mmap_offset {offset:#x} + mmap_size {size:#x}"
    )]
    LogTooSmall {
        /// The file's size.
        file: u64,
        /// `mmap_offset`.
        offset: u64,
        /// `mmap_size`.
        size: u64,
    },
    /// An fd that must be an eventfd is something else.
    #[error("its fd is {0}, not an eventfd")]
    NotEventfd(String),
    /// The fd cannot be examined.
    #[error("cannot examine its fd: {0}")]
    Stat(#[source] nix::Error),
}

/// `SET_LOG_BASE`: the dirty log QEMU shares with the backend for live migration. Returns
/// the log's size (`mmap_size`) for the relay's log line. `is_vm_memory` tells whether an fd
/// is one of this VM's memory files ([`crate::owner::Owner::cell_of`]).
pub(super) fn check_log_base(
    payload: &[u8],
    fds: &[OwnedFd],
    is_vm_memory: impl Fn(&OwnedFd) -> bool,
) -> Result<u64, FdError> {
    if payload.len() != LOG_PAYLOAD {
        return Err(FdError::Payload { got: payload.len(), want: LOG_PAYLOAD });
    }
    let [fd] = fds else { return Err(FdError::FdCount { got: fds.len(), want: 1 }) };
    let field = |at: usize| u64::from_le_bytes(payload[at..at + 8].try_into().expect("8 bytes"));
    let (size, offset) = (field(0), field(8));
    let end = offset.checked_add(size).filter(|_| size > 0).ok_or(FdError::LogRange { offset, size })?;
    if is_vm_memory(fd) {
        return Err(FdError::LogIsGuestMemory);
    }
    let what = describe(fd);
    if what.starts_with("/memfd:pageless:") {
        return Err(FdError::LogIsVmMemory(what));
    }
    let seals = match fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS) {
        Ok(seals) => SealFlag::from_bits_truncate(seals),
        Err(e) => return Err(FdError::LogNotSealed { what, why: format!("it has no seals ({e})") }),
    };
    if !seals.contains(SealFlag::F_SEAL_SHRINK) {
        return Err(FdError::LogNotSealed { what, why: "it can still be shrunk".into() });
    }
    let file = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(FdError::Stat)?.st_size as u64;
    if file < end {
        return Err(FdError::LogTooSmall { file, offset, size });
    }
    Ok(size)
}

/// `SET_LOG_FD`: exactly one eventfd.
pub(super) fn check_log_fd(fds: &[OwnedFd]) -> Result<(), FdError> {
    let [fd] = fds else { return Err(FdError::FdCount { got: fds.len(), want: 1 }) };
    check_eventfd(fd)
}

/// `SET_VRING_KICK`, `_CALL`, `_ERR`: a u64 (ring index, `VRING_NOFD` flag) and, unless the
/// flag is set, one eventfd.
pub(super) fn check_vring_fd(payload: &[u8], fds: &[OwnedFd]) -> Result<(), FdError> {
    let value: [u8; 8] = payload.try_into().map_err(|_| FdError::Payload { got: payload.len(), want: 8 })?;
    let want = if u64::from_le_bytes(value) & VRING_NOFD != 0 { 0 } else { 1 };
    if fds.len() != want {
        return Err(FdError::FdCount { got: fds.len(), want });
    }
    fds.iter().try_for_each(check_eventfd)
}

fn check_eventfd(fd: &OwnedFd) -> Result<(), FdError> {
    match describe(fd) {
        what if what == "anon_inode:[eventfd]" => Ok(()),
        what => Err(FdError::NotEventfd(what)),
    }
}

/// What an fd is, as /proc/self/fd shows it (`anon_inode:[eventfd]`, `/memfd:NAME (deleted)`,
/// a path).
fn describe(fd: impl AsFd) -> String {
    let link = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    std::fs::read_link(&link).map_or_else(|e| format!("unknown ({link}: {e})"), |p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    use std::os::fd::FromRawFd;

    fn memfd(name: &str, size: i64, seals: SealFlag) -> OwnedFd {
        let name = std::ffi::CString::new(name).unwrap();
        let fd =
            memfd_create(&name, MemFdCreateFlag::MFD_ALLOW_SEALING | MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&fd, size).unwrap();
        fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals)).unwrap();
        fd
    }

    fn eventfd() -> OwnedFd {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` was just created and nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn vring(index: u64, nofd: bool) -> Vec<u8> {
        (index | if nofd { VRING_NOFD } else { 0 }).to_le_bytes().to_vec()
    }

    #[test]
    fn vring_fds_must_be_eventfds() {
        assert!(check_vring_fd(&vring(0, false), &[eventfd()]).is_ok());
        assert!(check_vring_fd(&vring(1, true), &[]).is_ok());
        let file = tempfile::tempfile().unwrap();
        let err = check_vring_fd(&vring(0, false), &[OwnedFd::from(file)]).unwrap_err();
        assert!(matches!(err, FdError::NotEventfd(_)), "{err}");
        let sealed = memfd("vhost-log", 4096, SealFlag::F_SEAL_SHRINK);
        assert!(matches!(check_vring_fd(&vring(0, false), &[sealed]), Err(FdError::NotEventfd(_))));
        assert!(matches!(check_vring_fd(&vring(0, false), &[]), Err(FdError::FdCount { got: 0, want: 1 })));
        assert!(matches!(
            check_vring_fd(&vring(0, true), &[eventfd()]),
            Err(FdError::FdCount { got: 1, want: 0 })
        ));
        assert!(matches!(
            check_vring_fd(&vring(0, false), &[eventfd(), eventfd()]),
            Err(FdError::FdCount { got: 2, want: 1 })
        ));
        assert!(matches!(check_vring_fd(&[0; 4], &[eventfd()]), Err(FdError::Payload { got: 4, want: 8 })));
    }

    fn log(size: u64, offset: u64) -> Vec<u8> {
        [size.to_le_bytes(), offset.to_le_bytes()].concat()
    }

    const QEMU_SEALS: SealFlag =
        SealFlag::F_SEAL_GROW.union(SealFlag::F_SEAL_SHRINK).union(SealFlag::F_SEAL_SEAL);

    #[test]
    fn log_base_is_qemus_sealed_memfd_holding_the_range() {
        let not_vm = |_: &OwnedFd| false;
        // What QEMU sends: its sealed `vhost-log` memfd, offset 0, the whole log.
        let qemu = memfd("vhost-log", 8192, QEMU_SEALS);
        assert_eq!(check_log_base(&log(8192, 0), &[qemu], not_vm).unwrap(), 8192);
        let shrink_only = memfd("vhost-log", 8192, SealFlag::F_SEAL_SHRINK);
        assert!(check_log_base(&log(4096, 4096), &[shrink_only], not_vm).is_ok());

        let small = || memfd("vhost-log", 4096, QEMU_SEALS);
        for (size, offset) in [(8192, 0), (4096, 1), (1, 4096)] {
            let err = check_log_base(&log(size, offset), &[small()], not_vm).unwrap_err();
            assert!(matches!(err, FdError::LogTooSmall { file: 4096, .. }), "{size} at {offset}: {err}");
        }
        for (size, offset) in [(0, 0), (u64::MAX, 1), (1, u64::MAX)] {
            let err = check_log_base(&log(size, offset), &[small()], not_vm).unwrap_err();
            assert!(matches!(err, FdError::LogRange { .. }), "{size} at {offset}: {err}");
        }
        // Shrinkable: the backend's mapping could fault once QEMU shrinks it.
        let unsealed = memfd("vhost-log", 8192, SealFlag::empty());
        let err = check_log_base(&log(4096, 0), &[unsealed], not_vm).unwrap_err();
        assert!(matches!(err, FdError::LogNotSealed { .. }), "{err}");
        // A plain file (which could be any VM's memory on a directory pool), an eventfd.
        let file = tempfile::tempfile().unwrap();
        file.set_len(8192).unwrap();
        let err = check_log_base(&log(4096, 0), &[OwnedFd::from(file)], not_vm).unwrap_err();
        assert!(matches!(err, FdError::LogNotSealed { .. }), "{err}");
        assert!(matches!(
            check_log_base(&log(8, 0), &[eventfd()], not_vm),
            Err(FdError::LogNotSealed { .. })
        ));
        // VM memory: this VM's, or any pageless memfd.
        let err = check_log_base(&log(4096, 0), &[small()], |_| true).unwrap_err();
        assert!(matches!(err, FdError::LogIsGuestMemory), "{err}");
        let vm = memfd("pageless:other-vm", 8192, QEMU_SEALS);
        let err = check_log_base(&log(4096, 0), &[vm], not_vm).unwrap_err();
        assert!(matches!(err, FdError::LogIsVmMemory(_)), "{err}");
        // Framing.
        assert!(matches!(
            check_log_base(&log(4096, 0), &[], not_vm),
            Err(FdError::FdCount { got: 0, want: 1 })
        ));
        assert!(matches!(
            check_log_base(&log(4096, 0), &[small(), small()], not_vm),
            Err(FdError::FdCount { got: 2, want: 1 })
        ));
        assert!(matches!(
            check_log_base(&log(4096, 0)[..8], &[small()], not_vm),
            Err(FdError::Payload { got: 8, want: 16 })
        ));
        let mut long = log(4096, 0);
        long.push(0);
        assert!(matches!(check_log_base(&long, &[small()], not_vm), Err(FdError::Payload { got: 17, .. })));
    }

    #[test]
    fn log_fd_must_be_one_eventfd() {
        assert!(check_log_fd(&[eventfd()]).is_ok());
        assert!(matches!(check_log_fd(&[]), Err(FdError::FdCount { .. })));
        assert!(matches!(check_log_fd(&[eventfd(), eventfd()]), Err(FdError::FdCount { .. })));
        let memory = memfd("x", 4096, SealFlag::empty());
        assert!(matches!(check_log_fd(&[memory]), Err(FdError::NotEventfd(_))));
    }
}
