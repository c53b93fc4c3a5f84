//! `pageless serve`: the per-VM owner process.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use nix::fcntl::{Flock, FlockArg};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use pageless_pool::size::Size;
use pageless_pool::{Allocation, Pool, PoolSpec};
use thiserror::Error;

use crate::accept::Acceptor;
use crate::cells::{self, CellSpec};
use crate::context::{Context, IoError};
use crate::limits::{self, Caps, FileLimit, LimitOptions};
use crate::owner::{Cell, Owner};
use crate::peer::AccessPolicy;
use crate::relay::RelaySpec;
use crate::stopping::{self, Report, ReportSchedule, REPORT_EVERY};
use crate::{control_socket_path, lock_path, relay_dir};

/// What `pageless serve` was asked to do.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The VM's name: names the control socket, the lock file, the relay directory and, in
    /// directory pools, the allocation's file.
    pub vm: String,
    /// Memory size in bytes; a multiple of the pool's page size. Unused with `cells`.
    pub size: u64,
    /// Where the memory comes from (`--pool`). Unused with `cells`.
    pub pool: PoolSpec,
    /// `--cell`: the guest NUMA cells, each its own allocation (`<vm>.cell<ID>` in directory
    /// pools) from its own pool, optionally bound to a host node. Empty: one allocation of
    /// `size` from `pool`, named `<vm>`.
    pub cells: Vec<CellSpec>,
    /// Directory of the control socket, the lock file and the relay sockets; created if missing.
    pub run_dir: PathBuf,
    /// Allocate every page before serving, so that the guest cannot run short later.
    pub prefault: bool,
    /// Users besides root and the owner's own who may connect (HELLO, STATUS, and the memory
    /// only as the VM's bound QEMU). When root runs the owner, the first is given the sockets
    /// and a directory pool's file.
    pub allow_uids: Vec<u32>,
    /// `--apparmor-profile`: the VM's QEMU's AppArmor profile; peers under another are refused.
    pub apparmor_profile: Option<String>,
    /// Remove a directory pool's file once stopped; by default it stays for the next owner.
    pub remove_on_exit: bool,
    /// vhost-user devices to relay: `<run-dir>/<vm>/<name>.sock` → the backend's socket.
    pub vhost_user: Vec<RelaySpec>,
    /// How long a stopping owner waits for the memory's holders (QEMU, device backends) before
    /// it warns that they keep the memory. It waits for them however long it takes.
    pub consumer_timeout: Duration,
    /// How many connections the owner takes at once; how long a client may take to say HELLO.
    pub limits: LimitOptions,
}

