//! Release and resilience end-to-end tests under load (root): real clients
//! keep sending requests while the LB is reconfigured, restarted, or loses a
//! backend; every outcome is tallied and checked.

use std::{thread, time::Duration};

use bg_lb::protocol::BackendHealth;
use bg_lb_tests::{
    lab::{BlueGreenLab, LabOptions, SERVICE},
    release::{assert_no_failure, assert_release_under_load_fails_no_request, steady_load},
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");

#[test]
fn full_release_under_load_fails_no_request() {
    let mut lab = BlueGreenLab::start(BG_LB, &LabOptions::default());
    assert_release_under_load_fails_no_request(&mut lab);
}

#[test]
fn hundred_ratio_flips_under_load_fail_no_request() {
    let lab = BlueGreenLab::start(BG_LB, &LabOptions::default());
    let load = steady_load(&lab, 100);
    for i in 0..100 {
        let ratio = if i % 2 == 0 { "0:100" } else { "100:0" };
        lab.daemon.ctl_ok(&["ratio", SERVICE, ratio]);
        thread::sleep(Duration::from_millis(30));
    }
    let tally = load.stop();
    assert_no_failure(&tally, &lab);
    for b in ["b0", "b1", "b2", "b3"] {
        assert!(tally.served_by(b) > 0, "{b} served nothing across the flips");
    }
}

#[test]
fn daemon_kill9_and_restart_under_load_fail_no_request() {
    let mut lab = BlueGreenLab::start(BG_LB, &LabOptions::default());
    let load = steady_load(&lab, 100);
    thread::sleep(Duration::from_millis(500));
    lab.daemon.kill9();
    thread::sleep(Duration::from_secs(1));
    let during_gap = load.tally();
    lab.daemon.spawn();
    lab.daemon.ctl_ok(&["ratio", SERVICE, "100:0"]);
    thread::sleep(Duration::from_secs(1));
    let tally = load.stop();
    assert!(tally.ok > during_gap.ok, "requests kept succeeding after the restart");
    assert_no_failure(&tally, &lab);
}

#[test]
fn backend_crash_under_load_fails_only_requests_sent_to_it_before_it_is_marked_down() {
    let options = LabOptions::default();
    let mut lab = BlueGreenLab::start(BG_LB, &options);
    let rate = 100;
    let load = steady_load(&lab, rate);
    thread::sleep(Duration::from_millis(500));
    lab.backends[0].kill();
    let detection = lab.wait(|s| s.backends[0].health == BackendHealth::Down, "b0 marked down");
    let at_detection = load.tally();
    thread::sleep(Duration::from_secs(1));
    let tally = load.stop();

    // b0 gets a quarter of new connections at 50:50 with equal weights; a
    // crash fails what was in flight to it plus what the table sent it
    // until it was marked down (and any long-lived connection it held).
    let window = detection + Duration::from_millis(300);
    let bound = (f64::from(rate) / 4.0 * window.as_secs_f64()).ceil() as u64 + 2 + 5;
    assert!(
        tally.failed <= bound,
        "{} failures > bound {bound}: {:?}",
        tally.failed,
        tally.failures
    );
    // A request racing the detection may still be tallied just after it.
    let late = tally.failed - at_detection.failed;
    assert!(
        late <= 2,
        "failures stop once b0 is down, yet {late} came after: {:?}",
        tally.failures
    );
    assert!(tally.ok > at_detection.ok, "the other backends keep serving");
}

#[test]
fn full_flow_table_evicts_least_recently_used_flows_and_keeps_accepting_connections() {
    let options = LabOptions {
        max_flows: 1024,
        ..LabOptions::default()
    };
    let lab = BlueGreenLab::start(BG_LB, &options);
    let served = lab.serve(lab.live_vip(), 3000);
    assert_eq!(
        served.len(),
        3000,
        "every new connection is accepted with the table full"
    );
    let open: u64 = lab.status().backends.iter().map(|b| b.open_flows).sum();
    let flows = lab.daemon.ctl_ok(&["--json", "flows", SERVICE, "--limit", "10000"]);
    let listed = serde_json::from_str::<bg_lb::protocol::Reply>(&flows)
        .unwrap()
        .flows
        .unwrap()
        .len();
    assert!(
        listed <= 1024 && open <= 1024,
        "the LRU table holds at most max_flows ({listed} listed, {open} open)"
    );
}
