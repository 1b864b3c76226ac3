//! Packet tests (root) of UDP over IPv4 services: the real XDP program
//! through BPF_PROG_TEST_RUN in the packet lab, each test in its own network
//! namespace. The lab's VIP carries its TCP service and a UDP service on the
//! same address and port. Output frames are compared byte for byte with
//! frames built from scratch, so the incremental checksums are checked
//! against full computations, a datagram without a checksum included; ICMP
//! errors about a UDP flow are translated, quote and all. UDP services in
//! the `gateway` and `dsr` forwarding modes are here too.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use bg_lb::dataplane::{FlowTimeouts, forwarding::Forwarding, services::ServiceSpec};
use bg_lb_common::{
    counters::Counter,
    maps::{FORWARDING_DSR, FORWARDING_GATEWAY, FlowKey, IPPROTO_TCP, IPPROTO_UDP},
};
use bg_lb_tests::{
    netns::in_fresh_netns,
    packet_lab::{
        BLUE, GATEWAY_MAC, GREEN, LB_MAC, PacketLab, PacketLabOptions, SNAT, VIP, XDP_DROP, XDP_PASS, XDP_REDIRECT,
        XDP_TX, client, is_blue, mac_of,
    },
    packets::{edit_ip_header, icmp_error_frame, parse_checked_icmp, quote_of, with_ttl},
    require_root,
    udp_frames::{parse_checked_udp, udp_checksum_field, udp_frame, udp_frame_without_checksum},
};
use etherparse::{
    Icmpv4Type,
    icmpv4::{DestUnreachableHeader, TimeExceededCode},
};

const UDP_IDLE: Duration = Duration::from_secs(30);

/// A lab whose VIP also has a UDP service, all new UDP flows to blue.
fn in_udp_lab(test: impl FnOnce(PacketLab) + Send + 'static) {
    in_udp_lab_forwarding(Forwarding::FullNat, |lab, _| test(lab));
}

/// [`in_udp_lab`] with both services forwarding by `forwarding`; the test
/// gets the UDP service's spec too.
fn in_udp_lab_forwarding(forwarding: Forwarding, test: impl FnOnce(PacketLab, ServiceSpec) + Send + 'static) {
    require_root();
    in_fresh_netns(move || {
        let mut lab = PacketLab::new(&PacketLabOptions {
            forwarding,
            ..PacketLabOptions::with_ratio(100)
        });
        let spec = lab.add_udp_service(100, UDP_IDLE);
        test(lab, spec)
    });
}

fn to_vip(from: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    udp_frame(GATEWAY_MAC, LB_MAC, from, VIP, payload)
}

fn udp_key(from: SocketAddrV4) -> FlowKey {
    FlowKey::with_proto(from, VIP, IPPROTO_UDP)
}

#[test]
fn udp_new_flow_is_pinned_and_full_natted_with_a_correct_checksum() {
    in_udp_lab(|lab| {
        let from = client(2000);
        let (verdict, out) = lab.run(&to_vip(from, b"query"));
        assert_eq!(verdict, XDP_REDIRECT);
        let view = parse_checked_udp(&out);
        assert!(BLUE.contains(&view.dst), "ratio 100:0 sends it to blue");
        assert_eq!(*view.src.ip(), SNAT);
        // The frame the backend must get, built and checksummed from scratch.
        let expected = with_ttl(
            &udp_frame(LB_MAC, mac_of(*view.dst.ip()), view.src, view.dst, b"query"),
            63,
        );
        assert_eq!(out, expected);
        let flow = lab.flow_at(&udp_key(from)).expect("the UDP flow is pinned");
        assert_eq!(
            lab.reverse_nat_on(view.dst, view.src),
            Some(udp_key(from)),
            "its reverse entry names the UDP flow: no TCP flow can claim the pair"
        );
        assert_eq!(flow.state, bg_lb_common::udp::UDP_FLOW_STATE);
        assert_eq!(lab.flow_at(&FlowKey::with_proto(from, VIP, IPPROTO_TCP)), None);
    });
}

