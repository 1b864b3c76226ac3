use std::collections::HashSet;

use super::*;

#[test]
fn names_follow_prometheus_conventions() {
    let mut seen = HashSet::new();
    for metric in Metric::ALL {
        let name = metric.name();
        assert!(name.starts_with("bglb_"), "{name}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{name}"
        );
        assert!(
            !name.ends_with("_total"),
            "{name}: the encoding adds _total to counters"
        );
        assert!(seen.insert(name), "{name} twice");
        assert!(metric.help().ends_with('.'), "{name}: help is a sentence");
        if let Some(replacement) = metric.replaced_by() {
            assert!(
                metric.help().starts_with("Deprecated") && metric.help().contains(replacement.name()),
                "{name}: the help names its replacement"
            );
            assert_eq!(replacement.replaced_by(), None, "{name}");
            continue;
        }
        // Base units: shares from 0 to 1 end in _ratio, times are seconds.
        for unit in [
            "percent",
            "millis",
            "milliseconds",
            "minutes",
            "hours",
            "kilobytes",
            "megabytes",
        ] {
            assert!(!name.split('_').any(|word| word == unit), "{name}: use base units");
        }
        if name.split('_').any(|word| word == "ratio") {
            assert!(name.ends_with("_ratio"), "{name}: a share is a _ratio");
        }
        if name.contains("timestamp") {
            assert!(name.ends_with("_timestamp_seconds"), "{name}");
            assert_eq!(metric.kind(), Kind::Gauge, "{name}");
        }
        if name.ends_with("_info") {
            assert_eq!(metric.kind(), Kind::Gauge, "{name}: an info metric is a gauge of 1");
        }
    }
    assert!(Metric::HealthDuration.name().ends_with("_seconds"), "base units");
    assert_eq!(Metric::BackendNewFlows.series(), ["bglb_backend_new_flows_total"]);
    assert_eq!(
        Metric::HealthDuration.series(),
        [
            "bglb_health_check_duration_seconds_bucket",
            "bglb_health_check_duration_seconds_sum",
            "bglb_health_check_duration_seconds_count"
        ]
    );
}

mod dashboard {
    use serde_json::Value as Json;

    use super::*;

    const DASHBOARD: &str = include_str!("../../../../deploy/grafana/bg-lb.json");

    fn is_label(label: &str) -> bool {
        label_names().contains(&label)
    }

    fn dashboard() -> Json {
        serde_json::from_str(DASHBOARD).expect("deploy/grafana/bg-lb.json is valid JSON")
    }

    /// Every panel, those inside rows included.
    fn panels(json: &Json) -> Vec<&Json> {
        let mut all = Vec::new();
        for panel in json["panels"].as_array().expect("panels") {
            all.push(panel);
            all.extend(panel["panels"].as_array().into_iter().flatten());
        }
        all
    }

    /// Identifiers in a PromQL expression (metric names, labels, functions).
    fn identifiers(expr: &str) -> Vec<&str> {
        expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .filter(|word| word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
            .collect()
    }

    /// The annotations that query Prometheus (not Grafana's built-in one).
    fn annotations(json: &Json) -> Vec<&Json> {
        let list = json["annotations"]["list"].as_array().expect("annotations.list");
        list.iter().filter(|a| a["builtIn"] != 1).collect()
    }

    /// Every PromQL expression: panel targets, annotations, variables.
    fn queries(json: &Json) -> Vec<String> {
        let mut queries: Vec<String> = panels(json)
            .iter()
            .flat_map(|p| p["targets"].as_array().into_iter().flatten())
            .chain(annotations(json))
            .map(|t| t["expr"].as_str().expect("every target has a PromQL expr").to_owned())
            .collect();
        for variable in json["templating"]["list"].as_array().unwrap() {
            if let Some(definition) = variable["definition"].as_str() {
                queries.push(definition.to_owned());
            }
        }
        queries
    }

    #[test]
    fn it_asks_for_a_prometheus_data_source() {
        let json = dashboard();
        let inputs = json["__inputs"].as_array().expect("__inputs");
        assert!(
            inputs
                .iter()
                .any(|i| i["type"] == "datasource" && i["pluginId"] == "prometheus" && i["name"] == "DS_PROMETHEUS")
        );
        let variables = json["templating"]["list"].as_array().unwrap();
        assert!(
            variables
                .iter()
                .any(|v| v["type"] == "datasource" && v["name"] == "datasource" && v["query"] == "prometheus"),
            "a datasource variable"
        );
    }

    #[test]
    fn every_panel_queries_bg_lb_metrics_through_the_variable() {
        let json = dashboard();
        let panels: Vec<_> = panels(&json).into_iter().filter(|p| p["type"] != "row").collect();
        assert!(panels.len() >= 8, "ratio, traffic, drain and health panels");
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or_default();
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
            let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
            let targets = targets.unwrap_or_else(|| panic!("{title}: no query"));
            for target in targets {
                assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
                let expr = target["expr"].as_str().unwrap();
                assert!(
                    identifiers(expr).iter().any(|w| w.starts_with("bglb_")),
                    "{title}: {expr}"
                );
            }
        }
    }

