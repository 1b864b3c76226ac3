//! Packet tests (root) of the ICMPv6 Packet Too Big the LB answers an IPv6
//! packet too big for its egress link with: the real XDP program through
//! BPF_PROG_TEST_RUN in the packet lab, each test in its own network
//! namespace, with the lab's IPv6 services ([`PacketLab::add_ipv6_services`])
//! sending every new flow to one backend, and the route towards the backend
//! or the client limited to 1,280 bytes. Each answer is compared byte for
//! byte with one etherparse builds (so its ICMPv6 checksum is checked
//! against a full computation): from the address the sender sent to,
//! quoting the first 1,232 bytes of what the sender sent.

use std::net::{Ipv6Addr, SocketAddrV6};

use bg_lb::dataplane::forwarding::Forwarding;
use bg_lb_common::{
    counters::Counter,
    maps::{IPPROTO_TCP, IPPROTO_UDP},
    syn_proxy::{BACKEND_READY, SYN_PROXY_ALWAYS},
};
use bg_lb_tests::{
    netns::in_fresh_netns,
    packet_lab::{
        BACKENDS6, GATEWAY_MAC, GATEWAY6, Ipv6Services, LB_MAC, PacketLab, PacketLabOptions, SNAT6, VIP6, XDP_DROP,
        XDP_REDIRECT, XDP_TX, client6, mac_of6,
    },
    packets::{
        ACK, Numbers, PSH_ACK, SEQ, SYN, SYN_ACK, icmp6_error_frame, numbered_tcp6_frame, parse_checked6, udp6_frame,
    },
    require_root,
};
use etherparse::Icmpv6Type;

/// The narrow link's MTU: IPv6's minimum.
const NARROW: u16 = 1280;
/// What an answer quotes: as much as keeps it within 1,280 bytes.
const QUOTE: usize = 1280 - 40 - 8;
/// The backend's first sequence number.
const BACKEND_ISN: u32 = 7_000_000;
/// A payload that makes a TCP segment (60 bytes of headers) or UDP
/// datagram (48) larger than the narrow link takes.
const BIG: [u8; 1300] = [0x5a; 1300];

/// A lab whose IPv6 services forward by `forwarding` to `BACKENDS6[0]`.
fn in_lab(forwarding: Forwarding, test: impl FnOnce(PacketLab, Ipv6Services) + Send + 'static) {
    require_root();
    in_fresh_netns(move || {
        let lab = PacketLab::new(&PacketLabOptions::with_ratio(100));
        let mut v6 = lab.add_ipv6_services();
        v6.set_forwarding(forwarding);
        v6.send_all_to(BACKENDS6[0]);
        test(lab, v6)
    });
}

fn from_client(client: SocketAddrV6, flags: u8, numbers: Numbers, payload: &[u8]) -> Vec<u8> {
    numbered_tcp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6, flags, numbers, payload)
}

/// Opens `client`'s TCP flow (SYN, the backend's SYN-ACK to `reply_to`,
/// ACK) and returns its backend and source pair towards it.
fn established(lab: &PacketLab, v6: &Ipv6Services, client: SocketAddrV6) -> (SocketAddrV6, SocketAddrV6) {
    let syn = from_client(client, SYN, Numbers { seq: SEQ, ack: 0 }, b"");
    assert_eq!(lab.run(&syn).0, XDP_REDIRECT);
    let (backend, source) = v6.pinned(client, IPPROTO_TCP).expect("the SYN pinned a flow");
    let numbers = Numbers {
        seq: BACKEND_ISN,
        ack: SEQ + 1,
    };
    let syn_ack = numbered_tcp6_frame(mac_of6(*backend.ip()), LB_MAC, backend, source, SYN_ACK, numbers, b"");
    assert_eq!(lab.run(&syn_ack).0, XDP_REDIRECT);
    let ack = from_client(client, ACK, client_numbers(), b"");
    assert_eq!(lab.run(&ack).0, XDP_REDIRECT);
    (backend, source)
}

/// The client's numbers once its flow is established.
fn client_numbers() -> Numbers {
    Numbers {
        seq: SEQ + 1,
        ack: BACKEND_ISN + 1,
    }
}

