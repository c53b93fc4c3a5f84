//! Foundation benchmark: `cargo bench -p pageless-tests --bench foundation`.
//!
//! In one run, against baselines measured in the same run:
//! 1. time from `pageless serve` start to a QEMU guest's first console line (and to its /init
//!    being ready), versus plain QEMU with `memory-backend-memfd` of the same size;
//! 2. time to allocate and pre-fault 1 GiB with `pageless serve --prefault` (process start to
//!    answering) and with the driver API in-process, versus a bare memfd + memset.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use pageless_pool::{Pool, PoolSpec};
use pageless_tests::bins;
use pageless_tests::guests::token_guest;
use pageless_tests::owner::Owner;
use pageless_tests::vm::{Vm, VmConfig};

const RUNS: usize = 3;
const GUEST_RAM: &str = "512M";
const GIB: u64 = 1 << 30;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn boot(config: &VmConfig) -> (Duration, Duration) {
    let start = Instant::now();
    let mut vm = Vm::start(config);
    vm.wait_for("Linux version", Duration::from_secs(120)).expect("first console line");
    let first_line = start.elapsed();
    vm.wait_for("GUEST-READY", Duration::from_secs(120)).expect("guest ready");
    let ready = start.elapsed();
    vm.send_line("quit");
    let _ = vm.wait_exit(Duration::from_secs(30));
    (first_line, ready)
}

fn boot_times(dir: &std::path::Path, initrd: &std::path::Path) -> [(Duration, Duration); 2] {
    let mut plain = VmConfig::new("plain", initrd.into());
    plain.memory = GUEST_RAM.into();
    plain.append = "loglevel=7".into();
    plain.extra = [
        "-object",
        &format!("memory-backend-memfd,id=ram,size={GUEST_RAM},share=on"),
        "-machine",
        "memory-backend=ram",
    ]
    .map(String::from)
    .to_vec();
    let (mut plain_first, mut plain_ready, mut owned_first, mut owned_ready) =
        (vec![], vec![], vec![], vec![]);
    for run in 0..RUNS {
        let (first, ready) = boot(&plain);
        plain_first.push(first);
        plain_ready.push(ready);

        let run_dir = dir.join(format!("run{run}"));
        let start = Instant::now();
        let _owner = Owner::start(&run_dir, "bench", &["--size", GUEST_RAM]);
        let owner_start = start.elapsed();
        let mut owned = plain.clone();
        owned.name = "pageless".into();
        owned.extra.clear();
        owned.through_pageless(&run_dir, Some("bench"));
        let (first, ready) = boot(&owned);
        owned_first.push(first + owner_start);
        owned_ready.push(ready + owner_start);
    }
    [(median(plain_first), median(plain_ready)), (median(owned_first), median(owned_ready))]
}

fn memfd_memset(size: u64) -> Duration {
    let start = Instant::now();
    let fd =
        nix::sys::memfd::memfd_create(c"baseline", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC).unwrap();
    nix::unistd::ftruncate(&fd, size as i64).unwrap();
    // SAFETY: maps `size` bytes of a memfd we just sized; unmapped below, never aliased.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    assert_ne!(ptr, libc::MAP_FAILED);
    // SAFETY: ptr is a fresh, writable mapping of `size` bytes.
    unsafe { std::ptr::write_bytes(ptr.cast::<u8>(), 0, size as usize) };
    let elapsed = start.elapsed();
    // SAFETY: unmaps exactly the mapping made above.
    unsafe { libc::munmap(ptr, size as usize) };
    elapsed
}

fn driver_prefault(size: u64) -> Duration {
    let start = Instant::now();
    let pool = Pool::open(&PoolSpec::Memfd { huge_page_size: None }).unwrap();
    let allocation = pool.allocate("bench", size).unwrap();
    allocation.prefault().unwrap();
    start.elapsed()
}

fn serve_prefault(dir: &std::path::Path, run: usize) -> Duration {
    let start = Instant::now();
    let mut owner =
        Owner::start(&dir.join(format!("prefault{run}")), "bench", &["--size", "1G", "--prefault"]);
    let elapsed = start.elapsed();
    owner.terminate();
    elapsed
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benchmarks; nothing to list here.
    }
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd");
    token_guest(&initrd);
    bins::pageless();

    let baseline: Vec<Duration> = (0..RUNS).map(|_| memfd_memset(GIB)).collect();
    let in_process: Vec<Duration> = (0..RUNS).map(|_| driver_prefault(GIB)).collect();
    let served: Vec<Duration> = (0..RUNS).map(|run| serve_prefault(dir.path(), run)).collect();
    let [(plain_first, plain_ready), (owned_first, owned_ready)] = boot_times(dir.path(), &initrd);
    let (baseline, in_process, served) = (median(baseline), median(in_process), median(served));

    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!("\npageless foundation benchmark (median of {RUNS} runs, TCG guests, {GUEST_RAM} RAM)\n");
    println!("{:<58} {:>10} {:>10} {:>8}", "measurement", "pageless", "baseline", "ratio");
    let row = |name: &str, ours: Duration, base: Duration| {
        println!(
            "{:<58} {:>9.3}s {:>9.3}s {:>8.3}",
            name,
            ours.as_secs_f64(),
            base.as_secs_f64(),
            ratio(ours, base)
        );
    };
    row("serve start -> guest's first console line (vs memfd QEMU)", owned_first, plain_first);
    row("serve start -> guest /init ready (vs memfd QEMU)", owned_ready, plain_ready);
    row("allocate + pre-fault 1 GiB: pageless serve --prefault", served, baseline);
    row("allocate + pre-fault 1 GiB: driver API in-process", in_process, baseline);
    println!("\nbaselines: plain QEMU with memory-backend-memfd; memfd_create + ftruncate + mmap + memset");
}
