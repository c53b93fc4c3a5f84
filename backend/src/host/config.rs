//! `/etc/pageless/pageless.toml`: the host's reserved ranges, its pagelessfs mounts and which
//! pool serves the VMs of each host NUMA node.
//!
//! ```toml
//! module = "/usr/lib/modules/6.12.0/updates/dkms/pageless.ko"  # optional; default: modprobe pageless
//! ranges = ["1G@4G", "1G@6G"]       # the module's ranges= (matching the memmap= reservations)
//! [[mount]]
//! path = "/mnt/pageless/node0"
//! pagesize = "1G"                   # 4K | 2M | 1G
//! node = 0                          # optional
//! uid = 64055                       # optional; gid and mode = "0700" likewise
//! [pools]                           # host NUMA node -> pool spec (as `pageless serve --pool`)
//! 0 = "pagelessfs:/mnt/pageless/node0"
//! ```
//!
//! Parsing is strict: unknown keys, malformed ranges, page sizes, modes and pool specs are
//! errors that name the file, the key and what to write instead.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use pageless_pool::size::{parse_size, Size};
use pageless_pool::PoolSpec;
use serde::Deserialize;

/// Where `pageless host` looks for its config unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/pageless/pageless.toml";
/// The module's limit on `ranges=` entries.
pub const MAX_RANGES: usize = 64;
/// The module's alignment of range starts and sizes.
pub const RANGE_ALIGN: u64 = 2 << 20;
/// The largest config file read: a config is a few hundred bytes.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A physical range `SIZE@START` (the module's `ranges=` item, the same numbers as the kernel's
/// `memmap=SIZE$START`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    /// First byte.
    pub start: u64,
    /// Length in bytes (non-zero).
    pub size: u64,
}

impl Range {
    /// One past the last byte (ranges never wrap: [`Range::parse`] refuses that).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }

    /// The kernel command line word that reserves this range: `memmap=1G$4G`.
    pub fn memmap(&self) -> String {
        format!("memmap={}${}", Size(self.size), Size(self.start))
    }

    /// Parses `SIZE@START` with sizes as in `pageless serve --size` (`1G`, `512M`, bytes) or
    /// `0x` hex; refuses empty, wrapping and not 2 MiB-aligned ranges (the module would).
    pub fn parse(text: &str) -> Result<Range, String> {
        let (size, start) = text
            .split_once('@')
            .ok_or_else(|| format!("{text:?} is not SIZE@START (write e.g. \"1G@4G\")"))?;
        let number = |part: &str| -> Result<u64, String> {
            let part = part.trim();
            match part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
                Some(hex) => {
                    u64::from_str_radix(hex, 16).map_err(|_| format!("{part:?} is not a hex number"))
                }
                None => parse_size(part),
            }
        };
        let range = Range { size: number(size)?, start: number(start)? };
        if range.size == 0 || range.start.checked_add(range.size).is_none() {
            return Err(format!("{text:?} is empty or wraps around"));
        }
        if !range.start.is_multiple_of(RANGE_ALIGN) || !range.size.is_multiple_of(RANGE_ALIGN) {
            return Err(format!("{text:?}: start and size must be multiples of 2M"));
        }
        Ok(range)
    }
}

impl fmt::Display for Range {
    /// `SIZE@START`, e.g. `1G@4G`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", Size(self.size), Size(self.start))
    }
}

/// A pagelessfs mount's page size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    /// `4K`
    K4,
    /// `2M`
    M2,
    /// `1G`
    G1,
}

impl PageSize {
    /// The page size in bytes.
    pub fn bytes(self) -> u64 {
        match self {
            PageSize::K4 => 4 << 10,
            PageSize::M2 => 2 << 20,
            PageSize::G1 => 1 << 30,
        }
    }

    /// Parses `4K`, `2M` or `1G` (case-insensitive).
    pub fn parse(text: &str) -> Option<PageSize> {
        match text.to_ascii_uppercase().as_str() {
            "4K" => Some(PageSize::K4),
            "2M" => Some(PageSize::M2),
            "1G" => Some(PageSize::G1),
            _ => None,
        }
    }
}

impl fmt::Display for PageSize {
    /// `4K`, `2M` or `1G`: what the mount option and the config take.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PageSize::K4 => "4K",
            PageSize::M2 => "2M",
            PageSize::G1 => "1G",
        })
    }
}

