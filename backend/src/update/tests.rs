use super::*;
use pageless_protocol::control::CellStatus;

fn saved(vm: &str, state: &[u8]) -> SavedState {
    SavedState {
        format: SAVED_FORMAT,
        vm: vm.into(),
        saved_at: 1,
        pageless_version: "0.1.0".into(),
        qemu_version: "10.0.2".into(),
        qemu: QemuRecord {
            vm: vm.into(),
            run_dir: "/run/pageless".into(),
            program: "qemu-system-x86_64".into(),
            args: vec!["-m".into(), "512M".into()],
            cwd: "/".into(),
            qmp: format!("/run/pageless/{vm}.qmp").into(),
            pid: 42,
        },
        owner: OwnerRecord { args: vec!["serve".into(), "--vm".into(), vm.into()], cwd: "/".into() },
        cells: vec![SavedCell {
            id: 0,
            pool: "dir:/dev/shm/p".into(),
            memory: "tmpfs".into(),
            path: format!("/dev/shm/p/{vm}").into(),
            size: 512 << 20,
        }],
        ram_size: 512 << 20,
        state_size: state.len() as u64,
        state_hash: fnv1a64(state).unwrap(),
        was_running: true,
        paused_at: Some(1.5),
        qemu_uid: 0,
        owner_uid: 0,
    }
}

fn write_saved(state_dir: &Path, vm: &str, saved: &SavedState, state: &[u8]) {
    let dir = vm_state_dir(state_dir, vm);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(SAVED_FILE), serde_json::to_vec(saved).unwrap()).unwrap();
    std::fs::write(dir.join(STATE_FILE), state).unwrap();
}

#[test]
fn a_good_state_loads() {
    let dir = tempfile::tempdir().unwrap();
    let state = b"QEVM device state";
    write_saved(dir.path(), "web1", &saved("web1", state), state);
    assert_eq!(load_saved(dir.path(), "web1").unwrap(), saved("web1", state));
}

#[test]
fn missing_corrupt_foreign_and_reused_states_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = b"QEVM device state";
    let err = load_saved(dir.path(), "none").unwrap_err();
    assert!(matches!(err, UpdateError::NoState { .. }), "{err}");
    assert!(err.to_string().contains("pageless update save --vm none"), "{err}");

    // The state file changed by one byte.
    write_saved(dir.path(), "flip", &saved("flip", state), b"QEVM device statf");
    let err = load_saved(dir.path(), "flip").unwrap_err().to_string();
    assert!(err.contains("changed since the save") && err.contains("nothing was started"), "{err}");

    // Truncated.
    write_saved(dir.path(), "short", &saved("short", state), b"QEVM");
    assert!(load_saved(dir.path(), "short").unwrap_err().to_string().contains("corrupt"));

    // Missing state file.
    write_saved(dir.path(), "gone", &saved("gone", state), state);
    std::fs::remove_file(vm_state_dir(dir.path(), "gone").join(STATE_FILE)).unwrap();
    assert!(load_saved(dir.path(), "gone").unwrap_err().to_string().contains("the state file"));

    // The description is not JSON.
    write_saved(dir.path(), "junk", &saved("junk", state), state);
    std::fs::write(vm_state_dir(dir.path(), "junk").join(SAVED_FILE), b"{\"format\": 1, ").unwrap();
    assert!(load_saved(dir.path(), "junk").unwrap_err().to_string().contains("is corrupt"));

    // Another VM's state copied into this VM's directory.
    write_saved(dir.path(), "mine", &saved("theirs", state), state);
    let err = load_saved(dir.path(), "mine").unwrap_err().to_string();
    assert!(err.contains("saved for VM \"theirs\""), "{err}");

    // Another format.
    let mut future = saved("future", state);
    future.format = 99;
    write_saved(dir.path(), "future", &future, state);
    assert!(load_saved(dir.path(), "future").unwrap_err().to_string().contains("format 99"));

    // Writable by others: refused (restore would run what it says).
    write_saved(dir.path(), "open", &saved("open", state), state);
    let open = vm_state_dir(dir.path(), "open").join(SAVED_FILE);
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let err = load_saved(dir.path(), "open").unwrap_err().to_string();
    assert!(err.contains("only this user"), "{err}");

    // Restored once: never twice.
    write_saved(dir.path(), "twice", &saved("twice", state), state);
    let vm_dir = vm_state_dir(dir.path(), "twice");
    std::fs::rename(vm_dir.join(SAVED_FILE), vm_dir.join(RESTORED_FILE)).unwrap();
    let err = load_saved(dir.path(), "twice").unwrap_err().to_string();
    assert!(err.contains("restored already"), "{err}");
}

#[test]
fn memfd_memory_is_refused() {
    let status = VmStatus {
        vm: "m".into(),
        pool: "memfd".into(),
        memory: "memfd".into(),
        size: 1 << 30,
        ..VmStatus::default()
    };
    let err = memory_files("m", &status).unwrap_err().to_string();
    assert!(
        err.contains("nothing was paused") && err.contains("memfd") && err.contains("cannot survive"),
        "{err}"
    );
    let cells = VmStatus {
        cells: vec![
            CellStatus { id: 0, path: Some("/mnt/p/m.cell0".into()), size: 1 << 29, ..CellStatus::default() },
            CellStatus {
                id: 1,
                path: None,
                pool: "memfd@node=1".into(),
                size: 1 << 29,
                ..CellStatus::default()
            },
        ],
        ..status.clone()
    };
    assert!(memory_files("m", &cells).unwrap_err().to_string().contains("cell 1"));
    let dir = VmStatus { path: Some("/mnt/p/m".into()), memory: "pagelessfs".into(), ..status };
    let files = memory_files("m", &dir).unwrap();
    assert_eq!(files[0].path, Path::new("/mnt/p/m"));
}

#[test]
fn qemu_version_from_query_version() {
    let value = json!({"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": "Debian"});
    assert_eq!(version_of(&value), "10.0.2");
}

#[test]
fn only_the_saved_files_re_attached_will_do() {
    let saved = saved("web1", b"x");
    let mut status =
        VmStatus { pid: 7, path: Some("/dev/shm/p/web1".into()), reattached: true, ..VmStatus::default() };
    assert!(check_reattached("web1", &saved, &status).is_ok());
    status.reattached = false;
    let err = check_reattached("web1", &saved, &status).unwrap_err().to_string();
    assert!(err.contains("allocated anew") && err.contains("RAM is not there"), "{err}");
    status.reattached = true;
    status.path = Some("/dev/shm/other/web1".into());
    assert!(check_reattached("web1", &saved, &status).is_err());
}
