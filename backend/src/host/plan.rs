//! `pageless host plan`: where to reserve memory for pagelessfs, as a pure function of the
//! machine's memory map.
//!
//! Candidates are top-level `System RAM` in `/proc/iomem`, minus everything nested in it (the
//! kernel image's `Kernel code`/`rodata`/`data`/`bss`, `Crash kernel`, …), minus what the
//! firmware's map (`/sys/firmware/memmap`) does not call RAM, and — unless asked — minus the
//! first 4 GiB (32-bit DMA, firmware, the kernel and its early allocations live there). Ranges
//! are cut at the highest aligned addresses, one per node with `--per-node`, and the host keeps
//! at least `--keep` of System RAM.
//!
//! One range is [`META_SIZE`] (2 MiB) larger than its share: the module keeps its file metadata
//! (files that survive kexec) at the top of one range ([`metadata_area`], the rule of
//! `pl_meta_place()` in driver/kmod/persist.c), and that area is not in the pool. The plan puts
//! the extra 2 MiB on top of an aligned range that the module's rule picks, so every node keeps
//! its whole share in pages of the mounts' size.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use pageless_pool::size::Size;

use super::config::{HostConfig, Mount, PageSize, Range, RANGE_ALIGN};
use super::iomem::{intersect, merge, subtract, Iomem};
use super::numa::NodeRanges;

/// 4 GiB: memory below it is left alone unless `allow_below_4g`.
pub const LOW_MEMORY_END: u64 = 4 << 30;
/// A memory section on x86-64: ranges aligned to it share no section with System RAM.
pub const SECTION: u64 = 128 << 20;
/// The module's metadata area (`PL_META_SIZE`): the top 2 MiB of one range, not in the pool.
pub const META_SIZE: u64 = 2 << 20;
const GIB: u64 = 1 << 30;

/// What the machine looks like.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    /// `/proc/iomem`.
    pub iomem: Iomem,
    /// The firmware's RAM ranges (`/sys/firmware/memmap` entries of type `System RAM`), if known.
    pub firmware_ram: Option<Vec<(u64, u64)>>,
    /// Each NUMA node's physical ranges, if known.
    pub nodes: Option<NodeRanges>,
    /// The running kernel's command line (`/proc/cmdline`), if known.
    pub cmdline: Option<String>,
}

/// What to plan.
#[derive(Clone, Debug)]
pub struct Request {
    /// Bytes to reserve in all (a multiple of 2 MiB).
    pub reserve: u64,
    /// Split `reserve` evenly across the NUMA nodes that have memory.
    pub per_node: bool,
    /// Wanted alignment of each range (2 MiB, 128 MiB or 1 GiB; a power of two ≥ 2 MiB).
    pub align: u64,
    /// System RAM the host must keep.
    pub keep: u64,
    /// Also use memory below 4 GiB.
    pub allow_below_4g: bool,
    /// Where the config's mounts go: `<dir>/node<N>` per node, or `<dir>` for one pool.
    pub mount_dir: PathBuf,
    /// `module =` of the config written.
    pub module: Option<PathBuf>,
}

/// A range the plan reserves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned {
    /// The range.
    pub range: Range,
    /// Its NUMA node (`None` without `--per-node`).
    pub node: Option<u32>,
}

/// The proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The ranges, sorted by address.
    pub ranges: Vec<Planned>,
    /// The alignment all of them have (their starts; the range holding the metadata area ends
    /// [`META_SIZE`] above an aligned address).
    pub align: u64,
    /// Where the module will keep its file metadata: the top [`META_SIZE`] of one range, which is
    /// that much larger than its share ([`metadata_area`] of the ranges).
    pub metadata: Range,
    /// The mounts' page size (1G when the ranges are 1 GiB-aligned, else 2M).
    pub pagesize: PageSize,
    /// Things the user should know (fallbacks, what was left out and why).
    pub notes: Vec<String>,
    /// The config that matches.
    pub config: HostConfig,
}

/// Who gets a share: a node (or `None`: the whole machine) and its usable ranges.
type Group = (Option<u32>, Vec<(u64, u64)>);

/// Why there is no plan: a message for people, saying what is possible.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("refused: {0}")]
pub struct Refusal(pub String);

