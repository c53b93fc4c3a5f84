//! Starting the owner (the systemd unit `pageless@<vm>.service`, or detached) and stopping it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use pageless_pool::size::Size;
use pageless_protocol::control::ControlClient;

use super::config::{OwnerPlan, MAX_TIMEOUT};
use super::{HookError, HookOptions, RETRY_MIGRATE};
use crate::context::Context;
use crate::lock_path;
use crate::peer::process_alive;
use crate::unit::{remove_args, template_unit_name, write_args};

/// The transient systemd unit name of the VM's owner, `pageless-<vm>.service`, which the hook
/// starts with `systemd-run` on hosts without the template unit `pageless@.service` (a manual
/// install that did not copy it).
pub fn unit_name(vm: &str) -> String {
    let mut name = String::from("pageless-");
    for (i, byte) in vm.bytes().enumerate() {
        let plain = byte.is_ascii_alphanumeric() || b":_-".contains(&byte) || (byte == b'.' && i > 0);
        if plain {
            name.push(byte as char);
        } else {
            name.push_str(&format!("\\x{byte:02x}"));
        }
    }
    name.push_str(".service");
    name
}

/// A started owner process.
enum Started {
    /// Detached: our child until this hook exits.
    Child(Child),
    /// A systemd unit (`pageless@<vm>.service`, or a transient one) and its main process.
    Unit { name: String, pid: Option<u32> },
}

impl Started {
    fn pid(&self) -> Option<u32> {
        match self {
            Started::Child(child) => Some(child.id()),
            Started::Unit { pid, .. } => *pid,
        }
    }

    /// Why the owner is no longer running, if it is not.
    fn exited(&mut self) -> Option<String> {
        match self {
            Started::Child(child) => match child.try_wait() {
                Ok(Some(status)) => Some(format!("it exited ({status})")),
                Ok(None) => None,
                Err(e) => Some(format!("cannot wait for it: {e}")),
            },
            Started::Unit { name, pid } => match pid {
                Some(pid) if process_alive(*pid) => None,
                _ => Some(format!("its unit {name} stopped")),
            },
        }
    }

