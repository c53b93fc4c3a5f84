//! The vhost-user relay: QEMU connects to `<run-dir>/<vm>/<NAME>.sock`; each connection is
//! relayed message by message, with its fds, to a fresh connection to the device backend, in
//! both directions. Memory messages are checked, never trusted: every region of SET_MEM_TABLE
//! and ADD_MEM_REG must be one of the VM's allocations (same device and inode: with `--cell`,
//! one of its cells') and lie inside that one, and the backend receives the owner's own fd for
//! it. REM_MEM_REG must name a region this
//! connection added (by guest address, user address and size, as the vhost-user spec
//! identifies it); an fd QEMU may send with it is closed, as the spec asks of a backend, and
//! the message is forwarded without one. The fds of other messages stay QEMU's but are vetted
//! too ([`fds`]): the dirty log of live migration (SET_LOG_BASE) must be a sealed memfd that
//! holds what the message claims and is no VM's memory, and kick, call, error and log
//! notification fds must be eventfds. Anything else is refused, logged, answered with a
//! failure where REPLY_ACK allows, and the connection is closed — never forwarded.

use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use log::{debug, info, warn};
use pageless_protocol::control::{ConsumerStatus, RegionStatus};
use pageless_protocol::frame::{recv_message, send_message, FrameError, Limits, Message};
use pageless_protocol::memory::{
    encode_mem_table, encode_single_region, file_range, parse_mem_table, parse_single_region, MemoryError,
};
use pageless_protocol::{FrontendReq, VhostUserMemoryRegion};
use thiserror::Error;

use crate::clock::unix_now;
use crate::owner::{Cell, Owner};
use crate::peer::Peer;

mod fds;
pub use fds::FdError;

/// `--vhost-user NAME=BACKEND_SOCKET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelaySpec {
    /// The device's name: QEMU connects to `<run-dir>/<vm>/<name>.sock`. A valid file name
    /// (no `/`, no leading `.`), checked when `NAME=BACKEND_SOCKET` is parsed.
    pub name: String,
    /// The device backend's listening socket; each QEMU connection gets a fresh connection to it.
    pub backend: PathBuf,
}

/// A `--vhost-user` argument that cannot be used.
#[derive(Debug, Error)]
pub enum RelaySpecError {
    /// Not of the form `NAME=BACKEND_SOCKET`.
    #[error("{0:?} is not NAME=BACKEND_SOCKET")]
    Syntax(String),
    /// NAME cannot name a socket file.
    #[error(transparent)]
    Name(#[from] pageless_pool::Error),
}

impl FromStr for RelaySpec {
    type Err = RelaySpecError;

