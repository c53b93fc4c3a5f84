//! sVirt with SELinux, for real: a TCG guest boots the Debian 12 root filesystem of the AppArmor
//! test (scripts/svirt-rootfs.sh: libvirt 11, QEMU 10, Debian's reference policy with the virt
//! module and MCS, labelled at build) with `security=selinux`; PID 1 loads the policy, goes
//! enforcing and runs libvirtd in `virtd_t` with libvirt's SELinux driver
//! (tests/vm/svirt-selinux.sh). Two pageless domains start, each QEMU in `svirt_t` with its own
//! MCS category pair; the hook gave each VM's owner socket, relay sockets and memory file the
//! domain's image label; both guests work. A process running as one VM's QEMU cannot connect
//! to the other's sockets or open its memory file (EACCES, AVC denials), nor keep the other's
//! memory (memfd or file) handed to it across its exec into the domain; it can its own, and
//! `virsh destroy` takes the owners and their labelled files away.

use pageless_tests::checks;
use pageless_tests::env::{require_env, Need, QEMU};
use pageless_tests::repo_root;
use pageless_tests::svirt::{SvirtGuest, ROOTFS};

const REQUIRED: &[&str] = &[
    "selinux-lsm",
    "selinux-load-policy",
    "selinux-enforcing",
    "selinux-module",
    "libvirtd-answers",
    "libvirtd-confined",
    "libvirt-security-driver",
    "web1-starts",
    "web2-starts",
    "web1-qemu-confined",
    "web2-qemu-confined",
    "web1-files-labelled",
    "web2-files-labelled",
    "web1-guest-runs",
    "web2-guest-runs",
    "web1-token-in-owner-memory",
    "web2-token-in-owner-memory",
    "web1-disk-through-relay",
    "web2-cannot-reach-web1-control",
    "web2-cannot-reach-web1-relay",
    "web2-cannot-reach-web1-memory",
    "web1-cannot-reach-web2-control",
    "web1-cannot-use-web2-memfd",
    "web2-cannot-use-web1-memory-fd",
    "web1-denials-logged",
    "web2-memfd-denial-logged",
    "web1-reaches-its-own-control",
    "web1-reaches-its-own-memory",
    "web2-reaches-its-own-control",
    "web2-uses-its-own-memfd",
    "web1-uses-its-own-memory-fd",
    "web1-still-runs",
    "web2-still-runs",
    "web1-labelled-files-gone-after-destroy",
    "web2-labelled-files-gone-after-destroy",
];

#[test]
fn selinux_confines_each_pageless_domain_to_its_own_memory() {
    if !require_env(
        "selinux_confines_each_pageless_domain_to_its_own_memory",
        &[QEMU, Need::Kernel, Need::Busybox, Need::Cached(ROOTFS)],
    ) {
        return;
    }
    let selinux = repo_root().join("contrib/selinux");
    let console = SvirtGuest {
        name: "svirt-selinux",
        script: "svirt-selinux.sh",
        append: "security=selinux".into(),
        files: vec![
            (selinux.join("pageless.te"), "/pl/pageless.te"),
            (selinux.join("pageless.fc"), "/pl/pageless.fc"),
        ],
    }
    .run();
    checks::assert_all_ok(&console, REQUIRED);
}
