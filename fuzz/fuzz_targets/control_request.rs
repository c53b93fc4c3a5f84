//! The owner's decoding of control requests: frames read with the control protocol's limits
//! (`pageless_protocol::control::LIMITS`), then `Request::parse`, as the owner's control server does.
//! What it accepts is within the protocol's bounds.
//!
//! Input: byte 0 is how many fds come with the first message (0 to 15); the rest is the byte
//! stream a client sends.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use pageless_protocol::control::{code, Request, LIMITS, MAX_FIND_PATTERN, MAX_ROLE_LEN, MAX_WRITE};
use pageless_protocol::frame::{recv_message, FrameError};

fuzz_target!(|data: &[u8]| {
    let Some((&fd_count, stream)) = data.split_first() else { return };
    let guard = common::FdGuard::new();
    let sock = common::stream_with(stream, usize::from(fd_count & 0x0f));
    loop {
        let message = match recv_message(&sock, LIMITS) {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(FrameError::Io(e)) => panic!("socket I/O error on a socketpair: {e}"),
            Err(_) => break,
        };
        let Ok(request) = Request::parse(&message) else { continue };
        assert!(message.fds.is_empty(), "a request with fds was accepted");
        assert!(!message.header.is_reply());
        match request {
            Request::Hello { role, .. } => {
                assert_eq!(message.header.request, code::HELLO);
                assert!(role.len() <= MAX_ROLE_LEN);
                assert!(!role.chars().any(char::is_control));
            }
            Request::GetMemory | Request::Status | Request::Stop => assert!(message.payload.is_empty()),
            Request::Find(pattern) => assert!((1..=MAX_FIND_PATTERN).contains(&pattern.len())),
            Request::Write { data, .. } => assert!((1..=MAX_WRITE).contains(&data.len())),
            Request::Extents { max, .. } => {
                assert_eq!(message.header.request, code::EXTENTS);
                assert_eq!(message.payload.len(), 12);
                assert!(max > 0);
            }
        }
    }
    drop(sock);
    drop(guard);
});
