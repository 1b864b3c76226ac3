//! A [`Snapshot`] in the Prometheus text format (0.0.4), written with
//! `prometheus-client`: each family's rows, their labels, and the label
//! values bg-lb defines (a packet counter's verdict, a check's listener).

use std::{fmt, net::SocketAddrV4};

use bg_lb_common::counters::Counter;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet, prometheus_text},
    registry::Registry,
};

use super::{
    family::Metric,
    snapshot::{LatencyHistogram, ProbeMetrics, Snapshot},
};
use crate::{
    health::Listener,
    protocol::{BackendHealth, BackendStatus, ServiceStatus},
    ratio::Pool,
};

/// `Content-Type` of what [`encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

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
        | Counter::RedirectFailed
        | Counter::SynCookieInvalid
        | Counter::SynProxyEarlyData
        | Counter::SynProxyBadChecksum
        | Counter::SynProxyUnavailable => "drop",
        Counter::UnpinnedForwarded | Counter::SynCookieValid => "forward",
        Counter::Refused | Counter::FlowReset => "reset",
        // The SYN proxy's SYN-ACK, sent back in the SYN's place.
        Counter::SynCookieSent => "answer",
        Counter::SynProxyHeld => "hold",
    }
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
            Metric::SynProxyActive => self
                .services
                .iter()
                .map(|s| {
                    let labels = vec![("service", s.name.clone()), ("mode", s.syn_proxy.mode.to_string())];
                    (labels, Value::Gauge(s.syn_proxy.active.into()))
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
            .flat_map(|(s, b)| prefixed(backend_labels(&s.name, b.pool, b.address), rows(b)))
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
                let mut labels = backend_labels(&p.service, p.pool, p.backend);
                labels.push(("check", check_name(p.check).to_owned()));
                prefixed(labels, rows(p))
            })
            .collect()
    }
}

/// `rows` with `first` before each row's own labels.
fn prefixed<'a>(first: Labels, rows: Vec<(Labels, Value<'a>)>) -> impl Iterator<Item = (Labels, Value<'a>)> {
    rows.into_iter().map(move |(extra, value)| {
        let mut labels = first.clone();
        labels.extend(extra);
        (labels, value)
    })
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
    use std::{collections::HashSet, time::Duration};

    use super::*;
    use crate::{
        dataplane::syn_proxy::SynProxyMode,
        health::{CheckKey, Report, Transition},
        metrics::{AdminRequests, INVALID_COMMAND, Kind, ProbeStats, series_names},
        protocol::{Request, SynProxyStatus},
        ratio::Ratio,
        test_support::backend_status,
    };

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
            ..backend_status("10.0.1.1:80", Pool::Blue, BackendHealth::Up)
        };
        let down = BackendStatus {
            weight: 0,
            ..backend_status("10.0.2.1:80", Pool::Green, BackendHealth::Down)
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
                    backend_status("10.0.2.2:80", Pool::Green, BackendHealth::Unchecked),
                ],
                shift: None,
                syn_proxy: SynProxyStatus {
                    mode: SynProxyMode::Auto,
                    active: true,
                },
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
        // (family, extra labels, value)
        let rows = [
            ("bglb_backend_weight", "", 50),
            ("bglb_backend_open_flows", "", 3),
            ("bglb_backend_new_flows_total", "", 7),
            ("bglb_backend_connection_events_total", r#",event="handshake""#, 6),
            ("bglb_backend_connection_events_total", r#",event="refused""#, 1),
            ("bglb_backend_connection_events_total", r#",event="reset""#, 0),
            ("bglb_backend_packets_total", r#",direction="in""#, 40),
            ("bglb_backend_packets_total", r#",direction="out""#, 30),
            ("bglb_backend_bytes_total", r#",direction="in""#, 4000),
            ("bglb_backend_bytes_total", r#",direction="out""#, 90000),
        ];
        for (family, extra, value) in rows {
            assert_line(&text, &format!("{family}{{{blue}{extra}}} {value}"));
        }
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
        assert_eq!(verdict(Counter::SynCookieSent), "answer");
    }

    #[test]
    fn syn_proxy_state_is_a_gauge_per_service_with_its_mode() {
        assert_line(&encoded(), r#"bglb_syn_proxy_active{service="web",mode="auto"} 1"#);
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
}
