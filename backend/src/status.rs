//! `pageless status`: what every owner under a run dir serves, and to whom.

use std::fmt::Write as _;
use std::path::Path;

use pageless_pool::size::Size;
use pageless_protocol::control::{ControlClient, ExtentStatus, StoppingStatus, VmStatus};

/// One owner socket and what it answered.
#[derive(Debug)]
pub struct Entry {
    /// The VM's name: the socket's file name without `.sock`.
    pub vm: String,
    /// What the owner answered, or why it could not be asked (nothing listens on the socket, it
    /// refused this user, …), as a message.
    pub status: Result<VmStatus, String>,
}

/// Extents the human-readable table lists per VM; `--json` lists them all.
const SHOWN_EXTENTS: usize = 16;

/// How much of each owner's extent list to fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extents {
    /// Every extent, page by page (`--json`).
    All,
    /// The first page, and how many there are (the table).
    Summary,
}

/// Asks every owner socket in `run_dir` (or only `vm`'s) for its status.
pub fn collect(run_dir: &Path, vm: Option<&str>, extents: Extents) -> std::io::Result<Vec<Entry>> {
    let mut names: Vec<String> = match vm {
        Some(vm) => vec![vm.to_string()],
        None => match std::fs::read_dir(run_dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".sock").map(str::to_string))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        },
    };
    names.sort();
    Ok(names
        .into_iter()
        .map(|vm| {
            let socket = crate::control_socket_path(run_dir, &vm);
            let status = ControlClient::connect(&socket, "status")
                .and_then(|client| match extents {
                    Extents::All => client.status(),
                    Extents::Summary => client.status_summary(),
                })
                .map_err(|e| e.to_string());
            Entry { vm, status }
        })
        .collect())
}

