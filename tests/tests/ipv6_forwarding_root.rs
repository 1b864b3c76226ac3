//! IPv6 forwarding-mode end-to-end tests (root): `bg-lb run` with an IPv6
//! `gateway` or `dsr` TCP service and UDP service on the dual-stack one-arm
//! segment, backends set up as the README's "Forwarding modes" says
//! ([`bg_lb_tests::topology::Host::serve_for`]), real clients. Each backend
//! reports the peer address it sees: the client's own IPv6 address and
//! port, in both modes; the client's sockets, connected to the VIP, take
//! answers from VIP:port only.

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use aya::Ebpf;
use bg_lb::{dataplane::forwarding::Forwarding, protocol::BackendHealth};
use bg_lb_tests::{
    daemon::Daemon,
    servers::{NameClient, NameServer, UdpNameClient, UdpNameServer},
    topology::{CLIENT_ADDR6, Family, LB_ADDR6, OneArm, VIP_ADDR6},
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");
/// Both services' VIP: TCP and UDP at [`VIP_ADDR6`]:80.
const VIP: SocketAddr = SocketAddr::new(IpAddr::V6(VIP_ADDR6), 80);

/// Two backends serving a TCP service `web` and a UDP service `dns` at
/// [`VIP`], and the daemon. Drops the daemon first, then the servers, then
/// the topology.
struct Lab {
    daemon: Daemon,
    _tcp: Vec<NameServer>,
    _udp: Vec<UdpNameServer>,
    _peer_xdp: Ebpf,
    topo: OneArm,
}

/// Starts the lab forwarding by `forwarding` and waits until every backend
/// of both services is up. Under `dsr` the backends hold the VIP on their
/// loopback and listen on its port: TCP on every address, UDP on the VIP
/// (so that they answer from it), checked by a TCP check of the TCP
/// servers; under `gateway` both listen on the backend's address, 8080,
/// and UDP is checked over UDP.
fn start(forwarding: Forwarding) -> Lab {
    bg_lb_tests::require_root();
    let mut topo = OneArm::new(2);
    topo.add_ipv6();
    let dsr = forwarding == Forwarding::Dsr;
    let port = if dsr { 80 } else { 8080 };
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    let mut backends = String::new();
    for (i, host) in topo.backends.iter().enumerate() {
        host.serve_for(forwarding, LB_ADDR6.into(), CLIENT_ADDR6.into(), &[VIP_ADDR6.into()]);
        let addr = SocketAddr::new(host.addr_of(Family::Ipv6), port);
        let (tcp_at, udp_at) = if dsr {
            (SocketAddr::new(Family::Ipv6.unspecified(), port), VIP)
        } else {
            (addr, addr)
        };
        tcp.push(NameServer::start(&host.ns, tcp_at, format!("b{i}")));
        udp.push(UdpNameServer::start(&host.ns, udp_at, format!("b{i}")));
        backends += &format!("\n[[service.backend]]\npool = \"blue\"\naddress = \"{addr}\"\n");
    }
    let udp_health = if dsr {
        "type = \"tcp\"\nport = 80\n"
    } else {
        "type = \"udp\"\nrequest = \"health\"\nexpect = \"b\"\n"
    };
    let peer_xdp = topo.pass_lb_frames_to_switch();
    let daemon = Daemon::start(BG_LB, &topo.lb.ns, |paths| {
        format!(
            "interface = \"eth0\"\nxdp_mode = \"native\"\nsnat_addresses = [\"{LB_ADDR6}\"]\nmax_flows = 65536\n\
             lookup_capacity = 524296\n{paths}\n[[service]]\nname = \"web\"\nvip = \"{VIP}\"\n\
             forwarding = \"{forwarding}\"\n{backends}\n[[service]]\nname = \"dns\"\nvip = \"{VIP}\"\n\
             protocol = \"udp\"\nforwarding = \"{forwarding}\"\n\n[service.health]\n{udp_health}\
             interval = \"300ms\"\nfast_interval = \"100ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 3\n{backends}"
        )
    });
    let lab = Lab {
        daemon,
        _tcp: tcp,
        _udp: udp,
        _peer_xdp: peer_xdp,
        topo,
    };
    // The 30 s limit only keeps a broken check from hanging the test.
    let until = Instant::now() + Duration::from_secs(30);
    for service in ["web", "dns"] {
        loop {
            let status = lab.daemon.status(service);
            assert_eq!(status.forwarding, forwarding, "ctl status shows the mode");
            if status.backends.iter().all(|b| b.health == BackendHealth::Up) {
                break;
            }
            assert!(
                Instant::now() < until,
                "{service}'s backends never came up: {status:#?}\n{}",
                lab.daemon.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
    lab
}

/// Asks over fresh TCP connections and UDP flows through [`VIP`]: every
/// backend sees the client's own address and port, answers reach the
/// client's sockets (connected to VIP:port), and each flow keeps its
/// backend. Returns the names that answered.
fn assert_backends_see_the_client(lab: &Lab) -> Vec<String> {
    let log = || lab.daemon.log();
    let mut names = Vec::new();
    for _ in 0..6 {
        let (seen, local, name, again) = lab
            .topo
            .client
            .ns
            .run(|| -> std::io::Result<_> {
                let mut c = NameClient::connect(VIP)?;
                Ok((c.peer_seen()?, c.local_socket(), c.ask()?, c.ask()?))
            })
            .unwrap_or_else(|e| panic!("TCP through the IPv6 VIP: {e}\n{}", log()));
        assert_eq!(local.ip(), IpAddr::V6(CLIENT_ADDR6));
        assert_eq!(seen, local.to_string(), "the TCP backend sees the client");
        assert_eq!(again, name, "the connection keeps its backend");
        names.push(name);

        let (seen, local, name, again) = lab
            .topo
            .client
            .ns
            .run(|| -> std::io::Result<_> {
                let c = UdpNameClient::connect(VIP)?;
                Ok((c.peer_seen()?, c.local_socket(), c.ask()?, c.ask()?))
            })
            .unwrap_or_else(|e| panic!("UDP through the IPv6 VIP: {e}\n{}", log()));
        assert_eq!(seen, local.to_string(), "the UDP backend sees the client");
        assert_eq!(again, name, "the flow keeps its backend");
        names.push(name);
    }
    names
}

#[test]
fn ipv6_gateway_backends_see_the_client_over_tcp_and_udp_and_their_replies_leave_from_the_vip() {
    let lab = start(Forwarding::Gateway);
    let names = assert_backends_see_the_client(&lab);
    assert!(names.iter().all(|n| n == "b0" || n == "b1"), "{names:?}");
    // The replies crossed the LB: counted, as full NAT's are.
    let web = lab.daemon.status("web");
    assert!(web.backends.iter().map(|b| b.bytes_out).sum::<u64>() > 0, "{web:#?}");
    assert!(
        lab.daemon.log().contains("IPv6 redirects"),
        "the daemon names what an IPv6 gateway service's backends must do about redirects\n{}",
        lab.daemon.log()
    );
}

#[test]
fn ipv6_dsr_backends_see_the_client_answer_it_directly_and_leave_the_vips_neighbour_discovery_to_the_lb() {
    let lab = start(Forwarding::Dsr);
    // The client asks for the VIP's MAC afresh: only the LB may answer,
    // though every backend holds the VIP (on its loopback).
    lab.topo.client.ns.ip("-6 neigh flush dev eth0");
    let names = assert_backends_see_the_client(&lab);
    assert!(names.iter().all(|n| n == "b0" || n == "b1"), "{names:?}");
    let neighbour = lab.topo.client.ns.ip(&format!("-6 neigh show {VIP_ADDR6} dev eth0"));
    let lb_mac = lab.topo.lb.ns.mac("eth0");
    assert!(
        neighbour.contains(&lb_mac),
        "the VIP's neighbour entry is the LB's ({lb_mac}): {neighbour}"
    );
    for backend in &lab.topo.backends {
        let mac = backend.ns.mac("eth0");
        assert!(!neighbour.contains(&mac), "a backend answered for the VIP: {neighbour}");
    }
    // The replies went straight to the client: the LB saw none.
    for service in ["web", "dns"] {
        let status = lab.daemon.status(service);
        assert!(status.backends.iter().all(|b| b.bytes_out == 0), "{status:#?}");
        assert!(
            status.backends.iter().map(|b| b.bytes_in).sum::<u64>() > 0,
            "{status:#?}"
        );
    }
}
