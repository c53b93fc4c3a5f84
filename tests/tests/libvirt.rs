//! libvirt 11.3 (bookworm-backports) starts a pageless VM: the hook starts the VM's owner on
//! `prepare`, the domain's `<emulator>` (contrib/libvirt/pageless-qemu) hands QEMU the owner's
//! memory in place of libvirt's `memory-backend-memfd`, the guest does disk I/O through the
//! owner's vhost-user relay to qemu-storage-daemon, and `virsh destroy` stops the owner, which
//! releases the memory. A domain whose owner cannot start fails `virsh start` with the hook's
//! message. `virsh migrate --live` moves a pageless domain to a second libvirtd on this machine
//! (its own network, mount and UTS namespaces): the destination's hook starts the owner on
//! `migrate begin`, before QEMU, the source's owner stops after, and the guest runs on in the
//! destination owner's memory.
//!
//! Installs `pageless` and the wrapper to /usr/local/bin and the hook to
//! /etc/libvirt/hooks/qemu (root only). Starts `virtlogd -d` if it is not running and
//! (re)starts `libvirtd -d` (libvirt looks for hooks at start-up); stops at the end the daemons
//! it found stopped, and leaves running those that were running. No systemd here: the hook
//! starts owners detached. Where /dev/kvm is root's only, gives it to group `kvm` (0660) while a
//! test runs ([`kvm_for_qemu_group`]). The migration test adds a network namespace with a veth
//! pair, removed at its end.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pageless_protocol::control::ControlClient;
use pageless_tests::backends::{disk_image_with_token, image_sector_line, Backend};
use pageless_tests::env::{require_env, Need, QEMU, QEMU_STORAGE_DAEMON};
use pageless_tests::guests::DISK_AND_TOKEN_GUEST;
use pageless_tests::initramfs::Initramfs;
use pageless_tests::kernel::Kernel;
use pageless_tests::{bins, random_token, repo_root};

const URI: &str = "qemu:///system";
const RUN_DIR: &str = "/run/pageless";
const BOOT: Duration = Duration::from_secs(90);

const KVM: &str = "/dev/kvm";

/// Gives /dev/kvm to group `kvm`, mode 0660, as udev's default rule does, where it is root's
/// only (no udev, as on the CI machines); returns its group and mode before. The tests' domains
/// are TCG (`type='qemu'`), but libvirt checks KVM for its capability cache: when its QEMU
/// user cannot open /dev/kvm while its capability probe (with libvirtd's privileges) can, it
/// takes the cache for stale on every lookup and probes QEMU again, 4 s each time, about a
/// minute per `virsh start` or incoming migration.
fn kvm_for_qemu_group() -> Option<(u32, u32)> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let metadata = std::fs::metadata(KVM).ok()?;
    let kvm = nix::unistd::Group::from_name("kvm").ok()??;
    let (gid, mode) = (metadata.gid(), metadata.mode() & 0o7777);
    if gid == kvm.gid.as_raw() && mode & 0o060 == 0o060 {
        return None;
    }
    std::os::unix::fs::chown(KVM, None, Some(kvm.gid.as_raw())).ok()?;
    std::fs::set_permissions(KVM, std::fs::Permissions::from_mode(0o660)).ok()?;
    eprintln!("{KVM}: group kvm, mode 0660 for this test (it was gid {gid}, mode {mode:o})");
    Some((gid, mode))
}

/// The tests here (re)start the host's libvirtd: one at a time.
static DAEMONS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_test_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    DAEMONS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e} (is libvirt installed? run scripts/setup.sh)"))
}

fn virsh(args: &[&str]) -> Output {
    let mut all = vec!["-c", URI];
    all.extend_from_slice(args);
    run("virsh", &all)
}

/// `virsh <what>` failed with the hook's message: VM `vm`'s owner could not start, its pool
/// directory `missing` does not exist, fix the VM's pageless config and `retry`.
fn assert_owner_could_not_start(out: &Output, what: &str, vm: &str, missing: &str, retry: &str) {
    let message = text(out);
    eprintln!("virsh {what}:\n{message}");
    assert!(!out.status.success(), "virsh {what} succeeded without an owner");
    for expected in [
        format!("pageless hook: the memory owner of VM \"{vm}\" (pageless serve) could not start"),
        format!("pool directory {missing} does not exist"),
        format!("Fix its pageless config /etc/pageless/vms/{vm}.toml and {retry}"),
    ] {
        assert!(message.contains(&expected), "virsh {what}'s error lacks {expected:?}:\n{message}");
    }
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Copies `from` to `to` with `mode`, replacing `to` atomically (it may be running).
fn install(from: &Path, to: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let staged = to.with_extension("pageless-test-new");
    std::fs::copy(from, &staged)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&staged, to).unwrap();
}

