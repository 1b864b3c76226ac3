//! Turns the macro benchmark's records into per-contender summaries (median
//! and range over rounds, ratios to bg-lb) and renders them as Markdown.
//!
//! A figure from a round where that workload failed is never used: the cell
//! reads FAIL, so a contender that drops requests cannot look fast.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    bench::{
        contenders::Contender,
        macro_bench::RunRecord,
        stats::{self, Summary},
        workloads::CpuReport,
    },
    topology::Family,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    NewConnectionsPerSec,
    KeepAliveRequestsPerSec,
    KeepAliveP50Ms,
    KeepAliveP99Ms,
    BulkGbitPerSec,
    /// CPU of every thread of the experiment (client, LB, backends).
    ExperimentCpuMsPer1kConn,
    LbProcessCpuMsPer1kConn,
    /// The XDP programs' own run time in the LB's namespace: the part of
    /// the LB's CPU that the data plane's code is.
    XdpProgramMsPer1kConn,
    /// That run time per frame the programs saw, under real traffic (warm
    /// or cold caches as the load makes them), beside the micro bench's
    /// live-frames figure.
    XdpNsPerFrame,
    /// The experiment's CPU minus the direct floor's in the same round:
    /// what putting this LB in the path costs.
    LbCpuMsPer1kConn,
}

impl Metric {
    pub const ALL: [Metric; 10] = [
        Metric::NewConnectionsPerSec,
        Metric::KeepAliveRequestsPerSec,
        Metric::KeepAliveP50Ms,
        Metric::KeepAliveP99Ms,
        Metric::BulkGbitPerSec,
        Metric::ExperimentCpuMsPer1kConn,
        Metric::LbProcessCpuMsPer1kConn,
        Metric::XdpProgramMsPer1kConn,
        Metric::XdpNsPerFrame,
        Metric::LbCpuMsPer1kConn,
    ];

