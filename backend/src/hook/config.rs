//! Which VMs pageless owns, and how: the per-VM config file or the domain's metadata, the
//! domain's memory size, the user QEMU runs as.

use std::path::{Path, PathBuf};

use log::warn;
use pageless_pool::size::{parse_size, round_up};
use pageless_pool::PoolSpec;
use serde::Deserialize;

use super::{HookError, XML_NAMESPACE};
use crate::context::IoError;
use crate::{control_socket_path, DEFAULT_RUN_DIR};

/// The users libvirt runs QEMU as when qemu.conf does not say: Debian's build default, then
/// Fedora's.
const DEFAULT_QEMU_USERS: &[&str] = &["libvirt-qemu", "qemu"];
/// How long `prepare` waits for the owner to answer, unless the config says otherwise.
const DEFAULT_START_TIMEOUT: u64 = 30;
/// `pageless serve --consumer-timeout`'s default.
const DEFAULT_CONSUMER_TIMEOUT: u64 = 30;
/// The longest `start_timeout` and `consumer_timeout` accepted: a day.
pub const MAX_TIMEOUT: u64 = 24 * 60 * 60;
/// libvirt rounds x86 guest memory (and each NUMA cell) up to 1 MiB.
const MEMORY_ALIGN: u64 = 1 << 20;

/// A size in the config file: `"4G"` or a number of bytes.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

/// One of `allow_uid = 1000` or `allow_uid = [1000, 1001]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
enum Uids {
    One(u32),
    Many(Vec<u32>),
}

/// `[[vhost_user]]` / `<pageless:vhost-user>`: a device the owner relays.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VhostUser {
    /// The device's name: its relay socket is `<run_dir>/<vm>/<name>.sock`.
    pub name: String,
    /// The device backend's socket the owner relays to.
    pub backend: PathBuf,
}

/// `/etc/pageless/vms/<vm>.toml`, or the same from the domain's metadata. Every key is
/// optional.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    size: Option<SizeValue>,
    pool: Option<String>,
    run_dir: Option<PathBuf>,
    #[serde(default)]
    vhost_user: Vec<VhostUser>,
    allow_uid: Option<Uids>,
    qemu_user: Option<String>,
    consumer_timeout: Option<u64>,
    start_timeout: Option<u64>,
    #[serde(default)]
    remove_on_exit: bool,
    #[serde(default)]
    prefault: bool,
}

/// A VM's config and where it came from (for messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Found {
    config: FileConfig,
    source_desc: String,
}

/// Everything needed to run and stop the VM's owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerPlan {
    /// The domain's name, the owner's `--vm`.
    pub vm: String,
    /// Memory size in bytes, never 0: the config's `size`, else the domain's `<memory>` or
    /// the sum of its NUMA cells, each rounded up to 1 MiB as libvirt does.
    pub size: u64,
    /// The `--pool` spec (default `memfd`), checked to parse.
    pub pool: String,
    /// The owner's `--run-dir` (default `/run/pageless`).
    pub run_dir: PathBuf,
    /// The `--allow-uid` users: `allow_uid` as configured, else the uid of `qemu_user`, else
    /// that of qemu.conf's `user` (or the first of `libvirt-qemu`, `qemu` that exists); the
    /// last two leave out root, which may connect anyway. The first is handed the sockets.
    pub allow_uids: Vec<u32>,
    /// Devices the owner relays (`--vhost-user`).
    pub vhost_user: Vec<VhostUser>,
    /// `--consumer-timeout`, in seconds (default 30, at most [`MAX_TIMEOUT`]); `release`
    /// kills an owner still running 10 s after it.
    pub consumer_timeout: u64,
    /// Seconds `prepare` waits for the owner to answer on its socket before it stops it and
    /// fails (default 30, at most [`MAX_TIMEOUT`]).
    pub start_timeout: u64,
    /// `--remove-on-exit`: remove a directory pool's file when the owner stops.
    pub remove_on_exit: bool,
    /// `--prefault`: allocate every page before QEMU starts.
    pub prefault: bool,
    /// `--apparmor-profile libvirt-<uuid>`, from the domain's `<uuid>`: under AppArmor, the
    /// owner refuses processes confined by another domain's profile.
    pub apparmor_profile: Option<String>,
    /// The `--cell ID:SIZE:POOL[@node=N]` arguments, one per `<cpu><numa><cell>` of the
    /// domain (see [`super::numa`]); when there are any, they replace `size` and `pool`.
    pub cells: Vec<String>,
    /// Where the config came from, for messages.
    pub source_desc: String,
}

