//! PMTU discovery through the load balancer (root): real TCP bulk transfers
//! between namespaces along a routed path with one 1280-byte link, in both
//! directions. Both ends' interfaces take 1500 bytes, so each side
//! advertises a full MSS and the sender must discover the narrow link.
//! Where that link lies beyond a router, the router's fragmentation-needed
//! quotes the packet the LB sent and reaches the sender only because the LB
//! translates it across the NAT; where it is the LB's own egress link, the
//! LB answers the sender itself. Either way the transfer completes and the
//! sender's PMTU cache holds the narrow link's MTU. A UDP client learns the
//! LB's narrow egress link the same way.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use aya::Ebpf;
use bg_lb_common::counters::Counter;
use bg_lb_tests::{
    packet_lab::AttachedLb,
    require_root,
    servers::{BulkServer, UdpNameServer, download, upload},
    topology::{NetNs, RoutedPath},
};

const NARROW: u32 = 1280;
const WIDE: u32 = 1500;
const BYTES: u64 = 4 << 20;
const VIP_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;

/// The path with a bulk server on its backend and the LB serving it on
/// VIP:80. Fields drop in order: the LB detaches before its namespaces go.
struct PmtuLab {
    lb: AttachedLb,
    _peer_xdp: [Ebpf; 2],
    _server: BulkServer,
    path: RoutedPath,
}

impl PmtuLab {
    fn new(client_side: &[u32], backend_side: &[u32]) -> Self {
        require_root();
        let path = RoutedPath::new(client_side, backend_side);
        let backend = SocketAddrV4::new(path.backend_addr, BACKEND_PORT);
        let server = BulkServer::start(path.backend(), backend);
        let peer_xdp = path.pass_lb_frames_to_peers();
        let vip = SocketAddrV4::new(path.vip, VIP_PORT);
        let lb = AttachedLb::start(path.lb(), &["left", "right"], path.snat, vip, vec![backend], 100);
        PmtuLab {
            lb,
            _peer_xdp: peer_xdp,
            _server: server,
            path,
        }
    }

    fn vip(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.path.vip, VIP_PORT)
    }

    /// Fails with where packets went if `result` is an error.
    fn expect<T>(&self, result: std::io::Result<T>, what: &str) -> T {
        result.unwrap_or_else(|e| panic!("{what} failed: {e}\n{}", self.lb.diagnostics()))
    }

    /// `sender`'s route cache holds the narrow MTU towards `peer`, and the
    /// LB counted `counter`: the way the sender learnt it.
    fn assert_learnt(&self, sender: &NetNs, peer: Ipv4Addr, counter: Counter) {
        let route = sender.ip(&format!("route get {peer}"));
        assert!(
            route.contains(&format!("mtu {NARROW}")),
            "the sender's PMTU cache towards {peer} holds {NARROW}: {route}\n{}",
            self.lb.diagnostics()
        );
        assert!(
            self.lb.counter(counter) > 0,
            "{counter:?} counts the errors that taught it\n{}",
            self.lb.diagnostics()
        );
    }

    fn upload(&self) {
        let done = upload(self.path.client(), self.vip(), BYTES);
        self.expect(done, "the upload");
    }

    fn download(&self) {
        let got = download(self.path.client(), self.vip(), BYTES);
        assert_eq!(self.expect(got, "the download"), BYTES, "every byte arrives");
    }
}

#[test]
fn upload_through_a_narrow_link_past_a_backend_side_router_learns_its_mtu_from_the_translated_error() {
    let lab = PmtuLab::new(&[WIDE], &[WIDE, NARROW, WIDE]);
    lab.upload();
    lab.assert_learnt(lab.path.client(), lab.path.vip, Counter::IcmpErrorToClient);
}

#[test]
fn download_through_a_narrow_link_past_a_client_side_router_learns_its_mtu_from_the_translated_error() {
    let lab = PmtuLab::new(&[WIDE, NARROW, WIDE], &[WIDE]);
    lab.download();
    lab.assert_learnt(lab.path.backend(), lab.path.snat, Counter::IcmpErrorToBackend);
}

#[test]
fn upload_through_a_narrow_lb_egress_link_learns_its_mtu_from_the_lb() {
    let lab = PmtuLab::new(&[WIDE], &[NARROW, WIDE]);
    lab.upload();
    lab.assert_learnt(lab.path.client(), lab.path.vip, Counter::TooBigAnswered);
}

#[test]
fn download_through_a_narrow_lb_egress_link_learns_its_mtu_from_the_lb() {
    let lab = PmtuLab::new(&[WIDE, NARROW], &[WIDE]);
    lab.download();
    lab.assert_learnt(lab.path.backend(), lab.path.snat, Counter::TooBigAnswered);
}

#[test]
fn udp_datagram_too_big_for_the_lbs_narrow_egress_link_teaches_the_client_its_mtu() {
    let mut lab = PmtuLab::new(&[WIDE], &[NARROW, WIDE]);
    lab.lb.add_udp_service();
    let backend = SocketAddrV4::new(lab.path.backend_addr, BACKEND_PORT);
    let _server = UdpNameServer::start(lab.path.backend(), backend, "b0".to_owned());
    let vip = lab.vip();
    let (answer, big) = lab.path.client().run(move || {
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).expect("UDP socket");
        socket.connect(vip).expect("connect to the VIP");
        socket.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let mut buf = [0u8; 64];
        // A small request goes through: the flow is pinned.
        let answer = socket
            .send(b"who")
            .and_then(|_| socket.recv(&mut buf))
            .map(|len| String::from_utf8_lossy(&buf[..len]).into_owned());
        // Sent with DF (Linux's default for UDP): too big for the LB's
        // egress link, answered with fragmentation needed.
        let big = socket.send(&[b'x'; 1400]);
        (answer, big)
    });
    assert_eq!(lab.expect(answer, "the small request"), "b0");
    lab.expect(big, "sending the oversized datagram");
    // The error arrives asynchronously; the limit only keeps a lost one
    // from hanging the test.
    let until = Instant::now() + Duration::from_secs(10);
    while !lab
        .path
        .client()
        .ip(&format!("route get {}", lab.path.vip))
        .contains(&format!("mtu {NARROW}"))
        && Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    lab.assert_learnt(lab.path.client(), lab.path.vip, Counter::TooBigAnswered);
}
