//! vhost-user framing over a Unix stream socket, with fds.
//!
//! A message is a 12-byte [`Header`] (`u32 request`, `u32 flags`, `u32 size`, native-endian),
//! then exactly `size` bytes of payload. File descriptors travel as SCM_RIGHTS ancillary data;
//! [`send_parts`] attaches them to the first byte of the message, and [`recv_message`] collects
//! every fd that arrives while the message is read. Reads never go past the end of one message,
//! so the next message (and its fds) stays queued for the next call.
//!
//! Receiving is written for a hostile peer: the payload size is checked against
//! [`Limits::max_payload`] before any buffer is allocated, fds are counted against
//! [`Limits::max_fds`], and every fd is wrapped in an [`OwnedFd`] as soon as `recvmsg(2)`
//! returns, before anything else is checked, so all of them are closed when an error is
//! returned (received fds are close-on-exec). Any error leaves the stream at an unknown position
//! inside a message: the caller should drop the connection rather than read on.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use thiserror::Error;

/// Size of the message header: request, flags, payload size (native-endian u32 each).
pub const HEADER_SIZE: usize = 12;
/// Version bits of the flags field: vhost-user version 1.
pub const FLAG_VERSION_1: u32 = 0x1;
/// The bits of the flags field that hold the vhost-user version; a request must have
/// `flags & FLAG_VERSION_MASK == FLAG_VERSION_1`.
pub const FLAG_VERSION_MASK: u32 = 0x3;
/// The message is a reply.
pub const FLAG_REPLY: u32 = 0x4;
/// The sender wants a reply (REPLY_ACK).
pub const FLAG_NEED_REPLY: u32 = 0x8;

/// The most fds one recvmsg can take in; more are a protocol violation.
const FD_BUFFER_ENTRIES: usize = 64;

/// How much a peer may send in one message; [`recv_message`] refuses anything bigger.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest accepted payload, in bytes (the header's `size`, header not included). Checked
    /// before the payload buffer is allocated, so a peer cannot make the receiver allocate more.
    pub max_payload: usize,
    /// Most fds accepted with one message. Independently of it, one `recvmsg(2)` takes in at
    /// most 64 fds; more make the message fail with [`FrameError::TooManyFds`].
    pub max_fds: usize,
}

impl Limits {
    /// vhost-user: payloads up to 4 KiB (vhost's MAX_MSG_SIZE), at most 32 fds.
    pub const VHOST_USER: Limits = Limits {
        max_payload: vhost::vhost_user::message::MAX_MSG_SIZE,
        max_fds: vhost::vhost_user::message::MAX_ATTACHED_FD_ENTRIES,
    };
}

/// Why a message could not be read or written.
///
/// Every variant but [`FrameError::Io`] is the peer's fault (a protocol violation); after any
/// of them the stream is no longer at a message boundary, so the caller should close the
/// connection (and may log the error). Fds received with the failed message are already closed.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The peer closed the connection in the middle of a message.
    #[error("the peer closed the connection in the middle of a message ({got} of {want} bytes)")]
    Truncated {
        /// Bytes of the message (header included) received before the end of the stream.
        got: usize,
        /// Bytes the message should have had: the header, or the header plus its payload.
        want: usize,
    },
    /// The header announced a payload over [`Limits::max_payload`]; nothing of it was read.
    #[error("payload of {size} bytes is over the limit of {max}")]
    TooLarge {
        /// The payload size from the header, in bytes.
        size: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// More fds came with the message than [`Limits::max_fds`] allows, or more than one
    /// `recvmsg(2)` can take in (the kernel truncated the control data); all were closed.
    #[error("{count} fds attached, more than the {max} allowed")]
    TooManyFds {
        /// How many fds arrived (a lower bound when the control data was truncated).
        count: usize,
        /// How many were allowed.
        max: usize,
    },
    /// Ancillary data other than SCM_RIGHTS (e.g. credentials) came with the message.
    #[error("unexpected control message (level {level}, type {kind})")]
    BadControlMessage {
        /// The control message's `cmsg_level`.
        level: i32,
        /// The control message's `cmsg_type`.
        kind: i32,
    },
    /// `recvmsg(2)` or `sendmsg(2)` failed (EINTR is retried, not reported). On send, `EPIPE`
    /// or `ECONNRESET` mean the peer has gone (no SIGPIPE is raised).
    #[error("socket I/O: {0}")]
    Io(#[from] io::Error),
}

/// The 12-byte message header: three native-endian `u32`s, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Header {
    /// The request code (bytes 0..4): a vhost-user [`FrontendReq`](crate::FrontendReq) or a
    /// [`control::code`](crate::control::code); a reply repeats its request's code.
    pub request: u32,
    /// Flags (bytes 4..8): the version ([`FLAG_VERSION_MASK`]), [`FLAG_REPLY`],
    /// [`FLAG_NEED_REPLY`], and on the control socket
    /// [`FLAG_ERROR`](crate::control::FLAG_ERROR).
    pub flags: u32,
    /// Payload size in bytes (bytes 8..12), not counting the header. Untrusted until checked
    /// against [`Limits::max_payload`], which [`recv_message`] does.
    pub size: u32,
}

