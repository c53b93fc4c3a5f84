//! Rewrites a QEMU command line so that the VM's RAM is the owner's memory.
//!
//! The RAM backends are the objects named by `-machine memory-backend=ID` and by
//! `-numa node,memdev=ID` (libvirt's `pc.ram` / `ram-node<N>`). Each is replaced, keeping its id,
//! size and generic properties, by a `memory-backend-file` on `/proc/self/fd/N` (the owner's
//! inherited fd) at consecutive offsets of the allocation. Without any, pageless adds its own
//! `pageless-ram` object and `-machine memory-backend=pageless-ram`. `-m` is kept, but must
//! agree with the owner's size: a mismatch is an error, never silently overridden.

use pageless_pool::size::{parse_size, Size};
use serde_json::{Map, Value};
use thiserror::Error;

/// The id of the RAM object pageless adds when the command line names none.
pub const PAGELESS_RAM_ID: &str = "pageless-ram";

/// The owner's memory as QEMU will see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerRam {
    /// `/proc/self/fd/N`.
    pub mem_path: String,
    /// The allocation's size in bytes: the RAM backends (or `-m`) must add up to exactly this.
    pub size: u64,
    /// The allocation's page size in bytes; above 4 KiB it becomes each object's `align=`.
    pub page_size: u64,
}

/// Why [`rewrite`] refused a QEMU command line. QEMU is not started: fix its arguments (or
/// the owner's `--size`) as the message says.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArgError {
    /// An option that takes a value is the last argument.
    #[error("`{option}` needs a value")]
    MissingValue {
        /// The option, as given.
        option: String,
    },
    /// An `-object` or `-m` value cannot be parsed, or a RAM backend object has no `size`.
    #[error("cannot parse `{option} {value}`: {why}")]
    Unparsable {
        /// `-object` or `-m`.
        option: String,
        /// The value, as given.
        value: String,
        /// The parser's complaint.
        why: String,
    },
    /// QEMU's RAM size (`-m`, or the RAM backends' sizes added up) is not the owner's.
    #[error("the VM's RAM is {} (`{source_arg}`) but its owner serves {}: make them equal (`pageless serve --size` or the VM's memory size)", Size(*qemu), Size(*owner))]
    SizeMismatch {
        /// QEMU's size in bytes.
        qemu: u64,
        /// The owner's allocation size in bytes.
        owner: u64,
        /// Where QEMU's size comes from: `-m …` or `RAM backend(s) <ids>`.
        source_arg: String,
    },
    /// A RAM backend id that no `-object` has; the field is the id.
    #[error("`-machine memory-backend={0}` or `-numa memdev={0}` names no -object with that id")]
    MissingBackend(String),
    /// `-mem-path` or `-mem-prealloc`, which would give QEMU other memory or preallocate the
    /// owner's; the field is the argument as given.
    #[error("`{0}` conflicts with pageless, which provides the VM's RAM: remove it")]
    Conflict(String),
    /// Two `-machine` options name different `memory-backend=` ids (the first, then the second).
    #[error("`-machine` names two RAM backends, {0} and {1}")]
    TwoMachineBackends(String, String),
    /// The owner serves several NUMA cells but QEMU has no `-numa node,memdev=` for them.
    #[error("the VM's owner serves NUMA cells {cells}: give QEMU one `-numa node,nodeid=ID,memdev=OBJ` and one `-object memory-backend-ram,id=OBJ,size=…` per cell (libvirt: <cpu><numa><cell>)")]
    NoNumaNodes {
        /// The owner's cell ids, comma-separated.
        cells: String,
    },
    /// A QEMU NUMA node whose id is none of the owner's cells.
    #[error("`-numa node,nodeid={node},memdev={memdev}`: the VM's owner has no cell {node} (its cells: {cells}); serve it with `--cell {node}:SIZE:POOL`")]
    NoSuchCell {
        /// The node id.
        node: u64,
        /// Its memdev.
        memdev: String,
        /// The owner's cell ids, comma-separated.
        cells: String,
    },
    /// A cell that no QEMU NUMA node uses.
    #[error("the VM's owner serves cell {cell} ({}) but QEMU has no `-numa node,nodeid={cell},memdev=…` for it", Size(*size))]
    CellWithoutNode {
        /// The cell.
        cell: u32,
        /// Its size in bytes.
        size: u64,
    },
    /// A NUMA node's RAM backend whose size is not its cell's.
    #[error("NUMA node {node}'s RAM backend {memdev} is {} but the owner's cell {node} is {}: make them equal (`--cell {node}:SIZE:…` or the cell's memory in the domain)", Size(*qemu), Size(*owner))]
    CellSizeMismatch {
        /// The node and cell id.
        node: u32,
        /// The backend's id.
        memdev: String,
        /// The backend's size in bytes.
        qemu: u64,
        /// The cell's size in bytes.
        owner: u64,
    },
    /// The RAM backends' sizes overflow a u64.
    #[error("the RAM backends {ids} add up to more than 16 EiB: fix their sizes")]
    TooLarge {
        /// The RAM backends' ids, comma-separated.
        ids: String,
    },
}