    /// Stops an owner that did not come up.
    fn kill(&mut self) {
        match self {
            Started::Child(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Started::Unit { name, .. } => systemctl_stop(name),
        }
    }
}

/// `migrate begin` on the destination: starts the owner of the incoming domain before libvirt
/// starts QEMU (`-incoming`), and records it in `<run-dir>/<vm>.incoming` for `prepare`. An
/// owner a failed incoming migration left unused (recorded, no QEMU bound, no device
/// connection, the same size) is kept.
pub(super) fn start_incoming(options: &HookOptions, plan: &OwnerPlan) -> Result<(), HookError> {
    let pid = match incoming_owner(plan, false)? {
        Some(pid) => pid,
        // The VM still runs at the source: a failure says to migrate again, not to start it.
        None => start(options, plan, RETRY_MIGRATE)?,
    };
    let marker = incoming_marker(plan);
    let staging = plan.run_dir.join(format!(".{}.incoming.new", plan.vm));
    crate::replace_file::replace_file(&marker, &staging, format!("{pid}\n").as_bytes(), 0o600)
        .with_context(|| format!("record the incoming migration's owner in {}", marker.display()))?;
    info!("VM {:?}: incoming migration: its memory owner (pid {pid}) is ready for QEMU", plan.vm);
    Ok(())
}

/// `<run-dir>/<vm>.incoming`: the pid of the owner `migrate begin` started.
fn incoming_marker(plan: &OwnerPlan) -> PathBuf {
    plan.run_dir.join(format!("{}.incoming", plan.vm))
}

/// The owner answering on the VM's socket, if `migrate begin` started it for an incoming
/// migration (its pid is in the marker) and nothing uses it yet: no QEMU bound, no device
/// connection, the plan's size. `take` removes the marker (`prepare` takes the owner over).
/// An owner that is recorded but used is an error: something else got the memory first.
fn incoming_owner(plan: &OwnerPlan, take: bool) -> Result<Option<u32>, HookError> {
    let marker = incoming_marker(plan);
    let Ok(text) = std::fs::read_to_string(&marker) else { return Ok(None) };
    let Ok(client) = ControlClient::connect(&plan.socket(), "hook") else { return Ok(None) };
    let pid = client.owner_pid();
    if text.trim().parse::<u32>().ok() != Some(pid) {
        debug!("VM {:?}: {} names another owner than pid {pid}: stale", plan.vm, marker.display());
        return Ok(None);
    }
    let unused = |why: String| HookError::IncomingOwnerUsed { vm: plan.vm.clone(), pid, why };
    let status = client.status_summary().map_err(|e| unused(format!("it does not answer STATUS: {e}")))?;
    if let Some(qemu) = status.qemu {
        return Err(unused(format!("process {} is already bound to it as the VM's QEMU", qemu.pid)));
    }
    if let Some(consumer) = status.consumers.first() {
        return Err(unused(format!("device {} is already connected through its relay", consumer.device)));
    }
    if status.size != plan.size {
        return Err(unused(format!("it serves {} bytes, the domain has {}", status.size, plan.size)));
    }
    if take {
        let _ = std::fs::remove_file(&marker);
    }
    Ok(Some(pid))
}

/// `prepare begin`: starts the owner, or takes over the one `migrate begin` started for this
/// incoming migration. Returns the owner's pid. A failure's message ends with `retry`
/// ([`super::RETRY_START`], or [`RETRY_MIGRATE`] on `migrate begin`).
pub(super) fn start(options: &HookOptions, plan: &OwnerPlan, retry: &'static str) -> Result<u32, HookError> {
    let vm = &plan.vm;
    std::fs::create_dir_all(&plan.run_dir)
        .with_context(|| format!("create the run directory {}", plan.run_dir.display()))?;
    let socket = plan.socket();
    if let Ok(client) = ControlClient::connect(&socket, "hook") {
        if let Some(pid) = incoming_owner(plan, true)? {
            info!("VM {vm:?}: its memory owner (pid {pid}) was started for the incoming migration");
            return Ok(pid);
        }
        return Err(HookError::AlreadyRunning {
            vm: vm.clone(),
            retry,
            pid: client.owner_pid(),
            socket: socket.display().to_string(),
        });
    }
    let log_path = plan.log_path();
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(&log_path)
        .with_context(|| format!("open the owner's log {}", log_path.display()))?;
    let log_start = log.seek(SeekFrom::End(0)).with_context(|| format!("seek {}", log_path.display()))?;
    let args = plan.serve_args();
    let _ = writeln!(
        log,
        "--- pageless hook: starting the owner of VM {vm:?}: {} {}",
        options.pageless.display(),
        args.join(" ")
    );
    let mut started = if options.systemd {
        start_unit(options, plan, &args, log_start, retry)?
    } else {
        start_detached(options, plan, &args, log)?
    };

    let deadline = Instant::now() + Duration::from_secs(plan.start_timeout.min(MAX_TIMEOUT));
    loop {
        if let Ok(client) = ControlClient::connect(&socket, "hook") {
            let pid = client.owner_pid();
            if started.pid().is_none_or(|started| started == pid) {
                info!(
                    "VM {vm:?}: its memory owner (pid {pid}) serves {} of {} on {}",
                    Size(plan.size),
                    plan.pool,
                    socket.display()
                );
                return Ok(pid);
            }
        }
        let failure = match started.exited() {
            Some(why) => Some(why),
            None if Instant::now() >= deadline => {
                started.kill();
                Some(format!(
                    "it did not answer on {} within {} s (start_timeout), so it was stopped",
                    socket.display(),
                    plan.start_timeout
                ))
            }
            None => None,
        };
        if let Some(why) = failure {
            return Err(HookError::OwnerFailed {
                vm: vm.clone(),
                retry,
                why,
                log: log_tail(&log_path, log_start),
                source_desc: plan.source_desc.clone(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `pageless serve` in its own session, stdin /dev/null, output to the log, no other fds.
fn start_detached(
    options: &HookOptions,
    plan: &OwnerPlan,
    args: &[String],
    log: File,
) -> Result<Started, HookError> {
    let spawn_error = |what: &str| {
        let what = what.to_string();
        move |source| HookError::Spawn { vm: plan.vm.clone(), what, source }
    };
    let mut command = Command::new(&options.pageless);
    command
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(spawn_error("dup the log fd"))?)
        .stderr(log);
    crate::detach::in_own_session(&mut command);
    let child = command.spawn().map_err(spawn_error(&format!("run {}", options.pageless.display())))?;
    debug!("VM {:?}: started its owner detached, pid {}", plan.vm, child.id());
    Ok(Started::Child(child))
}

/// `systemctl start pageless@<vm>.service`, its arguments in `<unit_args_dir>/<vm>.args`; where
/// that template unit is not installed, `systemd-run --unit pageless-<vm> --collect … pageless
/// serve …` as before.
fn start_unit(
    options: &HookOptions,
    plan: &OwnerPlan,
    args: &[String],
    log_start: u64,
    retry: &'static str,
) -> Result<Started, HookError> {
    let template = template_unit_name(&plan.vm);
    let (unit, output) = if unit_installed(&template) {
        write_args(&options.unit_args_dir, &plan.vm, args)?;
        let output = Command::new("systemctl")
            .args(["start", template.as_str()])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| HookError::Spawn {
                vm: plan.vm.clone(),
                what: "run systemctl".into(),
                source,
            })?;
        (template, output)
    } else {
        warn!(
            "VM {:?}: the systemd unit pageless@.service is not installed (contrib/systemd): starting the owner with systemd-run",
            plan.vm
        );
        (unit_name(&plan.vm), systemd_run(options, plan, args)?)
    };
    if !output.status.success() {
        let log = log_tail(&plan.log_path(), log_start);
        return Err(HookError::OwnerFailed {
            vm: plan.vm.clone(),
            retry,
            why: format!(
                "starting {unit} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            log: format!("{log} (see also journalctl -u {unit})"),
            source_desc: plan.source_desc.clone(),
        });
    }
    let pid = unit_main_pid(&unit);
    debug!("VM {:?}: started its owner as {unit}, pid {pid:?}", plan.vm);
    Ok(Started::Unit { name: unit, pid })
}

/// Whether systemd knows `unit` (for a template instance: whether the template is installed).
fn unit_installed(unit: &str) -> bool {
    Command::new("systemctl")
        .args(["show", "--property=LoadState", "--value", unit])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "loaded")
}

/// `systemd-run --unit pageless-<vm> --collect … pageless serve …`: its output.
fn systemd_run(
    options: &HookOptions,
    plan: &OwnerPlan,
    args: &[String],
) -> Result<std::process::Output, HookError> {
    let log = plan.log_path();
    Command::new("systemd-run")
        .arg(format!("--unit={}", unit_name(&plan.vm)))
        .args(["--collect", "--quiet"])
        .arg(format!("--description=pageless memory owner of VM {}", plan.vm))
        .arg(format!("--property=StandardOutput=append:{}", log.display()))
        .arg(format!("--property=StandardError=append:{}", log.display()))
        .arg("--")
        .arg(&options.pageless)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HookError::Spawn { vm: plan.vm.clone(), what: "run systemd-run".into(), source })
}

/// `systemctl stop --no-block <unit>`: the hook waits for the owner itself, with its own
/// deadline; an unknown unit is fine.
fn systemctl_stop(unit: &str) {
    let _ = Command::new("systemctl").args(["stop", "--no-block", unit]).stdin(Stdio::null()).output();
}

/// The unit's MainPID, `None` when it has none (not running).
fn unit_main_pid(unit: &str) -> Option<u32> {
    let output = Command::new("systemctl")
        .args(["show", "--property=MainPID", "--value", unit])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok().filter(|&pid| pid != 0)
}

/// The owner's log from `start` on, last lines, indented, for the hook's error message.
fn log_tail(path: &Path, start: u64) -> String {
    const LINES: usize = 20;
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.seek(SeekFrom::Start(start));
        let _ = file.take(1 << 20).read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("--- pageless hook:")).collect();
    if lines.is_empty() {
        return format!("Its log {} is empty.", path.display());
    }
    let tail = &lines[lines.len().saturating_sub(LINES)..];
    format!("The end of its log {}:\n    {}", path.display(), tail.join("\n    "))
}

/// The pid of the VM's owner: from its socket, else from its lock file while the lock is held.
fn owner_pid(plan: &OwnerPlan) -> Option<u32> {
    if let Ok(client) = ControlClient::connect(&plan.socket(), "hook") {
        return Some(client.owner_pid());
    }
    let path = lock_path(&plan.run_dir, &plan.vm);
    let file = File::open(&path).ok()?;
    let mut text = String::new();
    (&file).read_to_string(&mut text).ok()?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
        // We got the lock: nobody holds it, no owner.
        Ok(_) => None,
        Err(_) => text.trim().parse().ok(),
    }
}

pub(super) fn stop(options: &HookOptions, plan: &OwnerPlan) -> Result<(), HookError> {
    let vm = &plan.vm;
    let _ = std::fs::remove_file(incoming_marker(plan));
    let pid = owner_pid(plan);
    match ControlClient::connect(&plan.socket(), "hook").and_then(|c| c.stop()) {
        Ok(()) => debug!("VM {vm:?}: asked its owner to stop"),
        Err(e) => {
            if let Some(pid) = pid {
                debug!("VM {vm:?}: owner pid {pid} does not answer ({e}): SIGTERM");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
    if options.systemd {
        // Also covers an owner that hangs before answering; an unknown unit is fine.
        systemctl_stop(&template_unit_name(vm));
        systemctl_stop(&unit_name(vm));
        remove_args(&options.unit_args_dir, vm);
    }
    let Some(pid) = pid else {
        debug!("VM {vm:?}: no owner runs");
        return Ok(());
    };
    // The owner waits for the memory's holders (QEMU is gone by `release`; device backends
    // unmap it when their connection ends), warning after consumer_timeout. One still waiting
    // well after that is killed: SIGKILL releases nothing (the memory file stays in place).
    let timeout = Duration::from_secs(plan.consumer_timeout.min(MAX_TIMEOUT) + 10);
    let deadline = Instant::now() + timeout;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            warn!("VM {vm:?}: its owner (pid {pid}) is still running {timeout:?} after the stop request: killing it (see {})", plan.log_path().display());
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    info!("VM {vm:?}: its memory owner (pid {pid}) stopped");
    Ok(())
}
