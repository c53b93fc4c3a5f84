//! libvirt's `migrate begin` hook on the destination, run as libvirt runs it (the domain XML on
//! stdin), without libvirt: it starts the VM's owner before QEMU and prints nothing (libvirt
//! keeps the XML); `prepare begin` then takes that owner over instead of refusing a running
//! one; a second `prepare` is refused; `release end` stops it. An owner recorded for an
//! incoming migration that no longer fits the domain is refused; hostile domain XML fails the
//! hook with nothing started.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use pageless_protocol::control::ControlClient;
use pageless_tests::bins;

const XML: &str = "<domain type='kvm'><name>mig</name><memory unit='KiB'>16384</memory></domain>";

fn hook(config_dir: &Path, vm: &str, operation: &str, subop: &str, xml: &str) -> Output {
    let mut child = Command::new(bins::pageless())
        .args(["hook", vm, operation, subop, "-"])
        .env("PAGELESS_CONFIG_DIR", config_dir)
        .env("PAGELESS_HOST_CONFIG", config_dir.join("no-host.toml"))
        .env("PAGELESS_APPARMOR_DIR", config_dir.join("no-apparmor"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pageless hook");
    child.stdin.take().unwrap().write_all(xml.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn owner_pid(socket: &Path) -> Option<u32> {
    ControlClient::connect(socket, "test").ok().map(|c| c.owner_pid())
}

fn wait_gone(pid: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(std::time::Instant::now() < deadline, "owner pid {pid} still runs");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn migrate_begin_starts_the_owner_and_prepare_takes_it_over() {
    let dir = tempfile::tempdir().unwrap();
    let (config_dir, run_dir) = (dir.path().join("vms"), dir.path().join("run"));
    std::fs::create_dir_all(&config_dir).unwrap();
    let config = config_dir.join("mig.toml");
    std::fs::write(&config, format!("pool = \"memfd\"\nrun_dir = \"{}\"\n", run_dir.display())).unwrap();
    let (socket, marker) = (run_dir.join("mig.sock"), run_dir.join("mig.incoming"));

    let out = hook(&config_dir, "mig", "migrate", "begin", XML);
    assert!(out.status.success(), "migrate begin: {}", stderr(&out));
    assert!(out.stdout.is_empty(), "libvirt takes non-empty output as new XML: {:?}", out.stdout);
    let pid = owner_pid(&socket).expect("the owner answers before QEMU starts");
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), pid.to_string());
    let status = ControlClient::connect(&socket, "test").unwrap().status().unwrap();
    assert_eq!(status.size, 16 << 20, "the owner serves the incoming domain's <memory>");

    // A migration retried after one that failed before QEMU started keeps the unused owner.
    let out = hook(&config_dir, "mig", "migrate", "begin", XML);
    assert!(out.status.success(), "migrate begin again: {}", stderr(&out));
    assert_eq!(owner_pid(&socket), Some(pid), "the unused owner is kept");

    let out = hook(&config_dir, "mig", "prepare", "begin", XML);
    assert!(out.status.success(), "prepare takes the incoming owner over: {}", stderr(&out));
    assert_eq!(owner_pid(&socket), Some(pid));
    assert!(!marker.exists(), "prepare took the owner over");

    // Without the record, a running owner is refused as before.
    let out = hook(&config_dir, "mig", "prepare", "begin", XML);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already has a memory owner"), "{}", stderr(&out));
    assert!(stderr(&out).ends_with("and start the VM again\n"), "{}", stderr(&out));
    // An incoming migration finds that owner too (not recorded for it): the destination's
    // message says to migrate again, since the VM still runs at the source.
    let out = hook(&config_dir, "mig", "migrate", "begin", XML);
    assert!(!out.status.success(), "migrate begin took over an owner not started for it");
    assert!(stderr(&out).contains("already has a memory owner"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("and migrate the VM again (it still runs at the source)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(owner_pid(&socket), Some(pid), "the running owner is left alone");

    let out = hook(&config_dir, "mig", "release", "end", XML);
    assert!(out.status.success(), "release: {}", stderr(&out));
    wait_gone(pid);
    assert!(owner_pid(&socket).is_none());

    // An incoming owner that no longer fits the domain (here: its size) is not taken over.
    let out = hook(&config_dir, "mig", "migrate", "begin", XML);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = owner_pid(&socket).unwrap();
    let bigger = XML.replace("16384", "32768");
    let out = hook(&config_dir, "mig", "prepare", "begin", &bigger);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot be used: it serves 16777216 bytes"), "{}", stderr(&out));
    let out = hook(&config_dir, "mig", "release", "end", XML);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_gone(pid);
    assert!(!marker.exists(), "release removes the record");

    // An incoming owner whose relay already serves a frontend (something connected before
    // libvirt's QEMU) is not taken over either.
    let backend = dir.path().join("backend.sock");
    let listener = std::os::unix::net::UnixListener::bind(&backend).unwrap();
    std::fs::write(
        &config,
        format!(
            "pool = \"memfd\"\nrun_dir = \"{}\"\n[[vhost_user]]\nname = \"disk0\"\nbackend = \"{}\"\n",
            run_dir.display(),
            backend.display()
        ),
    )
    .unwrap();
    let out = hook(&config_dir, "mig", "migrate", "begin", XML);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = owner_pid(&socket).unwrap();
    let frontend = std::os::unix::net::UnixStream::connect(run_dir.join("mig/disk0.sock")).unwrap();
    let (backend_side, _) = listener.accept().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ControlClient::connect(&socket, "test").unwrap().status().unwrap().consumers.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the relay never registered the connection");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = hook(&config_dir, "mig", "prepare", "begin", XML);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("device disk0 is already connected"), "{}", stderr(&out));
    drop((frontend, backend_side));
    let out = hook(&config_dir, "mig", "release", "end", XML);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_gone(pid);
}

/// Hostile incoming domain XML (a metadata-configured VM: no config file): the hook fails with
/// a message, starts nothing, prints nothing on stdout.
#[test]
fn migrate_begin_refuses_hostile_domain_xml() {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("vms");
    std::fs::create_dir_all(&config_dir).unwrap();
    let run_dir = dir.path().join("run");
    let meta = |inner: &str| {
        format!(
            "<domain><name>evil</name><memory unit='KiB'>16384</memory><metadata><pageless:vm xmlns:pageless='https://pageless.dev/xmlns/libvirt/1' {inner}/></metadata></domain>"
        )
    };
    let run = run_dir.display();
    for xml in [
        "not xml at all <".to_string(),
        meta(&format!("pool='memfd' run-dir='{run}' size='16E'")),
        meta(&format!("pool='dir:/dev/shm/../etc' run-dir='{run}'")),
        meta(&format!("pool='memfd' run-dir='{run}/&#10;x'")),
        meta(&format!("pool='memfd' run-dir='{run}' consumer-timeout='18446744073709551615'")),
        meta(&format!("pool='memfd' run-dir='{run}' allow-uid='-1'")),
        format!(
            "<domain><name>evil</name><memory unit='EiB'>99</memory><metadata><pageless:vm xmlns:pageless='https://pageless.dev/xmlns/libvirt/1' pool='memfd' run-dir='{run}'/></metadata></domain>"
        ),
    ] {
        let out = hook(&config_dir, "evil", "migrate", "begin", &xml);
        assert!(!out.status.success(), "accepted {xml}");
        assert!(stderr(&out).starts_with("pageless hook: "), "{xml}: {}", stderr(&out));
        assert!(!stderr(&out).contains("unknown attribute"), "{xml}: {}", stderr(&out));
        eprintln!("refused: {}", stderr(&out).trim());
        assert!(out.stdout.is_empty(), "{xml}: printed {:?}", out.stdout);
        assert!(owner_pid(&run_dir.join("evil.sock")).is_none(), "{xml}: an owner started");
    }
    // A VM name that is no file name, and a domain pageless does not own (left alone).
    let out = hook(&config_dir, "../evil", "migrate", "begin", &meta("pool='memfd'"));
    assert!(!out.status.success(), "{}", stderr(&out));
    let out = hook(&config_dir, "plain", "migrate", "begin", "<domain><name>plain</name></domain>");
    assert!(out.status.success() && out.stdout.is_empty(), "{}", stderr(&out));
}
