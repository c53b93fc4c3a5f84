//! pagelessfs files survive kexec (driver/kmod/persist.c, issue #10): one TCG guest boots the
//! 6.12 kernel with `memmap=1G$4G memmap=512M$6G`, creates files of random content on 1G, 2M and
//! 4K mounts and kexecs (kexec_file_load + reboot(LINUX_REBOOT_CMD_KEXEC), the same memmap= on
//! the new command line) into 6.12 again, then into 7.3, each time loading the module built for
//! that kernel with the same ranges=. tests/guest/persist-checks.sh runs the stages; this side
//! checks that the `SNAP` lines of every stage (names, directories, mode/uid/gid, sizes, content
//! hashes, FIEMAP physical extents, pool use) are those of the first boot, and every CHECK line
//! (torn update, damaged and forged metadata, another ranges= set, discard=1).
//!
//! A nested VM rides along the same kexecs (issue #10's live update, tests/guest/update-checks.sh):
//! its 128M of RAM is a file on the 2M volume; it counts on its console and keeps a random token
//! in its RAM; `pageless update save` pauses it before each kexec and `pageless update restore`
//! brings it back after the kexec into 6.12 and after the one into 7.3: it counts on from where
//! it stopped without a reboot, the token is in its file before the restore and in its RAM
//! after it, and the saved state is a tiny part of its RAM. The state directory is the default
//! /var/lib/pageless/update on an ext2 disk of the guest (the initramfs root does not survive
//! kexec); QEMU, pageless and the nested guest's kernel come from a second disk, a cpio archive
//! every stage unpacks. Once the pool's files are gone (another ranges= set), its restore is
//! refused before anything starts. Here: the file's `SNAP` line (FIEMAP extents, content hash)
//! is the same from the save to the restore after each kexec, and its extents never change.

use std::path::Path;
use std::time::Duration;

use pageless_tests::env::{require_env, Need, QEMU};
use pageless_tests::initramfs::Initramfs;
use pageless_tests::kernel::Kernel;
use pageless_tests::nested::{add_qemu, inner_initramfs};
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
    "update-s1-state-disk",
    "update-inner-boots",
    "update-s1-save",
    "update-s1-paused",
    "update-s1-state-small",
    "u2-free-exact",
    "u2-quarantine-empty",
];

/// The checks of each restore and later save (stages 2 and 3), as `update-s<stage>-<name>`.
const RESTORE_CHECKS: &[&str] = &[
    "state-disk",
    "ram-unchanged",
    "token-in-file",
    "restore",
    "ticks-again",
    "counts-on",
    "no-reboot",
    "token",
];
const SAVE_CHECKS: &[&str] = &["save", "paused", "state-small"];

/// The nested VM's memory file, as snapshot lines name it.
const VM_FILE: &str = "/mnt/p/2m/vms-upd/upd f ";

/// The `SNAP <tag> …` lines of one snapshot, without the tag.
fn snapshot(console: &str, tag: &str) -> Vec<String> {
    let prefix = format!("SNAP {tag} ");
    console
        .lines()
        .filter_map(|l| l.find(&prefix).map(|i| l[i + prefix.len()..].trim_end().to_string()))
        .collect()
}

/// The snapshot without the nested VM's file and the pool line (its RAM changes while it runs),
/// and the VM file's line.
fn split_vm(lines: &[String]) -> (Vec<String>, String) {
    let vm: Vec<&String> = lines.iter().filter(|l| l.starts_with(VM_FILE)).collect();
    assert_eq!(vm.len(), 1, "one nested VM file in the snapshot: {lines:#?}");
    let rest = lines.iter().filter(|l| !l.starts_with(VM_FILE)).cloned().collect();
    (rest, vm[0].clone())
}

/// The `ext=` part of a snapshot line: the physical extents.
fn extents(line: &str) -> &str {
    line.rsplit(' ').next().expect("ext= field")
}

