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
//!
//! # Invariants
//!
//! * Sizes are in bytes. An allocation's size is never 0 and always a multiple of its pool's
//!   [page size](Pool::page_size): the host's base page size for tmpfs and plain memfd, the
//!   huge page size for hugetlb, the mount's `pagesize=` for pagelessfs.
//!   [`Pool::allocate`] rounds up; [`Pool::check_size`] and [`Pool::attach_or_allocate`]
//!   insist on an exact multiple.
//! * memfd and pagelessfs allocations are sealed against shrinking and growing (see
//!   [`PAGELESS_SIZE_SEALS`]), so no process holding the fd can free the VM's memory under the
//!   others. tmpfs and hugetlbfs files cannot be sealed.
//! * Only directory pools re-attach: a memfd has no name in the file system and
//!   [`Pool::attach`] refuses with [`Error::NoReattach`].
//! * [`Allocation::extents`] reports where the memory is (FIEMAP): physical addresses on
//!   pagelessfs (to `CAP_SYS_ADMIN`), a single extent of unknown placement elsewhere.
//!
//! Every [`enum@Error`] message says what went wrong and what to do about it.
//!
//! # Example
//!
//! ```
//! use pageless_pool::{Pool, PoolSpec};
//!
//! # fn main() -> pageless_pool::Result<()> {
//! let spec: PoolSpec = "memfd".parse()?;
//! let pool = Pool::open(&spec)?;
//! // 10000 bytes are rounded up to whole pages.
//! let allocation = pool.allocate("example", 10_000)?;
//! assert_eq!(allocation.size() % pool.page_size(), 0);
//!
//! let mapping = allocation.map()?;
//! mapping.write(0, b"hello")?;
//! let mut buf = [0u8; 5];
//! mapping.read(0, &mut buf)?;
//! assert_eq!(&buf, b"hello");
//! assert_eq!(mapping.find(b"hello", 10)?, vec![0]);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod allocation;
mod error;
mod fiemap;
mod fs;
mod mapping;
pub mod numa;
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
