//! The flow-sweep benchmark: how long admin requests and health reports
//! wait while the daemon sweeps a flow table of a million entries, against
//! the same daemon with no sweep running (first with a near-empty table,
//! then between sweeps). Measured, not asserted.
//!
//! Each round writes a million stale flows (handshakes abandoned long ago)
//! into the daemon's pinned FLOWS in batches, then, until the sweeps have
//! removed them, alternates admin requests (`status` on the admin socket,
//! timed from write to reply) and health reports (a backend killed, timed
//! until `status` shows it down; this includes up to one probe interval).
//! A sample counts as "during a sweep" when the daemon's reply says a sweep
//! was running when the request came (`sweep_running`).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::unix::net::UnixStream,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use bg_lb::protocol::{BackendHealth, Reply};
use bg_lb_common::{
    flow_state::SYN_SEEN,
    maps::{Flow, FlowKey},
};
use serde::Serialize;

use crate::{
    lab::{BlueGreenLab, LabOptions, SERVICE},
    map_surgery::NatMaps,
};

#[derive(Clone, Debug, Serialize)]
pub struct FlowSweepOptions {
    /// Stale flows written per round.
    pub flows: u32,
    pub rounds: usize,
    /// Admin requests timed first, with the table near empty.
    pub idle_requests: usize,
    /// Health reports timed first, with the table near empty.
    pub idle_reports: usize,
}

/// Latencies in ms.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latencies {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FlowSweepReport {
    pub options: FlowSweepOptions,
    pub admin_idle: Latencies,
    pub admin_sweeping: Latencies,
    pub health_idle: Latencies,
    pub health_sweeping: Latencies,
    /// Probe interval of the health check (a report waits up to one).
    pub probe_interval_ms: u128,
    /// Per round: seconds to write the stale flows (batch writes).
    pub fill_secs: Vec<f64>,
    /// Per round: seconds from the start of the writes until the sweeps
    /// had removed every sampled stale flow (sweeps begin at most a second
    /// apart, or four times the last one's duration on a large table).
    pub gone_secs: Vec<f64>,
}

const PROBE_INTERVAL: Duration = Duration::from_millis(100);

pub fn run(bin: &'static str, opts: &FlowSweepOptions, progress: &mut dyn FnMut(&str)) -> FlowSweepReport {
    let options = LabOptions {
        ratio: "100:0",
        check: "tcp",
        interval: PROBE_INTERVAL,
        fast_interval: PROBE_INTERVAL,
        timeout: PROBE_INTERVAL / 2,
        rise: 1,
        fall: 1,
        // Room to spare: an LRU table evicts before it is quite full.
        max_flows: (opts.flows + opts.flows / 20).next_power_of_two(),
        ..LabOptions::default()
    };
    let mut lab = BlueGreenLab::start(bin, &options);
    let mut maps = NatMaps::pinned(&lab.daemon.pin_dir);
    let socket = lab.daemon.socket();
    let (mut admin_idle, mut admin_sweeping, mut health_idle, mut health_sweeping) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut fill_secs, mut gone_secs) = (Vec::new(), Vec::new());

    progress("flow sweep: idle daemon");
    for _ in 0..opts.idle_requests {
        admin_idle.push(status(&socket).0);
        thread::sleep(Duration::from_millis(2));
    }
    for _ in 0..opts.idle_reports {
        health_idle.push(report_down(&mut lab, &socket).0);
    }

    let (id, backend) = (0..64)
        .map(|id| (id, maps.backend(id)))
        .find(|(_, b)| !b.is_free())
        .expect("a backend id in use");
    let SocketAddr::V4(vip) = lab.live_vip() else {
        panic!("the flow sweep's lab is IPv4")
    };
    let stale: Vec<(FlowKey, Flow)> = (0..opts.flows)
        .map(|i| {
            let client = SocketAddrV4::new(
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i / 50_000),
                1024 + (i % 50_000) as u16,
            );
            let flow = Flow {
                backend_id: id,
                service_id: backend.service_id,
                backend_gen: backend.generation,
                state: SYN_SEEN,
                ..Flow::default()
            };
            (FlowKey::from_client(client, vip), flow)
        })
        .collect();
    let sample: Vec<FlowKey> = stale
        .iter()
        .step_by(stale.len().div_ceil(64))
        .map(|(k, _)| *k)
        .collect();
    for round in 1..=opts.rounds {
        progress(&format!(
            "flow sweep: round {round}/{}: {} stale flows",
            opts.rounds, opts.flows
        ));
        let filled = Instant::now();
        maps.insert_flows(&stale);
        fill_secs.push(filled.elapsed().as_secs_f64());
        let deadline = Instant::now() + Duration::from_secs(120);
        while sample.iter().any(|k| maps.flow(k).is_some()) && Instant::now() < deadline {
            for _ in 0..10 {
                let (ms, during) = status(&socket);
                if during {
                    admin_sweeping.push(ms)
                } else {
                    admin_idle.push(ms)
                }
                thread::sleep(Duration::from_millis(2));
            }
            let (ms, during) = report_down(&mut lab, &socket);
            if during {
                health_sweeping.push(ms)
            } else {
                health_idle.push(ms)
            }
        }
        gone_secs.push(filled.elapsed().as_secs_f64());
    }
    FlowSweepReport {
        options: opts.clone(),
        admin_idle: latencies(admin_idle),
        admin_sweeping: latencies(admin_sweeping),
        health_idle: latencies(health_idle),
        health_sweeping: latencies(health_sweeping),
        probe_interval_ms: PROBE_INTERVAL.as_millis(),
        fill_secs,
        gone_secs,
    }
}

