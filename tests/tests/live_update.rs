//! `pageless update save` / `restore` (QEMU cpr-reboot) across a simulated host reboot: a guest
//! on a directory pool with a vhost-user disk through the relay counts on its console and on its
//! disk; it is saved, every process of the VM (owner, QEMU, disk backend) is killed with
//! SIGKILL, and after the restore it counts on from where it stopped (same boot, its RAM token
//! still there, its disk writes landing). Also the refusals: memfd memory, no owner, no
//! monitor, a corrupt or missing state.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pageless_protocol::control::ControlClient;
use pageless_tests::backends::{disk_image_with_token, image_sector_line, Backend};
use pageless_tests::bins;
use pageless_tests::env::{require_env, Need, QEMU, QEMU_STORAGE_DAEMON};
use pageless_tests::guests::token_of;
use pageless_tests::initramfs::Initramfs;
use pageless_tests::kernel::Kernel;
use pageless_tests::owner::Owner;
use pageless_tests::vm::{Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(30);

/// Counts on the console (`COUNT n boot=<boot id> up=<uptime>`) and writes each count to
/// sector 8 of its vhost-user disk (`COUNT-DISK n`, fsync), without being told to: after the
/// restore nobody types on its console.
const COUNTING_GUEST: &str = r#"
for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
boot=$(cat /proc/sys/kernel/random/boot_id)
ram="PAGELESS-TOKEN-$(rand_hex 12)"
echo "$ram" > /run/token
echo "GUEST-TOKEN $ram"
echo GUEST-READY
n=0
while true; do
    n=$((n + 1))
    if printf 'COUNT-DISK %d\n' $n | dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null; then d=ok; else d=failed; fi
    echo "COUNT $n boot=$boot up=$(cut -d' ' -f1 /proc/uptime) disk=$d"
    sleep 0.2
done
"#;

/// One `COUNT` console line.
#[derive(Clone, Debug, PartialEq)]
struct Count {
    n: u64,
    boot: String,
    uptime: f64,
    disk: String,
}

fn counts(text: &str) -> Vec<Count> {
    text.lines()
        .filter_map(|line| {
            let rest = &line[line.find("COUNT ")? + 6..];
            let mut words = rest.split_whitespace();
            let n = words.next()?.parse().ok()?;
            let boot = words.next()?.strip_prefix("boot=")?.to_string();
            let uptime = words.next()?.strip_prefix("up=")?.parse().ok()?;
            let disk = words.next()?.strip_prefix("disk=")?.to_string();
            Some(Count { n, boot, uptime, disk })
        })
        .collect()
}

fn pageless(args: &[&str]) -> Output {
    let output = Command::new(bins::pageless()).args(args).output().expect("run pageless");
    eprintln!(
        "$ pageless {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Waits until `file` holds a `COUNT` line for which `good` holds; returns it.
fn wait_for_count(file: &Path, timeout: Duration, good: impl Fn(&Count) -> bool) -> Count {
    let deadline = Instant::now() + timeout;
    loop {
        let content = std::fs::read_to_string(file).unwrap_or_default();
        if let Some(count) = counts(&content).into_iter().find(|c| good(c)) {
            return count;
        }
        assert!(
            Instant::now() < deadline,
            "no such COUNT line in {} within {timeout:?}:\n{content}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether an owner answers on the VM's socket.
fn owner_answers(run_dir: &Path, vm: &str) -> bool {
    ControlClient::connect(&run_dir.join(format!("{vm}.sock")), "test").is_ok()
}

fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
}

/// The restored processes (not our children): killed by pid at the end, even on failure.
struct Restored {
    run_dir: PathBuf,
    vm: String,
}

impl Drop for Restored {
    fn drop(&mut self) {
        let record = self.run_dir.join(format!("{}.qemu.json", self.vm));
        if let Some(pid) = std::fs::read_to_string(record)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["pid"].as_u64())
        {
            kill(pid as u32);
        }
        if let Ok(client) = ControlClient::connect(&self.run_dir.join(format!("{}.sock", self.vm)), "test") {
            kill(client.owner_pid());
        }
    }
}

#[test]
fn guest_continues_after_save_kill_and_restore() {
    if !require_env(
        "guest_continues_after_save_kill_and_restore",
        &[QEMU, Need::Kernel, Need::Busybox, QEMU_STORAGE_DAEMON],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let state_dir = dir.path().join("state");
    let image = dir.path().join("disk.img");
    disk_image_with_token(&image, 64 << 20);
    let qsd_socket = dir.path().join("qsd.sock");
    let mut qsd = Backend::storage_daemon(&image, &qsd_socket);

    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let pool = format!("dir:{}", shm.path().display());
    let relay_arg = format!("disk0={}", qsd_socket.display());
    let mut owner =
        Owner::start(&run_dir, "upd", &["--size", "512M", "--pool", &pool, "--vhost-user", &relay_arg]);
    let before = owner.status();

    let initrd = dir.path().join("initrd");
    Initramfs::new()
        .kernel_modules(&Kernel::get(), &["virtio_blk"])
        .init(COUNTING_GUEST)
        .build(&initrd)
        .unwrap();
    let mut config = VmConfig::new("live-update", initrd);
    config.through_pageless(&run_dir, Some("upd")).vhost_user(
        "disk0",
        &run_dir.join("upd/disk0.sock"),
        "vhost-user-blk-pci,num-queues=1",
        true,
    );
    let mut vm = Vm::start(&config);
    let token = token_of(&vm.wait_for("GUEST-TOKEN", BOOT).expect("the guest boots"));
    vm.wait_for("COUNT 3 ", STEP).expect("the guest counts");
    assert!(!owner.find(&token).is_empty(), "the token is in the owner's memory");
    assert!(run_dir.join("upd.qmp").exists(), "pageless qemu gave QEMU its monitor");

    let state = state_dir.display().to_string();
    let run = run_dir.display().to_string();

    // A save that QEMU cannot write (its state file's name is taken by a directory) fails and
    // leaves the guest running.
    let blocker = state_dir.join("upd/state.partial");
    std::fs::create_dir_all(&blocker).unwrap();
    let failed = pageless(&["update", "save", "--vm", "upd", "--run-dir", &run, "--state-dir", &state]);
    assert!(!failed.status.success());
    assert!(text(&failed).contains("saving the device state failed"), "{}", text(&failed));
    assert!(text(&failed).contains("the guest runs on"), "{}", text(&failed));
    let seen = counts(&vm.console()).last().unwrap().n;
    vm.wait_for(&format!("COUNT {} ", seen + 2), STEP).expect("the guest runs on after a failed save");
    assert!(!state_dir.join("upd/update.json").exists());
    std::fs::remove_dir(&blocker).unwrap();

    let saved = pageless(&["update", "save", "--vm", "upd", "--run-dir", &run, "--state-dir", &state]);
    assert!(saved.status.success(), "save failed: {}", text(&saved));
    // Paused: nothing more is counted.
    std::thread::sleep(Duration::from_millis(1000));
    let paused = counts(&vm.console());
    std::thread::sleep(Duration::from_millis(1000));
    let last = counts(&vm.console()).last().cloned().expect("COUNT lines");
    assert_eq!(paused.last(), Some(&last), "the guest is paused after the save");
    assert_eq!(last.disk, "ok");

    let description: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("upd/update.json")).unwrap()).unwrap();
    let state_size = std::fs::metadata(state_dir.join("upd/state")).unwrap().len();
    let ram = description["ram_size"].as_u64().unwrap();
    eprintln!(
        "state file {state_size} bytes for {ram} bytes of guest RAM ({:.3}%)",
        state_size as f64 * 100.0 / ram as f64
    );
    assert_eq!(ram, 512 << 20);
    assert_eq!(description["state_size"].as_u64(), Some(state_size));
    assert!(state_size * 100 < ram, "the state file holds no RAM: {state_size} bytes");

    // The host "reboots": every process of the VM dies; the memory file stays.
    vm.kill();
    owner.kill();
    qsd.kill();
    assert!(!owner_answers(&run_dir, "upd"));
    // The operator restarts the device backend before the restore.
    let _qsd = Backend::storage_daemon(&image, &qsd_socket);

    // A state file changed by one byte: refused, nothing started.
    let state_file = state_dir.join("upd/state");
    let good = std::fs::read(&state_file).unwrap();
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x40;
    std::fs::write(&state_file, &bad).unwrap();
    let qemu_log = dir.path().join("qemu-restored.log");
    let log_arg = qemu_log.display().to_string();
    let restore_args = [
        "update",
        "restore",
        "--vm",
        "upd",
        "--run-dir",
        &run,
        "--state-dir",
        &state,
        "--qemu-log",
        &log_arg,
    ];
    let refused = pageless(&restore_args);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("changed since the save"), "{}", text(&refused));
    assert!(text(&refused).contains("nothing was started"), "{}", text(&refused));
    assert!(!owner_answers(&run_dir, "upd"), "no owner was started");
    assert!(!qemu_log.exists(), "no QEMU was started");
    std::fs::write(&state_file, &good).unwrap();

    // No state for this name.
    let missing = pageless(&["update", "restore", "--vm", "other", "--run-dir", &run, "--state-dir", &state]);
    assert!(!missing.status.success());
    assert!(text(&missing).contains("no saved state"), "{}", text(&missing));
    assert!(!owner_answers(&run_dir, "other"));

    let _restored = Restored { run_dir: run_dir.clone(), vm: "upd".into() };
    let restored = pageless(&restore_args);
    assert!(restored.status.success(), "restore failed: {}", text(&restored));

    // It counts on from where it stopped: same boot, later uptime, the next number.
    let next = wait_for_count(&qemu_log, STEP, |c| c.n > last.n);
    eprintln!("last count before the save: {last:?}; first after the restore: {next:?}");
    assert_eq!(next.n, last.n + 1, "the counter continues");
    assert_eq!(next.boot, last.boot, "the guest did not boot again");
    assert!(next.uptime >= last.uptime, "its uptime goes on: {next:?} after {last:?}");
    let later = wait_for_count(&qemu_log, STEP, |c| c.n >= last.n + 5);
    assert_eq!(later.disk, "ok", "the guest's disk works after the restore");
    let all_after = counts(&std::fs::read_to_string(&qemu_log).unwrap());
    assert!(all_after.iter().all(|c| c.boot == last.boot && c.n > last.n), "{all_after:?}");
    assert!(!all_after.iter().any(|c| c.n == 1), "the counter never restarts");

    // Its disk writes after the restore land in the image.
    let deadline = Instant::now() + STEP;
    loop {
        let line = image_sector_line(&image, 8);
        let written: u64 = line.strip_prefix("COUNT-DISK ").and_then(|n| n.trim().parse().ok()).unwrap_or(0);
        if written > last.n {
            eprintln!("the image's sector 8 after the restore: {line:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no disk write after the restore landed: sector 8 is {line:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The same memory, re-attached by a new owner, still holds the token.
    let client = ControlClient::connect(&run_dir.join("upd.sock"), "test").unwrap();
    let status = client.status_summary().unwrap();
    assert!(status.reattached);
    assert_eq!((status.dev, status.inode), (before.dev, before.inode), "the same memory file");
    let found = pageless(&["find", "--vm", "upd", "--run-dir", &run, &token]);
    assert!(found.status.success() && !found.stdout.is_empty(), "the token is still in the guest's RAM");
    let consumer = status.consumers.iter().find(|c| c.device == "disk0");
    assert!(consumer.is_some(), "the disk reconnected through the relay: {:?}", status.consumers);

    // Restored once, never twice.
    let again = pageless(&restore_args);
    assert!(!again.status.success());
    assert!(text(&again).contains("restored already"), "{}", text(&again));
}

/// Refusals that need no guest: memfd memory, no owner, a QEMU without the monitor.
#[test]
fn save_refuses_before_pausing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let run = run_dir.display().to_string();
    let state = dir.path().join("state").display().to_string();

    let none = pageless(&["update", "save", "--vm", "ghost", "--run-dir", &run, "--state-dir", &state]);
    assert!(!none.status.success());
    assert!(text(&none).contains("VM \"ghost\" not found"), "{}", text(&none));

    let memfd = Owner::start(&run_dir, "anon", &["--size", "64M", "--pool", "memfd"]);
    let refused = pageless(&["update", "save", "--vm", "anon", "--run-dir", &run, "--state-dir", &state]);
    assert!(!refused.status.success());
    let message = text(&refused);
    assert!(
        message.contains("nothing was paused")
            && message.contains("memfd")
            && message.contains("cannot survive a reboot"),
        "{message}"
    );
    assert!(!Path::new(&state).join("anon").exists(), "nothing was written");

    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let pool = format!("dir:{}", shm.path().display());
    let _owner = Owner::start(&run_dir, "bare", &["--size", "64M", "--pool", &pool]);
    let refused = pageless(&["update", "save", "--vm", "bare", "--run-dir", &run, "--state-dir", &state]);
    assert!(!refused.status.success());
    let message = text(&refused);
    assert!(message.contains("no live-update monitor") && message.contains("pageless qemu"), "{message}");

    // --all tries every VM of the run directory and names those that failed.
    let all = pageless(&["update", "save", "--all", "--run-dir", &run, "--state-dir", &state]);
    assert!(!all.status.success());
    let message = text(&all);
    assert!(message.contains("2 of 2 VMs failed: anon, bare"), "{message}");
    drop(memfd);
}

/// `pageless qemu` gives QEMU its monitor and records the command line as given; libvirt's
/// QEMU gets neither.
#[test]
fn pageless_qemu_adds_the_monitor_and_records_the_command_line() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let _owner = Owner::start(&run_dir, "rec", &["--size", "16M", "--pool", "memfd"]);
    let run = run_dir.display().to_string();
    // `echo` stands in for QEMU: it prints the command line it was given.
    let out = pageless(&[
        "qemu",
        "--vm",
        "rec",
        "--run-dir",
        &run,
        "--",
        "echo",
        "-m",
        "16M",
        "-name",
        "guest=rec",
    ]);
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    let monitor = format!(
        "-chardev socket,id=pageless-qmp,path={run}/rec.qmp,server=on,wait=off -mon chardev=pageless-qmp,mode=control"
    );
    assert!(printed.contains(&monitor), "{printed}");
    assert!(!printed.contains("-incoming"), "{printed}");
    let record_path = run_dir.join("rec.qemu.json");
    assert_eq!(std::fs::metadata(&record_path).unwrap().permissions().mode() & 0o777, 0o600);
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    assert_eq!(record["program"], "echo");
    assert_eq!(
        record["args"],
        serde_json::json!(["-m", "16M", "-name", "guest=rec"]),
        "as given, not rewritten"
    );
    assert_eq!(record["qmp"], format!("{run}/rec.qmp"));

    // As `pageless update restore` runs it: `-incoming defer` added, not recorded.
    let out =
        pageless(&["qemu", "--vm", "rec", "--run-dir", &run, "--update-incoming", "--", "echo", "-m", "16M"]);
    assert!(String::from_utf8_lossy(&out.stdout).trim_end().ends_with("-incoming defer"));
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    assert_eq!(record["args"], serde_json::json!(["-m", "16M"]));

    // libvirt's QEMU (its own monitor): left alone.
    std::fs::remove_file(&record_path).unwrap();
    let libvirt = "socket,id=charmonitor,fd=30,server=on,wait=off";
    let out =
        pageless(&["qemu", "--vm", "rec", "--run-dir", &run, "--", "echo", "-m", "16M", "-chardev", libvirt]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("pageless-qmp"));
    assert!(!record_path.exists());
}
