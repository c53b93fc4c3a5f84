//! A fragmented pool: a `dir:` pool on a disk filesystem (the build directory's: ext4 here)
//! whose allocation has more than 100 000 extents — one 4 KiB block every 8 KiB, allocated
//! with fallocate so that nothing is written. The owner re-attaches to it, a TCG guest boots
//! on it through `pageless qemu` (which no longer reads STATUS: GET_MEMORY carries the size
//! and page size), and `pageless status --json` lists every extent, page by page, fast.

use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use pageless_protocol::control::VmStatus;
use pageless_tests::bins;
use pageless_tests::env::{require_env, Need, QEMU};
use pageless_tests::guests::{token_guest, token_of};
use pageless_tests::owner::Owner;
use pageless_tests::vm::{Vm, VmConfig};

const EXTENTS: u64 = 120_000;
const SIZE_MIB: u64 = 960;

/// How long a status request took: wall clock, and the CPU time of `pageless status` plus
/// that of the owner while it answered (the wall clock also counts waiting for a CPU on a
/// shared machine).
#[derive(Clone, Copy, Debug)]
struct Took {
    wall: Duration,
    cpu: Duration,
}

/// CPU time (user + system) of this process's waited-for children.
fn children_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the rusage struct it is given a pointer to.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: getrusage succeeded, so it initialized `usage`.
    let usage = unsafe { usage.assume_init() };
    let tv =
        |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time (user + system) of process `pid`, from /proc/PID/stat.
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

impl std::fmt::Display for Took {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} s of CPU (client + owner), {:.3} s wall clock",
            self.cpu.as_secs_f64(),
            self.wall.as_secs_f64()
        )
    }
}

/// `pageless status --json --vm VM`, and how long it took.
fn status_json(run_dir: &std::path::Path, vm: &str, owner_pid: u32) -> (Vec<VmStatus>, Took) {
    let (cpu_before, owner_before) = (children_cpu(), process_cpu(owner_pid));
    let start = Instant::now();
    let out = Command::new(bins::pageless())
        .args(["status", "--json", "--vm", vm, "--run-dir"])
        .arg(run_dir)
        .output()
        .unwrap();
    let wall = start.elapsed();
    let cpu = (children_cpu() - cpu_before) + (process_cpu(owner_pid) - owner_before);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (serde_json::from_slice(&out.stdout).expect("status --json is JSON"), Took { wall, cpu })
}

#[test]
fn a_pool_with_over_100_000_extents_boots_a_guest_and_status_lists_them_all() {
    if !require_env(
        "a_pool_with_over_100_000_extents_boots_a_guest_and_status_lists_them_all",
        &[QEMU, Need::Kernel, Need::Busybox],
    ) {
        return;
    }
    // Not /tmp, which may be tmpfs (no FIEMAP): the target directory is on the disk.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let pool = dir.path().join("pool");
    std::fs::create_dir(&pool).unwrap();
    let file = std::fs::File::create_new(pool.join("frag")).unwrap();
    let size = SIZE_MIB << 20;
    file.set_len(size).unwrap();
    let fallocate_start = Instant::now();
    for i in 0..EXTENTS {
        // SAFETY: fallocate on an fd we own, with plain integer arguments.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, (i * 8192) as i64, 4096) };
        assert_eq!(rc, 0, "fallocate block {i}: {}", std::io::Error::last_os_error());
    }
    drop(file);
    eprintln!("allocated {EXTENTS} separate blocks in {:?}", fallocate_start.elapsed());

    let run_dir = dir.path().join("run");
    let pool_arg = format!("dir:{}", pool.display());
    let owner = Owner::start(&run_dir, "frag", &["--size", &format!("{SIZE_MIB}M"), "--pool", &pool_arg]);

    let (before, took) = status_json(&run_dir, "frag", owner.pid());
    eprintln!("pageless status --json with {} extents took {took}", before[0].extents.len());
    assert!(took.cpu < Duration::from_secs(1), "pageless status --json took {took}");
    let status = &before[0];
    assert!(status.reattached, "the owner re-attached to the fragmented file");
    assert_eq!(status.extent_count, Some(EXTENTS), "FIEMAP reports one extent per block");
    assert_eq!(status.extents.len() as u64, EXTENTS, "status --json lists every extent");
    assert_eq!(status.extents_next, None);
    for (i, extent) in status.extents.iter().enumerate() {
        assert_eq!((extent.logical, extent.length), (i as u64 * 8192, 4096), "extent {i}");
        assert!(extent.physical.is_some(), "ext4 reports where extent {i} is");
    }

    // The table stays short and counts them all.
    let out = Command::new(bins::pageless()).args(["status", "--run-dir"]).arg(&run_dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("and {} more", EXTENTS - 16)), "{text}");
    assert!(text.lines().count() < 40, "{text}");

    // A guest boots on it through `pageless qemu`.
    let initrd = dir.path().join("initrd");
    token_guest(&initrd);
    let mut config = VmConfig::new("frag", initrd);
    config.memory = format!("{SIZE_MIB}M");
    config.through_pageless(&run_dir, Some("frag"));
    let mut vm = Vm::start(&config);
    let token = token_of(&vm.wait_for("GUEST-TOKEN", Duration::from_secs(120)).expect("the guest boots"));
    vm.wait_for("GUEST-READY", Duration::from_secs(30)).unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", vm.pid())).unwrap();
    assert!(
        maps.contains(&pool.join("frag").display().to_string()),
        "QEMU maps the fragmented file:\n{maps}"
    );
    assert!(token.starts_with("PAGELESS-TOKEN-"));

    // With the guest running (and writing into the holes), status still lists every extent
    // FIEMAP reports, and fast. Best of three: the machine is shared.
    let mut fastest = Duration::MAX;
    for _ in 0..3 {
        let (statuses, took) = status_json(&run_dir, "frag", owner.pid());
        let status = &statuses[0];
        eprintln!("pageless status --json with {} extents took {took}", status.extents.len());
        assert!(status.extents.len() >= 100_000, "{} extents", status.extents.len());
        assert!(status.extent_count.is_some_and(|n| n >= 100_000), "{:?}", status.extent_count);
        assert!(
            status.extents.windows(2).all(|w| w[0].logical + w[0].length <= w[1].logical),
            "in order, no overlap"
        );
        assert!(status.clients.iter().any(|c| c.role == "qemu" && c.has_memory), "QEMU holds the memory");
        fastest = fastest.min(took.cpu);
    }
    assert!(fastest < Duration::from_secs(1), "pageless status --json took {fastest:?} of CPU");

    vm.send_line("quit");
    vm.wait_for("CHECKS-DONE", Duration::from_secs(30)).unwrap();
    vm.wait_exit(Duration::from_secs(30)).unwrap();
}
