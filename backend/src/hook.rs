//! `pageless hook`: libvirt's qemu hook (`/etc/libvirt/hooks/qemu VM OPERATION SUBOP EXTRA`,
//! the domain XML on stdin).
//!
//! * `prepare begin`: starts the VM's owner, `pageless serve`, as a transient systemd unit
//!   `pageless-<vm>` where systemd runs, else as a detached process (own session, stdin
//!   `/dev/null`, output to `<run-dir>/<vm>.log`, no inherited fds: libvirt waits for the
//!   hook's stdout and stderr to close). Then waits until the owner answers on its socket. An
//!   owner that exits or does not answer in time fails the hook, with the end of its log on
//!   stderr, which libvirt shows as `virsh start`'s error.
//! * `release end`: asks the owner to stop and waits for its process to go. Idempotent.
//! * Anything else: nothing.
//!
//! Which VMs: those with a config file `<config-dir>/<vm>.toml` (default `/etc/pageless/vms`)
//! or a `<pageless:vm>` element in the domain's `<metadata>`; the file wins. Other domains are
//! left alone: the hook runs for every domain.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use driver::size::{parse_size, round_up, Size};
use driver::PoolSpec;
use log::{debug, info, warn};
use protocol::control::ControlClient;
use serde::Deserialize;
use thiserror::Error;

use crate::{control_socket_path, lock_path, DEFAULT_RUN_DIR};

/// Where per-VM config files live: `<dir>/<vm>.toml`.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/pageless/vms";
/// The XML namespace of pageless's domain metadata.
pub const XML_NAMESPACE: &str = "https://pageless.dev/xmlns/libvirt/1";
/// libvirt's QEMU driver config, whose `user = "…"` QEMU runs as.
pub const QEMU_CONF: &str = "/etc/libvirt/qemu.conf";
/// The users libvirt runs QEMU as when qemu.conf does not say: Debian's build default, then
/// Fedora's.
const DEFAULT_QEMU_USERS: &[&str] = &["libvirt-qemu", "qemu"];
/// How long `prepare` waits for the owner to answer, unless the config says otherwise.
const DEFAULT_START_TIMEOUT: u64 = 30;
/// `pageless serve --consumer-timeout`'s default.
const DEFAULT_CONSUMER_TIMEOUT: u64 = 30;
/// libvirt rounds x86 guest memory (and each NUMA cell) up to 1 MiB.
const MEMORY_ALIGN: u64 = 1 << 20;

/// What libvirt asked, and where to look.
#[derive(Clone, Debug)]
pub struct HookOptions {
    pub vm: String,
    pub operation: String,
    pub subop: String,
    pub config_dir: PathBuf,
    /// libvirt's qemu.conf, for the user QEMU runs as.
    pub qemu_conf: PathBuf,
    /// The `pageless` binary the owner runs (this one).
    pub pageless: PathBuf,
    /// Start owners as transient systemd units (`/run/systemd/system` exists).
    pub systemd: bool,
}

#[derive(Debug, Error)]
pub enum HookError {
    #[error("cannot read the domain XML from stdin: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("VM {vm:?}: {source_desc}: {why}")]
    Config { vm: String, source_desc: String, why: String },
    #[error("VM {vm:?}: the domain XML on stdin cannot be parsed ({why}): is this hook run by libvirt?")]
    Xml { vm: String, why: String },
    #[error(
        "VM {vm:?}: no memory size: set `size` in its pageless config, or give the domain XML (with <memory>) on stdin"
    )]
    NoSize { vm: String },
    #[error("VM {vm:?}: {source_desc} sets the QEMU user {user:?}, which does not exist: fix qemu_user, or set allow_uid")]
    NoSuchUser { vm: String, source_desc: String, user: String },
    #[error(
        "VM {vm:?} already has a memory owner (pid {pid}, {socket}), a leftover from an earlier run: stop it with `pageless stop --vm {vm}` if it still runs, and start the VM again"
    )]
    AlreadyRunning { vm: String, pid: u32, socket: String },
    #[error("VM {vm:?}: cannot start its memory owner ({what}): {source}")]
    Spawn {
        vm: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the memory owner of VM {vm:?} (pageless serve) could not start: {why}. {log}\nFix {source_desc} and start the VM again.")]
    OwnerFailed { vm: String, why: String, log: String, source_desc: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HookError {
    let what = what.into();
    move |source| HookError::Io { what, source }
}

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
    pub name: String,
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
struct Found {
    config: FileConfig,
    source_desc: String,
}

/// Everything needed to run and stop the VM's owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerPlan {
    pub vm: String,
    pub size: u64,
    pub pool: String,
    pub run_dir: PathBuf,
    pub allow_uids: Vec<u32>,
    pub vhost_user: Vec<VhostUser>,
    pub consumer_timeout: u64,
    pub start_timeout: u64,
    pub remove_on_exit: bool,
    pub prefault: bool,
    /// Where the config came from, for messages.
    pub source_desc: String,
}

impl OwnerPlan {
    /// `pageless serve …` arguments (without the binary).
    pub fn serve_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--vm".into(),
            self.vm.clone(),
            "--size".into(),
            self.size.to_string(),
            "--pool".into(),
            self.pool.clone(),
            "--run-dir".into(),
            self.run_dir.display().to_string(),
            "--consumer-timeout".into(),
            self.consumer_timeout.to_string(),
        ];
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
        args
    }

    pub fn log_path(&self) -> PathBuf {
        self.run_dir.join(format!("{}.log", self.vm))
    }

    pub fn socket(&self) -> PathBuf {
        control_socket_path(&self.run_dir, &self.vm)
    }
}

