//! `pageless update save` / `pageless update restore`: a VM across a host kernel update
//! (kexec), with QEMU's `cpr-reboot` migration mode.
//!
//! The guest's RAM stays where it is, in the owner's memory file (a directory pool whose file
//! survives the reboot: pagelessfs with persistent files, or tmpfs when only QEMU and pageless
//! are updated). `save` pauses the guest and has QEMU write only its device state to a file
//! (`x-ignore-shared`: RAM in a `share=on` memory-backend-file is not copied). After the reboot
//! `restore` starts the owner again with its old arguments (it re-attaches the memory file by
//! name), then QEMU through `pageless qemu` with its old arguments and `-incoming defer`, loads
//! the device state and lets the guest continue where it stopped.
//!
//! `pageless qemu` makes this possible: it gives QEMU a QMP monitor on `<run-dir>/<vm>.qmp` and
//! records QEMU's command line in `<run-dir>/<vm>.qemu.json` ([`record`]).

pub mod record;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pageless_pool::size::Size;
use pageless_protocol::control::{ControlClient, ControlError, VmStatus};
use serde_json::{json, Value};
use thiserror::Error;

use crate::context::{Context, IoError};
use crate::control_socket_path;
use crate::peer::process_alive;
use crate::qmp::{Qmp, QmpError};
use crate::replace_file::replace_file;
use record::{
    fnv1a64, qemu_record_path, vm_state_dir, OwnerRecord, QemuRecord, SavedCell, SavedState, RESTORED_FILE,
    SAVED_FILE, SAVED_FORMAT, STATE_FILE,
};

/// Where saved states go unless `--state-dir` says otherwise: on the root filesystem, which
/// survives the reboot (`/run` is a tmpfs on most hosts and does not).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pageless/update";

/// How long QEMU may take to write or load the device state.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a restarted owner or QEMU may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Why `pageless update` failed. Each message says what to do.
#[derive(Debug, Error)]
pub enum UpdateError {
    /// The VM name is not a valid file name.
    #[error("VM name: {0}")]
    BadName(String),
    /// No owner answers for the VM.
    #[error("VM {vm:?} not found: no owner answers on {socket} ({source}); check the name and --run-dir")]
    NoOwner {
        /// The VM.
        vm: String,
        /// The owner's socket.
        socket: String,
        /// The control client's error.
        source: ControlError,
    },
    /// Talking to the owner failed after connecting.
    #[error("VM {vm:?}: the owner: {source}")]
    Owner {
        /// The VM.
        vm: String,
        /// The control client's error.
        source: ControlError,
    },
    /// The VM's memory would not survive the reboot (memfd) or is not what QEMU saves in place.
    #[error("VM {vm:?}: refused, nothing was paused: {why}")]
    Refused {
        /// The VM.
        vm: String,
        /// Why, and what to do.
        why: String,
    },
    /// The VM's QEMU has no live-update monitor: it was not started by `pageless qemu`.
    #[error("VM {vm:?}: refused, nothing was paused: its QEMU has no live-update monitor: {why}")]
    NoMonitor {
        /// The VM.
        vm: String,
        /// What is missing.
        why: String,
    },
    /// QEMU refused a monitor command or the monitor failed.
    #[error("VM {vm:?}: {source}")]
    Qmp {
        /// The VM.
        vm: String,
        /// The monitor's error.
        source: QmpError,
    },
    /// Saving the device state failed; the guest runs on (or stays paused as it was).
    #[error("VM {vm:?}: saving the device state failed: {why}; {resumed}")]
    SaveFailed {
        /// The VM.
        vm: String,
        /// QEMU's reason.
        why: String,
        /// What became of the guest.
        resumed: String,
    },
    /// No saved state for the VM.
    #[error("VM {vm:?}: no saved state in {dir} ({why}): run `pageless update save --vm {vm}` before the reboot, or check --state-dir")]
    NoState {
        /// The VM.
        vm: String,
        /// The VM's state directory.
        dir: String,
        /// What is missing.
        why: String,
    },
    /// The saved state cannot be used; nothing was started.
    #[error("VM {vm:?}: the saved state in {dir} cannot be restored, nothing was started: {why}")]
    BadState {
        /// The VM.
        vm: String,
        /// The VM's state directory.
        dir: String,
        /// Why.
        why: String,
    },
    /// The VM still runs (or its owner serves a QEMU): restore is for after the reboot.
    #[error("VM {vm:?}: {why}")]
    StillRunning {
        /// The VM.
        vm: String,
        /// What runs.
        why: String,
    },
    /// Restarting the owner or QEMU, or loading the state, failed; what was started was stopped.
    #[error("VM {vm:?}: restore failed: {why}")]
    RestoreFailed {
        /// The VM.
        vm: String,
        /// Why, with the log's end.
        why: String,
    },
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// What `pageless update save` is asked to do.
#[derive(Clone, Debug)]
pub struct SaveOptions {
    /// The VM.
    pub vm: String,
    /// The owner's run directory.
    pub run_dir: PathBuf,
    /// Where the state goes: `<state_dir>/<vm>/`.
    pub state_dir: PathBuf,
}

/// What `pageless update restore` is asked to do.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The VM.
    pub vm: String,
    /// The owner's run directory.
    pub run_dir: PathBuf,
    /// Where the state is: `<state_dir>/<vm>/`.
    pub state_dir: PathBuf,
    /// QEMU's output (its stdout and stderr); default `<run-dir>/<vm>.qemu.log`.
    pub qemu_log: Option<PathBuf>,
}

