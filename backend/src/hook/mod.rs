//! `pageless hook`: libvirt's qemu hook (`/etc/libvirt/hooks/qemu VM OPERATION SUBOP EXTRA`,
//! the domain XML on stdin).
//!
//! * `prepare begin`: starts the VM's owner, `pageless serve`, as the systemd unit
//!   `pageless@<vm>.service` where systemd runs (its arguments in
//!   `/run/pageless/units/<vm>.args`, see [`crate::unit`]; a transient unit `pageless-<vm>`
//!   from `systemd-run` where that template is not installed), else as a detached process (own session, stdin
//!   `/dev/null`, output to `<run-dir>/<vm>.log`, no inherited fds: libvirt waits for the
//!   hook's stdout and stderr to close). Then waits until the owner answers on its socket. An
//!   owner that exits or does not answer in time fails the hook, with the end of its log on
//!   stderr, which libvirt shows as `virsh start`'s error.
//! * `migrate begin` (the destination of a migration, before `prepare`; the incoming domain
//!   XML on stdin): starts the owner as `prepare` does, so that a destination that cannot
//!   serve the VM fails the migration before anything moves, and records it in
//!   `<run-dir>/<vm>.incoming`; `prepare begin` then takes over that owner (if no QEMU is bound
//!   to it and no device connected yet) instead of refusing a running one. Prints nothing:
//!   libvirt keeps the domain XML unchanged when the hook's output is empty.
//! * `start begin` (libvirt has labelled the domain, QEMU is not running yet): under AppArmor
//!   or SELinux, lets the domain's confined QEMU reach this VM's owner socket, relay sockets and
//!   memory file, and nothing of other VMs' (see [`svirt`]).
//! * `release end`: asks the owner to stop and waits for its process to go; removes the VM's
//!   AppArmor rules. Idempotent. libvirt calls it once QEMU has been killed, also on the source
//!   of a migration once the domain has left (and the owner still waits for every process it
//!   handed the memory to).
//! * Anything else: nothing.
//!
//! Which VMs: those with a config file `<config-dir>/<vm>.toml` (default `/etc/pageless/vms`)
//! or a `<pageless:vm>` element in the domain's `<metadata>`; the file wins. Other domains are
//! left alone: the hook runs for every domain.

use std::io::Read;
use std::path::{Path, PathBuf};

use log::debug;
use thiserror::Error;

mod config;
mod launch;
pub mod numa;
pub mod svirt;

use crate::context::IoError;
use config::{find_config, plan};
pub use config::{OwnerPlan, VhostUser, MAX_TIMEOUT};
pub use launch::unit_name;
use launch::{start, start_incoming, stop};

/// Where per-VM config files live: `<dir>/<vm>.toml`.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/pageless/vms";
/// The XML namespace of pageless's domain metadata.
pub const XML_NAMESPACE: &str = "https://pageless.dev/xmlns/libvirt/1";
/// What a failed `prepare`'s message tells the user to do once the cause is fixed.
pub const RETRY_START: &str = "start the VM again";
/// What a failed `migrate begin`'s message (the migration's destination) tells the user to do:
/// the VM still runs at the source.
pub const RETRY_MIGRATE: &str = "migrate the VM again (it still runs at the source)";
/// libvirt's QEMU driver config, whose `user = "…"` QEMU runs as.
pub const QEMU_CONF: &str = "/etc/libvirt/qemu.conf";

/// What libvirt asked, and where to look.
#[derive(Clone, Debug)]
pub struct HookOptions {
    /// The domain's name (the hook's first argument).
    pub vm: String,
    /// libvirt's operation: only `migrate`, `prepare`, `start` and `release` do anything.
    pub operation: String,
    /// libvirt's sub-operation: `begin` for `prepare`, `end` for `release`.
    pub subop: String,
    /// Directory of the per-VM config files, `<config_dir>/<vm>.toml`.
    pub config_dir: PathBuf,
    /// libvirt's qemu.conf, for the user QEMU runs as.
    pub qemu_conf: PathBuf,
    /// The host config, whose `[pools]` gives NUMA cells their pools by host node
    /// ([`numa::DEFAULT_HOST_CONFIG`]).
    pub host_config: PathBuf,
    /// The `pageless` binary the owner runs (this one).
    pub pageless: PathBuf,
    /// Start owners as systemd units (`/run/systemd/system` exists).
    pub systemd: bool,
    /// libvirt's per-domain AppArmor profiles ([`svirt::APPARMOR_PROFILE_DIR`]).
    pub apparmor_dir: PathBuf,
    /// Where the arguments of `pageless@<vm>.service` go (`<dir>/<vm>.args`), default
    /// [`crate::unit::DEFAULT_UNIT_ARGS_DIR`].
    pub unit_args_dir: PathBuf,
}

