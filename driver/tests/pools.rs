//! The pool API on real memory: memfd and tmpfs directories.

use pageless_pool::{Error, Mapping, Pool, PoolKind, PoolSpec};

fn tmpfs_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").expect("/dev/shm is a tmpfs on every Linux host")
}

fn dir_pool(dir: &tempfile::TempDir) -> Pool {
    Pool::open(&PoolSpec::Dir(dir.path().into())).unwrap()
}

#[test]
fn memfd_allocation_is_shared_memory_of_the_rounded_size() {
    let pool = Pool::open(&PoolSpec::Memfd { huge_page_size: None }).unwrap();
    assert_eq!(pool.kind(), PoolKind::Memfd);
    assert_eq!(pool.page_size(), 4096);
    let allocation = pool.allocate("vm1", 10_000).unwrap();
    assert_eq!(allocation.size(), 12288, "rounded up to the page size");
    assert!(allocation.path().is_none());

    let first = allocation.map().unwrap();
    let second = allocation.map().unwrap();
    first.write(8192, b"hello").unwrap();
    let mut buf = [0u8; 5];
    second.read(8192, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    assert_eq!(second.find(b"hello", 10).unwrap(), vec![8192]);
    assert!(first.write(12286, b"xyz").is_err(), "writes past the end are refused");
}

#[test]
fn memfd_size_is_sealed() {
    let pool = Pool::open(&PoolSpec::Memfd { huge_page_size: None }).unwrap();
    let allocation = pool.allocate("sealed", 1 << 20).unwrap();
    assert!(allocation.file().set_len(4096).is_err(), "a consumer must not shrink the VM's memory");
    assert!(allocation.file().set_len(2 << 20).is_err());
}

#[test]
fn memfd_cannot_be_reattached() {
    let pool = Pool::open(&PoolSpec::Memfd { huge_page_size: None }).unwrap();
    assert!(matches!(pool.attach("vm"), Err(Error::NoReattach { .. })));
}

#[test]
fn find_sees_patterns_across_chunk_boundaries() {
    let pool = Pool::open(&PoolSpec::Memfd { huge_page_size: None }).unwrap();
    let allocation = pool.allocate("find", 4 << 20).unwrap();
    let mapping = allocation.map().unwrap();
    let offsets = [0u64, (1 << 20) - 3, 3 << 20, (4 << 20) - 6];
    for &offset in &offsets {
        mapping.write(offset as usize, b"TOKEN!").unwrap();
    }
    assert_eq!(mapping.find(b"TOKEN!", 100).unwrap(), offsets);
    assert_eq!(mapping.find(b"TOKEN!", 2).unwrap(), offsets[..2]);
    // Overlapping occurrences are each found, also across a chunk boundary.
    mapping.write((2 << 20) - 2, b"abababa").unwrap();
    assert_eq!(mapping.find(b"aba", 100).unwrap(), [0, 2, 4].map(|i| (2 << 20) - 2 + i));
}

/// A page the owner cannot read (here: past the end of a file that shrank under the mapping,
/// which SIGBUSes a direct access; a poisoned page is the same) is an error of that request
/// (FIND, read), and the process lives on.
#[test]
fn find_and_read_over_a_missing_page_fail_without_sigbus() {
    let dir = tmpfs_dir();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("m"))
        .unwrap();
    file.set_len(4 << 20).unwrap();
    let mapping = Mapping::new(&file, 4 << 20).unwrap();
    mapping.write(1 << 20, b"TOKEN!").unwrap();
    file.set_len(2 << 20).unwrap();
    assert!(mapping.find(b"TOKEN!", 10).is_err());
    let mut buf = [0u8; 8];
    assert!(mapping.read(3 << 20, &mut buf).is_err());
    mapping.read(1 << 20, &mut buf[..6]).unwrap();
    assert_eq!(&buf[..6], b"TOKEN!");
}

#[test]
fn directory_allocation_survives_and_is_found_again() {
    let dir = tmpfs_dir();
    let pool = dir_pool(&dir);
    let (allocation, attached) = pool.attach_or_allocate("vm", 2 << 20).unwrap();
    assert!(!attached);
    allocation.map().unwrap().write(4096, b"persist").unwrap();
    let id = allocation.id();
    drop(allocation);

    let (again, attached) = pool.attach_or_allocate("vm", 2 << 20).unwrap();
    assert!(attached);
    assert_eq!(again.id(), id, "same inode");
    let mut buf = [0u8; 7];
    again.map().unwrap().read(4096, &mut buf).unwrap();
    assert_eq!(&buf, b"persist");

    match pool.attach_or_allocate("vm", 4 << 20) {
        Err(Error::SizeMismatch { found, requested, .. }) => {
            assert_eq!((found, requested), (2 << 20, 4 << 20))
        }
        other => panic!("expected a size mismatch, got {other:?}"),
    }
    again.remove().unwrap();
    assert!(matches!(pool.attach("vm"), Err(Error::NotFound { .. })));
}

#[test]
fn clear_errors_for_bad_requests() {
    let dir = tmpfs_dir();
    let pool = dir_pool(&dir);
    assert!(matches!(pool.check_size(4097), Err(Error::UnalignedSize { suggestion: 8192, .. })));
    assert!(matches!(pool.allocate("zero", 0), Err(Error::ZeroSize)));
    assert!(matches!(pool.allocate("../escape", 4096), Err(Error::InvalidName { .. })));
    match pool.allocate("huge", 1 << 50) {
        Err(Error::PoolTooSmall { needed, free, .. }) => assert!(needed > free),
        other => panic!("expected PoolTooSmall, got {other:?}"),
    }
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "nothing left behind");

    let missing = dir.path().join("missing");
    assert!(matches!(Pool::open(&PoolSpec::Dir(missing)), Err(Error::MissingPoolDir { .. })));
    assert!(matches!(
        Pool::open(&PoolSpec::Hugetlbfs(dir.path().into())),
        Err(Error::WrongFilesystem { expected: "hugetlbfs", .. })
    ));
    assert!(matches!(
        Pool::open(&PoolSpec::Pagelessfs(dir.path().into())),
        Err(Error::WrongFilesystem { expected: "pagelessfs", .. })
    ));
    let message = pool.check_size(4097).unwrap_err().to_string();
    assert!(
        message.contains("4097 bytes") && message.contains("such as 8K"),
        "the error suggests a valid size: {message}"
    );
}

#[test]
fn stats_and_extents_of_a_tmpfs_pool() {
    let dir = tmpfs_dir();
    let pool = dir_pool(&dir);
    let before = pool.stats().unwrap();
    assert!(before.total > 0 && before.free <= before.total);
    let allocation = pool.allocate("vm", 8 << 20).unwrap();
    allocation.prefault().unwrap();
    let after = pool.stats().unwrap();
    assert!(before.free - after.free >= 8 << 20, "pre-faulting takes the memory from the pool");
    let extents = allocation.extents().unwrap();
    assert_eq!(extents.len(), 1);
    assert_eq!((extents[0].logical, extents[0].length, extents[0].physical), (0, 8 << 20, None));
}