impl OwnerPlan {
    /// `pageless serve …` arguments (without the binary).
    pub fn serve_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec!["serve".into(), "--vm".into(), self.vm.clone()];
        if self.cells.is_empty() {
            args.extend(["--size".into(), self.size.to_string(), "--pool".into(), self.pool.clone()]);
        }
        for cell in &self.cells {
            args.extend(["--cell".into(), cell.clone()]);
        }
        args.extend([
            "--run-dir".into(),
            self.run_dir.display().to_string(),
            "--consumer-timeout".into(),
            self.consumer_timeout.to_string(),
        ]);
        for uid in &self.allow_uids {
            args.push("--allow-uid".into());
            args.push(uid.to_string());
        }
        for device in &self.vhost_user {
            args.push("--vhost-user".into());
            args.push(format!("{}={}", device.name, device.backend.display()));
        }
        if self.prefault {
            args.push("--prefault".into());
        }
        if self.remove_on_exit {
            args.push("--remove-on-exit".into());
        }
        if let Some(profile) = &self.apparmor_profile {
            args.push("--apparmor-profile".into());
            args.push(profile.clone());
        }
        args
    }

    /// `<run_dir>/<vm>.log`: where the owner's stdout and stderr are appended, detached or
    /// as a systemd unit; the hook quotes its end when the owner fails to start.
    pub fn log_path(&self) -> PathBuf {
        self.run_dir.join(format!("{}.log", self.vm))
    }

    /// `<run_dir>/<vm>.sock`: the owner's control socket.
    pub fn socket(&self) -> PathBuf {
        control_socket_path(&self.run_dir, &self.vm)
    }
}

/// The VM's config file, else its metadata, else `None`.
pub(super) fn find_config(vm: &str, config_dir: &Path, xml: &str) -> Result<Option<Found>, HookError> {
    let path = config_dir.join(format!("{vm}.toml"));
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let source_desc = format!("its pageless config {}", path.display());
            let config = toml::from_str::<FileConfig>(&text).map_err(|e| HookError::Config {
                vm: vm.into(),
                source_desc: source_desc.clone(),
                why: e.to_string().trim_end().to_string(),
            })?;
            return Ok(Some(Found { config, source_desc }));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(IoError::new(format!("VM {vm:?}: read {}", path.display()), e).into()),
    }
    if xml.trim().is_empty() {
        return Ok(None);
    }
    let document =
        roxmltree::Document::parse(xml).map_err(|e| HookError::Xml { vm: vm.into(), why: e.to_string() })?;
    let source_desc =
        format!("the <pageless:vm xmlns:pageless=\"{XML_NAMESPACE}\"> metadata of its domain XML");
    let Some(element) = document
        .root_element()
        .children()
        .filter(|n| n.has_tag_name("metadata"))
        .flat_map(|metadata| metadata.children())
        .find(|n| n.has_tag_name((XML_NAMESPACE, "vm")))
    else {
        return Ok(None);
    };
    let config = metadata_config(element).map_err(|why| HookError::Config {
        vm: vm.into(),
        source_desc: source_desc.clone(),
        why,
    })?;
    Ok(Some(Found { config, source_desc }))
}

