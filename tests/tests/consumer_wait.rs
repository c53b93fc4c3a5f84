//! A stopping owner waits, bounded by --consumer-timeout, for the memory's consumers (QEMU and
//! relayed device backends) to go before releasing the allocation.

use std::time::{Duration, Instant};

use pageless_tests::backends::{disk_image_with_token, Backend};
use pageless_tests::guests::token_guest;
use pageless_tests::owner::Owner;
use pageless_tests::vm::{Vm, VmConfig};

fn start_vm(run_dir: &std::path::Path, initrd: &std::path::Path, name: &str) -> Vm {
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

fn stop_and_time(owner: &mut Owner) -> Duration {
    let start = Instant::now();
    assert_eq!(owner.terminate().code(), Some(0), "{}", owner.log());
    start.elapsed()
}

#[test]
fn owner_waits_for_consumers_within_its_timeout() {
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
        "4",
        "--remove-on-exit",
    ];

    // Consumers that stay: the owner waits its whole timeout, says who, then releases anyway.
    let mut owner = Owner::start(&run_dir, "busy", &args);
    let mut vm = start_vm(&run_dir, &initrd, "busy");
    assert_eq!(owner.status().consumers.len(), 1);
    let waited = stop_and_time(&mut owner);
    assert!(waited >= Duration::from_secs(4), "stopped after {waited:?}, before its consumer timeout");
    let log = owner.log();
    assert!(log.contains("waiting up to 4s for the memory's consumers to go"), "{log}");
    assert!(
        log.contains("device disk0") && log.contains(&format!("pid {} still uses the memory", vm.pid())),
        "{log}"
    );
    assert!(log.contains("releasing it anyway"), "{log}");
    assert!(!shm.path().join("busy").exists(), "released after the timeout");
    assert!(vm.is_running(), "the guest keeps its memory");
    vm.kill();

    // Consumers that are gone: the owner stops at once.
    let mut owner = Owner::start(&run_dir, "idle", &args);
    let mut vm = start_vm(&run_dir, &initrd, "idle");
    vm.send_line("quit");
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    let waited = stop_and_time(&mut owner);
    assert!(waited < Duration::from_secs(3), "took {waited:?} with no consumers left");
    assert!(!owner.log().contains("releasing it anyway"), "{}", owner.log());
    assert!(!shm.path().join("idle").exists());
}
