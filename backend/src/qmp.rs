//! A minimal QMP (QEMU Machine Protocol) client: one JSON object per line over a Unix socket.
//!
//! [`Qmp::connect`] reads QEMU's greeting and negotiates capabilities; [`Qmp::execute`] sends a
//! command and returns its `return` value, or its `error` as [`QmpError::Command`]. Events that
//! arrive meanwhile are kept ([`Qmp::events`]) with their timestamps: `pageless update` reads
//! the VM's pause (`STOP`) and resume (`RESUME`) times from them.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use thiserror::Error;

/// How long a command may take to answer. QMP commands used here answer at once (a migration
/// runs in the background and is polled).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long QEMU may take to greet a new client.
const GREETING_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest line accepted from QEMU (a `query-migrate` reply is a few hundred bytes).
const MAX_LINE: u64 = 1 << 20;

/// Why talking to QEMU's monitor failed.
#[derive(Debug, Error)]
pub enum QmpError {
    /// No monitor listens on the socket (QEMU is gone, or was started without it).
    #[error("cannot connect to QEMU's QMP monitor {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// connect's error.
        source: std::io::Error,
    },
    /// Reading or writing the socket failed, or QEMU closed it.
    #[error("QEMU's QMP monitor {path}: {what}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What happened.
        what: String,
    },
    /// QEMU answered something that is not QMP.
    #[error("QEMU's QMP monitor {path} sent {line:?}: not QMP")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// The line (cut to 200 bytes).
        line: String,
    },
    /// QEMU refused the command.
    #[error("QEMU refused `{command}`: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's `error.desc`.
        desc: String,
    },
}

/// A QMP event QEMU sent, with QEMU's timestamp.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// `STOP`, `RESUME`, `MIGRATION`, …
    pub name: String,
    /// Unix time in seconds (with microseconds) when QEMU emitted it.
    pub time: f64,
    /// Its `data`, or null.
    pub data: Value,
}

/// A connected, negotiated QMP session.
pub struct Qmp {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    events: Vec<Event>,
}

