//! Progressive shift end-to-end tests (root): `bg-lb ctl shift` under load,
//! judged by what the data plane sees of each connection's fate, and client
//! affinity across a shift's steps.

use std::{
    thread,
    time::{Duration, Instant},
};

use bg_lb::{dataplane::affinity::Affinity, protocol::BackendHealth, ratio::Pool, shift::ShiftOutcome};
use bg_lb_tests::{
    affinity::RatioLog,
    lab::{BlueGreenLab, LabOptions, SERVICE},
    load::{Load, LoadSpec},
    topology::Family,
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");
const RATE: u32 = 100;

fn load(lab: &BlueGreenLab) -> Load {
    Load::start(
        &lab.topo.client.ns,
        LoadSpec {
            vip: lab.live_vip(),
            rate: RATE,
            workers: 4,
            long_lived: 0,
            long_lived_lifetime: Duration::ZERO,
            long_lived_period: Duration::ZERO,
            sources: Vec::new(),
        },
    )
}

fn outcome(lab: &BlueGreenLab) -> Option<ShiftOutcome> {
    lab.status().shift.map(|s| s.outcome)
}

#[test]
fn shift_to_a_healthy_pool_completes_every_step_without_failed_requests() {
    let lab = BlueGreenLab::start(BG_LB, &LabOptions::all_green());
    let load = load(&lab);
    let args = [
        "shift",
        SERVICE,
        "--to",
        "blue",
        "--steps",
        "25,50,100",
        "--interval",
        "1s",
        "--min-flows",
        "10",
    ];
    let out = lab.daemon.ctl_ok(&args);
    let tally = load.stop();
    assert!(out.contains("step 3/3") && out.contains("completed"), "{out}");
    let status = lab.status();
    assert_eq!(status.ratio.to_string(), "100:0");
    assert_eq!(status.shift.map(|s| s.outcome), Some(ShiftOutcome::Completed));
    assert_eq!((tally.failed, tally.resets), (0, 0), "{:?}", tally.failures);
    assert!(
        tally.served_by("b0") + tally.served_by("b1") > 0,
        "blue took traffic during the shift"
    );
}

#[test]
fn shift_to_a_pool_that_resets_connections_rolls_back_before_the_next_step() {
    // TCP checks pass (connections are accepted), so only the data plane's
    // view of each connection's fate can catch the faulty build.
    let options = LabOptions {
        check: "tcp",
        ..LabOptions::all_green()
    };
    let mut lab = BlueGreenLab::start(BG_LB, &options);
    for i in BlueGreenLab::pool(bg_lb::ratio::Pool::Blue) {
        lab.backends[i].redeploy_with(&lab.topo.backends[i].ns, "v2-bad", "live", &["--fail-percent", "50"]);
    }
    lab.wait(|s| s.backends.iter().all(|b| b.health == BackendHealth::Up), "all up");
    let load = load(&lab);
    let started = Instant::now();
    // Steps long enough for the judge's flows on a loaded host; the record
    // shows which step the rollback came in.
    let args = [
        "shift",
        SERVICE,
        "--to",
        "blue",
        "--steps",
        "10,50,100",
        "--interval",
        "30s",
        "--max-error-rate",
        "5%",
    ];
    let out = lab.daemon.ctl(&[&args[..], &["--min-flows", "10"]].concat());
    let took = started.elapsed();
    let tally = load.stop();

    assert!(!out.status.success(), "a rolled-back shift exits non-zero");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rolled back to 0:100") && err.contains("blue error rate"),
        "{err}"
    );
    let status = lab.status();
    assert_eq!(
        status.ratio.to_string(),
        "0:100",
        "back to the ratio before the shift, in one swap"
    );
    let shift = status.shift.expect("the shift's record");
    assert!(matches!(shift.outcome, ShiftOutcome::RolledBack { .. }), "{shift:?}");
    assert_eq!(shift.step, 0, "rolled back within the first step, before the next one");
    // Only the 10% share sent to blue during the first step could fail.
    let bound = (f64::from(RATE) * 0.10 * took.as_secs_f64()).ceil() as u64 + 5;
    assert!(tally.failed > 0, "the faulty build did fail requests");
    assert!(
        tally.failed <= bound,
        "{} failures > {bound}: {:?}",
        tally.failed,
        tally.failures
    );
}

#[test]
fn shift_abort_restores_the_ratio_the_shift_began_at() {
    let lab = BlueGreenLab::start(BG_LB, &LabOptions::all_green());
    lab.daemon
        .ctl_ok(&["shift", SERVICE, "--to", "blue", "--interval", "10m", "--detach"]);
    assert_eq!(lab.status().ratio.to_string(), "10:90");
    let refused = lab.daemon.ctl(&["ratio", SERVICE, "50:50"]);
    assert!(!refused.status.success(), "manual ratio changes wait for the shift");
    lab.daemon.ctl_ok(&["shift", SERVICE, "--abort"]);
    assert_eq!(lab.status().ratio.to_string(), "0:100");
    assert_eq!(outcome(&lab), Some(ShiftOutcome::Aborted { rolled_back: true }));
}