/// `[[mount]]`: one pagelessfs mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted (absolute).
    pub path: PathBuf,
    /// `pagesize=`.
    pub pagesize: PageSize,
    /// `node=`: allocate only from ranges on this host NUMA node.
    pub node: Option<u32>,
    /// `uid=`: the root directory's owner.
    pub uid: Option<u32>,
    /// `gid=`: the root directory's group.
    pub gid: Option<u32>,
    /// `mode=`: the root directory's mode.
    pub mode: Option<u32>,
}

impl Mount {
    /// The mount options: `pagesize=1G[,node=N][,uid=U][,gid=G][,mode=0700]`.
    pub fn options(&self) -> String {
        let mut options = format!("pagesize={}", self.pagesize);
        if let Some(node) = self.node {
            options.push_str(&format!(",node={node}"));
        }
        if let Some(uid) = self.uid {
            options.push_str(&format!(",uid={uid}"));
        }
        if let Some(gid) = self.gid {
            options.push_str(&format!(",gid={gid}"));
        }
        if let Some(mode) = self.mode {
            options.push_str(&format!(",mode={mode:04o}"));
        }
        options
    }
}

/// The parsed, checked `pageless.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// `module`: the `pageless.ko` to `insmod`; `None`: `modprobe pageless`.
    pub module: Option<PathBuf>,
    /// `ranges`: the module's `ranges=`, in the order written.
    pub ranges: Vec<Range>,
    /// `[[mount]]`s, in the order written (`host up` mounts in this order, `host down` unmounts
    /// in reverse).
    pub mounts: Vec<Mount>,
    /// `[pools]`: host NUMA node → pool spec.
    pub pools: BTreeMap<u32, String>,
}

