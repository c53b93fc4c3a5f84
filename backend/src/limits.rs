//! The owner's limits: open files, control clients, relayed device connections and the HELLO
//! deadline, and the two tools that keep an owner at a limit cheap: a log line limit (one line
//! per burst, not one per event) and an exponential back-off for failing accept() calls.
//!
//! The only other rate limit in the owner, `stopping::ReportSchedule`, is a fixed
//! schedule for the stop wait's reports; these are for events that come in bursts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// `pageless serve --max-clients`: control connections held at once (waiting for HELLO or
/// greeted).
pub const DEFAULT_MAX_CLIENTS: usize = 1024;
/// `pageless serve --max-device-connections`: relayed vhost-user connections at once, over
/// all devices.
pub const DEFAULT_MAX_DEVICE_CONNECTIONS: usize = 256;
/// `pageless serve --hello-timeout`, in seconds.
pub const DEFAULT_HELLO_TIMEOUT_SECS: u64 = 5;

/// Files the owner keeps for itself beyond its connections: the memory file and its
/// duplicates in flight, listeners, signalfd, /proc reads for STATUS.
pub const RESERVED_FDS: u64 = 64;
/// Files one control client holds: its socket (a GET_MEMORY duplicate comes from the reserve).
pub const FDS_PER_CLIENT: u64 = 1;
/// Files one relayed connection holds: both sockets, a duplicate of each for the reply
/// direction, and room for the fds of a memory message in flight.
pub const FDS_PER_DEVICE_CONNECTION: u64 = 8;

/// How often at most one kind of refusal or error is logged.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// How many connections the owner takes at once, and how long a control client may take to say
/// HELLO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitOptions {
    /// Most control connections held at once (`--max-clients`); at least 1.
    pub max_clients: usize,
    /// Most relayed vhost-user connections at once, over all devices
    /// (`--max-device-connections`).
    pub max_device_connections: usize,
    /// How long a control client may take from connecting to completing HELLO
    /// (`--hello-timeout`); it is then told so and closed.
    pub hello_timeout: Duration,
}

impl Default for LimitOptions {
    fn default() -> Self {
        LimitOptions {
            max_clients: DEFAULT_MAX_CLIENTS,
            max_device_connections: DEFAULT_MAX_DEVICE_CONNECTIONS,
            hello_timeout: Duration::from_secs(DEFAULT_HELLO_TIMEOUT_SECS),
        }
    }
}

/// RLIMIT_NOFILE before and after [`raise_file_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLimit {
    /// The soft limit before, in open files.
    pub was: u64,
    /// The soft limit now, in open files: the hard limit once raised.
    pub soft: u64,
    /// The hard limit, in open files; only root (`ulimit -Hn`, a unit's `LimitNOFILE=`) can raise it.
    pub hard: u64,
}

/// Raises the soft limit of open files to the hard limit (the soft one is only a default that
/// protects programs using select(); the owner uses poll).
pub fn raise_file_limit() -> nix::Result<FileLimit> {
    let (was, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if was < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(FileLimit { was, soft, hard })
}

/// The connection caps that fit the file limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Control connections the owner accepts at once; at least 1.
    pub clients: usize,
    /// Relayed vhost-user connections at once, over all devices; 0 without devices.
    pub device_connections: usize,
}

impl Caps {
    /// Fits the asked caps into `file_limit` open files of which `in_use` are open already;
    /// devices get their share first (QEMU cannot run without them), without `devices` none.
    /// Returns the caps and, when they are lower than asked, how many files would be needed.
    pub fn fit(options: &LimitOptions, file_limit: u64, in_use: u64, devices: bool) -> (Caps, Option<u64>) {
        let want_devices = if devices { options.max_device_connections as u64 } else { 0 };
        let want = RESERVED_FDS
            .saturating_add(in_use)
            .saturating_add(want_devices.saturating_mul(FDS_PER_DEVICE_CONNECTION))
            .saturating_add((options.max_clients as u64).saturating_mul(FDS_PER_CLIENT));
        let mut room = file_limit.saturating_sub(in_use).saturating_sub(RESERVED_FDS);
        // Half the room at most for devices when it is short, so that control clients (QEMU,
        // `pageless status`) always have some.
        let device_room = if want <= file_limit { room } else { room / 2 };
        let device_connections = want_devices.min(device_room / FDS_PER_DEVICE_CONNECTION);
        room -= device_connections * FDS_PER_DEVICE_CONNECTION;
        let clients = (options.max_clients as u64).min(room / FDS_PER_CLIENT).max(1);
        let caps = Caps {
            clients: usize::try_from(clients).unwrap_or(usize::MAX),
            device_connections: usize::try_from(device_connections).unwrap_or(usize::MAX),
        };
        (caps, (want > file_limit).then_some(want))
    }
}

/// A counted set of slots (connections); a [`Slot`] gives its place back when dropped.
#[derive(Clone, Debug)]
pub struct Slots {
    used: Arc<AtomicUsize>,
    cap: usize,
}

