//! `pageless serve` processes for tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pageless_protocol::control::{ControlClient, VmStatus};

use crate::bins;

/// A running owner. Sent SIGKILL when dropped, unless it already stopped.
pub struct Owner {
    pub vm: String,
    pub run_dir: PathBuf,
    pub log_path: PathBuf,
    child: Child,
}

impl Owner {
    /// Starts `pageless serve --vm VM --run-dir RUN_DIR ARGS…` and waits until it answers.
    pub fn start(run_dir: &Path, vm: &str, args: &[&str]) -> Owner {
        Owner::try_start(run_dir, vm, args)
            .unwrap_or_else(|log| panic!("pageless serve failed to start:\n{log}"))
    }

    /// Like [`Owner::start`]; on failure returns the owner's log.
    pub fn try_start(run_dir: &Path, vm: &str, args: &[&str]) -> Result<Owner, String> {
        Owner::try_start_with(run_dir, vm, args, |_| {})
    }

    /// Like [`Owner::start`], with `configure` applied to the command last (environment,
    /// resource limits in a `pre_exec`, …).
    pub fn start_with(
        run_dir: &Path,
        vm: &str,
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Owner {
        Owner::try_start_with(run_dir, vm, args, configure)
            .unwrap_or_else(|log| panic!("pageless serve failed to start:\n{log}"))
    }

    /// Like [`Owner::start_with`]; on failure returns the owner's log.
    pub fn try_start_with(
        run_dir: &Path,
        vm: &str,
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Result<Owner, String> {
        std::fs::create_dir_all(run_dir).expect("create the run dir");
        let log_path = run_dir.with_file_name(format!(
            "{}-{vm}-owner.log",
            run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        ));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("owner log");
        let mut command = Command::new(bins::pageless());
        command
            .args(["serve", "--vm", vm, "--run-dir"])
            .arg(run_dir)
            .args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        configure(&mut command);
        let child = command.spawn().expect("start pageless serve");
        let mut owner = Owner { vm: vm.into(), run_dir: run_dir.into(), log_path, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if owner.connect().is_ok() {
                return Ok(owner);
            }
            if let Ok(Some(status)) = owner.child.try_wait() {
                return Err(format!("exited with {status}:\n{}", owner.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("not answering after 30 s:\n{}", owner.log()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.run_dir.join(format!("{}.sock", self.vm))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn connect(&self) -> Result<ControlClient, pageless_protocol::control::ControlError> {
        ControlClient::connect(&self.socket(), "test")
    }

    pub fn status(&self) -> VmStatus {
        self.connect().and_then(|c| c.status()).expect("owner status")
    }

    /// Offsets of `pattern` in the VM's memory, through the owner's own mapping.
    pub fn find(&self, pattern: &str) -> Vec<u64> {
        self.connect().and_then(|c| c.find(pattern.as_bytes())).expect("owner find")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether the owner's log shows `text` within 10 s: the owner logs from its own threads, so
    /// a line can land just after the client saw the effect.
    pub fn log_shows(&self, text: &str) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.log().contains(text) {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        true
    }

    /// Open file descriptors of the owner process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map(|d| d.count()).unwrap_or(0)
    }

    /// The owner's CPU time, its threads and its memory, from /proc.
    pub fn usage(&self) -> crate::procfs::Usage {
        crate::procfs::Usage::of(self.pid())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` to the owner, without waiting.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal)
            .expect("signal the owner");
    }

    /// Waits up to `timeout` for the owner to exit; `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("owner did not stop on SIGTERM:\n{}", self.log()))
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill();
        }
    }
}
