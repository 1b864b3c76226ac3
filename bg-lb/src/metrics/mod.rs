//! Prometheus metrics: the families the daemon exports ([`Metric`], the one
//! list that the Grafana dashboard is checked against), the [`Snapshot`] the
//! task owning the daemon gathers for a scrape, and its encoding in the
//! Prometheus text format (0.0.4) with `prometheus-client`.
//!
//! Traffic counters are the per-CPU BPF map values summed at scrape time.
//! They live in the pinned maps, so a daemon restart does not reset them.
//! Health-check and admin-request counters live in the daemon and start over
//! with it, which `rate()` and `increase()` treat as a counter reset.

pub mod server;

use std::{collections::BTreeMap, fmt, net::SocketAddrV4, time::Duration};

use bg_lb_common::counters::Counter;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet, prometheus_text},
    metrics::MetricType,
    registry::Registry,
};

use crate::{
    health::{Listener, Report, Transition},
    protocol::{BackendHealth, BackendStatus, Request, ServiceStatus},
    ratio::Pool,
};

/// `Content-Type` of what [`encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The `cmd` label of an admin request that could not be parsed.
pub const INVALID_COMMAND: &str = "invalid";

/// Upper bounds (seconds) of the health-check latency buckets: from a fast
/// LAN connect to the longest sensible timeout.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

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
}

impl Metric {
    /// In the order of the output.
    pub const ALL: [Metric; 15] = [
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
            | Metric::FlowTableCapacity => Kind::Gauge,
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

    fn metric_type(self) -> MetricType {
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

/// What the data plane does with packets counted under `counter`.
pub fn verdict(counter: Counter) -> &'static str {
    match counter {
        Counter::Passed
        | Counter::Truncated
        | Counter::Fragmented
        | Counter::IpOptions
        | Counter::ReplyWithoutFlow
        | Counter::TtlExpired => "pass",
        Counter::NoBackend
        | Counter::SnatPortsExhausted
        | Counter::FlowInsertFailed
        | Counter::FibFailed
        | Counter::FibNoNeighbour
        | Counter::RedirectFailed => "drop",
        Counter::UnpinnedForwarded => "forward",
        Counter::Refused | Counter::FlowReset => "reset",
    }
}

/// One probe's transitions and latencies since the daemon started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbeStats {
    pub went_up: u64,
    pub went_down: u64,
    pub latency: LatencyHistogram,
}

impl ProbeStats {
    pub fn record(&mut self, report: &Report) {
        match report.transition {
            Some(Transition::WentUp) => self.went_up += 1,
            Some(Transition::WentDown) => self.went_down += 1,
            None => {}
        }
        self.latency.observe(report.duration);
    }
}

/// Counts per bucket of [`LATENCY_BUCKETS`] plus one past the last bound (not
/// cumulative: the encoding adds them up).
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyHistogram {
    counts: [u64; LATENCY_BUCKETS.len() + 1],
    sum_seconds: f64,
    count: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: [0; LATENCY_BUCKETS.len() + 1],
            sum_seconds: 0.0,
            count: 0,
        }
    }
}

impl LatencyHistogram {
    pub fn observe(&mut self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[bucket] += 1;
        self.sum_seconds += seconds;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn buckets(&self) -> Vec<(f64, u64)> {
        LATENCY_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts)
            .collect()
    }
}

/// Admin requests by command and result; every known command starts at 0 so
/// `rate()` sees the first request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminRequests(BTreeMap<(&'static str, bool), u64>);

impl Default for AdminRequests {
    fn default() -> Self {
        // An unparsable request can only fail.
        let known = Request::COMMANDS
            .into_iter()
            .flat_map(|cmd| [((cmd, true), 0), ((cmd, false), 0)]);
        AdminRequests(known.chain([((INVALID_COMMAND, false), 0)]).collect())
    }
}

impl AdminRequests {
    pub fn record(&mut self, cmd: &'static str, ok: bool) {
        *self.0.entry((cmd, ok)).or_default() += 1;
    }
}

