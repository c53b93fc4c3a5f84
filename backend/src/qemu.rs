//! `pageless qemu`: starts QEMU with the owner's memory as the VM's RAM.
//!
//! Fetches the memory fd from the VM's owner, makes it inheritable, rewrites the command line
//! (see [`crate::qemu_args`]) and execs QEMU. QEMU also inherits the control connection, so the
//! owner lists it as a client for as long as it runs. Without a VM name (no `--vm`, no
//! `-name`), e.g. when libvirt probes the emulator's capabilities, QEMU is exec'd unchanged.

use std::convert::Infallible;
use std::os::fd::{IntoRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use log::{info, warn};
use pageless_pool::size::Size;
use pageless_protocol::control::{ControlClient, ControlError};
use thiserror::Error;

use crate::control_socket_path;
use crate::qemu_args::{self, ArgError, OwnerCell, OwnerRam};
use crate::replace_file::replace_file;
use crate::update::record::{qemu_record_path, qmp_socket_path, QemuRecord};

/// What `pageless qemu` was asked to run: see [`run`].
#[derive(Clone, Debug)]
pub struct QemuOptions {
    /// The VM's name (`--vm`); `None` takes it from QEMU's `-name guest=NAME`, and without
    /// that QEMU is exec'd unchanged.
    pub vm: Option<String>,
    /// Where the VM's owner listens: `<run_dir>/<vm>.sock`.
    pub run_dir: PathBuf,
    /// The QEMU binary and its arguments.
    pub command: Vec<String>,
    /// Start QEMU with `-incoming defer` (not recorded): `pageless update restore` loads the
    /// saved device state through the monitor.
    pub incoming_defer: bool,
}

/// Why [`run`] returned instead of becoming QEMU. Nothing was started; the message says what
/// to fix.
#[derive(Debug, Error)]
pub enum QemuError {
    /// [`QemuOptions::command`] is empty.
    #[error("no QEMU command given: use `pageless qemu --vm NAME -- qemu-system-x86_64 ARGS…`")]
    NoCommand,
    /// The VM name is not a valid file name (empty, starts with `.`, has `/` or a control
    /// character, or is over 200 bytes); the field says which.
    #[error("VM name: {0}")]
    BadName(String),
    /// Connecting to the VM's owner, HELLO or GET_MEMORY failed: no owner serves the VM (start
    /// `pageless serve`), it refused this process (see the owner's log), or it is stopping.
    #[error("VM {vm:?}: {source}")]
    Owner {
        /// The VM.
        vm: String,
        /// What the control client reported.
        source: ControlError,
    },
    /// The owner answered GET_MEMORY without a region; the field is the VM name.
    #[error("the owner of VM {0:?} sent no memory region")]
    NoMemory(String),
    /// QEMU's command line cannot be rewritten to use the owner's memory: see [`ArgError`].
    #[error("VM {vm:?}: {source}")]
    Args {
        /// The VM.
        vm: String,
        /// What is wrong with the command line.
        source: ArgError,
    },
    /// Clearing `FD_CLOEXEC` on a memory fd or the control connection failed.
    #[error("make fd {fd} inheritable: {source}")]
    Inherit {
        /// The fd whose close-on-exec flag could not be cleared.
        fd: RawFd,
        /// fcntl's error.
        source: nix::Error,
    },
    /// `exec` of the QEMU binary failed (not found, not executable, …).
    #[error("cannot run {program}: {source}")]
    Exec {
        /// The QEMU binary as given.
        program: String,
        /// exec's error.
        source: std::io::Error,
    },
}

/// Replaces this process with QEMU; returns only on failure.
pub fn run(options: QemuOptions) -> Result<Infallible, QemuError> {
    let (program, args) = options.command.split_first().ok_or(QemuError::NoCommand)?;
    let Some(vm) = options.vm.clone().or_else(|| qemu_args::guest_name(args)) else {
        info!("no VM name: running {program} unchanged");
        return Err(exec(program, args));
    };
    pageless_pool::check_name(&vm).map_err(|e| QemuError::BadName(e.to_string()))?;
    let socket = control_socket_path(&options.run_dir, &vm);
    let owner_error = |source| QemuError::Owner { vm: vm.clone(), source };
    let client = ControlClient::connect(&socket, "qemu").map_err(owner_error)?;
    let owner_pid = client.owner_pid();
    let regions = client.get_memory().map_err(owner_error)?;
    if regions.is_empty() {
        return Err(QemuError::NoMemory(vm.clone()));
    }
    let control_fd = client.into_stream().into_raw_fd();
    inheritable(control_fd)?;
    let mut cells = Vec::with_capacity(regions.len());
    for region in regions {
        let (size, page_size) = (region.region.memory_size, region.page_size);
        let memory_fd = region.fd.into_raw_fd();
        inheritable(memory_fd)?;
        info!(
            "VM {vm:?}: cell {} RAM is {} in {} pages from the owner (pid {owner_pid}), fd {memory_fd}",
            region.cell,
            Size(size),
            Size(page_size)
        );
        cells.push(OwnerCell {
            id: region.cell,
            ram: OwnerRam { mem_path: format!("/proc/self/fd/{memory_fd}"), size, page_size },
        });
    }
    // One region: the VM's whole memory (a `--size` owner, or one cell), which any number of
    // RAM backends share at consecutive offsets. Several: one cell each, by NUMA node id.
    let args = match cells.as_slice() {
        [one] => qemu_args::rewrite(args, &one.ram),
        cells => qemu_args::rewrite_cells(args, cells),
    }
    .map_err(|source| QemuError::Args { vm: vm.clone(), source })?;
    let mut args = args;
    add_update_monitor(&vm, &options, program, &mut args);
    if options.incoming_defer {
        args.extend(["-incoming".to_string(), "defer".to_string()]);
    }
    Err(exec(program, &args))
}

/// Gives QEMU a QMP monitor on `<run-dir>/<vm>.qmp` and records how it runs in
/// `<run-dir>/<vm>.qemu.json`, for `pageless update`. Skipped, with a log line, where this
/// process cannot write the run directory (libvirt's QEMU user under `/run/pageless`): such a
/// QEMU runs as before, without live update.
fn add_update_monitor(vm: &str, options: &QemuOptions, program: &str, args: &mut Vec<String>) {
    use nix::unistd::{access, AccessFlags};
    let run_dir = &options.run_dir;
    if options.command[1..].iter().any(|a| a.contains("id=charmonitor")) {
        info!("VM {vm:?}: QEMU runs under libvirt (it has libvirt's monitor): no live-update monitor");
        return;
    }
    if let Err(e) = access(run_dir, AccessFlags::W_OK | AccessFlags::X_OK) {
        info!(
            "VM {vm:?}: no live-update monitor ({} is not writable: {e}); `pageless update` cannot save this VM",
            run_dir.display()
        );
        return;
    }
    let qmp = qmp_socket_path(run_dir, vm);
    let record = QemuRecord {
        vm: vm.to_string(),
        run_dir: std::path::absolute(run_dir).unwrap_or_else(|_| run_dir.clone()),
        program: program.to_string(),
        args: options.command[1..].to_vec(),
        cwd: std::env::current_dir().unwrap_or_else(|_| "/".into()),
        qmp: std::path::absolute(&qmp).unwrap_or_else(|_| qmp.clone()),
        pid: std::process::id(),
    };
    let path = qemu_record_path(run_dir, vm);
    let staging = run_dir.join(format!(".{vm}.qemu.json.new"));
    let json = serde_json::to_vec_pretty(&record).expect("a record serializes");
    if let Err(e) = replace_file(&path, &staging, &json, 0o600) {
        warn!("VM {vm:?}: cannot write {}: {e}; `pageless update` cannot save this VM", path.display());
        return;
    }
    // QEMU unlinks a stale socket at that path before it binds.
    args.extend([
        "-chardev".to_string(),
        format!(
            "socket,id=pageless-qmp,path={},server=on,wait=off",
            record.qmp.display().to_string().replace(',', ",,")
        ),
        "-mon".to_string(),
        "chardev=pageless-qmp,mode=control".to_string(),
    ]);
    info!("VM {vm:?}: live-update monitor on {} (recorded in {})", record.qmp.display(), path.display());
}

fn inheritable(fd: RawFd) -> Result<(), QemuError> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))
        .map(drop)
        .map_err(|source| QemuError::Inherit { fd, source })
}

fn exec(program: &str, args: &[String]) -> QemuError {
    let source = Command::new(program).args(args).exec();
    QemuError::Exec { program: program.into(), source }
}
