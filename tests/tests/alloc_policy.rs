//! Property test of the kernel module's extent allocator (driver/kmod/alloc.c, the code
//! pageless.ko runs, built for user space: `pageless_tests::alloc`). Random pools (ranges on
//! two NUMA nodes, adjacent or not) take random sequences of creates, resizes and deletes of
//! files of 4K, 2M and 1G pages, on one node or on any. After every step:
//!
//! * nothing is handed out twice and nothing is lost: free and allocated extents are disjoint,
//!   lie in the ranges and add up to the capacity; free extents are coalesced per node and each
//!   lies on its range's node;
//! * exact ENOSPC: a request fails if and only if no placement in the free space as it is can
//!   hold it (its pages' alignment, its node); so it never fails while an ideal packing of the
//!   free space could satisfy it, at any ratio of free space to request;
//! * a successful request gets aligned extents of exactly its size on its node; a failed one
//!   (ENOSPC, or ENOMEM of the bookkeeping, injected) leaves the free list as it was;
//! * placement: a 4K or 2M request never breaks a wholly free 1 GiB-aligned GiB while the free
//!   space outside such GiBs can hold it, and a 4K request never a free 2 MiB block while the
//!   space outside them can.

use pageless_tests::alloc::{FreeExtent, FreeList};
use proptest::prelude::*;

const K4: u64 = 4 << 10;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
const PAGE_SIZES: [u64; 3] = [K4, M2, G1];

#[derive(Clone, Debug)]
struct Range {
    start: u64,
    size: u64,
    nid: i32,
}

#[derive(Clone, Debug)]
enum Op {
    /// A file of `pages` pages of PAGE_SIZES[class] on `node` (None: any).
    Create { class: usize, pages: u64, node: Option<i32> },
    /// File `file % files` to `pages` pages.
    Resize { file: usize, pages: u64 },
    /// File `file % files` deleted.
    Delete { file: usize },
}

struct File {
    psize: u64,
    node: Option<i32>,
    extents: Vec<(u64, u64)>,
}

fn ranges() -> impl Strategy<Value = Vec<Range>> {
    // (gap before it, size), both in 2 MiB units, and node: ranges from 4 GiB up, adjacent
    // when the gap is 0 (of the same node: one free extent; of two: never merged).
    prop::collection::vec((prop_oneof![Just(0u64), 1u64..700], 1u64..1400, 0i32..2), 1..5).prop_map(|v| {
        let mut at = 4 * G1;
        v.into_iter()
            .map(|(gap, size, nid)| {
                at += gap * M2;
                let r = Range { start: at, size: size * M2, nid };
                at += r.size;
                r
            })
            .collect()
    })
}

fn pages(class: usize) -> BoxedStrategy<u64> {
    match class {
        0 => prop_oneof![1u64..64, 1u64..4096, 1u64..262_144].boxed(),
        1 => prop_oneof![1u64..8, 1u64..600].boxed(),
        _ => (1u64..4).boxed(),
    }
}

fn op() -> impl Strategy<Value = Op> {
    let node = prop_oneof![Just(None), Just(Some(0)), Just(Some(1))];
    prop_oneof![
        4 => (0usize..3, node).prop_flat_map(|(class, node)| pages(class).prop_map(move |pages| Op::Create { class, pages, node })),
        2 => (any::<usize>(), 0u64..600).prop_map(|(file, pages)| Op::Resize { file, pages }),
        3 => any::<usize>().prop_map(|file| Op::Delete { file }),
    ]
}

fn node_of(ranges: &[Range], phys: u64) -> i32 {
    ranges.iter().find(|r| phys >= r.start && phys < r.start + r.size).map_or(-1, |r| r.nid)
}

/// Bytes of `align`-aligned space in the free extents on `node`, less what lies in wholly free
/// `outer`-aligned blocks (outer None: nothing less). Computed here, apart from alloc.c.
fn aligned_space(free: &[FreeExtent], align: u64, node: Option<i32>, outer: Option<u64>) -> u64 {
    let core = |f: &FreeExtent, a: u64| {
        let lo = f.phys.div_ceil(a) * a;
        let hi = (f.phys + f.len) / a * a;
        hi.saturating_sub(lo)
    };
    free.iter()
        .filter(|f| node.is_none_or(|n| n == f.nid))
        .map(|f| core(f, align) - outer.map_or(0, |o| core(f, o)))
        .sum()
}

