//! `aa-probe`: what a process under a given AppArmor profile can reach. A thread changes its
//! own profile (as an unconfined root process may), then uses an owner's control socket
//! (HELLO), a relayed vhost-user socket (GET_FEATURES) and opens files read-write; the report
//! says whether each worked, was refused by the kernel (EACCES), or refused by the owner.
//!
//! `probe`: one such access by a process that already runs under the label to test (SELinux:
//! exec'd into its domain, which may not write to the terminal): the exit code is the outcome.
//! It can also check a file it inherited across that exec ([`crate::selinux`]).

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use pageless_protocol::control::{ControlClient, ControlError};

use crate::util::Report;

/// Whether the probe expects every access to be allowed or every one refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Expect {
    Allowed,
    Denied,
}

/// Moves the calling thread under `profile`: "changeprofile" through procfs, as libapparmor's
/// aa_change_profile() does. AppArmor labels each thread's credentials: the other threads stay
/// unconfined.
fn change_profile(profile: &str) -> io::Result<()> {
    let tid = nix::unistd::gettid();
    let request = format!("changeprofile {profile}");
    let write = |path: String| std::fs::write(path, request.as_bytes());
    write(format!("/proc/self/task/{tid}/attr/apparmor/current"))
        .or_else(|_| write(format!("/proc/self/task/{tid}/attr/current")))
}

/// What happened to one access.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// It worked.
    Allowed,
    /// The kernel said EACCES (AppArmor).
    Denied,
    /// Connected, but the owner refused or closed the connection.
    Refused(String),
    /// Anything else: the probe proves nothing.
    Error(String),
}

pub(crate) fn kernel(e: io::Error) -> Outcome {
    if e.kind() == io::ErrorKind::PermissionDenied {
        Outcome::Denied
    } else {
        Outcome::Error(e.to_string())
    }
}

/// HELLO on an owner's control socket.
fn control(path: &Path) -> Outcome {
    match UnixStream::connect(path) {
        Err(e) => kernel(e),
        Ok(sock) => {
            drop(sock);
            match ControlClient::connect(path, "aa-probe") {
                Ok(_) => Outcome::Allowed,
                Err(ControlError::Connect { source, .. }) => kernel(source),
                Err(e) => Outcome::Refused(e.to_string()),
            }
        }
    }
}

/// vhost-user GET_FEATURES on a relayed device socket: a reply, or the relay hangs up.
fn vhost(path: &Path) -> Outcome {
    let mut sock = match UnixStream::connect(path) {
        Ok(sock) => sock,
        Err(e) => return kernel(e),
    };
    let get_features = [1u32, 1, 0].iter().flat_map(|w| w.to_ne_bytes()).collect::<Vec<u8>>();
    let _ = sock.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    if let Err(e) = sock.write_all(&get_features) {
        return Outcome::Refused(format!("the relay hung up: {e}"));
    }
    let mut reply = [0u8; 20];
    match sock.read(&mut reply) {
        Ok(0) => Outcome::Refused("the relay hung up without a reply".into()),
        Ok(_) => Outcome::Allowed,
        // Closed with our request unread: the kernel resets the connection.
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
            Outcome::Refused("the relay hung up without a reply (connection reset)".into())
        }
        Err(e) => Outcome::Error(format!("no reply: {e}")),
    }
}

fn open_rw(path: &Path) -> Outcome {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => Outcome::Allowed,
        Err(e) => kernel(e),
    }
}

