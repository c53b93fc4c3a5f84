//! QMP for tests and benchmarks: pageless's own client ([`pageless::qmp::Qmp`]), connected
//! while QEMU is still starting, and a migration wait.

use std::path::Path;
use std::time::{Duration, Instant};

pub use pageless::qmp::Qmp;
use pageless::qmp::QmpError;
use serde_json::{json, Value};

/// Connects to QEMU's monitor at `socket`, retrying until QEMU listens or `timeout` passes.
pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match Qmp::connect(socket) {
            Ok(qmp) => return Ok(qmp),
            Err(QmpError::Connect { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Polls `query-migrate` until the migration completes (its final `query-migrate` answer),
/// fails, or `timeout` passes.
pub fn wait_migration(qmp: &mut Qmp, timeout: Duration) -> Result<Value, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let info = qmp.execute("query-migrate", json!({})).map_err(|e| e.to_string())?;
        match info.get("status").and_then(Value::as_str) {
            Some("completed") => return Ok(info),
            Some(status @ ("failed" | "cancelled")) => return Err(format!("migration {status}: {info}")),
            _ if Instant::now() >= deadline => {
                return Err(format!("migration not done after {timeout:?}: {info}"))
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for `-incoming tcp:…`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}
