//! `pageless host up`, `down` and `check`: load the module with the configured ranges, mount the
//! pools, undo it, and verify a booted host.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use super::config::{HostConfig, Mount, Range};
use super::iomem::{Iomem, IomemError};
use crate::context::{Context, IoError};

/// The module's name in `/sys/module` and for `modprobe`/`rmmod`.
pub const MODULE: &str = "pageless";
/// The filesystem type the module registers.
pub const FSTYPE: &str = "pagelessfs";
/// `statfs` `f_type` of pagelessfs (`PAGELESSFS_MAGIC`, "PGLS").
pub const PAGELESSFS_MAGIC: u64 = 0x5047_4c53;
const PAT_MEMTYPE_LIST: &str = "/sys/kernel/debug/x86/pat_memtype_list";

/// Why `host up`/`down`/`check` stopped.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The config is missing or wrong.
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    /// A file or system call failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// `/proc/iomem` is unusable.
    #[error(transparent)]
    Iomem(#[from] IomemError),
    /// The module is loaded differently from the config, or would not load or unload.
    #[error("module {MODULE}: {0}")]
    Module(String),
    /// A mount point is taken, mounted differently, or cannot be mounted or unmounted.
    #[error("{path}: {message}")]
    Mount {
        /// The mount point.
        path: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// `host check` found problems (each printed with its fix).
    #[error("{0} check(s) failed (see above for the fixes)")]
    Checks(usize),
}

/// A line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The filesystem type.
    pub fstype: String,
    /// The filesystem's own options (`pagesize=1G,uid=…`).
    pub super_options: String,
}

/// Parses `/proc/self/mountinfo` (mount points with `\040`-style escapes undone); malformed lines
/// are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            if sep < 6 || fields.len() < sep + 4 {
                return None;
            }
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(fields[4])),
                fstype: fields[sep + 1].to_string(),
                super_options: fields[sep + 3].to_string(),
            })
        })
        .collect()
}

fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let value = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a pagelessfs mount's options (as the module shows them) are the configured ones;
/// `Err` lists the differences. `node=` is compared when the module shows it.
pub fn options_match(mount: &Mount, super_options: &str) -> Result<(), String> {
    let shown = |key: &str| {
        super_options
            .split(',')
            .find_map(|o| o.strip_prefix(key).and_then(|v| v.strip_prefix('=')).map(str::to_string))
    };
    let mut wrong = Vec::new();
    let mut expect = |key: &str, want: Option<String>| {
        let have = shown(key);
        if have != want {
            wrong.push(format!(
                "{key}={} (configured: {})",
                have.as_deref().unwrap_or("default"),
                want.as_deref().unwrap_or("default")
            ));
        }
    };
    expect("pagesize", Some(mount.pagesize.to_string()));
    expect("uid", mount.uid.filter(|u| *u != 0).map(|u| u.to_string()));
    expect("gid", mount.gid.filter(|g| *g != 0).map(|g| g.to_string()));
    expect("mode", mount.mode.filter(|m| *m != 0o755).map(|m| format!("{m:o}")));
    if shown("node").is_some() {
        expect("node", mount.node.map(|n| n.to_string()));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join(", "))
    }
}

fn mounts() -> Result<Vec<MountEntry>, IoError> {
    Ok(parse_mountinfo(
        &std::fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?,
    ))
}

/// The top mount at `path` (resolving symlinks in `path` if it exists).
fn mounted_at(all: &[MountEntry], path: &Path) -> Option<MountEntry> {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    all.iter().rev().find(|m| m.mount_point == real).cloned()
}

/// The ranges the loaded module was given, or `None` if it is not loaded. Items that do not
/// parse are returned as an error with the raw text.
fn loaded_ranges() -> Result<Option<Result<Vec<Range>, String>>, IoError> {
    let dir = Path::new("/sys/module").join(MODULE);
    if !dir.join("initstate").exists() {
        return Ok(None);
    }
    let path = dir.join("parameters/ranges");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let text = text.trim();
    let parsed: Result<Vec<Range>, String> =
        text.split(',').map(|item| Range::parse(item).map_err(|_| text.to_string())).collect();
    Ok(Some(parsed.map(|mut r| {
        r.sort();
        r
    })))
}

fn same_ranges(config: &HostConfig, loaded: &[Range]) -> bool {
    let mut want = config.ranges.clone();
    want.sort();
    want == loaded
}

