//! The kernel module, built for a test kernel.

use std::path::PathBuf;
use std::process::Command;

use crate::kernel::Kernel;
use crate::repo_root;

/// Builds driver/kmod for `kernel` (`make KVER=<version>`: in driver/kmod/build/<version>/, inside
/// the Debian 13 build root for the 7.3 kernel); returns its pageless.ko.
pub fn build(kernel: &Kernel) -> PathBuf {
    let kmod = repo_root().join("driver/kmod");
    let status = Command::new("make")
        .arg("-C")
        .arg(&kmod)
        .arg(format!("KVER={}", kernel.version))
        .status()
        .expect("run make");
    assert!(status.success(), "building driver/kmod for {} failed", kernel.version);
    kmod.join("build").join(&kernel.version).join("pageless.ko")
}
