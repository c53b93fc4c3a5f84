//! The owner's control protocol, spoken on `<run-dir>/<vm>.sock`.
//!
//! Framing is vhost-user's ([`crate::frame`]). The client opens with HELLO (its protocol
//! version and a role such as `qemu`); the owner answers with the version both speak (the
//! client's, from [`MIN_CONTROL_VERSION`] to [`CONTROL_VERSION`]) or an error. From version 2
//! the HELLO reply also carries the owner's pid: a client that only wants to know whether the
//! owner is alive, and which process it is, needs nothing more. Then:
//!
//! | request      | payload                 | reply                                            |
//! |--------------|-------------------------|--------------------------------------------------|
//! | `GET_MEMORY` | —                       | a SET_MEM_TABLE payload + one fd per region;     |
//! |              |                         | v2: then one u64 page size per region; v3: one   |
//! |              |                         | [`RegionInfo`] (page size, cell) per region      |
//! | `STATUS`     | —                       | [`VmStatus`] as JSON; v2: at most                |
//! |              |                         | [`STATUS_EXTENTS`] extents, the rest through     |
//! |              |                         | `EXTENTS`                                        |
//! | `EXTENTS`    | u64 start + u32 max     | v2: an [`ExtentPage`], binary: u64 next (or      |
//! |              |                         | u64::MAX after the last), then per extent u64    |
//! |              |                         | logical, physical (u64::MAX: unknown), length    |
//! | `FIND`       | bytes to look for       | JSON array of offsets in the VM's memory         |
//! | `WRITE`      | u64 offset + ≤ 4 KiB    | empty (a debugging aid: grants nothing beyond    |
//! |              |                         | what GET_MEMORY gives the same peers)            |
//! | `STOP`       | —                       | empty; the owner then shuts down                 |
//!
//! A stopping owner keeps answering until every process it gave the memory to has exited:
//! STATUS then carries [`StoppingStatus`], and GET_MEMORY and WRITE are refused.
//!
//! Replies carry [`FLAG_REPLY`]; a refused request is answered with [`FLAG_ERROR`] and a UTF-8
//! reason, and the owner may close the connection after it.
//!
//! All integers are native-endian (client and owner share the host). The client's HELLO must
//! be the first request; the owner refuses anything else before it. A request has
//! [`FLAG_VERSION_1`] and no other version bits, no [`FLAG_REPLY`], and never fds; its payload
//! is bounded as the table says ([`MAX_ROLE_LEN`], [`MAX_FIND_PATTERN`], [`MAX_WRITE`]) and the
//! whole message by [`LIMITS`]. FIND, WRITE and STOP are for root and the owner's user only;
//! GET_MEMORY is for the peers the owner's policy admits.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::frame::{
    self, recv_message, send_message, FrameError, Limits, Message, FLAG_REPLY, FLAG_VERSION_1,
};
use crate::memory::{self, MemoryError};
use vhost::vhost_user::message::VhostUserMemoryRegion;

/// The newest control protocol version this build speaks (a client asks for it in HELLO).
///
/// Version 2 added the owner's pid to the HELLO reply, the page size of each region to the
/// GET_MEMORY reply, and paged extents (`EXTENTS`, and STATUS replies that carry at most
/// [`STATUS_EXTENTS`] extents). Version 3 added the NUMA cell of each GET_MEMORY region (a VM
/// served with `--cell` has one region per cell, each its own file). Older clients get the
/// same regions, in cell order, without saying which cell each is.
pub const CONTROL_VERSION: u32 = 3;
/// The oldest version the owner still answers: version 1 clients get version 1 replies.
pub const MIN_CONTROL_VERSION: u32 = 1;
/// Most extents a version 2 STATUS reply carries (as JSON, about 70 KiB).
pub const STATUS_EXTENTS: usize = 1024;
/// Most extents one EXTENTS reply carries: 24 bytes each, 768 KiB, under [`LIMITS`].
pub const MAX_EXTENTS_PER_REPLY: usize = 32768;
/// Bytes of one extent in an EXTENTS reply.
const EXTENT_BYTES: usize = 24;
/// A reply that refuses the request; its payload says why.
pub const FLAG_ERROR: u32 = 0x10;
/// Longest role a client may give in HELLO.
pub const MAX_ROLE_LEN: usize = 64;
/// Longest pattern FIND looks for.
pub const MAX_FIND_PATTERN: usize = 4096;
/// Most bytes one WRITE stores.
pub const MAX_WRITE: usize = 4096;
/// Control messages are small; STATUS and EXTENTS replies, the largest, are paged to stay
/// well below this.
///
/// Both ends read with these limits: payloads up to 1 MiB, at most
/// [`MAX_MEM_TABLE_REGIONS`](memory::MAX_MEM_TABLE_REGIONS) fds (a GET_MEMORY reply's).
pub const LIMITS: Limits = Limits { max_payload: 1 << 20, max_fds: memory::MAX_MEM_TABLE_REGIONS };

/// Request codes: the `request` field of a control message's [`Header`](frame::Header); a
/// reply carries its request's code. Numbers are never reused; unknown ones are refused.
pub mod code {
    /// Version negotiation, first on every connection: payload `u32` version + role (UTF-8,
    /// up to [`MAX_ROLE_LEN`](super::MAX_ROLE_LEN) bytes, no control characters).
    pub const HELLO: u32 = 1;
    /// The VM's memory as a memory table with one fd per region (see
    /// [`parse_memory`](super::parse_memory)); empty payload.
    pub const GET_MEMORY: u32 = 2;
    /// The owner's [`VmStatus`](super::VmStatus), as JSON; empty payload.
    pub const STATUS: u32 = 3;
    /// Offsets of a byte pattern in the VM's memory, as a JSON array; payload: the pattern.
    pub const FIND: u32 = 4;
    /// Asks the owner to shut down; empty payload and reply.
    pub const STOP: u32 = 5;
    /// Stores bytes in the VM's memory: payload `u64` offset + the data.
    pub const WRITE: u32 = 6;
    /// Version 2: one page of extents, binary ([`ExtentPage`](super::ExtentPage)); payload
    /// `u64` start + `u32` max.
    pub const EXTENTS: u32 = 7;
}

