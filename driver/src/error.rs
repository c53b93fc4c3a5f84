use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Errors of the pool and allocation API. Each message says what to do about it.
#[derive(Debug, Error)]
pub enum Error {
    #[error("invalid pool spec {spec:?}: {why} (expected memfd, memfd:2M, memfd:1G, hugetlbfs:DIR, dir:DIR or pagelessfs:DIR)")]
    InvalidPoolSpec { spec: String, why: String },

    #[error("pool directory {path} does not exist or is not a directory: create it (and mount the filesystem) first")]
    MissingPoolDir { path: PathBuf },

    #[error("{path} is on a {found} filesystem, but a {expected} pool was asked for: mount {expected} there or pick the matching pool kind")]
    WrongFilesystem { path: PathBuf, expected: &'static str, found: String },

    #[error("invalid allocation name {name:?}: use a non-empty name of at most 200 bytes without '/', NUL or control characters that does not start with '.'")]
    InvalidName { name: String },

    #[error("size must be larger than zero")]
    ZeroSize,

    #[error("size {size} is too large for any pool (rounded up to whole pages it is more than 16 EiB): use a smaller size")]
    SizeTooLarge { size: u64 },

    #[error("size {size} is not a multiple of the pool's page size {page_size}: use a multiple such as {suggestion}")]
    UnalignedSize { size: u64, page_size: u64, suggestion: u64 },

    #[error("the pool is too small: {needed} bytes needed, {free} bytes free of {total}; free memory in the pool or use a smaller size")]
    PoolTooSmall { needed: u64, free: u64, total: u64 },

    #[error("allocation {path} already exists with size {found}, not the requested {requested}: pass --size {found}, or remove the file to start afresh")]
    SizeMismatch { path: PathBuf, found: u64, requested: u64 },

    #[error("allocation {path} has size {size}, which is not a multiple of the pool's page size {page_size}; it was not made by pageless")]
    CorruptAllocation { path: PathBuf, size: u64, page_size: u64 },

    #[error("no allocation named {name:?} in {dir}")]
    NotFound { name: String, dir: PathBuf },

    #[error("a memfd pool cannot re-attach to {name:?}: memfd memory has no name in the file system; use a directory pool (dir:, hugetlbfs:, pagelessfs:) to survive restarts")]
    NoReattach { name: String },

    #[error("{path} is on a pagelessfs whose module cannot seal files (no PAGELESS_IOC_ADD_SEALS): load the pageless.ko of this release (driver/kmod), which lets pageless seal VM memory against shrinking by its consumers")]
    SealUnsupported { path: PathBuf },

    #[error("cannot {what} the size seals of {path}: {source} (the owner needs the file open read-write, on a pagelessfs module with seal support)")]
    Seal {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("{path} still lacks the shrink and grow seals after sealing (seals {seals:#x}): the pagelessfs module does not keep seals; load the pageless.ko of this release")]
    SealMissing { path: PathBuf, seals: u32 },

    #[error("cannot read the pool statistic {path}: {source}")]
    PoolStat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// Result of the pool API.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: impl Into<io::Error>) -> Self {
        Error::Io { what: what.into(), source: source.into() }
    }
}
