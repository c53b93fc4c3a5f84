//! Files that survive kexec (driver/kmod/persist.c): `kexec` into another kernel,
//! `persist-snapshot` of the files of pagelessfs mounts (to compare before and after), and
//! `meta-scribble`, which damages the module's metadata area through /dev/mem the way a torn
//! update, a bit flip or an attacker would.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::util::{fiemap, parse_size, pool_counter, Report};

/// Loads KERNEL and INITRD with `kexec_file_load` and reboots into them at once
/// (`reboot(LINUX_REBOOT_CMD_KEXEC)`, no shutdown: nothing is unmounted).
pub fn kexec(kernel: &Path, initrd: &Path, cmdline: &str) -> io::Result<()> {
    let k = File::open(kernel)?;
    let i = File::open(initrd)?;
    let c = CString::new(cmdline).map_err(io::Error::other)?;
    let len = c.as_bytes_with_nul().len();
    // SAFETY: the fds are open files, `c` is a NUL-terminated string of `len` bytes that lives
    // across the call; the kernel only reads them.
    let ret = unsafe {
        libc::syscall(libc::SYS_kexec_file_load, k.as_raw_fd(), i.as_raw_fd(), len, c.as_ptr(), 0u64)
    };
    if ret != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("kexec_file_load({}): {e}", kernel.display())));
    }
    println!("# kexec: loaded {} with {} ({cmdline}); rebooting into it", kernel.display(), initrd.display());
    // SAFETY: plain syscalls without pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::LINUX_REBOOT_CMD_KEXEC);
    }
    Err(io::Error::last_os_error())
}

/// Files up to this size are hashed whole; larger ones 4 KiB of every MiB (enough to see a
/// scrub or a move: the test writes random data into every file).
const HASH_WHOLE: u64 = 16 << 20;

/// A 64-bit hash of a file's content (see [`HASH_WHOLE`]), 8 bytes at a time.
fn content_hash(path: &Path) -> io::Result<u64> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    let (step, piece) = if len <= HASH_WHOLE { (1u64 << 20, 1usize << 20) } else { (1 << 20, 4096) };
    let mut buf = vec![0u8; piece];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut off = 0;
    while off < len {
        let n = piece.min((len - off) as usize);
        f.read_exact_at(&mut buf[..n], off)?;
        for chunk in buf[..n].chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x0100_0000_01b3).rotate_left(29);
        }
        off += step;
    }
    Ok(h)
}

/// Every entry under `dir`, sorted, as snapshot lines; `sizes` gets each regular file's size
/// once per inode.
fn walk(
    dir: &Path,
    shown: &Path,
    lines: &mut Vec<String>,
    sizes: &mut BTreeSet<(u64, u64, u64)>,
) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = shown.join(e.file_name());
        let md = fs::symlink_metadata(&path)?;
        let mode = md.mode();
        if md.is_dir() {
            lines.push(format!("{} d {:o} {} {}", name.display(), mode & 0o7777, md.uid(), md.gid()));
            walk(&path, &name, lines, sizes)?;
        } else {
            let ext = fiemap(&File::open(&path)?)?;
            let ext: Vec<String> =
                ext.iter().map(|x| format!("{:#x}+{:#x}@{:#x}", x.physical, x.length, x.logical)).collect();
            lines.push(format!(
                "{} f {:o} {} {} nlink={} size={} hash={:016x} ext={}",
                name.display(),
                mode & 0o7777,
                md.uid(),
                md.gid(),
                md.nlink(),
                md.len(),
                content_hash(&path)?,
                ext.join(",")
            ));
            sizes.insert((md.dev(), md.ino(), md.len()));
        }
    }
    Ok(())
}