/// The pid in a daemon's pid file, if that process runs.
fn daemon_pid(pid_file: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// Starts a daemon that forks into the background, with no fds of ours.
fn start_daemon(program: &str, args: &[&str]) {
    let mut command = Command::new(program);
    // cargo's library path would reach the hooks and QEMU through libvirtd's environment.
    command
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: runs in the forked child before exec; close_range is async-signal-safe. It keeps
    // cargo's and the test harness's fds (pipes CI reads to the end) out of the daemon.
    unsafe {
        command.pre_exec(|| {
            if libc::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = command.status().unwrap_or_else(|e| panic!("run {program}: {e} (run scripts/setup.sh)"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

fn stop_daemon(pid_file: &str) {
    let Some(pid) = daemon_pid(pid_file) else { return };
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while process_alive(pid as u32) {
        assert!(Instant::now() < deadline, "{pid_file}: pid {pid} does not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `pid` runs (a zombie does not: it holds no fds and no memory).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// Processes that hold or map `needle` (e.g. `memfd:pageless:<vm>`), from /proc.
fn holders_of(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = entry.path();
        if std::fs::read_to_string(dir.join("maps")).is_ok_and(|maps| maps.contains(needle)) {
            found.push(format!("pid {name} maps it"));
        }
        if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
            for fd in fds.flatten() {
                if std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().contains(needle)) {
                    found.push(format!("pid {name} holds it as fd {}", fd.file_name().to_string_lossy()));
                }
            }
        }
    }
    found
}

/// The daemons and the host files the test set up; undone when dropped.
struct Libvirt {
    stop_virtlogd: bool,
    stop_libvirtd: bool,
    domains: Vec<String>,
    config_files: Vec<PathBuf>,
    /// /dev/kvm's owner group and mode before [`kvm_for_qemu_group`] changed them.
    kvm_was: Option<(u32, u32)>,
}

impl Libvirt {
    /// Installs pageless, the hook and the wrapper, then starts the daemons.
    fn setup() -> Libvirt {
        assert!(nix::unistd::geteuid().is_root(), "this test installs a libvirt hook: run it as root");
        let contrib = repo_root().join("contrib/libvirt");
        install(&bins::pageless(), Path::new("/usr/local/bin/pageless"), 0o755);
        install(&contrib.join("pageless-qemu"), Path::new("/usr/local/bin/pageless-qemu"), 0o755);
        install(&contrib.join("hooks/qemu"), Path::new("/etc/libvirt/hooks/qemu"), 0o755);

        let mut libvirt = Libvirt {
            stop_virtlogd: false,
            stop_libvirtd: false,
            domains: Vec::new(),
            config_files: Vec::new(),
            kvm_was: kvm_for_qemu_group(),
        };
        if daemon_pid("/run/virtlogd.pid").is_none() {
            start_daemon("virtlogd", &["-d"]);
            libvirt.stop_virtlogd = true;
        }
        // libvirtd looks for hooks when it starts: restart it.
        if daemon_pid("/run/libvirtd.pid").is_some() {
            stop_daemon("/run/libvirtd.pid");
        } else {
            libvirt.stop_libvirtd = true;
        }
        start_daemon("libvirtd", &["-d"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let version = virsh(&["version"]);
            if version.status.success() {
                eprintln!("{}", text(&version).trim());
                break;
            }
            assert!(Instant::now() < deadline, "libvirtd does not answer: {}", text(&version));
            std::thread::sleep(Duration::from_millis(200));
        }
        libvirt
    }

    fn define(&mut self, name: &str, xml: &str, dir: &Path) {
        let path = dir.join(format!("{name}.xml"));
        std::fs::write(&path, xml).unwrap();
        let out = virsh(&["define", path.to_str().unwrap()]);
        assert!(out.status.success(), "virsh define {name}: {}", text(&out));
        self.domains.push(name.into());
    }

    /// `/etc/pageless/vms/<vm>.toml`.
    fn config_file(&mut self, vm: &str, content: &str) {
        let path = PathBuf::from(format!("/etc/pageless/vms/{vm}.toml"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        self.config_files.push(path);
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        for domain in &self.domains {
            let _ = virsh(&["destroy", domain]);
            let _ = virsh(&["undefine", domain]);
        }
        for path in &self.config_files {
            let _ = std::fs::remove_file(path);
        }
        for domain in &self.domains {
            // The owner's log, and the lock file an owner that failed to start leaves.
            let _ = std::fs::remove_file(format!("{RUN_DIR}/{domain}.log"));
            let _ = std::fs::remove_file(format!("{RUN_DIR}/{domain}.lock"));
        }
        if self.stop_libvirtd {
            stop_daemon("/run/libvirtd.pid");
        }
        if let Some((gid, mode)) = self.kvm_was {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::os::unix::fs::chown(KVM, None, Some(gid));
            let _ = std::fs::set_permissions(KVM, std::fs::Permissions::from_mode(mode));
        }
        if self.stop_virtlogd {
            stop_daemon("/run/virtlogd.pid");
        }
    }
}

/// A domain: TCG, direct kernel boot, memfd shared memory, the pageless `<emulator>`, serial
/// console appended to a file (a migrated domain's destination QEMU appends to it), no balloon; `metadata`, `devices` and kernel arguments inserted as given.
fn domain_xml(name: &str, dir: &Path, metadata: &str, devices: &str, append: &str) -> String {
    let dir = dir.display();
    format!(
        r#"<domain type='qemu'>
  <name>{name}</name>
  <metadata>{metadata}</metadata>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{dir}/vmlinuz</kernel>
    <initrd>{dir}/initrd</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet {append}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/local/bin/pageless-qemu</emulator>
    {devices}
    <serial type='file'>
      <source path='{dir}/{name}.console' append='on'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
"#
    )
}

/// Waits for a line containing `needle` in the console file; returns it.
fn wait_for_line(console: &Path, needle: &str, timeout: Duration, context: &dyn Fn() -> String) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let content = std::fs::read_to_string(console).unwrap_or_default();
        if let Some(line) = content.lines().find(|l| l.contains(needle)) {
            return line.trim_end_matches('\r').to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no console line with {needle:?} within {timeout:?}; console:\n{content}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn libvirt_starts_and_stops_the_owner_with_the_domain() {
    if !require_env(
        "libvirt_starts_and_stops_the_owner_with_the_domain",
        &[
            Need::Root,
            QEMU,
            Need::Kernel,
            Need::Busybox,
            QEMU_STORAGE_DAEMON,
            Need::Program("libvirtd"),
            Need::Program("virtlogd"),
            Need::Program("virsh"),
        ],
    ) {
        return;
    }
    let _daemons = one_test_at_a_time();
    let mut libvirt = Libvirt::setup();
    // libvirt's QEMU user must reach the kernel, the initrd and the console's directory.
    let dir = tempfile::Builder::new().prefix("pageless-libvirt").tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::copy(Kernel::get().vmlinuz(), dir.path().join("vmlinuz")).unwrap();
    Initramfs::new()
        .kernel_modules(&Kernel::get(), &["virtio_blk"])
        .init(DISK_AND_TOKEN_GUEST)
        .build(&dir.path().join("initrd"))
        .unwrap();

    let image = dir.path().join("disk.img");
    let host_token = disk_image_with_token(&image, 64 << 20);
    let qsd_socket = dir.path().join("qsd.sock");
    let _qsd = Backend::storage_daemon(&image, &qsd_socket);

    // The VM: configured by its domain metadata (size: the domain's <memory>; pool: memfd).
    let suffix = &random_token()[..8];
    let vm = format!("plv-{suffix}");
    let metadata = format!(
        r#"<pageless:vm xmlns:pageless="https://pageless.dev/xmlns/libvirt/1" consumer-timeout="10"><pageless:vhost-user name="disk0" backend="{}"/></pageless:vm>"#,
        qsd_socket.display()
    );
    let disk_xml = format!(
        r#"<disk type='vhostuser' device='disk'>
      <driver name='qemu' type='raw'/>
      <source type='unix' path='{RUN_DIR}/{vm}/disk0.sock'>
        <reconnect enabled='yes' timeout='1'/>
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>"#
    );
    libvirt.define(&vm, &domain_xml(&vm, dir.path(), &metadata, &disk_xml, ""), dir.path());
    let owner_log = PathBuf::from(format!("{RUN_DIR}/{vm}.log"));
    let context = || {
        format!(
            "owner log {}:\n{}\nlibvirt's domain log:\n{}",
            owner_log.display(),
            std::fs::read_to_string(&owner_log).unwrap_or_default(),
            std::fs::read_to_string(format!("/var/log/libvirt/qemu/{vm}.log")).unwrap_or_default()
        )
    };

    let started = Instant::now();
    let out = virsh(&["start", &vm]);
    assert!(out.status.success(), "virsh start {vm}: {}\n{}", text(&out), context());
    eprintln!("virsh start {vm}: {:?}", started.elapsed());

    // The guest runs on the owner's memory and does I/O through the owner's relay.
    let console = dir.path().join(format!("{vm}.console"));
    let read = wait_for_line(&console, "DISK-READ", BOOT, &context);
    assert!(read.ends_with(&host_token), "the guest read {read:?}, not the host's token {host_token}");
    let wrote = wait_for_line(&console, "DISK-WROTE", BOOT, &context);
    let disk_token = wrote.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(image_sector_line(&image, 8), disk_token, "the guest's write is in the image");
    let ram_line = wait_for_line(&console, "GUEST-TOKEN", BOOT, &context);
    let ram_token = ram_line.split_whitespace().nth(1).unwrap().to_string();
    eprintln!("guest up {:?} after virsh start: {read} / {wrote} / {ram_line}", started.elapsed());

    let socket = PathBuf::from(format!("{RUN_DIR}/{vm}.sock"));
    let owner = ControlClient::connect(&socket, "test").expect("the hook started the owner");
    let offsets = owner.find(ram_token.as_bytes()).unwrap();
    assert!(!offsets.is_empty(), "the guest's RAM token {ram_token} is not in the owner's memory");
    let status = owner.status().unwrap();
    drop(owner);
    assert_eq!(status.size, 256 << 20, "the owner's size is the domain's <memory>");
    assert_eq!(status.memory, "memfd");

    // QEMU: started by libvirt through the wrapper, as libvirt's QEMU user, on the owner's fd.
    let qemu_pid: u32 =
        std::fs::read_to_string(format!("/run/libvirt/qemu/{vm}.pid")).unwrap().trim().parse().unwrap();
    let cmdline = std::fs::read(format!("/proc/{qemu_pid}/cmdline")).unwrap();
    let args: Vec<String> =
        cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let ram_object = args
        .iter()
        .find(|a| a.contains("\"id\":\"pc.ram\""))
        .unwrap_or_else(|| panic!("no pc.ram object in QEMU's command line: {args:?}"));
    let object: serde_json::Value = serde_json::from_str(ram_object).unwrap();
    assert_eq!(object["qom-type"], "memory-backend-file", "{ram_object}");
    assert!(object["mem-path"].as_str().unwrap().starts_with("/proc/self/fd/"), "{ram_object}");
    assert_eq!(object["size"], 256u64 << 20, "{ram_object}");
    assert!(
        !args.iter().any(|a| a.contains("memory-backend-memfd")),
        "libvirt's memfd backend is left: {args:?}"
    );
    assert!(args.iter().any(|a| a.contains("memory-backend=pc.ram")), "{args:?}");
    let qemu_client = status.clients.iter().find(|c| c.pid == qemu_pid).expect("QEMU is the owner's client");
    assert!(qemu_client.has_memory, "QEMU got the memory");
    assert_ne!(qemu_client.uid, 0, "libvirt runs QEMU as its own user, which the owner let in");
    let consumer = status.consumers.iter().find(|c| c.device == "disk0").expect("disk0 is relayed");
    assert_eq!(consumer.frontend_pid, Some(qemu_pid));

    // virsh destroy: the release hook stops the owner, which releases the memory.
    let out = virsh(&["destroy", &vm]);
    assert!(out.status.success(), "virsh destroy {vm}: {}", text(&out));
    assert!(
        !process_alive(status.pid),
        "the owner (pid {}) still runs after virsh destroy\n{}",
        status.pid,
        context()
    );
    assert!(!socket.exists(), "{} is left after virsh destroy", socket.display());
    assert!(!Path::new(&format!("{RUN_DIR}/{vm}")).exists(), "the relay's socket directory is left");
    let holders = holders_of(&format!("memfd:pageless:{vm} "));
    assert!(holders.is_empty(), "the VM's memory is still held: {holders:?}\n{}", context());
    let log = std::fs::read_to_string(&owner_log).unwrap();
    assert!(log.contains("control client") && log.contains("asked the owner to stop"), "{log}");

    // A domain configured by a file in /etc/pageless/vms, on a directory pool: the owner hands
    // the file to libvirt's QEMU user (QEMU opens it again through /proc/self/fd/N), and
    // removes it on destroy (remove_on_exit).
    let shm = tempfile::Builder::new().prefix("pageless-libvirt").tempdir_in("/dev/shm").unwrap();
    let dir_vm = format!("plv-dir-{suffix}");
    libvirt
        .config_file(&dir_vm, &format!("pool = \"dir:{}\"\nremove_on_exit = true\n", shm.path().display()));
    libvirt.define(&dir_vm, &domain_xml(&dir_vm, dir.path(), "", "", "nodisk"), dir.path());
    let out = virsh(&["start", &dir_vm]);
    assert!(out.status.success(), "virsh start {dir_vm}: {}", text(&out));
    let console = dir.path().join(format!("{dir_vm}.console"));
    let ram_line = wait_for_line(&console, "GUEST-TOKEN", BOOT, &|| text(&out));
    let ram_token = ram_line.split_whitespace().nth(1).unwrap().to_string();
    let socket = PathBuf::from(format!("{RUN_DIR}/{dir_vm}.sock"));
    let owner = ControlClient::connect(&socket, "test").expect("the hook started the owner");
    assert!(
        !owner.find(ram_token.as_bytes()).unwrap().is_empty(),
        "{ram_token} is not in the owner's memory"
    );
    let file = shm.path().join(&dir_vm);
    let qemu_uid =
        owner.status().unwrap().clients.iter().find(|c| c.has_memory).expect("QEMU maps the memory").uid;
    drop(owner);
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&file).unwrap().uid(), qemu_uid, "the pool file belongs to QEMU's user");
    }
    let out = virsh(&["destroy", &dir_vm]);
    assert!(out.status.success(), "virsh destroy {dir_vm}: {}", text(&out));
    assert!(!socket.exists() && !file.exists(), "the owner stopped and removed {}", file.display());

    // A domain whose owner cannot start (its pool does not exist): virsh start fails with the
    // hook's message, and nothing is left running.
    let failing = format!("plv-fail-{suffix}");
    let missing = format!("/nonexistent-pageless-pool-{suffix}");
    libvirt.config_file(&failing, &format!("pool = \"dir:{missing}\"\n"));
    libvirt.define(&failing, &domain_xml(&failing, dir.path(), "", "", "nodisk"), dir.path());
    let out = virsh(&["start", &failing]);
    assert_owner_could_not_start(&out, &format!("start {failing}"), &failing, &missing, "start the VM again");
    let state = virsh(&["domstate", &failing]);
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "shut off");
    assert!(!Path::new(&format!("{RUN_DIR}/{failing}.sock")).exists());
    assert!(holders_of(&format!("memfd:pageless:{failing} ")).is_empty());
    drop(libvirt);
}

/// A guest that prints `GUEST-TOKEN <token>` (a random token in tmpfs, its RAM), then every
/// half second `TICK <n> <token>` with a fresh random token put in RAM (tmpfs) first.
const TICKING_GUEST: &str = r#"
boot="PAGELESS-TOKEN-$(rand_hex 12)"
echo "$boot" > /run/token
echo "GUEST-TOKEN $boot"
n=0
while true; do
    n=$((n + 1))
    tok="PAGELESS-TICK-$(rand_hex 12)"
    echo "$tok" > /run/tick-$n
    echo "TICK $n $tok"
    sleep 0.5
done
"#;

/// The destination's hook: pageless's, recording each call in `/run/hook-calls.log` with its
/// exit status, the owner `migrate begin` recorded and the pid of the VM's QEMU.
const RECORDING_HOOK: &str = r#"#!/bin/sh
at=$(date +%s.%N)
/usr/local/bin/pageless hook "$@"
rc=$?
echo "$2 $3 rc=$rc incoming=$(cat /run/pageless/$1.incoming 2>/dev/null) qemu=$(cat /run/libvirt/qemu/$1.pid 2>/dev/null) at=$at end=$(date +%s.%N)" >> /run/hook-calls.log
exit $rc
"#;

/// A second libvirtd on this machine, a live migration's destination "host": in its own network
/// namespace (a veth pair to ours, `address`), mount namespace (its own `/run`, `/etc/libvirt`
/// with another `host_uuid`, `/var/lib/libvirt`, `/var/log/libvirt`, `/etc/pageless`:
/// directories under `root`) and hostname, with its own virtlogd and [`RECORDING_HOOK`]. Stopped, with everything left
/// in its namespace, when dropped.
struct Destination {
    netns: String,
    root: PathBuf,
    address: String,
    /// Our end of the veth pair.
    host_address: String,
    uri: String,
}

impl Destination {
    fn start(root: &Path, suffix: &str) -> Destination {
        let netns = format!("pageless-mig-{suffix}");
        let (host_if, dest_if) = (format!("plm{suffix}h"), format!("plm{suffix}d"));
        let subnet = format!("10.234.{}", u8::from_str_radix(&suffix[..2], 16).unwrap());
        let destination = Destination {
            netns: netns.clone(),
            root: root.to_path_buf(),
            address: format!("{subnet}.2"),
            host_address: format!("{subnet}.1"),
            uri: format!("qemu+unix:///system?socket={}/run/libvirt/libvirt-sock", root.display()),
        };
        let ok = |program: &str, args: &[&str]| {
            let out = run(program, args);
            assert!(out.status.success(), "{program} {args:?}: {}", text(&out));
        };
        ok("ip", &["netns", "add", &netns]);
        ok("ip", &["link", "add", &host_if, "type", "veth", "peer", "name", &dest_if, "netns", &netns]);
        let (host_net, dest_net) = (format!("{subnet}.1/30"), format!("{subnet}.2/30"));
        ok("ip", &["addr", "add", &host_net, "dev", &host_if]);
        ok("ip", &["link", "set", &host_if, "up"]);
        let inside: [&[&str]; 3] = [
            &["link", "set", "lo", "up"],
            &["addr", "add", &dest_net, "dev", &dest_if],
            &["link", "set", &dest_if, "up"],
        ];
        for args in inside {
            let mut all = vec!["netns", "exec", netns.as_str(), "ip"];
            all.extend_from_slice(args);
            ok("ip", &all);
        }

        use std::os::unix::fs::PermissionsExt;
        // Its own pageless config directory, as on another host (/etc/pageless is the mount point).
        std::fs::create_dir_all("/etc/pageless").unwrap();
        for dir in ["run", "lib", "log/qemu", "pageless/vms"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        for dir in ["", "run", "lib", "log"] {
            std::fs::set_permissions(root.join(dir), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        ok("cp", &["-a", "/etc/libvirt", root.join("etc").to_str().unwrap()]);
        let conf = root.join("etc/libvirtd.conf");
        let mut libvirtd_conf = std::fs::read_to_string(&conf).unwrap_or_default();
        libvirtd_conf
            .push_str(&format!("\nhost_uuid = \"{}\"\n", uuid_from(&(random_token() + &random_token()))));
        std::fs::write(&conf, libvirtd_conf).unwrap();
        let hook = root.join("etc/hooks/qemu");
        std::fs::write(&hook, RECORDING_HOOK).unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();

        let r = root.display();
        let script = format!(
            "set -e; hostname pageless-destination; mount --bind {r}/run /run; mount --bind {r}/etc /etc/libvirt; \
             mount --bind {r}/lib /var/lib/libvirt; mount --bind {r}/log /var/log/libvirt; mount --bind {r}/pageless /etc/pageless; virtlogd -d; exec libvirtd -d"
        );
        start_daemon(
            "ip",
            &[
                "netns",
                "exec",
                &netns,
                "unshare",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let version = destination.virsh(&["version"]);
            if version.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the destination's libvirtd does not answer: {}",
                text(&version)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        destination
    }

    fn virsh(&self, args: &[&str]) -> Output {
        let mut all = vec!["-c", self.uri.as_str()];
        all.extend_from_slice(args);
        run("virsh", &all)
    }

    /// A path of the destination's `/run`, from here.
    fn run_path(&self, path: &str) -> PathBuf {
        self.root.join("run").join(path)
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        let domains = self.virsh(&["list", "--name"]);
        for domain in String::from_utf8_lossy(&domains.stdout).split_whitespace() {
            let _ = self.virsh(&["destroy", domain]);
        }
        for daemon in ["libvirtd", "virtlogd"] {
            stop_daemon(self.run_path(&format!("{daemon}.pid")).to_str().unwrap());
        }
        // Whatever is left in the namespace (an owner of a failed run).
        let pids = run("ip", &["netns", "pids", &self.netns]);
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = run("ip", &["netns", "del", &self.netns]);
    }
}

/// A UUID made of the first 32 hex digits of `hex`.
fn uuid_from(hex: &str) -> String {
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// Field `index` (1-based, as in proc(5)) of `/proc/<pid>/stat`.
fn stat_field(pid: u32, index: usize) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(index - 3).unwrap().parse().unwrap()
}

/// The `TICK <n> <token>` lines of a console so far.
fn ticks(console: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(console)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut words = line.trim_end_matches('\r').split_whitespace();
            (words.next() == Some("TICK")).then_some(())?;
            Some((words.next()?.parse().ok()?, words.next()?.to_string()))
        })
        .collect()
}

#[test]
fn virsh_migrate_live_moves_a_pageless_domain_between_two_libvirtds() {
    if !require_env(
        "virsh_migrate_live_moves_a_pageless_domain_between_two_libvirtds",
        &[
            Need::Root,
            QEMU,
            Need::Kernel,
            Need::Busybox,
            Need::Program("libvirtd"),
            Need::Program("virtlogd"),
            Need::Program("virsh"),
            Need::Program("ip"),
            Need::Program("unshare"),
        ],
    ) {
        return;
    }
    let _daemons = one_test_at_a_time();
    let dir = tempfile::Builder::new().prefix("pageless-libvirt-mig").tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::copy(Kernel::get().vmlinuz(), dir.path().join("vmlinuz")).unwrap();
    Initramfs::new().init(TICKING_GUEST).build(&dir.path().join("initrd")).unwrap();
    let mut libvirt = Libvirt::setup();
    let suffix = &random_token()[..8];
    let destination = Destination::start(&dir.path().join("destination"), suffix);

    let vm = format!("plv-mig-{suffix}");
    let metadata =
        r#"<pageless:vm xmlns:pageless="https://pageless.dev/xmlns/libvirt/1" consumer-timeout="10"/>"#;
    libvirt.define(&vm, &domain_xml(&vm, dir.path(), metadata, "", ""), dir.path());
    let console = dir.path().join(format!("{vm}.console"));
    let hook_calls = destination.run_path("hook-calls.log");
    let context = || {
        format!(
            "console:\n{}\nsource owner log:\n{}\nsource domain log:\n{}\ndestination hook calls:\n{}\ndestination owner log:\n{}\ndestination domain log:\n{}",
            std::fs::read_to_string(&console).unwrap_or_default(),
            std::fs::read_to_string(format!("{RUN_DIR}/{vm}.log")).unwrap_or_default(),
            std::fs::read_to_string(format!("/var/log/libvirt/qemu/{vm}.log")).unwrap_or_default(),
            std::fs::read_to_string(&hook_calls).unwrap_or_default(),
            std::fs::read_to_string(destination.run_path(&format!("pageless/{vm}.log"))).unwrap_or_default(),
            std::fs::read_to_string(destination.root.join(format!("log/qemu/{vm}.log"))).unwrap_or_default(),
        )
    };
    let out = virsh(&["start", &vm]);
    assert!(out.status.success(), "virsh start {vm}: {}\n{}", text(&out), context());
    let boot_token =
        wait_for_line(&console, "GUEST-TOKEN", BOOT, &context).split_whitespace().nth(1).unwrap().to_string();
    wait_for_line(&console, "TICK 2 ", BOOT, &context);
    let source_socket = PathBuf::from(format!("{RUN_DIR}/{vm}.sock"));
    let source_owner = ControlClient::connect(&source_socket, "test").unwrap().owner_pid();
    let source_qemu: u32 =
        std::fs::read_to_string(format!("/run/libvirt/qemu/{vm}.pid")).unwrap().trim().parse().unwrap();

    // The migration: the destination's QEMU listens on its veth address.
    let migrate_uri = format!("tcp:{}", destination.address);
    let migrate = [
        "migrate",
        "--live",
        "--verbose",
        &vm,
        &destination.uri,
        "--migrateuri",
        &migrate_uri,
        "--listen-address",
        &destination.address,
    ];

    // A destination that cannot serve the VM (its pageless config names a missing pool) fails
    // the migration in `migrate begin`, before anything moves: the domain runs on at the source,
    // on the same owner.
    let missing = format!("/nonexistent-pageless-pool-{suffix}");
    let dest_config = destination.root.join(format!("pageless/vms/{vm}.toml"));
    std::fs::write(&dest_config, format!("pool = \"dir:{missing}\"\n")).unwrap();
    let out = virsh(&migrate);
    assert_owner_could_not_start(
        &out,
        "migrate to a destination without the pool",
        &vm,
        &missing,
        "migrate the VM again (it still runs at the source)",
    );
    assert_eq!(String::from_utf8_lossy(&virsh(&["domstate", &vm]).stdout).trim(), "running");
    assert_eq!(ControlClient::connect(&source_socket, "test").unwrap().owner_pid(), source_owner);
    assert!(process_alive(source_qemu));
    assert!(
        !destination.run_path(&format!("pageless/{vm}.sock")).exists(),
        "an owner runs at the destination"
    );
    let before_retry = ticks(&console).last().map_or(0, |(n, _)| *n);
    wait_for_line(&console, &format!("TICK {} ", before_retry + 1), Duration::from_secs(30), &context);
    std::fs::remove_file(&dest_config).unwrap();
    let calls = std::fs::read_to_string(&hook_calls).unwrap();
    let failed: Vec<&str> = calls.lines().collect();
    assert!(
        failed.len() == 1 && failed[0].starts_with("migrate begin rc=1 incoming= qemu= "),
        "the failed migration's destination hook calls:\n{calls}"
    );
    std::fs::write(&hook_calls, "").unwrap();

    let started = Instant::now();
    let out = virsh(&migrate);
    assert!(out.status.success(), "virsh migrate: {}\n{}", text(&out), context());
    let last_before = ticks(&console).last().map_or(0, |(n, _)| *n);
    eprintln!("virsh migrate --live {vm}: {:?}, {}", started.elapsed(), text(&out).trim());
    eprintln!("{}", text(&virsh(&["domjobinfo", "--completed", &vm])).trim());

    let state = |output: Output| String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert_eq!(state(virsh(&["domstate", &vm])), "shut off", "the source's domain left");
    assert_eq!(state(destination.virsh(&["domstate", &vm])), "running", "{}", context());

    // The source: QEMU gone, and after it (release) the owner, with its socket.
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_alive(source_owner) {
        assert!(
            Instant::now() < deadline,
            "the source's owner (pid {source_owner}) still runs\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!process_alive(source_qemu), "the source's QEMU still runs");
    assert!(!source_socket.exists(), "{} is left", source_socket.display());

    // The destination: `migrate begin` started the owner before QEMU; prepare took it over.
    let calls = std::fs::read_to_string(&hook_calls).unwrap();
    eprintln!("destination hook calls:\n{calls}");
    let lines: Vec<&str> = calls.lines().collect();
    let position = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} hook call:\n{calls}"))
    };
    let (migrate, prepare, start) =
        (position("migrate begin"), position("prepare begin"), position("start begin"));
    assert!(migrate < prepare && prepare < start, "hook call order:\n{calls}");
    let incoming = lines[migrate].split_whitespace().find_map(|w| w.strip_prefix("incoming=")).unwrap();
    let incoming_owner: u32 =
        incoming.parse().unwrap_or_else(|_| panic!("migrate begin recorded no owner:\n{calls}"));
    assert!(lines[migrate].contains("rc=0") && lines[migrate].contains(" qemu= "), "no QEMU yet:\n{calls}");
    assert!(lines[prepare].contains("rc=0 incoming= qemu= "), "prepare took the owner over:\n{calls}");
    let dest_socket = destination.run_path(&format!("pageless/{vm}.sock"));
    let dest = ControlClient::connect(&dest_socket, "test").expect("the destination's owner answers");
    let status = dest.status().unwrap();
    assert_eq!(status.pid, incoming_owner, "the owner migrate begin started serves the VM");
    assert_ne!(status.pid, source_owner);
    assert_ne!(
        std::fs::read_link(format!("/proc/{}/ns/net", status.pid)).unwrap(),
        std::fs::read_link("/proc/self/ns/net").unwrap(),
        "the destination's owner runs in the destination's namespaces"
    );
    let dest_qemu: u32 = std::fs::read_to_string(destination.run_path(&format!("libvirt/qemu/{vm}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let client = status
        .clients
        .iter()
        .find(|c| c.pid == dest_qemu)
        .expect("the destination's QEMU is the owner's client");
    assert!(client.has_memory, "the destination's QEMU runs on the owner's memory");
    // Start times in clock ticks since boot (proc(5) field 22).
    let (owner_start, qemu_start) = (stat_field(status.pid, 22), stat_field(dest_qemu, 22));
    assert!(owner_start <= qemu_start, "owner started at tick {owner_start}, QEMU at {qemu_start}");

    // The guest runs on at the destination, on the destination owner's memory: the RAM it had
    // (the boot token) came along, and what it writes now lands there.
    let wanted = last_before + 3;
    wait_for_line(&console, &format!("TICK {wanted} "), Duration::from_secs(60), &context);
    let (n, token) = ticks(&console).into_iter().find(|(n, _)| *n == wanted).unwrap();
    eprintln!("the guest ticked on after the migration: TICK {last_before} at its end, now TICK {n} {token}");
    assert!(
        !dest.find(token.as_bytes()).unwrap().is_empty(),
        "{token}, written after the migration, is not in the destination owner's memory"
    );
    assert!(
        !dest.find(boot_token.as_bytes()).unwrap().is_empty(),
        "the boot token {boot_token} did not move to the destination owner's memory"
    );
    drop(dest);

    // And back: the first libvirtd is the destination now; its hook starts a new owner there,
    // and the second one's release stops the owner it had.
    let out = destination.virsh(&[
        "migrate",
        "--live",
        &vm,
        URI,
        "--migrateuri",
        &format!("tcp:{}", destination.host_address),
        "--listen-address",
        &destination.host_address,
    ]);
    assert!(out.status.success(), "virsh migrate back: {}\n{}", text(&out), context());
    let last_back = ticks(&console).last().map_or(0, |(n, _)| *n);
    let listed = destination.virsh(&["list", "--all", "--name"]);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&vm), "the domain left the destination");
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_alive(status.pid) {
        assert!(
            Instant::now() < deadline,
            "the destination's owner still runs after the domain left\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!dest_socket.exists(), "{} is left", dest_socket.display());
    let back =
        ControlClient::connect(&source_socket, "test").expect("the first host's hook started an owner");
    let back_status = back.status().unwrap();
    assert!(![source_owner, status.pid].contains(&back_status.pid), "a new owner serves the VM");
    let back_qemu: u32 =
        std::fs::read_to_string(format!("/run/libvirt/qemu/{vm}.pid")).unwrap().trim().parse().unwrap();
    assert!(
        back_status.clients.iter().any(|c| c.pid == back_qemu && c.has_memory),
        "the returned domain's QEMU runs on the new owner's memory"
    );
    let wanted = last_back + 3;
    wait_for_line(&console, &format!("TICK {wanted} "), Duration::from_secs(60), &context);
    let (_, token) = ticks(&console).into_iter().find(|(n, _)| *n == wanted).unwrap();
    eprintln!(
        "back on the first libvirtd: TICK {last_back} at the migration's end, now TICK {wanted} {token}"
    );
    assert!(!back.find(token.as_bytes()).unwrap().is_empty(), "{token} is not in the new owner's memory");
    assert!(!back.find(boot_token.as_bytes()).unwrap().is_empty(), "the boot token did not come back");
    drop(back);

    // virsh destroy: the release hook stops the owner.
    let out = virsh(&["destroy", &vm]);
    assert!(out.status.success(), "virsh destroy {vm}: {}", text(&out));
    assert!(!process_alive(back_status.pid), "the owner still runs after virsh destroy\n{}", context());
    assert!(!source_socket.exists());
    drop(destination);
    drop(libvirt);
}