/// What a save did.
#[derive(Clone, Debug)]
pub struct SaveReport {
    /// The saved state's description.
    pub saved: SavedState,
    /// Where it is.
    pub dir: PathBuf,
    /// How long QEMU took from the `migrate` command to completion.
    pub took: Duration,
}

fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Prints a progress line (stdout; a closed stdout does not stop the update).
fn say(out: &mut dyn Write, line: &str) {
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The memory files of the VM as its owner reports them, refusing memory that does not survive.
fn memory_files(vm: &str, status: &VmStatus) -> Result<Vec<SavedCell>, UpdateError> {
    let refused = |why: String| UpdateError::Refused { vm: vm.into(), why };
    let cells: Vec<(u32, String, String, Option<String>, u64)> = if status.cells.is_empty() {
        vec![(0, status.pool.clone(), status.memory.clone(), status.path.clone(), status.size)]
    } else {
        status
            .cells
            .iter()
            .map(|c| (c.id, c.pool.clone(), c.memory.clone(), c.path.clone(), c.size))
            .collect()
    };
    cells
        .into_iter()
        .map(|(id, pool, memory, path, size)| {
            let Some(path) = path else {
                return Err(refused(format!(
                    "its memory (cell {id}) is on pool {pool} ({memory}), which has no file and is gone once its owner exits, so it cannot survive a reboot: serve the VM from a directory pool (pagelessfs:DIR, or dir:DIR for updates without a reboot)"
                )));
            };
            Ok(SavedCell { id, pool, memory, path: path.into(), size })
        })
        .collect()
}

/// The owner's `serve` arguments and directory, from /proc (through the unit's args file for
/// `pageless serve-unit`).
fn owner_record(vm: &str, pid: u32) -> Result<OwnerRecord, UpdateError> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .with_context(|| format!("read the owner's command line /proc/{pid}/cmdline"))?;
    let mut args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if !args.is_empty() {
        args.remove(0);
    }
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
        .with_context(|| format!("read the owner's directory /proc/{pid}/cwd"))?;
    if args.first().map(String::as_str) == Some("serve-unit") {
        let dir = args
            .iter()
            .position(|a| a == "--args-dir")
            .and_then(|i| args.get(i + 1))
            .map_or(PathBuf::from(crate::unit::DEFAULT_UNIT_ARGS_DIR), PathBuf::from);
        let serve = crate::unit::read_args(&dir, vm).map_err(|e| UpdateError::Refused {
            vm: vm.into(),
            why: format!("its owner runs as a systemd unit whose arguments cannot be read: {e}"),
        })?;
        return Ok(OwnerRecord { args: serve, cwd });
    }
    if args.first().map(String::as_str) != Some("serve") {
        return Err(UpdateError::Refused {
            vm: vm.into(),
            why: format!("its owner (pid {pid}) is not a `pageless serve` process: {args:?}"),
        });
    }
    Ok(OwnerRecord { args, cwd })
}

