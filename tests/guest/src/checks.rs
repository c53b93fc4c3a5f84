//! The in-VM checks of pagelessfs. Each prints `CHECK <name> ok|FAIL <detail>` lines.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType,
};
use nix::sys::wait::{waitpid, WaitStatus};

use crate::util::*;

/// Pattern word for file offset `off` written by test `tag`.
fn pattern(tag: u64, off: u64) -> u64 {
    (tag << 48) ^ off ^ 0x5a5a_0000_0000_a5a5
}

pub fn memmap_save(r: &mut Report, file: &Path) -> io::Result<()> {
    let (pages, total) = memmap_pages();
    std::fs::write(file, format!("{pages} {total}\n"))?;
    r.result("memmap_pages", pages);
    r.result("memtotal_kb", total);
    Ok(())
}

fn memmap_load(file: &Path) -> io::Result<(u64, u64)> {
    let s = std::fs::read_to_string(file)?;
    let mut it = s.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
    Ok((it.next().unwrap_or(0), it.next().unwrap_or(0)))
}

pub fn memmap_check(r: &mut Report, file: &Path, name: &str) -> io::Result<()> {
    let (p0, t0) = memmap_load(file)?;
    let (p1, t1) = memmap_pages();
    r.check(
        name,
        p0 == p1 && t0 == t1 && p0 > 0,
        format!("memmap pages {p0} -> {p1}, MemTotal {t0} kB -> {t1} kB"),
    );
    Ok(())
}

/// Pool ranges show as write-back in the PAT memtype list, with nothing else overlapping.
pub fn pat(r: &mut Report, ranges: &str, name: &str) -> io::Result<()> {
    let list = std::fs::read_to_string("/sys/kernel/debug/x86/pat_memtype_list")?;
    let mut entries = Vec::new();
    for l in list.lines() {
        // PAT: [mem 0x0000000100000000-0x0000000140000000] write-back
        let Some(rest) = l.split("[mem ").nth(1) else { continue };
        let Some((span, kind)) = rest.split_once(']') else { continue };
        let Some((a, b)) = span.split_once('-') else { continue };
        let parse = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or(0);
        entries.push((parse(a), parse(b), kind.trim().to_string()));
    }
    for item in ranges.split(',') {
        let (size, start) = item.split_once('@').ok_or_else(|| io::Error::other("bad range"))?;
        let (size, start) =
            (parse_size(size).map_err(io::Error::other)?, parse_size(start).map_err(io::Error::other)?);
        let end = start + size;
        let wb = entries.iter().any(|(a, b, k)| *a <= start && *b >= end && k == "write-back");
        let other: Vec<_> = entries
            .iter()
            .filter(|(a, b, k)| *a < end && *b > start && k != "write-back")
            .map(|(a, b, k)| format!("[{a:#x}-{b:#x}] {k}"))
            .collect();
        r.check(
            &format!("{name}-{start:#x}"),
            wb && other.is_empty(),
            format!(
                "[{start:#x}-{end:#x}] write-back entry {}; other types overlapping: {}",
                if wb { "present" } else { "MISSING" },
                if other.is_empty() { "none".into() } else { other.join(" ") }
            ),
        );
    }
    Ok(())
}

/// Create `file` with `size` bytes, map it without a hint and touch every 4 KiB page.
pub fn faults(
    r: &mut Report,
    file: &Path,
    size: u64,
    min: i64,
    max: i64,
    name: &str,
    keep: bool,
) -> io::Result<()> {
    let f = create(file)?;
    f.set_len(size)?;
    let st = statfs(file.parent().unwrap_or(Path::new("/")))?;
    let m = Map::shared(&f, size as usize, 0)?;
    let align = st.bsize.min(GIB) as usize;
    let (n, ms) = timed_touch(&m);
    let thp = thp_mode();
    r.result(&format!("{name}_minflt"), n);
    r.result(&format!("{name}_ms"), format!("{ms:.1}"));
    r.check(
        name,
        (min..=max).contains(&n) && m.addr() % align == 0,
        format!(
            "{} file on {} mount, THP {thp}: {n} minor faults (expected {min}..={max}), {ms:.0} ms, address {:#x} {}aligned to {}",
            human(size),
            human(st.bsize),
            m.addr(),
            if m.addr() % align == 0 { "" } else { "NOT " },
            human(align as u64)
        ),
    );
    drop(m);
    drop(f);
    if !keep {
        std::fs::remove_file(file)?;
    }
    Ok(())
}

/// Mappings that are 4 KiB aligned but not huge-page aligned work and see the right data.
pub fn odd_maps(r: &mut Report, dir: &Path) -> io::Result<()> {
    let st = statfs(dir)?;
    let size = st.bsize.max(4 * MIB);
    let path = dir.join("odd");
    let f = create(&path)?;
    f.set_len(size)?;
    // Stamp every page through write(): word 0 of each page = pattern(offset).
    let mut page = vec![0u8; PAGE];
    for off in (0..size).step_by(PAGE) {
        page[..8].copy_from_slice(&pattern(1, off).to_ne_bytes());
        f.write_all_at(&page, off)?;
    }
    let cases: [(u64, usize, &str); 4] = [
        (PAGE as u64, 2 * MIB as usize, "offset 4K length 2M"),
        (0, 0xc0000, "offset 0 length 0xc0000"),
        (PAGE as u64, 0xc0000, "offset 4K length 0xc0000"),
        (MIB + 3 * PAGE as u64, MIB as usize + PAGE, "offset 1M+12K length 1M+4K"),
    ];
    for (k, (off, len, what)) in cases.into_iter().enumerate() {
        let name = format!("odd-map-{}-{}", human(st.bsize), k + 1);
        let m = match Map::shared(&f, len, off) {
            Ok(m) => m,
            Err(e) => {
                r.check(&name, false, format!("{what}: mmap failed: {e}"));
                continue;
            }
        };
        let f0 = minflt();
        let mut bad = 0;
        for p in (0..len).step_by(PAGE) {
            if m.read_u64(p) != pattern(1, off + p as u64) {
                bad += 1;
            }
        }
        // Write through the mapping, read back with pread.
        m.write_u64(8, 0xfeed_0000 + off);
        let mut w = [0u8; 8];
        f.read_exact_at(&mut w, off + 8)?;
        let back = u64::from_ne_bytes(w) == 0xfeed_0000 + off;
        let n = minflt() - f0;
        r.check(
            &name,
            bad == 0 && back,
            format!(
                "{what} on {} mount at {:#x}: {} pages, {bad} wrong, write visible to pread: {back}, {n} faults",
                human(st.bsize),
                m.addr(),
                len / PAGE
            ),
        );
    }
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(())
}

