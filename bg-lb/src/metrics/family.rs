//! The metric families the daemon exports: [`Metric`] is the one list, with
//! each family's name, type and help text, that the encoding writes and the
//! Grafana dashboard is checked against.

use prometheus_client::metrics::MetricType;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Histogram,
}

/// Every metric family the daemon exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Ratio,
    EffectiveRatio,
    BackendWeight,
    BackendUp,
    BackendOpenFlows,
    BackendNewFlows,
    BackendPackets,
    BackendBytes,
    BackendConnectionEvents,
    HealthTransitions,
    HealthDuration,
    FlowTableEntries,
    FlowTableCapacity,
    Packets,
    AdminRequests,
    SynProxyActive,
}

impl Metric {
    /// In the order of the output.
    pub const ALL: [Metric; 16] = [
        Metric::Ratio,
        Metric::EffectiveRatio,
        Metric::BackendWeight,
        Metric::BackendUp,
        Metric::BackendOpenFlows,
        Metric::BackendNewFlows,
        Metric::BackendPackets,
        Metric::BackendBytes,
        Metric::BackendConnectionEvents,
        Metric::HealthTransitions,
        Metric::HealthDuration,
        Metric::FlowTableEntries,
        Metric::FlowTableCapacity,
        Metric::Packets,
        Metric::AdminRequests,
        Metric::SynProxyActive,
    ];

    /// The family name, without the suffixes the encoding adds.
    pub const fn name(self) -> &'static str {
        match self {
            Metric::Ratio => "bglb_ratio_percent",
            Metric::EffectiveRatio => "bglb_effective_ratio_percent",
            Metric::BackendWeight => "bglb_backend_weight",
            Metric::BackendUp => "bglb_backend_up",
            Metric::BackendOpenFlows => "bglb_backend_open_flows",
            Metric::BackendNewFlows => "bglb_backend_new_flows",
            Metric::BackendPackets => "bglb_backend_packets",
            Metric::BackendBytes => "bglb_backend_bytes",
            Metric::BackendConnectionEvents => "bglb_backend_connection_events",
            Metric::HealthTransitions => "bglb_health_check_transitions",
            Metric::HealthDuration => "bglb_health_check_duration_seconds",
            Metric::FlowTableEntries => "bglb_flow_table_entries",
            Metric::FlowTableCapacity => "bglb_flow_table_capacity",
            Metric::Packets => "bglb_packets",
            Metric::AdminRequests => "bglb_admin_requests",
            Metric::SynProxyActive => "bglb_syn_proxy_active",
        }
    }

    pub const fn kind(self) -> Kind {
        match self {
            Metric::BackendNewFlows
            | Metric::BackendPackets
            | Metric::BackendBytes
            | Metric::BackendConnectionEvents
            | Metric::HealthTransitions
            | Metric::Packets
            | Metric::AdminRequests => Kind::Counter,
            Metric::HealthDuration => Kind::Histogram,
            Metric::Ratio
            | Metric::EffectiveRatio
            | Metric::BackendWeight
            | Metric::BackendUp
            | Metric::BackendOpenFlows
            | Metric::FlowTableEntries
            | Metric::FlowTableCapacity
            | Metric::SynProxyActive => Kind::Gauge,
        }
    }

    pub const fn help(self) -> &'static str {
        match self {
            Metric::Ratio => "Share of new connections the operator gave each pool (ctl ratio), in percent.",
            Metric::EffectiveRatio => {
                "Share of new connections each pool gets, in percent: a pool that cannot serve hands its share to \
                 the other."
            }
            Metric::BackendWeight => "Weight in effect for new connections (0 when disabled, drained or down).",
            Metric::BackendUp => {
                "1 if the backend passes its live health check (or has not been checked yet), 0 if it is down."
            }
            Metric::BackendOpenFlows => {
                "Connections pinned to the backend that have not ended; 0 across a pool means it is drained."
            }
            Metric::BackendNewFlows => "Connections the data plane sent to the backend.",
            Metric::BackendPackets => {
                "Packets forwarded for the backend's connections; direction in is client to backend, out is \
                 backend to client."
            }
            Metric::BackendConnectionEvents => {
                "Each connection's fate as the reply path sees it: event handshake (the backend's SYN-ACK), \
                 refused (RST before it) or reset (RST on an established connection). Progressive shifts roll \
                 back on these."
            }
            Metric::BackendBytes => {
                "IP bytes forwarded for the backend's connections; direction in is client to backend, out is \
                 backend to client."
            }
            Metric::HealthTransitions => "Times a backend's health check went up or down (label to).",
            Metric::HealthDuration => {
                "How long health checks took, failed ones included (a timed-out check counts as the timeout)."
            }
            Metric::FlowTableEntries => "Flows in the flow table after the last sweep, open and closing.",
            Metric::FlowTableCapacity => {
                "Size of the flow table (max_flows); when it is full the least recently used flows are evicted."
            }
            Metric::Packets => {
                "Packets the data plane did not forward through a flow as usual, by reason, and what it did \
                 with them (verdict)."
            }
            Metric::AdminRequests => "Admin socket requests by command and result.",
            Metric::SynProxyActive => {
                "1 while the data plane answers the service's SYNs with SYN cookies (mode always, or auto while \
                 the service is flooded), else 0."
            }
        }
    }

    /// The series names PromQL sees: counters end in `_total`, histograms
    /// have `_bucket`, `_sum` and `_count`.
    pub fn series(self) -> Vec<String> {
        let name = self.name();
        match self.kind() {
            Kind::Gauge => vec![name.to_owned()],
            Kind::Counter => vec![format!("{name}_total")],
            Kind::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|suffix| format!("{name}{suffix}"))
                .collect(),
        }
    }

    pub(super) fn metric_type(self) -> MetricType {
        match self.kind() {
            Kind::Gauge => MetricType::Gauge,
            Kind::Counter => MetricType::Counter,
            Kind::Histogram => MetricType::Histogram,
        }
    }
}