#[test]
fn udp_established_flow_keeps_its_backend_and_pair_across_a_ratio_flip() {
    in_udp_lab(|mut lab| {
        let from = client(2001);
        let first = parse_checked_udp(&lab.run(&to_vip(from, b"one")).1);
        lab.add_udp_service(0, UDP_IDLE);
        let (verdict, out) = lab.run(&to_vip(from, b"two"));
        assert_eq!(verdict, XDP_REDIRECT);
        let second = parse_checked_udp(&out);
        assert_eq!(
            (second.src, second.dst),
            (first.src, first.dst),
            "pinned: same backend, same SNAT pair"
        );
        assert_eq!(second.payload, b"two");
        // A new client now goes green.
        let other = parse_checked_udp(&lab.run(&to_vip(client(2002), b"x")).1);
        assert!(!is_blue(other.dst), "the flip applies to new flows");
    });
}

#[test]
fn udp_reply_is_translated_back_to_the_client_from_the_vip() {
    in_udp_lab(|lab| {
        let from = client(2003);
        let sent = parse_checked_udp(&lab.run(&to_vip(from, b"query")).1);
        let reply = udp_frame(mac_of(*sent.dst.ip()), LB_MAC, sent.dst, sent.src, b"answer");
        let (verdict, out) = lab.run(&reply);
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = with_ttl(&udp_frame(LB_MAC, GATEWAY_MAC, VIP, from, b"answer"), 63);
        assert_eq!(out, expected);
        parse_checked_udp(&out);
    });
}

#[test]
fn udp_without_checksum_keeps_none_both_ways() {
    in_udp_lab(|lab| {
        let from = client(2004);
        let request = udp_frame_without_checksum(GATEWAY_MAC, LB_MAC, from, VIP, b"no checksum");
        let (verdict, out) = lab.run(&request);
        assert_eq!(verdict, XDP_REDIRECT);
        let sent = parse_checked_udp(&out);
        assert_eq!(udp_checksum_field(&out), 0, "checksum 0 means none on IPv4: kept");
        let expected = with_ttl(
            &udp_frame_without_checksum(LB_MAC, mac_of(*sent.dst.ip()), sent.src, sent.dst, b"no checksum"),
            63,
        );
        assert_eq!(out, expected);
        let reply = udp_frame_without_checksum(mac_of(*sent.dst.ip()), LB_MAC, sent.dst, sent.src, b"r");
        let (verdict, out) = lab.run(&reply);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(udp_checksum_field(&out), 0);
        assert_eq!(
            out,
            with_ttl(&udp_frame_without_checksum(LB_MAC, GATEWAY_MAC, VIP, from, b"r"), 63)
        );
    });
}

#[test]
fn udp_to_a_tcp_only_vip_port_passes_untouched() {
    require_root();
    in_fresh_netns(|| {
        // No UDP service: the VIP port is TCP only.
        let lab = PacketLab::new(&PacketLabOptions::with_ratio(100));
        let frame = to_vip(client(2005), b"not for us");
        let passed = lab.counter(Counter::Passed);
        let (verdict, out) = lab.run(&frame);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, frame, "untouched");
        assert_eq!(lab.counter(Counter::Passed), passed + 1);
        assert!(lab.flows().is_empty(), "no flow");
    });
}

#[test]
fn a_udp_reply_no_flow_owns_passes_and_a_tcp_segment_on_a_udp_pair_is_not_translated() {
    in_udp_lab(|lab| {
        let backend = BLUE[0];
        let unowned = udp_frame(
            mac_of(*backend.ip()),
            LB_MAC,
            backend,
            SocketAddrV4::new(SNAT, 20000),
            b"?",
        );
        assert_eq!(lab.run(&unowned).0, XDP_PASS, "no reverse entry: the kernel's");
        let from = client(2006);
        let sent = parse_checked_udp(&lab.run(&to_vip(from, b"q")).1);
        // The same pair over TCP is no reply of this UDP flow.
        let tcp_lookalike = bg_lb_tests::packets::tcp_frame(
            mac_of(*sent.dst.ip()),
            LB_MAC,
            sent.dst,
            sent.src,
            bg_lb_tests::packets::ACK,
            b"",
        );
        let (verdict, out) = lab.run(&tcp_lookalike);
        assert_eq!(verdict, XDP_PASS, "a UDP flow's pair: the kernel's, untouched");
        assert_eq!(out, tcp_lookalike);
    });
}