fn send_fd(sock: RawFd, fd: RawFd) -> nix::Result<usize> {
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(sock, &[IoSlice::new(b"F")], &cmsg, MsgFlags::empty(), None)
}

fn recv_fd(sock: RawFd) -> nix::Result<Option<RawFd>> {
    let mut buf = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::empty())?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            return Ok(fds.first().copied());
        }
    }
    Ok(None)
}

/// Two processes, one given the fd over a unix socket (SCM_RIGHTS), see each other's writes.
pub fn share(r: &mut Report, dir: &Path) -> io::Result<()> {
    let st = statfs(dir)?;
    let size = st.bsize;
    let path = dir.join("shared");
    let f = create(&path)?;
    f.set_len(size)?;
    let (a, b) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)?;
    let (a_fd, b_fd) = (a.as_raw_fd(), b.as_raw_fd());
    let off = (size as usize) / 2 + 8 * PAGE;
    let child = fork_child(move || {
        // Child: get the fd, map, check the parent's word, write ours.
        let Ok(Some(fd)) = recv_fd(b_fd) else { return 10 };
        // SAFETY: fd was just received over SCM_RIGHTS and is owned by nobody else here.
        let file = unsafe { File::from_raw_fd(fd) };
        let Ok(m) = Map::shared(&file, size as usize, 0) else { return 11 };
        let mut sock = {
            // SAFETY: b_fd stays open in the child (inherited); ManuallyDrop avoids a double
            // close with the OwnedFd the parent side owns.
            std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(b_fd) })
        };
        let mut go = [0u8; 1];
        if sock.read_exact(&mut go).is_err() {
            return 12;
        }
        if m.read_u64(off) != 0x1111_2222_3333_4444 {
            return 13;
        }
        m.write_u64(off + 8, 0x5555_6666_7777_8888);
        if sock.write_all(b"D").is_err() {
            return 14;
        }
        0
    });
    let m = Map::shared(&f, size as usize, 0)?;
    let flags = m.vmflags().unwrap_or_default();
    send_fd(a_fd, f.as_raw_fd())?;
    m.write_u64(off, 0x1111_2222_3333_4444);
    // SAFETY: a_fd is the parent's socket end, kept open by `a`; ManuallyDrop prevents
    // closing it twice.
    let mut sock = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(a_fd) });
    sock.write_all(b"G")?;
    let mut done = [0u8; 1];
    let got = sock.read_exact(&mut done).is_ok();
    let status = waitpid(child, None)?;
    let seen = m.read_u64(off + 8) == 0x5555_6666_7777_8888;
    r.check(
        &format!("share-scm-rights-{}", human(size)),
        got && seen && matches!(status, WaitStatus::Exited(_, 0)),
        format!(
            "child (fd via SCM_RIGHTS) saw parent's write and parent saw child's: {seen}, child {status:?}"
        ),
    );
    // ptrace-style access (generic_access_phys) through /proc/self/mem.
    let mut w = [0u8; 8];
    let pm = File::open("/proc/self/mem").and_then(|f| f.read_exact_at(&mut w, (m.addr() + off) as u64));
    r.check(
        &format!("proc-pid-mem-{}", human(size)),
        pm.is_ok() && u64::from_ne_bytes(w) == 0x1111_2222_3333_4444,
        format!("read of the mapping via /proc/self/mem: {:?}, value {:#x}", pm, u64::from_ne_bytes(w)),
    );
    let vm: Vec<&str> = flags.split_whitespace().collect();
    r.check(
        &format!("smaps-pfnmap-{}", human(size)),
        vm.contains(&"pf") && vm.contains(&"io") && vm.contains(&"dd"),
        format!("VmFlags: {flags}"),
    );
    drop(m);
    drop(f);
    drop((a, b));
    std::fs::remove_file(&path)?;
    Ok(())
}

