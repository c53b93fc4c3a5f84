//! sVirt: what a confined QEMU of a pageless VM may reach.
//!
//! libvirt confines each domain's QEMU with a per-domain AppArmor profile `libvirt-<uuid>` (or a
//! per-domain SELinux MCS label). Neither knows the owner's sockets or the VM's memory file,
//! so on `start begin` (after libvirt labelled the domain's resources and loaded its profile,
//! before it runs QEMU) the hook adds exactly the VM's own:
//!
//! * AppArmor: writes `<profile dir>/libvirt-<uuid>.pageless` — rules for the `<emulator>`
//!   wrapper, its interpreter and `pageless` (exec), the owner's control socket, the VM's relay
//!   sockets and its memory file (read/write), nothing of other VMs — adds
//!   `#include if exists <libvirt/libvirt-<uuid>.pageless>` to the domain's profile (libvirt
//!   generated it from `TEMPLATE.qemu`; it deletes it when the domain stops) and reloads it with
//!   `apparmor_parser -r`. `release end` removes the `.pageless` file.
//! * SELinux: labels the owner's socket, the VM's relay directory and sockets and its memory
//!   (a pool's file, or the owner's memfd through `/proc/<owner>/fd/<n>`) with the domain's
//!   `<imagelabel>` (its MCS category pair), as libvirt labels the domain's disks. The owner
//!   creates its listening sockets at its low level (`crate::selinux`), so that the socket
//!   file's label decides which domain connects.
//!
//! Domains without a dynamic `apparmor` or `selinux` `<seclabel>` in their live XML (no MAC, or
//! `type='none'`) get nothing here: DAC binding (the owner hands the memory to one QEMU process)
//! is then what keeps VMs apart.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use log::{debug, info};
use pageless_protocol::control::ControlClient;

use super::config::OwnerPlan;
use super::{HookError, HookOptions};
use crate::context::Context;

/// Where libvirt keeps the per-domain AppArmor profiles (`libvirt-<uuid>`, `.files`).
pub const APPARMOR_PROFILE_DIR: &str = "/etc/apparmor.d/libvirt";
/// `apparmor_parser`, tried in this order (libvirt clears the hook's environment).
const APPARMOR_PARSERS: &[&str] = &["/usr/sbin/apparmor_parser", "/sbin/apparmor_parser"];

/// A domain's dynamic MAC label, from `<seclabel type='dynamic' model='…'>` of its live XML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecLabel {
    /// libvirt's AppArmor driver: QEMU runs under the profile of this name.
    AppArmor {
        /// `libvirt-<uuid>`.
        profile: String,
    },
    /// libvirt's SELinux driver: QEMU runs as `label`; the domain's files carry `imagelabel`.
    Selinux {
        /// The file label, e.g. `system_u:object_r:svirt_image_t:s0:c87,c520`.
        imagelabel: String,
    },
}

/// The dynamic AppArmor and SELinux labels of the domain XML (libvirt adds them to the live XML
/// it passes to the `start` hook). Static labels and `type='none'` are the admin's: left alone.
pub fn seclabels(xml: &str) -> Result<Vec<SecLabel>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let mut labels = Vec::new();
    for seclabel in doc.root_element().children().filter(|n| n.has_tag_name("seclabel")) {
        if seclabel.attribute("type") != Some("dynamic") {
            continue;
        }
        let child = |name: &str| {
            seclabel
                .children()
                .find(|n| n.has_tag_name(name))
                .and_then(|n| n.text())
                .map(str::trim)
                .filter(|text| !text.is_empty())
                .map(String::from)
        };
        match seclabel.attribute("model") {
            Some("apparmor") => {
                let profile = child("label").ok_or("an apparmor <seclabel> without <label>")?;
                if !valid_profile_name(&profile) {
                    return Err(format!(
                        "unexpected AppArmor profile name {profile:?} (libvirt's are libvirt-<uuid>)"
                    ));
                }
                labels.push(SecLabel::AppArmor { profile });
            }
            Some("selinux") => {
                let imagelabel = child("imagelabel").ok_or("a selinux <seclabel> without <imagelabel>")?;
                if imagelabel.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    return Err(format!("unexpected SELinux label {imagelabel:?}"));
                }
                labels.push(SecLabel::Selinux { imagelabel });
            }
            _ => {}
        }
    }
    Ok(labels)
}

