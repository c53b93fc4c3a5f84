//! Real vhost-user device backends for tests: qemu-storage-daemon (vhost-user-blk) and
//! vhost-device-rng (installed by scripts/setup.sh under .cache/tools).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::repo_root;

/// A backend process listening on a Unix socket. Killed when dropped.
pub struct Backend {
    pub name: String,
    pub socket: PathBuf,
    pub log_path: PathBuf,
    child: Child,
}

impl Backend {
    fn start(name: &str, socket: &Path, command: &mut Command) -> Backend {
        let _ = std::fs::remove_file(socket);
        let log_path = socket.with_extension("log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("backend log");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let mut backend = Backend { name: name.into(), socket: socket.into(), log_path, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if let Ok(Some(status)) = backend.child.try_wait() {
                panic!("{name} exited with {status}:\n{}", backend.log());
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not create {}:\n{}",
                socket.display(),
                backend.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        backend
    }

    /// qemu-storage-daemon exporting `image` as vhost-user-blk on `socket` (page cache on:
    /// O_DIRECT cannot work on PFN-only memory).
    pub fn storage_daemon(image: &Path, socket: &Path) -> Backend {
        let mut command = Command::new("qemu-storage-daemon");
        command
            .arg("--blockdev")
            .arg(format!("driver=file,node-name=file0,filename={},cache.direct=off", image.display()))
            .args(["--blockdev", "driver=raw,node-name=disk0,file=file0", "--export"])
            .arg(format!(
                "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable=on",
                socket.display()
            ));
        Backend::start("qemu-storage-daemon", socket, &mut command)
    }

    /// vhost-device-rng (rust-vmm), listening on `<prefix>0` (it numbers its sockets).
    pub fn rng(prefix: &Path) -> Backend {
        let mut command = Command::new(tool("vhost-device-rng"));
        command.arg("--socket-path").arg(prefix);
        let mut socket = prefix.as_os_str().to_owned();
        socket.push("0");
        Backend::start("vhost-device-rng", Path::new(&socket), &mut command)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a raw disk image of `size` bytes whose first line is a fresh random token; returns
/// the token.
pub fn disk_image_with_token(path: &Path, size: usize) -> String {
    let token = format!("HOST-DISK-TOKEN-{}", crate::random_token());
    let mut disk = format!("{token}\n").into_bytes();
    disk.resize(size, 0);
    std::fs::write(path, &disk).expect("write the disk image");
    token
}

/// The first line of 512-byte sector `n` of a disk image, as the host reads it now.
pub fn image_sector_line(image: &Path, n: usize) -> String {
    let data = std::fs::read(image).expect("read the disk image");
    String::from_utf8_lossy(&data[n * 512..(n + 1) * 512]).lines().next().unwrap_or_default().to_string()
}

/// A tool that scripts/setup.sh installs under .cache/tools/bin.
pub fn tool(name: &str) -> PathBuf {
    let path = repo_root().join(".cache/tools/bin").join(name);
    assert!(path.exists(), "{} is missing: run scripts/setup.sh", path.display());
    path
}

/// Whether process `pid` maps the file with inode `inode` (from /proc/<pid>/maps).
pub fn maps_inode(pid: u32, inode: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .any(|line| line.split_whitespace().nth(4) == Some(&inode.to_string()))
}
