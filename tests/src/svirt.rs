//! The sVirt test guests (tests/tests/svirt_apparmor.rs, svirt_selinux.rs): a TCG guest boots
//! the Debian 12 root filesystem scripts/svirt-rootfs.sh builds (libvirt 11, QEMU 10, AppArmor,
//! SELinux's reference policy) on a throw-away snapshot, with pageless, `pageless-guest`, the
//! libvirt wrapper and hook, a nested guest's kernel and initrd and the test's files under /pl,
//! and runs the test's script from tests/vm as PID 1 (it sources tests/vm/svirt-common.sh).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::guests::DISK_AND_TOKEN_GUEST;
use crate::initramfs::Initramfs;
use crate::kernel::Kernel;
use crate::nested::inner_initramfs;
use crate::vm::{Vm, VmConfig};
use crate::{bins, repo_root};

/// The root filesystem image scripts/svirt-rootfs.sh builds, under .cache.
pub const ROOTFS: &str = "rootfs/bookworm-svirt.img";

/// The outer guest's /init (busybox): mount the Debian root filesystem, bring /pl along, and
/// hand over to the test's script as PID 1.
const SWITCH_ROOT: &str = r#"
echo '# init: Debian root'
mkdir -p /newroot
if ! mount -t ext4 /dev/vda /newroot; then fail svirt-root "cannot mount /dev/vda"; finish; fi
mkdir -p /newroot/pl && mount -t tmpfs -o mode=755 tmpfs /newroot/pl && cp -a /pl/. /newroot/pl/
for m in /sys/kernel/debug /dev/pts /dev/shm /dev /tmp /run /sys /proc; do umount "$m" 2>/dev/null; done
exec switch_root /newroot /pl/svirt.sh
"#;

/// One sVirt guest run.
pub struct SvirtGuest {
    /// The VM's name (its console log's).
    pub name: &'static str,
    /// The script under tests/vm run as PID 1.
    pub script: &'static str,
    /// The kernel command line's additions (which LSM).
    pub append: String,
    /// Further files: (repository path, path in the guest under /pl).
    pub files: Vec<(PathBuf, &'static str)>,
}

impl SvirtGuest {
    /// Boots the guest and returns its console once the script reported CHECKS-DONE.
    pub fn run(&self) -> String {
        let rootfs = repo_root().join(".cache").join(ROOTFS);
        let dir = tempfile::tempdir().unwrap();
        let inner_initrd = dir.path().join("inner-initrd");
        inner_initramfs(&inner_initrd, &["virtio_blk"], DISK_AND_TOKEN_GUEST);
        let contrib = repo_root().join("contrib/libvirt");
        let outer_initrd = dir.path().join("outer-initrd");
        let mut initramfs = Initramfs::new();
        initramfs
            .kernel_modules(&Kernel::get(), &["virtio_blk"])
            .file(&bins::pageless(), "/pl/pageless")
            .file(&bins::build("pageless-guest", "pageless-guest"), "/pl/pageless-guest")
            .file(&contrib.join("pageless-qemu"), "/pl/pageless-qemu")
            .file(&contrib.join("hooks/qemu"), "/pl/hook-qemu")
            .file(&repo_root().join("tests/vm/svirt-common.sh"), "/pl/svirt-common.sh")
            .file(&repo_root().join("tests/vm").join(self.script), "/pl/svirt.sh")
            .file(&Kernel::get().vmlinuz(), "/pl/vmlinuz")
            .file(&inner_initrd, "/pl/initrd");
        for (path, to) in &self.files {
            initramfs.file(path, to);
        }
        initramfs.init(SWITCH_ROOT).build(&outer_initrd).unwrap();

        let mut config = VmConfig::new(self.name, outer_initrd);
        config.memory = "3G".into();
        config.smp = 2;
        config.machine = Some("q35".into());
        config.append = self.append.clone();
        config.extra =
            vec!["-drive".into(), format!("file={},if=virtio,format=raw,snapshot=on", path_arg(&rootfs))];
        let mut vm = Vm::boot(&config);
        vm.wait_for("CHECKS-DONE", Duration::from_secs(1200)).expect("the guest's checks finish");
        let _ = vm.wait_exit(Duration::from_secs(60));
        vm.console()
    }
}

/// A path as a QEMU `-drive file=` value (commas doubled).
fn path_arg(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}