/// What went wrong talking to an owner. Only [`ControlError::Refused`] leaves the connection
/// usable for further requests (unless the owner hung up after refusing); after any other
/// error, drop the [`ControlClient`] and connect again if needed.
#[derive(Debug, Error)]
pub enum ControlError {
    /// The socket could not be connected: usually no owner serves this VM (ENOENT,
    /// ECONNREFUSED) or the caller may not open the socket (EACCES).
    #[error("cannot reach the owner at {path}: {source} (is `pageless serve` running for this VM?)")]
    Connect {
        /// The socket path tried.
        path: String,
        /// Why `connect(2)` failed.
        source: std::io::Error,
    },
    /// Reading or writing a message failed, or the owner's reply broke the framing limits
    /// ([`LIMITS`]).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The owner closed the connection instead of answering (e.g. it stopped).
    #[error("the owner closed the connection")]
    Closed,
    /// The owner answered with [`FLAG_ERROR`]; the reason (lossily decoded UTF-8) is for the
    /// user: e.g. this uid may not get the memory, or the owner is stopping.
    #[error("the owner refused: {0}")]
    Refused(String),
    /// The owner's reply is malformed or of another protocol version (a different pageless
    /// build): the reply does not answer the request, a payload has the wrong size, bad JSON,
    /// an invalid page size, or extent pages that do not advance.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The memory table in a GET_MEMORY reply is invalid (its fds were closed).
    #[error("bad memory table from the owner: {0}")]
    Memory(#[from] MemoryError),
}

/// A request as the owner sees it, checked: what [`Request::parse`] returns. Payload limits
/// are already enforced; authorization and the protocol version (e.g. EXTENTS needs version 2)
/// are the owner's to check.
///
/// [`Request::parse`] refuses flags without exactly vhost-user version 1 or with
/// [`FLAG_REPLY`], any fds, unknown request codes, and payloads of the wrong size or content
/// for their request (as documented on each variant). Its error says why, for the client: the
/// owner sends it back with [`error_reply`] and closes the connection. The message's fds stay
/// owned by the message.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// HELLO: the client's protocol version and role.
    Hello {
        /// The version the client speaks; the owner answers if it is between
        /// [`MIN_CONTROL_VERSION`] and [`CONTROL_VERSION`], else refuses.
        version: u32,
        /// What the client is (`qemu`, `status`, …), for STATUS and logs: at most
        /// [`MAX_ROLE_LEN`] bytes of UTF-8 without control characters, possibly empty.
        role: String,
    },
    /// GET_MEMORY: hand out the memory (fds) to this client.
    GetMemory,
    /// STATUS: the [`VmStatus`] as JSON.
    Status,
    /// FIND: the pattern to look for, 1 to [`MAX_FIND_PATTERN`] bytes.
    Find(Vec<u8>),
    /// WRITE: store `data` at `offset` of the VM's memory.
    Write {
        /// Byte offset in the VM's memory (its file); not range-checked here.
        offset: u64,
        /// The bytes to store, 1 to [`MAX_WRITE`].
        data: Vec<u8>,
    },
    /// STOP: shut the owner down.
    Stop,
    /// Up to `max` extents (capped at [`MAX_EXTENTS_PER_REPLY`]) from file offset `start` on.
    Extents {
        /// File offset, in bytes, the page starts at: the first extent returned ends after it.
        start: u64,
        /// Most extents wanted; at least 1 (checked), the owner caps it.
        max: u32,
    },
}

/// Why a client's request was refused: sent back to it as the reason of an error reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    /// Not a version-1 vhost-user request header (a reply flag, or another version).
    #[error("bad flags {0:#x}: requests carry vhost-user version 1 and no reply flag")]
    BadFlags(u32),
    /// Clients never send fds.
    #[error("{0} unexpected fds: control requests carry none")]
    UnexpectedFds(usize),
    /// A request that takes no payload came with one.
    #[error("unexpected payload: this request takes none")]
    UnexpectedPayload,
    /// The payload does not have the request's layout.
    #[error("{request} payload is {why}")]
    BadPayload {
        /// The request's name.
        request: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A request code this owner does not know.
    #[error("unknown request code {0}")]
    UnknownCode(u32),
}

fn bad(request: &'static str, why: impl Into<String>) -> RequestError {
    RequestError::BadPayload { request, why: why.into() }
}

