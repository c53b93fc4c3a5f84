//! `struct-page`: how many bytes of `struct page` each way of handing memory to guests costs
//! per GiB, measured in one boot from `/proc/vmstat` `nr_memmap_boot_pages + nr_memmap_pages`:
//!
//! * `--ram`: System RAM, whose memmap exists from boot: memmap bytes per GiB of System RAM;
//!   with `--ranges`, also that no memory block (the sections that carry a memmap) overlaps
//!   the `memmap=SIZE$START` pool ranges.
//! * `--pageless DIR`: the memmap delta (and the drop of free memory) of allocating, mapping
//!   and touching `--size` on a pagelessfs mount; with `--ranges`, the pool capacity (statfs of
//!   the finest pagelessfs mount) against the reserved ranges.
//! * `--hugetlb`: RAM given to hugetlb, 1 GiB of 1G and of 2M pages, with the hugetlb vmemmap
//!   optimization (HVO, `vm.hugetlb_optimize_vmemmap`) on and off: RAM's memmap plus the delta
//!   of reserving the pages (HVO frees the tail pages' part of it). Leaves the HVO pages held
//!   in files under `--hold-dir` (see [`hugetlb`]), 1 GiB of free HVO-off pages of each size
//!   for later benchmarks, and the HVO setting as it found it.
//! * `--devdax NAMESPACE`: a legacy `memmap=SIZE!START` pmem namespace (nd_e820) turned into
//!   device-dax with `ndctl create-namespace --mode=devdax` and struct pages in RAM
//!   (`--map=mem`, align 4K and 2M: 2M uses compound pages whose vmemmap is deduplicated) or in
//!   the device (`--map=dev`): the memmap delta and the drop of free memory per GiB of the raw
//!   namespace, and the capacity the device loses (raw size − devdax size). 6.12 counts a
//!   `--map=dev` memmap in `nr_memmap_pages` although it lives in the device
//!   (`section_nr_vmemmap_pages()` ignores the altmap), so the drop of free memory (zone free
//!   pages plus per-CPU lists) says what RAM it really takes. Leaves the namespace disabled.

use std::io;
use std::path::Path;
use std::process::Command;

use crate::util::*;

const HVO: &str = "/proc/sys/vm/hugetlb_optimize_vmemmap";

pub struct Args<'a> {
    pub ram: bool,
    pub ranges: Option<&'a str>,
    pub pageless: Option<&'a Path>,
    pub hugetlb: bool,
    pub hold_dir: &'a Path,
    pub devdax: Option<&'a str>,
    pub ndctl: &'a Path,
    pub size: u64,
}

/// Free memory in bytes: every zone's free pages plus the pages waiting on per-CPU lists
/// (which MemFree leaves out, and which can hold several MiB right after a big free), after
/// dropping clean caches and folding the per-CPU counter deltas (`vm.stat_refresh`).
fn free_bytes() -> u64 {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let _ = std::fs::write("/proc/sys/vm/stat_refresh", "1");
    let zoneinfo = std::fs::read_to_string("/proc/zoneinfo").unwrap_or_default();
    let mut pages = 0u64;
    for line in zoneinfo.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("nr_free_pages"), Some(n)) | (Some("count:"), Some(n)) => pages += n.parse().unwrap_or(0),
            _ => {}
        }
    }
    pages * PAGE as u64
}

fn memmap_bytes() -> i64 {
    (memmap_pages().0 * PAGE as u64) as i64
}

fn per_gib(bytes: i64, of: u64) -> f64 {
    bytes as f64 / (of as f64 / GIB as f64)
}

fn mib(bytes: f64) -> String {
    format!("{:.3} MiB", bytes / MIB as f64)
}

/// Memory blocks (/sys/devices/system/memory/memoryN): [start, end) of each.
fn memory_blocks() -> io::Result<Vec<(u64, u64)>> {
    let dir = Path::new("/sys/devices/system/memory");
    let size = std::fs::read_to_string(dir.join("block_size_bytes"))?;
    let size = u64::from_str_radix(size.trim(), 16).map_err(io::Error::other)?;
    let mut blocks = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_prefix("memory").and_then(|n| n.parse::<u64>().ok()) {
            blocks.push((n * size, (n + 1) * size));
        }
    }
    blocks.sort_unstable();
    Ok(blocks)
}

fn parse_ranges(ranges: &str) -> io::Result<Vec<(u64, u64)>> {
    ranges
        .split(',')
        .map(|item| {
            let (size, start) =
                item.split_once('@').ok_or_else(|| io::Error::other(format!("bad range {item}")))?;
            let size = parse_size(size).map_err(io::Error::other)?;
            let start = parse_size(start).map_err(io::Error::other)?;
            Ok((start, start + size))
        })
        .collect()
}

