//! Test-bed helpers for scripts and test guests:
//!
//!   pageless-testbed kernel                      print the test kernel's vmlinuz path
//!   pageless-testbed token-guest OUT             build the token guest's initramfs at OUT
//!   pageless-testbed owner-client SOCKET TOKEN   a separate client process of an owner: maps
//!       the memory it hands out, writes TOKEN at 1 MiB, has the owner write OWNER-TOKEN at
//!       2 MiB through its own mapping and reads it back; prints CHECK lines.

use std::fs::File;
use std::path::{Path, PathBuf};

use driver::Mapping;
use protocol::control::ControlClient;

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
    let mapping = match Mapping::new(&File::from(region.fd), size) {
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
    ok
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["kernel"] => println!("{}", pageless_tests::kernel::Kernel::get().vmlinuz().display()),
        ["token-guest", out] => pageless_tests::guests::token_guest(&PathBuf::from(out)),
        ["owner-client", socket, token] => {
            std::process::exit(if owner_client(Path::new(socket), token) { 0 } else { 1 })
        }
        _ => {
            eprintln!("usage: pageless-testbed kernel | token-guest OUT | owner-client SOCKET TOKEN");
            std::process::exit(2);
        }
    }
}