impl Request {
    /// Checks one message from a client. fds are never expected from clients.
    pub fn parse(message: &Message) -> Result<Request, RequestError> {
        let header = message.header;
        if header.flags & frame::FLAG_VERSION_MASK != FLAG_VERSION_1 || header.is_reply() {
            return Err(RequestError::BadFlags(header.flags));
        }
        if !message.fds.is_empty() {
            return Err(RequestError::UnexpectedFds(message.fds.len()));
        }
        let payload = &message.payload;
        let empty =
            |request| if payload.is_empty() { Ok(request) } else { Err(RequestError::UnexpectedPayload) };
        match header.request {
            code::HELLO => {
                let (version, role) =
                    payload.split_first_chunk::<4>().ok_or_else(|| bad("HELLO", "too short"))?;
                if role.len() > MAX_ROLE_LEN {
                    return Err(bad("HELLO", format!("a role longer than {MAX_ROLE_LEN} bytes")));
                }
                let role = std::str::from_utf8(role).map_err(|_| bad("HELLO", "a role that is not UTF-8"))?;
                if role.chars().any(char::is_control) {
                    return Err(bad("HELLO", "a role with control characters"));
                }
                Ok(Request::Hello { version: u32::from_ne_bytes(*version), role: role.into() })
            }
            code::GET_MEMORY => empty(Request::GetMemory),
            code::STATUS => empty(Request::Status),
            code::STOP => empty(Request::Stop),
            code::FIND if payload.is_empty() || payload.len() > MAX_FIND_PATTERN => Err(bad(
                "FIND",
                format!("{} bytes, not a pattern of 1 to {MAX_FIND_PATTERN} bytes", payload.len()),
            )),
            code::FIND => Ok(Request::Find(payload.clone())),
            code::WRITE => {
                let (offset, data) =
                    payload.split_first_chunk::<8>().ok_or_else(|| bad("WRITE", "too short"))?;
                if data.is_empty() || data.len() > MAX_WRITE {
                    return Err(bad("WRITE", format!("{} data bytes, not 1 to {MAX_WRITE}", data.len())));
                }
                Ok(Request::Write { offset: u64::from_ne_bytes(*offset), data: data.to_vec() })
            }
            code::EXTENTS => {
                let bytes: &[u8; 12] = payload
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("EXTENTS", format!("{} bytes, not 12", payload.len())))?;
                let (start, max) = bytes.split_at(8);
                let start = u64::from_ne_bytes(start.try_into().expect("8 bytes"));
                let max = u32::from_ne_bytes(max.try_into().expect("4 bytes"));
                if max == 0 {
                    return Err(bad("EXTENTS", "a request for 0 extents"));
                }
                Ok(Request::Extents { start, max })
            }
            other => Err(RequestError::UnknownCode(other)),
        }
    }
}

/// The HELLO reply of this version: the version, then the owner's pid (from version 2).
///
/// Payload: `u32 version`, then for version 2 and later `u32 owner_pid` (8 bytes in all);
/// `version` is the one negotiated, so a version 1 client gets 4 bytes.
pub fn hello_reply(version: u32, owner_pid: u32) -> Message {
    let mut payload = version.to_ne_bytes().to_vec();
    if version >= 2 {
        payload.extend_from_slice(&owner_pid.to_ne_bytes());
    }
    reply(code::HELLO, payload, vec![])
}

/// The owner's pid from a HELLO reply, which must be of [`CONTROL_VERSION`].
fn parse_hello_reply(payload: &[u8]) -> Result<u32, ControlError> {
    let version = payload
        .first_chunk::<4>()
        .map(|v| u32::from_ne_bytes(*v))
        .ok_or_else(|| ControlError::Protocol("HELLO reply without a version".into()))?;
    if version != CONTROL_VERSION {
        return Err(ControlError::Protocol(format!(
            "the owner speaks control protocol version {version}, this client {CONTROL_VERSION}: use the same pageless build"
        )));
    }
    let pid: &[u8; 8] = payload
        .try_into()
        .map_err(|_| ControlError::Protocol(format!("HELLO reply of {} bytes, 8 expected", payload.len())))?;
    Ok(u32::from_ne_bytes(pid[4..].try_into().expect("4 bytes")))
}

/// A successful reply to `request` (a [`code`]): flags [`FLAG_VERSION_1`] | [`FLAG_REPLY`].
pub fn reply(request: u32, payload: Vec<u8>, fds: Vec<OwnedFd>) -> Message {
    Message::new(request, FLAG_VERSION_1 | FLAG_REPLY, payload, fds)
}

/// A refusal of `request`, with its reason: flags [`FLAG_VERSION_1`] | [`FLAG_REPLY`] |
/// [`FLAG_ERROR`], payload the reason as UTF-8 (keep it short: the client shows it to its user
/// as [`ControlError::Refused`]).
pub fn error_reply(request: u32, reason: &str) -> Message {
    Message::new(request, FLAG_VERSION_1 | FLAG_REPLY | FLAG_ERROR, reason.as_bytes().to_vec(), vec![])
}

