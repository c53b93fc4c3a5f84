//! Live migration between two owners on this host, each with its own run directory, its own
//! relayed vhost-user disk (qemu-storage-daemon on its own image) and its own memory: a guest
//! booted on a directory pool migrates to a memfd owner, then on to another memfd owner. The
//! guest keeps counting (with disk I/O through the relay, during the migration too); RAM
//! written before a migration is in the destination owner's memory; a token the guest writes
//! after a migration lands in the destination's memory and image, not in the source's. The
//! source's relay forwarded QEMU's dirty log (SET_LOG_BASE, vetted); the source owners stop
//! once their QEMU has gone.

use std::time::Duration;

use pageless_tests::backends::{disk_image_with_token, image_sector_line};
use pageless_tests::env::{require_env, Need, QEMU, QEMU_STORAGE_DAEMON};
use pageless_tests::migration::{guest_initramfs, migrate, Side};
use pageless_tests::vm::Vm;

const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(60);
const MEMORY: &str = "256M";

/// Asks the guest for token `n`; checks where it landed; returns it.
fn new_token(vm: &mut Vm, n: usize, here: &Side, not_in: &[&Side]) -> String {
    vm.send_line("token");
    let line = vm.wait_for(&format!("GUEST-TOKEN {n} "), STEP).expect("the guest writes a token");
    let token = line.split_whitespace().last().unwrap().to_string();
    assert_eq!(image_sector_line(&here.image, 8 + n), token, "token {n} is in {}'s image", here.name);
    assert!(!here.owner.find(&token).is_empty(), "token {n} is in {}'s memory", here.name);
    for other in not_in {
        assert_ne!(
            image_sector_line(&other.image, 8 + n),
            token,
            "token {n} is not in {}'s image",
            other.name
        );
        assert!(other.owner.find(&token).is_empty(), "token {n} is not in {}'s memory", other.name);
    }
    token
}

/// The guest counts on after the migration: a `COUNT` line on the new console that read back
/// what it wrote through the new relay.
fn assert_counting(vm: &mut Vm) {
    let line = vm.wait_for_nth("COUNT ", 2, STEP).expect("the guest keeps counting after the migration");
    let count = line.split_whitespace().nth(1).unwrap().to_string();
    assert!(line.ends_with(&format!("READ COUNTED {count}")), "the guest reads back what it wrote: {line}");
    assert!(!vm.console().contains("IO-FAILED"), "guest I/O failed:\n{}", vm.console());
}

/// The source's relay forwarded QEMU's dirty log to the backend during the migration.
fn assert_dirty_log_forwarded(from: &Side) {
    assert!(
        from.owner.log_shows("forwarding SET_LOG_BASE"),
        "the source's relay forwarded QEMU's dirty log to the backend:\n{}",
        from.owner.log()
    );
}

#[test]
fn live_migration_between_owners_with_relayed_disks() {
    if !require_env(
        "live_migration_between_owners_with_relayed_disks",
        &[QEMU, Need::Kernel, Need::Busybox, QEMU_STORAGE_DAEMON],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    let host_token = disk_image_with_token(&image, 64 << 20);
    let initrd = dir.path().join("initrd");
    guest_initramfs(&initrd);

    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let a = Side::new(dir.path(), "a-dir", &format!("dir:{}", shm.path().display()), MEMORY, &image);
    let mut vm = Vm::boot(&a.config(&initrd, None));
    let first = vm.wait_for("GUEST-TOKEN 1 ", BOOT).expect("the guest boots");
    let first = first.split_whitespace().last().unwrap().to_string();
    vm.wait_for("COUNT 2 ", STEP).expect("the guest counts");
    assert!(!a.owner.find(&first).is_empty(), "the first token is in a's memory");
    assert_eq!(image_sector_line(&a.image, 9), first);
    assert_eq!(image_sector_line(&a.image, 0), host_token);
    a.assert_serves(&vm);

    // Directory pool → memfd.
    let b = Side::new(dir.path(), "b-memfd", "memfd", MEMORY, &a.image);
    let (mut vm, _) = migrate(&mut vm, &a, &b, &initrd);
    assert_dirty_log_forwarded(&a);
    assert_counting(&mut vm);
    b.assert_serves(&vm);
    assert!(!b.owner.find(&first).is_empty(), "RAM written before the migration is in b's memory");
    new_token(&mut vm, 2, &b, &[&a]);

    // memfd → memfd.
    let c = Side::new(dir.path(), "c-memfd", "memfd", MEMORY, &b.image);
    let (mut vm, _) = migrate(&mut vm, &b, &c, &initrd);
    assert_dirty_log_forwarded(&b);
    assert_counting(&mut vm);
    c.assert_serves(&vm);
    assert!(!c.owner.find(&first).is_empty(), "RAM written before the migrations is in c's memory");
    new_token(&mut vm, 3, &c, &[&a, &b]);

    // The sources' owners stop: nothing holds their memory once their QEMU has gone.
    for mut side in [a, b] {
        assert!(
            side.owner.terminate().success(),
            "{}'s owner stops cleanly:\n{}",
            side.name,
            side.owner.log()
        );
    }
    vm.send_line("quit");
    vm.wait_exit(STEP).unwrap();
}
