//! Builds the kernel module's extent allocator (driver/kmod/alloc.c) for user space, with the
//! shim and harness in tests/alloc/, into a static library for `pageless_tests::alloc`. Uses
//! the system C compiler (`$CC`, else `cc`) and `ar` directly: no build dependency.

use std::path::PathBuf;
use std::process::Command;

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install a C toolchain)"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let sources = [dir.join("../driver/kmod/alloc.c"), dir.join("alloc/harness.c")];
    let mut objects = Vec::new();
    for src in &sources {
        let obj = out.join(src.file_stem().expect("file name")).with_extension("o");
        run(Command::new(&cc)
            .args([
                "-std=gnu11",
                "-O2",
                "-g",
                "-fPIC",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
                "-Werror",
            ])
            .args(["-DPL_USERSPACE", "-c"])
            .arg("-I")
            .arg(dir.join("alloc"))
            .arg(src)
            .arg("-o")
            .arg(&obj));
        objects.push(obj);
        println!("cargo:rerun-if-changed={}", src.display());
    }
    for header in ["../driver/kmod/alloc.h", "alloc/pl_shim.h"] {
        println!("cargo:rerun-if-changed={}", dir.join(header).display());
    }
    let lib = out.join("libpageless_alloc.a");
    let _ = std::fs::remove_file(&lib);
    run(Command::new("ar").arg("crs").arg(&lib).args(&objects));
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=pageless_alloc");
}
