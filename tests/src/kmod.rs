//! The kernel module, built for the test kernel.

use std::path::PathBuf;
use std::process::Command;

use crate::kernel::Kernel;
use crate::repo_root;

/// Builds driver/kmod against the test kernel's headers; returns pageless.ko.
pub fn build(kernel: &Kernel) -> PathBuf {
    let kmod = repo_root().join("driver/kmod");
    let status = Command::new("make")
        .arg("-C")
        .arg(&kmod)
        .arg(format!("KDIR={}", kernel.headers().display()))
        .status()
        .expect("run make");
    assert!(status.success(), "building driver/kmod failed");
    kmod.join("pageless.ko")
}