#[test]
fn an_idle_udp_flow_is_swept_after_its_timeout_and_its_pair_freed() {
    require_root();
    in_fresh_netns(|| {
        let mut lab = PacketLab::new(&PacketLabOptions::with_ratio(100));
        lab.add_udp_service(100, Duration::from_secs(1));
        let from = client(2007);
        let sent = parse_checked_udp(&lab.run(&to_vip(from, b"q")).1);
        let timeouts = FlowTimeouts {
            established_idle: Duration::from_secs(3600),
            closing: Duration::from_secs(10),
            syn: Duration::from_secs(10),
        };
        // Idle for longer than its timeout: waiting is the point here, and
        // nothing asserts how long anything took.
        std::thread::sleep(Duration::from_millis(1100));
        let census = lab.sweep_with_udp(&timeouts);
        assert_eq!(census.expired, 1);
        assert_eq!(lab.flow_at(&udp_key(from)), None);
        assert_eq!(lab.reverse_nat_on(sent.dst, sent.src), None, "its pair is free again");
    });
}

#[test]
fn a_udp_datagram_whose_ttl_would_expire_is_dropped_and_counted() {
    in_udp_lab(|lab| {
        let dropped = lab.counter(Counter::TtlExpired);
        assert_eq!(lab.run(&with_ttl(&to_vip(client(2008), b"q"), 1)).0, XDP_DROP);
        assert_eq!(lab.counter(Counter::TtlExpired), dropped + 1);
        assert!(lab.flows().is_empty());
    });
}

/// A router between the LB and the backends, and one on the clients' side.
const BACKEND_SIDE_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);
const CLIENT_SIDE_ROUTER: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);

/// An ICMP error of `icmp_type` from `router` about `emitted`, a UDP frame
/// the LB sent, quoting its IP header and `l4_len` more bytes.
fn error_about(emitted: &[u8], router: Ipv4Addr, icmp_type: Icmpv4Type, l4_len: usize) -> Vec<u8> {
    let view = parse_checked_udp(emitted);
    let router_mac = if router == CLIENT_SIDE_ROUTER {
        GATEWAY_MAC
    } else {
        mac_of(router)
    };
    icmp_error_frame(
        router_mac,
        LB_MAC,
        router,
        *view.src.ip(),
        icmp_type,
        &quote_of(emitted, l4_len),
    )
}

/// The error the LB must send on: `icmp_type` from `from` to `to`, a hop
/// later (TTL 63), quoting `original` (the datagram as its sender sent it,
/// with the TTL the LB gave it) as the error it came from quoted it.
fn translated(
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    from: Ipv4Addr,
    to: Ipv4Addr,
    icmp_type: Icmpv4Type,
    original: &[u8],
    l4_len: usize,
) -> Vec<u8> {
    let quote = quote_of(&with_ttl(original, 63), l4_len);
    with_ttl(&icmp_error_frame(src_mac, dst_mac, from, to, icmp_type, &quote), 63)
}

fn port_unreachable() -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port)
}

fn frag_needed(mtu: u16) -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu })
}

fn time_exceeded() -> Icmpv4Type {
    Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit)
}

#[test]
fn icmp_port_unreachable_from_a_udp_backend_reaches_the_client_quoting_its_own_datagram() {
    in_udp_lab(|lab| {
        let from = client(2010);
        let request = to_vip(from, b"query");
        let emitted = lab.run(&request).1;
        let backend = parse_checked_udp(&emitted).dst;
        let counted = lab.counter(Counter::IcmpErrorToClient);
        let (verdict, out) = lab.run(&error_about(&emitted, *backend.ip(), port_unreachable(), 8));
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = translated(
            (LB_MAC, GATEWAY_MAC),
            *VIP.ip(),
            *from.ip(),
            port_unreachable(),
            &request,
            8,
        );
        assert_eq!(out, expected, "from the VIP, quoting the client's datagram");
        let view = parse_checked_icmp(&out);
        assert_eq!((view.quoted_src, view.quoted_dst), (from, VIP));
        assert_eq!(lab.counter(Counter::IcmpErrorToClient), counted + 1);
        assert!(lab.flow_at(&udp_key(from)).is_some(), "the flow stays pinned");
    });
}