/// Wait until the mount reports `want` free blocks (scrubbing finished), up to `secs`.
pub fn wait_free(dir: &Path, want: u64, secs: u64) -> io::Result<u64> {
    let t0 = Instant::now();
    loop {
        let s = statfs(dir)?;
        if s.bfree == want || t0.elapsed() > Duration::from_secs(secs) {
            return Ok(s.bfree);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fill every page of a mapping with the pattern of `tag` (first and last word of each
/// page) and the first 2 MiB completely (the last word of each page keeps the pattern).
fn stamp(m: &Map, tag: u64, base: u64) {
    for p in (0..m.len).step_by(PAGE) {
        m.write_u64(p, pattern(tag, base + p as u64));
        m.write_u64(p + PAGE - 8, pattern(tag, base + p as u64));
    }
    for w in (0..(2 * MIB as usize).min(m.len)).step_by(8) {
        if w % PAGE != PAGE - 8 {
            m.write_u64(w, pattern(tag, base + w as u64) | 1);
        }
    }
}

/// Stamp the whole pool through one file (mapped by a child that exits), unlink it, allocate
/// it again: zeros only. The mappings live in children: memory freed from a file stays
/// quarantined while a process that mapped it lives.
pub fn scrub_unlink(r: &mut Report, dir: &Path) -> io::Result<()> {
    let st = statfs(dir)?;
    let size = st.bfree * st.bsize;
    let pa = dir.join("scrub-a");
    let fa = create(&pa)?;
    fa.set_len(size)?;
    let ea = fiemap(&fa)?;
    in_child(|| match Map::shared(&fa, size as usize, 0) {
        Ok(m) => {
            stamp(&m, 2, 0);
            0
        }
        Err(_) => u64::MAX,
    })?;
    drop(fa);
    std::fs::remove_file(&pa)?;

    let t0 = Instant::now();
    let pb = dir.join("scrub-b");
    let fb = create(&pb)?;
    fb.set_len(size)?; // waits for the scrubber if needed
    let wait = t0.elapsed().as_millis();
    let eb = fiemap(&fb)?;
    let overlap = phys_overlap(&ea, &eb);
    let t1 = Instant::now();
    let nz = in_child(|| match Map::shared(&fb, size as usize, 0) {
        Ok(m) => m.count_nonzero(0, size as usize) as u64,
        Err(_) => u64::MAX,
    })?;
    let scan = t1.elapsed().as_millis();
    let mut buf = vec![0u8; 2 * MIB as usize];
    fb.read_exact_at(&mut buf, size - 2 * MIB)?;
    let rnz = buf.iter().filter(|b| **b != 0).count();
    print_fiemap("scrub-a (before unlink)", &ea);
    print_fiemap("scrub-b (after)", &eb);
    r.check(
        &format!("scrub-unlink-{}", human(st.bsize)),
        overlap == size && nz == 0 && rnz == 0,
        format!(
            "{} (whole pool) stamped, unlinked, reallocated in {wait} ms: {} MiB of the same physical memory, {nz} non-zero words in the mapping (scan {scan} ms), {rnz} non-zero bytes via read()",
            human(size),
            overlap >> 20
        ),
    );
    drop(fb);
    std::fs::remove_file(&pb)?;
    let free = wait_free(dir, st.bfree, 60)?;
    r.check(
        &format!("scrub-free-accounting-{}", human(st.bsize)),
        free == st.bfree,
        format!("free blocks {} before, {free} after unlink", st.bfree),
    );
    Ok(())
}

/// Stamp the pool through one file, shrink it to half, grow it back: the tail reads zeros,
/// the head keeps its data. While the process that mapped the file lives, the shrunk tail is
/// quarantined (a device may still reach it by DMA): not free, not allocatable, counted in
/// /sys/fs/pagelessfs/quarantined_bytes; once it has exited, growing reuses the tail.
pub fn scrub_truncate(r: &mut Report, dir: &Path) -> io::Result<()> {
    let st = statfs(dir)?;
    let ps = st.bsize;
    let size = st.bfree * ps;
    let half = (st.bfree / 2) * ps;
    let p = dir.join("scrub-t");
    let f = create(&p)?;
    f.set_len(size)?;
    let e0 = fiemap(&f)?;
    let q0 = pool_counter("quarantined_bytes")?;
    // The child maps and stamps everything, keeps the mapping across the shrink, and reports
    // what it sees: [quarantined bytes, free blocks, errno of growing back].
    let seen = Map::new(-1, PAGE, 0, libc::MAP_SHARED | libc::MAP_ANONYMOUS)?;
    let mapper = in_child(|| {
        let Ok(m) = Map::shared(&f, size as usize, 0) else { return 1 };
        stamp(&m, 3, 0);
        if f.set_len(half).is_err() {
            return 2;
        }
        seen.write_u64(0, pool_counter("quarantined_bytes").unwrap_or(u64::MAX));
        seen.write_u64(8, statfs(dir).map_or(u64::MAX, |s| s.bfree));
        let grow = f.set_len(size);
        seen.write_u64(16, grow.err().and_then(|e| e.raw_os_error()).unwrap_or(0) as u64);
        drop(m);
        0
    })?;
    let (quarantined, free_while, grow_errno) = (seen.read_u64(0), seen.read_u64(8), seen.read_u64(16));
    let q_ok = mapper == 0
        && quarantined == q0 + (size - half)
        && free_while == 0
        && grow_errno == libc::ENOSPC as u64;
    r.check(
        &format!("quarantine-truncate-{}", human(ps)),
        q_ok,
        format!(
            "shrunk from {} to {} by a process that maps it: quarantined_bytes {q0} -> {quarantined} (want +{}), free blocks {free_while} (want 0), growing back while it lives: {} (want ENOSPC); child result {mapper}",
            human(size),
            human(half),
            size - half,
            if grow_errno == 0 { "succeeded".to_string() } else { format!("errno {grow_errno}") }
        ),
    );

    // The mapper is gone: the tail is scrubbed and growing reuses it.
    f.set_len(size)?;
    let e1 = fiemap(&f)?;
    let old_tail = phys_of_range(&e0, half, size - half);
    let new_tail = phys_of_range(&e1, half, size - half);
    let overlap = phys_overlap(&old_tail, &new_tail);
    let bad = in_child(|| {
        let Ok(m) = Map::shared(&f, size as usize, 0) else { return u64::MAX };
        let tail_nz = m.count_nonzero(half as usize, (size - half) as usize) as u64;
        let head_bad = (0..half as usize)
            .step_by(PAGE)
            .filter(|p| m.read_u64(p + PAGE - 8) != pattern(3, *p as u64))
            .count();
        (tail_nz << 32) | head_bad as u64
    })?;
    let (tail_nz, head_bad) = (bad >> 32, bad & 0xffff_ffff);
    r.check(
        &format!("scrub-truncate-{}", human(ps)),
        overlap == size - half && bad == 0,
        format!(
            "{} stamped, shrunk to {}, grown back after the mapper exited: new tail reuses {} MiB of the old tail, {tail_nz} non-zero words in it, {head_bad} head pages lost their data",
            human(size),
            human(half),
            overlap >> 20
        ),
    );
    drop(f);
    std::fs::remove_file(&p)?;
    wait_free(dir, st.bfree, 60)?;
    Ok(())
}

/// Wait for a child and describe how it ended.
fn child_signal(pid: nix::unistd::Pid) -> io::Result<Option<Signal>> {
    Ok(match waitpid(pid, None)? {
        WaitStatus::Signaled(_, s, _) => Some(s),
        _ => None,
    })
}

/// ENOSPC, EINVAL (size, MAP_PRIVATE), SIGBUS past EOF, EFBIG past EOF, statfs magic.
pub fn errors(r: &mut Report, dir: &Path) -> io::Result<()> {
    let st = statfs(dir)?;
    let ps = st.bsize;
    r.check(
        &format!("statfs-magic-{}", human(ps)),
        st.ftype == PAGELESSFS_MAGIC,
        format!(
            "f_type {:#x}, f_bsize {}, f_blocks {}, f_bfree {}",
            st.ftype,
            human(ps),
            st.blocks,
            st.bfree
        ),
    );

    // ENOSPC: one page more than free; nothing allocated, free unchanged.
    let p = dir.join("big");
    let f = create(&p)?;
    let res = f.set_len((st.bfree + 1) * ps);
    let after = statfs(dir)?;
    let len = f.metadata()?.len();
    r.check(
        &format!("enospc-{}", human(ps)),
        matches!(&res, Err(e) if e.raw_os_error() == Some(libc::ENOSPC))
            && after.bfree == st.bfree
            && len == 0,
        format!(
            "truncate to {} free+1 pages: {}; free blocks {} -> {}, size {len}",
            st.bfree + 1,
            res.as_ref().map(|_| "succeeded".to_string()).unwrap_or_else(errno_name),
            st.bfree,
            after.bfree
        ),
    );

    // EINVAL: size not a multiple of the page size.
    if ps > PAGE as u64 {
        let res = f.set_len(ps + PAGE as u64);
        r.check(
            &format!("einval-size-{}", human(ps)),
            matches!(&res, Err(e) if e.raw_os_error() == Some(libc::EINVAL)),
            format!(
                "truncate to {} on a {} mount: {}",
                human(ps + PAGE as u64),
                human(ps),
                res.as_ref().map(|_| "succeeded".to_string()).unwrap_or_else(errno_name)
            ),
        );
    }

    f.set_len(ps)?;
    // EINVAL for MAP_PRIVATE.
    let res = Map::new(f.as_raw_fd(), ps as usize, 0, libc::MAP_PRIVATE);
    r.check(
        &format!("einval-map-private-{}", human(ps)),
        matches!(&res, Err(e) if e.raw_os_error() == Some(libc::EINVAL)),
        format!(
            "mmap MAP_PRIVATE: {}",
            res.as_ref().map(|_| "succeeded".to_string()).unwrap_or_else(errno_name)
        ),
    );
    drop(res);

    // SIGBUS past EOF (mapping longer than the file), in children that map it themselves.
    let touch_at = |off: usize| {
        let f = &f;
        fork_child(move || {
            let Ok(m) = Map::shared(f, 2 * ps as usize, 0) else { return 1 };
            m.write_u64(off, 7);
            0
        })
    };
    let inside = touch_at(ps as usize - 8);
    let past = touch_at(ps as usize);
    let s_in = waitpid(inside, None)?;
    let s_past = child_signal(past)?;
    r.check(
        &format!("sigbus-past-eof-{}", human(ps)),
        s_past == Some(Signal::SIGBUS) && matches!(s_in, WaitStatus::Exited(_, 0)),
        format!("touch below EOF: {s_in:?}; touch past EOF: {s_past:?}"),
    );

    // write() never extends: EFBIG at EOF, short across it.
    let at = f.write_at(b"x", ps);
    let across = f.write_at(&[1u8; 16], ps - 8);
    r.check(
        &format!("write-past-eof-{}", human(ps)),
        matches!(&at, Err(e) if e.raw_os_error() == Some(libc::EFBIG))
            && matches!(across, Ok(8))
            && f.metadata()?.len() == ps,
        format!(
            "write at EOF: {}; 16 bytes across EOF: {:?}; size stays {}",
            at.as_ref().map(|n| format!("{n} bytes")).unwrap_or_else(errno_name),
            across.as_ref().map_err(errno_name),
            human(f.metadata()?.len())
        ),
    );
    drop(f);
    std::fs::remove_file(&p)?;
    Ok(())
}

/// Print FIEMAP of files like `filefrag -v`, and check the extents are sane.
pub fn fiemap_cmd(r: &mut Report, files: &[PathBuf]) -> io::Result<()> {
    for p in files {
        let f = File::open(p)?;
        let size = f.metadata()?.len();
        let st = statfs(p.parent().unwrap_or(Path::new("/")))?;
        let ext = fiemap(&f)?;
        print_fiemap(&p.display().to_string(), &ext);
        let covered: u64 = ext.iter().map(|e| e.length).sum();
        let aligned = ext
            .iter()
            .all(|e| e.physical % st.bsize == 0 && e.length % st.bsize == 0 && e.logical % st.bsize == 0);
        let last = ext.last().map(|e| e.flags & FIEMAP_EXTENT_LAST != 0).unwrap_or(size == 0);
        let contiguous = ext.windows(2).all(|w| w[0].logical + w[0].length == w[1].logical);
        r.check(
            &format!(
                "fiemap-{}-{}",
                human(st.bsize),
                p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            ),
            covered == size
                && aligned
                && last
                && contiguous
                && ext.iter().all(|e| e.flags & FIEMAP_EXTENT_UNKNOWN == 0),
            format!(
                "{}: {} extent(s) cover {} of {}, aligned to {}: {aligned}, last flagged: {last}",
                p.display(),
                ext.len(),
                human(covered),
                human(size),
                human(st.bsize)
            ),
        );
    }
    Ok(())
}

/// Allocate and map the whole pool (all free space of `dir`), then compare memmap counts.
pub fn hold_pool(r: &mut Report, dir: &Path, base: &Path) -> io::Result<()> {
    let st = statfs(dir)?;
    let size = st.bfree * st.bsize;
    let p = dir.join("hold");
    let f = create(&p)?;
    f.set_len(size)?;
    let m = Map::shared(&f, size as usize, 0)?;
    m.touch();
    let left = statfs(dir)?.bfree;
    r.check("pool-full", left == 0, format!("{} allocated and mapped, {left} blocks left", human(size)));
    memmap_check(r, base, "struct-page-pool-allocated")?;
    drop(m);
    drop(f);
    // Quarantined until this process exits (it mapped the file); the next check's statfs
    // sees it free again.
    std::fs::remove_file(&p)?;
    Ok(())
}

/// delete_module() while mounted must fail and leave the module loaded.
pub fn rmmod_busy(r: &mut Report, module: &str) -> io::Result<()> {
    let name = std::ffi::CString::new(module).map_err(io::Error::other)?;
    // SAFETY: delete_module takes a NUL-terminated module name and flags.
    let rc = unsafe { libc::syscall(libc::SYS_delete_module, name.as_ptr(), libc::O_NONBLOCK) };
    let err = io::Error::last_os_error();
    let loaded = std::fs::read_to_string("/proc/modules")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().next() == Some(module));
    let refcnt = std::fs::read_to_string(format!("/sys/module/{module}/refcnt")).unwrap_or_default();
    let e = err.raw_os_error();
    r.check(
        "rmmod-busy",
        rc != 0 && loaded && (e == Some(libc::EBUSY) || e == Some(libc::EWOULDBLOCK)),
        format!(
            "delete_module({module}) while mounted: {}; still loaded: {loaded}, refcnt {}",
            if rc == 0 { "succeeded".into() } else { errno_name(&err) },
            refcnt.trim()
        ),
    );
    Ok(())
}

static SIGBUS_SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// SIGBUS handler of the stress workers: a shrink took the page away under the mapping.
/// Put an anonymous page there so the faulting access completes, and count it.
extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t; si_addr is the fault address.
    let addr = unsafe { (*info).si_addr() } as usize & !(PAGE - 1);
    // SAFETY: mmap is async-signal-safe; MAP_FIXED replaces one page of the worker's own
    // pagelessfs mapping (the page that faulted), which the worker unmaps as a whole later.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        // SAFETY: restoring the default action is async-signal-safe; the retried access
        // then kills the worker, which the parent reports.
        unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
    }
    SIGBUS_SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

fn install_sigbus_handler() {
    // SAFETY: a zeroed sigaction is a valid starting point; we set the handler and flags.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_sigbus as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO;
    // SAFETY: sa is fully initialised; the handler only uses async-signal-safe calls.
    unsafe { libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) };
}

fn lcg(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    *seed >> 16
}

/// Faulting processes race a truncating/unlinking one for `secs` seconds. The workers map
/// files (sometimes past EOF, sometimes at an odd offset), write random pages and read();
/// a SIGBUS after a concurrent shrink is expected and absorbed. At the end every file is
/// removed and the free space must come back completely.
pub fn stress(r: &mut Report, dirs: &[PathBuf], secs: u64, workers: usize) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let files: Vec<PathBuf> =
        dirs.iter().flat_map(|d| (0..3).map(move |i| d.join(format!("stress{i}")))).collect();
    let pages: Vec<u64> = dirs.iter().map(|d| statfs(d).map(|s| s.bsize)).collect::<io::Result<_>>()?;
    let free0: Vec<u64> = dirs.iter().map(|d| statfs(d).map(|s| s.bfree)).collect::<io::Result<_>>()?;
    // Per-worker counters, shared with the children: [touches, sigbus] per worker.
    let counters = Map::new(-1, PAGE, 0, libc::MAP_SHARED | libc::MAP_ANONYMOUS)?;
    let workers = workers.min(PAGE / 16 - 1);

    let truncater = {
        let (files, pages, counters) = (files.clone(), pages.clone(), &counters);
        fork_child(move || {
            let mut seed = 0x1234_5678u64;
            let mut ops = 0u64;
            while Instant::now() < deadline {
                let x = lcg(&mut seed);
                let i = x as usize % files.len();
                let ps = pages[i / 3];
                let unit = if ps >= 2 * MIB { ps } else { 256 * 1024 };
                if (x >> 8) & 7 == 0 {
                    let _ = std::fs::remove_file(&files[i]);
                } else if let Ok(f) = create(&files[i]) {
                    let _ = f.set_len(((x >> 12) % 9) * unit);
                }
                ops += 1;
            }
            counters.write_u64(PAGE - 8, ops);
            0
        })
    };

    let spawn = |k: usize| {
        let (files, counters) = (files.clone(), &counters);
        fork_child(move || {
            install_sigbus_handler();
            let mut seed = 0x9e37_79b9u64 ^ ((k as u64) << 17);
            let mut touches = 0u64;
            while Instant::now() < deadline {
                let x = lcg(&mut seed);
                let Ok(f) = open_rw(&files[x as usize % files.len()]) else { continue };
                let Ok(len) = f.metadata().map(|m| m.len()) else { continue };
                if len < 2 * PAGE as u64 {
                    continue;
                }
                let off = if x & 4 == 0 { 0 } else { PAGE as u64 };
                let maplen = (len - off + if x & 8 == 0 { 0 } else { 2 * MIB }) as usize;
                let Ok(m) = Map::shared(&f, maplen, off) else { continue };
                for _ in 0..256 {
                    let p = (lcg(&mut seed) as usize % (maplen / PAGE)) * PAGE;
                    m.write_u64(p, seed);
                    touches += 1;
                }
                let mut b = [0u8; 4096];
                let _ = f.read_at(&mut b, lcg(&mut seed) % len);
            }
            counters.write_u64(16 * k, touches);
            counters.write_u64(16 * k + 8, SIGBUS_SEEN.load(std::sync::atomic::Ordering::Relaxed));
            0
        })
    };
    let pids: Vec<nix::unistd::Pid> = (0..workers).map(spawn).collect();
    let mut bad = Vec::new();
    for pid in pids {
        match waitpid(pid, None)? {
            WaitStatus::Exited(_, 0) => {}
            s => bad.push(format!("{s:?}")),
        }
    }
    let tstatus = waitpid(truncater, None)?;
    let touches: u64 = (0..workers).map(|k| counters.read_u64(16 * k)).sum();
    let sigbus: u64 = (0..workers).map(|k| counters.read_u64(16 * k + 8)).sum();
    let ops = counters.read_u64(PAGE - 8);
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    let mut free_ok = true;
    let mut frees = Vec::new();
    for (d, want) in dirs.iter().zip(&free0) {
        let got = wait_free(d, *want, 60)?;
        free_ok &= got == *want;
        frees.push(format!("{}: {want}->{got}", d.display()));
    }
    r.result("stress_touches", touches);
    r.result("stress_sigbus", sigbus);
    r.result("stress_size_changes", ops);
    r.check(
        "stress",
        bad.is_empty() && matches!(tstatus, WaitStatus::Exited(_, 0)) && free_ok && touches > 0 && ops > 0,
        format!(
            "{secs} s: {workers} faulting processes wrote {touches} random pages ({sigbus} SIGBUS after concurrent shrinks, absorbed), {ops} truncates/unlinks; abnormal exits: {}; free blocks back after removal: {}",
            if bad.is_empty() { "none".into() } else { bad.join(",") },
            frees.join(" ")
        ),
    );
    Ok(())
}