/// Why the hook failed. `pageless hook` prints it on stderr and exits 1, so libvirt fails
/// the operation and shows the message (`virsh start`'s error); it says what to fix.
#[derive(Debug, Error)]
pub enum HookError {
    /// Reading the domain XML from stdin failed.
    #[error("cannot read the domain XML from stdin: {0}")]
    Stdin(#[source] std::io::Error),
    /// The VM's name, config file or metadata is invalid.
    #[error("VM {vm:?}: {source_desc}: {why}")]
    Config {
        /// The VM.
        vm: String,
        /// Which config: the file's path, the domain metadata, or the VM's name.
        source_desc: String,
        /// What is wrong.
        why: String,
    },
    /// The domain XML on stdin is not well-formed XML, or its memory size cannot be read.
    #[error("VM {vm:?}: the domain XML on stdin cannot be parsed ({why}): is this hook run by libvirt?")]
    Xml {
        /// The VM.
        vm: String,
        /// The parser's complaint.
        why: String,
    },
    /// No `size` is configured and the domain XML has no `<memory>` or NUMA cells.
    #[error(
        "VM {vm:?}: no memory size: set `size` in its pageless config, or give the domain XML (with <memory>) on stdin"
    )]
    NoSize {
        /// The VM.
        vm: String,
    },
    /// `qemu_user` names no user of this host.
    #[error("VM {vm:?}: {source_desc} sets the QEMU user {user:?}, which does not exist: fix qemu_user, or set allow_uid")]
    NoSuchUser {
        /// The VM.
        vm: String,
        /// Which config sets `qemu_user`.
        source_desc: String,
        /// The user name as configured.
        user: String,
    },
    /// `prepare` (or `migrate begin`): an owner already answers on the VM's socket, e.g. left
    /// over after libvirtd died; libvirt's `release` for the failed start stops it.
    #[error(
        "VM {vm:?} already has a memory owner (pid {pid}, {socket}), a leftover from an earlier run: stop it with `pageless stop --vm {vm}` if it still runs, and {retry}"
    )]
    AlreadyRunning {
        /// The VM.
        vm: String,
        /// What to do then: [`RETRY_START`], or [`RETRY_MIGRATE`] on `migrate begin`.
        retry: &'static str,
        /// The running owner's pid.
        pid: u32,
        /// Its control socket.
        socket: String,
    },
    /// `prepare`: the owner process, `systemctl` or `systemd-run` could not be spawned.
    #[error("VM {vm:?}: cannot start its memory owner ({what}): {source}")]
    Spawn {
        /// The VM.
        vm: String,
        /// What could not be started, e.g. `run /usr/local/bin/pageless`.
        what: String,
        /// The spawn's error.
        #[source]
        source: std::io::Error,
    },
    /// `prepare` (or `migrate begin`): the started owner exited, its unit stopped,
    /// `systemctl start` or `systemd-run` failed, or it did not answer within `start_timeout`
    /// (it was then stopped).
    #[error("the memory owner of VM {vm:?} (pageless serve) could not start: {why}. {log}\nFix {source_desc} and {retry}.")]
    OwnerFailed {
        /// The VM.
        vm: String,
        /// What to do then: [`RETRY_START`], or [`RETRY_MIGRATE`] on `migrate begin`.
        retry: &'static str,
        /// What happened to the owner.
        why: String,
        /// The end of the owner's log since this start (at most 20 lines), or a note that
        /// it is empty.
        log: String,
        /// Which config the owner was started from, for the user to fix.
        source_desc: String,
    },
    /// `start`: the VM's AppArmor rules or SELinux labels could not be put in place; QEMU
    /// does not start confined without them.
    #[error("VM {vm:?}: cannot let its confined QEMU reach its own memory and sockets ({mac}): {why}")]
    Confine {
        /// The VM.
        vm: String,
        /// `AppArmor` or `SELinux`.
        mac: &'static str,
        /// What failed, and what to check.
        why: String,
    },
    /// `prepare` or `migrate`: the owner `migrate begin` started for an incoming migration is
    /// already in use (or no longer fits the domain).
    #[error(
        "VM {vm:?}: the memory owner started for the incoming migration (pid {pid}) cannot be used: {why}; stop it with `pageless stop --vm {vm}` and migrate again"
    )]
    IncomingOwnerUsed {
        /// The VM.
        vm: String,
        /// The owner's pid.
        pid: u32,
        /// What uses it, or how it differs.
        why: String,
    },
    /// Another I/O failure: reading the config file, creating the run directory, opening
    /// the owner's log.
    #[error(transparent)]
    Io(#[from] IoError),
    /// `prepare`: the arguments for `pageless@<vm>.service` could not be written.
    #[error(transparent)]
    Unit(#[from] crate::unit::UnitError),
}

/// Runs the hook. Reads the domain XML from stdin for every operation (libvirt writes it).
pub fn run(options: &HookOptions, stdin: &mut dyn Read) -> Result<(), HookError> {
    let mut xml = String::new();
    stdin.read_to_string(&mut xml).map_err(HookError::Stdin)?;
    let action = match (options.operation.as_str(), options.subop.as_str()) {
        ("migrate", "begin") => Action::Incoming,
        ("prepare", "begin") => Action::Start,
        ("start", "begin") => Action::Confine,
        ("release", "end") => Action::Stop,
        (operation, subop) => {
            debug!("VM {:?}: nothing to do on {operation} {subop}", options.vm);
            return Ok(());
        }
    };
    let Some(plan) =
        owner_plan_with(&options.vm, &options.config_dir, &xml, &options.qemu_conf, &options.host_config)?
    else {
        return Ok(());
    };
    match action {
        Action::Incoming => start_incoming(options, &plan),
        Action::Start => start(options, &plan, RETRY_START).map(drop),
        Action::Confine => svirt::confine(options, &plan, &xml),
        Action::Stop => {
            let stopped = stop(options, &plan);
            svirt::release(options, &plan.vm, &xml)?;
            stopped
        }
    }
}

/// The owner VM `vm` gets from its config file in `config_dir` or the metadata of its domain
/// XML, with defaults from the XML and `qemu_conf`; `None` for a VM pageless does not own.
/// Starts nothing (the hook's config reader, also a fuzz target's entry point). NUMA cells
/// take their pools from the host config at [`numa::DEFAULT_HOST_CONFIG`].
pub fn owner_plan(
    vm: &str,
    config_dir: &Path,
    xml: &str,
    qemu_conf: &Path,
) -> Result<Option<OwnerPlan>, HookError> {
    owner_plan_with(vm, config_dir, xml, qemu_conf, Path::new(numa::DEFAULT_HOST_CONFIG))
}

/// [`owner_plan`] with the host config (`[pools]`) at `host_config`.
pub fn owner_plan_with(
    vm: &str,
    config_dir: &Path,
    xml: &str,
    qemu_conf: &Path,
    host_config: &Path,
) -> Result<Option<OwnerPlan>, HookError> {
    pageless_pool::check_name(vm).map_err(|e| HookError::Config {
        vm: vm.into(),
        source_desc: "the VM's name".into(),
        why: e.to_string(),
    })?;
    let Some(found) = find_config(vm, config_dir, xml)? else {
        debug!("VM {vm:?}: no pageless config and no pageless metadata: not a pageless VM");
        return Ok(None);
    };
    plan(vm, found, xml, qemu_conf, host_config).map(Some)
}

enum Action {
    Incoming,
    Start,
    Confine,
    Stop,
}
