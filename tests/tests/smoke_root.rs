//! End-to-end smoke tests (root): real TCP clients and servers in network
//! namespaces, through the XDP program attached in native mode, one-arm
//! (XDP_TX) and two-arm (XDP_REDIRECT between interfaces).

use std::net::{Ipv4Addr, SocketAddrV4};

use bg_lb::ratio::Pool;
use bg_lb_tests::{
    lab::pool_of_name,
    packet_lab::AttachedLb,
    require_root,
    servers::{NameClient, NameServer},
    topology::{Host, LB_ADDR, NetNs, OneArm, TwoArm},
};

const BACKEND_PORT: u16 = 8080;
const VIP_PORT: u16 = 80;

/// The LB in `ns` on `interfaces`, serving VIP:80 over `backends` (b0, b1
/// blue; b2, b3 green) at `blue_percent`.
fn start_lb(
    ns: &NetNs,
    interfaces: &'static [&'static str],
    snat: Ipv4Addr,
    vip: Ipv4Addr,
    backends: &[Host],
    blue_percent: u32,
) -> AttachedLb {
    let backends = backends
        .iter()
        .map(|b| SocketAddrV4::new(b.addr, BACKEND_PORT))
        .collect();
    AttachedLb::start(
        ns,
        interfaces,
        snat,
        SocketAddrV4::new(vip, VIP_PORT),
        backends,
        blue_percent,
    )
}

/// Opens `n` connections to the VIP, asks each who served it, closes it.
/// A failure reports the data plane's counters, which say where packets went.
fn serve_names(client: &NetNs, vip: Ipv4Addr, lb: &AttachedLb, n: usize) -> Vec<String> {
    let vip = SocketAddrV4::new(vip, VIP_PORT);
    let names: std::io::Result<Vec<String>> = client.run(move || {
        (0..n)
            .map(|_| NameClient::connect(vip).and_then(|mut c| c.ask()))
            .collect()
    });
    names.unwrap_or_else(|e| panic!("connection through the VIP failed: {e}\n{}", lb.diagnostics()))
}

#[test]
fn one_arm_connections_follow_the_ratio_and_an_open_connection_survives_a_flip() {
    require_root();
    let topo = OneArm::new(4);
    let _servers = NameServer::start_on_each(&topo.backends, BACKEND_PORT);
    let _peer_xdp = topo.pass_lb_frames_to_switch();
    let mut lb = start_lb(&topo.lb.ns, &["eth0"], LB_ADDR, topo.vip, &topo.backends, 100);
    let client = &topo.client.ns;

    let names = serve_names(client, topo.vip, &lb, 50);
    assert!(
        names.iter().all(|n| pool_of_name(n) == Pool::Blue),
        "100:0 must serve only from blue: {names:?}"
    );

    let vip = SocketAddrV4::new(topo.vip, VIP_PORT);
    let mut long_lived = client.run(move || NameClient::connect(vip).expect("long-lived connection"));
    let original = long_lived.ask().unwrap();

    lb.set_ratio(0);
    let names = serve_names(client, topo.vip, &lb, 50);
    assert!(
        names.iter().all(|n| pool_of_name(n) == Pool::Green),
        "0:100 must serve only from green: {names:?}"
    );
    for _ in 0..20 {
        assert_eq!(long_lived.ask().expect("open connection keeps working"), original);
    }

    lb.set_ratio(50);
    let names = serve_names(client, topo.vip, &lb, 300);
    let blue = names.iter().filter(|n| pool_of_name(n) == Pool::Blue).count();
    assert!((115..=185).contains(&blue), "50:50 sent {blue}/300 connections to blue");
    for b in ["b0", "b1", "b2", "b3"] {
        assert!(names.iter().any(|n| n == b), "backend {b} got no connection");
    }
    assert_eq!(long_lived.ask().unwrap(), original);
}

#[test]
fn two_arm_connections_cross_front_to_back_by_redirect() {
    require_root();
    let topo = TwoArm::new(4);
    let _servers = NameServer::start_on_each(&topo.backends, BACKEND_PORT);
    let _peer_xdp = topo.pass_lb_frames_to_peers();
    let mut lb = start_lb(&topo.lb, &["front", "back"], topo.snat, topo.vip, &topo.backends, 100);

    let names = serve_names(&topo.client.ns, topo.vip, &lb, 50);
    assert!(names.iter().all(|n| pool_of_name(n) == Pool::Blue), "{names:?}");
    lb.set_ratio(0);
    let names = serve_names(&topo.client.ns, topo.vip, &lb, 50);
    assert!(names.iter().all(|n| pool_of_name(n) == Pool::Green), "{names:?}");
}