/// Reads `<run-dir>/<vm>.qemu.json` and checks that it describes the QEMU the owner serves.
fn qemu_record(options: &SaveOptions, status: &VmStatus) -> Result<(QemuRecord, u32), UpdateError> {
    let vm = &options.vm;
    let path = qemu_record_path(&options.run_dir, vm);
    let no_monitor = |why: String| UpdateError::NoMonitor { vm: vm.clone(), why };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        no_monitor(format!(
            "{} cannot be read ({e}): start QEMU with `pageless qemu --vm {vm} --run-dir {} -- …`, which adds the monitor and records the command line (not available under libvirt)",
            path.display(),
            options.run_dir.display()
        ))
    })?;
    let record: QemuRecord = serde_json::from_str(&text)
        .map_err(|e| no_monitor(format!("{} is not readable: {e}", path.display())))?;
    if record.vm != *vm {
        return Err(no_monitor(format!("{} is for VM {:?}", path.display(), record.vm)));
    }
    let client = status.clients.iter().find(|c| c.pid == record.pid && c.role == "qemu");
    if client.is_none() || !process_alive(record.pid) {
        return Err(no_monitor(format!(
            "{} names QEMU pid {}, which is not the QEMU the owner serves now (was the VM's QEMU started without `pageless qemu`, or has it exited?)",
            path.display(),
            record.pid
        )));
    }
    // Restore runs what the record says: only QEMU's own user may have written it.
    let qemu_uid = client.map_or(u32::MAX, |c| c.uid);
    let meta = std::fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
    if !meta.is_file() || meta.uid() != qemu_uid || meta.mode() & 0o022 != 0 {
        return Err(no_monitor(format!(
            "{} is not a file of QEMU's user (uid {qemu_uid}) that only it may write (uid {}, mode {:o}): it was not written by the VM's `pageless qemu`",
            path.display(),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    Ok((record, qemu_uid))
}

/// The user a process runs as (the owner of its /proc directory: its effective uid).
fn process_uid(pid: u32) -> Result<u32, IoError> {
    Ok(std::fs::metadata(format!("/proc/{pid}")).with_context(|| format!("stat /proc/{pid}"))?.uid())
}

/// (dev, inode) of the file `/proc/<pid>/fd/<fd>` that a `/proc/self/fd/N` mem-path names.
fn fd_identity(pid: u32, mem_path: &str) -> Option<(u64, u64)> {
    let fd: u32 = mem_path.strip_prefix("/proc/self/fd/")?.parse().ok()?;
    let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Checks that every RAM backend of QEMU is `share=on` on one of the owner's files: only those
/// stay in place; any other RAM would be copied into the state file (and lost with the host's
/// memory if it is anonymous). Returns the RAM backends' total size.
fn check_ram(vm: &str, qmp: &mut Qmp, record: &QemuRecord, status: &VmStatus) -> Result<u64, UpdateError> {
    let qmp_error = |source| UpdateError::Qmp { vm: vm.into(), source };
    let refused = |why: String| UpdateError::Refused { vm: vm.into(), why };
    let owner_files: Vec<(u64, u64)> = if status.cells.is_empty() {
        vec![(status.dev, status.inode)]
    } else {
        status.cells.iter().map(|c| (c.dev, c.inode)).collect()
    };
    let memdevs = qmp.execute("query-memdev", Value::Null).map_err(qmp_error)?;
    let memdevs = memdevs.as_array().cloned().unwrap_or_default();
    if memdevs.is_empty() {
        return Err(refused("QEMU reports no memory backend: its RAM is not the owner's memory".into()));
    }
    let mut total = 0u64;
    for memdev in &memdevs {
        let id = memdev["id"].as_str().unwrap_or("(no id)").to_string();
        let size = memdev["size"].as_u64().unwrap_or(0);
        if memdev["share"].as_bool() != Some(true) {
            return Err(refused(format!(
                "QEMU's memory backend {id} ({}) is not share=on: QEMU would copy it into the state file",
                Size(size)
            )));
        }
        let mem_path = qmp
            .execute("qom-get", json!({"path": format!("/objects/{id}"), "property": "mem-path"}))
            .ok()
            .and_then(|v| v.as_str().map(String::from));
        let identity = mem_path.as_deref().and_then(|p| fd_identity(record.pid, p));
        if !identity.is_some_and(|i| owner_files.contains(&i)) {
            return Err(refused(format!(
                "QEMU's memory backend {id} ({}, mem-path {}) is not the owner's memory file: QEMU would copy it into the state file, and it would not survive the reboot",
                Size(size),
                mem_path.as_deref().unwrap_or("none")
            )));
        }
        total = total.saturating_add(size);
    }
    if total != status.size {
        return Err(refused(format!(
            "QEMU's memory backends add up to {} but the owner serves {}",
            Size(total),
            Size(status.size)
        )));
    }
    Ok(total)
}

/// The VMs with an owner socket under `run_dir` (`<vm>.sock`), sorted.
pub fn served_vms(run_dir: &Path) -> Result<Vec<String>, UpdateError> {
    names_in(run_dir, |entry| entry.file_name().to_str()?.strip_suffix(".sock").map(String::from))
}

/// The VMs with a saved state under `state_dir` (`<vm>/update.json`), sorted.
pub fn saved_vms(state_dir: &Path) -> Result<Vec<String>, UpdateError> {
    names_in(state_dir, |entry| {
        let name = entry.file_name().to_str()?.to_string();
        entry.path().join(SAVED_FILE).is_file().then_some(name)
    })
}

fn names_in(
    dir: &Path,
    name: impl Fn(&std::fs::DirEntry) -> Option<String>,
) -> Result<Vec<String>, UpdateError> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))?;
    let mut names: Vec<String> = entries.filter_map(Result::ok).filter_map(|e| name(&e)).collect();
    names.sort();
    if names.is_empty() {
        return Err(IoError::new(format!("no VM in {}", dir.display()), std::io::ErrorKind::NotFound).into());
    }
    Ok(names)
}

/// `query-migrate` until it completes or fails; prints progress every second.
fn wait_for_migration(
    qmp: &mut Qmp,
    out: &mut dyn Write,
    what: &str,
) -> Result<Result<Value, String>, QmpError> {
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let info = qmp.execute("query-migrate", Value::Null)?;
        match info["status"].as_str().unwrap_or("") {
            "completed" => return Ok(Ok(info)),
            "failed" | "cancelled" => {
                let why = info["error-desc"].as_str().unwrap_or("(QEMU gave no reason)").to_string();
                return Ok(Err(why));
            }
            status => {
                if started.elapsed() > MIGRATION_TIMEOUT {
                    return Ok(Err(format!(
                        "{what} took longer than {} s (status {status})",
                        MIGRATION_TIMEOUT.as_secs()
                    )));
                }
                if last_report.elapsed() >= Duration::from_secs(1) {
                    let done = info["ram"]["transferred"].as_u64().unwrap_or(0);
                    say(out, &format!("  {what}: {status}, {} so far", Size(done)));
                    last_report = Instant::now();
                }
            }
        }
        // The guest is paused meanwhile: poll often.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The QEMU version of `query-version`: `major.minor.micro`.
fn version_of(value: &Value) -> String {
    let q = &value["qemu"];
    format!("{}.{}.{}", q["major"], q["minor"], q["micro"])
}

/// `pageless update save`: pauses the VM and writes its device state; the guest's RAM stays in
/// the owner's file. QEMU stays paused (`postmigrate`) and the owner keeps the memory until the
/// reboot. On failure the guest runs on as it did.
pub fn save(options: &SaveOptions, out: &mut dyn Write) -> Result<SaveReport, UpdateError> {
    let vm = &options.vm;
    pageless_pool::check_name(vm).map_err(|e| UpdateError::BadName(e.to_string()))?;
    let socket = control_socket_path(&options.run_dir, vm);
    let client = ControlClient::connect(&socket, "update").map_err(|source| UpdateError::NoOwner {
        vm: vm.clone(),
        socket: socket.display().to_string(),
        source,
    })?;
    let status = client.status_summary().map_err(|source| UpdateError::Owner { vm: vm.clone(), source })?;
    drop(client);
    let cells = memory_files(vm, &status)?;
    for cell in &cells {
        if cell.memory != "pagelessfs" {
            say(
                out,
                &format!(
                    "note: VM {vm:?}'s memory {} is on {}, which a kexec or reboot empties: restore works only without a reboot (QEMU or pageless updates); persistent pagelessfs keeps it across kexec",
                    cell.path.display(),
                    cell.memory
                ),
            );
        }
    }
    let mut owner = owner_record(vm, status.pid)?;
    // Its run directory may have come from $PAGELESS_RUN_DIR: name it, as found.
    if !owner.args.iter().any(|a| a == "--run-dir" || a.starts_with("--run-dir=")) {
        let run_dir = std::path::absolute(&options.run_dir).unwrap_or_else(|_| options.run_dir.clone());
        owner.args.extend(["--run-dir".to_string(), run_dir.display().to_string()]);
    }
    let owner_uid = process_uid(status.pid)?;
    let (record, qemu_uid) = qemu_record(options, &status)?;
    let mut qmp = Qmp::connect(&record.qmp)
        .map_err(|e| UpdateError::NoMonitor { vm: vm.clone(), why: e.to_string() })?;
    let qmp_error = |source| UpdateError::Qmp { vm: vm.clone(), source };
    let version = version_of(&qmp.execute("query-version", Value::Null).map_err(qmp_error)?);
    let run_state = qmp.execute("query-status", Value::Null).map_err(qmp_error)?;
    let state_name = run_state["status"].as_str().unwrap_or("").to_string();
    let was_running = run_state["running"].as_bool() == Some(true);
    if !matches!(state_name.as_str(), "running" | "paused" | "suspended") {
        return Err(UpdateError::Refused {
            vm: vm.clone(),
            why: format!("QEMU is {state_name:?}, not running or paused (saved already?)"),
        });
    }
    let ram = check_ram(vm, &mut qmp, &record, &status)?;

    let dir = vm_state_dir(&options.state_dir, vm);
    std::fs::create_dir_all(&dir).with_context(|| format!("create the state directory {}", dir.display()))?;
    set_mode(&dir, 0o700)?;
    let partial = dir.join(format!("{STATE_FILE}.partial"));
    let _ = std::fs::remove_file(&partial);
    say(
        out,
        &format!(
            "VM {vm:?}: pausing QEMU pid {} ({} of RAM in place in {}) and saving its device state to {}",
            record.pid,
            Size(ram),
            cells.iter().map(|c| c.path.display().to_string()).collect::<Vec<_>>().join(", "),
            dir.display()
        ),
    );
    qmp.execute("migrate-set-parameters", json!({"mode": "cpr-reboot"})).map_err(qmp_error)?;
    qmp.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]}),
    )
    .map_err(qmp_error)?;
    let started = Instant::now();
    let uri = format!("file:{}", partial.display());
    let migrated = match qmp.execute("migrate", json!({"uri": uri})) {
        Ok(_) => wait_for_migration(&mut qmp, out, "saving").map_err(qmp_error)?,
        Err(QmpError::Command { desc, .. }) => Err(desc),
        Err(e) => return Err(qmp_error(e)),
    };
    let took = started.elapsed();
    if let Err(why) = migrated {
        let resumed = resume_after_failed_save(&mut qmp, was_running);
        let _ = std::fs::remove_file(&partial);
        return Err(UpdateError::SaveFailed { vm: vm.clone(), why, resumed });
    }
    let paused_at = qmp.last_event_time("STOP");
    let finish = || -> Result<SavedState, UpdateError> {
        let file = File::open(&partial).with_context(|| format!("open {}", partial.display()))?;
        file.sync_all().with_context(|| format!("sync {}", partial.display()))?;
        let state_size = file.metadata().with_context(|| format!("stat {}", partial.display()))?.len();
        let state_hash = fnv1a64(&file).with_context(|| format!("read {}", partial.display()))?;
        std::fs::rename(&partial, dir.join(STATE_FILE))
            .with_context(|| format!("rename {}", partial.display()))?;
        let saved = SavedState {
            format: SAVED_FORMAT,
            vm: vm.clone(),
            saved_at: now_unix() as u64,
            pageless_version: env!("CARGO_PKG_VERSION").into(),
            qemu_version: version.clone(),
            qemu: record.clone(),
            owner: owner.clone(),
            cells: cells.clone(),
            ram_size: ram,
            state_size,
            state_hash,
            was_running,
            paused_at,
            qemu_uid,
            owner_uid,
        };
        let json = serde_json::to_vec_pretty(&saved).expect("the saved state serializes");
        replace_file(&dir.join(SAVED_FILE), &dir.join(format!(".{SAVED_FILE}.new")), &json, 0o600)
            .with_context(|| format!("write {}", dir.join(SAVED_FILE).display()))?;
        let _ = std::fs::remove_file(dir.join(RESTORED_FILE));
        File::open(&dir).and_then(|d| d.sync_all()).with_context(|| format!("sync {}", dir.display()))?;
        Ok(saved)
    };
    let saved = match finish() {
        Ok(saved) => saved,
        Err(e) => {
            let resumed = resume_after_failed_save(&mut qmp, was_running);
            let _ = std::fs::remove_file(&partial);
            let _ = std::fs::remove_file(dir.join(STATE_FILE));
            return Err(UpdateError::SaveFailed { vm: vm.clone(), why: e.to_string(), resumed });
        }
    };
    // Leave the monitor as an ordinary migration would find it.
    let _ = qmp.execute("migrate-set-parameters", json!({"mode": "normal"}));
    say(
        out,
        &format!(
            "VM {vm:?}: saved {} bytes of device state for {} bytes of RAM ({:.3}% of RAM) in {:.3} s{}",
            saved.state_size,
            saved.ram_size,
            saved.state_size as f64 * 100.0 / saved.ram_size.max(1) as f64,
            took.as_secs_f64(),
            paused_at.map_or(String::new(), |t| format!("; paused at {t:.6}")),
        ),
    );
    say(
        out,
        &format!(
            "VM {vm:?}: QEMU pid {} stays paused, the owner pid {} keeps the memory; after the reboot (and after restarting its vhost-user device backends) run: pageless update restore --vm {vm} --run-dir {} --state-dir {}",
            record.pid,
            status.pid,
            options.run_dir.display(),
            options.state_dir.display()
        ),
    );
    Ok(SaveReport { saved, dir, took })
}

