//! The workspace's binaries, built on first use (cargo test does not build other packages'
//! binaries, and tests must never run a stale one).

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::repo_root;

/// `target/<profile>/`, where this test binary's own build put binaries.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Builds `bin` of `package` (once per test process) and returns its path.
pub fn build(package: &str, bin: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    let path = target_dir().join(bin);
    if !built.iter().any(|b| b == bin) {
        let profile = target_dir().file_name().expect("profile dir").to_string_lossy().into_owned();
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo.current_dir(repo_root()).args(["build", "--quiet", "-p", package, "--bin", bin]);
        if profile != "debug" {
            cargo.args(["--profile", if profile == "release" { "release" } else { &profile }]);
        }
        let status = cargo.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p {package} --bin {bin} failed");
        built.push(bin.to_string());
    }
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The `pageless` binary.
pub fn pageless() -> PathBuf {
    build("pageless", "pageless")
}
