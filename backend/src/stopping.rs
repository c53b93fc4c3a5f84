//! A stopping owner: why and since when it stops, what still holds the VM's memory, and when
//! to say so in the log.
//!
//! The owner never releases the memory (removes the file, exits) while a process it handed the
//! memory to still holds it: VFIO type1 keeps IOMMU mappings of pagelessfs's PFN-only memory
//! without a reference to it, so a device could still reach memory the pool gave to another
//! VM. `--consumer-timeout` only decides when the wait becomes a warning.

use std::time::{Duration, Instant};

use pageless_protocol::control::{MemoryHolder, StoppingStatus};

use crate::clock::unix_now;

/// How often a stopping owner repeats, past its consumer timeout, who keeps the memory.
pub const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Why and since when the owner stops, and what it last saw holding the memory.
#[derive(Clone, Debug)]
pub(crate) struct StopState {
    pub since: u64,
    pub started: Instant,
    pub reason: String,
    pub timeout: Duration,
    pub holders: Vec<MemoryHolder>,
}

impl StopState {
    pub fn new(reason: &str, timeout: Duration) -> StopState {
        StopState {
            since: unix_now(),
            started: Instant::now(),
            reason: reason.into(),
            timeout,
            holders: Vec::new(),
        }
    }

    /// What STATUS reports.
    pub fn status(&self) -> StoppingStatus {
        StoppingStatus {
            since: self.since,
            reason: self.reason.clone(),
            consumer_timeout: self.timeout.as_secs(),
            past_timeout: self.started.elapsed() >= self.timeout,
            waiting_for: self.holders.clone(),
        }
    }

    /// Why requests for the memory are refused.
    pub fn refusal(&self) -> String {
        format!(
            "the owner is stopping ({}, {} s ago): it hands out no memory and takes no writes any more",
            self.reason,
            self.started.elapsed().as_secs()
        )
    }
}

/// What the wait loop should log now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Report {
    /// The wait begins: who holds the memory.
    Waiting,
    /// The consumer timeout has passed (and then every [`REPORT_EVERY`]): who still holds it.
    StillHeld,
}

/// Rate limit of the wait's log lines: once at the start, once at the timeout, then every
/// `every`.
#[derive(Debug)]
pub(crate) struct ReportSchedule {
    start: Instant,
    timeout: Duration,
    every: Duration,
    next: Option<Instant>,
}

impl ReportSchedule {
    pub fn new(start: Instant, timeout: Duration, every: Duration) -> ReportSchedule {
        ReportSchedule { start, timeout, every, next: None }
    }

    /// What to log at `now`, if anything.
    pub fn due(&mut self, now: Instant) -> Option<Report> {
        match self.next {
            None => {
                self.next = Some(self.start + self.timeout);
                Some(Report::Waiting)
            }
            Some(next) if now >= next => {
                self.next = Some(now.max(next) + self.every);
                Some(Report::StillHeld)
            }
            Some(_) => None,
        }
    }
}

/// `pid 12 (qemu): maps the memory; device disk0 …` for log lines.
pub(crate) fn describe(holders: &[MemoryHolder]) -> String {
    holders
        .iter()
        .map(|h| match h.pid {
            Some(pid) => format!("pid {pid} ({})", h.what),
            None => h.what.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_at_start_at_the_timeout_then_every_minute() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut schedule = ReportSchedule::new(start, Duration::from_secs(5), REPORT_EVERY);
        assert_eq!(schedule.due(at(0)), Some(Report::Waiting));
        assert_eq!(schedule.due(at(1)), None);
        assert_eq!(schedule.due(at(4)), None);
        assert_eq!(schedule.due(at(5)), Some(Report::StillHeld));
        assert_eq!(schedule.due(at(6)), None);
        assert_eq!(schedule.due(at(64)), None);
        assert_eq!(schedule.due(at(65)), Some(Report::StillHeld));
        assert_eq!(schedule.due(at(100)), None);
        // A late look (the loop was busy) does not make it report twice in a row.
        assert_eq!(schedule.due(at(200)), Some(Report::StillHeld));
        assert_eq!(schedule.due(at(201)), None);
        assert_eq!(schedule.due(at(260)), Some(Report::StillHeld));
    }

    #[test]
    fn status_says_why_and_whether_past_the_timeout() {
        let mut state = StopState::new("signal SIGTERM", Duration::ZERO);
        state.holders = vec![MemoryHolder { pid: Some(42), what: "qemu: maps the memory".into() }];
        let status = state.status();
        assert_eq!(status.reason, "signal SIGTERM");
        assert!(status.past_timeout);
        assert_eq!(status.waiting_for[0].pid, Some(42));
        assert!(!StopState::new("STOP request", Duration::from_secs(60)).status().past_timeout);
        assert!(state.refusal().starts_with("the owner is stopping (signal SIGTERM"), "{}", state.refusal());
        assert_eq!(describe(&state.holders), "pid 42 (qemu: maps the memory)");
    }
}
