//! The owner as the systemd template unit `pageless@<vm>.service` (contrib/systemd).
//!
//! The libvirt hook writes the owner's `pageless serve` arguments, one per line, to
//! `<args-dir>/<vm>.args` (default [`DEFAULT_UNIT_ARGS_DIR`], root only) and starts the unit;
//! the unit runs `pageless serve-unit <vm>` (`%I`, one argument: no shell anywhere), which
//! reads them back with [`read_args`] and becomes the owner. The file is trusted only when the
//! user running `serve-unit` owns it and its directory and nobody else may write either, and
//! its `--vm` must be the instance's name: a file planted by someone else, or one for another
//! VM, is refused.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::context::{Context, IoError};

/// Where the hook leaves the owners' arguments for `pageless@.service` (created by the
/// package's tmpfiles.d, else by the hook, mode 0700).
pub const DEFAULT_UNIT_ARGS_DIR: &str = "/run/pageless/units";
/// The largest arguments file read back: the hook writes a few hundred bytes.
const MAX_ARGS_FILE: u64 = 1 << 20;

/// Why the owner's arguments could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    /// An argument holds a newline or NUL, which the one-per-line file cannot carry.
    #[error("VM {vm:?}: argument {arg:?} holds a newline or NUL: it cannot be passed to pageless@.service")]
    BadArgument {
        /// The VM.
        vm: String,
        /// The argument.
        arg: String,
    },
    /// The file or its directory may be written by someone else than the reader, or is not
    /// a regular file / a directory.
    #[error(
        "{path}: {why}; it is not trusted (the libvirt hook, as root, writes it: start the VM with virsh)"
    )]
    Untrusted {
        /// The file or directory.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// The file is not `serve --vm <vm> …`.
    #[error("{path}: {why} (the libvirt hook writes it: start the VM with virsh)")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// The VM's name cannot be a file name.
    #[error(transparent)]
    Name(#[from] pageless_pool::Error),
    /// Creating, writing, opening or reading failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// The systemd unit of the VM's owner: `pageless@<vm>.service`, the name escaped as
/// `systemd-escape` does (`%I` in the unit gives the name back).
pub fn template_unit_name(vm: &str) -> String {
    format!("pageless@{}.service", systemd_escape(vm))
}

/// `vm` escaped as `systemd-escape` does: `[A-Za-z0-9:_.]` stay (but a leading `.`), `/`
/// becomes `-`, every other byte `\xNN`.
pub fn systemd_escape(vm: &str) -> String {
    let mut escaped = String::new();
    for (i, byte) in vm.bytes().enumerate() {
        if byte.is_ascii_alphanumeric() || b":_".contains(&byte) || (byte == b'.' && i > 0) {
            escaped.push(byte as char);
        } else if byte == b'/' {
            escaped.push('-');
        } else {
            escaped.push_str(&format!("\\x{byte:02x}"));
        }
    }
    escaped
}

/// `<dir>/<vm>.args`, for a `vm` that passed `pageless_pool::check_name` (no `/`, no leading
/// `.`).
pub fn args_path(dir: &Path, vm: &str) -> PathBuf {
    dir.join(format!("{vm}.args"))
}

/// Writes `args` (the owner's `pageless serve …` arguments) to `<dir>/<vm>.args`, mode 0600,
/// replacing an older file atomically; creates `dir` (0700) if needed. Returns the path.
pub fn write_args(dir: &Path, vm: &str, args: &[String]) -> Result<PathBuf, UnitError> {
    pageless_pool::check_name(vm)?;
    if let Some(arg) = args.iter().find(|a| a.contains(['\n', '\0'])) {
        return Err(UnitError::BadArgument { vm: vm.into(), arg: arg.clone() });
    }
    // Only the directory itself is private: its parent (/run/pageless) must stay searchable.
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(IoError::new(format!("create {}", dir.display()), e).into())
        }
        _ => {}
    }
    let path = args_path(dir, vm);
    // VM names never start with '.': no other VM's file can be named like this one.
    let new = dir.join(format!(".{vm}.args.new"));
    let mut text = args.join("\n");
    text.push('\n');
    crate::replace_file::replace_file(&path, &new, text.as_bytes(), 0o600)
        .with_context(|| format!("write {} (through {})", path.display(), new.display()))?;
    Ok(path)
}

