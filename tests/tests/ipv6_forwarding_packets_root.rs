//! Packet tests (root) of the forwarding modes besides full NAT on IPv6:
//! `gateway` (destination rewritten only; the backend's reply to the client
//! rewritten from the VIP) and `dsr` (MACs rewritten only), TCP and UDP.
//! The real XDP program runs through BPF_PROG_TEST_RUN in the packet lab,
//! with its IPv6 services ([`PacketLab::add_ipv6_services`]) switched to the
//! mode; each test runs in its own network namespace. Output frames are
//! compared byte for byte with frames built from scratch, so the
//! incremental checksums are checked against full computations.

use std::net::{Ipv6Addr, SocketAddrV6};

use bg_lb::dataplane::forwarding::Forwarding;
use bg_lb_common::{
    counters::Counter,
    flow_state,
    maps::{FlowKey6, IPPROTO_TCP, IPPROTO_UDP},
};
use bg_lb_tests::{
    netns::in_fresh_netns,
    packet_lab::{
        BACKENDS6, GATEWAY_MAC, GATEWAY6, Ipv6Services, LB_MAC, PacketLab, PacketLabOptions, VIP6, XDP_DROP, XDP_PASS,
        XDP_REDIRECT, XDP_TX, client6, mac_of6,
    },
    packets::{
        ACK, ACK_NUMBER, FIN_ACK, Numbers, PSH_ACK, SEQ, SYN, SYN_ACK, icmp6_error_frame, numbered_tcp6_frame,
        parse_checked6, tcp6_frame, udp6_frame, with_hop_limit,
    },
    require_root,
};
use etherparse::{Icmpv6Type, icmpv6::DestUnreachableCode};

/// A second VIP over the same backends, for the gateway collision.
const VIP6_2: SocketAddrV6 = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x101), 80, 0, 0);

/// The backend's first sequence number.
const BACKEND_ISN: u32 = 7_000_000;

/// A lab whose IPv6 services forward by `forwarding`.
fn in_lab(forwarding: Forwarding, test: impl FnOnce(PacketLab, Ipv6Services) + Send + 'static) {
    require_root();
    in_fresh_netns(move || {
        let lab = PacketLab::new(&PacketLabOptions::with_ratio(100));
        let mut services = lab.add_ipv6_services();
        services.set_forwarding(forwarding);
        test(lab, services)
    });
}

/// The client's segment to [`VIP6`] numbered as `numbers`.
fn from_client(client: SocketAddrV6, flags: u8, numbers: Numbers, payload: &[u8]) -> Vec<u8> {
    numbered_tcp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6, flags, numbers, payload)
}

/// The backend's segment to the client's own address (a gateway reply).
fn from_backend(backend: SocketAddrV6, client: SocketAddrV6, flags: u8, numbers: Numbers, payload: &[u8]) -> Vec<u8> {
    numbered_tcp6_frame(mac_of6(*backend.ip()), LB_MAC, backend, client, flags, numbers, payload)
}

/// Sends `client`'s SYN and checks it reached its backend with only its
/// destination rewritten (and the hop limit a router takes off); returns
/// the backend.
fn gateway_syn(lab: &PacketLab, v6: &Ipv6Services, client: SocketAddrV6) -> SocketAddrV6 {
    let (verdict, out) = lab.run(&tcp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6, SYN, b""));
    assert_eq!(verdict, XDP_REDIRECT, "forwarded");
    let (backend, source) = v6.pinned(client, IPPROTO_TCP).expect("the SYN pinned a flow");
    assert_eq!(source, client, "a gateway flow's source is the client's own pair");
    let expected = with_hop_limit(
        &tcp6_frame(LB_MAC, mac_of6(*backend.ip()), client, backend, SYN, b""),
        63,
    );
    assert_eq!(out, expected, "the backend sees the client; checksum as if built so");
    assert_eq!(
        v6.reverse_owner(backend, client),
        Some(FlowKey6::from_client(client, VIP6)),
        "the reply's (backend, client) key names the flow"
    );
    backend
}