/// Options that take a value, so that the value is not mistaken for an option.
fn takes_value(option: &str) -> bool {
    // QEMU options without a value (QEMU 10's `-help`, plus removed ones older command lines
    // may still carry). Every other QEMU option takes exactly one value.
    const FLAGS: &[&str] = &[
        // QEMU 10
        "-h",
        "-help",
        "-version",
        "-mem-prealloc",
        "-snapshot",
        "-usb",
        "-nographic",
        "-full-screen",
        "-win2k-hack",
        "-no-fd-bootchk",
        "-preconfig",
        "-S",
        "-s",
        "-enable-kvm",
        "-xen-attach",
        "-xen-domid-restrict",
        "-no-reboot",
        "-no-shutdown",
        "-daemonize",
        "-only-migratable",
        "-nodefaults",
        "-no-user-config",
        "-enable-sync-profile",
        "-perfmap",
        "-jitdump",
        // removed in earlier releases
        "-no-hpet",
        "-no-acpi",
        "-alt-grab",
        "-ctrl-grab",
        "-no-frame",
        "-no-quit",
        "-sdl",
        "-curses",
        "-nodefconfig",
        "-enable-fips",
        "-old-param",
        "-semihosting",
        "-singlestep",
        "-show-cursor",
        "-portrait",
        "-no-kvm",
        "-no-kvm-irqchip",
        "-no-kvm-pit",
        "-no-kvm-pit-reinjection",
        "-enable-nesting",
        "-audio-help",
        "-xen-create",
    ];
    let normalized = option.strip_prefix('-').filter(|o| o.starts_with('-')).unwrap_or(option);
    !FLAGS.contains(&normalized)
}

/// One `-object` argument, in either of QEMU's syntaxes.
#[derive(Clone, Debug)]
enum ObjectArg {
    Keyval(Vec<(String, String)>),
    Json(Map<String, Value>),
}

impl ObjectArg {
    fn parse(value: &str) -> Result<ObjectArg, ArgError> {
        let unparsable =
            |why: String| ArgError::Unparsable { option: "-object".into(), value: value.into(), why };
        if value.trim_start().starts_with('{') {
            match serde_json::from_str::<Value>(value) {
                Ok(Value::Object(map)) => Ok(ObjectArg::Json(map)),
                Ok(_) => Err(unparsable("not a JSON object".into())),
                Err(e) => Err(unparsable(e.to_string())),
            }
        } else {
            let mut pairs = split_keyval(value);
            // The first element is the type: `memory-backend-ram,id=…` or `qom-type=…,id=…`.
            if let Some(first) = pairs.first_mut() {
                if first.1.is_empty() && !first.0.contains('=') {
                    *first = ("qom-type".into(), std::mem::take(&mut first.0));
                }
            }
            Ok(ObjectArg::Keyval(pairs))
        }
    }