impl Header {
    /// The header's wire form: `request`, `flags`, `size`, native-endian.
    pub fn to_bytes(self) -> [u8; HEADER_SIZE] {
        let mut bytes = [0u8; HEADER_SIZE];
        bytes[0..4].copy_from_slice(&self.request.to_ne_bytes());
        bytes[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        bytes[8..12].copy_from_slice(&self.size.to_ne_bytes());
        bytes
    }

    /// Reads a header from its wire form. Any 12 bytes are a header: the caller checks `size`
    /// and `flags` before trusting them.
    pub fn from_bytes(bytes: &[u8; HEADER_SIZE]) -> Header {
        let word = |i: usize| u32::from_ne_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        Header { request: word(0), flags: word(4), size: word(8) }
    }

    /// Whether [`FLAG_REPLY`] is set: the message answers a request.
    pub fn is_reply(&self) -> bool {
        self.flags & FLAG_REPLY != 0
    }

    /// Whether [`FLAG_NEED_REPLY`] is set: the sender waits for a REPLY_ACK.
    pub fn needs_reply(&self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }
}

/// One message: header, payload and the fds that came with it.
///
/// A received message has `header.size == payload.len()`; [`Message::new`] keeps that true for
/// messages to send. The fds are owned: dropping the message closes them.
#[derive(Debug)]
pub struct Message {
    /// The header as received (or as built by [`Message::new`]).
    pub header: Header,
    /// The payload, exactly `header.size` bytes.
    pub payload: Vec<u8>,
    /// The fds that arrived with the message, in the order sent; empty if none.
    pub fds: Vec<OwnedFd>,
}

impl Message {
    /// A message whose header size is the payload's length.
    ///
    /// # Panics
    ///
    /// If the payload is 4 GiB or more (it cannot be described by the `u32` size); payloads
    /// meant for a peer must anyway stay within its [`Limits`].
    pub fn new(request: u32, flags: u32, payload: Vec<u8>, fds: Vec<OwnedFd>) -> Message {
        let size = u32::try_from(payload.len()).expect("payloads are far below 4 GiB");
        Message { header: Header { request, flags, size }, payload, fds }
    }