#[test]
fn ipv6_gateway_tcp_is_rewritten_to_the_backend_and_its_replies_back_from_the_vip() {
    in_lab(Forwarding::Gateway, |lab, v6| {
        let client = client6(41000);
        let backend = gateway_syn(&lab, &v6, client);

        let syn_ack = Numbers {
            seq: BACKEND_ISN,
            ack: SEQ + 1,
        };
        let (verdict, out) = lab.run(&from_backend(backend, client, SYN_ACK, syn_ack, b""));
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = numbered_tcp6_frame(LB_MAC, mac_of6(GATEWAY6), VIP6, client, SYN_ACK, syn_ack, b"");
        assert_eq!(
            out,
            with_hop_limit(&expected, 63),
            "from the VIP:port, towards the client's router"
        );

        let established = Numbers {
            seq: SEQ + 1,
            ack: BACKEND_ISN + 1,
        };
        let (verdict, out) = lab.run(&from_client(client, ACK, established, b""));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(parse_checked6(&out).dst, backend);
        let flow = v6.flow(client, IPPROTO_TCP).expect("pinned");
        assert_eq!(flow_state::phase(flow.state), flow_state::FlowPhase::Established);

        let data = Numbers {
            seq: BACKEND_ISN + 1,
            ack: SEQ + 1,
        };
        let (verdict, out) = lab.run(&from_backend(backend, client, PSH_ACK, data, b"hello"));
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = numbered_tcp6_frame(LB_MAC, mac_of6(GATEWAY6), VIP6, client, PSH_ACK, data, b"hello");
        assert_eq!(out, with_hop_limit(&expected, 63));
        let stats = v6.backend_stats(backend);
        assert_eq!((stats.packets_out, stats.handshakes), (2, 1), "replies are counted");
    });
}

#[test]
fn ipv6_gateway_segment_out_of_hops_is_dropped_and_counted() {
    in_lab(Forwarding::Gateway, |lab, v6| {
        let client = client6(41001);
        let backend = gateway_syn(&lab, &v6, client);
        let reply = from_backend(backend, client, SYN_ACK, Numbers { seq: 1, ack: SEQ + 1 }, b"");
        let (verdict, _) = lab.run(&with_hop_limit(&reply, 1));
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(lab.counter(Counter::TtlExpired), 1);
    });
}

#[test]
fn ipv6_gateway_backend_packets_matching_no_flow_pass_to_the_kernel_untouched() {
    in_lab(Forwarding::Gateway, |lab, v6| {
        let client = client6(41002);
        let backend = gateway_syn(&lab, &v6, client);
        // Another client port than the flow's, TCP and UDP.
        let other = client6(41003);
        let numbers = Numbers {
            seq: BACKEND_ISN,
            ack: SEQ + 1,
        };
        for stray in [
            from_backend(backend, other, PSH_ACK, numbers, b"x"),
            udp6_frame(mac_of6(*backend.ip()), LB_MAC, backend, other, b"x"),
            // The flow's own 4-tuple, but UDP: no UDP flow owns it.
            udp6_frame(mac_of6(*backend.ip()), LB_MAC, backend, client, b"x"),
        ] {
            let passed = lab.counter(Counter::Passed);
            let (verdict, out) = lab.run(&stray);
            assert_eq!((verdict, &out), (XDP_PASS, &stray));
            assert_eq!(lab.counter(Counter::Passed), passed + 1);
        }
        assert_eq!(lab.counter(Counter::ReplyWithoutFlow), 0, "no reply at all");
    });
}

#[test]
fn ipv6_gateway_collision_refuses_the_second_vips_syn_with_a_rst_and_keeps_the_first_flow() {
    in_lab(Forwarding::Gateway, |lab, mut v6| {
        // One backend behind two VIPs: one client address and port to both
        // would reach the backend as one connection.
        v6.send_all_to(BACKENDS6[0]);
        v6.add_tcp_vip(&lab, VIP6_2);
        let client = client6(41004);
        assert_eq!(gateway_syn(&lab, &v6, client), BACKENDS6[0]);

        let (verdict, out) = lab.run(&tcp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6_2, SYN, b""));
        assert_eq!(verdict, XDP_TX, "refused at once");
        let rst = parse_checked6(&out);
        assert!(rst.flags_rst);
        assert_eq!((rst.src, rst.dst), (VIP6_2, client), "from the second VIP");
        assert_eq!(lab.counter(Counter::GatewayCollision), 1);
        assert_eq!(lab.counter(Counter::SnatPortsExhausted), 0);

        assert_eq!(
            v6.reverse_owner(BACKENDS6[0], client),
            Some(FlowKey6::from_client(client, VIP6))
        );
        let numbers = Numbers {
            seq: BACKEND_ISN,
            ack: SEQ + 1,
        };
        let (verdict, out) = lab.run(&from_backend(BACKENDS6[0], client, SYN_ACK, numbers, b""));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            parse_checked6(&out).src,
            VIP6,
            "the reply still belongs to the first VIP's flow"
        );
    });
}

