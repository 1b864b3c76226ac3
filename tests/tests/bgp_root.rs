//! End-to-end tests (root) of the VIP announcements over BGP (`[bgp]`): a
//! router running BIRD with ECMP, two LB hosts each running bg-lb and its
//! own BIRD, a client behind the router (see `bg_lb_tests::fleet`).
//! Convergence is polled with a generous deadline, never timed; what each
//! event cost new connections is measured and printed.

use std::{process::Command, thread, time::Duration};

use bg_lb::protocol::{BgpStatus, Reply};
use bg_lb_tests::{
    daemon::Daemon,
    fleet::{Fleet, Prober, VIP},
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");

/// The fleet with a daemon on each host, once the router spreads the VIP
/// over both.
fn fleet_with_daemons() -> (Fleet, Vec<Daemon>) {
    bg_lb_tests::require_root();
    let fleet = Fleet::new(2);
    let daemons: Vec<Daemon> = fleet
        .hosts
        .iter()
        .map(|host| Daemon::start(BG_LB, &host.ns, |paths| host.config(paths)))
        .collect();
    let took = fleet.await_next_hops(&fleet.fronts(&[0, 1]));
    println!("both hosts announced the VIP; the router has an ECMP route after {took:?}");
    (fleet, daemons)
}

fn bgp_status(daemon: &Daemon) -> BgpStatus {
    let reply: Reply = serde_json::from_str(&daemon.ctl_ok(&["--json", "status"])).expect("status JSON");
    reply.bgp.expect("status shows [bgp]")
}

#[test]
fn the_router_spreads_the_vip_over_healthy_hosts_and_drops_a_drained_host_or_one_whose_backends_are_down() {
    let (mut fleet, daemons) = fleet_with_daemons();
    for daemon in &daemons {
        let bgp = bgp_status(daemon);
        assert_eq!(bgp.announced, [*VIP.ip()], "{bgp:?}");
        assert!(bgp.last_configure_ok && !bgp.node_drained, "{bgp:?}");
    }
    // ECMP by the 5-tuple: new connections from one client reach both hosts.
    let names = fleet.ask_names(40);
    for host in ["host0", "host1"] {
        assert!(
            names.iter().any(|n| n == host),
            "no connection reached {host}: {names:?}"
        );
    }

    // Drain host 0: the router keeps only host 1, and new connections all
    // succeed through it.
    let probe = Prober::start(&fleet);
    let reply = daemons[0].ctl_ok(&["node", "drain"]);
    assert!(reply.contains("node drained"), "{reply}");
    let took = fleet.await_next_hops(&fleet.fronts(&[1]));
    let probed = probe.stop();
    println!("node drain: the router dropped host 0 after {took:?}; meanwhile {probed:?}");
    assert_eq!(
        probed.failed, 0,
        "a drained host keeps forwarding what the router still sends it"
    );
    let bgp = bgp_status(&daemons[0]);
    assert!(bgp.node_drained && bgp.announced.is_empty(), "{bgp:?}");
    assert_eq!(bgp.withdrawn, [*VIP.ip()]);
    assert!(fleet.ask_names(20).iter().all(|n| n == "host1"));

    // Resume: both again.
    daemons[0].ctl_ok(&["node", "resume"]);
    fleet.await_next_hops(&fleet.fronts(&[0, 1]));

    // Host 1's only backend dies: host 1 withdraws once its check says so.
    let probe = Prober::start(&fleet);
    fleet.hosts[1].stop_backend();
    let took = fleet.await_next_hops(&fleet.fronts(&[0]));
    // Connections hashed to host 1 before the route changed were refused;
    // later ones must all succeed through host 0.
    thread::sleep(Duration::from_millis(500));
    let probed = probe.stop();
    println!(
        "host 1's backends down: withdrawn after {took:?}; {} connection(s) failed over a window of {:?}, {} succeeded",
        probed.failed, probed.failure_window, probed.ok
    );
    let bgp = bgp_status(&daemons[1]);
    assert!(bgp.announced.is_empty() && !bgp.node_drained, "{bgp:?}");
    assert!(fleet.ask_names(20).iter().all(|n| n == "host0"));
    let table = daemons[1].ctl_ok(&["status"]);
    assert!(
        table.contains("bgp: announced none; withdrawn 10.96.100.100"),
        "{table}"
    );
}

#[test]
fn a_daemon_killed_and_restarted_on_its_pins_keeps_its_route_and_teardown_withdraws_it() {
    let (fleet, mut daemons) = fleet_with_daemons();
    let both = fleet.fronts(&[0, 1]);

    // kill -9, a pause, and a restart: the router must see host 0 the whole
    // time (BIRD holds the route; the pinned data plane keeps forwarding).
    let probe = Prober::start(&fleet);
    daemons[0].kill9();
    let mut samples = 0;
    for _ in 0..40 {
        assert_eq!(
            fleet.next_hops(),
            both,
            "the route went with the daemon:\n{}",
            fleet.describe()
        );
        samples += 1;
        thread::sleep(Duration::from_millis(50));
    }
    daemons[0].spawn();
    for _ in 0..40 {
        assert_eq!(
            fleet.next_hops(),
            both,
            "the restart withdrew the route:\n{}",
            fleet.describe()
        );
        samples += 1;
        thread::sleep(Duration::from_millis(50));
    }
    let bgp = bgp_status(&daemons[0]);
    assert_eq!(bgp.announced, [*VIP.ip()], "{bgp:?}");
    let probed = probe.stop();
    println!("kill -9 and restart: host 0 in all {samples} router samples; new connections meanwhile: {probed:?}");
    assert_eq!(probed.failed, 0, "{probed:?}");

    // A clean stop (SIGTERM) keeps the route too; teardown is for good.
    daemons[0].terminate();
    assert_eq!(fleet.next_hops(), both);
    let probe = Prober::start(&fleet);
    let out = Command::new(BG_LB)
        .arg("teardown")
        .arg("--config")
        .arg(daemons[0].config_path())
        .output()
        .expect("run bg-lb teardown");
    assert!(
        out.status.success(),
        "teardown: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("withdrew every VIP from BIRD (Reconfigured)"), "{said}");
    let took = fleet.await_next_hops(&fleet.fronts(&[1]));
    thread::sleep(Duration::from_millis(500));
    let probed = probe.stop();
    println!(
        "teardown of host 0: withdrawn after {took:?}; {} connection(s) failed over a window of {:?}, {} succeeded",
        probed.failed, probed.failure_window, probed.ok
    );
    assert!(!daemons[0].pins_exist());
    assert!(fleet.ask_names(20).iter().all(|n| n == "host1"));
}