/// Reports memmap bytes per GiB of System RAM; returns them per GiB of memory blocks (what a
/// GiB of RAM wholly inside them, such as a huge page, carries).
fn ram(r: &mut Report, ranges: Option<&str>) -> io::Result<f64> {
    let memmap = memmap_bytes();
    let ram: u64 = crate::vfio::system_ram().iter().map(|(a, b)| b - a + 1).sum();
    let blocks = memory_blocks()?;
    let block_bytes: u64 = blocks.iter().map(|(a, b)| b - a).sum();
    let bpg = per_gib(memmap, ram);
    let per_block_gib = per_gib(memmap, block_bytes);
    println!(
        "# struct-page: System RAM {} in /proc/iomem, {} memory blocks ({}), memmap {} -> {} per GiB of System RAM, {} per GiB of memory blocks",
        human(ram),
        blocks.len(),
        human(block_bytes),
        mib(memmap as f64),
        mib(bpg),
        mib(per_block_gib)
    );
    r.result("struct_page_ram_bytes_per_gib", format!("{bpg:.0}"));
    r.result("struct_page_ram_system_ram_bytes", ram);
    r.result("struct_page_ram_memmap_bytes", memmap);
    r.result("struct_page_ram_block_bytes_per_gib", format!("{per_block_gib:.0}"));
    r.check(
        "struct-page-ram",
        memmap > 0 && ram > 0,
        format!("{} of memmap for {} of System RAM", mib(memmap as f64), human(ram)),
    );
    if let Some(ranges) = ranges {
        let ranges = parse_ranges(ranges)?;
        let overlapping: Vec<String> = blocks
            .iter()
            .filter(|(a, b)| ranges.iter().any(|(s, e)| a < e && s < b))
            .map(|(a, b)| format!("[{a:#x}-{b:#x})"))
            .collect();
        let pool: u64 = ranges.iter().map(|(s, e)| e - s).sum();
        r.check(
            "struct-page-pool-has-no-memmap",
            overlapping.is_empty(),
            if overlapping.is_empty() {
                format!("no memory block (section with a memmap) overlaps the {} of pool ranges", human(pool))
            } else {
                format!("memory blocks overlap the pool: {}", overlapping.join(" "))
            },
        );
    }
    Ok(per_block_gib)
}

/// The pool's capacity: the largest `f_blocks × f_bsize` of the pagelessfs mounts (a 4K mount
/// counts every byte; 2M and 1G mounts only aligned pages).
fn pool_capacity() -> io::Result<u64> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    let mut best = 0;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        if let (Some(_), Some(dir), Some("pagelessfs")) = (f.next(), f.next(), f.next()) {
            let st = statfs(Path::new(dir))?;
            best = best.max(st.blocks * st.bsize);
        }
    }
    Ok(best)
}

fn pageless(r: &mut Report, dir: &Path, size: u64, ranges: Option<&str>) -> io::Result<()> {
    let st = statfs(dir)?;
    let path = dir.join("struct-page");
    let (m0, f0) = (memmap_bytes(), free_bytes());
    let f = create(&path)?;
    f.set_len(size)?;
    let m = Map::shared(&f, size as usize, 0)?;
    m.touch();
    let (m1, f1) = (memmap_bytes(), free_bytes());
    let (delta, ram) = (m1 - m0, f0 as i64 - f1 as i64);
    drop(m);
    drop(f);
    std::fs::remove_file(&path)?;
    let bpg = per_gib(delta, size);
    println!(
        "# struct-page: pagelessfs {}: {} allocated, mapped and touched: memmap delta {delta} bytes -> {bpg:.0} per GiB; free memory drop {} ({} per GiB: extent records, page tables)",
        human(st.bsize),
        human(size),
        mib(ram as f64),
        mib(per_gib(ram, size))
    );
    r.result("struct_page_pagelessfs_bytes_per_gib", format!("{bpg:.0}"));
    r.result("struct_page_pagelessfs_free_drop_bytes_per_gib", format!("{:.0}", per_gib(ram, size)));
    let mut detail = format!("{} on a {} mount: memmap delta {delta} bytes", human(size), human(st.bsize));
    if let Some(ranges) = ranges {
        let reserved: u64 = parse_ranges(ranges)?.iter().map(|(s, e)| e - s).sum();
        let capacity = pool_capacity()?;
        let lost = reserved as i64 - capacity as i64;
        println!(
            "# struct-page: pagelessfs pool: {} reserved with memmap=, {} capacity (statfs): {} lost",
            human(reserved),
            human(capacity),
            mib(lost as f64)
        );
        r.result("struct_page_pagelessfs_lost_bytes_per_gib", format!("{:.0}", per_gib(lost, reserved)));
        detail.push_str(&format!("; pool capacity {} of {} reserved", human(capacity), human(reserved)));
    }
    r.check("struct-page-pagelessfs", true, detail);
    Ok(())
}

