//! Packet tests (root) of the IPv6 data path: the real XDP program through
//! BPF_PROG_TEST_RUN in the packet lab, each test in its own network
//! namespace, with an IPv6 TCP and UDP service written straight into the
//! IPv6 maps ([`PacketLab::add_ipv6_services`]). Output frames are checked
//! byte for byte where the program builds them, and every emitted TCP or UDP
//! checksum against a full computation (a UDP checksum is never 0).

use std::net::SocketAddrV6;

use bg_lb_common::{
    counters::Counter,
    maps::{FlowKey6, IPPROTO_TCP, IPPROTO_UDP},
};
use bg_lb_tests::{
    netns::in_fresh_netns,
    packet_lab::{
        BACKENDS6, GATEWAY_MAC, GATEWAY6, Ipv6Services, LB_MAC, PacketLab, PacketLabOptions, SNAT6, VIP6, XDP_DROP,
        XDP_PASS, XDP_REDIRECT, XDP_TX, client6, mac_of6,
    },
    packets::{
        ACK, ACK_NUMBER, FIN_ACK, Numbers, PSH_ACK, RST, SEQ, SYN, SYN_ACK, Tcp6View, icmp6_error_frame,
        neighbour_solicitation, numbered_tcp6_frame, parse_checked_udp6, parse_checked6, tcp6_frame, udp6_frame,
        with_extension_header, with_hop_limit,
    },
    require_root,
};
use etherparse::{Icmpv6Type, icmpv6::DestUnreachableCode};

/// A lab (all IPv4 flows to blue) with the IPv6 services.
fn in_ipv6_lab(test: impl FnOnce(PacketLab, Ipv6Services) + Send + 'static) {
    require_root();
    in_fresh_netns(move || {
        let lab = PacketLab::new(&PacketLabOptions::with_ratio(100));
        let services = lab.add_ipv6_services();
        test(lab, services)
    });
}

fn to_vip(client: SocketAddrV6, flags: u8) -> Vec<u8> {
    tcp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6, flags, b"")
}

/// The backend's first sequence number.
const BACKEND_ISN: u32 = 7_000_000;

/// The client's segment numbered `seq`, acknowledging `ack`.
fn client_at(client: SocketAddrV6, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    numbered_tcp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6, flags, Numbers { seq, ack }, b"")
}

/// The backend's segment to the flow's SNAT pair, numbered `seq`,
/// acknowledging `ack`.
fn from_backend(backend: SocketAddrV6, snat: SocketAddrV6, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    numbered_tcp6_frame(
        mac_of6(*backend.ip()),
        LB_MAC,
        backend,
        snat,
        flags,
        Numbers { seq, ack },
        b"",
    )
}

/// Opens `client`'s flow with a SYN and returns what reached the backend.
fn syn(lab: &PacketLab, client: SocketAddrV6) -> Tcp6View {
    let (verdict, out) = lab.run(&to_vip(client, SYN));
    assert_eq!(
        verdict, XDP_REDIRECT,
        "the SYN is forwarded (towards veth0: the test run arrives on lo)"
    );
    parse_checked6(&out)
}

#[test]
fn an_ipv6_syn_to_the_vip_is_full_natted_to_a_backend_with_a_valid_checksum() {
    in_ipv6_lab(|lab, v6| {
        let client = client6(40000);
        let out = syn(&lab, client);
        let (backend, snat) = v6.pinned(client, IPPROTO_TCP).expect("the SYN pinned a flow");
        assert!(BACKENDS6.contains(&backend));
        assert_eq!(*snat.ip(), SNAT6);
        assert_eq!(
            out,
            Tcp6View {
                src_mac: LB_MAC,
                dst_mac: mac_of6(*backend.ip()),
                src: snat,
                dst: backend,
                hop_limit: 63,
                flags_syn: true,
                flags_rst: false,
                flags_ack: false,
                flags_fin: false,
                seq: SEQ,
                ack: 0,
                payload: Vec::new(),
            }
        );
        assert_eq!(
            v6.reverse_owner(backend, snat),
            Some(FlowKey6::from_client(client, VIP6)),
            "the SNAT pair is the flow's"
        );
        let stats = v6.backend_stats(backend);
        assert_eq!(
            (stats.packets_in, stats.bytes_in),
            (1, 60),
            "IPv6 header and bare TCP header"
        );
    });
}