/// Every series name a query may use.
pub fn series_names() -> Vec<String> {
    Metric::ALL.into_iter().flat_map(Metric::series).collect()
}

#[cfg(test)]
mod tests {
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

        const DASHBOARD: &str = include_str!("../../../deploy/grafana/bg-lb.json");

        /// Labels the daemon exports, plus Prometheus's own.
        const LABELS: [&str; 12] = [
            "service",
            "pool",
            "backend",
            "direction",
            "check",
            "to",
            "reason",
            "verdict",
            "cmd",
            "result",
            "le",
            "instance",
        ];

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

        fn queries(json: &Json) -> Vec<String> {
            let mut queries: Vec<String> = panels(json)
                .iter()
                .flat_map(|p| p["targets"].as_array().into_iter().flatten())
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
                inputs.iter().any(|i| i["type"] == "datasource"
                    && i["pluginId"] == "prometheus"
                    && i["name"] == "DS_PROMETHEUS")
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
                "bglb_ratio_percent",
                "bglb_backend_new_flows_total",
                "bglb_backend_bytes_total",
                "bglb_backend_open_flows",
                "bglb_backend_up",
            ] {
                assert!(used.contains(wanted), "the dashboard shows {wanted}");
            }
        }

        #[test]
        fn aggregations_group_by_exported_labels() {
            for expr in queries(&dashboard()) {
                for (_, rest) in expr.match_indices("by (").map(|(i, _)| expr.split_at(i + 4)) {
                    let group = rest.split(')').next().unwrap();
                    for label in group.split(',').map(str::trim) {
                        assert!(
                            LABELS.contains(&label),
                            "{label:?} in {expr:?} is not a label bg-lb exports"
                        );
                    }
                }
            }
        }
    }
}
