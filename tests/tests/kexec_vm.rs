//! pagelessfs files survive kexec (driver/kmod/persist.c, issue #10): one TCG guest boots the
//! 6.12 kernel with `memmap=1G$4G memmap=512M$6G`, creates files of random content on 1G, 2M and
//! 4K mounts and kexecs (kexec_file_load + reboot(LINUX_REBOOT_CMD_KEXEC), the same memmap= on
//! the new command line) into 6.12 again, then into 7.3, each time loading the module built for
//! that kernel with the same ranges=. tests/guest/persist-checks.sh runs the stages; this side
//! checks that the `SNAP` lines of every stage (names, directories, mode/uid/gid, sizes, content
//! hashes, FIEMAP physical extents, pool use) are those of the first boot, and every CHECK line
//! (torn update, damaged and forged metadata, another ranges= set, discard=1).

use std::path::Path;
use std::time::Duration;

use pageless_tests::env::{require_env, Need, QEMU};
use pageless_tests::initramfs::Initramfs;
use pageless_tests::kernel::Kernel;
use pageless_tests::vm::{Vm, VmConfig};
use pageless_tests::{bins, checks, kmod, repo_root};

const REQUIRED: &[&str] = &[
    "persist-fresh",
    "persist-fill",
    "s1-free-exact",
    "persist-recover",
    "s2-free-exact",
    "s2-quarantine-empty",
    "meta-scribble-torn",
    "persist-torn",
    "s2b-free-exact",
    "persist-upgrade",
    "s3-free-exact",
    "s3-quarantine-empty",
    "persist-other-ranges",
    "persist-other-ranges-reload",
    "persist-other-ranges-empty",
    "meta-scribble-outside",
    "persist-outside",
    "persist-outside-empty",
    "meta-scribble-overlap",
    "persist-overlap",
    "persist-overlap-empty",
    "meta-scribble-both",
    "persist-both",
    "persist-both-empty",
    "persist-discard",
    "persist-discard-empty",
    "persist-discard-kept",
    "persist-discard-kept-empty",
    "persist-dmesg-clean",
];

/// The `SNAP <tag> …` lines of one snapshot, without the tag.
fn snapshot(console: &str, tag: &str) -> Vec<String> {
    let prefix = format!("SNAP {tag} ");
    console
        .lines()
        .filter_map(|l| l.find(&prefix).map(|i| l[i + prefix.len()..].trim_end().to_string()))
        .collect()
}

/// An initramfs with the checks, the guest tool and the module of both kernels; with `next`,
/// also the next stage's kernel and initramfs under /kexec.
fn image(modules: &[(&Kernel, &Path)], next: Option<(&Kernel, &Path)>, out: &Path) {
    let mut img = Initramfs::new();
    for (kernel, module) in modules {
        img.file(module, &format!("/ko/{}.ko", kernel.version));
    }
    img.binary(&bins::build("pageless-guest", "pageless-guest"), "/bin/pageless-guest")
        .file(&repo_root().join("tests/guest/checks-lib.sh"), "/checks-lib.sh")
        .file(&repo_root().join("tests/guest/persist-checks.sh"), "/persist-checks.sh");
    if let Some((kernel, initrd)) = next {
        img.file(&kernel.vmlinuz(), "/kexec/vmlinuz").file(initrd, "/kexec/initrd");
    }
    img.init("sh /persist-checks.sh\nfinish\n").build(out).unwrap();
}

#[test]
fn pagelessfs_files_survive_kexec() {
    if !require_env(
        "pagelessfs_files_survive_kexec",
        &[QEMU, Need::Kernel, Need::NewestKernel, Need::Busybox, Need::Program("make")],
    ) {
        return;
    }
    let (old, new) = (Kernel::get(), Kernel::newest());
    let (old_ko, new_ko) = (kmod::build(&old), kmod::build(&new));
    let modules = [(&old, old_ko.as_path()), (&new, new_ko.as_path())];
    let dir = tempfile::tempdir().unwrap();
    let (stage3, stage2, stage1) =
        (dir.path().join("stage3"), dir.path().join("stage2"), dir.path().join("stage1"));
    image(&modules, None, &stage3);
    image(&modules, Some((&new, &stage3)), &stage2);
    image(&modules, Some((&old, &stage2)), &stage1);

    let mut config = VmConfig::new("kexec-persist", stage1);
    config.kernel = old.vmlinuz();
    config.memory = "6G".into();
    config.smp = 2;
    config.append = "memmap=1G$4G memmap=512M$6G pageless.stage=1".into();
    let mut vm = Vm::boot(&config);
    vm.wait_for("CHECKS-DONE", Duration::from_secs(600)).expect("the guest's three stages finish");
    let _ = vm.wait_exit(Duration::from_secs(60));
    let console = vm.console();
    checks::assert_all_ok(&console, REQUIRED);

    let s1 = snapshot(&console, "s1");
    assert!(
        s1.iter().any(|l| l.contains("/vms/a/ram f 600 1234 567 nlink=2")),
        "first boot's files: {s1:#?}"
    );
    for tag in ["s2", "s2b", "s3"] {
        let s = snapshot(&console, tag);
        assert_eq!(s, s1, "snapshot {tag} differs from the first boot's (s1)");
    }
}
