//! Shared by the fuzz targets: feeding bytes (and fds) to a parser through a real socket, and
//! checking that no fd leaks.

#![allow(dead_code)]

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use pageless_protocol::frame::{send_parts, Header, HEADER_SIZE};

/// Most bytes one input sends through a socket: well below a Unix socket's buffer, so that
/// writing everything before reading never blocks.
pub const MAX_STREAM: usize = 64 << 10;

/// A socket whose peer has sent `fd_count` fds (attached to the first byte) and then `bytes`, and
/// closed its end.
pub fn stream_with(bytes: &[u8], fd_count: usize) -> UnixStream {
    let (tx, rx) = UnixStream::pair().expect("socketpair");
    let bytes = &bytes[..bytes.len().min(MAX_STREAM)];
    if fd_count > 0 && bytes.len() >= HEADER_SIZE {
        let null = dev_null();
        let fds = vec![null.as_raw_fd(); fd_count];
        let header = Header::from_bytes(bytes[..HEADER_SIZE].try_into().expect("12 bytes"));
        send_parts(&tx, header, &bytes[HEADER_SIZE..], &fds).expect("send with fds");
    } else {
        (&tx).write_all(bytes).expect("write to a socketpair");
    }
    drop(tx);
    rx
}

/// `/dev/null`, to attach as an fd.
pub fn dev_null() -> OwnedFd {
    std::fs::File::open("/dev/null").expect("open /dev/null").into()
}

/// How many fds this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("read /proc/self/fd").count()
}

/// Fails if this process has more fds open than when `guard` was made.
pub struct FdGuard(usize);

impl FdGuard {
    pub fn new() -> FdGuard {
        FdGuard(open_fds())
    }
}

impl Drop for FdGuard {
    fn drop(&mut self) {
        let now = open_fds();
        assert!(now <= self.0, "fd leak: {} fds open before, {now} after", self.0);
    }
}
