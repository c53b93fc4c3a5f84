//! Pools: where allocations come from.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use log::{debug, info, warn};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use serde::Serialize;

use crate::allocation::Allocation;
use crate::fs::{FsInfo, FsKind};
use crate::seal;
use crate::size::{parse_size, round_up, Size};
use crate::{Error, Result};

/// A pool as named on the command line: parse with [`str::parse`] (errors are
/// [`Error::InvalidPoolSpec`]), display back to the same text, open with [`Pool::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolSpec {
    /// `memfd`, `memfd:2M`, `memfd:1G`: anonymous shared memory, optionally hugetlb-backed.
    /// Cannot be re-attached after its owner exits.
    Memfd {
        /// `Some(2 << 20)` or `Some(1 << 30)` bytes for hugetlb pages of that size (taken from
        /// the host's hugetlb pool), `None` for ordinary shmem pages.
        huge_page_size: Option<u64>,
    },
    /// `hugetlbfs:DIR`: files in a directory on a hugetlbfs mount, in pages of the mount's size.
    Hugetlbfs(PathBuf),
    /// `dir:DIR`: a directory on tmpfs (or any memory filesystem; pagelessfs is recognized).
    Dir(PathBuf),
    /// `pagelessfs:DIR`: files in a directory on a pagelessfs mount (boot-reserved memory, see
    /// `driver/kmod/README.md`), in pages of the mount's `pagesize=`.
    Pagelessfs(PathBuf),
}

impl std::str::FromStr for PoolSpec {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let invalid = |why: &str| Error::InvalidPoolSpec { spec: spec.into(), why: why.into() };
        let (kind, arg) = match spec.split_once(':') {
            Some((kind, arg)) => (kind, Some(arg)),
            None => (spec, None),
        };
        let dir = |arg: Option<&str>| match arg {
            Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
            _ => Err(invalid("a directory is required after the ':'")),
        };
        match kind {
            "memfd" => {
                let huge_page_size = match arg {
                    None => None,
                    Some(size) => match parse_size(size) {
                        Ok(size) if size == 2 << 20 || size == 1 << 30 => Some(size),
                        _ => return Err(invalid("memfd hugetlb pages are 2M or 1G")),
                    },
                };
                Ok(PoolSpec::Memfd { huge_page_size })
            }
            "hugetlbfs" => Ok(PoolSpec::Hugetlbfs(dir(arg)?)),
            "dir" => Ok(PoolSpec::Dir(dir(arg)?)),
            "pagelessfs" => Ok(PoolSpec::Pagelessfs(dir(arg)?)),
            _ => Err(invalid("unknown pool kind")),
        }
    }
}

impl fmt::Display for PoolSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolSpec::Memfd { huge_page_size: None } => f.write_str("memfd"),
            PoolSpec::Memfd { huge_page_size: Some(size) } => write!(f, "memfd:{}", Size(*size)),
            PoolSpec::Hugetlbfs(dir) => write!(f, "hugetlbfs:{}", dir.display()),
            PoolSpec::Dir(dir) => write!(f, "dir:{}", dir.display()),
            PoolSpec::Pagelessfs(dir) => write!(f, "pagelessfs:{}", dir.display()),
        }
    }
}

/// What kind of memory a pool hands out. Serializes as `"memfd"` or `{"directory": FS}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// Anonymous memfds (plain or hugetlb): no names in the file system, no re-attach.
    Memfd,
    /// Files in a directory on the given filesystem; they can be re-attached by name.
    Directory(FsKind),
}

