//! The owner under pressure: thousands of silent connections under `ulimit -n 1024`, a full
//! control socket, a full relay, clients that never say HELLO, and a 30 s load of 500
//! control clients with 64 relayed devices. The owner stays idle when nothing happens, keeps
//! answering, logs one line per burst that names the limit, and gives back every file, thread
//! and byte once the clients go.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pageless_protocol::control::{code, ControlClient, ControlError, FLAG_ERROR};
use pageless_protocol::frame::{
    recv_message, send_message, Limits, Message, FLAG_NEED_REPLY, FLAG_VERSION_1,
};
use pageless_protocol::memory::encode_mem_table;
use pageless_protocol::{FrontendReq, VhostUserMemoryRegion};
use pageless_tests::bins;
use pageless_tests::owner::Owner;
use pageless_tests::procfs::{raise_file_limit, Usage};

/// The tests measure CPU and count threads: one at a time, on a machine shared with others.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the owner with `ulimit -n limit` (soft and hard: raising it does not help).
fn file_limit(limit: u64) -> impl FnOnce(&mut Command) {
    move |command| {
        // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent; the
        // closure allocates nothing.
        unsafe {
            command.pre_exec(move || {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit, limit)
                    .map_err(std::io::Error::from)
            });
        }
    }
}

/// Waits up to `timeout` for the owner's files and threads to be back to `baseline`.
fn wait_for_baseline(owner: &Owner, baseline: &Usage, timeout: Duration) -> Usage {
    let deadline = Instant::now() + timeout;
    loop {
        let now = owner.usage();
        if now.open_fds <= baseline.open_fds && now.threads <= baseline.threads {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "after {timeout:?} the owner still has {} files and {} threads, at the start {} and {}",
            now.open_fds,
            now.threads,
            baseline.open_fds,
            baseline.threads
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `pageless status --vm VM` and a new GET_MEMORY, each timed; both must answer.
fn probe(owner: &Owner) -> (Duration, Duration) {
    let started = Instant::now();
    let output = Command::new(bins::pageless())
        .args(["status", "--vm", &owner.vm, "--run-dir"])
        .arg(&owner.run_dir)
        .output()
        .expect("run pageless status");
    let status_took = started.elapsed();
    assert!(output.status.success(), "pageless status failed: {}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains(&owner.vm));
    let started = Instant::now();
    let regions = owner.connect().and_then(|c| c.get_memory()).expect("GET_MEMORY");
    let memory_took = started.elapsed();
    assert_eq!(regions.len(), 1);
    (status_took, memory_took)
}

fn log_lines(owner: &Owner) -> usize {
    owner.log().lines().count()
}

#[test]
fn silent_connections_under_ulimit_1024_leave_the_owner_idle_and_answering() {
    let _serial = serial();
    raise_file_limit();
    let dir = tempfile::tempdir().unwrap();
    // A HELLO deadline longer than the test: the connections stay while we measure.
    let owner = Owner::start_with(
        &dir.path().join("run"),
        "limits",
        &["--size", "16M", "--hello-timeout", "60"],
        file_limit(1024),
    );
    probe(&owner);
    let baseline = wait_for_baseline(
        &owner,
        &Usage { threads: 1, open_fds: usize::MAX, ..owner.usage() },
        Duration::from_secs(5),
    );
    let lines_before = log_lines(&owner);
    assert!(owner.log_shows("open file limit: 1024"), "{}", owner.log());
    assert!(owner.log_shows("raise the hard limit"), "the reduced cap is explained:\n{}", owner.log());

    let started = Instant::now();
    let silent: Vec<UnixStream> = (0..2000)
        .map(|i| UnixStream::connect(owner.socket()).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    println!("2000 silent connections made in {:?}", started.elapsed());
    // Let the owner take in the last of them, then measure it doing nothing.
    std::thread::sleep(Duration::from_secs(1));
    let before = owner.usage();
    std::thread::sleep(Duration::from_secs(5));
    let after = owner.usage();
    let cpu = after.cpu_share_since(&before);
    println!(
        "owner with 2000 silent connections: {:.2}% CPU, {} files, {} threads",
        cpu * 100.0,
        after.open_fds,
        after.threads
    );
    assert!(cpu < 0.05, "the owner used {:.1}% CPU while its clients were silent", cpu * 100.0);
    assert!(after.open_fds <= 1024);

    let (status_took, memory_took) = probe(&owner);
    println!("pageless status took {status_took:?}, a new GET_MEMORY {memory_took:?}");
    assert!(status_took < Duration::from_secs(1), "pageless status took {status_took:?}");
    assert!(memory_took < Duration::from_secs(1), "GET_MEMORY took {memory_took:?}");

    let log = owner.log();
    let lines = log_lines(&owner) - lines_before;
    println!("the owner logged {lines} lines for 2000 connections");
    assert!(lines < 100, "the owner logged {lines} lines:\n{log}");
    assert!(
        log.lines().any(|l| l.contains("control socket is full") && l.contains("--max-clients")),
        "the refusals are logged with the limit to raise:\n{log}"
    );

    drop(silent);
    let end = wait_for_baseline(&owner, &baseline, Duration::from_secs(5));
    println!(
        "after the clients left: {} files, {} threads (at the start {} and {})",
        end.open_fds, end.threads, baseline.open_fds, baseline.threads
    );
    probe(&owner);
}

/// Reads a refusal (HELLO with the error flag), then the end of the connection.
fn refusal_then_close(sock: &mut UnixStream, within: Duration) -> String {
    sock.set_read_timeout(Some(within)).unwrap();
    let message = recv_message(sock, Limits::VHOST_USER)
        .expect("a refusal, then the end")
        .expect("a refusal before the end");
    assert_eq!(message.header.request, code::HELLO);
    assert_ne!(message.header.flags & FLAG_ERROR, 0, "{:?}", message.header);
    let mut rest = Vec::new();
    sock.read_to_end(&mut rest).expect("the owner closes the connection");
    assert!(rest.is_empty());
    String::from_utf8(message.payload).unwrap()
}

#[test]
fn clients_that_do_not_say_hello_are_dropped() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let owner = Owner::start(&dir.path().join("run"), "hello", &["--size", "16M", "--hello-timeout", "1"]);
    let baseline = owner.usage();
    let started = Instant::now();
    let mut silent = UnixStream::connect(owner.socket()).unwrap();
    // One that starts a message and stalls is dropped too (it is read on a thread of its own).
    let mut stalled = UnixStream::connect(owner.socket()).unwrap();
    std::io::Write::write_all(&mut stalled, &code::HELLO.to_ne_bytes()).unwrap();
    // A prompt client is served meanwhile.
    assert_eq!(owner.connect().and_then(|c| c.get_memory()).unwrap().len(), 1);
    for sock in [&mut silent, &mut stalled] {
        let why = refusal_then_close(sock, Duration::from_secs(5));
        assert!(why.contains("--hello-timeout"), "{why}");
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "dropped after {took:?}");
    wait_for_baseline(&owner, &baseline, Duration::from_secs(5));
    let log = owner.log();
    assert!(
        log.lines().any(|l| l.contains("no HELLO within 1 s") && l.contains("raise --hello-timeout")),
        "{log}"
    );
}

#[test]
fn a_full_control_socket_refuses_with_the_limit_to_raise() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let owner = Owner::start(&dir.path().join("run"), "full", &["--size", "16M", "--max-clients", "4"]);
    let held: Vec<ControlClient> = (0..4).map(|_| owner.connect().expect("a place")).collect();
    for _ in 0..3 {
        match owner.connect() {
            Err(ControlError::Refused(why)) => assert!(why.contains("--max-clients 4"), "{why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    let log = owner.log();
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("refused control client")).collect();
    assert_eq!(refusals.len(), 1, "one line for the burst:\n{log}");
    assert!(refusals[0].contains("raise --max-clients"), "{log}");
    // A silent connection holding a place gives it up to a new client.
    drop(held);
    wait_for_baseline(
        &owner,
        &Usage { threads: 1, open_fds: usize::MAX, ..owner.usage() },
        Duration::from_secs(5),
    );
    let _held: Vec<ControlClient> = (0..3).map(|_| owner.connect().expect("a place")).collect();
    let mut silent = UnixStream::connect(owner.socket()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let client = owner.connect().expect("the silent connection makes room");
    assert_eq!(client.get_memory().unwrap().len(), 1);
    let why = refusal_then_close(&mut silent, Duration::from_secs(5));
    assert!(why.contains("--max-clients"), "{why}");
}

/// A vhost-user backend that acknowledges whatever asks for a reply; counts connections.
fn dummy_backend(path: &Path, connections: Arc<AtomicU64>) {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            connections.fetch_add(1, Ordering::Relaxed);
            std::thread::spawn(move || {
                while let Ok(Some(message)) = recv_message(&conn, Limits::VHOST_USER) {
                    if message.header.needs_reply() {
                        let ack = Message::reply_ack(message.header.request, true);
                        if send_message(&conn, &ack).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
}

/// One vhost-user round trip through the relay (a request with REPLY_ACK).
fn device_round_trip(
    sock: &UnixStream,
    request: FrontendReq,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
) -> Result<(), String> {
    let message = Message::new(u32::from(request), FLAG_VERSION_1 | FLAG_NEED_REPLY, payload, fds);
    send_message(sock, &message).map_err(|e| format!("send {request:?}: {e}"))?;
    let reply = recv_message(sock, Limits::VHOST_USER)
        .map_err(|e| format!("reply to {request:?}: {e}"))?
        .ok_or_else(|| format!("the relay closed the connection after {request:?}"))?;
    if reply.payload != 0u64.to_ne_bytes() {
        return Err(format!("{request:?} failed: {:?}", reply.payload));
    }
    Ok(())
}

/// A frontend that gives its device the VM's memory (checked by the relay).
fn device_frontend(owner: &Owner, device: &str) -> Result<UnixStream, String> {
    let sock = UnixStream::connect(owner.run_dir.join(&owner.vm).join(format!("{device}.sock")))
        .map_err(|e| format!("connect to {device}: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let regions = owner.connect().and_then(|c| c.get_memory()).map_err(|e| e.to_string())?;
    let region = VhostUserMemoryRegion::new(0, regions[0].region.memory_size, 0x7f00_0000_0000, 0);
    let fds = regions.into_iter().map(|r| r.fd).collect();
    device_round_trip(&sock, FrontendReq::SET_MEM_TABLE, encode_mem_table([region].iter()), fds)?;
    Ok(sock)
}

#[test]
fn a_full_relay_closes_new_device_connections() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let connections = Arc::new(AtomicU64::new(0));
    let backend = dir.path().join("dev.sock");
    dummy_backend(&backend, Arc::clone(&connections));
    let spec = format!("d0={}", backend.display());
    let owner = Owner::start(
        &dir.path().join("run"),
        "relayfull",
        &["--size", "16M", "--vhost-user", &spec, "--max-device-connections", "2"],
    );
    let held: Vec<UnixStream> = (0..2).map(|_| device_frontend(&owner, "d0").expect("relayed")).collect();
    let mut refused = UnixStream::connect(owner.run_dir.join("relayfull/d0.sock")).unwrap();
    refused.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    refused.read_to_end(&mut rest).expect("the owner closes a connection over the limit");
    assert_eq!(connections.load(Ordering::Relaxed), 2, "the third never reached the backend");
    let log = owner.log();
    assert!(
        log.lines()
            .any(|l| l.contains("device d0: refused a connection")
                && l.contains("raise --max-device-connections")),
        "{log}"
    );
    drop(held);
    // Places are given back when connections end.
    let deadline = Instant::now() + Duration::from_secs(5);
    while device_frontend(&owner, "d0").is_err() {
        assert!(Instant::now() < deadline, "no place freed:\n{}", owner.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

const LOAD_CLIENTS: usize = 500;
const LOAD_DEVICES: usize = 64;
const LOAD_TIME: Duration = Duration::from_secs(30);
/// Anonymous memory the owner may use at any time under the load (heap and thread stacks of
/// 500 client threads and 128 relay threads).
const RSS_ANON_CAP_KIB: u64 = 64 << 10;
/// How much more anonymous memory the last third of the load may see than the first: a leak
/// of even 50 bytes per request would exceed it.
const RSS_GROWTH_KIB: u64 = 16 << 10;

#[test]
fn load_of_500_control_clients_and_64_relayed_devices() {
    let _serial = serial();
    raise_file_limit();
    let dir = tempfile::tempdir().unwrap();
    let connections = Arc::new(AtomicU64::new(0));
    let mut args: Vec<String> = ["--size", "16M"].iter().map(|s| s.to_string()).collect();
    for i in 0..LOAD_DEVICES {
        let backend = dir.path().join(format!("dev{i}.sock"));
        dummy_backend(&backend, Arc::clone(&connections));
        args.extend(["--vhost-user".into(), format!("d{i}={}", backend.display())]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let owner = Owner::start_with(&dir.path().join("run"), "load", &args, |c| {
        c.env("RUST_LOG", "info");
    });
    probe(&owner);
    let baseline = wait_for_baseline(
        &owner,
        &Usage { threads: 1, open_fds: usize::MAX, ..owner.usage() },
        Duration::from_secs(5),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let device_trips = Arc::new(AtomicU64::new(0));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let socket = owner.socket();
    let mut workers = Vec::new();
    for i in 0..LOAD_DEVICES {
        let sock = device_frontend(&owner, &format!("d{i}")).unwrap_or_else(|e| panic!("device d{i}: {e}"));
        let (stop, trips, errors) = (Arc::clone(&stop), Arc::clone(&device_trips), Arc::clone(&errors));
        workers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match device_round_trip(&sock, FrontendReq::GET_FEATURES, vec![], vec![]) {
                    Ok(()) => trips.fetch_add(1, Ordering::Relaxed),
                    Err(e) => return errors.lock().unwrap().push(format!("device d{i}: {e}")),
                };
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
    }
    for i in 0..LOAD_CLIENTS {
        let (stop, requests, errors, socket) =
            (Arc::clone(&stop), Arc::clone(&requests), Arc::clone(&errors), socket.clone());
        workers.push(
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let got = ControlClient::connect(&socket, "load").and_then(|c| c.get_memory());
                        match got {
                            Ok(regions) if regions.len() == 1 => requests.fetch_add(1, Ordering::Relaxed),
                            Ok(regions) => {
                                return errors
                                    .lock()
                                    .unwrap()
                                    .push(format!("client {i}: {} regions", regions.len()))
                            }
                            Err(e) => return errors.lock().unwrap().push(format!("client {i}: {e}")),
                        };
                    }
                })
                .unwrap(),
        );
    }
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < LOAD_TIME {
        std::thread::sleep(Duration::from_secs(1));
        let usage = owner.usage();
        assert!(
            usage.rss_anon_kib < RSS_ANON_CAP_KIB,
            "the owner's anonymous memory grew to {} KiB",
            usage.rss_anon_kib
        );
        samples.push(usage);
        if !errors.lock().unwrap().is_empty() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "{} errors under load, first: {:?}\n{}",
        errors.len(),
        &errors[..errors.len().min(5)],
        owner.log()
    );
    let requests = requests.load(Ordering::Relaxed);
    let peak = |part: &[Usage]| part.iter().map(|u| u.rss_anon_kib).max().unwrap_or(0);
    let third = samples.len() / 3;
    let (first, last) = (peak(&samples[..third]), peak(&samples[samples.len() - third..]));
    let peak_threads = samples.iter().map(|u| u.threads).max().unwrap_or(0);
    let peak_fds = samples.iter().map(|u| u.open_fds).max().unwrap_or(0);
    println!(
        "load: {requests} HELLO+GET_MEMORY connections ({:.0}/s) by {LOAD_CLIENTS} clients, {} device round trips on {LOAD_DEVICES} relayed devices in {:?}; owner peak {peak_threads} threads, {peak_fds} files, anonymous memory {first} KiB peak in the first third, {last} KiB in the last",
        requests as f64 / LOAD_TIME.as_secs_f64(),
        device_trips.load(Ordering::Relaxed),
        started.elapsed()
    );
    assert!(requests > LOAD_CLIENTS as u64, "only {requests} requests were served");
    assert!(device_trips.load(Ordering::Relaxed) >= LOAD_DEVICES as u64);
    assert!(
        last <= first + RSS_GROWTH_KIB,
        "the owner's anonymous memory grew from {first} KiB to {last} KiB under a steady load"
    );
    let end = wait_for_baseline(&owner, &baseline, Duration::from_secs(10));
    println!(
        "after the load: {} files, {} threads (at the start {} and {})",
        end.open_fds, end.threads, baseline.open_fds, baseline.threads
    );
    probe(&owner);
}