/// libvirt's profile names are `libvirt-` and a UUID: nothing else goes into a path here.
fn valid_profile_name(name: &str) -> bool {
    name.strip_prefix("libvirt-")
        .is_some_and(|uuid| uuid.len() == 36 && uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
}

/// The VM's paths a confined QEMU needs, and nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmPaths {
    /// Programs QEMU's process runs before it is QEMU: the `<emulator>` wrapper, its
    /// interpreter, `pageless`.
    pub programs: Vec<PathBuf>,
    /// The owner's control socket, `<run_dir>/<vm>.sock`.
    pub control_socket: PathBuf,
    /// `<run_dir>/<vm>/`, the VM's relay sockets.
    pub relay_dir: PathBuf,
    /// The memory's files (directory pools): one, or one per NUMA cell (`--cell`); none for
    /// memfd.
    pub memory_files: Vec<PathBuf>,
    /// The owner's process (from its HELLO reply), whose memfds SELinux labels too.
    pub owner_pid: Option<u32>,
}

/// The AppArmor rules file for the VM (`libvirt-<uuid>.pageless`).
pub fn apparmor_rules(vm: &str, paths: &VmPaths) -> Result<String, String> {
    let mut rules = format!(
        "# pageless: what VM {} may reach beyond libvirt's rules. Written by `pageless hook` when\n\
         # the domain starts, removed when it stops; included by this domain's profile only.\n",
        vm.escape_debug()
    );
    for program in &paths.programs {
        rules.push_str(&format!("  \"{}\" rix,\n", aa_path(program)?));
    }
    rules.push_str(&format!("  \"{}\" rw,\n", aa_path(&paths.control_socket)?));
    let relay_dir = aa_path(&paths.relay_dir)?;
    rules.push_str(&format!("  \"{relay_dir}/\" r,\n  \"{relay_dir}/*.sock\" rw,\n"));
    for file in &paths.memory_files {
        rules.push_str(&format!("  \"{}\" rw,\n", aa_path(file)?));
    }
    Ok(rules)
}

