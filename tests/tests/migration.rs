//! Live migration between two owners on this host, each with its own run directory, its own
//! relayed vhost-user disk (qemu-storage-daemon on its own image) and its own memory: a guest
//! booted on a directory pool migrates to a memfd owner, then on to another memfd owner. The
//! guest keeps counting (with disk I/O through the relay, during the migration too); RAM
//! written before a migration is in the destination owner's memory; a token the guest writes
//! after a migration lands in the destination's memory and image, not in the source's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pageless_tests::backends::{disk_image_with_token, image_sector_line, maps_inode, Backend};
use pageless_tests::env::{require_env, Need, QEMU, QEMU_STORAGE_DAEMON};
use pageless_tests::initramfs::Initramfs;
use pageless_tests::kernel::Kernel;
use pageless_tests::owner::Owner;
use pageless_tests::qmp::{free_port, Qmp};
use pageless_tests::vm::{Vm, VmConfig};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(60);
const MIGRATION: Duration = Duration::from_secs(180);
const VM: &str = "mig";

/// The guest: a counter that writes each value to sector 100 of its vhost-user disk (fsync),
/// reads it back from the device and prints `COUNT <n> READ <line>` twice a second; on
/// `token` a fresh random token goes into RAM (tmpfs) and to sector 8+N (`GUEST-TOKEN N tok`).
const GUEST: &str = r#"
for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
(
    c=0
    while true; do
        c=$((c + 1))
        printf 'COUNTED %s\n' "$c" | dd of=/dev/vda bs=512 seek=100 conv=fsync 2>/dev/null || echo "IO-FAILED count $c"
        echo 3 > /proc/sys/vm/drop_caches
        echo "COUNT $c READ $(dd if=/dev/vda bs=512 skip=100 count=1 2>/dev/null | head -n 1)"
        sleep 0.5
    done
) &
n=0
token() {
    n=$((n + 1))
    tok="PAGELESS-TOKEN-$(rand_hex 12)"
    echo "$tok" > /run/token-$n
    printf '%s\n' "$tok" | dd of=/dev/vda bs=512 seek=$((8 + n)) conv=fsync 2>/dev/null || { echo "IO-FAILED token $n"; return; }
    echo "GUEST-TOKEN $n $tok"
}
token
echo GUEST-READY
while read -r cmd; do
    case "$cmd" in
        *token*) token ;;
        *quit*) finish ;;
    esac
done
finish
"#;

/// One host of the migration: its run directory, owner, disk image and backend.
struct Side {
    name: String,
    run_dir: PathBuf,
    image: PathBuf,
    qmp: PathBuf,
    owner: Owner,
    qsd: Backend,
}

impl Side {
    /// A side whose disk image starts as a copy of `image` and whose owner serves from `pool`.
    fn new(root: &Path, name: &str, pool: &str, image: &Path) -> Side {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let own_image = dir.join("disk.img");
        std::fs::copy(image, &own_image).unwrap();
        let qsd_socket = dir.join("qsd.sock");
        let qsd = Backend::storage_daemon(&own_image, &qsd_socket);
        let run_dir = dir.join("run");
        let relay = format!("disk0={}", qsd_socket.display());
        let owner = Owner::start(&run_dir, VM, &["--size", "256M", "--pool", pool, "--vhost-user", &relay]);
        Side { name: name.into(), run_dir, image: own_image, qmp: dir.join("qmp.sock"), owner, qsd }
    }

    fn config(&self, initrd: &Path, incoming: Option<u16>) -> VmConfig {
        let mut config = VmConfig::new(&format!("migration-{}", self.name), initrd.to_path_buf());
        config.memory = "256M".into();
        config.through_pageless(&self.run_dir, Some(VM)).vhost_user(
            "disk0",
            &self.run_dir.join(VM).join("disk0.sock"),
            "vhost-user-blk-pci,num-queues=1",
            true,
        );
        config.extra.extend(["-qmp".into(), format!("unix:{},server=on,wait=off", self.qmp.display())]);
        if let Some(port) = incoming {
            config.extra.extend(["-incoming".into(), format!("tcp:127.0.0.1:{port}")]);
        }
        config
    }

