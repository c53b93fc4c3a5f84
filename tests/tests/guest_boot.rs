//! A real QEMU guest boots with its RAM from `pageless serve`; what the guest writes is found
//! through the owner's own mapping and through a client's.

use std::fs::File;
use std::time::Duration;

use pageless_pool::Mapping;
use pageless_tests::checks;
use pageless_tests::env::{require_env, Need, QEMU};
use pageless_tests::guests::{token_guest, token_of};
use pageless_tests::owner::Owner;
use pageless_tests::vm::{Vm, VmConfig};

#[test]
fn guest_ram_is_the_owners_memfd() {
    if !require_env("guest_ram_is_the_owners_memfd", &[QEMU, Need::Kernel, Need::Busybox]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let owner = Owner::start(&run_dir, "guest1", &["--size", "512M", "--pool", "memfd"]);
    let initrd = dir.path().join("initrd");
    token_guest(&initrd);

    let mut config = VmConfig::new("guest1", initrd);
    config.through_pageless(&run_dir, Some("guest1"));
    let mut vm = Vm::start(&config);
    let token = token_of(&vm.wait_for("GUEST-TOKEN", Duration::from_secs(120)).expect("the guest boots"));
    vm.wait_for("GUEST-READY", Duration::from_secs(30)).unwrap();

    // The owner finds the guest's token in its own mapping of the allocation.
    let offsets = owner.find(&token);
    assert!(!offsets.is_empty(), "the owner does not see the guest's token {token}");

    // So does a client that maps the fd the owner hands out.
    let region = owner.connect().unwrap().get_memory().unwrap().pop().unwrap();
    let mapping = Mapping::new(&File::from(region.fd), region.region.memory_size).unwrap();
    assert_eq!(mapping.find(token.as_bytes(), 100).unwrap(), offsets);

    // QEMU (same pid as the wrapper, which exec'd it) maps the owner's memfd and is a client.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", vm.pid())).unwrap();
    assert!(maps.contains("/memfd:pageless:guest1"), "QEMU does not map the owner's memfd:\n{maps}");
    let status = owner.status();
    let qemu = status.clients.iter().find(|c| c.role == "qemu").expect("QEMU is listed as a client");
    assert_eq!(qemu.pid, vm.pid());
    assert!(qemu.has_memory);

    vm.send_line("quit");
    vm.wait_for("CHECKS-DONE", Duration::from_secs(30)).unwrap();
    vm.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(checks::parse(&vm.console()).iter().all(|c| c.ok));
    // QEMU's connection is gone with it.
    std::thread::sleep(Duration::from_millis(300));
    assert!(owner.status().clients.iter().all(|c| c.role != "qemu"));
}
