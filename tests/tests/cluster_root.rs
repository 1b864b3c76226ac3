//! End-to-end tests (root) of one operator state for several hosts
//! (`[cluster]`): the BGP fleet of `bg_lb_tests::fleet` (a router running
//! BIRD with ECMP, two LB hosts each with bg-lb and its BIRD), plus one etcd
//! in the router's namespace that both daemons use, killed by PID. Each host
//! has a blue backend (its name server on port 80) and a green one (port
//! 8080, answering `green<i>`). Propagation is polled with a generous
//! deadline and the time it took printed, never asserted.

use std::time::Instant;

use bg_lb::{ratio::Pool, shift::ShiftOutcome};
use bg_lb_tests::{
    cluster::{Cluster, until},
    fleet::Prober,
    fleet_release,
    release::Quiet,
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");

/// Two hosts, once the router spreads the VIP over both.
fn cluster() -> Cluster {
    bg_lb_tests::require_root();
    let cluster = Cluster::start(BG_LB, 2);
    println!("both hosts announced the VIP after {:?}", cluster.announced_after);
    cluster
}

#[test]
fn ctl_ratio_on_one_host_changes_the_split_through_the_other_and_without_etcd_traffic_flows_and_changes_are_refused() {
    let mut cluster = cluster();
    let (fleet, daemons) = (&cluster.fleet, &cluster.daemons);
    // Only host 1 takes the router's flows: a node drain is the host's own.
    daemons[0].ctl_ok(&["node", "drain"]);
    fleet.await_next_hops(&fleet.fronts(&[1]));
    assert_eq!(daemons[1].status("web").ratio.to_string(), "50:50");

    let names = fleet.ask_names(40);
    assert!(
        names.iter().any(|n| n == "host1") && names.iter().any(|n| n == "green1"),
        "50:50 through host 1: {names:?}"
    );

    // The change is made on host 0; the connections go through host 1. A
    // batch of 10 all green is 1 in 1024 by chance at 50:50.
    let start = Instant::now();
    let reply = daemons[0].ctl_ok(&["ratio", "web", "0:100"]);
    assert!(reply.contains("0:100"), "{reply}");
    until("connections through host 1 still reach blue", || {
        fleet.ask_names(10).iter().all(|n| n == "green1")
    });
    println!(
        "ctl ratio on host 0: new connections through host 1 all reached green after {:?}",
        start.elapsed()
    );
    assert_eq!(daemons[1].status("web").ratio.to_string(), "0:100");
    assert!(fleet.ask_names(20).iter().all(|n| n == "green1"));
    let status = cluster.fleet_status(1);
    assert!(
        status.host == "lb1" && status.etcd_answers && status.revision.is_some(),
        "{status:?}"
    );

    // etcd dies: both hosts forward as before, say so, and refuse changes
    // by name.
    cluster.etcd.kill();
    until("host 1's status never said etcd is away", || {
        !cluster.fleet_status(1).etcd_answers
    });
    let table = daemons[1].ctl_ok(&["status"]);
    assert!(table.contains("etcd 10.96.0.1:2379 UNREACHABLE"), "{table}");
    for (i, daemon) in daemons.iter().enumerate() {
        let refused = daemon.ctl(&["ratio", "web", "100:0"]);
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "host {i} changed the ratio without etcd");
        assert!(
            said.contains("etcd is unreachable (10.96.0.1:2379)")
                && said.contains("every host keeps forwarding with its last state"),
            "host {i}: {said}"
        );
        assert_eq!(daemon.status("web").ratio.to_string(), "0:100", "host {i}");
    }
    assert!(fleet.ask_names(20).iter().all(|n| n == "green1"));
    // Host 0 (drained, but its data plane serves what still reaches it)
    // forwards with the same state.
    daemons[0].ctl_ok(&["node", "resume"]);
    fleet.await_next_hops(&fleet.fronts(&[0, 1]));
    let names = fleet.ask_names(40);
    assert!(
        names.iter().all(|n| n.starts_with("green")) && names.iter().any(|n| n == "green0"),
        "{names:?}"
    );
}

#[test]
fn a_shift_survives_the_death_of_the_host_that_drives_it() {
    let mut cluster = cluster();
    let daemons = &mut cluster.daemons;
    daemons[0].ctl_ok(&[
        "shift",
        "web",
        "--to",
        "green",
        "--steps",
        "60,80,100",
        "--interval",
        "3s",
        "--detach",
    ]);
    let took = until("host 1 never saw the shift", || {
        daemons[1].status("web").shift.is_some()
    });
    println!("host 1 saw the shift {took:?} after it started on host 0");
    // Host 1 applies each step host 0 takes.
    until("host 1 never saw the shift's second step", || {
        daemons[1].status("web").ratio.to_string() == "20:80"
    });
    let refused = daemons[1].ctl(&["ratio", "web", "50:50"]);
    assert!(
        !refused.status.success(),
        "a ratio change on host 1 during host 0's shift"
    );

    // The leader dies mid-shift; host 1 takes the lead once its lease
    // expires and finishes from the step the fleet state records.
    daemons[0].kill9();
    let took = until("the shift never completed after its leader died", || {
        daemons[1]
            .status("web")
            .shift
            .is_some_and(|s| s.outcome == bg_lb::shift::ShiftOutcome::Completed)
    });
    println!("leader killed: host 1 completed the shift {took:?} later");
    assert_eq!(daemons[1].status("web").ratio.to_string(), "0:100");
    assert!(
        daemons[1].log().contains("took the lead of the running shift"),
        "{}",
        daemons[1].log()
    );
}