/// A path for a quoted AppArmor rule: AppArmor's pattern characters escaped, so a VM name like
/// `a*` allows exactly `a*` and not every name starting with `a`.
fn aa_path(path: &Path) -> Result<String, String> {
    let text = path.to_str().ok_or_else(|| format!("{} is not UTF-8", path.display()))?;
    if !text.starts_with('/') || text.chars().any(char::is_control) {
        return Err(format!("{text:?} cannot go into an AppArmor rule (relative, or control characters)"));
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\\"*?[]{}^@".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    Ok(out)
}

/// The include line the hook adds to the domain's profile.
fn include_line(profile: &str) -> String {
    format!("  #include if exists <libvirt/{profile}.pageless>")
}

/// `profile` (libvirt's generated text) with the include of the `.pageless` rules before its
/// last closing brace; unchanged when it is already there.
pub fn with_include(profile_text: &str, profile: &str) -> Result<String, String> {
    let line = include_line(profile);
    if profile_text.lines().any(|l| l == line) {
        return Ok(profile_text.to_string());
    }
    let end = profile_text.rfind("\n}").ok_or("no closing brace: not a profile libvirt generated")?;
    Ok(format!("{}\n{line}{}", &profile_text[..end], &profile_text[end..]))
}

/// `start begin`: the VM's MAC rules or labels, for each dynamic label of the domain.
pub(super) fn confine(options: &HookOptions, plan: &OwnerPlan, xml: &str) -> Result<(), HookError> {
    let labels = seclabels(xml).map_err(|why| HookError::Xml { vm: plan.vm.clone(), why })?;
    if labels.is_empty() {
        debug!("VM {:?}: no dynamic AppArmor or SELinux label: nothing to confine", plan.vm);
        return Ok(());
    }
    let paths = vm_paths(options, plan, xml)?;
    for label in labels {
        match label {
            SecLabel::AppArmor { profile } => apparmor_confine(options, plan, &profile, &paths)?,
            SecLabel::Selinux { imagelabel } => selinux_label(plan, &imagelabel, &paths)?,
        }
    }
    Ok(())
}

/// `release end`: removes the VM's AppArmor rules file (libvirt removes the profile). By the
/// domain's UUID: libvirt has dropped the dynamic label from the XML by then.
pub(super) fn release(options: &HookOptions, vm: &str, xml: &str) -> Result<(), HookError> {
    let Some(profile) = domain_profile(xml) else {
        return Ok(());
    };
    let rules = options.apparmor_dir.join(format!("{profile}.pageless"));
    match std::fs::remove_file(&rules) {
        Ok(()) => info!("VM {vm:?}: removed its AppArmor rules {}", rules.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(format!("remove {}", rules.display())).map_err(HookError::Io),
    }
    Ok(())
}

/// The AppArmor profile libvirt gives the domain's QEMU, `libvirt-<uuid>` (from its `<uuid>`,
/// in the XML of every hook call), whether or not AppArmor is in use.
pub fn domain_profile(xml: &str) -> Option<String> {
    let profile = format!("libvirt-{}", domain_uuid(xml)?);
    valid_profile_name(&profile).then_some(profile)
}

/// The domain's `<uuid>`, lower case (libvirt's profile names use it so).
fn domain_uuid(xml: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let uuid = doc.root_element().children().find(|n| n.has_tag_name("uuid"))?.text()?;
    Some(uuid.trim().to_ascii_lowercase())
}

fn vm_paths(options: &HookOptions, plan: &OwnerPlan, xml: &str) -> Result<VmPaths, HookError> {
    let mut programs = Vec::new();
    if let Some(emulator) = emulator(xml) {
        if let Some(interpreter) = interpreter(&emulator) {
            programs.push(interpreter);
        }
        programs.push(emulator);
    }
    programs.push(std::fs::canonicalize(&options.pageless).unwrap_or_else(|_| options.pageless.clone()));
    // The memory's file, as the running owner reports it (started on `prepare`).
    let (owner_pid, status) = ControlClient::connect(&plan.socket(), "pageless-hook")
        .and_then(|client| Ok((client.owner_pid(), client.status()?)))
        .map_err(|e| HookError::OwnerFailed {
            vm: plan.vm.clone(),
            retry: super::RETRY_START,
            why: format!(
                "it does not answer on {} when the domain is labelled ({e})",
                plan.socket().display()
            ),
            log: String::new(),
            source_desc: plan.source_desc.clone(),
        })?;
    Ok(VmPaths {
        programs,
        control_socket: plan.socket(),
        relay_dir: plan.run_dir.join(&plan.vm),
        // A VM served with --cell has a file per cell (the top-level path is the first cell's).
        memory_files: if status.cells.is_empty() {
            status.path.into_iter().map(PathBuf::from).collect()
        } else {
            status.cells.iter().filter_map(|c| c.path.as_ref()).map(PathBuf::from).collect()
        },
        owner_pid: (owner_pid != 0).then_some(owner_pid),
    })
}

/// The domain's `<emulator>`, resolved like the kernel does when it runs it.
fn emulator(xml: &str) -> Option<PathBuf> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let text = doc.descendants().find(|n| n.has_tag_name("emulator"))?.text()?.trim().to_string();
    Some(std::fs::canonicalize(&text).unwrap_or_else(|_| PathBuf::from(text)))
}

/// A script's `#!` interpreter, resolved (AppArmor sees `/usr/bin/dash`, not `/bin/sh`).
fn interpreter(script: &Path) -> Option<PathBuf> {
    let head = std::fs::read(script).ok()?;
    let line = head.strip_prefix(b"#!")?.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let program = line.split_whitespace().next()?;
    Some(std::fs::canonicalize(program).unwrap_or_else(|_| PathBuf::from(program)))
}

fn apparmor_confine(
    options: &HookOptions,
    plan: &OwnerPlan,
    profile: &str,
    paths: &VmPaths,
) -> Result<(), HookError> {
    let fail = |why: String| HookError::Confine { vm: plan.vm.clone(), mac: "AppArmor", why };
    let profile_path = options.apparmor_dir.join(profile);
    let text = std::fs::read_to_string(&profile_path).map_err(|e| {
        fail(format!(
            "cannot read the domain's profile {} ({e}); is libvirt's security_driver \"apparmor\" with virt-aa-helper?",
            profile_path.display()
        ))
    })?;
    let rules = apparmor_rules(&plan.vm, paths).map_err(&fail)?;
    let rules_path = options.apparmor_dir.join(format!("{profile}.pageless"));
    write_replacing(&rules_path, rules.as_bytes())
        .map_err(|e| fail(format!("write {}: {e}", rules_path.display())))?;
    let new_text =
        with_include(&text, profile).map_err(|why| fail(format!("{}: {why}", profile_path.display())))?;
    if new_text != text {
        write_replacing(&profile_path, new_text.as_bytes())
            .map_err(|e| fail(format!("write {}: {e}", profile_path.display())))?;
    }
    let parser = APPARMOR_PARSERS
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .ok_or_else(|| fail(format!("no apparmor_parser at {}", APPARMOR_PARSERS.join(" or "))))?;
    let out = Command::new(parser)
        .arg("-r")
        .arg(&profile_path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("run {}: {e}", parser.display())))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{} -r {} failed ({}): {}",
            parser.display(),
            profile_path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    info!(
        "VM {:?}: profile {profile} now allows its own sockets and memory ({})",
        plan.vm,
        rules_path.display()
    );
    Ok(())
}

