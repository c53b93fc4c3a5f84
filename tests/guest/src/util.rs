//! Small helpers over libc: CHECK/RESULT lines, mappings, statfs, FIEMAP, fault counts.

use std::ffi::CString;
use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Instant;

pub const PAGE: usize = 4096;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// statfs f_type of pagelessfs ("PGLS"): the value pageless-pool recognizes pools by.
pub use pageless_pool::PAGELESSFS_MAGIC;

/// Collects CHECK lines; the process exit status says whether all passed.
#[derive(Default)]
pub struct Report {
    pub failed: usize,
}

impl Report {
    pub fn check(&mut self, name: &str, ok: bool, detail: impl Display) -> bool {
        let detail = detail.to_string().replace('\n', " ");
        println!("CHECK {name} {} {detail}", if ok { "ok" } else { "FAIL" });
        if !ok {
            self.failed += 1;
        }
        ok
    }

    pub fn result(&mut self, key: &str, value: impl Display) {
        println!("RESULT {key}={value}");
    }
}

/// A shared file mapping, unmapped on drop.
pub struct Map {
    pub ptr: *mut u8,
    pub len: usize,
}

impl Map {
    pub fn new(fd: RawFd, len: usize, offset: u64, flags: libc::c_int) -> io::Result<Map> {
        // SAFETY: a fresh mapping at an address the kernel chooses; no existing memory is
        // affected. The result is checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Map { ptr: p.cast(), len })
    }

    pub fn shared(file: &File, len: usize, offset: u64) -> io::Result<Map> {
        Map::new(file.as_raw_fd(), len, offset, libc::MAP_SHARED)
    }

    pub fn addr(&self) -> usize {
        self.ptr as usize
    }

    pub fn read_u64(&self, off: usize) -> u64 {
        assert!(off + 8 <= self.len && off & 7 == 0);
        // SAFETY: off is in bounds and 8-aligned (the mapping is page aligned); the memory
        // is a live mapping owned by self. Volatile: another process may write it.
        unsafe { self.ptr.add(off).cast::<u64>().read_volatile() }
    }

    pub fn write_u64(&self, off: usize, v: u64) {
        assert!(off + 8 <= self.len && off & 7 == 0);
        // SAFETY: as in read_u64; the mapping is writable (PROT_WRITE).
        unsafe { self.ptr.add(off).cast::<u64>().write_volatile(v) }
    }

    /// Write one byte in every 4 KiB page (first touch: one fault per entry).
    pub fn touch(&self) {
        let mut off = 0;
        while off < self.len {
            // SAFETY: off < len, inside the live writable mapping.
            unsafe { self.ptr.add(off).write_volatile(1) };
            off += PAGE;
        }
    }

    /// Bytes of the range [off, off+len) that are not zero (0 means all zero).
    pub fn count_nonzero(&self, off: usize, len: usize) -> usize {
        assert!(off + len <= self.len && off & 7 == 0 && len & 7 == 0);
        // SAFETY: the range is inside the live mapping and u64-aligned; we only read.
        let words = unsafe { std::slice::from_raw_parts(self.ptr.add(off).cast::<u64>(), len / 8) };
        words.iter().filter(|w| **w != 0).count()
    }

    /// The VmFlags of this mapping in /proc/self/smaps.
    pub fn vmflags(&self) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                    inside = a <= self.addr() && self.addr() < b;
                    continue;
                }
            }
            if inside {
                if let Some(f) = line.strip_prefix("VmFlags:") {
                    return Some(f.trim().to_string());
                }
            }
        }
        None
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe a mapping created by Map::new and not unmapped elsewhere.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

pub fn minflt() -> i64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage struct.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_minflt
}

/// Touch every page of `m`, returning (minor faults, milliseconds).
pub fn timed_touch(m: &Map) -> (i64, f64) {
    // Fault in what the measurement itself touches first (the vDSO's clock page on the first
    // Instant::now(), this stack), so that only the mapping's own faults are counted.
    std::hint::black_box((Instant::now(), minflt()));
    let f0 = minflt();
    let t0 = Instant::now();
    m.touch();
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    (minflt() - f0, ms)
}

pub struct FsStat {
    pub ftype: i64,
    pub bsize: u64,
    pub blocks: u64,
    pub bfree: u64,
}

pub fn statfs(path: &Path) -> io::Result<FsStat> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: statfs fills the zeroed struct we own.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path, s a valid out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(FsStat { ftype: s.f_type, bsize: s.f_bsize as u64, blocks: s.f_blocks, bfree: s.f_bfree })
}

pub fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)
}

pub fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

pub fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{:?}", nix::errno::Errno::from_raw(n)),
        None => e.to_string(),
    }
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct FiemapExtent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    reserved64: [u64; 2],
    pub flags: u32,
    reserved: [u32; 3],
}

const FIEMAP_MAX: usize = 1024;

#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; FIEMAP_MAX],
}

pub const FIEMAP_EXTENT_LAST: u32 = 0x1;
pub const FIEMAP_EXTENT_UNKNOWN: u32 = 0x2;
const FS_IOC_FIEMAP: libc::c_ulong = 0xc020_660b;

