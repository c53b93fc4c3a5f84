//! Where a memory file's pages are: maps it, touches every page and asks the kernel which NUMA
//! node each is on (`move_pages(2)` without moving).

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::util::{Map, Report, PAGE};

/// Checks that every page of `file` is on host node `node` (`name` names the check).
pub fn numa_pages(r: &mut Report, file: &Path, node: i32, name: &str) -> std::io::Result<()> {
    let f = OpenOptions::new().read(true).write(true).open(file)?;
    let len = f.metadata()?.len() as usize;
    let map = Map::new(f.as_raw_fd(), len, 0, libc::MAP_SHARED)?;
    for offset in (0..len).step_by(PAGE) {
        // SAFETY: inside the live mapping; a read fault maps the (existing) page here.
        unsafe { map.ptr.add(offset).read_volatile() };
    }
    // SAFETY: the mapping lives across the call.
    let nodes = unsafe { pageless_pool::numa::page_nodes(map.ptr, len) }?;
    let mut counts = std::collections::BTreeMap::new();
    for n in &nodes {
        *counts.entry(*n).or_insert(0usize) += 1;
    }
    let on = counts.get(&node).copied().unwrap_or(0);
    let summary: Vec<String> = counts.iter().map(|(n, c)| format!("node {n}: {c}")).collect();
    r.check(
        name,
        on == nodes.len() && !nodes.is_empty(),
        format!("{} pages of {}: {}", nodes.len(), file.display(), summary.join(", ")),
    );
    Ok(())
}
