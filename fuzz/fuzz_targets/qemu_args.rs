//! The QEMU argument rewriter (`pageless::qemu_args`): any command line gives a rewritten one or
//! an error, never a panic; a rewritten one puts the VM's RAM on the owner's memory. The same
//! command line is also rewritten for an owner of two NUMA cells of that size (ids 0 and 1):
//! each cell then backs exactly one node.
//!
//! Input: bytes 0-7 are the owner's size (little-endian; a few fixed sizes are likelier, see
//! below), the rest are the arguments, separated by NUL bytes (invalid UTF-8 replaced).

#![no_main]

use pageless::qemu_args::{guest_name, rewrite, rewrite_cells, OwnerCell, OwnerRam, PAGELESS_RAM_ID};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((size, args)) = data.split_first_chunk::<8>() else { return };
    let size = u64::from_le_bytes(*size);
    // Sizes that a command line can agree with, so that the fuzzer gets past the size check.
    let size = match size >> 60 {
        0 => 1 << 30,
        1 => 512 << 20,
        2 => 4 << 30,
        _ => size,
    };
    let args: Vec<String> = if args.is_empty() {
        Vec::new()
    } else {
        args.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
    };
    let _ = guest_name(&args);
    let ram = OwnerRam { mem_path: "/proc/self/fd/3".into(), size, page_size: 4096 };
    if let Ok(out) = rewrite(&args, &ram) {
        assert!(out.len() >= args.len());
        assert!(out.iter().any(|a| a.contains("/proc/self/fd/3")), "the owner's memory is not used: {out:?}");
        if out.len() > args.len() {
            assert!(out.iter().any(|a| a.contains(PAGELESS_RAM_ID)));
        }
    }
    let cells: Vec<OwnerCell> = (0..2)
        .map(|id| OwnerCell { id, ram: OwnerRam { mem_path: format!("/proc/self/fd/{}", 4 + id), size, page_size: 4096 } })
        .collect();
    if let Ok(out) = rewrite_cells(&args, &cells) {
        assert_eq!(out.len(), args.len(), "nothing added: {out:?}");
        // Each argument the rewrite changed is a memory-backend-file on one cell's fd, no cell
        // twice (the input may mention the paths anywhere else).
        let mut used = Vec::new();
        for (before, after) in args.iter().zip(&out).filter(|(b, a)| b != a) {
            assert!(after.contains("memory-backend-file"), "{before:?} became {after:?}");
            let cell = cells
                .iter()
                .find(|c| after.contains(&format!("{},", c.ram.mem_path)) || after.contains(&format!("{}\"", c.ram.mem_path)))
                .unwrap_or_else(|| panic!("{after:?} is on no cell"));
            assert!(!used.contains(&cell.id), "cell {} backs two nodes: {out:?}", cell.id);
            used.push(cell.id);
        }
    }
});
