//! Nested guests: QEMU (and qemu-storage-daemon) inside a test guest, booting a tiny inner
//! guest under TCG-in-TCG.

use std::path::Path;

use crate::initramfs::Initramfs;
use crate::kernel::Kernel;

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