/// Replaces `path` whole (mode 0644, as apparmor_parser's files are), staged beside it.
fn write_replacing(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let staging = path.with_extension(format!("tmp{}", std::process::id()));
    crate::replace_file::replace_file(path, &staging, content, 0o644)
}

/// The files SELinux labels with the domain's image label: the owner's socket, the relay
/// directory and its sockets, the memory file.
fn selinux_targets(paths: &VmPaths) -> Vec<PathBuf> {
    let mut targets = vec![paths.control_socket.clone()];
    if let Ok(entries) = std::fs::read_dir(&paths.relay_dir) {
        targets.push(paths.relay_dir.clone());
        let mut sockets: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "sock"))
            .collect();
        sockets.sort();
        targets.extend(sockets);
    }
    targets.extend(paths.memory_files.iter().cloned());
    targets
}

/// The owner's memfds (memfd pools: the memory has no path), as `/proc/<pid>/fd/<n>`, whose
/// magic link reaches the memfd's inode: its `security.selinux` is the memory's label.
fn owner_memfds(pid: u32) -> Vec<PathBuf> {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut fds: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|fd| {
            std::fs::read_link(fd)
                .is_ok_and(|target| target.as_os_str().as_bytes().starts_with(MEMFD_LINK_PREFIX.as_bytes()))
        })
        .collect();
    fds.sort();
    fds
}

/// How `/proc/<pid>/fd/<n>` of an owner's memfd reads (`pageless_pool` names them
/// `pageless:<vm>`).
const MEMFD_LINK_PREFIX: &str = "/memfd:pageless:";

fn selinux_label(plan: &OwnerPlan, imagelabel: &str, paths: &VmPaths) -> Result<(), HookError> {
    let fail = |target: &Path, e: std::io::Error| HookError::Confine {
        vm: plan.vm.clone(),
        mac: "SELinux",
        why: format!("cannot label {} {imagelabel}: {e}", target.display()),
    };
    for target in selinux_targets(paths) {
        set_selinux_label(&target, imagelabel).map_err(|e| fail(&target, e))?;
    }
    // A memfd: its inode, through the owner's fd (setxattr follows the magic link).
    for memfd in paths.owner_pid.map(owner_memfds).unwrap_or_default() {
        match set_selinux_label_of(&memfd, imagelabel, true) {
            Ok(()) => {}
            // hugetlbfs (memfd:2M, memfd:1G) keeps no labels: the policy's hugetlbfs_t rules apply.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                info!("VM {:?}: its memfd {} keeps the file system's label ({e})", plan.vm, memfd.display())
            }
            Err(e) => return Err(fail(&memfd, e)),
        }
    }
    info!("VM {:?}: its sockets and memory file carry {imagelabel}", plan.vm);
    Ok(())
}

/// Sets `security.selinux` of `path` (not following a symlink), as `chcon -h` does.
pub fn set_selinux_label(path: &Path, label: &str) -> std::io::Result<()> {
    set_selinux_label_of(path, label, false)
}

