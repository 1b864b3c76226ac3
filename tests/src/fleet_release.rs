//! A release across the hosts of a [`Cluster`] under load, with a host
//! failure in the middle, as `cargo xtask demo --hosts N` narrates it and
//! cluster_root checks it: every host starts all blue, host 0 shifts the
//! fleet to green step by step (each host applies each step from etcd),
//! and once green has half the traffic the last host stops for good. The
//! router withdraws it, the shift goes on over the others (its judge
//! summing every host's counters), and new connections through the router
//! keep succeeding. Clients connect to the VIP throughout ([`Prober`]s);
//! what the host's stop cost them is measured and reported.

use std::{
    thread,
    time::{Duration, Instant},
};

use bg_lb::{ratio::Pool, shift::ShiftOutcome};

use crate::{
    cluster::Cluster,
    fleet::{CONVERGENCE, Probed, Prober},
    release::{Quiet, ReleaseError, pause_unless},
};

/// The shift's steps: green's share of new connections, in percent.
const STEPS: [&str; 4] = ["25", "50", "75", "100"];

/// How the release reports its progress.
pub trait Narrator {
    fn step(&self, title: &str);
    fn note(&self, text: &str);
    /// True once the user asked to stop (Ctrl-C).
    fn interrupted(&self) -> bool {
        false
    }
}

impl Narrator for Quiet {
    fn step(&self, _: &str) {}
    fn note(&self, _: &str) {}
}

/// What the clients saw.
#[derive(Debug)]
pub struct FleetReleaseReport {
    /// The host stopped for good.
    pub stopped: usize,
    /// From the start of the load until the router dropped the stopped host.
    pub before: Probed,
    /// From then until the shift completed on the other hosts.
    pub after: Probed,
    /// From the stopped host's SIGTERM until the router dropped it.
    pub withdrawn_after: Duration,
}

/// Runs the release on `cluster` with `clients` concurrent probers, each
/// step held for `hold` (whole seconds).
pub fn release(
    cluster: &mut Cluster,
    out: &dyn Narrator,
    hold: Duration,
    clients: usize,
) -> Result<FleetReleaseReport, ReleaseError> {
    let hosts = cluster.daemons.len();
    let stopped = hosts - 1;
    out.step(&format!(
        "1. {hosts} LB hosts announce the VIP; the router spreads new connections over all of them"
    ));
    out.note(&format!(
        "router next hops: {:?} (ECMP by the 5-tuple, through BIRD)",
        cluster.fleet.next_hops()
    ));
    ctl(cluster, 0, &["ratio", "web", "100:0"], out)?;
    wait_all(
        cluster,
        out,
        "every host is at 100:0 (all blue)",
        CONVERGENCE,
        |c, i| c.daemons[i].status("web").ratio.to_string() == "100:0",
    )?;

    out.note(&format!(
        "{clients} clients open connections to the VIP through the router, without pause"
    ));
    let load = Prober::with_clients(&cluster.fleet, clients);
    pause_unless(hold, &|| out.interrupted())?;

    out.step(&format!(
        "2. Shift the fleet to green from host 0: {}% of new connections, each step held {}s",
        STEPS.join("%, "),
        hold.as_secs()
    ));
    let steps = STEPS.join(",");
    let interval = format!("{}s", hold.as_secs().max(1));
    let shift = [
        "shift",
        "web",
        "--to",
        "green",
        "--steps",
        &steps,
        "--interval",
        &interval,
        "--max-error-rate",
        "5%",
        "--detach",
    ];
    out.note("the judge (on host 0) sums every host's counters; 5% of green's new connections may fail");
    ctl(cluster, 0, &shift, out)?;
    let second_step = hold * 2 + CONVERGENCE;
    wait_all(
        cluster,
        out,
        "every host applied the 50% step from etcd",
        second_step,
        |c, i| c.daemons[i].status("web").ratio.share(Pool::Green) >= 50,
    )?;

    out.step(&format!(
        "3. Host {stopped} stops for good (SIGTERM, then bg-lb teardown): its BIRD withdraws the VIP"
    ));
    let withdrawn_after = cluster.stop_host_for_good(stopped);
    out.note(&format!(
        "the router dropped host {stopped} {:.2}s after its SIGTERM; next hops now {:?}",
        withdrawn_after.as_secs_f64(),
        cluster.fleet.next_hops()
    ));
    // Connections hashed to the stopped host just before the route changed
    // end within this; later ones all go to the others.
    thread::sleep(Duration::from_millis(500));
    let before = load.stop();
    out.note(&format!(
        "until then: {} connections succeeded, {} failed (failure window {:.3}s)",
        before.ok,
        before.failed,
        before.failure_window.as_secs_f64()
    ));

    out.step(&format!(
        "4. The shift goes on over hosts 0-{}; clients keep connecting",
        stopped - 1
    ));
    let load = Prober::with_clients(&cluster.fleet, clients);
    let started = Instant::now();
    loop {
        let shift = cluster.daemons[0].status("web").shift;
        match shift.map(|s| s.outcome) {
            Some(ShiftOutcome::Completed) => break,
            Some(ShiftOutcome::Running) => {}
            other => {
                return Err(ReleaseError::Failed(format!(
                    "the shift ended {other:?}, not completed"
                )));
            }
        }
        if out.interrupted() {
            return Err(ReleaseError::Interrupted);
        }
        if started.elapsed() > hold * STEPS.len() as u32 + CONVERGENCE {
            return Err(ReleaseError::Failed("the shift did not complete".into()));
        }
        thread::sleep(Duration::from_millis(100));
    }
    out.note(&format!(
        "shift completed {:.1}s after the host stopped",
        started.elapsed().as_secs_f64()
    ));
    pause_unless(hold / 2, &|| out.interrupted())?;
    let after = load.stop();
    for i in 0..stopped {
        let ratio = cluster.daemons[i].status("web").ratio.to_string();
        if ratio != "0:100" {
            return Err(ReleaseError::Failed(format!("host {i} ends at {ratio}, not 0:100")));
        }
    }
    Ok(FleetReleaseReport {
        stopped,
        before,
        after,
        withdrawn_after,
    })
}

/// `bg-lb ctl ARGS` on host `i`, shown as an operator types it.
fn ctl(cluster: &Cluster, i: usize, args: &[&str], out: &dyn Narrator) -> Result<(), ReleaseError> {
    out.note(&format!("host {i} $ bg-lb ctl {}", args.join(" ")));
    let done = cluster.daemons[i].ctl(args);
    if done.status.success() {
        Ok(())
    } else {
        Err(ReleaseError::Failed(format!(
            "bg-lb ctl {} on host {i}: {}",
            args.join(" "),
            String::from_utf8_lossy(&done.stderr)
        )))
    }
}

/// Polls until `done` holds on every host, for at most `within`; says how
/// long that took.
fn wait_all(
    cluster: &Cluster,
    out: &dyn Narrator,
    what: &str,
    within: Duration,
    done: impl Fn(&Cluster, usize) -> bool,
) -> Result<(), ReleaseError> {
    let started = Instant::now();
    while !(0..cluster.daemons.len()).all(|i| done(cluster, i)) {
        if out.interrupted() {
            return Err(ReleaseError::Interrupted);
        }
        if started.elapsed() > within {
            return Err(ReleaseError::Failed(format!("not after {within:?}: {what}")));
        }
        thread::sleep(Duration::from_millis(50));
    }
    out.note(&format!("{what} ({:.2}s)", started.elapsed().as_secs_f64()));
    Ok(())
}