#[test]
fn icmp_frag_needed_quoting_a_whole_udp_datagram_is_translated_with_its_udp_checksum() {
    in_udp_lab(|lab| {
        let from = client(2011);
        let payload = [b'd'; 100];
        let request = to_vip(from, &payload);
        let emitted = lab.run(&request).1;
        let whole = 8 + payload.len();
        let (verdict, out) = lab.run(&error_about(&emitted, BACKEND_SIDE_ROUTER, frag_needed(1280), whole));
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = translated(
            (LB_MAC, GATEWAY_MAC),
            *VIP.ip(),
            *from.ip(),
            frag_needed(1280),
            &request,
            whole,
        );
        assert_eq!(out, expected);
        let view = parse_checked_icmp(&out);
        assert!(view.quoted_l4_checked, "the quoted UDP checksum was checked");
        assert_eq!(view.rest_of_header, [0, 0, 0x05, 0x00], "the MTU stays");
    });
}

#[test]
fn icmp_time_exceeded_about_a_udp_reply_reaches_the_backend_quoting_its_own_datagram() {
    in_udp_lab(|lab| {
        let from = client(2012);
        let sent = parse_checked_udp(&lab.run(&to_vip(from, b"query")).1);
        let backend_mac = mac_of(*sent.dst.ip());
        let reply = udp_frame(backend_mac, LB_MAC, sent.dst, sent.src, b"answer");
        let to_client = lab.run(&reply).1;
        let counted = lab.counter(Counter::IcmpErrorToBackend);
        let (verdict, out) = lab.run(&error_about(&to_client, CLIENT_SIDE_ROUTER, time_exceeded(), 8));
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = translated((LB_MAC, backend_mac), SNAT, *sent.dst.ip(), time_exceeded(), &reply, 8);
        assert_eq!(out, expected, "from the SNAT address, quoting the backend's datagram");
        assert_eq!(lab.counter(Counter::IcmpErrorToBackend), counted + 1);
    });
}

#[test]
fn icmp_error_quoting_a_udp_datagram_without_checksum_keeps_the_quoted_checksum_0() {
    in_udp_lab(|lab| {
        let from = client(2013);
        let request = udp_frame_without_checksum(GATEWAY_MAC, LB_MAC, from, VIP, b"bare");
        let emitted = lab.run(&request).1;
        let (verdict, out) = lab.run(&error_about(&emitted, BACKEND_SIDE_ROUTER, port_unreachable(), 12));
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = translated(
            (LB_MAC, GATEWAY_MAC),
            *VIP.ip(),
            *from.ip(),
            port_unreachable(),
            &request,
            12,
        );
        assert_eq!(out, expected);
        assert_eq!(&parse_checked_icmp(&out).quote[26..28], &[0, 0], "no checksum quoted");
    });
}

#[test]
fn icmp_error_quoting_udp_no_udp_flow_owns_passes_unchanged_and_is_counted() {
    in_udp_lab(|lab| {
        // A pair no flow holds, and a pair a TCP flow holds: neither is a
        // UDP flow's, so the error is the kernel's.
        let conn = lab.handshake(client(2014));
        let tcp_pair = udp_frame(LB_MAC, mac_of(*conn.backend.ip()), conn.snat, conn.backend, b"x");
        let nobody = udp_frame(
            LB_MAC,
            mac_of(*BLUE[0].ip()),
            SocketAddrV4::new(SNAT, 20000),
            BLUE[0],
            b"x",
        );
        let to_unknown_client = udp_frame(LB_MAC, GATEWAY_MAC, VIP, client(2015), b"x");
        for (emitted, router) in [
            (&tcp_pair, BACKEND_SIDE_ROUTER),
            (&nobody, BACKEND_SIDE_ROUTER),
            (&to_unknown_client, CLIENT_SIDE_ROUTER),
        ] {
            let error = error_about(emitted, router, port_unreachable(), 8);
            let counted = lab.counter(Counter::IcmpErrorWithoutFlow);
            let (verdict, out) = lab.run(&error);
            assert_eq!(verdict, XDP_PASS);
            assert_eq!(out, error, "untouched");
            assert_eq!(lab.counter(Counter::IcmpErrorWithoutFlow), counted + 1);
        }
    });
}

