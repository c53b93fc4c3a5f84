//! The owner's shared state: the VM's memory, the control clients and relayed device backends
//! that use it, and what STATUS reports of them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use log::{error, warn};
use pageless_pool::{Allocation, Mapping, Pool, PoolKind};
use pageless_protocol::control::{
    CellStatus, ClientStatus, ConsumerStatus, ExtentPage, ExtentStatus, MemoryHolder, RegionStatus, VmStatus,
};

use crate::binding::QemuBinding;
use crate::clock::unix_now;
use crate::peer::{process_alive, AccessPolicy, Peer};
use crate::stopping::StopState;

/// One guest NUMA cell's memory (a VM served with `--size` has one, id 0).
pub(crate) struct Cell {
    /// The guest cell's id.
    pub id: u32,
    /// The host node its memory was bound to, if any.
    pub host_node: Option<u32>,
    /// Its offset in the VM's memory as FIND, WRITE and GET_MEMORY's `guest_phys_addr` see it:
    /// the cells laid end to end, in order.
    pub offset: u64,
    pub pool: Pool,
    pub allocation: Allocation,
    pub mapping: Mapping,
    pub reattached: bool,
}

impl Cell {
    fn memory_kind(&self) -> String {
        match self.allocation.kind() {
            PoolKind::Memfd if self.pool.page_size() > 4096 => "memfd-hugetlb".into(),
            PoolKind::Memfd => "memfd".into(),
            PoolKind::Directory(fs) => fs.to_string(),
        }
    }

    /// What STATUS says of the cell, with at most `max_extents` extents.
    fn status(&self, max_extents: usize) -> CellStatus {
        let page = self.allocation.extents_page(0, max_extents).map_err(|e| warn!("extents: {e}")).ok();
        let extent_count = match &page {
            Some(page) if page.next.is_none() => Some(page.extents.len() as u64),
            _ => self.allocation.extent_count().map_err(|e| warn!("extents: {e}")).ok(),
        };
        let id = self.allocation.id();
        CellStatus {
            id: self.id,
            size: self.allocation.size(),
            offset: self.offset,
            pool: self.pool.spec().to_string(),
            host_node: self.host_node,
            memory: self.memory_kind(),
            page_size: self.allocation.page_size(),
            path: self.allocation.path().map(|p| p.display().to_string()),
            dev: id.dev,
            inode: id.ino,
            reattached: self.reattached,
            extents: page
                .map(|p| p.extents)
                .unwrap_or_default()
                .into_iter()
                .map(|e| ExtentStatus { logical: e.logical, physical: e.physical, length: e.length })
                .collect(),
            extent_count,
        }
    }
}

/// The state every connection thread shares.
pub(crate) struct Owner {
    pub vm: String,
    /// The VM's memory: one cell per `--cell`, in the order given, or the one `--size` memory.
    pub cells: Vec<Cell>,
    /// Whether the VM was served with `--cell` (STATUS lists the cells).
    pub numa: bool,
    pub started: u64,
    pub policy: AccessPolicy,
    clients: Mutex<BTreeMap<u64, ClientStatus>>,
    consumers: Mutex<BTreeMap<u64, ConsumerStatus>>,
    /// Processes that were given the memory (clients, device backends), to wait for at exit.
    mappers: Mutex<BTreeSet<u32>>,
    /// Set once the owner was asked to stop.
    stopping: Mutex<Option<StopState>>,
    /// The VM's QEMU, the one untrusted process that may have the memory.
    pub qemu: QemuBinding,
    next_client: AtomicU64,
    stop_request: File,
}

impl Owner {
    /// The state of a freshly started owner; `stop_request` wakes its main loop.
    pub fn new(vm: String, cells: Vec<Cell>, numa: bool, policy: AccessPolicy, stop_request: File) -> Owner {
        assert!(!cells.is_empty(), "a VM has memory");
        Owner {
            vm,
            cells,
            numa,
            started: unix_now(),
            policy,
            clients: Mutex::new(BTreeMap::new()),
            consumers: Mutex::new(BTreeMap::new()),
            mappers: Mutex::new(BTreeSet::new()),
            stopping: Mutex::new(None),
            qemu: QemuBinding::default(),
            next_client: AtomicU64::new(1),
            stop_request,
        }
    }
}

impl Owner {
    /// The first cell (the whole memory of a VM served with `--size`).
    pub fn first(&self) -> &Cell {
        &self.cells[0]
    }

