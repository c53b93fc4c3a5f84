//! The Debian packages for real: `scripts/package.sh` builds `pageless` and `pageless-dkms`,
//! which are installed with dpkg in a clean Debian 13 chroot — a fresh overlay of the build
//! root `scripts/setup.sh` made (.cache/buildroot/trixie, never modified here), which holds
//! dkms and two kernels' headers: Debian 13's own 6.12 cloud kernel and the 7.3 one of
//! trixie-backports. Then: `dkms status` shows the module installed for both, the built
//! modules are for those kernels, `pageless --version` runs, the hook, the wrapper, the units
//! and tmpfiles are in place (the boot unit enabled, /run/pageless/units private), and purging
//! both packages removes the module from DKMS and every kernel, and everything else.
//!
//! The chroot lives in a private mount namespace held by one `unshare … sleep` process: the
//! overlay and /proc vanish with it, whatever happens to the test. Runs offline.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use pageless_tests::env::{require_env, Need};
use pageless_tests::repo_root;

/// A mount namespace with the overlay chroot mounted at `<dir>/root`, the packages at
/// `/tmp/debs` inside it. Dropping it ends the namespace (and with it the mounts).
struct Chroot {
    holder: Child,
    root: PathBuf,
}

impl Chroot {
    fn new(lower: &Path, dir: &Path, debs: &Path) -> Chroot {
        for sub in ["upper", "work", "root"] {
            std::fs::create_dir(dir.join(sub)).unwrap();
        }
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                r#"set -e
                mount -t overlay overlay -o "lowerdir=$1,upperdir=$2/upper,workdir=$2/work" "$2/root"
                mount -t proc proc "$2/root/proc"
                mkdir -p "$2/root/tmp/debs"
                mount --bind "$3" "$2/root/tmp/debs"
                echo ready
                exec sleep 3600"#,
            )
            .arg("sh")
            .args([lower, dir, debs])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run unshare");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let chroot = Chroot { holder, root: dir.join("root") };
        assert_eq!(line.trim(), "ready", "mounting the overlay chroot failed (see stderr)");
        chroot
    }

    /// Runs `command` chrooted, with a clean environment.
    fn run(&self, command: &[&str]) -> Output {
        let output = Command::new("nsenter")
            .arg(format!("--target={}", self.holder.id()))
            .args(["--mount", "--", "chroot"])
            .arg(&self.root)
            .args([
                "env",
                "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
                "DEBIAN_FRONTEND=noninteractive",
            ])
            .args(command)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter");
        eprintln!(
            "$ {}  => {}\n{}{}",
            command.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Runs `command` chrooted, which must succeed; its stdout.
    fn ok(&self, command: &[&str]) -> String {
        let output = self.run(command);
        assert!(output.status.success(), "{} failed in the chroot ({})", command.join(" "), output.status);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A path inside the chroot, seen from here (through the namespace's root).
    fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.holder.id()))
            .join(self.root.strip_prefix("/").unwrap())
            .join(inside.trim_start_matches('/'))
    }

    fn read(&self, inside: &str) -> String {
        std::fs::read_to_string(self.path(inside))
            .unwrap_or_else(|e| panic!("read {inside} in the chroot: {e}"))
    }

    /// Whether `inside` exists in the chroot (a dangling symlink counts).
    fn exists(&self, inside: &str) -> bool {
        std::fs::symlink_metadata(self.path(inside)).is_ok()
    }

    fn mode(&self, inside: &str) -> u32 {
        std::fs::metadata(self.path(inside))
            .unwrap_or_else(|e| panic!("stat {inside} in the chroot: {e}"))
            .permissions()
            .mode()
            & 0o7777
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The crate's version, as the packages carry it.
fn version() -> String {
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let line = manifest.lines().find(|l| l.starts_with("version = ")).expect("workspace version");
    line.trim_start_matches("version = ").trim_matches('"').to_string()
}

/// `scripts/package.sh`: the two .debs.
fn build_packages(version: &str) -> (PathBuf, PathBuf) {
    let mut command = Command::new(repo_root().join("scripts/package.sh"));
    // The cargo running this test, first on PATH.
    if let Some(cargo_dir) =
        std::env::var_os("CARGO").map(PathBuf::from).and_then(|c| c.parent().map(Path::to_path_buf))
    {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![cargo_dir];
        dirs.extend(std::env::split_paths(&path));
        command.env("PATH", std::env::join_paths(dirs).unwrap());
    }
    let output = command.stdin(Stdio::null()).output().expect("run scripts/package.sh");
    assert!(
        output.status.success(),
        "scripts/package.sh failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let out = repo_root().join("target/debian");
    let debs = (
        out.join(format!("pageless_{version}_amd64.deb")),
        out.join(format!("pageless-dkms_{version}_all.deb")),
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    for deb in [&debs.0, &debs.1] {
        assert!(deb.is_file(), "{} was not built", deb.display());
        let name = deb.file_name().unwrap().to_string_lossy();
        assert!(printed.contains(&*name), "package.sh did not print {name}: {printed}");
    }
    debs
}

/// The module dkms installed for `kernel`, compressed as the kernel's modules are.
fn installed_module(chroot: &Chroot, kernel: &str) -> Option<String> {
    ["", ".xz", ".zst", ".gz"]
        .iter()
        .map(|ext| format!("/lib/modules/{kernel}/updates/dkms/pageless.ko{ext}"))
        .find(|path| chroot.exists(path))
}

#[test]
fn packages_install_build_the_module_and_remove_cleanly() {
    if !require_env(
        "packages",
        &[
            Need::Root,
            Need::PackageRoot,
            Need::Program("dpkg-deb"),
            Need::Program("objdump"),
            Need::Program("unshare"),
            Need::Program("nsenter"),
        ],
    ) {
        return;
    }
    let lower = repo_root().join(".cache/buildroot/trixie").canonicalize().unwrap();
    let kernels: Vec<String> = [".dkms", ".kernel"]
        .iter()
        .map(|f| std::fs::read_to_string(lower.join(f)).unwrap().trim().to_string())
        .collect();
    assert!(kernels[0].starts_with("6.12.") && kernels[1].starts_with("7.3."), "{kernels:?}");
    let version = version();
    let (bin_deb, dkms_deb) = build_packages(&version);

    let dir = tempfile::tempdir().unwrap();
    let debs = dir.path().join("debs");
    std::fs::create_dir(&debs).unwrap();
    for deb in [&bin_deb, &dkms_deb] {
        std::fs::copy(deb, debs.join(deb.file_name().unwrap())).unwrap();
    }
    let chroot = Chroot::new(&lower, dir.path(), &debs);
    // Clean: no pageless yet, no module built by anyone.
    assert!(!chroot.exists("/usr/bin/pageless") && !chroot.exists("/var/lib/dkms/pageless"));
    assert!(chroot.ok(&["dkms", "status"]).lines().all(|l| !l.starts_with("pageless/")));

    let bin_name = format!("/tmp/debs/{}", bin_deb.file_name().unwrap().to_string_lossy());
    let dkms_name = format!("/tmp/debs/{}", dkms_deb.file_name().unwrap().to_string_lossy());
    chroot.ok(&["dpkg", "-i", &dkms_name, &bin_name]);
    let listed = chroot.ok(&[
        "dpkg-query",
        "-W",
        "-f",
        "${Package} ${Version} ${db:Status-Status}\n",
        "pageless",
        "pageless-dkms",
    ]);
    assert_eq!(listed, format!("pageless {version} installed\npageless-dkms {version} installed\n"));

    // DKMS: added, built and installed for both kernels' headers.
    let status = chroot.ok(&["dkms", "status"]);
    for kernel in &kernels {
        let line = format!("pageless/{version}, {kernel}, x86_64: installed");
        assert!(status.lines().any(|l| l == line), "dkms status lacks {line:?}:\n{status}");
        let module = installed_module(&chroot, kernel)
            .unwrap_or_else(|| panic!("no pageless.ko installed for {kernel}"));
        // dkms runs depmod only for kernels whose image is installed (the 6.12 one here; the
        // 7.3 one has only its headers): there modprobe finds the module by name.
        if chroot.exists(&format!("/lib/modules/{kernel}/modules.dep")) {
            assert_eq!(chroot.ok(&["modinfo", "-n", "-k", kernel, "pageless"]).trim(), module);
        }
        let vermagic = chroot.ok(&["modinfo", "-F", "vermagic", &module]);
        assert!(vermagic.starts_with(&format!("{kernel} ")), "{module} is built for {vermagic}");
        assert_eq!(chroot.ok(&["modinfo", "-F", "name", &module]).trim(), "pageless");
    }
    let source = format!("/usr/src/pageless-{version}");
    let dkms_conf = chroot.read(&format!("{source}/dkms.conf"));
    for line in [
        format!("PACKAGE_VERSION=\"{version}\""),
        "BUILT_MODULE_NAME[0]=\"pageless\"".into(),
        "DEST_MODULE_LOCATION[0]=\"/updates/dkms\"".into(),
        "AUTOINSTALL=\"yes\"".into(),
    ] {
        assert!(dkms_conf.lines().any(|l| l == line), "dkms.conf lacks {line}:\n{dkms_conf}");
    }
    assert!(chroot.exists(&format!("{source}/Kbuild")) && chroot.exists(&format!("{source}/main.c")));

    // The binary runs, from the package's path.
    assert_eq!(chroot.ok(&["pageless", "--version"]).trim(), format!("pageless {version}"));
    assert_eq!(chroot.ok(&["sh", "-c", "command -v pageless"]).trim(), "/usr/bin/pageless");

    // libvirt's hook (in qemu.d: a site's own hooks/qemu is left alone) and the <emulator>.
    let hook = "/etc/libvirt/hooks/qemu.d/pageless";
    assert_eq!(chroot.mode(hook), 0o755);
    assert!(
        chroot.read(hook).lines().any(|l| l == "exec /usr/bin/pageless hook \"$@\""),
        "{}",
        chroot.read(hook)
    );
    assert!(!chroot.exists("/etc/libvirt/hooks/qemu"));
    let wrapper = "/usr/bin/pageless-qemu";
    assert_eq!(chroot.mode(wrapper), 0o755);
    assert!(chroot
        .read(wrapper)
        .lines()
        .any(|l| l == "exec /usr/bin/pageless qemu -- /usr/bin/qemu-system-x86_64 \"$@\""));
    for script in [hook, wrapper] {
        assert!(!chroot.read(script).contains("/usr/local"), "{script} names /usr/local");
    }
    // The hook runs: for a domain without pageless config it does nothing and succeeds.
    chroot.ok(&[
        "sh",
        "-c",
        &format!("echo '<domain><name>plain</name></domain>' | {hook} plain prepare begin -"),
    ]);

    // systemd units, tmpfiles, the config directory.
    let boot = chroot.read("/lib/systemd/system/pageless-host.service");
    for line in [
        "ExecStart=/usr/bin/pageless host up",
        "ExecStop=/usr/bin/pageless host down",
        "Before=libvirtd.service virtqemud.service",
        "ConditionPathExists=/etc/pageless/pageless.toml",
        "WantedBy=multi-user.target",
    ] {
        assert!(boot.lines().any(|l| l == line), "pageless-host.service lacks {line}:\n{boot}");
    }
    assert!(
        chroot.exists("/etc/systemd/system/multi-user.target.wants/pageless-host.service"),
        "boot unit not enabled"
    );
    let template = chroot.read("/lib/systemd/system/pageless@.service");
    assert!(template.lines().any(|l| l == "ExecStart=/usr/bin/pageless serve-unit %I"), "{template}");
    for unit in ["pageless-host.service", "pageless@web1.service"] {
        let verify = chroot.run(&["systemd-analyze", "verify", "--man=no", unit]);
        let complaints = String::from_utf8_lossy(&verify.stderr);
        assert!(verify.status.success() && !complaints.contains("pageless"), "{unit}: {complaints}");
    }
    let tmpfiles = chroot.read("/usr/lib/tmpfiles.d/pageless.conf");
    assert!(tmpfiles.lines().any(|l| l == "d /run/pageless/units 0700 root root -"), "{tmpfiles}");
    assert_eq!(chroot.mode("/run/pageless"), 0o755);
    assert_eq!(chroot.mode("/run/pageless/units"), 0o700);
    assert!(std::fs::metadata(chroot.path("/etc/pageless/vms")).unwrap().is_dir());

    // Purge: the module leaves DKMS and every kernel, and the rest goes too.
    chroot.ok(&["dpkg", "--purge", "pageless", "pageless-dkms"]);
    let status = chroot.ok(&["dkms", "status"]);
    assert!(status.lines().all(|l| !l.starts_with("pageless/")), "pageless still in dkms status:\n{status}");
    for kernel in &kernels {
        assert_eq!(installed_module(&chroot, kernel), None, "pageless.ko is left for {kernel}");
        if chroot.exists(&format!("/lib/modules/{kernel}/modules.dep")) {
            let found = chroot.run(&["modinfo", "-n", "-k", kernel, "pageless"]);
            assert!(!found.status.success(), "depmod still lists pageless.ko for {kernel}");
        }
    }
    for path in [
        "/var/lib/dkms/pageless",
        source.as_str(),
        "/usr/bin/pageless",
        wrapper,
        hook,
        "/lib/systemd/system/pageless-host.service",
        "/lib/systemd/system/pageless@.service",
        "/usr/lib/tmpfiles.d/pageless.conf",
        "/etc/systemd/system/multi-user.target.wants/pageless-host.service",
        "/etc/pageless",
    ] {
        assert!(!chroot.exists(path), "{path} is left after purge");
    }
    drop(chroot);
}
