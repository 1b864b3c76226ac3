//! A [`Snapshot`] in the Prometheus text format (0.0.4), written with
//! `prometheus-client`: each family's rows, their labels, and the label
//! values bg-lb defines (a packet counter's verdict, a check's listener, a
//! shift's state).

use std::{fmt, net::SocketAddr, time::SystemTime};

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
    shift::{ShiftOutcome, ShiftRecord},
};

/// `Content-Type` of what [`encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// What the data plane does with packets counted under `counter`.
pub fn verdict(counter: Counter) -> &'static str {
    match counter {
        Counter::Passed | Counter::ReplyWithoutFlow => "pass",
        Counter::Truncated
        | Counter::Fragmented
        | Counter::IpOptions
        | Counter::TtlExpired
        | Counter::NoBackend
        | Counter::FlowInsertFailed
        | Counter::FibFailed
        | Counter::FibNoNeighbour
        | Counter::RedirectFailed
        | Counter::BadTcpFlags
        | Counter::StaleFlow
        | Counter::StaleReply
        | Counter::UnpinnedPortTaken
        | Counter::TooBigDropped
        | Counter::SynCookieInvalid
        | Counter::SynProxyEarlyData
        | Counter::SynProxyBadChecksum
        | Counter::SynProxyUnavailable
        | Counter::DsrNotOnLink
        | Counter::UdpSnatPortsExhausted
        | Counter::UdpGatewayCollision
        | Counter::Ipv6ExtensionHeader
        | Counter::Udp6NoChecksum => "drop",
        Counter::IcmpErrorWithoutFlow | Counter::IcmpMalformed => "pass",
        Counter::UnpinnedForwarded
        | Counter::RstOutOfWindow
        | Counter::NatReclaimed
        | Counter::FlowReadopted
        | Counter::IcmpErrorToClient
        | Counter::IcmpErrorToBackend
        | Counter::SynCookieValid => "forward",
        Counter::Refused | Counter::FlowReset | Counter::SnatPortsExhausted | Counter::NatConflict => "reset",
        Counter::GatewayCollision | Counter::DeadlineReset => "reset",
        Counter::TooBigAnswered | Counter::PacketTooBigAnswered => "icmp",
        // The SYN proxy's SYN-ACK, sent back in the SYN's place.
        Counter::SynCookieSent => "answer",
        Counter::SynProxyHeld => "hold",
    }
}

/// The `state` label values of `bglb_shift_state`, one series each.
pub const SHIFT_STATES: [&str; 5] = ["none", "running", "completed", "rolled_back", "aborted"];

/// The state of a service's latest shift, one of [`SHIFT_STATES`].
pub fn shift_state(shift: Option<&ShiftRecord>) -> &'static str {
    match shift.map(|record| &record.outcome) {
        None => "none",
        Some(ShiftOutcome::Running) => "running",
        Some(ShiftOutcome::Completed) => "completed",
        Some(ShiftOutcome::RolledBack { .. }) => "rolled_back",
        Some(ShiftOutcome::Aborted { .. }) => "aborted",
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
    /// A gauge with a fractional value (a share, a timestamp).
    Fraction(f64),
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
            Value::Fraction(v) => series.encode_gauge(v)?,
            Value::Counter(v) => series.encode_counter::<NoLabelSet, _, f64>(v, None)?,
            Value::Histogram(h) => series.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets(), None)?,
        }
    }
    Ok(())
}