/// After a failed save: makes the guest run again if it ran before. Returns what happened.
fn resume_after_failed_save(qmp: &mut Qmp, was_running: bool) -> String {
    let _ = qmp.execute("migrate-cancel", Value::Null);
    let _ = qmp.execute("migrate-set-parameters", json!({"mode": "normal"}));
    if !was_running {
        return "the guest stays paused, as it was".into();
    }
    // QEMU restarts a guest whose migration failed; make sure of it.
    for _ in 0..200 {
        match qmp.execute("query-status", Value::Null) {
            Ok(s) if s["running"].as_bool() == Some(true) => return "the guest runs on".into(),
            Ok(s) if s["status"] == "finish-migrate" => std::thread::sleep(Duration::from_millis(10)),
            Ok(_) => {
                return match qmp.execute("cont", Value::Null) {
                    Ok(_) => "the guest was resumed (cont)".into(),
                    Err(e) => format!("resuming the guest failed ({e}): resume it by hand (QMP `cont`)"),
                }
            }
            Err(e) => return format!("cannot ask QEMU whether the guest runs ({e}): check it by hand"),
        }
    }
    "the guest is still not running: resume it by hand (QMP `cont`)".into()
}

fn set_mode(path: &Path, mode: u32) -> Result<(), IoError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Reads and checks `<state-dir>/<vm>/update.json` and its state file.
pub fn load_saved(state_dir: &Path, vm: &str) -> Result<SavedState, UpdateError> {
    let dir = vm_state_dir(state_dir, vm);
    let bad = |why: String| UpdateError::BadState { vm: vm.into(), dir: dir.display().to_string(), why };
    let path = dir.join(SAVED_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            let why = if dir.join(RESTORED_FILE).exists() {
                format!(
                    "{} is missing: this state was restored already and cannot be loaded twice",
                    path.display()
                )
            } else {
                format!("{}: {e}", path.display())
            };
            return Err(UpdateError::NoState { vm: vm.into(), dir: dir.display().to_string(), why });
        }
    };
    // Restore runs the command lines in it: only this user may have written it.
    let euid = nix::unistd::geteuid().as_raw();
    for file in [&dir, &path] {
        let meta =
            std::fs::symlink_metadata(file).map_err(|e| bad(format!("stat {}: {e}", file.display())))?;
        if meta.uid() != euid || meta.mode() & 0o022 != 0 {
            return Err(bad(format!(
                "{} belongs to uid {} with mode {:o}: only this user (uid {euid}) may own and write it",
                file.display(),
                meta.uid(),
                meta.mode() & 0o7777
            )));
        }
    }
    let saved: SavedState =
        serde_json::from_str(&text).map_err(|e| bad(format!("{} is corrupt: {e}", path.display())))?;
    if saved.format != SAVED_FORMAT {
        return Err(bad(format!("format {} (this pageless reads format {SAVED_FORMAT})", saved.format)));
    }
    if saved.vm != vm || saved.qemu.vm != vm {
        return Err(bad(format!("it was saved for VM {:?}, not {vm:?}", saved.vm)));
    }
    let state = dir.join(STATE_FILE);
    let file = File::open(&state).map_err(|e| bad(format!("the state file {}: {e}", state.display())))?;
    let size = file.metadata().map_err(|e| bad(format!("stat {}: {e}", state.display())))?.len();
    let hash = fnv1a64(&file).map_err(|e| bad(format!("read {}: {e}", state.display())))?;
    if size != saved.state_size || hash != saved.state_hash {
        return Err(bad(format!(
            "the state file {} changed since the save ({size} bytes, hash {hash}; saved: {} bytes, hash {}): it is corrupt",
            state.display(),
            saved.state_size,
            saved.state_hash
        )));
    }
    Ok(saved)
}

