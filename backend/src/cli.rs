//! The `pageless` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use pageless_pool::size::parse_size;
use pageless_pool::PoolSpec;
use pageless_protocol::control::ControlClient;

use crate::cells::CellSpec;
use crate::context::Context;
use crate::hook;
use crate::host;
use crate::limits::{self, LimitOptions};
use crate::qemu::{self, QemuOptions};
use crate::relay::RelaySpec;
use crate::serve::{self, ServeOptions};
use crate::update;
use crate::{control_socket_path, status, unit, DEFAULT_RUN_DIR};

/// pageless: guest RAM owned by one process per VM, shared with QEMU and device backends.
#[derive(Debug, Parser)]
#[command(name = "pageless", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    /// The subcommand to run.
    pub command: Command,
}

#[derive(Debug, Args)]
/// `--run-dir`, flattened into every subcommand that reaches an owner.
pub struct RunDir {
    /// Directory of the owners' sockets and lock files.
    #[arg(long, env = "PAGELESS_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
/// `pageless`'s subcommands; [`run`] carries each out.
pub enum Command {
    /// Own a VM's memory: create (or re-attach to) it and serve it on `<run-dir>/<vm>.sock` until
    /// SIGTERM or `pageless stop`, then until no process it handed the memory to holds it.
    Serve {
        /// The VM's name (also the allocation's file name in directory pools).
        #[arg(long)]
        vm: String,
        /// Memory size, a multiple of the pool's page size: 512M, 4G, 1073741824.
        #[arg(long, value_parser = parse_size, required_unless_present = "cells", conflicts_with = "cells")]
        size: Option<u64>,
        /// Where the memory comes from: memfd, memfd:2M, memfd:1G, hugetlbfs:DIR, dir:DIR
        /// (tmpfs) or pagelessfs:DIR. Directory pools survive the owner's restart.
        #[arg(long, default_value = "memfd", conflicts_with = "cells")]
        pool: PoolSpec,
        /// A guest NUMA cell, instead of --size/--pool (repeatable): its id (QEMU's
        /// `ram-node<ID>`), size and pool, and optionally the host node its memory comes from
        /// (memfd, dir: on tmpfs, hugetlb pools): `0:2G:pagelessfs:/mnt/pageless/node0`,
        /// `1:2G:memfd@node=1`. Each cell is its own allocation (`<vm>.cell<ID>` in
        /// directory pools).
        #[arg(long = "cell", id = "cells", value_name = "ID:SIZE:POOL[@node=HOSTNODE]")]
        cells: Vec<CellSpec>,
        /// `--run-dir`: where the control socket, the lock file and the relay sockets go.
        #[command(flatten)]
        run_dir: RunDir,
        /// Allocate every page before serving, so that the guest cannot run short later.
        #[arg(long)]
        prefault: bool,
        /// Also let this user id use the sockets (repeatable). Root and the owner's own user
        /// always may. When root runs the owner, the sockets and a directory pool's file are
        /// handed to the first such user (e.g. libvirt's QEMU user), who could not open them
        /// otherwise.
        #[arg(long = "allow-uid", value_name = "UID")]
        allow_uids: Vec<u32>,
        /// The AppArmor profile the VM's QEMU runs under (libvirt: `libvirt-<domain uuid>`; the
        /// hook passes it). A process confined by any other profile — another domain's QEMU —
        /// is refused the control socket and the relay sockets, whatever its user; unconfined
        /// processes are subject to the user checks only.
        #[arg(long, value_name = "PROFILE", value_parser = apparmor_profile_name)]
        apparmor_profile: Option<String>,
        /// Remove a directory pool's file when stopping (by default it is kept for the next
        /// owner to re-attach).
        #[arg(long)]
        remove_on_exit: bool,
        /// Relay a vhost-user device (repeatable): QEMU connects to `<run-dir>/<vm>/<NAME>.sock`
        /// (`-chardev socket,path=…,reconnect-ms=…`), the owner relays to BACKEND_SOCKET and
        /// hands the backend the owner's own fd for the VM's memory.
        #[arg(long = "vhost-user", value_name = "NAME=BACKEND_SOCKET")]
        vhost_user: Vec<RelaySpec>,
        /// Seconds after a stop request after which the owner warns (then every minute) that
        /// processes it handed the memory to (QEMU, device backends) still hold it. It never
        /// releases the memory while they do, however long that takes: a device they assigned
        /// could still reach it. `pageless status` says whom it waits for; SIGKILL ends the
        /// owner at once and leaves the memory file in place.
        #[arg(long, default_value_t = 30, value_name = "SECONDS",
              value_parser = clap::value_parser!(u64).range(0..=crate::hook::MAX_TIMEOUT))]
        consumer_timeout: u64,
        /// Most control connections held at once (QEMU keeps one; `pageless status` and the
        /// hook come and go). When full, a new connection replaces the oldest one that has not
        /// sent HELLO yet, or is refused with a reason. Lowered at start, with a warning, if
        /// the open file limit cannot hold that many (raise LimitNOFILE= / ulimit -Hn).
        #[arg(long, default_value_t = limits::DEFAULT_MAX_CLIENTS as u32, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_clients: u32,
        /// Most relayed vhost-user connections open at once, over all --vhost-user devices
        /// (each takes up to 8 open files and 2 threads); more are closed at once.
        #[arg(long, default_value_t = limits::DEFAULT_MAX_DEVICE_CONNECTIONS as u32, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_device_connections: u32,
        /// Seconds a control client may take from connecting to completing HELLO; silent
        /// connections are closed after it.
        #[arg(long, default_value_t = limits::DEFAULT_HELLO_TIMEOUT_SECS, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
        hello_timeout: u64,
    },
    /// Run QEMU with the VM's RAM from its owner: `pageless qemu --vm NAME -- qemu-system-x86_64 ARGS…`.
    /// Without --vm the name comes from QEMU's `-name guest=NAME`.
    Qemu {
        #[arg(long)]
        /// The VM's name; default: QEMU's `-name guest=NAME`, and without one QEMU runs unchanged.
        vm: Option<String>,
        /// `--run-dir`: where the VM's owner listens.
        #[command(flatten)]
        run_dir: RunDir,
        /// Used by `pageless update restore`: start QEMU with `-incoming defer` (not recorded
        /// for the next update).
        #[arg(long, hide = true)]
        update_incoming: bool,
        /// The QEMU binary and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true, value_name = "QEMU")]
        command: Vec<String>,
    },
    /// Show the VMs served under the run dir: size, pool, page size, extents, clients and the
    /// device backends that map the memory.
    Status {
        /// Only this VM.
        #[arg(long)]
        vm: Option<String>,
        /// `--run-dir`: whose owner sockets to ask.
        #[command(flatten)]
        run_dir: RunDir,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Find a string in a VM's memory, through the owner's own mapping; prints the offsets.
    Find {
        #[arg(long)]
        /// The VM whose memory to search.
        vm: String,
        /// `--run-dir`: where the VM's owner listens.
        #[command(flatten)]
        run_dir: RunDir,
        /// The text to look for.
        pattern: String,
    },
    /// Ask a VM's owner to stop.
    Stop {
        #[arg(long)]
        /// The VM whose owner to stop.
        vm: String,
        /// `--run-dir`: where the VM's owner listens.
        #[command(flatten)]
        run_dir: RunDir,
    },
    /// libvirt's qemu hook (install as /etc/libvirt/hooks/qemu): starts the domain's owner on
    /// `prepare`, lets an AppArmor- or SELinux-confined QEMU reach the VM's own sockets and
    /// memory on `start`, stops the owner on `release`, for domains with a pageless config
    /// file or metadata. Reads the domain XML on stdin.
    Hook {
        /// The domain's name.
        vm: String,
        /// libvirt's operation: prepare, start, started, stopped, release, …
        operation: String,
        /// libvirt's sub-operation: begin, end, …
        subop: String,
        /// libvirt's extra argument (ignored).
        #[arg(allow_hyphen_values = true)]
        extra: Vec<String>,
        /// Per-VM config files: `<DIR>/<vm>.toml`.
        #[arg(long, env = "PAGELESS_CONFIG_DIR", default_value = hook::DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
        /// The host config, whose `[pools]` table maps host NUMA nodes to pools for the
        /// domain's NUMA cells (`0 = "pagelessfs:/mnt/pageless/node0"`).
        #[arg(long, env = "PAGELESS_HOST_CONFIG", default_value = hook::numa::DEFAULT_HOST_CONFIG)]
        host_config: PathBuf,
        /// libvirt's per-domain AppArmor profiles (`libvirt-<uuid>`), where the hook adds each
        /// VM's `libvirt-<uuid>.pageless` rules.
        #[arg(long, env = "PAGELESS_APPARMOR_DIR", default_value = hook::svirt::APPARMOR_PROFILE_DIR)]
        apparmor_dir: PathBuf,
    },
    /// The owner as systemd's `pageless@VM.service` runs it: `pageless serve` with the
    /// arguments the libvirt hook wrote to `<args-dir>/<VM>.args`, one per line (refused unless
    /// this user owns the file and nobody else may write it, and unless it is for this VM),
    /// output appended to `<run-dir>/<VM>.log`.
    ServeUnit {
        /// The VM's name (the unit's instance, `%I`).
        vm: String,
        /// Where the hook writes the arguments.
        #[arg(long, default_value = unit::DEFAULT_UNIT_ARGS_DIR)]
        args_dir: PathBuf,
    },
    /// Live update across a host kernel update (kexec): save a VM's device state with QEMU's
    /// cpr-reboot mode before the reboot, restore it after.
    ///
    /// `save` pauses the VM (started by `pageless qemu`) and writes only its device state: its RAM
    /// stays in the owner's memory file, which must survive the reboot. `restore` starts the owner
    /// (re-attaching the file by name) and QEMU again with their old arguments and loads the
    /// state; the guest continues where it stopped.
    Update {
        /// What to do.
        #[command(subcommand)]
        command: UpdateCommand,
    },
    /// Set the host up for pagelessfs: plan the reservation, bring the module and pools up or
    /// down, check.
    ///
    /// `plan` proposes the boot-time memory reservation and the config; `up` loads the module
    /// and mounts the pools; `down` undoes that; `check` verifies it after boot.
    Host {
        /// What to do.
        #[command(subcommand)]
        command: HostCommand,
    },
}