    fn from_str(text: &str) -> Result<Self, RelaySpecError> {
        let (name, backend) = text
            .split_once('=')
            .filter(|(name, backend)| !name.is_empty() && !backend.is_empty())
            .ok_or_else(|| RelaySpecError::Syntax(text.into()))?;
        pageless_pool::check_name(name)?;
        Ok(RelaySpec { name: name.into(), backend: backend.into() })
    }
}

/// Why the relay refused a frontend's message: it forwards nothing and closes the connection.
#[derive(Debug, Error)]
pub enum RelayError {
    /// A memory table or region that does not parse.
    #[error(transparent)]
    Table(#[from] MemoryError),
    /// A region of a SET_MEM_TABLE that is not the VM's memory.
    #[error("region {index}: {why}")]
    TableRegion {
        /// Its index in the table.
        index: usize,
        /// What is wrong with it.
        why: RegionError,
    },
    /// The region of an ADD_MEM_REG that is not the VM's memory.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// ADD_MEM_REG carries exactly one fd.
    #[error("{0} fds, exactly 1 expected")]
    FdCount(usize),
    /// REM_MEM_REG carries at most one fd (which is closed unused).
    #[error("{0} fds attached, at most 1 allowed")]
    TooManyFds(usize),
    /// REM_MEM_REG of a region this connection never added.
    #[error(
        "guest address {gpa:#x} size {size:#x} user address {uaddr:#x} is no region this connection added"
    )]
    UnknownRegion {
        /// The region's guest physical address.
        gpa: u64,
        /// Its size in bytes.
        size: u64,
        /// QEMU's user address of it.
        uaddr: u64,
    },
    /// The fds of a dirty-log or virtqueue message are not what the message needs.
    #[error(transparent)]
    Fd(#[from] FdError),
    /// The owner could not duplicate its own fd of the memory for the backend.
    #[error("duplicate the memory fd: {0}")]
    Dup(#[source] std::io::Error),
}

/// What is wrong with one region a frontend sent.
#[derive(Debug, Error)]
pub enum RegionError {
    /// Its fd is another file than the VM's allocation (or any of its cells').
    #[error("its fd is not the VM's memory")]
    OtherFile,
    /// It reaches past the end of the VM's memory (of the cell its fd is).
    #[error("mmap_offset {offset:#x} + memory_size {size:#x} lies outside the {vm_size:#x} bytes of cell {cell}'s memory")]
    OutOfRange {
        /// The region's offset in the file.
        offset: u64,
        /// The region's size in bytes.
        size: u64,
        /// The cell's memory size in bytes (the VM's, for a VM served with `--size`).
        vm_size: u64,
        /// The cell whose fd the region carries (0 for a VM served with `--size`).
        cell: u32,
    },
}

/// Relays one QEMU connection until either side hangs up or a message is refused.
pub(crate) fn relay(owner: &Arc<Owner>, spec: &RelaySpec, front: UnixStream) {
    let device = spec.name.as_str();
    let front_peer = match Peer::of(&front) {
        Ok(peer) => peer,
        Err(e) => return warn!("device {device}: frontend without credentials, closing: {e}"),
    };
    if !owner.policy.allows(front_peer.uid) {
        return warn!(
            "device {device}: refused frontend pid {} uid {}: not root, the owner or an --allow-uid user",
            front_peer.pid, front_peer.uid
        );
    }
    if let Some(why) = owner.policy.apparmor_refusal(&front_peer, &front) {
        return warn!("device {device}: refused frontend: {why}");
    }
    if let Err(why) = owner.qemu.frontend(&owner.policy, &front_peer) {
        return warn!("device {device}: refused frontend: {why}");
    }
    let back = match UnixStream::connect(&spec.backend) {
        Ok(back) => back,
        Err(e) => {
            return warn!(
                "device {device}: cannot reach the backend at {}: {e}; closing the frontend's connection (it retries with reconnect-ms)",
                spec.backend.display()
            )
        }
    };
    let back_peer = Peer::of(&back).ok();
    let consumer = owner.add_consumer(ConsumerStatus {
        device: device.into(),
        backend_socket: spec.backend.display().to_string(),
        backend_pid: back_peer.map(|p| p.pid),
        frontend_pid: Some(front_peer.pid),
        since: unix_now(),
        regions: Vec::new(),
    });
    info!(
        "device {device}: relaying frontend pid {} to backend pid {} at {}",
        front_peer.pid,
        back_peer.map_or("?".into(), |p| p.pid.to_string()),
        spec.backend.display()
    );

    let (Ok(front_writer), Ok(back_reader)) = (front.try_clone(), back.try_clone()) else {
        warn!("device {device}: cannot duplicate the connections");
        owner.forget_consumer(consumer);
        return;
    };
    let front_writer = Arc::new(Mutex::new(front_writer));
    let replies = {
        let front_writer = Arc::clone(&front_writer);
        let device = device.to_string();
        std::thread::Builder::new().name(format!("relay-{device}")).spawn(move || {
            let why = backend_to_frontend(&back_reader, &front_writer);
            info!("device {device}: backend side ended: {why}");
            shutdown(&back_reader, &front_writer);
        })
    };
    let why = frontend_to_backend(owner, consumer, &front, &back, &front_writer);
    info!("device {device}: frontend side ended: {why}");
    shutdown(&back, &front_writer);
    if let Ok(replies) = replies {
        let _ = replies.join();
    }
    owner.forget_consumer(consumer);
}

fn shutdown(back: &UnixStream, front: &Mutex<UnixStream>) {
    let _ = back.shutdown(Shutdown::Both);
    let _ = front.lock().unwrap_or_else(|e| e.into_inner()).shutdown(Shutdown::Both);
}

/// Replies (and anything else) from the backend go to QEMU unchanged, with their fds.
fn backend_to_frontend(back: &UnixStream, front: &Mutex<UnixStream>) -> String {
    loop {
        match recv_message(back, Limits::VHOST_USER) {
            Ok(Some(message)) => {
                let front = front.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = send_message(&front, &message) {
                    return format!("cannot write to the frontend: {e}");
                }
            }
            Ok(None) => return "the backend closed the connection".into(),
            Err(e) => return format!("bad message from the backend: {e}"),
        }
    }
}

/// QEMU's messages go to the backend after the memory ones are checked and their fds replaced.
fn frontend_to_backend(
    owner: &Owner,
    consumer: u64,
    front: &UnixStream,
    back: &UnixStream,
    front_writer: &Mutex<UnixStream>,
) -> String {
    let mut mapped = Vec::new();
    loop {
        let message = match recv_message(front, Limits::VHOST_USER) {
            Ok(Some(message)) => message,
            Ok(None) => return "the frontend closed the connection".into(),
            Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return "the frontend reset the connection".into()
            }
            Err(e) => return format!("refused a malformed message from the frontend: {e}"),
        };
        let header = message.header;
        let message = match check(owner, consumer, &mut mapped, message) {
            Ok(message) => message,
            Err(why) => {
                warn!(
                    "refused {}: {why}; closing the connection, nothing was forwarded",
                    request_name(header.request)
                );
                if header.needs_reply() {
                    let failure = Message::reply_ack(header.request, false);
                    let _ = send_message(&front_writer.lock().unwrap_or_else(|e| e.into_inner()), &failure);
                }
                return format!("refused {}", request_name(header.request));
            }
        };
        debug!(
            "forwarding {} ({} bytes, {} fds)",
            request_name(header.request),
            header.size,
            message.fds.len()
        );
        if let Err(e) = send_message(back, &message) {
            return format!("cannot write to the backend: {e}");
        }
    }
}

fn request_name(code: u32) -> String {
    FrontendReq::try_from(code).map_or_else(|_| format!("request {code}"), |r| format!("{r:?}"))
}

/// Checks one frontend message; memory messages come back with the owner's fds. `mapped` is
/// what this connection's backend was given and not yet told to unmap.
fn check(
    owner: &Owner,
    consumer: u64,
    mapped: &mut Vec<VhostUserMemoryRegion>,
    message: Message,
) -> Result<Message, RelayError> {
    let Message { header, payload, fds } = message;
    match FrontendReq::try_from(header.request) {
        Ok(FrontendReq::SET_MEM_TABLE) => {
            let regions = parse_mem_table(&payload, fds)?;
            let mut owned = Vec::with_capacity(regions.len());
            for (index, region) in regions.iter().enumerate() {
                let cell = check_region(owner, &region.region, &region.fd)
                    .map_err(|why| RelayError::TableRegion { index, why })?;
                owned.push(owner_fd(cell)?);
            }
            let table: Vec<VhostUserMemoryRegion> = regions.iter().map(|r| r.region).collect();
            owner.set_consumer_regions(consumer, table.iter().map(region_status).collect());
            let payload = encode_mem_table(table.iter());
            *mapped = table;
            Ok(Message { header, payload, fds: owned })
        }
        Ok(FrontendReq::ADD_MEM_REG) => {
            let region = parse_single_region(&payload)?;
            let [fd]: [OwnedFd; 1] =
                fds.try_into().map_err(|fds: Vec<OwnedFd>| RelayError::FdCount(fds.len()))?;
            let cell = check_region(owner, &region, &fd)?;
            let fd = owner_fd(cell)?;
            owner.add_consumer_region(consumer, region_status(&region));
            mapped.push(region);
            Ok(Message { header, payload: encode_single_region(&region), fds: vec![fd] })
        }
        Ok(FrontendReq::REM_MEM_REG) => {
            let region = parse_single_region(&payload)?;
            // The spec: no fd SHOULD come with REM_MEM_REG, but a backend MAY accept one and
            // MUST close it unused.
            if fds.len() > 1 {
                return Err(RelayError::TooManyFds(fds.len()));
            }
            drop(fds);
            let index =
                mapped.iter().position(|r| same_region(r, &region)).ok_or(RelayError::UnknownRegion {
                    gpa: region.guest_phys_addr,
                    size: region.memory_size,
                    uaddr: region.user_addr,
                })?;
            mapped.remove(index);
            owner.remove_consumer_region(consumer, region.guest_phys_addr, region.memory_size);
            Ok(Message { header, payload: encode_single_region(&region), fds: Vec::new() })
        }
        Ok(FrontendReq::SET_LOG_BASE) => {
            let size = fds::check_log_base(&payload, &fds, |fd| owner.cell_of(fd).is_some())?;
            info!("forwarding SET_LOG_BASE: QEMU's dirty log for live migration, a sealed memfd of {size} bytes");
            Ok(Message { header, payload, fds })
        }
        Ok(FrontendReq::SET_LOG_FD) => {
            fds::check_log_fd(&fds)?;
            Ok(Message { header, payload, fds })
        }
        Ok(FrontendReq::SET_VRING_KICK | FrontendReq::SET_VRING_CALL | FrontendReq::SET_VRING_ERR) => {
            fds::check_vring_fd(&payload, &fds)?;
            Ok(Message { header, payload, fds })
        }
        _ => Ok(Message { header, payload, fds }),
    }
}

/// The vhost-user spec identifies a region to remove by its guest address, user address and
/// size; its mmap offset is ignored.
fn same_region(a: &VhostUserMemoryRegion, b: &VhostUserMemoryRegion) -> bool {
    ({ a.guest_phys_addr }, { a.user_addr }, { a.memory_size })
        == ({ b.guest_phys_addr }, { b.user_addr }, { b.memory_size })
}

/// The cell whose file `fd` is, if the region lies inside it.
fn check_region<'a>(
    owner: &'a Owner,
    region: &VhostUserMemoryRegion,
    fd: &OwnedFd,
) -> Result<&'a Cell, RegionError> {
    let cell = owner.cell_of(fd).ok_or(RegionError::OtherFile)?;
    let vm_size = cell.allocation.size();
    match file_range(region) {
        Some((_, end)) if end <= vm_size => Ok(cell),
        _ => Err(RegionError::OutOfRange {
            offset: region.mmap_offset,
            size: region.memory_size,
            vm_size,
            cell: cell.id,
        }),
    }
}

fn owner_fd(cell: &Cell) -> Result<OwnedFd, RelayError> {
    cell.allocation.file().try_clone().map(OwnedFd::from).map_err(RelayError::Dup)
}

fn region_status(region: &VhostUserMemoryRegion) -> RegionStatus {
    RegionStatus {
        guest_phys_addr: region.guest_phys_addr,
        size: region.memory_size,
        offset: region.mmap_offset,
        since: unix_now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(
            "disk0=/run/qsd.sock".parse::<RelaySpec>().unwrap(),
            RelaySpec { name: "disk0".into(), backend: "/run/qsd.sock".into() }
        );
        for bad in ["", "disk0", "=x", "disk0=", "a/b=/x", "../x=/y"] {
            assert!(bad.parse::<RelaySpec>().is_err(), "{bad:?}");
        }
    }
}
