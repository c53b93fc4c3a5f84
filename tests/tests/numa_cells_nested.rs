//! NUMA cells end to end: an outer TCG guest with two NUMA nodes runs `pageless serve` with two
//! memfd cells bound to host nodes 0 and 1 and boots, through `pageless qemu`, an inner guest
//! with one `-numa node,memdev=` per cell. The inner guest sees two nodes of 128M; every page of
//! cell N is on the outer guest's node N (all of it, asked with move_pages(2), and what the
//! guest touched, in QEMU's numa_maps). See tests/vm/numa-outer.sh and tests/vm/numa-inner.sh.

use std::time::Duration;

use pageless_tests::env::{require_env, Need, QEMU};
use pageless_tests::initramfs::Initramfs;
use pageless_tests::kernel::Kernel;
use pageless_tests::nested::{add_qemu, inner_initramfs};
use pageless_tests::vm::{Vm, VmConfig};
use pageless_tests::{bins, checks, repo_root};

const CHECKS: &[&str] = &[
    "outer-two-nodes",
    "owner-serves-cells",
    "inner-boots",
    "inner-sees-two-nodes",
    "inner-node-sizes",
    "cell0-all-pages-on-node0",
    "cell1-all-pages-on-node1",
    "qemu-cell0-on-node0",
    "qemu-cell1-on-node1",
    "owner-stops",
];

#[test]
fn a_two_cell_guest_has_each_cells_ram_on_its_host_node() {
    if !require_env(
        "a_two_cell_guest_has_each_cells_ram_on_its_host_node",
        &[QEMU, Need::Kernel, Need::Busybox],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let inner_initrd = dir.path().join("inner-initrd");
    let inner_script = std::fs::read_to_string(repo_root().join("tests/vm/numa-inner.sh")).unwrap();
    inner_initramfs(&inner_initrd, &[], &inner_script);
    let outer_script = std::fs::read_to_string(repo_root().join("tests/vm/numa-outer.sh")).unwrap();
    let mut outer = Initramfs::new();
    outer
        .file(&Kernel::get().vmlinuz(), "/inner/vmlinuz")
        .file(&inner_initrd, "/inner/initrd")
        .binary(&bins::pageless(), "/usr/bin/pageless")
        .binary(&bins::build("pageless-guest", "pageless-guest"), "/usr/bin/pageless-guest");
    add_qemu(&mut outer);
    let outer_initrd = dir.path().join("outer-initrd");
    outer.init(&outer_script).build(&outer_initrd).unwrap();

    let mut config = VmConfig::new("numa-outer", outer_initrd);
    config.memory = "2G".into();
    config.smp = 2;
    config.extra = [
        "-object",
        "memory-backend-ram,id=m0,size=1G",
        "-object",
        "memory-backend-ram,id=m1,size=1G",
        "-numa",
        "node,nodeid=0,cpus=0,memdev=m0",
        "-numa",
        "node,nodeid=1,cpus=1,memdev=m1",
    ]
    .map(String::from)
    .to_vec();
    let mut vm = Vm::start(&config);
    vm.wait_for("CHECKS-DONE", Duration::from_secs(900)).expect("the outer guest's checks finish");
    let _ = vm.wait_exit(Duration::from_secs(60));
    checks::assert_all_ok(&vm.console(), CHECKS);
}
