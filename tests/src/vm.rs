//! QEMU guests under TCG, their serial console read line by line.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::kernel::Kernel;

/// How to start a guest.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// A label for log lines.
    pub name: String,
    pub memory: String,
    pub smp: u32,
    pub machine: Option<String>,
    /// Kernel command line after `console=ttyS0 panic=-1`.
    pub append: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// More QEMU arguments.
    pub extra: Vec<String>,
    /// A command QEMU is run through, e.g. `pageless qemu --vm NAME --`.
    pub wrapper: Vec<String>,
    pub qemu: String,
}

impl VmConfig {
    pub fn new(name: &str, initrd: PathBuf) -> VmConfig {
        VmConfig {
            name: name.into(),
            memory: "512M".into(),
            smp: 1,
            machine: None,
            append: String::new(),
            kernel: Kernel::get().vmlinuz(),
            initrd,
            extra: Vec::new(),
            wrapper: Vec::new(),
            qemu: "qemu-system-x86_64".into(),
        }
    }

    /// Runs QEMU through `pageless qemu` with the owner in `run_dir` (the VM name from `vm`, or
    /// else from QEMU's `-name`).
    pub fn through_pageless(&mut self, run_dir: &std::path::Path, vm: Option<&str>) -> &mut Self {
        self.wrapper = vec![crate::bins::pageless().display().to_string(), "qemu".into()];
        if let Some(vm) = vm {
            self.wrapper.extend(["--vm".to_string(), vm.to_string()]);
        }
        self.wrapper.extend(["--run-dir".to_string(), run_dir.display().to_string(), "--".to_string()]);
        self
    }

    /// Adds a vhost-user device (`vhost-user-blk-pci`, `vhost-user-rng-pci`, …) on `socket`.
    /// With `reconnect`, QEMU reconnects every 500 ms after a disconnect (vhost-user-blk
    /// supports that; QEMU 10's vhost-user-base devices need a plain socket).
    pub fn vhost_user(
        &mut self,
        id: &str,
        socket: &std::path::Path,
        device: &str,
        reconnect: bool,
    ) -> &mut Self {
        let reconnect = if reconnect { ",reconnect-ms=500" } else { "" };
        self.extra.push("-chardev".into());
        self.extra.push(format!("socket,id={id},path={}{reconnect}", socket.display()));
        self.extra.push("-device".into());
        self.extra.push(format!("{device},chardev={id}"));
        self
    }

    /// The whole command line.
    pub fn command_line(&self) -> Vec<String> {
        let mut args: Vec<String> = self.wrapper.clone();
        args.push(self.qemu.clone());
        let append = format!("console=ttyS0 panic=-1 quiet {}", self.append);
        for arg in [
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            &self.memory,
            "-smp",
            &self.smp.to_string(),
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
            "-kernel",
        ] {
            args.push(arg.into());
        }
        args.push(self.kernel.display().to_string());
        args.push("-initrd".into());
        args.push(self.initrd.display().to_string());
        args.push("-append".into());
        args.push(append);
        if let Some(machine) = &self.machine {
            args.push("-machine".into());
            args.push(machine.clone());
        }
        args.extend(self.extra.iter().cloned());
        args
    }
}

type Console = Arc<(Mutex<Vec<String>>, Condvar)>;

/// A running guest. Killed when dropped.
pub struct Vm {
    pub name: String,
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    console: Console,
    exited: Option<ExitStatus>,
    log_path: PathBuf,
}

/// The first line every test guest's /init prints (tests/vm/prelude.sh).
pub const INIT_STARTED: &str = "# init: start";
/// How long a TCG guest may take to reach /init before [`Vm::boot`] tries again.
const INIT_TIMEOUT: Duration = Duration::from_secs(180);

