//! Shift analysis hooks end to end (root): `ctl shift --check-url` against
//! a real HTTP endpoint in the namespace lab.

use bg_lb::shift::ShiftOutcome;
use bg_lb_tests::lab::{BlueGreenLab, LabOptions, SERVICE};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");

/// The lab at 0:100, and a shift to blue checking `path` on backend b2's
/// demo app (green, serving live): the webhook.
fn shift_checking(path: &str) -> (BlueGreenLab, std::process::Output) {
    let lab = BlueGreenLab::start(BG_LB, &LabOptions::all_green());
    let hook = format!("http://{}{path}", lab.backends[2].addr);
    let args = [
        "shift",
        SERVICE,
        "--to",
        "blue",
        "--steps",
        "25,50,100",
        "--interval",
        "1s",
        "--check-url",
        &hook,
    ];
    let out = lab.daemon.ctl(&args);
    (lab, out)
}

#[test]
fn a_shift_whose_webhook_passes_completes_every_step() {
    let (lab, out) = shift_checking("/live");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}\n{}", lab.daemon.log());
    assert!(stdout.contains("completed"), "{stdout}");
    assert_eq!(lab.status().ratio.to_string(), "100:0");
}

#[test]
fn a_shift_whose_webhook_fails_rolls_back_with_a_reason_naming_the_hook() {
    let (lab, out) = shift_checking("/no-such-page");
    assert!(!out.status.success(), "a rolled-back shift exits non-zero");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rolled back to 0:100") && err.contains("check-url"),
        "{err}"
    );
    let status = lab.status();
    assert_eq!(status.ratio.to_string(), "0:100", "back where the shift began");
    let Some(ShiftOutcome::RolledBack { reason }) = status.shift.map(|s| s.outcome) else {
        panic!("the shift did not roll back:\n{}", lab.daemon.log());
    };
    assert!(
        reason.starts_with("analysis hook check-url failed") && reason.contains("HTTP 404"),
        "{reason}"
    );
}