    fn get(&self, key: &str) -> Option<String> {
        match self {
            ObjectArg::Keyval(pairs) => pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()),
            ObjectArg::Json(map) => map.get(key).map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
        }
    }

    fn size(&self) -> Result<Option<u64>, ArgError> {
        let Some(text) = self.get("size") else { return Ok(None) };
        parse_size(&text).map(Some).map_err(|why| ArgError::Unparsable {
            option: "-object size".into(),
            value: text,
            why,
        })
    }

    /// This RAM backend rebuilt as a `memory-backend-file` on the owner's fd, in the same syntax.
    fn into_owner_file(self, ram: &OwnerRam, offset: u64, size: u64) -> String {
        // Properties of the memfd/ram/file backends that do not apply, or that fail on
        // PFN-only memory (prealloc uses MADV_POPULATE_WRITE).
        const DROPPED: &[&str] = &[
            "qom-type",
            "size",
            "share",
            "mem-path",
            "offset",
            "align",
            "hugetlb",
            "hugetlbsize",
            "seal",
            "prealloc",
            "prealloc-threads",
            "prealloc-context",
            "discard-data",
            "pmem",
            "readonly",
            "rom",
        ];
        let align = (ram.page_size > 4096).then_some(ram.page_size);
        match self {
            ObjectArg::Json(map) => {
                let mut out = Map::new();
                out.insert("qom-type".into(), "memory-backend-file".into());
                for (key, value) in map {
                    if !DROPPED.contains(&key.as_str()) {
                        out.insert(key, value);
                    }
                }
                out.insert("mem-path".into(), ram.mem_path.clone().into());
                out.insert("size".into(), size.into());
                out.insert("offset".into(), offset.into());
                out.insert("share".into(), true.into());
                if let Some(align) = align {
                    out.insert("align".into(), align.into());
                }
                Value::Object(out).to_string()
            }
            ObjectArg::Keyval(pairs) => {
                let mut out = vec!["memory-backend-file".to_string()];
                for (key, value) in pairs {
                    if !DROPPED.contains(&key.as_str()) {
                        out.push(format!("{key}={value}"));
                    }
                }
                out.push(format!("mem-path={}", ram.mem_path.replace(',', ",,")));
                out.push(format!("size={size}"));
                out.push(format!("offset={offset}"));
                out.push("share=on".into());
                if let Some(align) = align {
                    out.push(format!("align={align}"));
                }
                out.join(",")
            }
        }
    }
}

/// Splits `a=b,c=d` into pairs, honouring QEMU's `,,` escape for a literal comma.
fn split_keyval(text: &str) -> Vec<(String, String)> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                current.push_str(",,");
            } else {
                items.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    items.push(current);
    items
        .into_iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (item, String::new()),
        })
        .collect()
}

/// `-m 1G`, `-m 1024` (MiB), `-m size=4G,slots=2,maxmem=8G`.
fn parse_memory_size(value: &str) -> Result<u64, ArgError> {
    let size = split_keyval(value).into_iter().enumerate().find_map(|(i, (k, v))| {
        match (i, k.as_str(), v.is_empty()) {
            (0, k, true) => Some(k.to_string()),
            (_, "size", false) => Some(v),
            _ => None,
        }
    });
    let Some(size) = size else {
        return Err(ArgError::Unparsable { option: "-m".into(), value: value.into(), why: "no size".into() });
    };
    // QEMU reads a bare number as MiB.
    let text = if size.chars().all(|c| c.is_ascii_digit()) { format!("{size}M") } else { size };
    parse_size(&text).map_err(|why| ArgError::Unparsable { option: "-m".into(), value: value.into(), why })
}

/// The VM name from `-name guest=NAME,…` or `-name NAME`.
pub fn guest_name(args: &[String]) -> Option<String> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "-name" || arg == "--name" {
            let value = iter.next()?;
            let pairs = split_keyval(value);
            return pairs
                .iter()
                .find(|(k, _)| k == "guest")
                .map(|(_, v)| v.clone())
                .or_else(|| pairs.first().filter(|(_, v)| v.is_empty()).map(|(k, _)| k.clone()))
                .map(|name| name.replace(",,", ","));
        } else if takes_value(arg) && arg.starts_with('-') {
            iter.next();
        }
    }
    None
}

