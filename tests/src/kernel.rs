//! The test guests' kernels, unpacked by `scripts/setup.sh` under `.cache/kernel/`: the 6.12 cloud
//! kernel (`current`, the default) and the newest 7.3 cloud kernel of trixie-backports (`newest`).

use std::path::{Path, PathBuf};

use crate::repo_root;

#[derive(Clone, Debug)]
pub struct Kernel {
    pub version: String,
    pub root: PathBuf,
}

impl Kernel {
    /// The default kernel, 6.12; panics with what to run when it is missing.
    pub fn get() -> Kernel {
        Kernel::at("current")
    }

    /// The 7.3 kernel (`.cache/kernel/newest`, its module built in the Debian 13 build root).
    pub fn newest() -> Kernel {
        Kernel::at("newest")
    }

    /// The kernel that `.cache/kernel/<link>` points at.
    fn at(link: &str) -> Kernel {
        let root = repo_root().join(".cache/kernel").join(link);
        let version = std::fs::read_link(&root)
            .ok()
            .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter(|_| root.join(".unpacked").exists())
            .unwrap_or_else(|| panic!("no test kernel at {}: run scripts/setup.sh first", root.display()));
        Kernel { version, root }
    }

    /// The image: `boot/vmlinuz-<version>` (6.12), or `usr/lib/modules/<version>/vmlinuz`
    /// (Debian 13's linux-binary packages).
    pub fn vmlinuz(&self) -> PathBuf {
        let boot = self.root.join(format!("boot/vmlinuz-{}", self.version));
        if boot.exists() {
            boot
        } else {
            self.root.join(format!("usr/lib/modules/{}/vmlinuz", self.version))
        }
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.root.join(format!("lib/modules/{}", self.version))
    }

    /// A module and the modules it depends on, dependencies first, as paths relative to
    /// [`Kernel::modules_dir`] (from `modules.dep`).
    pub fn module_with_deps(&self, name: &str) -> Vec<PathBuf> {
        let deps = std::fs::read_to_string(self.modules_dir().join("modules.dep")).expect("modules.dep");
        let mut order = Vec::new();
        self.collect_deps(&deps, name, &mut order);
        order
    }

    fn collect_deps(&self, deps: &str, name: &str, order: &mut Vec<PathBuf>) {
        let wanted = name.replace('-', "_");
        let line = deps
            .lines()
            .find(|line| {
                let module = line.split(':').next().unwrap_or_default();
                module_name(Path::new(module)) == wanted
            })
            .unwrap_or_else(|| panic!("module {name} is not in the test kernel"));
        let (module, requires) = line.split_once(':').expect("modules.dep line");
        for dep in requires.split_whitespace() {
            self.collect_deps(deps, &module_name(Path::new(dep)), order);
        }
        let path = PathBuf::from(module);
        if !order.contains(&path) {
            order.push(path);
        }
    }
}

/// `kernel/drivers/block/virtio_blk.ko.xz` → `virtio_blk`.
pub fn module_name(path: &Path) -> String {
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    file.split(".ko").next().unwrap_or_default().replace('-', "_")
}