/// An initramfs for a stage running on `kernel` (its virtio_blk): the checks, the guest tool
/// and the module of both kernels; with `next`, also the next stage's kernel and initramfs under
/// /kexec.
fn image(kernel: &Kernel, modules: &[(&Kernel, &Path)], next: Option<(&Kernel, &Path)>, out: &Path) {
    let mut img = Initramfs::new();
    img.kernel_modules(kernel, &["virtio_blk"]);
    for (kernel, module) in modules {
        img.file(module, &format!("/ko/{}.ko", kernel.version));
    }
    img.binary(&bins::build("pageless-guest", "pageless-guest"), "/bin/pageless-guest")
        .file(&repo_root().join("tests/guest/checks-lib.sh"), "/checks-lib.sh")
        .file(&repo_root().join("tests/guest/update-checks.sh"), "/update-checks.sh")
        .file(&repo_root().join("tests/guest/persist-checks.sh"), "/persist-checks.sh");
    if let Some((kernel, initrd)) = next {
        img.file(&kernel.vmlinuz(), "/kexec/vmlinuz").file(initrd, "/kexec/initrd");
    }
    img.init("sh /persist-checks.sh\nfinish\n").build(out).unwrap();
}

/// The tools disk (tests/guest/update-checks.sh): QEMU, pageless and the nested guest, as a cpio
/// archive padded to whole MiB.
fn tools_disk(dir: &Path) -> std::path::PathBuf {
    let inner_initrd = dir.join("inner-initrd");
    let inner_script = std::fs::read_to_string(repo_root().join("tests/vm/update-inner.sh")).unwrap();
    inner_initramfs(&inner_initrd, &[], &inner_script);
    let mut tools = Initramfs::new();
    tools
        .file(&Kernel::get().vmlinuz(), "/inner/vmlinuz")
        .file(&inner_initrd, "/inner/initrd")
        .binary(&bins::pageless(), "/usr/bin/pageless");
    add_qemu(&mut tools);
    let out = dir.join("tools.img");
    tools.archive(&out).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&out).unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len.div_ceil(1 << 20) << 20).unwrap();
    out
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
    image(&new, &modules, None, &stage3);
    image(&old, &modules, Some((&new, &stage3)), &stage2);
    image(&old, &modules, Some((&old, &stage2)), &stage1);
    let tools = tools_disk(dir.path());
    let state = dir.path().join("state.img");
    std::fs::File::create(&state).unwrap().set_len(64 << 20).unwrap();

    let mut config = VmConfig::new("kexec-persist", stage1);
    config.kernel = old.vmlinuz();
    config.memory = "6G".into();
    config.smp = 2;
    config.append = "memmap=1G$4G memmap=512M$6G pageless.stage=1".into();
    for (id, image, ro) in [("state", &state, "off"), ("tools", &tools, "on")] {
        config.extra.extend([
            "-drive".to_string(),
            format!("file={},format=raw,if=none,id={id},readonly={ro}", image.display()),
            "-device".into(),
            format!("virtio-blk-pci,drive={id},serial={id}"),
        ]);
    }
    let mut vm = Vm::boot(&config);
    vm.wait_for("CHECKS-DONE", Duration::from_secs(1500)).expect("the guest's three stages finish");
    let _ = vm.wait_exit(Duration::from_secs(60));
    let console = vm.console();
    let mut required: Vec<String> = REQUIRED.iter().map(|s| s.to_string()).collect();
    for stage in [2, 3] {
        required.extend(RESTORE_CHECKS.iter().map(|c| format!("update-s{stage}-{c}")));
    }
    for stage in [2, 3] {
        required.extend(SAVE_CHECKS.iter().map(|c| format!("update-s{stage}-{c}")));
    }
    required.push("update-refused-without-ram".into());
    let required: Vec<&str> = required.iter().map(String::as_str).collect();
    checks::assert_all_ok(&console, &required);

    let s1 = snapshot(&console, "s1");
    assert!(
        s1.iter().any(|l| l.contains("/vms/a/ram f 600 1234 567 nlink=2")),
        "first boot's files: {s1:#?}"
    );
    let (files1, vm1) = split_vm(&s1);
    for tag in ["s2", "s2b", "u2", "s3"] {
        let (files, vm) = split_vm(&snapshot(&console, tag));
        assert_eq!(files, files1, "snapshot {tag} differs from the first boot's (s1)");
        assert_eq!(extents(&vm), extents(&vm1), "the nested VM's file moved ({tag}): {vm} / {vm1}");
    }
    // The RAM of the paused guest, unchanged across each kexec (content hash and all).
    for (saved, restored) in [("s1", "s2"), ("s1", "s2b"), ("u2", "s3")] {
        let (a, b) = (split_vm(&snapshot(&console, saved)).1, split_vm(&snapshot(&console, restored)).1);
        assert_eq!(a, b, "the nested VM's file changed from {saved} to {restored}");
    }
    for line in console.lines().filter(|l| l.contains("RESULT update_")) {
        eprintln!("{}", line.trim());
    }
}
