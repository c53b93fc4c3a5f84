//! Live migration between owners on this host: each side (a "host") has its own run
//! directory, owner, qemu-storage-daemon and disk image; QEMU is driven by QMP. Used by
//! tests/tests/migration.rs and the migration benchmark.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::backends::{maps_inode, Backend};
use crate::initramfs::Initramfs;
use crate::kernel::Kernel;
use crate::owner::Owner;
use crate::qmp::{self, free_port};
use crate::vm::{Vm, VmConfig};

/// The VM's name on every side.
pub const VM: &str = "mig";
const STEP: Duration = Duration::from_secs(60);
const MIGRATION: Duration = Duration::from_secs(300);

/// The guest: a counter that writes each value to sector 100 of its vhost-user disk (fsync),
/// reads it back from the device and prints `COUNT <n> READ <line>` twice a second; on `token`
/// a fresh random token goes into RAM (tmpfs) and to sector 8+N (`GUEST-TOKEN N tok`); on
/// `load MIB` it keeps rewriting MIB MiB of tmpfs (RAM) with random data (`LOAD-ON`).
pub const GUEST: &str = r#"
for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
(
    c=0
    while true; do
        c=$((c + 1))
        printf 'COUNTED %s\n' "$c" | dd of=/dev/vda bs=512 seek=100 conv=fsync 2>/dev/null || echo "IO-FAILED count $c"
        echo 3 > /proc/sys/vm/drop_caches
        echo "COUNT $c READ $(dd if=/dev/vda bs=512 skip=100 count=1 2>/dev/null | head -n 1)"
        sleep 0.5
    done
) &
n=0
token() {
    n=$((n + 1))
    tok="PAGELESS-TOKEN-$(rand_hex 12)"
    echo "$tok" > /run/token-$n
    printf '%s\n' "$tok" | dd of=/dev/vda bs=512 seek=$((8 + n)) conv=fsync 2>/dev/null || { echo "IO-FAILED token $n"; return; }
    echo "GUEST-TOKEN $n $tok"
}
token
echo GUEST-READY
while read -r cmd; do
    case "$cmd" in
        *token*) token ;;
        *load*)
            mib=${cmd##* }
            ( while true; do dd if=/dev/urandom of=/run/load bs=1M count="$mib" 2>/dev/null; done ) &
            echo LOAD-ON ;;
        *quit*) finish ;;
    esac
done
finish
"#;

/// Builds the guest's initramfs at `out`.
pub fn guest_initramfs(out: &Path) {
    Initramfs::new()
        .kernel_modules(&Kernel::get(), &["virtio_blk"])
        .init(GUEST)
        .build(out)
        .expect("build the migration guest's initramfs");
}

/// One host of the migration: its run directory, owner, disk image and backend.
pub struct Side {
    /// A label for messages and console logs.
    pub name: String,
    /// The owner's run directory.
    pub run_dir: PathBuf,
    /// This side's disk image.
    pub image: PathBuf,
    /// QEMU's QMP socket on this side.
    pub qmp: PathBuf,
    /// The owner of VM [`VM`] here.
    pub owner: Owner,
    /// qemu-storage-daemon exporting [`Side::image`].
    pub qsd: Backend,
    /// The guest's memory size (QEMU's `-m`, the owner's `--size`).
    pub memory: String,
}

impl Side {
    /// A side under `root/name` whose disk image starts as a copy of `image` and whose owner
    /// serves `memory` from `pool`.
    pub fn new(root: &Path, name: &str, pool: &str, memory: &str, image: &Path) -> Side {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let own_image = dir.join("disk.img");
        std::fs::copy(image, &own_image).unwrap();
        let qsd_socket = dir.join("qsd.sock");
        let qsd = Backend::storage_daemon(&own_image, &qsd_socket);
        let run_dir = dir.join("run");
        let relay = format!("disk0={}", qsd_socket.display());
        let owner = Owner::start(&run_dir, VM, &["--size", memory, "--pool", pool, "--vhost-user", &relay]);
        Side {
            name: name.into(),
            run_dir,
            image: own_image,
            qmp: dir.join("qmp.sock"),
            owner,
            qsd,
            memory: memory.into(),
        }
    }