/// Write `val` (hex) into a mce-inject debugfs file.
fn inj_write(dir: &Path, file: &str, val: u64) -> io::Result<()> {
    std::fs::write(dir.join(file), format!("{val:#x}\n"))
        .map_err(|e| io::Error::new(e.kind(), format!("{}/{file}: {e}", dir.display())))
}

/// Injects an uncorrected memory error at `phys` with mce-inject (software: through the MCE
/// decode chain, as a patrol-scrub report would come). Returns whether the CPU is Intel.
pub fn inject_uncorrected(inject: &Path, phys: u64) -> io::Result<bool> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let intel = cpuinfo.contains("GenuineIntel");
    // MCi_STATUS: VAL | UC | EN | MISCV | ADDRV, plus a memory error code for the vendor.
    let base: u64 = (1 << 63) | (1 << 61) | (1 << 60) | (1 << 59) | (1 << 58);
    let (bank, status, misc) = if intel {
        (1, base | 0x9f, (2 << 6) | 12) // MCACOD memory read error; MISC: physical, lsb 12
    } else {
        (4, base | (8 << 16), 0) // AMD legacy northbridge DRAM ECC (bank 4, XEC 8)
    };
    inj_write(inject, "status", status)?;
    inj_write(inject, "misc", misc)?;
    inj_write(inject, "addr", phys)?;
    inj_write(inject, "bank", bank)?; // injects
    Ok(intel)
}

