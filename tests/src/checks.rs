//! The report lines test guests print on their console.

use std::collections::BTreeMap;

/// `CHECK <name> ok|FAIL <detail>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// Every CHECK line of a console log.
pub fn parse(console: &str) -> Vec<Check> {
    console
        .lines()
        .filter_map(|line| {
            let rest = &line[line.find("CHECK ")? + 6..];
            let mut parts = rest.splitn(3, ' ');
            let name = parts.next()?.to_string();
            let ok = match parts.next()? {
                "ok" => true,
                "FAIL" => false,
                _ => return None,
            };
            Some(Check { name, ok, detail: parts.next().unwrap_or_default().to_string() })
        })
        .collect()
}

/// Every `RESULT key=value` line.
pub fn results(console: &str) -> BTreeMap<String, String> {
    console
        .lines()
        .filter_map(|line| {
            let rest = &line[line.find("RESULT ")? + 7..];
            let (key, value) = rest.split_once('=')?;
            Some((key.trim().to_string(), value.trim().to_string()))
        })
        .collect()
}

/// Panics unless every name in `expected` was reported, and reported ok, and nothing failed.
pub fn assert_all_ok(console: &str, expected: &[&str]) {
    let checks = parse(console);
    let mut problems = Vec::new();
    for check in checks.iter().filter(|c| !c.ok) {
        problems.push(format!("FAILED {}: {}", check.name, check.detail));
    }
    for name in expected {
        if !checks.iter().any(|c| c.name == *name) {
            problems.push(format!("MISSING {name}"));
        }
    }
    if !problems.is_empty() {
        let tail: Vec<&str> = console.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
        panic!("guest checks:\n  {}\n--- console tail ---\n{}", problems.join("\n  "), tail.join("\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_checks_and_results() {
        let log = "noise\n[  1.0] CHECK a ok fine\nCHECK b FAIL broke it\nCHECK c maybe\nRESULT x = 42\n";
        assert_eq!(
            parse(log),
            vec![
                Check { name: "a".into(), ok: true, detail: "fine".into() },
                Check { name: "b".into(), ok: false, detail: "broke it".into() },
            ]
        );
        assert_eq!(results(log).get("x").map(String::as_str), Some("42"));
    }

    #[test]
    #[should_panic(expected = "FAILED b")]
    fn a_failed_check_fails() {
        assert_all_ok("CHECK a ok\nCHECK b FAIL x\n", &["a", "b"]);
    }

    #[test]
    #[should_panic(expected = "MISSING c")]
    fn a_missing_check_fails() {
        assert_all_ok("CHECK a ok\n", &["a", "c"]);
    }
}