/// Why [`serve`] failed: the owner did not start, or could not remove its file at the end.
#[derive(Debug, Error)]
pub enum ServeError {
    /// From the pool: an invalid VM name, a pool that cannot be opened, a size it has no room
    /// for or that is not a multiple of its page size, mapping, sealing, prefaulting or
    /// removing the allocation; the message says which.
    #[error(transparent)]
    Pool(#[from] pageless_pool::Error),
    /// Another owner holds the VM's lock: stop it (`pageless stop`) before starting a new one.
    #[error("VM {vm:?} is already served by pageless (pid {pid}, lock {path}): stop that owner first")]
    AlreadyServed {
        /// The VM.
        vm: String,
        /// The other owner's pid as its lock file says it, as text (empty if unreadable).
        pid: String,
        /// The lock file, `<run-dir>/<vm>.lock`.
        path: PathBuf,
    },
    /// A system call failed while setting up (signals, run directory, lock file, sockets).
    #[error(transparent)]
    Io(#[from] IoError),
    /// The `--cell`s cannot be served as given (an id twice, too many cells), or a pool holds
    /// the VM's memory in the other layout (one `<vm>` file vs. `<vm>.cell<ID>` files) from an
    /// earlier owner: a running guest cannot change its NUMA layout.
    #[error("VM {vm:?}: {why}")]
    Cells {
        /// The VM.
        vm: String,
        /// What is wrong, and what to do.
        why: String,
    },
}

/// Runs the owner until SIGTERM/SIGINT/SIGHUP or a STOP request, and then until no process it
/// handed the memory to holds it any more.
pub fn serve(options: ServeOptions) -> Result<(), ServeError> {
    pageless_pool::check_name(&options.vm)?;
    // Block the stop signals before any thread exists, so that every thread inherits the mask
    // and they are only ever read from the signalfd.
    let mut stop_signals = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        stop_signals.add(signal);
    }
    stop_signals.thread_block().context("block the stop signals")?;
    let signal_fd = SignalFd::new(&stop_signals).context("create a signalfd")?;

    let files = limits::raise_file_limit().context("read the open file limit")?;
    if files.soft > files.was {
        info!("open file limit: raised from {} to the hard limit {}", files.was, files.soft);
    } else {
        info!("open file limit: {} (the hard limit)", files.soft);
    }
    std::fs::create_dir_all(&options.run_dir)
        .with_context(|| format!("create the run directory {}", options.run_dir.display()))?;
    let lock = lock_vm(&options, &options.vm)?;
    let cell_error = |why: String| ServeError::Cells { vm: options.vm.clone(), why };
    cells::check_cells(&options.cells).map_err(cell_error)?;
    // A cell's file `<vm>.cell<ID>` could also be the file of a VM of that name: hold its lock
    // too, so that no two owners ever serve one file.
    let mut cell_locks = Vec::new();
    for spec in &options.cells {
        let name = cells::allocation_name(&options.vm, spec.id);
        pageless_pool::check_name(&name)?;
        cell_locks.push(lock_vm(&options, &name)?);
    }
    let specs = if options.cells.is_empty() {
        vec![CellSpec { id: 0, size: options.size, pool: options.pool.clone(), host_node: None }]
    } else {
        options.cells.clone()
    };
    let mut owned_cells = Vec::with_capacity(specs.len());
    let mut offset = 0u64;
    for spec in &specs {
        let cell = open_cell(&options, spec, offset)?;
        offset = offset
            .checked_add(cell.allocation.size())
            .ok_or_else(|| cell_error("the cells add up to more than 16 EiB".into()))?;
        owned_cells.push(cell);
    }

    let socket_path = control_socket_path(&options.run_dir, &options.vm);
    let listener = listen(&socket_path, &options.allow_uids)?;
    let relays = listen_relays(&options)?;
    for listener in std::iter::once(&listener).chain(relays.iter().map(|(_, l)| l)) {
        listener.set_nonblocking(true).context("make a listening socket non-blocking")?;
    }
    let (stop_wait, stop_request) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("create a pipe")?;
    let policy = AccessPolicy {
        owner_uid: nix::unistd::geteuid().as_raw(),
        allowed_uids: options.allow_uids.clone(),
        apparmor_profile: options.apparmor_profile.clone(),
    };
    let numa = !options.cells.is_empty();
    let owner = Arc::new(Owner::new(options.vm.clone(), owned_cells, numa, policy, File::from(stop_request)));
    for cell in &owner.cells {
        info!(
            "serving VM {:?}{}: {} of {} memory (page size {}){}{} on {}",
            owner.vm,
            if numa { format!(" cell {}", cell.id) } else { String::new() },
            Size(cell.allocation.size()),
            cell.pool.spec(),
            Size(cell.allocation.page_size()),
            cell.host_node.map_or(String::new(), |n| format!(", bound to host node {n}")),
            if cell.reattached { ", re-attached" } else { "" },
            socket_path.display()
        );
    }

    let mut acceptor = Acceptor::new(&options.vm, files, caps(&options, files), options.limits.hello_timeout);
    for (spec, _) in &relays {
        info!(
            "relaying vhost-user device {} on {} to {}",
            spec.name,
            relay_socket(&options, spec).display(),
            spec.backend.display()
        );
    }
    let reason = loop {
        if let Some(reason) =
            serve_once(&owner, &mut acceptor, &listener, &relays, &signal_fd, &stop_wait, None)
        {
            break reason;
        }
    };
    info!("stopping ({reason})");
    owner.begin_stopping(&reason, options.consumer_timeout);
    // No new device connections; those open stay until QEMU or the backend ends them.
    for (spec, listener) in relays {
        drop(listener);
        let _ = std::fs::remove_file(relay_socket(&options, &spec));
    }
    let _ = std::fs::remove_dir(relay_dir(&options.run_dir, &options.vm));
    // The control socket stays: STATUS says why the owner still runs.
    wait_for_holders(&owner, &mut acceptor, &listener, &signal_fd, &stop_wait, options.consumer_timeout);
    drop(listener);
    if let Err(e) = std::fs::remove_file(&socket_path) {
        warn!("cannot remove {}: {e}", socket_path.display());
    }
    for cell in &owner.cells {
        if options.remove_on_exit {
            cell.allocation.remove()?;
        } else if let Some(path) = cell.allocation.path() {
            info!("keeping {} for the next owner (pass --remove-on-exit to remove it)", path.display());
        }
    }
    drop(cell_locks);
    drop(lock);
    Ok(())
}

/// The VM's lock: `<run-dir>/<vm>.lock`, flock'ed, holding the owner's pid. Separate from the
/// memory file, so that the lock dies with this process even while QEMU keeps the memory's fd.
/// Dropping it removes the file while still holding the lock.
struct VmLock {
    path: PathBuf,
    _lock: Flock<File>,
}

impl Drop for VmLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Allocates (or re-attaches to) one cell's memory, binds it to its host node, pre-faults it if
/// asked, maps it and hands its file to the first `--allow-uid` user.
fn open_cell(options: &ServeOptions, spec: &CellSpec, offset: u64) -> Result<Cell, ServeError> {
    let numa = !options.cells.is_empty();
    let name = if numa { cells::allocation_name(&options.vm, spec.id) } else { options.vm.clone() };
    let pool = Pool::open(&spec.pool)?;
    check_layout(options, &spec.pool)?;
    let (allocation, reattached) = pool.attach_or_allocate(&name, spec.size)?;
    if let Some(node) = spec.host_node {
        pageless_pool::numa::bind_to_node(&allocation, &spec.pool.to_string(), node)?;
    }
    if options.prefault {
        allocation.prefault()?;
    }
    let mapping = allocation.map()?;
    hand_over_file(&allocation, &options.allow_uids)?;
    Ok(Cell { id: spec.id, host_node: spec.host_node, offset, pool, allocation, mapping, reattached })
}

/// Refuses to serve a VM's memory in one layout (`--size`: file `<vm>`; `--cell`: files
/// `<vm>.cell<ID>`) when a directory pool holds it in the other from an earlier owner: the
/// guest that may still run on it has the other NUMA layout.
fn check_layout(options: &ServeOptions, pool: &PoolSpec) -> Result<(), ServeError> {
    let dir = match pool {
        PoolSpec::Memfd { .. } => return Ok(()),
        PoolSpec::Hugetlbfs(dir) | PoolSpec::Dir(dir) | PoolSpec::Pagelessfs(dir) => dir,
    };
    let vm = &options.vm;
    let found = if options.cells.is_empty() {
        let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
        entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|name| cells::is_cell_of(vm, name))
    } else {
        dir.join(vm).symlink_metadata().ok().map(|_| vm.clone())
    };
    let Some(found) = found else { return Ok(()) };
    let (now, was) = if options.cells.is_empty() { ("--size", "--cell") } else { ("--cell", "--size") };
    Err(ServeError::Cells {
        vm: vm.clone(),
        why: format!(
            "{} holds {found:?}, this VM's memory from an owner started with {was}; it cannot be served with {now} (another NUMA layout): start the owner with the same layout as before, or stop the guest and remove the file",
            dir.display()
        ),
    })
}

