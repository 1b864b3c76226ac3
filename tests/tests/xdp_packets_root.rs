//! Packet tests (root): the real compiled XDP program runs through
//! BPF_PROG_TEST_RUN on crafted frames; verdicts, output bytes, checksums and
//! map state are checked. Each test runs in its own network namespace with a
//! veth and static neighbours, so `bpf_fib_lookup` resolves next hops
//! deterministically.

use std::net::{Ipv4Addr, SocketAddrV4};

use aya::programs::{TestRun, TestRunOptions};
use bg_lb::{
    dataplane::{
        Dataplane, DataplaneOptions,
        lookup_table::{self, TableBackend},
        services::{BackendSpec, ServiceSpec},
    },
    ratio::{Pool, Ratio},
};
use bg_lb_common::{
    counters::Counter,
    flow_hash::flow_hash,
    flow_state,
    maps::{DEFAULT_LUT_SIZE, DataplaneConfig, FlowKey},
};
use bg_lb_tests::{
    cmd::{ifindex, ip, run},
    netns::in_fresh_netns,
    packets::{ACK, ACK_NUMBER, FIN_ACK, PSH_ACK, RST, SEQ, SYN, SYN_ACK, parse_checked, tcp_frame},
    require_root,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const CLIENT_GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const SNAT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 80);
const BLUE: [SocketAddrV4; 2] = [
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 10), 8080),
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 11), 8080),
];
const GREEN: [SocketAddrV4; 2] = [
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 20), 8080),
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 21), 8080),
];
const SNAT_PORTS: (u16, u16) = (20000, 29999);

/// Static neighbours get MAC 02:00:00:00:00:<last octet>, so tests can
/// predict the next hop's MAC.
fn mac_of(addr: Ipv4Addr) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, addr.octets()[3]]
}

fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 5), port)
}

struct Lb {
    services: Dataplane,
    spec: ServiceSpec,
}

impl Lb {
    /// A namespace with veth0 (the LB's interface, 10.0.0.1/24), backends and
    /// the clients' gateway as permanent neighbours, and the program loaded
    /// with one service at `ratio`.
    fn new(ratio: u32) -> Self {
        Self::with_snat_ports(ratio, SNAT_PORTS)
    }

    fn with_snat_ports(ratio: u32, ports: (u16, u16)) -> Self {
        ip("link set lo up");
        ip("link add veth0 address 02:00:00:00:00:01 type veth peer name veth1");
        ip("link set veth0 up");
        ip("link set veth1 up");
        ip("addr add 10.0.0.1/24 dev veth0");
        ip("route add 192.168.1.0/24 via 10.0.0.254");
        for addr in BLUE
            .iter()
            .chain(&GREEN)
            .map(|b| *b.ip())
            .chain([Ipv4Addr::new(10, 0, 0, 254)])
        {
            let mac = mac_of(addr).map(|b| format!("{b:02x}")).join(":");
            ip(&format!("neigh add {addr} lladdr {mac} dev veth0 nud permanent"));
        }
        // bpf_fib_lookup forwards only where forwarding is on; test runs
        // arrive on lo.
        run(
            "sysctl",
            &["-qw", "net.ipv4.conf.all.forwarding=1", "net.ipv4.conf.lo.forwarding=1"],
        );

        let opts = DataplaneOptions {
            max_flows: 4096,
            lookup_capacity: 2 * DEFAULT_LUT_SIZE,
            pin_dir: None,
        };
        let mut services = Dataplane::load(&opts).expect("load the XDP program");
        services.add_tx_port(ifindex("veth0")).expect("TX_PORTS");
        services
            .set_config(&DataplaneConfig::new(SNAT, ports.0..=ports.1))
            .expect("CONFIG");
        let backends = BLUE
            .iter()
            .map(|&addr| BackendSpec {
                addr,
                pool: Pool::Blue,
                weight: 100,
                reset_flows: false,
            })
            .chain(GREEN.iter().map(|&addr| BackendSpec {
                addr,
                pool: Pool::Green,
                weight: 100,
                reset_flows: false,
            }))
            .collect();
        let spec = ServiceSpec {
            vip: VIP,
            lut_size: DEFAULT_LUT_SIZE,
            ratio: Ratio::new(ratio).unwrap(),
            backends,
        };
        services.apply(&spec).expect("program the service");
        Lb { services, spec }
    }