/// Sets `security.selinux` of `path`, or of what it links to with `follow`.
fn set_selinux_label_of(path: &Path, label: &str, follow: bool) -> std::io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let name = c"security.selinux";
    let set = if follow { libc::setxattr } else { libc::lsetxattr };
    // SAFETY: both strings are NUL-terminated and live across the call; the value pointer and
    // length describe `label`'s bytes, which the kernel only reads.
    let rc = unsafe { set(c_path.as_ptr(), name.as_ptr(), label.as_ptr().cast(), label.len(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE_XML: &str = r#"<domain type='qemu' id='1'>
  <name>web1</name>
  <uuid>6b2a1f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b</uuid>
  <devices><emulator>/usr/local/bin/pageless-qemu</emulator></devices>
  <seclabel type='dynamic' model='apparmor' relabel='yes'>
    <label>libvirt-6b2a1f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b</label>
    <imagelabel>libvirt-6b2a1f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b</imagelabel>
  </seclabel>
  <seclabel type='dynamic' model='dac' relabel='yes'><label>+64055:+64055</label></seclabel>
</domain>"#;

    #[test]
    fn dynamic_labels_are_found_and_checked() {
        assert_eq!(
            seclabels(LIVE_XML).unwrap(),
            [SecLabel::AppArmor { profile: "libvirt-6b2a1f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b".into() }]
        );
        let selinux = r#"<domain><seclabel type='dynamic' model='selinux' relabel='yes'>
            <label>system_u:system_r:svirt_t:s0:c87,c520</label>
            <imagelabel>system_u:object_r:svirt_image_t:s0:c87,c520</imagelabel></seclabel></domain>"#;
        assert_eq!(
            seclabels(selinux).unwrap(),
            [SecLabel::Selinux { imagelabel: "system_u:object_r:svirt_image_t:s0:c87,c520".into() }]
        );
        // Static labels and type='none' are left alone; no label, nothing.
        let fixed = "<domain><seclabel type='static' model='apparmor'><label>mine</label></seclabel>\
                     <seclabel type='none' model='selinux'/></domain>";
        assert_eq!(seclabels(fixed).unwrap(), []);
        assert_eq!(seclabels("<domain/>").unwrap(), []);
        // A profile name that would walk out of the profile directory is refused.
        let evil = "<domain><seclabel type='dynamic' model='apparmor'><label>../../usr.sbin.libvirtd</label></seclabel></domain>";
        assert!(seclabels(evil).unwrap_err().contains("unexpected AppArmor profile name"));
        let spaced = "<domain><seclabel type='dynamic' model='selinux'><imagelabel>a b</imagelabel></seclabel></domain>";
        assert!(seclabels(spaced).is_err());
    }

    fn paths(vm: &str) -> VmPaths {
        VmPaths {
            programs: vec![
                "/usr/bin/dash".into(),
                "/usr/local/bin/pageless-qemu".into(),
                "/usr/local/bin/pageless".into(),
            ],
            control_socket: format!("/run/pageless/{vm}.sock").into(),
            relay_dir: format!("/run/pageless/{vm}").into(),
            memory_files: vec![format!("/srv/pageless/{vm}").into()],
            owner_pid: None,
        }
    }

    #[test]
    fn rules_name_only_the_vms_own_paths() {
        let rules = apparmor_rules("web1", &paths("web1")).unwrap();
        let lines: Vec<&str> = rules.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "  \"/usr/bin/dash\" rix,",
                "  \"/usr/local/bin/pageless-qemu\" rix,",
                "  \"/usr/local/bin/pageless\" rix,",
                "  \"/run/pageless/web1.sock\" rw,",
                "  \"/run/pageless/web1/\" r,",
                "  \"/run/pageless/web1/*.sock\" rw,",
                "  \"/srv/pageless/web1\" rw,",
            ]
        );
        // Pattern characters in a VM's name match only themselves; a quote cannot end the rule.
        let rules = apparmor_rules("w*{a,b}\"x", &paths("w*{a,b}\"x")).unwrap();
        assert!(rules.contains(r#""/run/pageless/w\*\{a,b\}\"x.sock" rw,"#), "{rules}");
        assert!(rules.contains(r#""/run/pageless/w\*\{a,b\}\"x/*.sock" rw,"#), "{rules}");
        // A newline would start a rule of its own: refused.
        assert!(apparmor_rules("x", &paths("x\n  /** rw")).is_err());
        // A VM of NUMA cells: every cell's file.
        let cells = VmPaths {
            memory_files: vec!["/srv/pageless/numa.cell0".into(), "/srv/pageless/numa.cell1".into()],
            ..paths("numa")
        };
        let rules = apparmor_rules("numa", &cells).unwrap();
        assert!(
            rules.contains("  \"/srv/pageless/numa.cell0\" rw,\n  \"/srv/pageless/numa.cell1\" rw,\n"),
            "{rules}"
        );
    }

    #[test]
    fn the_include_goes_into_the_profile_once() {
        let generated = "#include <tunables/global>\n\nprofile libvirt-u flags=(attach_disconnected) {\n  #include <abstractions/libvirt-qemu>\n  #include if exists <libvirt/libvirt-u.files>\n}\n";
        let once = with_include(generated, "libvirt-u").unwrap();
        assert_eq!(
            once,
            "#include <tunables/global>\n\nprofile libvirt-u flags=(attach_disconnected) {\n  #include <abstractions/libvirt-qemu>\n  #include if exists <libvirt/libvirt-u.files>\n  #include if exists <libvirt/libvirt-u.pageless>\n}\n"
        );
        assert_eq!(with_include(&once, "libvirt-u").unwrap(), once);
        assert!(with_include("no profile here", "libvirt-u").is_err());
    }

    #[test]
    fn release_removes_the_rules_by_the_domains_uuid() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("libvirt-6b2a1f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b.pageless");
        let other = dir.path().join("libvirt-00000000-1c2d-4e5f-8a9b-0c1d2e3f4a5b.pageless");
        std::fs::write(&rules, "").unwrap();
        std::fs::write(&other, "").unwrap();
        let options = HookOptions {
            vm: "web1".into(),
            operation: "release".into(),
            subop: "end".into(),
            config_dir: dir.path().into(),
            qemu_conf: "/nonexistent".into(),
            host_config: "/nonexistent".into(),
            pageless: "/nonexistent".into(),
            systemd: false,
            apparmor_dir: dir.path().into(),
            unit_args_dir: dir.path().join("units"),
        };
        // At release libvirt has dropped the dynamic label: the UUID names the profile.
        let released = "<domain><name>web1</name><uuid>6B2A1F3E-1c2d-4e5f-8a9b-0c1d2e3f4a5b</uuid>\
                        <seclabel type='dynamic' model='apparmor' relabel='yes'/></domain>";
        release(&options, "web1", released).unwrap();
        assert!(!rules.exists(), "the VM's rules are removed");
        assert!(other.exists(), "another VM's rules stay");
        release(&options, "web1", released).unwrap();
        // A UUID that would name another file is ignored.
        release(&options, "web1", "<domain><uuid>../x</uuid></domain>").unwrap();
    }

    #[test]
    fn selinux_labels_reach_every_file_of_the_vm() {
        let dir = tempfile::tempdir().unwrap();
        let relay = dir.path().join("web1");
        std::fs::create_dir(&relay).unwrap();
        for name in ["disk0.sock", "net0.sock", "notes.txt"] {
            std::fs::write(relay.join(name), b"").unwrap();
        }
        let socket = dir.path().join("web1.sock");
        let memory = dir.path().join("memory");
        std::fs::write(&socket, b"").unwrap();
        std::fs::write(&memory, b"").unwrap();
        let paths = VmPaths {
            programs: vec![],
            control_socket: socket.clone(),
            relay_dir: relay.clone(),
            memory_files: vec![memory.clone()],
            owner_pid: None,
        };
        assert_eq!(
            selinux_targets(&paths),
            [socket, relay.clone(), relay.join("disk0.sock"), relay.join("net0.sock"), memory]
        );
    }

    #[test]
    fn an_owners_memfds_are_found_by_their_name() {
        use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
        let ours = memfd_create(c"pageless:svirt-test", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        let other = memfd_create(c"not-pageless", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        let found = owner_memfds(std::process::id());
        let fd_path = |fd: &std::os::fd::OwnedFd| {
            PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), std::os::fd::AsRawFd::as_raw_fd(fd)))
        };
        assert!(found.contains(&fd_path(&ours)), "{found:?}");
        assert!(!found.contains(&fd_path(&other)), "{found:?}");
    }
}
