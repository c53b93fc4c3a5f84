//! `bench-faults`: first-touch cost of 1 GiB and struct page overhead, pagelessfs versus
//! memfd, anonymous memory and hugetlbfs, all measured in the same run.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};

use crate::util::*;

struct Row {
    name: String,
    faults: i64,
    ms: f64,
    note: String,
}

fn touch_file(name: &str, f: &File, size: u64) -> io::Result<Row> {
    f.set_len(size)?;
    let m = Map::shared(f, size as usize, 0)?;
    let (faults, ms) = timed_touch(&m);
    Ok(Row { name: name.into(), faults, ms, note: String::new() })
}

/// A pagelessfs row, measured in a child process: memory freed from a file that a still-living
/// process mapped stays quarantined until that process exits (the module cannot know whether it
/// left an IOMMU mapping behind), so each row's GiB must come back before the next row.
fn pageless_row(dir: &Path, size: u64) -> io::Result<Row> {
    let st = statfs(dir)?;
    let p = dir.join("bench");
    let name = format!("pagelessfs {}", human(st.bsize));
    let (read, write) = nix::unistd::pipe().map_err(io::Error::from)?;
    // SAFETY: pageless-guest is single-threaded here; the child only touches the file, writes
    // its two numbers to the pipe and leaves with _exit, running no destructors of the parent's.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Child => {
            drop(read);
            let measured = create(&p).and_then(|f| touch_file(&name, &f, size));
            let line = match measured {
                Ok(row) => format!("{} {}\n", row.faults, row.ms),
                Err(e) => format!("error {e}\n"),
            };
            let _ = std::io::Write::write_all(&mut File::from(write), line.as_bytes());
            // SAFETY: _exit ends the child at once, as after any fork.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(write);
            let mut line = String::new();
            std::io::Read::read_to_string(&mut File::from(read), &mut line)?;
            nix::sys::wait::waitpid(child, None).map_err(io::Error::from)?;
            let _ = std::fs::remove_file(&p);
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some(faults), Some(ms)) if faults != "error" => Ok(Row {
                    name,
                    faults: faults.parse().map_err(io::Error::other)?,
                    ms: ms.parse().map_err(io::Error::other)?,
                    note: String::new(),
                }),
                _ => Err(io::Error::other(format!("{name}: {}", line.trim()))),
            }
        }
    }
}

fn memfd_row(size: u64) -> io::Result<Row> {
    let name = c"bench";
    // SAFETY: memfd_create with a NUL-terminated name; the fd is checked and then owned.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    let shmem =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled").unwrap_or_default();
    let mut row = touch_file("memfd (shmem)", &f, size)?;
    row.note = format!("shmem_enabled {}", shmem.trim());
    Ok(row)
}

fn anon_row(size: u64) -> io::Result<Row> {
    let m = Map::new(-1, size as usize, 0, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS)?;
    let (faults, ms) = timed_touch(&m);
    Ok(Row { name: "anonymous private".into(), faults, ms, note: format!("THP {}", thp_mode()) })
}

fn hugetlb_row(dir: &Path, size: u64) -> io::Result<Row> {
    let st = statfs(dir)?;
    let p = dir.join("bench");
    let f = create(&p)?;
    let row = touch_file(&format!("hugetlbfs {}", human(st.bsize)), &f, size);
    drop(f);
    std::fs::remove_file(&p)?;
    row
}

/// System RAM bytes from /proc/iomem (top-level "System RAM" entries).
fn system_ram_bytes() -> u64 {
    let iomem = std::fs::read_to_string("/proc/iomem").unwrap_or_default();
    iomem
        .lines()
        .filter(|l| !l.starts_with(' ') && l.ends_with(": System RAM"))
        .filter_map(|l| {
            let span = l.split(" : ").next()?;
            let (a, b) = span.split_once('-')?;
            let a = u64::from_str_radix(a.trim(), 16).ok()?;
            let b = u64::from_str_radix(b.trim(), 16).ok()?;
            Some(b - a + 1)
        })
        .sum()
}

pub fn bench_faults(
    r: &mut Report,
    pageless: &[PathBuf],
    hugetlbfs: &[PathBuf],
    size: u64,
) -> io::Result<()> {
    let mut rows = Vec::new();
    let thp = thp_mode();
    rows.push(memfd_row(size)?);
    rows.push(anon_row(size)?);
    for d in hugetlbfs {
        match hugetlb_row(d, size) {
            Ok(row) => rows.push(row),
            Err(e) => println!("# hugetlbfs {}: {e} (skipped)", d.display()),
        }
    }
    for d in pageless {
        rows.push(pageless_row(d, size)?);
    }

    let base = &rows[0];
    let (bf, bms) = (base.faults.max(1) as f64, base.ms.max(0.001));
    println!("# bench-faults: first touch of {} (one write per 4 KiB page), THP {thp}", human(size));
    println!("# (pagelessfs memory is zeroed when freed, by the scrubber; the RAM-backed rows zero at first touch)");
    println!("# {:<22} {:>10} {:>9} {:>10} {:>9}  note", "backing", "minflt", "vs memfd", "ms", "vs memfd");
    for row in &rows {
        println!(
            "# {:<22} {:>10} {:>8.5}x {:>10.1} {:>8.3}x  {}",
            row.name,
            row.faults,
            row.faults as f64 / bf,
            row.ms,
            row.ms / bms,
            row.note
        );
        let key = row.name.replace([' ', '(', ')'], "_").to_lowercase();
        r.result(&format!("bench_{key}_minflt"), row.faults);
        r.result(&format!("bench_{key}_ms"), format!("{:.1}", row.ms));
    }

    // struct page cost: plain RAM carries its memmap from boot; pagelessfs allocations add none.
    let (pages0, _) = memmap_pages();
    let ram = system_ram_bytes();
    let ram_per_gib = (pages0 * PAGE as u64) as f64 / (ram as f64 / GIB as f64);
    let mut pl_per_gib = f64::NAN;
    if let Some(d) = pageless.first() {
        // The allocation waits for the scrubbing of the rows above.
        let bytes = size;
        let p = d.join("bench-memmap");
        let f = create(&p)?;
        f.set_len(bytes)?;
        let m = Map::shared(&f, bytes as usize, 0)?;
        m.touch();
        let (pages1, _) = memmap_pages();
        pl_per_gib = (pages1 as f64 - pages0 as f64) * PAGE as f64 / (bytes as f64 / GIB as f64);
        drop(m);
        drop(f);
        std::fs::remove_file(&p)?;
        println!(
            "# struct page bytes per GiB: System RAM {:.0} ({} memmap pages for {} of RAM); pagelessfs {:.0} (memmap delta after allocating and touching {}); ratio {:.4}",
            ram_per_gib,
            pages0,
            human(ram),
            pl_per_gib,
            human(bytes),
            pl_per_gib / ram_per_gib
        );
    }
    r.result("bench_memmap_bytes_per_gib_ram", format!("{ram_per_gib:.0}"));
    r.result("bench_memmap_bytes_per_gib_pageless", format!("{pl_per_gib:.0}"));
    Ok(())
}