/// A health probe's stats with the labels that place it.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeMetrics {
    pub service: String,
    pub pool: Pool,
    pub backend: SocketAddrV4,
    pub check: Listener,
    pub stats: ProbeStats,
}

/// Everything one scrape shows, gathered by the task that owns the daemon.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// As `ctl status` reports them (counters summed over the live and
    /// standby listeners).
    pub services: Vec<ServiceStatus>,
    pub probes: Vec<ProbeMetrics>,
    pub flow_entries: u64,
    pub flow_capacity: u64,
    /// Every [`Counter`], summed over CPUs.
    pub packets: Vec<(Counter, u64)>,
    pub admin_requests: AdminRequests,
}

/// The snapshot in the Prometheus text format.
pub fn encode(snapshot: Snapshot) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

type Labels = Vec<(&'static str, String)>;

enum Value<'a> {
    Gauge(u64),
    Counter(u64),
    Histogram(&'a LatencyHistogram),
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for metric in Metric::ALL {
            write_family(&mut encoder, metric, self.rows(metric))?;
        }
        Ok(())
    }
}

fn write_family(encoder: &mut DescriptorEncoder, metric: Metric, rows: Vec<(Labels, Value)>) -> Result<(), fmt::Error> {
    let mut family = encoder.encode_descriptor(metric.name(), metric.help(), None, metric.metric_type())?;
    for (labels, value) in &rows {
        let mut series = family.encode_family(labels)?;
        match value {
            Value::Gauge(v) => series.encode_gauge(v)?,
            Value::Counter(v) => series.encode_counter::<NoLabelSet, _, f64>(v, None)?,
            Value::Histogram(h) => series.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets(), None)?,
        }
    }
    Ok(())
}

impl Snapshot {
    fn rows(&self, metric: Metric) -> Vec<(Labels, Value<'_>)> {
        match metric {
            Metric::Ratio => self.pool_rows(|s, pool| s.ratio.share(pool)),
            Metric::EffectiveRatio => self.pool_rows(|s, pool| s.effective_ratio.share(pool)),
            Metric::BackendWeight => self.backend_rows(|b| vec![(vec![], Value::Gauge(b.weight.into()))]),
            Metric::BackendUp => {
                self.backend_rows(|b| vec![(vec![], Value::Gauge(u64::from(b.health != BackendHealth::Down)))])
            }
            Metric::BackendOpenFlows => self.backend_rows(|b| vec![(vec![], Value::Gauge(b.open_flows))]),
            Metric::BackendNewFlows => self.backend_rows(|b| vec![(vec![], Value::Counter(b.new_flows))]),
            Metric::BackendPackets => self.backend_rows(|b| directions(b.packets_in, b.packets_out)),
            Metric::BackendBytes => self.backend_rows(|b| directions(b.bytes_in, b.bytes_out)),
            Metric::BackendConnectionEvents => self.backend_rows(|b| {
                [("handshake", b.handshakes), ("refused", b.refused), ("reset", b.resets)]
                    .into_iter()
                    .map(|(event, n)| (vec![("event", event.to_owned())], Value::Counter(n)))
                    .collect()
            }),
            Metric::HealthTransitions => self.probe_rows(|p| {
                [("up", p.stats.went_up), ("down", p.stats.went_down)]
                    .map(|(to, n)| (vec![("to", to.to_owned())], Value::Counter(n)))
                    .into()
            }),
            Metric::HealthDuration => self.probe_rows(|p| vec![(vec![], Value::Histogram(&p.stats.latency))]),
            Metric::FlowTableEntries => vec![(vec![], Value::Gauge(self.flow_entries))],
            Metric::FlowTableCapacity => vec![(vec![], Value::Gauge(self.flow_capacity))],
            Metric::Packets => self
                .packets
                .iter()
                .map(|&(counter, n)| {
                    let labels = vec![
                        ("reason", counter.name().to_owned()),
                        ("verdict", verdict(counter).to_owned()),
                    ];
                    (labels, Value::Counter(n))
                })
                .collect(),
            Metric::AdminRequests => self
                .admin_requests
                .0
                .iter()
                .map(|(&(cmd, ok), &n)| {
                    let result = if ok { "ok" } else { "error" };
                    (
                        vec![("cmd", cmd.to_owned()), ("result", result.to_owned())],
                        Value::Counter(n),
                    )
                })
                .collect(),
        }
    }

