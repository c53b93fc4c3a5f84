//! `/proc/iomem`: the kernel's map of physical address space, parsed without trusting it.

use std::fmt;

/// The most lines read: real maps have a few hundred.
const MAX_LINES: usize = 100_000;
/// Longer names are cut (resource names are short).
const MAX_NAME: usize = 128;

/// One line of `/proc/iomem`: `  100000000-13fffffff : System RAM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// First byte.
    pub start: u64,
    /// One past the last byte (the file shows the last byte; an entry ending at `u64::MAX` is
    /// cut one byte short).
    pub end: u64,
    /// The resource's name, e.g. `System RAM`, `Reserved`, `Kernel code`, `Crash kernel`.
    pub name: String,
    /// Nesting level: 0 for top-level entries, 1 for their children, …
    pub depth: usize,
}

/// `/proc/iomem` could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IomemError {
    /// A line that is not `START-END : NAME`.
    #[error("/proc/iomem line {line}: cannot parse {text:?}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// The line (cut to 80 characters).
        text: String,
    },
    /// Every address reads as 0: the kernel hides them from users without CAP_SYS_ADMIN.
    #[error("/proc/iomem shows every address as 0: run as root (it hides addresses from other users)")]
    Hidden,
    /// Nothing in it.
    #[error("/proc/iomem is empty")]
    Empty,
}

/// The parsed map, in file order (parents before their children).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Iomem {
    /// Every entry.
    pub entries: Vec<Entry>,
}

impl Iomem {
    /// Parses the text of `/proc/iomem`.
    pub fn parse(text: &str) -> Result<Iomem, IomemError> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate().take(MAX_LINES) {
            if line.trim().is_empty() {
                continue;
            }
            let malformed = || IomemError::Malformed { line: i + 1, text: line.chars().take(80).collect() };
            let indent = line.len() - line.trim_start_matches(' ').len();
            let (range, name) = line.trim_start_matches(' ').split_once(" : ").ok_or_else(malformed)?;
            let (start, last) = range.split_once('-').ok_or_else(malformed)?;
            let hex = |s: &str| {
                if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    None
                } else {
                    u64::from_str_radix(s, 16).ok()
                }
            };
            let (start, last) = (hex(start).ok_or_else(malformed)?, hex(last).ok_or_else(malformed)?);
            if last < start {
                return Err(malformed());
            }
            entries.push(Entry {
                start,
                end: last.saturating_add(1),
                name: name.chars().take(MAX_NAME).collect(),
                depth: indent / 2,
            });
        }
        if entries.is_empty() {
            return Err(IomemError::Empty);
        }
        if entries.iter().all(|e| e.start == 0 && e.end <= 1) {
            return Err(IomemError::Hidden);
        }
        Ok(Iomem { entries })
    }

    /// Top-level `System RAM` ranges, `[start, end)`, sorted.
    pub fn system_ram(&self) -> Vec<(u64, u64)> {
        let mut ram: Vec<_> = self
            .entries
            .iter()
            .filter(|e| e.depth == 0 && e.name == "System RAM")
            .map(|e| (e.start, e.end))
            .collect();
        ram.sort_unstable();
        ram
    }

    /// Everything nested in top-level `System RAM` (the kernel image's `Kernel code`/`rodata`/
    /// `data`/`bss`, `Crash kernel`, …): taken, never to be reserved.
    pub fn inside_system_ram(&self) -> Vec<&Entry> {
        let mut in_ram = false;
        let mut inside = Vec::new();
        for e in &self.entries {
            if e.depth == 0 {
                in_ram = e.name == "System RAM";
            } else if in_ram {
                inside.push(e);
            }
        }
        inside
    }

    /// How many bytes of `[start, end)` the entries named `name` (at any level) cover.
    pub fn covered_by(&self, start: u64, end: u64, name: &str) -> u64 {
        let parts: Vec<(u64, u64)> =
            self.entries.iter().filter(|e| e.name == name).map(|e| (e.start, e.end)).collect();
        let mut covered = intersect(&merge(parts), &[(start, end)]);
        covered.dedup();
        covered.iter().map(|(s, e)| e - s).sum()
    }
}

impl fmt::Display for Entry {
    /// `[0x1000000-0x22090c7] Kernel code` (last byte inclusive, as /proc/iomem shows it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}-{:#x}] {}", self.start, self.end.saturating_sub(1), self.name)
    }
}

/// Sorted, merged ranges (adjacent and overlapping ones joined; empty ones dropped).
pub fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.retain(|(s, e)| s < e);
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The parts of `a` that are also in `b` (both as ranges `[start, end)`), merged.
pub fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(s1, e1) in a {
        for &(s2, e2) in b {
            let (s, e) = (s1.max(s2), e1.min(e2));
            if s < e {
                out.push((s, e));
            }
        }
    }
    merge(out)
}

/// The parts of `a` not in any range of `b`.
pub fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = merge(a.to_vec());
    for &(bs, be) in b {
        let mut next = Vec::new();
        for (s, e) in out {
            if be <= s || e <= bs {
                next.push((s, e));
                continue;
            }
            if s < bs {
                next.push((s, bs));
            }
            if be < e {
                next.push((be, e));
            }
        }
        out = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nesting_and_names() {
        let iomem = Iomem::parse(
            "00000000-00000fff : Reserved\n00100000-bfffffff : System RAM\n  01000000-022090c7 : Kernel code\n  \
             2b000000-32ffffff : Crash kernel\nfec00000-fec003ff : IOAPIC 0\n100000000-63fffffff : System RAM\n",
        )
        .unwrap();
        assert_eq!(iomem.system_ram(), vec![(0x100000, 0xc000_0000), (0x1_0000_0000, 0x6_4000_0000)]);
        let inside: Vec<_> = iomem.inside_system_ram().iter().map(|e| e.name.clone()).collect();
        assert_eq!(inside, ["Kernel code", "Crash kernel"]);
        assert_eq!(iomem.covered_by(0, 0x2000, "Reserved"), 0x1000);
    }

    #[test]
    fn refuses_hidden_and_garbage() {
        assert_eq!(
            Iomem::parse("00000000-00000000 : Reserved\n00000000-00000000 : System RAM\n"),
            Err(IomemError::Hidden)
        );
        assert!(matches!(Iomem::parse("zz-10 : x\n"), Err(IomemError::Malformed { line: 1, .. })));
        assert!(matches!(Iomem::parse("10-5 : x\n"), Err(IomemError::Malformed { .. })));
        assert!(matches!(Iomem::parse("0-fffffffffffffffff : x\n"), Err(IomemError::Malformed { .. })));
        assert_eq!(Iomem::parse(""), Err(IomemError::Empty));
        let top = Iomem::parse("0-ffffffffffffffff : PCI mem\n").unwrap();
        assert_eq!(top.entries[0].end, u64::MAX);
    }

    #[test]
    fn range_arithmetic() {
        assert_eq!(merge(vec![(5, 10), (0, 5), (20, 30), (25, 26)]), vec![(0, 10), (20, 30)]);
        assert_eq!(intersect(&[(0, 10), (20, 30)], &[(5, 25)]), vec![(5, 10), (20, 25)]);
        assert_eq!(subtract(&[(0, 100)], &[(10, 20), (90, 200)]), vec![(0, 10), (20, 90)]);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in "[0-9a-f :\\-\n\t]{0,400}") {
            let _ = Iomem::parse(&text);
        }
    }
}