/// What `pageless status` shows of one VM: the STATUS reply, as JSON (field names as here;
/// fields marked `#[serde(default)]` may be absent, from older owners). Sizes are in bytes,
/// times in seconds since the Unix epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VmStatus {
    /// The VM's name, as given to `serve --vm`.
    pub vm: String,
    /// The owner's process id.
    pub pid: u32,
    /// Size of the VM's memory, in bytes.
    pub size: u64,
    /// The pool as given to `serve` (`memfd`, `dir:/…`, `pagelessfs:/…`).
    pub pool: String,
    /// The filesystem the memory is on (`memfd`, `memfd-hugetlb`, `tmpfs`, `hugetlbfs`,
    /// `pagelessfs`).
    pub memory: String,
    /// The page size the memory is allocated in, in bytes (4 KiB, 2 MiB, 1 GiB).
    pub page_size: u64,
    /// The memory's file, for directory pools; `None` for memfd.
    pub path: Option<String>,
    /// Device number of the memory's file (`st_dev`): with `inode`, identifies the allocation.
    pub dev: u64,
    /// Inode number of the memory's file (`st_ino`).
    pub inode: u64,
    /// Whether the owner found the allocation from an earlier run.
    pub reattached: bool,
    /// Unix time the owner started serving.
    pub started: u64,
    /// Size of the pool, in bytes (0 when the owner could not read the pool's statistics).
    pub pool_total: u64,
    /// Free bytes in the pool (0 when the owner could not read the pool's statistics).
    pub pool_free: u64,
    /// pagelessfs pools: bytes freed from files that were mapped, held back (not free) until
    /// every process that mapped them has exited. `None` for other pools.
    #[serde(default)]
    pub pool_quarantined: Option<u64>,
    /// pagelessfs pools mounted with `node=N`: the NUMA node the memory comes from (`pool_total`
    /// and `pool_free` are that node's). `None` for other pools and mounts of every node.
    #[serde(default)]
    pub pool_node: Option<u32>,
    /// The memory's extents, in file order. From a version 2 owner's STATUS reply, only the
    /// first [`STATUS_EXTENTS`]: [`ControlClient::status`] fetches the rest with
    /// EXTENTS from `extents_next` on, [`ControlClient::status_summary`] does not.
    pub extents: Vec<ExtentStatus>,
    /// How many extents the memory has (version 2 owners; `None` from older ones).
    #[serde(default)]
    pub extent_count: Option<u64>,
    /// Where the extents not in `extents` start (a file offset for EXTENTS), `None` when
    /// `extents` is complete.
    #[serde(default)]
    pub extents_next: Option<u64>,
    /// The clients connected to the control socket, this one included.
    pub clients: Vec<ClientStatus>,
    /// The vhost-user device backends the relay has connected.
    pub consumers: Vec<ConsumerStatus>,
    /// Set once the owner was asked to stop: it keeps the memory while any process it handed
    /// the memory to is alive, and says which.
    #[serde(default)]
    pub stopping: Option<StoppingStatus>,
    /// The process bound as the VM's QEMU: the only process of an `--allow-uid` user that
    /// gets the memory, for the owner's whole life.
    #[serde(default)]
    pub qemu: Option<BoundQemuStatus>,
    /// A VM served with `--cell`: each guest NUMA cell, in order (its own allocation). The
    /// fields above then describe the first cell, except `size`, which is the cells' total.
    /// Empty for a VM served with `--size`.
    #[serde(default)]
    pub cells: Vec<CellStatus>,
}

/// One guest NUMA cell of a VM served with `--cell ID:SIZE:POOL[@node=N]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellStatus {
    /// The cell's id (libvirt's `<cell id=…>`, QEMU's `-numa node,nodeid=…`).
    pub id: u32,
    /// Its size in bytes.
    pub size: u64,
    /// Its offset in the VM's memory as FIND and WRITE see it (the cells laid end to end).
    pub offset: u64,
    /// Its pool, as given.
    pub pool: String,
    /// The host node its memory is bound to (`@node=N`), if one was given.
    pub host_node: Option<u32>,
    /// The filesystem its memory is on, as [`VmStatus::memory`].
    pub memory: String,
    /// Its page size in bytes.
    pub page_size: u64,
    /// Its file in a directory pool; `None` for memfd.
    pub path: Option<String>,
    /// Device number of its file.
    pub dev: u64,
    /// Inode number of its file.
    pub inode: u64,
    /// Whether the owner found it from an earlier run.
    pub reattached: bool,
    /// Its first extents (at most as many as a STATUS reply carries for the VM); EXTENTS pages
    /// through the first cell only.
    pub extents: Vec<ExtentStatus>,
    /// How many extents it has, when known.
    pub extent_count: Option<u64>,
}

/// The VM's QEMU, as bound by the owner (by a pidfd, not a reusable pid number).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundQemuStatus {
    /// Its process id.
    pub pid: u32,
    /// Its user id.
    pub uid: u32,
    /// Unix time it was bound.
    pub since: u64,
    /// Whether it still runs; once it has exited, nobody else gets the memory from this owner.
    pub running: bool,
}

/// A stopping owner that still waits for the memory's holders to go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoppingStatus {
    /// Unix time the stop was asked for.
    pub since: u64,
    /// What asked (`STOP request`, `signal SIGTERM`, …).
    pub reason: String,
    /// `--consumer-timeout`, in seconds: past it the owner says so in its log, and keeps waiting.
    pub consumer_timeout: u64,
    /// Whether it has been waiting longer than `consumer_timeout`.
    pub past_timeout: bool,
    /// What still holds the memory, as of the owner's last look (at most a few tenths of a
    /// second ago).
    pub waiting_for: Vec<MemoryHolder>,
}

/// A process (or relayed device) that still holds a stopping owner's memory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryHolder {
    /// Its process id, when known.
    pub pid: Option<u32>,
    /// What it is and how it holds the memory.
    pub what: String,
}

/// One extent of the VM's memory file: `length` bytes at file offset `logical`, stored at
/// `physical`. All in bytes; extents are listed in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentStatus {
    /// Offset in the memory's file.
    pub logical: u64,
    /// Where the filesystem stores it (on pagelessfs the physical address, which the module
    /// reveals only to an owner with `CAP_SYS_ADMIN`); `None` when unknown or hidden (memfd,
    /// tmpfs and hugetlbfs memory is one extent with no physical address). Encoded as `u64::MAX` in EXTENTS replies.
    pub physical: Option<u64>,
    /// Length of the extent.
    pub length: u64,
}

/// One EXTENTS reply.
///
/// Binary payload: `u64 next` (`u64::MAX` for `None`), then per extent 24 bytes: `u64
/// logical`, `u64 physical` (`u64::MAX` for `None`), `u64 length`; at most
/// [`MAX_EXTENTS_PER_REPLY`] extents, so the payload stays under [`LIMITS`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtentPage {
    /// Extents in file order, the first one ending after the requested start.
    pub extents: Vec<ExtentStatus>,
    /// Where the next page starts, `None` after the last extent.
    pub next: Option<u64>,
}