/// What [`scan`] finds on a QEMU command line.
struct Scan {
    /// `-m`, as given, and its size.
    memory_arg: Option<(String, u64)>,
    /// `-machine memory-backend=ID`.
    machine_backend: Option<String>,
    /// Each `-numa node`'s node id (given, or QEMU's: the number of nodes before it) and
    /// `memdev=`, in order.
    numa_nodes: Vec<(u64, Option<String>)>,
    /// Every `-object`: the index of its value in the arguments, and the object.
    objects: Vec<(usize, ObjectArg)>,
}

impl Scan {
    /// The `-object` of RAM backend `id`, with its argument index and size. Two objects of
    /// that id are refused (QEMU would refuse them too).
    fn backend(&self, args: &[String], id: &str) -> Result<(usize, ObjectArg, u64), ArgError> {
        let mut found = self.objects.iter().filter(|(_, o)| o.get("id").as_deref() == Some(id));
        let (index, object) = found.next().cloned().ok_or_else(|| ArgError::MissingBackend(id.into()))?;
        if let Some((second, _)) = found.next() {
            return Err(ArgError::Unparsable {
                option: "-object".into(),
                value: args[*second].clone(),
                why: format!("a second object with id {id:?}"),
            });
        }
        let size = object.size()?.ok_or_else(|| ArgError::Unparsable {
            option: "-object".into(),
            value: args[index].clone(),
            why: "a RAM backend needs a size".into(),
        })?;
        Ok((index, object, size))
    }
}

/// First pass: finds -m, the RAM backend ids, and every -object by id.
fn scan(args: &[String]) -> Result<Scan, ArgError> {
    let mut memory_arg: Option<(String, u64)> = None;
    let mut machine_backend: Option<String> = None;
    let mut numa_nodes: Vec<(u64, Option<String>)> = Vec::new();
    let mut objects: Vec<(usize, ObjectArg)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let option = args[i].as_str();
        let normalized = option.strip_prefix('-').filter(|o| o.starts_with('-')).unwrap_or(option);
        if !option.starts_with('-') || !takes_value(option) {
            if normalized == "-mem-prealloc" {
                return Err(ArgError::Conflict(option.into()));
            }
            i += 1;
            continue;
        }
        let value = args.get(i + 1).ok_or_else(|| ArgError::MissingValue { option: option.into() })?.as_str();
        match normalized {
            "-m" => memory_arg = Some((format!("-m {value}"), parse_memory_size(value)?)),
            "-machine" | "-M" => {
                if let Some((_, id)) = split_keyval(value).into_iter().find(|(k, _)| k == "memory-backend") {
                    if let Some(previous) = machine_backend.replace(id.clone()).filter(|p| *p != id) {
                        return Err(ArgError::TwoMachineBackends(previous, id));
                    }
                }
            }
            "-numa" => {
                let pairs = split_keyval(value);
                if pairs.first().is_some_and(|(k, _)| k == "node") {
                    let nodeid = match pairs.iter().find(|(k, _)| k == "nodeid") {
                        Some((_, id)) => id.parse().map_err(|_| ArgError::Unparsable {
                            option: "-numa".into(),
                            value: value.into(),
                            why: "nodeid is not a number".into(),
                        })?,
                        None => numa_nodes.len() as u64,
                    };
                    let memdev = pairs.into_iter().find(|(k, _)| k == "memdev").map(|(_, id)| id);
                    numa_nodes.push((nodeid, memdev));
                }
            }
            "-object" => objects.push((i + 1, ObjectArg::parse(value)?)),
            "-mem-path" => return Err(ArgError::Conflict(format!("{option} {value}"))),
            _ => {}
        }
        i += 2;
    }
    Ok(Scan { memory_arg, machine_backend, numa_nodes, objects })
}