/// All extents of a file (up to 1024), via FS_IOC_FIEMAP.
pub fn fiemap(file: &File) -> io::Result<Vec<FiemapExtent>> {
    let mut out = Vec::new();
    let mut start = 0u64;
    loop {
        let mut fm = Box::new(Fiemap {
            start,
            length: u64::MAX - start,
            flags: 0,
            mapped_extents: 0,
            extent_count: FIEMAP_MAX as u32,
            reserved: 0,
            extents: [FiemapExtent::default(); FIEMAP_MAX],
        });
        // SAFETY: fm is a properly sized struct fiemap with extent_count entries; the
        // kernel writes at most that many.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut *fm as *mut Fiemap) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        let n = fm.mapped_extents as usize;
        out.extend_from_slice(&fm.extents[..n]);
        if n == 0 || fm.extents[n - 1].flags & FIEMAP_EXTENT_LAST != 0 || n < FIEMAP_MAX {
            return Ok(out);
        }
        start = fm.extents[n - 1].logical + fm.extents[n - 1].length;
    }
}

/// Bytes where two extent lists share physical memory.
pub fn phys_overlap(a: &[FiemapExtent], b: &[FiemapExtent]) -> u64 {
    let mut sum = 0;
    for x in a {
        for y in b {
            let lo = x.physical.max(y.physical);
            let hi = (x.physical + x.length).min(y.physical + y.length);
            if hi > lo {
                sum += hi - lo;
            }
        }
    }
    sum
}

/// Physical extents covering file range [off, off+len).
pub fn phys_of_range(ext: &[FiemapExtent], off: u64, len: u64) -> Vec<FiemapExtent> {
    let mut v = Vec::new();
    for e in ext {
        let lo = e.logical.max(off);
        let hi = (e.logical + e.length).min(off + len);
        if hi > lo {
            let mut x = *e;
            x.physical = e.physical + (lo - e.logical);
            x.logical = lo;
            x.length = hi - lo;
            v.push(x);
        }
    }
    v
}

pub fn print_fiemap(name: &str, ext: &[FiemapExtent]) {
    println!("# filefrag -v {name}: {} extent(s)", ext.len());
    println!("#  ext  logical_offset   physical_address  length            flags");
    for (i, e) in ext.iter().enumerate() {
        println!(
            "#  {i:3}  {:#014x}  {:#016x}  {:#012x} ({} MiB)  {:#x}{}",
            e.logical,
            e.physical,
            e.length,
            e.length >> 20,
            e.flags,
            if e.flags & FIEMAP_EXTENT_LAST != 0 { " last" } else { "" }
        );
    }
}

/// `/proc/vmstat` nr_memmap_boot_pages + nr_memmap_pages, and MemTotal in KiB.
pub fn memmap_pages() -> (u64, u64) {
    let vmstat = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
    let mut pages = 0;
    for l in vmstat.lines() {
        let mut it = l.split_whitespace();
        if let (Some(k), Some(v)) = (it.next(), it.next()) {
            if k == "nr_memmap_boot_pages" || k == "nr_memmap_pages" {
                pages += v.parse::<u64>().unwrap_or(0);
            }
        }
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (pages, total)
}

pub fn thp_mode() -> String {
    let s = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    s.split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Fork; the child runs `f` and exits with its return value. Returns the child's pid.
pub fn fork_child(f: impl FnOnce() -> i32) -> nix::unistd::Pid {
    // SAFETY: this program is single-threaded, so the child may run arbitrary code.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let code = f();
            // SAFETY: _exit skips atexit handlers and stdio flushing of the parent's
            // buffers, which is what a forked child wants.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => child,
    }
}

/// Runs `f` in a forked child and returns the u64 it produced (through a shared anonymous
/// page), or an error naming how the child ended. Processes that map a pagelessfs file keep
/// the memory freed from it quarantined until they exit: checks that map and then expect the
/// memory back do their mapping in such a child.
pub fn in_child(f: impl FnOnce() -> u64) -> io::Result<u64> {
    let out = Map::new(-1, PAGE, 0, libc::MAP_SHARED | libc::MAP_ANONYMOUS)?;
    let child = fork_child(|| {
        out.write_u64(0, f());
        0
    });
    match nix::sys::wait::waitpid(child, None)? {
        nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(out.read_u64(0)),
        status => Err(io::Error::other(format!("child ended with {status:?}"))),
    }
}

/// A number from /sys/fs/pagelessfs/NAME (the module's pool counters).
pub fn pool_counter(name: &str) -> io::Result<u64> {
    let path = format!("/sys/fs/pagelessfs/{name}");
    let text =
        std::fs::read_to_string(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    text.trim().parse().map_err(|e| io::Error::other(format!("{path}: {text:?}: {e}")))
}

/// A size as pageless-pool parses them (`4K`, `2M`, `1G`, bytes), or hex bytes (`0x…`), as
/// in the module's `ranges=`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).map_err(|e| format!("bad size {s}: {e}")),
        None => pageless_pool::size::parse_size(s),
    }
}

/// A byte count in the largest binary unit that divides it (`2M`, `1G`, `1536K`).
pub fn human(b: u64) -> String {
    pageless_pool::size::Size(b).to_string()
}