#[test]
fn an_ipv6_backend_reply_is_translated_back_to_the_client_from_the_vip() {
    in_ipv6_lab(|lab, v6| {
        let client = client6(40001);
        syn(&lab, client);
        let (backend, snat) = v6.pinned(client, IPPROTO_TCP).expect("pinned");
        let (verdict, out) = lab.run(&from_backend(backend, snat, SYN_ACK, BACKEND_ISN, SEQ + 1));
        assert_eq!(verdict, XDP_REDIRECT);
        let view = parse_checked6(&out);
        assert_eq!((view.src, view.dst), (VIP6, client));
        assert_eq!((view.seq, view.ack), (BACKEND_ISN, SEQ + 1));
        assert_eq!(view.dst_mac, mac_of6(GATEWAY6), "towards the client's router");
        assert_eq!(view.hop_limit, 63);
        assert!(view.flags_syn && view.flags_ack);
        assert_eq!(v6.backend_stats(backend).handshakes, 1, "the SYN-ACK is counted");
    });
}

#[test]
fn a_pinned_ipv6_flow_keeps_its_backend_after_its_table_changes() {
    in_ipv6_lab(|lab, mut v6| {
        let client = client6(40002);
        syn(&lab, client);
        let (backend, snat) = v6.pinned(client, IPPROTO_TCP).expect("pinned");
        let other = *BACKENDS6.iter().find(|&&b| b != backend).expect("two backends");
        v6.send_all_to(other);
        let (verdict, out) = lab.run(&client_at(client, ACK, SEQ + 1, BACKEND_ISN + 1));
        assert_eq!(verdict, XDP_REDIRECT);
        let view = parse_checked6(&out);
        assert_eq!((view.src, view.dst), (snat, backend), "still its backend and pair");
        // A new client now goes to the other backend.
        let fresh = syn(&lab, client6(40003));
        assert_eq!(fresh.dst, other);
    });
}

#[test]
fn an_ipv6_flow_ends_after_both_fins_and_a_new_syn_on_its_tuple_opens_a_new_flow() {
    in_ipv6_lab(|lab, v6| {
        let client = client6(40004);
        syn(&lab, client);
        let (backend, snat) = v6.pinned(client, IPPROTO_TCP).expect("pinned");
        let isn = BACKEND_ISN;
        assert_eq!(
            lab.run(&from_backend(backend, snat, SYN_ACK, isn, SEQ + 1)).0,
            XDP_REDIRECT
        );
        assert_eq!(lab.run(&client_at(client, ACK, SEQ + 1, isn + 1)).0, XDP_REDIRECT);
        let established = v6.flow(client, IPPROTO_TCP).expect("flow").state;
        let (verdict, out) = lab.run(&client_at(client, FIN_ACK, SEQ + 1, isn + 1));
        assert_eq!(verdict, XDP_REDIRECT);
        assert!(parse_checked6(&out).flags_fin);
        let (verdict, out) = lab.run(&from_backend(backend, snat, FIN_ACK, isn + 1, SEQ + 2));
        assert_eq!(verdict, XDP_REDIRECT);
        assert!(parse_checked6(&out).flags_fin);
        let ended = v6.flow(client, IPPROTO_TCP).expect("an ended flow lingers").state;
        assert!(bg_lb_common::flow_state::has_ended(ended) && !bg_lb_common::flow_state::has_ended(established));
        // The same 5-tuple's next SYN is a new connection, on a free pair
        // (IPv6 takes an ended flow's pair over only when none is free).
        let again = syn(&lab, client);
        assert!(again.flags_syn && !again.flags_ack);
        let (_, new_snat) = v6.pinned(client, IPPROTO_TCP).expect("pinned again");
        assert_ne!(
            new_snat, snat,
            "the ended flow's pair is not reused while its entry stands"
        );
    });
}

#[test]
fn an_ipv6_rst_from_the_backend_ends_the_flow_and_is_counted_as_refused() {
    in_ipv6_lab(|lab, v6| {
        let client = client6(40005);
        syn(&lab, client);
        let (backend, snat) = v6.pinned(client, IPPROTO_TCP).expect("pinned");
        // A closed port's answer to the SYN: RST, acknowledging it.
        let (verdict, out) = lab.run(&from_backend(backend, snat, RST | ACK, 0, SEQ + 1));
        assert_eq!(verdict, XDP_REDIRECT);
        let view = parse_checked6(&out);
        assert!(view.flags_rst);
        assert_eq!((view.src, view.dst), (VIP6, client));
        assert_eq!(v6.backend_stats(backend).refused, 1);
        let state = v6.flow(client, IPPROTO_TCP).expect("flow").state;
        assert!(bg_lb_common::flow_state::has_ended(state));
    });
}