fn hugepages_path(kb: u64) -> String {
    format!("/sys/kernel/mm/hugepages/hugepages-{kb}kB/nr_hugepages")
}

/// Sets the pool of `kb`-sized huge pages to `n`; returns how many it has then.
fn set_hugepages(kb: u64, n: u64) -> io::Result<u64> {
    let path = hugepages_path(kb);
    std::fs::write(&path, n.to_string())?;
    std::fs::read_to_string(&path)?.trim().parse().map_err(io::Error::other)
}

/// Mounts hugetlbfs with `pagesize` at `dir` (created).
fn mount_hugetlbfs(dir: &Path, pagesize: &str) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let data = std::ffi::CString::new(format!("pagesize={pagesize}")).map_err(io::Error::other)?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(c"none".as_ptr(), target.as_ptr(), c"hugetlbfs".as_ptr(), 0, data.as_ptr().cast())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Puts every free page of the pool behind `dir` (a hugetlbfs mount) into a file kept there.
fn hold(dir: &Path, size: u64) -> io::Result<()> {
    let f = create(&dir.join("hvo-pages"))?;
    // SAFETY: fallocate on an fd we own; hugetlbfs allocates the huge pages into the file.
    if unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, size as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// RAM given to hugetlb: 1 GiB of 1G and of 2M pages reserved with HVO on, then 1 GiB of each
/// with HVO off, the memmap delta of each reservation.
///
/// Freeing HVO-optimized pages at run time hits a bug in this guest's 6.12 kernel ("BUG: Bad
/// page state" in free_tail_page_prepare(), the pages lost), so the HVO pages are never freed:
/// files on hugetlbfs mounts under `hold_dir` keep them until power-off. The HVO-off pages stay
/// reserved and free, for the hugetlbfs benchmarks that follow (the 1G ones are reserved before
/// any 2M page, which could otherwise leave no free 1 GiB-aligned range).
fn hugetlb(r: &mut Report, ram_bpg: f64, hold_dir: &Path) -> io::Result<()> {
    let hvo_was = match std::fs::read_to_string(HVO) {
        Ok(s) => s.trim().to_string(),
        Err(e) => {
            r.check(
                "struct-page-hugetlb",
                false,
                format!("{HVO}: {e} (no CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP)"),
            );
            return Ok(());
        }
    };
    const PAGE_2M: u64 = 2048;
    const PAGE_1G: u64 = 1 << 20;
    // A 1G page reserved at boot (never HVO-optimized) is given back: its range is then free
    // for the first run-time 1G page.
    set_hugepages(PAGE_1G, 0)?;
    set_hugepages(PAGE_2M, 0)?;
    let mut failures = Vec::new();
    for (kb, hvo) in [(PAGE_1G, true), (PAGE_1G, false), (PAGE_2M, true), (PAGE_2M, false)] {
        std::fs::write(HVO, if hvo { "1" } else { "0" })?;
        let name = format!("{}_hvo_{}", human(kb * 1024).to_lowercase(), if hvo { "on" } else { "off" });
        let path = hugepages_path(kb);
        let had: u64 = std::fs::read_to_string(&path)?.trim().parse().map_err(io::Error::other)?;
        let n = GIB / (kb * 1024);
        let before = memmap_bytes();
        let got = set_hugepages(kb, had + n)? - had;
        let delta = memmap_bytes() - before;
        if got != n {
            failures.push(format!("{name}: got {got} of {n} pages"));
            continue;
        }
        if hvo {
            let dir = hold_dir.join(format!("hvo-{}", human(kb * 1024).to_lowercase()));
            if let Err(e) = mount_hugetlbfs(&dir, &human(kb * 1024)).and_then(|()| hold(&dir, GIB)) {
                failures.push(format!("{name}: holding the pages in {}: {e}", dir.display()));
            }
        }
        let bpg = ram_bpg + per_gib(delta, GIB);
        println!(
            "# struct-page: hugetlb {n} x {}, HVO {}: memmap delta {} on reserving -> {} per GiB",
            human(kb * 1024),
            if hvo { "on" } else { "off" },
            mib(delta as f64),
            mib(bpg)
        );
        r.result(&format!("struct_page_hugetlb_{name}_bytes_per_gib"), format!("{bpg:.0}"));
        r.result(&format!("struct_page_hugetlb_{name}_delta_bytes"), delta);
    }
    std::fs::write(HVO, &hvo_was)?;
    r.check(
        "struct-page-hugetlb",
        failures.is_empty(),
        if failures.is_empty() {
            format!(
                "1 GiB of 1G and of 2M pages with HVO on (held in {}/hvo-*) and off (left free)",
                hold_dir.display()
            )
        } else {
            failures.join("; ")
        },
    );
    Ok(())
}

fn ndctl(tool: &Path, args: &[&str]) -> io::Result<String> {
    let out = Command::new(tool).args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{} {}: {} {}",
            tool.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim().replace('\n', " ")
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first `"key":<number>` in ndctl's JSON.
fn json_number(json: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let rest = json[json.find(&pat)? + pat.len()..].trim_start();
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn devdax(r: &mut Report, tool: &Path, ns: &str) -> io::Result<()> {
    let sys = Path::new("/sys/bus/nd/devices").join(ns);
    let raw = match std::fs::read_to_string(sys.join("size")) {
        Ok(s) => s.trim().parse::<u64>().map_err(io::Error::other)?,
        Err(e) => {
            r.check(
                "struct-page-devdax",
                false,
                format!("{}: {e} (nd_e820 loaded? memmap=…!… given?)", sys.display()),
            );
            return Ok(());
        }
    };
    let mut done = Vec::new();
    for (map, align) in [("mem", "4K"), ("mem", "2M"), ("dev", "2M")] {
        let name = format!("devdax-{map}-{}", align.to_lowercase());
        let step = || -> io::Result<(i64, i64, u64, String)> {
            ndctl(tool, &["disable-namespace", ns])?;
            let (m0, f0) = (memmap_bytes(), free_bytes());
            ndctl(
                tool,
                &[
                    "create-namespace",
                    "-f",
                    "-e",
                    ns,
                    "--mode=devdax",
                    &format!("--map={map}"),
                    &format!("--align={align}"),
                ],
            )?;
            let (m1, f1) = (memmap_bytes(), free_bytes());
            let list = ndctl(tool, &["list", "-N", "-n", ns])?;
            let size =
                json_number(&list, "size").ok_or_else(|| io::Error::other(format!("no size in {list}")))?;
            let chardev = list
                .split("\"chardev\":\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("?")
                .to_string();
            ndctl(tool, &["disable-namespace", ns])?;
            Ok((m1 - m0, f0 as i64 - f1 as i64, size, chardev))
        };
        match step() {
            Ok((memmap, ram, size, chardev)) => {
                let key = name.replace('-', "_");
                let lost = raw as i64 - size as i64;
                println!(
                    "# struct-page: {name}: /dev/{chardev} {} of the {} namespace; memmap delta {} ({} per GiB), free memory drop {} ({} per GiB), capacity lost {} ({} per GiB)",
                    human(size),
                    human(raw),
                    mib(memmap as f64),
                    mib(per_gib(memmap, raw)),
                    mib(ram as f64),
                    mib(per_gib(ram, raw)),
                    mib(lost as f64),
                    mib(per_gib(lost, raw))
                );
                r.result(
                    &format!("struct_page_{key}_memmap_bytes_per_gib"),
                    format!("{:.0}", per_gib(memmap, raw)),
                );
                r.result(
                    &format!("struct_page_{key}_free_drop_bytes_per_gib"),
                    format!("{:.0}", per_gib(ram, raw)),
                );
                r.result(
                    &format!("struct_page_{key}_lost_bytes_per_gib"),
                    format!("{:.0}", per_gib(lost, raw)),
                );
                r.result(&format!("struct_page_{key}_size_bytes"), size);
                done.push(format!("{map}/{align}: {}", human(size)));
            }
            Err(e) => {
                r.check(&format!("struct-page-{name}"), false, e);
            }
        }
    }
    r.result("struct_page_devdax_raw_bytes", raw);
    r.check(
        "struct-page-devdax",
        done.len() == 3,
        format!("{ns} ({}) as devdax {}", human(raw), done.join(", ")),
    );
    Ok(())
}

pub fn struct_page(r: &mut Report, a: &Args) -> io::Result<()> {
    let mut ram_bpg = f64::NAN;
    if a.ram || a.hugetlb {
        ram_bpg = ram(r, a.ranges)?;
    }
    if let Some(dir) = a.pageless {
        pageless(r, dir, a.size, a.ranges)?;
    }
    if a.hugetlb {
        hugetlb(r, ram_bpg, a.hold_dir)?;
    }
    if let Some(ns) = a.devdax {
        devdax(r, a.ndctl, ns)?;
    }
    Ok(())
}