    pub fn header(self) -> &'static str {
        match self {
            Metric::NewConnectionsPerSec => "new conn/s",
            Metric::KeepAliveRequestsPerSec => "keep-alive req/s",
            Metric::KeepAliveP50Ms => "p50 ms",
            Metric::KeepAliveP99Ms => "p99 ms",
            Metric::BulkGbitPerSec => "bulk Gbit/s",
            Metric::ExperimentCpuMsPer1kConn => "CPU ms/1k conn, all",
            Metric::LbProcessCpuMsPer1kConn => "LB processes ms/1k conn",
            Metric::XdpProgramMsPer1kConn => "XDP program ms/1k conn",
            Metric::XdpNsPerFrame => "XDP ns/frame",
            Metric::LbCpuMsPer1kConn => "LB CPU ms/1k conn (all − floor)",
        }
    }

    /// The value in one round, if that round's workload was clean. `floor`
    /// is the direct contender's record of the same round.
    pub fn value(self, r: &RunRecord, floor: Option<&RunRecord>) -> Option<f64> {
        match self {
            Metric::NewConnectionsPerSec => r.new_connections.as_ref().map(|w| w.requests_per_sec),
            Metric::KeepAliveRequestsPerSec => r.keep_alive.as_ref().map(|w| w.requests_per_sec),
            Metric::KeepAliveP50Ms => r.keep_alive.as_ref().and_then(|w| w.p50_ms),
            Metric::KeepAliveP99Ms => r.keep_alive.as_ref().and_then(|w| w.p99_ms),
            Metric::BulkGbitPerSec => r.bulk.as_ref().map(|b| b.gbit_per_s),
            Metric::ExperimentCpuMsPer1kConn => r.cpu.as_ref().map(|c| c.experiment_ms_per_1k()),
            Metric::LbProcessCpuMsPer1kConn => r.cpu.as_ref().map(|c| c.lb_process_ms_per_1k()),
            Metric::XdpProgramMsPer1kConn => r.cpu.as_ref().and_then(CpuReport::xdp_program_ms_per_1k),
            Metric::XdpNsPerFrame => r.cpu.as_ref().and_then(CpuReport::xdp_ns_per_frame),
            Metric::LbCpuMsPer1kConn => {
                let floor = floor?.cpu.as_ref()?.experiment_ms_per_1k();
                r.cpu.as_ref().map(|c| c.experiment_ms_per_1k() - floor)
            }
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct MetricSummary {
    pub metric: Metric,
    /// Over the rounds; `None` if any round's workload failed.
    pub summary: Option<Summary>,
    /// This contender's median over bg-lb's.
    pub ratio_to_bg_lb: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ContenderSummary {
    pub contender: Contender,
    pub label: String,
    /// Why it did not run, if it did not (then it has no figures).
    pub skipped: Option<String>,
    pub rounds: usize,
    pub failing_rounds: usize,
    pub failures: Vec<String>,
    /// Share of all requests (median over rounds) that the blue pool served.
    pub blue_share_percent: Option<f64>,
    pub metrics: Vec<MetricSummary>,
}

impl ContenderSummary {
    pub fn failing(&self) -> bool {
        self.failing_rounds > 0
    }

    /// The median of `m` over the rounds; `None` if a round failed it.
    pub fn median(&self, m: Metric) -> Option<f64> {
        self.metric(m).summary.map(|s| s.median)
    }

    fn metric(&self, m: Metric) -> &MetricSummary {
        self.metrics
            .iter()
            .find(|s| s.metric == m)
            .expect("every metric is summarised")
    }
}

/// One summary per contender that ran, in `order`.
pub fn summarize(records: &[RunRecord], order: &[Contender]) -> Vec<ContenderSummary> {
    let mut summaries: Vec<ContenderSummary> = order
        .iter()
        .filter(|c| records.iter().any(|r| r.contender == **c))
        .map(|&c| summarize_one(records, c))
        .collect();
    let bg_lb: Vec<Option<f64>> = Metric::ALL
        .iter()
        .map(|&m| {
            summaries
                .iter()
                .find(|s| s.contender == Contender::BgLb)
                .and_then(|s| s.metric(m).summary)
                .map(|s| s.median)
        })
        .collect();
    for s in &mut summaries {
        for (m, reference) in s.metrics.iter_mut().zip(&bg_lb) {
            m.ratio_to_bg_lb = match (m.summary, reference) {
                (Some(v), Some(r)) => stats::ratio(v.median, *r),
                _ => None,
            };
        }
    }
    summaries
}

/// The lowest median of `metric` among the contenders that have one: the
/// slowest contender's rate.
pub fn slowest(summaries: &[ContenderSummary], metric: Metric) -> Option<f64> {
    summaries
        .iter()
        .filter_map(|s| s.metric(metric).summary)
        .map(|s| s.median)
        .min_by(f64::total_cmp)
}

fn summarize_one(records: &[RunRecord], contender: Contender) -> ContenderSummary {
    let mine: Vec<&RunRecord> = records.iter().filter(|r| r.contender == contender).collect();
    let floor_of = |round: usize| {
        records
            .iter()
            .find(|r| r.contender == Contender::Direct && r.round == round)
    };
    let metrics = Metric::ALL
        .iter()
        .map(|&metric| {
            let values: Vec<Option<f64>> = mine.iter().map(|r| metric.value(r, floor_of(r.round))).collect();
            let complete = values.iter().all(Option::is_some);
            let values: Vec<f64> = values.into_iter().flatten().collect();
            MetricSummary {
                metric,
                summary: if complete { stats::summarize(&values) } else { None },
                ratio_to_bg_lb: None,
            }
        })
        .collect();
    let blue_shares: Vec<f64> = mine
        .iter()
        .filter_map(|r| {
            let total: u64 = r.backend_requests.iter().sum();
            let half = r.backend_requests.len() / 2;
            (total > 0).then(|| 100.0 * r.backend_requests[..half].iter().sum::<u64>() as f64 / total as f64)
        })
        .collect();
    ContenderSummary {
        contender,
        label: contender.label_in(mine.first().map_or(Family::Ipv4, |r| r.family)),
        skipped: mine.iter().find_map(|r| r.skipped.clone()),
        rounds: mine.len(),
        failing_rounds: mine.iter().filter(|r| !r.failures.is_empty()).count(),
        failures: mine
            .iter()
            .flat_map(|r| r.failures.iter().map(move |f| format!("round {}: {f}", r.round + 1)))
            .collect(),
        blue_share_percent: stats::summarize(&blue_shares).map(|s| s.median),
        metrics,
    }
}

/// A number with precision that suits its size.
pub fn fmt_number(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A cell: median (min–max). A missing figure of a failing contender is a
/// failure; of a clean one, a figure that could not be computed (no direct
/// floor in the run).
pub fn fmt_summary(s: &Option<Summary>, failing: bool) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{} ({}–{})", fmt_number(s.median), fmt_number(s.min), fmt_number(s.max)),
        Some(s) => fmt_number(s.median),
        None if failing => "FAIL".to_owned(),
        None => "n/a".to_owned(),
    }
}

/// The two Markdown tables: figures (median, min–max over rounds) and
/// ratios to bg-lb, followed by the failures, if any.
pub fn render(summaries: &[ContenderSummary]) -> String {
    let mut md = String::new();
    let headers: Vec<&str> = Metric::ALL.iter().map(|m| m.header()).collect();
    let _ = writeln!(md, "| contender | {} | blue % | status |", headers.join(" | "));
    let _ = writeln!(md, "|---|{}---|---|", "---|".repeat(headers.len()));
    for s in summaries {
        if let Some(why) = &s.skipped {
            let _ = writeln!(
                md,
                "| {} | {}- | skipped: {why} |",
                s.label,
                "- | ".repeat(headers.len())
            );
            continue;
        }
        let cells: Vec<String> = s.metrics.iter().map(|m| fmt_summary(&m.summary, s.failing())).collect();
        let status = if s.failing() {
            format!("FAILING ({}/{} rounds)", s.failing_rounds, s.rounds)
        } else {
            format!("ok ({} rounds)", s.rounds)
        };
        let blue = s.blue_share_percent.map_or("-".to_owned(), |b| format!("{b:.0}"));
        let _ = writeln!(md, "| {} | {} | {blue} | {status} |", s.label, cells.join(" | "));
    }
    let _ = writeln!(
        md,
        "\nRatios to bg-lb (medians; higher is better for rates, lower for latency and CPU):\n"
    );
    let _ = writeln!(md, "| contender | {} |", headers.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(headers.len()));
    for s in summaries.iter().filter(|s| s.skipped.is_none()) {
        let cells: Vec<String> = s
            .metrics
            .iter()
            .map(|m| match (m.summary, m.ratio_to_bg_lb) {
                (None, _) if s.failing() => "FAIL".to_owned(),
                (Some(_), Some(r)) => format!("{r:.2}×"),
                _ => "n/a".to_owned(),
            })
            .collect();
        let _ = writeln!(md, "| {} | {} |", s.label, cells.join(" | "));
    }
    write_notes(
        &mut md,
        "Failures (figures from failing workloads are not shown)",
        summaries
            .iter()
            .flat_map(|s| s.failures.iter().map(move |f| (s.label.as_str(), f))),
    );
    md
}

/// Appends a `heading:` paragraph and a `- LABEL: NOTE` item per note to a
/// Markdown report, or nothing when there is no note.
pub fn write_notes<'a>(md: &mut String, heading: &str, notes: impl IntoIterator<Item = (&'a str, &'a String)>) {
    let mut notes = notes.into_iter().peekable();
    if notes.peek().is_some() {
        let _ = writeln!(md, "\n{heading}:\n");
        for (label, note) in notes {
            let _ = writeln!(md, "- {label}: {note}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{bulk::BulkReport, workloads::CpuReport, wrk::WrkReport};

    fn record(contender: Contender, round: usize, rps: f64, cpu_ms: f64) -> RunRecord {
        let wrk = WrkReport {
            requests: 1000,
            seconds: 1.0,
            requests_per_sec: rps,
            p50_ms: Some(1.0),
            p99_ms: Some(5.0),
            socket_errors: 0,
            non_2xx: 0,
        };
        RunRecord {
            contender,
            round,
            family: Family::Ipv4,
            skipped: None,
            new_connections: Some(wrk.clone()),
            keep_alive: Some(wrk),
            bulk: Some(BulkReport {
                connections: 1,
                bytes: 1,
                seconds: 1.0,
                gbit_per_s: 1.0,
            }),
            cpu: Some(CpuReport {
                connections: 1000,
                errors: 0,
                seconds: 1.0,
                experiment_ms: cpu_ms,
                lb_process_ms: 0.0,
                client_ms: 0.0,
                backends_ms: 0.0,
                ksoftirqd_ms: 0.0,
                machine_ms: 0.0,
                softirq_ms: 0.0,
                xdp_program_ms: None,
                xdp_runs: 0,
            }),
            syn_flood: None,
            udp: None,
            backend_requests: vec![10, 10, 10, 10],
            dataplane_counters: None,
            failures: Vec::new(),
        }
    }

    fn summary_of(s: &[ContenderSummary], c: Contender, m: Metric) -> &MetricSummary {
        s.iter().find(|s| s.contender == c).unwrap().metric(m)
    }

    #[test]
    fn ratios_compare_medians_to_bg_lb() {
        let records = vec![
            record(Contender::BgLb, 0, 100.0, 300.0),
            record(Contender::BgLb, 1, 300.0, 300.0),
            record(Contender::BgLb, 2, 200.0, 300.0),
            record(Contender::Haproxy, 0, 100.0, 500.0),
            record(Contender::Haproxy, 1, 100.0, 500.0),
            record(Contender::Haproxy, 2, 50.0, 500.0),
        ];
        let s = summarize(&records, &Contender::ALL);
        let bg = summary_of(&s, Contender::BgLb, Metric::NewConnectionsPerSec);
        assert_eq!(
            bg.summary.map(|s| (s.median, s.min, s.max)),
            Some((200.0, 100.0, 300.0))
        );
        assert_eq!(bg.ratio_to_bg_lb, Some(1.0));
        let ha = summary_of(&s, Contender::Haproxy, Metric::NewConnectionsPerSec);
        assert_eq!(ha.ratio_to_bg_lb, Some(0.5));
        assert_eq!(s.len(), 2, "contenders that did not run are left out");
    }

    #[test]
    fn lb_cpu_is_the_experiment_cpu_above_the_floor_of_the_same_round() {
        let records = vec![
            record(Contender::BgLb, 0, 1.0, 300.0),
            record(Contender::Direct, 0, 1.0, 250.0),
            record(Contender::BgLb, 1, 1.0, 400.0),
            record(Contender::Direct, 1, 1.0, 330.0),
        ];
        let s = summarize(&records, &Contender::ALL);
        let lb = summary_of(&s, Contender::BgLb, Metric::LbCpuMsPer1kConn)
            .summary
            .unwrap();
        assert_eq!((lb.min, lb.max), (50.0, 70.0));
        let floor = summary_of(&s, Contender::Direct, Metric::LbCpuMsPer1kConn)
            .summary
            .unwrap();
        assert_eq!(floor.median, 0.0);
    }

    #[test]
    fn a_failed_workload_in_any_round_shows_as_fail_not_as_a_number() {
        let mut bad = record(Contender::NftablesDnat, 1, 1e9, 1.0);
        bad.new_connections = None;
        bad.failures.push("new connections: wrk: 10 socket errors".to_owned());
        let records = vec![
            record(Contender::BgLb, 0, 100.0, 1.0),
            record(Contender::NftablesDnat, 0, 100.0, 1.0),
            bad,
        ];
        let s = summarize(&records, &Contender::ALL);
        let nft = s.iter().find(|s| s.contender == Contender::NftablesDnat).unwrap();
        assert!(nft.failing());
        assert_eq!(nft.metric(Metric::NewConnectionsPerSec).summary, None);
        let table = render(&s);
        let row = table.lines().find(|l| l.starts_with("| nftables")).unwrap();
        assert!(row.contains("FAIL"), "{row}");
        assert!(row.contains("FAILING (1/2 rounds)"), "{row}");
        assert!(table.contains("round 2: new connections: wrk: 10 socket errors"));
    }

    #[test]
    fn rendered_table_has_a_header_row_per_metric_and_a_row_per_contender() {
        let records = vec![
            record(Contender::BgLb, 0, 12345.6, 1.0),
            record(Contender::Haproxy, 0, 6000.0, 2.0),
        ];
        let table = render(&summarize(&records, &Contender::ALL));
        let first = table.lines().next().unwrap();
        assert_eq!(first.matches('|').count(), Metric::ALL.len() + 4);
        assert!(table.contains("| bg-lb (XDP native, full NAT) | 12346 |"));
        assert!(table.contains("0.49×"));
        assert!(table.contains("| 50 | ok (1 rounds) |"));
    }

    #[test]
    fn an_ipv6_run_labels_its_rows_and_a_skipped_contender_says_why_without_figures() {
        let ipv6 = |mut r: RunRecord| {
            r.family = Family::Ipv6;
            r
        };
        let mut skipped = RunRecord::new(Contender::BgLb, 0, Family::Ipv6);
        skipped.skipped = Some("IPv6 needs bg-lb to accept an IPv6 service".to_owned());
        let records = vec![skipped, ipv6(record(Contender::NftablesDnat, 0, 5000.0, 1.0))];
        let s = summarize(&records, &Contender::ALL);
        assert!(s.iter().all(|s| !s.failing()), "a skipped contender is not failing");
        let table = render(&s);
        let row = |label: &str| {
            table
                .lines()
                .find(|l| l.starts_with(label))
                .unwrap_or_else(|| panic!("{table}"))
        };
        let bg_lb = row("| bg-lb (XDP native, full NAT), IPv6 |");
        assert!(
            bg_lb.ends_with("| - | skipped: IPv6 needs bg-lb to accept an IPv6 service |"),
            "{bg_lb}"
        );
        assert_eq!(bg_lb.matches('|').count(), Metric::ALL.len() + 4);
        assert!(row("| nftables DNAT + SNAT (numgen), IPv6 | 5000 |").contains("ok (1 rounds)"));
    }

    #[test]
    fn numbers_get_precision_by_size() {
        assert_eq!(fmt_number(12345.6), "12346");
        assert_eq!(fmt_number(12.345), "12.3");
        assert_eq!(fmt_number(1.2345), "1.23");
        assert_eq!(fmt_number(0.01234), "0.012");
    }
}