/// The backend's numbers once the flow is established.
fn backend_numbers() -> Numbers {
    Numbers {
        seq: BACKEND_ISN + 1,
        ack: SEQ + 1,
    }
}

/// Runs `sent` and checks it was answered back out of the interface it came
/// in on with Packet Too Big from `from` to `to` (MACs swapped), reporting
/// the narrow MTU and quoting `sent`'s first bytes as they were sent.
fn assert_answered(lab: &PacketLab, sent: &[u8], from: Ipv6Addr, to: Ipv6Addr) {
    let (verdict, out) = lab.run_counting(sent, &[Counter::PacketTooBigAnswered]);
    assert_eq!(verdict, XDP_TX, "answered back where it came from");
    let macs = ([sent[0], sent[1], sent[2], sent[3], sent[4], sent[5]], {
        let mut src = [0; 6];
        src.copy_from_slice(&sent[6..12]);
        src
    });
    let expected = icmp6_error_frame(
        (macs.0, macs.1),
        from,
        to,
        64,
        Icmpv6Type::PacketTooBig { mtu: NARROW.into() },
        &sent[14..14 + QUOTE],
    );
    assert_eq!(out.len(), 14 + 1280, "the answer fills IPv6's minimum MTU, no more");
    assert_eq!(out, expected);
    assert_eq!(lab.counter(Counter::TooBigDropped), 0);
}

#[test]
fn a_client_segment_too_big_for_the_backends_link_is_answered_with_packet_too_big_from_the_vip() {
    in_lab(Forwarding::FullNat, |lab, v6| {
        lab.limit_path_mtu(*BACKENDS6[0].ip(), NARROW);
        let client = client6(41000);
        established(&lab, &v6, client);
        let big = from_client(client, PSH_ACK, client_numbers(), &BIG);
        assert_answered(&lab, &big, *VIP6.ip(), *client.ip());
    });
}

#[test]
fn a_backend_segment_too_big_for_the_clients_link_is_answered_with_packet_too_big_from_the_snat_address() {
    in_lab(Forwarding::FullNat, |lab, v6| {
        let client = client6(41001);
        lab.limit_path_mtu(*client.ip(), NARROW);
        let (backend, snat) = established(&lab, &v6, client);
        assert_eq!(*snat.ip(), SNAT6);
        let big = numbered_tcp6_frame(
            mac_of6(*backend.ip()),
            LB_MAC,
            backend,
            snat,
            PSH_ACK,
            backend_numbers(),
            &BIG,
        );
        assert_answered(&lab, &big, SNAT6, *backend.ip());
    });
}

#[test]
fn a_client_datagram_too_big_for_the_backends_link_is_answered_with_packet_too_big_from_the_vip() {
    in_lab(Forwarding::FullNat, |lab, v6| {
        lab.limit_path_mtu(*BACKENDS6[0].ip(), NARROW);
        let client = client6(41002);
        let small = udp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6, b"hello");
        assert_eq!(lab.run(&small).0, XDP_REDIRECT, "a datagram that fits is forwarded");
        assert!(v6.pinned(client, IPPROTO_UDP).is_some());
        let big = udp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6, &BIG);
        assert_answered(&lab, &big, *VIP6.ip(), *client.ip());
    });
}

#[test]
fn a_backend_datagram_too_big_for_the_clients_link_is_answered_with_packet_too_big_from_the_snat_address() {
    in_lab(Forwarding::FullNat, |lab, v6| {
        let client = client6(41003);
        lab.limit_path_mtu(*client.ip(), NARROW);
        let request = udp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6, b"hello");
        assert_eq!(lab.run(&request).0, XDP_REDIRECT);
        let (backend, snat) = v6.pinned(client, IPPROTO_UDP).expect("pinned");
        let big = udp6_frame(mac_of6(*backend.ip()), LB_MAC, backend, snat, &BIG);
        assert_answered(&lab, &big, SNAT6, *backend.ip());
    });
}