/// Plans the reservation. Pure: everything comes from `machine` and `request`.
pub fn plan(machine: &Machine, request: &Request) -> Result<Plan, Refusal> {
    let refuse = |text: String| Err(Refusal(text));
    let want = Size(request.reserve);
    if request.reserve == 0 || !request.reserve.is_multiple_of(RANGE_ALIGN) {
        return refuse(format!("--reserve {want}: give a non-zero multiple of 2M (e.g. 1G)"));
    }
    if !request.align.is_power_of_two() || request.align < RANGE_ALIGN {
        return refuse(format!("--align {}: give 2M, 128M or 1G", Size(request.align)));
    }
    let ram = machine.iomem.system_ram();
    let total: u64 = ram.iter().map(|(s, e)| e - s).sum();
    let mut notes = Vec::new();
    let possible = total.saturating_sub(request.keep);
    if request.reserve + META_SIZE > possible {
        return refuse(format!(
            "--reserve {want} leaves the host too little: it has {} of System RAM and keeps at least {} \
             (--keep), so at most {} can be reserved (plus {} for the module's metadata)",
            human(total),
            Size(request.keep),
            Size(round_down(possible.saturating_sub(META_SIZE), RANGE_ALIGN)),
            Size(META_SIZE)
        ));
    }

    let booted_with: Vec<&str> = machine
        .cmdline
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .filter(|w| w.starts_with("memmap="))
        .collect();
    if !booted_with.is_empty() {
        notes.push(format!(
            "this boot already has {}: that memory is not System RAM now, so this plan comes on top of it \
             (to replace it, change those words instead of adding these)",
            booted_with.join(" ")
        ));
    }

    // What may be reserved.
    let taken: Vec<(u64, u64)> = machine.iomem.inside_system_ram().iter().map(|e| (e.start, e.end)).collect();
    for e in machine.iomem.inside_system_ram() {
        if e.name.starts_with("Kernel") || e.name == "Crash kernel" {
            notes.push(format!("left out {e} (in use by the running kernel)"));
        }
    }
    let mut usable = subtract(&ram, &taken);
    if let Some(firmware) = &machine.firmware_ram {
        let before: u64 = usable.iter().map(|(s, e)| e - s).sum();
        usable = intersect(&usable, firmware);
        let after: u64 = usable.iter().map(|(s, e)| e - s).sum();
        if after < before {
            notes.push(format!(
                "left out {} that the firmware's map does not call RAM",
                human(before - after)
            ));
        }
    }
    let low: u64 = intersect(&usable, &[(0, LOW_MEMORY_END)]).iter().map(|(s, e)| e - s).sum();
    if !request.allow_below_4g {
        usable = subtract(&usable, &[(0, LOW_MEMORY_END)]);
        if low > 0 {
            notes.push(format!(
                "left out {} below 4 GiB (32-bit DMA, firmware and early kernel allocations need it; \
                 --allow-below-4g uses it)",
                human(low)
            ));
        }
    }

    // Who gets what.
    let groups: Vec<Group> = match (&machine.nodes, request.per_node) {
        (_, false) => vec![(None, usable.clone())],
        (None, true) => {
            notes.push("no NUMA information in sysfs: planning for one node (node 0)".into());
            vec![(Some(0), usable.clone())]
        }
        (Some(nodes), true) => {
            let with_ram: Vec<_> =
                nodes.iter().filter(|(_, r)| !intersect(r, &ram).is_empty()).map(|(n, r)| (*n, r)).collect();
            if with_ram.is_empty() {
                return refuse("no NUMA node has System RAM in sysfs's memory blocks".into());
            }
            with_ram.into_iter().map(|(n, r)| (Some(n), intersect(&usable, r))).collect()
        }
    };
    let count = groups.len() as u64;
    let share = request.reserve / count;
    if request.per_node && (share * count != request.reserve || !share.is_multiple_of(RANGE_ALIGN)) {
        return refuse(format!(
            "--reserve {want} --per-node: {count} nodes have memory, so give a multiple of {} (2M per node)",
            Size(count * RANGE_ALIGN)
        ));
    }

    // The largest alignment at which every share fits.
    let mut aligns = vec![request.align];
    for fallback in [SECTION, RANGE_ALIGN] {
        if fallback < request.align {
            aligns.push(fallback);
        }
    }
    for &align in &aligns {
        if !share.is_multiple_of(align) {
            continue;
        }
        let Some((ranges, metadata, room)) = place_all(&groups, share, align) else { continue };
        if ranges.iter().map(|p| p.range.size).sum::<u64>() > possible {
            continue; // the area's own range would eat into --keep
        }
        if align < request.align {
            notes.push(format!(
                "not enough {}-aligned memory{}: fell back to {}-aligned ranges",
                Size(request.align),
                if !share.is_multiple_of(request.align) { " (the size is not a multiple of it)" } else { "" },
                Size(align)
            ));
        }
        let pagesize = if align >= 1 << 30 { PageSize::G1 } else { PageSize::M2 };
        if pagesize != PageSize::G1 {
            notes
                .push("the ranges are not 1 GiB-aligned: the mounts use pagesize=2M (no 1 GiB pages)".into());
        }
        let holder = ranges.iter().find(|p| p.range.end() == metadata.end()).expect("the area is in a range");
        let whose = holder.node.map_or("the pool".to_string(), |n| format!("node {n}"));
        notes.push(match room {
            Room::OnTop => format!(
                "{} is {} larger than {whose}'s share: the module keeps its file metadata (files that \
                 survive kexec) in its top {} ({metadata}), outside the pool",
                holder.range,
                Size(META_SIZE),
                Size(META_SIZE)
            ),
            Room::OwnRange => format!(
                "{} is for the module's file metadata (files that survive kexec), in its top {} \
                 ({metadata}): no share had room for {} more above an aligned range; its other {} goes \
                 to {whose}'s pool, where only pagesize=2M and 4K mounts use it",
                holder.range,
                Size(META_SIZE),
                Size(META_SIZE),
                Size(META_SIZE)
            ),
        });
        if !holder.range.start.is_multiple_of(SECTION) || !holder.range.end().is_multiple_of(SECTION) {
            notes.push(format!(
                "the module warns at load that {} is not 128 MiB-aligned: the memory section it shares \
                 with System RAM keeps its struct pages (a few KiB for {})",
                holder.range,
                Size(META_SIZE)
            ));
        }
        let config = config_for(&ranges, &groups, pagesize, request);
        return Ok(Plan { ranges, align, pagesize, metadata, notes, config });
    }

    // Nothing fits: say how much would.
    let mut why = Vec::new();
    for (node, usable) in &groups {
        let most: u64 = usable
            .iter()
            .map(|&(s, e)| round_down(e, RANGE_ALIGN).saturating_sub(round_up(s, RANGE_ALIGN)))
            .sum();
        let who = node.map_or("the machine".to_string(), |n| format!("node {n}"));
        if most < share {
            why.push(format!(
                "{who} has {} that can be reserved (2M-aligned), {} asked",
                human(most),
                Size(share)
            ));
        }
    }
    if why.is_empty() {
        why.push(format!(
            "no share of {} has room for the module's {} metadata area on top of an aligned range, \
             nor in a range of its own",
            Size(share),
            Size(META_SIZE)
        ));
    }
    let mut text = format!("cannot reserve {want}: {}", why.join("; "));
    text.push_str(&format!(
        " (counting System RAM{} outside the running kernel's image and crash kernel)",
        if request.allow_below_4g { "" } else { " above 4 GiB" }
    ));
    if !request.allow_below_4g && low > 0 {
        text.push_str(&format!("; --allow-below-4g would also consider {} below 4 GiB", human(low)));
    }
    refuse(text)
}