#[test]
fn udp_gateway_datagram_has_only_its_destination_rewritten_and_the_reply_leaves_from_the_vip() {
    in_udp_lab_forwarding(Forwarding::Gateway, |lab, _| {
        let from = client(2100);
        let (verdict, out) = lab.run(&to_vip(from, b"query"));
        assert_eq!(verdict, XDP_REDIRECT);
        let view = parse_checked_udp(&out);
        assert!(BLUE.contains(&view.dst));
        assert_eq!(view.src, from, "the backend sees the client's address and port");
        let backend = view.dst;
        let expected = with_ttl(&udp_frame(LB_MAC, mac_of(*backend.ip()), from, backend, b"query"), 63);
        assert_eq!(
            out, expected,
            "the destination, TTL and MACs only; checksum from scratch"
        );
        let flow = lab.flow_at(&udp_key(from)).expect("pinned");
        assert_eq!(flow.forwarding, FORWARDING_GATEWAY);
        assert_eq!(
            lab.reverse_nat_on(backend, from),
            Some(udp_key(from)),
            "the reply's (backend, client) key names the UDP flow"
        );

        let reply = udp_frame(mac_of(*backend.ip()), LB_MAC, backend, from, b"answer");
        let (verdict, out) = lab.run(&reply);
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = with_ttl(&udp_frame(LB_MAC, GATEWAY_MAC, VIP, from, b"answer"), 63);
        assert_eq!(out, expected, "from VIP:port, nothing else but TTL and MACs");
        parse_checked_udp(&out);

        // Pinned: the next datagram goes the same way.
        let again = parse_checked_udp(&lab.run(&to_vip(from, b"again")).1);
        assert_eq!((again.src, again.dst), (from, backend));
    });
}

#[test]
fn udp_gateway_without_checksum_keeps_none_both_ways() {
    in_udp_lab_forwarding(Forwarding::Gateway, |lab, _| {
        let from = client(2101);
        let request = udp_frame_without_checksum(GATEWAY_MAC, LB_MAC, from, VIP, b"bare");
        let (verdict, out) = lab.run(&request);
        assert_eq!(verdict, XDP_REDIRECT);
        let backend = parse_checked_udp(&out).dst;
        assert_eq!(udp_checksum_field(&out), 0);
        let expected = with_ttl(
            &udp_frame_without_checksum(LB_MAC, mac_of(*backend.ip()), from, backend, b"bare"),
            63,
        );
        assert_eq!(out, expected);
        let reply = udp_frame_without_checksum(mac_of(*backend.ip()), LB_MAC, backend, from, b"r");
        let (verdict, out) = lab.run(&reply);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            out,
            with_ttl(&udp_frame_without_checksum(LB_MAC, GATEWAY_MAC, VIP, from, b"r"), 63)
        );
    });
}

#[test]
fn udp_gateway_backend_datagram_matching_no_flow_passes_untouched() {
    in_udp_lab_forwarding(Forwarding::Gateway, |lab, _| {
        let from = client(2102);
        let backend = parse_checked_udp(&lab.run(&to_vip(from, b"q")).1).dst;
        let passed = lab.counter(Counter::Passed);
        // To another client port, and the backend's own datagram from
        // another port to the flow's client port.
        let other_port = udp_frame(mac_of(*backend.ip()), LB_MAC, backend, client(2103), b"x");
        let other_source = udp_frame(
            mac_of(*backend.ip()),
            LB_MAC,
            SocketAddrV4::new(*backend.ip(), 9999),
            from,
            b"x",
        );
        // A TCP segment on the UDP flow's (backend, client) key is no reply of it.
        let tcp_lookalike = bg_lb_tests::packets::tcp_frame(
            mac_of(*backend.ip()),
            LB_MAC,
            backend,
            from,
            bg_lb_tests::packets::ACK,
            b"",
        );
        for frame in [other_port, other_source, tcp_lookalike] {
            let (verdict, out) = lab.run(&frame);
            assert_eq!(verdict, XDP_PASS);
            assert_eq!(out, frame, "untouched");
        }
        assert_eq!(lab.counter(Counter::Passed), passed + 3);
    });
}

