//! hugetlbfs and hugetlb-memfd pools, for real: 2M pages reserved for the test, a hugetlbfs
//! mount, and `pageless serve` handing the memory to a client.

use std::fs::File;
use std::process::Command;

use pageless_pool::{Mapping, Pool, PoolSpec};
use pageless_tests::env::{require_env, Need};
use pageless_tests::owner::Owner;

const NR_HUGEPAGES: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";

/// Reserves `extra` more 2M pages for the test's life and mounts hugetlbfs on a temp dir.
struct HugePages {
    before: u64,
    mount: tempfile::TempDir,
}

impl HugePages {
    fn reserve(extra: u64) -> HugePages {
        let before: u64 = std::fs::read_to_string(NR_HUGEPAGES).unwrap().trim().parse().unwrap();
        std::fs::write(NR_HUGEPAGES, (before + extra).to_string()).expect("reserve 2M pages (needs root)");
        let now: u64 = std::fs::read_to_string(NR_HUGEPAGES).unwrap().trim().parse().unwrap();
        assert_eq!(now, before + extra, "the host could not reserve {extra} 2M pages");
        let mount = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "hugetlbfs", "-o", "pagesize=2M", "none"])
            .arg(mount.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount hugetlbfs");
        HugePages { before, mount }
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount.path()).status();
        let _ = std::fs::write(NR_HUGEPAGES, self.before.to_string());
    }
}

#[test]
fn hugetlbfs_and_hugetlb_memfd_pools() {
    if !require_env("hugetlbfs_and_hugetlb_memfd_pools", &[Need::Root, Need::Program("mount")]) {
        return;
    }
    let pages = HugePages::reserve(16);

    // The driver API on a hugetlbfs directory.
    let pool = Pool::open(&PoolSpec::Hugetlbfs(pages.mount.path().into())).unwrap();
    assert_eq!(pool.page_size(), 2 << 20);
    let free_before = pool.stats().unwrap().free;
    assert!(free_before >= 16 * (2 << 20));
    let allocation = pool.allocate("direct", 3 << 20).unwrap();
    assert_eq!(allocation.size(), 4 << 20, "rounded up to 2M pages");
    allocation.prefault().unwrap();
    assert_eq!(pool.stats().unwrap().free, free_before - (4 << 20), "pre-faulting takes two pages");
    let mapping = allocation.map().unwrap();
    mapping.write((2 << 20) + 7, b"huge").unwrap();
    assert_eq!(mapping.find(b"huge", 4).unwrap(), vec![(2 << 20) + 7]);
    drop(mapping);
    allocation.remove().unwrap();
    drop(allocation);

    // A hugetlb memfd.
    let memfd = Pool::open(&"memfd:2M".parse().unwrap()).unwrap();
    assert_eq!(memfd.page_size(), 2 << 20);
    let allocation = memfd.allocate("memfd", 2 << 20).unwrap();
    allocation.map().unwrap().write(0, b"x").unwrap();
    assert!(memfd.check_size(3 << 20).is_err());
    drop(allocation);

    // `pageless serve --pool hugetlbfs:DIR`: a client maps the owner's 2M-page file.
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("hugetlbfs:{}", pages.mount.path().display());
    let mut owner =
        Owner::start(&dir.path().join("run"), "vm", &["--size", "8M", "--pool", &spec, "--prefault"]);
    let status = owner.status();
    assert_eq!((status.page_size, status.memory.as_str()), (2 << 20, "hugetlbfs"));
    let region = owner.connect().unwrap().get_memory().unwrap().pop().unwrap();
    let client = Mapping::new(&File::from(region.fd), region.region.memory_size).unwrap();
    client.write(6 << 20, b"through the owner").unwrap();
    assert_eq!(owner.find("through the owner"), vec![6 << 20]);
    drop(client);
    let too_small = Owner::try_start(&dir.path().join("run2"), "big", &["--size", "1G", "--pool", &spec]);
    let log = too_small.err().expect("1G does not fit in 16 pages");
    assert!(log.contains("the pool is too small"), "{log}");
    assert_eq!(owner.terminate().code(), Some(0));
    std::fs::remove_file(pages.mount.path().join("vm")).unwrap();

    // NUMA cells of hugetlb memory bound to host node 0: every huge page is allocated at start
    // (no --prefault), on node 0.
    let free_before = pool.stats().unwrap().free;
    let cell0 = format!("0:4M:{spec}@node=0");
    let owner =
        Owner::start(&dir.path().join("run3"), "numa", &["--cell", &cell0, "--cell", "1:4M:memfd:2M@node=0"]);
    assert_eq!(pool.stats().unwrap().free, free_before - (8 << 20), "both cells' pages are allocated");
    assert!(owner.log_shows("every huge page allocated on host node 0"), "{}", owner.log());
    for region in owner.connect().unwrap().get_memory().unwrap() {
        let mapping = Mapping::new(&File::from(region.fd), region.region.memory_size).unwrap();
        let addr = mapping.slice().ptr_guard().as_ptr();
        for offset in (0..mapping.len()).step_by(2 << 20) {
            // SAFETY: inside the live mapping; maps the existing huge page here.
            unsafe { addr.add(offset).read_volatile() };
        }
        // SAFETY: the mapping lives across the call.
        let nodes = unsafe { pageless_pool::numa::page_nodes(addr, mapping.len()) }.unwrap();
        assert!(nodes.iter().all(|&n| n == 0), "cell {}: {nodes:?}", region.cell);
    }
    drop(owner);
    std::fs::remove_file(pages.mount.path().join("numa.cell0")).unwrap();
}
