//! A forged frontend (this test, speaking vhost-user) sends memory regions whose fd is another
//! file, or whose offset/size lies outside the allocation: the relay refuses them and the
//! backend (a recording fake) never receives them. A genuine region reaches the backend with
//! the owner's own fd, not the frontend's, and cannot shrink it (sealed).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pageless_pool::FileId;
use pageless_protocol::frame::{
    recv_message, send_message, FrameError, Limits, Message, FLAG_NEED_REPLY, FLAG_VERSION_1,
};
use pageless_protocol::memory::{encode_mem_table, encode_single_region};
use pageless_protocol::{FrontendReq, VhostUserMemoryRegion};
use pageless_tests::owner::Owner;

const SIZE: u64 = 16 << 20;

/// What the fake backend received: request code, and per fd its file, file offset, and what
/// its attempt to shrink the file to 0 through that fd returned.
type Received = Arc<Mutex<Vec<Record>>>;
/// One message the fake backend received: request code, and per fd its file, file offset and
/// what shrinking the file through it returned.
type Record = (u32, Vec<(FileId, i64, nix::Result<()>)>);

fn fake_backend(listener: UnixListener, received: Received) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let received = Arc::clone(&received);
            std::thread::spawn(move || {
                while let Ok(Some(message)) = recv_message(&conn, Limits::VHOST_USER) {
                    let fds = message
                        .fds
                        .iter()
                        .map(|fd| {
                            let offset = nix::unistd::lseek(fd.as_raw_fd(), 0, nix::unistd::Whence::SeekCur)
                                .unwrap_or(-1);
                            // A backend must not be able to free the VM's memory.
                            let shrink = nix::unistd::ftruncate(fd, 0);
                            (FileId::of(fd).unwrap(), offset, shrink)
                        })
                        .collect();
                    received.lock().unwrap().push((message.header.request, fds));
                    if message.header.needs_reply() {
                        let ack = Message::reply_ack(message.header.request, true);
                        let _ = send_message(&conn, &ack);
                    }
                }
            });
        }
    });
}

fn region(size: u64, offset: u64) -> VhostUserMemoryRegion {
    VhostUserMemoryRegion::new(0, size, 0x7f00_0000_0000, offset)
}

fn set_mem_table(regions: &[VhostUserMemoryRegion], fds: Vec<OwnedFd>) -> Message {
    let code = u32::from(FrontendReq::SET_MEM_TABLE);
    Message::new(code, FLAG_VERSION_1 | FLAG_NEED_REPLY, encode_mem_table(regions.iter()), fds)
}

fn add_mem_reg(region: &VhostUserMemoryRegion, fds: Vec<OwnedFd>) -> Message {
    let code = u32::from(FrontendReq::ADD_MEM_REG);
    Message::new(code, FLAG_VERSION_1 | FLAG_NEED_REPLY, encode_single_region(region), fds)
}

/// Sends a forged message; expects a failure reply and a closed connection.
fn refused(relay: &std::path::Path, message: Message) {
    let sock = UnixStream::connect(relay).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    send_message(&sock, &message).unwrap();
    let reply = recv_message(&sock, Limits::VHOST_USER).expect("a failure reply").expect("a failure reply");
    assert!(reply.header.is_reply());
    assert_ne!(reply.payload, 0u64.to_ne_bytes(), "REPLY_ACK must report failure");
    match recv_message(&sock, Limits::VHOST_USER) {
        Ok(None) => {}
        Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the relay should close the connection, got {other:?}"),
    }
}