/// Rewrites `args` (without the QEMU binary) so that the VM's RAM is `ram`.
pub fn rewrite(args: &[String], ram: &OwnerRam) -> Result<Vec<String>, ArgError> {
    let scan = scan(args)?;
    let numa_backends: Vec<String> =
        scan.numa_nodes.iter().filter_map(|(_, memdev)| memdev.clone()).collect();
    // The RAM backends, in guest order: NUMA nodes when there are any, else the machine's.
    let backend_ids: Vec<String> = if numa_backends.is_empty() {
        scan.machine_backend.clone().into_iter().collect()
    } else {
        numa_backends
    };
    let memory_arg = scan.memory_arg.clone();

    let mut out = args.to_vec();
    let mut offset = 0u64;
    for id in &backend_ids {
        let (index, object, size) = scan.backend(args, id)?;
        out[index] = object.into_owner_file(ram, offset, size);
        offset =
            offset.checked_add(size).ok_or_else(|| ArgError::TooLarge { ids: backend_ids.join(", ") })?;
    }

    if backend_ids.is_empty() {
        let size = memory_arg.as_ref().map_or(ram.size, |(_, size)| *size);
        if size != ram.size {
            let (source_arg, qemu) = memory_arg.expect("a size differing from the owner's comes from -m");
            return Err(ArgError::SizeMismatch { qemu, owner: ram.size, source_arg });
        }
        let object = ObjectArg::Keyval(vec![("id".into(), PAGELESS_RAM_ID.into())]);
        out.push("-object".into());
        out.push(object.into_owner_file(ram, 0, ram.size));
        out.push("-machine".into());
        out.push(format!("memory-backend={PAGELESS_RAM_ID}"));
    } else if offset != ram.size {
        return Err(ArgError::SizeMismatch {
            qemu: offset,
            owner: ram.size,
            source_arg: format!("RAM backend(s) {}", backend_ids.join(", ")),
        });
    } else if let Some((source_arg, qemu)) = memory_arg.filter(|(_, size)| *size != ram.size) {
        return Err(ArgError::SizeMismatch { qemu, owner: ram.size, source_arg });
    }
    Ok(out)
}

/// One guest NUMA cell of the owner's memory, as QEMU will see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerCell {
    /// The cell's id: the QEMU node (`-numa node,nodeid=ID`) whose memdev it becomes.
    pub id: u32,
    /// The cell's memory: its own fd, size and page size.
    pub ram: OwnerRam,
}

