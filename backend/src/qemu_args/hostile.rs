//! Property tests: the QEMU argument rewriter fed hostile command lines (huge sizes, sums that
//! overflow, names with `/`, `..`, NUL and control characters) answers with a clear error or a
//! consistent command line, and never panics.

use proptest::prelude::*;

use super::*;

/// Sizes as QEMU users (or attackers) might write them.
fn size_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("18446744073709551615".to_string()),
        Just("18446744073709551616".to_string()),
        Just("17179869184G".to_string()),
        Just("16E".to_string()),
        Just("-1".to_string()),
        Just("1e30".to_string()),
        Just("0".to_string()),
        Just("".to_string()),
        Just("8T".to_string()),
        (1u64..64).prop_map(|g| format!("{g}G")),
        (1u64..4096).prop_map(|m| m.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
    ]
}

/// Names and ids with separators, traversal, NUL and control characters.
fn name_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("r0".to_string()),
        Just("r1".to_string()),
        Just("a/b".to_string()),
        Just("..".to_string()),
        Just("../../etc".to_string()),
        Just("x\0y".to_string()),
        Just("line\nbreak".to_string()),
        Just("\u{1b}[31m".to_string()),
        Just(",,".to_string()),
        "[a-z0-9./,=\\x00-\\x1f]{0,12}",
    ]
}

fn argument() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        size_text().prop_map(|s| vec!["-m".into(), s]),
        (size_text(), size_text()).prop_map(|(s, m)| vec!["-m".into(), format!("size={s},maxmem={m}")]),
        (name_text(), size_text())
            .prop_map(|(id, s)| vec!["-object".into(), format!("memory-backend-ram,id={id},size={s}")]),
        (name_text(), size_text()).prop_map(|(id, s)| vec![
            "-object".into(),
            format!(r#"{{"qom-type":"memory-backend-memfd","id":{},"size":{s}}}"#, Value::from(id))
        ]),
        name_text().prop_map(|id| vec!["-numa".into(), format!("node,memdev={id}")]),
        (name_text(), name_text())
            .prop_map(|(n, id)| vec!["-numa".into(), format!("node,nodeid={n},memdev={id}")]),
        (0u32..3, name_text())
            .prop_map(|(n, id)| vec!["-numa".into(), format!("node,nodeid={n},memdev={id}")]),
        name_text().prop_map(|id| vec!["-machine".into(), format!("pc,memory-backend={id}")]),
        name_text().prop_map(|n| vec!["-name".into(), format!("guest={n},debug-threads=on")]),
        name_text().prop_map(|n| vec!["-name".into(), n]),
        name_text().prop_map(|v| vec![v]),
        Just(vec!["-mem-path".into(), "/dev/hugepages".into()]),
        Just(vec!["-nographic".into()]),
        Just(vec!["-m".into()]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn hostile_command_lines_get_an_error_or_a_consistent_rewrite(
        parts in proptest::collection::vec(argument(), 0..8),
        owner_size in prop_oneof![Just(!4095u64), (1u64..64).prop_map(|g| g << 30)],
    ) {
        let args: Vec<String> = parts.into_iter().flatten().collect();
        let ram = OwnerRam { mem_path: "/proc/self/fd/7".into(), size: owner_size, page_size: 4096 };
        let _ = guest_name(&args);
        match rewrite(&args, &ram) {
            Ok(out) => {
                prop_assert!(out.len() >= args.len());
                prop_assert!(out.iter().any(|a| a.contains("/proc/self/fd/7")), "{out:?}");
                prop_assert!(!out.iter().any(|a| a == "-mem-path" || a == "-mem-prealloc"));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// With two cells: an error, or every NUMA node's backend on its own cell's fd with the
    /// cell's size, and nothing else on the cells' fds.
    #[test]
    fn hostile_command_lines_for_cells_get_an_error_or_each_node_its_cell(
        parts in proptest::collection::vec(argument(), 0..8),
        sizes in (0u64..3, 0u64..3),
    ) {
        let args: Vec<String> = parts.into_iter().flatten().collect();
        let cell = |id: u32, fd: u32, size: u64| OwnerCell {
            id,
            ram: OwnerRam { mem_path: format!("/proc/self/fd/{fd}"), size: (size + 1) << 30, page_size: 4096 },
        };
        let cells = [cell(0, 7, sizes.0), cell(1, 8, sizes.1)];
        match rewrite_cells(&args, &cells) {
            Ok(out) => {
                prop_assert_eq!(out.len(), args.len(), "nothing added");
                for cell in &cells {
                    let on_cell: Vec<&String> = out.iter().filter(|a| a.contains(&cell.ram.mem_path)).collect();
                    prop_assert_eq!(on_cell.len(), 1, "cell {} backs exactly one node: {:?}", cell.id, out);
                    let size = ObjectArg::parse(on_cell[0]).unwrap().size().unwrap();
                    prop_assert_eq!(size, Some(cell.ram.size));
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

#[test]
fn backends_whose_sizes_overflow_are_refused() {
    let args: Vec<String> = [
        "-object",
        "memory-backend-ram,id=r0,size=8388608T",
        "-object",
        "memory-backend-ram,id=r1,size=8388608T",
        "-numa",
        "node,memdev=r0",
        "-numa",
        "node,memdev=r1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let ram = OwnerRam { mem_path: "/proc/self/fd/7".into(), size: 1 << 30, page_size: 4096 };
    let err = rewrite(&args, &ram).unwrap_err();
    assert_eq!(err, ArgError::TooLarge { ids: "r0, r1".into() });
    assert!(err.to_string().contains("add up to more than 16 EiB"), "{err}");
    let huge = rewrite(&["-m".to_string(), "18446744073709551615".to_string()], &ram).unwrap_err();
    assert!(huge.to_string().contains("too large"), "{huge}");
}
