//! Which process may have a VM's memory when several processes share a user.
//!
//! libvirt runs every QEMU as the same user, so a user id alone cannot tell VM1's QEMU from
//! VM2's. Root and the owner's own user are trusted with everything. A process of an
//! `--allow-uid` user gets the memory only as **the VM's QEMU**: the first such process to ask
//! (which `pageless qemu` is, before it execs QEMU in the same process) is bound to the VM for
//! the owner's whole life, by a pidfd, so a recycled pid number never passes for it. Every
//! other process of those users is refused the memory and the VM's relayed device sockets,
//! even after the bound QEMU has exited (it may have passed the fd on first): a new QEMU needs
//! a new owner, which is what the libvirt hook starts for each domain start.
//!
//! What this leaves: a process of the QEMU user that asks before the VM's QEMU does gets the
//! memory instead; it is fresh (no guest has run on it) and the VM's QEMU is then refused, so
//! the VM fails to start rather than run on memory someone else holds.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use log::info;

use crate::clock::unix_now;
use crate::peer::{alive, peer_pidfd, AccessPolicy, Peer};

/// The process bound as the VM's QEMU.
struct Bound {
    pid: u32,
    uid: u32,
    since: u64,
    pidfd: OwnedFd,
}

/// The VM's QEMU, once bound.
#[derive(Default)]
pub(crate) struct QemuBinding {
    bound: Mutex<Option<Bound>>,
}

/// What the binding says about one request for the memory.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Root or the owner's own user.
    Trusted,
    /// The VM's QEMU (bound now or before).
    Qemu,
}

impl QemuBinding {
    /// May `peer` (connected on `sock`) have the VM's memory? Binds it if it is the first
    /// untrusted process to ask.
    pub fn memory_for(
        &self,
        policy: &AccessPolicy,
        peer: &Peer,
        sock: &UnixStream,
    ) -> Result<Verdict, String> {
        if policy.trusts(peer.uid) {
            return Ok(Verdict::Trusted);
        }
        let mut bound = self.bound.lock().expect("binding lock");
        match bound.as_ref() {
            Some(b) => check(b, peer),
            None => {
                let pidfd = peer_pidfd(sock, peer.pid).map_err(|e| {
                    format!("cannot pin pid {} with a pidfd ({e}): not handing the memory out", peer.pid)
                })?;
                info!(
                    "the VM's memory is bound to pid {} (uid {}) as its QEMU; no other process of an --allow-uid user gets it while this owner runs",
                    peer.pid, peer.uid
                );
                *bound = Some(Bound { pid: peer.pid, uid: peer.uid, since: unix_now(), pidfd });
                Ok(Verdict::Qemu)
            }
        }
    }

    /// May `peer` use the VM's relayed device sockets (as QEMU's vhost-user frontend)? Only
    /// trusted users and the bound QEMU.
    pub fn frontend(&self, policy: &AccessPolicy, peer: &Peer) -> Result<Verdict, String> {
        if policy.trusts(peer.uid) {
            return Ok(Verdict::Trusted);
        }
        match self.bound.lock().expect("binding lock").as_ref() {
            Some(b) => check(b, peer),
            None => Err(format!(
                "pid {} (uid {}) is not the VM's QEMU: no QEMU has received the VM's memory yet",
                peer.pid, peer.uid
            )),
        }
    }

    /// The bound QEMU: pid, uid, since when, whether it still runs.
    pub fn describe(&self) -> Option<(u32, u32, u64, bool)> {
        self.bound.lock().expect("binding lock").as_ref().map(|b| (b.pid, b.uid, b.since, alive(&b.pidfd)))
    }
}

/// The same live process as the bound one, or a refusal that says why.
fn check(b: &Bound, peer: &Peer) -> Result<Verdict, String> {
    let running = alive(&b.pidfd);
    if peer.pid == b.pid && running {
        return Ok(Verdict::Qemu);
    }
    Err(if running {
        format!(
            "pid {} (uid {}) is not the VM's QEMU: the memory is bound to pid {} (uid {}) since {}",
            peer.pid, peer.uid, b.pid, b.uid, b.since
        )
    } else {
        format!(
            "pid {} (uid {}) is not the VM's QEMU: the memory was bound to pid {}, which has exited; a new QEMU needs a new owner (restart pageless serve)",
            peer.pid, peer.uid, b.pid
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AccessPolicy {
        AccessPolicy { owner_uid: 0, allowed_uids: vec![65534], ..Default::default() }
    }

    #[test]
    fn the_first_untrusted_process_is_bound_and_others_are_refused() {
        let (a, _b) = UnixStream::pair().unwrap();
        let binding = QemuBinding::default();
        let me = Peer::of(&a).unwrap();
        let root = Peer { uid: 0, ..me };
        assert_eq!(
            binding.memory_for(&policy(), &root, &a),
            Ok(Verdict::Trusted),
            "root is trusted, binds nothing"
        );
        assert!(binding.describe().is_none());
        let qemu = Peer { uid: 65534, ..me };
        assert_eq!(binding.memory_for(&policy(), &qemu, &a), Ok(Verdict::Qemu));
        assert_eq!(binding.memory_for(&policy(), &qemu, &a), Ok(Verdict::Qemu), "the same process again");
        assert_eq!(binding.frontend(&policy(), &qemu), Ok(Verdict::Qemu));
        let other = Peer { pid: me.pid + 1, uid: 65534, ..me };
        let refused = binding.memory_for(&policy(), &other, &a).unwrap_err();
        assert!(refused.contains("not the VM's QEMU"), "{refused}");
        assert!(binding.frontend(&policy(), &other).is_err());
        assert_eq!(binding.describe().map(|d| (d.0, d.3)), Some((me.pid, true)));
    }

    #[test]
    fn no_frontend_before_a_qemu_is_bound() {
        let (a, _b) = UnixStream::pair().unwrap();
        let qemu = Peer { uid: 65534, ..Peer::of(&a).unwrap() };
        assert!(QemuBinding::default().frontend(&policy(), &qemu).is_err());
    }
}