/// A pool's size, from [`Pool::stats`]; all values in bytes. A snapshot: other processes
/// allocate and free from the same memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PoolStats {
    /// The pool's page size, as [`Pool::page_size`].
    pub page_size: u64,
    /// The pool's capacity: the filesystem's size where it has a limit (tmpfs `size=`,
    /// hugetlbfs `size=`, the pagelessfs pool), else the host's hugetlb pages of this size
    /// (`nr_hugepages`), else the host's `MemTotal`.
    pub total: u64,
    /// What can still be allocated, from the same source as `total`: the filesystem's
    /// available blocks, free hugetlb pages, or `MemAvailable`.
    pub free: u64,
    /// pagelessfs only: memory freed from files that were mapped, held back until every
    /// process that mapped them has exited (it may still be reachable by DMA); not in `free`.
    pub quarantined: Option<u64>,
    /// pagelessfs only: the NUMA node the mount allocates from (its `node=` mount option; then
    /// `total` and `free` are that node's); `None` for other pools and for pagelessfs mounts of
    /// every node.
    pub node: Option<u32>,
}

/// The sysfs directory where the pagelessfs module publishes its pool's counters (one decimal
/// number per file, e.g. `quarantined_bytes`); absent while the module is not loaded.
pub const PAGELESSFS_SYSFS: &str = "/sys/fs/pagelessfs";

/// A source of named allocations, opened from a [`PoolSpec`]. Opening checks the directory and
/// its filesystem once and fixes the page size; the pool itself holds no fd or lock, so several
/// `Pool`s (in one or several processes) can share a directory.
#[derive(Debug)]
pub struct Pool {
    spec: PoolSpec,
    kind: PoolKind,
    page_size: u64,
}

impl Pool {
    /// Opens a pool, checking that its directory exists and is on the expected filesystem, and
    /// determines the page size (`statfs` block size for hugetlbfs and pagelessfs, the base
    /// page size for tmpfs and plain memfd). A `dir:` pool on a filesystem that is not memory
    /// is accepted with a warning in the log.
    ///
    /// # Errors
    ///
    /// [`Error::MissingPoolDir`], [`Error::WrongFilesystem`], or [`Error::Io`] when `statfs`
    /// fails.
    pub fn open(spec: &PoolSpec) -> Result<Pool> {
        let (kind, page_size) = match spec {
            PoolSpec::Memfd { huge_page_size } => {
                (PoolKind::Memfd, huge_page_size.unwrap_or_else(base_page_size))
            }
            PoolSpec::Hugetlbfs(dir) | PoolSpec::Dir(dir) | PoolSpec::Pagelessfs(dir) => {
                if !dir.is_dir() {
                    return Err(Error::MissingPoolDir { path: dir.clone() });
                }
                let info = FsInfo::of_path(dir)?;
                let expected = match spec {
                    PoolSpec::Hugetlbfs(_) => Some(FsKind::Hugetlbfs),
                    PoolSpec::Pagelessfs(_) => Some(FsKind::Pagelessfs),
                    _ => None,
                };
                if let Some(expected) = expected.filter(|&e| e != info.kind) {
                    return Err(Error::WrongFilesystem {
                        path: dir.clone(),
                        expected: if expected == FsKind::Hugetlbfs { "hugetlbfs" } else { "pagelessfs" },
                        found: info.kind.to_string(),
                    });
                }
                if let FsKind::Other(_) = info.kind {
                    warn!(
                        "{} is on a {} filesystem: guest memory there is not RAM",
                        dir.display(),
                        info.kind
                    );
                }
                let page_size = match info.kind {
                    FsKind::Hugetlbfs | FsKind::Pagelessfs => info.block_size,
                    FsKind::Tmpfs | FsKind::Other(_) => base_page_size(),
                };
                (PoolKind::Directory(info.kind), page_size)
            }
        };
        debug!("opened pool {spec}: {kind:?}, page size {}", Size(page_size));
        Ok(Pool { spec: spec.clone(), kind, page_size })
    }

    /// The spec the pool was opened with.
    pub fn spec(&self) -> &PoolSpec {
        &self.spec
    }

    /// The kind of memory the pool hands out; for directories, the filesystem found at
    /// [`open`](Self::open).
    pub fn kind(&self) -> PoolKind {
        self.kind
    }

