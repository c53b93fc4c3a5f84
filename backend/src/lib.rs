//! `pageless`: the per-VM owner of guest memory.
//!
//! * [`serve`]: the owner process — holds the VM's allocation for the VM's life and serves it
//!   to QEMU and device backends over its control socket.
//! * [`qemu`]: fetches the memory from the owner and execs QEMU with it as the VM's RAM.
//! * [`status`]: what every owner under a run dir serves, and to whom.
//! * [`hook`]: libvirt's qemu hook, which starts and stops a domain's owner.
//! * [`host`]: `pageless host plan|up|down|check`: boot-time reservation, module, pool mounts.
//! * [`unit`]: the owner as the systemd template unit `pageless@<vm>.service`.
//! * [`update`]: `pageless update save|restore`: a VM across a host kernel update (QEMU
//!   cpr-reboot), with [`qmp`] to talk to QEMU.

#![warn(missing_docs)]

pub mod cells;
pub mod cli;
pub mod context;
pub mod hook;
pub mod host;
pub mod limits;
pub mod qemu;
pub mod qemu_args;
pub mod qmp;
pub mod relay;
pub mod serve;
pub mod status;
pub mod unit;
pub mod update;

mod accept;
mod binding;
mod clock;
mod control_server;
mod detach;
mod owner;
mod peer;
mod replace_file;
mod selinux;
mod stopping;

use std::path::{Path, PathBuf};

/// Where owners put their sockets unless told otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/pageless";

/// `<run-dir>/<vm>.sock`: the owner's control socket.
pub fn control_socket_path(run_dir: &Path, vm: &str) -> PathBuf {
    run_dir.join(format!("{vm}.sock"))
}

/// `<run-dir>/<vm>/`: the VM's vhost-user relay sockets.
pub fn relay_dir(run_dir: &Path, vm: &str) -> PathBuf {
    run_dir.join(vm)
}

/// `<run-dir>/<vm>.lock`: held by the one owner of a VM.
pub fn lock_path(run_dir: &Path, vm: &str) -> PathBuf {
    run_dir.join(format!("{vm}.lock"))
}