/// Wholly free `block`-aligned blocks.
fn free_blocks(free: &[FreeExtent], block: u64) -> u64 {
    aligned_space(free, block, None, None) / block
}

struct Pool {
    ranges: Vec<Range>,
    list: FreeList,
    files: Vec<File>,
}

impl Pool {
    fn new(ranges: Vec<Range>) -> Self {
        let mut list = FreeList::new();
        for r in &ranges {
            list.free(r.start, r.size, r.nid);
        }
        Pool { ranges, list, files: Vec::new() }
    }

    /// Allocate for `file`, checking every property of a request; Err(errno) if it failed.
    fn alloc(
        &mut self,
        bytes: u64,
        psize: u64,
        node: Option<i32>,
        inject: Option<u32>,
    ) -> Result<Vec<(u64, u64)>, i32> {
        let before = self.list.entries();
        let avail = aligned_space(&before, psize, node, None);
        prop_assert_eq_ok(self.list.avail(psize, node), avail, "pl_free_avail() against the model");
        FreeList::fail_after(inject);
        let got = self.list.alloc(bytes, psize, node);
        FreeList::fail_after(None);
        let after = self.list.entries();
        match &got {
            Err(e) => {
                assert_eq!(before, after, "a failed request ({e}) changed the free list");
                if *e == -libc::ENOSPC {
                    assert!(avail < bytes, "ENOSPC for {bytes} bytes of {psize} pages on {node:?} with {avail} available: {before:?}");
                } else {
                    assert!(*e == -libc::ENOMEM && inject.is_some(), "unexpected error {e}");
                }
            }
            Ok(ext) => {
                assert!(avail >= bytes, "request of {bytes} succeeded with only {avail} available");
                assert_eq!(
                    ext.iter().map(|e| e.1).sum::<u64>(),
                    bytes,
                    "extents {ext:?} are not {bytes} bytes"
                );
                for &(phys, len) in ext {
                    assert!(
                        phys % psize == 0 && len % psize == 0 && len > 0,
                        "extent {phys:#x}+{len:#x} not {psize}-aligned"
                    );
                    let nid = node_of(&self.ranges, phys);
                    assert_eq!(
                        node_of(&self.ranges, phys + len - 1),
                        nid,
                        "extent {phys:#x}+{len:#x} spans nodes"
                    );
                    if let Some(n) = node {
                        assert_eq!(nid, n, "extent {phys:#x}+{len:#x} not on node {n}");
                    }
                }
                // Placement: larger free blocks stay whole while the rest holds the request.
                for (outer, smaller_than) in [(G1, G1), (M2, M2)] {
                    if psize < smaller_than && aligned_space(&before, psize, node, Some(outer)) >= bytes {
                        assert_eq!(
                            free_blocks(&after, outer),
                            free_blocks(&before, outer),
                            "{bytes} bytes of {psize} pages on {node:?} broke a free {outer}-byte block though the space outside such blocks held it: {before:?} -> {ext:?}"
                        );
                    }
                }
            }
        }
        got
    }

    fn release(&mut self, extents: &[(u64, u64)]) {
        for &(phys, len) in extents {
            let nid = node_of(&self.ranges, phys);
            self.list.free(phys, len, nid);
        }
    }

