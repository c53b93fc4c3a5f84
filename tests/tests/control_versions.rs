//! Control protocol versions: a version 3 client learns the owner's pid from HELLO and the
//! memory's size, page size and cell from GET_MEMORY, and pages through the extents; version 2
//! and version 1 clients (older `pageless` builds) still get exactly their versions' replies.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use pageless_protocol::control::{code, VmStatus, CONTROL_VERSION, FLAG_ERROR};
use pageless_protocol::frame::{recv_message, send_message, Limits, Message, FLAG_VERSION_1};
use pageless_protocol::memory::parse_mem_table;
use pageless_tests::owner::Owner;

const LIMITS: Limits = Limits { max_payload: 1 << 20, max_fds: 8 };

fn call(sock: &UnixStream, request: u32, payload: Vec<u8>) -> Message {
    send_message(sock, &Message::new(request, FLAG_VERSION_1, payload, vec![])).unwrap();
    recv_message(sock, LIMITS).unwrap().expect("a reply")
}

#[test]
fn version_3_carries_the_cell_and_versions_1_and_2_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let owner = Owner::start(&dir.path().join("run"), "vm", &["--size", "8M"]);

    // Version 3 (this build's client).
    assert_eq!(CONTROL_VERSION, 3);
    let client = owner.connect().unwrap();
    assert_eq!(client.owner_pid(), owner.pid(), "HELLO names the owner's process");
    let regions = client.get_memory().unwrap();
    assert_eq!(regions.len(), 1);
    assert_eq!({ regions[0].region.memory_size }, 8 << 20);
    assert_eq!(regions[0].page_size, 4096);
    assert_eq!(regions[0].cell, 0, "a --size VM is cell 0");
    let summary = client.status_summary().unwrap();
    assert_eq!(summary.extent_count, Some(summary.extents.len() as u64), "a memfd is one extent");
    assert_eq!(summary.extents_next, None);

    // Version 1: the HELLO reply is only the version, GET_MEMORY only the memory table,
    // STATUS lists every extent, EXTENTS does not exist.
    let sock = UnixStream::connect(owner.socket()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = 1u32.to_ne_bytes().to_vec();
    hello.extend_from_slice(b"old-client");
    assert_eq!(call(&sock, code::HELLO, hello).payload, 1u32.to_ne_bytes());
    let memory = call(&sock, code::GET_MEMORY, vec![]);
    let table = parse_mem_table(&memory.payload, memory.fds).expect("a plain version 1 memory table");
    assert_eq!({ table[0].region.memory_size }, 8 << 20);
    let status: VmStatus = serde_json::from_slice(&call(&sock, code::STATUS, vec![]).payload).unwrap();
    assert_eq!(status.vm, "vm");
    assert_eq!(status.extents_next, None);
    let mut extents = 0u64.to_ne_bytes().to_vec();
    extents.extend_from_slice(&10u32.to_ne_bytes());
    let refusal = call(&sock, code::EXTENTS, extents);
    assert_ne!(refusal.header.flags & FLAG_ERROR, 0);
    assert!(String::from_utf8_lossy(&refusal.payload).contains("version 2"));

    // Version 2: the pid, and one page size per region, no cell.
    let sock = UnixStream::connect(owner.socket()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let hello = call(&sock, code::HELLO, 2u32.to_ne_bytes().to_vec());
    assert_eq!(hello.payload.len(), 8);
    let memory = call(&sock, code::GET_MEMORY, vec![]);
    let (table, page_size) = memory.payload.split_at(memory.payload.len() - 8);
    assert_eq!(page_size, 4096u64.to_ne_bytes(), "a version 2 reply ends with the page size");
    assert_eq!(parse_mem_table(table, memory.fds).unwrap().len(), 1);

    // A version 4 client is told which versions the owner speaks.
    let sock = UnixStream::connect(owner.socket()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let refusal = call(&sock, code::HELLO, 4u32.to_ne_bytes().to_vec());
    assert_ne!(refusal.header.flags & FLAG_ERROR, 0);
    assert!(String::from_utf8_lossy(&refusal.payload).contains("not between 1 and 3"));
}