    /// One row per service and pool.
    fn pool_rows(&self, value: impl Fn(&ServiceStatus, Pool) -> u8) -> Vec<(Labels, Value<'_>)> {
        self.services
            .iter()
            .flat_map(|s| {
                [Pool::Blue, Pool::Green].map(|pool| {
                    let labels = vec![("service", s.name.clone()), ("pool", pool.to_string())];
                    (labels, Value::Gauge(value(s, pool).into()))
                })
            })
            .collect()
    }

    /// `rows` of each backend, labelled with its service, pool and address
    /// first.
    fn backend_rows<'a>(
        &'a self,
        rows: impl Fn(&'a BackendStatus) -> Vec<(Labels, Value<'a>)>,
    ) -> Vec<(Labels, Value<'a>)> {
        self.services
            .iter()
            .flat_map(|s| s.backends.iter().map(move |b| (s, b)))
            .flat_map(|(s, b)| {
                rows(b).into_iter().map(move |(extra, value)| {
                    let mut labels = backend_labels(&s.name, b.pool, b.address);
                    labels.extend(extra);
                    (labels, value)
                })
            })
            .collect()
    }

    /// `rows` of each probe, labelled with its backend and check first.
    fn probe_rows<'a>(
        &'a self,
        rows: impl Fn(&'a ProbeMetrics) -> Vec<(Labels, Value<'a>)>,
    ) -> Vec<(Labels, Value<'a>)> {
        self.probes
            .iter()
            .flat_map(|p| {
                rows(p).into_iter().map(move |(extra, value)| {
                    let mut labels = backend_labels(&p.service, p.pool, p.backend);
                    labels.push(("check", check_name(p.check).to_owned()));
                    labels.extend(extra);
                    (labels, value)
                })
            })
            .collect()
    }
}

fn backend_labels(service: &str, pool: Pool, backend: SocketAddrV4) -> Labels {
    vec![
        ("service", service.to_owned()),
        ("pool", pool.to_string()),
        ("backend", backend.to_string()),
    ]
}

fn directions<'a>(into_backend: u64, out_of_backend: u64) -> Vec<(Labels, Value<'a>)> {
    vec![
        (vec![("direction", "in".to_owned())], Value::Counter(into_backend)),
        (vec![("direction", "out".to_owned())], Value::Counter(out_of_backend)),
    ]
}