/// The file a memory-error check poisons a page of.
struct Victim {
    f: File,
    /// Two huge pages of the mount (at least 2 MiB each), in bytes.
    size: u64,
    /// The file offset of the page to poison, inside the second huge page.
    target: u64,
    /// Its physical address.
    phys: u64,
}

/// Creates `path` (two huge pages of a mount of page size `ps`) with `pattern(tag, offset)` at
/// the start of every page, and picks page `page` of the second huge page as the target. This
/// process never maps the file: the memory of a file that a living process mapped stays
/// quarantined, and the checks count on it coming back once the file is gone.
fn victim(path: &Path, ps: u64, tag: u64, page: u64) -> io::Result<Victim> {
    let size = ps.max(2 * MIB) * 2;
    let f = create(path)?;
    f.set_len(size)?;
    for off in (0..size).step_by(PAGE) {
        f.write_all_at(&pattern(tag, off).to_ne_bytes(), off)?;
    }
    let target = size / 2 + page * PAGE as u64;
    let phys = phys_of_range(&fiemap(&f)?, target, PAGE as u64)
        .first()
        .map(|e| e.physical)
        .ok_or_else(|| io::Error::other("no FIEMAP extent for the target"))?;
    Ok(Victim { f, size, target, phys })
}

/// A software-injected uncorrected memory error (mce-inject) inside a mapped file:
/// the page gets SIGBUS BUS_MCEERR_AR, its neighbours keep working, read() gets EIO,
/// the page never returns to the pool.
pub fn memory_error(r: &mut Report, dir: &Path, inject: &Path) -> io::Result<()> {
    let st = statfs(dir)?;
    let ps = st.bsize;
    let p = dir.join("mce");
    let Victim { f, size, target, phys } = victim(&p, ps, 5, 2)?;
    let intel = inject_uncorrected(inject, phys)?;

    // The decode chain runs from a workqueue: wait for read() to see the poison.
    let mut buf = [0u8; 8];
    let t0 = Instant::now();
    let mut rd = f.read_exact_at(&mut buf, target);
    while rd.is_ok() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
        rd = f.read_exact_at(&mut buf, target);
    }
    let eio = matches!(&rd, Err(e) if e.raw_os_error() == Some(libc::EIO));
    let mut nb = [0u8; 8];
    let neighbour = f.read_exact_at(&mut nb, target - PAGE as u64).is_ok()
        && u64::from_ne_bytes(nb) == pattern(5, target - PAGE as u64);
    r.check(
        &format!("mce-read-eio-{}", human(ps)),
        eio && neighbour,
        format!(
            "{} vendor, error injected at phys {phys:#x} (file offset {target:#x}): read there {}, neighbour page read intact: {neighbour}",
            if intel { "Intel" } else { "AMD" },
            rd.as_ref().map(|_| "succeeded".to_string()).unwrap_or_else(errno_name)
        ),
    );

    // A child maps the file, reads the pages around the poisoned one through its mapping,
    // reports that and its mapping's address, then touches the poisoned page; its SIGBUS
    // handler reports si_code and si_addr through the same pipe.
    let (rfd, wfd) = nix::unistd::pipe()?;
    let wraw = wfd.as_raw_fd();
    let child = fork_child(|| {
        let Ok(m) = Map::shared(&f, size as usize, 0) else { return 1 };
        let around = [0usize, target as usize - PAGE, target as usize + PAGE, size as usize - PAGE];
        let ok_around = around.iter().all(|&off| m.read_u64(off) == pattern(5, off as u64));
        let mut head = [0u8; 16];
        head[..8].copy_from_slice(&u64::from(ok_around).to_ne_bytes());
        head[8..].copy_from_slice(&(m.addr() as u64).to_ne_bytes());
        // SAFETY: wraw is the pipe's write end, open in this child; head is 16 valid bytes.
        if unsafe { libc::write(wraw, head.as_ptr().cast(), head.len()) } != 16 {
            return 2;
        }
        report_sigbus_to(wraw);
        let _ = m.read_u64(target as usize);
        0
    });
    drop(wfd);
    let mut rep = [0u8; 32];
    let got = File::from(rfd).read_exact(&mut rep).is_ok();
    let status = waitpid(child, None)?;
    let word = |i: usize| u64::from_ne_bytes(rep[8 * i..8 * i + 8].try_into().unwrap_or([0; 8]));
    let ok_around = word(0) == 1;
    let expect_addr = word(1) as usize + target as usize;
    let code = word(2) as i64;
    let addr = word(3) as usize;
    r.check(
        &format!("mce-sigbus-mceerr-ar-{}", human(ps)),
        matches!(status, WaitStatus::Exited(_, 3))
            && got
            && code == libc::BUS_MCEERR_AR as i64
            && addr == expect_addr
            && ok_around,
        format!(
            "touching the page: {status:?}, si_code {code} (BUS_MCEERR_AR = {}), si_addr {addr:#x} (page {expect_addr:#x}); other pages of the file still mapped with their data: {ok_around}",
            libc::BUS_MCEERR_AR
        ),
    );
    drop(f);
    std::fs::remove_file(&p)?;

    // The page is retired: after scrubbing, one block fewer is free, and a file taking
    // the whole pool never gets it.
    let free = wait_free(dir, st.bfree - 1, 30)?;
    let q = dir.join("mce-all");
    let fa = create(&q)?;
    fa.set_len(free * ps)?;
    let all = fiemap(&fa)?;
    let has_bad = all.iter().any(|e| phys >= e.physical && phys < e.physical + e.length);
    drop(fa);
    std::fs::remove_file(&q)?;
    r.check(
        &format!("mce-page-retired-{}", human(ps)),
        free == st.bfree - 1 && !has_bad,
        format!(
            "free blocks {} before, {free} after unlink (one {} block lost to the bad page); whole-pool file avoids it: {}",
            st.bfree,
            human(ps),
            !has_bad
        ),
    );
    Ok(())
}