    /// The VM's memory size: all cells.
    pub fn size(&self) -> u64 {
        self.cells.iter().map(|c| c.allocation.size()).sum()
    }

    /// The cell whose file `fd` is (same device and inode), if any.
    pub fn cell_of(&self, fd: impl std::os::fd::AsFd) -> Option<&Cell> {
        let id = pageless_pool::FileId::of(fd).ok()?;
        self.cells.iter().find(|c| c.allocation.id() == id)
    }

    /// Offsets of `pattern` in the VM's memory (the cells end to end), at most `limit`.
    pub fn find(&self, pattern: &[u8], limit: usize) -> Result<Vec<u64>, String> {
        let mut found = Vec::new();
        for cell in &self.cells {
            let left = limit.saturating_sub(found.len());
            if left == 0 {
                break;
            }
            let offsets = cell.mapping.find(pattern, left).map_err(|e| format!("cell {}: {e}", cell.id))?;
            found.extend(offsets.into_iter().map(|o| o + cell.offset));
        }
        Ok(found)
    }

    /// Stores `data` at `offset` of the VM's memory (the cells end to end); it may not span
    /// two cells.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), String> {
        let cell = self
            .cells
            .iter()
            .find(|c| offset >= c.offset && offset - c.offset < c.allocation.size())
            .ok_or_else(|| format!("offset {offset:#x} is past the VM's {:#x} bytes", self.size()))?;
        let inside = usize::try_from(offset - cell.offset).map_err(|e| e.to_string())?;
        cell.mapping.write(inside, data).map_err(|e| e.to_string())
    }

    /// Registers a connected client; it is listed by STATUS until [`Owner::forget_client`].
    pub fn add_client(&self, peer: Peer) -> u64 {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let client =
            ClientStatus { id, pid: peer.pid, uid: peer.uid, since: unix_now(), ..Default::default() };
        self.clients.lock().expect("clients lock").insert(id, client);
        id
    }

    pub fn update_client(&self, id: u64, update: impl FnOnce(&mut ClientStatus)) {
        if let Some(client) = self.clients.lock().expect("clients lock").get_mut(&id) {
            update(client);
            if client.has_memory {
                self.mappers.lock().expect("mappers lock").insert(client.pid);
            }
        }
    }

    /// Registers a relayed device backend; listed by STATUS until [`Owner::forget_consumer`].
    pub fn add_consumer(&self, consumer: ConsumerStatus) -> u64 {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        if let Some(pid) = consumer.backend_pid {
            self.mappers.lock().expect("mappers lock").insert(pid);
        }
        self.consumers.lock().expect("consumers lock").insert(id, consumer);
        id
    }

    pub fn set_consumer_regions(&self, id: u64, regions: Vec<RegionStatus>) {
        if let Some(consumer) = self.consumers.lock().expect("consumers lock").get_mut(&id) {
            consumer.regions = regions;
        }
    }

    pub fn add_consumer_region(&self, id: u64, region: RegionStatus) {
        if let Some(consumer) = self.consumers.lock().expect("consumers lock").get_mut(&id) {
            consumer.regions.push(region);
        }
    }

    pub fn remove_consumer_region(&self, id: u64, guest_phys_addr: u64, size: u64) {
        if let Some(consumer) = self.consumers.lock().expect("consumers lock").get_mut(&id) {
            consumer.regions.retain(|r| (r.guest_phys_addr, r.size) != (guest_phys_addr, size));
        }
    }

    pub fn forget_consumer(&self, id: u64) {
        self.consumers.lock().expect("consumers lock").remove(&id);
    }

    pub fn forget_client(&self, id: u64) {
        self.clients.lock().expect("clients lock").remove(&id);
    }

    /// Wakes the main loop to shut down (the STOP request).
    pub fn request_stop(&self) {
        if let Err(e) = (&self.stop_request).write_all(&[1]) {
            error!("cannot signal the main loop to stop: {e}");
        }
    }

    /// What STATUS reports, with at most `max_extents` extents.
    pub fn status(&self, max_extents: usize) -> VmStatus {
        let first = self.first();
        let stats = first.pool.stats().map_err(|e| warn!("pool statistics: {e}")).ok();
        let page = self.extents(0, max_extents).map_err(|e| warn!("{e}")).unwrap_or_default();
        let extent_count = match page.next {
            None => Some(page.extents.len() as u64),
            Some(_) => first.allocation.extent_count().map_err(|e| warn!("extents: {e}")).ok(),
        };
        let id = first.allocation.id();
        VmStatus {
            vm: self.vm.clone(),
            pid: std::process::id(),
            size: self.size(),
            pool: first.pool.spec().to_string(),
            memory: first.memory_kind(),
            page_size: first.allocation.page_size(),
            path: first.allocation.path().map(|p| p.display().to_string()),
            dev: id.dev,
            inode: id.ino,
            reattached: first.reattached,
            started: self.started,
            pool_total: stats.map_or(0, |s| s.total),
            pool_free: stats.map_or(0, |s| s.free),
            pool_quarantined: stats.and_then(|s| s.quarantined),
            pool_node: stats.and_then(|s| s.node),
            extents: page.extents,
            extent_count,
            extents_next: page.next,
            clients: self.clients.lock().expect("clients lock").values().cloned().collect(),
            consumers: self.consumers.lock().expect("consumers lock").values().cloned().collect(),
            stopping: self.stop_state().map(|s| s.status()),
            qemu: self.qemu.describe().map(|(pid, uid, since, running)| {
                pageless_protocol::control::BoundQemuStatus { pid, uid, since, running }
            }),
            cells: if self.numa {
                self.cells.iter().map(|c| c.status(max_extents)).collect()
            } else {
                Vec::new()
            },
        }
    }

    /// At most `max` extents of the first cell from file offset `start` on (EXTENTS), or why
    /// not.
    pub fn extents(&self, start: u64, max: usize) -> Result<ExtentPage, String> {
        let page = self.first().allocation.extents_page(start, max).map_err(|e| format!("extents: {e}"))?;
        Ok(ExtentPage {
            extents: page
                .extents
                .into_iter()
                .map(|e| ExtentStatus { logical: e.logical, physical: e.physical, length: e.length })
                .collect(),
            next: page.next,
        })
    }

    /// Enters the stopping state (once; a later request keeps the first reason and time).
    /// From then on no memory is handed out, so the holders can only go.
    pub fn begin_stopping(&self, reason: &str, timeout: Duration) {
        self.stopping.lock().expect("stopping lock").get_or_insert_with(|| StopState::new(reason, timeout));
    }

    /// Since when and why the owner stops, if it does.
    pub fn stop_state(&self) -> Option<StopState> {
        self.stopping.lock().expect("stopping lock").clone()
    }

    /// Marks client `id` as having received the memory, unless the owner is stopping (then
    /// returns why it refuses). Checked and marked under the stopping lock, so that a stopping
    /// owner sees every client it handed the memory to.
    pub fn hand_out_memory(&self, id: u64) -> Result<(), String> {
        let stopping = self.stopping.lock().expect("stopping lock");
        if let Some(state) = stopping.as_ref() {
            return Err(state.refusal());
        }
        self.update_client(id, |c| c.has_memory = true);
        Ok(())
    }

    /// Refuses with the reason while the owner is stopping.
    pub fn check_not_stopping(&self) -> Result<(), String> {
        match self.stopping.lock().expect("stopping lock").as_ref() {
            Some(state) => Err(state.refusal()),
            None => Ok(()),
        }
    }

    /// Looks again at what holds the memory, records it for STATUS and returns it.
    pub fn refresh_holders(&self) -> Vec<MemoryHolder> {
        let holders = self.holders();
        if let Some(state) = self.stopping.lock().expect("stopping lock").as_mut() {
            state.holders = holders.clone();
        }
        holders
    }

    /// What still holds the memory: relayed devices (their connection lives), control clients
    /// that received the memory and are still connected (an fd may still be on its way to
    /// them), and processes the memory was handed to that still map it or hold an fd of it or
    /// a VFIO fd.
    fn holders(&self) -> Vec<MemoryHolder> {
        let mut unknown_pid = Vec::new();
        let mut by_pid: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for c in self.consumers.lock().expect("consumers lock").values() {
            let how = format!(
                "backend of device {} at {}: its relay connection is open",
                c.device, c.backend_socket
            );
            match c.backend_pid {
                Some(pid) => by_pid.entry(pid).or_default().push(how),
                None => unknown_pid.push(MemoryHolder { pid: None, what: how }),
            }
        }
        for client in self.clients.lock().expect("clients lock").values().filter(|c| c.has_memory) {
            by_pid.entry(client.pid).or_default().push("received the memory and is still connected".into());
        }
        let ids: Vec<_> = self.cells.iter().map(|c| c.allocation.id()).collect();
        for &pid in self.mappers.lock().expect("mappers lock").iter() {
            if pid != std::process::id() {
                by_pid.entry(pid).or_default().extend(process_holds(pid, &ids).into_iter().map(String::from));
            }
        }
        let mut holders = unknown_pid;
        holders.extend(by_pid.into_iter().filter(|(_, how)| !how.is_empty()).map(|(pid, how)| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            MemoryHolder { pid: Some(pid), what: format!("{}: {}", comm.trim(), how.join(", ")) }
        }));
        holders
    }
}

