//! Test-bed helpers for scripts and test guests:
//!
//!   pageless-testbed kernel                      print the test kernel's vmlinuz path
//!   pageless-testbed token-guest OUT             build the token guest's initramfs at OUT
//!   pageless-testbed owner-client SOCKET TOKEN   a separate client process of an owner: maps
//!       the memory it hands out, writes TOKEN at 1 MiB, has the owner write OWNER-TOKEN at
//!       2 MiB through its own mapping and reads it back, then tries to shrink and to grow
//!       the memory through its fd (both must fail with EPERM, size and extents unchanged);
//!       prints CHECK lines.
//!   pageless-testbed relay-truncate OWNER_SOCKET RELAY_SOCKET BACKEND_SOCKET
//!       a fake vhost-user backend (a thread listening on BACKEND_SOCKET, which the owner's
//!       `--vhost-user` relays to) and a frontend that sends the owner's memory through the relay
//!       socket: the backend tries to shrink and to grow the fd the relay gave it; CHECK lines.
//!   pageless-testbed hold-memory SOCKET          takes the owner's memory, maps it, prints
//!       `HOLDING <size>`, and holds it until its stdin closes.
//!   pageless-testbed ask-memory SOCKET           HELLO and GET_MEMORY as any other process
//!       would: prints `GOT-MEMORY <size>` (exit 0) or `REFUSED <reason>` (exit 3).

use std::fs::File;
use std::io::{BufRead, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use pageless_pool::{FileId, Mapping};
use pageless_protocol::control::{ControlClient, VmStatus};
use pageless_protocol::frame::{
    recv_message, send_message, Limits, Message, FLAG_NEED_REPLY, FLAG_VERSION_1,
};
use pageless_protocol::memory::encode_mem_table;
use pageless_protocol::{FrontendReq, VhostUserMemoryRegion};

fn check(name: &str, ok: bool, detail: &str) -> bool {
    println!("CHECK {name} {} {detail}", if ok { "ok" } else { "FAIL" });
    ok
}

/// The VmFlags of the mapping that starts at `start`, from /proc/self/smaps.
fn vmflags(start: usize) -> Option<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let header = format!("{start:x}-");
    let section = smaps.split('\n').skip_while(|line| !line.starts_with(&header)).skip(1);
    for line in section {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            return Some(flags.trim().to_string());
        }
    }
    None
}

fn owner_client(socket: &Path, token: &str) -> bool {
    let client = match ControlClient::connect(socket, "owner-client") {
        Ok(client) => client,
        Err(e) => return check("serve-client-connect", false, &e.to_string()),
    };
    let region = match client.get_memory().map(|mut r| r.pop()) {
        Ok(Some(region)) => region,
        other => return check("serve-client-memory", false, &format!("{other:?}")),
    };
    let size = region.region.memory_size;
    let file = File::from(region.fd);
    let mapping = match Mapping::new(&file, size) {
        Ok(mapping) => mapping,
        Err(e) => return check("serve-client-map", false, &e.to_string()),
    };
    let mut ok = check("serve-client-map", true, &format!("mapped {size} bytes from the owner"));
    mapping.write(1 << 20, token.as_bytes()).expect("write inside the mapping");

    let from_owner = format!("OWNER-{token}");
    let mut seen = vec![0u8; from_owner.len()];
    let sees = client.write(2 << 20, from_owner.as_bytes()).is_ok()
        && mapping.read(2 << 20, &mut seen).is_ok()
        && seen == from_owner.as_bytes();
    ok &= check("serve-client-sees-owner", sees, "the owner's write through its mapping is in the client's");

    let start = mapping.slice().ptr_guard().as_ptr() as usize;
    let flags = vmflags(start).unwrap_or_default();
    ok &= check(
        "serve-client-pfnmap",
        flags.split_whitespace().any(|f| f == "pf"),
        &format!("VmFlags: {flags}"),
    );
    match client.status() {
        Ok(before) => ok &= size_changes_refused("serve-client", &file, &before, &client),
        Err(e) => ok &= check("serve-client-status", false, &e.to_string()),
    }
    ok
}

/// `ftruncate` to 0 and to twice the size through `file` (a consumer's fd of the VM's memory)
/// must fail with EPERM (sealed), and leave the file's size and the owner's extents as they were.
fn size_changes_refused(prefix: &str, file: &File, before: &VmStatus, client: &ControlClient) -> bool {
    let errno = |result: std::io::Result<()>| match result {
        Ok(()) => "succeeded".to_string(),
        Err(e) => format!("{e}"),
    };
    let shrink = file.set_len(0);
    let mut ok = check(
        &format!("{prefix}-shrink-eperm"),
        shrink.as_ref().err().and_then(std::io::Error::raw_os_error) == Some(libc::EPERM),
        &format!("ftruncate(fd, 0): {}", errno(shrink.map(drop))),
    );
    let grow = file.set_len(before.size * 2);
    ok &= check(
        &format!("{prefix}-grow-eperm"),
        grow.as_ref().err().and_then(std::io::Error::raw_os_error) == Some(libc::EPERM),
        &format!("ftruncate(fd, {}): {}", before.size * 2, errno(grow.map(drop))),
    );
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let kept = match client.status() {
        Ok(after) => {
            let same = size == before.size
                && after.size == before.size
                && !after.extents.is_empty()
                && after.extents == before.extents;
            (
                same,
                format!(
                    "size {size} (was {}), extents {:?} (were {:?})",
                    before.size, after.extents, before.extents
                ),
            )
        }
        Err(e) => (false, format!("owner status: {e}")),
    };
    ok &= check(&format!("{prefix}-size-kept"), kept.0, &kept.1);
    ok
}

