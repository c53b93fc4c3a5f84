//! QEMU 10 + qemu-storage-daemon's vhost-user-blk export through the owner's relay: the guest
//! reads a token from the disk and writes one; the backend maps the owner's file; the backend
//! is killed and restarted while the guest runs, and the guest's next I/O succeeds.

use std::time::Duration;

use pageless_tests::backends::{disk_image_with_token, image_sector_line, maps_inode, Backend};
use pageless_tests::env::{require_env, Need, QEMU, QEMU_STORAGE_DAEMON};
use pageless_tests::initramfs::Initramfs;
use pageless_tests::kernel::Kernel;
use pageless_tests::owner::Owner;
use pageless_tests::vm::{Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(60);

/// The guest: reads sector 0, then on `io N` writes a token at sector 8+N with fsync, drops
/// its caches and reads sector 0 again from the device.
const DISK_GUEST: &str = r#"
for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
echo "DISK-READ $(head -c 64 /dev/vda | head -n 1)"
io() {
    tok="GUEST-DISK-TOKEN-$1-$(rand_hex 8)"
    printf '%s\n' "$tok" | dd of=/dev/vda bs=512 seek=$((8 + $1)) conv=fsync 2>/dev/null || { echo "IO-FAILED $1"; return; }
    echo 3 > /proc/sys/vm/drop_caches
    echo "DISK-WROTE $1 $tok READ $(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n 1)"
}
io 0
echo GUEST-READY
while read -r cmd; do
    case "$cmd" in
        *io*) io "${cmd##* }" ;;
        *quit*) finish ;;
    esac
done
finish
"#;

#[test]
fn guest_disk_io_through_the_relay_survives_a_backend_restart() {
    if !require_env(
        "guest_disk_io_through_the_relay_survives_a_backend_restart",
        &[QEMU, Need::Kernel, Need::Busybox, QEMU_STORAGE_DAEMON],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let image = dir.path().join("disk.img");
    let host_token = disk_image_with_token(&image, 64 << 20);
    let qsd_socket = dir.path().join("qsd.sock");
    let mut qsd = Backend::storage_daemon(&image, &qsd_socket);

    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let pool = format!("dir:{}", shm.path().display());
    let relay_arg = format!("disk0={}", qsd_socket.display());
    let owner =
        Owner::start(&run_dir, "blk", &["--size", "512M", "--pool", &pool, "--vhost-user", &relay_arg]);

    let initrd = dir.path().join("initrd");
    Initramfs::new().kernel_modules(&Kernel::get(), &["virtio_blk"]).init(DISK_GUEST).build(&initrd).unwrap();
    let mut config = VmConfig::new("blk", initrd);
    config.through_pageless(&run_dir, Some("blk")).vhost_user(
        "disk0",
        &run_dir.join("blk/disk0.sock"),
        "vhost-user-blk-pci,num-queues=1",
        true,
    );
    let mut vm = Vm::start(&config);

    let read = vm.wait_for("DISK-READ", BOOT).expect("the guest boots and reads its disk");
    assert!(read.ends_with(&host_token), "the guest read {read:?}, not the host's token {host_token}");
    let wrote = vm.wait_for("DISK-WROTE 0", STEP).unwrap();
    let guest_token = wrote.split_whitespace().nth(2).unwrap().to_string();
    assert_eq!(image_sector_line(&image, 8), guest_token, "the guest's write is in the image");

    // The backend maps the owner's file, and is listed as a consumer of it.
    let status = owner.status();
    assert!(maps_inode(qsd.pid(), status.inode), "qemu-storage-daemon does not map the owner's file");
    let consumer = status.consumers.iter().find(|c| c.device == "disk0").expect("disk0 is a consumer");
    assert_eq!(consumer.backend_pid, Some(qsd.pid()));
    assert_eq!(consumer.frontend_pid, Some(vm.pid()));
    assert!(!consumer.regions.is_empty(), "the consumer's regions are tracked");
    assert!(consumer.regions.iter().all(|r| r.offset + r.size <= status.size));

    // Kill the backend while the guest runs; bring it back; the guest's next I/O succeeds.
    qsd.kill();
    std::thread::sleep(Duration::from_secs(1));
    let qsd = Backend::storage_daemon(&image, &qsd_socket);
    vm.send_line("io 1");
    let wrote = vm.wait_for("DISK-WROTE 1", STEP).expect("I/O after the backend's restart");
    assert!(wrote.ends_with(&host_token), "{wrote}");
    let guest_token = wrote.split_whitespace().nth(2).unwrap().to_string();
    assert_eq!(image_sector_line(&image, 9), guest_token);
    assert!(maps_inode(qsd.pid(), owner.status().inode), "the new backend maps the owner's file");
    assert!(owner.log_shows("backend side ended"), "the relay saw the backend go:\n{}", owner.log());
    assert!(owner.log_shows("cannot reach the backend"), "the relay logs why it closes:\n{}", owner.log());

    vm.send_line("quit");
    vm.wait_exit(STEP).unwrap();
}
