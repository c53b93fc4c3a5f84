//! Guest memory pools for pageless.
//!
//! One [`Pool`]/[`Allocation`] API over the kinds of memory a VM's RAM can live in:
//!
//! * `memfd` — anonymous shared memory (the embedded default), optionally backed by 2M/1G
//!   hugetlb pages. Lives as long as some process holds the fd; cannot be re-attached by name.
//! * `hugetlbfs:DIR` — a directory on a hugetlbfs mount.
//! * `dir:DIR` — a directory on a memory filesystem (tmpfs).
//! * `pagelessfs:DIR` — a directory on a pagelessfs mount (see `driver/kmod`): boot-reserved
//!   memory with no `struct page`, mapped with 4K/2M/1G PFN-only entries.
//!
//! An [`Allocation`] is a named file of a given size, rounded up to and aligned on the pool's
//! page size. Allocations in directory pools survive their owner's restart and are found again
//! by name ([`Pool::attach`]).

mod allocation;
mod error;
mod fiemap;
mod fs;
mod mapping;
mod pool;
mod seal;
pub mod size;

pub use allocation::{Allocation, FileId};
pub use error::{Error, Result};
pub use fiemap::{Extent, ExtentPage};
pub use fs::{FsKind, PAGELESSFS_MAGIC};
pub use mapping::Mapping;
pub use pool::{check_name, Pool, PoolKind, PoolSpec, PoolStats, PAGELESSFS_SYSFS};
pub use seal::{pagelessfs_seals, PAGELESS_SEAL_GROW, PAGELESS_SEAL_SHRINK, PAGELESS_SIZE_SEALS};
