//! Control socket benchmark: `cargo bench -p pageless-tests --bench control`.
//!
//! Round trips per second on the owner's control socket with 1, 8 and 64 concurrent clients,
//! each on a connection of its own: GET_MEMORY (a memory table and the memory's fd) against
//! HELLO (the same framing, no fd) measured in the same run, and whole `pageless qemu`-style
//! sessions (connect, HELLO, GET_MEMORY, close). Then the owner's CPU use while 2000 clients
//! are connected and idle, both silent (never said HELLO) and greeted.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use pageless_protocol::control::{code, ControlClient, CONTROL_VERSION};
use pageless_protocol::frame::{recv_message, send_message, Message, FLAG_VERSION_1};
use pageless_tests::owner::Owner;
use pageless_tests::procfs::raise_file_limit;

const WINDOW: Duration = Duration::from_secs(3);
const IDLE_CLIENTS: usize = 2000;
const IDLE_WINDOW: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
enum Work {
    /// HELLO again and again on one connection: the framing's cost alone.
    Hello,
    /// GET_MEMORY on one connection.
    GetMemory,
    /// connect + HELLO + GET_MEMORY + close, as `pageless qemu` and the hook do.
    Session,
}

/// One HELLO round trip on an open connection.
fn hello(sock: &UnixStream, hello: &[u8]) {
    send_message(sock, &Message::new(code::HELLO, FLAG_VERSION_1, hello.to_vec(), vec![]))
        .expect("send HELLO");
    let reply =
        recv_message(sock, pageless_protocol::control::LIMITS).expect("HELLO reply").expect("HELLO reply");
    assert!(reply.header.is_reply());
}

/// Round trips per second of `work` with `clients` concurrent clients.
fn rate(socket: &Path, work: Work, clients: usize) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(clients + 1));
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, done, start, socket) =
                (Arc::clone(&stop), Arc::clone(&done), Arc::clone(&start), socket.to_path_buf());
            std::thread::spawn(move || {
                let client = ControlClient::connect(&socket, "bench").expect("connect");
                let sock = client.into_stream();
                let client = ControlClient::connect(&socket, "bench").expect("connect");
                let mut payload = CONTROL_VERSION.to_ne_bytes().to_vec();
                payload.extend_from_slice(b"bench");
                start.wait();
                let mut count = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match work {
                        Work::Hello => hello(&sock, &payload),
                        Work::GetMemory => assert_eq!(client.get_memory().expect("GET_MEMORY").len(), 1),
                        Work::Session => {
                            let session = ControlClient::connect(&socket, "bench").expect("connect");
                            assert_eq!(session.get_memory().expect("GET_MEMORY").len(), 1);
                        }
                    }
                    count += 1;
                }
                done.fetch_add(count, Ordering::Relaxed);
            })
        })
        .collect();
    start.wait();
    let started = Instant::now();
    std::thread::sleep(WINDOW);
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for worker in workers {
        worker.join().expect("bench client");
    }
    done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
}

/// The owner's share of one CPU over [`IDLE_WINDOW`] with [`IDLE_CLIENTS`] idle clients.
fn idle_cpu(owner: &Owner, greeted: bool) -> (f64, usize, usize) {
    let clients: Vec<UnixStream> = (0..IDLE_CLIENTS)
        .map(|_| {
            if greeted {
                owner.connect().expect("connect").into_stream()
            } else {
                UnixStream::connect(owner.socket()).expect("connect")
            }
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let before = owner.usage();
    std::thread::sleep(IDLE_WINDOW);
    let after = owner.usage();
    drop(clients);
    std::thread::sleep(Duration::from_secs(1));
    (after.cpu_share_since(&before), after.open_fds, after.threads)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    raise_file_limit();
    let dir = tempfile::tempdir().unwrap();
    let run_dir: PathBuf = dir.path().join("run");
    let owner = Owner::start_with(
        &run_dir,
        "bench",
        &["--size", "64M", "--max-clients", "4096", "--hello-timeout", "600"],
        |c| {
            c.env("RUST_LOG", "info");
        },
    );
    let socket = owner.socket();
    // Warm-up.
    rate(&socket, Work::GetMemory, 1);

    println!("\npageless control socket benchmark: round trips per second, {WINDOW:?} each\n");
    println!(
        "{:>8} {:>14} {:>14} {:>12} {:>22}",
        "clients", "HELLO", "GET_MEMORY", "GET/HELLO", "connect+HELLO+GET_MEM"
    );
    for clients in [1, 8, 64] {
        let hello = rate(&socket, Work::Hello, clients);
        let memory = rate(&socket, Work::GetMemory, clients);
        let session = rate(&socket, Work::Session, clients);
        println!("{clients:>8} {hello:>14.0} {memory:>14.0} {:>12.3} {session:>22.0}", memory / hello);
    }

    println!("\nowner CPU with {IDLE_CLIENTS} idle clients connected, over {IDLE_WINDOW:?}:");
    for greeted in [false, true] {
        let (cpu, fds, threads) = idle_cpu(&owner, greeted);
        println!(
            "  {:<28} {:>7.3}% of one CPU ({fds} files, {threads} threads)",
            if greeted { "greeted (HELLO, then idle)" } else { "silent (never sent HELLO)" },
            cpu * 100.0
        );
    }
    let lines = owner.log().lines().count();
    println!("\nthe owner logged {lines} lines in all");
}