    /// The page size allocations are rounded to and mapped with, in bytes (a power of two).
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    fn dir(&self) -> Option<&Path> {
        match &self.spec {
            PoolSpec::Memfd { .. } => None,
            PoolSpec::Hugetlbfs(dir) | PoolSpec::Dir(dir) | PoolSpec::Pagelessfs(dir) => Some(dir),
        }
    }

    fn is_hugetlb(&self) -> bool {
        match self.kind {
            PoolKind::Memfd => self.page_size != base_page_size(),
            PoolKind::Directory(fs) => fs == FsKind::Hugetlbfs,
        }
    }

    /// Total and free bytes: the filesystem's own limits where it has them, else the
    /// hugetlb page counts or the host's memory; for pagelessfs also the quarantined bytes.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when `statfs`, hugetlb sysfs or `/proc/meminfo` cannot be read;
    /// [`Error::PoolStat`] when a pagelessfs counter is unreadable.
    pub fn stats(&self) -> Result<PoolStats> {
        let limits = match self.dir() {
            Some(dir) => {
                let info = FsInfo::of_path(dir)?;
                info.total.zip(info.free)
            }
            None => None,
        };
        let (total, free) = match limits {
            Some(limits) => limits,
            None if self.is_hugetlb() => hugetlb_pages(self.page_size)?,
            None => host_memory()?,
        };
        let (quarantined, node) = match self.kind {
            PoolKind::Directory(FsKind::Pagelessfs) => (
                sysfs_counter(Path::new(PAGELESSFS_SYSFS), "quarantined_bytes")?,
                self.dir().and_then(pagelessfs_node),
            ),
            _ => (None, None),
        };
        Ok(PoolStats { page_size: self.page_size, total, free, quarantined, node })
    }

    /// Checks that `size` (bytes) is a non-zero multiple of the page size; returns it unchanged.
    /// For sizes that must be exact, such as the RAM size QEMU was given.
    ///
    /// # Errors
    ///
    /// [`Error::ZeroSize`]; [`Error::UnalignedSize`] with the rounded-up size as suggestion;
    /// [`Error::PoolTooSmall`] when rounding overflows.
    pub fn check_size(&self, size: u64) -> Result<u64> {
        let rounded = self.round_size(size)?;
        if rounded != size {
            return Err(Error::UnalignedSize { size, page_size: self.page_size, suggestion: rounded });
        }
        Ok(size)
    }

