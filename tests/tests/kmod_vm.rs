//! The kernel module in a VM, on each test kernel (6.12 and 7.3): builds driver/kmod for the
//! kernel, boots it under TCG with two NUMA nodes (-m 6G: node 0 has the first 1152M of RAM,
//! node 1 the rest) and boot-reserved memory (memmap=256M$1G, split by the node boundary at
//! 0x48000000, memmap=1G$4G memmap=512M$6G on node 1)
//! plus the bait for the refusals of ranges that are not RAM (memmap=256M$0x280000000: reserved
//! past the end of RAM; memmap=256M%0x1b0000000-1: RAM neither System RAM nor reserved) and a
//! busybox initramfs holding pageless.ko, the in-guest checks (tests/guest) and the
//! `pageless` binary, and turns each CHECK line on the serial console into pass/fail. The two
//! tests share one body and run one VM at a time.
//!
//! In the guest, first `pageless serve --pool pagelessfs:…` serves a pagelessfs allocation to a
//! client process and, through its relay, to a fake vhost-user backend: neither can shrink or
//! grow it (the owner seals it); then tests/guest/numa-checks.sh checks ranges' nodes, node=
//! mounts and placement (issue #9), and tests/guest/kmod-checks.sh runs the module's whole
//! check sequence.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use pageless_tests::env::{require_env, Need, QEMU};
use pageless_tests::initramfs::Initramfs;
use pageless_tests::kernel::Kernel;
use pageless_tests::vm::{Vm, VmConfig};
use pageless_tests::{bins, checks, kmod, random_token, repo_root};

/// The owner on pagelessfs: an allocation with physical extents inside the reserved ranges,
/// served to a separate client process that maps it (PFN-only, `pf`), both ways.
const SERVE_ON_PAGELESSFS: &str = r#"
TOKEN=@TOKEN@
echo '# init: insmod pageless.ko'
insmod /pageless.ko ranges=1G@4G,512M@6G
echo '# init: mount'
mkdir -p /mnt/serve && mount -t pagelessfs -o pagesize=2M none /mnt/serve
echo '# init: pageless serve'
pageless serve --vm g --size 64M --pool pagelessfs:/mnt/serve --run-dir /run/pageless \
    --vhost-user dev0=/run/fake-backend.sock 2>/tmp/owner.log &
for i in $(seq 100); do pageless status --vm g --run-dir /run/pageless >/dev/null 2>&1 && break; sleep 0.1; done
status=$(pageless status --vm g --run-dir /run/pageless --json | tr -d ' \n')
case "$status" in
    *'"memory":"pagelessfs"'*'"page_size":2097152'*) ok serve-pagelessfs-pool "owner on pagelessfs, 2M pages" ;;
    *) fail serve-pagelessfs-pool "$status $(cat /tmp/owner.log)" ;;
esac
# Physical extents inside 1G@4G or 512M@6G.
phys=$(echo "$status" | sed -n 's/.*"physical":\([0-9]*\).*/\1/p')
if [ -n "$phys" ] && { [ "$phys" -ge 4294967296 ] && [ "$phys" -lt 5368709120 ] || [ "$phys" -ge 6442450944 ] && [ "$phys" -lt 6979321856 ]; }; then
    ok serve-extents "physical extent at $phys"
else
    fail serve-extents "$status"