    /// The vhost-user REPLY_ACK reply to `request`: a u64 payload, 0 when it succeeded and
    /// non-zero when it failed.
    pub fn reply_ack(request: u32, ok: bool) -> Message {
        Message::new(request, FLAG_VERSION_1 | FLAG_REPLY, u64::from(!ok).to_ne_bytes().to_vec(), vec![])
    }
}

/// Reads exactly one message. Returns `Ok(None)` when the peer closed the connection cleanly
/// between messages.
///
/// Blocks until the whole message is in (subject to the socket's read timeout, which surfaces
/// as [`FrameError::Io`]). Fails with [`FrameError::TooLarge`] before reading a payload over
/// `limits.max_payload`, with [`FrameError::TooManyFds`] once more than `limits.max_fds` fds
/// arrive, with [`FrameError::Truncated`] when the peer hangs up inside a message, and with
/// [`FrameError::BadControlMessage`] for ancillary data that is not SCM_RIGHTS. On every error
/// all fds received so far are closed. The flags and request code are not checked here: that
/// is the caller's job (e.g. [`Request::parse`](crate::control::Request::parse)).
pub fn recv_message(sock: &UnixStream, limits: Limits) -> Result<Option<Message>, FrameError> {
    let mut fds = Vec::new();
    let mut header = [0u8; HEADER_SIZE];
    let got = recv_exact(sock, &mut header, &mut fds, limits)?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_SIZE {
        return Err(FrameError::Truncated { got, want: HEADER_SIZE });
    }
    let header = Header::from_bytes(&header);
    let size = header.size as usize;
    if size > limits.max_payload {
        return Err(FrameError::TooLarge { size, max: limits.max_payload });
    }
    let mut payload = vec![0u8; size];
    let got = recv_exact(sock, &mut payload, &mut fds, limits)?;
    if got < size {
        return Err(FrameError::Truncated { got: HEADER_SIZE + got, want: HEADER_SIZE + size });
    }
    Ok(Some(Message { header, payload, fds }))
}

/// Fills `buf` from the socket unless the peer closes first; returns how much was read.
/// Every fd that arrives is added to `fds` (owned, close-on-exec).
fn recv_exact(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    limits: Limits,
) -> Result<usize, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = recv_with_fds(sock, &mut buf[filled..], fds)?;
        if fds.len() > limits.max_fds {
            return Err(FrameError::TooManyFds { count: fds.len(), max: limits.max_fds });
        }
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// One recvmsg(2). Received fds are taken into ownership before anything is checked, so that
/// none leaks, not even from a truncated control buffer.
fn recv_with_fds(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<usize, FrameError> {
    const FD_BYTES: usize = FD_BUFFER_ENTRIES * std::mem::size_of::<RawFd>();
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; (FD_BYTES + 64) / 8];
    // SAFETY: CMSG_SPACE only computes a size.
    let control_len = unsafe { libc::CMSG_SPACE(FD_BYTES as u32) } as usize;
    assert!(control_len <= std::mem::size_of_val(&control));
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control_len;
    let n = loop {
        // SAFETY: msg points at a live iovec over `buf` and at `control`, both valid for the
        // lengths given, for the duration of the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err.into());
        }
    };
    let mut bad = None;
    // SAFETY: msg was filled by a successful recvmsg; CMSG_FIRSTHDR/NXTHDR walk only within
    // msg_controllen bytes of `control`, which the kernel wrote.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: cmsg is non-null and points inside the control buffer (see above).
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) only computes a size.
            let data_len = header.cmsg_len as usize - unsafe { libc::CMSG_LEN(0) } as usize;
            // SAFETY: CMSG_DATA points at the cmsg's payload, which holds data_len bytes.
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            for i in 0..data_len / std::mem::size_of::<RawFd>() {
                // SAFETY: the payload of an SCM_RIGHTS message is an array of fds; read
                // unaligned because CMSG_DATA need not be aligned for i32.
                let fd = unsafe { data.cast::<RawFd>().add(i).read_unaligned() };
                // SAFETY: the kernel just installed this fd in our table for us; nobody else
                // owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        } else {
            bad = Some(FrameError::BadControlMessage { level: header.cmsg_level, kind: header.cmsg_type });
        }
        // SAFETY: as for CMSG_FIRSTHDR above.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(FrameError::TooManyFds { count: FD_BUFFER_ENTRIES + 1, max: FD_BUFFER_ENTRIES });
    }
    match bad {
        Some(err) => Err(err),
        None => Ok(n),
    }
}

/// Writes one message; its fds go with the first byte. The message's header is sent as it
/// is, so its `size` must match the payload (as [`Message::new`] ensures). The fds stay open
/// (and owned by `message`): the peer receives duplicates.
pub fn send_message(sock: &UnixStream, message: &Message) -> Result<(), FrameError> {
    let fds: Vec<RawFd> = message.fds.iter().map(AsRawFd::as_raw_fd).collect();
    send_parts(sock, message.header, &message.payload, &fds)
}