    fn set_ratio(&mut self, blue: u32) {
        self.spec.ratio = Ratio::new(blue).unwrap();
        self.services.apply(&self.spec).expect("swap the table");
    }

    /// Runs the program once on `frame`: (verdict, output frame).
    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        let result = self
            .services
            .xdp()
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn send_from_client(&self, client: SocketAddrV4, flags: u8) -> (u32, Vec<u8>) {
        self.run(&tcp_frame(CLIENT_GW_MAC, LB_MAC, client, VIP, flags, b""))
    }

    /// The backend the lookup table picks for a new flow from `client`.
    fn table_pick(&self) -> impl Fn(SocketAddrV4) -> SocketAddrV4 + '_ {
        let backends: Vec<_> = self
            .spec
            .backends
            .iter()
            .map(|b| TableBackend {
                id: self.services.backend_id(&VIP, &b.addr).unwrap(),
                addr: b.addr,
                pool: b.pool,
                weight: b.weight,
            })
            .collect();
        let table = lookup_table::build(&backends, self.spec.ratio, DEFAULT_LUT_SIZE);
        move |client| {
            let id = table[(flow_hash(&flow_key(client)) % DEFAULT_LUT_SIZE) as usize];
            backends.iter().find(|b| b.id == id).unwrap().addr
        }
    }

    fn counter(&self, counter: Counter) -> u64 {
        let counters = self.services.counters().unwrap();
        counters.into_iter().find(|(c, _)| *c == counter).unwrap().1
    }

    fn flow(&self, client: SocketAddrV4) -> Option<bg_lb_common::maps::Flow> {
        let key = flow_key(client);
        self.services
            .flows()
            .unwrap()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, f)| f)
    }
}

fn flow_key(client: SocketAddrV4) -> FlowKey {
    FlowKey::from_client(client, VIP)
}

fn in_lb(ratio: u32, test: impl FnOnce(Lb) + Send + 'static) {
    require_root();
    in_fresh_netns(move || test(Lb::new(ratio)));
}

fn pool_of(backend: SocketAddrV4) -> Pool {
    if BLUE.contains(&backend) {
        Pool::Blue
    } else {
        Pool::Green
    }
}

#[test]
fn syn_to_vip_is_full_nated_to_the_table_backend_with_valid_checksums() {
    in_lb(50, |lb| {
        let c = client(40000);
        let (verdict, out) = lb.send_from_client(c, SYN);
        assert_eq!(verdict, XDP_REDIRECT);
        let view = parse_checked(&out);
        let backend = lb.table_pick()(c);
        assert_eq!(view.dst, backend);
        assert_eq!(*view.src.ip(), SNAT);
        assert!((SNAT_PORTS.0..=SNAT_PORTS.1).contains(&view.src.port()));
        assert_eq!(view.src_mac, LB_MAC);
        assert_eq!(view.dst_mac, mac_of(*backend.ip()));
        assert_eq!(view.ttl, 63);
        assert!(view.flags_syn);
        let flow = lb.flow(c).expect("SYN pins the flow");
        assert_eq!(u16::from_be(flow.snat_port), view.src.port());
        assert_eq!(flow.state, flow_state::SYN_SEEN);
    });
}

#[test]
fn payload_survives_nat_byte_for_byte() {
    in_lb(50, |lb| {
        let c = client(40001);
        lb.send_from_client(c, SYN);
        let frame = tcp_frame(CLIENT_GW_MAC, LB_MAC, c, VIP, PSH_ACK, b"GET / HTTP/1.1\r\n\r\n");
        let (verdict, out) = lb.run(&frame);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(parse_checked(&out).payload, b"GET / HTTP/1.1\r\n\r\n");
    });
}

#[test]
fn reply_from_backend_is_translated_back_to_vip_and_client() {
    in_lb(50, |lb| {
        let c = client(40002);
        let (_, out) = lb.send_from_client(c, SYN);
        let to_backend = parse_checked(&out);
        let reply = tcp_frame(
            mac_of(*to_backend.dst.ip()),
            LB_MAC,
            to_backend.dst,
            to_backend.src,
            SYN_ACK,
            b"",
        );
        let (verdict, out) = lb.run(&reply);
        assert_eq!(verdict, XDP_REDIRECT);
        let view = parse_checked(&out);
        assert_eq!(view.src, VIP);
        assert_eq!(view.dst, c);
        assert_eq!(view.src_mac, LB_MAC);
        assert_eq!(view.dst_mac, CLIENT_GW_MAC);
        assert_eq!(
            lb.flow(c).unwrap().state & flow_state::ESTABLISHED,
            flow_state::ESTABLISHED
        );
    });
}