pub fn aa_probe(
    r: &mut Report,
    name: &str,
    profile: &str,
    expect: Expect,
    targets: Targets,
) -> io::Result<()> {
    // A thread moves under the profile and tries every access; this (unconfined) thread reads
    // its label, which the profile itself would not let it read, and reports: under the new
    // profile the prober may not even write to the terminal.
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let profile_name = profile.to_string();
    let prober = std::thread::spawn(move || {
        let changed = change_profile(&profile_name);
        let _ = tid_tx.send((nix::unistd::gettid(), changed.as_ref().err().map(io::Error::to_string)));
        let _ = go_rx.recv();
        changed?;
        let mut results = Vec::new();
        for path in targets.control {
            results.push(("HELLO on", control(&path), path));
        }
        for path in targets.vhost {
            results.push(("GET_FEATURES on", vhost(&path), path));
        }
        for path in targets.open {
            results.push(("open", open_rw(&path), path));
        }
        Ok::<_, io::Error>(results)
    });
    let (tid, change_error) = tid_rx.recv().map_err(io::Error::other)?;
    let label = std::fs::read_to_string(format!("/proc/self/task/{tid}/attr/current"))
        .map(|l| l.trim_end_matches(['\n', '\0']).to_string())
        .unwrap_or_else(|e| format!("(unreadable: {e})"));
    let _ = go_tx.send(());
    let results = prober.join().map_err(|_| io::Error::other("the prober thread panicked"))??;
    if let Some(e) = change_error {
        return Err(io::Error::other(format!("changeprofile {profile}: {e}")));
    }
    let in_profile = label.starts_with(&format!("{profile} ")) || label == profile;
    r.check(&format!("{name}-label"), in_profile, format!("the prober runs as {label:?}"));
    for (what, outcome, path) in results {
        let (ok, detail) = match (outcome, expect) {
            (Outcome::Allowed, Expect::Allowed) => (true, "allowed".to_string()),
            (Outcome::Denied, Expect::Denied) => (true, "denied by the kernel: EACCES".to_string()),
            (Outcome::Refused(why), Expect::Denied) => {
                (true, format!("connected, refused by the owner: {why}"))
            }
            (Outcome::Allowed, Expect::Denied) => (false, "allowed, but must be denied".to_string()),
            (Outcome::Denied, Expect::Allowed) => (false, "denied (EACCES), but must be allowed".to_string()),
            (Outcome::Refused(why), Expect::Allowed) => (false, format!("refused by the owner: {why}")),
            (Outcome::Error(e), _) => (false, format!("neither allowed nor refused: {e}")),
        };
        r.check(name, ok, format!("{what} {} under {profile}: {detail}", path.display()));
    }
    Ok(())
}

/// `probe`'s exit code for each outcome.
pub mod exit {
    /// The access worked.
    pub const ALLOWED: i32 = 0;
    /// Anything else: the probe proves nothing.
    pub const ERROR: i32 = 1;
    /// Connected, but the owner refused or closed the connection.
    pub const REFUSED: i32 = 3;
    /// The kernel said EACCES.
    pub const DENIED: i32 = 13;
}

/// One access (exactly one of the targets, or the file on the `inherited` fd, the fd inherited
/// across the exec into the label under test) by this process as it runs: the exit code says
/// what happened ([`exit`]); the detail goes to stderr, which may lead nowhere.
pub fn probe(targets: Targets, inherited: Option<i32>) -> i32 {
    let outcome = match (targets.control.first(), targets.vhost.first(), targets.open.first(), inherited) {
        (Some(path), None, None, None) => control(path),
        (None, Some(path), None, None) => vhost(path),
        (None, None, Some(path), None) => open_rw(path),
        (None, None, None, Some(fd)) => crate::selinux::inherited(fd),
        _ => Outcome::Error("give exactly one of --control, --vhost, --open, --inherited".into()),
    };
    eprintln!("probe: {outcome:?}");
    match outcome {
        Outcome::Allowed => exit::ALLOWED,
        Outcome::Denied => exit::DENIED,
        Outcome::Refused(_) => exit::REFUSED,
        Outcome::Error(_) => exit::ERROR,
    }
}

/// What the prober goes for (each flag repeatable).
#[derive(clap::Args, Debug)]
pub struct Targets {
    /// Owners' control sockets: HELLO.
    #[arg(long)]
    pub control: Vec<PathBuf>,
    /// Relayed vhost-user sockets: GET_FEATURES.
    #[arg(long)]
    pub vhost: Vec<PathBuf>,
    /// Files: opened read-write.
    #[arg(long)]
    pub open: Vec<PathBuf>,
}
