//! What a process uses, from /proc: CPU time, threads, open files, anonymous memory.

use std::time::{Duration, Instant};

/// One look at a process.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub at: Instant,
    /// User + system CPU time so far.
    pub cpu: Duration,
    pub threads: usize,
    pub open_fds: usize,
    /// Anonymous resident memory (heap, stacks): not the VM's memory the process maps.
    pub rss_anon_kib: u64,
}

impl Usage {
    pub fn of(pid: u32) -> Usage {
        let at = Instant::now();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
        // `pid (comm) state …`: utime and stime are fields 14 and 15, the 12th and 13th after
        // the state.
        let fields: Vec<&str> =
            stat.rsplit_once(')').expect("stat has (comm)").1.split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        let per_second =
            nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().expect("CLK_TCK") as u64;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
        };
        Usage {
            at,
            cpu: Duration::from_millis(ticks * 1000 / per_second),
            threads: field("Threads:") as usize,
            open_fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0),
            rss_anon_kib: field("RssAnon:"),
        }
    }

    /// The share of one CPU used between `earlier` and `self`.
    pub fn cpu_share_since(&self, earlier: &Usage) -> f64 {
        (self.cpu.saturating_sub(earlier.cpu)).as_secs_f64() / (self.at - earlier.at).as_secs_f64()
    }
}

/// Raises this process's soft open file limit to its hard limit (tests that open thousands of
/// connections); returns it.
pub fn raise_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    hard
}