#[test]
fn pinned_flows_keep_their_backend_after_a_ratio_flip_and_new_flows_follow_it() {
    in_lb(100, |mut lb| {
        let clients: Vec<_> = (0..200).map(|i| client(41000 + i)).collect();
        let first: Vec<_> = clients
            .iter()
            .map(|&c| parse_checked(&lb.send_from_client(c, SYN).1).dst)
            .collect();
        assert!(
            first.iter().all(|b| pool_of(*b) == Pool::Blue),
            "100:0 sends every new flow to blue"
        );

        lb.set_ratio(0);
        for (c, backend) in clients.iter().zip(&first) {
            let (verdict, out) = lb.send_from_client(*c, ACK);
            assert_eq!(verdict, XDP_REDIRECT);
            assert_eq!(
                parse_checked(&out).dst,
                *backend,
                "pinned flow moved after the table swap"
            );
        }
        for i in 0..200 {
            let backend = parse_checked(&lb.send_from_client(client(43000 + i), SYN).1).dst;
            assert_eq!(pool_of(backend), Pool::Green, "new flows follow the new ratio");
        }
    });
}

#[test]
fn new_flows_split_by_ratio() {
    in_lb(30, |lb| {
        let blue = (0..2000)
            .filter(|i| pool_of(parse_checked(&lb.send_from_client(client(30000 + i), SYN).1).dst) == Pool::Blue)
            .count();
        assert!((500..=700).contains(&blue), "30:70 sent {blue}/2000 new flows to blue");
    });
}

#[test]
fn syn_retransmission_keeps_backend_and_snat_port() {
    in_lb(50, |lb| {
        let c = client(40003);
        let first = parse_checked(&lb.send_from_client(c, SYN).1);
        let again = parse_checked(&lb.send_from_client(c, SYN).1);
        assert_eq!((first.src, first.dst), (again.src, again.dst));
    });
}

#[test]
fn syn_after_the_flow_ended_picks_again_and_frees_the_old_snat_port() {
    in_lb(100, |mut lb| {
        let c = client(40004);
        let first = parse_checked(&lb.send_from_client(c, SYN).1);
        lb.send_from_client(c, RST);
        assert!(flow_state::has_ended(lb.flow(c).unwrap().state));
        lb.set_ratio(0);
        let second = parse_checked(&lb.send_from_client(c, SYN).1);
        assert_eq!(pool_of(first.dst), Pool::Blue);
        assert_eq!(pool_of(second.dst), Pool::Green, "a reused 5-tuple is a new connection");
        let stale = tcp_frame(mac_of(*first.dst.ip()), LB_MAC, first.dst, first.src, ACK, b"");
        assert_eq!(lb.run(&stale).0, XDP_PASS, "the old reverse-NAT entry is gone");
    });
}

#[test]
fn backend_replies_count_handshakes_refusals_and_resets() {
    in_lb(100, |lb| {
        let reply = |to_backend: &bg_lb_tests::packets::TcpView, flags| {
            tcp_frame(
                mac_of(*to_backend.dst.ip()),
                LB_MAC,
                to_backend.dst,
                to_backend.src,
                flags,
                b"",
            )
        };
        let accepted = parse_checked(&lb.send_from_client(client(40020), SYN).1);
        lb.run(&reply(&accepted, SYN_ACK));
        lb.run(&reply(&accepted, SYN_ACK)); // a retransmission is not a second handshake
        lb.run(&reply(&accepted, RST));
        let refused = parse_checked(&lb.send_from_client(client(40021), SYN).1);
        lb.run(&reply(&refused, RST | ACK));
        let stats = |backend: SocketAddrV4| {
            let id = lb.services.backend_id(&VIP, &backend).unwrap();
            lb.services.backend_stats(id).unwrap()
        };
        let mut total = bg_lb_common::maps::TrafficStats::default();
        for b in BLUE {
            total.add(&stats(b));
        }
        assert_eq!(
            (total.new_flows, total.handshakes, total.resets, total.refused),
            (2, 1, 1, 1)
        );
    });
}

