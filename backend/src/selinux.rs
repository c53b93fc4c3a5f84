//! SELinux: the level of the owner's listening sockets.
//!
//! Under libvirt's SELinux driver each domain's QEMU runs as `svirt_t` with its own MCS
//! category pair (`s0:c87,c520`), and the reference policy's MCS constraint on
//! `unix_stream_socket connectto` requires the connecting process's level to dominate the
//! listening socket's. A socket carries its creator's context, and the owner (started by the
//! hook from libvirtd) runs as `virtd_t:s0-s0:c0.c1023`: no domain's QEMU could connect. So
//! the owner creates its listening sockets at its low level (`s0`), which every domain
//! dominates; which domain may connect is then decided by the socket *file's* label — the
//! domain's image label, set by the hook (`write` on the `sock_file` is MCS-constrained too) —
//! so another domain's QEMU is refused by the kernel (EACCES).

use std::path::Path;

use log::{debug, warn};

/// Where the kernel says whether SELinux is on (selinuxfs).
const SELINUXFS_ENFORCE: &str = "/sys/fs/selinux/enforce";

/// `user:role:type:low-high` → `user:role:type:low`; `None` when the context has no range
/// (no MLS/MCS) or its range is a single level already.
pub fn low_level_context(context: &str) -> Option<String> {
    let context = context.trim_end_matches(['\n', '\0']);
    let mut fields = context.splitn(4, ':');
    let (user, role, kind, range) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    let (low, _high) = range.split_once('-')?;
    if user.is_empty() || role.is_empty() || kind.is_empty() || low.is_empty() {
        return None;
    }
    Some(format!("{user}:{role}:{kind}:{low}"))
}

/// Runs `create` with the calling thread's socket-creation context set to its own context at
/// its low level (SELinux with MCS only; otherwise `create` just runs), then restores the
/// default. Failing to set it is logged, not fatal: confined QEMUs may then be refused.
pub fn at_low_level<T>(create: impl FnOnce() -> T) -> T {
    let attr = |name: &str| format!("/proc/thread-self/attr/{name}");
    let low = Path::new(SELINUXFS_ENFORCE)
        .exists()
        .then(|| std::fs::read_to_string(attr("current")).ok())
        .flatten()
        .and_then(|current| low_level_context(&current));
    let Some(low) = low else {
        return create();
    };
    let set = write_attr(&attr("sockcreate"), low.as_bytes());
    match &set {
        Ok(()) => debug!("creating listening sockets as {low}"),
        Err(e) => warn!(
            "SELinux: cannot create the listening sockets as {low} ({e}); QEMUs confined with MCS categories (libvirt's svirt_t) will be refused connectto by the policy's MCS constraint"
        ),
    }
    let result = create();
    if set.is_ok() {
        // An empty write restores the default: sockets labelled like their creator.
        if let Err(e) = write_attr(&attr("sockcreate"), b"") {
            warn!("SELinux: cannot reset the socket-creation context ({e})");
        }
    }
    result
}

/// Writes a /proc attribute file in one write(2) (an empty one resets it), opened without
/// O_CREAT (which SELinux would check as a write to the attr directory, denied and logged
/// though the file exists).
fn write_attr(path: &str, value: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let written = std::fs::OpenOptions::new().write(true).open(path)?.write(value)?;
    if written == value.len() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("wrote {written} of {} bytes", value.len())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_level_of_a_range() {
        assert_eq!(
            low_level_context("system_u:system_r:virtd_t:s0-s0:c0.c1023\n").as_deref(),
            Some("system_u:system_r:virtd_t:s0")
        );
        assert_eq!(low_level_context("system_u:system_r:virtd_t:s0\0"), None);
        assert_eq!(low_level_context("unconfined"), None);
        assert_eq!(low_level_context("libvirt-1234 (enforce)"), None);
        assert_eq!(low_level_context("u:r:t:-s0"), None);
    }
}
