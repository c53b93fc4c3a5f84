//! The owner's side of the control protocol: one thread per client that has started to talk
//! (see [`crate::accept`] for the connections that have not).

use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use pageless_protocol::control::{
    self, code, encode_memory, error_reply, hello_reply, reply, RegionInfo, Request, CONTROL_VERSION,
    MAX_EXTENTS_PER_REPLY, MIN_CONTROL_VERSION, STATUS_EXTENTS,
};
use pageless_protocol::frame::{recv_message, send_message, FrameError, Message};
use pageless_protocol::VhostUserMemoryRegion;

use crate::limits::{and_more, LogLimit};
use crate::owner::Owner;
use crate::peer::Peer;

/// The most offsets one FIND reply lists.
const FIND_LIMIT: usize = 1024;

/// Why a client's connection ended early.
enum Ending {
    /// It broke the protocol or the connection failed; the reason is for the log.
    Failed(String),
    /// It did not complete HELLO by its deadline.
    HelloTimeout,
}

/// Serves one client, whose first bytes have arrived, until it hangs up or breaks the
/// protocol. It must complete HELLO by `hello_deadline`; otherwise it is told `late` and
/// closed, logged through `late_log`.
pub(crate) fn handle(
    owner: &Owner,
    sock: UnixStream,
    peer: Peer,
    hello_deadline: Instant,
    late: &str,
    late_log: &Mutex<LogLimit>,
) {
    let left = hello_deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    if let Err(e) = sock.set_nonblocking(false).and_then(|()| sock.set_read_timeout(Some(left))) {
        return warn!("control client pid {}: cannot set up its socket, closing: {e}", peer.pid);
    }
    let id = owner.add_client(peer);
    debug!("control client {id}: pid {} uid {}", peer.pid, peer.uid);
    match serve_client(owner, &sock, id, peer) {
        Ok(()) => {}
        Err(Ending::Failed(why)) => {
            warn!("control client {id} (pid {} uid {}): {why}; closing its connection", peer.pid, peer.uid)
        }
        Err(Ending::HelloTimeout) => {
            let _ = send_message(&sock, &error_reply(code::HELLO, late));
            let logged = late_log.lock().unwrap_or_else(|e| e.into_inner()).admit(Instant::now());
            if let Some(unlogged) = logged {
                warn!(
                    "control client {id} (pid {}): {late}{}; raise --hello-timeout for slower clients",
                    peer.pid,
                    and_more(unlogged)
                );
            }
        }
    }
    owner.forget_client(id);
    debug!("control client {id} gone");
}

