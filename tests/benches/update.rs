//! Live update benchmark: `flock /tmp/pageless-vm.lock cargo bench -p pageless-tests --bench update`.
//!
//! One 1 GiB TCG guest on a directory pool (tmpfs) through `pageless qemu`, counting on its
//! console. Each round, alternating, against a baseline measured in the same run:
//! 1. **plain stop+start**: QMP `stop` (the guest pauses), `quit`, the same QEMU command line
//!    started again (with `-S`) on the same owner, QMP `cont`: downtime = QEMU's `RESUME` event
//!    − its `STOP` event. The guest boots afresh (what a restart without live update costs).
//! 2. **live update**: `pageless update save`, SIGKILL of QEMU and the owner (the reboot,
//!    without the kexec itself), `pageless update restore`: downtime = the restored QEMU's
//!    `RESUME` − the saved QEMU's `STOP`; the guest counts on.
//!
//! Prints the state file's bytes against the guest's RAM and both downtimes (median of
//! [`RUNS`]). The kexec is not part of either: add the host's own `systemctl kexec` time.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pageless_tests::bins;
use pageless_tests::initramfs::Initramfs;
use pageless_tests::owner::Owner;
use pageless_tests::qmp::{self, Qmp};
use pageless_tests::vm::VmConfig;

const RUNS: usize = 3;
const VM: &str = "updbench";
const RAM: &str = "1G";

const COUNTING_GUEST: &str = r#"
n=0
while true; do n=$((n + 1)); echo "COUNT $n"; sleep 0.2; done
"#;