/// Runs the hook. Reads the domain XML from stdin for every operation (libvirt writes it).
pub fn run(options: &HookOptions, stdin: &mut dyn Read) -> Result<(), HookError> {
    let mut xml = String::new();
    stdin.read_to_string(&mut xml).map_err(HookError::Stdin)?;
    let action = match (options.operation.as_str(), options.subop.as_str()) {
        ("prepare", "begin") => Action::Start,
        ("release", "end") => Action::Stop,
        (operation, subop) => {
            debug!("VM {:?}: nothing to do on {operation} {subop}", options.vm);
            return Ok(());
        }
    };
    driver::check_name(&options.vm).map_err(|e| HookError::Config {
        vm: options.vm.clone(),
        source_desc: "the VM's name".into(),
        why: e.to_string(),
    })?;
    let Some(found) = find_config(&options.vm, &options.config_dir, &xml)? else {
        debug!("VM {:?}: no pageless config and no pageless metadata: not a pageless VM", options.vm);
        return Ok(());
    };
    let plan = plan(&options.vm, found, &xml, &options.qemu_conf)?;
    match action {
        Action::Start => start(options, &plan),
        Action::Stop => stop(options, &plan),
    }
}

enum Action {
    Start,
    Stop,
}

/// The VM's config file, else its metadata, else `None`.
fn find_config(vm: &str, config_dir: &Path, xml: &str) -> Result<Option<Found>, HookError> {
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
        Err(e) => return Err(io_error(format!("VM {vm:?}: read {}", path.display()))(e)),
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

/// The config, with defaults from the domain XML and the host.
fn plan(vm: &str, found: Found, xml: &str, qemu_conf: &Path) -> Result<OwnerPlan, HookError> {
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
    let pool = config.pool.clone().unwrap_or_else(|| "memfd".into());
    pool.parse::<PoolSpec>().map_err(|e| config_error(format!("pool: {e}")))?;
    for device in &config.vhost_user {
        let spec = format!("{}={}", device.name, device.backend.display());
        spec.parse::<crate::relay::RelaySpec>().map_err(|why| config_error(format!("vhost_user: {why}")))?;
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
        source_desc,
    })
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
            total += align(scaled(value, cell.attribute("unit"))?)?;
        }
        return Ok(Some(total));
    }
    let Some(memory) = domain.children().find(|n| n.has_tag_name("memory")) else { return Ok(None) };
    let value = memory.text().ok_or("an empty <memory> element")?;
    Ok(Some(align(scaled(value, memory.attribute("unit"))?)?))
}

