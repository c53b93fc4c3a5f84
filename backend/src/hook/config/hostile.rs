//! Property tests: the hook's config file and domain XML reader fed hostile values (huge
//! sizes, NUMA cells that overflow, names with `/`, `..`, NUL and control characters) answers
//! with a clear error or a plan that is safe to run, and never panics.

use proptest::prelude::*;

use super::*;

fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("vm1".to_string()),
        Just("disk0".to_string()),
        Just("a/b".to_string()),
        Just("..".to_string()),
        Just("../../etc/passwd".to_string()),
        Just("x\0y".to_string()),
        Just("tab\there".to_string()),
        Just("\u{1b}[2J".to_string()),
        Just("18446744073709551615".to_string()),
        Just("18446744073709551616G".to_string()),
        Just("16E".to_string()),
        Just("0".to_string()),
        Just("4G".to_string()),
        Just("memfd".to_string()),
        Just("dir:/dev/shm/x\0y".to_string()),
        Just("dir:/dev/shm/../x".to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "[a-z0-9./:,=\\x00-\\x1f]{0,16}",
    ]
}

/// A TOML basic string: every character escaped as `\uXXXX`, so that NUL and control
/// characters reach the parser's output.
fn toml_string(text: &str) -> String {
    let escaped: String = text.chars().map(|c| format!("\\U{:08X}", c as u32)).collect();
    format!("\"{escaped}\"")
}

/// An XML attribute value (control characters as character references, which XML 1.0 refuses
/// for most of them: the reader must say so, not panic).
fn xml_attr(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '"' => "&quot;".to_string(),
            c if c.is_control() => format!("&#{};", c as u32),
            c => c.to_string(),
        })
        .collect()
}

fn check_plan(plan: &OwnerPlan) -> Result<(), TestCaseError> {
    prop_assert!(plan.size > 0);
    prop_assert!(plan.start_timeout <= MAX_TIMEOUT && plan.consumer_timeout <= MAX_TIMEOUT);
    prop_assert!(plan.pool.parse::<PoolSpec>().is_ok());
    for device in &plan.vhost_user {
        prop_assert!(pageless_pool::check_name(&device.name).is_ok(), "{:?}", device.name);
    }
    for arg in plan.serve_args() {
        prop_assert!(!arg.chars().any(char::is_control), "{arg:?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn hostile_config_files_get_an_error_or_a_safe_plan(
        size in hostile_text(),
        pool in hostile_text(),
        run_dir in hostile_text(),
        name in hostile_text(),
        backend in hostile_text(),
        timeout in any::<u64>(),
        numeric_size in any::<bool>(),
    ) {
        let size = if numeric_size { size.parse::<u64>().map_or(toml_string(&size), |n| n.to_string()) } else { toml_string(&size) };
        let text = format!(
            "size = {size}\npool = {}\nrun_dir = {}\nconsumer_timeout = {}\nstart_timeout = {}\n[[vhost_user]]\nname = {}\nbackend = {}\n",
            toml_string(&pool),
            toml_string(&run_dir),
            timeout.min(i64::MAX as u64),
            timeout.min(i64::MAX as u64),
            toml_string(&name),
            toml_string(&backend),
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vm1.toml"), text).unwrap();
        let result = find_config("vm1", dir.path(), "")
            .and_then(|found| plan("vm1", found.expect("the file exists"), "", Path::new("/nonexistent"), Path::new("/nonexistent")));
        match result {
            Ok(plan) => check_plan(&plan)?,
            Err(e) => prop_assert!(e.to_string().contains("vm1"), "{e}"),
        }
    }

    #[test]
    fn hostile_domain_xml_gets_an_error_or_a_safe_plan(
        size in hostile_text(),
        pool in hostile_text(),
        name in hostile_text(),
        backend in hostile_text(),
        cells in proptest::collection::vec((any::<u64>(), prop_oneof![Just("KiB"), Just("TiB"), Just("b"), Just("E")]), 0..4),
        memory in any::<u64>(),
    ) {
        let cells: String = cells
            .iter()
            .map(|(memory, unit)| format!("<cell id='0' cpus='0' memory='{memory}' unit='{unit}'/>"))
            .collect();
        let size_attr = if size == "4G" { String::new() } else { format!(" size=\"{}\"", xml_attr(&size)) };
        let xml = format!(
            r#"<domain type='qemu'><name>vm1</name><memory unit='KiB'>{memory}</memory><cpu><numa>{cells}</numa></cpu>
<metadata><pageless:vm xmlns:pageless="{XML_NAMESPACE}"{size_attr} pool="{}"><pageless:vhost-user name="{}" backend="{}"/></pageless:vm></metadata></domain>"#,
            xml_attr(&pool),
            xml_attr(&name),
            xml_attr(&backend),
        );
        let dir = tempfile::tempdir().unwrap();
        let result = find_config("vm1", dir.path(), &xml).and_then(|found| match found {
            Some(found) => plan("vm1", found, &xml, Path::new("/nonexistent"), Path::new("/nonexistent")).map(Some),
            None => Ok(None),
        });
        match result {
            Ok(Some(plan)) => check_plan(&plan)?,
            Ok(None) => prop_assert!(false, "the metadata is there"),
            Err(e) => prop_assert!(e.to_string().contains("vm1"), "{e}"),
        }
    }
}

#[test]
fn numa_cells_that_overflow_are_refused() {
    let xml = "<domain><memory>1</memory><cpu><numa>\
        <cell memory='9223372036854775807' unit='b'/><cell memory='9223372036854775807' unit='b'/>\
        </numa></cpu></domain>";
    let err = domain_memory(xml).unwrap_err();
    assert!(err.contains("more than 16 EiB"), "{err}");
    let err = domain_memory("<domain><memory unit='TiB'>18446744073709551615</memory></domain>").unwrap_err();
    assert!(err.contains("more than 16 EiB"), "{err}");
}

#[test]
fn control_characters_and_huge_timeouts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let plan_of = |text: &str| {
        std::fs::write(dir.path().join("vm1.toml"), text).unwrap();
        let found = find_config("vm1", dir.path(), "").unwrap().unwrap();
        plan("vm1", found, "", Path::new("/nonexistent"), Path::new("/nonexistent"))
    };
    let err = plan_of("size = \"1G\"\npool = \"dir:/dev/shm/a\\u0000b\"\n").unwrap_err();
    assert!(err.to_string().contains("control character '\\0'"), "{err}");
    let err = plan_of("size = \"1G\"\nstart_timeout = 99999999999\n").unwrap_err();
    assert!(err.to_string().contains("start_timeout of 99999999999 s is over the maximum"), "{err}");
    let err = plan_of("size = 0\n").unwrap_err();
    assert!(err.to_string().contains("size is 0"), "{err}");
    let err = plan_of("size = \"1G\"\n[[vhost_user]]\nname = \"..\"\nbackend = \"/x\"\n").unwrap_err();
    assert!(err.to_string().contains("vhost_user"), "{err}");
}