/// How process `pid` may still reach one of the files `ids`: it maps one, holds an fd to it, or holds a
/// VFIO fd (VFIO type1 keeps IOMMU mappings of PFN-only memory without a reference to the file,
/// and an exiting process drops its mappings before it closes its fds). A process we cannot
/// inspect counts as holding it while it lives; a zombie or a gone one does not.
fn process_holds(pid: u32, ids: &[pageless_pool::FileId]) -> Vec<&'static str> {
    if !process_alive(pid) {
        return Vec::new();
    }
    let mut how = Vec::new();
    match std::fs::read_to_string(format!("/proc/{pid}/maps")) {
        Ok(maps) if ids.iter().any(|&id| maps_file(&maps, id)) => how.push("maps the memory"),
        Ok(_) => {}
        Err(_) => how.push("cannot be inspected (its /proc/PID/maps is unreadable)"),
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        how.push("cannot be inspected (its /proc/PID/fd is unreadable)");
        return how;
    };
    let (mut to_file, mut to_vfio) = (false, false);
    for fd in fds.filter_map(Result::ok) {
        let path = fd.path();
        to_vfio |= std::fs::read_link(&path).is_ok_and(|target| target.starts_with("/dev/vfio"));
        to_file |= std::fs::metadata(&path).is_ok_and(|meta| {
            ids.iter().any(|id| {
                std::os::unix::fs::MetadataExt::ino(&meta) == id.ino
                    && std::os::unix::fs::MetadataExt::dev(&meta) == id.dev
            })
        });
    }
    if to_file {
        how.push("holds an fd of the memory");
    }
    if to_vfio {
        how.push("holds a VFIO fd (its IOMMU mappings may still reach the memory)");
    }
    how
}