#[test]
fn fin_from_both_sides_ends_the_flow() {
    in_lb(50, |lb| {
        let c = client(40005);
        let to_backend = parse_checked(&lb.send_from_client(c, SYN).1);
        lb.send_from_client(c, FIN_ACK);
        assert!(!flow_state::has_ended(lb.flow(c).unwrap().state));
        lb.run(&tcp_frame(
            mac_of(*to_backend.dst.ip()),
            LB_MAC,
            to_backend.dst,
            to_backend.src,
            FIN_ACK,
            b"",
        ));
        assert!(flow_state::has_ended(lb.flow(c).unwrap().state));
    });
}

#[test]
fn mid_stream_packet_without_flow_is_forwarded_by_table_without_state() {
    in_lb(50, |lb| {
        let c = client(40006);
        let (verdict, out) = lb.send_from_client(c, ACK);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(parse_checked(&out).dst, lb.table_pick()(c));
        assert!(
            lb.flow(c).is_none(),
            "no state for a flow that did not start with a SYN"
        );
        assert_eq!(lb.counter(Counter::UnpinnedForwarded), 1);
    });
}

#[test]
fn snat_ports_are_never_shared_and_exhaustion_drops() {
    require_root();
    in_fresh_netns(|| {
        // Four ports, one backend: four flows fit, the fifth cannot.
        let mut lb = Lb::with_snat_ports(100, (40000, 40003));
        lb.spec.backends.retain(|b| b.addr == BLUE[0]);
        lb.services.apply(&lb.spec).unwrap();
        let ports: std::collections::HashSet<_> = (0..4)
            .map(|i| parse_checked(&lb.send_from_client(client(50000 + i), SYN).1).src.port())
            .collect();
        assert_eq!(ports.len(), 4, "each flow owns its SNAT port");
        assert_eq!(lb.send_from_client(client(50010), SYN).0, XDP_DROP);
        assert_eq!(lb.counter(Counter::SnatPortsExhausted), 1);
    });
}

#[test]
fn syn_that_no_backend_can_take_is_refused_at_once_with_a_rst_from_the_vip() {
    require_root();
    in_fresh_netns(|| {
        let mut lb = Lb::new(50);
        for b in &mut lb.spec.backends {
            b.weight = 0;
        }
        lb.services.apply(&lb.spec).unwrap();
        let c = client(40007);
        let (verdict, out) = lb.send_from_client(c, SYN);
        assert_eq!(verdict, XDP_TX, "answered on the interface it came in on");
        assert_eq!(out.len(), 54, "a bare RST: Ethernet + IPv4 + TCP headers");
        let rst = parse_checked(&out);
        assert_eq!((rst.src, rst.dst), (VIP, c));
        assert_eq!((rst.src_mac, rst.dst_mac), (LB_MAC, CLIENT_GW_MAC));
        assert!(rst.flags_rst && rst.flags_ack && !rst.flags_syn);
        assert_eq!((rst.seq, rst.ack), (0, SEQ + 1), "acknowledges the SYN (RFC 793)");
        assert_eq!(lb.counter(Counter::Refused), 1);
        assert!(lb.flow(c).is_none());

        let (verdict, _) = lb.send_from_client(client(40012), ACK);
        assert_eq!(
            verdict, XDP_DROP,
            "only connection requests are answered; stray segments are dropped"
        );
    });
}

#[test]
fn flows_of_a_backend_flagged_for_reset_get_a_rst_and_are_forgotten() {
    in_lb(100, |mut lb| {
        let c = client(40013);
        let backend = parse_checked(&lb.send_from_client(c, SYN).1).dst;
        let down = lb.spec.backends.iter_mut().find(|b| b.addr == backend).unwrap();
        down.weight = 0;
        down.reset_flows = true;
        lb.services.apply(&lb.spec).unwrap();

        let (verdict, out) = lb.send_from_client(c, PSH_ACK);
        assert_eq!(verdict, XDP_TX);
        let rst = parse_checked(&out);
        assert_eq!((rst.src, rst.dst), (VIP, c));
        assert!(rst.flags_rst && !rst.flags_ack);
        assert_eq!(
            rst.seq, ACK_NUMBER,
            "a RST to a segment with ACK carries its ack as seq"
        );
        assert!(lb.flow(c).is_none(), "the reset flow is removed");
        assert_eq!(lb.counter(Counter::FlowReset), 1);
        let other = parse_checked(&lb.send_from_client(client(40014), SYN).1).dst;
        assert_ne!(other, backend, "new flows avoid the down backend");
    });
}

