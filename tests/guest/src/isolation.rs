//! DMA isolation of pagelessfs (driver/kmod/quarantine.c): memory freed from a file that a
//! living process mapped stays quarantined; mappings are not inherited across fork; seals stop
//! a holder of the fd from shrinking or growing a file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitStatus};

use crate::checks::wait_free;
use crate::util::*;

// driver/kmod/pageless_uapi.h
const PAGELESS_SEAL_SHRINK: u32 = 0x0002;
const PAGELESS_SEAL_GROW: u32 = 0x0004;
/// _IOW(0xB7, 0x01, __u32)
const PAGELESS_IOC_ADD_SEALS: u64 = (1 << 30) | (4 << 16) | (0xB7 << 8) | 0x01;
/// _IOR(0xB7, 0x02, __u32)
const PAGELESS_IOC_GET_SEALS: u64 = (2 << 30) | (4 << 16) | (0xB7 << 8) | 0x02;

fn errno_of<T>(r: &io::Result<T>) -> String {
    match r {
        Ok(_) => "succeeded".into(),
        Err(e) => errno_name(e),
    }
}

/// PAGELESS_IOC_ADD_SEALS on `f`.
pub fn add_seals(f: &File, seals: u32) -> io::Result<()> {
    let mut v = seals;
    // SAFETY: the ioctl reads one u32 through the pointer, which points to a live u32.
    if unsafe { libc::ioctl(f.as_raw_fd(), PAGELESS_IOC_ADD_SEALS as _, &mut v) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// PAGELESS_IOC_GET_SEALS on `f`.
pub fn get_seals(f: &File) -> io::Result<u32> {
    let mut v = 0u32;
    // SAFETY: the ioctl writes one u32 through the pointer, which points to a live u32.
    if unsafe { libc::ioctl(f.as_raw_fd(), PAGELESS_IOC_GET_SEALS as _, &mut v) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// Seals: a sealed file cannot be shrunk (ftruncate, O_TRUNC) or grown through any fd;
/// seals need a writable fd, stay once added, and unknown bits are refused.
pub fn seals(r: &mut Report, dir: &Path) -> io::Result<()> {
    let st = statfs(dir)?;
    let ps = st.bsize;
    let p = dir.join("sealed");
    let f = create(&p)?;
    f.set_len(2 * ps)?;
    let ro = File::open(&p)?;
    let ro_add = add_seals(&ro, PAGELESS_SEAL_SHRINK);
    let bad_bits = add_seals(&f, 0x8);
    let add = add_seals(&f, PAGELESS_SEAL_SHRINK | PAGELESS_SEAL_GROW);
    let got = get_seals(&ro);
    let other = open_rw(&p)?;
    let shrink = other.set_len(ps);
    let zero = other.set_len(0);
    let grow = other.set_len(4 * ps);
    let trunc = OpenOptions::new().write(true).truncate(true).open(&p);
    let len = f.metadata()?.len();
    let eperm = |r: &io::Result<()>| matches!(r, Err(e) if e.raw_os_error() == Some(libc::EPERM));
    let ok = eperm(&ro_add)
        && matches!(&bad_bits, Err(e) if e.raw_os_error() == Some(libc::EINVAL))
        && add.is_ok()
        && matches!(got, Ok(6))
        && eperm(&shrink)
        && eperm(&zero)
        && eperm(&grow)
        && matches!(&trunc, Err(e) if e.raw_os_error() == Some(libc::EPERM))
        && len == 2 * ps;
    r.check(
        &format!("seals-{}", human(ps)),
        ok,
        format!(
            "ADD_SEALS on a read-only fd: {}, unknown bit: {}, SHRINK|GROW: {}; GET_SEALS {:?}; through another fd: shrink {}, truncate to 0 {}, grow {}, open O_TRUNC {}; size stays {}",
            errno_of(&ro_add),
            errno_of(&bad_bits),
            errno_of(&add),
            got.as_ref().map_err(errno_name),
            errno_of(&shrink),
            errno_of(&zero),
            errno_of(&grow),
            errno_of(&trunc),
            human(len)
        ),
    );
    drop((f, ro, other));
    std::fs::remove_file(&p)?;
    let free = wait_free(dir, st.bfree, 30)?;
    r.check(
        &format!("seals-unlink-{}", human(ps)),
        free == st.bfree,
        format!("a sealed file is still removed and its memory freed: free blocks {} -> {free}", st.bfree),
    );
    Ok(())
}

/// fork() does not give the child a pagelessfs mapping (VM_DONTCOPY; MADV_DOFORK refused):
/// every mapping of a file is made by ->mmap in the process that holds it.
pub fn fork_dontcopy(r: &mut Report, dir: &Path) -> io::Result<()> {
    let st = statfs(dir)?;
    let ps = st.bsize;
    let p = dir.join("forked");
    let f = create(&p)?;
    f.set_len(ps)?;
    let ino = f.metadata()?.ino();
    let m = Map::shared(&f, ps as usize, 0)?;
    m.write_u64(0, 42);
    let in_parent = maps_inode(ino);
    let in_child = in_child(|| u64::from(maps_inode(ino)))?;
    // SAFETY: madvise on the live mapping's exact range; MADV_DOFORK changes no memory.
    let dofork = unsafe { libc::madvise(m.ptr.cast(), ps as usize, libc::MADV_DOFORK) };
    let dofork_err = io::Error::last_os_error();
    r.check(
        &format!("fork-dontcopy-{}", human(ps)),
        in_parent && in_child == 0 && dofork != 0 && dofork_err.raw_os_error() == Some(libc::EINVAL),
        format!(
            "inode {ino} in the parent's maps: {in_parent}, in a forked child's: {}; MADV_DOFORK: {}",
            in_child == 1,
            if dofork == 0 { "succeeded".into() } else { errno_name(&dofork_err) }
        ),
    );
    drop(m);
    drop(f);
    std::fs::remove_file(&p)?;
    Ok(())
}

/// Whether this process maps a file with inode `ino` (/proc/self/maps).
fn maps_inode(ino: u64) -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(ino.to_string().as_str()))
}

/// A child maps a file and unmaps it again but lives on; the file is unlinked: its memory is
/// quarantined (not free, counted in quarantined_bytes) until the child exits, then scrubbed
/// and free again.
pub fn quarantine_unlink(r: &mut Report, dir: &Path) -> io::Result<()> {
    let st = statfs(dir)?;
    let ps = st.bsize;
    let p = dir.join("quarantined");
    let f = create(&p)?;
    f.set_len(ps)?;
    let q0 = pool_counter("quarantined_bytes")?;
    let (mut to_child, child_in) = pipe_files()?;
    let (child_out, mut from_child) = pipe_files()?;
    let parent_end = to_child.as_raw_fd();
    let child = fork_child(|| {
        // SAFETY: the child's copy of the parent's write end, closed so that the read below
        // ends if the parent goes away; the child never uses or drops it otherwise.
        unsafe { libc::close(parent_end) };
        let (mut rx, mut tx) = (child_in, child_out);
        let Ok(m) = Map::shared(&f, ps as usize, 0) else { return 1 };
        // SAFETY: the child's inherited copy of the file's fd: closed so that the parent's
        // unlink evicts the inode; the child never uses or drops `f` otherwise.
        unsafe { libc::close(f.as_raw_fd()) };
        m.write_u64(0, 0x51ec7e7);
        drop(m);
        if tx.write_all(b"U").is_err() {
            return 2;
        }
        let mut go = [0u8; 1];
        let _ = rx.read(&mut go); // until the parent says so, or goes away
        0
    });
    let mut ready = [0u8; 1];
    from_child.read_exact(&mut ready)?;
    drop(f);
    std::fs::remove_file(&p)?;
    let held = pool_counter("quarantined_bytes")?;
    let free_held = statfs(dir)?.bfree;
    to_child.write_all(b"X")?;
    let status = waitpid(child, None)?;
    let t0 = Instant::now();
    let free = wait_free(dir, st.bfree, 10)?;
    let released_ms = t0.elapsed().as_millis();
    let after = pool_counter("quarantined_bytes")?;
    r.check(
        &format!("quarantine-unlink-{}", human(ps)),
        held == q0 + ps && free_held == st.bfree - 1,
        format!(
            "a {} file mapped (and unmapped) by a living process, unlinked: quarantined_bytes {q0} -> {held}, free blocks {} -> {free_held}",
            human(ps),
            st.bfree
        ),
    );
    r.check(
        &format!("quarantine-released-{}", human(ps)),
        matches!(status, WaitStatus::Exited(_, 0)) && free == st.bfree && after == q0,
        format!(
            "the process exited ({status:?}): free blocks {free} (want {}) after {released_ms} ms, quarantined_bytes {after}",
            st.bfree
        ),
    );
    Ok(())
}

/// `quarantine-holder FILE`: create FILE (one page of its mount), map and touch it, unmap,
/// close and unlink it, print HOLDER-READY and sleep until killed: its memory stays
/// quarantined as long as this process lives.
pub fn quarantine_holder(file: &Path) -> io::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let ps = statfs(dir)?.bsize;
    let f = create(file)?;
    f.set_len(ps)?;
    let m = Map::shared(&f, ps as usize, 0)?;
    m.write_u64(0, 1);
    drop(m);
    drop(f);
    std::fs::remove_file(file)?;
    println!("HOLDER-READY {} quarantined", human(ps));
    io::stdout().flush()?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// A pipe as two Files: (write end, read end).
pub fn pipe_files() -> io::Result<(File, File)> {
    let (read, write) = nix::unistd::pipe()?;
    Ok((File::from(write), File::from(read)))
}
