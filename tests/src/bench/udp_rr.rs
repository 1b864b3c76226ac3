//! The UDP request/response workload (issue 18's proof): `clients` UDP
//! sockets in the client namespace, each sending a small request datagram
//! to the contender's UDP service and waiting for the reply before the
//! next, for the workload's duration. Each socket is one UDP flow. It
//! reports requests per second and the round trip's p50 and p99; a request
//! not answered within [`REPLY_TIMEOUT`] is lost, and a lost request fails
//! the run as a failed HTTP request does.
//!
//! The backends answer with [`UdpNameServer`]s on [`UDP_PORT`] (their name,
//! b0..b3, which shows where each flow went). Not every contender balances
//! UDP: [`skipped`] says which and why.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    bench::{
        contenders::Contender,
        macro_bench::{self, RunRecord},
        report::{self, fmt_summary},
        stats::{self, Summary},
    },
    flood::percentile,
    servers::UdpNameServer,
    topology::{Family, Host, NetNs},
};

/// The name failures of this workload start with.
pub const WORKLOAD: &str = "udp request/response";
/// The backends' UDP port, and the VIP's.
pub const UDP_PORT: u16 = 5353;
/// A request whose reply has not come after this long is lost.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// Why `contender` does not run the workload, if it does not.
pub fn skipped(contender: Contender) -> Option<&'static str> {
    match contender {
        Contender::Haproxy => Some("HAProxy balances no UDP"),
        Contender::BgLbDsr => Some(
            "under dsr a UDP backend must answer from the VIP (bound to it, or IP_PKTINFO); the bench's UDP \
             servers answer from their own address",
        ),
        _ => None,
    }
}

/// The UDP servers of a lab: one on [`UDP_PORT`] of each backend's
/// `family` address.
pub fn start_servers(backends: &[Host], family: Family) -> Vec<UdpNameServer> {
    UdpNameServer::start_on_each_of(backends, family, UDP_PORT)
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UdpRrReport {
    pub clients: usize,
    /// Requests answered.
    pub requests: u64,
    /// Requests not answered within [`REPLY_TIMEOUT`].
    pub lost: u64,
    pub seconds: f64,
    pub requests_per_sec: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Answers by backend name.
    pub per_backend: BTreeMap<String, u64>,
}

impl UdpRrReport {
    /// Why the run does not count, if it does not: a request lost, or a
    /// backend no flow reached (`backends` names, when the contender
    /// balances).
    pub fn failure(&self, backends: &[String]) -> Option<String> {
        if self.requests == 0 {
            return Some("no request was answered".to_owned());
        }
        if self.lost > 0 {
            return Some(format!(
                "{} of {} requests not answered within {} s",
                self.lost,
                self.lost + self.requests,
                REPLY_TIMEOUT.as_secs_f64()
            ));
        }
        backends
            .iter()
            .find(|b| !self.per_backend.contains_key(*b))
            .map(|b| format!("backend {b} answered no request"))
    }
}

/// What one client socket saw.
#[derive(Default)]
struct ClientRun {
    round_trips_ms: Vec<f64>,
    lost: u64,
    per_backend: BTreeMap<String, u64>,
    error: Option<String>,
}

/// Runs `clients` sockets against `target` from `client` for `duration`.
pub fn run(client: &NetNs, target: SocketAddr, clients: usize, duration: Duration) -> Result<UdpRrReport, String> {
    let runs = client.run(move || {
        let started = Instant::now();
        // Threads spawned here inherit the client's network namespace.
        let threads: Vec<_> = (0..clients)
            .map(|_| std::thread::spawn(move || ask_until(target, started + duration)))
            .collect();
        let runs: Vec<ClientRun> = threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| ClientRun::failed("client thread panicked")))
            .collect();
        (runs, started.elapsed().as_secs_f64())
    });
    let (runs, seconds) = runs;
    if let Some(error) = runs.iter().find_map(|r| r.error.clone()) {
        return Err(error);
    }
    let mut round_trips: Vec<f64> = runs.iter().flat_map(|r| r.round_trips_ms.iter().copied()).collect();
    round_trips.sort_by(f64::total_cmp);
    let mut per_backend = BTreeMap::new();
    for (name, n) in runs.iter().flat_map(|r| &r.per_backend) {
        *per_backend.entry(name.clone()).or_default() += n;
    }
    let requests = round_trips.len() as u64;
    Ok(UdpRrReport {
        clients,
        requests,
        lost: runs.iter().map(|r| r.lost).sum(),
        seconds,
        requests_per_sec: requests as f64 / seconds,
        p50_ms: percentile(&round_trips, 50.0),
        p99_ms: percentile(&round_trips, 99.0),
        per_backend,
    })
}

