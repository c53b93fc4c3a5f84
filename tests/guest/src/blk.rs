//! `blk-bench`: block device throughput and 4K random-read latency with O_DIRECT, for comparing
//! a vhost-user disk through the owner's relay with one connected straight to its backend.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Instant;

use crate::util::{Report, MIB};

/// A zeroed buffer aligned for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    layout: Layout,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = Layout::from_size_align(len, 4096).expect("valid layout");
        // SAFETY: the layout has a non-zero size; the pointer is checked below.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Aligned { ptr, layout }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated with this layout and is freed once.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

fn io_at(fd: i32, buf: &Aligned, len: usize, offset: u64, write: bool) -> io::Result<()> {
    // SAFETY: buf holds at least `len` bytes (callers pass len <= its layout size) and lives
    // for the call.
    let n = unsafe {
        if write {
            libc::pwrite(fd, buf.ptr.cast(), len, offset as libc::off_t)
        } else {
            libc::pread(fd, buf.ptr.cast(), len, offset as libc::off_t)
        }
    };
    match n {
        n if n == len as isize => Ok(()),
        n if n < 0 => Err(io::Error::last_os_error()),
        n => Err(io::Error::other(format!("short I/O: {n} of {len} bytes"))),
    }
}

/// A small xorshift generator: reproducible offsets, no dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

pub fn blk_bench(r: &mut Report, device: &Path, mib: u64, random_reads: usize) -> io::Result<()> {
    let file = OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(device)?;
    let fd = file.as_raw_fd();
    let block = Aligned::new(MIB as usize);
    let span = mib * MIB;

    let start = Instant::now();
    for i in 0..mib {
        io_at(fd, &block, MIB as usize, i * MIB, true)?;
    }
    file.sync_all()?;
    let write_secs = start.elapsed().as_secs_f64();

    let start = Instant::now();
    for i in 0..mib {
        io_at(fd, &block, MIB as usize, i * MIB, false)?;
    }
    let read_secs = start.elapsed().as_secs_f64();

    let mut latencies = Vec::with_capacity(random_reads);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let start = Instant::now();
    for _ in 0..random_reads {
        let offset = (next(&mut state) % (span / 4096)) * 4096;
        let t = Instant::now();
        io_at(fd, &block, 4096, offset, false)?;
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let random_secs = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];

    r.result("seq_write_mib_s", format!("{:.1}", mib as f64 / write_secs));
    r.result("seq_read_mib_s", format!("{:.1}", mib as f64 / read_secs));
    r.result("rand_read_iops", format!("{:.0}", random_reads as f64 / random_secs));
    r.result("rand_read_p50_us", format!("{:.0}", percentile(0.5)));
    r.result("rand_read_p99_us", format!("{:.0}", percentile(0.99)));
    r.check(
        "blk-bench",
        true,
        format!("{mib} MiB sequential, {random_reads} random 4K reads on {}", device.display()),
    );
    Ok(())
}
