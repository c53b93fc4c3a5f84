//! `bench-scrub`: the module's scrubber against memset of the same size on the same core.
//!
//! The process and the kernel's unbound workqueues (where pageless_scrub runs) are confined to
//! CPU 0 (`/sys/devices/virtual/workqueue/cpumask`, restored afterwards). Then SIZE bytes of
//! anonymous memory, already faulted in, are zeroed with memset (best of 3), and a SIZE file on
//! the pagelessfs mount DIR is unlinked: its extents are zeroed by the scrubber, timed until
//! `/sys/fs/pagelessfs/scrubbing_bytes` is 0 again (best of 3).

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::*;

const WQ_CPUMASK: &str = "/sys/devices/virtual/workqueue/cpumask";
const SCRUBBING: &str = "/sys/fs/pagelessfs/scrubbing_bytes";

fn scrubbing() -> io::Result<u64> {
    std::fs::read_to_string(SCRUBBING)?.trim().parse().map_err(io::Error::other)
}

fn wait_scrubbed(limit: Duration) -> io::Result<Duration> {
    let start = Instant::now();
    while scrubbing()? != 0 {
        if start.elapsed() > limit {
            return Err(io::Error::other(format!("scrubbing_bytes not 0 after {limit:?}")));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(start.elapsed())
}

fn pin_to_cpu0() -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only
    // touch the set we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn memset_secs(size: u64) -> io::Result<f64> {
    let m = Map::new(-1, size as usize, 0, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS)?;
    // Fault it in first: memset alone is measured.
    // SAFETY: the mapping is size bytes long, writable and ours.
    unsafe { std::ptr::write_bytes(m.ptr, 1, size as usize) };
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        // SAFETY: as above.
        unsafe { std::ptr::write_bytes(m.ptr, 0, size as usize) };
        std::hint::black_box(m.ptr);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn scrub_secs(dir: &Path, size: u64) -> io::Result<f64> {
    let mut best = f64::MAX;
    for i in 0..3 {
        wait_scrubbed(Duration::from_secs(120))?;
        let p = dir.join(format!("scrub-bench-{i}"));
        let f = create(&p)?;
        f.set_len(size)?;
        drop(f);
        let t = Instant::now();
        std::fs::remove_file(&p)?;
        wait_scrubbed(Duration::from_secs(120))?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

pub fn bench_scrub(r: &mut Report, dir: &Path, size: u64) -> io::Result<()> {
    let old_mask = std::fs::read_to_string(WQ_CPUMASK)?;
    pin_to_cpu0()?;
    std::fs::write(WQ_CPUMASK, "1")?;
    let res = memset_secs(size).and_then(|m| scrub_secs(dir, size).map(|s| (m, s)));
    let restored = std::fs::write(WQ_CPUMASK, old_mask.trim());
    let (memset, scrub) = res?;
    restored?;
    let mib = size as f64 / f64::from(1u32 << 20);
    r.result("scrub_mib_per_s", format!("{:.0}", mib / scrub));
    r.result("memset_mib_per_s", format!("{:.0}", mib / memset));
    r.result("scrub_vs_memset", format!("{:.2}", memset / scrub));
    r.check(
        "bench-scrub",
        true,
        format!(
            "{} on CPU 0: scrubber {:.0} MiB/s, memset {:.0} MiB/s, ratio {:.2} (goal >= 0.8)",
            human(size),
            mib / scrub,
            mib / memset,
            memset / scrub
        ),
    );
    Ok(())
}
