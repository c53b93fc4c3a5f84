//! The hook's systemd path, without a running systemd: a stand-in `systemctl` on `PATH` plays
//! systemd for `pageless@.service` (contrib/systemd): `start` unescapes the instance as `%I`
//! does (`systemd-escape -u --instance`) and runs the unit's command, `pageless serve-unit
//! <vm>`. The hook must write the owner's arguments for it, start the unit, see the owner
//! answer, and on `release` stop the unit and remove the arguments.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use pageless::hook::{self, HookOptions};

const FAKE_SYSTEMCTL: &str = r#"#!/bin/sh
# systemctl as the hook calls it, for pageless@.service only.
echo "$*" >>"$FAKE_DIR/calls"
case "$1" in
show)
    case "$2" in
    --property=LoadState)
        case "$4" in pageless@*.service) echo loaded ;; *) echo not-found ;; esac ;;
    --property=MainPID)
        cat "$FAKE_DIR/$4.pid" 2>/dev/null || echo 0 ;;
    esac ;;
start)
    vm=$(systemd-escape -u --instance "$2") || exit 1
    setsid "$PAGELESS" serve-unit "$vm" --args-dir "$ARGS_DIR" </dev/null >/dev/null 2>&1 &
    echo $! >"$FAKE_DIR/$2.pid" ;;
stop)
    ;;
esac
"#;

#[test]
fn hook_starts_and_stops_pageless_at_vm_service() {
    if std::process::Command::new("systemd-escape").arg("x").output().is_err() {
        // Plain `cargo test` on a machine without systemd's tools; scripts/test.sh requires it.
        assert!(
            std::env::var("PAGELESS_TEST_ENV").map_or(true, |v| v != "require"),
            "hook_systemd needs systemd-escape (apt-get install systemd)"
        );
        eprintln!("SKIPPED hook_systemd: needs systemd-escape on PATH");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&fake).unwrap();
    std::fs::create_dir(&bin).unwrap();
    let systemctl = bin.join("systemctl");
    std::fs::write(&systemctl, FAKE_SYSTEMCTL).unwrap();
    std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let units = dir.path().join("units");
    let run = dir.path().join("run");
    let config = dir.path().join("vms");
    std::fs::create_dir(&config).unwrap();
    let vm = "web 1-$(id)";
    std::fs::write(
        config.join(format!("{vm}.toml")),
        format!(
            "size = \"16M\"\nrun_dir = \"{}\"\nallow_uid = [65534]\nconsumer_timeout = 1\n",
            run.display()
        ),
    )
    .unwrap();
    // One test in this binary: nothing else reads the environment meanwhile.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin.clone()];
    dirs.extend(std::env::split_paths(&path));
    std::env::set_var("PATH", std::env::join_paths(dirs).unwrap());
    std::env::set_var("FAKE_DIR", &fake);
    std::env::set_var("ARGS_DIR", &units);
    std::env::set_var("PAGELESS", env!("CARGO_BIN_EXE_pageless"));

    let options = |operation: &str, subop: &str| HookOptions {
        vm: vm.into(),
        operation: operation.into(),
        subop: subop.into(),
        config_dir: config.clone(),
        qemu_conf: "/nonexistent".into(),
        host_config: "/nonexistent".into(),
        pageless: env!("CARGO_BIN_EXE_pageless").into(),
        systemd: true,
        unit_args_dir: units.clone(),
        apparmor_dir: "/nonexistent".into(),
    };
    let xml = format!("<domain><name>{vm}</name></domain>");
    hook::run(&options("prepare", "begin"), &mut xml.as_bytes()).expect("prepare begin");

    let unit = "pageless@web\\x201\\x2d\\x24\\x28id\\x29.service";
    let calls = std::fs::read_to_string(fake.join("calls")).unwrap();
    assert!(calls.lines().any(|l| l == format!("start {unit}")), "{calls}");
    assert!(!calls.contains("pageless-"), "the transient unit is only the fallback: {calls}");
    let args = std::fs::read_to_string(units.join(format!("{vm}.args"))).unwrap();
    assert!(args.starts_with(&format!("serve\n--vm\n{vm}\n--size\n16777216\n")), "{args}");
    assert!(args.contains("\n--allow-uid\n65534\n"), "{args}");
    assert_eq!(std::fs::metadata(&units).unwrap().permissions().mode() & 0o777, 0o700);
    // The owner the unit runs answers with the pid systemd reports.
    let pid: u32 = std::fs::read_to_string(fake.join(format!("{unit}.pid"))).unwrap().trim().parse().unwrap();
    let client =
        pageless_protocol::control::ControlClient::connect(&run.join(format!("{vm}.sock")), "test").unwrap();
    assert_eq!(client.owner_pid(), pid);
    drop(client);
    let log = std::fs::read_to_string(run.join(format!("{vm}.log"))).unwrap();
    assert!(log.contains("--- pageless hook: starting the owner"), "{log}");

    hook::run(&options("release", "end"), &mut xml.as_bytes()).expect("release end");
    let calls = std::fs::read_to_string(fake.join("calls")).unwrap();
    assert!(calls.lines().any(|l| l == format!("stop --no-block {unit}")), "{calls}");
    assert!(!units.join(format!("{vm}.args")).exists(), "the arguments are left");
    assert!(gone(pid), "the owner still runs after release");
}

/// Whether process `pid` has exited (gone, or a zombie its new parent has not reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(Path::new(&format!("/proc/{pid}/stat"))) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}