/// How the plan makes room for the module's metadata area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Room {
    /// On top of a range that holds a share: that range is [`META_SIZE`] larger.
    OnTop,
    /// In a range of its own, twice [`META_SIZE`] (the module never uses a range of only
    /// [`META_SIZE`]): no node's share had [`META_SIZE`] more room above an aligned range.
    OwnRange,
}

/// Places every group's share at `align` and makes room for the module's metadata area: the
/// ranges sorted by address, the area and how. The group whose ranges reach highest tries first;
/// a placement counts only if the module's rule ([`metadata_area`]) picks the area the plan made
/// room for.
fn place_all(groups: &[Group], share: u64, align: u64) -> Option<(Vec<Planned>, Range, Room)> {
    let plain: Vec<Vec<Planned>> = groups
        .iter()
        .map(|(node, usable)| place(usable, share, align, *node, false).map(|(parts, _)| parts))
        .collect::<Option<_>>()?;
    let top = |parts: &[Planned]| parts.iter().map(|p| p.range.end()).max().unwrap_or(0);
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(top(&plain[i])));
    let picked = |i: usize, parts: Vec<Planned>, room: Range| {
        let mut all: Vec<Planned> = plain
            .iter()
            .enumerate()
            .flat_map(|(j, p)| if j == i { parts.clone() } else { p.clone() })
            .collect();
        all.sort_by_key(|p| p.range.start);
        let ranges: Vec<Range> = all.iter().map(|p| p.range).collect();
        let area = metadata_area(&ranges)?;
        (area.end() == room.end()).then_some((all, area))
    };
    for &i in &order {
        let (node, usable) = &groups[i];
        let Some((parts, Some(room))) = place(usable, share, align, *node, true) else { continue };
        if let Some((all, area)) = picked(i, parts, room) {
            return Some((all, area, Room::OnTop));
        }
    }
    for &i in &order {
        let (node, usable) = &groups[i];
        let taken: Vec<(u64, u64)> = plain[i].iter().map(|p| (p.range.start, p.range.end())).collect();
        let Some(room) = subtract(usable, &taken).into_iter().rev().find_map(|(s, e)| {
            let (s, e) = (round_up(s, RANGE_ALIGN), round_down(e, RANGE_ALIGN));
            (e >= s + 2 * META_SIZE).then_some(Range { start: e - 2 * META_SIZE, size: 2 * META_SIZE })
        }) else {
            continue;
        };
        let mut parts = plain[i].clone();
        parts.push(Planned { range: room, node: *node });
        if let Some((all, area)) = picked(i, parts, room) {
            return Some((all, area, Room::OwnRange));
        }
    }
    None
}

