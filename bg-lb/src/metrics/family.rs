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
    BuildInfo,
    ServiceInfo,
    ListenerInfo,
    Ratio,
    EffectiveRatio,
    RatioPercent,
    EffectiveRatioPercent,
    BackendWeight,
    BackendUp,
    BackendOpenFlows,
    BackendEmbryonicFlows,
    BackendNewFlows,
    BackendPackets,
    BackendBytes,
    BackendConnectionEvents,
    SnatPortsInUse,
    SnatPortsCapacity,
    SnatPortsExhausted,
    HealthTransitions,
    HealthDuration,
    FlowTableEntries,
    FlowTableCapacity,
    Packets,
    AdminRequests,
    ConfigReloads,
    ConfigLastReloadSuccessful,
    ConfigLastReloadSuccessTimestamp,
    ShiftState,
    ShiftRollbacks,
    SynProxyActive,
    VipAnnounced,
}

impl Metric {
    /// In the order of the output.
    pub const ALL: [Metric; 31] = [
        Metric::BuildInfo,
        Metric::ServiceInfo,
        Metric::ListenerInfo,
        Metric::Ratio,
        Metric::EffectiveRatio,
        Metric::RatioPercent,
        Metric::EffectiveRatioPercent,
        Metric::BackendWeight,
        Metric::BackendUp,
        Metric::BackendOpenFlows,
        Metric::BackendEmbryonicFlows,
        Metric::BackendNewFlows,
        Metric::BackendPackets,
        Metric::BackendBytes,
        Metric::BackendConnectionEvents,
        Metric::SnatPortsInUse,
        Metric::SnatPortsCapacity,
        Metric::SnatPortsExhausted,
        Metric::HealthTransitions,
        Metric::HealthDuration,
        Metric::FlowTableEntries,
        Metric::FlowTableCapacity,
        Metric::Packets,
        Metric::AdminRequests,
        Metric::ConfigReloads,
        Metric::ConfigLastReloadSuccessful,
        Metric::ConfigLastReloadSuccessTimestamp,
        Metric::ShiftState,
        Metric::ShiftRollbacks,
        Metric::SynProxyActive,
        Metric::VipAnnounced,
    ];