/// Removes `<dir>/<vm>.args`; a missing file is fine.
pub fn remove_args(dir: &Path, vm: &str) {
    let path = args_path(dir, vm);
    match std::fs::remove_file(&path) {
        Ok(()) => log::debug!("removed {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("cannot remove {}: {e}", path.display()),
    }
}

/// Reads back the arguments [`write_args`] wrote for `vm`, after checking that this user owns
/// the file and `dir`, that nobody else may write either, and that they are
/// `serve … --vm <vm> …`.
pub fn read_args(dir: &Path, vm: &str) -> Result<Vec<String>, UnitError> {
    pageless_pool::check_name(vm)?;
    let path = args_path(dir, vm);
    let me = nix::unistd::geteuid().as_raw();
    let dir_meta = std::fs::symlink_metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
    trusted(dir, &dir_meta, me, true)?;
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    let meta = file.metadata().with_context(|| format!("stat {}", path.display()))?;
    trusted(&path, &meta, me, false)?;
    let mut text = String::new();
    (&mut file as &mut File)
        .take(MAX_ARGS_FILE)
        .read_to_string(&mut text)
        .with_context(|| format!("read {}", path.display()))?;
    let args: Vec<String> = text.lines().map(str::to_string).collect();
    let invalid = |why: &str| UnitError::Invalid { path: path.display().to_string(), why: why.into() };
    if args.first().map(String::as_str) != Some("serve") {
        return Err(invalid("it does not start with `serve`"));
    }
    let vms: Vec<&String> = args.windows(2).filter(|w| w[0] == "--vm").map(|w| &w[1]).collect();
    if vms.len() != 1 || vms[0] != vm || args.iter().any(|a| a.starts_with("--vm=")) {
        return Err(invalid(&format!("its arguments are not for VM {vm:?} (one `--vm {vm}`)")));
    }
    Ok(args)
}

/// Refuses a file (or directory) not owned by `me`, writable by group or others, or of the
/// wrong type.
fn trusted(path: &Path, meta: &std::fs::Metadata, me: u32, dir: bool) -> Result<(), UnitError> {
    let untrusted = |why: String| UnitError::Untrusted { path: path.display().to_string(), why };
    if dir && !meta.is_dir() {
        return Err(untrusted("not a directory".into()));
    }
    if !dir && !meta.is_file() {
        return Err(untrusted("not a regular file".into()));
    }
    if meta.uid() != me {
        return Err(untrusted(format!("owned by uid {}, not {me}", meta.uid())));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(untrusted(format!("mode {mode:04o} lets others write it")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(vm: &str) -> Vec<String> {
        ["serve", "--vm", vm, "--size", "268435456", "--pool", "dir:/dev/shm/my pool", "--allow-uid", "64055"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn unit_names_are_escaped_like_systemd_escape() {
        assert_eq!(template_unit_name("web1"), "pageless@web1.service");
        assert_eq!(template_unit_name("a b-c.d"), "pageless@a\\x20b\\x2dc.d.service");
        assert_eq!(template_unit_name("x$(id)'\""), "pageless@x\\x24\\x28id\\x29\\x27\\x22.service");
        assert_eq!(systemd_escape("ünï"), "\\xc3\\xbcn\\xc3\\xaf");
        assert_eq!(systemd_escape("a\\b"), "a\\x5cb");
    }

    #[test]
    fn args_round_trip_one_per_line_private() {
        let dir = tempfile::tempdir().unwrap();
        let units = dir.path().join("units");
        let vm = "web 1; rm -rf ~ $(id)";
        assert!(matches!(write_args(&units, "../etc/x", &args("../etc/x")), Err(UnitError::Name(_))));
        assert!(matches!(read_args(&units, ".hidden"), Err(UnitError::Name(_))));
        let path = write_args(&units, vm, &args(vm)).unwrap();
        assert_eq!(path, units.join(format!("{vm}.args")));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!(
                "serve\n--vm\n{vm}\n--size\n268435456\n--pool\ndir:/dev/shm/my pool\n--allow-uid\n64055\n"
            )
        );
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&units).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(read_args(&units, vm).unwrap(), args(vm));
        // Rewritten in place for the next start, no leftover temporary file.
        write_args(&units, vm, &args(vm)).unwrap();
        let names: Vec<_> = std::fs::read_dir(&units).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(format!("{vm}.args"))]);
        remove_args(&units, vm);
        assert!(!path.exists());
        remove_args(&units, vm);
    }

    /// What the hook writes for a plan is what `pageless serve-unit` parses back as that plan's
    /// `pageless serve`, values with spaces and shell characters intact.
    #[test]
    fn hook_plan_round_trips_to_serve() {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let vm = "web 1$(touch x)";
        std::fs::write(
            dir.path().join(format!("{vm}.toml")),
            "size = \"512M\"\npool = \"dir:/dev/shm/a b\"\nallow_uid = [1000, 1001]\nprefault = true\nconsumer_timeout = 7\n\
             [[vhost_user]]\nname = \"disk0\"\nbackend = \"/run/q sd/d.sock\"\n",
        )
        .unwrap();
        let plan = crate::hook::owner_plan(vm, dir.path(), "", Path::new("/nonexistent"))
            .unwrap()
            .expect("a pageless VM");
        let units = dir.path().join("units");
        write_args(&units, vm, &plan.serve_args()).unwrap();
        let args = read_args(&units, vm).unwrap();
        assert_eq!(args, plan.serve_args());
        let cli =
            crate::cli::Cli::try_parse_from(std::iter::once("pageless".to_string()).chain(args)).unwrap();
        let crate::cli::Command::Serve {
            vm: served,
            size,
            pool,
            run_dir,
            prefault,
            allow_uids,
            vhost_user,
            consumer_timeout,
            ..
        } = cli.command
        else {
            panic!("not serve: {:?}", cli.command);
        };
        assert_eq!(served, vm);
        assert_eq!(size, Some(512 << 20));
        assert_eq!(pool.to_string(), "dir:/dev/shm/a b");
        assert_eq!(run_dir.run_dir, Path::new(crate::DEFAULT_RUN_DIR));
        assert!(prefault);
        assert_eq!(allow_uids, [1000, 1001]);
        assert_eq!(vhost_user.len(), 1);
        assert_eq!(consumer_timeout, 7);
    }

    #[test]
    fn newlines_cannot_smuggle_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let mut bad = args("vm1");
        bad[6] = "memfd\n--remove-on-exit".into();
        let e = write_args(dir.path(), "vm1", &bad).unwrap_err();
        assert!(matches!(e, UnitError::BadArgument { .. }), "{e}");
        assert!(!args_path(dir.path(), "vm1").exists());
    }

    #[test]
    fn refuses_files_for_another_vm_or_not_serve() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        // vm2's arguments in vm1's file: a unit pageless@vm1 must not become vm2's owner.
        std::fs::write(args_path(dir.path(), "vm1"), args("vm2").join("\n")).unwrap();
        let e = read_args(dir.path(), "vm1").unwrap_err();
        assert!(e.to_string().contains("not for VM \"vm1\""), "{e}");
        let mut two = args("vm1");
        two.extend(["--vm=vm2".to_string()]);
        std::fs::write(args_path(dir.path(), "vm1"), two.join("\n")).unwrap();
        assert!(matches!(read_args(dir.path(), "vm1"), Err(UnitError::Invalid { .. })));
        let mut status = args("vm1");
        status[0] = "stop".into();
        std::fs::write(args_path(dir.path(), "vm1"), status.join("\n")).unwrap();
        let e = read_args(dir.path(), "vm1").unwrap_err();
        assert!(e.to_string().contains("does not start with `serve`"), "{e}");
        assert!(matches!(read_args(dir.path(), "absent"), Err(UnitError::Io(_))));
    }

    #[test]
    fn refuses_files_others_may_write() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let path = write_args(dir.path(), "vm1", &args("vm1")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o622)).unwrap();
        let e = read_args(dir.path(), "vm1").unwrap_err();
        assert!(e.to_string().contains("mode 0622 lets others write it"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = read_args(dir.path(), "vm1").unwrap_err();
        assert!(matches!(e, UnitError::Untrusted { .. }), "{e}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        // A symlink in place of the file (to a file the reader owns) is not followed.
        std::fs::rename(&path, dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), &path).unwrap();
        assert!(matches!(read_args(dir.path(), "vm1"), Err(UnitError::Io(_))));
    }
}
