//! Starting a process that outlives its starter: the hook's owners, and the owner and QEMU that
//! `pageless update restore` leaves running.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes `command` start detached: in its own session (no terminal, not killed with the
/// starter's process group), with every fd above stderr close-on-exec, so that nothing the
/// starter inherited (pipes a caller such as libvirtd waits on) lives on in the child.
pub(crate) fn in_own_session(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (setsid, close_range); it touches no memory of the parent that another
    // thread could have left inconsistent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