/// The human-readable table.
pub fn render(entries: &[Entry]) -> String {
    let mut out = String::new();
    if entries.is_empty() {
        out.push_str("no VMs are served here\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<20} {:>8} {:<28} {:>6} {:>8} {:>8} {:>10} {:>8} {:<8}",
        "VM", "SIZE", "POOL", "PAGE", "EXTENTS", "CLIENTS", "CONSUMERS", "PID", "STATE"
    );
    for entry in entries {
        match &entry.status {
            Ok(s) => {
                let _ = writeln!(
                    out,
                    "{:<20} {:>8} {:<28} {:>6} {:>8} {:>8} {:>10} {:>8} {:<8}",
                    s.vm,
                    Size(s.size).to_string(),
                    if s.cells.is_empty() { s.pool.clone() } else { format!("{} NUMA cells", s.cells.len()) },
                    Size(s.page_size).to_string(),
                    extent_count(s),
                    s.clients.len(),
                    s.consumers.len(),
                    s.pid,
                    if s.stopping.is_some() { "stopping" } else { "serving" }
                );
            }
            Err(why) => {
                let _ = writeln!(out, "{:<20} not answering: {why}", entry.vm);
            }
        }
    }
    for s in entries.iter().filter_map(|e| e.status.as_ref().ok()) {
        let _ = writeln!(
            out,
            "\n{}: {} on {}{}",
            s.vm,
            Size(s.size),
            s.memory,
            s.path.as_deref().map(|p| format!(" ({p})")).unwrap_or_default()
        );
        if !s.cells.is_empty() {
            render_cells(&mut out, s);
        } else {
            render_memory(&mut out, s);
        }
        let quarantined = s
            .pool_quarantined
            .map(|q| format!(", {} quarantined (freed, held back until its mappers exit)", Size(q)));
        let node = s.pool_node.map(|n| format!(" on NUMA node {n}"));
        let _ = writeln!(
            out,
            "  pool    {} total, {} free{}{}",
            Size(s.pool_total),
            Size(s.pool_free),
            quarantined.unwrap_or_default(),
            node.unwrap_or_default()
        );
        if let Some(q) = &s.qemu {
            let _ = writeln!(
                out,
                "  qemu    pid {} uid {}: the VM's QEMU, bound {} s ago{}",
                q.pid,
                q.uid,
                crate::clock::unix_now().saturating_sub(q.since),
                if q.running { "" } else { " (exited: this owner hands the memory to no other QEMU)" }
            );
        }
        if let Some(stopping) = &s.stopping {
            render_stopping(&mut out, stopping);
        }
        if s.cells.is_empty() {
            render_extents(&mut out, "  ", &s.extents, extent_count(s));
        }
        for c in &s.clients {
            let _ = writeln!(
                out,
                "  client  {:<10} pid {:<8} uid {:<6} {}",
                c.role,
                c.pid,
                c.uid,
                if c.has_memory { "maps the memory" } else { "" }
            );
        }
        for c in &s.consumers {
            let pid = c.backend_pid.map_or("?".into(), |p| p.to_string());
            let _ = writeln!(
                out,
                "  device  {:<10} backend pid {pid} via {} ({} regions)",
                c.device,
                c.backend_socket,
                c.regions.len()
            );
            for r in &c.regions {
                let _ = writeln!(
                    out,
                    "          guest {:#x} size {} offset {:#x}",
                    r.guest_phys_addr,
                    Size(r.size),
                    r.offset
                );
            }
        }
    }
    out
}

/// The memory of a VM served with `--size`: its file.
fn render_memory(out: &mut String, s: &VmStatus) {
    let _ = writeln!(
        out,
        "  inode {}:{}{}",
        s.dev,
        s.inode,
        if s.reattached { ", re-attached after a restart" } else { "" }
    );
}

/// The cells of a VM served with `--cell`: id, size, pool, host node, file and extents.
fn render_cells(out: &mut String, s: &VmStatus) {
    for c in &s.cells {
        let _ = writeln!(
            out,
            "  cell {:<3} {} of {} ({}, pages {}), host node {}, at offset {:#x}",
            c.id,
            Size(c.size),
            c.pool,
            c.memory,
            Size(c.page_size),
            c.host_node.map_or("as the pool places it".to_string(), |n| n.to_string()),
            c.offset
        );
        let _ = writeln!(
            out,
            "           inode {}:{}{}{}",
            c.dev,
            c.inode,
            c.path.as_deref().map(|p| format!(" ({p})")).unwrap_or_default(),
            if c.reattached { ", re-attached after a restart" } else { "" }
        );
        render_extents(out, "           ", &c.extents, c.extent_count.unwrap_or(c.extents.len() as u64));
    }
}

/// The first extents of a memory file, and how many more there are.
fn render_extents(out: &mut String, indent: &str, extents: &[ExtentStatus], count: u64) {
    for e in extents.iter().take(SHOWN_EXTENTS) {
        let physical = e.physical.map_or("-".to_string(), |p| format!("{p:#x}"));
        let _ = writeln!(
            out,
            "{indent}extent  offset {:#x} length {} physical {physical}",
            e.logical,
            Size(e.length)
        );
    }
    let hidden = count.saturating_sub(SHOWN_EXTENTS.min(extents.len()) as u64);
    if hidden > 0 {
        let _ =
            writeln!(out, "{indent}extent  … and {hidden} more (`pageless status --json` lists them all)");
    }
}

/// How many extents the VM's memory has: as the owner counted them, else as listed.
fn extent_count(s: &VmStatus) -> u64 {
    s.extent_count.unwrap_or(s.extents.len() as u64)
}

/// What a stopping owner waits for.
fn render_stopping(out: &mut String, stopping: &StoppingStatus) {
    let ago = crate::clock::unix_now().saturating_sub(stopping.since);
    let _ = writeln!(
        out,
        "  STOPPING since {ago} s ago ({}); {}",
        stopping.reason,
        if stopping.waiting_for.is_empty() {
            "nothing holds the memory any more: releasing it".to_string()
        } else {
            format!(
                "keeps the memory until these are gone{}:",
                if stopping.past_timeout {
                    format!(" (past its --consumer-timeout of {} s)", stopping.consumer_timeout)
                } else {
                    String::new()
                }
            )
        }
    );
    for holder in &stopping.waiting_for {
        let pid = holder.pid.map_or("pid ?".to_string(), |p| format!("pid {p}"));
        let _ = writeln!(out, "    waiting for {pid}: {}", holder.what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pageless_protocol::control::MemoryHolder;

    #[test]
    fn shows_quarantine_and_what_a_stopping_owner_waits_for() {
        let status = VmStatus {
            vm: "vm1".into(),
            pool_total: 1 << 30,
            pool_free: 512 << 20,
            pool_quarantined: Some(2 << 20),
            pool_node: Some(1),
            stopping: Some(StoppingStatus {
                since: crate::clock::unix_now(),
                reason: "signal SIGTERM".into(),
                consumer_timeout: 5,
                past_timeout: true,
                waiting_for: vec![MemoryHolder {
                    pid: Some(4242),
                    what: "qemu-system-x86: maps the memory".into(),
                }],
            }),
            ..Default::default()
        };
        let text = render(&[Entry { vm: "vm1".into(), status: Ok(status.clone()) }]);
        assert!(text.contains("pool    1G total, 512M free, 2M quarantined"), "{text}");
        assert!(text.contains("held back until its mappers exit) on NUMA node 1"), "{text}");
        assert!(text.contains("stopping"), "{text}");
        assert!(text.contains("STOPPING since 0 s ago (signal SIGTERM)"), "{text}");
        assert!(text.contains("(past its --consumer-timeout of 5 s)"), "{text}");
        assert!(text.contains("waiting for pid 4242: qemu-system-x86: maps the memory"), "{text}");

        let serving = VmStatus { pool_quarantined: None, pool_node: None, stopping: None, ..status };
        let text = render(&[Entry { vm: "vm1".into(), status: Ok(serving) }]);
        assert!(!text.contains("quarantined") && !text.contains("STOPPING"), "{text}");
        assert!(!text.contains("NUMA"), "{text}");
        assert!(text.contains("serving"), "{text}");
    }

    #[test]
    fn lists_the_first_extents_and_counts_the_rest() {
        let extents: Vec<_> = (0..SHOWN_EXTENTS as u64 + 3)
            .map(|i| pageless_protocol::control::ExtentStatus {
                logical: i * 8192,
                physical: None,
                length: 4096,
            })
            .collect();
        let status =
            VmStatus { vm: "vm1".into(), extent_count: Some(100_000), extents, ..Default::default() };
        let text = render(&[Entry { vm: "vm1".into(), status: Ok(status) }]);
        assert_eq!(text.matches("  extent  offset").count(), SHOWN_EXTENTS, "{text}");
        assert!(text.contains("… and 99984 more (`pageless status --json` lists them all)"), "{text}");
        assert!(
            text.lines().nth(1).is_some_and(|l| l.contains(" 100000 ")),
            "the count is the owner's: {text}"
        );
    }

    #[test]
    fn shows_each_cell() {
        let cell = |id: u32, node| pageless_protocol::control::CellStatus {
            id,
            size: 128 << 20,
            offset: u64::from(id) * (128 << 20),
            pool: "memfd".into(),
            host_node: node,
            memory: "memfd".into(),
            page_size: 4096,
            inode: 100 + u64::from(id),
            extents: vec![ExtentStatus { logical: 0, physical: None, length: 128 << 20 }],
            extent_count: Some(1),
            ..Default::default()
        };
        let status = VmStatus {
            vm: "numa1".into(),
            size: 256 << 20,
            cells: vec![cell(0, Some(0)), cell(1, None)],
            ..Default::default()
        };
        let text = render(&[Entry { vm: "numa1".into(), status: Ok(status) }]);
        assert!(text.lines().nth(1).is_some_and(|l| l.contains("2 NUMA cells")), "{text}");
        assert!(
            text.contains("cell 0   128M of memfd (memfd, pages 4K), host node 0, at offset 0x0"),
            "{text}"
        );
        assert!(text.contains("cell 1   128M of memfd (memfd, pages 4K), host node as the pool places it, at offset 0x8000000"), "{text}");
        assert!(text.contains("inode 0:101"), "{text}");
        assert_eq!(text.matches("extent  offset 0x0 length 128M").count(), 2, "{text}");
    }
}