/// One `status` on the admin socket: ms from the request's write to its
/// reply, and whether a sweep was running when it came.
fn status(socket: &Path) -> (f64, bool) {
    let reply = request(socket);
    (reply.0, reply.1.sweep_running == Some(true))
}

fn request(socket: &Path) -> (f64, Reply) {
    let mut stream = UnixStream::connect(socket).expect("connect to the admin socket");
    let started = Instant::now();
    stream
        .write_all(format!("{{\"cmd\":\"status\",\"service\":\"{SERVICE}\"}}\n").as_bytes())
        .expect("write the request");
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).expect("read the reply");
    let ms = started.elapsed().as_secs_f64() * 1e3;
    (ms, serde_json::from_str(&line).expect("a JSON reply"))
}

/// Kills backend b0 and times how long until `status` shows it down; then
/// brings it back. Whether any status on the way saw a sweep running.
fn report_down(lab: &mut BlueGreenLab, socket: &Path) -> (f64, bool) {
    let started = Instant::now();
    lab.backends[0].kill();
    let mut during = false;
    let ms = loop {
        let (_, reply) = request(socket);
        during |= reply.sweep_running == Some(true);
        let health = reply
            .services
            .as_ref()
            .and_then(|s| s.first())
            .map(|s| s.backends[0].health);
        if health == Some(BackendHealth::Down) {
            break started.elapsed().as_secs_f64() * 1e3;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "b0 never reported down");
        thread::sleep(Duration::from_millis(1));
    };
    lab.backends[0].restart(&lab.topo.backends[0].ns);
    lab.wait(|s| s.backends[0].health == BackendHealth::Up, "b0 back up");
    (ms, during)
}

fn latencies(mut ms: Vec<f64>) -> Latencies {
    if ms.is_empty() {
        return Latencies::default();
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Latencies {
        n: ms.len(),
        p50: at(0.5),
        p99: at(0.99),
        max: ms[ms.len() - 1],
    }
}

fn secs(values: &[f64]) -> String {
    values.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", ")
}

pub fn render(r: &FlowSweepReport) -> String {
    let row = |what: &str, l: &Latencies| {
        if l.n == 0 {
            format!("| {what} | 0 | - | - | - |\n")
        } else {
            format!("| {what} | {} | {:.2} | {:.2} | {:.2} |\n", l.n, l.p50, l.p99, l.max)
        }
    };
    format!(
        "{} stale flows per round, {} rounds; a sample is \"during a sweep\" when the daemon says one was running.\n\
         Health reports include up to one probe interval ({} ms) and the daemon's reaction.\n\
         Per round, seconds to write the flows: {}; until the sweeps had removed them: {}.\n\n\
         | latency (ms) | samples | p50 | p99 | max |\n|---|---|---|---|---|\n{}{}{}{}",
        r.options.flows,
        r.options.rounds,
        r.probe_interval_ms,
        secs(&r.fill_secs),
        secs(&r.gone_secs),
        row("admin request, no sweep running", &r.admin_idle),
        row("admin request, during a sweep", &r.admin_sweeping),
        row("health report, no sweep running", &r.health_idle),
        row("health report, during a sweep", &r.health_sweeping),
    )
}