/// As on IPv4: a client reusing its port for the same VIP right after its
/// flow ended is no collision (the backend and the client settle the
/// 4-tuple, as without a load balancer): its SYN is forwarded at once,
/// through the takeover of the ended flow's entry. The same client port
/// through another VIP is refused before and after.
#[test]
fn ipv6_gateway_syn_on_an_ended_flows_own_5_tuple_is_forwarded_at_once_and_another_vips_is_refused() {
    in_lab(Forwarding::Gateway, |lab, mut v6| {
        v6.send_all_to(BACKENDS6[0]);
        v6.add_tcp_vip(&lab, VIP6_2);
        let client = client6(41010);
        let backend = gateway_syn(&lab, &v6, client);
        let at = |seq, ack| Numbers { seq, ack };
        for frame in [
            from_backend(backend, client, SYN_ACK, at(BACKEND_ISN, SEQ + 1), b""),
            from_client(client, ACK, at(SEQ + 1, BACKEND_ISN + 1), b""),
            from_backend(backend, client, FIN_ACK, at(BACKEND_ISN + 1, SEQ + 1), b""),
            from_client(client, FIN_ACK, at(SEQ + 1, BACKEND_ISN + 2), b""),
            from_backend(backend, client, ACK, at(BACKEND_ISN + 2, SEQ + 2), b""),
        ] {
            assert_eq!(lab.run(&frame).0, XDP_REDIRECT);
        }
        let ended = v6.flow(client, IPPROTO_TCP).expect("the ended flow lingers");
        assert!(flow_state::has_ended(ended.state));

        let second_vip = tcp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6_2, SYN, b"");
        assert_eq!(
            lab.run(&second_vip).0,
            XDP_TX,
            "another VIP's SYN on the 4-tuple: refused"
        );
        assert_eq!(gateway_syn(&lab, &v6, client), backend, "the same 5-tuple's SYN");
        let flow = v6.flow(client, IPPROTO_TCP).expect("the new flow");
        assert!(
            !flow_state::has_ended(flow.state),
            "a new, live flow replaced the ended one"
        );
        assert_eq!(lab.run(&second_vip).0, XDP_TX, "and refused again on the new flow's");
        assert_eq!(lab.counter(Counter::GatewayCollision), 2, "no other refusal");
    });
}

#[test]
fn ipv6_gateway_udp_keeps_the_client_address_to_the_backend_and_replies_leave_from_the_vip() {
    in_lab(Forwarding::Gateway, |lab, v6| {
        let client = client6(41005);
        let (verdict, out) = lab.run(&udp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6, b"ping"));
        assert_eq!(verdict, XDP_REDIRECT);
        let (backend, source) = v6.pinned(client, IPPROTO_UDP).expect("the datagram pinned a flow");
        assert_eq!(source, client);
        let expected = udp6_frame(LB_MAC, mac_of6(*backend.ip()), client, backend, b"ping");
        assert_eq!(out, with_hop_limit(&expected, 63), "only the destination rewritten");
        assert_eq!(
            v6.reverse_owner(backend, client),
            Some(FlowKey6::with_proto(client, VIP6, IPPROTO_UDP))
        );

        let (verdict, out) = lab.run(&udp6_frame(mac_of6(*backend.ip()), LB_MAC, backend, client, b"pong"));
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = udp6_frame(LB_MAC, mac_of6(GATEWAY6), VIP6, client, b"pong");
        assert_eq!(out, with_hop_limit(&expected, 63), "from the VIP:port");
        // A reply without a checksum is no IPv6 datagram.
        let mut unchecked = udp6_frame(mac_of6(*backend.ip()), LB_MAC, backend, client, b"pong");
        unchecked[14 + 40 + 6..14 + 40 + 8].copy_from_slice(&[0, 0]);
        assert_eq!(lab.run(&unchecked).0, XDP_DROP);
        assert_eq!(lab.counter(Counter::Udp6NoChecksum), 1);
    });
}