/// One taken place of [`Slots`].
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Slots {
    /// A set of `cap` places, none taken.
    pub fn new(cap: usize) -> Slots {
        Slots { used: Arc::new(AtomicUsize::new(0)), cap }
    }

    /// How many places there are.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// How many places are taken now (other threads may take or give back places at any
    /// time).
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// A place, unless all `cap` are taken.
    pub fn try_take(&self) -> Option<Slot> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| (used < self.cap).then_some(used + 1))
            .ok()
            .map(|_| Slot(Arc::clone(&self.used)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// At most one log line per `every` for one kind of event: the first event of a burst is
/// logged at once, the rest of the burst only counted, and the next logged line says how many
/// were not.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    last: Option<Instant>,
    unlogged: u64,
}

impl LogLimit {
    /// At most one line per `every`; the first event is always logged.
    pub fn new(every: Duration) -> LogLimit {
        LogLimit { every, last: None, unlogged: 0 }
    }

    /// Counts an event at `now`; `Some(n)` if it is to be logged, `n` being the events since
    /// the last logged one that were not.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

/// `" (and 12 more since the last such line)"`, or nothing.
pub fn and_more(unlogged: u64) -> String {
    if unlogged == 0 {
        String::new()
    } else {
        format!(" (and {unlogged} more since the last such line)")
    }
}

/// Exponential back-off after failures: `min`, doubling up to `max`, reset by a success.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    delay: Option<Duration>,
    until: Option<Instant>,
}

impl Backoff {
    /// No delay until the first failure, which waits `min`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, delay: None, until: None }
    }

    /// A failure at `now`: waits the next delay; returns it.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let delay = self.delay.map_or(self.min, |d| (d * 2).min(self.max));
        self.delay = Some(delay);
        self.until = Some(now + delay);
        delay
    }

    /// A success: no wait now, and the next failure waits `min` again.
    pub fn succeeded(&mut self) {
        self.delay = None;
        self.until = None;
    }

    /// How long to wait still at `now`; `None` once it may try again.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.until.and_then(|until| until.checked_duration_since(now)).filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_burst_and_the_count_of_the_rest() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut limit = LogLimit::new(Duration::from_secs(10));
        assert_eq!(limit.admit(at(0)), Some(0));
        for ms in 1..2000 {
            assert_eq!(limit.admit(at(ms)), None);
        }
        assert_eq!(limit.admit(at(10_000)), Some(1999));
        assert_eq!(limit.admit(at(10_001)), None);
        assert_eq!(limit.admit(at(30_000)), Some(1));
        assert_eq!(and_more(0), "");
        assert_eq!(and_more(3), " (and 3 more since the last such line)");
    }

    #[test]
    fn backoff_doubles_up_to_the_max_and_resets() {
        let now = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        assert_eq!(backoff.remaining(now), None);
        let delays: Vec<_> = (0..9).map(|_| backoff.failed(now).as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(backoff.remaining(now), Some(Duration::from_secs(1)));
        assert_eq!(backoff.remaining(now + Duration::from_secs(1)), None);
        backoff.succeeded();
        assert_eq!(backoff.failed(now).as_millis(), 10);
    }

    #[test]
    fn slots_are_given_back() {
        let slots = Slots::new(2);
        let a = slots.try_take().unwrap();
        let b = slots.try_take().unwrap();
        assert!(slots.try_take().is_none());
        assert_eq!(slots.in_use(), 2);
        drop(a);
        let c = slots.try_take().unwrap();
        drop((b, c));
        assert_eq!(slots.in_use(), 0);
    }

    #[test]
    fn caps_fit_the_file_limit() {
        let options = LimitOptions::default();
        // Plenty of files: as asked.
        let (caps, short) = Caps::fit(&options, 1 << 20, 20, true);
        assert_eq!(caps, Caps { clients: 1024, device_connections: 256 });
        assert_eq!(short, None);
        // Devices are not counted without --vhost-user.
        let (caps, short) = Caps::fit(&options, 1200, 20, false);
        assert_eq!(caps, Caps { clients: 1024, device_connections: 0 });
        assert_eq!(short, None);
        // `ulimit -n 1024`: fewer clients, and it says how many files would do.
        let (caps, short) = Caps::fit(&options, 1024, 20, false);
        assert_eq!(caps, Caps { clients: 1024 - 20 - 64, device_connections: 0 });
        assert_eq!(short, Some(64 + 20 + 1024));
        // Short with devices: they get at most half the room.
        let (caps, short) = Caps::fit(&options, 1024, 20, true);
        assert_eq!(caps.device_connections, (1024 - 84) / 2 / 8);
        assert_eq!(caps.clients, 1024 - 84 - caps.device_connections * 8);
        assert_eq!(short, Some(64 + 20 + 256 * 8 + 1024));
        // Nothing left: still one client, so that status can answer.
        assert_eq!(Caps::fit(&options, 10, 20, true).0, Caps { clients: 1, device_connections: 0 });
    }
}
