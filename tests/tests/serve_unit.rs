//! `pageless serve-unit VM`, what `pageless@VM.service` runs: it becomes the owner with the
//! arguments the hook wrote to `<args-dir>/<VM>.args`, its output in `<run-dir>/<VM>.log`; and
//! it refuses an arguments file someone else could have written, or one for another VM,
//! before serving anything.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pageless_tests::bins;

fn write_args(dir: &Path, vm: &str, args: &[&str], mode: u32) {
    let path = dir.join(format!("{vm}.args"));
    std::fs::write(&path, args.join("\n") + "\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn serve_unit(args_dir: &Path, vm: &str) -> Child {
    Command::new(bins::pageless())
        .args(["serve-unit", vm, "--args-dir"])
        .arg(args_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_unit_runs_the_owner_from_the_hooks_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units");
    std::fs::create_dir(&units).unwrap();
    std::fs::set_permissions(&units, std::fs::Permissions::from_mode(0o700)).unwrap();
    let run = dir.path().join("run dir");
    let run_str = run.to_str().unwrap();
    // A name with a space and shell characters: one argument all the way.
    let vm = "unit vm$(x)";
    write_args(
        &units,
        vm,
        &["serve", "--vm", vm, "--size", "16M", "--run-dir", run_str, "--consumer-timeout", "1"],
        0o600,
    );
    let owner = serve_unit(&units, vm);
    let socket = run.join(format!("{vm}.sock"));
    wait_for("the owner's socket", || socket.exists());
    let status = Command::new(bins::pageless())
        .args(["status", "--json", "--vm", vm, "--run-dir", run_str])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json[0]["vm"], vm, "{json}");
    assert_eq!(json[0]["size"], 16 << 20, "{json}");
    assert_eq!(json[0]["pid"], owner.id(), "{json}");
    let stop =
        Command::new(bins::pageless()).args(["stop", "--vm", vm, "--run-dir", run_str]).output().unwrap();
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    let exited = owner.wait_with_output().unwrap();
    assert!(exited.status.success(), "{}", exited.status);
    // Its output went to the log the hook quotes, not to the unit's stdout/stderr.
    assert!(exited.stdout.is_empty() && exited.stderr.is_empty(), "{exited:?}");
    let log = std::fs::read_to_string(run.join(format!("{vm}.log"))).unwrap();
    assert!(log.contains(vm) && !log.trim().is_empty(), "{log}");
}

#[test]
fn serve_unit_refuses_untrusted_or_foreign_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units");
    std::fs::create_dir(&units).unwrap();
    std::fs::set_permissions(&units, std::fs::Permissions::from_mode(0o700)).unwrap();
    let run = dir.path().join("run");
    let run_str = run.to_str().unwrap();
    let refused = |vm: &str, needle: &str| {
        let out = serve_unit(&units, vm).wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(needle), "{vm}: expected {needle:?}:\n{stderr}");
        assert!(!run.join(format!("{vm}.sock")).exists(), "{vm} served");
    };
    // Writable by others: anyone could have chosen the owner's pool and users.
    write_args(&units, "vm1", &["serve", "--vm", "vm1", "--size", "16M", "--run-dir", run_str], 0o666);
    refused("vm1", "lets others write it");
    // Another VM's arguments under vm1's name.
    write_args(&units, "vm1", &["serve", "--vm", "vm2", "--size", "16M", "--run-dir", run_str], 0o600);
    refused("vm1", "not for VM \"vm1\"");
    // Not `serve`.
    write_args(&units, "vm1", &["stop", "--vm", "vm1", "--run-dir", run_str], 0o600);
    refused("vm1", "does not start with `serve`");
    // A bad serve argument is clap's error, naming the file.
    write_args(&units, "vm1", &["serve", "--vm", "vm1", "--size", "lots", "--run-dir", run_str], 0o600);
    refused("vm1", "vm1.args");
    // Names that are not file names, and a missing file.
    refused("../vm1", "invalid");
    refused("absent", "absent.args");
}
