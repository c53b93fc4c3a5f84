//! `aa-probe`: what a process under a given AppArmor profile can reach. The process changes
//! its own profile (as an unconfined root process may), then connects to unix sockets and opens
//! files read-write, and reports whether each was allowed or refused with EACCES.

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

/// Moves this process (its only thread) under `profile`: "changeprofile" through procfs, as
/// libapparmor's aa_change_profile() does.
fn change_profile(profile: &str) -> io::Result<String> {
    let request = format!("changeprofile {profile}");
    let write = |path: &str| std::fs::write(path, request.as_bytes());
    write("/proc/self/attr/apparmor/current").or_else(|_| write("/proc/self/attr/current"))?;
    let now = std::fs::read_to_string("/proc/self/attr/current")?;
    Ok(now.trim_end_matches(['\n', '\0']).to_string())
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
    let label = change_profile(profile)?;
    // Every access first, then the report: under the new profile this process may not be
    // allowed to write to a terminal, only to the pipe its caller reads.
    let mut results = Vec::new();
    for path in sockets {
        results.push(("connect", path, outcome(connect(path))));
    }
    for path in files {
        results.push(("open", path, outcome(open_rw(path))));
    }
    let in_profile = label.starts_with(&format!("{profile} ")) || label == profile;
    r.check(&format!("{name}-label"), in_profile, format!("running as {label:?}"));
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