impl ExtentPage {
    /// The binary EXTENTS reply payload (8 + 24 × n bytes). Does not cap the extents: the
    /// owner keeps a page to [`MAX_EXTENTS_PER_REPLY`], or [`ExtentPage::decode`] refuses it.
    pub fn encode(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(8 + self.extents.len() * EXTENT_BYTES);
        payload.extend_from_slice(&self.next.unwrap_or(u64::MAX).to_ne_bytes());
        for e in &self.extents {
            payload.extend_from_slice(&e.logical.to_ne_bytes());
            payload.extend_from_slice(&e.physical.unwrap_or(u64::MAX).to_ne_bytes());
            payload.extend_from_slice(&e.length.to_ne_bytes());
        }
        payload
    }

    /// Parses a binary EXTENTS reply. A payload that is not 8 + 24 × n bytes, or that holds
    /// more than [`MAX_EXTENTS_PER_REPLY`] extents, is a [`ControlError::Protocol`]. Whether
    /// the extents are ordered or the page advances is not checked here
    /// ([`ControlClient::status`] checks that it advances).
    pub fn decode(payload: &[u8]) -> Result<ExtentPage, ControlError> {
        let bad = || ControlError::Protocol(format!("EXTENTS reply of {} bytes is malformed", payload.len()));
        let (next, rest) = payload.split_first_chunk::<8>().ok_or_else(bad)?;
        if rest.len() % EXTENT_BYTES != 0 || rest.len() / EXTENT_BYTES > MAX_EXTENTS_PER_REPLY {
            return Err(bad());
        }
        let word = |bytes: &[u8]| u64::from_ne_bytes(bytes.try_into().expect("8 bytes"));
        let extents = rest
            .chunks_exact(EXTENT_BYTES)
            .map(|e| ExtentStatus {
                logical: word(&e[..8]),
                physical: Some(word(&e[8..16])).filter(|&p| p != u64::MAX),
                length: word(&e[16..]),
            })
            .collect();
        Ok(ExtentPage { extents, next: Some(u64::from_ne_bytes(*next)).filter(|&n| n != u64::MAX) })
    }
}

/// What a client needs to know of one GET_MEMORY region besides the vhost-user region itself
/// (appended to the SET_MEM_TABLE payload, one per region, in order: version 2 the page size,
/// version 3 the page size and the cell).
///
/// The owner lists a VM's memory as its cells in order, one region each: `mmap_offset` 0 in
/// the cell's own file, `guest_phys_addr` the cell's offset in the cells laid end to end (the
/// offsets FIND and WRITE use; QEMU's `-numa` memdev objects place the cells in the guest
/// itself). A VM served with `--size` is one region of cell 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// The page size the memory is allocated in (4 KiB, 2 MiB, 1 GiB): QEMU must map it aligned
    /// to it.
    pub page_size: u64,
    /// The guest NUMA cell (libvirt's `<cell id=…>`, QEMU's `ram-node<ID>`) the region is; 0
    /// for a VM served with `--size`.
    pub cell: u32,
}

impl RegionInfo {
    /// Bytes of one encoded [`RegionInfo`] in version 3: a native-endian u64 page size and a
    /// u64 cell id.
    pub const SIZE: usize = 16;
    /// Bytes of one version 2 [`RegionInfo`]: the page size only.
    pub const SIZE_V2: usize = 8;
}

/// The GET_MEMORY reply payload for `regions`, each with its info; v1 clients get the table only.
///
/// `version` is the one negotiated in HELLO. The payload is a SET_MEM_TABLE payload (see
/// [`memory`]), then for version 2 one native-endian `u64` page size per region, for version 3
/// and later one `u64` page size and one `u64` cell id per region, in order. The regions' fds
/// go with the reply, in the same order. At most
/// [`MAX_MEM_TABLE_REGIONS`](memory::MAX_MEM_TABLE_REGIONS) regions; not checked here.
pub fn encode_memory(regions: &[(VhostUserMemoryRegion, RegionInfo)], version: u32) -> Vec<u8> {
    let mut payload = memory::encode_mem_table(regions.iter().map(|(region, _)| region));
    if version >= 2 {
        for (_, info) in regions {
            payload.extend_from_slice(&info.page_size.to_ne_bytes());
            if version >= 3 {
                payload.extend_from_slice(&u64::from(info.cell).to_ne_bytes());
            }
        }
    }
    payload
}

/// Parses a version 3 GET_MEMORY reply: the memory table, then one [`RegionInfo`] per region.
///
/// The region count is taken from the fds (one per region): the last 16 × `fds.len()` bytes
/// are the page sizes and cells, the rest must be a valid memory table with exactly that many
/// regions ([`memory::parse_mem_table`]). Each page size must be a power of two of at least
/// 4096, each cell id a u32, no cell twice. Errors are [`ControlError::Memory`] or
/// [`ControlError::Protocol`]; the fds are closed on any error.
pub fn parse_memory(payload: &[u8], fds: Vec<OwnedFd>) -> Result<Vec<OwnerRegion>, ControlError> {
    let count = fds.len();
    let table_len = payload.len().checked_sub(count.saturating_mul(RegionInfo::SIZE)).ok_or_else(|| {
        ControlError::Protocol(format!(
            "GET_MEMORY reply of {} bytes is too short for {count} regions and their page sizes",
            payload.len()
        ))
    })?;
    let (table, infos) = payload.split_at(table_len);
    let regions = memory::parse_mem_table(table, fds)?;
    let mut cells = std::collections::BTreeSet::new();
    regions
        .into_iter()
        .zip(infos.chunks_exact(RegionInfo::SIZE))
        .enumerate()
        .map(|(index, (region, info))| {
            let page_size = u64::from_ne_bytes(info[..8].try_into().expect("8 bytes"));
            if !page_size.is_power_of_two() || page_size < 4096 {
                return Err(ControlError::Protocol(format!(
                    "GET_MEMORY region {index}: page size {page_size} is not a power of two of at least 4096"
                )));
            }
            let cell = u64::from_ne_bytes(info[8..].try_into().expect("8 bytes"));
            let cell = u32::try_from(cell).ok().filter(|cell| cells.insert(*cell)).ok_or_else(|| {
                ControlError::Protocol(format!(
                    "GET_MEMORY region {index}: cell {cell} is not a u32 or given twice"
                ))
            })?;
            Ok(OwnerRegion { region: region.region, fd: region.fd, page_size, cell })
        })
        .collect()
}

