//! `pageless serve` killed with SIGKILL while QEMU runs: the guest keeps running, and a
//! restarted owner re-attaches to the same directory-pool allocation and serves it again.

use std::time::Duration;

use pageless_tests::env::{require_env, Need, QEMU};
use pageless_tests::guests::{token_guest, token_of};
use pageless_tests::owner::Owner;
use pageless_tests::vm::{Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(30);

#[test]
fn guest_survives_owner_sigkill_and_restarted_owner_reattaches() {
    if !require_env(
        "guest_survives_owner_sigkill_and_restarted_owner_reattaches",
        &[QEMU, Need::Kernel, Need::Busybox],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let pool = format!("dir:{}", shm.path().display());
    let args = ["--size", "512M", "--pool", pool.as_str()];
    let mut owner = Owner::start(&run_dir, "restart", &args);
    let first = owner.status();
    assert!(!first.reattached);
    assert_eq!(first.path.as_deref(), Some(shm.path().join("restart").to_str().unwrap()));

    let initrd = dir.path().join("initrd");
    token_guest(&initrd);
    let mut config = VmConfig::new("restart", initrd);
    config.through_pageless(&run_dir, None);
    config.extra = vec!["-name".into(), "guest=restart".into()];
    let mut vm = Vm::start(&config);
    let token = token_of(&vm.wait_for("GUEST-TOKEN", BOOT).expect("the guest boots"));
    vm.wait_for("GUEST-READY", STEP).unwrap();
    assert!(!owner.find(&token).is_empty());

    owner.kill();
    vm.send_line("tick");
    vm.wait_for("TICK 1", STEP).expect("the guest keeps running without its owner");
    assert!(vm.is_running());

    let again = Owner::start(&run_dir, "restart", &args);
    let second = again.status();
    assert!(second.reattached, "the new owner re-attaches");
    assert_eq!((second.dev, second.inode), (first.dev, first.inode), "same file");
    assert!(!again.find(&token).is_empty(), "the new owner sees what the guest wrote before");

    vm.send_line("token");
    let token2 = token_of(&vm.wait_for_nth("GUEST-TOKEN", 2, STEP).unwrap());
    assert!(!again.find(&token2).is_empty(), "the new owner sees what the guest writes now");

    vm.send_line("quit");
    vm.wait_exit(STEP).unwrap();
}