#[test]
fn ipv6_gateway_icmp_error_from_the_backend_about_a_forwarded_packet_reaches_the_client_about_the_vip() {
    in_lab(Forwarding::Gateway, |lab, v6| {
        let client = client6(41006);
        let client_syn = tcp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6, SYN, b"");
        let (_, sent) = lab.run(&client_syn);
        let (backend, _) = v6.pinned(client, IPPROTO_TCP).expect("pinned");
        let unreachable = Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port);
        // The backend's own error, routed through the LB to the client.
        let macs = (mac_of6(*backend.ip()), LB_MAC);
        let error = icmp6_error_frame(macs, *backend.ip(), *client.ip(), 64, unreachable, &sent[14..]);
        let (verdict, out) = lab.run(&error);
        assert_eq!(verdict, XDP_REDIRECT);
        let mut quoted = client_syn[14..].to_vec();
        quoted[7] -= 1;
        let expected = icmp6_error_frame(
            (LB_MAC, mac_of6(GATEWAY6)),
            *VIP6.ip(),
            *client.ip(),
            63,
            unreachable,
            &quoted,
        );
        assert_eq!(out, expected, "from the VIP, quoting what the client sent");
        assert_eq!(lab.counter(Counter::IcmpErrorToClient), 1);
    });
}

#[test]
fn ipv6_dsr_packets_have_only_their_macs_rewritten_and_keep_no_reverse_entry() {
    in_lab(Forwarding::Dsr, |lab, v6| {
        let client = client6(41007);
        let mut backend = None;
        for (flags, seq, ack) in [
            (SYN, SEQ, ACK_NUMBER),
            (ACK, SEQ + 1, BACKEND_ISN + 1),
            (PSH_ACK, SEQ + 1, BACKEND_ISN + 1),
        ] {
            let numbers = Numbers { seq, ack };
            let payload: &[u8] = if flags == PSH_ACK { b"x" } else { b"" };
            let (verdict, out) = lab.run(&from_client(client, flags, numbers, payload));
            assert_eq!(verdict, XDP_REDIRECT);
            let pinned = *backend.get_or_insert_with(|| v6.pinned(client, IPPROTO_TCP).expect("pinned").0);
            let expected = numbered_tcp6_frame(LB_MAC, mac_of6(*pinned.ip()), client, VIP6, flags, numbers, payload);
            assert_eq!(out, expected, "IPv6 and TCP untouched, hop limit included");
        }
        let flow = v6.flow(client, IPPROTO_TCP).expect("pinned");
        assert_eq!(
            flow_state::phase(flow.state),
            flow_state::FlowPhase::Established,
            "the client's ACK of the SYN-ACK it got from the backend establishes the flow"
        );
        let backend = backend.expect("a backend");
        assert_eq!(
            v6.reverse_owner(backend, client),
            None,
            "no reply path, no reverse entry"
        );
        assert_eq!(v6.backend_stats(backend).packets_in, 3);
    });
}

#[test]
fn ipv6_dsr_udp_datagrams_have_only_their_macs_rewritten() {
    in_lab(Forwarding::Dsr, |lab, v6| {
        let client = client6(41008);
        for payload in [b"one", b"two"] {
            let (verdict, out) = lab.run(&udp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6, payload));
            assert_eq!(verdict, XDP_REDIRECT);
            let (backend, _) = v6.pinned(client, IPPROTO_UDP).expect("pinned");
            assert_eq!(out, udp6_frame(LB_MAC, mac_of6(*backend.ip()), client, VIP6, payload));
            assert_eq!(v6.reverse_owner(backend, client), None);
        }
    });
}

#[test]
fn ipv6_dsr_to_a_backend_behind_a_router_is_dropped_and_counted() {
    in_lab(Forwarding::Dsr, |lab, mut v6| {
        v6.send_all_to(BACKENDS6[0]);
        lab.route_via_gateway6(*BACKENDS6[0].ip());
        let (verdict, _) = lab.run(&tcp6_frame(GATEWAY_MAC, LB_MAC, client6(41009), VIP6, SYN, b""));
        assert_eq!(verdict, XDP_DROP, "a MAC rewrite cannot reach it");
        let (verdict, _) = lab.run(&udp6_frame(GATEWAY_MAC, LB_MAC, client6(41009), VIP6, b"x"));
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(lab.counter(Counter::DsrNotOnLink), 2);
    });
}
