//! Accepting connections within the owner's limits ([`crate::limits`]).
//!
//! A control connection is held by the main loop, without a thread, until its first bytes
//! arrive; then a thread of its own reads HELLO (by the HELLO deadline) and serves it. At most
//! `--max-clients` control connections are held at once: when full, a new connection takes the
//! place of the oldest one that has sent nothing yet (that one is told why and closed), or, if
//! every place is a client that did say HELLO, the new one is refused. Connections that send
//! nothing within `--hello-timeout` are closed. Relayed device connections are capped by
//! `--max-device-connections`. A failing accept() (out of files, of memory) pauses accepting
//! with an exponential back-off instead of spinning. Every refusal is logged with the limit and
//! how to raise it, at most one line per kind per [`LOG_EVERY`].

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{error, warn};
use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};
use pageless_protocol::control::{code, error_reply};
use pageless_protocol::frame::send_message;

use crate::control_server;
use crate::limits::{and_more, Backoff, Caps, FileLimit, LogLimit, Slot, Slots, LOG_EVERY};
use crate::owner::Owner;
use crate::peer::Peer;
use crate::relay::{self, RelaySpec};

/// At most this many connections are accepted from one listener per wake-up, so that signals
/// and other sockets are not starved by a flood.
const ACCEPT_BATCH: usize = 64;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A control connection that has sent nothing yet.
struct Pending {
    sock: UnixStream,
    peer: Peer,
    since: Instant,
    slot: Slot,
}

/// One log limit per kind of refusal.
struct Logs {
    clients_full: LogLimit,
    evicted: LogLimit,
    hello_timeout: Arc<Mutex<LogLimit>>,
    refused_peer: LogLimit,
    accept_failed: LogLimit,
    devices_full: LogLimit,
}

/// The owner's connection limits and the control connections waiting for their first bytes.
pub(crate) struct Acceptor {
    vm: String,
    files: FileLimit,
    hello_timeout: Duration,
    clients: Slots,
    devices: Slots,
    pending: VecDeque<Pending>,
    backoff: Backoff,
    logs: Logs,
}

impl Acceptor {
    pub fn new(vm: &str, files: FileLimit, caps: Caps, hello_timeout: Duration) -> Acceptor {
        Acceptor {
            vm: vm.into(),
            files,
            hello_timeout,
            clients: Slots::new(caps.clients),
            devices: Slots::new(caps.device_connections),
            pending: VecDeque::new(),
            backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            logs: Logs {
                clients_full: LogLimit::new(LOG_EVERY),
                evicted: LogLimit::new(LOG_EVERY),
                hello_timeout: Arc::new(Mutex::new(LogLimit::new(LOG_EVERY))),
                refused_peer: LogLimit::new(LOG_EVERY),
                accept_failed: LogLimit::new(LOG_EVERY),
                devices_full: LogLimit::new(LOG_EVERY),
            },
        }
    }

    /// Whether accept() may be called now (not backing off after a failure).
    pub fn accepting(&self, now: Instant) -> bool {
        self.backoff.remaining(now).is_none()
    }

    /// How long the main loop may sleep before the acceptor has something to do by itself.
    pub fn next_wake(&self, now: Instant) -> Option<Duration> {
        let hello =
            self.pending.front().map(|p| (p.since + self.hello_timeout).saturating_duration_since(now));
        [hello, self.backoff.remaining(now)].into_iter().flatten().min()
    }

