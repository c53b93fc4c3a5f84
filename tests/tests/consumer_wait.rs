//! A stopping owner never releases the VM's memory while a process it handed the memory to
//! still holds it, whatever --consumer-timeout says: past the timeout it says who in its log
//! (rate-limited) and in STATUS, refuses GET_MEMORY and WRITE, ignores further stop requests,
//! and finishes (removing the file with --remove-on-exit) once the holders are gone.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pageless_protocol::control::{ControlError, StoppingStatus};
use pageless_tests::backends::{disk_image_with_token, Backend};
use pageless_tests::bins;
use pageless_tests::env::{require_env, Need, QEMU};
use pageless_tests::guests::token_guest;
use pageless_tests::owner::Owner;
use pageless_tests::vm::{Vm, VmConfig};

/// `pageless-testbed hold-memory`: a separate process that maps the owner's memory until its
/// stdin closes.
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Holder {
    fn start(socket: &Path) -> Holder {
        let mut child = Command::new(bins::build("pageless-tests", "pageless-testbed"))
            .arg("hold-memory")
            .arg(socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start pageless-testbed hold-memory");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("HOLDING "), "the holder did not get the memory: {line:?}");
        let stdin = child.stdin.take();
        Holder { child, stdin }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes its stdin: it unmaps the memory and exits.
    fn release(mut self) {
        drop(self.stdin.take());
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The owner's STATUS while it stops.
fn stopping(owner: &Owner) -> StoppingStatus {
    let status = owner.status();
    status.stopping.clone().unwrap_or_else(|| panic!("STATUS does not say the owner is stopping: {status:?}"))
}

fn refused_as_stopping<T: std::fmt::Debug>(what: &str, result: Result<T, ControlError>) {
    match result {
        Err(ControlError::Refused(why)) if why.contains("the owner is stopping") => {}
        other => panic!("{what} while stopping should be refused as stopping, got {other:?}"),
    }
}

#[test]
fn a_holder_alive_past_the_timeout_keeps_the_memory() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let pool = format!("dir:{}", shm.path().display());
    let file = shm.path().join("held");
    let mut owner = Owner::start(
        &run_dir,
        "held",
        &["--size", "16M", "--pool", &pool, "--consumer-timeout", "1", "--remove-on-exit"],
    );
    let holder = Holder::start(&owner.socket());

    owner.signal(Signal::SIGTERM);
    assert!(
        owner.wait_exit(Duration::from_secs(3)).is_none(),
        "the owner stopped while its holder maps the memory:\n{}",
        owner.log()
    );
    assert!(file.exists(), "the memory file was removed under its holder");
    let state = stopping(&owner);
    assert_eq!(state.reason, "signal SIGTERM");
    assert_eq!(state.consumer_timeout, 1);
    assert!(state.past_timeout, "{state:?}");
    let held = state
        .waiting_for
        .iter()
        .find(|h| h.pid == Some(holder.pid()))
        .unwrap_or_else(|| panic!("STATUS does not name the holder {}: {state:?}", holder.pid()));
    assert!(held.what.contains("maps the memory"), "{held:?}");

    // Nothing more is handed out.
    let client = owner.connect().unwrap();
    refused_as_stopping("GET_MEMORY", client.get_memory());
    refused_as_stopping("WRITE", client.write(0, b"late"));

    // The human status says so too.
    let out = Command::new(bins::pageless())
        .args(["status", "--vm", "held", "--run-dir"])
        .arg(&run_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("STOPPING since") && text.contains("(signal SIGTERM)"), "{text}");
    assert!(text.contains("past its --consumer-timeout of 1 s"), "{text}");
    assert!(text.contains(&format!("waiting for pid {}: ", holder.pid())), "{text}");

    // Asking again does not make it release the memory.
    owner.signal(Signal::SIGTERM);
    client.stop().unwrap();
    assert!(owner.wait_exit(Duration::from_secs(2)).is_none(), "stopped early:\n{}", owner.log());
    assert!(file.exists());
    let log = owner.log();
    assert!(log.contains("signal SIGTERM while stopping: still waiting for"), "{log}");
    assert!(log.contains("STOP request while stopping: still waiting for"), "{log}");
    assert_eq!(
        log.matches("memory is still held after").count(),
        1,
        "past the timeout the owner says once (then every minute) who holds the memory:\n{log}"
    );
    // comm is cut to 15 bytes.
    assert!(log.contains(&format!("pid {} (pageless-testbe: maps the memory", holder.pid())), "{log}");
    drop(client);

    // The holder goes: the owner finishes at once.
    let released = Instant::now();
    holder.release();
    let status = owner.wait_exit(Duration::from_secs(10)).expect("the owner exits once its holder is gone");
    assert!(status.success(), "{status}:\n{}", owner.log());
    assert!(released.elapsed() < Duration::from_secs(5), "took {:?}", released.elapsed());
    assert!(!file.exists(), "--remove-on-exit removes the file once nothing holds it");
    assert!(!owner.socket().exists());
}

fn start_vm(run_dir: &Path, initrd: &Path, name: &str) -> Vm {
    let mut config = VmConfig::new(name, initrd.into());
    // vhost-user-blk: QEMU survives losing its backend connection when the owner goes (QEMU 10
    // aborts for vhost-user-base devices such as vhost-user-rng, with or without pageless).
    config.through_pageless(run_dir, Some(name)).vhost_user(
        "disk0",
        &run_dir.join(name).join("disk0.sock"),
        "vhost-user-blk-pci",
        true,
    );
    let mut vm = Vm::start(&config);
    vm.wait_for("GUEST-READY", Duration::from_secs(120)).expect("the guest boots");
    vm
}

#[test]
fn owner_keeps_the_memory_while_qemu_runs() {
    if !require_env("owner_keeps_the_memory_while_qemu_runs", &[QEMU, Need::Kernel, Need::Busybox]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let initrd = dir.path().join("initrd");
    token_guest(&initrd);
    let image = dir.path().join("disk.img");
    disk_image_with_token(&image, 16 << 20);
    let qsd = Backend::storage_daemon(&image, &dir.path().join("qsd.sock"));
    let relay = format!("disk0={}", qsd.socket.display());
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let pool = format!("dir:{}", shm.path().display());
    let args = [
        "--size",
        "512M",
        "--pool",
        &pool,
        "--vhost-user",
        &relay,
        "--consumer-timeout",
        "2",
        "--remove-on-exit",
    ];

    // QEMU and the relayed backend stay: past its timeout the owner still keeps the memory.
    let mut owner = Owner::start(&run_dir, "busy", &args);
    let mut vm = start_vm(&run_dir, &initrd, "busy");
    assert_eq!(owner.status().consumers.len(), 1);
    owner.signal(Signal::SIGTERM);
    assert!(owner.wait_exit(Duration::from_secs(4)).is_none(), "stopped under QEMU:\n{}", owner.log());
    assert!(shm.path().join("busy").exists(), "the memory file stays while QEMU runs");
    let state = stopping(&owner);
    assert!(state.past_timeout, "{state:?}");
    let qemu = state.waiting_for.iter().find(|h| h.pid == Some(vm.pid()));
    assert!(qemu.is_some_and(|h| h.what.contains("maps the memory")), "QEMU is not named: {state:?}");
    assert!(state.waiting_for.iter().any(|h| h.what.contains("backend of device disk0")), "{state:?}");
    assert!(vm.is_running(), "the guest keeps its memory");

    // QEMU goes (the backend unmaps the memory when its connection ends): the owner finishes.
    vm.kill();
    let status = owner.wait_exit(Duration::from_secs(15)).expect("the owner exits once QEMU is gone");
    assert!(status.success(), "{status}:\n{}", owner.log());
    assert!(!shm.path().join("busy").exists(), "released once QEMU is gone");

    // Consumers that are gone: the owner stops at once.
    let mut owner = Owner::start(&run_dir, "idle", &args);
    let mut vm = start_vm(&run_dir, &initrd, "idle");
    vm.send_line("quit");
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    let start = Instant::now();
    assert_eq!(owner.terminate().code(), Some(0), "{}", owner.log());
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?} with no consumers left", start.elapsed());
    assert!(!owner.log().contains("memory is still held after"), "{}", owner.log());
    assert!(!shm.path().join("idle").exists());
}
