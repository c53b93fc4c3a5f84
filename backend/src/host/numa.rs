//! Which physical memory belongs to which NUMA node, from sysfs memory blocks.
//!
//! The kernel (Documentation/admin-guide/mm/memory-hotplug.rst) splits RAM into memory blocks of
//! `/sys/devices/system/memory/block_size_bytes` (hex) bytes; block `memoryN` covers
//! `[N * size, (N + 1) * size)`, and `/sys/devices/system/node/nodeM/memoryN` links each block to
//! its node. A block linked from more than one node (a node boundary inside a block) is left
//! out: it is not known which part belongs to which node. Only blocks the kernel manages show up,
//! so memory already reserved with `memmap=` has none.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::iomem::merge;

/// Most nodes and blocks looked at (hostile or broken sysfs stays bounded).
const MAX_NODES: usize = 4096;
const MAX_BLOCKS: usize = 1 << 22;

/// Physical ranges `[start, end)` of each node, merged and sorted.
pub type NodeRanges = BTreeMap<u32, Vec<(u64, u64)>>;

/// Node ranges from memory block numbers: `blocks` lists, per node, the `N` of its `memoryN`
/// links. Blocks listed under several nodes are left out. `None` if `block_size` is not a
/// power of two.
pub fn node_ranges(block_size: u64, blocks: &BTreeMap<u32, Vec<u64>>) -> Option<NodeRanges> {
    if !block_size.is_power_of_two() {
        return None;
    }
    let mut owners: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    for (node, ids) in blocks {
        for id in ids {
            owners.entry(*id).or_default().insert(*node);
        }
    }
    let mut out: NodeRanges = blocks.keys().map(|n| (*n, Vec::new())).collect();
    for (id, nodes) in owners {
        let (Some(start), true) = (id.checked_mul(block_size), nodes.len() == 1) else { continue };
        let Some(end) = start.checked_add(block_size) else { continue };
        let node = *nodes.iter().next().expect("one node");
        out.get_mut(&node).expect("every node has an entry").push((start, end));
    }
    Some(out.into_iter().map(|(node, ranges)| (node, merge(ranges))).collect())
}

/// Reads the node ranges from sysfs under `sys` (normally `/sys`). `Ok(None)` when the kernel
/// shows no node or memory block information (no NUMA or no memory block devices).
pub fn read(sys: &Path) -> std::io::Result<Option<NodeRanges>> {
    let block_size = match std::fs::read_to_string(sys.join("devices/system/memory/block_size_bytes")) {
        Ok(text) => match u64::from_str_radix(text.trim().trim_start_matches("0x"), 16) {
            Ok(size) => size,
            Err(_) => return Ok(None),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let node_dir = sys.join("devices/system/node");
    let listing = match std::fs::read_dir(&node_dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut blocks: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let mut total = 0usize;
    for entry in listing.take(MAX_NODES * 4) {
        let entry = entry?;
        let Some(node) = numbered(&entry.file_name().to_string_lossy(), "node") else { continue };
        let ids = blocks.entry(node as u32).or_default();
        for block in std::fs::read_dir(entry.path())? {
            let block = block?;
            if let Some(id) = numbered(&block.file_name().to_string_lossy(), "memory") {
                total += 1;
                if total > MAX_BLOCKS {
                    return Ok(None);
                }
                ids.push(id);
            }
        }
        if blocks.len() > MAX_NODES {
            return Ok(None);
        }
    }
    if blocks.values().all(Vec::is_empty) {
        return Ok(None);
    }
    Ok(node_ranges(block_size, &blocks))
}

/// `N` of `<prefix>N` (decimal, at most 10 digits so it fits a u32 for nodes).
fn numbered(name: &str, prefix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?;
    if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| prefix != "node" || *n <= u64::from(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_to_ranges() {
        let blocks = BTreeMap::from([(0, vec![0, 1, 2, 5]), (1, vec![3, 4, 5])]);
        let ranges = node_ranges(0x1000, &blocks).unwrap();
        assert_eq!(ranges[&0], vec![(0, 0x3000)]);
        assert_eq!(ranges[&1], vec![(0x3000, 0x5000)]);
        assert!(node_ranges(3, &blocks).is_none());
        let huge = BTreeMap::from([(0, vec![u64::MAX])]);
        assert_eq!(node_ranges(0x1000, &huge).unwrap()[&0], vec![]);
    }

    #[test]
    fn reads_a_sysfs_tree() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path();
        std::fs::create_dir_all(sys.join("devices/system/memory")).unwrap();
        std::fs::write(sys.join("devices/system/memory/block_size_bytes"), "8000000\n").unwrap();
        for (node, ids) in [(0, [0u64, 1]), (1, [40, 41])] {
            let nd = sys.join(format!("devices/system/node/node{node}"));
            std::fs::create_dir_all(&nd).unwrap();
            std::fs::write(nd.join("meminfo"), "").unwrap();
            for id in ids {
                std::fs::create_dir_all(nd.join(format!("memory{id}"))).unwrap();
            }
        }
        std::fs::create_dir_all(sys.join("devices/system/node/possible")).unwrap();
        let ranges = read(sys).unwrap().unwrap();
        assert_eq!(ranges[&0], vec![(0, 0x1000_0000)]);
        assert_eq!(ranges[&1], vec![(0x1_4000_0000, 0x1_5000_0000)]);
        assert_eq!(read(&sys.join("nothing")).unwrap(), None);
    }
}
