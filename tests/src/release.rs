//! The seed-style zero-downtime release, step by step, as the demo shows it
//! and the release tests check it: drain a pool, deploy the new version in
//! standby, sanity-check it through the standby VIP, enable it live, shift
//! traffic to it (`ctl shift`, 10/50/100%), then do the same for the other
//! pool. [`assert_release_under_load_fails_no_request`] is the release test
//! itself, for a lab of either family.

use std::{
    thread,
    time::{Duration, Instant},
};

use bg_lb::{protocol::BackendHealth, ratio::Pool};

use crate::{
    lab::{BlueGreenLab, SERVICE},
    load::{Load, LoadSpec, Tally},
};

/// How the release reports its progress: the demo narrates and shows
/// `bg-lb ctl` as an operator would see it; tests stay quiet.
pub trait Narration {
    fn step(&self, title: &str);
    fn note(&self, text: &str);
    /// Runs `bg-lb ctl ARGS`; true on success.
    fn ctl(&self, lab: &BlueGreenLab, args: &[&str]) -> bool;
    /// True once the user asked to stop (Ctrl-C).
    fn interrupted(&self) -> bool {
        false
    }
    /// Called once the shift to the new version completed.
    fn shifted(&self) {}
}

/// Runs commands without output.
pub struct Quiet;

impl Narration for Quiet {
    fn step(&self, _: &str) {}
    fn note(&self, _: &str) {}
    fn ctl(&self, lab: &BlueGreenLab, args: &[&str]) -> bool {
        lab.daemon.ctl(args).status.success()
    }
}

#[derive(Debug)]
pub enum ReleaseError {
    Interrupted,
    Failed(String),
}

#[derive(Debug, Default)]
pub struct ReleaseReport {
    /// How long each drain waited for open connections to finish.
    pub drains: Vec<(Pool, Duration)>,
}

/// Runs the whole release from v1 everywhere to `version` everywhere,
/// holding each traffic step for `hold`.
pub fn release(
    lab: &mut BlueGreenLab,
    out: &dyn Narration,
    version: &str,
    hold: Duration,
) -> Result<ReleaseReport, ReleaseError> {
    let mut report = ReleaseReport::default();
    out.step("1. Both stacks live at 50:50");
    ctl(lab, out, &["ratio", SERVICE, "50:50"])?;
    pause(out, hold)?;
    for pool in [Pool::Blue, Pool::Green] {
        drain(lab, out, pool, &mut report)?;
        deploy(lab, out, pool, version)?;
        shift_to(lab, out, pool, hold)?;
    }
    out.step("6. Restore 50:50: both pools now run the new version");
    ctl(lab, out, &["ratio", SERVICE, "50:50"])?;
    pause(out, hold)?;
    ctl(lab, out, &["status", SERVICE])?;
    Ok(report)
}

/// The release tests' client load through the live VIP: `rate` short
/// requests a second over 4 workers, and 2 keep-alive connections living
/// 3 s each.
pub fn steady_load(lab: &BlueGreenLab, rate: u32) -> Load {
    Load::start(
        &lab.topo.client.ns,
        LoadSpec {
            vip: lab.live_vip(),
            rate,
            workers: 4,
            long_lived: 2,
            long_lived_lifetime: Duration::from_secs(3),
            long_lived_period: Duration::from_millis(200),
            sources: Vec::new(),
        },
    )
}

/// Panics unless the load ran, no request failed or was reset, and no
/// long-lived connection moved between backends.
pub fn assert_no_failure(tally: &Tally, lab: &BlueGreenLab) {
    assert!(tally.ok > 100, "the load ran: {tally:?}");
    assert_eq!(
        (tally.failed, tally.resets),
        (0, 0),
        "failures: {:?}\n{}",
        tally.failures,
        lab.daemon.log()
    );
    for served in &tally.long_lived {
        assert!(
            served.len() <= 1,
            "a long-lived connection moved between backends: {served:?}"
        );
    }
}

/// The whole release from v1 to v2 under [`steady_load`]: no request fails,
/// both pools drain in turn, v1 and v2 both serve along the way, long-lived
/// connections complete, and everything runs v2 at the end.
pub fn assert_release_under_load_fails_no_request(lab: &mut BlueGreenLab) {
    let load = steady_load(lab, 100);
    let report = release(lab, &Quiet, "v2", Duration::from_secs(1)).expect("release");
    let tally = load.stop();
    assert_no_failure(&tally, lab);
    assert_eq!(
        report.drains.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        [Pool::Blue, Pool::Green]
    );
    let versions: Vec<_> = tally.served.keys().map(|(_, v)| v.as_str()).collect();
    assert!(
        versions.contains(&"v1") && versions.contains(&"v2"),
        "served {versions:?}"
    );
    assert!(
        tally.long_lived_done >= 2,
        "long-lived connections completed: {}",
        tally.long_lived_done
    );
    let after = lab.serve(lab.live_vip(), 20);
    assert!(
        after.iter().all(|(_, v)| v == "v2"),
        "everything runs v2 after the release: {after:?}"
    );
}