    /// The guest's QEMU on this side; with `incoming`, waiting for a migration on that port.
    pub fn config(&self, initrd: &Path, incoming: Option<u16>) -> VmConfig {
        let mut config = VmConfig::new(&format!("migration-{}", self.name), initrd.to_path_buf());
        config.memory = self.memory.clone();
        config.through_pageless(&self.run_dir, Some(VM)).vhost_user(
            "disk0",
            &self.run_dir.join(VM).join("disk0.sock"),
            "vhost-user-blk-pci,num-queues=1",
            true,
        );
        config.extra.extend(["-qmp".into(), format!("unix:{},server=on,wait=off", self.qmp.display())]);
        if let Some(port) = incoming {
            config.extra.extend(["-incoming".into(), format!("tcp:127.0.0.1:{port}")]);
        }
        config
    }

    /// The guest's QEMU is this side's relayed consumer and its backend maps this owner's file.
    pub fn assert_serves(&self, vm: &Vm) {
        let status = self.owner.status();
        let consumer = status.consumers.iter().find(|c| c.device == "disk0").expect("disk0 is a consumer");
        assert_eq!(
            consumer.frontend_pid,
            Some(vm.pid()),
            "{}: the relay's frontend is the guest's QEMU",
            self.name
        );
        assert!(maps_inode(self.qsd.pid(), status.inode), "{}: the backend maps the owner's file", self.name);
    }
}

/// What one migration took, from the source's last `query-migrate`.
#[derive(Clone, Debug)]
pub struct Migrated {
    /// QEMU's `total-time`, in ms.
    pub total_ms: u64,
    /// QEMU's `downtime`, in ms.
    pub downtime_ms: u64,
    /// Bytes sent (`ram.transferred`).
    pub transferred: u64,
    /// The whole `query-migrate` answer.
    pub info: Value,
}

impl Migrated {
    /// Bytes sent per second of migration.
    pub fn throughput(&self) -> f64 {
        self.transferred as f64 / (self.total_ms.max(1) as f64 / 1000.0)
    }
}

/// Migrates the guest `vm` running on `from` to a new QEMU on `to`; returns the new guest
/// (running) once the old QEMU has quit, and what the migration took.
pub fn migrate(vm: &mut Vm, from: &Side, to: &Side, initrd: &Path) -> (Vm, Migrated) {
    let port = free_port();
    let target = Vm::start(&to.config(initrd, Some(port)));
    let mut to_qmp = qmp::connect(&to.qmp, STEP).expect("the destination QEMU answers QMP");
    let mut from_qmp = qmp::connect(&from.qmp, STEP).expect("the source QEMU answers QMP");
    // Not QEMU's default 128 MiB/s cap: the benchmark measures how fast memory can be sent.
    from_qmp
        .execute("migrate-set-parameters", json!({ "max-bandwidth": 16u64 << 30 }))
        .expect("lift the migration bandwidth cap");
    let started = Instant::now();
    from_qmp
        .execute("migrate", json!({ "uri": format!("tcp:127.0.0.1:{port}") }))
        .expect("start the migration");
    let info = qmp::wait_migration(&mut from_qmp, MIGRATION).unwrap_or_else(|e| {
        panic!("{} → {}: {e}\nsource owner log:\n{}", from.name, to.name, from.owner.log())
    });
    eprintln!("migration {} → {}: {:?}, {info}", from.name, to.name, started.elapsed());
    let status = to_qmp.execute("query-status", json!({})).unwrap();
    assert_eq!(status["status"], "running", "the destination runs the guest after the migration: {status}");
    // The reply to `quit` may be lost when QEMU exits first (QEMU's QAPI documentation of
    // `quit`); Qmp::quit accepts that, and the exit status below is what counts.
    from_qmp.quit().expect("quit the source QEMU");
    let status = vm.wait_exit(STEP).expect("the source QEMU exits");
    assert!(status.success(), "the source QEMU exits cleanly after the migration: {status}");
    let number = |v: &Value| v.as_u64().unwrap_or_default();
    let migrated = Migrated {
        total_ms: number(&info["total-time"]),
        downtime_ms: number(&info["downtime"]),
        transferred: number(&info["ram"]["transferred"]),
        info,
    };
    (target, migrated)
}
