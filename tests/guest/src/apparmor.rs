//! `aa-probe`: what a process under a given AppArmor profile can reach. A thread changes its
//! own profile (as an unconfined root process may), then connects to unix sockets and opens
//! files read-write; the report says whether each was allowed or refused with EACCES.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

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

/// What happened to one access: allowed, denied (EACCES/EPERM), or another error.
fn outcome(result: io::Result<()>) -> Result<bool, String> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

fn connect(path: &Path) -> io::Result<()> {
    UnixStream::connect(path).map(drop)
}

fn open_rw(path: &Path) -> io::Result<()> {
    OpenOptions::new().read(true).write(true).open(path).map(drop)
}

pub fn aa_probe(
    r: &mut Report,
    name: &str,
    profile: &str,
    expect: Expect,
    sockets: &[PathBuf],
    files: &[PathBuf],
) -> io::Result<()> {
    // A thread moves under the profile and tries every access; this (unconfined) thread reads
    // its label, which the profile itself would not let it read, and reports: under the new
    // profile the prober may not even write to the terminal.
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let profile_name = profile.to_string();
    let (sockets_in, files_in) = (sockets.to_vec(), files.to_vec());
    let prober = std::thread::spawn(move || {
        let changed = change_profile(&profile_name);
        let _ = tid_tx.send((nix::unistd::gettid(), changed.as_ref().err().map(io::Error::to_string)));
        let _ = go_rx.recv();
        changed?;
        let mut results = Vec::new();
        for path in sockets_in {
            let result = outcome(connect(&path));
            results.push(("connect", path, result));
        }
        for path in files_in {
            let result = outcome(open_rw(&path));
            results.push(("open", path, result));
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
    for (what, path, result) in results {
        let (ok, detail) = match (&result, expect) {
            (Ok(true), Expect::Allowed) => (true, "allowed".to_string()),
            (Ok(false), Expect::Denied) => (true, "denied: EACCES".to_string()),
            (Ok(true), Expect::Denied) => (false, "allowed, but must be denied".to_string()),
            (Ok(false), Expect::Allowed) => (false, "denied (EACCES), but must be allowed".to_string()),
            (Err(e), _) => (false, format!("neither allowed nor denied by AppArmor: {e}")),
        };
        r.check(name, ok, format!("{what} {} under {profile}: {detail}", path.display()));
    }
    Ok(())
}
