//! What `pageless qemu` records about the QEMU it runs, and what `pageless update save` writes
//! next to the saved device state.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `<run-dir>/<vm>.qemu.json`: how `pageless qemu` ran the VM's QEMU.
pub fn qemu_record_path(run_dir: &Path, vm: &str) -> PathBuf {
    run_dir.join(format!("{vm}.qemu.json"))
}

/// `<run-dir>/<vm>.qmp`: the QMP monitor `pageless qemu` gives the VM's QEMU.
pub fn qmp_socket_path(run_dir: &Path, vm: &str) -> PathBuf {
    run_dir.join(format!("{vm}.qmp"))
}

/// `<state-dir>/<vm>/`: one VM's saved state.
pub fn vm_state_dir(state_dir: &Path, vm: &str) -> PathBuf {
    state_dir.join(vm)
}

/// The saved state's description in the VM's state directory.
pub const SAVED_FILE: &str = "update.json";
/// QEMU's migration stream (device state) in the VM's state directory.
pub const STATE_FILE: &str = "state";
/// What [`SAVED_FILE`] is renamed to once restored, so that it is never loaded twice.
pub const RESTORED_FILE: &str = "restored.json";
/// The format of [`SavedState`].
pub const SAVED_FORMAT: u32 = 1;

/// How `pageless qemu` ran the VM's QEMU: enough to run it again after the host's reboot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuRecord {
    /// The VM.
    pub vm: String,
    /// The owner's run directory (`pageless qemu --run-dir`).
    pub run_dir: PathBuf,
    /// The QEMU binary, as given.
    pub program: String,
    /// QEMU's arguments as given to `pageless qemu`, before it replaced the RAM backends.
    pub args: Vec<String>,
    /// The working directory QEMU ran in (relative paths in `args` are relative to it).
    pub cwd: PathBuf,
    /// QEMU's QMP monitor socket.
    pub qmp: PathBuf,
    /// QEMU's process id (`pageless qemu` execs QEMU in its own process).
    pub pid: u32,
}

/// How the VM's owner ran: `pageless serve` arguments (after the program name) and directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRecord {
    /// `serve --vm … …`.
    pub args: Vec<String>,
    /// Its working directory.
    pub cwd: PathBuf,
}

/// One memory file the guest's RAM lives in, which must be there again after the reboot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedCell {
    /// The cell id (0 for a `--size` VM).
    pub id: u32,
    /// The pool, as the owner was given it.
    pub pool: String,
    /// The filesystem: `tmpfs`, `hugetlbfs`, `pagelessfs`.
    pub memory: String,
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// `<state-dir>/<vm>/update.json`: one saved VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedState {
    /// [`SAVED_FORMAT`].
    pub format: u32,
    /// The VM.
    pub vm: String,
    /// Unix time of the save.
    pub saved_at: u64,
    /// `pageless --version` of the saving binary.
    pub pageless_version: String,
    /// QEMU's version as its monitor reported it (`query-version`), e.g. `10.0.2`.
    pub qemu_version: String,
    /// How QEMU ran.
    pub qemu: QemuRecord,
    /// How the owner ran.
    pub owner: OwnerRecord,
    /// The memory files.
    pub cells: Vec<SavedCell>,
    /// The guest's RAM in bytes.
    pub ram_size: u64,
    /// The state file's size in bytes.
    pub state_size: u64,
    /// FNV-1a 64 of the state file, hex: a state file changed since the save is refused.
    pub state_hash: String,
    /// Whether the guest was running when saved (it runs again after the restore).
    pub was_running: bool,
    /// Unix time (µs precision) QEMU paused the guest, from its STOP event.
    pub paused_at: Option<f64>,
    /// The user QEMU ran as: restore runs it as the same user only.
    pub qemu_uid: u32,
    /// The user the owner ran as: restore runs it as the same user only.
    pub owner_uid: u32,
}

/// FNV-1a 64 of everything `reader` gives, as 16 hex digits.
pub fn fnv1a64(mut reader: impl std::io::Read) -> std::io::Result<String> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for &byte in &buffer[..n] {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    Ok(format!("{hash:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_values() {
        assert_eq!(fnv1a64(&b""[..]).unwrap(), "cbf29ce484222325");
        assert_eq!(fnv1a64(&b"a"[..]).unwrap(), "af63dc4c8601ec8c");
        assert_ne!(fnv1a64(&b"state"[..]).unwrap(), fnv1a64(&b"statf"[..]).unwrap());
    }

    #[test]
    fn paths() {
        let run = Path::new("/run/pageless");
        assert_eq!(qemu_record_path(run, "web1"), Path::new("/run/pageless/web1.qemu.json"));
        assert_eq!(qmp_socket_path(run, "web1"), Path::new("/run/pageless/web1.qmp"));
        assert_eq!(
            vm_state_dir(Path::new("/var/lib/pageless/update"), "web1"),
            Path::new("/var/lib/pageless/update/web1")
        );
    }
}