/// Whether this kernel's memory_failure() handles PFNs without struct page through
/// register_pfn_address_space() (6.19 and later).
fn kernel_has_pfn_memory_failure() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut nums = release.trim().split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
    (nums.next().unwrap_or(0), nums.next().unwrap_or(0)) >= (6, 19)
}

/// Reads one 16-byte report (two u64) from a pipe; None at EOF.
fn read_report(fd: std::os::fd::OwnedFd) -> Option<(u64, u64)> {
    let mut rep = [0u8; 16];
    File::from(fd).read_exact(&mut rep).ok()?;
    Some((
        u64::from_ne_bytes(rep[..8].try_into().unwrap_or([0; 8])),
        u64::from_ne_bytes(rep[8..].try_into().unwrap_or([0; 8])),
    ))
}

/// memory_failure() of a page of a mapped file, as the kernel's machine-check handler calls it
/// for an error consumed by a user access (`kill_me_maybe()`), here through
/// /sys/devices/system/memory/hard_offline_page written by the consuming process itself
/// (Debian's kernels have no /dev/mcelog for mce-inject's raise mode). With
/// register_pfn_address_space() (6.19+) that process gets SIGBUS BUS_MCEERR_AR with si_addr in
/// the page, a second mapper with PR_MCE_KILL_EARLY (as QEMU sets) BUS_MCEERR_AO, and the page
/// is retired. Older kernels ignore the PFN: ENXIO ("memory outside kernel control"), no
/// signal, the page stays in use; that outcome is what the checks expect there.
pub fn memory_failure(r: &mut Report, dir: &Path) -> io::Result<()> {
    let st = statfs(dir)?;
    let ps = st.bsize;
    let p = dir.join("mf");
    // Each child maps the file itself (mappings are not inherited across fork) and reports
    // si_addr as an offset into its own mapping.
    let Victim { f, size, target, phys } = victim(&p, ps, 6, 3)?;
    let expect_addr = target;
    let new_api = kernel_has_pfn_memory_failure();

    // The other mapper: early kill, then waits up to 20 s for a signal.
    let (other_r, other_w) = nix::unistd::pipe()?;
    let (ready_r, ready_w) = nix::unistd::pipe()?;
    let (ow, rw) = (other_w.as_raw_fd(), ready_w.as_raw_fd());
    let other = fork_child(|| {
        let Ok(m) = Map::shared(&f, size as usize, 0) else { return 1 };
        MAP_BASE.store(m.addr() as u64, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_MCE_KILL, libc::PR_MCE_KILL_SET, libc::PR_MCE_KILL_EARLY, 0, 0) };
        report_sigbus_to(ow);
        let _ = m.read_u64(target as usize);
        // SAFETY: a one-byte write from a valid buffer.
        unsafe { libc::write(rw, b"r".as_ptr().cast(), 1) };
        std::thread::sleep(Duration::from_secs(20));
        4
    });
    drop((other_w, ready_w));
    let mut ready = [0u8; 1];
    File::from(ready_r).read_exact(&mut ready)?;

    // The consumer: its SIGBUS handler reports (si_code, si_addr); without a signal it reports
    // (0, errno of the write) and exits 5.
    let (cons_r, cons_w) = nix::unistd::pipe()?;
    let cw = cons_w.as_raw_fd();
    let consumer = fork_child(|| {
        let Ok(m) = Map::shared(&f, size as usize, 0) else { return 1 };
        MAP_BASE.store(m.addr() as u64, std::sync::atomic::Ordering::Relaxed);
        report_sigbus_to(cw);
        // It maps the page (faulted in) when it "consumes" the error.
        let _ = m.read_u64(target as usize);
        let res = std::fs::write("/sys/devices/system/memory/hard_offline_page", format!("{phys:#x}\n"));
        let errno = res.err().and_then(|e| e.raw_os_error()).unwrap_or(0) as u64;
        let mut buf = [0u8; 16];
        buf[8..].copy_from_slice(&errno.to_ne_bytes());
        // SAFETY: a write from a valid 16-byte buffer.
        unsafe { libc::write(cw, buf.as_ptr().cast(), buf.len()) };
        5
    });
    drop(cons_w);
    let cons = read_report(cons_r);
    let cons_status = waitpid(consumer, None)?;
    if !new_api {
        // Nothing will signal it: give it a second, then stop waiting.
        std::thread::sleep(Duration::from_secs(1));
        let _ = nix::sys::signal::kill(other, Signal::SIGKILL);
    }
    let oth = read_report(other_r);
    let other_status = waitpid(other, None)?;

    let ar = libc::BUS_MCEERR_AR as u64;
    let ao = libc::BUS_MCEERR_AO as u64;
    let (cons_ok, oth_ok) = if new_api {
        (
            matches!(cons_status, WaitStatus::Exited(_, 3)) && cons == Some((ar, expect_addr)),
            matches!(other_status, WaitStatus::Exited(_, 3)) && oth == Some((ao, expect_addr)),
        )
    } else {
        (
            matches!(cons_status, WaitStatus::Exited(_, 5)) && cons == Some((0, libc::ENXIO as u64)),
            matches!(other_status, WaitStatus::Signaled(_, Signal::SIGKILL, _)) && oth.is_none(),
        )
    };
    let want = if new_api {
        "register_pfn_address_space(): want SIGBUS BUS_MCEERR_AR to the consumer, BUS_MCEERR_AO to the early-kill mapper"
    } else {
        "before 6.19 memory_failure() ignores PFNs without struct page: want ENXIO, no signal"
    };
    r.check(
        &format!("memory-failure-consumer-{}", human(ps)),
        cons_ok,
        format!(
            "{want}; page at file offset {expect_addr:#x} (phys {phys:#x}): consumer {cons_status:?}, report (si_code or 0, si_addr or errno) {cons:x?} (BUS_MCEERR_AR = {ar})"
        ),
    );
    r.check(
        &format!("memory-failure-other-mapper-{}", human(ps)),
        oth_ok,
        format!("{want}; other mapper (PR_MCE_KILL_EARLY) {other_status:?}, report {oth:x?} (BUS_MCEERR_AO = {ao})"),
    );

    // Retired (6.19+: the module learns the PFN from memory_failure()): read() there is EIO
    // once recorded, and after unlink one block less comes back. Before: the data is intact.
    let mut buf = [0u8; 8];
    let t0 = Instant::now();
    let mut rd = f.read_exact_at(&mut buf, target);
    while new_api && rd.is_ok() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
        rd = f.read_exact_at(&mut buf, target);
    }
    let eio = matches!(&rd, Err(e) if e.raw_os_error() == Some(libc::EIO));
    let intact = rd.is_ok() && u64::from_ne_bytes(buf) == pattern(6, target);
    drop(f);
    std::fs::remove_file(&p)?;
    let want_free = if new_api { st.bfree - 1 } else { st.bfree };
    let free = wait_free(dir, want_free, 30)?;
    r.check(
        &format!("memory-failure-retired-{}", human(ps)),
        free == want_free && if new_api { eio } else { intact },
        format!(
            "read() of the page: {}, data intact: {intact}; free blocks {} before, {free} after unlink (want {want_free})",
            rd.as_ref().map(|_| "ok".to_string()).unwrap_or_else(errno_name),
            st.bfree
        ),
    );
    Ok(())
}

