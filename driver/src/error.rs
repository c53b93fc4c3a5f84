use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::size::{Bytes, Size};

/// Errors of the pool and allocation API. Each message (its `Display`) says what went wrong
/// and what to do about it, so callers can usually print it as it is. Sizes in the fields are
/// in bytes; the messages show them in human units ([`Bytes`]).
#[derive(Debug, Error)]
pub enum Error {
    /// A pool spec string could not be parsed ([`PoolSpec`](crate::PoolSpec)'s `FromStr`):
    /// unknown kind, a directory kind without a directory, or a memfd huge page size other
    /// than 2M or 1G. The caller should report it to whoever wrote the spec.
    #[error("invalid pool spec {spec:?}: {why} (expected memfd, memfd:2M, memfd:1G, hugetlbfs:DIR, dir:DIR or pagelessfs:DIR)")]
    InvalidPoolSpec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        why: String,
    },

    /// [`Pool::open`](crate::Pool::open) of a directory pool whose directory does not exist
    /// (or is not a directory). Create the directory, and mount the filesystem on it, first.
    #[error("pool directory {path} does not exist or is not a directory: create it (and mount the filesystem) first")]
    MissingPoolDir {
        /// The directory named by the pool spec.
        path: PathBuf,
    },

    /// [`Pool::open`](crate::Pool::open) of a `hugetlbfs:` or `pagelessfs:` pool whose
    /// directory is on another filesystem (by `statfs` magic). Mount the right filesystem there
    /// or use the pool kind that matches it (`dir:` accepts any filesystem).
    #[error("{path} is on a {found} filesystem, but a {expected} pool was asked for: mount {expected} there or pick the matching pool kind")]
    WrongFilesystem {
        /// The pool directory.
        path: PathBuf,
        /// The filesystem the pool kind needs: `"hugetlbfs"` or `"pagelessfs"`.
        expected: &'static str,
        /// The filesystem found there, as [`FsKind`](crate::FsKind) displays it.
        found: String,
    },

    /// An allocation name refused by [`check_name`](crate::check_name): empty, starting with
    /// `.`, containing `/`, NUL or another control character, or longer than 200 bytes. Pick
    /// another name.
    #[error("invalid allocation name {name:?}: use a non-empty name of at most 200 bytes without '/', NUL or control characters that does not start with '.'")]
    InvalidName {
        /// The name as given.
        name: String,
    },

    /// An allocation size of 0 bytes was asked for.
    #[error("size must be larger than zero")]
    ZeroSize,

    /// A size so large that rounding it up to whole pages overflows 64 bits. Use a smaller
    /// size.
    #[error("size {} is too large for any pool (rounded up to whole pages it is more than 16 EiB): use a smaller size", Bytes(*.size))]
    SizeTooLarge {
        /// The requested size, in bytes.
        size: u64,
    },

    /// A size that must be exact ([`Pool::check_size`](crate::Pool::check_size),
    /// [`Pool::attach_or_allocate`](crate::Pool::attach_or_allocate)) is not a multiple of the
    /// pool's page size. Ask again with `suggestion`, or round with
    /// [`Pool::round_size`](crate::Pool::round_size).
    #[error("size {} is not a multiple of the pool's page size {}: use a multiple such as {}", Bytes(*.size), Bytes(*.page_size), Bytes(*.suggestion))]
    UnalignedSize {
        /// The requested size, in bytes.
        size: u64,
        /// The pool's page size, in bytes.
        page_size: u64,
        /// `size` rounded up to the page size, in bytes.
        suggestion: u64,
    },

    /// The pool has less free memory than an allocation needs: found before creating the file
    /// (from [`Pool::stats`](crate::Pool::stats)), or reported by the filesystem as `ENOSPC`/
    /// `ENOMEM` when sizing it (the half-made file is removed). Also returned, with `free` and
    /// `total` 0, when rounding the size up to the page size overflows `u64`. Free memory in
    /// the pool or ask for less.
    #[error("the pool is too small: {} needed, {} free of {}; free memory in the pool or use a smaller size", Bytes(*.needed), Bytes(*.free), Bytes(*.total))]
    PoolTooSmall {
        /// The size needed, rounded up to the page size, in bytes.
        needed: u64,
        /// Free bytes in the pool when it was checked.
        free: u64,
        /// Total bytes of the pool.
        total: u64,
    },

    /// [`Pool::attach_or_allocate`](crate::Pool::attach_or_allocate) found an allocation of the
    /// name with another size. The existing file is left alone: ask for its size, or remove it
    /// to start afresh (which discards its contents).
    #[error("allocation {path} already exists with size {}, not the requested {}: pass --size {}, or remove the file to start afresh", Bytes(*.found), Bytes(*.requested), Size(*.found))]
    SizeMismatch {
        /// The existing allocation's file.
        path: PathBuf,
        /// Its size, in bytes.
        found: u64,
        /// The size asked for, in bytes.
        requested: u64,
    },

    /// [`Pool::attach`](crate::Pool::attach) found a file of size 0 or of a size that is not a
    /// multiple of the pool's page size, so pageless did not make it. It is not used or
    /// changed; remove it or pick another name.
    #[error("allocation {path} has size {}, which is not a multiple of the pool's page size {}; it was not made by pageless", Bytes(*.size), Bytes(*.page_size))]
    CorruptAllocation {
        /// The file found.
        path: PathBuf,
        /// Its size, in bytes.
        size: u64,
        /// The pool's page size, in bytes.
        page_size: u64,
    },

    /// [`Pool::attach`](crate::Pool::attach) found no file of that name in the pool directory.
    /// [`Pool::attach_or_allocate`](crate::Pool::attach_or_allocate) allocates instead.
    #[error("no allocation named {name:?} in {dir}")]
    NotFound {
        /// The allocation name looked for.
        name: String,
        /// The pool directory.
        dir: PathBuf,
    },

    /// [`Pool::attach`](crate::Pool::attach) on a memfd pool: memfds have no name in the file
    /// system, so a restarted owner cannot find one again. Use a directory pool for memory that
    /// must survive restarts; [`Pool::attach_or_allocate`](crate::Pool::attach_or_allocate)
    /// allocates instead.
    #[error("a memfd pool cannot re-attach to {name:?}: memfd memory has no name in the file system; use a directory pool (dir:, hugetlbfs:, pagelessfs:) to survive restarts")]
    NoReattach {
        /// The allocation name asked for.
        name: String,
    },

    /// The pagelessfs module does not know the seal ioctls (`ENOTTY`): an older `pageless.ko`.
    /// pageless refuses to hand out unsealed pagelessfs memory; load the module of this release.
    #[error("{path} is on a pagelessfs whose module cannot seal files (no PAGELESS_IOC_ADD_SEALS): load the pageless.ko of this release (driver/kmod), which lets pageless seal VM memory against shrinking by its consumers")]
    SealUnsupported {
        /// The allocation's file.
        path: PathBuf,
    },

    /// Reading or adding the seals of a pagelessfs file failed for another reason than a
    /// missing ioctl (adding needs the file open read-write, else `EPERM`).
    #[error("cannot {what} the size seals of {path}: {source} (the owner needs the file open read-write, on a pagelessfs module with seal support)")]
    Seal {
        /// The allocation's file.
        path: PathBuf,
        /// `"read"` (`PAGELESS_IOC_GET_SEALS`) or `"add"` (`PAGELESS_IOC_ADD_SEALS`).
        what: &'static str,
        /// The ioctl's error.
        #[source]
        source: io::Error,
    },

    /// The seal ioctls succeeded but the file still lacks
    /// [`PAGELESS_SIZE_SEALS`](crate::PAGELESS_SIZE_SEALS): a module that does not keep seals.
    #[error("{path} still lacks the shrink and grow seals after sealing (seals {seals:#x}): the pagelessfs module does not keep seals; load the pageless.ko of this release")]
    SealMissing {
        /// The allocation's file.
        path: PathBuf,
        /// The seals the file reports after sealing.
        seals: u32,
    },

    /// A pagelessfs sysfs counter (under [`PAGELESSFS_SYSFS`](crate::PAGELESSFS_SYSFS)) exists
    /// but cannot be read or is not a decimal number. A missing counter is not an error.
    #[error("cannot read the pool statistic {path}: {source}")]
    PoolStat {
        /// The counter's file.
        path: PathBuf,
        /// The read error, or `InvalidData` for text that is not a number.
        #[source]
        source: io::Error,
    },

    /// A cell's host node that this host does not have (no `/sys/devices/system/node/nodeN`).
    #[error("host node {node} does not exist on this host (the nodes are /sys/devices/system/node/node*): give one of them")]
    NoHostNode {
        /// The node asked for.
        node: u32,
    },

    /// A host node given for a pool whose placement pageless cannot choose: a pagelessfs
    /// mount's memory is wherever its reserved ranges are, a `dir:` pool on a filesystem other
    /// than tmpfs has no memory policy.
    #[error("pool {pool} cannot be bound to host node {node}: {why}")]
    NodeUnsupported {
        /// The pool, as given.
        pool: String,
        /// The node asked for.
        node: u32,
        /// Why, and what to do instead.
        why: String,
    },

    /// Any other failing system call (`statfs`, `open`, `ftruncate`, `fallocate`, `mmap`,
    /// FIEMAP, reading `/proc/meminfo` or hugetlb sysfs counters, ...). Creating an allocation
    /// whose file already exists is one of these (`EEXIST`).
    #[error("{what}: {source}")]
    Io {
        /// What was being done, e.g. `"create /dev/shm/vm1"`.
        what: String,
        /// The underlying error; its [`io::Error::kind`] and `raw_os_error` say which.
        #[source]
        source: io::Error,
    },
}

/// Result of the pool and allocation API, with [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: impl Into<io::Error>) -> Self {
        Error::Io { what: what.into(), source: source.into() }
    }
}