#[test]
fn an_ipv6_data_segment_of_no_flow_is_forwarded_by_the_table_without_pinning() {
    in_ipv6_lab(|lab, v6| {
        let client = client6(40006);
        let before = lab.counter(Counter::UnpinnedForwarded);
        let (verdict, out) = lab.run(&tcp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6, PSH_ACK, b"data"));
        assert_eq!(verdict, XDP_REDIRECT);
        let view = parse_checked6(&out);
        assert!(BACKENDS6.contains(&view.dst));
        assert_eq!(view.payload, b"data");
        assert_eq!(view.ack, ACK_NUMBER);
        assert_eq!(lab.counter(Counter::UnpinnedForwarded), before + 1);
        assert!(v6.flow(client, IPPROTO_TCP).is_none(), "a data segment pins nothing");
    });
}

#[test]
fn an_ipv6_frame_with_an_extension_header_to_a_vip_is_dropped_and_counted() {
    in_ipv6_lab(|lab, v6| {
        let frame = with_extension_header(&to_vip(client6(40007), SYN));
        let (verdict, _) = lab.run(&frame);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(lab.counter(Counter::Ipv6ExtensionHeader), 1);
        assert!(v6.flow(client6(40007), IPPROTO_TCP).is_none());
        // Elsewhere, an extension header is the kernel's business.
        let elsewhere = SocketAddrV6::new(SNAT6, 22, 0, 0);
        let frame = with_extension_header(&tcp6_frame(GATEWAY_MAC, LB_MAC, client6(40007), elsewhere, SYN, b""));
        let (verdict, out) = lab.run(&frame);
        assert_eq!((verdict, out), (XDP_PASS, frame));
        assert_eq!(lab.counter(Counter::Ipv6ExtensionHeader), 1);
    });
}

#[test]
fn neighbour_solicitations_and_ipv6_traffic_to_no_vip_pass_untouched() {
    in_ipv6_lab(|lab, _| {
        let passed = lab.counter(Counter::Passed);
        let solicitation = neighbour_solicitation(GATEWAY_MAC, GATEWAY6, SNAT6);
        let (verdict, out) = lab.run(&solicitation);
        assert_eq!((verdict, out), (XDP_PASS, solicitation));
        let solicitation = neighbour_solicitation(GATEWAY_MAC, GATEWAY6, *VIP6.ip());
        let (verdict, out) = lab.run(&solicitation);
        assert_eq!((verdict, out), (XDP_PASS, solicitation), "even for the VIP's address");
        let to_host = tcp6_frame(
            GATEWAY_MAC,
            LB_MAC,
            client6(40008),
            SocketAddrV6::new(SNAT6, 22, 0, 0),
            SYN,
            b"",
        );
        let (verdict, out) = lab.run(&to_host);
        assert_eq!((verdict, out), (XDP_PASS, to_host));
        let other_port = tcp6_frame(
            GATEWAY_MAC,
            LB_MAC,
            client6(40008),
            SocketAddrV6::new(*VIP6.ip(), 443, 0, 0),
            SYN,
            b"",
        );
        let (verdict, out) = lab.run(&other_port);
        assert_eq!((verdict, out), (XDP_PASS, other_port), "a VIP port without a service");
        assert_eq!(lab.counter(Counter::Passed), passed + 4);
    });
}

#[test]
fn an_ipv6_segment_whose_hop_limit_would_expire_is_dropped_and_counted() {
    in_ipv6_lab(|lab, v6| {
        let (verdict, _) = lab.run(&with_hop_limit(&to_vip(client6(40009), SYN), 1));
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(lab.counter(Counter::TtlExpired), 1);
        assert!(v6.flow(client6(40009), IPPROTO_TCP).is_none());
        let (verdict, out) = lab.run(&with_hop_limit(&to_vip(client6(40009), SYN), 2));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(parse_checked6(&out).hop_limit, 1);
    });
}

