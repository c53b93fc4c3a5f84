//! A file handed to a process across its exec into an SELinux domain, as libvirtd hands QEMU
//! its files: `exec-into` opens the file and execs the program under the label; the program
//! (`probe --inherited FD`) checks whether the file is still there. At a domain transition
//! SELinux revalidates every inherited file against the new domain and replaces each it may
//! not use by its null file (selinuxfs's `null`), or closes it.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::io::IntoRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::apparmor::{kernel, Outcome};

/// Opens `file` read-write as `fd` (inheritable), sets this thread's SELinux exec context to
/// `label` and execs `program` with `args`: returns only on failure.
pub fn exec_into(label: &str, file: &Path, fd: i32, program: &Path, args: &[OsString]) -> io::Error {
    let opened = match OpenOptions::new().read(true).write(true).open(file) {
        Ok(f) => f.into_raw_fd(),
        Err(e) => return io::Error::new(e.kind(), format!("open {}: {e}", file.display())),
    };
    if opened == fd {
        // SAFETY: clears close-on-exec on a descriptor this function owns.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            return io::Error::last_os_error();
        }
    } else {
        // SAFETY: dup2 onto a descriptor number the caller set aside for the file; the
        // duplicate has no close-on-exec flag. `opened` is ours to close.
        unsafe {
            if libc::dup2(opened, fd) < 0 {
                return io::Error::last_os_error();
            }
            libc::close(opened);
        }
    }
    if let Err(e) = std::fs::write("/proc/thread-self/attr/exec", label) {
        return io::Error::new(e.kind(), format!("setexeccon {label}: {e}"));
    }
    Command::new(program).args(args).exec()
}

/// Whether the file on inherited `fd` is still usable: a regular file that maps read-write
/// shared is allowed; SELinux's null file in its place, or the descriptor closed, is denied
/// (the caller made sure the file was there before the exec).
pub(crate) fn inherited(fd: i32) -> Outcome {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}"));
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat writes into `st`, a stat buffer; an fd that is not open gives EBADF.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EBADF) {
            eprintln!("probe: fd {fd} is closed: the kernel took the inherited file away");
            Outcome::Denied
        } else {
            Outcome::Error(format!("fstat fd {fd}: {e}"))
        };
    }
    // SAFETY: fstat succeeded and filled it.
    let st = unsafe { st.assume_init() };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        // SELinux's null file (selinuxfs's "null", on its internal mount) is a character
        // device 1:3 like /dev/null.
        let null = st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == libc::makedev(1, 3);
        return if null {
            eprintln!("probe: fd {fd} is a null device ({link:?}): the inherited file was taken away");
            Outcome::Denied
        } else {
            Outcome::Error(format!("fd {fd} is neither a regular file nor a null device: {link:?}"))
        };
    }
    // SAFETY: maps one page of the file shared, read-write, at an address the kernel picks;
    // unmapped right after, nothing reads or writes it.
    let addr = unsafe {
        libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
    };
    if addr == libc::MAP_FAILED {
        return kernel(io::Error::last_os_error());
    }
    // SAFETY: the mapping made above, not used since.
    unsafe { libc::munmap(addr, 4096) };
    Outcome::Allowed
}
