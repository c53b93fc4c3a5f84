//! Live migration benchmark: `cargo bench -p pageless-tests --bench migration`.
//!
//! One guest (256M; counting with disk I/O through the relay and rewriting 32 MiB of its RAM
//! with random data the whole time) is live-migrated back and forth between owners on this
//! host, alternately from a memfd owner and from a file-backed owner, 5 times from each after
//! one warm-up migration each: every migration has the same guest and load, only the source's
//! memory differs. The file-backed pool is `PAGELESS_BENCH_POOL` (e.g.
//! `pagelessfs:/mnt/pageless` on a host with pagelessfs; each side gets a subdirectory),
//! default a tmpfs directory pool under /dev/shm. Prints the median migration time, downtime
//! and throughput (bytes sent per second of migration) per source and the ratio file/memfd
//! throughput; goal >= 0.95.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pageless_tests::backends::disk_image_with_token;
use pageless_tests::migration::{guest_initramfs, migrate, Migrated, Side};
use pageless_tests::vm::Vm;

const RUNS: usize = 5;
const MEMORY: &str = "256M";
const LOAD_MIB: u32 = 32;

/// The file-backed pool for side `name`: a subdirectory of `PAGELESS_BENCH_POOL`'s directory,
/// or of `shm`.
fn file_pool(shm: &Path, name: &str) -> String {
    let spec = std::env::var("PAGELESS_BENCH_POOL").unwrap_or_else(|_| format!("dir:{}", shm.display()));
    let (kind, dir) =
        spec.split_once(':').expect("PAGELESS_BENCH_POOL is KIND:DIR, e.g. pagelessfs:/mnt/pageless");
    let dir = PathBuf::from(dir).join(name);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    format!("{kind}:{}", dir.display())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let image = dir.path().join("disk.img");
    disk_image_with_token(&image, 64 << 20);
    let initrd = dir.path().join("initrd");
    guest_initramfs(&initrd);

    let mut current = Side::new(dir.path(), "s0-memfd", "memfd", MEMORY, &image);
    let mut source_kind = "memfd";
    let mut vm = Vm::boot(&current.config(&initrd, None));
    vm.wait_for("GUEST-READY", Duration::from_secs(180)).expect("the guest boots");
    vm.send_line(&format!("load {LOAD_MIB}"));
    vm.wait_for("LOAD-ON", Duration::from_secs(60)).expect("the guest's load runs");
    std::thread::sleep(Duration::from_secs(2));

    let mut runs: BTreeMap<&str, Vec<Migrated>> = BTreeMap::new();
    for i in 1..=2 * (RUNS + 1) {
        let kind = if source_kind == "memfd" { "file" } else { "memfd" };
        let name = format!("s{i}-{kind}");
        let pool = if kind == "memfd" { "memfd".to_string() } else { file_pool(shm.path(), &name) };
        let next = Side::new(dir.path(), &name, &pool, MEMORY, &current.image);
        let (mut moved, migrated) = migrate(&mut vm, &current, &next, &initrd);
        moved.wait_for("COUNT", Duration::from_secs(60)).expect("the guest counts on");
        if i > 2 {
            runs.entry(source_kind).or_default().push(migrated);
        }
        vm = moved;
        current = next;
        source_kind = kind;
    }
    vm.send_line("quit");
    let _ = vm.wait_exit(Duration::from_secs(30));

    let file_pool_name =
        std::env::var("PAGELESS_BENCH_POOL").unwrap_or_else(|_| "dir:/dev/shm (tmpfs)".into());
    println!(
        "live migration of a {MEMORY} guest rewriting {LOAD_MIB} MiB of RAM, {RUNS} runs per source (median)"
    );
    println!("file-backed source: {file_pool_name}");
    println!(
        "{:<8} {:>10} {:>12} {:>14} {:>10}",
        "source", "time ms", "downtime ms", "MiB/s sent", "MiB sent"
    );
    let mut throughput = BTreeMap::new();
    for (kind, list) in &runs {
        let time = median(list.iter().map(|m| m.total_ms as f64).collect());
        let down = median(list.iter().map(|m| m.downtime_ms as f64).collect());
        let rate = median(list.iter().map(Migrated::throughput).collect()) / (1 << 20) as f64;
        let sent = median(list.iter().map(|m| m.transferred as f64).collect()) / (1 << 20) as f64;
        println!("{kind:<8} {time:>10.0} {down:>12.0} {rate:>14.1} {sent:>10.1}");
        throughput.insert(*kind, rate);
    }
    println!("\nevery run, in order (time ms / MiB/s):");
    for (kind, list) in &runs {
        let each: Vec<String> =
            list.iter().map(|m| format!("{}/{:.0}", m.total_ms, m.throughput() / (1 << 20) as f64)).collect();
        println!("{kind:<8} {}", each.join(" "));
    }
    println!(
        "\nratio: file-backed source throughput / memfd source throughput = {:.3} (goal >= 0.95)",
        throughput["file"] / throughput["memfd"]
    );
}
