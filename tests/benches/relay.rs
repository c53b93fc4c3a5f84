//! Relay benchmark: `cargo bench -p pageless-tests --bench relay`.
//!
//! Guest I/O on a vhost-user-blk disk served by qemu-storage-daemon, with QEMU connected
//! through the owner's relay versus straight to the backend, in the same run (alternating,
//! median of 7 each, after one discarded warm-up run): O_DIRECT sequential write and read of 4 GiB, 4K random-read IOPS and
//! latency, measured in the guest by `pageless-guest blk-bench`. The relay is on the control
//! path only, so the goal is ≥ 0.98 of direct.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use pageless_tests::backends::Backend;
use pageless_tests::bins;
use pageless_tests::checks::results;
use pageless_tests::initramfs::Initramfs;
use pageless_tests::kernel::Kernel;
use pageless_tests::owner::Owner;
use pageless_tests::vm::{Vm, VmConfig};

const RUNS: usize = 7;
const METRICS: [(&str, bool); 5] = [
    ("seq_write_mib_s", true),
    ("seq_read_mib_s", true),
    ("rand_read_iops", true),
    ("rand_read_p50_us", false),
    ("rand_read_p99_us", false),
];

fn run(
    dir: &Path,
    initrd: &Path,
    qsd_socket: &Path,
    through_relay: bool,
    index: usize,
) -> BTreeMap<String, f64> {
    let run_dir = dir.join(format!("run{index}"));
    let relay = format!("disk0={}", qsd_socket.display());
    let _owner = Owner::start(&run_dir, "bench", &["--size", "512M", "--vhost-user", &relay]);
    let socket = if through_relay { run_dir.join("bench/disk0.sock") } else { qsd_socket.to_path_buf() };
    let mut config = VmConfig::new(if through_relay { "relay" } else { "direct" }, initrd.into());
    config.through_pageless(&run_dir, Some("bench")).vhost_user(
        "disk0",
        &socket,
        "vhost-user-blk-pci,num-queues=1",
        true,
    );
    let mut vm = Vm::start(&config);
    vm.wait_for("CHECKS-DONE", Duration::from_secs(600)).expect("the benchmark guest finishes");
    let _ = vm.wait_exit(Duration::from_secs(30));
    let console = vm.console();
    assert!(console.contains("CHECK blk-bench ok"), "{console}");
    results(&console).into_iter().filter_map(|(k, v)| Some((k, v.parse().ok()?))).collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image).unwrap().set_len(4608 << 20).unwrap();
    let qsd_socket = dir.path().join("qsd.sock");
    let _qsd = Backend::storage_daemon(&image, &qsd_socket);

    let guest_tool = bins::build("pageless-guest", "pageless-guest");
    let initrd = dir.path().join("initrd");
    Initramfs::new()
        .kernel_modules(&Kernel::get(), &["virtio_blk"])
        .binary(&guest_tool, "/bin/pageless-guest")
        .init(
            "for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done\n\
             pageless-guest blk-bench /dev/vda --mib 4096 --random-reads 20000\nfinish",
        )
        .build(&initrd)
        .unwrap();

    // Warm-up: the image's first write allocates it in the host's page cache.
    run(dir.path(), &initrd, &qsd_socket, false, usize::MAX);
    let mut direct: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut relayed: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for i in 0..RUNS {
        for (through_relay, samples) in [(false, &mut direct), (true, &mut relayed)] {
            for (key, value) in
                run(dir.path(), &initrd, &qsd_socket, through_relay, 2 * i + usize::from(through_relay))
            {
                samples.entry(key).or_default().push(value);
            }
        }
    }

    println!(
        "\npageless relay benchmark: vhost-user-blk (qemu-storage-daemon), TCG guest, median of {RUNS}\n"
    );
    println!("{:<20} {:>12} {:>12} {:>14}", "metric", "direct", "relay", "relay/direct");
    for (metric, higher_is_better) in METRICS {
        let d = median(direct[metric].clone());
        let r = median(relayed[metric].clone());
        let ratio = if higher_is_better { r / d } else { d / r };
        println!("{metric:<20} {d:>12.1} {r:>12.1} {ratio:>14.3}");
    }
    println!("\nevery run, in order (direct and relay alternate):");
    for (metric, _) in METRICS {
        let runs =
            |samples: &Vec<f64>| samples.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(" ");
        println!("{metric:<20} direct: {:<40} relay: {}", runs(&direct[metric]), runs(&relayed[metric]));
    }
    println!("\nratio: relay performance as a fraction of direct (latency inverted), goal >= 0.98");
}