    /// Rounds `size` (bytes) up to a multiple of the pool's page size.
    ///
    /// # Errors
    ///
    /// [`Error::ZeroSize`] for 0; [`Error::PoolTooSmall`] (with `free` and `total` 0) when the
    /// rounded size would overflow `u64`.
    pub fn round_size(&self, size: u64) -> Result<u64> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        round_up(size, self.page_size).ok_or(Error::SizeTooLarge { size })
    }

    /// Makes a new allocation called `name` of at least `size` bytes (rounded up to the page
    /// size). In a directory pool this creates the file `DIR/name` (mode 0600, never an
    /// existing one); in a memfd pool a new memfd. memfd and pagelessfs allocations are then
    /// sealed against shrinking and growing. The memory is not touched: tmpfs, memfd and
    /// hugetlbfs pages are allocated on first use unless [`Allocation::prefault`] is called.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::ZeroSize`], [`Error::PoolTooSmall`] (checked against
    /// [`stats`](Self::stats) first, and when the filesystem refuses the size), the seal errors
    /// of pagelessfs ([`Error::SealUnsupported`], [`Error::Seal`], [`Error::SealMissing`]), or
    /// [`Error::Io`], e.g. `EEXIST` when the file exists (use [`attach`](Self::attach) or
    /// [`attach_or_allocate`](Self::attach_or_allocate)). A file created before a failure is
    /// removed again.
    pub fn allocate(&self, name: &str, size: u64) -> Result<Allocation> {
        check_name(name)?;
        let size = self.round_size(size)?;
        let stats = self.stats()?;
        if stats.free < size {
            return Err(Error::PoolTooSmall { needed: size, free: stats.free, total: stats.total });
        }
        let (file, path) = match self.dir() {
            None => (self.memfd(name)?, None),
            Some(dir) => {
                let path = dir.join(name);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&path)
                    .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
                (file, Some(path))
            }
        };
        if let Err(e) = file.set_len(size) {
            if let Some(path) = &path {
                let _ = std::fs::remove_file(path);
            }
            return Err(match e.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::ENOMEM) => {
                    Error::PoolTooSmall { needed: size, free: stats.free, total: stats.total }
                }
                _ => Error::io(format!("set the size of allocation {name:?} to {size}"), e),
            });
        }
        if let Err(e) = self.seal(&file, path.as_deref()) {
            if let Some(path) = &path {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
        info!("allocated {name:?}: {} from pool {}", Size(size), self.spec);
        Allocation::new(file, name, path, self.kind, self.page_size)
    }

    /// Finds an existing allocation by name (directory pools only), e.g. after the owner
    /// restarted, and opens it read-write. A pagelessfs file is sealed again if it lacks the
    /// size seals. Symbolic links are not followed.
    ///
    /// # Errors
    ///
    /// [`Error::NoReattach`] for memfd pools, [`Error::NotFound`], [`Error::CorruptAllocation`]
    /// when the size is 0 or not a multiple of the page size, the pagelessfs seal errors, or
    /// [`Error::Io`] (e.g. `ELOOP` for a symbolic link, `EACCES`).
    pub fn attach(&self, name: &str) -> Result<Allocation> {
        check_name(name)?;
        let Some(dir) = self.dir() else {
            return Err(Error::NoReattach { name: name.into() });
        };
        let path = dir.join(name);
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::NotFound { name: name.into(), dir: dir.into() })
            }
            Err(e) => return Err(Error::io(format!("open {}", path.display()), e)),
        };
        let size = file.metadata().map_err(|e| Error::io(format!("stat {}", path.display()), e))?.len();
        if size == 0 || size % self.page_size != 0 {
            return Err(Error::CorruptAllocation { path, size, page_size: self.page_size });
        }
        self.seal(&file, Some(&path))?;
        info!("re-attached {name:?}: {} in pool {}", Size(size), self.spec);
        Allocation::new(file, name, Some(path), self.kind, self.page_size)
    }

    /// Re-attaches to `name` if it exists (its size must be `size`), else allocates it.
    /// Returns the allocation and whether it was re-attached (always `false` for memfd pools).
    /// `size` is not rounded: it must already be a multiple of the page size.
    ///
    /// # Errors
    ///
    /// [`Error::UnalignedSize`] or [`Error::ZeroSize`] for `size`, [`Error::SizeMismatch`] when
    /// the existing file has another size, and the errors of [`attach`](Self::attach) (other
    /// than not found) and [`allocate`](Self::allocate).
    pub fn attach_or_allocate(&self, name: &str, size: u64) -> Result<(Allocation, bool)> {
        let size = self.check_size(size)?;
        match self.attach(name) {
            Ok(allocation) if allocation.size() == size => Ok((allocation, true)),
            Ok(allocation) => Err(Error::SizeMismatch {
                path: allocation.path().map(Path::to_path_buf).unwrap_or_default(),
                found: allocation.size(),
                requested: size,
            }),
            Err(Error::NotFound { .. }) | Err(Error::NoReattach { .. }) => {
                self.allocate(name, size).map(|a| (a, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Seals an allocation's size where the pool's files can be sealed (memfd, pagelessfs), so
    /// that no process holding its fd can shrink (free) or grow the VM's memory.
    fn seal(&self, file: &File, path: Option<&Path>) -> Result<()> {
        match (self.kind, path) {
            (PoolKind::Memfd, _) => seal::seal_memfd(file),
            (PoolKind::Directory(FsKind::Pagelessfs), Some(path)) => seal::seal_pagelessfs(file, path),
            _ => Ok(()),
        }
    }

    fn memfd(&self, name: &str) -> Result<File> {
        let mut flags = MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING;
        if self.is_hugetlb() {
            flags |= MemFdCreateFlag::MFD_HUGETLB;
            flags |= if self.page_size == 1 << 30 {
                MemFdCreateFlag::MFD_HUGE_1GB
            } else {
                MemFdCreateFlag::MFD_HUGE_2MB
            };
        }
        let memfd_name = std::ffi::CString::new(format!("pageless:{name}"))
            .map_err(|_| Error::InvalidName { name: name.into() })?;
        memfd_create(&memfd_name, flags)
            .map(File::from)
            .map_err(|e| Error::io(format!("memfd_create {memfd_name:?}"), e))
    }
}

/// Checks that `name` can name an allocation (and a socket): non-empty, no `/`, NUL or other
/// control character, not starting with `.`, at most 200 bytes. [`Pool::allocate`] and
/// [`Pool::attach`] check it themselves; call it to refuse a bad name before doing anything
/// else.
///
/// # Errors
///
/// [`Error::InvalidName`].
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.starts_with('.')
        || name.contains('/')
        || name.chars().any(char::is_control)
        || name.len() > 200
    {
        return Err(Error::InvalidName { name: name.into() });
    }
    Ok(())
}

pub(crate) fn base_page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map_or(4096, |size| size as u64)
}

/// Total and free bytes of hugetlb pages of `page_size`, from sysfs.
fn hugetlb_pages(page_size: u64) -> Result<(u64, u64)> {
    let dir = PathBuf::from(format!("/sys/kernel/mm/hugepages/hugepages-{}kB", page_size >> 10));
    let read = |file: &str| -> Result<u64> {
        let path = dir.join(file);
        let text =
            std::fs::read_to_string(&path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        text.trim()
            .parse::<u64>()
            .map_err(|e| Error::io(format!("parse {}", path.display()), std::io::Error::other(e)))
    };
    Ok((read("nr_hugepages")? * page_size, read("free_hugepages")? * page_size))
}

/// A counter of the pagelessfs module (`<dir>/<name>`: a decimal number and a newline);
/// `None` when the module does not publish it (not loaded, or older than the counter).
fn sysfs_counter(dir: &Path, name: &str) -> Result<Option<u64>> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|e| Error::PoolStat { path, source: std::io::Error::new(ErrorKind::InvalidData, e) }),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            debug!("{} is missing: the pagelessfs module does not report it", path.display());
            Ok(None)
        }
        Err(source) => Err(Error::PoolStat { path, source }),
    }
}