fi
# The client, and a fake device backend that got the owner's fd through the relay, try to
# shrink and to grow the memory: the owner sealed it (EPERM), size and extents stay.
pageless-testbed owner-client /run/pageless/g.sock "$TOKEN"
pageless-testbed relay-truncate /run/pageless/g.sock /run/pageless/g/dev0.sock /run/fake-backend.sock
check serve-owner-sees-client sh -c "pageless find --vm g --run-dir /run/pageless $TOKEN | grep -qx 0x100000"
# Quarantined memory is shown apart from free memory: a process maps a 2M file, unlinks it and
# lives on, so the file's page is quarantined until it exits.
pageless-guest quarantine-holder /mnt/serve/held >/tmp/qholder.out 2>&1 &
qholder=$!
for i in $(seq 100); do grep -q HOLDER-READY /tmp/qholder.out && break; sleep 0.1; done
quarantined=$(cat /sys/fs/pagelessfs/quarantined_bytes)
status=$(pageless status --vm g --run-dir /run/pageless --json | tr -d ' \n')
human=$(pageless status --vm g --run-dir /run/pageless)
case "$quarantined:$status" in
    "2097152:"*'"pool_quarantined":2097152,'*)
        if echo "$human" | grep -q "free, 2M quarantined"; then
            ok serve-status-quarantined "$(echo "$human" | grep quarantined)"
        else
            fail serve-status-quarantined "$human"
        fi ;;
    *) fail serve-status-quarantined "sysfs $quarantined, status $status, holder $(cat /tmp/qholder.out)" ;;
esac
kill $qholder
wait $qholder 2>/dev/null
for i in $(seq 50); do [ "$(cat /sys/fs/pagelessfs/quarantined_bytes)" = 0 ] && break; sleep 0.1; done
status=$(pageless status --vm g --run-dir /run/pageless --json | tr -d ' \n')
case "$status" in
    *'"pool_quarantined":0,'*) ok serve-status-quarantine-released "0 quarantined once the holder exited" ;;
    *) fail serve-status-quarantine-released "sysfs $(cat /sys/fs/pagelessfs/quarantined_bytes), status $status" ;;
esac
# An uncorrected memory error in the VM's memory (mce-inject, through the decode chain): FIND
# over the poisoned page fails that request (the owner reads with pread: EIO), the owner lives.
# The kernel's asynchronous memory-error messages stay off the console (see kmod-checks.sh).
console_loglevel=$(cut -f1 /proc/sys/kernel/printk)
echo 1 >/proc/sys/kernel/printk
insmod /mce-inject.ko
pageless-guest inject-error $((phys + 4096))
for i in $(seq 50); do
    out=$(pageless find --vm g --run-dir /run/pageless $TOKEN 2>&1) || break
    sleep 0.1
done
if pageless find --vm g --run-dir /run/pageless $TOKEN >/dev/null 2>&1; then
    fail serve-find-memory-error "find still succeeds: $out"
else
    ok serve-find-memory-error "$(echo "$out" | tail -n 1)"
fi
check serve-owner-alive-after-memory-error pageless status --vm g --run-dir /run/pageless
rmmod mce_inject
echo "$console_loglevel" >/proc/sys/kernel/printk
pageless stop --vm g --run-dir /run/pageless
wait
check serve-stopped sh -c "[ ! -e /run/pageless/g.sock ] && [ -e /mnt/serve/g ]"
# A new owner re-attaches to the sealed file.
pageless serve --vm g --size 64M --pool pagelessfs:/mnt/serve --run-dir /run/pageless 2>/tmp/owner2.log &
for i in $(seq 100); do pageless status --vm g --run-dir /run/pageless >/dev/null 2>&1 && break; sleep 0.1; done
status=$(pageless status --vm g --run-dir /run/pageless --json | tr -d ' \n')
case "$status" in
    *'"reattached":true'*) ok serve-reattach-sealed "re-attached to the sealed file" ;;
    *) fail serve-reattach-sealed "$status $(cat /tmp/owner2.log)" ;;
esac
pageless stop --vm g --run-dir /run/pageless
wait
rm -f /mnt/serve/g
umount /mnt/serve
rmmod pageless
"#;

