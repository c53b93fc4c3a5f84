//! A VM's guest NUMA cells: `pageless serve --cell ID:SIZE:POOL[@node=N]`, each cell its own
//! allocation from its own pool, optionally bound to a host node.

use std::str::FromStr;

use pageless_pool::size::parse_size;
use pageless_pool::PoolSpec;
use thiserror::Error;

/// The suffix of a cell's pool that names its host node: `memfd@node=1`.
pub const NODE_SUFFIX: &str = "@node=";

/// Most cells a VM may have: one region each in a vhost-user memory table.
pub const MAX_CELLS: usize = pageless_protocol::memory::MAX_MEM_TABLE_REGIONS;

/// One `--cell ID:SIZE:POOL[@node=N]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CellSpec {
    /// The guest cell's id: libvirt's `<cell id=…>`, whose QEMU memory backend is
    /// `ram-node<ID>`.
    pub id: u32,
    /// Its size in bytes, a multiple of the pool's page size.
    pub size: u64,
    /// Where its memory comes from.
    pub pool: PoolSpec,
    /// The host NUMA node to take the memory from (memfd, tmpfs `dir:` and hugetlb pools);
    /// `None`: wherever the pool puts it (a pagelessfs mount of one node is on that node).
    pub host_node: Option<u32>,
}

/// A `--cell` argument that cannot be used; the message says what to write.
#[derive(Debug, Error)]
pub enum CellSpecError {
    /// Not `ID:SIZE:POOL[@node=N]`.
    #[error("{0:?} is not ID:SIZE:POOL[@node=HOSTNODE] (e.g. 0:2G:memfd@node=0 or 1:2G:pagelessfs:/mnt/pageless/node1)")]
    Syntax(String),
    /// The id or host node is not a number.
    #[error("{what} {text:?} of --cell {spec:?} is not a number")]
    Number {
        /// `cell id` or `host node`.
        what: &'static str,
        /// The text given.
        text: String,
        /// The whole argument.
        spec: String,
    },
    /// The size does not parse.
    #[error("size of --cell {spec:?}: {why}")]
    Size {
        /// The whole argument.
        spec: String,
        /// The parser's complaint.
        why: String,
    },
    /// The pool does not parse.
    #[error("pool of --cell {spec:?}: {source}")]
    Pool {
        /// The whole argument.
        spec: String,
        /// The pool parser's error.
        source: pageless_pool::Error,
    },
}

impl FromStr for CellSpec {
    type Err = CellSpecError;

    fn from_str(text: &str) -> Result<Self, CellSpecError> {
        let syntax = || CellSpecError::Syntax(text.into());
        let mut parts = text.splitn(3, ':');
        let (Some(id), Some(size), Some(pool)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(syntax());
        };
        if id.is_empty() || size.is_empty() || pool.is_empty() {
            return Err(syntax());
        }
        let number = |what, digits: &str| {
            digits
                .parse::<u32>()
                .ok()
                .filter(|_| digits.chars().all(|c| c.is_ascii_digit()))
                .ok_or_else(|| CellSpecError::Number { what, text: digits.into(), spec: text.into() })
        };
        let id = number("cell id", id)?;
        let size = parse_size(size).map_err(|why| CellSpecError::Size { spec: text.into(), why })?;
        let (pool, host_node) = match pool.rsplit_once(NODE_SUFFIX) {
            Some((pool, node)) => (pool, Some(number("host node", node)?)),
            None => (pool, None),
        };
        let pool = pool.parse().map_err(|source| CellSpecError::Pool { spec: text.into(), source })?;
        Ok(CellSpec { id, size, pool, host_node })
    }
}

impl std::fmt::Display for CellSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.id, self.size, self.pool)?;
        if let Some(node) = self.host_node {
            write!(f, "{NODE_SUFFIX}{node}")?;
        }
        Ok(())
    }
}

/// The allocation name of cell `id` of VM `vm` in its pool: `<vm>.cell<id>` (a VM served with
/// `--size` uses `<vm>`).
pub fn allocation_name(vm: &str, id: u32) -> String {
    format!("{vm}.cell{id}")
}

/// Whether `name` is the allocation name of some cell of `vm`.
pub fn is_cell_of(vm: &str, name: &str) -> bool {
    name.strip_prefix(vm)
        .and_then(|rest| rest.strip_prefix(".cell"))
        .is_some_and(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()))
}

/// Checks a VM's cells as a whole: at least one, at most [`MAX_CELLS`], no id twice.
pub fn check_cells(cells: &[CellSpec]) -> Result<(), String> {
    if cells.len() > MAX_CELLS {
        return Err(format!("{} cells, at most {MAX_CELLS}", cells.len()));
    }
    let mut ids = std::collections::BTreeSet::new();
    for cell in cells {
        if !ids.insert(cell.id) {
            return Err(format!("cell {} is given twice", cell.id));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cells() {
        let cell: CellSpec = "1:2G:pagelessfs:/mnt/pageless/node1".parse().unwrap();
        assert_eq!(
            cell,
            CellSpec {
                id: 1,
                size: 2 << 30,
                pool: PoolSpec::Pagelessfs("/mnt/pageless/node1".into()),
                host_node: None
            }
        );
        let cell: CellSpec = "0:128M:memfd@node=1".parse().unwrap();
        assert_eq!((cell.id, cell.size, cell.host_node), (0, 128 << 20, Some(1)));
        assert_eq!(cell.pool, PoolSpec::Memfd { huge_page_size: None });
        assert_eq!(cell.to_string(), "0:134217728:memfd@node=1");
        let cell: CellSpec = "3:1G:memfd:2M@node=0".parse().unwrap();
        assert_eq!(cell.pool, PoolSpec::Memfd { huge_page_size: Some(2 << 20) });
        let cell: CellSpec = "2:1G:dir:/dev/shm/a:b".parse().unwrap();
        assert_eq!(cell.pool, PoolSpec::Dir("/dev/shm/a:b".into()), "the pool keeps its colons");
        for bad in [
            "",
            "0",
            "0:1G",
            "0:1G:",
            ":1G:memfd",
            "x:1G:memfd",
            "-1:1G:memfd",
            "+1:1G:memfd",
            "0:lots:memfd",
            "0:1G:floppy",
            "0:1G:memfd@node=",
            "0:1G:memfd@node=one",
            "0:1G:memfd@node=-1",
        ] {
            assert!(bad.parse::<CellSpec>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cell_names() {
        assert_eq!(allocation_name("web1", 3), "web1.cell3");
        assert!(is_cell_of("web1", "web1.cell3"));
        assert!(!is_cell_of("web1", "web1"));
        assert!(!is_cell_of("web1", "web1.cell"));
        assert!(!is_cell_of("web1", "web1.cellx"));
        assert!(!is_cell_of("web1", "web10.cell1"));
    }

    #[test]
    fn checks_the_set_of_cells() {
        let cell = |id| CellSpec {
            id,
            size: 1 << 20,
            pool: PoolSpec::Memfd { huge_page_size: None },
            host_node: None,
        };
        assert!(check_cells(&[cell(0), cell(1)]).is_ok());
        assert!(check_cells(&[cell(0), cell(0)]).unwrap_err().contains("twice"));
        assert!(check_cells(&(0..9).map(cell).collect::<Vec<_>>()).is_err());
    }
}