#[test]
fn an_ipv6_syn_with_no_backend_is_refused_with_a_valid_rst() {
    in_ipv6_lab(|lab, mut v6| {
        let client = client6(40010);
        v6.clear_tables();
        let (verdict, out) = lab.run(&to_vip(client, SYN));
        assert_eq!(verdict, XDP_TX);
        let view = parse_checked6(&out);
        assert_eq!(
            (view.src, view.dst, view.src_mac, view.dst_mac),
            (VIP6, client, LB_MAC, GATEWAY_MAC),
            "back where the SYN came from"
        );
        assert!(view.flags_rst && view.flags_ack);
        assert_eq!((view.seq, view.ack), (0, SEQ + 1));
        assert_eq!(out.len(), 14 + 40 + 20, "headers only");
        assert_eq!(lab.counter(Counter::Refused), 1);
    });
}

#[test]
fn ipv6_udp_is_full_natted_both_ways_with_valid_nonzero_checksums() {
    in_ipv6_lab(|lab, v6| {
        let client = client6(50000);
        let vip = SocketAddrV6::new(*VIP6.ip(), VIP6.port(), 0, 0);
        let (verdict, out) = lab.run(&udp6_frame(GATEWAY_MAC, LB_MAC, client, vip, b"ping"));
        assert_eq!(verdict, XDP_REDIRECT);
        let (backend, snat) = v6.pinned(client, IPPROTO_UDP).expect("the datagram pinned a flow");
        let view = parse_checked_udp6(&out);
        assert_eq!((view.src, view.dst, view.hop_limit), (snat, backend, 63));
        assert_eq!(view.payload, b"ping");
        let reply = udp6_frame(mac_of6(*backend.ip()), LB_MAC, backend, snat, b"pong");
        let (verdict, out) = lab.run(&reply);
        assert_eq!(verdict, XDP_REDIRECT);
        let view = parse_checked_udp6(&out);
        assert_eq!((view.src, view.dst), (vip, client));
        assert_eq!(view.payload, b"pong");
        assert_eq!(v6.backend_stats(backend).packets_out, 1);
    });
}

#[test]
fn an_ipv6_udp_checksum_that_translates_to_zero_is_sent_as_0xffff() {
    in_ipv6_lab(|lab, v6| {
        let client = client6(50002);
        assert_eq!(
            lab.run(&udp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6, b"open")).0,
            XDP_REDIRECT
        );
        let (backend, snat) = v6.pinned(client, IPPROTO_UDP).expect("pinned");
        // A payload whose last word cancels the rest of the translated
        // datagram's sum: its checksum computes to 0, which goes out as
        // 0xffff (the same in one's complement; 0 would say "none").
        let check_at = 14 + 40 + 6;
        let probe = udp6_frame(LB_MAC, LB_MAC, snat, backend, &[b'p', b'i', 0, 0]);
        let mut word = [probe[check_at], probe[check_at + 1]];
        if word == [0xff, 0xff] {
            word = [0, 0];
        }
        let payload = [b'p', b'i', word[0], word[1]];
        let (verdict, out) = lab.run(&udp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6, &payload));
        assert_eq!(verdict, XDP_REDIRECT);
        let view = parse_checked_udp6(&out);
        assert_eq!((view.src, view.dst), (snat, backend));
        assert_eq!(view.checksum, 0xffff);
    });
}

#[test]
fn an_ipv6_udp_datagram_without_a_checksum_to_the_vip_is_dropped_and_counted() {
    in_ipv6_lab(|lab, v6| {
        let client = client6(50001);
        let mut frame = udp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6, b"ping");
        frame[14 + 40 + 6..14 + 40 + 8].copy_from_slice(&[0, 0]);
        let (verdict, _) = lab.run(&frame);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(lab.counter(Counter::Udp6NoChecksum), 1);
        assert!(v6.flow(client, IPPROTO_UDP).is_none());
    });
}

/// `packet` (an IPv6 packet, from its header on) as the LB forwarded it:
/// its hop limit one less.
fn as_forwarded(packet: &[u8]) -> Vec<u8> {
    let mut packet = packet.to_vec();
    packet[7] -= 1;
    packet
}

