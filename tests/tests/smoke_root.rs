//! End-to-end smoke tests (root): real TCP clients and servers in network
//! namespaces, through the XDP program attached in native mode, one-arm
//! (XDP_TX) and two-arm (XDP_REDIRECT between interfaces).

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};

use aya::programs::XdpMode;
use bg_lb::{
    dataplane::{
        Dataplane, DataplaneOptions,
        services::{BackendSpec, ServiceSpec},
    },
    ratio::{Pool, Ratio},
};
use bg_lb_common::maps::{DEFAULT_LUT_SIZE, DataplaneConfig};
use bg_lb_tests::{
    cmd::ifindex,
    require_root,
    servers::{NameClient, NameServer},
    topology::{Host, LB_ADDR, NetNs, OneArm, TwoArm},
};

const BACKEND_PORT: u16 = 8080;
const VIP_PORT: u16 = 80;

/// b0, b1 are blue; b2, b3 green.
fn pool_of(name: &str) -> Pool {
    if name == "b0" || name == "b1" {
        Pool::Blue
    } else {
        Pool::Green
    }
}

fn spec(vip: Ipv4Addr, backends: &[Host], blue: u32) -> ServiceSpec {
    let backends = backends
        .iter()
        .enumerate()
        .map(|(i, b)| BackendSpec {
            addr: SocketAddrV4::new(b.addr, BACKEND_PORT),
            pool: if i < 2 { Pool::Blue } else { Pool::Green },
            weight: 100,
            reset_flows: false,
        })
        .collect();
    ServiceSpec {
        vip: SocketAddrV4::new(vip, VIP_PORT),
        lut_size: DEFAULT_LUT_SIZE,
        ratio: Ratio::new(blue).unwrap(),
        backends,
    }
}

fn start_backends(backends: &[Host]) -> Vec<NameServer> {
    backends
        .iter()
        .enumerate()
        .map(|(i, b)| NameServer::start(&b.ns, SocketAddrV4::new(b.addr, BACKEND_PORT), format!("b{i}")))
        .collect()
}

/// Loads the LB in `ns`, attaches it natively to `interfaces`, and programs
/// the service.
fn start_lb(ns: &NetNs, interfaces: &'static [&'static str], snat: Ipv4Addr, spec: ServiceSpec) -> Dataplane {
    ns.sysctl("net.ipv4.conf.all.forwarding=1");
    ns.run(move || {
        let opts = DataplaneOptions::default();
        let mut dataplane = Dataplane::load(&opts).expect("load");
        for iface in interfaces {
            dataplane
                .attach(ifindex(iface), XdpMode::Driver)
                .expect("attach XDP in native mode");
        }
        dataplane
            .set_config(&DataplaneConfig::new(snat, 20000..=29999))
            .unwrap();
        // The fast path needs backends' MACs; a connect resolves them (the
        // daemon's health checks do the same).
        for b in &spec.backends {
            TcpStream::connect(b.addr).unwrap_or_else(|e| panic!("warm up {}: {e}", b.addr));
        }
        dataplane.apply(&spec).expect("program the service");
        dataplane
    })
}

/// Opens `n` connections to the VIP, asks each who served it, closes it.
/// A failure reports the data plane's counters, which say where packets went.
fn serve_names(client: &NetNs, vip: Ipv4Addr, services: &Dataplane, n: usize) -> Vec<String> {
    let vip = SocketAddrV4::new(vip, VIP_PORT);
    let names: std::io::Result<Vec<String>> = client.run(move || {
        (0..n)
            .map(|_| NameClient::connect(vip).and_then(|mut c| c.ask()))
            .collect()
    });
    names.unwrap_or_else(|e| {
        panic!(
            "connection through the VIP failed: {e}\nservice stats: {:?}\nflows: {:?}\ncounters: {:?}",
            services.service_stats(0),
            services.flows().map(|f| f.len()),
            services.counters()
        )
    })
}

#[test]
fn one_arm_connections_follow_the_ratio_and_an_open_connection_survives_a_flip() {
    require_root();
    let topo = OneArm::new(4);
    let _servers = start_backends(&topo.backends);
    let _peer_xdp = topo.pass_lb_frames_to_switch();
    let mut services = start_lb(&topo.lb.ns, &["eth0"], LB_ADDR, spec(topo.vip, &topo.backends, 100));
    let client = &topo.client.ns;

    let names = serve_names(client, topo.vip, &services, 50);
    assert!(
        names.iter().all(|n| pool_of(n) == Pool::Blue),
        "100:0 must serve only from blue: {names:?}"
    );

    let vip = SocketAddrV4::new(topo.vip, VIP_PORT);
    let mut long_lived = client.run(move || NameClient::connect(vip).expect("long-lived connection"));
    let original = long_lived.ask().unwrap();

    services
        .apply(&spec(topo.vip, &topo.backends, 0))
        .expect("flip to green");
    let names = serve_names(client, topo.vip, &services, 50);
    assert!(
        names.iter().all(|n| pool_of(n) == Pool::Green),
        "0:100 must serve only from green: {names:?}"
    );
    for _ in 0..20 {
        assert_eq!(long_lived.ask().expect("open connection keeps working"), original);
    }

    services.apply(&spec(topo.vip, &topo.backends, 50)).expect("50:50");
    let names = serve_names(client, topo.vip, &services, 300);
    let blue = names.iter().filter(|n| pool_of(n) == Pool::Blue).count();
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
    let _servers = start_backends(&topo.backends);
    let _peer_xdp = topo.pass_lb_frames_to_peers();
    let mut services = start_lb(
        &topo.lb,
        &["front", "back"],
        topo.snat,
        spec(topo.vip, &topo.backends, 100),
    );

    let names = serve_names(&topo.client.ns, topo.vip, &services, 50);
    assert!(names.iter().all(|n| pool_of(n) == Pool::Blue), "{names:?}");
    services
        .apply(&spec(topo.vip, &topo.backends, 0))
        .expect("flip to green");
    let names = serve_names(&topo.client.ns, topo.vip, &services, 50);
    assert!(names.iter().all(|n| pool_of(n) == Pool::Green), "{names:?}");
}