impl ClientRun {
    fn failed(why: &str) -> Self {
        ClientRun {
            error: Some(why.to_owned()),
            ..ClientRun::default()
        }
    }
}

/// One client socket: request, wait for the reply, again, until `until`.
fn ask_until(target: SocketAddr, until: Instant) -> ClientRun {
    let socket = match UdpSocket::bind((Family::of(target.ip()).unspecified(), 0))
        .and_then(|s| s.connect(target).map(|()| s))
        .and_then(|s| s.set_read_timeout(Some(REPLY_TIMEOUT)).map(|()| s))
    {
        Ok(socket) => socket,
        Err(e) => return ClientRun::failed(&format!("UDP socket to {target}: {e}")),
    };
    let mut run = ClientRun::default();
    let mut buf = [0u8; 64];
    while Instant::now() < until {
        let sent = Instant::now();
        if let Err(e) = socket.send(b"who") {
            return ClientRun::failed(&format!("send to {target}: {e}"));
        }
        match socket.recv(&mut buf) {
            Ok(len) => {
                run.round_trips_ms.push(sent.elapsed().as_secs_f64() * 1e3);
                let name = String::from_utf8_lossy(&buf[..len]).into_owned();
                *run.per_backend.entry(name).or_default() += 1;
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                run.lost += 1;
            }
            Err(e) => return ClientRun::failed(&format!("recv from {target}: {e}")),
        }
    }
    run
}

/// One contender's UDP figures over the rounds (median, min–max).
#[derive(Clone, Debug, Serialize)]
pub struct UdpRrSummary {
    pub contender: Contender,
    pub label: String,
    pub rounds: usize,
    pub requests_per_sec: Option<Summary>,
    pub p50_ms: Option<Summary>,
    pub p99_ms: Option<Summary>,
    pub lost: u64,
    /// Why it did not run.
    pub skipped: Option<String>,
    pub failures: Vec<String>,
}