    fn step(&mut self, op: &Op, inject: Option<u32>) {
        match *op {
            Op::Create { class, pages, node } => {
                let psize = PAGE_SIZES[class];
                if let Ok(extents) = self.alloc(pages * psize, psize, node, inject) {
                    self.files.push(File { psize, node, extents });
                }
            }
            Op::Resize { file, pages } if !self.files.is_empty() => {
                let i = file % self.files.len();
                let (psize, node) = (self.files[i].psize, self.files[i].node);
                let size: u64 = self.files[i].extents.iter().map(|e| e.1).sum();
                let pages = if psize == G1 { pages % 4 } else { pages };
                let want = pages * psize;
                if want > size {
                    if let Ok(more) = self.alloc(want - size, psize, node, inject) {
                        self.files[i].extents.extend(more);
                    }
                } else {
                    // Truncate: the tail goes back, as pl_setsize() frees it.
                    let mut cut = size - want;
                    let mut freed = Vec::new();
                    while cut > 0 {
                        let last = self.files[i].extents.last_mut().expect("extent");
                        let n = cut.min(last.1);
                        last.1 -= n;
                        freed.push((last.0 + last.1, n));
                        if last.1 == 0 {
                            self.files[i].extents.pop();
                        }
                        cut -= n;
                    }
                    self.release(&freed);
                }
            }
            Op::Delete { file } if !self.files.is_empty() => {
                let f = self.files.swap_remove(file % self.files.len());
                self.release(&f.extents);
            }
            _ => {}
        }
        self.check_conservation();
    }

    /// Whether ranges of one node cover [phys, phys + len) (adjacent ranges of a node merge).
    fn covered(&self, mut phys: u64, len: u64) -> bool {
        let end = phys + len;
        let nid = node_of(&self.ranges, phys);
        while phys < end {
            match self.ranges.iter().find(|r| phys >= r.start && phys < r.start + r.size && r.nid == nid) {
                Some(r) => phys = r.start + r.size,
                None => return false,
            }
        }
        true
    }

    /// Free and allocated extents: disjoint, inside the ranges, adding up to the capacity;
    /// free extents coalesced per node and on their range's node.
    fn check_conservation(&self) {
        let free = self.list.entries();
        for w in free.windows(2) {
            assert!(
                w[0].phys + w[0].len < w[1].phys
                    || (w[0].phys + w[0].len == w[1].phys && w[0].nid != w[1].nid),
                "free list not sorted, disjoint and coalesced: {w:?}"
            );
        }
        let mut all: Vec<(u64, u64, &str)> = free.iter().map(|f| (f.phys, f.len, "free")).collect();
        for f in &free {
            assert_eq!(node_of(&self.ranges, f.phys), f.nid, "free extent {f:?} on the wrong node");
            assert_eq!(node_of(&self.ranges, f.phys + f.len - 1), f.nid, "free extent {f:?} spans nodes");
        }
        all.extend(self.files.iter().flat_map(|f| f.extents.iter().map(|&(p, l)| (p, l, "file"))));
        all.sort_unstable();
        for w in all.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "handed out twice: {:?} overlaps {:?}", w[0], w[1]);
        }
        for &(phys, len, what) in &all {
            assert!(
                self.covered(phys, len),
                "{what} extent {phys:#x}+{len:#x} outside the ranges or across nodes"
            );
        }
        let capacity: u64 = self.ranges.iter().map(|r| r.size).sum();
        assert_eq!(all.iter().map(|e| e.1).sum::<u64>(), capacity, "bytes lost or made up");
    }
}

/// assert_eq! that reads as a property of the model.
fn prop_assert_eq_ok(got: u64, want: u64, what: &str) {
    assert_eq!(got, want, "{what}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn allocator_properties(ranges in ranges(), ops in prop::collection::vec((op(), prop::option::weighted(0.05, 0u32..4)), 1..120)) {
        let mut pool = Pool::new(ranges);
        pool.check_conservation();
        for (op, inject) in &ops {
            pool.step(op, *inject);
        }
    }
}

/// The case of issue #9: a 4 MiB file of 2M pages stays alive; a 1 GiB file of 1G pages must
/// then still find the pool's only free 1 GiB-aligned GiB.
#[test]
fn small_file_leaves_the_only_gib_whole() {
    // 1.5 GiB from 3.5 GiB: [3.5G, 4G) below, the only aligned GiB [4G, 5G) above.
    let mut pool = Pool::new(vec![Range { start: 3 * G1 + G1 / 2, size: G1 + G1 / 2, nid: 0 }]);
    let small = pool.alloc(4 << 20, M2, None, None).expect("4 MiB of 2M pages");
    assert!(small.iter().all(|&(p, _)| p < 4 * G1), "the 2M file went into the aligned GiB: {small:?}");
    let big = pool.alloc(G1, G1, None, None).expect("1 GiB of 1G pages beside the live 2M file");
    assert_eq!(big, vec![(4 * G1, G1)]);
}