#[test]
fn a_gateway_client_segment_too_big_is_answered_from_the_vip_and_the_backends_reply_to_the_client() {
    in_lab(Forwarding::Gateway, |lab, v6| {
        lab.limit_path_mtu(*BACKENDS6[0].ip(), NARROW);
        let client = client6(41004);
        lab.limit_path_mtu(*client.ip(), NARROW);
        let (backend, source) = established(&lab, &v6, client);
        assert_eq!(source, client, "a gateway flow keeps the client's address");
        let big = from_client(client, PSH_ACK, client_numbers(), &BIG);
        assert_answered(&lab, &big, *VIP6.ip(), *client.ip());
        let reply = numbered_tcp6_frame(
            mac_of6(*backend.ip()),
            LB_MAC,
            backend,
            client,
            PSH_ACK,
            backend_numbers(),
            &BIG,
        );
        assert_answered(&lab, &reply, *client.ip(), *backend.ip());
    });
}

#[test]
fn a_dsr_client_datagram_too_big_for_the_backends_link_is_answered_from_the_vip() {
    in_lab(Forwarding::Dsr, |lab, v6| {
        lab.limit_path_mtu(*BACKENDS6[0].ip(), NARROW);
        let client = client6(41005);
        let small = udp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6, b"hello");
        assert_eq!(lab.run(&small).0, XDP_REDIRECT);
        assert!(v6.pinned(client, IPPROTO_UDP).is_some());
        let big = udp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6, &BIG);
        assert_answered(&lab, &big, *VIP6.ip(), *client.ip());
    });
}

#[test]
fn a_segment_that_fits_the_narrow_link_exactly_is_forwarded() {
    in_lab(Forwarding::FullNat, |lab, v6| {
        lab.limit_path_mtu(*BACKENDS6[0].ip(), NARROW);
        let client = client6(41006);
        established(&lab, &v6, client);
        let fits = from_client(client, PSH_ACK, client_numbers(), &[0x5a; 1280 - 60]);
        assert_eq!(lab.run(&fits).0, XDP_REDIRECT);
        assert_eq!(lab.counter(Counter::PacketTooBigAnswered), 0);
        assert_eq!(lab.counter(Counter::TooBigDropped), 0);
    });
}

#[test]
fn an_icmpv6_error_too_big_for_the_clients_link_is_dropped_not_answered() {
    in_lab(Forwarding::FullNat, |lab, v6| {
        let client = client6(41007);
        lab.limit_path_mtu(*client.ip(), NARROW);
        let (_, snat) = established(&lab, &v6, client);
        // The segment the LB sent the backend, as a router behind it quotes
        // it in full: the error is larger than the client's link takes.
        let sent = numbered_tcp6_frame(
            LB_MAC,
            mac_of6(GATEWAY6),
            snat,
            BACKENDS6[0],
            PSH_ACK,
            client_numbers(),
            &BIG,
        );
        let error = icmp6_error_frame(
            (mac_of6(GATEWAY6), LB_MAC),
            GATEWAY6,
            SNAT6,
            64,
            Icmpv6Type::PacketTooBig { mtu: 1400 },
            &sent[14..],
        );
        let (verdict, _) = lab.run_counting(&error, &[Counter::TooBigDropped]);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(lab.counter(Counter::PacketTooBigAnswered), 0);
    });
}

#[test]
fn a_too_big_datagram_from_a_multicast_source_is_dropped_not_answered() {
    in_lab(Forwarding::FullNat, |lab, v6| {
        lab.limit_path_mtu(*BACKENDS6[0].ip(), NARROW);
        let multicast = SocketAddrV6::new(Ipv6Addr::new(0xff0e, 0, 0, 0, 0, 0, 0, 5), 41008, 0, 0);
        let small = udp6_frame(GATEWAY_MAC, LB_MAC, multicast, VIP6, b"hello");
        assert_eq!(lab.run(&small).0, XDP_REDIRECT);
        assert!(
            v6.pinned(multicast, IPPROTO_UDP).is_some(),
            "a flow the answer could follow"
        );
        let big = udp6_frame(GATEWAY_MAC, LB_MAC, multicast, VIP6, &BIG);
        let (verdict, _) = lab.run_counting(&big, &[Counter::TooBigDropped]);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(lab.counter(Counter::PacketTooBigAnswered), 0);
    });
}

