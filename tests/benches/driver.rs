//! Driver benchmark: `cargo bench -p pageless-tests --bench driver`.
//!
//! One outer TCG guest (q35, intel-iommu, QEMU's edu device, 10 GiB) boots the 6.12 cloud kernel
//! (`PAGELESS_BENCH_KERNEL=newest`: the 7.3 one, with the module built for it)
//! with the pagelessfs pool reserved (`memmap=1G$4G memmap=512M$6G`, `pageless.ko
//! ranges=1G@4G,512M@6G`), a legacy pmem range for device-dax (`memmap=1G!8G`) and one 1G
//! hugetlb page reserved at boot, and runs tests/vm/bench-driver.sh, which measures in that one
//! boot, each against its baselines:
//! 1. minor faults and time to first-touch 1 GiB: pagelessfs 1G/2M/4K vs memfd, anonymous
//!    memory and hugetlbfs 2M/1G (`pageless-guest bench-faults`);
//! 2. struct page bytes per GiB: System RAM, pagelessfs, hugetlbfs 2M/1G with the hugetlb
//!    vmemmap optimization off and on, device-dax (ndctl) with its memmap in RAM or in the
//!    device (`pageless-guest struct-page`);
//! 3. VFIO_IOMMU_MAP_DMA / UNMAP_DMA of 1 GiB: pagelessfs 1G/2M vs hugetlbfs 1G/2M, memfd for
//!    reference (`pageless-guest vfio-map-bench`, edu bound to vfio-pci);
//! 5. (printed after 1.) the scrubber: zeroing freed pagelessfs memory against memset of the
//!    same size on the same core, CPU 0 (`pageless-guest bench-scrub`; goal ratio >= 0.8);
//! 4. the seed scenario's nested VM (160M, vhost-user disk through the relay, edu passed
//!    through) booted alternately on pagelessfs and memfd: seconds to INNER-READY.
//!
//! `PAGELESS_BENCH_INNER_RUNS=N` sets the nested boots per kind (default 3; 0 skips part 4).
//!
//! Prints the tables with ratios; exits non-zero, with the console's tail, on any CHECK FAIL
//! or missing result.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use pageless_tests::checks::{parse, results};
use pageless_tests::kernel::Kernel;
use pageless_tests::nested::outer_initramfs;
use pageless_tests::repo_root;
use pageless_tests::vm::{Vm, VmConfig};

/// Nested boots per memory kind (ABBA order, after one warm-up boot); bench-driver.sh's
/// INNER_RUNS. `PAGELESS_BENCH_INNER_RUNS` overrides it (0: no nested boot at all).
const INNER_RUNS: usize = 3;