/// Every check of the run: each must be reported, and ok (a check that silently disappears
/// fails the test too).
const REQUIRED: &[&str] = &[
    "serve-pagelessfs-pool",
    "serve-extents",
    "serve-client-map",
    "serve-client-sees-owner",
    "serve-client-pfnmap",
    "serve-client-shrink-eperm",
    "serve-client-grow-eperm",
    "serve-client-size-kept",
    "relay-backend-memory",
    "relay-backend-shrink-eperm",
    "relay-backend-grow-eperm",
    "relay-backend-size-kept",
    "serve-owner-sees-client",
    "serve-status-quarantined",
    "serve-status-quarantine-released",
    "serve-find-memory-error",
    "serve-owner-alive-after-memory-error",
    "serve-stopped",
    "serve-reattach-sealed",
    "numa-load",
    "numa-ranges",
    "numa-sysfs-nodes",
    "numa-mount",
    "numa-mount-options",
    "numa-bad-node",
    "numa-statfs",
    "numa-placement",
    "numa-placement-small",
    "numa-placement-big",
    "numa-extents-node0",
    "numa-extents-node1",
    "numa-statfs-free",
    "numa-enospc-node",
    "numa-extents-any",
    "numa-unload",
    "environment",
    "load-system-ram",
    "load-partly-ram",
    "load-overlap",
    "load-unaligned",
    "load-not-reserved",
    "load-unwind",
    "load-past-ram-end",
    "load-past-ram-end-unwind",
    "load-firmware-reserved",
    "load-parse",
    "load-no-ranges",
    "load",
    "iomem-claimed",
    "struct-page-after-load",
    "pat-write-back-0x100000000",
    "pat-write-back-0x180000000",
    "mount-1g",
    "mount-2m",
    "mount-4k",
    "mount-options",
    "mount-bad-pagesize",
    "mount-bad-size",
    "mount-unknown-option",
    "df",
    "struct-page-after-mount",
    "rmmod-busy",
    "faults-1g-thp-never",
    "faults-2m-thp-never",
    "faults-4k-thp-never",
    "faults-1g-thp-always",
    "faults-2m-thp-always",
    "faults-4k-thp-always",
    "odd-map-2M-1",
    "odd-map-2M-2",
    "odd-map-2M-3",
    "odd-map-2M-4",
    "odd-map-1G-1",
    "odd-map-1G-2",
    "odd-map-1G-3",
    "odd-map-1G-4",
    "pat-after-faults-0x100000000",
    "pat-after-faults-0x180000000",
    "share-scm-rights-2M",
    "proc-pid-mem-2M",
    "smaps-pfnmap-2M",
    "share-scm-rights-1G",
    "proc-pid-mem-1G",
    "smaps-pfnmap-1G",
    "fork-dontcopy-2M",
    "seals-2M",
    "seals-unlink-2M",
    "quarantine-unlink-2M",
    "quarantine-released-2M",
    "quarantine-unlink-1G",
    "quarantine-released-1G",
    "dd-cmp",
    "cp-out",
    "dd-offset",
    "dd-direct",
    "fiemap-2M-data",
    "fiemap-1G-frag",
    "fiemap-4K-frag",
    "directories",
    "scrub-unlink-2M",
    "scrub-free-accounting-2M",
    "quarantine-truncate-2M",
    "scrub-truncate-2M",
    "scrub-unlink-1G",
    "scrub-free-accounting-1G",
    "statfs-magic-2M",
    "enospc-2M",
    "einval-size-2M",
    "einval-map-private-2M",
    "sigbus-past-eof-2M",
    "write-past-eof-2M",
    "statfs-magic-1G",
    "enospc-1G",
    "einval-size-1G",
    "einval-map-private-1G",
    "sigbus-past-eof-1G",
    "write-past-eof-1G",
    "statfs-magic-4K",
    "enospc-4K",
    "einval-map-private-4K",
    "sigbus-past-eof-4K",
    "write-past-eof-4K",
    "pool-full",
    "struct-page-pool-allocated",
    "stress",
    "mce-read-eio-2M",
    "mce-sigbus-mceerr-ar-2M",
    "mce-page-retired-2M",
    "mce-read-eio-4K",
    "mce-sigbus-mceerr-ar-4K",
    "mce-page-retired-4K",
    "unload-refused-quarantined",
    "memory-failure-consumer-2M",
    "memory-failure-other-mapper-2M",
    "memory-failure-retired-2M",
    "memory-failure-consumer-4K",
    "memory-failure-other-mapper-4K",
    "memory-failure-retired-4K",
    "unload",
    "pat-released",
    "reload",
    "struct-page-after-unload",
    "dmesg-clean",
];