    /// The guest's QEMU is this side's relayed consumer and its backend maps this owner's file.
    fn assert_serves(&self, vm: &Vm) {
        let status = self.owner.status();
        let consumer = status.consumers.iter().find(|c| c.device == "disk0").expect("disk0 is a consumer");
        assert_eq!(
            consumer.frontend_pid,
            Some(vm.pid()),
            "{}: the relay's frontend is the guest's QEMU",
            self.name
        );
        assert!(maps_inode(self.qsd.pid(), status.inode), "{}: the backend maps the owner's file", self.name);
    }
}

/// Migrates the guest `vm` running on `from` to a new QEMU on `to`; returns the new guest once
/// the old QEMU has quit.
fn migrate(vm: &mut Vm, from: &Side, to: &Side, initrd: &Path) -> Vm {
    let port = free_port();
    let target = Vm::start(&to.config(initrd, Some(port)));
    let mut to_qmp = Qmp::connect(&to.qmp, STEP).expect("the destination QEMU answers QMP");
    let mut from_qmp = Qmp::connect(&from.qmp, STEP).expect("the source QEMU answers QMP");
    let started = std::time::Instant::now();
    from_qmp
        .execute("migrate", json!({ "uri": format!("tcp:127.0.0.1:{port}") }))
        .expect("start the migration");
    let info = from_qmp.wait_migration(MIGRATION).unwrap_or_else(|e| {
        panic!("{} → {}: {e}\nsource owner log:\n{}", from.name, to.name, from.owner.log())
    });
    eprintln!("migration {} → {}: {:?}, {info}", from.name, to.name, started.elapsed());
    assert!(
        from.owner.log_shows("forwarding SET_LOG_BASE"),
        "the source's relay forwarded QEMU's dirty log to the backend:\n{}",
        from.owner.log()
    );
    let status = to_qmp.execute("query-status", json!({})).unwrap();
    assert_eq!(status["status"], "running", "the destination runs the guest after the migration: {status}");
    from_qmp.execute("quit", json!({})).expect("quit the source QEMU");
    vm.wait_exit(STEP).expect("the source QEMU exits");
    target
}

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
    let mut words = line.split_whitespace();
    let count = words.nth(1).unwrap().to_string();
    assert!(line.ends_with(&format!("READ COUNTED {count}")), "the guest reads back what it wrote: {line}");
    assert!(!vm.console().contains("IO-FAILED"), "guest I/O failed:\n{}", vm.console());
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
    Initramfs::new().kernel_modules(&Kernel::get(), &["virtio_blk"]).init(GUEST).build(&initrd).unwrap();

    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let a = Side::new(dir.path(), "a-dir", &format!("dir:{}", shm.path().display()), &image);
    let mut vm = Vm::boot(&a.config(&initrd, None));
    let first = vm.wait_for("GUEST-TOKEN 1 ", BOOT).expect("the guest boots");
    let first = first.split_whitespace().last().unwrap().to_string();
    vm.wait_for("COUNT 2 ", STEP).expect("the guest counts");
    assert!(!a.owner.find(&first).is_empty(), "the first token is in a's memory");
    assert_eq!(image_sector_line(&a.image, 9), first);
    assert_eq!(image_sector_line(&a.image, 0), host_token);
    a.assert_serves(&vm);

    // Directory pool → memfd.
    let b = Side::new(dir.path(), "b-memfd", "memfd", &a.image);
    let mut vm = migrate(&mut vm, &a, &b, &initrd);
    assert_counting(&mut vm);
    b.assert_serves(&vm);
    assert!(!b.owner.find(&first).is_empty(), "RAM written before the migration is in b's memory");
    new_token(&mut vm, 2, &b, &[&a]);

    // memfd → memfd.
    let c = Side::new(dir.path(), "c-memfd", "memfd", &b.image);
    let mut vm = migrate(&mut vm, &b, &c, &initrd);
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
