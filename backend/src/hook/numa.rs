//! The NUMA cells of a libvirt domain, as `pageless serve --cell` arguments.
//!
//! Each `<cpu><numa><cell id= memory= unit=>` becomes one cell of the owner. Its host node is
//! the single node of its `<numatune><memnode cellid= nodeset=>` (else of `<numatune><memory
//! nodeset=>`); its pool is the host config's pool for that node (`[pools]` of
//! `/etc/pageless/pageless.toml`), else the VM's own pool with the node as the cell's host node
//! (`@node=N`, for memfd, tmpfs and hugetlb pools). A cell without a nodeset takes the VM's pool
//! as it is.

use crate::host::config::HostConfig;
use std::collections::BTreeMap;
use std::path::Path;

use pageless_pool::size::round_up;
use pageless_pool::PoolSpec;

use crate::cells::CellSpec;

/// The host config: `[pools]` maps host node numbers to pool specs.
pub const DEFAULT_HOST_CONFIG: &str = "/etc/pageless/pageless.toml";

/// libvirt rounds each NUMA cell up to 1 MiB on x86.
const CELL_ALIGN: u64 = 1 << 20;

/// The host config's `[pools]` (`pageless host`'s `/etc/pageless/pageless.toml`, checked as
/// a whole): host node → pool spec, e.g. `0 = "pagelessfs:/mnt/pageless/node0"`. A missing file
/// is an empty table.
pub fn host_pools(path: &Path) -> Result<BTreeMap<u32, PoolSpec>, String> {
    if let Err(e) = std::fs::metadata(path) {
        return match e.kind() {
            std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            _ => Err(format!("read {}: {e}", path.display())),
        };
    }
    pools_of(&HostConfig::load(path).map_err(|e| e.to_string())?)
}

/// The pool specs of a host config's `[pools]`.
fn pools_of(config: &HostConfig) -> Result<BTreeMap<u32, PoolSpec>, String> {
    config
        .pools
        .iter()
        .map(|(node, pool)| {
            let spec = pool.parse::<PoolSpec>().map_err(|e| format!("[pools] {node}: {e}"))?;
            Ok((*node, spec))
        })
        .collect()
}

/// One `<cell>` of the domain, with its host node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainCell {
    /// `<cell id=…>` (its position when libvirt's XML has no id).
    pub id: u32,
    /// `memory=`/`unit=` in bytes, rounded up to 1 MiB.
    pub size: u64,
    /// The single host node of its `<memnode nodeset=…>` or of the domain's `<memory
    /// nodeset=…>`, if any.
    pub host_node: Option<u32>,
}

/// The domain's NUMA cells (empty without `<cpu><numa>`), each with its host node.
pub fn domain_cells(xml: &str) -> Result<Vec<DomainCell>, String> {
    if xml.trim().is_empty() {
        return Ok(Vec::new());
    }
    let document = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let domain = document.root_element();
    let numatune = domain.children().find(|n| n.has_tag_name("numatune"));
    let domain_nodeset = numatune
        .and_then(|t| t.children().find(|n| n.has_tag_name("memory")))
        .and_then(|m| m.attribute("nodeset"));
    let mut cells = Vec::new();
    let numa_cells = domain
        .children()
        .filter(|n| n.has_tag_name("cpu"))
        .flat_map(|cpu| cpu.children())
        .filter(|n| n.has_tag_name("numa"))
        .flat_map(|numa| numa.children())
        .filter(|n| n.has_tag_name("cell"));
    for (index, cell) in numa_cells.enumerate() {
        let id = match cell.attribute("id") {
            Some(id) => {
                id.trim().parse::<u32>().map_err(|_| format!("NUMA <cell id={id:?}> is not a number"))?
            }
            None => u32::try_from(index).map_err(|_| "too many NUMA cells".to_string())?,
        };
        let memory = cell.attribute("memory").ok_or(format!("NUMA cell {id} has no memory="))?;
        let size = super::config::scaled(memory, cell.attribute("unit"))?;
        let size =
            round_up(size, CELL_ALIGN).ok_or_else(|| format!("NUMA cell {id}'s memory is too large"))?;
        let memnode = numatune.and_then(|t| {
            t.children()
                .filter(|n| n.has_tag_name("memnode"))
                .find(|n| n.attribute("cellid").and_then(|c| c.trim().parse::<u32>().ok()) == Some(id))
        });
        let host_node = match (memnode.and_then(|m| m.attribute("nodeset")), domain_nodeset) {
            (Some(nodeset), _) => Some(single_node(nodeset).map_err(|why| {
                format!(
                    "<numatune><memnode cellid='{id}' nodeset='{nodeset}'> {why}: pageless takes a cell's memory from one host node; write <memnode cellid='{id}' mode='strict' nodeset='N'/> with one node N"
                )
            })?),
            (None, Some(nodeset)) => Some(single_node(nodeset).map_err(|why| {
                format!(
                    "NUMA cell {id} has no <memnode> and the domain's <numatune><memory nodeset='{nodeset}'> {why}: pageless takes a cell's memory from one host node; add <memnode cellid='{id}' mode='strict' nodeset='N'/> with one node N"
                )
            })?),
            (None, None) => None,
        };
        cells.push(DomainCell { id, size, host_node });
    }
    Ok(cells)
}