/// Takes the lock of `name` (the VM's, or a cell file's) so that no two owners serve one VM.
fn lock_vm(options: &ServeOptions, name: &str) -> Result<VmLock, ServeError> {
    let path = lock_path(&options.run_dir, name);
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .with_context(|| format!("open the lock file {}", path.display()))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut unlocked, _)) => {
                let mut pid = String::new();
                let _ = unlocked.read_to_string(&mut pid);
                return Err(ServeError::AlreadyServed { vm: name.into(), pid: pid.trim().into(), path });
            }
        };
        // A stopping owner unlinks its lock file: if ours was unlinked between open and flock,
        // it locks nothing any more; take the new one.
        let locked = lock.metadata().context("stat the lock file")?;
        match std::fs::metadata(&path) {
            Ok(current) if (current.dev(), current.ino()) == (locked.dev(), locked.ino()) => {}
            _ => continue,
        }
        lock.set_len(0).context("truncate the lock file")?;
        writeln!(lock, "{}", std::process::id()).context("write the lock file")?;
        return Ok(VmLock { path, _lock: lock });
    }
}

/// Binds the control socket, mode 0600. With `--allow-uid`, root hands the socket to the
/// first allowed user, who could not connect otherwise; peer credentials are checked anyway.
fn listen(path: &std::path::Path, allow_uids: &[u32]) -> Result<UnixListener, ServeError> {
    // We hold the VM's lock: a socket left here is a dead owner's.
    match std::fs::remove_file(path) {
        Ok(()) => info!("removed the stale socket {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(IoError::new(format!("remove the stale socket {}", path.display()), e).into()),
    }
    // SELinux: at the owner's low level, so that a confined QEMU may connect (see selinux.rs).
    let listener = crate::selinux::at_low_level(|| UnixListener::bind(path))
        .with_context(|| format!("listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    if let Some(&uid) = allow_uids.first() {
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(path, Some(uid.into()), None)
                .with_context(|| format!("chown {} to uid {uid}", path.display()))?;
        }
    }
    Ok(listener)
}

/// With `--allow-uid`, root hands a directory pool's file to the first allowed user (like the
/// sockets): QEMU opens it again through `/proc/self/fd/N`, and open() checks the inode's
/// permissions, which are 0600 root otherwise. memfd inodes are 0777 already.
fn hand_over_file(allocation: &Allocation, allow_uids: &[u32]) -> Result<(), ServeError> {
    let (Some(path), Some(&uid)) = (allocation.path(), allow_uids.first()) else { return Ok(()) };
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    nix::unistd::fchown(std::os::fd::AsRawFd::as_raw_fd(allocation.file()), Some(uid.into()), None)
        .with_context(|| format!("chown {} to uid {uid}", path.display()))?;
    if let Some(dir) = path.parent().filter(|dir| searchable_by_others(dir, allow_uids)) {
        warn!(
            "{} now belongs to uid {uid}, and {} is searchable by the --allow-uid users: any of their processes can open the VM's memory by path, not just the VM's QEMU (which opens it through its inherited fd); make the directory root's, mode 0700",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Whether a user in `uids` (other than through root) can search `dir`: it owns it with the
/// owner's x bit, or the group or others x bit is set (group membership is not resolved).
fn searchable_by_others(dir: &std::path::Path, uids: &[u32]) -> bool {
    std::fs::metadata(dir).is_ok_and(|meta| {
        let mode = meta.mode();
        (uids.contains(&meta.uid()) && mode & 0o100 != 0) || mode & 0o011 != 0
    })
}

fn relay_socket(options: &ServeOptions, spec: &RelaySpec) -> PathBuf {
    relay_dir(&options.run_dir, &options.vm).join(format!("{}.sock", spec.name))
}

/// Binds `<run-dir>/<vm>/<name>.sock` for every `--vhost-user` device.
fn listen_relays(options: &ServeOptions) -> Result<Vec<(RelaySpec, UnixListener)>, ServeError> {
    if options.vhost_user.is_empty() {
        return Ok(Vec::new());
    }
    let dir = relay_dir(&options.run_dir, &options.vm);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", dir.display()))?;
    let mut names = BTreeSet::new();
    let mut relays = Vec::new();
    for spec in &options.vhost_user {
        if !names.insert(spec.name.as_str()) {
            let what = format!("--vhost-user {} is given twice", spec.name);
            return Err(IoError::new(what, std::io::ErrorKind::InvalidInput).into());
        }
        relays.push((spec.clone(), listen(&relay_socket(options, spec), &options.allow_uids)?));
    }
    Ok(relays)
}

/// Waits until no process the memory was handed to holds it any more, answering the control
/// socket meanwhile. `timeout` (`--consumer-timeout`) only decides when the wait is logged as a
/// warning: the memory is never released under a live holder, and another stop request or
/// signal does not change that (SIGKILL does: it leaves the memory file in place).
fn wait_for_holders(
    owner: &Arc<Owner>,
    acceptor: &mut Acceptor,
    listener: &UnixListener,
    signals: &SignalFd,
    stop: &OwnedFd,
    timeout: Duration,
) {
    let mut schedule = ReportSchedule::new(Instant::now(), timeout, REPORT_EVERY);
    loop {
        let holders = owner.refresh_holders();
        if holders.is_empty() {
            return;
        }
        let who = stopping::describe(&holders);
        match schedule.due(Instant::now()) {
            Some(Report::Waiting) => info!(
                "waiting for what holds VM {:?}'s memory to go: {who} (warning after --consumer-timeout {timeout:?})",
                owner.vm
            ),
            Some(Report::StillHeld) => warn!(
                "VM {:?}'s memory is still held after {} s (--consumer-timeout {}): {who}; keeping it until they exit, since a device may still reach it (stop them to release it; SIGKILL of the owner leaves the memory file in place)",
                owner.vm,
                owner.stop_state().map_or(timeout, |s| s.started.elapsed()).as_secs(),
                timeout.as_secs(),
            ),
            None => {}
        }
        if let Some(again) = serve_once(owner, acceptor, listener, &[], signals, stop, Some(WAIT_POLL)) {
            warn!(
                "{again} while stopping: still waiting for {who}; the memory is released only once they are gone (SIGKILL of the owner leaves the memory file in place)"
            );
        }
    }
}

/// How often a stopping owner looks again at what holds the memory.
const WAIT_POLL: Duration = Duration::from_millis(200);

/// The connection caps that fit the open file limit; says so when they are lower than asked.
fn caps(options: &ServeOptions, files: FileLimit) -> Caps {
    let in_use = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let (caps, short) = Caps::fit(&options.limits, files.soft, in_use, !options.vhost_user.is_empty());
    if let Some(needed) = short {
        warn!(
            "the open file limit {} (hard limit {}) leaves room for {} control clients and {} device connections, less than --max-clients {} and --max-device-connections {}: raise the hard limit to {needed} (systemd LimitNOFILE=, ulimit -Hn) or lower those options",
            files.soft,
            files.hard,
            caps.clients,
            caps.device_connections,
            options.limits.max_clients,
            if options.vhost_user.is_empty() { 0 } else { options.limits.max_device_connections },
        );
    }
    info!(
        "limits: {} control clients (--max-clients), {} relayed device connections (--max-device-connections), HELLO within {} s (--hello-timeout)",
        caps.clients,
        caps.device_connections,
        options.limits.hello_timeout.as_secs_f32()
    );
    caps
}

/// Waits up to `timeout` (or for ever) for a connection or a stop; accepts control and relay
/// connections within the owner's limits. Returns why to stop, if a stop signal or STOP request
/// came.
fn serve_once(
    owner: &Arc<Owner>,
    acceptor: &mut Acceptor,
    listener: &UnixListener,
    relays: &[(RelaySpec, UnixListener)],
    signals: &SignalFd,
    stop: &OwnedFd,
    timeout: Option<Duration>,
) -> Option<String> {
    let now = Instant::now();
    acceptor.expire(now);
    let listen = if acceptor.accepting(now) { PollFlags::POLLIN } else { PollFlags::empty() };
    let mut fds = vec![
        PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        PollFd::new(listener.as_fd(), listen),
    ];
    fds.extend(relays.iter().map(|(_, relay)| PollFd::new(relay.as_fd(), listen)));
    fds.extend(acceptor.pending_fds().map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
    let wait = [timeout, acceptor.next_wake(now)].into_iter().flatten().min();
    // Rounded up, so that a deadline 0.4 ms away does not become a busy loop of 0 ms polls.
    let wait = wait.map_or(PollTimeout::NONE, |w| {
        PollTimeout::try_from(w.as_millis().saturating_add(1).min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX)
    });
    match poll(&mut fds, wait) {
        Ok(_) => {}
        Err(nix::errno::Errno::EINTR) => return None,
        Err(e) => {
            // Not expected; do not spin on it.
            error!("poll failed: {e}");
            std::thread::sleep(WAIT_POLL);
            return None;
        }
    }
    let ready: Vec<bool> = fds.iter().map(|fd| fd.revents().is_some_and(|r| !r.is_empty())).collect();
    drop(fds);
    if ready[0] {
        return Some(match signals.read_signal() {
            Ok(Some(info)) => {
                format!("signal {}", Signal::try_from(info.ssi_signo as i32).map_or("?", |s| s.as_str()))
            }
            _ => "signal".into(),
        });
    }
    if ready[1] {
        // Drain the request, so that the next poll waits again.
        let _ = nix::unistd::read(stop.as_raw_fd(), &mut [0u8; 64]);
        return Some("STOP request".into());
    }
    let (relays_ready, pending_ready) = ready[3..].split_at(relays.len());
    acceptor.pending_ready(owner, pending_ready);
    if ready[2] {
        acceptor.accept_control(owner, listener);
    }
    for ((spec, relay), _) in relays.iter().zip(relays_ready).filter(|(_, &r)| r) {
        acceptor.accept_device(owner, spec, relay);
    }
    None
}