/// Rewrites `args` so that each guest NUMA node's RAM backend (`-numa node,nodeid=ID,memdev=…`,
/// libvirt's `ram-node<ID>`) is the owner's cell ID, on that cell's own fd from offset 0. Every
/// cell needs its node and every node with a memdev its cell, with the cell's size; `-m`, if
/// given, must be the cells' total. Used when the owner serves several cells (`--cell`).
pub fn rewrite_cells(args: &[String], cells: &[OwnerCell]) -> Result<Vec<String>, ArgError> {
    let scan = scan(args)?;
    let total = cells.iter().try_fold(0u64, |sum, c| sum.checked_add(c.ram.size));
    let ids = || cells.iter().map(|c| c.id.to_string()).collect::<Vec<_>>().join(", ");
    let total = total.ok_or_else(|| ArgError::TooLarge { ids: ids() })?;
    let nodes: Vec<(u64, String)> =
        scan.numa_nodes.iter().filter_map(|(id, memdev)| Some((*id, memdev.clone()?))).collect();
    if nodes.is_empty() {
        return Err(ArgError::NoNumaNodes { cells: ids() });
    }
    let mut memdevs = std::collections::BTreeSet::new();
    if let Some((_, memdev)) = nodes.iter().find(|(_, memdev)| !memdevs.insert(memdev.as_str())) {
        return Err(ArgError::Unparsable {
            option: "-numa".into(),
            value: format!("node,memdev={memdev}"),
            why: "two -numa nodes use this memdev".into(),
        });
    }
    let mut out = args.to_vec();
    for (nodeid, memdev) in &nodes {
        let cell = cells.iter().find(|c| u64::from(c.id) == *nodeid).ok_or_else(|| ArgError::NoSuchCell {
            node: *nodeid,
            memdev: memdev.clone(),
            cells: ids(),
        })?;
        let (index, object, size) = scan.backend(args, memdev)?;
        if size != cell.ram.size {
            return Err(ArgError::CellSizeMismatch {
                node: cell.id,
                memdev: memdev.clone(),
                qemu: size,
                owner: cell.ram.size,
            });
        }
        out[index] = object.into_owner_file(&cell.ram, 0, size);
    }
    if let Some(cell) = cells.iter().find(|c| !nodes.iter().any(|(id, _)| *id == u64::from(c.id))) {
        return Err(ArgError::CellWithoutNode { cell: cell.id, size: cell.ram.size });
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some((id, _)) = nodes.iter().find(|(id, _)| !seen.insert(*id)) {
        return Err(ArgError::Unparsable {
            option: "-numa".into(),
            value: format!("node,nodeid={id}"),
            why: "two -numa nodes with that nodeid".into(),
        });
    }
    if let Some((source_arg, qemu)) = scan.memory_arg.filter(|(_, size)| *size != total) {
        return Err(ArgError::SizeMismatch { qemu, owner: total, source_arg });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn ram(size: u64) -> OwnerRam {
        OwnerRam { mem_path: "/proc/self/fd/7".into(), size, page_size: 4096 }
    }

    fn args(text: &[&str]) -> Vec<String> {
        text.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn adds_its_own_backend_when_none_is_named() {
        let out = rewrite(&args(&["-nographic", "-kernel", "bzImage"]), &ram(GIB)).unwrap();
        assert_eq!(
            out[3..],
            args(&[
                "-object",
                "memory-backend-file,id=pageless-ram,mem-path=/proc/self/fd/7,size=1073741824,offset=0,share=on",
                "-machine",
                "memory-backend=pageless-ram",
            ])
        );
    }

    #[test]
    fn keeps_a_matching_dash_m_and_refuses_a_different_one() {
        assert!(rewrite(&args(&["-m", "1G"]), &ram(GIB)).is_ok());
        assert!(rewrite(&args(&["-m", "1024"]), &ram(GIB)).is_ok(), "bare numbers are MiB");
        assert!(rewrite(&args(&["-m", "size=1G,slots=2,maxmem=4G"]), &ram(GIB)).is_ok());
        let err = rewrite(&args(&["-m", "2G"]), &ram(GIB)).unwrap_err();
        assert_eq!(err, ArgError::SizeMismatch { qemu: 2 * GIB, owner: GIB, source_arg: "-m 2G".into() });
        assert!(err.to_string().contains("2G") && err.to_string().contains("1G"), "{err}");
    }

    #[test]
    fn takes_over_libvirts_json_memfd_object() {
        let input = args(&[
            "-name",
            "guest=vm1,debug-threads=on",
            "-machine",
            "pc-q35-10.0,usb=off,dump-guest-core=off,memory-backend=pc.ram,acpi=on",
            "-m",
            "size=1048576k",
            "-object",
            r#"{"qom-type":"memory-backend-memfd","id":"pc.ram","share":true,"x-use-canonical-path-for-ramblock-id":false,"prealloc":true,"size":1073741824}"#,
            "-smp",
            "1",
        ]);
        let out = rewrite(&input, &OwnerRam { page_size: 2 << 20, ..ram(GIB) }).unwrap();
        assert_eq!(out.len(), input.len(), "nothing added: the machine already names its backend");
        let object: Value = serde_json::from_str(&out[7]).unwrap();
        assert_eq!(
            object,
            serde_json::json!({
                "qom-type": "memory-backend-file", "id": "pc.ram", "mem-path": "/proc/self/fd/7",
                "share": true, "size": GIB, "offset": 0, "align": 2 << 20,
                "x-use-canonical-path-for-ramblock-id": false,
            })
        );
        assert_eq!(out[..7], input[..7]);
        assert_eq!(guest_name(&input).as_deref(), Some("vm1"));
    }

    #[test]
    fn numa_nodes_get_consecutive_offsets() {
        let input = args(&[
            "-object",
            "memory-backend-ram,id=ram-node0,size=512M",
            "-numa",
            "node,nodeid=0,cpus=0,memdev=ram-node0",
            "-object",
            "memory-backend-ram,id=ram-node1,size=512M,policy=bind,host-nodes=0",
            "-numa",
            "node,nodeid=1,cpus=1,memdev=ram-node1",
            "-m",
            "1G",
        ]);
        let out = rewrite(&input, &ram(GIB)).unwrap();
        assert_eq!(
            out[1],
            "memory-backend-file,id=ram-node0,mem-path=/proc/self/fd/7,size=536870912,offset=0,share=on"
        );
        assert_eq!(
            out[5],
            "memory-backend-file,id=ram-node1,policy=bind,host-nodes=0,mem-path=/proc/self/fd/7,size=536870912,offset=536870912,share=on"
        );
        assert!(!out.contains(&"memory-backend=pageless-ram".to_string()));
    }

    fn cells(sizes: &[(u32, u64)]) -> Vec<OwnerCell> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &(id, size))| OwnerCell {
                id,
                ram: OwnerRam { mem_path: format!("/proc/self/fd/{}", 7 + i), size, page_size: 4096 },
            })
            .collect()
    }

    #[test]
    fn each_numa_node_gets_its_cells_fd() {
        const MIB: u64 = 1 << 20;
        // libvirt 11's JSON objects, nodes given out of order of the cells.
        let input = args(&[
            "-m",
            "size=262144k",
            "-object",
            r#"{"qom-type":"memory-backend-ram","id":"ram-node0","size":134217728,"host-nodes":[0],"policy":"bind"}"#,
            "-numa",
            "node,nodeid=0,cpus=0,memdev=ram-node0",
            "-object",
            r#"{"qom-type":"memory-backend-memfd","id":"ram-node1","share":true,"size":134217728}"#,
            "-numa",
            "node,nodeid=1,cpus=1,memdev=ram-node1",
        ]);
        let owner = cells(&[(1, 128 * MIB), (0, 128 * MIB)]);
        let out = rewrite_cells(&input, &owner).unwrap();
        let node0: Value = serde_json::from_str(&out[3]).unwrap();
        assert_eq!(
            node0,
            serde_json::json!({"qom-type": "memory-backend-file", "id": "ram-node0", "mem-path": "/proc/self/fd/8",
                "size": 128 * MIB, "offset": 0, "share": true, "host-nodes": [0], "policy": "bind"})
        );
        let node1: Value = serde_json::from_str(&out[7]).unwrap();
        assert_eq!(node1["mem-path"], "/proc/self/fd/7");
        assert_eq!(node1["offset"], 0);

        // The plain form, node ids implied by order, any memdev names.
        let plain = args(&[
            "-object",
            "memory-backend-ram,id=m0,size=128M",
            "-object",
            "memory-backend-ram,id=m1,size=64M",
            "-numa",
            "node,memdev=m0",
            "-numa",
            "node,memdev=m1",
        ]);
        let out = rewrite_cells(&plain, &cells(&[(0, 128 * MIB), (1, 64 * MIB)])).unwrap();
        assert_eq!(
            out[1],
            "memory-backend-file,id=m0,mem-path=/proc/self/fd/7,size=134217728,offset=0,share=on"
        );
        assert_eq!(
            out[3],
            "memory-backend-file,id=m1,mem-path=/proc/self/fd/8,size=67108864,offset=0,share=on"
        );
    }

    #[test]
    fn refuses_numa_nodes_that_are_not_the_cells() {
        const MIB: u64 = 1 << 20;
        let plain = |size0: &str, size1: &str| {
            args(&[
                "-object",
                &format!("memory-backend-ram,id=m0,size={size0}"),
                "-object",
                &format!("memory-backend-ram,id=m1,size={size1}"),
                "-numa",
                "node,nodeid=0,memdev=m0",
                "-numa",
                "node,nodeid=1,memdev=m1",
            ])
        };
        let owner = cells(&[(0, 128 * MIB), (1, 128 * MIB)]);
        assert!(rewrite_cells(&plain("128M", "128M"), &owner).is_ok());
        let err = rewrite_cells(&plain("128M", "256M"), &owner).unwrap_err();
        assert_eq!(
            err,
            ArgError::CellSizeMismatch { node: 1, memdev: "m1".into(), qemu: 256 * MIB, owner: 128 * MIB }
        );
        assert!(err.to_string().contains("--cell 1:SIZE"), "{err}");
        let three = cells(&[(0, 128 * MIB), (1, 128 * MIB), (2, 128 * MIB)]);
        assert_eq!(
            rewrite_cells(&plain("128M", "128M"), &three),
            Err(ArgError::CellWithoutNode { cell: 2, size: 128 * MIB })
        );
        let other_ids = cells(&[(0, 128 * MIB), (5, 128 * MIB)]);
        assert!(matches!(
            rewrite_cells(&plain("128M", "128M"), &other_ids),
            Err(ArgError::NoSuchCell { node: 1, .. })
        ));
        let no_numa = args(&["-m", "256M"]);
        assert!(matches!(rewrite_cells(&no_numa, &owner), Err(ArgError::NoNumaNodes { .. })));
        let mut wrong_m = plain("128M", "128M");
        wrong_m.extend(args(&["-m", "512M"]));
        assert!(matches!(rewrite_cells(&wrong_m, &owner), Err(ArgError::SizeMismatch { .. })));
        let mut twice = plain("128M", "128M");
        twice.extend(args(&["-numa", "node,nodeid=1,memdev=m0"]));
        assert!(rewrite_cells(&twice, &owner).is_err(), "node 1 twice");
        // Found by fuzzing: one memdev for two nodes put node 0's object on cell 1's fd.
        let shared = args(&[
            "-object",
            "memory-backend-ram,id=m0,size=128M",
            "-numa",
            "node,nodeid=0,memdev=m0",
            "-numa",
            "node,memdev=m0",
        ]);
        let err = rewrite_cells(&shared, &owner).unwrap_err();
        assert!(err.to_string().contains("two -numa nodes use this memdev"), "{err}");
        let mut same_id = plain("128M", "128M");
        same_id.extend(args(&["-object", "memory-backend-ram,id=m1,size=128M"]));
        assert!(rewrite_cells(&same_id, &owner).unwrap_err().to_string().contains("a second object"));
    }

    #[test]
    fn refuses_what_cannot_work() {
        assert_eq!(
            rewrite(&args(&["-machine", "q35,memory-backend=nope"]), &ram(GIB)),
            Err(ArgError::MissingBackend("nope".into()))
        );
        assert!(matches!(
            rewrite(&args(&["-mem-path", "/dev/hugepages"]), &ram(GIB)),
            Err(ArgError::Conflict(_))
        ));
        assert!(matches!(rewrite(&args(&["-mem-prealloc"]), &ram(GIB)), Err(ArgError::Conflict(_))));
        assert!(matches!(rewrite(&args(&["-m"]), &ram(GIB)), Err(ArgError::MissingValue { .. })));
        let small = args(&["-object", "memory-backend-ram,id=r,size=512M", "-machine", "memory-backend=r"]);
        assert!(matches!(rewrite(&small, &ram(GIB)), Err(ArgError::SizeMismatch { .. })));
        let no_size = args(&["-object", "memory-backend-ram,id=r", "-machine", "memory-backend=r"]);
        assert!(matches!(rewrite(&no_size, &ram(GIB)), Err(ArgError::Unparsable { .. })));
    }

    #[test]
    fn values_are_not_mistaken_for_options() {
        // `-append` takes a value that itself looks like options.
        let input = args(&["-append", "-m 8G console=ttyS0", "-name", "plain"]);
        assert!(rewrite(&input, &ram(GIB)).is_ok());
        assert_eq!(guest_name(&input).as_deref(), Some("plain"));
        assert_eq!(guest_name(&args(&["-S", "-name", "guest=a,,b"])).as_deref(), Some("a,b"));
        assert_eq!(guest_name(&args(&["-machine", "none"])), None);
        // Flags without a value do not swallow the next option.
        for flag in ["-usb", "-S", "--preconfig", "-alt-grab", "-perfmap", "-nodefaults"] {
            let err = rewrite(&args(&[flag, "-m", "2G"]), &ram(GIB)).unwrap_err();
            assert!(matches!(err, ArgError::SizeMismatch { .. }), "{flag}: {err}");
        }
    }
}

#[cfg(test)]
mod hostile;