/// UDP has no RST to refuse a flow with: a datagram that finds every SNAT
/// pair of its backend taken is dropped, and counted apart from the SYNs
/// refused for the same reason.
#[test]
fn udp_datagram_finding_no_free_snat_pair_is_dropped_and_counted_as_udp() {
    require_root();
    in_fresh_netns(|| {
        let mut lab = PacketLab::new(&PacketLabOptions {
            snat_ports: (20000, 20001),
            ..PacketLabOptions::with_ratio(100)
        });
        let mut spec = lab.add_udp_service(100, UDP_IDLE);
        lab.keep_only(BLUE[0]);
        spec.backends.retain(|b| b.addr == BLUE[0].into());
        lab.apply(&spec);
        for port in [2201, 2202] {
            let (verdict, _) = lab.run(&to_vip(client(port), b"takes a pair"));
            assert_eq!(verdict, XDP_REDIRECT, "a pair is free for {port}");
        }
        let (verdict, _) = lab.run(&to_vip(client(2203), b"finds none"));
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(lab.counter(Counter::UdpSnatPortsExhausted), 1);
        assert_eq!(lab.counter(Counter::SnatPortsExhausted), 0, "no SYN was refused");
        assert_eq!(lab.flow_at(&udp_key(client(2203))), None, "no flow");
    });
}

/// Another VIP's UDP flow would collide the same way: the flow's one
/// source candidate is taken. (The lab's lookup-table regions hold only its
/// two services, so the other flow here is a TCP one.)
#[test]
fn udp_gateway_flow_whose_client_already_reaches_its_backend_is_dropped_as_a_collision() {
    in_udp_lab_forwarding(Forwarding::Gateway, |mut lab, mut spec| {
        // One backend behind the TCP and the UDP service: it could not tell
        // two flows of one client address and port apart.
        lab.keep_only(BLUE[0]);
        spec.backends.retain(|b| b.addr == BLUE[0].into());
        lab.apply(&spec);
        let from = client(2104);
        assert_eq!(lab.open(from).backend, BLUE[0]);
        let collisions = lab.counter(Counter::UdpGatewayCollision);
        let (verdict, _) = lab.run(&to_vip(from, b"same port, over UDP"));
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(lab.counter(Counter::UdpGatewayCollision), collisions + 1);
        assert_eq!(lab.flow_at(&udp_key(from)), None, "no UDP flow");
        assert_eq!(
            lab.reverse_nat_on(BLUE[0], from),
            Some(FlowKey::from_client(from, VIP)),
            "the TCP flow keeps its key"
        );
        // Another client port is no collision.
        let other = client(2105);
        let (verdict, out) = lab.run(&to_vip(other, b"q"));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(parse_checked_udp(&out).src, other);
    });
}

#[test]
fn udp_dsr_datagram_goes_to_the_backends_mac_unchanged_and_claims_no_pair() {
    in_udp_lab_forwarding(Forwarding::Dsr, |lab, _| {
        let from = client(2110);
        for request in [
            to_vip(from, b"query"),
            udp_frame_without_checksum(GATEWAY_MAC, LB_MAC, from, VIP, b"bare"),
        ] {
            let (verdict, out) = lab.run(&request);
            assert_eq!(verdict, XDP_REDIRECT);
            let flow = lab.flow_at(&udp_key(from)).expect("pinned");
            assert_eq!(flow.forwarding, FORWARDING_DSR);
            let backend = lab
                .backends_by_id()
                .into_iter()
                .find_map(|(id, addr)| (id == flow.backend_id).then_some(addr))
                .expect("the flow's backend");
            assert!(BLUE.contains(&backend));
            let mut expected = request.clone();
            expected[..6].copy_from_slice(&mac_of(*backend.ip()));
            expected[6..12].copy_from_slice(&LB_MAC);
            assert_eq!(out, expected, "only the MACs change: not the TTL, not the checksum");
        }
        assert!(lab.reverse_nats().is_empty(), "no reverse entry: replies bypass the LB");
    });
}

#[test]
fn udp_dsr_datagram_to_a_backend_behind_a_router_is_dropped_and_counted() {
    in_udp_lab_forwarding(Forwarding::Dsr, |lab, _| {
        for b in BLUE.iter().chain(&GREEN) {
            lab.route_via_gateway(*b.ip());
        }
        let counted = lab.counter(Counter::DsrNotOnLink);
        assert_eq!(lab.run(&to_vip(client(2111), b"q")).0, XDP_DROP);
        assert_eq!(lab.counter(Counter::DsrNotOnLink), counted + 1);
    });
}

