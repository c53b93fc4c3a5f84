//! `vfio-reuse`: the attack of issue "DMA isolation", as an attacker would run it. A process
//! maps a pagelessfs file, DMA-maps it with VFIO type1 (QEMU's edu device behind the vIOMMU),
//! then gives the memory back while it keeps its container open: `ftruncate(fd, 0)` through
//! its own fd, or munmap + close + unlink. Another file then takes all the memory it can and
//! writes a secret into every page, and the device reads through the first process's old
//! IOVA. It must never see the secret: the freed memory stays quarantined while the first
//! process lives. Once it has exited, the whole pool is allocatable again and reads zero.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitStatus};

use crate::checks::wait_free;
use crate::isolation::pipe_files;
use crate::util::*;
use crate::vfio::{memfd, random_bytes, Vfio, EDU_BUF, EDU_BUF_SIZE};

/// How the first process gives its memory back.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum GiveBack {
    /// ftruncate(fd, 0) through its own fd.
    Truncate,
    /// munmap, close and unlink.
    Unlink,
}

const IOVA_VICTIM: u64 = 0x100_0000;
const IOVA_SCRATCH: u64 = 0x200_0000;
const MARK: usize = 32;
const DMA_TIMEOUT: Duration = Duration::from_secs(20);

/// What the attacker saw, in a shared page: words, then a message.
struct Findings(Map);

impl Findings {
    const ERROR: usize = 0;
    const VICTIM_PHYS: usize = 1;
    const BEFORE_OK: usize = 2;
    const SECRET_SEEN: usize = 3;
    const OLD_SEEN: usize = 4;
    const PROBES: usize = 5;
    const MSG: usize = 512;

    fn set(&self, word: usize, v: u64) {
        self.0.write_u64(8 * word, v);
    }

    fn get(&self, word: usize) -> u64 {
        self.0.read_u64(8 * word)
    }

    fn fail(&self, what: String) -> i32 {
        let bytes = what.as_bytes();
        let n = bytes.len().min(PAGE - Self::MSG - 8);
        self.set(Self::ERROR, n as u64 + 1);
        for (i, b) in bytes[..n].iter().enumerate() {
            // SAFETY: MSG + n < PAGE, inside the live shared page.
            unsafe { self.0.ptr.add(Self::MSG + i).write_volatile(*b) };
        }
        1
    }

    fn message(&self) -> String {
        let n = self.get(Self::ERROR).saturating_sub(1) as usize;
        // SAFETY: n < PAGE - MSG, inside the live shared page.
        (0..n).map(|i| unsafe { self.0.ptr.add(Self::MSG + i).read_volatile() } as char).collect()
    }
}

pub fn vfio_reuse(r: &mut Report, bdf: &str, dir: &Path, how: GiveBack) -> io::Result<()> {
    let name = format!("dma-isolation-{}", format!("{how:?}").to_lowercase());
    let st = statfs(dir)?;
    let ps = st.bsize;
    let victim = dir.join("dma-victim");
    let secret = random_bytes(MARK)?;
    let old = random_bytes(MARK)?;
    let q0 = pool_counter("quarantined_bytes")?;
    let findings = Findings(Map::new(-1, PAGE, 0, libc::MAP_SHARED | libc::MAP_ANONYMOUS)?);
    let (to_child, mut child_rx) = pipe_files()?;
    let (mut child_tx, mut from_child) = pipe_files()?;
    let mut to_child = Some(to_child);

    let attacker = fork_child(|| {
        drop(to_child.take());
        match attack(bdf, &victim, ps, how, &old, &secret, &findings, &mut child_rx, &mut child_tx) {
            Ok(()) => 0,
            Err(e) => findings.fail(e.to_string()),
        }
    });
    drop(child_rx);
    drop(child_tx);
    let mut to_child = to_child.take().expect("the parent's end");

    // 1. The attacker has freed its memory (or failed).
    let mut freed = [0u8; 1];
    if from_child.read_exact(&mut freed).is_err() {
        let status = waitpid(attacker, None)?;
        r.check(&name, false, format!("the attacker stopped early ({status:?}): {}", findings.message()));
        return Ok(());
    }
    let vphys = findings.get(Findings::VICTIM_PHYS);
    let held = pool_counter("quarantined_bytes")?;

    // 2. A second file takes the whole pool if it can, else all that is free, and writes the
    //    secret into every page (through write(): this process never maps pool memory).
    let now = statfs(dir)?;
    let spy = dir.join("dma-secret");
    let f = create(&spy)?;
    let whole = f.set_len(now.blocks * ps);
    let got = if whole.is_ok() { now.blocks * ps } else { now.bfree * ps };
    if whole.is_err() {
        f.set_len(got)?;
    }
    let mut chunk = vec![0u8; 2 * MIB as usize];
    for page in chunk.chunks_exact_mut(PAGE) {
        page[..MARK].copy_from_slice(&secret);
    }
    for off in (0..got).step_by(chunk.len()) {
        let n = chunk.len().min((got - off) as usize);
        f.write_all_at(&chunk[..n], off)?;
    }
    let ext = fiemap(&f)?;
    let overlap = ext.iter().any(|e| vphys < e.physical + e.length && e.physical < vphys + ps);

    // 3. The attacker's device reads through the old IOVA.
    to_child.write_all(b"A")?;
    let status = waitpid(attacker, None)?;
    let exited = Instant::now();
    let probes = findings.get(Findings::PROBES);
    let seen = findings.get(Findings::SECRET_SEEN);
    let old_seen = findings.get(Findings::OLD_SEEN);
    let ok = matches!(status, WaitStatus::Exited(_, 0))
        && findings.get(Findings::BEFORE_OK) == 1
        && probes > 0
        && seen == 0
        && !overlap
        && held >= q0 + ps;
    r.check(
        &name,
        ok,
        format!(
            "{} file at phys {vphys:#x} DMA-mapped at IOVA {IOVA_VICTIM:#x}, given back by {how:?} with the container open: quarantined_bytes {q0} -> {held}; second file: whole pool ({} blocks) {}, took {} and wrote a secret into every page, {} the freed memory; the device read through the old IOVA at {probes} offsets: secret seen {seen} times, the first file's old data {old_seen} times; attacker {status:?}{}",
            human(ps),
            now.blocks,
            match &whole {
                Ok(()) => "allocated".to_string(),
                Err(e) => errno_name(e),
            },
            human(got),
            if overlap { "INCLUDING" } else { "not including" },
            match findings.message() {
                m if m.is_empty() => String::new(),
                m => format!(": {m}"),
            }
        ),
    );

    // 4. The attacker is gone: the whole pool comes back, scrubbed.
    drop(f);
    std::fs::remove_file(&spy)?;
    let free = wait_free(dir, now.blocks, 10)?;
    let back_ms = exited.elapsed().as_millis();
    let all = dir.join("dma-after");
    let fa = create(&all)?;
    let res = fa.set_len(now.blocks * ps);
    let mut nonzero = 0u64;
    let mut includes = false;
    if res.is_ok() {
        includes = fiemap(&fa)?.iter().any(|e| vphys >= e.physical && vphys < e.physical + e.length);
        let zero = vec![0u8; 2 * MIB as usize];
        let mut buf = vec![0u8; 2 * MIB as usize];
        for off in (0..now.blocks * ps).step_by(buf.len()) {
            fa.read_exact_at(&mut buf, off)?;
            if buf != zero {
                nonzero += 1;
            }
        }
    }
    drop(fa);
    std::fs::remove_file(&all)?;
    r.check(
        &format!("{name}-released"),
        free == now.blocks && res.is_ok() && includes && nonzero == 0,
        format!(
            "after the attacker exited: free blocks {free} of {} within {back_ms} ms; a whole-pool file: {}, includes the freed memory: {includes}, non-zero 2 MiB chunks: {nonzero}",
            now.blocks,
            match &res {
                Ok(()) => "allocated".to_string(),
                Err(e) => errno_name(e),
            }
        ),
    );
    Ok(())
}

