//! The shipped Prometheus alert rules (`deploy/prometheus/bg-lb-rules.yml`,
//! no root needed): promtool accepts them and passes their unit tests
//! (`bg-lb-rules.test.yml`), every alert has a case where it fires and one
//! where it must not, and rules and tests use only the series and labels the
//! daemon exports, so the unit tests' input looks like a real scrape.

use std::{collections::BTreeMap, fs, path::PathBuf, process::Command};

use bg_lb::metrics::{Metric, label_names, series_names};
use bg_lb_tests::deploy::repo_root;

fn rules_dir() -> PathBuf {
    repo_root().join("deploy/prometheus")
}

const RULES: &str = "bg-lb-rules.yml";
const TESTS: &str = "bg-lb-rules.test.yml";

fn read(name: &str) -> String {
    let path = rules_dir().join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `promtool ARGS` in deploy/prometheus; panics with its output unless it
/// succeeds, and loudly when promtool is missing: CI must run these.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install Debian's prometheus package (`cargo xtask setup` does)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {}: {}\n{text}",
        args.join(" "),
        out.status
    );
    text
}

#[test]
fn promtool_accepts_the_rules() {
    let out = promtool(&["check", "rules", RULES]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_passes_its_promtool_unit_tests() {
    let out = promtool(&["test", "rules", TESTS]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// `key: value` of every line (list dashes and quotes dropped) whose key is
/// `key`, in order.
fn values<'a>(yaml: &'a str, key: &str) -> Vec<&'a str> {
    yaml.lines()
        .filter_map(|line| {
            line.trim()
                .trim_start_matches("- ")
                .strip_prefix(key)?
                .strip_prefix(':')
        })
        .map(|value| value.trim().trim_matches(['\'', '"']))
        .collect()
}

/// The rules' PromQL: each `expr:` with the indented lines of a block after it.
fn expressions(rules: &str) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(expr) = line.trim().strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let mut expr = expr.trim().trim_start_matches('|').to_owned();
        while let Some(next) = lines.next_if(|l| l.len() - l.trim_start().len() > indent || l.trim().is_empty()) {
            expr.push(' ');
            expr.push_str(next.trim());
        }
        exprs.push(expr.trim().to_owned());
    }
    exprs
}

/// Identifiers in a PromQL expression (metric names, labels, functions).
fn identifiers(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
        .collect()
}

#[test]
fn every_alert_has_a_case_that_fires_and_one_that_does_not() {
    let rules = read(RULES);
    let alerts = values(&rules, "alert");
    assert!(alerts.len() >= 6, "{alerts:?}");
    // Per alert: (cases expecting alerts, cases expecting none).
    let mut cases: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let tests = read(TESTS);
    let mut current = None;
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(name.trim());
        } else if let Some(expected) = line.strip_prefix("exp_alerts:") {
            let name = current.take().expect("exp_alerts follows an alertname");
            let counts = cases.entry(name).or_default();
            if expected.trim() == "[]" {
                counts.1 += 1;
            } else {
                counts.0 += 1;
            }
        }
    }
    for alert in &alerts {
        let (fires, silent) = cases.get(alert).copied().unwrap_or_default();
        assert!(fires > 0, "{alert}: no unit test where it fires");
        assert!(silent > 0, "{alert}: no unit test where it stays silent");
    }
    for tested in cases.keys() {
        assert!(alerts.contains(tested), "{tested} is tested but not a rule");
    }
}

#[test]
fn rules_query_only_exported_series_and_labels() {
    let series = series_names();
    let labels = label_names();
    let rules = read(RULES);
    let exprs = expressions(&rules);
    assert_eq!(exprs.len(), values(&rules, "alert").len(), "one expr per alert");
    for expr in &exprs {
        for name in identifiers(expr).into_iter().filter(|w| w.starts_with("bglb_")) {
            assert!(series.iter().any(|s| s == name), "{name} in {expr:?} is not exported");
            let family = Metric::of_series(name).unwrap();
            assert_eq!(family.replaced_by(), None, "{name} is deprecated: {expr}");
        }
        for clause in ["by (", "on ("] {
            for (i, _) in expr.match_indices(clause) {
                let group = expr[i + clause.len()..].split(')').next().unwrap();
                for label in group.split(',').map(str::trim) {
                    // `host` is what the daemon-down rule makes of `instance`.
                    assert!(
                        labels.contains(&label) || label == "host",
                        "{label:?} in {expr:?} is not a label of bg-lb's series"
                    );
                }
            }
        }
    }
}

/// `NAME{k="v",...}` of an input series: the name and label keys.
fn parse_series(series: &str) -> (&str, Vec<&str>) {
    let (name, labels) = series.split_once('{').expect("NAME{labels}");
    let keys = labels
        .trim_end_matches('}')
        .split(',')
        .map(|pair| pair.split_once('=').expect("key=\"value\"").0.trim())
        .collect();
    (name, keys)
}

#[test]
fn unit_test_input_looks_like_a_scrape_of_bg_lb() {
    let tests = read(TESTS);
    let inputs = values(&tests, "series");
    assert!(inputs.len() > 10, "{inputs:?}");
    for input in inputs {
        let (name, mut keys) = parse_series(input);
        keys.sort_unstable();
        if name == "up" {
            // Prometheus's own, per target.
            assert_eq!(keys, ["instance", "job"], "{input}");
            continue;
        }
        let family = Metric::of_series(name).unwrap_or_else(|| panic!("{name} is not exported: {input}"));
        let mut expected: Vec<&str> = family.labels().iter().copied().chain(["job", "instance"]).collect();
        expected.sort_unstable();
        assert_eq!(keys, expected, "{input}: the labels a scrape of {name} has");
    }
}

#[test]
fn the_unit_tests_load_the_shipped_rules() {
    let tests = read(TESTS);
    assert_eq!(values(&tests, "rule_files"), [""], "one rule_files list");
    assert!(
        tests.lines().any(|l| l.trim() == format!("- {RULES}")),
        "{TESTS} loads {RULES}"
    );
}