/// In a forked child: report SIGBUS (si_code, si_addr) to `fd` and exit 3 (on_mce_sigbus).
fn report_sigbus_to(fd: RawFd) {
    REPORT_FD.store(fd, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: zeroed sigaction, then handler and flags set; the handler only calls
    // async-signal-safe functions.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_mce_sigbus as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO;
    // SAFETY: valid sigaction.
    unsafe { libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) };
}

static REPORT_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
/// Where the reporting child's own mapping starts: si_addr is reported relative to it (0: as is).
static MAP_BASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// SIGBUS handler of the memory-error probe: write si_code and si_addr to REPORT_FD, exit 3.
extern "C" fn on_mce_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t.
    let (code, addr) = unsafe { ((*info).si_code as i64, (*info).si_addr() as u64) };
    let addr = addr.wrapping_sub(MAP_BASE.load(std::sync::atomic::Ordering::Relaxed));
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&code.to_ne_bytes());
    buf[8..].copy_from_slice(&addr.to_ne_bytes());
    let fd = REPORT_FD.load(std::sync::atomic::Ordering::Relaxed);
    // SAFETY: write and _exit are async-signal-safe; buf is a valid 16-byte buffer.
    unsafe {
        libc::write(fd, buf.as_ptr().cast(), buf.len());
        libc::_exit(3);
    }
}