pub fn summarize(records: &[RunRecord], order: &[Contender]) -> Vec<UdpRrSummary> {
    order
        .iter()
        .map(|&contender| {
            let mine: Vec<&RunRecord> = records.iter().filter(|r| r.contender == contender).collect();
            let reports: Vec<&UdpRrReport> = mine.iter().filter_map(|r| r.udp.as_ref()).collect();
            let over = |f: &dyn Fn(&UdpRrReport) -> Option<f64>| {
                stats::summarize(&reports.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
            };
            UdpRrSummary {
                contender,
                label: contender.label_in(mine.first().map_or(Family::Ipv4, |r| r.family)),
                rounds: reports.len(),
                requests_per_sec: over(&|r| Some(r.requests_per_sec)),
                p50_ms: over(&|r| r.p50_ms),
                p99_ms: over(&|r| r.p99_ms),
                lost: reports.iter().map(|r| r.lost).sum(),
                skipped: skipped(contender)
                    .map(str::to_owned)
                    .or_else(|| mine.iter().find_map(|r| r.skipped.clone())),
                failures: macro_bench::failures_of(&mine, WORKLOAD),
            }
        })
        .collect()
}

/// The UDP table: figures of clean rounds only (a failing contender reads
/// FAIL), then the failures and the contenders skipped, with why.
pub fn render(summaries: &[UdpRrSummary], clients: usize, duration: Duration) -> String {
    let mut md = format!(
        "### UDP request/response\n\n{clients} UDP sockets, each sending a request datagram to the UDP service \
         (VIP:{UDP_PORT}) and waiting for the reply before the next, for {} s; every socket is one flow. \
         Round trips of answered requests; a request unanswered within {} s fails the run.\n\n",
        duration.as_secs_f64(),
        REPLY_TIMEOUT.as_secs_f64()
    );
    let _ = writeln!(md, "| contender | req/s | p50 ms | p99 ms | lost |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    for s in summaries.iter().filter(|s| s.skipped.is_none()) {
        let failing = !s.failures.is_empty();
        let cell = |v: &Option<Summary>| {
            if failing {
                "FAIL".to_owned()
            } else {
                fmt_summary(v, false)
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            s.label,
            cell(&s.requests_per_sec),
            cell(&s.p50_ms),
            cell(&s.p99_ms),
            s.lost
        );
    }
    report::write_notes(
        &mut md,
        "Failed runs",
        summaries
            .iter()
            .flat_map(|s| s.failures.iter().map(move |f| (s.label.as_str(), f))),
    );
    report::write_notes(
        &mut md,
        "Skipped",
        summaries
            .iter()
            .filter_map(|s| Some((s.label.as_str(), s.skipped.as_ref()?))),
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(requests: u64, lost: u64, backends: &[&str]) -> UdpRrReport {
        UdpRrReport {
            clients: 4,
            requests,
            lost,
            seconds: 1.0,
            requests_per_sec: requests as f64,
            p50_ms: Some(0.1),
            p99_ms: Some(0.2),
            per_backend: backends.iter().map(|b| (b.to_string(), 1)).collect(),
        }
    }

    #[test]
    fn a_lost_request_or_an_unreached_backend_fails_the_run() {
        let all: Vec<String> = ["b0", "b1"].map(String::from).to_vec();
        assert_eq!(report(10, 0, &["b0", "b1"]).failure(&all), None);
        assert!(report(10, 1, &["b0", "b1"]).failure(&all).unwrap().contains("1 of 11"));
        assert!(report(10, 0, &["b0"]).failure(&all).unwrap().contains("b1"));
        assert_eq!(report(10, 0, &["b0"]).failure(&[]), None, "the floor balances nothing");
        assert!(report(0, 0, &[]).failure(&[]).is_some());
    }

    #[test]
    fn the_table_shows_clean_figures_fail_for_a_failing_contender_and_who_was_skipped() {
        let record = |contender, round, udp: Option<UdpRrReport>, failure: Option<&str>| RunRecord {
            udp,
            failures: failure.map(|f| vec![format!("{WORKLOAD}: {f}")]).unwrap_or_default(),
            ..RunRecord::new(contender, round, Family::Ipv4)
        };
        let records = vec![
            record(Contender::BgLb, 0, Some(report(1000, 0, &["b0"])), None),
            record(Contender::BgLb, 1, Some(report(3000, 0, &["b0"])), None),
            record(Contender::NftablesDnat, 0, None, Some("3 of 10 requests not answered")),
        ];
        let order = [Contender::BgLb, Contender::Haproxy, Contender::NftablesDnat];
        let summaries = summarize(&records, &order);
        assert_eq!(summaries[0].requests_per_sec.map(|s| s.median), Some(2000.0));
        let md = render(&summaries, 32, Duration::from_secs(5));
        assert!(
            md.contains("| bg-lb (XDP native, full NAT) | 2000 (1000–3000) |"),
            "{md}"
        );
        assert!(
            md.contains("| nftables DNAT + SNAT (numgen) | FAIL | FAIL | FAIL | 0 |"),
            "{md}"
        );
        assert!(!md.contains("| HAProxy"), "a skipped contender has no row: {md}");
        assert!(md.contains("- HAProxy 2.6 (mode tcp): HAProxy balances no UDP"), "{md}");
        assert!(md.contains("round 1: udp request/response: 3 of 10"), "{md}");
    }

    #[test]
    fn contenders_without_udp_are_skipped_with_a_reason() {
        for c in [
            Contender::BgLb,
            Contender::BgLbGateway,
            Contender::NginxStream,
            Contender::NftablesDnat,
            Contender::Direct,
        ] {
            assert_eq!(skipped(c), None, "{c:?}");
        }
        for c in [Contender::Haproxy, Contender::BgLbDsr] {
            assert!(skipped(c).is_some(), "{c:?}");
        }
    }
}