    /// The control connections waiting for their first bytes, in order.
    pub fn pending_fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.pending.iter().map(|p| p.sock.as_fd())
    }

    /// Closes the connections that sent nothing within `--hello-timeout`.
    pub fn expire(&mut self, now: Instant) {
        let mut expired = 0u64;
        while self
            .pending
            .front()
            .is_some_and(|p| now.saturating_duration_since(p.since) >= self.hello_timeout)
        {
            let pending = self.pending.pop_front().expect("checked above");
            refuse(&pending.sock, &self.hello_timeout_reason());
            expired += 1;
        }
        if expired > 0 {
            let logged = self.logs.hello_timeout.lock().unwrap_or_else(|e| e.into_inner()).admit(now);
            if let Some(unlogged) = logged {
                warn!(
                    "closed {expired} control connection(s) that sent no HELLO within {} s{}; raise --hello-timeout for slower clients",
                    self.hello_timeout.as_secs_f32(),
                    and_more(unlogged)
                );
            }
        }
    }

    /// Handles the pending connections that poll found ready (`ready[i]` for the i-th of
    /// [`Acceptor::pending_fds`]): those that closed are forgotten, those that sent something
    /// get a thread that reads their HELLO.
    pub fn pending_ready(&mut self, owner: &Arc<Owner>, ready: &[bool]) {
        if !ready.iter().any(|&r| r) {
            return;
        }
        let waiting = std::mem::take(&mut self.pending);
        for (pending, &ready) in waiting.into_iter().zip(ready.iter().chain(std::iter::repeat(&false))) {
            if !ready {
                self.pending.push_back(pending);
                continue;
            }
            match recv(pending.sock.as_raw_fd(), &mut [0u8; 1], MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
                Ok(0) => {} // It went away without a word: just close.
                Ok(_) => {
                    let Pending { sock, peer, since, slot } = pending;
                    let deadline = since + self.hello_timeout;
                    let log = Arc::clone(&self.logs.hello_timeout);
                    let reason = self.hello_timeout_reason();
                    spawn("control", owner, move |owner| {
                        control_server::handle(owner, sock, peer, deadline, &reason, &log);
                        drop(slot);
                    });
                }
                Err(Errno::EAGAIN | Errno::EINTR) => self.pending.push_back(pending),
                Err(_) => {} // Broken: close.
            }
        }
    }

    /// Accepts what waits on the control socket.
    pub fn accept_control(&mut self, owner: &Arc<Owner>, listener: &UnixListener) {
        for _ in 0..ACCEPT_BATCH {
            let sock = match listener.accept() {
                Ok((sock, _)) => sock,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Out of files: the oldest silent connection makes room, if there is one.
                    if is_out_of_files(&e) && self.evict_oldest() {
                        continue;
                    }
                    if self.accept_failed("the control socket", &e) {
                        return;
                    }
                    continue;
                }
            };
            self.backoff.succeeded();
            self.admit_control(owner, sock);
        }
    }

    fn admit_control(&mut self, owner: &Arc<Owner>, sock: UnixStream) {
        let now = Instant::now();
        let peer = match Peer::of(&sock) {
            Ok(peer) if owner.policy.allows(peer.uid) => peer,
            Ok(peer) => {
                let reason = format!(
                    "uid {} may not use VM {:?} (ask for --allow-uid {})",
                    peer.uid, owner.vm, peer.uid
                );
                // Logged before the reply, so the log has the line by the time the client
                // sees the refusal.
                if let Some(unlogged) = self.logs.refused_peer.admit(now) {
                    warn!(
                        "refused control client pid {} uid {}: not root, the owner or an --allow-uid user (add --allow-uid {} to let it in){}",
                        peer.pid,
                        peer.uid,
                        peer.uid,
                        and_more(unlogged)
                    );
                }
                refuse(&sock, &reason);
                return;
            }
            Err(e) => return warn!("control client without credentials, closing: {e}"),
        };
        if let Some(why) = owner.policy.apparmor_refusal(&peer, &sock) {
            warn!("refused control client: {why}");
            return refuse(&sock, &format!("VM {:?} is not yours: {why}", owner.vm));
        }
        if let Err(e) = sock.set_nonblocking(true) {
            return warn!(
                "control client pid {}: cannot make its socket non-blocking, closing: {e}",
                peer.pid
            );
        }
        let slot = match self.clients.try_take() {
            Some(slot) => slot,
            None if self.evict_oldest() => self.clients.try_take().expect("a place was just given back"),
            None => {
                let cap = self.clients.cap();
                if let Some(unlogged) = self.logs.clients_full.admit(now) {
                    warn!(
                        "refused control client pid {}: {cap} clients are connected, the most --max-clients {cap} allows{}; raise --max-clients (and the file limit, LimitNOFILE=/ulimit -n, now {}) to serve more",
                        peer.pid,
                        and_more(unlogged),
                        self.files.soft
                    );
                }
                refuse(
                    &sock,
                    &format!(
                        "the owner of VM {:?} serves its maximum of {cap} control clients (--max-clients {cap}); try again later",
                        self.vm
                    ),
                );
                return;
            }
        };
        self.pending.push_back(Pending { sock, peer, since: now, slot });
    }

    /// Closes the oldest control connection that has sent nothing yet, to make room for a new
    /// one; false if there is none.
    fn evict_oldest(&mut self) -> bool {
        let Some(oldest) = self.pending.pop_front() else { return false };
        let cap = self.clients.cap();
        refuse(
            &oldest.sock,
            &format!(
                "closed: the owner of VM {:?} is at its maximum of {cap} control clients (--max-clients) and this connection had not sent HELLO",
                self.vm
            ),
        );
        if let Some(unlogged) = self.logs.evicted.admit(Instant::now()) {
            warn!(
                "the control socket is full ({cap} connections, --max-clients {cap}, file limit {}): closed the oldest that had sent no HELLO (pid {}, {:.1} s silent) to take a new one{}; raise --max-clients and the file limit (LimitNOFILE=/ulimit -n) if these clients are legitimate",
                self.files.soft,
                oldest.peer.pid,
                oldest.since.elapsed().as_secs_f32(),
                and_more(unlogged)
            );
        }
        true
    }

    /// Accepts what waits on device `spec`'s relay socket; each connection is relayed on a
    /// thread of its own.
    pub fn accept_device(&mut self, owner: &Arc<Owner>, spec: &RelaySpec, listener: &UnixListener) {
        for _ in 0..ACCEPT_BATCH {
            let sock = match listener.accept() {
                Ok((sock, _)) => sock,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    if self.accept_failed(&format!("device {}'s socket", spec.name), &e) {
                        return;
                    }
                    continue;
                }
            };
            self.backoff.succeeded();
            let Some(slot) = self.devices.try_take() else {
                let cap = self.devices.cap();
                if let Some(unlogged) = self.logs.devices_full.admit(Instant::now()) {
                    warn!(
                        "device {}: refused a connection: {cap} relayed device connections are open, the most --max-device-connections {cap} allows{}; raise --max-device-connections (and the file limit, LimitNOFILE=/ulimit -n, now {}: each takes up to {} files)",
                        spec.name,
                        and_more(unlogged),
                        self.files.soft,
                        crate::limits::FDS_PER_DEVICE_CONNECTION
                    );
                }
                continue; // Closing it is the refusal: vhost-user has no way to say why.
            };
            let spec = spec.clone();
            spawn("relay", owner, move |owner| {
                relay::relay(owner, &spec, sock);
                drop(slot);
            });
        }
    }

    /// A failed accept(): backs off for resource shortages and unknown errors (true: stop
    /// accepting for now); false for errors that concern one connection only.
    fn accept_failed(&mut self, what: &str, e: &std::io::Error) -> bool {
        if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO)) {
            return false;
        }
        let delay = self.backoff.failed(Instant::now());
        if let Some(unlogged) = self.logs.accept_failed.admit(Instant::now()) {
            let hint = if is_out_of_files(e) {
                format!(
                    "the owner is out of open files (limit {}): raise the file limit (systemd LimitNOFILE=, ulimit -Hn) or lower --max-clients/--max-device-connections",
                    self.files.soft
                )
            } else {
                "the system is short of memory or socket buffers".to_string()
            };
            warn!("accept on {what} failed: {e}; {hint}; accepting again in {delay:?}{}", and_more(unlogged));
        }
        true
    }

    fn hello_timeout_reason(&self) -> String {
        format!("no HELLO within {} s (--hello-timeout): closing", self.hello_timeout.as_secs_f32())
    }
}

fn is_out_of_files(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Tells a control client why it is closed, without waiting for it; closing is up to the
/// caller (dropping the socket).
fn refuse(sock: &UnixStream, reason: &str) {
    if sock.set_nonblocking(true).is_ok() {
        let _ = send_message(sock, &error_reply(code::HELLO, reason));
    }
}

/// Runs `work` on a thread of its own.
fn spawn(what: &str, owner: &Arc<Owner>, work: impl FnOnce(&Arc<Owner>) + Send + 'static) {
    let owner = Arc::clone(owner);
    if let Err(e) = std::thread::Builder::new().name(what.into()).spawn(move || work(&owner)) {
        error!("cannot start a {what} thread: {e}; closing its connection");
    }
}
