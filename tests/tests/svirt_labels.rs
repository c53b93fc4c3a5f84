//! The hook's `start begin` on this machine (no AppArmor, no SELinux enforcing here; the real
//! AppArmor run is tests/tests/svirt_apparmor.rs):
//! * SELinux: a domain with a dynamic selinux `<seclabel>` gets its `<imagelabel>` on the
//!   owner's socket, the relay directory and socket and the memory file (`security.selinux`,
//!   which the kernel stores without SELinux loaded: root only);
//! * AppArmor: the rules file names exactly this VM's sockets and memory file, the include goes
//!   into the domain's profile, and without `apparmor_parser` the hook fails (QEMU must not start
//!   with a profile that lacks its memory) with a message that says so.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use pageless_tests::bins;
use pageless_tests::env::{require_env, Need};
use pageless_tests::owner::Owner;

const UUID: &str = "6b2a1f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
const IMAGE_LABEL: &str = "system_u:object_r:svirt_image_t:s0:c87,c520";

fn hook(vm: &str, config_dir: &Path, apparmor_dir: &Path, xml: &str) -> Output {
    let mut child = Command::new(bins::pageless())
        .args(["hook", "--config-dir"])
        .arg(config_dir)
        .arg("--apparmor-dir")
        .arg(apparmor_dir)
        .args([vm, "start", "begin", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(xml.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn selinux_label(path: &Path) -> String {
    let mut value = vec![0u8; 256];
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: NUL-terminated strings and a buffer of the length passed, all alive across the call.
    let n = unsafe {
        libc::lgetxattr(c_path.as_ptr(), c"security.selinux".as_ptr(), value.as_mut_ptr().cast(), value.len())
    };
    if n < 0 {
        return format!("(none: {})", std::io::Error::last_os_error());
    }
    value.truncate(n as usize);
    String::from_utf8_lossy(&value).trim_end_matches('\0').to_string()
}

fn domain(vm: &str, seclabel: &str) -> String {
    format!(
        "<domain type='qemu' id='3'><name>{vm}</name><uuid>{UUID}</uuid><memory unit='MiB'>8</memory>\
         <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>{seclabel}</domain>"
    )
}

#[test]
fn start_hook_labels_and_allows_only_the_vms_own_files() {
    if !require_env("start_hook_labels_and_allows_only_the_vms_own_files", &[Need::Root]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let pool = dir.path().join("pool");
    std::fs::create_dir(&pool).unwrap();
    let vm = "web1";
    let backend = dir.path().join("backend.sock");
    let relay = format!("disk0={}", backend.display());
    let pool_arg = format!("dir:{}", pool.display());
    let owner = Owner::start(&run_dir, vm, &["--size", "8M", "--pool", &pool_arg, "--vhost-user", &relay]);
    let config_dir = dir.path().join("vms");
    std::fs::create_dir(&config_dir).unwrap();
    std::fs::write(
        config_dir.join(format!("{vm}.toml")),
        format!(
            "pool = \"{pool_arg}\"\nrun_dir = \"{}\"\n[[vhost_user]]\nname = \"disk0\"\nbackend = \"{}\"\n",
            run_dir.display(),
            backend.display()
        ),
    )
    .unwrap();
    let memory_file = pool.join(vm);
    assert!(memory_file.exists(), "the owner's memory file {}", memory_file.display());
    let relay_dir = run_dir.join(vm);
    let relay_socket = relay_dir.join("disk0.sock");
    assert!(relay_socket.exists(), "the relay socket {}", relay_socket.display());

    // SELinux: every file of the VM gets the domain's image label.
    let selinux = format!(
        "<seclabel type='dynamic' model='selinux' relabel='yes'><label>system_u:system_r:svirt_t:s0:c87,c520</label>\
         <imagelabel>{IMAGE_LABEL}</imagelabel></seclabel>"
    );
    let out = hook(vm, &config_dir, dir.path(), &domain(vm, &selinux));
    assert!(out.status.success(), "hook: {}", String::from_utf8_lossy(&out.stderr));
    for path in [owner.socket(), relay_dir.clone(), relay_socket.clone(), memory_file.clone()] {
        assert_eq!(selinux_label(&path), IMAGE_LABEL, "{}", path.display());
    }

    // AppArmor: the rules and the include are written; the reload needs apparmor_parser.
    let apparmor_dir = dir.path().join("apparmor");
    std::fs::create_dir(&apparmor_dir).unwrap();
    let profile = apparmor_dir.join(format!("libvirt-{UUID}"));
    let generated = format!(
        "#include <tunables/global>\n\nprofile libvirt-{UUID} flags=(attach_disconnected) {{\n  #include <abstractions/libvirt-qemu>\n  #include if exists <libvirt/libvirt-{UUID}.files>\n}}\n"
    );
    std::fs::write(&profile, &generated).unwrap();
    let apparmor = format!(
        "<seclabel type='dynamic' model='apparmor' relabel='yes'><label>libvirt-{UUID}</label><imagelabel>libvirt-{UUID}</imagelabel></seclabel>"
    );
    let out = hook(vm, &config_dir, &apparmor_dir, &domain(vm, &apparmor));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rules = std::fs::read_to_string(apparmor_dir.join(format!("libvirt-{UUID}.pageless"))).unwrap();
    for line in [
        format!("  \"{}\" rw,", owner.socket().display()),
        format!("  \"{}/*.sock\" rw,", relay_dir.display()),
        format!("  \"{}\" rw,", memory_file.display()),
        "  \"/usr/bin/qemu-system-x86_64\" rix,".to_string(),
    ] {
        assert!(rules.lines().any(|l| l == line), "{line:?} missing in:\n{rules}");
    }
    assert_eq!(rules.lines().filter(|l| !l.starts_with('#')).count(), 6, "nothing else is allowed:\n{rules}");
    let included = std::fs::read_to_string(&profile).unwrap();
    assert!(
        included.contains(&format!("  #include if exists <libvirt/libvirt-{UUID}.pageless>\n}}")),
        "{included}"
    );
    let has_parser =
        ["/usr/sbin/apparmor_parser", "/sbin/apparmor_parser"].iter().any(|p| Path::new(p).exists());
    if has_parser {
        // This machine has the parser but no AppArmor in its kernel: the reload fails.
        assert!(!out.status.success(), "the reload cannot work without AppArmor: {stderr}");
        assert!(stderr.contains("apparmor_parser") && stderr.contains("-r"), "{stderr}");
    } else {
        assert!(!out.status.success());
        assert!(stderr.contains("no apparmor_parser at /usr/sbin/apparmor_parser"), "{stderr}");
    }
    assert!(
        stderr.contains("cannot let its confined QEMU reach its own memory and sockets (AppArmor)"),
        "{stderr}"
    );
    drop(owner);
}