/// Cuts `share` bytes of `align`-aligned ranges out of `usable`, from the top: one range if a
/// single stretch holds it, else several, highest first. With `meta`, one of them is
/// [`META_SIZE`] larger, for the module's metadata area at its top, placed so that the module's
/// rule can pick it ([`holds_metadata`]); that range is returned too.
fn place(
    usable: &[(u64, u64)],
    share: u64,
    align: u64,
    node: Option<u32>,
    meta: bool,
) -> Option<(Vec<Planned>, Option<Range>)> {
    // Aligned starts; ends 2 MiB-aligned (only a range with the metadata area ends off `align`).
    let pieces: Vec<(u64, u64)> = merge(usable.to_vec())
        .into_iter()
        .filter_map(|(s, e)| {
            let (s, e) = (round_up(s, align), round_down(e, RANGE_ALIGN));
            (s < e).then_some((s, e))
        })
        .collect();
    let one = |range: Range| Some((vec![Planned { range, node }], meta.then_some(range)));
    if meta {
        if let Some(start) = pieces.iter().rev().find_map(|&(s, e)| meta_start(s, e, share, align)) {
            return one(Range { start, size: share + META_SIZE });
        }
        return (0..pieces.len()).rev().find_map(|holder| cut(&pieces, share, align, node, Some(holder)));
    }
    if let Some((_, end)) = pieces
        .iter()
        .rev()
        .map(|&(s, e)| (s, round_down(e, align)))
        .find(|(s, e)| e.saturating_sub(*s) >= share)
    {
        return one(Range { start: end - share, size: share });
    }
    cut(&pieces, share, align, node, None)
}

/// Cuts `share` out of several `pieces`, highest first; piece `holder` (if any) also holds the
/// metadata area on top of as much as fits below it.
fn cut(
    pieces: &[(u64, u64)],
    share: u64,
    align: u64,
    node: Option<u32>,
    holder: Option<usize>,
) -> Option<(Vec<Planned>, Option<Range>)> {
    let mut left = share;
    let mut out = Vec::new();
    let mut room = None;
    for (i, &(s, e)) in pieces.iter().enumerate().rev() {
        if left == 0 {
            break;
        }
        let range = if Some(i) == holder {
            let mut take = left.min(round_down(e.saturating_sub(s).saturating_sub(META_SIZE), align));
            let start = loop {
                if take == 0 {
                    return None;
                }
                if let Some(start) = meta_start(s, e, take, align) {
                    break start;
                }
                take -= align;
            };
            left -= take;
            let range = Range { start, size: take + META_SIZE };
            room = Some(range);
            range
        } else {
            let e = round_down(e, align);
            if e <= s {
                continue;
            }
            let take = left.min(e - s);
            left -= take;
            Range { start: e - take, size: take }
        };
        out.push(Planned { range, node });
    }
    (left == 0 && room.is_some() == holder.is_some()).then_some((out, room))
}

/// The highest `align`-aligned start in `[s, e)` of a range of `data` bytes plus the metadata
/// area on top that the module's rule would pick ([`holds_metadata`]).
fn meta_start(s: u64, e: u64, data: u64, align: u64) -> Option<u64> {
    let size = data + META_SIZE;
    let mut start = round_down(e.checked_sub(size)?, align);
    while start >= s {
        if holds_metadata(Range { start, size }) {
            return Some(start);
        }
        start = start.checked_sub(align)?;
    }
    None
}

/// Whether the module's rule prefers `range` for its metadata area: larger than the area, and
/// its top does not lie in a 1 GiB-aligned GiB wholly inside it (so no 1 GiB page is lost).
pub fn holds_metadata(range: Range) -> bool {
    let gib = round_down(range.end() - 1, GIB);
    range.size > META_SIZE && (gib < range.start || gib + GIB > range.end())
}

/// Where the module puts its metadata area for these `ranges=` (`pl_meta_place()` in
/// driver/kmod/persist.c): the top [`META_SIZE`] of the highest range that [`holds_metadata`],
/// else of the highest range larger than the area; `None` if no range is.
pub fn metadata_area(ranges: &[Range]) -> Option<Range> {
    let larger = || ranges.iter().filter(|r| r.size > META_SIZE);
    let end =
        larger().filter(|r| holds_metadata(**r)).map(Range::end).max().or(larger().map(Range::end).max())?;
    Some(Range { start: end - META_SIZE, size: META_SIZE })
}

