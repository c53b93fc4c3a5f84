//! A client gets the VM's memory from `pageless serve` as a vhost-user memory table with fds,
//! maps it, and sees what the owner wrote and the owner sees what it wrote; clients share it.

use std::fs::File;
use std::process::Command;

use pageless_pool::Mapping;
use pageless_protocol::control::ControlClient;
use pageless_tests::{bins, owner::Owner, random_token};

fn map_from_owner(owner: &Owner) -> (ControlClient, Mapping, u64) {
    let client = owner.connect().expect("connect");
    let regions = client.get_memory().expect("GET_MEMORY");
    assert_eq!(regions.len(), 1, "one region covering the allocation");
    let region = regions.into_iter().next().unwrap();
    let (gpa, size, offset) =
        (region.region.guest_phys_addr, region.region.memory_size, region.region.mmap_offset);
    assert_eq!((gpa, offset), (0, 0));
    let mapping = Mapping::new(&File::from(region.fd), size).expect("map the owner's fd");
    (client, mapping, size)
}

fn shared_memory_between_owner_and_clients(pool: &str) {
    let dir = tempfile::tempdir().unwrap();
    let owner = Owner::start(&dir.path().join("run"), "vm", &["--size", "8M", "--pool", pool]);
    let (_a, first, size) = map_from_owner(&owner);
    let (_b, second, _) = map_from_owner(&owner);
    assert_eq!(size, 8 << 20);

    // client → owner and client → client
    let token = format!("CLIENT-{}", random_token());
    first.write(5 << 20, token.as_bytes()).unwrap();
    assert_eq!(owner.find(&token), vec![5 << 20], "the owner sees the client's bytes");
    let mut seen = vec![0u8; token.len()];
    second.read(5 << 20, &mut seen).unwrap();
    assert_eq!(seen, token.as_bytes(), "a second client sees the first one's bytes");

    // owner → clients
    let token = format!("OWNER-{}", random_token());
    owner.connect().unwrap().write(4096, token.as_bytes()).unwrap();
    let mut seen = vec![0u8; token.len()];
    for mapping in [&first, &second] {
        mapping.read(4096, &mut seen).unwrap();
        assert_eq!(seen, token.as_bytes(), "clients see the owner's bytes");
    }

    // Another process (`pageless find`) asks the owner and finds the client's write.
    let out = Command::new(bins::pageless())
        .args(["find", "--vm", "vm", "--run-dir"])
        .arg(dir.path().join("run"))
        .arg(&token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0x1000");

    let status = owner.status();
    assert_eq!(status.size, 8 << 20);
    assert!(status.clients.iter().filter(|c| c.has_memory).count() >= 2, "{:?}", status.clients);
}

#[test]
fn memfd_pool() {
    shared_memory_between_owner_and_clients("memfd");
}

#[test]
fn tmpfs_directory_pool() {
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    shared_memory_between_owner_and_clients(&format!("dir:{}", shm.path().display()));
}