/// The last few kernel log lines that mention `needle` (from `/dev/kmsg`; empty if unreadable).
pub fn kernel_log(needle: &str, last: usize) -> Vec<String> {
    let Ok(mut kmsg) =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open("/dev/kmsg")
    else {
        return Vec::new();
    };
    let mut lines = std::collections::VecDeque::new();
    let mut buf = vec![0u8; 8192];
    for _ in 0..100_000 {
        match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let record = String::from_utf8_lossy(&buf[..n]);
                let message = record.split_once(';').map_or(&*record, |(_, m)| m);
                let message = message.lines().next().unwrap_or_default();
                if message.contains(needle) {
                    lines.push_back(message.to_string());
                    if lines.len() > last {
                        lines.pop_front();
                    }
                }
            }
            // EPIPE: a record was overwritten while reading; go on with the next.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    lines.into()
}

/// `pageless host up`: loads the module with the configured ranges (unless it is loaded with
/// them already) and mounts every configured pool (unless mounted with the same options).
pub fn up(config: &HostConfig, out: &mut dyn Write) -> Result<(), HostError> {
    let param = config.ranges_param();
    match loaded_ranges()? {
        Some(Ok(loaded)) if same_ranges(config, &loaded) => {
            say(out, &format!("module {MODULE}: already loaded with ranges={param}"));
        }
        Some(loaded) => {
            let shown = match loaded {
                Ok(r) => r.iter().map(Range::to_string).collect::<Vec<_>>().join(","),
                Err(raw) => raw,
            };
            return Err(HostError::Module(format!(
                "loaded with ranges={shown}, but the config says ranges={param}: run `pageless host down` \
                 (or unmount every pagelessfs and `rmmod {MODULE}`), then `pageless host up`"
            )));
        }
        None => {
            let mut command = match &config.module {
                Some(path) => {
                    let mut c = Command::new("insmod");
                    c.arg(path);
                    c
                }
                None => {
                    let mut c = Command::new("modprobe");
                    c.arg(MODULE);
                    c
                }
            };
            command.arg(format!("ranges={param}"));
            let shown = format!("{command:?}").replace('"', "");
            let output = command.output().with_context(|| format!("run {shown}"))?;
            if !output.status.success() {
                let log = kernel_log("pageless:", 3);
                let hint = if config.module.is_none() {
                    " (not installed? install the pageless DKMS package, or set module = \"/path/pageless.ko\")"
                } else {
                    ""
                };
                return Err(HostError::Module(format!(
                    "`{shown}` failed: {}{hint}{}",
                    String::from_utf8_lossy(&output.stderr).trim(),
                    if log.is_empty() {
                        String::from("; see `dmesg | grep pageless`")
                    } else {
                        format!("; kernel log: {}", log.join(" | "))
                    }
                )));
            }
            say(out, &format!("module {MODULE}: loaded with ranges={param} ({shown})"));
        }
    }
    for mount in &config.mounts {
        let path = mount.path.display().to_string();
        let options = mount.options();
        let mount_error = |message: String| HostError::Mount { path: path.clone(), message };
        match mounted_at(&mounts()?, &mount.path) {
            Some(m) if m.fstype == FSTYPE => match options_match(mount, &m.super_options) {
                Ok(()) => say(out, &format!("{path}: already mounted ({})", m.super_options)),
                Err(diff) => {
                    return Err(mount_error(format!(
                        "mounted with other options: {diff}; unmount it (`umount {path}`, after stopping \
                         the VMs using it), then `pageless host up`"
                    )))
                }
            },
            Some(m) => {
                return Err(mount_error(format!(
                    "a {} filesystem is mounted there; pick another path in the config or unmount it",
                    m.fstype
                )))
            }
            None => {
                std::fs::create_dir_all(&mount.path).with_context(|| format!("create {path}"))?;
                nix::mount::mount(
                    Some("none"),
                    &mount.path,
                    Some(FSTYPE),
                    MsFlags::empty(),
                    Some(options.as_str()),
                )
                .map_err(|e| {
                    let log = kernel_log("pagelessfs", 1);
                    mount_error(format!(
                        "mount -t {FSTYPE} -o {options}: {e}{}",
                        log.first().map_or(String::new(), |l| format!(" (kernel log: {l})"))
                    ))
                })?;
                say(out, &format!("{path}: mounted ({options})"));
            }
        }
    }
    Ok(())
}

