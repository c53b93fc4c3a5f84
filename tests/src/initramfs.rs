//! Busybox initramfs images for test guests.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::kernel::Kernel;

/// The start of every guest's /init: mounts, and the `check`/`ok`/`fail`/`finish` helpers.
pub const PRELUDE: &str = include_str!("../vm/prelude.sh");

/// An initramfs being put together in a staging directory.
pub struct Initramfs {
    root: tempfile::TempDir,
    modules: Vec<String>,
}

impl Default for Initramfs {
    fn default() -> Self {
        Self::new()
    }
}

impl Initramfs {
    /// A root with busybox (static) and the usual directories.
    pub fn new() -> Initramfs {
        let root = tempfile::Builder::new().prefix("pageless-initramfs").tempdir().expect("staging dir");
        for dir in
            ["bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "mnt", "etc", "lib"]
        {
            fs::create_dir_all(root.path().join(dir)).expect("mkdir in staging dir");
        }
        let mut initramfs = Initramfs { root, modules: Vec::new() };
        initramfs.file(Path::new("/bin/busybox"), "/bin/busybox");
        initramfs.text("/etc/passwd", "root:x:0:0:root:/:/bin/sh\n", 0o644);
        initramfs.text("/etc/group", "root:x:0:\n", 0o644);
        initramfs
    }

    fn staged(&self, guest: &str) -> PathBuf {
        let path = self.root.path().join(guest.trim_start_matches('/'));
        fs::create_dir_all(path.parent().expect("guest path has a parent")).expect("mkdir in staging dir");
        path
    }

    /// Copies a host file to `guest` (mode kept).
    pub fn file(&mut self, host: &Path, guest: &str) -> &mut Self {
        let staged = self.staged(guest);
        fs::copy(host, &staged).unwrap_or_else(|e| panic!("copy {} into the initramfs: {e}", host.display()));
        self
    }

    /// Writes `content` to `guest` with `mode`.
    pub fn text(&mut self, guest: &str, content: &str, mode: u32) -> &mut Self {
        let staged = self.staged(guest);
        fs::write(&staged, content).expect("write into the staging dir");
        fs::set_permissions(&staged, fs::Permissions::from_mode(mode)).expect("chmod in the staging dir");
        self
    }

    /// Copies an executable and the shared libraries it needs (at their host paths).
    pub fn binary(&mut self, host: &Path, guest: &str) -> &mut Self {
        self.file(host, guest);
        for lib in shared_libraries(host) {
            let guest_lib = lib.to_string_lossy().into_owned();
            if !self.staged_exists(&guest_lib) {
                self.file(&lib, &guest_lib);
            }
        }
        self
    }

    /// Copies a host directory tree (e.g. QEMU's firmware) to `guest`.
    pub fn tree(&mut self, host: &Path, guest: &str) -> &mut Self {
        let staged = self.staged(guest);
        let status =
            Command::new("cp").args(["-a", "-L", "-T"]).arg(host).arg(&staged).status().expect("run cp");
        assert!(status.success(), "copy {} into the initramfs", host.display());
        self
    }

    fn staged_exists(&self, guest: &str) -> bool {
        self.root.path().join(guest.trim_start_matches('/')).exists()
    }

    /// Adds kernel modules (and what they depend on), decompressed; /init loads them in order.
    pub fn kernel_modules(&mut self, kernel: &Kernel, names: &[&str]) -> &mut Self {
        for name in names {
            for relative in kernel.module_with_deps(name) {
                let file = relative.file_name().expect("module file").to_string_lossy().into_owned();
                let plain = file.trim_end_matches(".xz").trim_end_matches(".zst").to_string();
                let guest = format!("/lib/modules/{plain}");
                if self.modules.contains(&guest) {
                    continue;
                }
                let host = kernel.modules_dir().join(&relative);
                let staged = self.staged(&guest);
                decompress_module(&host, &staged);
                self.modules.push(guest);
            }
        }
        self
    }

    /// Copies one kernel module, decompressed, to `guest` without loading it from /init.
    pub fn kernel_module_file(&mut self, kernel: &Kernel, name: &str, guest: &str) -> &mut Self {
        let relative = kernel.module_with_deps(name).pop().expect("the module itself");
        let staged = self.staged(guest);
        decompress_module(&kernel.modules_dir().join(relative), &staged);
        self
    }

    /// Writes /init: the prelude, the kernel modules' insmod lines, then `body`.
    pub fn init(&mut self, body: &str) -> &mut Self {
        let mut script = String::from(PRELUDE);
        for module in &self.modules {
            script.push_str(&format!("insmod {module} || echo \"insmod {module} failed\"\n"));
        }
        script.push_str(body);
        script.push('\n');
        self.text("/init", &script, 0o755)
    }

    /// The staging directory, for adding files by other means.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Packs the image (uncompressed newc cpio, owned by root) into `out`.
    pub fn build(&self, out: &Path) -> io::Result<()> {
        assert!(self.staged_exists("/init"), "call init() before build()");
        self.archive(out)
    }

    /// Packs what is staged, with or without /init, the way [`Initramfs::build`] does: an
    /// archive for a guest to unpack (busybox `cpio -i -d`), e.g. from a disk.
    pub fn archive(&self, out: &Path) -> io::Result<()> {
        let output = fs::File::create(out)?;
        let status = Command::new("sh")
            .arg("-c")
            .arg("find . -print0 | LC_ALL=C sort -z | cpio --null --quiet -o -H newc -R 0:0")
            .current_dir(self.root.path())
            .stdout(output)
            .stderr(Stdio::inherit())
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!("cpio failed: {status}")));
        }
        Ok(())
    }
}

/// The shared libraries `ldd` lists for an executable (none for static ones).
pub fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let output = Command::new("ldd").arg(binary).output().expect("run ldd");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn decompress_module(host: &Path, staged: &Path) {
    let name = host.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        None => {
            fs::copy(host, staged).expect("copy module");
        }
        Some(tool) => {
            let out = fs::File::create(staged).expect("create module file");
            let status =
                Command::new(tool).arg("-dc").arg(host).stdout(out).status().expect("run the decompressor");
            assert!(status.success(), "decompress {}", host.display());
        }
    }
}