#[test]
fn a_restarted_daemon_resumes_a_running_shift() {
    let mut lab = BlueGreenLab::start(BG_LB, &LabOptions::all_green());
    lab.daemon.ctl_ok(&[
        "shift",
        SERVICE,
        "--to",
        "blue",
        "--steps",
        "50,100",
        "--interval",
        "1s",
        "--detach",
    ]);
    lab.daemon.kill9();
    thread::sleep(Duration::from_millis(300));
    lab.daemon.spawn();
    lab.wait(
        |s| s.shift.as_ref().is_some_and(|r| r.outcome == ShiftOutcome::Completed),
        "the resumed shift completes",
    );
    assert_eq!(lab.status().ratio.to_string(), "100:0");
    assert!(lab.daemon.log().contains("resuming the progressive shift"));
}

#[test]
fn promote_checks_health_and_rollback_returns_to_the_previous_ratio() {
    let mut lab = BlueGreenLab::start(BG_LB, &LabOptions::default());
    lab.backends[2].kill();
    lab.wait(|s| s.backends[2].health == BackendHealth::Down, "b2 down");
    let refused = lab.daemon.ctl(&["promote", SERVICE, "green"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("10.99.0.13:8080 down"),
        "{refused:?}"
    );
    lab.daemon.ctl_ok(&["promote", SERVICE, "blue"]);
    assert_eq!(lab.status().ratio.to_string(), "100:0");
    lab.daemon.ctl_ok(&["rollback", SERVICE]);
    assert_eq!(lab.status().ratio.to_string(), "50:50");
}

/// Client affinity across a real `ctl shift` toward green, the new
/// version (v2), in steps of 10, 50 and 100%, with 128 client addresses
/// sending HTTP requests, each on a new connection: no client that reached
/// v2 ever reaches v1 again, each step moves about its share of clients,
/// within each step one client's connections all reach one backend (the
/// pools do not change), and at 100% every client is on green.
#[test]
fn under_client_affinity_no_client_goes_back_to_the_old_version_during_a_10_50_100_shift() {
    let options = LabOptions {
        ratio: "100:0",
        affinity: Affinity::ClientIp,
        ..LabOptions::default()
    };
    let mut lab = BlueGreenLab::start(BG_LB, &options);
    for i in BlueGreenLab::pool(Pool::Green) {
        lab.backends[i].redeploy(&lab.topo.backends[i].ns, "v2", "live");
    }
    lab.wait(
        |s| s.backends.iter().all(|b| b.health == BackendHealth::Up),
        "v2 on green up",
    );
    let clients = lab.topo.add_clients(Family::Ipv4, 128, options.forwarding);
    let ratios = RatioLog::start(lab.daemon.socket(), SERVICE);
    let load = Load::start(
        &lab.topo.client.ns,
        LoadSpec {
            vip: lab.live_vip(),
            // Two connections a second per client: about ten per step.
            rate: 256,
            workers: 8,
            long_lived: 0,
            long_lived_lifetime: Duration::ZERO,
            long_lived_period: Duration::ZERO,
            sources: clients.clone(),
        },
    );
    let watch = load.watch();
    let patience = Duration::from_secs(60);
    assert!(
        watch.every_client_served_twice(&clients, patience),
        "every client served before the shift"
    );
    let steps = [
        "shift",
        SERVICE,
        "--to",
        "green",
        "--steps",
        "10,50,100",
        "--interval",
        "5s",
    ];
    let out = lab.daemon.ctl_ok(&steps);
    assert!(out.contains("completed"), "{out}");
    assert!(
        watch.every_client_served_twice(&clients, patience),
        "every client served after the shift"
    );
    let tally = load.stop();
    let journeys = ratios.phases().journeys(&tally, "v2");
    drop(ratios);

    assert_eq!((tally.failed, tally.resets), (0, 0), "{:?}", tally.failures);
    assert!(
        journeys.went_back.is_empty(),
        "clients saw v2 and then v1 again: {:#?}",
        journeys.went_back
    );
    let ratios: Vec<&str> = journeys.phases.iter().map(|p| p.ratio.as_str()).collect();
    assert_eq!(ratios, ["100:0", "90:10", "50:50", "0:100"], "{journeys:#?}");
    let mut moved = 0;
    for (phase, green_share) in journeys.phases.iter().zip([0, 10, 50, 100]) {
        let n = clients.len();
        assert!(
            phase.split.is_empty(),
            "split within {}: {:?}",
            phase.ratio,
            phase.split
        );
        assert_eq!(
            phase.seen, n,
            "at {} every client was served (the load kept up)",
            phase.ratio
        );
        // Within 15 points of the step's share.
        assert!(
            phase.on_new.abs_diff(n * green_share / 100) <= n * 15 / 100,
            "at {}: {} of {n} clients on v2",
            phase.ratio,
            phase.on_new
        );
        moved += phase.moved;
    }
    assert_eq!(
        journeys.phases[3].on_new,
        clients.len(),
        "at 100% every client is on v2"
    );
    assert_eq!(moved, clients.len(), "each client moved to v2 once: {journeys:#?}");
}