/// The config for the planned ranges: one mount per node (`<dir>/node<N>`, `node = N`) with
/// `--per-node`, else one mount `<dir>` that every node's VMs use.
fn config_for(ranges: &[Planned], groups: &[Group], pagesize: PageSize, request: &Request) -> HostConfig {
    let mount = |path: PathBuf, node| Mount { path, pagesize, node, uid: None, gid: None, mode: None };
    let spec = |path: &Path| format!("pagelessfs:{}", path.display());
    let mut mounts = Vec::new();
    let mut pools = BTreeMap::new();
    if request.per_node {
        for (node, _) in groups {
            let node = node.unwrap_or(0);
            let path = request.mount_dir.join(format!("node{node}"));
            pools.insert(node, spec(&path));
            mounts.push(mount(path, Some(node)));
        }
    } else {
        let path = request.mount_dir.clone();
        pools.insert(0, spec(&path));
        mounts.push(mount(path, None));
    }
    HostConfig {
        module: request.module.clone(),
        ranges: ranges.iter().map(|p| p.range).collect(),
        mounts,
        pools,
    }
}

/// The text `pageless host plan` prints.
pub fn render(plan: &Plan, config_path: &str) -> String {
    let mut out = String::new();
    let total: u64 = plan.ranges.iter().map(|p| p.range.size).sum();
    let _ = writeln!(
        out,
        "Plan: reserve {} in {} range(s), {}-aligned (pagesize={} mounts)",
        human(total),
        plan.ranges.len(),
        Size(plan.align),
        plan.pagesize
    );
    for p in &plan.ranges {
        let node = p.node.map_or(String::new(), |n| format!("node {n}: "));
        let meta = if p.range.end() == plan.metadata.end() {
            format!(" (top {}: the module's metadata)", Size(META_SIZE))
        } else {
            String::new()
        };
        let _ = writeln!(out, "  {node}{} = [{:#x}-{:#x}]{meta}", p.range, p.range.start, p.range.end() - 1);
    }
    let memmap: Vec<String> = plan.ranges.iter().map(|p| p.range.memmap()).collect();
    let _ = writeln!(out, "\nKernel command line (QEMU -append, /proc/cmdline after the reboot):");
    let _ = writeln!(out, "  {}", memmap.join(" "));
    let _ = writeln!(
        out,
        "\n/etc/default/grub: add the words to GRUB_CMDLINE_LINUX (keep what is there), run update-grub, reboot:"
    );
    let _ = writeln!(out, "  GRUB_CMDLINE_LINUX=\"{}\"", memmap.join(" ").replace('$', "\\\\\\$"));
    let _ = writeln!(
        out,
        "  ($ is written \\\\\\$ there: the file is read by the shell, which makes it \\$ in grub.cfg, where \
         GRUB makes it $. At a GRUB prompt type \\$.)"
    );
    let _ = writeln!(out, "\nModule parameter: ranges={}", plan.config.ranges_param());
    let _ = writeln!(out, "\n{config_path}:");
    for line in plan.config.to_toml().lines() {
        let _ = writeln!(out, "{}", if line.is_empty() { String::new() } else { format!("  {line}") });
    }
    if !plan.notes.is_empty() {
        let _ = writeln!(out, "\nNotes:");
        for note in &plan.notes {
            let _ = writeln!(out, "  - {note}");
        }
    }
    let _ =
        writeln!(out, "\nThen: reboot with the new command line, `pageless host up`, `pageless host check`.");
    out
}

/// A byte count for people: exact (`2G`, `512M`) when it is a whole number of MiB, else in GiB
/// with two decimals (`2.97 GiB`).
pub fn human(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        Size(bytes).to_string()
    } else {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    }
}

fn round_up(value: u64, align: u64) -> u64 {
    value.checked_next_multiple_of(align).unwrap_or(round_down(u64::MAX, align))
}

