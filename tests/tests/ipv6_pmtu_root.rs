//! IPv6 path MTU discovery through the LB's own narrow egress link (root):
//! `bg-lb run` with a full-NAT IPv6 TCP service on the dual-stack one-arm
//! segment, every interface at 1,500 bytes, and the LB's route towards the
//! backend (or the client) locked to 1,280, which `bpf_fib_lookup` checks
//! packets against. A bulk transfer's full-sized segments are answered by
//! the LB with ICMPv6 Packet Too Big; the sender's stack takes it (its
//! checksum, addresses and quote right), lowers its path MTU and the
//! transfer completes.

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use aya::Ebpf;
use bg_lb::protocol::BackendHealth;
use bg_lb_tests::{
    daemon::Daemon,
    servers::{BulkServer, download, upload},
    topology::{CLIENT_ADDR6, Family, LB_ADDR6, NetNs, OneArm, VIP_ADDR6},
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");
const VIP: SocketAddr = SocketAddr::new(IpAddr::V6(VIP_ADDR6), 80);
const NARROW: u32 = 1280;
const BYTES: u64 = 4 << 20;

/// A bulk server on the one backend, served at [`VIP`]. Drops the daemon
/// first, then the server, then the topology.
struct Lab {
    daemon: Daemon,
    _server: BulkServer,
    _peer_xdp: Ebpf,
    topo: OneArm,
}

impl Lab {
    fn start() -> Lab {
        bg_lb_tests::require_root();
        let mut topo = OneArm::new(1);
        topo.add_ipv6();
        let backend = SocketAddr::new(topo.backends[0].addr_of(Family::Ipv6), 8080);
        let server = BulkServer::start(&topo.backends[0].ns, backend);
        let peer_xdp = topo.pass_lb_frames_to_switch();
        let daemon = Daemon::start(BG_LB, &topo.lb.ns, |paths| {
            format!(
                "interface = \"eth0\"\nxdp_mode = \"native\"\nsnat_addresses = [\"{LB_ADDR6}\"]\n{paths}\n\
                 [[service]]\nname = \"bulk\"\nvip = \"{VIP}\"\n\n[[service.backend]]\npool = \"blue\"\n\
                 address = \"{backend}\"\n"
            )
        });
        let lab = Lab {
            daemon,
            _server: server,
            _peer_xdp: peer_xdp,
            topo,
        };
        // The 30 s limit only keeps a broken check from hanging the test.
        let until = Instant::now() + Duration::from_secs(30);
        while !lab
            .daemon
            .status("bulk")
            .backends
            .iter()
            .all(|b| b.health == BackendHealth::Up)
        {
            assert!(
                Instant::now() < until,
                "the backend never came up\n{}",
                lab.daemon.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        lab
    }

    /// Locks the LB's route towards `to` (on the segment) to [`NARROW`].
    fn narrow_lb_route_to(&self, to: IpAddr) {
        self.topo
            .lb
            .ns
            .ip(&format!("-6 route add {to}/128 dev eth0 mtu lock {NARROW}"));
    }

    /// `sender`'s route cache holds the narrow MTU towards `peer`: the
    /// LB's Packet Too Big taught it.
    fn assert_learnt(&self, sender: &NetNs, peer: IpAddr) {
        let route = sender.ip(&format!("-6 route get {peer}"));
        assert!(
            route.contains(&format!("mtu {NARROW}")),
            "the sender's PMTU cache towards {peer} holds {NARROW}: {route}\n{}",
            self.daemon.log()
        );
    }
}

#[test]
fn an_ipv6_upload_through_the_lbs_narrow_link_to_the_backend_learns_its_mtu_from_the_lb() {
    let lab = Lab::start();
    lab.narrow_lb_route_to(lab.topo.backends[0].addr_of(Family::Ipv6));
    upload(&lab.topo.client.ns, VIP, BYTES).unwrap_or_else(|e| panic!("the upload: {e}\n{}", lab.daemon.log()));
    lab.assert_learnt(&lab.topo.client.ns, VIP.ip());
}

#[test]
fn an_ipv6_download_through_the_lbs_narrow_link_to_the_client_learns_its_mtu_from_the_lb() {
    let lab = Lab::start();
    lab.narrow_lb_route_to(CLIENT_ADDR6.into());
    let got =
        download(&lab.topo.client.ns, VIP, BYTES).unwrap_or_else(|e| panic!("the download: {e}\n{}", lab.daemon.log()));
    assert_eq!(got, BYTES, "every byte arrives");
    lab.assert_learnt(&lab.topo.backends[0].ns, LB_ADDR6.into());
}
