//! Packet tests (root) of UDP over IPv4 services: the real XDP program
//! through BPF_PROG_TEST_RUN in the packet lab, each test in its own network
//! namespace. The lab's VIP carries its TCP service and a UDP service on the
//! same address and port. Output frames are compared byte for byte with
//! frames built from scratch, so the incremental checksums are checked
//! against full computations, a datagram without a checksum included.

use std::{net::SocketAddrV4, time::Duration};

use bg_lb::dataplane::FlowTimeouts;
use bg_lb_common::{
    counters::Counter,
    maps::{FlowKey, IPPROTO_TCP, IPPROTO_UDP},
};
use bg_lb_tests::{
    netns::in_fresh_netns,
    packet_lab::{
        BLUE, GATEWAY_MAC, LB_MAC, PacketLab, PacketLabOptions, SNAT, VIP, XDP_DROP, XDP_PASS, XDP_REDIRECT, client,
        is_blue, mac_of,
    },
    packets::with_ttl,
    require_root,
    udp_frames::{parse_checked_udp, udp_checksum_field, udp_frame, udp_frame_without_checksum},
};

const UDP_IDLE: Duration = Duration::from_secs(30);

/// A lab whose VIP also has a UDP service, all new UDP flows to blue.
fn in_udp_lab(test: impl FnOnce(PacketLab) + Send + 'static) {
    require_root();
    in_fresh_netns(move || {
        let mut lab = PacketLab::new(&PacketLabOptions::with_ratio(100));
        lab.add_udp_service(100, UDP_IDLE);
        test(lab)
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