impl Qmp {
    /// Connects to the monitor at `path`, reads the greeting and leaves negotiation mode.
    pub fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path)
            .map_err(|source| QmpError::Connect { path: path.to_path_buf(), source })?;
        let io = |e: std::io::Error| QmpError::Io { path: path.to_path_buf(), what: e.to_string() };
        // QEMU's socket monitor serves one client at a time: others wait, without a greeting,
        // until it disconnects.
        stream.set_read_timeout(Some(GREETING_TIMEOUT)).map_err(io)?;
        let reader = BufReader::new(stream.try_clone().map_err(io)?);
        let mut qmp = Qmp { path: path.to_path_buf(), writer: stream, reader, events: Vec::new() };
        let greeting = match qmp.read_message() {
            Ok(greeting) => greeting,
            Err(QmpError::Io { .. }) => {
                return Err(qmp.io_error(&format!(
                    "no greeting within {} s: another client is connected to this monitor (QEMU serves one at a time); disconnect it",
                    GREETING_TIMEOUT.as_secs()
                )))
            }
            Err(e) => return Err(e),
        };
        if greeting.get("QMP").is_none() {
            return Err(qmp.protocol_error(&greeting.to_string()));
        }
        qmp.writer.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments` (an object, or null for none); returns its `return`.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if !arguments.is_null() {
            request["arguments"] = arguments;
        }
        let line = format!("{request}\n");
        self.writer.write_all(line.as_bytes()).map_err(|e| self.io_error(&format!("send {command}: {e}")))?;
        let message = self.read_message()?;
        if let Some(value) = message.get("return") {
            return Ok(value.clone());
        }
        if let Some(error) = message.get("error") {
            let desc = error.get("desc").and_then(Value::as_str).unwrap_or("(no description)");
            return Err(QmpError::Command { command: command.into(), desc: desc.into() });
        }
        Err(self.protocol_error(&message.to_string()))
    }

    /// Asks QEMU to exit (`quit`). QEMU documents that it may exit before its reply reaches
    /// the client ("a premature EOF would not be unexpected"), so a monitor that closes
    /// instead of answering counts as done; the caller waits for the process itself.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", Value::Null) {
            Ok(_) | Err(QmpError::Io { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The events received so far, oldest first.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The time of the last event called `name`, if one came.
    pub fn last_event_time(&self, name: &str) -> Option<f64> {
        self.events.iter().rev().find(|e| e.name == name).map(|e| e.time)
    }

    /// Waits until QEMU has sent an event called `name` (now or before); its time.
    pub fn wait_event(&mut self, name: &str) -> Result<f64, QmpError> {
        loop {
            if let Some(time) = self.last_event_time(name) {
                return Ok(time);
            }
            let value = self.read_value()?;
            match value.get("event").and_then(Value::as_str) {
                Some(event) => self.events.push(parse_event(event, &value)),
                None => return Err(self.protocol_error(&value.to_string())),
            }
        }
    }

    /// The next message that is not an event (events are stored).
    fn read_message(&mut self) -> Result<Value, QmpError> {
        loop {
            let value = self.read_value()?;
            if let Some(name) = value.get("event").and_then(Value::as_str) {
                self.events.push(parse_event(name, &value));
                continue;
            }
            return Ok(value);
        }
    }

    /// The next message, event or not.
    fn read_value(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let read = std::io::Read::take(&mut self.reader, MAX_LINE)
            .read_line(&mut line)
            .map_err(|e| self.io_error(&format!("read: {e}")))?;
        if read == 0 {
            return Err(self.io_error("QEMU closed the connection"));
        }
        if !line.ends_with('\n') && read as u64 >= MAX_LINE {
            return Err(self.protocol_error(&line));
        }
        serde_json::from_str(line.trim()).map_err(|_| self.protocol_error(&line))
    }

    fn io_error(&self, what: &str) -> QmpError {
        QmpError::Io { path: self.path.clone(), what: what.into() }
    }

    fn protocol_error(&self, line: &str) -> QmpError {
        let mut line = line.trim().to_string();
        if line.len() > 200 {
            let mut cut = 200;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        QmpError::Protocol { path: self.path.clone(), line }
    }
}

fn parse_event(name: &str, value: &Value) -> Event {
    let stamp = &value["timestamp"];
    let seconds = stamp["seconds"].as_f64().unwrap_or(0.0);
    let micros = stamp["microseconds"].as_f64().unwrap_or(0.0);
    Event {
        name: name.into(),
        time: seconds + micros / 1e6,
        data: value.get("data").cloned().unwrap_or(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake QEMU: greets, answers qmp_capabilities, then for each request sends an event
    /// and a canned answer.
    fn fake_qemu(answers: Vec<&'static str>) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            writer.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n").unwrap();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"), "{line}");
            writer.write_all(b"{\"return\": {}}\n").unwrap();
            for answer in answers {
                line.clear();
                if reader.read_line(&mut line).unwrap() == 0 {
                    return;
                }
                writer
                    .write_all(b"{\"timestamp\": {\"seconds\": 100, \"microseconds\": 250000}, \"event\": \"STOP\"}\n")
                    .unwrap();
                writer.write_all(answer.as_bytes()).unwrap();
            }
        });
        (dir, path, handle)
    }

    #[test]
    fn returns_values_errors_and_keeps_events() {
        let (_dir, path, handle) = fake_qemu(vec![
            "{\"return\": {\"status\": \"running\"}}\n",
            "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no such thing\"}}\n",
            "not json\n",
        ]);
        let mut qmp = Qmp::connect(&path).unwrap();
        assert_eq!(qmp.execute("query-status", Value::Null).unwrap()["status"], "running");
        assert_eq!(qmp.last_event_time("STOP"), Some(100.25));
        let err = qmp.execute("thing", json!({"a": 1})).unwrap_err();
        assert_eq!(err.to_string(), "QEMU refused `thing`: no such thing");
        assert!(matches!(qmp.execute("x", Value::Null), Err(QmpError::Protocol { .. })));
        assert_eq!(qmp.events().len(), 3);
        handle.join().unwrap();
    }

    #[test]
    fn waits_for_an_event() {
        let (_dir, path, handle) = fake_qemu(vec![
            "{\"timestamp\": {\"seconds\": 101, \"microseconds\": 0}, \"event\": \"RESUME\"}\n",
        ]);
        let mut qmp = Qmp::connect(&path).unwrap();
        // The fake answers the next request with STOP and then only a RESUME event.
        qmp.writer.write_all(b"{\"execute\": \"cont\"}\n").unwrap();
        assert_eq!(qmp.wait_event("RESUME").unwrap(), 101.0);
        assert_eq!(qmp.wait_event("STOP").unwrap(), 100.25);
        handle.join().unwrap();
    }

    #[test]
    fn no_monitor_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Qmp::connect(&dir.path().join("none.qmp")).err().unwrap();
        assert!(err.to_string().starts_with("cannot connect to QEMU's QMP monitor"), "{err}");
    }
}
