//! End-to-end tests (root) of the VIP announcements over BGP (`[bgp]`): a
//! router running BIRD with ECMP, two LB hosts each running bg-lb and its
//! own BIRD, a client behind the router (see `bg_lb_tests::fleet`).
//! Convergence is polled with a generous deadline, never timed; what each
//! event cost new connections is measured and printed. The fleet is
//! dual-stack: one test announces an IPv6 VIP beside the IPv4 one.

use std::{
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use bg_lb::protocol::{BgpStatus, Reply};
use bg_lb_tests::{
    daemon::{Daemon, finish_teardown},
    fleet::{CONVERGENCE, Fleet, LbHost, Probed, Prober, VIP, VIP6},
    servers::ask_names,
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");

/// The fleet with a daemon on each host, once the router spreads the VIP
/// over both.
fn fleet_with_daemons() -> (Fleet, Vec<Daemon>) {
    bg_lb_tests::require_root();
    let fleet = Fleet::new(2);
    let daemons = start_daemons(&fleet, |host, paths| host.config(paths));
    let took = fleet.await_next_hops(&fleet.fronts(&[0, 1]));
    println!("both hosts announced the VIP; the router has an ECMP route after {took:?}");
    (fleet, daemons)
}

fn start_daemons(fleet: &Fleet, config: impl Fn(&LbHost, &str) -> String) -> Vec<Daemon> {
    fleet
        .hosts
        .iter()
        .map(|host| Daemon::start(BG_LB, &host.ns, |paths| config(host, paths)))
        .collect()
}

/// Opens `n` IPv6 connections to [`VIP6`] through the router; the name of
/// the host whose backend served each.
fn ask_names6(fleet: &Fleet, n: usize) -> Vec<String> {
    ask_names(&fleet.client.ns, VIP6, n).unwrap_or_else(|e| {
        panic!(
            "an IPv6 connection through the router failed: {e}\n{}",
            fleet.describe()
        )
    })
}

#[test]
fn an_ipv6_vip_is_announced_by_each_serving_host_beside_the_ipv4_one_and_a_node_drain_withdraws_both() {
    bg_lb_tests::require_root();
    let fleet = Fleet::new(2);
    let daemons = start_daemons(&fleet, |host, paths| host.dual_stack_config(paths));
    fleet.await_next_hops(&fleet.fronts(&[0, 1]));
    let took = fleet.await_next_hops6(&[0, 1]);
    println!("both hosts announced the IPv6 VIP; the router has an ECMP route after {took:?}");
    let both: [IpAddr; 2] = [(*VIP.ip()).into(), (*VIP6.ip()).into()];
    for daemon in &daemons {
        let bgp = bgp_status(daemon);
        assert_eq!(bgp.announced, both, "{bgp:?}");
        let table = daemon.ctl_ok(&["status"]);
        assert!(
            table.contains("bgp: announced 10.96.100.100, fd96:100::100; withdrawn none"),
            "{table}"
        );
    }
    let names = ask_names6(&fleet, 40);
    for host in ["host0", "host1"] {
        assert!(
            names.iter().any(|n| n == host),
            "no IPv6 connection reached {host}: {names:?}"
        );
    }

    daemons[0].ctl_ok(&["node", "drain"]);
    fleet.await_next_hops(&fleet.fronts(&[1]));
    fleet.await_next_hops6(&[1]);
    let bgp = bgp_status(&daemons[0]);
    assert!(bgp.announced.is_empty() && bgp.withdrawn == both, "{bgp:?}");
    assert!(ask_names6(&fleet, 20).iter().all(|n| n == "host1"));

    daemons[0].ctl_ok(&["node", "resume"]);
    fleet.await_next_hops6(&[0, 1]);
    // Host 1's backend dies (both its servers): both its VIPs go.
    fleet.hosts[1].stop_backend();
    fleet.await_next_hops6(&[0]);
    fleet.await_next_hops(&fleet.fronts(&[0]));
    assert!(ask_names6(&fleet, 20).iter().all(|n| n == "host0"));
}

/// Does `act` under a prober and waits until the router's next hops are
/// the fronts of `remaining`; prints how long that took from the start of
/// `act` and what it cost new connections.
fn withdrawal(fleet: &Fleet, what: &str, remaining: &[usize], act: impl FnOnce()) -> Probed {
    let probe = Prober::start(fleet);
    let start = Instant::now();
    act();
    fleet.await_next_hops(&fleet.fronts(remaining));
    let took = start.elapsed();
    // Connections hashed to the withdrawn host just before the route
    // changed end within this; later ones all go to the others.
    thread::sleep(Duration::from_millis(500));
    let probed = probe.stop();
    println!(
        "{what}: withdrawn after {took:?}; {} connection(s) failed over a window of {:?}, {} succeeded ({:?})",
        probed.failed, probed.failure_window, probed.ok, probed.served
    );
    probed
}

/// Samples the router's table `n` times, 50 ms apart: every sample must
/// have exactly the hosts `indices` as next hops.
fn assert_next_hops_stay(fleet: &Fleet, indices: &[usize], n: usize, why: &str) {
    let want = fleet.fronts(indices);
    for _ in 0..n {
        let hops = fleet.next_hops();
        assert_eq!(hops, want, "{why}:\n{}", fleet.describe());
        thread::sleep(Duration::from_millis(50));
    }
}

fn bgp_status(daemon: &Daemon) -> BgpStatus {
    let reply: Reply = serde_json::from_str(&daemon.ctl_ok(&["--json", "status"])).expect("status JSON");
    reply.bgp.expect("status shows [bgp]")
}

#[test]
fn the_router_spreads_the_vip_over_healthy_hosts_and_drops_a_drained_host_or_one_whose_backends_are_down() {
    let (fleet, daemons) = fleet_with_daemons();
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
    let probed = withdrawal(&fleet, "node drain of host 0", &[1], || {
        let reply = daemons[0].ctl_ok(&["node", "drain"]);
        assert!(reply.contains("node drained"), "{reply}");
    });
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
    withdrawal(&fleet, "host 1's backends down", &[0], || fleet.hosts[1].stop_backend());
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

    // kill -9, a pause, and a restart: the router must see host 0 the whole
    // time (BIRD holds the route; the pinned data plane keeps forwarding).
    let probe = Prober::start(&fleet);
    daemons[0].kill9();
    assert_next_hops_stay(&fleet, &[0, 1], 40, "the route went with the daemon");
    daemons[0].spawn();
    assert_next_hops_stay(&fleet, &[0, 1], 40, "the restart withdrew the route");
    let bgp = bgp_status(&daemons[0]);
    assert_eq!(bgp.announced, [*VIP.ip()], "{bgp:?}");
    let probed = probe.stop();
    println!("kill -9 and restart: host 0 in all 80 router samples; new connections meanwhile: {probed:?}");
    assert_eq!(probed.failed, 0, "{probed:?}");

    // A clean stop (SIGTERM) keeps the route too; teardown is for good.
    daemons[0].terminate();
    assert_next_hops_stay(&fleet, &[0, 1], 1, "SIGTERM withdrew the route");
    // Measured while teardown runs: it withdraws at once and detaches 2 s
    // later.
    let mut teardown = None;
    withdrawal(&fleet, "teardown of host 0", &[1], || {
        teardown = Some(daemons[0].start_teardown());
    });
    let said = finish_teardown(teardown.expect("teardown started"));
    assert!(said.contains("withdrew every VIP from BIRD (Reconfigured)"), "{said}");
    assert!(!daemons[0].pins_exist());
    assert!(fleet.ask_names(20).iter().all(|n| n == "host1"));
}

#[test]
fn a_failed_birdc_configure_is_shown_and_retried_and_bird_restarts_from_the_include_file() {
    let (fleet, daemons) = fleet_with_daemons();

    // BIRD restarted under a running daemon: it announces again from the
    // include file alone.
    fleet.hosts[1].bird.kill();
    fleet.await_next_hops(&fleet.fronts(&[0]));
    fleet.hosts[1].bird.spawn();
    let took = fleet.await_next_hops(&fleet.fronts(&[0, 1]));
    println!("host 1's BIRD restarted: announced again from the include file after {took:?}");

    // BIRD down while the daemon must withdraw: the drain is saved and the
    // file written, birdc fails, status says so, and the daemon retries.
    fleet.hosts[1].bird.kill();
    fleet.await_next_hops(&fleet.fronts(&[0]));
    let reply = daemons[1].ctl_ok(&["node", "drain"]);
    assert!(reply.contains("but BIRD has not taken it yet (retrying)"), "{reply}");
    let bgp = bgp_status(&daemons[1]);
    assert!(!bgp.last_configure_ok && bgp.node_drained, "{bgp:?}");
    let error = bgp.last_configure.unwrap_or_default();
    assert!(error.contains("Unable to connect to server control socket"), "{error}");
    let table = daemons[1].ctl_ok(&["status"]);
    assert!(table.contains("birdc configure FAILED (retrying)"), "{table}");
    // Back up: it reads the (empty) file, announces nothing, and the
    // daemon's next retry succeeds.
    fleet.hosts[1].bird.spawn();
    let deadline = Instant::now() + CONVERGENCE;
    while !bgp_status(&daemons[1]).last_configure_ok {
        assert!(
            Instant::now() < deadline,
            "the daemon never retried:\n{}",
            daemons[1].log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_next_hops_stay(&fleet, &[0], 20, "host 1 announced while drained");
    assert!(fleet.ask_names(20).iter().all(|n| n == "host0"));
}