/// `<pageless:vm size="4G" pool="memfd" run-dir="…" qemu-user="…" allow-uid="1000 1001"
/// consumer-timeout="30" start-timeout="30" remove-on-exit="yes" prefault="no">
/// <pageless:vhost-user name="disk0" backend="/path.sock"/></pageless:vm>`.
fn metadata_config(element: roxmltree::Node) -> Result<FileConfig, String> {
    let mut config = FileConfig::default();
    let number = |name: &str, value: &str| -> Result<u64, String> {
        value.trim().parse().map_err(|_| format!("{name}={value:?} is not a number"))
    };
    let flag = |name: &str, value: &str| -> Result<bool, String> {
        match value.trim() {
            "yes" | "on" | "true" | "1" => Ok(true),
            "no" | "off" | "false" | "0" => Ok(false),
            _ => Err(format!("{name}={value:?} is neither yes nor no")),
        }
    };
    for attribute in element.attributes() {
        let (name, value) = (attribute.name(), attribute.value());
        match name {
            "size" => config.size = Some(SizeValue::Text(value.into())),
            "pool" => config.pool = Some(value.into()),
            "run-dir" => config.run_dir = Some(value.into()),
            "qemu-user" => config.qemu_user = Some(value.into()),
            "allow-uid" => {
                let uids = value
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|u| !u.is_empty())
                    .map(|u| u.parse::<u32>().map_err(|_| format!("allow-uid={value:?}: {u:?} is not a uid")))
                    .collect::<Result<Vec<_>, _>>()?;
                config.allow_uid = Some(Uids::Many(uids));
            }
            "consumer-timeout" => config.consumer_timeout = Some(number(name, value)?),
            "start-timeout" => config.start_timeout = Some(number(name, value)?),
            "remove-on-exit" => config.remove_on_exit = flag(name, value)?,
            "prefault" => config.prefault = flag(name, value)?,
            other => {
                return Err(format!(
                    "unknown attribute {other:?} (known: size, pool, run-dir, qemu-user, allow-uid, consumer-timeout, start-timeout, remove-on-exit, prefault)"
                ))
            }
        }
    }
    for child in element.children().filter(|n| n.is_element()) {
        if !child.has_tag_name((XML_NAMESPACE, "vhost-user")) {
            return Err(format!(
                "unknown element <{}> (known: <pageless:vhost-user name=… backend=…/>)",
                child.tag_name().name()
            ));
        }
        let attribute = |name: &str| {
            child
                .attribute(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("<pageless:vhost-user> needs a {name}=\"…\" attribute"))
        };
        config
            .vhost_user
            .push(VhostUser { name: attribute("name")?.into(), backend: attribute("backend")?.into() });
    }
    Ok(config)
}

/// The config, with defaults from the domain XML and the host (qemu.conf, and the host
/// config's `[pools]` for NUMA cells).
pub(super) fn plan(
    vm: &str,
    found: Found,
    xml: &str,
    qemu_conf: &Path,
    host_config: &Path,
) -> Result<OwnerPlan, HookError> {
    let Found { config, source_desc } = found;
    let config_error =
        |why: String| HookError::Config { vm: vm.into(), source_desc: source_desc.clone(), why };
    let size = match &config.size {
        Some(SizeValue::Bytes(bytes)) => *bytes,
        Some(SizeValue::Text(text)) => {
            parse_size(text).map_err(|why| config_error(format!("size: {why}")))?
        }
        None => domain_memory(xml)
            .map_err(|why| HookError::Xml { vm: vm.into(), why })?
            .ok_or_else(|| HookError::NoSize { vm: vm.into() })?,
    };
    if size == 0 {
        return Err(config_error("size: the VM's memory size is 0: set a size such as 4G".into()));
    }
    let pool = config.pool.clone().unwrap_or_else(|| "memfd".into());
    plain_text("pool", &pool).map_err(config_error)?;
    let pool_spec = pool.parse::<PoolSpec>().map_err(|e| config_error(format!("pool: {e}")))?;
    let domain_cells = super::numa::domain_cells(xml).map_err(|why| HookError::Xml { vm: vm.into(), why })?;
    let cells = if domain_cells.is_empty() {
        Vec::new()
    } else {
        let total =
            domain_cells.iter().try_fold(0u64, |sum, c| sum.checked_add(c.size)).ok_or_else(|| {
                HookError::Xml {
                    vm: vm.into(),
                    why: "the NUMA cells' memory adds up to more than 16 EiB: fix their memory=".into(),
                }
            })?;
        if config.size.is_some() && size != total {
            return Err(config_error(format!(
                "size: {size} bytes, but the domain's NUMA cells add up to {total}: remove size (the cells' sizes are used)"
            )));
        }
        let pools = super::numa::host_pools(host_config).map_err(|why| HookError::Config {
            vm: vm.into(),
            // `why` names the file.
            source_desc: "the host config".into(),
            why,
        })?;
        let specs = super::numa::cell_specs(&domain_cells, &pool_spec, &pools, host_config)
            .map_err(|why| HookError::Xml { vm: vm.into(), why })?;
        crate::cells::check_cells(&specs).map_err(|why| HookError::Xml { vm: vm.into(), why })?;
        specs.iter().map(super::numa::cell_arg).collect()
    };
    for device in &config.vhost_user {
        plain_text("vhost_user backend", &device.backend.to_string_lossy()).map_err(config_error)?;
        let spec = format!("{}={}", device.name, device.backend.display());
        spec.parse::<crate::relay::RelaySpec>().map_err(|why| config_error(format!("vhost_user: {why}")))?;
    }
    if let Some(run_dir) = &config.run_dir {
        plain_text("run_dir", &run_dir.to_string_lossy()).map_err(config_error)?;
    }
    for (name, value) in
        [("consumer_timeout", config.consumer_timeout), ("start_timeout", config.start_timeout)]
    {
        if let Some(seconds) = value.filter(|&s| s > MAX_TIMEOUT) {
            return Err(config_error(format!(
                "{name} of {seconds} s is over the maximum of {MAX_TIMEOUT} s (a day)"
            )));
        }
    }
    let allow_uids = match (&config.allow_uid, &config.qemu_user) {
        (Some(Uids::One(uid)), _) => vec![*uid],
        (Some(Uids::Many(uids)), _) => uids.clone(),
        (None, Some(user)) => match resolve_user(user) {
            Some(0) => vec![],
            Some(uid) => vec![uid],
            None => {
                return Err(HookError::NoSuchUser { vm: vm.into(), source_desc, user: user.clone() });
            }
        },
        (None, None) => qemu_uid(qemu_conf).into_iter().filter(|&uid| uid != 0).collect(),
    };
    Ok(OwnerPlan {
        vm: vm.into(),
        size,
        pool,
        run_dir: config.run_dir.clone().unwrap_or_else(|| DEFAULT_RUN_DIR.into()),
        allow_uids,
        vhost_user: config.vhost_user.clone(),
        consumer_timeout: config.consumer_timeout.unwrap_or(DEFAULT_CONSUMER_TIMEOUT),
        start_timeout: config.start_timeout.unwrap_or(DEFAULT_START_TIMEOUT),
        remove_on_exit: config.remove_on_exit,
        prefault: config.prefault,
        apparmor_profile: super::svirt::domain_profile(xml),
        cells,
        source_desc,
    })
}