/// One region of the VM's memory as GET_MEMORY hands it out.
pub struct OwnerRegion {
    /// Where it is in the guest and in the file (`mmap_offset`, `memory_size`).
    pub region: VhostUserMemoryRegion,
    /// The memory's file.
    pub fd: OwnedFd,
    /// The page size it is allocated in.
    pub page_size: u64,
    /// The guest NUMA cell it is (0 for a VM served with `--size`).
    pub cell: u32,
}

impl std::fmt::Debug for OwnerRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.region;
        f.debug_struct("OwnerRegion")
            .field("guest_phys_addr", &format_args!("{:#x}", { r.guest_phys_addr }))
            .field("memory_size", &format_args!("{:#x}", { r.memory_size }))
            .field("mmap_offset", &format_args!("{:#x}", { r.mmap_offset }))
            .field("fd", &self.fd)
            .field("page_size", &self.page_size)
            .field("cell", &self.cell)
            .finish()
    }
}

/// A client connected to the control socket (e.g. QEMU, which keeps its connection).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStatus {
    /// The owner's number for the connection, unique while the owner runs.
    pub id: u64,
    /// The role it gave in HELLO (empty before HELLO).
    pub role: String,
    /// Its process id (from `SO_PEERCRED`, when it connected).
    pub pid: u32,
    /// Its user id (from `SO_PEERCRED`).
    pub uid: u32,
    /// Unix time it connected.
    pub since: u64,
    /// Whether it received the memory's fd.
    pub has_memory: bool,
}

/// A vhost-user device backend that maps the VM's memory through the relay.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerStatus {
    /// The device's name in the owner's configuration.
    pub device: String,
    /// The backend's socket path.
    pub backend_socket: String,
    /// The backend's process id (`SO_PEERCRED`), when known.
    pub backend_pid: Option<u32>,
    /// The frontend's (QEMU's) process id, when known.
    pub frontend_pid: Option<u32>,
    /// Unix time the relay connected the backend.
    pub since: u64,
    /// The memory regions the backend was given (by SET_MEM_TABLE or ADD_MEM_REG, less those
    /// removed by REM_MEM_REG).
    pub regions: Vec<RegionStatus>,
}

/// One memory region a relayed backend was given. Sizes and addresses are in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionStatus {
    /// Where the region is in the guest's physical address space.
    pub guest_phys_addr: u64,
    /// Its size.
    pub size: u64,
    /// Its offset in the VM's memory file (`mmap_offset`).
    pub offset: u64,
    /// Unix time it was given.
    pub since: u64,
}

/// A connection to an owner, greeted with HELLO at [`CONTROL_VERSION`].
///
/// Each method sends one request and waits for its reply (blocking, no timeout of its own);
/// requests on one client are not meant to overlap. A refusal is [`ControlError::Refused`]
/// with the owner's reason.
#[derive(Debug)]
pub struct ControlClient {
    sock: UnixStream,
    owner_pid: u32,
}

impl ControlClient {
    /// Connects to the owner's socket and introduces itself as `role`.
    ///
    /// `role` must be at most [`MAX_ROLE_LEN`] bytes without control characters, or the owner
    /// refuses. Fails with [`ControlError::Connect`] when no owner listens at `path`, with
    /// [`ControlError::Refused`] when the owner will not talk to this user or version, and with
    /// [`ControlError::Protocol`] when the owner does not speak [`CONTROL_VERSION`] (use the
    /// same pageless build on both ends).
    pub fn connect(path: &Path, role: &str) -> Result<ControlClient, ControlError> {
        let sock = UnixStream::connect(path)
            .map_err(|source| ControlError::Connect { path: path.display().to_string(), source })?;
        let mut client = ControlClient { sock, owner_pid: 0 };
        let mut hello = CONTROL_VERSION.to_ne_bytes().to_vec();
        hello.extend_from_slice(role.as_bytes());
        let answer = client.call(code::HELLO, hello)?;
        client.owner_pid = parse_hello_reply(&answer.payload)?;
        Ok(client)
    }

    /// The owner's process id, from its HELLO reply: a connected client knows the owner lives.
    pub fn owner_pid(&self) -> u32 {
        self.owner_pid
    }

    /// The VM's memory: its regions, each with its fd and page size.
    ///
    /// The fds are the caller's to map (shared, at `mmap_offset`, aligned to the page size)
    /// and to close. The owner refuses peers its policy does not admit and while it is stopping
    /// ([`ControlError::Refused`]).
    pub fn get_memory(&self) -> Result<Vec<OwnerRegion>, ControlError> {
        let answer = self.call(code::GET_MEMORY, vec![])?;
        parse_memory(&answer.payload, answer.fds)
    }

