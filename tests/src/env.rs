//! Gating of environment tests, as Cloud Hypervisor does: a test that needs root, QEMU, the
//! test kernel or libvirt calls [`require_env`] first. Where something is missing, plain
//! `cargo test` reports the test as skipped, with the reason, and it passes; with
//! `PAGELESS_TEST_ENV=require` (set by `scripts/test.sh`, and so by CI) a missing requirement
//! fails the test.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::repo_root;

/// The switch: `PAGELESS_TEST_ENV=require` makes every environment test mandatory.
pub const SWITCH: &str = "PAGELESS_TEST_ENV";

/// Something an environment test needs from the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Running as root (hugetlb pages, mounts, libvirt's hook directory).
    Root,
    /// The test guests' kernel, unpacked by `scripts/setup.sh` under `.cache/kernel/current`
    /// (with its modules and headers).
    Kernel,
    /// The newest test kernel (7.3) under `.cache/kernel/newest`, and the Debian 13 build root
    /// its modules are built in (`scripts/setup.sh`).
    NewestKernel,
    /// The Debian 13 build root with dkms and a second kernel (Debian 13's 6.12, image and
    /// headers) installed by `scripts/setup.sh`, for the package test.
    PackageRoot,
    /// A static busybox at /bin/busybox, the test guests' userland.
    Busybox,
    /// A program on `PATH`.
    Program(&'static str),
    /// A tool `scripts/setup.sh` installs under `.cache/tools/bin`.
    Tool(&'static str),
    /// A file `scripts/setup.sh` builds under `.cache` (with a `<path>.ready` stamp), e.g. the
    /// sVirt test's root filesystem image.
    Cached(&'static str),
}

/// QEMU's system emulator, which boots the test guests.
pub const QEMU: Need = Need::Program("qemu-system-x86_64");
/// qemu-storage-daemon, the vhost-user-blk backend of the tests.
pub const QEMU_STORAGE_DAEMON: Need = Need::Program("qemu-storage-daemon");

impl Need {
    /// Why this need is not met here, or `None` when it is.
    pub fn missing(&self) -> Option<String> {
        match *self {
            Need::Root => (!nix::unistd::geteuid().is_root()).then(|| "root (run as root)".to_string()),
            Need::Kernel => {
                let root = repo_root().join(".cache/kernel/current");
                (!root.join(".unpacked").exists())
                    .then(|| format!("the test kernel at {} (scripts/setup.sh)", root.display()))
            }
            Need::NewestKernel => {
                let root = repo_root().join(".cache/kernel/newest");
                let build_root = repo_root().join(".cache/buildroot/trixie");
                (!root.join(".unpacked").exists() || !build_root.join("usr/bin/make").exists()).then(|| {
                    format!(
                        "the newest test kernel at {} and the build root {} (scripts/setup.sh)",
                        root.display(),
                        build_root.display()
                    )
                })
            }
            Need::PackageRoot => {
                let root = repo_root().join(".cache/buildroot/trixie");
                (!root.join(".dkms").exists() || !is_executable(&root.join("usr/sbin/dkms"))).then(|| {
                    format!(
                        "dkms and the 6.12 kernel in the build root {} (scripts/setup.sh)",
                        root.display()
                    )
                })
            }
            Need::Busybox => (!is_executable(Path::new("/bin/busybox")))
                .then(|| "busybox at /bin/busybox (apt-get install busybox-static)".to_string()),
            Need::Program(name) => {
                find_program(name).is_none().then(|| format!("{name} on PATH (scripts/setup.sh)"))
            }
            Need::Cached(path) => {
                let ready = repo_root().join(".cache").join(format!("{path}.ready"));
                (!ready.exists()).then(|| format!(".cache/{path} (scripts/setup.sh)"))
            }
            Need::Tool(name) => {
                let path = repo_root().join(".cache/tools/bin").join(name);
                (!is_executable(&path)).then(|| format!("{} (scripts/setup.sh)", path.display()))
            }
        }
    }
}

/// Whether environment tests are mandatory here (`PAGELESS_TEST_ENV=require`).
pub fn required() -> bool {
    std::env::var(SWITCH).is_ok_and(|v| v == "require")
}

/// Whether the calling environment test should run: `true` when everything in `needs` is there.
/// Otherwise, prints `SKIPPED <test>: needs …` on stderr (past the test harness's capture, so
/// that it shows) and returns `false`, or, when [`required`], fails the test with the reason.
///
/// Call it first in every test that needs more than a normal user's machine with Rust:
/// `if !require_env("guest_boot", &[QEMU, Need::Kernel, Need::Busybox]) { return; }`.
#[must_use = "return from the test when it says false"]
pub fn require_env(test: &str, needs: &[Need]) -> bool {
    let mut missing: Vec<String> = Vec::new();
    for reason in needs.iter().filter_map(Need::missing) {
        if !missing.contains(&reason) {
            missing.push(reason);
        }
    }
    if missing.is_empty() {
        return true;
    }
    let reasons = missing.join(", ");
    if required() {
        panic!(
            "{test}: this environment test is required ({SWITCH}=require) but the machine lacks {reasons}"
        );
    }
    // Straight to stderr: the harness captures only print!/eprint! of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs {reasons} (the test passes as skipped; {SWITCH}=require makes it fail)"
    );
    false
}

/// `name` in a directory of `PATH`, if it is an executable file there.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn met_and_missing_needs() {
        assert!(require_env("nothing needed", &[]));
        assert_eq!(Need::Program("sh").missing(), None);
        let missing = Need::Program("pageless-no-such-program").missing().expect("missing");
        assert!(missing.contains("pageless-no-such-program on PATH"), "{missing}");
        assert!(Need::Tool("pageless-no-such-tool").missing().is_some());
        assert_eq!(Need::Root.missing().is_none(), nix::unistd::geteuid().is_root());
    }
}
