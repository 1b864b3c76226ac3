//! Progressive shift end-to-end tests (root): `bg-lb ctl shift` under load,
//! judged by what the data plane sees of each connection's fate.

use std::{
    thread,
    time::{Duration, Instant},
};

use bg_lb::{protocol::BackendHealth, shift::ShiftOutcome};
use bg_lb_tests::{
    lab::{BlueGreenLab, LabOptions, SERVICE},
    load::{Load, LoadSpec},
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