/// A datagram with `len` bytes of payload: larger than a 1280-byte link
/// takes at 1400.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| i as u8).collect()
}

fn limit_backend_paths(lab: &PacketLab) {
    for b in BLUE.iter().chain(&GREEN) {
        lab.limit_path_mtu(*b.ip(), 1280);
    }
}

/// Checks that `out` is fragmentation needed (next-hop MTU 1280) sent back
/// to `request`'s sender from the address it sent to, out of the
/// interface it came in on, quoting `request`'s IP header (TTL one less)
/// and its UDP header, checksum included, as the sender sent them.
fn assert_frag_needed_quoting(out: &[u8], request: &[u8]) {
    assert_eq!(out.len(), 14 + 20 + 8 + 20 + 8, "a bare error quoting 8 bytes");
    let sent = parse_checked_udp(request);
    let view = parse_checked_icmp(out);
    assert_eq!(
        (view.src_mac, view.dst_mac),
        (sent.dst_mac, sent.src_mac),
        "back where it came from"
    );
    assert_eq!(
        (view.src, view.dst),
        (*sent.dst.ip(), *sent.src.ip()),
        "from the address the sender sent to"
    );
    assert_eq!((view.icmp_type, view.code), (3, 4), "fragmentation needed");
    assert_eq!(view.rest_of_header, [0, 0, 0x05, 0x00], "next-hop MTU 1280");
    assert_eq!(
        view.quote,
        quote_of(&with_ttl(request, 63), 8),
        "the sender's datagram, a hop older"
    );
}

#[test]
fn oversized_df_udp_datagram_to_a_backend_is_answered_with_frag_needed_quoting_the_clients_datagram() {
    in_udp_lab(|lab| {
        limit_backend_paths(&lab);
        let from = client(2200);
        for request in [
            to_vip(from, &payload(1400)),
            udp_frame_without_checksum(GATEWAY_MAC, LB_MAC, from, VIP, &payload(1400)),
        ] {
            let answered = lab.counter(Counter::TooBigAnswered);
            let (verdict, out) = lab.run(&request);
            assert_eq!(verdict, XDP_TX);
            assert_frag_needed_quoting(&out, &request);
            assert_eq!(lab.counter(Counter::TooBigAnswered), answered + 1);
        }
        // The flow stays pinned, and a datagram that fits goes through.
        assert!(lab.flow_at(&udp_key(from)).is_some());
        assert_eq!(lab.run(&to_vip(from, &payload(1000))).0, XDP_REDIRECT);
    });
}

#[test]
fn oversized_df_udp_reply_to_a_client_is_answered_with_frag_needed_quoting_the_backends_datagram() {
    in_udp_lab(|lab| {
        let from = client(2201);
        lab.limit_path_mtu(*from.ip(), 1280);
        let sent = parse_checked_udp(&lab.run(&to_vip(from, b"query")).1);
        let reply = udp_frame(mac_of(*sent.dst.ip()), LB_MAC, sent.dst, sent.src, &payload(1400));
        let (verdict, out) = lab.run(&reply);
        assert_eq!(verdict, XDP_TX);
        assert_frag_needed_quoting(&out, &reply);
        assert_eq!(
            parse_checked_icmp(&out).src,
            SNAT,
            "from the SNAT address, to the backend"
        );
    });
}

#[test]
fn oversized_df_udp_datagram_through_gateway_is_answered_with_frag_needed_from_the_vip() {
    in_udp_lab_forwarding(Forwarding::Gateway, |lab, _| {
        limit_backend_paths(&lab);
        let request = to_vip(client(2202), &payload(1400));
        let (verdict, out) = lab.run(&request);
        assert_eq!(verdict, XDP_TX);
        assert_frag_needed_quoting(&out, &request);
    });
}

#[test]
fn oversized_udp_datagram_without_df_is_dropped_and_counted() {
    in_udp_lab(|lab| {
        limit_backend_paths(&lab);
        let mut request = to_vip(client(2203), &payload(1400));
        edit_ip_header(&mut request, |ip| ip.dont_fragment = false);
        let dropped = lab.counter(Counter::TooBigDropped);
        assert_eq!(lab.run(&request).0, XDP_DROP);
        assert_eq!(lab.counter(Counter::TooBigDropped), dropped + 1);
    });
}