/// Whether a /proc/<pid>/maps text maps the file `id` (`major:minor inode` columns).
fn maps_file(maps: &str, id: pageless_pool::FileId) -> bool {
    let (major, minor) = (libc::major(id.dev), libc::minor(id.dev));
    maps.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(3);
        let (Some(dev), Some(inode)) = (fields.next(), fields.next()) else { return false };
        let Some((maj, min)) = dev.split_once(':') else { return false };
        inode.parse() == Ok(id.ino)
            && u32::from_str_radix(maj, 16) == Ok(major)
            && u32::from_str_radix(min, 16) == Ok(minor)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_file_matches_device_and_inode() {
        let id = pageless_pool::FileId { dev: libc::makedev(0, 0x1a), ino: 1234 };
        let maps =
            "7f00-7f10 rw-s 00000000 00:1a 1234   /dev/shm/vm\n7f10-7f20 r--p 00000000 fd:01 99 /usr/lib/x";
        assert!(maps_file(maps, id));
        assert!(!maps_file("7f00-7f10 rw-s 00000000 00:1b 1234 /x", id), "another device");
        assert!(!maps_file("7f00-7f10 rw-s 00000000 00:1a 12345 /x", id), "another inode");
        assert!(!maps_file("garbage", id));
    }

    #[test]
    fn a_process_holding_the_file_open_holds_it() {
        let file = tempfile::tempfile().unwrap();
        let id = pageless_pool::FileId::of(&file).unwrap();
        assert_eq!(process_holds(std::process::id(), &[id]), vec!["holds an fd of the memory"]);
        file.set_len(4096).unwrap();
        let mapping = pageless_pool::Mapping::new(&file, 4096).unwrap();
        drop(file);
        assert_eq!(
            process_holds(std::process::id(), &[id]),
            vec!["maps the memory", "holds an fd of the memory"],
            "the mapping keeps an fd of its own"
        );
        drop(mapping);
        assert!(process_holds(std::process::id(), &[id]).is_empty(), "no longer");
        assert!(process_holds(u32::MAX, &[id]).is_empty(), "no such process");
    }
}
