//! Hostile clients of the owner's socket: each gets a clear error or a closed connection, the
//! owner keeps serving, and nothing leaks.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use pageless_protocol::control::{code, CONTROL_VERSION, FLAG_ERROR};
use pageless_protocol::frame::{
    recv_message, send_message, FrameError, Header, Limits, Message, FLAG_VERSION_1,
};
use pageless_tests::env::{require_env, Need};
use pageless_tests::{bins, owner::Owner};

fn connect(owner: &Owner) -> UnixStream {
    let sock = UnixStream::connect(owner.socket()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    sock
}

fn hello() -> Message {
    let mut payload = CONTROL_VERSION.to_ne_bytes().to_vec();
    payload.extend_from_slice(b"hostile-test");
    Message::new(code::HELLO, FLAG_VERSION_1, payload, vec![])
}

/// Reads until the owner closes the connection; returns the error reply's text, if one came.
fn error_then_close(sock: &UnixStream) -> Option<String> {
    let limits = Limits { max_payload: 1 << 20, max_fds: 8 };
    let mut reason = None;
    loop {
        match recv_message(sock, limits) {
            Ok(Some(reply)) => {
                assert!(
                    reply.header.flags & FLAG_ERROR != 0,
                    "only an error reply may come: {:?}",
                    reply.header
                );
                reason = Some(String::from_utf8_lossy(&reply.payload).into_owned());
            }
            Ok(None) => return reason,
            // Closing with unread bytes queued (the rest of a refused message) resets.
            Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return reason,
            Err(e) => panic!("the owner should close the connection, got {e}"),
        }
    }
}

/// Copies of a pipe's write end: its read end sees EOF only when all copies are closed.
fn pipe_copies(count: usize) -> (std::fs::File, Vec<OwnedFd>) {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let copies = (0..count).map(|_| write.try_clone().unwrap()).collect();
    (read.into(), copies)
}

fn wait_closed(mut read: std::fs::File, what: &str) {
    nix::fcntl::fcntl(read.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match read.read(&mut [0u8; 1]) {
            Ok(0) => return,
            _ if Instant::now() > deadline => panic!("the owner kept fds sent with {what}"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn hostile_clients_are_refused_and_nothing_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let mut owner = Owner::start(&dir.path().join("run"), "vm", &["--size", "4M"]);
    // Settle: the start-up probe's connection must be gone before counting.
    std::thread::sleep(Duration::from_millis(300));
    let fds_before = owner.open_fds();

    // A header cut short.
    let mut sock = connect(&owner);
    sock.write_all(&[1, 0, 0, 0, 1]).unwrap();
    sock.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(error_then_close(&sock), None, "malformed header: closed");

    // A payload size beyond the message limit.
    let mut sock = connect(&owner);
    sock.write_all(&Header { request: code::HELLO, flags: FLAG_VERSION_1, size: 64 << 20 }.to_bytes())
        .unwrap();
    assert_eq!(error_then_close(&sock), None, "oversized message: closed");

    // Too many fds.
    let (read, copies) = pipe_copies(20);
    let sock = connect(&owner);
    send_message(&sock, &Message { fds: copies, ..hello() }).unwrap();
    assert_eq!(error_then_close(&sock), None, "too many fds: closed");
    wait_closed(read, "too many fds");

    // An fd where none belongs.
    let (read, copies) = pipe_copies(1);
    let sock = connect(&owner);
    send_message(&sock, &Message { fds: copies, ..hello() }).unwrap();
    let reason = error_then_close(&sock).expect("an error reply");
    assert!(reason.contains("unexpected fds"), "{reason}");
    wait_closed(read, "an unexpected fd");

    // A wrong request code after a good HELLO.
    let sock = connect(&owner);
    send_message(&sock, &hello()).unwrap();
    let answer = recv_message(&sock, Limits { max_payload: 64, max_fds: 0 }).unwrap().unwrap();
    assert_eq!(answer.header.flags & FLAG_ERROR, 0);
    send_message(&sock, &Message::new(99, FLAG_VERSION_1, vec![], vec![])).unwrap();
    let reason = error_then_close(&sock).expect("an error reply");
    assert!(reason.contains("unknown request code 99"), "{reason}");

    // A request before HELLO, and a HELLO of another protocol version.
    let sock = connect(&owner);
    send_message(&sock, &Message::new(code::GET_MEMORY, FLAG_VERSION_1, vec![], vec![])).unwrap();
    assert!(error_then_close(&sock).expect("an error reply").contains("HELLO"));
    let sock = connect(&owner);
    send_message(&sock, &Message::new(code::HELLO, FLAG_VERSION_1, 999u32.to_ne_bytes().to_vec(), vec![]))
        .unwrap();
    assert!(error_then_close(&sock).expect("an error reply").contains("version 999"));

    // A WRITE past the end of the memory is refused (the connection stays usable).
    let client = owner.connect().unwrap();
    assert!(client.write(4 << 20, b"x").is_err());
    assert!(client.status().is_ok());
    drop(client);

    // An unknown user: let it reach the socket at all, so that the owner's own check is tested
    // (switching to uid 65534 takes root).
    if require_env("hostile_clients_are_refused_and_nothing_leaks (its unknown-user part)", &[Need::Root]) {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&owner.run_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(owner.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
        let out = Command::new(bins::pageless())
            .args(["status", "--vm", "vm", "--run-dir"])
            .arg(&owner.run_dir)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "nobody must be refused");
        assert!(stderr.contains("uid 65534 may not use VM"), "{stderr}");
        assert!(owner.log_shows("refused control client"), "the owner logs the refusal");
    }

    // The owner kept serving and holds no more fds than before.
    assert!(owner.is_running());
    assert_eq!(owner.status().vm, "vm");
    let deadline = Instant::now() + Duration::from_secs(10);
    while owner.open_fds() != fds_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(owner.open_fds(), fds_before, "fds leaked:\n{}", owner.log());
}
