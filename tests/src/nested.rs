//! Nested guests: QEMU (and qemu-storage-daemon) inside a test guest, booting a tiny inner
//! guest under TCG-in-TCG.

use std::path::Path;

use crate::initramfs::Initramfs;
use crate::kernel::Kernel;
use crate::{bins, kmod, repo_root};

/// The data files QEMU opens for a `-kernel` boot with `-nodefaults` (found with strace).
const QEMU_FIRMWARE: &[&str] = &[
    "/usr/share/seabios/bios-256k.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/kvmvapic.bin",
    "/usr/share/qemu/pvh.bin",
];

/// Adds qemu-system-x86_64, qemu-storage-daemon, their libraries and firmware.
pub fn add_qemu(initramfs: &mut Initramfs) {
    initramfs.binary(Path::new("/usr/bin/qemu-system-x86_64"), "/usr/bin/qemu-system-x86_64");
    initramfs.binary(Path::new("/usr/bin/qemu-storage-daemon"), "/usr/bin/qemu-storage-daemon");
    for file in QEMU_FIRMWARE {
        initramfs.file(Path::new(file), file);
    }
}

/// Builds the inner guest's initramfs at `out`: busybox, `modules`, and `body` after the
/// usual prelude.
pub fn inner_initramfs(out: &Path, modules: &[&str], body: &str) {
    Initramfs::new()
        .kernel_modules(&Kernel::get(), modules)
        .init(body)
        .build(out)
        .expect("build the inner initramfs");
}

/// The outer guest that boots nested VMs (the seed scenario, the driver benchmark) on `kernel`,
/// without its /init: pageless.ko built for it, the vfio-pci modules (loaded), `pageless` and `pageless-guest`, QEMU and
/// qemu-storage-daemon, tests/vm/nested.sh as /nested.sh, and the nested guest's kernel and
/// initramfs (tests/vm/seed-inner.sh) as /inner/vmlinuz and /inner/initrd (always the default
/// kernel). `work` holds the nested initramfs while the image is built.
pub fn outer_initramfs(work: &Path, kernel: &Kernel) -> Initramfs {
    let module = kmod::build(kernel);
    let inner_initrd = work.join("inner-initrd");
    let inner_script =
        std::fs::read_to_string(repo_root().join("tests/vm/seed-inner.sh")).expect("seed-inner.sh");
    inner_initramfs(&inner_initrd, &["virtio_blk"], &inner_script);
    let mut outer = Initramfs::new();
    outer
        .kernel_modules(kernel, &["vfio_iommu_type1", "vfio-pci"])
        .file(&module, "/pageless.ko")
        .file(&repo_root().join("tests/vm/nested.sh"), "/nested.sh")
        .file(&Kernel::get().vmlinuz(), "/inner/vmlinuz")
        .file(&inner_initrd, "/inner/initrd")
        .binary(&bins::pageless(), "/usr/bin/pageless")
        .binary(&bins::build("pageless-guest", "pageless-guest"), "/usr/bin/pageless-guest");
    add_qemu(&mut outer);
    outer
}