/// Refuses a NUL or other control character in a value that becomes a command-line argument
/// or a path.
fn plain_text(what: &str, value: &str) -> Result<(), String> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!("{what} {value:?} contains the control character {c:?}: remove it")),
        None if value.is_empty() => Err(format!("{what} is empty")),
        None => Ok(()),
    }
}

/// The guest RAM QEMU will get for the domain: `<memory>`, or the sum of the NUMA cells, each
/// rounded up to 1 MiB as libvirt does. `None` without a domain XML.
fn domain_memory(xml: &str) -> Result<Option<u64>, String> {
    if xml.trim().is_empty() {
        return Ok(None);
    }
    let document = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let domain = document.root_element();
    let cells: Vec<_> = domain
        .children()
        .filter(|n| n.has_tag_name("cpu"))
        .flat_map(|cpu| cpu.children())
        .filter(|n| n.has_tag_name("numa"))
        .flat_map(|numa| numa.children())
        .filter(|n| n.has_tag_name("cell"))
        .collect();
    let align =
        |bytes: u64| round_up(bytes, MEMORY_ALIGN).ok_or_else(|| format!("{bytes} bytes is too large"));
    if !cells.is_empty() {
        let mut total = 0u64;
        for cell in cells {
            let value = cell.attribute("memory").ok_or("a NUMA <cell> without memory=")?;
            total = total
                .checked_add(align(scaled(value, cell.attribute("unit"))?)?)
                .ok_or("the NUMA cells' memory adds up to more than 16 EiB: fix their memory=")?;
        }
        return Ok(Some(total));
    }
    let Some(memory) = domain.children().find(|n| n.has_tag_name("memory")) else { return Ok(None) };
    let value = memory.text().ok_or("an empty <memory> element")?;
    Ok(Some(align(scaled(value, memory.attribute("unit"))?)?))
}

/// A libvirt `<memory unit=…>` value in bytes (the unit defaults to KiB).
pub(super) fn scaled(value: &str, unit: Option<&str>) -> Result<u64, String> {
    let number: u64 = value.trim().parse().map_err(|_| format!("memory {value:?} is not a number"))?;
    let scale: u64 = match unit.unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "K" | "KiB" => 1 << 10,
        "MB" => 1000 * 1000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1000 * 1000 * 1000 * 1000,
        "T" | "TiB" => 1 << 40,
        other => return Err(format!("unknown memory unit {other:?}")),
    };
    number.checked_mul(scale).ok_or_else(|| {
        format!(
            "memory {} {} is more than 16 EiB: fix the domain's memory size",
            value.trim(),
            unit.unwrap_or("KiB")
        )
    })
}

