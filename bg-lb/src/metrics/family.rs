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
mod tests;
