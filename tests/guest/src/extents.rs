//! `extents-within`: every FIEMAP extent of a file lies in the given ranges (a node's reserved ranges).

use std::fs::File;
use std::io;
use std::path::PathBuf;

use crate::util::{fiemap, human, parse_size, Report};

/// Parse `SIZE@START[,SIZE@START...]` (the module's ranges= syntax) into (start, end) pairs.
fn parse_ranges(s: &str) -> io::Result<Vec<(u64, u64)>> {
    s.split(',')
        .map(|item| {
            let (size, start) = item
                .split_once('@')
                .ok_or_else(|| io::Error::other(format!("{item}: expected SIZE@START")))?;
            let size = parse_size(size).map_err(io::Error::other)?;
            let start = parse_size(start).map_err(io::Error::other)?;
            Ok((start, start + size))
        })
        .collect()
}

/// Check `name`: each file's extents lie wholly inside one of `ranges`.
pub fn extents_within(r: &mut Report, name: &str, ranges: &str, files: &[PathBuf]) -> io::Result<()> {
    let ranges = parse_ranges(ranges)?;
    let mut bad = Vec::new();
    let mut seen = 0;
    for p in files {
        let ext = fiemap(&File::open(p)?)?;
        for e in &ext {
            seen += 1;
            let end = e.physical + e.length;
            if !ranges.iter().any(|&(s, t)| e.physical >= s && end <= t) {
                bad.push(format!("{}: {:#x}+{}", p.display(), e.physical, human(e.length)));
            }
        }
    }
    r.check(
        name,
        bad.is_empty() && seen > 0,
        if bad.is_empty() {
            format!("{seen} extent(s) of {} file(s) inside {ranges:x?}", files.len())
        } else {
            format!("outside {ranges:x?}: {}", bad.join(", "))
        },
    );
    Ok(())
}
