//! Who is on the other end of a Unix socket.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// Process, user and group of a connected peer (SO_PEERCRED).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Peer {
    pub fn of(sock: &UnixStream) -> std::io::Result<Peer> {
        let cred = getsockopt(sock, PeerCredentials)?;
        Ok(Peer { pid: cred.pid() as u32, uid: cred.uid(), gid: cred.gid() })
    }
}

/// Who may use an owner's socket: root, the owner's own user, and `--allow-uid` users; with
/// `--apparmor-profile`, only those unconfined or confined by that profile.
#[derive(Clone, Debug, Default)]
pub struct AccessPolicy {
    pub owner_uid: u32,
    pub allowed_uids: Vec<u32>,
    /// The AppArmor profile of the VM's QEMU (libvirt: `libvirt-<uuid>`): a peer confined by
    /// any other profile (another domain's QEMU) is refused, whatever its user.
    pub apparmor_profile: Option<String>,
}

impl AccessPolicy {
    pub fn allows(&self, uid: u32) -> bool {
        self.trusts(uid) || self.allowed_uids.contains(&uid)
    }

    /// Root and the owner's own user: every request. `--allow-uid` users get only HELLO,
    /// STATUS and, as the VM's QEMU, the memory (see binding.rs).
    pub fn trusts(&self, uid: u32) -> bool {
        uid == 0 || uid == self.owner_uid
    }

    /// Why `peer` (connected on `sock`) is refused for its AppArmor confinement, if it is: with
    /// `--apparmor-profile P`, a peer must be unconfined, confined by P, or confined like the
    /// owner itself. On kernels whose
    /// AppArmor does not mediate connecting to a Unix socket by path (Debian's 6.12, and Debian
    /// 12's policy compiled against pinned features without it), this is what keeps another
    /// domain's QEMU out.
    pub fn apparmor_refusal(&self, peer: &Peer, sock: &UnixStream) -> Option<String> {
        let ours = self.apparmor_profile.as_ref()?;
        // Pin the process first, so that the label read is this peer's and not that of a
        // process that took over its pid number.
        let pidfd = match peer_pidfd(sock, peer.pid) {
            Ok(pidfd) => pidfd,
            Err(e) => {
                return Some(format!(
                    "pid {}: cannot pin it with a pidfd to read its AppArmor label ({e})",
                    peer.pid
                ))
            }
        };
        // AppArmor labels each thread, and the socket's credentials name only the process: every
        // thread must pass.
        let labels = thread_labels(peer.pid);
        if !alive(&pidfd) {
            return Some(format!("pid {} exited while its AppArmor label was read", peer.pid));
        }
        // The owner's own confinement (e.g. a container's profile every process there runs
        // under) is as good as unconfined.
        let own = own_apparmor_label();
        let foreign =
            labels.into_iter().find(|label| label != "unconfined" && label != ours && Some(label) != own)?;
        Some(format!(
            "pid {} (uid {}) runs under AppArmor profile {foreign}, not this VM's {ours} (another domain's QEMU?)",
            peer.pid, peer.uid
        ))
    }
}

/// Process `pid`'s AppArmor label: `unconfined` or a profile name (the mode, ` (enforce)`,
/// dropped); `None` where AppArmor is not the active LSM or the process is gone.
pub fn apparmor_label(pid: u32) -> Option<String> {
    parse_apparmor_label(&std::fs::read_to_string(format!("/proc/{pid}/attr/apparmor/current")).ok()?)
}

/// This process's own AppArmor label, read once: a process does not change its own confinement
/// while it serves.
fn own_apparmor_label() -> Option<&'static String> {
    static OWN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| apparmor_label(std::process::id())).as_ref()
}

/// The AppArmor labels of every thread of process `pid` (none where AppArmor is off).
fn thread_labels(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("attr/apparmor/current")).ok())
        .filter_map(|text| parse_apparmor_label(&text))
        .collect()
}

/// `libvirt-<uuid> (enforce)\n` → `libvirt-<uuid>`; `unconfined\n` → `unconfined`.
fn parse_apparmor_label(text: &str) -> Option<String> {
    let label = text.trim_end_matches(['\n', '\0']);
    let label = label.strip_suffix(')').and_then(|l| l.rsplit_once(" (")).map_or(label, |(name, _mode)| name);
    (!label.is_empty()).then(|| label.to_string())
}

/// A pidfd of the socket's peer: SO_PEERPIDFD (Linux 6.5+, race-free), else pidfd_open of the
/// credentials' pid, checked to still be the peer (its pid is unchanged and alive).
pub(crate) fn peer_pidfd(sock: &UnixStream, pid: u32) -> std::io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`, a live c_int.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 && fd >= 0 {
        // SAFETY: the kernel returned a new pidfd that nothing else owns.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new pidfd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    if Peer::of(sock).ok().map(|p| p.pid) != Some(pid) || !alive(&pidfd) {
        return Err(std::io::Error::other("the peer went away while it was being pinned"));
    }
    Ok(pidfd)
}

/// Whether the process of `pidfd` still runs (a pidfd becomes readable when it exits).
pub(crate) fn alive(pidfd: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: poll on one valid pollfd, no timeout.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r == 0
}

/// Whether process `pid` exists and is not a zombie (a zombie has closed all its files).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S …`: comm may hold spaces and parentheses; the state follows the last ')'.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apparmor_labels_lose_their_mode() {
        let uuid = "libvirt-6b2a1f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
        assert_eq!(parse_apparmor_label(&format!("{uuid} (enforce)\n")).as_deref(), Some(uuid));
        assert_eq!(parse_apparmor_label(&format!("{uuid} (complain)\0")).as_deref(), Some(uuid));
        assert_eq!(parse_apparmor_label("unconfined\n").as_deref(), Some("unconfined"));
        assert_eq!(parse_apparmor_label("a (b) (enforce)").as_deref(), Some("a (b)"));
        assert_eq!(parse_apparmor_label("\n"), None);
    }

    #[test]
    fn no_profile_means_no_refusal() {
        let (a, _b) = UnixStream::pair().unwrap();
        let me = Peer::of(&a).unwrap();
        assert_eq!(AccessPolicy::default().apparmor_refusal(&me, &a), None);
        // This process is confined like itself (or AppArmor is off): never refused.
        let policy = AccessPolicy { apparmor_profile: Some("libvirt-x".into()), ..Default::default() };
        assert_eq!(policy.apparmor_refusal(&me, &a), None);
    }
}