/// Writes a header and payload with `fds` (borrowed: they stay open here).
///
/// The header is sent as given: the caller makes `header.size` equal to `payload.len()`. The
/// fds go as one SCM_RIGHTS message with the first byte sent (the peer's limits apply: at most
/// 32 for a vhost-user peer, [`control::LIMITS`](crate::control::LIMITS) on the control socket).
/// Partial writes and EINTR are retried; uses `MSG_NOSIGNAL`, so a vanished peer is an
/// [`FrameError::Io`] (`EPIPE`), not a SIGPIPE. After an error, part of the message may have
/// been sent: the connection is no longer usable.
pub fn send_parts(
    sock: &UnixStream,
    header: Header,
    payload: &[u8],
    fds: &[RawFd],
) -> Result<(), FrameError> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let header = header.to_bytes();
    let mut data = Vec::with_capacity(HEADER_SIZE + payload.len());
    data.extend_from_slice(&header);
    data.extend_from_slice(payload);
    let mut sent = 0;
    while sent < data.len() {
        let cmsgs = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if sent == 0 && !fds.is_empty() { &cmsgs } else { &[] };
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&data[sent..])],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(FrameError::Io(e.into())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    /// `count` copies of a pipe's write end, and its read end: the read end sees EOF only
    /// once every copy is closed, wherever it went — a precise leak detector.
    fn pipe_copies(count: usize) -> (std::fs::File, Vec<OwnedFd>) {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let copies = (0..count).map(|_| write.try_clone().unwrap()).collect();
        nix::fcntl::fcntl(read.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
            .unwrap();
        (read.into(), copies)
    }

    fn all_closed(mut read: std::fs::File) -> bool {
        use std::io::Read;
        matches!(read.read(&mut [0u8; 1]), Ok(0))
    }

    #[test]
    fn round_trip_with_fds() {
        let (a, b) = pair();
        let file = std::fs::File::open("/dev/null").unwrap();
        let msg = Message::new(5, FLAG_VERSION_1, b"payload".to_vec(), vec![file.into()]);
        send_message(&a, &msg).unwrap();
        send_message(&a, &Message::new(6, FLAG_VERSION_1, vec![], vec![])).unwrap();
        let got = recv_message(&b, Limits::VHOST_USER).unwrap().unwrap();
        assert_eq!(got.header, msg.header);
        assert_eq!(got.payload, b"payload");
        assert_eq!(got.fds.len(), 1);
        let second = recv_message(&b, Limits::VHOST_USER).unwrap().unwrap();
        assert_eq!(second.header.request, 6, "never reads across a message");
        drop(a);
        assert!(recv_message(&b, Limits::VHOST_USER).unwrap().is_none());
    }

    #[test]
    fn truncated_header_and_payload() {
        let (mut a, b) = pair();
        a.write_all(&[1, 0, 0]).unwrap();
        drop(a);
        assert!(matches!(recv_message(&b, Limits::VHOST_USER), Err(FrameError::Truncated { got: 3, .. })));

        let (mut a, b) = pair();
        let header = Header { request: 1, flags: 1, size: 100 };
        a.write_all(&header.to_bytes()).unwrap();
        a.write_all(&[0; 10]).unwrap();
        drop(a);
        assert!(matches!(recv_message(&b, Limits::VHOST_USER), Err(FrameError::Truncated { .. })));
    }

    #[test]
    fn oversized_payload_is_refused_before_reading_it() {
        let (mut a, b) = pair();
        a.write_all(&Header { request: 1, flags: 1, size: u32::MAX }.to_bytes()).unwrap();
        assert!(matches!(recv_message(&b, Limits::VHOST_USER), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn too_many_fds_are_all_closed() {
        let (read, copies) = pipe_copies(40);
        let (a, b) = pair();
        send_message(&a, &Message::new(5, 1, vec![0; 8], copies)).unwrap();
        let limits = Limits { max_payload: 4096, max_fds: 8 };
        assert!(matches!(recv_message(&b, limits), Err(FrameError::TooManyFds { count: 40, max: 8 })));
        assert!(all_closed(read), "no fd leaks");
    }

    #[test]
    fn truncated_control_buffer_leaks_nothing() {
        // 200 fds in one message: more than the control buffer holds (SCM_MAX_FD is 253).
        let (read, copies) = pipe_copies(200);
        let (a, b) = pair();
        send_message(&a, &Message::new(5, 1, vec![], copies)).unwrap();
        let limits = Limits { max_payload: 4096, max_fds: 1000 };
        assert!(matches!(recv_message(&b, limits), Err(FrameError::TooManyFds { .. })));
        assert!(all_closed(read), "no fd leaks");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let (mut a, b) = pair();
            a.write_all(&bytes).unwrap();
            drop(a);
            let limits = Limits { max_payload: 16, max_fds: 0 };
            while let Ok(Some(_)) = recv_message(&b, limits) {}
        }
    }
}
