//! End-to-end smoke test (root): real TCP clients and servers in network
//! namespaces, through the XDP program attached in native mode.

use std::net::{SocketAddrV4, TcpStream};

use aya::programs::XdpMode;
use bg_lb::{
    dataplane::{Dataplane, DataplaneOptions},
    ratio::{Pool, Ratio},
    services::{BackendSpec, ServiceSpec, Services},
};
use bg_lb_common::maps::{DEFAULT_LUT_SIZE, DataplaneConfig};
use bg_lb_tests::{
    cmd::ifindex,
    require_root,
    servers::{NameClient, NameServer},
    topology::{LB_ADDR, OneArm},
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

fn spec(topo: &OneArm, blue: u32) -> ServiceSpec {
    let backends = topo
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| BackendSpec {
            addr: SocketAddrV4::new(b.addr, BACKEND_PORT),
            pool: if i < 2 { Pool::Blue } else { Pool::Green },
            weight: 100,
        })
        .collect();
    ServiceSpec {
        vip: SocketAddrV4::new(topo.vip, VIP_PORT),
        lut_size: DEFAULT_LUT_SIZE,
        ratio: Ratio::new(blue).unwrap(),
        backends,
    }
}

/// Loads and attaches the LB in its namespace and programs the service.
fn start_lb(topo: &OneArm, blue: u32) -> Services {
    topo.lb.ns.sysctl("net.ipv4.conf.all.forwarding=1");
    let spec = spec(topo, blue);
    topo.lb.ns.run(move || {
        let opts = DataplaneOptions::default();
        let mut dataplane = Dataplane::load(&opts).expect("load");
        dataplane
            .attach(ifindex("eth0"), XdpMode::Driver)
            .expect("attach XDP in native mode");
        dataplane
            .set_config(&DataplaneConfig {
                snat_addr: u32::from_ne_bytes(LB_ADDR.octets()),
                snat_port_min: 20000,
                snat_port_max: 29999,
                ready: 1,
                _pad: 0,
            })
            .unwrap();
        // The fast path needs backends' MACs; a connect resolves them (the
        // daemon's health checks do the same).
        for b in &spec.backends {
            TcpStream::connect(b.addr).unwrap_or_else(|e| panic!("warm up {}: {e}", b.addr));
        }
        let mut services = Services::new(dataplane, opts.lookup_capacity);
        services.apply(&spec).expect("program the service");
        services
    })
}

/// Opens `n` connections to the VIP, asks each who served it, closes it.
/// A failure reports the data plane's counters, which say where packets went.
fn serve_names(topo: &OneArm, services: &Services, n: usize) -> Vec<String> {
    let vip = SocketAddrV4::new(topo.vip, VIP_PORT);
    let names: std::io::Result<Vec<String>> = topo.client.ns.run(move || {
        (0..n)
            .map(|_| NameClient::connect(vip).and_then(|mut c| c.ask()))
            .collect()
    });
    names.unwrap_or_else(|e| {
        let dp = services.dataplane();
        panic!(
            "connection through the VIP failed: {e}\nservice stats: {:?}\nflows: {:?}\ncounters: {:?}",
            dp.service_stats(0),
            dp.flows().map(|f| f.len()),
            dp.counters()
        )
    })
}

#[test]
fn real_tcp_connections_follow_the_ratio_and_an_open_connection_survives_a_flip() {
    require_root();
    let topo = OneArm::new(4);
    let _servers: Vec<_> = topo
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| NameServer::start(&b.ns, SocketAddrV4::new(b.addr, BACKEND_PORT), format!("b{i}")))
        .collect();
    let _peer_xdp = topo.pass_lb_frames_to_switch();
    let mut services = start_lb(&topo, 100);

    let names = serve_names(&topo, &services, 50);
    assert!(
        names.iter().all(|n| pool_of(n) == Pool::Blue),
        "100:0 must serve only from blue: {names:?}"
    );

    let vip = SocketAddrV4::new(topo.vip, VIP_PORT);
    let mut long_lived = topo
        .client
        .ns
        .run(move || NameClient::connect(vip).expect("long-lived connection"));
    let original = long_lived.ask().unwrap();

    services.apply(&spec(&topo, 0)).expect("flip to green");
    let names = serve_names(&topo, &services, 50);
    assert!(
        names.iter().all(|n| pool_of(n) == Pool::Green),
        "0:100 must serve only from green: {names:?}"
    );
    for _ in 0..20 {
        assert_eq!(long_lived.ask().expect("open connection keeps working"), original);
    }

    services.apply(&spec(&topo, 50)).expect("50:50");
    let names = serve_names(&topo, &services, 300);
    let blue = names.iter().filter(|n| pool_of(n) == Pool::Blue).count();
    assert!((115..=185).contains(&blue), "50:50 sent {blue}/300 connections to blue");
    for b in ["b0", "b1", "b2", "b3"] {
        assert!(names.iter().any(|n| n == b), "backend {b} got no connection");
    }
    assert_eq!(long_lived.ask().unwrap(), original);
}