/// The one node of a libvirt nodeset (`1`, `1-1`), or why it is not one.
fn single_node(nodeset: &str) -> Result<u32, String> {
    let text = nodeset.trim();
    let number =
        |s: &str| s.trim().parse::<u32>().ok().filter(|_| s.trim().chars().all(|c| c.is_ascii_digit()));
    if let Some(node) = number(text) {
        return Ok(node);
    }
    if let Some((from, to)) = text.split_once('-') {
        if let (Some(from), Some(to)) = (number(from), number(to)) {
            if from == to {
                return Ok(from);
            }
        }
    }
    Err("names several host nodes (or is not a nodeset)".into())
}

/// One `--cell` per domain cell: its pool from `pools` for its host node, else `vm_pool` bound
/// to the host node where that pool can be bound (memfd, `dir:`, hugetlbfs).
pub fn cell_specs(
    cells: &[DomainCell],
    vm_pool: &PoolSpec,
    pools: &BTreeMap<u32, PoolSpec>,
    host_config: &Path,
) -> Result<Vec<CellSpec>, String> {
    cells
        .iter()
        .map(|cell| {
            let (pool, host_node) = match cell.host_node {
                None => (vm_pool.clone(), None),
                Some(node) => {
                    let pool = pools.get(&node).unwrap_or(vm_pool).clone();
                    match pool {
                        PoolSpec::Pagelessfs(_) if !pools.contains_key(&node) => {
                            return Err(format!(
                                "NUMA cell {} is on host node {node}, but {} has no [pools] entry for node {node} and the VM's pool {vm_pool} is one pagelessfs mount: add `{node} = \"pagelessfs:/mnt/pageless/node{node}\"` (a mount of node {node}'s memory) under [pools]",
                                cell.id,
                                host_config.display()
                            ))
                        }
                        // A pagelessfs mount of the node is on the node.
                        PoolSpec::Pagelessfs(_) => (pool, None),
                        _ => (pool, Some(node)),
                    }
                }
            };
            Ok(CellSpec { id: cell.id, size: cell.size, pool, host_node })
        })
        .collect()
}

