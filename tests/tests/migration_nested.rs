//! Live migration on pagelessfs: an outer TCG guest with pageless.ko (memmap=768M$1G) plays
//! four hosts, each with its own owner, relay, qemu-storage-daemon and disk image, and migrates a
//! nested guest along pagelessfs → pagelessfs → memfd → pagelessfs while it keeps writing
//! tokens to RAM and disk. See tests/vm/migrate-outer.sh for what each check means.

use std::time::Duration;

use pageless_tests::env::{require_env, Need, QEMU, QEMU_STORAGE_DAEMON};
use pageless_tests::initramfs::Initramfs;
use pageless_tests::kernel::Kernel;
use pageless_tests::nested::{add_qemu, inner_initramfs};
use pageless_tests::vm::{Vm, VmConfig};
use pageless_tests::{bins, checks, kmod, repo_root};

const LEGS: &[&str] = &["pl-to-pl", "pl-to-memfd", "memfd-to-pl"];
const LEG_CHECKS: &[&str] = &[
    "migrates",
    "destination-runs",
    "guest-ticks-on",
    "ram-moved",
    "new-ram-in-destination",
    "new-ram-not-in-source",
    "disk-write-in-destination",
    "disk-write-not-in-source",
    "destination-backend-maps-owner-file",
    "source-relay-forwarded-dirty-log",
    "source-owner-waits-for-qemu",
    "source-owner-stops-after-qemu",
];

#[test]
fn live_migration_between_pagelessfs_owners_in_a_guest() {
    if !require_env(
        "live_migration_between_pagelessfs_owners_in_a_guest",
        &[QEMU, Need::Kernel, Need::Busybox, QEMU_STORAGE_DAEMON, Need::Program("make")],
    ) {
        return;
    }
    let kernel = Kernel::get();
    let dir = tempfile::tempdir().unwrap();
    let inner_initrd = dir.path().join("inner-initrd");
    let inner_script = std::fs::read_to_string(repo_root().join("tests/vm/migrate-inner.sh")).unwrap();
    inner_initramfs(&inner_initrd, &["virtio_blk"], &inner_script);
    let outer_script = std::fs::read_to_string(repo_root().join("tests/vm/migrate-outer.sh")).unwrap();
    let mut outer = Initramfs::new();
    outer
        .file(&kmod::build(&kernel), "/pageless.ko")
        .file(&repo_root().join("tests/vm/nested.sh"), "/nested.sh")
        .file(&kernel.vmlinuz(), "/inner/vmlinuz")
        .file(&inner_initrd, "/inner/initrd")
        .binary(&bins::pageless(), "/usr/bin/pageless");
    add_qemu(&mut outer);
    let outer_initrd = dir.path().join("outer-initrd");
    outer.init(&outer_script).build(&outer_initrd).unwrap();

    let mut config = VmConfig::new("migration-outer", outer_initrd);
    config.memory = "2G".into();
    config.smp = 2;
    config.append = "memmap=768M$1G".into();
    let mut vm = Vm::boot(&config);
    vm.wait_for("CHECKS-DONE", Duration::from_secs(1200)).expect("the outer guest's checks finish");
    let _ = vm.wait_exit(Duration::from_secs(60));
    let mut expected = vec!["load".to_string(), "mount-2m".into(), "pool-dirs".into(), "inner-boots".into()];
    for leg in LEGS {
        expected.extend(LEG_CHECKS.iter().map(|check| format!("{leg}-{check}")));
    }
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    checks::assert_all_ok(&vm.console(), &expected);
}
