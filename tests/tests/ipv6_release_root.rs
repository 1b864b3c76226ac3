//! IPv6 end-to-end tests (root): the dual-stack labs (one-arm with bg-lb's
//! XDP program on the LB, two-arm, routed), and an IPv6 HTTP service (full
//! NAT: IPv6 VIP, backends and SNAT address) through the whole blue-green
//! release under load.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
};

use bg_lb::dataplane::forwarding::Forwarding;
use bg_lb_tests::{
    daemon::DemoBackend,
    http,
    lab::{BlueGreenLab, LabOptions},
    release::assert_release_under_load_fails_no_request,
    servers::{NameServer, UdpNameClient, UdpNameServer, ask_names, connect_from},
    topology::{Family, LB_ADDR6, NetNs, RoutedPath, TwoArm, VIP_ADDR6},
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");
/// The port of the test's own IPv6 servers, clear of the lab's.
const PORT: u16 = 9000;

/// The names `n` fresh TCP connections from `ns` to `to` are answered with.
fn names(ns: &NetNs, to: SocketAddr, n: usize) -> Vec<String> {
    ask_names(ns, to, n).unwrap_or_else(|e| panic!("{to} over IPv6: {e}"))
}

#[test]
fn dual_stack_lab_serves_over_ipv6_and_keeps_neighbour_discovery_through_bg_lbs_xdp() {
    // An IPv4 service: bg-lb's XDP program is on the LB's eth0 and the lab's
    // xdp_pass on the switch side of that link, as in every lab.
    let mut lab = BlueGreenLab::start(BG_LB, &LabOptions::default());
    lab.topo.add_ipv6();
    let backends: Vec<SocketAddr> = lab
        .topo
        .backends
        .iter()
        .map(|b| SocketAddr::new(b.addr_of(Family::Ipv6), PORT))
        .collect();
    let _tcp = NameServer::start_on_each_of(&lab.topo.backends, Family::Ipv6, PORT);
    let _udp = UdpNameServer::start_on_each_of(&lab.topo.backends, Family::Ipv6, PORT);
    let _lb_server = NameServer::start(&lab.topo.lb.ns, (Family::Ipv6.unspecified(), PORT), "lb".into());

    for (i, &backend) in backends.iter().enumerate() {
        assert_eq!(
            names(&lab.topo.client.ns, backend, 2),
            [format!("b{i}"), format!("b{i}")]
        );
        let udp = lab
            .topo
            .client
            .ns
            .run(move || UdpNameClient::connect(backend).and_then(|c| c.ask()));
        assert_eq!(udp.expect("UDP over IPv6"), format!("b{i}"));
        // The LB's own connections: the backend's neighbour advertisements
        // and replies arrive through bg-lb's program.
        assert_eq!(names(&lab.topo.lb.ns, backend, 1), [format!("b{i}")]);
    }
    // The client's solicitations for the LB's addresses, and its segments
    // to them, arrive through bg-lb's program too.
    for lb in [LB_ADDR6, VIP_ADDR6] {
        assert_eq!(
            names(&lab.topo.client.ns, SocketAddr::new(lb.into(), PORT), 2),
            ["lb", "lb"]
        );
    }

    // More client addresses (the demo's, over IPv6): a connection bound to
    // each reaches the LB, which routes the replies back through the
    // client's main address.
    let lb = SocketAddr::new(LB_ADDR6.into(), PORT);
    for source in lab.topo.add_clients(Family::Ipv6, 3, Forwarding::FullNat) {
        let seen = lab.topo.client.ns.run(move || -> std::io::Result<String> {
            let mut stream = connect_from(source, lb)?;
            stream.write_all(b"peer\n")?;
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line)?;
            Ok(line.trim().to_owned())
        });
        let seen: SocketAddr = seen
            .unwrap_or_else(|e| panic!("from {source}: {e}"))
            .parse()
            .expect("the peer's address");
        assert_eq!(seen.ip(), source, "the LB sees the bound client address");
    }

    // demo-backend serves HTTP on an IPv6 address as it is.
    let host = &lab.topo.backends[0];
    let addr = SocketAddr::new(host.addr_of(Family::Ipv6), PORT + 1);
    let _demo = DemoBackend::start(BG_LB, &host.ns, addr, "b0-v6", "v6");
    let response = lab
        .topo
        .client
        .ns
        .run(move || http::request(addr, "GET", "/"))
        .expect("GET / over IPv6");
    assert_eq!(
        (response.status, response.backend_name(), response.backend_version()),
        (200, "b0-v6".to_owned(), "v6".to_owned())
    );

    // The IPv4 service is unaffected by the second family.
    let served = lab.serve(lab.live_vip(), 20);
    assert_eq!(served.len(), 20);
}

#[test]
fn dual_stack_two_arm_and_routed_labs_connect_over_ipv6() {
    bg_lb_tests::require_root();
    let any = |port| SocketAddr::new(Family::Ipv6.unspecified(), port);

    // Two-arm: the client reaches the LB's front (the VIP), the backends
    // its back (the SNAT address).
    let mut two = TwoArm::new(2);
    two.add_ipv6();
    let _lb = NameServer::start(&two.lb, any(PORT), "lb".into());
    let (vip, snat) = (two.vip6.expect("an IPv6 VIP"), two.snat6.expect("an IPv6 SNAT address"));
    assert_eq!(names(&two.client.ns, SocketAddr::new(vip.into(), PORT), 1), ["lb"]);
    for backend in &two.backends {
        assert_eq!(names(&backend.ns, SocketAddr::new(snat.into(), PORT), 1), ["lb"]);
    }

    // Routed: the client reaches the backend through the routers and the LB
    // (IPv6 routes and forwarding as IPv4's), and the VIP on the LB.
    let mut path = RoutedPath::new(&[1500, 1400], &[1300]);
    path.add_ipv6();
    let v6 = path.ipv6.expect("the path's IPv6 plan");
    let _backend = NameServer::start(path.backend(), any(PORT), "backend".into());
    let _path_lb = NameServer::start(path.lb(), any(PORT), "lb".into());
    assert_eq!(
        names(path.client(), SocketAddr::new(v6.backend_addr.into(), PORT), 1),
        ["backend"]
    );
    assert_eq!(names(path.client(), SocketAddr::new(v6.vip.into(), PORT), 1), ["lb"]);
    assert_eq!(names(path.backend(), SocketAddr::new(v6.snat.into(), PORT), 1), ["lb"]);
}

#[test]
fn ipv6_full_release_under_load_fails_no_request() {
    let options = LabOptions {
        family: Family::Ipv6,
        ..LabOptions::default()
    };
    let mut lab = BlueGreenLab::start(BG_LB, &options);
    assert!(lab.live_vip().is_ipv6(), "the service runs over IPv6");
    assert_release_under_load_fails_no_request(&mut lab);
}