/// A libvirt `<memory unit=…>` value in bytes (the unit defaults to KiB).
fn scaled(value: &str, unit: Option<&str>) -> Result<u64, String> {
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
    number.checked_mul(scale).ok_or_else(|| format!("memory {value} {scale} is too large"))
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

/// A systemd unit name for the VM's owner: `pageless-<vm>`, escaped like systemd-escape.
pub fn unit_name(vm: &str) -> String {
    let mut name = String::from("pageless-");
    for (i, byte) in vm.bytes().enumerate() {
        let plain = byte.is_ascii_alphanumeric() || b":_-".contains(&byte) || (byte == b'.' && i > 0);
        if plain {
            name.push(byte as char);
        } else {
            name.push_str(&format!("\\x{byte:02x}"));
        }
    }
    name.push_str(".service");
    name
}

/// A started owner process.
enum Started {
    /// Detached: our child until this hook exits.
    Child(Child),
    /// A transient systemd unit and its main process.
    Unit { name: String, pid: Option<u32> },
}

impl Started {
    fn pid(&self) -> Option<u32> {
        match self {
            Started::Child(child) => Some(child.id()),
            Started::Unit { pid, .. } => *pid,
        }
    }

    /// Why the owner is no longer running, if it is not.
    fn exited(&mut self) -> Option<String> {
        match self {
            Started::Child(child) => match child.try_wait() {
                Ok(Some(status)) => Some(format!("it exited ({status})")),
                Ok(None) => None,
                Err(e) => Some(format!("cannot wait for it: {e}")),
            },
            Started::Unit { name, pid } => match pid {
                Some(pid) if process_alive(*pid) => None,
                _ => Some(format!("its unit {name} stopped")),
            },
        }
    }

    /// Stops an owner that did not come up.
    fn kill(&mut self) {
        match self {
            Started::Child(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Started::Unit { name, .. } => {
                let _ = Command::new("systemctl").args(["stop", name.as_str()]).stdin(Stdio::null()).output();
            }
        }
    }
}

fn start(options: &HookOptions, plan: &OwnerPlan) -> Result<(), HookError> {
    let vm = &plan.vm;
    std::fs::create_dir_all(&plan.run_dir)
        .map_err(io_error(format!("create the run directory {}", plan.run_dir.display())))?;
    let socket = plan.socket();
    if let Ok(status) = ControlClient::connect(&socket, "hook").and_then(|c| c.status()) {
        return Err(HookError::AlreadyRunning {
            vm: vm.clone(),
            pid: status.pid,
            socket: socket.display().to_string(),
        });
    }
    let log_path = plan.log_path();
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(&log_path)
        .map_err(io_error(format!("open the owner's log {}", log_path.display())))?;
    let log_start = log.seek(SeekFrom::End(0)).map_err(io_error(format!("seek {}", log_path.display())))?;
    let args = plan.serve_args();
    let _ = writeln!(
        log,
        "--- pageless hook: starting the owner of VM {vm:?}: {} {}",
        options.pageless.display(),
        args.join(" ")
    );
    let mut started = if options.systemd {
        start_unit(options, plan, &args)?
    } else {
        start_detached(options, plan, &args, log)?
    };

    let deadline = Instant::now() + Duration::from_secs(plan.start_timeout);
    loop {
        if let Ok(status) = ControlClient::connect(&socket, "hook").and_then(|c| c.status()) {
            if started.pid().is_none_or(|pid| pid == status.pid) {
                info!(
                    "VM {vm:?}: its memory owner (pid {}) serves {} of {} on {}",
                    status.pid,
                    Size(status.size),
                    status.pool,
                    socket.display()
                );
                return Ok(());
            }
        }
        let failure = match started.exited() {
            Some(why) => Some(why),
            None if Instant::now() >= deadline => {
                started.kill();
                Some(format!(
                    "it did not answer on {} within {} s (start_timeout), so it was stopped",
                    socket.display(),
                    plan.start_timeout
                ))
            }
            None => None,
        };
        if let Some(why) = failure {
            return Err(HookError::OwnerFailed {
                vm: vm.clone(),
                why,
                log: log_tail(&log_path, log_start),
                source_desc: plan.source_desc.clone(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `pageless serve` in its own session, stdin /dev/null, output to the log, no other fds.
fn start_detached(
    options: &HookOptions,
    plan: &OwnerPlan,
    args: &[String],
    log: File,
) -> Result<Started, HookError> {
    let spawn_error = |what: &str| {
        let what = what.to_string();
        move |source| HookError::Spawn { vm: plan.vm.clone(), what, source }
    };
    let mut command = Command::new(&options.pageless);
    command
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(spawn_error("dup the log fd"))?)
        .stderr(log);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (setsid, close_range); it touches no memory of the parent
    // that another thread could have left inconsistent.
    unsafe {
        command.pre_exec(|| {
            // Its own session: no terminal, not killed with libvirtd's process group.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Whatever libvirtd let the hook inherit (pipes it waits on) must not live on in
            // the owner: mark every fd above stderr close-on-exec.
            if libc::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(spawn_error(&format!("run {}", options.pageless.display())))?;
    debug!("VM {:?}: started its owner detached, pid {}", plan.vm, child.id());
    Ok(Started::Child(child))
}

/// `systemd-run --unit pageless-<vm> --collect … pageless serve …`.
fn start_unit(options: &HookOptions, plan: &OwnerPlan, args: &[String]) -> Result<Started, HookError> {
    let unit = unit_name(&plan.vm);
    let log = plan.log_path();
    let output = Command::new("systemd-run")
        .arg(format!("--unit={unit}"))
        .args(["--collect", "--quiet"])
        .arg(format!("--description=pageless memory owner of VM {}", plan.vm))
        .arg(format!("--property=StandardOutput=append:{}", log.display()))
        .arg(format!("--property=StandardError=append:{}", log.display()))
        .arg("--")
        .arg(&options.pageless)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HookError::Spawn { vm: plan.vm.clone(), what: "run systemd-run".into(), source })?;
    if !output.status.success() {
        return Err(HookError::OwnerFailed {
            vm: plan.vm.clone(),
            why: format!(
                "systemd-run failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            log: String::new(),
            source_desc: plan.source_desc.clone(),
        });
    }
    let pid = unit_main_pid(&unit);
    debug!("VM {:?}: started its owner as {unit}, pid {pid:?}", plan.vm);
    Ok(Started::Unit { name: unit, pid })
}

/// The unit's MainPID, `None` when it has none (not running).
fn unit_main_pid(unit: &str) -> Option<u32> {
    let output = Command::new("systemctl")
        .args(["show", "--property=MainPID", "--value", unit])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok().filter(|&pid| pid != 0)
}

/// The owner's log from `start` on, last lines, indented, for the hook's error message.
fn log_tail(path: &Path, start: u64) -> String {
    const LINES: usize = 20;
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.seek(SeekFrom::Start(start));
        let _ = file.take(1 << 20).read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("--- pageless hook:")).collect();
    if lines.is_empty() {
        return format!("Its log {} is empty.", path.display());
    }
    let tail = &lines[lines.len().saturating_sub(LINES)..];
    format!("The end of its log {}:\n    {}", path.display(), tail.join("\n    "))
}

/// Whether `pid` runs (a zombie does not).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S …`: the state follows the last ')'.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// The pid of the VM's owner: from its socket, else from its lock file while the lock is held.
fn owner_pid(plan: &OwnerPlan) -> Option<u32> {
    if let Ok(status) = ControlClient::connect(&plan.socket(), "hook").and_then(|c| c.status()) {
        return Some(status.pid);
    }
    let path = lock_path(&plan.run_dir, &plan.vm);
    let file = File::open(&path).ok()?;
    let mut text = String::new();
    (&file).read_to_string(&mut text).ok()?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
        // We got the lock: nobody holds it, no owner.
        Ok(_) => None,
        Err(_) => text.trim().parse().ok(),
    }
}

fn stop(options: &HookOptions, plan: &OwnerPlan) -> Result<(), HookError> {
    let vm = &plan.vm;
    let pid = owner_pid(plan);
    match ControlClient::connect(&plan.socket(), "hook").and_then(|c| c.stop()) {
        Ok(()) => debug!("VM {vm:?}: asked its owner to stop"),
        Err(e) => {
            if let Some(pid) = pid {
                debug!("VM {vm:?}: owner pid {pid} does not answer ({e}): SIGTERM");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
    if options.systemd {
        // Also covers an owner that hangs before answering; an unknown unit is fine.
        let _ = Command::new("systemctl").args(["stop", &unit_name(vm)]).stdin(Stdio::null()).output();
    }
    let Some(pid) = pid else {
        debug!("VM {vm:?}: no owner runs");
        return Ok(());
    };
    // The owner waits up to consumer_timeout for the memory's consumers, then exits.
    let timeout = Duration::from_secs(plan.consumer_timeout + 10);
    let deadline = Instant::now() + timeout;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            warn!("VM {vm:?}: its owner (pid {pid}) is still running {timeout:?} after the stop request: killing it (see {})", plan.log_path().display());
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    info!("VM {vm:?}: its memory owner (pid {pid}) stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        plan(vm, Found { config, source_desc: "test".into() }, xml, Path::new("/nonexistent"))
    }

    #[test]
    fn metadata_gives_the_owner_plan() {
        let dir = tempfile::tempdir().unwrap();
        let found = find_config("vm1", dir.path(), DOMAIN).unwrap().expect("metadata found");
        let plan = plan("vm1", found, DOMAIN, Path::new("/nonexistent")).unwrap();
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
        let plan = plan("vm1", found, DOMAIN, Path::new("/nonexistent")).unwrap();
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
            pageless: "/nonexistent".into(),
            systemd: false,
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
