//! The owner's side of the control protocol: one thread per connected client.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use log::{debug, info, warn};
use protocol::control::{self, code, error_reply, reply, Request, CONTROL_VERSION};
use protocol::frame::{recv_message, send_message, Message};
use protocol::memory::encode_mem_table;
use protocol::VhostUserMemoryRegion;

use crate::owner::Owner;
use crate::peer::Peer;

/// The most offsets one FIND reply lists.
const FIND_LIMIT: usize = 1024;

/// Serves one client until it hangs up or breaks the protocol.
pub(crate) fn handle(owner: &Owner, sock: UnixStream) {
    let peer = match Peer::of(&sock) {
        Ok(peer) => peer,
        Err(e) => return warn!("control client without credentials, closing: {e}"),
    };
    if !owner.policy.allows(peer.uid) {
        warn!(
            "refused control client pid {} uid {}: not root, the owner or an --allow-uid user",
            peer.pid, peer.uid
        );
        let reason =
            format!("uid {} may not use VM {:?} (ask for --allow-uid {})", peer.uid, owner.vm, peer.uid);
        let _ = send_message(&sock, &error_reply(code::HELLO, &reason));
        return;
    }
    let id = owner.add_client(peer);
    debug!("control client {id}: pid {} uid {}", peer.pid, peer.uid);
    if let Err(why) = serve_client(owner, &sock, id) {
        warn!("control client {id} (pid {} uid {}): {why}; closing its connection", peer.pid, peer.uid);
    }
    owner.forget_client(id);
    debug!("control client {id} gone");
}

fn serve_client(owner: &Owner, sock: &UnixStream, id: u64) -> Result<(), String> {
    let mut greeted = false;
    loop {
        let message = match recv_message(sock, control::LIMITS) {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        let code = message.header.request;
        let request = match Request::parse(&message) {
            Ok(request) => request,
            Err(why) => return Err(refuse(sock, code, &why)),
        };
        let answer = match request {
            Request::Hello { version, role } => {
                if version != CONTROL_VERSION {
                    let why = format!("control protocol version {version} is not {CONTROL_VERSION}: use the same pageless build");
                    return Err(refuse(sock, code, &why));
                }
                greeted = true;
                owner.update_client(id, |c| c.role = role.clone());
                debug!("control client {id} is {role:?}");
                reply(code, CONTROL_VERSION.to_ne_bytes().to_vec(), vec![])
            }
            _ if !greeted => return Err(refuse(sock, code, "the first request must be HELLO")),
            Request::GetMemory => {
                let memory = memory_table(owner).map_err(|e| refuse(sock, code, &e))?;
                owner.update_client(id, |c| c.has_memory = true);
                memory
            }
            Request::Status => {
                reply(code, serde_json::to_vec(&owner.status()).expect("status serializes"), vec![])
            }
            Request::Find(pattern) => match owner.mapping.find(&pattern, FIND_LIMIT) {
                Ok(offsets) => reply(code, serde_json::to_vec(&offsets).expect("offsets serialize"), vec![]),
                Err(why) => error_reply(code, &why.to_string()),
            },
            Request::Write { offset, data } => {
                let written = usize::try_from(offset)
                    .map_err(|e| e.to_string())
                    .and_then(|offset| owner.mapping.write(offset, &data).map_err(|e| e.to_string()));
                match written {
                    Ok(()) => reply(code, vec![], vec![]),
                    Err(why) => error_reply(code, &why),
                }
            }
            Request::Stop => {
                info!("control client {id} asked the owner to stop");
                send_message(sock, &reply(code, vec![], vec![])).map_err(|e| e.to_string())?;
                owner.request_stop();
                continue;
            }
        };
        send_message(sock, &answer).map_err(|e| e.to_string())?;
    }
}

/// Answers `code` with an error and returns the reason, for the log.
fn refuse(sock: &UnixStream, code: u32, why: &str) -> String {
    let _ = send_message(sock, &error_reply(code, why));
    why.to_string()
}

/// The whole allocation as a one-region memory table, with a duplicate of the owner's fd.
fn memory_table(owner: &Owner) -> Result<Message, String> {
    let fd: OwnedFd =
        owner.allocation.file().try_clone().map_err(|e| format!("duplicate the memory fd: {e}"))?.into();
    let region = VhostUserMemoryRegion::new(0, owner.allocation.size(), 0, 0);
    Ok(reply(code::GET_MEMORY, encode_mem_table([region].iter()), vec![fd]))
}
