//! Health-check end-to-end tests (root): `bg-lb run` with HTTP /live and
//! /standby checks against `bg-lb demo-backend` processes in namespaces.

use std::{
    io::ErrorKind,
    time::{Duration, Instant},
};

use bg_lb::protocol::BackendHealth;
use bg_lb_tests::{
    http::{self, Connection},
    lab::{BlueGreenLab, LabOptions},
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");
/// Slack for polling status and process scheduling on a busy 2-core box.
const SLACK: Duration = Duration::from_secs(1);

/// b0, b1 blue; b2, b3 green; all live; ratio 100:0.
fn lab() -> (BlueGreenLab, LabOptions) {
    let options = LabOptions {
        ratio: "100:0",
        ..LabOptions::default()
    };
    (BlueGreenLab::start(BG_LB, &options), options)
}

fn names(served: Vec<(String, String)>) -> Vec<String> {
    served.into_iter().map(|(name, _)| name).collect()
}

#[test]
fn killed_backend_leaves_rotation_within_fall_intervals_and_returns_after_rise_intervals() {
    let (mut lab, o) = lab();
    lab.backends[0].kill();
    let down_after = lab.wait(
        |s| s.backends[0].health == BackendHealth::Down,
        "b0 down after its process died",
    );
    assert!(
        down_after <= o.interval * o.fall + o.timeout + SLACK,
        "marked down after {down_after:?}"
    );
    let b0 = &lab.status().backends[0];
    assert_eq!(b0.last_check.as_deref(), Some("connection refused"));
    assert_eq!(b0.weight, 0, "a down backend takes no new flows");
    let served = names(lab.serve(lab.live_vip(), 40));
    assert!(
        served.iter().all(|n| n == "b1"),
        "no new connection to the down backend: {served:?}"
    );

    lab.backends[0].restart(&lab.topo.backends[0].ns);
    let up_after = lab.wait(|s| s.backends[0].health == BackendHealth::Up, "b0 up after it returned");
    assert!(
        up_after <= o.interval * o.rise + o.timeout + SLACK,
        "marked up after {up_after:?}"
    );
    assert!(
        names(lab.serve(lab.live_vip(), 40)).iter().any(|n| n == "b0"),
        "b0 is back in rotation"
    );
}

#[test]
fn backend_flipped_to_standby_keeps_its_open_connection_while_new_ones_go_elsewhere() {
    let (lab, _) = lab();
    let vip = lab.live_vip();
    let mut open = lab
        .topo
        .client
        .ns
        .run(move || Connection::open(vip).expect("keep-alive connection"));
    let first = open.request("GET", "/").unwrap().backend_name();
    let index: usize = first[1..].parse().unwrap();

    lab.set_role(index, "standby");
    lab.wait(
        |s| s.backends[index].health == BackendHealth::Down,
        "the standby backend leaves the live rotation",
    );
    assert_eq!(lab.status().backends[index].last_check.as_deref(), Some("HTTP 500"));
    for _ in 0..10 {
        let response = open.request("GET", "/").expect("the open connection keeps working");
        assert_eq!((response.status, response.backend_name()), (200, first.clone()));
    }
    let served = names(lab.serve(vip, 30));
    assert!(
        served.iter().all(|n| *n != first),
        "new connections avoid {first}: {served:?}"
    );
}

#[test]
fn standby_vip_reaches_only_standby_enabled_backends() {
    let (lab, _) = lab();
    let standby = lab.standby_vip();
    let refused = lab.topo.client.ns.run(move || http::request(standby, "GET", "/").err());
    assert_eq!(
        refused.map(|e| e.kind()),
        Some(ErrorKind::ConnectionRefused),
        "no standby backend yet"
    );

    lab.set_role(2, "standby");
    let started = Instant::now();
    lab.wait(
        |s| s.backends[2].standby_health == Some(BackendHealth::Up),
        "b2 passes the standby check",
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let served = names(lab.serve(standby, 20));
    assert!(served.iter().all(|n| n == "b2"), "standby VIP: {served:?}");
    let live = names(lab.serve(lab.live_vip(), 20));
    assert!(
        live.iter().all(|n| n == "b0" || n == "b1"),
        "the live VIP still follows the ratio: {live:?}"
    );
}

#[test]
fn pool_with_every_backend_down_fails_over_to_the_other_pool() {
    let (mut lab, _) = lab();
    lab.backends[0].kill();
    lab.backends[1].kill();
    lab.wait(
        |s| s.backends[0].health == BackendHealth::Down && s.backends[1].health == BackendHealth::Down,
        "blue down",
    );
    let status = lab.status();
    assert_eq!(
        (status.ratio.to_string(), status.effective_ratio.to_string()),
        ("100:0".into(), "0:100".into())
    );
    let served = names(lab.serve(lab.live_vip(), 20));
    assert!(
        served.iter().all(|n| n == "b2" || n == "b3"),
        "blue's share goes to green: {served:?}"
    );
    assert!(
        lab.daemon.log().contains("pool has no healthy backend"),
        "said loudly in the log"
    );
}

#[test]
fn both_pools_down_refuses_new_connections_at_once() {
    let (mut lab, _) = lab();
    for backend in &mut lab.backends {
        backend.kill();
    }
    lab.wait(
        |s| s.backends.iter().all(|b| b.health == BackendHealth::Down),
        "all down",
    );
    let vip = lab.live_vip();
    let error = lab
        .topo
        .client
        .ns
        .run(move || http::request(vip, "GET", "/").expect_err("nothing can serve"));
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "a RST, not a hang: {error}");
    assert!(lab.daemon.log().contains("NO healthy backend in either pool"));
}