/// The `node=` option of the pagelessfs mount holding `dir`, from /proc/self/mountinfo;
/// `None` without one, or if mountinfo cannot be read (logged).
fn pagelessfs_node(dir: &Path) -> Option<u32> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| debug!("read /proc/self/mountinfo: {e}"))
        .ok()?;
    mountinfo_node(&text, &dir)
}

/// The `node=` super option of the innermost pagelessfs mount containing `dir` in a
/// mountinfo text (later lines win: they are mounted on top).
fn mountinfo_node(mountinfo: &str, dir: &Path) -> Option<u32> {
    let mut best: Option<(usize, Option<u32>)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else { continue };
        let (Some(point), Some(fstype), Some(opts)) =
            (fields.get(4), fields.get(sep + 1), fields.get(sep + 3))
        else {
            continue;
        };
        let point = unescape_mount_path(point);
        if !dir.starts_with(&point) {
            continue;
        }
        let depth = Path::new(&point).components().count();
        if best.is_some_and(|(d, _)| d > depth) {
            continue;
        }
        let node = if *fstype == "pagelessfs" {
            opts.split(',').find_map(|o| o.strip_prefix("node=")).and_then(|n| n.parse().ok())
        } else {
            None
        };
        best = Some((depth, node));
    }
    best.and_then(|(_, node)| node)
}

