//! The pageless test bed: everything the integration tests share.
//!
//! * [`alloc`]: the kernel module's extent allocator (driver/kmod/alloc.c) built for user space.
//! * [`bins`]: builds and finds the workspace's binaries (`pageless`, `pageless-guest`).
//! * [`kernel`]: the 6.12 cloud kernel unpacked by `scripts/setup.sh`.
//! * [`initramfs`]: busybox initramfs images with binaries (and their shared libraries),
//!   kernel modules and an /init script.
//! * [`vm`]: QEMU guests (TCG) whose serial console is read line by line.
//! * [`owner`]: `pageless serve` processes.
//! * [`procfs`]: a process's CPU time, threads, files and memory.
//! * [`qmp`]: a QMP client for tests that migrate guests.
//! * [`migration`]: live migration between owners on this host (test and benchmark).
//! * [`svirt`]: the sVirt test guests (libvirt with AppArmor or SELinux in a Debian root).
//! * [`checks`]: the `CHECK <name> ok|FAIL <detail>` lines guests print.
//! * [`env`]: [`env::require_env`], which skips (or, with `PAGELESS_TEST_ENV=require`, fails)
//!   a test whose environment (root, QEMU, the test kernel, libvirt) is missing.

pub mod alloc;
pub mod backends;
pub mod bins;
pub mod checks;
pub mod env;
pub mod guests;
pub mod initramfs;
pub mod kernel;
pub mod kmod;
pub mod migration;
pub mod nested;
pub mod owner;
pub mod procfs;
pub mod qmp;
pub mod svirt;
pub mod vm;

use std::path::PathBuf;

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repository").to_path_buf()
}

/// A random hex token (from the kernel's RNG).
pub fn random_token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 12];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("random bytes");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