    #[test]
    fn queries_use_only_metric_names_the_daemon_exports() {
        let exported: HashSet<String> = series_names().into_iter().collect();
        let mut used = HashSet::new();
        for expr in queries(&dashboard()) {
            for name in identifiers(&expr).into_iter().filter(|w| w.starts_with("bglb_")) {
                assert!(exported.contains(name), "{name} in {expr:?} is not exported");
                used.insert(name.to_owned());
            }
        }
        for wanted in [
            "bglb_ratio",
            "bglb_effective_ratio",
            "bglb_backend_new_flows_total",
            "bglb_backend_bytes_total",
            "bglb_backend_open_flows",
            "bglb_backend_up",
            "bglb_backend_connection_events_total",
            "bglb_shift_state",
        ] {
            assert!(used.contains(wanted), "the dashboard shows {wanted}");
        }
        for deprecated in Metric::ALL.into_iter().filter(|m| m.replaced_by().is_some()) {
            for series in deprecated.series() {
                assert!(!used.contains(&series), "{series} is deprecated");
            }
        }
    }

    #[test]
    fn a_panel_shows_connection_events_per_pool_and_event() {
        let json = dashboard();
        let shown = panels(&json).into_iter().any(|panel| {
            panel["targets"].as_array().into_iter().flatten().any(|t| {
                let expr = t["expr"].as_str().unwrap_or_default();
                expr.contains("bglb_backend_connection_events_total") && expr.contains("by (service, pool, event)")
            })
        });
        assert!(shown, "handshake, refused and reset per pool: what shifts judge by");
    }

    #[test]
    fn annotations_mark_ratio_changes_and_rollbacks_through_the_variable() {
        let json = dashboard();
        let annotations = annotations(&json);
        let expr_of = |name: &str| {
            let annotation = annotations
                .iter()
                .find(|a| a["name"] == name)
                .unwrap_or_else(|| panic!("an annotation {name:?}"));
            assert_eq!(annotation["enable"], true, "{name} is on by default");
            annotation["expr"].as_str().unwrap().to_owned()
        };
        let ratio = expr_of("Ratio changes");
        assert!(identifiers(&ratio).contains(&"bglb_ratio"), "{ratio}");
        assert!(identifiers(&ratio).contains(&"changes"), "{ratio}");
        let rollbacks = expr_of("Shift rollbacks");
        assert!(
            identifiers(&rollbacks).contains(&"bglb_shift_rollbacks_total"),
            "{rollbacks}"
        );
        for annotation in annotations {
            let name = annotation["name"].as_str().unwrap_or_default();
            assert_eq!(annotation["datasource"]["uid"], "${datasource}", "{name}");
            let expr = annotation["expr"].as_str().unwrap_or_default();
            assert!(
                expr.contains("$service") && expr.contains("$instance"),
                "{name}: {expr}"
            );
            for key in annotation["tagKeys"].as_str().unwrap_or_default().split(',') {
                assert!(is_label(key.trim()), "{name}: tag key {key:?} is not a label");
            }
        }
    }

    #[test]
    fn aggregations_group_by_exported_labels() {
        for expr in queries(&dashboard()) {
            for (_, rest) in expr.match_indices("by (").map(|(i, _)| expr.split_at(i + 4)) {
                let group = rest.split(')').next().unwrap();
                for label in group.split(',').map(str::trim) {
                    assert!(is_label(label), "{label:?} in {expr:?} is not a label bg-lb exports");
                }
            }
        }
    }
}
