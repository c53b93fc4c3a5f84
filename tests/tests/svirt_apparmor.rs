//! sVirt with AppArmor, for real: a TCG guest boots a Debian 12 root filesystem with libvirt 11,
//! QEMU 10 and AppArmor enforcing (scripts/svirt-rootfs.sh builds it, cached), installs
//! pageless, its libvirt hook and wrapper, and starts two pageless domains under libvirt's
//! AppArmor driver (tests/vm/svirt-apparmor.sh): each QEMU runs confined by its own profile,
//! which the hook extended with that VM's own owner socket, relay sockets and memory file; a
//! process under one VM's profile cannot open the other's memory file (EACCES) and is refused by
//! the other's owner on its control and relay sockets (the owner checks the peer's profile:
//! Debian's AppArmor does not mediate connecting to a Unix socket by path), and `virsh destroy`
//! leaves no profile loaded.

use std::path::Path;
use std::time::Duration;

use pageless_tests::env::{require_env, Need, QEMU};
use pageless_tests::guests::DISK_AND_TOKEN_GUEST;
use pageless_tests::initramfs::Initramfs;
use pageless_tests::kernel::Kernel;
use pageless_tests::nested::inner_initramfs;
use pageless_tests::vm::{Vm, VmConfig};
use pageless_tests::{bins, checks, repo_root};

/// The root filesystem image scripts/svirt-rootfs.sh builds, under .cache.
const ROOTFS: &str = "rootfs/bookworm-svirt.img";

/// The outer guest's /init (busybox): mount the Debian root filesystem, bring /pl along, and
/// hand over to tests/vm/svirt-apparmor.sh as PID 1.
const SWITCH_ROOT: &str = r#"
echo '# init: Debian root'
mkdir -p /newroot
if ! mount -t ext4 /dev/vda /newroot; then fail svirt-root "cannot mount /dev/vda"; finish; fi
mkdir -p /newroot/pl && mount -t tmpfs -o mode=755 tmpfs /newroot/pl && cp -a /pl/. /newroot/pl/
for m in /sys/kernel/debug /dev/pts /dev/shm /dev /tmp /run /sys /proc; do umount "$m" 2>/dev/null; done
exec switch_root /newroot /pl/svirt-apparmor.sh
"#;

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
    let rootfs = repo_root().join(".cache").join(ROOTFS);
    if !require_env(
        "apparmor_confines_each_pageless_domain_to_its_own_memory",
        &[QEMU, Need::Kernel, Need::Busybox, Need::Cached(ROOTFS)],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let inner_initrd = dir.path().join("inner-initrd");
    inner_initramfs(&inner_initrd, &["virtio_blk"], DISK_AND_TOKEN_GUEST);
    let contrib = repo_root().join("contrib/libvirt");
    let outer_initrd = dir.path().join("outer-initrd");
    Initramfs::new()
        .kernel_modules(&Kernel::get(), &["virtio_blk"])
        .file(&bins::pageless(), "/pl/pageless")
        .file(&bins::build("pageless-guest", "pageless-guest"), "/pl/pageless-guest")
        .file(&contrib.join("pageless-qemu"), "/pl/pageless-qemu")
        .file(&contrib.join("hooks/qemu"), "/pl/hook-qemu")
        .file(
            &repo_root().join("contrib/apparmor/local/usr.sbin.libvirtd"),
            "/pl/apparmor-local-usr.sbin.libvirtd",
        )
        .file(&repo_root().join("tests/vm/svirt-apparmor.sh"), "/pl/svirt-apparmor.sh")
        .file(&Kernel::get().vmlinuz(), "/pl/vmlinuz")
        .file(&inner_initrd, "/pl/initrd")
        .init(SWITCH_ROOT)
        .build(&outer_initrd)
        .unwrap();

    let mut config = VmConfig::new("svirt-apparmor", outer_initrd);
    config.memory = "3G".into();
    config.smp = 2;
    config.machine = Some("q35".into());
    config.append = "apparmor=1 security=apparmor".into();
    config.extra =
        vec!["-drive".into(), format!("file={},if=virtio,format=raw,snapshot=on", path_arg(&rootfs))];
    let mut vm = Vm::boot(&config);
    vm.wait_for("CHECKS-DONE", Duration::from_secs(1200)).expect("the guest's checks finish");
    let _ = vm.wait_exit(Duration::from_secs(60));
    checks::assert_all_ok(&vm.console(), REQUIRED);
}

/// A path as a QEMU `-drive file=` value (commas doubled).
fn path_arg(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}