/// The attacker's side: everything in this (child) process.
#[allow(clippy::too_many_arguments)]
fn attack(
    bdf: &str,
    victim: &Path,
    ps: u64,
    how: GiveBack,
    old: &[u8],
    secret: &[u8],
    findings: &Findings,
    rx: &mut File,
    tx: &mut File,
) -> io::Result<()> {
    let vfio = Vfio::open(bdf)?;
    let mut dev = vfio.device(bdf)?;
    dev.enable_bus_master()?;
    let file = create(victim)?;
    file.set_len(0)?;
    file.set_len(ps)?;
    let phys = fiemap(&file)?.first().map(|e| e.physical).ok_or_else(|| io::Error::other("no extent"))?;
    findings.set(Findings::VICTIM_PHYS, phys);
    let map = Map::shared(&file, ps as usize, 0)?;
    for page in (0..ps as usize).step_by(PAGE) {
        for (i, b) in old.iter().enumerate() {
            // SAFETY: page + i < ps, inside the live writable mapping.
            unsafe { map.ptr.add(page + i).write_volatile(*b) };
        }
    }
    vfio.map_dma(map.addr(), IOVA_VICTIM, ps)?;
    let scratch = memfd(c"dma-scratch")?;
    scratch.set_len(2 * MIB)?;
    let smap = Map::shared(&scratch, 2 * MIB as usize, 0)?;
    vfio.map_dma(smap.addr(), IOVA_SCRATCH, 2 * MIB)?;
    let probe = |off: u64| -> io::Result<Vec<u8>> {
        dev.edu_dma(IOVA_VICTIM + off, EDU_BUF, EDU_BUF_SIZE, false, DMA_TIMEOUT)?;
        dev.edu_dma(EDU_BUF, IOVA_SCRATCH, EDU_BUF_SIZE, true, DMA_TIMEOUT)?;
        // SAFETY: MARK bytes at the start of the live scratch mapping, written by the device.
        Ok((0..MARK).map(|i| unsafe { smap.ptr.add(i).read_volatile() }).collect())
    };
    findings.set(Findings::BEFORE_OK, u64::from(probe(0)? == old));

    match how {
        GiveBack::Truncate => file.set_len(0)?,
        GiveBack::Unlink => {
            drop(map);
            drop(file);
            std::fs::remove_file(victim)?;
        }
    }
    tx.write_all(b"F")?;
    let mut go = [0u8; 1];
    rx.read_exact(&mut go)?;

    let offsets = [0, ps / 2, ps - PAGE as u64];
    for off in offsets {
        let seen = probe(off)?;
        if seen == secret {
            findings.set(Findings::SECRET_SEEN, findings.get(Findings::SECRET_SEEN) + 1);
        }
        if seen == old {
            findings.set(Findings::OLD_SEEN, findings.get(Findings::OLD_SEEN) + 1);
        }
        findings.set(Findings::PROBES, findings.get(Findings::PROBES) + 1);
    }
    Ok(())
}
