//! Who is on the other end of a Unix socket.

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

/// Who may use an owner's socket: root, the owner's own user, and `--allow-uid` users.
#[derive(Clone, Debug)]
pub struct AccessPolicy {
    pub owner_uid: u32,
    pub allowed_uids: Vec<u32>,
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
}

/// Whether process `pid` exists and is not a zombie (a zombie has closed all its files).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S …`: comm may hold spaces and parentheses; the state follows the last ')'.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}
