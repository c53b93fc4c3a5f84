//! `pageless host`: setting a host up for pagelessfs.
//!
//! * [`plan`]: where to reserve memory at boot (`memmap=`), from `/proc/iomem`, the firmware's
//!   map and the NUMA nodes' memory blocks; the GRUB line, the module's `ranges=` and the config.
//! * [`config`]: `/etc/pageless/pageless.toml` — ranges, mounts, and the host node → pool map
//!   the libvirt hook uses ([`config::HostConfig::pool_for_node`]).
//! * [`ops`]: `host up` (load the module, mount the pools; idempotent), `host down` and
//!   `host check` (what a booted host still lacks, and how to fix it).

pub mod config;
pub mod iomem;
pub mod numa;
pub mod ops;
pub mod plan;

use std::path::Path;

use crate::context::{Context, IoError};

/// Reads what the planner needs from `/proc` and `/sys`.
pub fn read_machine() -> Result<plan::Machine, Box<dyn std::error::Error>> {
    let iomem = iomem::Iomem::parse(&std::fs::read_to_string("/proc/iomem").context("read /proc/iomem")?)?;
    let firmware_ram = read_firmware_ram(Path::new("/sys/firmware/memmap"))?;
    let nodes = numa::read(Path::new("/sys")).context("read the NUMA nodes' memory blocks in /sys")?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok();
    Ok(plan::Machine { iomem, firmware_ram, nodes, cmdline })
}

/// `System RAM` entries of the firmware's memory map (`/sys/firmware/memmap/N/{start,end,type}`,
/// hex, end inclusive), or `None` without that directory.
pub fn read_firmware_ram(dir: &Path) -> Result<Option<Vec<(u64, u64)>>, IoError> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(IoError::new(format!("list {}", dir.display()), e)),
    };
    let mut ram = Vec::new();
    for entry in listing.take(100_000) {
        let entry = entry.with_context(|| format!("list {}", dir.display()))?;
        let read = |name: &str| std::fs::read_to_string(entry.path().join(name)).unwrap_or_default();
        if read("type").trim() != "System RAM" {
            continue;
        }
        let hex = |t: String| u64::from_str_radix(t.trim().trim_start_matches("0x"), 16).ok();
        if let (Some(start), Some(last)) = (hex(read("start")), hex(read("end"))) {
            if start <= last {
                ram.push((start, last.saturating_add(1)));
            }
        }
    }
    Ok(Some(iomem::merge(ram)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_map() {
        let dir = tempfile::tempdir().unwrap();
        for (i, (start, end, kind)) in [
            ("0x0", "0x9fbff", "System RAM"),
            ("0x100000000", "0x13fffffff", "System RAM"),
            ("0xfeffc000", "0xfeffffff", "Reserved"),
        ]
        .iter()
        .enumerate()
        {
            let e = dir.path().join(i.to_string());
            std::fs::create_dir(&e).unwrap();
            std::fs::write(e.join("start"), format!("{start}\n")).unwrap();
            std::fs::write(e.join("end"), format!("{end}\n")).unwrap();
            std::fs::write(e.join("type"), format!("{kind}\n")).unwrap();
        }
        let ram = read_firmware_ram(dir.path()).unwrap().unwrap();
        assert_eq!(ram, vec![(0, 0x9fc00), (0x1_0000_0000, 0x1_4000_0000)]);
        assert_eq!(read_firmware_ram(&dir.path().join("none")).unwrap(), None);
    }
}