/// Waits until nothing is being scrubbed.
fn wait_scrubbed() -> io::Result<()> {
    for _ in 0..600 {
        if pool_counter("scrubbing_bytes")? == 0 {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(io::Error::other("the pool is still scrubbing after 60 s"))
}

/// Prints `SNAP <tag> …` lines: every directory and file under each mount (mode, owner, size,
/// content hash, physical extents) and the pool's used bytes; checks `<tag>-free-exact`: the
/// pool's free (plus quarantined) bytes are exactly its capacity less the files' sizes, and
/// with `no_quarantine` that nothing is quarantined.
pub fn snapshot(r: &mut Report, tag: &str, mounts: &[PathBuf], no_quarantine: bool) -> io::Result<()> {
    let mut lines = Vec::new();
    let mut sizes = BTreeSet::new();
    for m in mounts {
        let md = fs::metadata(m)?;
        lines.push(format!("{} root {:o} {} {}", m.display(), md.mode() & 0o7777, md.uid(), md.gid()));
        walk(m, m, &mut lines, &mut sizes)?;
    }
    wait_scrubbed()?;
    let capacity = pool_counter("capacity_bytes")?;
    let free = pool_counter("free_bytes")?;
    let quarantined = pool_counter("quarantined_bytes")?;
    let files: u64 = sizes.iter().map(|s| s.2).sum();
    lines.push(format!("pool capacity={capacity} used={}", capacity - free - quarantined));
    for l in &lines {
        println!("SNAP {tag} {l}");
    }
    r.check(
        &format!("{tag}-free-exact"),
        free + quarantined + files == capacity,
        format!(
            "capacity {capacity}, free {free}, quarantined {quarantined}, {} file(s) of {files} bytes",
            sizes.len()
        ),
    );
    if no_quarantine {
        r.check(
            &format!("{tag}-quarantine-empty"),
            quarantined == 0,
            format!("{quarantined} bytes quarantined"),
        );
    }
    Ok(())
}

/// The metadata area's layout (driver/kmod/persist.c, format version 1).
const META_SIZE: u64 = 2 << 20;
const SLOT: u64 = META_SIZE / 2;
const HDR: u64 = 4096;
const MAGIC: u32 = 0x444d_4c50;
const REC_NODE: u16 = 2;

/// Where the module puts the area for `ranges` (`pl_meta_place()`).
fn meta_phys(ranges: &str) -> io::Result<u64> {
    let (mut best, mut any) = (0u64, 0u64);
    for item in ranges.split(',') {
        let (size, start) = item.split_once('@').ok_or_else(|| io::Error::other("SIZE@START"))?;
        let (size, start) =
            (parse_size(size).map_err(io::Error::other)?, parse_size(start).map_err(io::Error::other)?);
        let end = start + size;
        let gib = (end - 1) & !((1u64 << 30) - 1);
        if size <= META_SIZE {
            continue;
        }
        any = any.max(end);
        if gib < start || gib + (1 << 30) > end {
            best = best.max(end);
        }
    }
    let top = if best != 0 { best } else { any };
    if top == 0 {
        return Err(io::Error::other("no range holds the metadata area"));
    }
    Ok(top - META_SIZE)
}

/// The kernel's `crc32_le(~0, …)`: reflected CRC-32 (0xedb88320), no final inversion.
fn crc32_le(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    crc
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// Recomputes a slot's payload and header checksums, as a valid commit would have them.
fn reseal(slot: &mut [u8]) {
    let len = u32_at(slot, 16) as usize;
    let crc = crc32_le(&slot[HDR as usize..HDR as usize + len]);
    slot[20..24].copy_from_slice(&crc.to_le_bytes());
    let magic = u32_at(slot, 0);
    slot[0..4].copy_from_slice(&0u32.to_le_bytes());
    slot[28..32].copy_from_slice(&0u32.to_le_bytes());
    let hdr = crc32_le(&slot[..32 + 64 * 16]);
    slot[28..32].copy_from_slice(&hdr.to_le_bytes());
    slot[0..4].copy_from_slice(&magic.to_le_bytes());
}

/// The payload offsets of the NODE records that have extents, and their first extent.
fn nodes_with_extents(slot: &[u8]) -> Vec<(usize, u64, u64)> {
    let len = u32_at(slot, 16) as usize;
    let (mut p, end) = (HDR as usize, HDR as usize + len);
    let mut out = Vec::new();
    while p + 8 <= end {
        let ty = u16::from_le_bytes([slot[p], slot[p + 1]]);
        let rlen = u32_at(slot, p + 4) as usize;
        if rlen < 8 {
            break;
        }
        if ty == REC_NODE && u32_at(slot, p + 40) > 0 {
            let ext = p + 48;
            out.push((ext, u64_at(slot, ext), u64_at(slot, ext + 8)));
        }
        p += rlen;
    }
    out
}

/// Damages a slot as a torn write would: a payload byte, or a header byte if it has none.
fn flip(slot: &mut [u8]) {
    let at = if u32_at(slot, 16) > 0 { HDR as usize } else { 12 };
    slot[at] ^= 0xff;
}

/// What `meta-scribble` does to the area.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Scribble {
    /// Flip a payload byte of the newest slot: a torn update (the older slot must be believed).
    Torn,
    /// Flip a payload byte of both slots: nothing valid is left (the pool must start empty).
    Both,
    /// Move a file's first extent outside every range, checksums fixed (an attacker's metadata).
    Outside,
    /// Point a file's first extent at another file's, checksums fixed (an attacker's metadata).
    Overlap,
}

/// Damages the metadata of the pool `ranges` (the module unloaded: /dev/mem refuses claimed
/// memory) as `what` says; prints what it did.
pub fn meta_scribble(r: &mut Report, ranges: &str, what: Scribble) -> io::Result<()> {
    let phys = meta_phys(ranges)?;
    let mem = OpenOptions::new().read(true).write(true).open("/dev/mem")?;
    let mut slots = [vec![0u8; SLOT as usize], vec![0u8; SLOT as usize]];
    for (i, s) in slots.iter_mut().enumerate() {
        mem.read_exact_at(s, phys + i as u64 * SLOT)?;
    }
    let gen = |s: &[u8]| if u32_at(s, 0) == MAGIC { Some(u64_at(s, 8)) } else { None };
    let (g0, g1) = (gen(&slots[0]), gen(&slots[1]));
    println!("# meta-scribble: area at {phys:#x}; slot A generation {g0:?}, slot B generation {g1:?}");
    let newest = if g1 > g0 { 1 } else { 0 };
    let mut touched = Vec::new();
    match what {
        Scribble::Torn => {
            flip(&mut slots[newest]);
            touched.push(newest);
        }
        Scribble::Both => {
            for (i, s) in slots.iter_mut().enumerate() {
                flip(s);
                touched.push(i);
            }
        }
        Scribble::Outside | Scribble::Overlap => {
            let nodes = nodes_with_extents(&slots[newest]);
            let Some(&(off, p0, len0)) = nodes.first() else {
                r.check("meta-scribble", false, "no file with extents in the newest slot");
                return Ok(());
            };
            // The volume's page size divides both: keep the extent aligned.
            let align = 1u64 << (p0 | len0).trailing_zeros().min(30);
            let target = match what {
                // Aligned, below every range: the first bytes of RAM.
                Scribble::Outside => 0,
                _ => match nodes.iter().skip(1).find(|n| n.1 % align == 0) {
                    Some(&(_, p1, _)) => p1,
                    None => {
                        r.check("meta-scribble", false, "no second file with an extent aligned alike");
                        return Ok(());
                    }
                },
            };
            println!("# meta-scribble: extent {p0:#x}+{len0:#x} now at {target:#x}");
            slots[newest][off..off + 8].copy_from_slice(&target.to_le_bytes());
            reseal(&mut slots[newest]);
            touched.push(newest);
        }
    }
    for i in touched {
        mem.write_all_at(&slots[i], phys + i as u64 * SLOT)?;
    }
    r.check(&format!("meta-scribble-{what:?}").to_lowercase(), true, format!("area at {phys:#x} changed"));
    Ok(())
}
