//! The libvirt hook's config reader (`pageless::hook::owner_plan`): the per-VM TOML file, the
//! domain XML's `<pageless:vm>` metadata, its `<memory>` / NUMA cells, and qemu.conf's user.
//! Any input gives a plan or an error, never a panic.
//!
//! Input: four fields separated by NUL bytes: the VM name, the TOML config file (none if
//! empty), the domain XML, qemu.conf (none if empty). Invalid UTF-8 is replaced.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use pageless::hook::owner_plan;
use libfuzzer_sys::fuzz_target;

/// A scratch directory of this process: `<tmp>/pageless-fuzz-<pid>`.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pageless-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("vms")).expect("create the scratch directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let mut fields = data.splitn(4, |&b| b == 0).map(String::from_utf8_lossy);
    let vm = fields.next().unwrap_or_default();
    let toml = fields.next().unwrap_or_default();
    let xml = fields.next().unwrap_or_default();
    let qemu_conf_text = fields.next().unwrap_or_default();
    let config_dir = scratch().join("vms");
    let qemu_conf = scratch().join("qemu.conf");
    // Clear what an earlier input left.
    for entry in std::fs::read_dir(&config_dir).expect("read the scratch directory") {
        std::fs::remove_file(entry.expect("scratch entry").path()).expect("remove a scratch file");
    }
    let _ = std::fs::remove_file(&qemu_conf);
    // Only a name the hook accepts becomes a file name (check_name keeps it inside the directory).
    if !toml.is_empty() && pageless_pool::check_name(&vm).is_ok() {
        std::fs::write(config_dir.join(format!("{vm}.toml")), toml.as_bytes()).expect("write the config");
    }
    if !qemu_conf_text.is_empty() {
        std::fs::write(&qemu_conf, qemu_conf_text.as_bytes()).expect("write qemu.conf");
    }
    if let Ok(Some(plan)) = owner_plan(&vm, &config_dir, &xml, &qemu_conf) {
        assert_eq!(plan.vm, vm);
        let args = plan.serve_args();
        assert_eq!(args[0], "serve");
        let _ = (plan.log_path(), plan.socket());
    }
});