    /// The owner's status with every extent (fetched page by page).
    ///
    /// Sends STATUS, then EXTENTS from `extents_next` until the last page, so the result has
    /// `extents_next: None`. Fails with [`ControlError::Protocol`] if a page does not move
    /// forward (a broken owner cannot keep it looping). For a quick look use
    /// [`ControlClient::status_summary`].
    pub fn status(&self) -> Result<VmStatus, ControlError> {
        let mut status = self.status_summary()?;
        let mut next = status.extents_next.take();
        while let Some(start) = next {
            let page = self.extents(start, MAX_EXTENTS_PER_REPLY as u32)?;
            // Each page must move forward, or a broken owner would keep us here forever.
            let progressed = page.extents.last().is_some_and(|e| e.logical.saturating_add(e.length) > start)
                && page.next.is_none_or(|n| n > start);
            if !progressed {
                return Err(ControlError::Protocol(format!(
                    "EXTENTS from {start:#x} did not move forward (next {:?})",
                    page.next
                )));
            }
            status.extents.extend(page.extents);
            next = page.next;
        }
        Ok(status)
    }

    /// The owner's status with at most [`STATUS_EXTENTS`] extents (`extent_count` says
    /// how many there are, `extents_next` where the rest start).
    pub fn status_summary(&self) -> Result<VmStatus, ControlError> {
        let answer = self.call(code::STATUS, vec![])?;
        serde_json::from_slice(&answer.payload).map_err(|e| ControlError::Protocol(format!("status: {e}")))
    }

    /// Up to `max` extents from file offset `start` on.
    ///
    /// `max` must be at least 1 (0 is refused); the owner caps it at [`MAX_EXTENTS_PER_REPLY`].
    /// Continue from the page's `next` until it is `None`.
    pub fn extents(&self, start: u64, max: u32) -> Result<ExtentPage, ControlError> {
        let mut payload = start.to_ne_bytes().to_vec();
        payload.extend_from_slice(&max.to_ne_bytes());
        let answer = self.call(code::EXTENTS, payload)?;
        ExtentPage::decode(&answer.payload)
    }

    /// Offsets of `pattern` in the VM's memory, as the owner sees it through its own mapping.
    ///
    /// Byte offsets in the memory's file; the owner caps how many it reports. `pattern` must
    /// be 1 to [`MAX_FIND_PATTERN`] bytes. Only root and the owner's user may ask.
    pub fn find(&self, pattern: &[u8]) -> Result<Vec<u64>, ControlError> {
        let answer = self.call(code::FIND, pattern.to_vec())?;
        serde_json::from_slice(&answer.payload).map_err(|e| ControlError::Protocol(format!("find: {e}")))
    }