#[test]
fn a_syn_proxied_flows_segments_too_big_are_answered_quoting_their_senders_own_sequence_numbers() {
    in_lab(Forwarding::FullNat, |lab, mut v6| {
        v6.set_tcp_syn_proxy(SYN_PROXY_ALWAYS, 0, 1400);
        lab.limit_path_mtu(*BACKENDS6[0].ip(), NARROW);
        let client = client6(41009);
        lab.limit_path_mtu(*client.ip(), NARROW);
        let (verdict, syn_ack) = lab.run(&from_client(client, SYN, Numbers { seq: SEQ, ack: 0 }, b""));
        assert_eq!(verdict, XDP_REDIRECT, "the proxy's SYN-ACK");
        let cookie = parse_checked6(&syn_ack).seq;
        let proven = Numbers {
            seq: SEQ + 1,
            ack: cookie.wrapping_add(1),
        };
        let (verdict, syn) = lab.run(&from_client(client, ACK, proven, b""));
        assert_eq!(verdict, XDP_REDIRECT, "the proven ACK becomes the SYN to the backend");
        let syn = parse_checked6(&syn);
        let answered = Numbers {
            seq: BACKEND_ISN,
            ack: SEQ + 1,
        };
        let backend_mac = mac_of6(*syn.dst.ip());
        let backend_syn_ack = numbered_tcp6_frame(backend_mac, LB_MAC, syn.dst, syn.src, SYN_ACK, answered, b"");
        assert_eq!(
            lab.run(&backend_syn_ack).0,
            XDP_TX,
            "the LB completes the backend's handshake"
        );
        let flow = v6.flow(client, IPPROTO_TCP).expect("pinned");
        assert_eq!(flow.proxy & BACKEND_READY, BACKEND_READY);
        assert_ne!(flow.seq_delta, 0, "the backend's numbers differ from the client's");
        // The client acknowledges in its own numbers (the cookie's), which
        // the LB moves into the backend's: the quote has the client's.
        let big = from_client(client, PSH_ACK, proven, &BIG);
        assert_answered(&lab, &big, *VIP6.ip(), *client.ip());
        // The backend numbers its bytes its own way, which the LB moves into
        // the client's: the quote has the backend's.
        let reply = numbered_tcp6_frame(backend_mac, LB_MAC, syn.dst, syn.src, PSH_ACK, backend_numbers(), &BIG);
        assert_answered(&lab, &reply, SNAT6, *syn.dst.ip());
    });
}

#[test]
fn a_held_client_segment_too_big_for_the_backends_link_is_dropped_not_answered_towards_the_backend() {
    in_lab(Forwarding::FullNat, |lab, mut v6| {
        v6.set_tcp_syn_proxy(SYN_PROXY_ALWAYS, 0, 1400);
        lab.limit_path_mtu(*BACKENDS6[0].ip(), NARROW);
        let client = client6(41010);
        let (_, syn_ack) = lab.run(&from_client(client, SYN, Numbers { seq: SEQ, ack: 0 }, b""));
        let proven = Numbers {
            seq: SEQ + 1,
            ack: parse_checked6(&syn_ack).seq.wrapping_add(1),
        };
        let (verdict, syn) = lab.run(&from_client(client, ACK, proven, b""));
        assert_eq!(verdict, XDP_REDIRECT, "the proven ACK becomes the SYN to the backend");
        let syn = parse_checked6(&syn);
        let early = from_client(client, PSH_ACK, proven, &BIG);
        let (verdict, _) = lab.run_counting(&early, &[Counter::SynProxyHeld]);
        assert_eq!(verdict, XDP_DROP, "held until the backend answers");
        // The backend's SYN-ACK comes in from the backend's side: the held
        // segment sent in its place is too big, and its sender is not there.
        let answered = Numbers {
            seq: BACKEND_ISN,
            ack: SEQ + 1,
        };
        let backend_syn_ack =
            numbered_tcp6_frame(mac_of6(*syn.dst.ip()), LB_MAC, syn.dst, syn.src, SYN_ACK, answered, b"");
        // Room for the frame the segment was written into.
        let mut out = [0; 2048];
        let (verdict, _) = lab.run_into(&backend_syn_ack, &mut out);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(lab.counter(Counter::TooBigDropped), 1);
        assert_eq!(lab.counter(Counter::PacketTooBigAnswered), 0);
    });
}