impl Vm {
    /// Starts the guest and waits until its /init runs. A guest that prints nothing of its
    /// /init within 3 minutes (TCG once hung a 7.3 boot before any output, on a machine where
    /// the same boot takes seconds) is killed and booted once more, with a RETRY line; a hang
    /// once /init runs is the test's to report.
    pub fn boot(config: &VmConfig) -> Vm {
        let mut vm = Vm::start(config);
        if let Err(why) = vm.wait_for(INIT_STARTED, INIT_TIMEOUT) {
            eprintln!("[{}] RETRY: the guest did not reach /init: {why}; booting it once more", config.name);
            vm.kill();
            vm = Vm::start(config);
            vm.wait_for(INIT_STARTED, INIT_TIMEOUT).expect("the guest reaches /init on its second boot");
        }
        vm
    }

    /// Starts the guest. Its console goes to `target/vm-consoles/<name>.log` (and to stderr,
    /// prefixed with the name, with `PAGELESS_VM_ECHO=1`).
    pub fn start(config: &VmConfig) -> Vm {
        let args = config.command_line();
        eprintln!("[{}] starting: {}", config.name, shell_words(&args));
        let log_path = console_log_path(&config.name);
        eprintln!("[{}] console: {}", config.name, log_path.display());
        let log = std::fs::create_dir_all(log_path.parent().expect("a directory"))
            .and_then(|()| std::fs::File::create(&log_path))
            .map(|file| Arc::new(Mutex::new(file)))
            .ok();
        let echo = std::env::var_os("PAGELESS_VM_ECHO").is_some_and(|v| v == "1");
        let mut child = Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", args[0]));
        let console: Console = Arc::default();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let console = Arc::clone(&console);
            let name = config.name.clone();
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).split(b'\n') {
                    let Ok(line) = line else { break };
                    let line = String::from_utf8_lossy(&line).trim_end_matches('\r').to_string();
                    if echo {
                        eprintln!("[{name}] {line}");
                    }
                    if let Some(log) = &log {
                        use std::io::Write;
                        let _ = writeln!(log.lock().unwrap_or_else(|e| e.into_inner()), "{line}");
                    }
                    let (lines, changed) = &*console;
                    lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                    changed.notify_all();
                }
            });
        }
        let stdin = child.stdin.take();
        Vm { name: config.name.clone(), child, stdin, console, exited: None, log_path }
    }

    /// Types a line on the guest's serial console (its /init reads it from stdin).
    pub fn send_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write to the console");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the guest (and QEMU) printed so far.
    pub fn console(&self) -> String {
        self.console.0.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
    }

    /// Waits for a console line containing `needle`; returns that line.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        self.wait_for_nth(needle, 1, timeout)
    }

    /// Waits for the `n`th console line containing `needle`.
    pub fn wait_for_nth(&mut self, needle: &str, n: usize, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let (lines, changed) = &*Arc::clone(&self.console);
        let mut guard = lines.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(line) = guard.iter().filter(|l| l.contains(needle)).nth(n - 1) {
                return Ok(line.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "[{}] no console line with {needle:?} (#{n}) within {timeout:?}; the whole console is in {}; its last lines:\n{}",
                    self.name,
                    self.log_path.display(),
                    tail(&guard, 60)
                ));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
                drop(guard);
                // Let the reader threads drain what is left.
                std::thread::sleep(Duration::from_millis(200));
                let lines = lines.lock().unwrap_or_else(|e| e.into_inner());
                return lines.iter().filter(|l| l.contains(needle)).nth(n - 1).cloned().ok_or_else(|| {
                    format!("[{}] QEMU exited ({status}) before printing {needle:?} (#{n})", self.name)
                });
            }
            let wait = (deadline - now).min(Duration::from_millis(250));
            guard = changed.wait_timeout(guard, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Waits for QEMU to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                self.exited = Some(status);
                std::thread::sleep(Duration::from_millis(200));
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("[{}] QEMU still running after {timeout:?}", self.name))
    }

    /// Whether QEMU is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.exited.is_none() {
            self.kill();
        }
    }
}

/// `target/vm-consoles/<name>.log`, the name made file-safe.
fn console_log_path(name: &str) -> PathBuf {
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    crate::repo_root().join("target/vm-consoles").join(format!("{safe}.log"))
}

/// The last `n` lines of a console, for error messages.
fn tail(lines: &[String], n: usize) -> String {
    if lines.is_empty() {
        return "(nothing: the guest printed no line)".into();
    }
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A command line as one could paste it into a shell.
pub fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