fn round_down(value: u64, align: u64) -> u64 {
    value - value % align
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;
    const M: u64 = 1 << 20;

    /// /proc/iomem of the test's TCG guest (QEMU 10 pc, -m 6G, two NUMA nodes of 4G and 2G), as
    /// recorded from its console.
    const GUEST_IOMEM: &str = include_str!("fixtures/iomem-qemu-6g-2nodes");
    /// /proc/iomem of the 24G cloud machine the tests were written on, as root, with the `Crash kernel` line
    /// a `crashkernel=512M` boot would add (placed where the kernel puts it: below 4 GiB).
    const CLOUD_IOMEM: &str = include_str!("fixtures/iomem-cloud-24g-crashkernel");

    fn request(reserve: u64, per_node: bool) -> Request {
        Request {
            reserve,
            per_node,
            align: G,
            keep: 2 * G,
            allow_below_4g: false,
            mount_dir: "/mnt/pageless".into(),
            module: None,
        }
    }

    /// The same guest booted again: physical KASLR put the kernel at 0x14b400000 (5.18 GiB), in
    /// node 1.
    const GUEST_IOMEM_KERNEL_HIGH: &str = include_str!("fixtures/iomem-qemu-6g-2nodes-kernel-at-5g");

    /// The same guest's memory blocks, as the test prints them: `block_size_bytes HEX`, then
    /// `nodeN ID…` (the `memoryID` links of /sys/devices/system/node/nodeN).
    const GUEST_NODES: &str = include_str!("fixtures/nodes-qemu-6g-2nodes");

    fn guest() -> Machine {
        let mut lines = GUEST_NODES.lines();
        let block_size = lines.next().and_then(|l| l.strip_prefix("block_size_bytes ")).unwrap();
        let blocks: BTreeMap<u32, Vec<u64>> = lines
            .map(|l| {
                let mut words = l.split_whitespace();
                let node = words.next().unwrap().trim_start_matches("node").parse().unwrap();
                (node, words.map(|w| w.parse().unwrap()).collect())
            })
            .collect();
        Machine {
            iomem: Iomem::parse(GUEST_IOMEM).unwrap(),
            firmware_ram: None,
            nodes: super::super::numa::node_ranges(u64::from_str_radix(block_size, 16).unwrap(), &blocks),
            cmdline: None,
        }
    }

    #[test]
    fn guest_nodes() {
        let nodes = guest().nodes.unwrap();
        assert_eq!(nodes[&0], vec![(0, 3 * G), (4 * G, 5 * G)]);
        assert_eq!(nodes[&1], vec![(5 * G, 7 * G)]);
    }

    fn ranges(plan: &Plan) -> Vec<String> {
        plan.ranges.iter().map(|p| format!("{:?}:{}", p.node, p.range)).collect()
    }

    /// What the module makes of the plan: the metadata area where `pl_meta_place()` puts it
    /// (and where the plan says), the top of one range; after taking it out, each share (each
    /// node's with `--per-node`, else the whole request) is usable in whole, aligned pages of the
    /// mounts' size, counted as the module's pool does (adjacent ranges of a node coalesce).
    fn check_usable(plan: &Plan, request: &Request) -> Result<(), String> {
        let all: Vec<Range> = plan.ranges.iter().map(|p| p.range).collect();
        let area = metadata_area(&all).ok_or("no range can hold the metadata area")?;
        if area != plan.metadata {
            return Err(format!("the module puts its metadata at {area}, the plan says {}", plan.metadata));
        }
        let page = plan.pagesize.bytes();
        let mut per_group: BTreeMap<Option<u32>, Vec<(u64, u64)>> = BTreeMap::new();
        for p in &plan.ranges {
            per_group.entry(p.node).or_default().push((p.range.start, p.range.end()));
        }
        let share = request.reserve / per_group.len() as u64;
        for (node, parts) in per_group {
            let pool = subtract(&merge(parts), &[(area.start, area.end())]);
            let pages: u64 =
                pool.iter().map(|&(s, e)| round_down(e, page).saturating_sub(round_up(s, page)) / page).sum();
            if pages * page < share {
                return Err(format!(
                    "{node:?}: {} usable in {} pages, {} asked ({:?})",
                    Size(pages * page),
                    plan.pagesize,
                    Size(share),
                    ranges(plan)
                ));
            }
        }
        Ok(())
    }

    #[test]
    fn metadata_area_follows_the_module() {
        let r = |text: &str| Range::parse(text).unwrap();
        // The examples of driver/kmod/README.md ("Files that survive kexec").
        assert_eq!(metadata_area(&[r("1G@4G"), r("512M@6G")]), Some(r("2M@6654M")));
        assert_eq!(metadata_area(&[r("1G@4G"), r("1G@6G")]), Some(r("2M@7166M")));
        assert_eq!(metadata_area(&[r("1G@4G"), r("1026M@5G")]), Some(r("2M@6G")));
        // A higher range whose top GiB is whole loses to a lower one whose top is not.
        assert_eq!(metadata_area(&[r("1026M@4G"), r("1G@6G")]), Some(r("2M@5G")));
        assert_eq!(metadata_area(&[r("2M@8G"), r("4M@6G")]), Some(r("2M@6146M")));
        assert_eq!(metadata_area(&[r("2M@8G")]), None);
    }

    #[test]
    fn per_node_on_the_guest() {
        let r = request(2 * G, true);
        let plan = plan(&guest(), &r).unwrap();
        // Node 1's RAM ends at 7G: 1G@6G plus 2M does not fit, 1026M@5G does (its GiB 5G-6G
        // stays whole, the metadata area is 6G-6G+2M).
        assert_eq!(ranges(&plan), ["Some(0):1G@4G", "Some(1):1026M@5G"]);
        assert_eq!(plan.metadata, Range::parse("2M@6G").unwrap());
        assert_eq!(plan.pagesize, PageSize::G1);
        check_usable(&plan, &r).unwrap();
        let text = render(&plan, "/etc/pageless/pageless.toml");
        assert!(text.contains("\n  memmap=1G$4G memmap=1026M$5G\n"), "{text}");
        assert!(text.contains("GRUB_CMDLINE_LINUX=\"memmap=1G\\\\\\$4G memmap=1026M\\\\\\$5G\""), "{text}");
        assert!(text.contains("ranges=1G@4G,1026M@5G"), "{text}");
        assert!(
            text.contains("node 1: 1026M@5G = [0x140000000-0x1801fffff] (top 2M: the module's metadata)"),
            "{text}"
        );
        assert!(text.contains("1026M@5G is 2M larger than node 1's share"), "{text}");
        assert!(text.contains("not 128 MiB-aligned"), "{text}");
        assert_eq!(plan.config.pool_for_node(1), Some("pagelessfs:/mnt/pageless/node1"));
        assert_eq!(plan.config.mounts[1].options(), "pagesize=1G,node=1");
        assert_eq!(HostConfig::parse(&plan.config.to_toml(), "plan").unwrap(), plan.config);
    }

    #[test]
    fn one_pool_takes_the_top() {
        let r = request(2 * G, false);
        let plan = plan(&guest(), &r).unwrap();
        // 2G@5G plus 2M would end past RAM (7G): one GiB lower.
        assert_eq!(ranges(&plan), ["None:2050M@4G"]);
        assert_eq!(plan.metadata, Range::parse("2M@6G").unwrap());
        assert_eq!(plan.config.mounts[0].node, None);
        check_usable(&plan, &r).unwrap();
    }

    #[test]
    fn falls_back_to_smaller_alignment() {
        let plan = plan(&guest(), &request(G, true)).unwrap();
        assert_eq!(ranges(&plan), ["Some(0):512M@4608M", "Some(1):514M@6528M"]);
        assert_eq!((plan.align, plan.pagesize), (SECTION, PageSize::M2));
        assert!(plan.notes.iter().any(|n| n.contains("fell back to 128M")), "{:?}", plan.notes);
        check_usable(&plan, &request(G, true)).unwrap();
        let r = Request { reserve: 10 * M, ..request(0, false) };
        let small = super::plan(&guest(), &r).unwrap();
        assert_eq!((small.align, ranges(&small)), (RANGE_ALIGN, vec!["None:12M@7156M".to_string()]));
        check_usable(&small, &r).unwrap();
    }

    #[test]
    fn refusals_say_what_is_possible() {
        let e = plan(&guest(), &request(100 << 40, false)).unwrap_err().to_string();
        assert!(
            e.contains("6.00 GiB of System RAM")
                && e.contains("so at most 4092M can be reserved (plus 2M for the module's metadata)"),
            "{e}"
        );
        let e = plan(&guest(), &request(4 * G, false)).unwrap_err().to_string();
        assert!(e.contains("at most 4092M"), "{e}");
        // Per node, too, the host keeps 2G.
        let e = plan(&guest(), &request(3 * G + G, true)).unwrap_err().to_string();
        assert!(e.contains("leaves the host too little"), "{e}");
        let e = plan(&guest(), &Request { keep: G, ..request(4 * G, true) }).unwrap_err().to_string();
        assert!(e.contains("node 0 has 1G") && e.contains("--allow-below-4g would also consider"), "{e}");
        let e = plan(&guest(), &request(3 * M, false)).unwrap_err().to_string();
        assert!(e.contains("multiple of 2M"), "{e}");
        let e = plan(&guest(), &request(2 * M, true)).unwrap_err().to_string();
        assert!(e.contains("multiple of 4M"), "{e}");
        let e = plan(&guest(), &Request { align: 3 * M, ..request(G, false) }).unwrap_err().to_string();
        assert!(e.contains("--align"), "{e}");
    }

    #[test]
    fn below_4g_only_when_asked() {
        let r = Request { keep: G, allow_below_4g: true, ..request(4 * G, true) };
        let plan = plan(&guest(), &r).unwrap();
        // Node 1 has no room for 2M more: node 0's range at 4G holds the metadata area (its top
        // GiB is not whole, node 1's is, so the module picks it).
        assert_eq!(ranges(&plan), ["Some(0):1152M@1792M", "Some(0):898M@4G", "Some(1):2G@5G"]);
        assert_eq!(plan.metadata, Range::parse("2M@4992M").unwrap());
        // The kernel image sits at 1084M-1128M: no 1 GiB-aligned GiB below 4 GiB is free of it.
        assert_eq!(plan.align, SECTION);
        check_usable(&plan, &r).unwrap();
    }

    #[test]
    fn keeps_away_from_kernel_and_crash_kernel() {
        let machine = Machine {
            iomem: Iomem::parse(CLOUD_IOMEM).unwrap(),
            cmdline: Some("BOOT_IMAGE=/vmlinuz root=/dev/vda1 memmap=1G$30G".into()),
            ..Machine::default()
        };
        let r = Request { allow_below_4g: true, keep: G, ..request(22 * G, false) };
        let plan = plan(&machine, &r).unwrap();
        for p in &plan.ranges {
            for e in machine.iomem.inside_system_ram() {
                assert!(p.range.end() <= e.start || e.end <= p.range.start, "{} overlaps {e}", p.range);
            }
            assert!(machine.iomem.covered_by(p.range.start, p.range.end(), "System RAM") == p.range.size);
        }
        assert!(plan.notes.iter().any(|n| n.contains("Crash kernel")), "{:?}", plan.notes);
        assert!(plan.notes.iter().any(|n| n.contains("Kernel code")), "{:?}", plan.notes);
        assert!(plan.notes.iter().any(|n| n.contains("already has memmap=1G$30G")), "{:?}", plan.notes);
    }

    #[test]
    fn keeps_away_from_a_kernel_above_4g() {
        let machine = Machine { iomem: Iomem::parse(GUEST_IOMEM_KERNEL_HIGH).unwrap(), ..guest() };
        let per_node = plan(&machine, &request(2 * G, true)).unwrap();
        // No node has an aligned GiB with 2M free above it: the metadata area gets a range of its
        // own, 4M below node 1's GiB (the module never uses a range of only 2M).
        assert_eq!(ranges(&per_node), ["Some(0):1G@4G", "Some(1):4M@6140M", "Some(1):1G@6G"]);
        assert_eq!((per_node.metadata, per_node.pagesize), (Range::parse("2M@6142M").unwrap(), PageSize::G1));
        assert!(per_node.notes.iter().any(|n| n.contains("4M@6140M is for the module's file metadata")));
        check_usable(&per_node, &request(2 * G, true)).unwrap();
        // No 2G stretch without the kernel: two ranges around it, the lower one 2M larger (the
        // higher one's top GiB is whole, so the module puts its metadata in the lower one).
        let one = plan(&machine, &request(2 * G, false)).unwrap();
        assert_eq!(ranges(&one), ["None:1026M@4G", "None:1G@6G"]);
        assert_eq!(one.metadata, Range::parse("2M@5G").unwrap());
        check_usable(&one, &request(2 * G, false)).unwrap();
        let e = plan(&machine, &Request { keep: G, ..request(4 * G, true) }).unwrap_err().to_string();
        assert!(e.contains("node 0 has 1G") && e.contains("node 1 has 2010M"), "{e}");
    }

    #[test]
    fn firmware_map_limits_candidates() {
        let machine = Machine { firmware_ram: Some(vec![(4 * G, 5 * G)]), ..guest() };
        let plan = plan(&machine, &request(G - 128 * M, false)).unwrap();
        assert_eq!(ranges(&plan), ["None:898M@4G"]);
        assert!(plan.notes.iter().any(|n| n.contains("firmware")));
        // A whole GiB leaves no room for the metadata area on top of it.
        let e = super::plan(&machine, &request(G, false)).unwrap_err().to_string();
        assert!(e.contains("room for the module's 2M metadata area"), "{e}");
    }

    proptest::proptest! {
        /// Whatever is asked, a plan lies in usable RAM, is aligned, does not overlap, has the
        /// size asked for plus the module's metadata area, and after the module takes that area
        /// every share is usable in whole pages of the mounts' size.
        #[test]
        fn plans_are_sound(
            which in 0usize..3, reserve_mb in 0u64..8192, per_node: bool, below: bool, align_shift in 21u32..31,
        ) {
            let machine = match which {
                0 => guest(),
                1 => Machine { iomem: Iomem::parse(GUEST_IOMEM_KERNEL_HIGH).unwrap(), ..guest() },
                _ => Machine { iomem: Iomem::parse(CLOUD_IOMEM).unwrap(), ..Machine::default() },
            };
            let r = Request { reserve: reserve_mb * M, per_node, align: 1 << align_shift, allow_below_4g: below, keep: G, ..request(0, false) };
            if let Ok(p) = plan(&machine, &r) {
                let total: u64 = p.ranges.iter().map(|p| p.range.size).sum();
                proptest::prop_assert!(total == r.reserve + META_SIZE || total == r.reserve + 2 * META_SIZE, "{total}");
                if let Err(e) = check_usable(&p, &r) {
                    proptest::prop_assert!(false, "{}", e);
                }
                for (i, a) in p.ranges.iter().enumerate() {
                    // Every start is aligned but that of a range of its own for the metadata area.
                    let own = a.range.size == 2 * META_SIZE && a.range.end() == p.metadata.end();
                    proptest::prop_assert!(own || a.range.start % p.align == 0);
                    proptest::prop_assert_eq!(machine.iomem.covered_by(a.range.start, a.range.end(), "System RAM"), a.range.size);
                    proptest::prop_assert!(below || a.range.start >= LOW_MEMORY_END);
                    for b in &p.ranges[i + 1..] {
                        proptest::prop_assert!(a.range.end() <= b.range.start);
                    }
                    for e in machine.iomem.inside_system_ram() {
                        proptest::prop_assert!(a.range.end() <= e.start || e.end <= a.range.start);
                    }
                }
            }
        }
    }
}