/// The `--cell` argument of `spec`.
pub fn cell_arg(spec: &CellSpec) -> String {
    spec.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `virsh dumpxml` of a two-cell domain with per-cell numatune looks like (libvirt 11).
    const TWO_CELLS: &str = r#"<domain type='kvm'>
  <name>numa1</name>
  <memory unit='KiB'>4194304</memory>
  <currentMemory unit='KiB'>4194304</currentMemory>
  <vcpu placement='static'>4</vcpu>
  <numatune>
    <memory mode='strict' nodeset='0-1'/>
    <memnode cellid='0' mode='strict' nodeset='0'/>
    <memnode cellid='1' mode='strict' nodeset='1'/>
  </numatune>
  <os><type arch='x86_64' machine='pc-q35-10.0'>hvm</type></os>
  <cpu mode='host-passthrough' check='none' migratable='on'>
    <numa>
      <cell id='0' cpus='0-1' memory='2097152' unit='KiB'/>
      <cell id='1' cpus='2-3' memory='2' unit='GiB' memAccess='shared'/>
    </numa>
  </cpu>
</domain>"#;

    fn memfd() -> PoolSpec {
        PoolSpec::Memfd { huge_page_size: None }
    }

    #[test]
    fn cells_and_their_host_nodes_come_from_numa_and_numatune() {
        let cells = domain_cells(TWO_CELLS).unwrap();
        assert_eq!(
            cells,
            vec![
                DomainCell { id: 0, size: 2 << 30, host_node: Some(0) },
                DomainCell { id: 1, size: 2 << 30, host_node: Some(1) }
            ]
        );
        assert!(domain_cells("<domain><memory>1024</memory></domain>").unwrap().is_empty());
        // No numatune: no host nodes; no ids: their order.
        let plain = "<domain><cpu><numa><cell cpus='0' memory='1000' unit='KiB'/><cell cpus='1' memory='512' unit='MiB'/></numa></cpu></domain>";
        assert_eq!(
            domain_cells(plain).unwrap(),
            vec![
                DomainCell { id: 0, size: 1 << 20, host_node: None },
                DomainCell { id: 1, size: 512 << 20, host_node: None }
            ]
        );
        // The domain-wide nodeset of one node applies to every cell without a memnode.
        let one_node = TWO_CELLS
            .replace("<memnode cellid='1' mode='strict' nodeset='1'/>", "")
            .replace("nodeset='0-1'", "nodeset='1'");
        assert_eq!(domain_cells(&one_node).unwrap()[1].host_node, Some(1));
    }

    #[test]
    fn nodesets_of_several_nodes_are_refused_with_what_to_write() {
        let several = TWO_CELLS
            .replace("cellid='1' mode='strict' nodeset='1'", "cellid='1' mode='strict' nodeset='0-1'");
        let err = domain_cells(&several).unwrap_err();
        assert!(
            err.contains("nodeset='0-1'") && err.contains("<memnode cellid='1' mode='strict' nodeset='N'/>"),
            "{err}"
        );
        let no_memnode = TWO_CELLS.replace("<memnode cellid='1' mode='strict' nodeset='1'/>", "");
        let err = domain_cells(&no_memnode).unwrap_err();
        assert!(err.contains("NUMA cell 1 has no <memnode>") && err.contains("nodeset='0-1'"), "{err}");
        for bad in ["1,2", "^1", "0-3", "x", ""] {
            assert!(single_node(bad).is_err(), "{bad:?}");
        }
        assert_eq!(single_node(" 3 "), Ok(3));
        assert_eq!(single_node("2-2"), Ok(2));
    }

    #[test]
    fn pools_come_from_the_host_config_or_bind_the_vms_pool() {
        let config = r#"
            ranges = ["1G@4G"]
            [[mount]]
            path = "/mnt/pageless/node0"
            pagesize = "2M"
            node = 0
            [pools]
            0 = "pagelessfs:/mnt/pageless/node0"
            3 = "memfd:2M"
        "#;
        let parse_host_pools = |text: &str| {
            HostConfig::parse(text, "pageless.toml").map_err(|e| e.to_string()).and_then(|c| pools_of(&c))
        };
        let pools = parse_host_pools(config).unwrap();
        assert_eq!(pools.len(), 2);
        let cells = [
            DomainCell { id: 0, size: 1 << 30, host_node: Some(0) },
            DomainCell { id: 1, size: 1 << 30, host_node: Some(1) },
            DomainCell { id: 2, size: 1 << 30, host_node: None },
            DomainCell { id: 3, size: 1 << 30, host_node: Some(3) },
        ];
        let host = Path::new("/etc/pageless/pageless.toml");
        let specs = cell_specs(&cells, &memfd(), &pools, host).unwrap();
        assert_eq!(
            specs.iter().map(cell_arg).collect::<Vec<_>>(),
            vec![
                "0:1073741824:pagelessfs:/mnt/pageless/node0",
                "1:1073741824:memfd@node=1",
                "2:1073741824:memfd",
                "3:1073741824:memfd:2M@node=3",
            ]
        );
        for arg in specs.iter().map(cell_arg) {
            assert_eq!(
                arg.parse::<CellSpec>().unwrap().to_string().parse::<CellSpec>().unwrap(),
                arg.parse().unwrap()
            );
        }
        // A VM on one pagelessfs mount cannot put cell 1 on node 1 without a pool for node 1.
        let err = cell_specs(&cells, &"pagelessfs:/mnt/pageless".parse().unwrap(), &pools, host).unwrap_err();
        assert!(
            err.contains("NUMA cell 1 is on host node 1")
                && err.contains("`1 = \"pagelessfs:/mnt/pageless/node1\"`"),
            "{err}"
        );

        let ranges = "ranges = [\"1G@4G\"]\n";
        assert!(parse_host_pools(&format!("{ranges}[pools]\nzero = \"memfd\"\n")).is_err());
        assert!(parse_host_pools(&format!("{ranges}[pools]\n0 = \"floppy:/x\"\n")).is_err());
        assert!(
            parse_host_pools(&format!("{ranges}other = 1\n")).is_err(),
            "the host config is checked as a whole"
        );
        assert!(parse_host_pools(ranges).unwrap().is_empty());
        assert!(host_pools(Path::new("/nonexistent/pageless.toml")).unwrap().is_empty());
    }
}