/// The regions of the relay's one open `dev0` connection, as STATUS lists them. Waits (up to
/// 10 s) for the refused connections before it to be forgotten: the relay drops a refused
/// connection's consumer only after its threads end, just after the frontend saw it close.
fn dev0_regions(owner: &Owner) -> Vec<pageless_protocol::control::RegionStatus> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = owner.status();
        let dev0: Vec<_> = status.consumers.iter().filter(|c| c.device == "dev0").collect();
        if dev0.len() == 1 || Instant::now() > deadline {
            assert_eq!(dev0.len(), 1, "one open dev0 connection: {:?}", status.consumers);
            return dev0[0].regions.clone();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A new open file of the owner's memory, as QEMU makes it (open of /proc/self/fd/N).
fn reopen(fd: &OwnedFd) -> OwnedFd {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap()
        .into()
}

/// An owner of 16M relaying `dev0` to a fake backend that records what it receives, and the
/// VM's memory as a frontend got it from the owner.
struct Relayed {
    dir: tempfile::TempDir,
    received: Received,
    owner: Owner,
    relay: std::path::PathBuf,
    memory: OwnedFd,
    memory_id: FileId,
}

fn relayed() -> Relayed {
    let dir = tempfile::tempdir().unwrap();
    let backend_socket = dir.path().join("fake.sock");
    let received: Received = Arc::default();
    fake_backend(UnixListener::bind(&backend_socket).unwrap(), Arc::clone(&received));
    let relay_arg = format!("dev0={}", backend_socket.display());
    let owner = Owner::start(&dir.path().join("run"), "vm", &["--size", "16M", "--vhost-user", &relay_arg]);
    let relay = owner.run_dir.join("vm/dev0.sock");
    let memory = owner.connect().unwrap().get_memory().unwrap().pop().unwrap().fd;
    let memory_id = FileId::of(&memory).unwrap();
    Relayed { dir, received, owner, relay, memory, memory_id }
}

#[test]
fn forged_memory_regions_never_reach_the_backend() {
    let Relayed { dir: _dir, received, owner, relay, memory, memory_id } = relayed();

    // Another file: a pipe, whose read end shows whether the relay closed the forged fd
    // (close-on-exec: no process another test spawns meanwhile may hold a copy).
    let (pipe_read, pipe_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    refused(&relay, set_mem_table(&[region(SIZE, 0)], vec![pipe_write]));
    nix::fcntl::fcntl(pipe_read.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
        .unwrap();
    assert_eq!(
        nix::unistd::read(pipe_read.as_raw_fd(), &mut [0u8; 1]),
        Ok(0),
        "the relay closed the forged fd"
    );

    let other =
        nix::sys::memfd::memfd_create(c"other", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC).unwrap();
    nix::unistd::ftruncate(&other, SIZE as i64).unwrap();
    refused(&relay, set_mem_table(&[region(SIZE, 0)], vec![other.try_clone().unwrap()]));
    refused(&relay, add_mem_reg(&region(SIZE, 0), vec![other]));
    // The right file, but outside it.
    refused(&relay, set_mem_table(&[region(8192, SIZE - 4096)], vec![reopen(&memory)]));
    refused(&relay, add_mem_reg(&region(SIZE + 4096, 0), vec![reopen(&memory)]));
    refused(&relay, set_mem_table(&[region(4096, u64::MAX - 100)], vec![reopen(&memory)]));
    // Two regions, the second forged: the whole table is refused.
    let (forged, _) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    refused(&relay, set_mem_table(&[region(4096, 0), region(4096, 4096)], vec![reopen(&memory), forged]));
    // Fds missing or too many.
    refused(&relay, set_mem_table(&[region(4096, 0)], vec![]));
    refused(&relay, add_mem_reg(&region(4096, 0), vec![reopen(&memory), reopen(&memory)]));

    // A genuine table, on an fd of the owner's file with a file offset of its own.
    let genuine = reopen(&memory);
    nix::unistd::lseek(genuine.as_raw_fd(), 12345, nix::unistd::Whence::SeekSet).unwrap();
    let sock = UnixStream::connect(&relay).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let table = [region(0xc0000, 0), region(SIZE - 0x100000, 0x100000)];
    send_message(&sock, &set_mem_table(&table, vec![genuine.try_clone().unwrap(), genuine])).unwrap();
    let ack = recv_message(&sock, Limits::VHOST_USER).unwrap().unwrap();
    assert_eq!(ack.payload, 0u64.to_ne_bytes(), "the backend acknowledged the genuine table");

    let deadline = Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "only the genuine table reached the backend: {received:?}");
    let (code, fds) = &received[0];
    assert_eq!(*code, u32::from(FrontendReq::SET_MEM_TABLE));
    assert_eq!(fds.len(), 2);
    for (id, offset, shrink) in fds {
        assert_eq!(*id, memory_id, "the backend got the VM's memory");
        assert_ne!(*offset, 12345, "the backend got the owner's own fd, not the frontend's");
        assert_eq!(*shrink, Err(nix::errno::Errno::EPERM), "the memory is sealed against shrinking");
    }
    assert_eq!(std::fs::File::from(memory).metadata().unwrap().len(), SIZE, "the size is unchanged");

    assert_eq!(
        dev0_regions(&owner).iter().map(|r| (r.offset, r.size)).collect::<Vec<_>>(),
        vec![(0, 0xc0000), (0x100000, SIZE - 0x100000)]
    );
    assert!(
        owner.log_shows("refused SET_MEM_TABLE: region 0: its fd is not the VM's memory"),
        "{}",
        owner.log()
    );
    drop(sock);
}

fn rem_mem_reg(region: &VhostUserMemoryRegion, fds: Vec<OwnedFd>) -> Message {
    let code = u32::from(FrontendReq::REM_MEM_REG);
    Message::new(code, FLAG_VERSION_1 | FLAG_NEED_REPLY, encode_single_region(region), fds)
}

/// Waits for the fake backend to have received `count` messages.
fn wait_received(received: &Received, count: usize) -> Vec<Record> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().len() < count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    received.lock().unwrap().clone()
}

/// The vhost-user spec: a frontend may send an fd with REM_MEM_REG, which the backend must
/// close. The relay closes it, checks the region is one the connection added (by guest
/// address, user address and size; the mmap offset is ignored) and forwards the removal
/// without an fd. A region it never added, or already removed, is refused.
#[test]
fn rem_mem_reg_closes_its_fd_and_removes_only_added_regions() {
    let Relayed { dir: _dir, received, owner, relay, memory, memory_id } = relayed();

    // Removing what was never added is refused, with or without an fd.
    refused(&relay, rem_mem_reg(&region(4096, 0), vec![]));
    refused(&relay, rem_mem_reg(&region(4096, 0), vec![reopen(&memory)]));
    assert!(received.lock().unwrap().is_empty(), "nothing reached the backend");

    let sock = UnixStream::connect(&relay).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ack = |sock: &UnixStream| {
        let reply = recv_message(sock, Limits::VHOST_USER).unwrap().expect("a reply");
        assert!(reply.header.is_reply());
        reply.payload
    };
    let added = VhostUserMemoryRegion::new(0x100000, 0x200000, 0x7f00_0010_0000, 0x100000);
    send_message(&sock, &add_mem_reg(&added, vec![reopen(&memory)])).unwrap();
    assert_eq!(ack(&sock), 0u64.to_ne_bytes(), "ADD_MEM_REG acknowledged");
    let consumer_regions = || dev0_regions(&owner).len();
    assert_eq!(consumer_regions(), 1);

    // QEMU's REM_MEM_REG: same guest address, user address and size, mmap_offset 0, and here
    // with an fd (a pipe's write end: its read end shows when the relay closed it).
    let (pipe_read, pipe_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let removal = VhostUserMemoryRegion::new(0x100000, 0x200000, 0x7f00_0010_0000, 0);
    send_message(&sock, &rem_mem_reg(&removal, vec![pipe_write])).unwrap();
    assert_eq!(ack(&sock), 0u64.to_ne_bytes(), "REM_MEM_REG forwarded and acknowledged");
    nix::fcntl::fcntl(pipe_read.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
        .unwrap();
    assert_eq!(nix::unistd::read(pipe_read.as_raw_fd(), &mut [0u8; 1]), Ok(0), "the relay closed the fd");

    let got = wait_received(&received, 2);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, u32::from(FrontendReq::ADD_MEM_REG));
    assert_eq!(got[0].1.len(), 1);
    assert_eq!(got[0].1[0].0, memory_id);
    assert_eq!(got[1].0, u32::from(FrontendReq::REM_MEM_REG));
    assert!(got[1].1.is_empty(), "the removal reaches the backend without an fd: {:?}", got[1].1);
    assert_eq!(consumer_regions(), 0, "the consumer no longer maps the region");

    // Removing it again: it is no longer this connection's, so refused and closed.
    send_message(&sock, &rem_mem_reg(&removal, vec![])).unwrap();
    assert_ne!(ack(&sock), 0u64.to_ne_bytes(), "a second removal is refused");
    match recv_message(&sock, Limits::VHOST_USER) {
        Ok(None) => {}
        Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the relay should close the connection, got {other:?}"),
    }
    assert_eq!(received.lock().unwrap().len(), 2, "the refused removal was not forwarded");
    assert!(owner.log_shows("is no region this connection added"), "{}", owner.log());
}

/// A VM of two NUMA cells (16M and 8M, each its own memfd): a region must carry one of the
/// cells' fds and lie inside that cell. Claiming cell 1's fd with cell 0's size, or cell 0's
/// fd beyond its end into where cell 1 would follow, is refused; a table of both cells reaches
/// the backend with the owner's fd of each.
#[test]
fn each_region_is_checked_against_its_own_cell() {
    let dir = tempfile::tempdir().unwrap();
    let backend_socket = dir.path().join("fake.sock");
    let received: Received = Arc::default();
    fake_backend(UnixListener::bind(&backend_socket).unwrap(), Arc::clone(&received));
    let relay_arg = format!("dev0={}", backend_socket.display());
    let owner = Owner::start(
        &dir.path().join("run"),
        "vm",
        &["--cell", "0:16M:memfd", "--cell", "1:8M:memfd", "--vhost-user", &relay_arg],
    );
    let relay = owner.run_dir.join("vm/dev0.sock");
    let regions = owner.connect().unwrap().get_memory().unwrap();
    assert_eq!(
        regions
            .iter()
            .map(|r| (r.cell, { r.region.guest_phys_addr }, { r.region.memory_size }))
            .collect::<Vec<_>>(),
        vec![(0, 0, SIZE), (1, SIZE, 8 << 20)],
        "one region per cell, laid end to end"
    );
    let [cell0, cell1]: [OwnedFd; 2] =
        regions.into_iter().map(|r| r.fd).collect::<Vec<_>>().try_into().unwrap();
    let (id0, id1) = (FileId::of(&cell0).unwrap(), FileId::of(&cell1).unwrap());
    assert_ne!(id0, id1, "each cell is its own file");

    // Cell 1's fd with cell 0's size: past cell 1's end.
    refused(&relay, set_mem_table(&[region(SIZE, 0)], vec![reopen(&cell1)]));
    refused(&relay, add_mem_reg(&region(SIZE, 0), vec![reopen(&cell1)]));
    // Cell 0's fd reaching into where cell 1 follows in the guest.
    refused(&relay, add_mem_reg(&region(8 << 20, SIZE), vec![reopen(&cell0)]));
    refused(&relay, set_mem_table(&[region(SIZE + 4096, 0)], vec![reopen(&cell0)]));
    // A good region of cell 0 and a forged one of cell 1: the whole table is refused.
    refused(
        &relay,
        set_mem_table(&[region(SIZE, 0), region(12 << 20, 0)], vec![reopen(&cell0), reopen(&cell1)]),
    );
    assert!(received.lock().unwrap().is_empty(), "nothing forged reached the backend");

    let sock = UnixStream::connect(&relay).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let table = [
        VhostUserMemoryRegion::new(0, SIZE, 0x7f00_0000_0000, 0),
        VhostUserMemoryRegion::new(SIZE, 8 << 20, 0x7f10_0000_0000, 0),
    ];
    send_message(&sock, &set_mem_table(&table, vec![reopen(&cell0), reopen(&cell1)])).unwrap();
    let ack = recv_message(&sock, Limits::VHOST_USER).unwrap().unwrap();
    assert_eq!(ack.payload, 0u64.to_ne_bytes(), "the backend acknowledged the genuine table");
    let got = wait_received(&received, 1);
    assert_eq!(got.len(), 1, "{got:?}");
    let ids: Vec<FileId> = got[0].1.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(ids, vec![id0, id1], "each region carries the owner's fd of its own cell");
    for (_, _, shrink) in &got[0].1 {
        assert_eq!(*shrink, Err(nix::errno::Errno::EPERM), "both cells are sealed");
    }
    assert!(owner.log_shows("lies outside the 0x800000 bytes of cell 1's memory"), "{}", owner.log());
    drop(sock);
}

fn set_log_base(size: u64, offset: u64, fds: Vec<OwnedFd>) -> Message {
    let code = u32::from(FrontendReq::SET_LOG_BASE);
    let payload = [size.to_le_bytes(), offset.to_le_bytes()].concat();
    Message::new(code, FLAG_VERSION_1 | FLAG_NEED_REPLY, payload, fds)
}

fn set_vring_call(index: u64, fds: Vec<OwnedFd>) -> Message {
    let code = u32::from(FrontendReq::SET_VRING_CALL);
    Message::new(code, FLAG_VERSION_1 | FLAG_NEED_REPLY, index.to_le_bytes().to_vec(), fds)
}

/// A memfd of `size` bytes sealed as QEMU seals its dirty log (`seals` empty: unsealed).
fn log_memfd(size: u64, seals: nix::fcntl::SealFlag) -> OwnedFd {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let fd = memfd_create(c"vhost-log", MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING)
        .unwrap();
    nix::unistd::ftruncate(&fd, size as i64).unwrap();
    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_ADD_SEALS(seals)).unwrap();
    fd
}

fn eventfd() -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Live migration's dirty log: a forged SET_LOG_BASE naming the VM's own memory, an
/// unsealed or too small memfd, or a vring call fd that is the VM's memory (the backend
/// would write into it) is refused and never reaches the backend; QEMU's kind of log (a
/// sealed memfd holding the range) and an eventfd reach it with the frontend's own fds.
#[test]
fn forged_dirty_logs_and_vring_fds_never_reach_the_backend() {
    use nix::fcntl::SealFlag;
    let Relayed { dir: _dir, received, owner, relay, memory, memory_id: _ } = relayed();
    let sealed = SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL;

    refused(&relay, set_log_base(4096, 0, vec![reopen(&memory)]));
    refused(&relay, set_log_base(4096, 0, vec![log_memfd(8192, SealFlag::empty())]));
    refused(&relay, set_log_base(8192, 4096, vec![log_memfd(8192, sealed)]));
    refused(&relay, set_log_base(4096, 0, vec![]));
    refused(&relay, set_vring_call(0, vec![reopen(&memory)]));
    assert!(received.lock().unwrap().is_empty(), "nothing forged reached the backend");
    assert!(owner.log_shows("the log's fd is the VM's own memory"), "{}", owner.log());
    assert!(owner.log_shows("less than mmap_offset 0x1000 + mmap_size 0x2000"), "{}", owner.log());

    let sock = UnixStream::connect(&relay).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let log = log_memfd(8192, sealed);
    let log_id = FileId::of(&log).unwrap();
    send_message(&sock, &set_log_base(8192, 0, vec![log])).unwrap();
    assert_eq!(recv_message(&sock, Limits::VHOST_USER).unwrap().unwrap().payload, 0u64.to_ne_bytes());
    send_message(&sock, &set_vring_call(0, vec![eventfd()])).unwrap();
    assert_eq!(recv_message(&sock, Limits::VHOST_USER).unwrap().unwrap().payload, 0u64.to_ne_bytes());
    let got = wait_received(&received, 2);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, u32::from(FrontendReq::SET_LOG_BASE));
    assert_eq!(got[0].1.len(), 1);
    assert_eq!(got[0].1[0].0, log_id, "the backend got QEMU's log, not other memory");
    assert_eq!(got[0].1[0].2, Err(nix::errno::Errno::EPERM), "the log is sealed against shrinking");
    assert_eq!(got[1].0, u32::from(FrontendReq::SET_VRING_CALL));
    assert_eq!(got[1].1.len(), 1);
    drop(sock);
}
