//! Under DAC alone (every QEMU runs as one user, as libvirt does), an owner hands its VM's
//! memory to the VM's own QEMU and to no other process of that user: VM1's QEMU runs through
//! `pageless qemu` as uid 65534; another process of uid 65534 asks VM1's owner for the memory,
//! to read its memory or to be a frontend of its device sockets: all refused, each with a line
//! in the owner's log, and VM1 keeps running. VM2, under its own owner, starts and runs beside it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pageless_tests::bins;
use pageless_tests::env::{require_env, Need, QEMU};
use pageless_tests::guests::{token_guest, token_of};
use pageless_tests::kernel::Kernel;
use pageless_tests::owner::Owner;
use pageless_tests::vm::{Vm, VmConfig};

const QEMU_UID: &str = "65534";

/// `setpriv` to run a command as the QEMU user (uid and gid 65534, no groups).
fn as_qemu_user() -> Vec<String> {
    ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"].map(String::from).to_vec()
}

/// A guest whose QEMU runs through `pageless qemu` as the QEMU user.
fn start_vm(dir: &Path, run_dir: &Path, vm: &str, initrd: &Path) -> (Vm, String) {
    let mut config = VmConfig::new(vm, initrd.to_path_buf());
    config.memory = "256M".into();
    config.kernel = dir.join("vmlinuz");
    config.through_pageless(run_dir, Some(vm));
    config.wrapper.splice(0..0, as_qemu_user());
    let mut guest = Vm::start(&config);
    let token = token_of(&guest.wait_for("GUEST-TOKEN", Duration::from_secs(120)).expect("the guest boots"));
    guest.wait_for("GUEST-READY", Duration::from_secs(60)).expect("the guest is ready");
    (guest, token)
}

/// Runs `pageless-testbed ask-memory SOCKET` as the QEMU user: (exit code, output).
fn ask_memory_as_qemu_user(socket: &Path) -> (i32, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bins::build("pageless-tests", "pageless-testbed"))
        .arg("ask-memory")
        .arg(socket)
        .output()
        .expect("run pageless-testbed ask-memory");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn another_process_of_the_qemu_user_gets_no_memory() {
    // Root: the test runs processes as uid 65534.
    if !require_env(
        "another_process_of_the_qemu_user_gets_no_memory",
        &[Need::Root, QEMU, Need::Kernel, Need::Busybox, Need::Program("setpriv"), Need::Program("python3")],
    ) {
        return;
    }
    // The QEMU user must reach the kernel, the initramfs and the run directory.
    let dir = tempfile::Builder::new().prefix("pageless-dac").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(Kernel::get().vmlinuz(), dir.path().join("vmlinuz")).unwrap();
    let initrd = dir.path().join("initrd");
    token_guest(&initrd);
    let run_dir = dir.path().join("run");
    let absent_backend = dir.path().join("no-backend.sock").display().to_string();
    let vhost = format!("disk0={absent_backend}");
    let owner1 = Owner::start(
        &run_dir,
        "vm1",
        &["--size", "256M", "--pool", "memfd", "--allow-uid", QEMU_UID, "--vhost-user", &vhost],
    );

    let (mut vm1, token1) = start_vm(dir.path(), &run_dir, "vm1", &initrd);
    let status = owner1.status();
    let bound = status.qemu.clone().expect("the owner names the VM's QEMU");
    assert_eq!((bound.pid, bound.uid, bound.running), (vm1.pid(), 65534, true), "{status:?}");

    // Another process of the QEMU user asks for VM1's memory: no fd.
    let (code, out) = ask_memory_as_qemu_user(&owner1.socket());
    assert_eq!(code, 3, "another process of the QEMU user got VM1's memory: {out}");
    assert!(out.contains("is not the VM's QEMU"), "{out}");
    // ... nor reads it through the owner (FIND), nor stops it.
    let find = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bins::pageless())
        .args(["find", "--vm", "vm1", "--run-dir"])
        .arg(&run_dir)
        .arg(&token1)
        .output()
        .unwrap();
    let find_err = String::from_utf8_lossy(&find.stderr);
    assert!(
        !find.status.success() && find_err.contains("only root and the owner's user"),
        "FIND: {find_err}"
    );
    let stop = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bins::pageless())
        .args(["stop", "--vm", "vm1", "--run-dir"])
        .arg(&run_dir)
        .output()
        .unwrap();
    assert!(!stop.status.success(), "the QEMU user stopped VM1's owner");
    // ... nor becomes a frontend of VM1's device socket.
    let relay_socket = run_dir.join("vm1").join("disk0.sock");
    let intruder = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "sh", "-c"])
        .arg(format!(
            "python3 -c 'import socket; s=socket.socket(socket.AF_UNIX); s.connect(\"{}\"); print(len(s.recv(1)))'",
            relay_socket.display()
        ))
        .output()
        .unwrap();
    let intruder_out = String::from_utf8_lossy(&intruder.stdout);
    assert_eq!(intruder_out.trim(), "0", "the relay did not close the intruder's connection at once");

    // The owner's log says each refusal; VM1 keeps running on its memory.
    std::thread::sleep(Duration::from_millis(300));
    let log = owner1.log();
    assert!(log.contains("refused GET_MEMORY") && log.contains("is not the VM's QEMU"), "{log}");
    assert!(log.contains("may read, write or stop"), "FIND/STOP refusal not logged:\n{log}");
    assert!(log.contains("device disk0: refused frontend"), "relay refusal not logged:\n{log}");
    vm1.send_line("tick");
    vm1.wait_for("TICK", Duration::from_secs(30)).expect("VM1 keeps running");
    assert!(!owner1.find(&token1).is_empty(), "VM1's token is no longer in its memory");

    // VM2 under its own owner starts and runs beside VM1, as the same QEMU user.
    let owner2 =
        Owner::start(&run_dir, "vm2", &["--size", "256M", "--pool", "memfd", "--allow-uid", QEMU_UID]);
    let (mut vm2, token2) = start_vm(dir.path(), &run_dir, "vm2", &initrd);
    assert!(!owner2.find(&token2).is_empty(), "VM2's token is not in VM2's memory");
    assert!(owner1.find(&token2).is_empty(), "VM2's token is in VM1's memory");
    assert_eq!(owner2.status().qemu.map(|q| q.pid), Some(vm2.pid()));
    assert!(vm1.is_running() && vm2.is_running());

    for vm in [&mut vm1, &mut vm2] {
        vm.send_line("quit");
        vm.wait_exit(Duration::from_secs(60)).expect("the guest powers off");
    }
    // VM1's QEMU has exited: the owner hands the memory to no other process, not even a new
    // process that got the exited QEMU's pid number.
    let (code, out) = ask_memory_as_qemu_user(&owner1.socket());
    assert_eq!(code, 3, "after VM1's QEMU exited, another process got its memory: {out}");
    assert!(out.contains("has exited"), "{out}");
    assert_eq!(owner1.status().qemu.map(|q| q.running), Some(false));
}
