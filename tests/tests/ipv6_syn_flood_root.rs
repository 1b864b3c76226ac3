//! A spoofed SYN flood on an IPv6 VIP end to end (root): `bg-lb run`
//! serves an IPv6 HTTP service (IPv6 VIP, backends and SNAT address, the
//! SYN proxy left at its default, "auto") in the dual-stack one-arm lab.
//! The client namespace keeps a connection open, starts paced real HTTP
//! connections to the VIP, and floods it with 60,000 SYNs from spoofed,
//! unroutable IPv6 sources (2001:2::/48) alongside them. Every real
//! connection must be served, before, during and after the flood; the
//! flood must engage the proxy (`ctl status`), and the proxy must have
//! answered real clients with cookies that they proved (the daemon's
//! flood-over log line counts them). Timings are printed, not asserted.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use bg_lb::dataplane::syn_proxy::SynProxyMode;
use bg_lb_tests::{
    flood::{self, FloodOptions, PhaseStats, ProbeOptions, Sources},
    http,
    lab::{BlueGreenLab, LabOptions},
    topology::Family,
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");
/// As the IPv4 flood test: 60,000 SYNs, as fast as one core sends them.
const FLOOD_SYNS: u64 = 60_000;
const FLOOD_TIME_LIMIT: Duration = Duration::from_secs(30);
/// Real connections: this many a second, from before the flood until
/// after it, each given this long to connect and again to be answered.
const PROBE_RATE: u32 = 40;
const BEFORE: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn an_ipv6_service_under_a_spoofed_syn_flood_serves_every_real_client_through_its_syn_proxy() {
    let options = LabOptions {
        family: Family::Ipv6,
        ..LabOptions::default()
    };
    let lab = BlueGreenLab::start(BG_LB, &options);
    let vip = lab.live_vip();
    assert!(vip.is_ipv6(), "the service runs over IPv6");
    let status = lab.status();
    assert_eq!(
        status.syn_proxy.mode,
        SynProxyMode::Auto,
        "an IPv6 VIP's default, as IPv4's"
    );
    assert!(!status.syn_proxy.active, "no flood yet: the SYN proxy stands by");

    let client = &lab.topo.client.ns;
    let mut kept = client
        .run(move || {
            let mut c = http::Connection::open(vip)?;
            c.request("GET", "/").map(|_| c)
        })
        .expect("a connection opened before the flood");

    // Probes run from before the flood to well after it (the proxy stays
    // on ten seconds after a flood).
    let probe_options = ProbeOptions {
        target: vip,
        rate: PROBE_RATE,
        duration: BEFORE * 6,
        timeout: PROBE_TIMEOUT,
    };
    let started = Instant::now();
    let prober = client.spawn(move || flood::probe(&probe_options, || false));
    thread::sleep(BEFORE);

    let flood_options = FloodOptions {
        interface: "eth0".into(),
        src_mac: client.mac_bytes("eth0"),
        dst_mac: lab.topo.lb.ns.mac_bytes("eth0"),
        target: vip,
        sources: Sources::BENCHMARKING,
        max_frames: FLOOD_SYNS,
        max_duration: FLOOD_TIME_LIMIT,
        seed: 0x5eed_0006,
        abort: || false,
    };
    let flood_start = Instant::now();
    let flooding = Arc::new(AtomicBool::new(true));
    let flood = {
        let flooding = flooding.clone();
        client.spawn(move || {
            let report = flood::flood(&flood_options);
            flooding.store(false, Ordering::Relaxed);
            report
        })
    };
    let mut proxy_seen_on = false;
    while flooding.load(Ordering::Relaxed) {
        proxy_seen_on |= lab.status().syn_proxy.active;
        thread::sleep(Duration::from_millis(50));
    }
    let report = flood.join().expect("the flood thread").expect("send the SYN flood");
    let flood_end = Instant::now();
    proxy_seen_on |= lab.status().syn_proxy.active;
    let attempts = prober.join().expect("the prober thread");

    let phases = [
        ("before", PhaseStats::of(&attempts, started, Some(flood_start))),
        ("during", PhaseStats::of(&attempts, flood_start, Some(flood_end))),
        ("after", PhaseStats::of(&attempts, flood_end, None)),
    ];
    eprintln!(
        "flood: {} SYNs in {:.2} s\n{}",
        report.frames,
        report.seconds,
        phases
            .iter()
            .map(|(name, s)| format!("{name:>6}: {s:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let failed: Vec<String> = attempts.iter().filter_map(|a| a.error.clone()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} real IPv6 connections failed: {failed:?}\n{}",
        failed.len(),
        attempts.len(),
        lab.daemon.log()
    );
    for (name, stats) in &phases {
        assert!(stats.attempts > 0, "no connection was made {name} the flood");
    }
    assert_eq!(report.frames, FLOOD_SYNS);
    assert!(
        proxy_seen_on,
        "the flood engaged the SYN proxy on the IPv6 VIP (ctl status)\n{}",
        lab.daemon.log()
    );
    let answer = client
        .run(move || kept.request("GET", "/"))
        .expect("the connection opened before the flood survives it");
    assert_eq!(answer.status, 200);

    // The proxy answered real clients' SYNs with cookies, which they proved.
    let log = lab.daemon.wait_for_log("SYN flood over");
    let over = log
        .lines()
        .find(|line| line.contains("SYN flood over"))
        .expect("the line");
    let count = |field: &str| -> u64 {
        let at = over
            .find(&format!("{field}="))
            .unwrap_or_else(|| panic!("{field} in {over}"));
        over[at + field.len() + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("a number after {field}= in {over}"))
    };
    assert!(
        count("cookies_sent") > 0 && count("cookies_valid") > 0,
        "real clients got cookies and proved them: {over}"
    );
    assert_eq!(
        log.matches("SYN flood: ").count(),
        1,
        "one log line for the flood, not one per SYN:\n{log}"
    );
}