/// A config that cannot be read or is not right.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source} (write one with `pageless host plan --write-config {file}`)")]
    Read {
        /// The config file.
        file: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or a key the format does not have, or a value of the wrong type.
    #[error("{file}: {message}")]
    Syntax {
        /// The config file.
        file: String,
        /// The TOML parser's message (it names the line and key).
        message: String,
    },
    /// A key's value is not acceptable.
    #[error("{file}: {key}: {message}")]
    Value {
        /// The config file.
        file: String,
        /// The key, e.g. `ranges[1]` or `mount[0].pagesize`.
        key: String,
        /// What is wrong and what to write.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    module: Option<PathBuf>,
    ranges: Vec<String>,
    #[serde(default)]
    mount: Vec<RawMount>,
    #[serde(default)]
    pools: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMount {
    path: PathBuf,
    pagesize: String,
    node: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<String>,
}

impl HostConfig {
    /// Reads and checks the config file at `path`.
    pub fn load(path: &Path) -> Result<HostConfig, ConfigError> {
        use std::io::Read;
        let file = path.display().to_string();
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CONFIG_BYTES).read_to_string(&mut text))
            .map_err(|source| ConfigError::Read { file: file.clone(), source })?;
        HostConfig::parse(&text, &file)
    }

    /// Parses and checks config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<HostConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.into(),
            message: e.to_string().trim_end().into(),
        })?;
        let value = |key: String, message: String| ConfigError::Value { file: file.into(), key, message };

        if raw.ranges.is_empty() {
            return Err(value(
                "ranges".into(),
                "empty: list the reserved ranges, e.g. ranges = [\"1G@4G\"] for memmap=1G$4G".into(),
            ));
        }
        if raw.ranges.len() > MAX_RANGES {
            return Err(value(
                "ranges".into(),
                format!("{} ranges: the module takes at most {MAX_RANGES}", raw.ranges.len()),
            ));
        }
        let mut ranges = Vec::new();
        for (i, text) in raw.ranges.iter().enumerate() {
            let range = Range::parse(text).map_err(|m| value(format!("ranges[{i}]"), m))?;
            if let Some(other) =
                ranges.iter().find(|r: &&Range| r.start < range.end() && range.start < r.end())
            {
                return Err(value(format!("ranges[{i}]"), format!("{range} overlaps {other}")));
            }
            ranges.push(range);
        }

        let mut mounts: Vec<Mount> = Vec::new();
        for (i, m) in raw.mount.into_iter().enumerate() {
            let key = |k: &str| format!("mount[{i}].{k}");
            if !m.path.is_absolute()
                || m.path.components().any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(value(key("path"), format!("{:?}: write an absolute path without `..`", m.path)));
            }
            if mounts.iter().any(|other| other.path == m.path) {
                return Err(value(key("path"), format!("{} is mounted twice", m.path.display())));
            }
            let pagesize = PageSize::parse(&m.pagesize).ok_or_else(|| {
                value(key("pagesize"), format!("{:?}: write \"4K\", \"2M\" or \"1G\"", m.pagesize))
            })?;
            let mode = match &m.mode {
                None => None,
                Some(text) => {
                    Some(u32::from_str_radix(text, 8).ok().filter(|mode| *mode <= 0o7777).ok_or_else(
                        || value(key("mode"), format!("{text:?}: write an octal mode such as \"0700\"")),
                    )?)
                }
            };
            mounts.push(Mount { path: m.path, pagesize, node: m.node, uid: m.uid, gid: m.gid, mode });
        }

        let mut pools = BTreeMap::new();
        for (node, spec) in raw.pools {
            let key = format!("pools.{node}");
            let node: u32 = node
                .parse()
                .map_err(|_| value(key.clone(), "keys of [pools] are host NUMA node numbers: write 0 = \"pagelessfs:/mnt/pageless/node0\"".into()))?;
            let parsed: PoolSpec = spec.parse().map_err(|e| value(key.clone(), format!("{e}")))?;
            if let PoolSpec::Pagelessfs(dir) = &parsed {
                if !mounts.iter().any(|m| dir.starts_with(&m.path)) {
                    return Err(value(
                        key,
                        format!(
                            "{spec:?} is on no [[mount]] of this file: add a [[mount]] with path = {:?}",
                            dir.display().to_string()
                        ),
                    ));
                }
            }
            pools.insert(node, spec);
        }
        Ok(HostConfig { module: raw.module, ranges, mounts, pools })
    }

    /// The pool spec (`pageless serve --pool`) for VMs on host NUMA node `node`, if `[pools]`
    /// names one.
    pub fn pool_for_node(&self, node: u32) -> Option<&str> {
        self.pools.get(&node).map(String::as_str)
    }

    /// The module's `ranges=` value: `1G@4G,1G@6G`.
    pub fn ranges_param(&self) -> String {
        self.ranges.iter().map(Range::to_string).collect::<Vec<_>>().join(",")
    }

    /// The config as TOML text that [`HostConfig::parse`] reads back to the same value.
    pub fn to_toml(&self) -> String {
        let quote = |text: &str| toml_string(text);
        let mut out = String::new();
        if let Some(module) = &self.module {
            out.push_str(&format!("module = {}\n", quote(&module.display().to_string())));
        }
        let ranges: Vec<String> = self.ranges.iter().map(|r| quote(&r.to_string())).collect();
        out.push_str(&format!("ranges = [{}]\n", ranges.join(", ")));
        for m in &self.mounts {
            out.push_str("\n[[mount]]\n");
            out.push_str(&format!("path = {}\n", quote(&m.path.display().to_string())));
            out.push_str(&format!("pagesize = \"{}\"\n", m.pagesize));
            if let Some(node) = m.node {
                out.push_str(&format!("node = {node}\n"));
            }
            if let Some(uid) = m.uid {
                out.push_str(&format!("uid = {uid}\n"));
            }
            if let Some(gid) = m.gid {
                out.push_str(&format!("gid = {gid}\n"));
            }
            if let Some(mode) = m.mode {
                out.push_str(&format!("mode = \"{mode:04o}\"\n"));
            }
        }
        if !self.pools.is_empty() {
            out.push_str("\n[pools]\n");
            for (node, spec) in &self.pools {
                out.push_str(&format!("{node} = {}\n", quote(spec)));
            }
        }
        out
    }
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
module = "/lib/modules/x/pageless.ko"
ranges = ["1G@4G", "1G@6G"]
[[mount]]
path = "/mnt/pageless/node0"
pagesize = "1G"
node = 0
uid = 64055
mode = "0700"
[[mount]]
path = "/mnt/pageless/node1"
pagesize = "2M"
node = 1
[pools]
0 = "pagelessfs:/mnt/pageless/node0"
1 = "pagelessfs:/mnt/pageless/node1"
"#;

    #[test]
    fn parses_the_documented_example() {
        let config = HostConfig::parse(EXAMPLE, "t.toml").unwrap();
        assert_eq!(config.module.as_deref(), Some(Path::new("/lib/modules/x/pageless.ko")));
        assert_eq!(config.ranges_param(), "1G@4G,1G@6G");
        assert_eq!(config.mounts[0].options(), "pagesize=1G,node=0,uid=64055,mode=0700");
        assert_eq!(config.mounts[1].options(), "pagesize=2M,node=1");
        assert_eq!(config.pool_for_node(1), Some("pagelessfs:/mnt/pageless/node1"));
        assert_eq!(config.pool_for_node(2), None);
        assert_eq!(HostConfig::parse(&config.to_toml(), "again").unwrap(), config);
    }

    fn error(text: &str) -> String {
        HostConfig::parse(text, "/etc/pageless/pageless.toml").unwrap_err().to_string()
    }

    #[test]
    fn errors_name_file_key_and_fix() {
        let e = error("ranges = [\"1G@4G\"]\nbogus = 1\n");
        assert!(e.starts_with("/etc/pageless/pageless.toml: ") && e.contains("bogus"), "{e}");
        let e = error("ranges = [\"1G@4G\", \"1G\"]\n");
        assert!(e.contains("ranges[1]") && e.contains("\"1G@4G\""), "{e}");
        let e = error("ranges = [\"1G@4G\", \"512M@4G\"]\n");
        assert!(e.contains("overlaps 1G@4G"), "{e}");
        let e = error("ranges = [\"1M@4G\"]\n");
        assert!(e.contains("multiples of 2M"), "{e}");
        let e = error("ranges = [\"16E@4G\"]\n");
        assert!(e.contains("ranges[0]"), "{e}");
        let e = error("ranges = []\n");
        assert!(e.contains("ranges: empty"), "{e}");
        let e = error("ranges = [\"1G@4G\"]\n[[mount]]\npath = \"/m\"\npagesize = \"3M\"\n");
        assert!(e.contains("mount[0].pagesize") && e.contains("\"1G\""), "{e}");
        let e = error("ranges = [\"1G@4G\"]\n[[mount]]\npath = \"/m\"\npagesize = \"1G\"\nmode = \"999\"\n");
        assert!(e.contains("mount[0].mode"), "{e}");
        let e = error("ranges = [\"1G@4G\"]\n[[mount]]\npath = \"m\"\npagesize = \"1G\"\n");
        assert!(e.contains("mount[0].path") && e.contains("absolute"), "{e}");
        let e = error("ranges = [\"1G@4G\"]\n[[mount]]\npath = \"/m\"\npagesize = \"1G\"\nsize = 3\n");
        assert!(e.contains("size"), "{e}");
        let e = error("ranges = [\"1G@4G\"]\n[pools]\nzero = \"memfd\"\n");
        assert!(e.contains("pools.zero") && e.contains("node numbers"), "{e}");
        let e = error("ranges = [\"1G@4G\"]\n[pools]\n0 = \"pagelessfs:/elsewhere\"\n");
        assert!(e.contains("pools.0") && e.contains("[[mount]]"), "{e}");
        let e = error("ranges = [\"1G@4G\"]\n[pools]\n0 = \"floppy:/x\"\n");
        assert!(e.contains("pools.0"), "{e}");
    }

    #[test]
    fn missing_file_says_how_to_make_one() {
        let e = HostConfig::load(Path::new("/nonexistent/pageless.toml")).unwrap_err().to_string();
        assert!(e.contains("pageless host plan --write-config /nonexistent/pageless.toml"), "{e}");
    }

    #[test]
    fn range_text() {
        let r = Range::parse("0x40000000@0x100000000").unwrap();
        assert_eq!((r.to_string(), r.memmap()), ("1G@4G".to_string(), "memmap=1G$4G".to_string()));
        assert!(Range::parse("1G@18446744073709551614").is_err());
        assert!(Range::parse("0@4G").is_err());
    }

    proptest::proptest! {
        /// Any text: an error or a config that writes back to itself, never a panic.
        #[test]
        fn hostile_text_is_an_error_or_round_trips(
            ranges in proptest::collection::vec("[0-9]{0,20}[KMGTkx]?@(0x)?[0-9a-f]{0,20}[KMGT]?", 0..4),
            pagesize in "[0-9]{0,3}[KMGk]?",
            mode in "[0-9]{0,6}",
            node in "[0-9a-z]{0,12}",
            spec in "(pagelessfs:|memfd|dir:)?[/a-z0-9]{0,12}",
        ) {
            let quoted: Vec<String> = ranges.iter().map(|r| format!("{r:?}")).collect();
            let text = format!(
                "ranges = [{}]\n[[mount]]\npath = \"/m\"\npagesize = {pagesize:?}\nmode = {mode:?}\n[pools]\n{node:?} = {spec:?}\n",
                quoted.join(", ")
            );
            if let Ok(config) = HostConfig::parse(&text, "p.toml") {
                proptest::prop_assert_eq!(HostConfig::parse(&config.to_toml(), "again").unwrap(), config);
            }
        }
    }
}
