//! sVirt with AppArmor, for real: a TCG guest boots a Debian 12 root filesystem with libvirt 11,
//! QEMU 10 and AppArmor enforcing (scripts/svirt-rootfs.sh builds it, cached), installs
//! pageless, its libvirt hook and wrapper, and starts two pageless domains under libvirt's
//! AppArmor driver (tests/vm/svirt-apparmor.sh): each QEMU runs confined by its own profile,
//! which the hook extended with that VM's own owner socket, relay sockets and memory file; a
//! process under one VM's profile cannot open the other's memory file (EACCES) and is refused by
//! the other's owner on its control and relay sockets (the owner checks the peer's profile:
//! Debian's AppArmor does not mediate connecting to a Unix socket by path), and `virsh destroy`
//! leaves no profile loaded.

use pageless_tests::checks;
use pageless_tests::env::{require_env, Need, QEMU};
use pageless_tests::repo_root;
use pageless_tests::svirt::{SvirtGuest, ROOTFS};

const REQUIRED: &[&str] = &[
    "apparmor-enabled",
    "apparmor-load-libvirt-profiles",
    "libvirtd-answers",
    "libvirtd-confined",
    "libvirt-security-driver",
    "web1-starts",
    "web2-starts",
    "web1-qemu-confined",
    "web2-qemu-confined",
    "web1-profile-has-pageless-rules",
    "web2-profile-has-pageless-rules",
    "web1-guest-runs",
    "web2-guest-runs",
    "web1-token-in-owner-memory",
    "web2-token-in-owner-memory",
    "web1-disk-through-relay",
    "web2-cannot-reach-web1-label",
    "web2-cannot-reach-web1",
    "web1-cannot-reach-web2-label",
    "web1-cannot-reach-web2",
    "web1-reaches-its-own-label",
    "web1-reaches-its-own",
    "web2-reaches-its-own-label",
    "web2-reaches-its-own",
    "web1-owner-logs-refusals",
    "web1-still-runs",
    "web2-still-runs",
    "web1-profile-gone-after-destroy",
    "web2-profile-gone-after-destroy",
    "web1-memory-file-removed",
];

#[test]
fn apparmor_confines_each_pageless_domain_to_its_own_memory() {
    if !require_env(
        "apparmor_confines_each_pageless_domain_to_its_own_memory",
        &[QEMU, Need::Kernel, Need::Busybox, Need::Cached(ROOTFS)],
    ) {
        return;
    }
    let console = SvirtGuest {
        name: "svirt-apparmor",
        script: "svirt-apparmor.sh",
        append: "apparmor=1 security=apparmor".into(),
        files: vec![(
            repo_root().join("contrib/apparmor/local/usr.sbin.libvirtd"),
            "/pl/apparmor-local-usr.sbin.libvirtd",
        )],
    }
    .run();
    checks::assert_all_ok(&console, REQUIRED);
}