    /// The family name, without the suffixes the encoding adds.
    pub const fn name(self) -> &'static str {
        match self {
            Metric::BuildInfo => "bglb_build_info",
            Metric::ServiceInfo => "bglb_service_info",
            Metric::ListenerInfo => "bglb_listener_info",
            Metric::Ratio => "bglb_ratio",
            Metric::EffectiveRatio => "bglb_effective_ratio",
            Metric::RatioPercent => "bglb_ratio_percent",
            Metric::EffectiveRatioPercent => "bglb_effective_ratio_percent",
            Metric::BackendWeight => "bglb_backend_weight",
            Metric::BackendUp => "bglb_backend_up",
            Metric::BackendOpenFlows => "bglb_backend_open_flows",
            Metric::BackendEmbryonicFlows => "bglb_backend_embryonic_flows",
            Metric::BackendNewFlows => "bglb_backend_new_flows",
            Metric::BackendPackets => "bglb_backend_packets",
            Metric::BackendBytes => "bglb_backend_bytes",
            Metric::BackendConnectionEvents => "bglb_backend_connection_events",
            Metric::SnatPortsInUse => "bglb_snat_ports_in_use",
            Metric::SnatPortsCapacity => "bglb_snat_ports_capacity",
            Metric::SnatPortsExhausted => "bglb_snat_ports_exhausted",
            Metric::HealthTransitions => "bglb_health_check_transitions",
            Metric::HealthDuration => "bglb_health_check_duration_seconds",
            Metric::FlowTableEntries => "bglb_flow_table_entries",
            Metric::FlowTableCapacity => "bglb_flow_table_capacity",
            Metric::Packets => "bglb_packets",
            Metric::AdminRequests => "bglb_admin_requests",
            Metric::ConfigReloads => "bglb_config_reloads",
            Metric::ConfigLastReloadSuccessful => "bglb_config_last_reload_successful",
            Metric::ConfigLastReloadSuccessTimestamp => "bglb_config_last_reload_success_timestamp_seconds",
            Metric::ShiftState => "bglb_shift_state",
            Metric::ShiftRollbacks => "bglb_shift_rollbacks",
            Metric::SynProxyActive => "bglb_syn_proxy_active",
            Metric::VipAnnounced => "bglb_vip_announced",
        }
    }

    pub const fn kind(self) -> Kind {
        match self {
            Metric::BackendNewFlows
            | Metric::BackendPackets
            | Metric::BackendBytes
            | Metric::BackendConnectionEvents
            | Metric::SnatPortsExhausted
            | Metric::HealthTransitions
            | Metric::Packets
            | Metric::AdminRequests
            | Metric::ConfigReloads
            | Metric::ShiftRollbacks => Kind::Counter,
            Metric::HealthDuration => Kind::Histogram,
            Metric::BuildInfo
            | Metric::ServiceInfo
            | Metric::ListenerInfo
            | Metric::Ratio
            | Metric::EffectiveRatio
            | Metric::RatioPercent
            | Metric::EffectiveRatioPercent
            | Metric::BackendWeight
            | Metric::BackendUp
            | Metric::BackendOpenFlows
            | Metric::BackendEmbryonicFlows
            | Metric::SnatPortsInUse
            | Metric::SnatPortsCapacity
            | Metric::FlowTableEntries
            | Metric::FlowTableCapacity
            | Metric::ConfigLastReloadSuccessful
            | Metric::ConfigLastReloadSuccessTimestamp
            | Metric::ShiftState
            | Metric::SynProxyActive
            | Metric::VipAnnounced => Kind::Gauge,
        }
    }

    /// The labels of every series of the family, in the order the encoding
    /// writes them (a histogram's `_bucket` series add `le`).
    pub const fn labels(self) -> &'static [&'static str] {
        const BACKEND: &[&str] = &["service", "pool", "backend"];
        match self {
            Metric::BuildInfo => &["version", "commit", "rustc"],
            Metric::ServiceInfo => &["service", "protocol", "forwarding"],
            Metric::ListenerInfo => &["service", "vip", "family", "protocol", "listener"],
            Metric::Ratio | Metric::EffectiveRatio | Metric::RatioPercent | Metric::EffectiveRatioPercent => {
                &["service", "pool"]
            }
            Metric::BackendWeight
            | Metric::BackendUp
            | Metric::BackendOpenFlows
            | Metric::BackendEmbryonicFlows
            | Metric::BackendNewFlows
            | Metric::SnatPortsInUse
            | Metric::SnatPortsCapacity
            | Metric::SnatPortsExhausted => BACKEND,
            Metric::BackendPackets | Metric::BackendBytes => &["service", "pool", "backend", "direction"],
            Metric::BackendConnectionEvents => &["service", "pool", "backend", "event"],
            Metric::HealthTransitions => &["service", "pool", "backend", "check", "to"],
            Metric::HealthDuration => &["service", "pool", "backend", "check"],
            Metric::FlowTableEntries
            | Metric::FlowTableCapacity
            | Metric::ConfigLastReloadSuccessful
            | Metric::ConfigLastReloadSuccessTimestamp => &[],
            Metric::Packets => &["reason", "verdict"],
            Metric::AdminRequests => &["cmd", "result"],
            Metric::ConfigReloads => &["result"],
            Metric::ShiftState => &["service", "state"],
            Metric::ShiftRollbacks => &["service"],
            Metric::SynProxyActive => &["service", "mode"],
            Metric::VipAnnounced => &["vip"],
        }
    }

    /// The family a series name (as [`Metric::series`] spells it) belongs to.
    pub fn of_series(series: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.series().iter().any(|s| s == series))
    }

    /// The family that replaces a deprecated one. Deprecated families are
    /// still exported for one release so existing dashboards and alerts keep
    /// working while they move; the shipped dashboard and rules never use them.
    pub const fn replaced_by(self) -> Option<Metric> {
        match self {
            Metric::RatioPercent => Some(Metric::Ratio),
            Metric::EffectiveRatioPercent => Some(Metric::EffectiveRatio),
            _ => None,
        }
    }

    pub const fn help(self) -> &'static str {
        match self {
            Metric::BuildInfo => {
                "Always 1: the version of this bg-lb, the git commit it was built from (unknown when not built \
                 from a git checkout) and the rustc that compiled it."
            }
            Metric::ServiceInfo => "Always 1: each service's protocol (tcp or udp) and forwarding mode.",
            Metric::ListenerInfo => {
                "Always 1: each VIP of each service, its family (ipv4 or ipv6), protocol, and listener (live or \
                 standby)."
            }
            Metric::Ratio => "Share of new connections the operator gave each pool (ctl ratio), from 0 to 1.",
            Metric::EffectiveRatio => {
                "Share of new connections each pool gets, from 0 to 1: a pool that cannot serve hands its share to \
                 the other."
            }
            Metric::RatioPercent => {
                "Deprecated, removed in the next release: use bglb_ratio (0 to 1). The operator's share per pool in \
                 percent."
            }
            Metric::EffectiveRatioPercent => {
                "Deprecated, removed in the next release: use bglb_effective_ratio (0 to 1). The share in effect \
                 per pool in percent."
            }
            Metric::BackendWeight => "Weight in effect for new connections (0 when disabled, drained or down).",
            Metric::BackendUp => {
                "1 if the backend passes its live health check (or has not been checked yet), 0 if it is down."
            }
            Metric::BackendOpenFlows => {
                "Established connections pinned to the backend that have not ended; 0 across a pool means it is \
                 drained."
            }
            Metric::BackendEmbryonicFlows => {
                "Flows pinned to the backend whose client has not completed the handshake (connections being set \
                 up, or spoofed SYNs that never will be); they expire after timeouts.syn and no drain waits for \
                 them."
            }
            Metric::BackendNewFlows => "Connections to the backend whose handshake the client completed.",
            Metric::BackendPackets => {
                "Packets forwarded for the backend's connections; direction in is client to backend, out is \
                 backend to client."
            }
            Metric::BackendConnectionEvents => {
                "Each connection's fate as the reply path sees it: event handshake (the backend's SYN-ACK), \
                 refused (a RST before the client completed the handshake) or reset (a RST on an established \
                 connection). Progressive shifts roll back on these."
            }
            Metric::BackendBytes => {
                "IP bytes forwarded for the backend's connections; direction in is client to backend, out is \
                 backend to client."
            }
            Metric::SnatPortsInUse => {
                "SNAT (address, port) pairs the backend's flows hold after the last sweep; a backend address in \
                 several services (or behind a standby VIP) shares one budget and shows it in each."
            }
            Metric::SnatPortsCapacity => {
                "SNAT (address, port) pairs a backend's flows can hold at once: SNAT addresses times snat_ports. \
                 New connections are refused when bglb_snat_ports_in_use reaches it."
            }
            Metric::SnatPortsExhausted => {
                "Connection requests to the backend refused with a RST (TCP) or dropped (UDP) because every SNAT \
                 (address, port) pair they could get was in use: add snat_addresses or widen snat_ports."
            }
            Metric::HealthTransitions => "Times a backend's health check went up or down (label to).",
            Metric::HealthDuration => {
                "How long health checks took, failed ones included (a timed-out check counts as the timeout)."
            }
            Metric::FlowTableEntries => {
                "Flows in the flow table after the last sweep: embryonic, open and closed ones lingering."
            }
            Metric::FlowTableCapacity => {
                "Size of the flow table (max_flows); when it is full the least recently used flows are evicted."
            }
            Metric::Packets => {
                "Packets the data plane did not forward through a flow as usual, by reason, and what it did \
                 with them (verdict)."
            }
            Metric::AdminRequests => "Admin socket requests by command and result.",
            Metric::ConfigReloads => {
                "Config reloads (ctl reload or SIGHUP) by result: ok, or error when the new config was rejected \
                 and the running one kept."
            }
            Metric::ConfigLastReloadSuccessful => {
                "1 if the last config reload succeeded (or none was tried since the daemon started), 0 if it was \
                 rejected."
            }
            Metric::ConfigLastReloadSuccessTimestamp => {
                "When the config in effect was loaded (daemon start or the last successful reload), in seconds \
                 since the Unix epoch."
            }
            Metric::ShiftState => {
                "1 for the state of the service's latest progressive shift, 0 for the others: none, running, \
                 completed, rolled_back (the daemon rolled it back) or aborted (an operator stopped it: ctl shift \
                 --abort or ctl rollback)."
            }
            Metric::ShiftRollbacks => {
                "Progressive shifts the daemon rolled back on its own (a target backend down or too many failed \
                 connections)."
            }
            Metric::SynProxyActive => {
                "1 while the data plane answers the service's SYNs with SYN cookies (mode always, or auto while \
                 the service is flooded), else 0."
            }
            Metric::VipAnnounced => {
                "1 while BIRD announces the VIP address to the routers ([bgp]), 0 while it is withdrawn (node \
                 drained, no backend can serve, or BIRD not reconfigured yet)."
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

/// Every label a query may group or match by: those of bg-lb's series, the
/// histogram's `le`, and what Prometheus adds to every series it scrapes.
pub fn label_names() -> Vec<&'static str> {
    let mut labels: Vec<&str> = Metric::ALL
        .into_iter()
        .flat_map(|m| m.labels().iter().copied())
        .collect();
    labels.extend(["le", "job", "instance"]);
    labels.sort_unstable();
    labels.dedup();
    labels
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

        const DASHBOARD: &str = include_str!("../../../deploy/grafana/bg-lb.json");

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
}