fn check_name(listener: Listener) -> &'static str {
    match listener {
        Listener::Live => "live",
        Listener::Standby => "standby",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::{health::CheckKey, protocol::BackendStatus, ratio::Ratio};

    fn backend(address: &str, pool: Pool, health: BackendHealth) -> BackendStatus {
        BackendStatus {
            address: address.parse().unwrap(),
            pool,
            weight: 100,
            configured_weight: 100,
            enabled: true,
            health,
            last_check: None,
            standby_health: None,
            open_flows: 0,
            new_flows: 0,
            packets_in: 0,
            bytes_in: 0,
            packets_out: 0,
            bytes_out: 0,
            handshakes: 0,
            refused: 0,
            resets: 0,
        }
    }

    /// "web" at 30:70 with blue 10.0.1.1 (up, busy), green 10.0.2.1 (down)
    /// and green 10.0.2.2 (not checked yet).
    fn snapshot() -> Snapshot {
        let busy = BackendStatus {
            weight: 50,
            open_flows: 3,
            new_flows: 7,
            handshakes: 6,
            refused: 1,
            packets_in: 40,
            bytes_in: 4000,
            packets_out: 30,
            bytes_out: 90_000,
            ..backend("10.0.1.1:80", Pool::Blue, BackendHealth::Up)
        };
        let down = BackendStatus {
            weight: 0,
            ..backend("10.0.2.1:80", Pool::Green, BackendHealth::Down)
        };
        let mut stats = ProbeStats::default();
        for (transition, millis) in [(None, 0.2), (Some(Transition::WentDown), 3.0), (None, 2_000.0)] {
            stats.record(&Report {
                key: CheckKey {
                    service: "web".into(),
                    backend: down.address,
                    listener: Listener::Live,
                },
                outcome: Ok(()),
                up: false,
                transition,
                duration: Duration::from_secs_f64(millis / 1000.0),
            });
        }
        let mut admin_requests = AdminRequests::default();
        admin_requests.record("ratio", true);
        admin_requests.record("ratio", true);
        admin_requests.record(INVALID_COMMAND, false);
        Snapshot {
            services: vec![ServiceStatus {
                name: "web".into(),
                vip: "10.0.0.100:80".parse().unwrap(),
                standby_vip: None,
                ratio: Ratio::new(30).unwrap(),
                effective_ratio: Ratio::new(100).unwrap(),
                backends: vec![
                    busy,
                    down,
                    backend("10.0.2.2:80", Pool::Green, BackendHealth::Unchecked),
                ],
                shift: None,
            }],
            probes: vec![ProbeMetrics {
                service: "web".into(),
                pool: Pool::Green,
                backend: "10.0.2.1:80".parse().unwrap(),
                check: Listener::Live,
                stats,
            }],
            flow_entries: 5,
            flow_capacity: 65_536,
            packets: Counter::ALL.iter().map(|&c| (c, c as u64 * 10)).collect(),
            admin_requests,
        }
    }

    fn encoded() -> String {
        encode(snapshot()).unwrap()
    }

    #[track_caller]
    fn assert_line(text: &str, line: &str) {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
    }

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

    #[test]
    fn every_family_is_encoded_with_help_and_type() {
        let text = encoded();
        let typed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let expected: Vec<String> = Metric::ALL
            .iter()
            .map(|m| match m.kind() {
                Kind::Counter => format!("{}_total", m.name()),
                Kind::Gauge | Kind::Histogram => m.name().to_owned(),
            })
            .collect();
        assert_eq!(typed, expected);
        assert_eq!(text.matches("# HELP ").count(), Metric::ALL.len());
        // Every sample line uses a series name a query may use.
        let series: HashSet<String> = series_names().into_iter().collect();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(series.contains(name), "{name} is not in series_names()");
        }
    }

    #[test]
    fn ratios_are_percent_gauges_per_pool() {
        let text = encoded();
        assert_line(&text, r#"bglb_ratio_percent{service="web",pool="blue"} 30"#);
        assert_line(&text, r#"bglb_ratio_percent{service="web",pool="green"} 70"#);
        assert_line(&text, r#"bglb_effective_ratio_percent{service="web",pool="blue"} 100"#);
        assert_line(&text, r#"bglb_effective_ratio_percent{service="web",pool="green"} 0"#);
    }

    #[test]
    fn backend_series_carry_service_pool_and_backend() {
        let text = encoded();
        let blue = r#"service="web",pool="blue",backend="10.0.1.1:80""#;
        assert_line(&text, &format!("bglb_backend_weight{{{blue}}} 50"));
        assert_line(&text, &format!("bglb_backend_open_flows{{{blue}}} 3"));
        assert_line(&text, &format!("bglb_backend_new_flows_total{{{blue}}} 7"));
        assert_line(
            &text,
            &format!(r#"bglb_backend_connection_events_total{{{blue},event="handshake"}} 6"#),
        );
        assert_line(
            &text,
            &format!(r#"bglb_backend_connection_events_total{{{blue},event="refused"}} 1"#),
        );
        assert_line(
            &text,
            &format!(r#"bglb_backend_connection_events_total{{{blue},event="reset"}} 0"#),
        );
        assert_line(
            &text,
            &format!(r#"bglb_backend_packets_total{{{blue},direction="in"}} 40"#),
        );
        assert_line(
            &text,
            &format!(r#"bglb_backend_packets_total{{{blue},direction="out"}} 30"#),
        );
        assert_line(
            &text,
            &format!(r#"bglb_backend_bytes_total{{{blue},direction="in"}} 4000"#),
        );
        assert_line(
            &text,
            &format!(r#"bglb_backend_bytes_total{{{blue},direction="out"}} 90000"#),
        );
    }

    #[test]
    fn down_backends_are_0_and_unchecked_ones_count_as_up() {
        let text = encoded();
        assert_line(
            &text,
            r#"bglb_backend_up{service="web",pool="blue",backend="10.0.1.1:80"} 1"#,
        );
        assert_line(
            &text,
            r#"bglb_backend_up{service="web",pool="green",backend="10.0.2.1:80"} 0"#,
        );
        assert_line(
            &text,
            r#"bglb_backend_up{service="web",pool="green",backend="10.0.2.2:80"} 1"#,
        );
    }

    #[test]
    fn health_checks_have_transitions_and_a_cumulative_latency_histogram() {
        let text = encoded();
        let probe = r#"service="web",pool="green",backend="10.0.2.1:80",check="live""#;
        assert_line(
            &text,
            &format!(r#"bglb_health_check_transitions_total{{{probe},to="down"}} 1"#),
        );
        assert_line(
            &text,
            &format!(r#"bglb_health_check_transitions_total{{{probe},to="up"}} 0"#),
        );
        let bucket =
            |le: &str, n: u64| format!(r#"bglb_health_check_duration_seconds_bucket{{{probe},le="{le}"}} {n}"#);
        assert_line(&text, &bucket("0.0005", 1));
        assert_line(&text, &bucket("0.0025", 1));
        assert_line(&text, &bucket("0.005", 2));
        assert_line(&text, &bucket("1", 2));
        assert_line(&text, &bucket("2.5", 3));
        assert_line(&text, &bucket("+Inf", 3));
        assert_line(&text, &format!("bglb_health_check_duration_seconds_count{{{probe}}} 3"));
        let sum = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("bglb_health_check_duration_seconds_sum{{{probe}}} ")))
            .expect("a _sum line");
        assert!((sum.parse::<f64>().unwrap() - 2.0032).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn latency_past_the_last_bucket_counts_only_in_inf() {
        let mut histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_secs(60));
        let buckets = histogram.buckets();
        assert_eq!(buckets.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 1)));
        assert!(buckets[..LATENCY_BUCKETS.len()].iter().all(|&(_, n)| n == 0));
        assert_eq!(histogram.count(), 1);
    }

    #[test]
    fn every_data_plane_counter_is_a_reason_with_its_verdict() {
        let text = encoded();
        for counter in Counter::ALL {
            let line = format!(
                r#"bglb_packets_total{{reason="{}",verdict="{}"}} {}"#,
                counter.name(),
                verdict(counter),
                counter as u64 * 10
            );
            assert_line(&text, &line);
        }
        assert_eq!(verdict(Counter::NoBackend), "drop");
        assert_eq!(verdict(Counter::Passed), "pass");
        assert_eq!(verdict(Counter::Refused), "reset");
    }

    #[test]
    fn flow_table_entries_and_capacity_are_gauges() {
        let text = encoded();
        assert_line(&text, "bglb_flow_table_entries 5");
        assert_line(&text, "bglb_flow_table_capacity 65536");
    }

    #[test]
    fn admin_requests_count_by_command_and_result_from_zero() {
        let text = encoded();
        assert_line(&text, r#"bglb_admin_requests_total{cmd="ratio",result="ok"} 2"#);
        assert_line(&text, r#"bglb_admin_requests_total{cmd="ratio",result="error"} 0"#);
        assert_line(&text, r#"bglb_admin_requests_total{cmd="invalid",result="error"} 1"#);
        assert!(!text.contains(r#"cmd="invalid",result="ok""#));
        for cmd in Request::COMMANDS {
            for result in ["ok", "error"] {
                assert!(
                    text.contains(&format!(
                        r#"bglb_admin_requests_total{{cmd="{cmd}",result="{result}"}} "#
                    )),
                    "{cmd} {result} is there before the first request"
                );
            }
        }
    }

    #[test]
    fn an_empty_snapshot_still_describes_every_family() {
        let text = encode(Snapshot::default()).unwrap();
        assert_eq!(text.matches("# TYPE ").count(), Metric::ALL.len());
        assert_line(&text, "bglb_flow_table_capacity 0");
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