fn serve_client(owner: &Owner, sock: &UnixStream, id: u64, peer: Peer) -> Result<(), Ending> {
    let trusted = owner.policy.trusts(peer.uid);
    // The version agreed in HELLO; 0 until then.
    let mut version = 0;
    loop {
        let message = match recv_message(sock, control::LIMITS) {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(()),
            Err(FrameError::Io(e))
                if version == 0 && matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                return Err(Ending::HelloTimeout)
            }
            Err(e) => return Err(Ending::Failed(e.to_string())),
        };
        let code = message.header.request;
        let request = match Request::parse(&message) {
            Ok(request) => request,
            Err(why) => return Err(refuse(sock, code, &why.to_string())),
        };
        let answer = match request {
            Request::Hello { version: asked, role } => {
                if !(MIN_CONTROL_VERSION..=CONTROL_VERSION).contains(&asked) {
                    let why = format!("control protocol version {asked} is not between {MIN_CONTROL_VERSION} and {CONTROL_VERSION}: use the same pageless build");
                    return Err(refuse(sock, code, &why));
                }
                if version == 0 {
                    // Greeted clients may stay idle as long as they like (QEMU does).
                    sock.set_read_timeout(None).map_err(|e| Ending::Failed(e.to_string()))?;
                }
                version = asked;
                owner.update_client(id, |c| c.role = role.clone());
                debug!("control client {id} is {role:?}, protocol version {version}");
                hello_reply(version, std::process::id())
            }
            _ if version == 0 => return Err(refuse(sock, code, "the first request must be HELLO")),
            Request::GetMemory => match owner
                .qemu
                .memory_for(&owner.policy, &peer, sock)
                .and_then(|_| owner.hand_out_memory(id))
            {
                Ok(()) => memory_table(owner, version).map_err(|e| refuse(sock, code, &e))?,
                Err(why) => {
                    warn!(
                        "control client {id} (pid {} uid {}): refused GET_MEMORY: {why}",
                        peer.pid, peer.uid
                    );
                    error_reply(code, &why)
                }
            },
            Request::Find(_) | Request::Write { .. } | Request::Stop if !trusted => {
                let why = format!(
                    "only root and the owner's user (uid {}) may read, write or stop VM {:?}; uid {} may not",
                    owner.policy.owner_uid, owner.vm, peer.uid
                );
                warn!("control client {id} (pid {} uid {}): refused: {why}", peer.pid, peer.uid);
                error_reply(code, &why)
            }
            Request::Status => {
                // Version 1 clients cannot page: they get every extent, as before.
                let extents = if version >= 2 { STATUS_EXTENTS } else { usize::MAX };
                reply(code, serde_json::to_vec(&owner.status(extents)).expect("status serializes"), vec![])
            }
            Request::Extents { .. } if version < 2 => {
                return Err(refuse(sock, code, "EXTENTS needs control protocol version 2"))
            }
            Request::Extents { start, max } => {
                let max = usize::try_from(max).unwrap_or(usize::MAX).min(MAX_EXTENTS_PER_REPLY);
                match owner.extents(start, max) {
                    Ok(page) => reply(code, page.encode(), vec![]),
                    Err(why) => error_reply(code, &why),
                }
            }
            Request::Find(pattern) => match owner.find(&pattern, FIND_LIMIT) {
                Ok(offsets) => reply(code, serde_json::to_vec(&offsets).expect("offsets serialize"), vec![]),
                Err(why) => error_reply(code, &why),
            },
            Request::Write { offset, data } => {
                let written = owner.check_not_stopping().and_then(|()| owner.write(offset, &data));
                match written {
                    Ok(()) => reply(code, vec![], vec![]),
                    Err(why) => error_reply(code, &why),
                }
            }
            Request::Stop => {
                info!("control client {id} asked the owner to stop");
                send_message(sock, &reply(code, vec![], vec![]))
                    .map_err(|e| Ending::Failed(e.to_string()))?;
                owner.request_stop();
                continue;
            }
        };
        send_message(sock, &answer).map_err(|e| Ending::Failed(e.to_string()))?;
    }
}

/// Answers `code` with an error and returns the reason, for the log.
fn refuse(sock: &UnixStream, code: u32, why: &str) -> Ending {
    let _ = send_message(sock, &error_reply(code, why));
    Ending::Failed(why.to_string())
}

/// The VM's memory as a memory table of one region per cell, in order (with page sizes from
/// version 2, cell ids from version 3), each with a duplicate of the owner's fd of the cell.
/// A region's guest address is its cell's offset in the cells laid end to end, its mmap offset 0.
fn memory_table(owner: &Owner, version: u32) -> Result<Message, String> {
    let mut regions = Vec::with_capacity(owner.cells.len());
    let mut fds = Vec::with_capacity(owner.cells.len());
    for cell in &owner.cells {
        let fd: OwnedFd =
            cell.allocation.file().try_clone().map_err(|e| format!("duplicate the memory fd: {e}"))?.into();
        fds.push(fd);
        let region = VhostUserMemoryRegion::new(cell.offset, cell.allocation.size(), 0, 0);
        regions.push((region, RegionInfo { page_size: cell.allocation.page_size(), cell: cell.id }));
    }
    Ok(reply(code::GET_MEMORY, encode_memory(&regions, version), fds))
}