    /// Stores `data` at `offset` of the VM's memory through the owner's own mapping.
    ///
    /// A debugging aid. `data` must be 1 to [`MAX_WRITE`] bytes and lie within the memory.
    /// Only root and the owner's user may write, and not while the owner is stopping.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), ControlError> {
        let mut payload = offset.to_ne_bytes().to_vec();
        payload.extend_from_slice(data);
        self.call(code::WRITE, payload).map(drop)
    }

    /// Asks the owner to shut down (root and the owner's user only). It acknowledges, then
    /// stops handing out memory and exits once every process it gave the memory to has gone.
    pub fn stop(&self) -> Result<(), ControlError> {
        self.call(code::STOP, vec![]).map(drop)
    }

    /// The connection, e.g. to keep it open in an exec'd QEMU so the owner sees its consumer.
    pub fn into_stream(self) -> UnixStream {
        self.sock
    }

    fn call(&self, request: u32, payload: Vec<u8>) -> Result<Message, ControlError> {
        if let Err(e) = send_message(&self.sock, &Message::new(request, FLAG_VERSION_1, payload, vec![])) {
            // The owner may have refused (e.g. this user) and hung up before reading: its
            // reason is still queued for us.
            if let Ok(Some(refusal)) = recv_message(&self.sock, LIMITS) {
                if refusal.header.flags & FLAG_ERROR != 0 {
                    return Err(ControlError::Refused(
                        String::from_utf8_lossy(&refusal.payload).into_owned(),
                    ));
                }
            }
            return Err(e.into());
        }
        let answer = recv_message(&self.sock, LIMITS)?.ok_or(ControlError::Closed)?;
        if answer.header.request != request || !answer.header.is_reply() {
            return Err(ControlError::Protocol(format!(
                "reply {:?} does not answer request {request}",
                answer.header
            )));
        }
        if answer.header.flags & FLAG_ERROR != 0 {
            return Err(ControlError::Refused(String::from_utf8_lossy(&answer.payload).into_owned()));
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(code: u32, payload: &[u8]) -> Result<Request, RequestError> {
        Request::parse(&Message::new(code, FLAG_VERSION_1, payload.to_vec(), vec![]))
    }

    #[test]
    fn a_refusal_sent_before_hanging_up_is_reported() {
        let (client, owner) = UnixStream::pair().unwrap();
        send_message(&owner, &error_reply(code::HELLO, "uid 1 may not use VM")).unwrap();
        drop(owner);
        let client = ControlClient { sock: client, owner_pid: 0 };
        match client.call(code::HELLO, CONTROL_VERSION.to_ne_bytes().to_vec()) {
            Err(ControlError::Refused(why)) => assert_eq!(why, "uid 1 may not use VM"),
            other => panic!("expected the refusal, got {other:?}"),
        }
    }

    #[test]
    fn parses_requests() {
        let mut hello = 1u32.to_ne_bytes().to_vec();
        hello.extend_from_slice(b"qemu");
        assert_eq!(request(code::HELLO, &hello), Ok(Request::Hello { version: 1, role: "qemu".into() }));
        assert_eq!(request(code::GET_MEMORY, b""), Ok(Request::GetMemory));
        assert_eq!(request(code::FIND, b"tok"), Ok(Request::Find(b"tok".to_vec())));
        let mut write = 4096u64.to_ne_bytes().to_vec();
        write.extend_from_slice(b"data");
        assert_eq!(request(code::WRITE, &write), Ok(Request::Write { offset: 4096, data: b"data".to_vec() }));
    }

    #[test]
    fn refuses_bad_requests() {
        assert!(request(code::HELLO, b"ab").is_err());
        assert!(request(code::HELLO, &[1, 0, 0, 0, 0xff]).is_err(), "role must be UTF-8");
        assert!(request(code::HELLO, &[1, 0, 0, 0, b'\n']).is_err());
        assert!(request(code::GET_MEMORY, b"x").is_err());
        assert!(request(code::FIND, b"").is_err());
        assert!(request(code::FIND, &[0; MAX_FIND_PATTERN + 1]).is_err());
        assert!(request(code::WRITE, &[0; 8]).is_err(), "WRITE needs data");
        assert!(request(code::WRITE, &[0; 8 + MAX_WRITE + 1]).is_err());
        assert!(request(99, b"").is_err());
        let reply = Message::new(code::STATUS, FLAG_VERSION_1 | FLAG_REPLY, vec![], vec![]);
        assert!(Request::parse(&reply).is_err());
        let unversioned = Message::new(code::STATUS, 0, vec![], vec![]);
        assert!(Request::parse(&unversioned).is_err());
        let with_fd = Message::new(
            code::STATUS,
            FLAG_VERSION_1,
            vec![],
            vec![std::fs::File::open("/dev/null").unwrap().into()],
        );
        assert!(Request::parse(&with_fd).is_err());
    }

    #[test]
    fn hello_reply_carries_the_pid_from_version_2() {
        assert_eq!(hello_reply(1, 42).payload, 1u32.to_ne_bytes());
        let reply = hello_reply(CONTROL_VERSION, 42);
        assert_eq!(parse_hello_reply(&reply.payload).unwrap(), 42);
        assert_eq!(hello_reply(2, 42).payload.len(), 8, "v2 replies carry the pid too");
        assert!(parse_hello_reply(&hello_reply(1, 42).payload).is_err(), "a v1 owner is reported");
        assert!(parse_hello_reply(&reply.payload[..6]).is_err());
    }

    #[test]
    fn memory_reply_carries_the_page_size_from_version_2_and_the_cell_from_3() {
        let region = VhostUserMemoryRegion::new(0, 2 << 20, 0, 0);
        let info = RegionInfo { page_size: 2 << 20, cell: 1 };
        let fd = || vec![OwnedFd::from(std::fs::File::open("/dev/null").unwrap())];
        let v1 = encode_memory(&[(region, info)], 1);
        assert_eq!(memory::parse_mem_table(&v1, fd()).unwrap().len(), 1, "v1 clients parse it as before");
        let v2 = encode_memory(&[(region, info)], 2);
        assert_eq!(v2.len(), v1.len() + RegionInfo::SIZE_V2, "v2 clients get the page size only");
        assert_eq!(v2[v1.len()..], (2u64 << 20).to_ne_bytes());
        let v3 = encode_memory(&[(region, info)], 3);
        let parsed = parse_memory(&v3, fd()).unwrap();
        assert_eq!(
            (parsed[0].page_size, { parsed[0].region.memory_size }, parsed[0].cell),
            (2 << 20, 2 << 20, 1)
        );
        assert!(parse_memory(&v1, fd()).is_err(), "no page size");
        assert!(parse_memory(&v2, fd()).is_err(), "no cell");
        let bad = encode_memory(&[(region, RegionInfo { page_size: 3000, cell: 0 })], 3);
        assert!(parse_memory(&bad, fd()).is_err(), "not a page size");
        assert!(parse_memory(&v3[..4], fd()).is_err());
        let mut big_cell = v3.clone();
        let at = big_cell.len() - 8;
        big_cell[at..].copy_from_slice(&(1u64 << 40).to_ne_bytes());
        assert!(parse_memory(&big_cell, fd()).is_err(), "a cell beyond u32");
        let second = VhostUserMemoryRegion::new(2 << 20, 2 << 20, 0, 0);
        let twice = encode_memory(&[(region, info), (second, info)], 3);
        assert!(parse_memory(&twice, vec![fd().remove(0), fd().remove(0)]).is_err(), "one cell twice");
    }

    #[test]
    fn extent_pages_round_trip() {
        let page = ExtentPage {
            extents: vec![
                ExtentStatus { logical: 0, physical: Some(0x1000), length: 4096 },
                ExtentStatus { logical: 8192, physical: None, length: 4096 },
            ],
            next: Some(16384),
        };
        assert_eq!(ExtentPage::decode(&page.encode()).unwrap(), page);
        let last = ExtentPage { extents: vec![], next: None };
        assert_eq!(ExtentPage::decode(&last.encode()).unwrap(), last);
        assert!(ExtentPage::decode(&page.encode()[..30]).is_err());
        assert!(ExtentPage::decode(&[0; 4]).is_err());
    }

    #[test]
    fn parses_extents_requests() {
        let mut payload = 8192u64.to_ne_bytes().to_vec();
        payload.extend_from_slice(&100u32.to_ne_bytes());
        assert_eq!(request(code::EXTENTS, &payload), Ok(Request::Extents { start: 8192, max: 100 }));
        assert!(request(code::EXTENTS, &payload[..11]).is_err());
        payload[8..].copy_from_slice(&0u32.to_ne_bytes());
        assert!(request(code::EXTENTS, &payload).is_err(), "0 extents");
    }
}