/// Health checks go to this port of every backend (a listener of its own),
/// so a green backend can refuse every connection while its checks pass.
const HEALTH_PORT: u16 = 9000;

#[test]
fn a_shift_led_by_a_host_without_traffic_rolls_back_on_the_errors_another_host_counts() {
    bg_lb_tests::require_root();
    let mut cluster = Cluster::start_checking(BG_LB, 2, Some(HEALTH_PORT));
    // Host 0 leads the shift but the router sends it nothing; host 1 takes
    // every connection, and its green backend refuses them. Only host 1's
    // counters can show the breach.
    cluster.daemons[0].ctl_ok(&["node", "drain"]);
    cluster.fleet.await_next_hops(&cluster.fleet.fronts(&[1]));
    cluster.daemons[0].ctl_ok(&["ratio", "web", "100:0"]);
    until("host 1 never applied 100:0", || {
        cluster.daemons[1].status("web").ratio.to_string() == "100:0"
    });
    cluster.stop_green(1);
    let prober = Prober::with_clients(&cluster.fleet, 2);
    // The first step would hold for 10 minutes: only a rollback ends the
    // shift within the deadline.
    let shift = [
        "shift",
        "web",
        "--to",
        "green",
        "--steps",
        "10,50,100",
        "--interval",
        "600s",
        "--max-error-rate",
        "5%",
        "--min-flows",
        "10",
        "--detach",
    ];
    cluster.daemons[0].ctl_ok(&shift);
    let took = until("the shift never rolled back", || {
        cluster.daemons[0]
            .status("web")
            .shift
            .is_some_and(|s| s.outcome != ShiftOutcome::Running)
    });
    let probed = prober.stop();
    println!("rolled back {took:?} after the shift started; the clients saw {probed:?}");

    let status = cluster.daemons[0].status("web");
    let record = status.shift.clone().expect("the shift's record");
    let ShiftOutcome::RolledBack { reason } = &record.outcome else {
        panic!("{record:?}");
    };
    assert!(reason.contains("green error rate"), "{reason}");
    assert_eq!((record.step, status.ratio.to_string().as_str()), (0, "100:0"));
    // Host 0 carried none of it: its own green backend saw no connection,
    // so the failures the judge counted are host 1's.
    let green_of = |status: &bg_lb::protocol::ServiceStatus| {
        status
            .backends
            .iter()
            .find(|b| b.pool == Pool::Green)
            .map(|b| (b.new_flows, b.refused))
            .expect("a green backend")
    };
    assert_eq!(green_of(&status), (0, 0), "host 0 took connections");
    let (_, refused_on_1) = green_of(&cluster.daemons[1].status("web"));
    let judged = record.rates[Pool::Green.index()];
    assert!(
        judged.new_flows >= 10 && judged.failures > 0 && refused_on_1 >= judged.failures,
        "judged {judged:?}; host 1's green backend refused {refused_on_1}"
    );
    assert!(probed.failed > 0, "{probed:?}");
    until("host 1 never rolled back to 100:0", || {
        cluster.daemons[1].status("web").ratio.to_string() == "100:0"
    });
}

#[test]
fn a_release_across_three_hosts_completes_under_load_while_one_host_stops_for_good() {
    bg_lb_tests::require_root();
    let mut cluster = Cluster::start(BG_LB, 3);
    let started = Instant::now();
    let report = fleet_release::release(&mut cluster, &Quiet, std::time::Duration::from_secs(3), 2)
        .unwrap_or_else(|e| panic!("the release failed: {e:?}"));
    println!(
        "release over {:?}: host {} withdrawn {:?} after its SIGTERM; before: {:?}; after: {:?}",
        started.elapsed(),
        report.stopped,
        report.withdrawn_after,
        report.before,
        report.after
    );
    // Clients went through every host before the stop.
    for i in 0..3 {
        assert!(
            [format!("host{i}"), format!("green{i}")]
                .iter()
                .any(|name| report.before.served.contains_key(name)),
            "no connection through host {i}: {:?}",
            report.before.served
        );
    }
    // After convergence every connection succeeded, none through the
    // stopped host.
    assert_eq!(report.after.failed, 0, "{:?}", report.after);
    assert!(report.after.ok > 0);
    let stopped = [format!("host{}", report.stopped), format!("green{}", report.stopped)];
    assert!(
        !report.after.served.keys().any(|name| stopped.contains(name)),
        "{:?}",
        report.after.served
    );
    assert!(cluster.fleet.ask_names(20).iter().all(|n| n.starts_with("green")));
    assert!(!cluster.daemons[report.stopped].pins_exist());
}
