//! A stopping owner waits, bounded by --consumer-timeout, for the memory's consumers (QEMU and
//! relayed device backends) to go before releasing the allocation.

use std::time::{Duration, Instant};

use pageless_tests::backends::Backend;
use pageless_tests::bins;
use pageless_tests::guests::token_guest;
use pageless_tests::owner::Owner;
use pageless_tests::vm::{Vm, VmConfig};

fn start_vm(run_dir: &std::path::Path, initrd: &std::path::Path, name: &str) -> Vm {
    let mut config = VmConfig::new(name, initrd.into());
    config.wrapper =
        ["qemu", "--vm", name, "--run-dir", run_dir.to_str().unwrap(), "--"].map(String::from).to_vec();
    config.wrapper.insert(0, bins::pageless().display().to_string());
    config.extra = vec![
        "-chardev".into(),
        format!("socket,id=rng0,path={}", run_dir.join(name).join("rng0.sock").display()),
        "-device".into(),
        "vhost-user-rng-pci,chardev=rng0".into(),
    ];
    let mut vm = Vm::start(&config);
    vm.wait_for("GUEST-READY", Duration::from_secs(120)).expect("the guest boots");
    vm
}

fn stop_and_time(owner: &mut Owner) -> Duration {
    let start = Instant::now();
    assert_eq!(owner.terminate().code(), Some(0), "{}", owner.log());
    start.elapsed()
}

#[test]
fn owner_waits_for_consumers_within_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let initrd = dir.path().join("initrd");
    token_guest(&initrd);
    let rng = Backend::rng(&dir.path().join("rng.sock"));
    let relay = format!("rng0={}", rng.socket.display());
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let pool = format!("dir:{}", shm.path().display());
    let args = [
        "--size",
        "512M",
        "--pool",
        &pool,
        "--vhost-user",
        &relay,
        "--consumer-timeout",
        "4",
        "--remove-on-exit",
    ];

    // Consumers that stay: the owner waits its whole timeout, says who, then releases anyway.
    let mut owner = Owner::start(&run_dir, "busy", &args);
    let mut vm = start_vm(&run_dir, &initrd, "busy");
    assert_eq!(owner.status().consumers.len(), 1);
    let waited = stop_and_time(&mut owner);
    assert!(waited >= Duration::from_secs(4), "stopped after {waited:?}, before its consumer timeout");
    let log = owner.log();
    assert!(log.contains("waiting up to 4s for the memory's consumers to go"), "{log}");
    assert!(
        log.contains("device rng0") && log.contains(&format!("pid {} maps the memory", vm.pid())),
        "{log}"
    );
    assert!(log.contains("releasing it anyway"), "{log}");
    assert!(!shm.path().join("busy").exists(), "released after the timeout");
    assert!(vm.is_running(), "the guest keeps its memory");
    vm.kill();

    // Consumers that are gone: the owner stops at once.
    let mut owner = Owner::start(&run_dir, "idle", &args);
    let mut vm = start_vm(&run_dir, &initrd, "idle");
    vm.send_line("quit");
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    let waited = stop_and_time(&mut owner);
    assert!(waited < Duration::from_secs(3), "took {waited:?} with no consumers left");
    assert!(!owner.log().contains("releasing it anyway"), "{}", owner.log());
    assert!(!shm.path().join("idle").exists());
}