/// The fake backend: accepts one relayed connection, and returns the fd of the first
/// SET_MEM_TABLE after acknowledging it.
fn fake_backend(listener: UnixListener) -> Result<File, String> {
    let (conn, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    loop {
        let mut message = recv_message(&conn, Limits::VHOST_USER)
            .map_err(|e| e.to_string())?
            .ok_or("the relay hung up before SET_MEM_TABLE")?;
        if message.header.needs_reply() {
            let ack = Message::reply_ack(message.header.request, true);
            send_message(&conn, &ack).map_err(|e| e.to_string())?;
        }
        if message.header.request == u32::from(FrontendReq::SET_MEM_TABLE) {
            let fd =
                std::mem::take(&mut message.fds).into_iter().next().ok_or("SET_MEM_TABLE without an fd")?;
            return Ok(File::from(fd));
        }
    }
}

fn relay_truncate(owner_socket: &Path, relay_socket: &Path, backend_socket: &Path) -> bool {
    let listener = match UnixListener::bind(backend_socket) {
        Ok(listener) => listener,
        Err(e) => {
            return check("relay-backend-memory", false, &format!("bind {}: {e}", backend_socket.display()))
        }
    };
    let backend = std::thread::spawn(move || fake_backend(listener));
    let got = (|| -> Result<(ControlClient, VmStatus), String> {
        let client = ControlClient::connect(owner_socket, "relay-truncate").map_err(|e| e.to_string())?;
        let before = client.status().map_err(|e| e.to_string())?;
        let region = client.get_memory().map_err(|e| e.to_string())?.pop().ok_or("no memory region")?;
        let table = [VhostUserMemoryRegion::new(0, region.region.memory_size, 0x7f00_0000_0000, 0)];
        let front = UnixStream::connect(relay_socket)
            .map_err(|e| format!("connect {}: {e}", relay_socket.display()))?;
        let code = u32::from(FrontendReq::SET_MEM_TABLE);
        let message = Message::new(
            code,
            FLAG_VERSION_1 | FLAG_NEED_REPLY,
            encode_mem_table(table.iter()),
            vec![region.fd],
        );
        send_message(&front, &message).map_err(|e| e.to_string())?;
        let ack = recv_message(&front, Limits::VHOST_USER).map_err(|e| e.to_string())?.ok_or("no ack")?;
        if ack.payload != 0u64.to_ne_bytes() {
            return Err(format!("SET_MEM_TABLE not acknowledged: {:?}", ack.payload));
        }
        Ok((client, before))
    })();
    let (client, before) = match got {
        Ok(got) => got,
        Err(e) => return check("relay-backend-memory", false, &e),
    };
    let file = match backend.join() {
        Ok(Ok(file)) => file,
        Ok(Err(e)) => return check("relay-backend-memory", false, &e),
        Err(_) => return check("relay-backend-memory", false, "the fake backend panicked"),
    };
    let id = FileId::of(&file).ok();
    let mut ok = check(
        "relay-backend-memory",
        id == Some(FileId { dev: before.dev, ino: before.inode }),
        &format!("the backend got {id:?}, the VM's memory is {}:{}", before.dev, before.inode),
    );
    ok &= size_changes_refused("relay-backend", &file, &before, &client);
    ok
}

/// Holds the owner's memory (mapped) until stdin closes.
fn hold_memory(socket: &Path) -> Result<(), String> {
    let client = ControlClient::connect(socket, "hold-memory").map_err(|e| e.to_string())?;
    let region = client.get_memory().map_err(|e| e.to_string())?.pop().ok_or("no memory region")?;
    let size = region.region.memory_size;
    let mapping = Mapping::new(&File::from(region.fd), size).map_err(|e| e.to_string())?;
    drop(client);
    println!("HOLDING {size}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    for line in std::io::stdin().lock().lines() {
        line.map_err(|e| e.to_string())?;
    }
    drop(mapping);
    Ok(())
}

/// HELLO + GET_MEMORY; 0 if an fd came back, 3 if the owner refused, 1 on other errors.
fn ask_memory(socket: &Path) -> i32 {
    let client = match ControlClient::connect(socket, "ask-memory") {
        Ok(client) => client,
        Err(e) => {
            println!("REFUSED {e}");
            return 3;
        }
    };
    match client.get_memory() {
        Ok(regions) => {
            println!("GOT-MEMORY {}", regions.iter().map(|r| r.region.memory_size).sum::<u64>());
            0
        }
        Err(pageless_protocol::control::ControlError::Refused(reason)) => {
            println!("REFUSED {reason}");
            3
        }
        Err(e) => {
            println!("ERROR {e}");
            1
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["kernel"] => println!("{}", pageless_tests::kernel::Kernel::get().vmlinuz().display()),
        ["token-guest", out] => pageless_tests::guests::token_guest(&PathBuf::from(out)),
        ["owner-client", socket, token] => {
            std::process::exit(if owner_client(Path::new(socket), token) { 0 } else { 1 })
        }
        ["relay-truncate", owner, relay, backend] => {
            let ok = relay_truncate(Path::new(owner), Path::new(relay), Path::new(backend));
            std::process::exit(if ok { 0 } else { 1 })
        }
        ["ask-memory", socket] => std::process::exit(ask_memory(Path::new(socket))),
        ["hold-memory", socket] => {
            if let Err(e) = hold_memory(Path::new(socket)) {
                eprintln!("pageless-testbed hold-memory: {e}");
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!("usage: pageless-testbed kernel | token-guest OUT | owner-client SOCKET TOKEN | relay-truncate OWNER_SOCKET RELAY_SOCKET BACKEND_SOCKET | hold-memory SOCKET | ask-memory SOCKET");
            std::process::exit(2);
        }
    }
}