/// `pageless host down`: unmounts the configured pools and unloads the module. Refuses while a
/// pool holds files (VM memory) or is in use, and while the module is in use.
pub fn down(config: &HostConfig, out: &mut dyn Write) -> Result<(), HostError> {
    for mount in config.mounts.iter().rev() {
        let path = mount.path.display().to_string();
        let mount_error = |message: String| HostError::Mount { path: path.clone(), message };
        match mounted_at(&mounts()?, &mount.path) {
            Some(m) if m.fstype == FSTYPE => {}
            _ => {
                say(out, &format!("{path}: not mounted"));
                continue;
            }
        }
        let names: Vec<String> = std::fs::read_dir(&mount.path)
            .with_context(|| format!("list {path}"))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .take(11)
            .collect();
        if !names.is_empty() {
            let more = if names.len() > 10 { ", …" } else { "" };
            return Err(mount_error(format!(
                "holds {} ({}{more}): VM memory that unmounting would throw away; stop those VMs' owners \
                 (`pageless stop --vm NAME`), remove the files, then run `pageless host down` again",
                if names.len() == 1 { "a file" } else { "files" },
                names.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        match nix::mount::umount2(&mount.path, MntFlags::empty()) {
            Ok(()) => say(out, &format!("{path}: unmounted")),
            Err(Errno::EBUSY) => {
                return Err(mount_error(format!(
                    "in use (a process has something there open, or is inside it): `fuser -vm {path}` \
                     shows who; stop it, then run `pageless host down` again"
                )))
            }
            Err(e) => return Err(mount_error(format!("umount: {e}"))),
        }
    }
    if loaded_ranges()?.is_none() {
        say(out, &format!("module {MODULE}: not loaded"));
        return Ok(());
    }
    let others: Vec<String> = mounts()?
        .into_iter()
        .filter(|m| m.fstype == FSTYPE)
        .map(|m| m.mount_point.display().to_string())
        .collect();
    if !others.is_empty() {
        return Err(HostError::Module(format!(
            "still in use by pagelessfs mounts the config does not list: {}; unmount them, then run \
             `pageless host down` again",
            others.join(", ")
        )));
    }
    let output = Command::new("rmmod").arg(MODULE).output().context("run rmmod pageless")?;
    if !output.status.success() {
        let quarantined = std::fs::read_to_string("/sys/fs/pagelessfs/quarantined_bytes").unwrap_or_default();
        return Err(HostError::Module(format!(
            "`rmmod {MODULE}` failed: {}; with nothing mounted, the module stays while freed memory is \
             quarantined until the processes that mapped it exit (quarantined_bytes: {}): stop them and \
             run `pageless host down` again",
            String::from_utf8_lossy(&output.stderr).trim(),
            quarantined.trim()
        )));
    }
    say(out, &format!("module {MODULE}: unloaded"));
    Ok(())
}

/// One result of `host check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What was checked.
    pub what: String,
    /// What was found.
    pub detail: String,
    /// `None` if fine, else what to do.
    pub fix: Option<String>,
}

/// Whether `range` is reserved boot memory: all of it `Reserved` in `/proc/iomem`, none of it
/// System RAM.
pub fn check_reserved(iomem: &Iomem, range: &Range) -> Finding {
    let what = format!("range {range} reserved");
    let ram = iomem.covered_by(range.start, range.end(), "System RAM");
    let reserved = iomem.covered_by(range.start, range.end(), "Reserved");
    let boot = format!(
        "boot with {} on the kernel command line (`pageless host plan` prints the GRUB line; check \
         /proc/cmdline after the reboot)",
        range.memmap()
    );
    if ram > 0 {
        Finding {
            what,
            detail: format!("{} of it is System RAM: the kernel uses it", pageless_pool::size::Size(ram)),
            fix: Some(boot),
        }
    } else if reserved < range.size {
        Finding {
            what,
            detail: format!("only {} of {} is Reserved in /proc/iomem", reserved, range.size),
            fix: Some(format!(
                "{boot}; the range must lie in RAM the firmware reports (see /sys/firmware/memmap)"
            )),
        }
    } else {
        Finding { what, detail: "Reserved in /proc/iomem, not System RAM".into(), fix: None }
    }
}

/// Whether the x86 PAT memtype list has `range` wholly write-back (`Ok(None)` if it cannot be
/// read).
pub fn pat_write_back(list: &str, range: &Range) -> Result<(), String> {
    let mut covered = Vec::new();
    for line in list.lines() {
        let Some(rest) = line.strip_prefix("PAT: [mem ") else { continue };
        let Some((span, kind)) = rest.split_once("] ") else { continue };
        let Some((s, e)) = span.split_once('-') else { continue };
        let hex = |t: &str| u64::from_str_radix(t.trim_start_matches("0x"), 16).ok();
        let (Some(s), Some(e)) = (hex(s), hex(e)) else { continue };
        if e <= range.start || range.end() <= s {
            continue;
        }
        if kind.trim() != "write-back" {
            return Err(format!("[{s:#x}-{e:#x}] is {}", kind.trim()));
        }
        covered.push((s, e));
    }
    let covered: u64 =
        super::iomem::intersect(&covered, &[(range.start, range.end())]).iter().map(|(s, e)| e - s).sum();
    if covered < range.size {
        return Err(format!("no write-back entry covers all of it ({covered} of {} bytes)", range.size));
    }
    Ok(())
}

/// `pageless host check`: every check, each with what to do if it failed.
pub fn check(config: &HostConfig) -> Result<Vec<Finding>, HostError> {
    let iomem = Iomem::parse(&std::fs::read_to_string("/proc/iomem").context("read /proc/iomem")?)?;
    let mut findings: Vec<Finding> = config.ranges.iter().map(|r| check_reserved(&iomem, r)).collect();

    let loaded = loaded_ranges()?;
    let param = config.ranges_param();
    let up = "run `pageless host up`".to_string();
    findings.push(match &loaded {
        None => Finding {
            what: format!("module {MODULE} loaded"),
            detail: "not loaded".into(),
            fix: Some(up.clone()),
        },
        Some(Ok(r)) if same_ranges(config, r) => {
            Finding { what: format!("module {MODULE} loaded"), detail: format!("ranges={param}"), fix: None }
        }
        Some(other) => Finding {
            what: format!("module {MODULE} loaded"),
            detail: format!("with other ranges ({other:?}), configured ranges={param}"),
            fix: Some("run `pageless host down`, then `pageless host up`".into()),
        },
    });
    let module_ok = matches!(&loaded, Some(Ok(r)) if same_ranges(config, r));
    let pat = std::fs::read_to_string(PAT_MEMTYPE_LIST);
    for range in &config.ranges {
        let claimed = iomem.covered_by(range.start, range.end(), MODULE) == range.size;
        let what = format!("range {range} write-back");
        findings.push(match (&pat, module_ok && claimed) {
            (_, false) => Finding {
                what,
                detail: "the module has not claimed it (no `pageless` entry in /proc/iomem)".into(),
                fix: Some(up.clone()),
            },
            (Ok(list), true) => match pat_write_back(list, range) {
                Ok(()) => Finding { what, detail: format!("write-back in {PAT_MEMTYPE_LIST}"), fix: None },
                Err(why) => Finding {
                    what,
                    detail: why,
                    fix: Some(
                        "an MTRR or another mapping makes it uncached: check the firmware's MTRR setup \
                               (/proc/mtrr) and pick other ranges with `pageless host plan`"
                            .into(),
                    ),
                },
            },
            (Err(_), true) => Finding {
                what,
                detail: format!(
                    "claimed by the module, which refuses to load unless its mapping is write-back \
                     ({PAT_MEMTYPE_LIST} not readable: mount debugfs to see the PAT entry)"
                ),
                fix: None,
            },
        });
    }

    let all = mounts()?;
    for mount in &config.mounts {
        let what = format!("{} mounted", mount.path.display());
        findings.push(match mounted_at(&all, &mount.path) {
            Some(m) if m.fstype == FSTYPE => match options_match(mount, &m.super_options) {
                Ok(()) => Finding { what, detail: m.super_options, fix: None },
                Err(diff) => Finding {
                    what,
                    detail: format!("with other options: {diff}"),
                    fix: Some(format!(
                        "unmount it (after stopping its VMs), then run `pageless host up`; configured: {}",
                        mount.options()
                    )),
                },
            },
            Some(m) => Finding {
                what,
                detail: format!("a {} filesystem is mounted there", m.fstype),
                fix: Some("unmount it, then run `pageless host up`".into()),
            },
            None => Finding { what, detail: "not mounted".into(), fix: Some(up.clone()) },
        });
    }
    for (node, spec) in &config.pools {
        let what = format!("pool for node {node}");
        let Some(dir) = spec.strip_prefix("pagelessfs:").map(PathBuf::from) else {
            findings.push(Finding { what, detail: spec.clone(), fix: None });
            continue;
        };
        let fix = Some(format!("run `pageless host up` (or mkdir {} on its mount)", dir.display()));
        findings.push(match nix::sys::statfs::statfs(&dir) {
            Ok(fs) if fs.filesystem_type().0 as u64 == PAGELESSFS_MAGIC => {
                Finding { what, detail: format!("{spec} (on pagelessfs)"), fix: None }
            }
            Ok(_) => Finding { what, detail: format!("{spec}: {} is not on pagelessfs", dir.display()), fix },
            Err(e) => Finding { what, detail: format!("{spec}: {}: {e}", dir.display()), fix },
        });
    }
    Ok(findings)
}

/// Prints findings as `ok   WHAT: DETAIL` / `FAIL WHAT: DETAIL` + `     fix: …`.
pub fn render_findings(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        match &f.fix {
            None => out.push_str(&format!("ok   {}: {}\n", f.what, f.detail)),
            Some(fix) => out.push_str(&format!("FAIL {}: {}\n     fix: {fix}\n", f.what, f.detail)),
        }
    }
    out
}

fn say(out: &mut dyn Write, line: &str) {
    // Output that cannot be written (a closed pipe) does not change what was done.
    let _ = writeln!(out, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::config::PageSize;

    #[test]
    fn mountinfo() {
        let text = "36 25 0:32 / /mnt/pageless/node\\0400 rw,relatime shared:1 - pagelessfs none rw,pagesize=1G,uid=5\n\
                    bad line\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount_point, Path::new("/mnt/pageless/node 0"));
        assert_eq!(
            (m[0].fstype.as_str(), m[0].super_options.as_str()),
            ("pagelessfs", "rw,pagesize=1G,uid=5")
        );
    }

    #[test]
    fn mount_options() {
        let mut mount = Mount {
            path: "/m".into(),
            pagesize: PageSize::G1,
            node: Some(1),
            uid: Some(5),
            gid: None,
            mode: Some(0o700),
        };
        assert_eq!(options_match(&mount, "rw,pagesize=1G,uid=5,mode=700"), Ok(()));
        assert_eq!(options_match(&mount, "rw,pagesize=1G,uid=5,mode=700,node=1"), Ok(()));
        let e = options_match(&mount, "rw,pagesize=2M,mode=700,node=0").unwrap_err();
        assert!(
            e.contains("pagesize=2M (configured: 1G)") && e.contains("uid=default") && e.contains("node=0"),
            "{e}"
        );
        mount.mode = Some(0o755);
        mount.uid = Some(0);
        assert_eq!(options_match(&mount, "rw,pagesize=1G"), Ok(()));
    }

    #[test]
    fn reserved_ranges() {
        let iomem = Iomem::parse(
            "100000000-13fffffff : Reserved\n  100000000-13fffffff : pageless\n140000000-17fffffff : System RAM\n",
        )
        .unwrap();
        let ok = check_reserved(&iomem, &Range::parse("1G@4G").unwrap());
        assert_eq!(ok.fix, None, "{ok:?}");
        let ram = check_reserved(&iomem, &Range::parse("1G@5G").unwrap());
        assert!(ram.detail.contains("1G of it is System RAM") && ram.fix.unwrap().contains("memmap=1G$5G"));
        let hole = check_reserved(&iomem, &Range::parse("1G@8G").unwrap());
        assert!(hole.detail.contains("only 0 of"), "{hole:?}");
        assert_eq!(iomem.covered_by(4 << 30, 5 << 30, MODULE), 1 << 30);
    }

    #[test]
    fn pat_list() {
        let range = Range::parse("1G@4G").unwrap();
        let wb = "PAT: [mem 0x00000000fed00000-0x00000000fed01000] uncached-minus\n\
                  PAT: [mem 0x0000000100000000-0x0000000140000000] write-back\n";
        assert_eq!(pat_write_back(wb, &range), Ok(()));
        let uc = "PAT: [mem 0x0000000100000000-0x0000000140000000] uncached-minus\n";
        assert!(pat_write_back(uc, &range).unwrap_err().contains("uncached-minus"));
        assert!(pat_write_back("", &range).unwrap_err().contains("no write-back entry"));
    }
}