/// A libvirt user spec: `name`, `+uid`, or a number (a user of that name, else that uid).
fn resolve_user(spec: &str) -> Option<u32> {
    if let Some(uid) = spec.strip_prefix('+') {
        return uid.parse().ok();
    }
    match nix::unistd::User::from_name(spec) {
        Ok(Some(user)) => Some(user.uid.as_raw()),
        _ => spec.parse().ok(),
    }
}

/// The `user = "…"` of libvirt's qemu.conf, if set.
fn qemu_conf_user(text: &str) -> Option<String> {
    text.lines().rev().find_map(|line| {
        let line = line.split('#').next()?.trim();
        let (key, value) = line.split_once('=')?;
        (key.trim() == "user").then(|| value.trim().trim_matches('"').to_string())
    })
}

/// The uid libvirt runs QEMU as: qemu.conf's `user`, else the first of the distributions'
/// default users that exists, else root.
fn qemu_uid(qemu_conf: &Path) -> Option<u32> {
    let configured = std::fs::read_to_string(qemu_conf).ok().and_then(|text| qemu_conf_user(&text));
    match configured {
        Some(user) => resolve_user(&user).or_else(|| {
            warn!("{} names the QEMU user {user:?}, which does not exist", qemu_conf.display());
            None
        }),
        None => DEFAULT_QEMU_USERS.iter().find_map(|user| match nix::unistd::User::from_name(user) {
            Ok(Some(user)) => Some(user.uid.as_raw()),
            _ => None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hook::launch::unit_name;
    use crate::hook::{run, HookOptions};

    const DOMAIN: &str = r#"<domain type='qemu' id='1'>
  <name>vm1</name>
  <memory unit='KiB'>524288</memory>
  <metadata>
    <other:thing xmlns:other="https://example.com/x"/>
    <pageless:vm xmlns:pageless="https://pageless.dev/xmlns/libvirt/1" pool="dir:/dev/shm/p" allow-uid="1000, 1001" remove-on-exit="yes">
      <pageless:vhost-user name="disk0" backend="/run/qsd.sock"/>
    </pageless:vm>
  </metadata>
</domain>"#;

    fn plan_of(vm: &str, config: FileConfig, xml: &str) -> Result<OwnerPlan, HookError> {
        plan(
            vm,
            Found { config, source_desc: "test".into() },
            xml,
            Path::new("/nonexistent"),
            Path::new("/nonexistent"),
        )
    }

    #[test]
    fn metadata_gives_the_owner_plan() {
        let dir = tempfile::tempdir().unwrap();
        let found = find_config("vm1", dir.path(), DOMAIN).unwrap().expect("metadata found");
        let plan = plan("vm1", found, DOMAIN, Path::new("/nonexistent"), Path::new("/nonexistent")).unwrap();
        assert_eq!(plan.size, 512 << 20, "the size defaults to <memory>");
        assert_eq!(plan.pool, "dir:/dev/shm/p");
        assert_eq!(plan.allow_uids, vec![1000, 1001]);
        assert!(plan.remove_on_exit && !plan.prefault);
        assert_eq!(
            plan.serve_args().join(" "),
            "serve --vm vm1 --size 536870912 --pool dir:/dev/shm/p --run-dir /run/pageless --consumer-timeout 30 \
             --allow-uid 1000 --allow-uid 1001 --vhost-user disk0=/run/qsd.sock --remove-on-exit"
        );
    }

    #[test]
    fn the_config_file_wins_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("vm1.toml"),
            "size = \"1G\"\npool = \"memfd:2M\"\nallow_uid = 64055\nprefault = true\n[[vhost_user]]\nname = \"d\"\nbackend = \"/b.sock\"\n",
        )
        .unwrap();
        let found = find_config("vm1", dir.path(), DOMAIN).unwrap().unwrap();
        assert!(found.source_desc.contains("vm1.toml"), "{}", found.source_desc);
        let plan = plan("vm1", found, DOMAIN, Path::new("/nonexistent"), Path::new("/nonexistent")).unwrap();
        assert_eq!(
            (plan.size, plan.pool.as_str(), plan.allow_uids.clone()),
            (1 << 30, "memfd:2M", vec![64055])
        );
        assert_eq!(plan.vhost_user, vec![VhostUser { name: "d".into(), backend: "/b.sock".into() }]);

        std::fs::write(dir.path().join("vm1.toml"), "sise = \"1G\"\n").unwrap();
        let err = find_config("vm1", dir.path(), "").unwrap_err().to_string();
        assert!(err.contains("vm1.toml") && err.contains("sise"), "{err}");
    }

    #[test]
    fn domains_without_config_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find_config("vm1", dir.path(), "<domain><name>vm1</name></domain>").unwrap(), None);
        assert_eq!(find_config("vm1", dir.path(), "").unwrap(), None);
        let options = HookOptions {
            vm: "vm1".into(),
            operation: "prepare".into(),
            subop: "begin".into(),
            config_dir: dir.path().into(),
            qemu_conf: "/nonexistent".into(),
            host_config: "/nonexistent".into(),
            pageless: "/nonexistent".into(),
            systemd: false,
            apparmor_dir: "/nonexistent".into(),
            unit_args_dir: dir.path().join("units"),
        };
        run(&options, &mut "<domain><name>vm1</name></domain>".as_bytes()).unwrap();
    }

    #[test]
    fn bad_values_are_refused_with_their_source() {
        let config = FileConfig { pool: Some("floppy".into()), ..Default::default() };
        let err = plan_of("vm1", config, DOMAIN).unwrap_err().to_string();
        assert!(err.contains("pool") && err.contains("test"), "{err}");
        let err = plan_of("vm1", FileConfig::default(), "").unwrap_err();
        assert!(matches!(err, HookError::NoSize { .. }), "{err}");
        let config = FileConfig { qemu_user: Some("no-such-user-here".into()), ..Default::default() };
        assert!(matches!(plan_of("vm1", config, DOMAIN), Err(HookError::NoSuchUser { .. })));
        let bad = DOMAIN.replace("pool=", "pol=");
        let err = find_config("vm1", tempfile::tempdir().unwrap().path(), &bad).unwrap_err().to_string();
        assert!(err.contains("pol"), "{err}");
    }

    /// A libvirt 11 domain (as `virsh dumpxml` prints it) with two NUMA cells bound to host
    /// nodes 0 and 1, and pageless metadata.
    const NUMA_DOMAIN: &str = r#"<domain type='qemu'>
  <name>numa1</name>
  <uuid>6f0b3e8c-3a8e-4a59-9f1e-0d6f3c1b2a11</uuid>
  <metadata>
    <pageless:vm xmlns:pageless="https://pageless.dev/xmlns/libvirt/1" pool="memfd" allow-uid="64055"/>
  </metadata>
  <memory unit='KiB'>262144</memory>
  <currentMemory unit='KiB'>262144</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <numatune>
    <memnode cellid='0' mode='strict' nodeset='0'/>
    <memnode cellid='1' mode='strict' nodeset='1'/>
  </numatune>
  <os>
    <type arch='x86_64' machine='pc-q35-10.0'>hvm</type>
  </os>
  <cpu mode='custom' match='exact' check='none'>
    <model fallback='forbid'>qemu64</model>
    <numa>
      <cell id='0' cpus='0' memory='131072' unit='KiB'/>
      <cell id='1' cpus='1' memory='131072' unit='KiB'/>
    </numa>
  </cpu>
