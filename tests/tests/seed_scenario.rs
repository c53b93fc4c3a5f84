//! The seed's whole scenario on the real driver, inside a VM (this machine has no reserved
//! memory of its own): an outer TCG guest (q35, intel-iommu, QEMU's edu device) boots with
//! memmap= reserved ranges and pageless.ko; in it,
//! 1. `pageless serve --pool pagelessfs:` + `pageless qemu` boot a nested guest whose RAM is the
//!    pagelessfs file: the owner finds the inner guest's token, QEMU maps the file PFN-only
//!    (`pf`), nr_memmap_* does not grow;
//! 2. the relay + qemu-storage-daemon serve the inner guest a vhost-user disk, mapping the same
//!    file;
//! 3. edu, bound to vfio-pci behind the vIOMMU, DMAs into a pagelessfs file (VFIO type1), and the
//!    inner QEMU runs with `-device vfio-pci` on pagelessfs RAM: all of it DMA-mapped;
//! 4. the same device paths on memfd memory, as the control;
//! 5. the pagelessfs nested VM's owner, asked to stop while QEMU still runs, keeps the memory
//!    (file, extents) past its --consumer-timeout, says in `pageless status` that it waits for
//!    QEMU's pid, and releases the memory once QEMU is gone.
//!
//! See tests/vm/seed-outer.sh and tests/vm/seed-inner.sh.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use pageless_tests::env::{require_env, Need, QEMU, QEMU_STORAGE_DAEMON};
use pageless_tests::kernel::Kernel;
use pageless_tests::nested::outer_initramfs;
use pageless_tests::vm::{Vm, VmConfig};
use pageless_tests::{checks, repo_root};

const VFIO_CHECKS: &[&str] = &[
    "vfio-setup",
    "vfio-device",
    "edu-id",
    "bus-master",
    "buffer",
    "vfio-map-dma",
    "edu-dma-to-device",
    "edu-dma-from-device",
    "vfio-unmap-dma",
    "iommu-blocks-after-unmap",
    "vfio-release",
];

const INNER_CHECKS: &[&str] = &[
    "inner-boots",
    "owner-sees-guest-token",
    "vhost-user-disk-read",
    "vhost-user-disk-write",
    "backend-maps-owner-file",
    "relay-consumer",
    "vfio-passthrough",
];

/// The pagelessfs nested VM's owner, asked to stop while QEMU (with a VFIO device on the VM's
/// memory) still runs, keeps the memory until QEMU is gone.
const OWNER_STOP_CHECKS: &[&str] = &[
    "owner-keeps-memory",
    "owner-extents-kept",
    "owner-status-stopping",
    "owner-log-names-qemu",
    "owner-releases-after-qemu",
];

fn required() -> Vec<String> {
    let mut names: Vec<String> =
        ["load", "mount-2m", "edu-on-vfio-pci", "pagelessfs-qemu-maps-pfn-only", "memfd-qemu-maps-memfd"]
            .map(String::from)
            .to_vec();
    names.push("struct-page-with-nested-vm".into());
    names.extend(OWNER_STOP_CHECKS.iter().map(|c| format!("pagelessfs-{c}")));
    for give_back in ["truncate", "unlink"] {
        names.push(format!("dma-isolation-{give_back}"));
        names.push(format!("dma-isolation-{give_back}-released"));
    }
    names.push("unload".into());
    for prefix in ["pagelessfs-vfio", "memfd-vfio"] {
        names.extend(VFIO_CHECKS.iter().map(|c| format!("{prefix}-{c}")));
    }
    for label in ["pagelessfs", "memfd"] {
        names.extend(INNER_CHECKS.iter().map(|c| format!("{label}-{c}")));
    }
    names
}

/// One guest at a time: the machine has two cores.
static ONE_VM: Mutex<()> = Mutex::new(());

#[test]
fn nested_vm_on_pfn_only_memory_with_vhost_user_and_vfio_on_6_12() {
    if !require_env(
        "nested_vm_on_pfn_only_memory_with_vhost_user_and_vfio_on_6_12",
        &[QEMU, Need::Kernel, Need::Busybox, QEMU_STORAGE_DAEMON, Need::Program("make")],
    ) {
        return;
    }
    seed_scenario(Kernel::get());
}

#[test]
fn nested_vm_on_pfn_only_memory_with_vhost_user_and_vfio_on_7_3() {
    if !require_env(
        "nested_vm_on_pfn_only_memory_with_vhost_user_and_vfio_on_7_3",
        &[QEMU, Need::Kernel, Need::NewestKernel, Need::Busybox, QEMU_STORAGE_DAEMON, Need::Program("make")],
    ) {
        return;
    }
    seed_scenario(Kernel::newest());
}

/// The outer guest (the host of the scenario) runs `kernel` with pageless.ko built for it; the
/// nested guest always runs the default kernel.
fn seed_scenario(kernel: Kernel) {
    let _one = ONE_VM.lock().unwrap_or_else(PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let outer_script = std::fs::read_to_string(repo_root().join("tests/vm/seed-outer.sh")).unwrap();
    let mut outer = outer_initramfs(dir.path(), &kernel);
    let outer_initrd = dir.path().join("outer-initrd");
    outer.init(&outer_script).build(&outer_initrd).unwrap();

    let mut config = VmConfig::new(&format!("outer-{}", kernel.version), outer_initrd);
    config.kernel = kernel.vmlinuz();
    config.memory = "6G".into();
    config.smp = 2;
    config.machine = Some("q35".into());
    config.append = "intel_iommu=on memmap=1G$4G memmap=512M$6G".into();
    config.extra = ["-device", "intel-iommu", "-device", "edu"].map(String::from).to_vec();
    let mut vm = Vm::boot(&config);
    vm.wait_for("CHECKS-DONE", Duration::from_secs(1500)).expect("the outer guest's checks finish");
    let _ = vm.wait_exit(Duration::from_secs(60));
    let required = required();
    checks::assert_all_ok(&vm.console(), &required.iter().map(String::as_str).collect::<Vec<_>>());
}
