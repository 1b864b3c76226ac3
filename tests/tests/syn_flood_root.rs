//! A spoofed SYN flood end to end (root): `bg-lb run` with the example's
//! defaults (SYN proxy "auto", SNAT ports 20000-29999) serves the VIP over
//! four name servers, native XDP, one-arm. The client namespace opens a
//! connection, then paced connections (each asks who serves it), and sends
//! a flood of SYNs from unroutable sources alongside them. Every paced
//! connection must be served, before, during and after the flood, and the
//! connection opened before it must keep working. Timings are printed, not
//! asserted (`cargo xtask bench` measures).

use std::{
    net::SocketAddrV4,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use bg_lb_tests::{
    flood::{self, FloodOptions, Sources},
    lab::{NameLab, NameLabConfig},
    servers::NameClient,
    topology::NetNs,
};

/// The flood: the measurement, 60,000 SYNs, sent as fast as one
/// core can (about a second or less); the time only bounds it.
const FLOOD_SYNS: u64 = 60_000;
const FLOOD_TIME_LIMIT: Duration = Duration::from_secs(30);
/// One paced connection every so often, before, during and after it.
const PACE: Duration = Duration::from_millis(20);
const BEFORE: Duration = Duration::from_millis(500);
const AFTER: Duration = Duration::from_secs(3);

const PHASES: [&str; 3] = ["before", "during", "after"];

/// One paced connection: its phase, and how long connecting and the first
/// answer took, or why it failed.
struct Probe {
    phase: usize,
    outcome: Result<(Duration, Duration), String>,
}

/// Paced connections from `client` to `vip` until `stop`, each in the
/// phase `phase` says at its start.
fn probe(
    client: &NetNs,
    vip: SocketAddrV4,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<Probe>> {
    client.spawn(move || {
        let mut probes = Vec::new();
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let phase = phase.load(Ordering::Relaxed) as usize;
            let started = Instant::now();
            let outcome = NameClient::connect(vip)
                .and_then(|mut c| {
                    let connected = started.elapsed();
                    c.ask().map(|_| (connected, started.elapsed()))
                })
                .map_err(|e| e.to_string());
            probes.push(Probe { phase, outcome });
            next += PACE;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        probes
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

fn summary(probes: &[Probe], phase: usize) -> String {
    let mut connect: Vec<Duration> = Vec::new();
    let mut answer: Vec<Duration> = Vec::new();
    for (c, a) in probes
        .iter()
        .filter(|p| p.phase == phase)
        .filter_map(|p| p.outcome.as_ref().ok())
    {
        connect.push(*c);
        answer.push(*a);
    }
    connect.sort();
    answer.sort();
    format!(
        "{:>6}: {:>3} connections, connect p50 {:?} p99 {:?}, first answer p50 {:?} p99 {:?}",
        PHASES[phase],
        connect.len(),
        percentile(&connect, 0.5),
        percentile(&connect, 0.99),
        percentile(&answer, 0.5),
        percentile(&answer, 0.99)
    )
}

#[test]
fn every_connection_is_served_during_and_after_a_spoofed_syn_flood() {
    let lab = NameLab::start(
        env!("CARGO_BIN_EXE_bg-lb-under-test"),
        4,
        None,
        &NameLabConfig::default(),
    );
    lab.names(8);
    let mut opened_before = lab.connect();
    let served_it = opened_before.ask().expect("the connection opened before the flood");
    assert!(
        !lab.daemon.status("web").syn_proxy.active,
        "no flood yet: the SYN proxy stands by"
    );

    let client = &lab.topo.client.ns;
    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe(client, lab.vip(), phase.clone(), stop.clone());
    thread::sleep(BEFORE);

    phase.store(1, Ordering::Relaxed);
    let options = FloodOptions {
        interface: "eth0".into(),
        src_mac: client.mac_bytes("eth0"),
        dst_mac: lab.topo.lb.ns.mac_bytes("eth0"),
        target: lab.vip().into(),
        sources: Sources::BENCHMARKING,
        max_frames: FLOOD_SYNS,
        max_duration: FLOOD_TIME_LIMIT,
        seed: 0x5eed,
        abort: || false,
    };
    let flood = client.spawn(move || flood::flood(&options).expect("send the SYN flood"));
    let mut proxy_seen_on = false;
    while !flood.is_finished() {
        proxy_seen_on |= lab.daemon.status("web").syn_proxy.active;
        thread::sleep(Duration::from_millis(50));
    }
    let report = flood.join().expect("the flood thread");
    proxy_seen_on |= lab.daemon.status("web").syn_proxy.active;

    phase.store(2, Ordering::Relaxed);
    thread::sleep(AFTER);
    stop.store(true, Ordering::Relaxed);
    let probes = prober.join().expect("the prober thread");

    eprintln!(
        "flood: {} SYNs in {:.2} s\n{}",
        report.frames,
        report.seconds,
        (0..PHASES.len())
            .map(|p| summary(&probes, p))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let failed: Vec<String> = probes
        .iter()
        .filter_map(|p| p.outcome.as_ref().err().map(|e| format!("{}: {e}", PHASES[p.phase])))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} connections failed: {failed:?}\n{}",
        failed.len(),
        probes.len(),
        lab.daemon.log()
    );
    for (phase, name) in PHASES.iter().enumerate() {
        assert!(probes.iter().any(|p| p.phase == phase), "no connection was made {name}");
    }
    assert_eq!(report.frames, FLOOD_SYNS);
    assert!(
        proxy_seen_on,
        "the flood engaged the SYN proxy (ctl status)\n{}",
        lab.daemon.log()
    );
    assert_eq!(
        opened_before
            .ask()
            .expect("the connection opened before the flood survives it"),
        served_it
    );
    let log = lab.daemon.log();
    assert_eq!(
        log.matches("SYN flood: ").count(),
        1,
        "one log line for the flood, not one per SYN:\n{log}"
    );
}