/// QEMU's monitor, connected while QEMU starts.
fn monitor(path: &Path, timeout: Duration) -> Qmp {
    qmp::connect(path, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `command` (no arguments) on `qmp`, which must accept it.
fn qmp_run(qmp: &mut Qmp, command: &str) {
    if let Err(e) = qmp.execute(command, serde_json::Value::Null) {
        panic!("{command}: {e}");
    }
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn pageless(args: &[&str]) -> Output {
    let output = Command::new(bins::pageless()).args(args).output().expect("run pageless");
    assert!(
        output.status.success(),
        "pageless {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The number after `phrase` in the output.
fn number_after(output: &Output, phrase: &str) -> f64 {
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_once(phrase)
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.trim_end_matches([';', ',', ')']).parse().ok())
        .unwrap_or_else(|| panic!("no `{phrase} N` in:\n{text}"))
}

/// The last `COUNT n` in a console log.
fn last_count(log: &Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once("COUNT ").and_then(|(_, n)| n.trim().parse().ok()))
        .next_back()
        .unwrap_or(0)
}

fn wait_count_above(log: &Path, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let last = last_count(log);
        if last > n {
            return last;
        }
        assert!(Instant::now() < deadline, "the guest does not count past {n} in {}", log.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts QEMU through `pageless qemu` with `-S`, console to `log`.
fn start_qemu(config: &VmConfig, log: &Path) -> Child {
    let mut args = config.command_line();
    args.push("-S".into());
    let file = std::fs::File::create(log).unwrap();
    Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("start QEMU")
}

fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
}

fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')) {
            return;
        }
        assert!(Instant::now() < deadline, "pid {pid} does not exit");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The bench's QEMU and owner processes, killed however the bench ends (a panic too): they
/// would otherwise live on, holding the VM lock file that `flock` handed down.
#[derive(Default)]
struct Cleanup {
    qemu: Option<u32>,
    owner: Option<u32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in [self.qemu, self.owner].into_iter().flatten() {
            kill(pid);
        }
    }
}

fn qemu_pid(run_dir: &Path) -> u32 {
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join(format!("{VM}.qemu.json"))).unwrap())
            .unwrap();
    record["pid"].as_u64().unwrap() as u32
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let state_dir = dir.path().join("state");
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let pool = format!("dir:{}", shm.path().display());
    let initrd = dir.path().join("initrd");
    Initramfs::new().init(COUNTING_GUEST).build(&initrd).unwrap();
    let mut config = VmConfig::new(VM, initrd);
    config.memory = RAM.into();
    config.through_pageless(&run_dir, Some(VM));
    let (run, state) = (run_dir.display().to_string(), state_dir.display().to_string());
    let qmp_path = run_dir.join(format!("{VM}.qmp"));

    let mut cleanup = Cleanup::default();
    let mut owner = Some(Owner::start(&run_dir, VM, &["--size", RAM, "--pool", &pool]));
    let mut owner_pid = owner.as_ref().unwrap().pid();
    cleanup.owner = Some(owner_pid);
    let mut log = dir.path().join("console-0.log");
    let mut child = Some(start_qemu(&config, &log));
    cleanup.qemu = child.as_ref().map(Child::id);
    qmp_run(&mut monitor(&qmp_path, Duration::from_secs(60)), "cont"); // dropped: disconnects
    wait_count_above(&log, 5);

    let (mut plain, mut update, mut save_wall, mut restore_wall, mut state_bytes) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut ram_bytes = 0;
    for round in 0..RUNS {
        // 1. Plain stop + start of the same VM.
        let pid = qemu_pid(&run_dir);
        let mut qmp = monitor(&qmp_path, Duration::from_secs(5));
        qmp_run(&mut qmp, "stop");
        let stopped = qmp.wait_event("STOP").expect("QEMU reports the pause");
        let _ = qmp.execute("quit", serde_json::Value::Null);
        if let Some(mut c) = child.take() {
            let _ = c.wait();
        }
        wait_gone(pid);
        log = dir.path().join(format!("console-{round}-plain.log"));
        child = Some(start_qemu(&config, &log));
        cleanup.qemu = child.as_ref().map(Child::id);
        let mut qmp = monitor(&qmp_path, Duration::from_secs(60));
        qmp_run(&mut qmp, "cont");
        let resumed = qmp.wait_event("RESUME").expect("QEMU reports the resume");
        plain.push(resumed - stopped);
        // QEMU's monitor serves one client at a time: leave it to `pageless update`.
        drop(qmp);
        wait_count_above(&log, 5);

        // 2. Live update: save, "reboot" (SIGKILL QEMU and the owner), restore.
        let started = Instant::now();
        let saved = pageless(&["update", "save", "--vm", VM, "--run-dir", &run, "--state-dir", &state]);
        save_wall.push(started.elapsed().as_secs_f64());
        let paused_at = number_after(&saved, "paused at ");
        let description: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(state_dir.join(VM).join("update.json")).unwrap())
                .unwrap();
        state_bytes.push(description["state_size"].as_f64().unwrap());
        ram_bytes = description["ram_size"].as_u64().unwrap();
        let pid = qemu_pid(&run_dir);
        kill(pid);
        if let Some(mut c) = child.take() {
            let _ = c.wait();
        }
        wait_gone(pid);
        match owner.take() {
            Some(mut o) => o.kill(),
            None => {
                kill(owner_pid);
                wait_gone(owner_pid);
            }
        }
        let before = last_count(&log);
        log = dir.path().join(format!("console-{round}-restored.log"));
        let log_arg = log.display().to_string();
        let started = Instant::now();
        let restored = pageless(&[
            "update",
            "restore",
            "--vm",
            VM,
            "--run-dir",
            &run,
            "--state-dir",
            &state,
            "--qemu-log",
            &log_arg,
        ]);
        restore_wall.push(started.elapsed().as_secs_f64());
        for line in [&saved, &restored].iter().flat_map(|o| {
            String::from_utf8_lossy(&o.stdout).into_owned().lines().map(String::from).collect::<Vec<_>>()
        }) {
            if line.contains(" saved ") || line.contains("running again") {
                eprintln!("  {line}");
            }
        }
        let resumed_at = number_after(&restored, "resumed at ");
        update.push(resumed_at - paused_at);
        owner_pid = number_after(&restored, "owner pid ") as u32;
        cleanup.owner = Some(owner_pid);
        cleanup.qemu = Some(qemu_pid(&run_dir));
        wait_count_above(&log, before);
        assert_eq!(
            std::fs::read_to_string(&log)
                .unwrap()
                .lines()
                .filter_map(|l| l.split_once("COUNT "))
                .next()
                .map(|(_, n)| n.trim().parse::<u64>().unwrap()),
            Some(before + 1),
            "the guest counts on where it stopped"
        );
        eprintln!(
            "round {round}: plain stop+start {:.3} s, live update {:.3} s (save {:.3} s, restore {:.3} s wall), state {} bytes",
            plain[round], update[round], save_wall[round], restore_wall[round], state_bytes[round]
        );
    }
    drop(cleanup);

    let state = median(state_bytes);
    let (plain, update) = (median(plain), median(update));
    println!("live update of a {RAM} guest (TCG, dir pool on tmpfs), median of {RUNS}:");
    println!("| metric | live update | baseline | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| state bytes written vs guest RAM | {state:.0} | {ram_bytes} | {:.5} ({:.3}%) |",
        state / ram_bytes as f64,
        state * 100.0 / ram_bytes as f64
    );
    println!(
        "| downtime, pause → guest runs again (s), vs plain QEMU stop+start | {update:.3} | {plain:.3} | {:.3} |",
        update / plain
    );
    println!("| `pageless update save` wall time (s) | {:.3} | | |", median(save_wall));
    println!("| `pageless update restore` wall time (s) | {:.3} | | |", median(restore_wall));
    println!(
        "The kexec itself is not included (not run on this host): add the host's `systemctl kexec` time."
    );
}