fn ctl(lab: &BlueGreenLab, out: &dyn Narration, args: &[&str]) -> Result<(), ReleaseError> {
    if out.ctl(lab, args) {
        Ok(())
    } else if out.interrupted() {
        // Ctrl-C reached the command too (a shift rolls back and fails).
        Err(ReleaseError::Interrupted)
    } else {
        Err(ReleaseError::Failed(format!("bg-lb ctl {} failed", args.join(" "))))
    }
}

fn pause(out: &dyn Narration, hold: Duration) -> Result<(), ReleaseError> {
    pause_unless(hold, &|| out.interrupted())
}

/// Sleeps `hold` in small slices so Ctrl-C (`interrupted`) is honoured
/// promptly.
pub fn pause_unless(hold: Duration, interrupted: &dyn Fn() -> bool) -> Result<(), ReleaseError> {
    let until = Instant::now() + hold;
    while Instant::now() < until {
        if interrupted() {
            return Err(ReleaseError::Interrupted);
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn drain(lab: &BlueGreenLab, out: &dyn Narration, pool: Pool, report: &mut ReleaseReport) -> Result<(), ReleaseError> {
    let number = if pool == Pool::Blue { 2 } else { 4 };
    out.step(&format!(
        "{number}. Drain {pool}: new connections go to {}; wait until {pool} has no open connection",
        pool.other()
    ));
    let started = Instant::now();
    ctl(
        lab,
        out,
        &["drain", SERVICE, &pool.to_string(), "--wait", "--timeout", "300s"],
    )?;
    report.drains.push((pool, started.elapsed()));
    Ok(())
}

fn deploy(lab: &mut BlueGreenLab, out: &dyn Narration, pool: Pool, version: &str) -> Result<(), ReleaseError> {
    let number = if pool == Pool::Blue { 3 } else { 5 };
    out.step(&format!(
        "{number}a. Deploy {version} to {pool}: restart its backends, new build starts in standby"
    ));
    let indices = BlueGreenLab::pool(pool);
    for &i in &indices {
        lab.deploy(i, version);
        out.note(&format!("b{i} restarted with {version} (role standby)"));
    }
    wait(lab, out, &format!("{pool} passes the standby check"), |s| {
        indices
            .iter()
            .all(|&i| s.backends[i].standby_health == Some(BackendHealth::Up))
    })?;
    out.step(&format!(
        "{number}b. Sanity-check {version} through the standby VIP {}",
        lab.standby_vip()
    ));
    let served = lab.serve(lab.standby_vip(), 10);
    let names: Vec<String> = indices.iter().map(|i| format!("b{i}")).collect();
    if let Some(bad) = served.iter().find(|(name, v)| v != version || !names.contains(name)) {
        return Err(ReleaseError::Failed(format!(
            "standby VIP served {bad:?}, expected {version} on {pool}"
        )));
    }
    out.note(&format!(
        "10/10 standby requests answered by {} running {version}",
        names.join("/")
    ));
    out.step(&format!("{number}c. Enable {pool} live (POST /enable/live)"));
    for &i in &indices {
        lab.set_role(i, "live");
    }
    wait(lab, out, &format!("{pool} passes the live check"), |s| {
        indices.iter().all(|&i| s.backends[i].health == BackendHealth::Up)
    })
}

/// Moves new connections to `pool` with `ctl shift` in steps of 10, 50 and
/// 100%, each held for `hold` while the daemon judges it.
fn shift_to(lab: &BlueGreenLab, out: &dyn Narration, pool: Pool, hold: Duration) -> Result<(), ReleaseError> {
    if pool == Pool::Green {
        return Ok(()); // after green's deploy the release restores 50:50
    }
    out.step(
        "3d. Shift new connections to blue in steps of 10, 50 and 100%, each held and judged \
         (a breach rolls back)",
    );
    let interval = if hold.subsec_millis() == 0 {
        format!("{}s", hold.as_secs())
    } else {
        format!("{}ms", hold.as_millis())
    };
    ctl(
        lab,
        out,
        &[
            "shift",
            SERVICE,
            "--to",
            "blue",
            "--steps",
            "10,50,100",
            "--interval",
            &interval,
        ],
    )?;
    out.shifted();
    Ok(())
}

fn wait(
    lab: &BlueGreenLab,
    out: &dyn Narration,
    what: &str,
    done: impl Fn(&bg_lb::protocol::ServiceStatus) -> bool,
) -> Result<(), ReleaseError> {
    let started = Instant::now();
    while !done(&lab.status()) {
        if out.interrupted() {
            return Err(ReleaseError::Interrupted);
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(ReleaseError::Failed(format!("timed out waiting until {what}")));
        }
        thread::sleep(Duration::from_millis(50));
    }
    out.note(&format!("{what} ({:.1}s)", started.elapsed().as_secs_f64()));
    Ok(())
}