#[derive(Debug, Args)]
/// `--state-dir`, flattened into `update save` and `update restore`.
pub struct StateDir {
    /// Where saved VM states go (`<DIR>/<vm>/state` and `update.json`): a directory that
    /// survives the reboot, so not under /run where that is a tmpfs.
    #[arg(long, env = "PAGELESS_STATE_DIR", default_value = update::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
/// `pageless update`'s subcommands.
pub enum UpdateCommand {
    /// Pause a VM and save its device state for a restore after the reboot.
    ///
    /// Refused, before anything is paused, when the VM's memory would not survive (memfd) or is
    /// not all the owner's share=on file, or when its QEMU was not started by `pageless qemu`
    /// (no monitor on `<run-dir>/<vm>.qmp`). QEMU stays paused and the owner keeps the memory
    /// until the reboot; if saving fails, the guest runs on.
    Save {
        /// The VM.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        vm: Option<String>,
        /// Every VM with an owner under the run directory (`<run-dir>/*.sock`), one after the
        /// other; a VM that cannot be saved is reported and the others are still saved.
        #[arg(long)]
        all: bool,
        /// `--run-dir`: where the VM's owner listens.
        #[command(flatten)]
        run_dir: RunDir,
        /// `--state-dir`.
        #[command(flatten)]
        state_dir: StateDir,
    },
    /// Start a saved VM's owner and QEMU again and let the guest continue where it stopped.
    ///
    /// Checks the saved state (same VM, unchanged since the save, same QEMU version, memory
    /// files there) before starting anything. The owner and QEMU run detached; QEMU's output
    /// goes to `--qemu-log`. Restart the VM's vhost-user device backends first: QEMU reconnects
    /// to them through the owner's relay.
    Restore {
        /// The VM.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        vm: Option<String>,
        /// Every VM with a saved state under the state directory (`<state-dir>/*/update.json`);
        /// a VM that cannot be restored is reported and the others are still restored.
        #[arg(long)]
        all: bool,
        /// `--run-dir`: where the VM's owner listens (as at the save).
        #[command(flatten)]
        run_dir: RunDir,
        /// `--state-dir`.
        #[command(flatten)]
        state_dir: StateDir,
        /// Where QEMU's stdout and stderr go (appended); default `<run-dir>/<vm>.qemu.log`.
        #[arg(long, value_name = "PATH")]
        qemu_log: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
/// `--config`, flattened into `host up`, `down` and `check`.
pub struct HostConfigPath {
    /// The host config: ranges, mounts, node -> pool map (see `pageless host plan`).
    #[arg(long, value_name = "PATH", default_value = host::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
/// `pageless host`'s subcommands.
pub enum HostCommand {
    /// Propose boot-time memory reservations (`memmap=`) and the config that goes with them.
    ///
    /// Reads /proc/iomem, the firmware's map (/sys/firmware/memmap) and the NUMA nodes' memory blocks (sysfs): prints the
    /// kernel command line, the GRUB_CMDLINE_LINUX line with its escaping, the module's
    /// `ranges=` and the pageless.toml to write. Leaves out the running kernel's image, the crash
    /// kernel and (unless --allow-below-4g) memory below 4 GiB, and refuses, saying what is
    /// possible, when the request does not fit. Needs root (/proc/iomem hides addresses
    /// otherwise); changes nothing unless --write-config.
    Plan {
        /// How much to reserve in all for VM memory: 1G, 64G, … (a multiple of 2M). The plan adds
        /// 2M (rarely 4M) for the module's file metadata, so each share stays whole.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        reserve: u64,
        /// Split the reservation evenly across the NUMA nodes that have memory, one range (or
        /// more) and one mount (`node=N`) per node.
        #[arg(long)]
        per_node: bool,
        /// Alignment of each range; 1G allows 1 GiB pages. If the memory does not allow it,
        /// the plan falls back to 128M, then 2M (with a note; mounts then use pagesize=2M).
        #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size)]
        align: u64,
        /// System RAM the host keeps at least: larger requests are refused.
        #[arg(long, value_name = "SIZE", default_value = "2G", value_parser = parse_size)]
        keep: u64,
        /// Also reserve memory below 4 GiB (by default left to 32-bit DMA, firmware and the
        /// kernel).
        #[arg(long)]
        allow_below_4g: bool,
        /// Where the config's pagelessfs mounts go: DIR/node<N> with --per-node, else DIR.
        #[arg(long, value_name = "DIR", default_value = "/mnt/pageless")]
        mount_dir: PathBuf,
        /// `module =` in the config: load this pageless.ko with insmod instead of `modprobe
        /// pageless`.
        #[arg(long, value_name = "PATH")]
        module: Option<PathBuf>,
        /// Also write the proposed config to PATH (e.g. /etc/pageless/pageless.toml).
        #[arg(long, value_name = "PATH")]
        write_config: Option<PathBuf>,
    },
    /// Load the module with the configured ranges and mount the configured pools (idempotent).
    ///
    /// Runs `modprobe pageless ranges=…`, or insmod of the config's `module =`. Idempotent: a module loaded with the same ranges and
    /// pools mounted with the same options are left as they are; different ones are an error.
    Up {
        #[command(flatten)]
        /// `--config`.
        config: HostConfigPath,
    },
    /// Unmount the configured pools and unload the module.
    ///
    /// Refuses while a pool holds files (VM
    /// memory) or is in use, and while the module is in use (other mounts, quarantined memory).
    Down {
        #[command(flatten)]
        /// `--config`.
        config: HostConfigPath,
    },
    /// Verify a booted host and say what to fix.
    ///
    /// Checks each range Reserved and not System RAM in /proc/iomem, the module
    /// loaded with the ranges and holding them, each range write-back in the PAT, pools mounted
    /// with the configured options. Prints each failure with its fix; exits non-zero on any.
    Check {
        #[command(flatten)]
        /// `--config`.
        config: HostConfigPath,
    },
}

/// Runs the command; the error is printed by `main`.
pub fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Serve {
            vm,
            size,
            pool,
            cells,
            run_dir,
            prefault,
            allow_uids,
            apparmor_profile,
            remove_on_exit,
            vhost_user,
            consumer_timeout,
            max_clients,
            max_device_connections,
            hello_timeout,
        } => {
            serve::serve(ServeOptions {
                vm,
                // clap requires --size unless --cell is given.
                size: size.unwrap_or(0),
                pool,
                cells,
                run_dir: run_dir.run_dir,
                prefault,
                allow_uids,
                apparmor_profile,
                remove_on_exit,
                vhost_user,
                consumer_timeout: std::time::Duration::from_secs(consumer_timeout),
                limits: LimitOptions {
                    max_clients: max_clients as usize,
                    max_device_connections: max_device_connections as usize,
                    hello_timeout: std::time::Duration::from_secs(hello_timeout),
                },
            })?;
        }
        Command::Qemu { vm, run_dir, update_incoming, command } => {
            qemu::run(QemuOptions {
                vm,
                run_dir: run_dir.run_dir,
                command,
                incoming_defer: update_incoming,
            })?;
        }
        Command::Status { vm, run_dir, json } => {
            if let Some(vm) = &vm {
                pageless_pool::check_name(vm)?;
            }
            let extents = if json { status::Extents::All } else { status::Extents::Summary };
            let entries = status::collect(&run_dir.run_dir, vm.as_deref(), extents)?;
            if json {
                let statuses: Vec<_> = entries.iter().filter_map(|e| e.status.as_ref().ok()).collect();
                print_out(&format!("{}\n", serde_json::to_string_pretty(&statuses)?))?;
            } else {
                print_out(&status::render(&entries))?;
            }
            if let Some(entry) = entries.iter().find(|e| e.status.is_err()).filter(|_| vm.is_some()) {
                return Err(format!("VM {:?}: {}", entry.vm, entry.status.as_ref().unwrap_err()).into());
            }
        }
        Command::Find { vm, run_dir, pattern } => {
            pageless_pool::check_name(&vm)?;
            let client = ControlClient::connect(&control_socket_path(&run_dir.run_dir, &vm), "find")?;
            let offsets: String =
                client.find(pattern.as_bytes())?.iter().map(|o| format!("{o:#x}\n")).collect();
            print_out(&offsets)?;
        }
        Command::Stop { vm, run_dir } => {
            pageless_pool::check_name(&vm)?;
            ControlClient::connect(&control_socket_path(&run_dir.run_dir, &vm), "stop")?.stop()?;
        }
        Command::Hook { vm, operation, subop, extra: _, config_dir, host_config, apparmor_dir } => {
            let options = hook::HookOptions {
                vm,
                operation,
                subop,
                config_dir,
                qemu_conf: hook::QEMU_CONF.into(),
                host_config,
                pageless: std::env::current_exe()?,
                systemd: std::path::Path::new("/run/systemd/system").is_dir(),
                apparmor_dir,
                unit_args_dir: unit::DEFAULT_UNIT_ARGS_DIR.into(),
            };
            if let Err(e) = hook::run(&options, &mut std::io::stdin().lock()) {
                // libvirt shows the hook's stderr as the error of `virsh start`: print the
                // message once, without a log prefix.
                log::debug!("hook failed: {e:?}");
                eprintln!("pageless hook: {e}");
                std::process::exit(1);
            }
        }
        Command::ServeUnit { vm, args_dir } => serve_unit(&vm, &args_dir)?,
        Command::Update { command } => run_update(command)?,
        Command::Host { command } => run_host(command)?,
    }
    Ok(())
}

/// Saves or restores one VM, by name.
type UpdateAction = Box<dyn Fn(&str, &mut std::io::Stdout) -> Result<(), update::UpdateError>>;

fn run_update(command: UpdateCommand) -> Result<(), Box<dyn std::error::Error>> {
    let mut out = std::io::stdout();
    let (names, action): (Vec<String>, UpdateAction) = match command {
        UpdateCommand::Save { vm, all: _, run_dir, state_dir } => {
            let names = match vm {
                Some(vm) => vec![vm],
                None => update::served_vms(&run_dir.run_dir)?,
            };
            let (run_dir, state_dir) = (run_dir.run_dir, state_dir.state_dir);
            (
                names,
                Box::new(move |vm: &str, out: &mut std::io::Stdout| {
                    let options = update::SaveOptions {
                        vm: vm.into(),
                        run_dir: run_dir.clone(),
                        state_dir: state_dir.clone(),
                    };
                    update::save(&options, out).map(drop)
                }),
            )
        }
        UpdateCommand::Restore { vm, all, run_dir, state_dir, qemu_log } => {
            let names = match vm {
                Some(vm) => vec![vm],
                None => update::saved_vms(&state_dir.state_dir)?,
            };
            let (run_dir, state_dir) = (run_dir.run_dir, state_dir.state_dir);
            if all && qemu_log.is_some() {
                return Err("--qemu-log names one VM's log: leave it out with --all (each QEMU logs to <run-dir>/<vm>.qemu.log)".into());
            }
            (
                names,
                Box::new(move |vm: &str, out: &mut std::io::Stdout| {
                    let options = update::RestoreOptions {
                        vm: vm.into(),
                        run_dir: run_dir.clone(),
                        state_dir: state_dir.clone(),
                        qemu_log: qemu_log.clone(),
                    };
                    update::restore(&options, out)
                }),
            )
        }
    };
    if names.len() == 1 {
        return Ok(action(&names[0], &mut out)?);
    }
    let mut failed = Vec::new();
    for vm in &names {
        if let Err(e) = action(vm, &mut out) {
            eprintln!("pageless: error: {e}");
            failed.push(vm.as_str());
        }
    }
    if !failed.is_empty() {
        return Err(format!(
            "{} of {} VMs failed: {} (see above)",
            failed.len(),
            names.len(),
            failed.join(", ")
        )
        .into());
    }
    Ok(())
}

fn run_host(command: HostCommand) -> Result<(), Box<dyn std::error::Error>> {
    use host::config::HostConfig;
    match command {
        HostCommand::Plan {
            reserve,
            per_node,
            align,
            keep,
            allow_below_4g,
            mount_dir,
            module,
            write_config,
        } => {
            let machine = host::read_machine()?;
            let request =
                host::plan::Request { reserve, per_node, align, keep, allow_below_4g, mount_dir, module };
            let plan = host::plan::plan(&machine, &request)?;
            let path = write_config
                .as_ref()
                .map_or(host::config::DEFAULT_CONFIG.to_string(), |p| p.display().to_string());
            print_out(&host::plan::render(&plan, &path))?;
            if let Some(path) = write_config {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
                }
                std::fs::write(&path, plan.config.to_toml())
                    .with_context(|| format!("write {}", path.display()))?;
                print_out(&format!("Wrote {}.\n", path.display()))?;
            }
        }
        HostCommand::Up { config } => {
            host::ops::up(&HostConfig::load(&config.config)?, &mut std::io::stdout())?
        }
        HostCommand::Down { config } => {
            host::ops::down(&HostConfig::load(&config.config)?, &mut std::io::stdout())?
        }
        HostCommand::Check { config } => {
            let findings = host::ops::check(&HostConfig::load(&config.config)?)?;
            print_out(&host::ops::render_findings(&findings))?;
            let failed = findings.iter().filter(|f| f.fix.is_some()).count();
            if failed > 0 {
                return Err(host::ops::HostError::Checks(failed).into());
            }
        }
    }
    Ok(())
}

/// `pageless serve-unit`: reads the owner's arguments back, sends stdout and stderr to its log,
/// and runs it.
fn serve_unit(vm: &str, args_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    pageless_pool::check_name(vm)?;
    let args = unit::read_args(args_dir, vm)?;
    let cli = Cli::try_parse_from(std::iter::once("pageless".to_string()).chain(args))
        .map_err(|e| format!("{}: {e}", unit::args_path(args_dir, vm).display()))?;
    let Command::Serve { run_dir, .. } = &cli.command else {
        return Err(
            format!("{}: not `pageless serve` arguments", unit::args_path(args_dir, vm).display()).into()
        );
    };
    let log_path = run_dir.run_dir.join(format!("{vm}.log"));
    std::fs::create_dir_all(&run_dir.run_dir)
        .map_err(|e| format!("create the run directory {}: {e}", run_dir.run_dir.display()))?;
    let log = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&log_path)
            .map_err(|e| format!("open the owner's log {}: {e}", log_path.display()))?
    };
    // As the hook's detached owners and its systemd-run units do: the log the hook quotes
    // when the owner fails to start.
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&log), fd)
            .map_err(|e| format!("send output to {}: {e}", log_path.display()))?;
    }
    run(cli)
}

/// Writes command output to stdout; a reader that went away early (`| head`, `| grep -q`) is
/// not an error.
fn print_out(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// An AppArmor profile name as `--apparmor-profile` takes it: printable, no spaces.
fn apparmor_profile_name(name: &str) -> Result<String, String> {
    if name.is_empty() || name.len() > 255 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("{name:?} is not an AppArmor profile name (e.g. libvirt-<uuid>)"));
    }
    Ok(name.to_string())
}