#[test]
fn unresolved_next_hop_drops_and_counts() {
    in_lb(100, |lb| {
        for b in BLUE {
            ip(&format!("neigh del {} dev veth0", b.ip()));
        }
        assert_eq!(lb.send_from_client(client(40008), SYN).0, XDP_DROP);
        assert_eq!(lb.counter(Counter::FibNoNeighbour), 1);
    });
}

/// Frames that are not ours to rewrite come back untouched with XDP_PASS.
#[test]
fn non_service_traffic_passes_unchanged() {
    in_lb(50, |lb| {
        let other_port = tcp_frame(
            CLIENT_GW_MAC,
            LB_MAC,
            client(40009),
            SocketAddrV4::new(*VIP.ip(), 22),
            SYN,
            b"",
        );
        let other_addr = tcp_frame(
            CLIENT_GW_MAC,
            LB_MAC,
            client(40009),
            SocketAddrV4::new(SNAT, 80),
            SYN,
            b"",
        );
        let mut udp = Vec::new();
        etherparse::PacketBuilder::ethernet2(CLIENT_GW_MAC, LB_MAC)
            .ipv4(client(1).ip().octets(), VIP.ip().octets(), 64)
            .udp(5353, 80)
            .write(&mut udp, b"x")
            .unwrap();
        let mut arp = vec![0xff; 6];
        arp.extend(CLIENT_GW_MAC);
        arp.extend([0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend(CLIENT_GW_MAC);
        arp.extend([192, 168, 1, 5, 0, 0, 0, 0, 0, 0, 10, 0, 0, 100]);
        let kernel_reply = tcp_frame(CLIENT_GW_MAC, LB_MAC, BLUE[0], SocketAddrV4::new(SNAT, 33000), ACK, b"");
        for (name, frame) in [
            ("other port", other_port),
            ("other address", other_addr),
            ("UDP", udp),
            ("ARP", arp),
            ("SNAT address outside the port range", kernel_reply),
        ] {
            let (verdict, out) = lb.run(&frame);
            assert_eq!((verdict, out), (XDP_PASS, frame), "{name}");
        }
        assert_eq!(lb.counter(Counter::Passed), 5);
    });
}

#[test]
fn malformed_vip_packets_pass_unchanged_and_are_counted() {
    in_lb(50, |lb| {
        let syn = tcp_frame(CLIENT_GW_MAC, LB_MAC, client(40010), VIP, SYN, b"");
        let truncated = syn[..syn.len() - 6].to_vec();
        let mut fragment = syn.clone();
        fragment[14 + 6] |= 0x20; // More Fragments
        let mut with_options = syn.clone();
        with_options[14] = 0x46; // IHL 6: one word of IP options claimed
        let mut lying_length = syn.clone();
        lying_length[14 + 2] = 0x05; // total length 0x05xx: beyond the frame
        for (name, frame, counter) in [
            ("truncated", truncated, Counter::Truncated),
            ("fragment", fragment, Counter::Fragmented),
            ("IP options", with_options, Counter::IpOptions),
            ("length beyond frame", lying_length, Counter::Truncated),
        ] {
            let before = lb.counter(counter);
            let (verdict, out) = lb.run(&frame);
            assert_eq!((verdict, &out), (XDP_PASS, &frame), "{name}");
            assert_eq!(lb.counter(counter), before + 1, "{name} counted");
        }
        assert!(lb.flow(client(40010)).is_none(), "no malformed packet created a flow");
    });
}

#[test]
fn nothing_is_rewritten_until_userspace_marks_the_config_ready() {
    in_lb(50, |mut lb| {
        lb.services.set_config(&DataplaneConfig::default()).unwrap();
        let frame = tcp_frame(CLIENT_GW_MAC, LB_MAC, client(40011), VIP, SYN, b"");
        assert_eq!(lb.run(&frame), (XDP_PASS, frame));
    });
}