/// A mountinfo path with its octal escapes (`\040` for a space, …) decoded.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// MemTotal and MemAvailable from /proc/meminfo.
fn host_memory() -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").map_err(|e| Error::io("read /proc/meminfo", e))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .map(|kib| kib << 10)
            .unwrap_or(0)
    };
    Ok((field("MemTotal:"), field("MemAvailable:")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_of_a_pagelessfs_mount_from_mountinfo() {
        let text = "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n\
            40 22 0:50 / /mnt/pl\\040a rw,relatime - pagelessfs none rw,pagesize=2M,node=1\n\
            41 22 0:51 / /mnt/any rw,relatime - pagelessfs none rw,pagesize=1G\n\
            42 40 0:52 / /mnt/pl\\040a/inner rw,relatime - tmpfs none rw\n";
        assert_eq!(mountinfo_node(text, Path::new("/mnt/pl a/vm")), Some(1));
        assert_eq!(mountinfo_node(text, Path::new("/mnt/pl a")), Some(1));
        assert_eq!(mountinfo_node(text, Path::new("/mnt/any/vm")), None);
        assert_eq!(mountinfo_node(text, Path::new("/mnt/pl a/inner/x")), None, "a tmpfs on top");
        assert_eq!(mountinfo_node(text, Path::new("/srv")), None);
    }

    #[test]
    fn parses_specs() {
        assert_eq!("memfd".parse::<PoolSpec>().unwrap(), PoolSpec::Memfd { huge_page_size: None });
        assert_eq!(
            "memfd:2M".parse::<PoolSpec>().unwrap(),
            PoolSpec::Memfd { huge_page_size: Some(2 << 20) }
        );
        assert_eq!("dir:/dev/shm".parse::<PoolSpec>().unwrap(), PoolSpec::Dir("/dev/shm".into()));
        assert_eq!("pagelessfs:/mnt/p".parse::<PoolSpec>().unwrap(), PoolSpec::Pagelessfs("/mnt/p".into()));
        for bad in ["", "memfd:3M", "dir:", "dir", "hugetlbfs", "tmpfs:/x", "memfd:x"] {
            assert!(bad.parse::<PoolSpec>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn spec_display_round_trips() {
        for spec in ["memfd", "memfd:1G", "hugetlbfs:/a", "dir:/b", "pagelessfs:/c"] {
            assert_eq!(spec.parse::<PoolSpec>().unwrap().to_string(), spec);
        }
    }

    #[test]
    fn reads_sysfs_counters() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("quarantined_bytes"), "2097152\n").unwrap();
        std::fs::write(dir.path().join("bad"), "lots\n").unwrap();
        assert_eq!(sysfs_counter(dir.path(), "quarantined_bytes").unwrap(), Some(2 << 20));
        assert_eq!(sysfs_counter(dir.path(), "missing").unwrap(), None);
        assert!(matches!(sysfs_counter(dir.path(), "bad"), Err(Error::PoolStat { .. })));
    }

    #[test]
    fn names_are_checked() {
        let long = "x".repeat(201);
        for bad in ["", ".", "..", ".hidden", "a/b", "a\0b", "a\nb", "\u{1b}[2J", "tab\t", &long] {
            assert!(check_name(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(check_name("vm-1_test.ram").is_ok());
    }

    #[test]
    fn sizes_that_overflow_when_rounded_are_refused() {
        let pool = Pool::open(&PoolSpec::Memfd { huge_page_size: None }).unwrap();
        for size in [u64::MAX, u64::MAX - 4094] {
            let err = pool.check_size(size).unwrap_err();
            assert!(matches!(err, Error::SizeTooLarge { .. }), "{err}");
            assert!(err.to_string().contains("more than 16 EiB"), "{err}");
        }
    }
}