impl Snapshot {
    fn rows(&self, metric: Metric) -> Vec<(Labels, Value<'_>)> {
        let fraction = |percent: u8| Value::Fraction(f64::from(percent) / 100.0);
        match metric {
            Metric::BuildInfo => {
                let labels = vec![
                    ("version", self.build.version.to_owned()),
                    ("commit", self.build.commit.to_owned()),
                    ("rustc", self.build.rustc.to_owned()),
                ];
                vec![(labels, Value::Gauge(1))]
            }
            Metric::Ratio => self.pool_rows(|s, pool| fraction(s.ratio.share(pool))),
            Metric::EffectiveRatio => self.pool_rows(|s, pool| fraction(s.effective_ratio.share(pool))),
            Metric::RatioPercent => self.pool_rows(|s, pool| Value::Gauge(s.ratio.share(pool).into())),
            Metric::EffectiveRatioPercent => {
                self.pool_rows(|s, pool| Value::Gauge(s.effective_ratio.share(pool).into()))
            }
            Metric::BackendWeight => self.backend_rows(|b| vec![(vec![], Value::Gauge(b.weight.into()))]),
            Metric::BackendUp => {
                self.backend_rows(|b| vec![(vec![], Value::Gauge(u64::from(b.health != BackendHealth::Down)))])
            }
            Metric::BackendOpenFlows => self.backend_rows(|b| vec![(vec![], Value::Gauge(b.open_flows))]),
            Metric::BackendEmbryonicFlows => self.backend_rows(|b| vec![(vec![], Value::Gauge(b.embryonic_flows))]),
            Metric::BackendNewFlows => self.backend_rows(|b| vec![(vec![], Value::Counter(b.new_flows))]),
            Metric::BackendPackets => self.backend_rows(|b| directions(b.packets_in, b.packets_out)),
            Metric::BackendBytes => self.backend_rows(|b| directions(b.bytes_in, b.bytes_out)),
            Metric::BackendConnectionEvents => self.backend_rows(|b| {
                [("handshake", b.handshakes), ("refused", b.refused), ("reset", b.resets)]
                    .into_iter()
                    .map(|(event, n)| (vec![("event", event.to_owned())], Value::Counter(n)))
                    .collect()
            }),
            Metric::SnatPortsInUse => self.backend_rows(|b| vec![(vec![], Value::Gauge(b.snat_ports_in_use))]),
            Metric::SnatPortsCapacity => self.backend_rows(|b| vec![(vec![], Value::Gauge(b.snat_ports_capacity))]),
            Metric::SnatPortsExhausted => self.backend_rows(|b| vec![(vec![], Value::Counter(b.snat_ports_exhausted))]),
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
            Metric::ConfigReloads => [("ok", self.reloads.succeeded), ("error", self.reloads.failed)]
                .map(|(result, n)| (vec![("result", result.to_owned())], Value::Counter(n)))
                .into(),
            Metric::ConfigLastReloadSuccessful => vec![(vec![], Value::Gauge(self.reloads.last_succeeded.into()))],
            Metric::ConfigLastReloadSuccessTimestamp => {
                let since_epoch = self.reloads.loaded_at.duration_since(SystemTime::UNIX_EPOCH);
                vec![(vec![], Value::Fraction(since_epoch.unwrap_or_default().as_secs_f64()))]
            }
            Metric::ShiftState => self
                .services
                .iter()
                .flat_map(|s| {
                    let current = shift_state(s.shift.as_ref());
                    SHIFT_STATES.map(|state| {
                        let labels = vec![("service", s.name.clone()), ("state", state.to_owned())];
                        (labels, Value::Gauge((state == current).into()))
                    })
                })
                .collect(),
            Metric::ShiftRollbacks => self
                .services
                .iter()
                .map(|s| {
                    let n = self.shift_rollbacks.get(&s.name).copied().unwrap_or(0);
                    (vec![("service", s.name.clone())], Value::Counter(n))
                })
                .collect(),
            Metric::ServiceInfo => self
                .services
                .iter()
                .map(|s| {
                    let labels = vec![
                        ("service", s.name.clone()),
                        ("protocol", s.protocol.to_string()),
                        ("forwarding", s.forwarding.to_string()),
                    ];
                    (labels, Value::Gauge(1))
                })
                .collect(),
            Metric::ListenerInfo => self
                .services
                .iter()
                .flat_map(|s| {
                    s.listeners.iter().map(|l| {
                        let labels = vec![
                            ("service", s.name.clone()),
                            ("vip", l.vip.to_string()),
                            ("family", l.family.label().to_owned()),
                            ("protocol", l.protocol.to_string()),
                            ("listener", if l.standby { "standby" } else { "live" }.to_owned()),
                        ];
                        (labels, Value::Gauge(1))
                    })
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
            Metric::VipAnnounced => self
                .vips_announced
                .iter()
                .map(|&(vip, announced)| (vec![("vip", vip.to_string())], Value::Gauge(announced.into())))
                .collect(),
        }
    }

    /// One row per service and pool.
    fn pool_rows(&self, value: impl Fn(&ServiceStatus, Pool) -> Value<'static>) -> Vec<(Labels, Value<'_>)> {
        self.services
            .iter()
            .flat_map(|s| {
                [Pool::Blue, Pool::Green].map(|pool| {
                    let labels = vec![("service", s.name.clone()), ("pool", pool.to_string())];
                    (labels, value(s, pool))
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

fn backend_labels(service: &str, pool: Pool, backend: SocketAddr) -> Labels {
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
mod tests;