#[test]
fn an_icmpv6_packet_too_big_about_a_packet_to_a_backend_reaches_the_client_translated() {
    in_ipv6_lab(|lab, _| {
        let client = client6(40011);
        let client_syn = to_vip(client, SYN);
        let (verdict, sent) = lab.run(&client_syn);
        assert_eq!(verdict, XDP_REDIRECT);
        let too_big = Icmpv6Type::PacketTooBig { mtu: 1280 };
        // A router on the backends' side (the gateway's address) found the
        // SYN, as the LB sent it, too big.
        let macs = (mac_of6(GATEWAY6), LB_MAC);
        let error = icmp6_error_frame(macs, GATEWAY6, SNAT6, 64, too_big, &sent[14..]);
        let (verdict, out) = lab.run(&error);
        assert_eq!(verdict, XDP_REDIRECT);
        // From the VIP to the client, quoting what the client sent (with the
        // hop limit the LB left it): every checksum as if built so.
        let macs = (LB_MAC, mac_of6(GATEWAY6));
        let expected = icmp6_error_frame(
            macs,
            *VIP6.ip(),
            *client.ip(),
            63,
            too_big,
            &as_forwarded(&client_syn[14..]),
        );
        assert_eq!(out, expected);
        assert_eq!(lab.counter(Counter::IcmpErrorToClient), 1);
    });
}

#[test]
fn an_icmpv6_error_about_a_packet_to_a_client_reaches_the_backend_translated() {
    in_ipv6_lab(|lab, v6| {
        let client = client6(40012);
        syn(&lab, client);
        let (backend, snat) = v6.pinned(client, IPPROTO_TCP).expect("pinned");
        let syn_ack = from_backend(backend, snat, SYN_ACK, BACKEND_ISN, SEQ + 1);
        let (verdict, sent) = lab.run(&syn_ack);
        assert_eq!(verdict, XDP_REDIRECT);
        let unreachable = Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Address);
        // The client's router could not deliver the SYN-ACK (from the VIP).
        let error = icmp6_error_frame(
            (GATEWAY_MAC, LB_MAC),
            GATEWAY6,
            *VIP6.ip(),
            64,
            unreachable,
            &sent[14..],
        );
        let (verdict, out) = lab.run(&error);
        assert_eq!(verdict, XDP_REDIRECT);
        let macs = (LB_MAC, mac_of6(*backend.ip()));
        let expected = icmp6_error_frame(
            macs,
            SNAT6,
            *backend.ip(),
            63,
            unreachable,
            &as_forwarded(&syn_ack[14..]),
        );
        assert_eq!(out, expected);
        assert_eq!(lab.counter(Counter::IcmpErrorToBackend), 1);
    });
}

#[test]
fn an_icmpv6_error_whose_quote_is_not_ipv6_passes_untouched_though_its_addresses_name_a_flow() {
    in_ipv6_lab(|lab, _| {
        let client = client6(40014);
        let (verdict, sent) = lab.run(&to_vip(client, SYN));
        assert_eq!(verdict, XDP_REDIRECT);
        // The SYN as the LB sent it, its version nibble no longer 6: the
        // addresses and ports still name the pinned flow's pair.
        let mut quote = sent[14..].to_vec();
        quote[0] = 0x40 | quote[0] & 0x0f;
        let error = icmp6_error_frame(
            (mac_of6(GATEWAY6), LB_MAC),
            GATEWAY6,
            SNAT6,
            64,
            Icmpv6Type::PacketTooBig { mtu: 1280 },
            &quote,
        );
        let (verdict, out) = lab.run(&error);
        assert_eq!((verdict, out), (XDP_PASS, error));
        assert_eq!(lab.counter(Counter::IcmpErrorToClient), 0);
    });
}

#[test]
fn an_icmpv6_error_quoting_no_pinned_flow_passes_untouched() {
    in_ipv6_lab(|lab, _| {
        let stranger = tcp6_frame(LB_MAC, GATEWAY_MAC, VIP6, client6(40013), SYN_ACK, b"");
        let error = icmp6_error_frame(
            (GATEWAY_MAC, LB_MAC),
            GATEWAY6,
            *VIP6.ip(),
            64,
            Icmpv6Type::PacketTooBig { mtu: 1280 },
            &stranger[14..],
        );
        let (verdict, out) = lab.run(&error);
        assert_eq!((verdict, out), (XDP_PASS, error));
        assert_eq!(lab.counter(Counter::IcmpErrorWithoutFlow), 1);
    });
}
