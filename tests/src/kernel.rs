//! The test guests' kernel: the 6.12 cloud kernel that `scripts/setup.sh` unpacks under
//! `.cache/kernel/current/`.

use std::path::{Path, PathBuf};

use crate::repo_root;

#[derive(Clone, Debug)]
pub struct Kernel {
    pub version: String,
    pub root: PathBuf,
}

impl Kernel {
    /// The unpacked kernel; panics with what to run when it is missing.
    pub fn get() -> Kernel {
        let root = repo_root().join(".cache/kernel/current");
        let version = std::fs::read_link(&root)
            .ok()
            .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter(|_| root.join(".unpacked").exists())
            .unwrap_or_else(|| panic!("no test kernel at {}: run scripts/setup.sh first", root.display()));
        Kernel { version, root }
    }

    pub fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.version))
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.root.join(format!("lib/modules/{}", self.version))
    }

    /// The headers' build directory, for out-of-tree modules.
    pub fn headers(&self) -> PathBuf {
        self.root.join(format!("usr/src/linux-headers-{}", self.version))
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
