//! The vhost-user frame parser (`pageless_protocol::frame::recv_message`), fed through a real Unix socket
//! with fds attached: every message it returns is self-consistent, it never takes more than its
//! limits, and no fd leaks.
//!
//! Input: byte 0 picks the limits (bit 7: the control protocol's, else vhost-user's) and how many
//! fds come with the first message (bits 0-6: 0 to 127, over the 64 one recvmsg takes); the rest
//! is the byte stream.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use pageless_protocol::frame::{recv_message, FrameError, Header, Limits, HEADER_SIZE};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else { return };
    let limits = if mode & 0x80 != 0 { pageless_protocol::control::LIMITS } else { Limits::VHOST_USER };
    let fd_count = usize::from(mode & 0x7f);
    let guard = common::FdGuard::new();
    let sock = common::stream_with(stream, fd_count);
    let mut consumed = 0usize;
    loop {
        match recv_message(&sock, limits) {
            Ok(Some(message)) => {
                let header = message.header;
                assert_eq!(header.size as usize, message.payload.len());
                assert!(message.payload.len() <= limits.max_payload);
                assert!(message.fds.len() <= limits.max_fds);
                assert_eq!(Header::from_bytes(&header.to_bytes()), header);
                let start = consumed;
                consumed += HEADER_SIZE + message.payload.len();
                assert!(consumed <= stream.len().min(common::MAX_STREAM));
                assert_eq!(&stream[start..start + HEADER_SIZE], &header.to_bytes());
                assert_eq!(&stream[start + HEADER_SIZE..consumed], &message.payload[..]);
            }
            Ok(None) => {
                assert_eq!(consumed, stream.len().min(common::MAX_STREAM));
                break;
            }
            Err(FrameError::Io(e)) => panic!("socket I/O error on a socketpair: {e}"),
            Err(_) => break,
        }
    }
    drop(sock);
    drop(guard);
});
