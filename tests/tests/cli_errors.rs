//! Bad requests to the `pageless` command line get clear errors and leave nothing behind.

use std::path::Path;
use std::process::{Command, Output};

use pageless_tests::bins;
use pageless_tests::owner::Owner;

fn pageless(run_dir: &Path, args: &[&str]) -> Output {
    Command::new(bins::pageless()).args(args).arg("--run-dir").arg(run_dir).output().unwrap()
}

fn fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail, but succeeded:\n{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "expected {needle:?} in:\n{stderr}");
        assert_eq!(stderr.matches(needle).count(), 1, "{needle:?} printed more than once:\n{stderr}");
    }
    // One fatal error, printed once: ours (`pageless: error:`) or clap's usage error.
    assert_eq!(stderr.lines().filter(|l| l.contains("error:")).count(), 1, "one error line:\n{stderr}");
}

#[test]
fn serve_refuses_bad_sizes_and_pools() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let pool = format!("dir:{}", shm.path().display());

    let out = pageless(&run, &["serve", "--vm", "a", "--size", "1000000", "--pool", &pool]);
    fails_with(
        &out,
        &["not a multiple of the pool's page size 4K", "976.6K (1000000 bytes)", "such as 980K"],
    );

    let out = pageless(&run, &["serve", "--vm", "a", "--size", "1G", "--pool", "dir:/nonexistent/pool"]);
    fails_with(&out, &["/nonexistent/pool does not exist", "create it"]);

    let out = pageless(&run, &["serve", "--vm", "a", "--size", "64T", "--pool", &pool]);
    fails_with(&out, &["the pool is too small", " needed, ", " free of "]);

    let out = pageless(
        &run,
        &["serve", "--vm", "a", "--size", "1G", "--pool", &format!("hugetlbfs:{}", shm.path().display())],
    );
    fails_with(&out, &["tmpfs filesystem, but a hugetlbfs pool was asked for"]);

    let out = pageless(&run, &["serve", "--vm", "a", "--size", "12Q"]);
    fails_with(&out, &["unknown unit"]);

    let out = pageless(&run, &["serve", "--vm", "a/b", "--size", "1M", "--pool", &pool]);
    fails_with(&out, &["invalid allocation name"]);

    assert!(std::fs::read_dir(shm.path()).unwrap().next().is_none(), "no allocation left behind");
    let leftovers: Vec<_> = std::fs::read_dir(&run).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(leftovers.is_empty(), "failed starts left {leftovers:?} in the run dir");
}

#[test]
fn one_owner_per_vm() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let owner = Owner::start(&run, "solo", &["--size", "4M"]);
    let out = pageless(&run, &["serve", "--vm", "solo", "--size", "4M"]);
    fails_with(&out, &["already served by pageless", &format!("pid {}", owner.pid())]);
    assert_eq!(owner.status().vm, "solo", "the first owner is untouched");
}

#[test]
fn reattach_with_another_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let pool = format!("dir:{}", shm.path().display());
    let mut owner = Owner::start(&run, "vm", &["--size", "4M", "--pool", &pool]);
    assert_eq!(owner.terminate().code(), Some(0));
    assert!(shm.path().join("vm").exists(), "a directory pool's file is kept by default");
    let out = pageless(&run, &["serve", "--vm", "vm", "--size", "8M", "--pool", &pool]);
    fails_with(&out, &["already exists with size 4M, not the requested 8M", "--size 4M"]);

    let mut owner = Owner::start(&run, "vm", &["--size", "4M", "--pool", &pool, "--remove-on-exit"]);
    assert!(owner.status().reattached);
    assert_eq!(owner.terminate().code(), Some(0));
    assert!(!shm.path().join("vm").exists(), "--remove-on-exit removes it");
    assert!(!run.join("vm.sock").exists(), "the socket is removed on a clean stop");
}

#[test]
fn qemu_refuses_a_ram_size_that_is_not_the_owners() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let _owner = Owner::start(&run, "vm", &["--size", "64M"]);
    let out = Command::new(bins::pageless())
        .args(["qemu", "--vm", "vm", "--run-dir"])
        .arg(&run)
        .args(["--", "qemu-system-x86_64", "-m", "128M", "-nodefaults", "-display", "none"])
        .output()
        .unwrap();
    fails_with(&out, &["the VM's RAM is 128M (`-m 128M`) but its owner serves 64M"]);

    let out = Command::new(bins::pageless())
        .args(["qemu", "--vm", "missing", "--run-dir"])
        .arg(&run)
        .args(["--", "qemu-system-x86_64"])
        .output()
        .unwrap();
    fails_with(&out, &["cannot reach the owner", "is `pageless serve` running for this VM?"]);
}

#[test]
fn status_lists_owners() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let _a = Owner::start(&run, "alpha", &["--size", "4M"]);
    let _b = Owner::start(&run, "beta", &["--size", "8M"]);
    let out = pageless(&run, &["status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("alpha") && text.contains("beta") && text.contains("8M"), "{text}");
    let out = pageless(&run, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sizes: Vec<u64> = json.as_array().unwrap().iter().map(|vm| vm["size"].as_u64().unwrap()).collect();
    assert_eq!(sizes, vec![4 << 20, 8 << 20]);
}

#[test]
fn output_to_a_reader_that_went_away_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let owner = Owner::start(&run, "vm", &["--size", "4M"]);
    let client = owner.connect().unwrap();
    for i in 0..64u64 {
        client.write(i * 4096, b"PATTERN").unwrap();
    }
    for command in [&["find", "--vm", "vm", "PATTERN"][..], &["status"], &["status", "--json"]] {
        // stdout is a pipe whose reader is already gone: every write fails with EPIPE.
        let (reader, writer) = nix::unistd::pipe().unwrap();
        drop(reader);
        let out = Command::new(bins::pageless())
            .args(command)
            .arg("--run-dir")
            .arg(&run)
            .stdout(std::process::Stdio::from(writer))
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{command:?}: {} {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{command:?}: {stderr}");
    }
}

#[test]
fn host_commands_refuse_missing_and_bad_configs() {
    let dir = tempfile::tempdir().unwrap();
    let host = |args: &[&str]| Command::new(bins::pageless()).arg("host").args(args).output().unwrap();
    let missing = dir.path().join("none.toml");
    for sub in ["up", "down", "check"] {
        let out = host(&[sub, "--config", missing.to_str().unwrap()]);
        fails_with(&out, &["none.toml: cannot read", "pageless host plan --write-config"]);
    }
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "ranges = [\"1G@4G\"]\n[[mount]]\npath = \"/mnt/p\"\npagesize = \"3M\"\n").unwrap();
    let out = host(&["up", "--config", bad.to_str().unwrap()]);
    fails_with(&out, &["bad.toml: mount[0].pagesize: \"3M\": write \"4K\", \"2M\" or \"1G\""]);
    std::fs::write(&bad, "ranges = [\"1G@4G\"]\nmodul = \"/x.ko\"\n").unwrap();
    let out = host(&["check", "--config", bad.to_str().unwrap()]);
    fails_with(&out, &["bad.toml: ", "unknown field `modul`"]);
    let out = host(&["plan", "--reserve", "3M"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // As root: the planner's refusal; as another user: /proc/iomem hides the addresses.
    assert!(
        stderr.contains("--reserve 3M: give a non-zero multiple of 2M") || stderr.contains("run as root"),
        "{stderr}"
    );
}