/// One guest at a time: the machine has two cores.
static ONE_VM: Mutex<()> = Mutex::new(());

#[test]
fn pagelessfs_in_a_6_12_vm() {
    if !require_env("pagelessfs_in_a_6_12_vm", &[QEMU, Need::Kernel, Need::Busybox, Need::Program("make")]) {
        return;
    }
    pagelessfs_in_a_vm(Kernel::get());
}

#[test]
fn pagelessfs_in_a_7_3_vm() {
    if !require_env(
        "pagelessfs_in_a_7_3_vm",
        &[QEMU, Need::NewestKernel, Need::Busybox, Need::Program("make")],
    ) {
        return;
    }
    pagelessfs_in_a_vm(Kernel::newest());
}

fn pagelessfs_in_a_vm(kernel: Kernel) {
    let _one = ONE_VM.lock().unwrap_or_else(PoisonError::into_inner);
    let module = kmod::build(&kernel);
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd");
    let token = format!("PAGELESSFS-CLIENT-{}", random_token());
    Initramfs::new()
        .file(&module, "/pageless.ko")
        .kernel_module_file(&kernel, "mce-inject", "/mce-inject.ko")
        .binary(&bins::build("pageless-guest", "pageless-guest"), "/bin/pageless-guest")
        .binary(&bins::pageless(), "/bin/pageless")
        .binary(&bins::build("pageless-tests", "pageless-testbed"), "/bin/pageless-testbed")
        .file(&repo_root().join("tests/guest/checks-lib.sh"), "/checks-lib.sh")
        .file(&repo_root().join("tests/guest/kmod-checks.sh"), "/kmod-checks.sh")
        .file(&repo_root().join("tests/guest/numa-checks.sh"), "/numa-checks.sh")
        .init(&format!(
            "{}\nsh /numa-checks.sh\nsh /kmod-checks.sh\npoweroff -f\n",
            SERVE_ON_PAGELESSFS.replace("@TOKEN@", &token)
        ))
        .build(&initrd)
        .unwrap();

    let mut config = VmConfig::new(&format!("kmod-{}", kernel.version), initrd);
    config.kernel = kernel.vmlinuz();
    config.memory = "6G".into();
    config.smp = 2;
    // Two NUMA nodes, one CPU (socket) each: node 0 takes the first 1152M of RAM, so that the
    // node boundary (0x48000000) splits the 256M reserved at 1G (tests/guest/numa-checks.sh).
    // One socket per node: cores of one socket on two nodes make the kernel WARN (smpboot.c
    // topology_sane()).
    for arg in [
        "-smp",
        "sockets=2,cores=1,threads=1",
        "-object",
        "memory-backend-ram,id=m0,size=1152M",
        "-object",
        "memory-backend-ram,id=m1,size=4992M",
        "-numa",
        "node,nodeid=0,memdev=m0,cpus=0",
        "-numa",
        "node,nodeid=1,memdev=m1,cpus=1",
    ] {
        config.extra.push(arg.into());
    }
    // nokaslr: the boot decompressor picks the kernel's physical address avoiding only some
    // memmap= forms; a 7.3 guest once landed in the %-1 range, which then showed as System RAM.
    config.append = "nokaslr memmap=256M$1G memmap=1G$4G memmap=512M$6G memmap=256M$0x280000000 \
                     memmap=256M%0x1b0000000-1"
        .into();
    let mut vm = Vm::boot(&config);
    vm.wait_for("CHECKS-DONE", Duration::from_secs(900)).expect("the guest's checks finish");
    let _ = vm.wait_exit(Duration::from_secs(60));
    checks::assert_all_ok(&vm.console(), REQUIRED);
}