fn inner_runs() -> usize {
    std::env::var("PAGELESS_BENCH_INNER_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(INNER_RUNS)
}

/// The outer guest's kernel: `PAGELESS_BENCH_KERNEL=newest` for the 7.3 one, else 6.12.
fn bench_kernel() -> Kernel {
    match std::env::var("PAGELESS_BENCH_KERNEL").as_deref() {
        Ok("newest") => Kernel::newest(),
        _ => Kernel::get(),
    }
}
const PMEM_MODULES: &[&str] = &["libnvdimm", "nd_e820", "nd_btt", "nd_pmem", "device_dax", "dax_pmem"];
const MIB: f64 = (1u64 << 20) as f64;

/// (result key prefix, row label) of the first-touch table.
const FAULT_ROWS: &[(&str, &str)] = &[
    ("memfd__shmem_", "memfd (shmem, 4K)"),
    ("anonymous_private", "anonymous private"),
    ("hugetlbfs_2m", "hugetlbfs 2M"),
    ("hugetlbfs_1g", "hugetlbfs 1G"),
    ("pagelessfs_1g", "pagelessfs 1G"),
    ("pagelessfs_2m", "pagelessfs 2M"),
    ("pagelessfs_4k", "pagelessfs 4K"),
];

const HUGETLB_ROWS: &[(&str, &str)] = &[
    ("2m_hvo_off", "hugetlbfs 2M, HVO off (default)"),
    ("2m_hvo_on", "hugetlbfs 2M, HVO on"),
    ("1g_hvo_off", "hugetlbfs 1G, HVO off (default)"),
    ("1g_hvo_on", "hugetlbfs 1G, HVO on"),
];

const DEVDAX_ROWS: &[(&str, &str)] = &[
    ("mem_4k", "device-dax map=mem align=4K"),
    ("mem_2m", "device-dax map=mem align=2M"),
    ("dev_2m", "device-dax map=dev align=2M"),
];

const VFIO_ROWS: &[&str] = &["pagelessfs_1g", "hugetlbfs_1g", "pagelessfs_2m", "hugetlbfs_2m", "memfd_4k"];

/// CHECK lines that must be reported (and ok), besides the inner boots'.
const REQUIRED_CHECKS: &[&str] = &[
    "load",
    "mount-1G",
    "mount-2M",
    "mount-4K",
    "struct-page-ram",
    "struct-page-pool-has-no-memmap",
    "struct-page-pagelessfs",
    "struct-page-hugetlb",
    "pmem-namespace",
    "struct-page-devdax",
    "hugepages",
    "mount-hugetlbfs",
    "edu-on-vfio-pci",
    "vfio-map-bench-setup",
    "bench-scrub",
    "unload",
    "dmesg-clean",
];

fn required_checks(runs: usize) -> Vec<String> {
    let mut names: Vec<String> = REQUIRED_CHECKS.iter().map(|c| c.to_string()).collect();
    if runs > 0 {
        names.push("inner-memfd-0-boots".into());
    }
    for run in 1..=runs {
        for label in ["pagelessfs", "memfd"] {
            names.push(format!("inner-{label}-{run}-boots"));
            names.push(format!("inner-{label}-{run}-disk-and-vfio"));
        }
    }
    names
}

fn required(runs: usize) -> Vec<String> {
    let mut keys: Vec<String> = vec![
        "thp".into(),
        "struct_page_ram_bytes_per_gib".into(),
        "struct_page_ram_block_bytes_per_gib".into(),
        "struct_page_pagelessfs_bytes_per_gib".into(),
        "struct_page_pagelessfs_free_drop_bytes_per_gib".into(),
        "struct_page_pagelessfs_lost_bytes_per_gib".into(),
        "bench_memmap_bytes_per_gib_pageless".into(),
        "scrub_mib_per_s".into(),
        "memset_mib_per_s".into(),
        "scrub_vs_memset".into(),
    ];
    for (key, _) in FAULT_ROWS {
        keys.push(format!("bench_{key}_minflt"));
        keys.push(format!("bench_{key}_ms"));
    }
    for (key, _) in HUGETLB_ROWS {
        keys.push(format!("struct_page_hugetlb_{key}_bytes_per_gib"));
        keys.push(format!("struct_page_hugetlb_{key}_delta_bytes"));
    }
    for (key, _) in DEVDAX_ROWS {
        for what in ["memmap", "free_drop", "lost"] {
            keys.push(format!("struct_page_devdax_{key}_{what}_bytes_per_gib"));
        }
    }
    for row in VFIO_ROWS {
        keys.push(format!("vfio_map_ms_per_gib_{row}"));
        keys.push(format!("vfio_unmap_ms_per_gib_{row}"));
    }
    if runs > 0 {
        keys.push("inner_boot_secs_memfd_0".into());
    }
    for run in 1..=runs {
        for label in ["pagelessfs", "memfd"] {
            keys.push(format!("inner_boot_secs_{label}_{run}"));
        }
    }
    keys
}

fn build_initrd(dir: &Path, kernel: &Kernel, runs: usize) -> std::path::PathBuf {
    let script = std::fs::read_to_string(repo_root().join("tests/vm/bench-driver.sh")).unwrap();
    let mut outer = outer_initramfs(dir, kernel);
    let ndctl = Path::new("/usr/bin/ndctl");
    assert!(ndctl.exists(), "{} is missing: run scripts/setup.sh (it installs ndctl)", ndctl.display());
    outer.binary(ndctl, "/usr/bin/ndctl");
    for module in PMEM_MODULES {
        outer.kernel_module_file(kernel, module, &format!("/mods/{module}.ko"));
    }
    let initrd = dir.join("outer-initrd");
    outer.init(&format!("INNER_RUNS={runs}\n{script}")).build(&initrd).unwrap();
    initrd
}

struct Results(BTreeMap<String, String>);

impl Results {
    fn f(&self, key: &str) -> f64 {
        self.0.get(key).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    }
}

fn mib(bytes: f64) -> String {
    if bytes.abs() < 0.5 {
        "0".into()
    } else if bytes.abs() < MIB / 4.0 {
        format!("{:.1} KiB", bytes / 1024.0)
    } else {
        format!("{:.3} MiB", bytes / MIB)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

fn print_faults(r: &Results) {
    println!("\n1. First touch of 1 GiB (one write per 4 KiB), THP {}", r.0["thp"]);
    println!(
        "{:<20} {:>9} {:>9} {:>12} {:>10} {:>9} {:>10}",
        "backing", "minflt", "vs memfd", "vs huge 2M", "ms", "vs memfd", "vs huge 2M"
    );
    let (mf, mms) = (r.f("bench_memfd__shmem__minflt"), r.f("bench_memfd__shmem__ms"));
    let (hf, hms) = (r.f("bench_hugetlbfs_2m_minflt"), r.f("bench_hugetlbfs_2m_ms"));
    for (key, label) in FAULT_ROWS {
        let (f, ms) = (r.f(&format!("bench_{key}_minflt")), r.f(&format!("bench_{key}_ms")));
        println!(
            "{label:<20} {f:>9} {:>9.5} {:>12.3} {ms:>10.1} {:>9.3} {:>10.3}",
            f / mf,
            f / hf,
            ms / mms,
            ms / hms
        );
    }
}

fn print_scrub(r: &Results) {
    println!("\n5. Scrubbing 1 GiB of freed pagelessfs memory vs memset of 1 GiB, both on CPU 0");
    println!("{:<20} {:>10}", "", "MiB/s");
    println!("{:<20} {:>10}", "scrubber", r.0["scrub_mib_per_s"]);
    println!("{:<20} {:>10}", "memset", r.0["memset_mib_per_s"]);
    println!("{:<20} {:>10} (goal >= 0.8)", "scrubber / memset", r.0["scrub_vs_memset"]);
}

fn print_struct_page(r: &Results) {
    let ram = r.f("struct_page_ram_block_bytes_per_gib");
    println!("\n2. struct page bytes per GiB of memory given to guests");
    println!(
        "{:<34} {:>12} {:>8} {:>13} {:>13} {:>13}",
        "memory", "in RAM", "vs RAM", "nr_memmap Δ", "free RAM Δ", "device lost"
    );
    let row = |label: &str, in_ram: f64, memmap: &str, free: &str, lost: &str| {
        println!("{label:<34} {:>12} {:>8.4} {memmap:>13} {free:>13} {lost:>13}", mib(in_ram), in_ram / ram);
    };
    row("System RAM (boot memmap)", ram, "-", "-", "-");
    let pl = r.f("struct_page_pagelessfs_bytes_per_gib");
    let (pl_free, pl_lost) = (
        r.f("struct_page_pagelessfs_free_drop_bytes_per_gib"),
        r.f("struct_page_pagelessfs_lost_bytes_per_gib"),
    );
    row("pagelessfs (1 GiB used)", pl, &mib(pl), &mib(pl_free), &mib(pl_lost));
    for (key, label) in HUGETLB_ROWS {
        let v = r.f(&format!("struct_page_hugetlb_{key}_bytes_per_gib"));
        row(label, v, &mib(r.f(&format!("struct_page_hugetlb_{key}_delta_bytes"))), "-", "-");
    }
    for (key, label) in DEVDAX_ROWS {
        let get = |what: &str| r.f(&format!("struct_page_devdax_{key}_{what}_bytes_per_gib"));
        let (memmap, free, lost) = (get("memmap"), get("free_drop"), get("lost"));
        // map=dev keeps its memmap in the device, but 6.12 counts it in nr_memmap_pages all
        // the same: the RAM it takes is what free memory lost.
        let in_ram = if key.starts_with("dev") { free } else { memmap };
        row(label, in_ram, &mib(memmap), &mib(free), &mib(lost));
    }
    println!(
        "in RAM: nr_memmap_boot_pages + nr_memmap_pages per GiB. System RAM: its boot memmap per GiB of the memory blocks\n\
         it spans ({} per GiB of System RAM itself, holes included). pagelessfs: Δ of allocating, mapping and touching\n\
         1 GiB on a 1G mount; device lost = memmap=$ reserved - pool capacity. hugetlbfs: RAM's plus the Δ of reserving\n\
         1 GiB (HVO = vm.hugetlb_optimize_vmemmap). device-dax: ndctl create-namespace --mode=devdax on the memmap=1G!8G\n\
         namespace, per GiB of it; map=dev in RAM = free RAM Δ (6.12 counts its in-device memmap in nr_memmap_pages);\n\
         device lost = raw size - devdax size. free RAM Δ: drop of zone free pages + per-CPU lists.",
        mib(r.f("struct_page_ram_bytes_per_gib"))
    );
}

fn print_vfio(r: &Results) {
    println!("\n3. VFIO_IOMMU_MAP_DMA / UNMAP_DMA of 1 GiB (median of 3, mapping touched first), ms per GiB");
    println!(
        "{:<6} {:>15} {:>15} {:>9} {:>15} {:>15} {:>9}",
        "page", "pagelessfs map", "hugetlbfs map", "ratio", "pagelessfs unmap", "hugetlbfs unmap", "ratio"
    );
    for page in ["1g", "2m"] {
        let get = |what: &str, kind: &str| r.f(&format!("vfio_{what}_ms_per_gib_{kind}_{page}"));
        let (pm, hm, pu, hu) = (
            get("map", "pagelessfs"),
            get("map", "hugetlbfs"),
            get("unmap", "pagelessfs"),
            get("unmap", "hugetlbfs"),
        );
        println!(
            "{:<6} {pm:>15.1} {hm:>15.1} {:>9.2} {pu:>16.1} {hu:>15.1} {:>9.2}",
            page.to_uppercase(),
            pm / hm,
            pu / hu
        );
    }
    println!(
        "memfd 4K (pinned 4K pages, reference): map {:.1} ms/GiB, unmap {:.1} ms/GiB",
        r.f("vfio_map_ms_per_gib_memfd_4k"),
        r.f("vfio_unmap_ms_per_gib_memfd_4k")
    );
}

fn print_inner(r: &Results) {
    println!(
        "\n4. Nested VM boot (160M RAM from the owner, vhost-user disk via the relay, edu via vfio-pci), s to INNER-READY"
    );
    let runs = |label: &str| -> Vec<f64> {
        (1..=inner_runs()).map(|n| r.f(&format!("inner_boot_secs_{label}_{n}"))).collect()
    };
    let (pl, mf) = (runs("pagelessfs"), runs("memfd"));
    let show = |v: &[f64]| v.iter().map(|s| format!("{s:.1}")).collect::<Vec<_>>().join(", ");
    println!("{:<12} {:>20} {:>10} {:>9}", "memory", "runs", "median", "vs memfd");
    let (mp, mm) = (median(pl.clone()), median(mf.clone()));
    println!("{:<12} {:>20} {mp:>10.1} {:>9.3}", "pagelessfs", show(&pl), mp / mm);
    println!("{:<12} {:>20} {mm:>10.1} {:>9.3}", "memfd", show(&mf), 1.0);
    println!(
        "runs in boot order after a warm-up boot on memfd ({:.1} s, not counted): pagelessfs, memfd, memfd, pagelessfs, …",
        r.f("inner_boot_secs_memfd_0")
    );
}

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = bench_kernel();
    let runs = inner_runs();
    let initrd = build_initrd(dir.path(), &kernel, runs);

    let mut config = VmConfig::new("bench", initrd);
    config.kernel = kernel.vmlinuz();
    config.memory = "10G".into();
    config.smp = 2;
    config.machine = Some("q35".into());
    config.append =
        "intel_iommu=on memmap=1G$4G memmap=512M$6G memmap=1G!8G hugepagesz=1G hugepages=1".into();
    config.extra = ["-device", "intel-iommu", "-device", "edu"].map(String::from).to_vec();
    let start = Instant::now();
    let mut vm = Vm::start(&config);
    let done = vm.wait_for("CHECKS-DONE", Duration::from_secs(1800));
    let _ = vm.wait_exit(Duration::from_secs(60));
    let elapsed = start.elapsed();
    let console = vm.console();

    let mut problems: Vec<String> = Vec::new();
    if let Err(e) = done {
        problems.push(e);
    }
    let checks = parse(&console);
    for check in checks.iter().filter(|c| !c.ok) {
        problems.push(format!("FAILED {}: {}", check.name, check.detail));
    }
    for name in required_checks(runs) {
        if !checks.iter().any(|c| c.name == name) {
            problems.push(format!("MISSING CHECK {name}"));
        }
    }
    let results = Results(results(&console));
    for key in required(runs) {
        if !results.0.contains_key(&key) {
            problems.push(format!("MISSING RESULT {key}"));
        }
    }
    if !problems.is_empty() {
        let lines: Vec<&str> = console.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        eprintln!(
            "--- console tail ---\n{tail}\n--- driver benchmark failed ---\n  {}",
            problems.join("\n  ")
        );
        return ExitCode::FAILURE;
    }

    println!(
        "\npageless driver benchmark: one TCG guest (q35, intel-iommu, {}, kernel {}), {:.0} s in all",
        config.memory,
        kernel.version,
        elapsed.as_secs_f64()
    );
    print_faults(&results);
    print_scrub(&results);
    print_struct_page(&results);
    print_vfio(&results);
    if runs > 0 {
        print_inner(&results);
    }
    ExitCode::SUCCESS
}