/// A process started detached: its own session, stdin /dev/null, output appended to `log`.
fn spawn_detached(program: &Path, args: &[String], cwd: &Path, log: &Path) -> Result<(Child, u64), IoError> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(log)
        .with_context(|| format!("open the log {}", log.display()))?;
    let start = file.seek(SeekFrom::End(0)).with_context(|| format!("seek {}", log.display()))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(file.try_clone().with_context(|| format!("dup the log {}", log.display()))?)
        .stderr(file);
    crate::detach::in_own_session(&mut command);
    let child = command.spawn().with_context(|| format!("run {}", program.display()))?;
    Ok((child, start))
}

/// The last lines of `log` from byte `start` on, indented.
fn log_tail(log: &Path, start: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(log) {
        let _ = file.seek(SeekFrom::Start(start));
        let _ = file.take(1 << 20).read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return format!("its log {} is empty", log.display());
    }
    format!(
        "the end of its log {}:\n    {}",
        log.display(),
        lines[lines.len().saturating_sub(15)..].join("\n    ")
    )
}

/// What restore started, stopped again if the restore fails.
#[derive(Default)]
struct Started {
    owner: Option<Child>,
    qemu: Option<Child>,
}

impl Started {
    fn undo(&mut self, vm: &str, run_dir: &Path) {
        if let Some(mut qemu) = self.qemu.take() {
            let _ = qemu.kill();
            let _ = qemu.wait();
        }
        if let Some(mut owner) = self.owner.take() {
            // A clean stop: the owner keeps a directory pool's file for the next try.
            let _ =
                ControlClient::connect(&control_socket_path(run_dir, vm), "update").and_then(|c| c.stop());
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(owner.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = owner.kill();
            let _ = owner.wait();
        }
    }
}

/// `pageless update restore`: starts the owner (re-attaching the memory files) and QEMU again
/// and loads the saved device state; the guest continues where it stopped. Everything is
/// checked before anything starts; if a later step fails, what was started is stopped again
/// and the state is kept.
pub fn restore(options: &RestoreOptions, out: &mut dyn Write) -> Result<(), UpdateError> {
    let vm = &options.vm;
    pageless_pool::check_name(vm).map_err(|e| UpdateError::BadName(e.to_string()))?;
    let saved = load_saved(&options.state_dir, vm)?;
    let dir = vm_state_dir(&options.state_dir, vm);
    let bad = |why: String| UpdateError::BadState { vm: vm.clone(), dir: dir.display().to_string(), why };
    let run_dir = &saved.qemu.run_dir;
    if std::path::absolute(&options.run_dir).ok().as_ref() != Some(run_dir) {
        return Err(bad(format!(
            "it was saved from run directory {}, not {}: pass --run-dir {}",
            run_dir.display(),
            options.run_dir.display(),
            run_dir.display()
        )));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if saved.qemu_uid != euid || saved.owner_uid != euid {
        return Err(bad(format!(
            "QEMU ran as uid {} and its owner as uid {}: restore runs them as this user (uid {euid}) only; run it as their user",
            saved.qemu_uid, saved.owner_uid
        )));
    }
    for cell in &saved.cells {
        match std::fs::metadata(&cell.path) {
            Ok(meta) if meta.len() == cell.size => {}
            Ok(meta) => {
                return Err(bad(format!(
                    "the guest's memory file {} is {} bytes, not {}: it is not the saved guest's memory",
                    cell.path.display(),
                    meta.len(),
                    cell.size
                )))
            }
            Err(e) => {
                return Err(bad(format!(
                    "the guest's memory file {} is gone ({e}): its RAM did not survive the reboot (a {} pool; only persistent pagelessfs keeps files across kexec)",
                    cell.path.display(),
                    cell.memory
                )))
            }
        }
    }
    let socket = control_socket_path(run_dir, vm);
    let pageless = std::env::current_exe().context("find the pageless binary")?;
    let mut started = Started::default();
    let begun = Instant::now();
    let mut owner_up = Duration::ZERO;
    let result = (|| -> Result<(u32, u32, Qmp), UpdateError> {
        let owner_pid = match ControlClient::connect(&socket, "update") {
            Ok(client) => {
                let status = client
                    .status_summary()
                    .map_err(|source| UpdateError::Owner { vm: vm.clone(), source })?;
                if let Some(qemu) = status.clients.iter().find(|c| c.role == "qemu" && process_alive(c.pid)) {
                    return Err(UpdateError::StillRunning {
                        vm: vm.clone(),
                        why: format!(
                            "its QEMU (pid {}) still runs on owner pid {}: restore is for after the reboot (to call the update off, resume the guest with QMP `cont` on {})",
                            qemu.pid,
                            status.pid,
                            saved.qemu.qmp.display()
                        ),
                    });
                }
                check_reattached(vm, &saved, &status)?;
                say(out, &format!("VM {vm:?}: its owner (pid {}) runs already; using it", status.pid));
                status.pid
            }
            Err(_) => start_owner(vm, &saved, &pageless, &socket, &mut started, out)?,
        };
        let qemu_log = options.qemu_log.clone().unwrap_or_else(|| run_dir.join(format!("{vm}.qemu.log")));
        let qmp_path = &saved.qemu.qmp;
        let _ = std::fs::remove_file(qmp_path);
        let mut args = vec![
            "qemu".to_string(),
            "--vm".into(),
            vm.clone(),
            "--run-dir".into(),
            run_dir.display().to_string(),
            "--update-incoming".into(),
            "--".into(),
            saved.qemu.program.clone(),
        ];
        args.extend(saved.qemu.args.iter().cloned());
        owner_up = begun.elapsed();
        say(out, &format!("VM {vm:?}: starting QEMU (output to {})", qemu_log.display()));
        let (child, log_start) = spawn_detached(&pageless, &args, &saved.qemu.cwd, &qemu_log)?;
        let qemu_pid = child.id();
        started.qemu = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let qmp = loop {
            if let Ok(qmp) = Qmp::connect(qmp_path) {
                break qmp;
            }
            let exited = started.qemu.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(UpdateError::RestoreFailed {
                    vm: vm.clone(),
                    why: format!("QEMU exited ({status}); {}", log_tail(&qemu_log, log_start)),
                });
            }
            if Instant::now() > deadline {
                return Err(UpdateError::RestoreFailed {
                    vm: vm.clone(),
                    why: format!(
                        "QEMU's monitor {} did not answer within {} s; {}",
                        qmp_path.display(),
                        START_TIMEOUT.as_secs(),
                        log_tail(&qemu_log, log_start)
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        Ok((owner_pid, qemu_pid, qmp))
    })();
    let monitor_up = begun.elapsed();
    let (owner_pid, qemu_pid, mut qmp) = match result {
        Ok(ok) => ok,
        Err(e) => {
            started.undo(vm, run_dir);
            return Err(e);
        }
    };
    let loaded = (|| -> Result<Result<Value, String>, QmpError> {
        // Checked here rather than by running `<qemu> -version` before: that would add a QEMU
        // start to the guest's downtime.
        let version = version_of(&qmp.execute("query-version", Value::Null)?);
        if version != saved.qemu_version {
            return Ok(Err(format!(
                "it was saved by QEMU {} but {} is QEMU {version}: restore with the same QEMU version",
                saved.qemu_version, saved.qemu.program
            )));
        }
        let status = qmp.execute("query-status", Value::Null)?;
        if status["status"] != "inmigrate" {
            return Ok(Err(format!(
                "the new QEMU is {}, not waiting for the state (inmigrate)",
                status["status"]
            )));
        }
        qmp.execute("migrate-set-parameters", json!({"mode": "cpr-reboot"}))?;
        qmp.execute(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]}),
        )?;
        let uri = format!("file:{}", dir.join(STATE_FILE).display());
        say(out, &format!("VM {vm:?}: loading the device state into QEMU pid {qemu_pid}"));
        qmp.execute("migrate-incoming", json!({"uri": uri}))?;
        wait_for_migration(&mut qmp, out, "loading")
    })();
    let loaded_after = begun.elapsed();
    let failure = match loaded {
        Ok(Ok(_)) => None,
        Ok(Err(why)) => Some(why),
        Err(e) => Some(e.to_string()),
    };
    if let Some(why) = failure {
        started.undo(vm, run_dir);
        return Err(UpdateError::RestoreFailed {
            vm: vm.clone(),
            why: format!("QEMU could not load the state: {why}; what was started is stopped again and the state is kept"),
        });
    }
    // The state is in QEMU now: never load it again over a guest that ran on.
    let _ = std::fs::rename(dir.join(SAVED_FILE), dir.join(RESTORED_FILE));
    if saved.was_running {
        // QEMU resumes a guest that ran by itself, unless its command line has -S; a guest
        // still on its way out of `inmigrate` is waited for.
        let qmp_error = |source| UpdateError::Qmp { vm: vm.clone(), source };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = qmp.execute("query-status", Value::Null).map_err(qmp_error)?;
            if status["running"].as_bool() == Some(true) {
                break;
            }
            if matches!(status["status"].as_str(), Some("paused" | "prelaunch")) || Instant::now() > deadline
            {
                qmp.execute("cont", Value::Null).map_err(qmp_error)?;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let _ = qmp.execute("migrate-set-parameters", json!({"mode": "normal"}));
    let resumed_at = qmp.last_event_time("RESUME");
    let downtime = match (saved.paused_at, resumed_at) {
        (Some(paused), Some(resumed)) => {
            format!("; paused for {:.3} s (from {paused:.6} to {resumed:.6})", resumed - paused)
        }
        _ => String::new(),
    };
    say(
        out,
        &format!(
            "VM {vm:?}: {} (QEMU pid {qemu_pid}, owner pid {owner_pid}){}{downtime}; the owner answered after {:.1} ms, QEMU's monitor after {:.1} ms, the state was loaded after {:.1} ms",
            if saved.was_running { "running again where it stopped" } else { "restored, paused as it was" },
            resumed_at.map_or(String::new(), |t| format!("; resumed at {t:.6}")),
            owner_up.as_secs_f64() * 1e3,
            monitor_up.as_secs_f64() * 1e3,
            loaded_after.as_secs_f64() * 1e3,
        ),
    );
    // Detached: QEMU and the owner run on without this process.
    drop(started);
    Ok(())
}

/// Checks that an owner serves exactly the saved memory files, re-attached (not allocated anew).
fn check_reattached(vm: &str, saved: &SavedState, status: &VmStatus) -> Result<(), UpdateError> {
    let served: Vec<(Option<&str>, bool)> = if status.cells.is_empty() {
        vec![(status.path.as_deref(), status.reattached)]
    } else {
        status.cells.iter().map(|c| (c.path.as_deref(), c.reattached)).collect()
    };
    let expected: Vec<Option<String>> =
        saved.cells.iter().map(|c| Some(c.path.display().to_string())).collect();
    let paths: Vec<Option<String>> = served.iter().map(|(p, _)| p.map(String::from)).collect();
    if paths != expected || !served.iter().all(|(_, reattached)| *reattached) {
        return Err(UpdateError::RestoreFailed {
            vm: vm.into(),
            why: format!(
                "its owner (pid {}) serves {paths:?}{}, not the saved memory {expected:?} re-attached: the guest's RAM is not there",
                status.pid,
                if served.iter().all(|(_, r)| *r) { "" } else { " allocated anew" }
            ),
        });
    }
    Ok(())
}

/// Starts the owner with its saved arguments and waits until it answers, re-attached to every
/// memory file.
fn start_owner(
    vm: &str,
    saved: &SavedState,
    pageless: &Path,
    socket: &Path,
    started: &mut Started,
    out: &mut dyn Write,
) -> Result<u32, UpdateError> {
    let run_dir = &saved.qemu.run_dir;
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("create the run directory {}", run_dir.display()))?;
    let log = run_dir.join(format!("{vm}.log"));
    say(
        out,
        &format!(
            "VM {vm:?}: starting its owner: pageless {} (log {})",
            saved.owner.args.join(" "),
            log.display()
        ),
    );
    let (child, log_start) = spawn_detached(pageless, &saved.owner.args, &saved.owner.cwd, &log)?;
    let pid = child.id();
    started.owner = Some(child);
    let deadline = Instant::now() + START_TIMEOUT;
    let failed = |why: String| UpdateError::RestoreFailed { vm: vm.into(), why };
    loop {
        if let Ok(client) = ControlClient::connect(socket, "update") {
            if client.owner_pid() == pid {
                let status =
                    client.status_summary().map_err(|source| UpdateError::Owner { vm: vm.into(), source })?;
                check_reattached(vm, saved, &status)?;
                return Ok(pid);
            }
        }
        if let Some(status) = started.owner.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            return Err(failed(format!("the owner exited ({status}); {}", log_tail(&log, log_start))));
        }
        if Instant::now() > deadline {
            return Err(failed(format!(
                "the owner did not answer on {} within {} s; {}",
                socket.display(),
                START_TIMEOUT.as_secs(),
                log_tail(&log, log_start)
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests;
