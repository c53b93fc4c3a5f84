//! A second vhost-user device type through the relay: rust-vmm's vhost-device-rng feeds the
//! guest's virtio-rng, mapping the owner's memory.

use std::time::Duration;

use pageless_tests::backends::{maps_inode, Backend};
use pageless_tests::env::{require_env, Need, QEMU};
use pageless_tests::initramfs::Initramfs;
use pageless_tests::kernel::Kernel;
use pageless_tests::owner::Owner;
use pageless_tests::vm::{Vm, VmConfig};

const RNG_GUEST: &str = r#"
for i in $(seq 100); do [ -c /dev/hwrng ] && grep -q virtio /sys/class/misc/hw_random/rng_current && break; sleep 0.1; done
echo "RNG-SOURCE $(cat /sys/class/misc/hw_random/rng_current)"
echo "RNG-BYTES $(head -c 32 /dev/hwrng | od -An -tx1 | tr -d ' \n')"
echo GUEST-READY
while read -r cmd; do case "$cmd" in *quit*) finish ;; esac; done
finish
"#;

#[test]
fn guest_entropy_from_vhost_device_rng_through_the_relay() {
    if !require_env(
        "guest_entropy_from_vhost_device_rng_through_the_relay",
        &[QEMU, Need::Kernel, Need::Busybox, Need::Tool("vhost-device-rng")],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let rng = Backend::rng(&dir.path().join("rng.sock"));
    let relay_arg = format!("rng0={}", rng.socket.display());
    let owner = Owner::start(&run_dir, "rng", &["--size", "512M", "--vhost-user", &relay_arg]);

    let initrd = dir.path().join("initrd");
    Initramfs::new().kernel_modules(&Kernel::get(), &["virtio_rng"]).init(RNG_GUEST).build(&initrd).unwrap();
    let mut config = VmConfig::new("rng", initrd);
    // vhost-user-base devices (rng) realize without waiting for an asynchronous reconnect-ms
    // connection in QEMU 10: connect synchronously.
    config.through_pageless(&run_dir, Some("rng")).vhost_user(
        "rng0",
        &run_dir.join("rng/rng0.sock"),
        "vhost-user-rng-pci",
        false,
    );
    let mut vm = Vm::start(&config);
    let source = vm.wait_for("RNG-SOURCE", Duration::from_secs(120)).expect("the guest boots");
    assert!(source.contains("virtio_rng"), "{source}");
    let bytes = vm.wait_for("RNG-BYTES", Duration::from_secs(60)).unwrap();
    let hex = bytes.split_whitespace().last().unwrap();
    assert_eq!(hex.len(), 64, "32 bytes from /dev/hwrng: {bytes}");
    assert_ne!(hex, "0".repeat(64));

    let status = owner.status();
    let consumer = status.consumers.iter().find(|c| c.device == "rng0").expect("rng0 is a consumer");
    assert_eq!(consumer.backend_pid, Some(rng.pid()));
    assert!(!consumer.regions.is_empty());
    assert!(maps_inode(rng.pid(), status.inode), "vhost-device-rng does not map the owner's memory");

    vm.send_line("quit");
    vm.wait_exit(Duration::from_secs(60)).unwrap();
}