</domain>"#;

    #[test]
    fn numa_cells_become_cells_with_pools_by_host_node() {
        let dir = tempfile::tempdir().unwrap();
        let host_config = dir.path().join("pageless.toml");
        let plan_with = |xml: &str| {
            let found = find_config("numa1", dir.path(), xml).unwrap().expect("metadata found");
            plan("numa1", found, xml, Path::new("/nonexistent"), &host_config)
        };
        // No host config: the VM's memfd pool, bound to each cell's node.
        let plan = plan_with(NUMA_DOMAIN).unwrap();
        assert_eq!(plan.cells, vec!["0:134217728:memfd@node=0", "1:134217728:memfd@node=1"]);
        assert_eq!(
            plan.serve_args()[..7].join(" "),
            "serve --vm numa1 --cell 0:134217728:memfd@node=0 --cell 1:134217728:memfd@node=1"
        );
        assert!(!plan.serve_args().contains(&"--size".to_string()));
        // What `pageless serve` parses from them.
        use clap::Parser;
        let cli =
            crate::cli::Cli::try_parse_from(std::iter::once("pageless".to_string()).chain(plan.serve_args()))
                .unwrap();
        let crate::cli::Command::Serve { cells, size, .. } = cli.command else { panic!("not serve") };
        assert_eq!(size, None);
        assert_eq!(
            cells.iter().map(|c| (c.id, c.size, c.host_node)).collect::<Vec<_>>(),
            vec![(0, 128 << 20, Some(0)), (1, 128 << 20, Some(1))]
        );

        // [pools] of the host config (`pageless host`'s) gives node 1 its pagelessfs mount.
        std::fs::write(
            &host_config,
            "ranges = [\"1G@6G\"]\n[[mount]]\npath = \"/mnt/pageless/node1\"\npagesize = \"2M\"\nnode = 1\n\
             [pools]\n1 = \"pagelessfs:/mnt/pageless/node1\"\n",
        )
        .unwrap();
        let plan = plan_with(NUMA_DOMAIN).unwrap();
        assert_eq!(
            plan.cells,
            vec!["0:134217728:memfd@node=0", "1:134217728:pagelessfs:/mnt/pageless/node1"]
        );

        // A nodeset of two nodes: refused, saying what to write.
        let several = NUMA_DOMAIN
            .replace("cellid='1' mode='strict' nodeset='1'", "cellid='1' mode='strict' nodeset='0-1'");
        let err = plan_with(&several).unwrap_err().to_string();
        assert!(err.contains("<memnode cellid='1' mode='strict' nodeset='N'/>"), "{err}");
        // A broken host config is named.
        std::fs::write(&host_config, "ranges = [\"1G@6G\"]\n[pools]\nnode1 = \"memfd\"\n").unwrap();
        let err = plan_with(NUMA_DOMAIN).unwrap_err().to_string();
        assert!(err.contains("pageless.toml") && err.contains("node1"), "{err}");
        // A configured size that is not the cells' total.
        std::fs::remove_file(&host_config).unwrap();
        let sized = NUMA_DOMAIN.replace(r#"pool="memfd""#, r#"pool="memfd" size="512M""#);
        let err = plan_with(&sized).unwrap_err().to_string();
        assert!(err.contains("NUMA cells add up to 268435456"), "{err}");
        // Cells that overflow when added, with a configured size: an error, no panic.
        let huge = "<domain><cpu><numa><cell memory='9223372036854775808' unit='b'/>\
                    <cell memory='9223372036854775808' unit='b'/></numa></cpu></domain>";
        let config = FileConfig { size: Some(SizeValue::Text("1G".into())), ..Default::default() };
        let err = plan_of("numa1", config, huge).unwrap_err().to_string();
        assert!(err.contains("more than 16 EiB"), "{err}");
    }

    #[test]
    fn memory_follows_libvirts_units_and_numa_cells() {
        assert_eq!(domain_memory("<domain><memory>1000</memory></domain>").unwrap(), Some(1 << 20));
        assert_eq!(domain_memory("<domain><memory unit='GiB'>2</memory></domain>").unwrap(), Some(2 << 30));
        let numa = "<domain><memory unit='MiB'>1024</memory><cpu><numa>\
                    <cell id='0' cpus='0' memory='512' unit='MiB'/><cell id='1' cpus='1' memory='524288'/>\
                    </numa></cpu></domain>";
        assert_eq!(domain_memory(numa).unwrap(), Some(1 << 30));
        assert!(domain_memory("<domain><memory unit='parsec'>1</memory></domain>").is_err());
    }

    #[test]
    fn qemu_user_from_qemu_conf() {
        let conf = "#user = \"libvirt-qemu\"\n# user = \"+0\"\nuser = \"+107\" # comment\ngroup = \"kvm\"\n";
        assert_eq!(qemu_conf_user(conf).as_deref(), Some("+107"));
        assert_eq!(qemu_conf_user("#user = \"x\"\n"), None);
        assert_eq!(resolve_user("+107"), Some(107));
        assert_eq!(resolve_user("root"), Some(0));
    }

    #[test]
    fn unit_names_are_escaped() {
        assert_eq!(unit_name("web1"), "pageless-web1.service");
        assert_eq!(unit_name("a b.c"), "pageless-a\\x20b.c.service");
    }
}

#[cfg(test)]
mod hostile;
