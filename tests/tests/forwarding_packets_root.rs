//! Packet tests (root) of the forwarding modes besides full NAT: `gateway`
//! (destination rewritten only; the backend's reply to the client rewritten
//! from the VIP) and `dsr` (MACs rewritten only). The real XDP program runs
//! through BPF_PROG_TEST_RUN in the packet lab; each test runs in its own
//! network namespace. Output frames are compared byte for byte with frames
//! built from scratch, so the incremental checksums are checked against
//! full computations.

use std::net::{Ipv4Addr, SocketAddrV4};

use bg_lb::dataplane::{
    forwarding::Forwarding,
    syn_proxy::{SynProxy, SynProxyMode},
};
use bg_lb_common::{counters::Counter, flow_state, maps::FlowKey};
use bg_lb_tests::{
    netns::in_fresh_netns,
    packet_lab::{
        BACKEND_ISN, BLUE, GATEWAY_MAC, LB_MAC, PacketLab, PacketLabOptions, VIP, XDP_DROP, XDP_PASS, XDP_REDIRECT,
        XDP_TX, client, from_client, mac_of,
    },
    packets::{
        ACK, FIN_ACK, Numbers, PSH_ACK, RST, SEQ, SYN, SYN_ACK, icmp_error_frame, numbered_tcp_frame, parse_checked,
        parse_checked_icmp, quote_of, tcp_frame, with_ttl,
    },
    require_root,
};
use etherparse::{Icmpv4Type, icmpv4::DestUnreachableHeader};

/// A second VIP, for the gateway collision.
const VIP_2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 101), 80);

fn in_lab(forwarding: Forwarding, test: impl FnOnce(PacketLab) + Send + 'static) {
    require_root();
    in_fresh_netns(move || {
        test(PacketLab::new(&PacketLabOptions {
            forwarding,
            ..PacketLabOptions::with_ratio(100)
        }))
    });
}

/// Sends `from`'s SYN to the VIP and checks it reached `backend` with only
/// its destination rewritten, and that the reply's (backend, client) key
/// names its flow.
fn assert_gateway_syn_forwarded(lab: &PacketLab, what: &str, from: SocketAddrV4, backend: SocketAddrV4) {
    let (verdict, out) = lab.run(&from_client(from, SYN));
    assert_eq!(verdict, XDP_REDIRECT, "{what}: forwarded");
    let view = parse_checked(&out);
    assert_eq!(
        (view.src, view.dst),
        (from, backend),
        "{what}: the backend sees the client"
    );
    // As the client sent it but for the destination, the TTL a router
    // takes off, and the MACs: checksums computed from scratch.
    let expected = with_ttl(&tcp_frame(LB_MAC, mac_of(*backend.ip()), from, backend, SYN, b""), 63);
    assert_eq!(out, expected, "{what}: bytes");
    assert_eq!(
        lab.reverse_nat_on(backend, from),
        Some(FlowKey::from_client(from, VIP)),
        "{what}: the reply's (backend, client) key names the flow"
    );
}

/// Sends `from`'s SYN to [`VIP_2`] and checks it was refused with a RST
/// from that VIP, counted as a gateway collision.
fn assert_second_vips_syn_refused(lab: &PacketLab, what: &str, from: SocketAddrV4) {
    let collisions = lab.counter(Counter::GatewayCollision);
    let (verdict, out) = lab.run(&tcp_frame(GATEWAY_MAC, LB_MAC, from, VIP_2, SYN, b""));
    assert_eq!(verdict, XDP_TX, "{what}: refused at once");
    let rst = parse_checked(&out);
    assert!(rst.flags_rst, "{what}: a RST");
    assert_eq!((rst.src, rst.dst), (VIP_2, from), "{what}: from the second VIP");
    assert_eq!(
        lab.counter(Counter::GatewayCollision),
        collisions + 1,
        "{what}: counted"
    );
}

#[test]
fn gateway_syn_has_only_its_destination_rewritten_with_valid_checksums() {
    in_lab(Forwarding::Gateway, |lab| {
        let from = client(1000);
        assert_gateway_syn_forwarded(&lab, "a SYN", from, lab.table_pick(from));
    });
}

#[test]
fn gateway_backend_reply_to_the_client_leaves_from_the_vip_and_establishes_the_flow() {
    in_lab(Forwarding::Gateway, |lab| {
        let from = client(1001);
        // The SYN-ACK and the client's ACK go through the reply path and the
        // client path: handshake() asserts both are forwarded.
        let connection = lab.handshake(from);
        assert_eq!(connection.snat, from, "the backend replies to the client's own address");
        let flow = lab.flow(from).expect("pinned");
        assert_eq!(flow_state::phase(flow.state), flow_state::FlowPhase::Established);

        let reply = connection.from_backend(PSH_ACK, b"hello");
        let (verdict, out) = lab.run(&reply);
        assert_eq!(verdict, XDP_REDIRECT);
        let numbers = Numbers {
            seq: BACKEND_ISN + 1,
            ack: SEQ + 1,
        };
        let expected = with_ttl(
            &numbered_tcp_frame(LB_MAC, GATEWAY_MAC, VIP, from, PSH_ACK, numbers, b"hello"),
            63,
        );
        assert_eq!(out, expected, "source VIP:port, nothing else but TTL and MACs");
    });
}

#[test]
fn gateway_backend_packet_matching_no_flow_passes_to_the_kernel_untouched() {
    in_lab(Forwarding::Gateway, |lab| {
        let passed = lab.counter(Counter::Passed);
        let stray = tcp_frame(mac_of(*BLUE[0].ip()), LB_MAC, BLUE[0], client(2000), PSH_ACK, b"x");
        let (verdict, out) = lab.run(&stray);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, stray);
        assert_eq!(lab.counter(Counter::Passed), passed + 1);
    });
}

/// The sweep leaves a live backend's reverse entries for the port
/// lifecycle; one whose gateway flow is gone must not take a later
/// connection's packets from that backend to the same client port.
#[test]
fn gateway_backend_packet_whose_reverse_entry_outlived_its_flow_passes_to_the_kernel_untouched() {
    in_lab(Forwarding::Gateway, |lab| {
        let from = client(1003);
        let connection = lab.handshake(from);
        lab.nat_maps().evict_flow(&FlowKey::from_client(from, VIP));
        assert!(
            lab.reverse_nat_on(connection.backend, from).is_some(),
            "the reverse entry outlives the flow"
        );
        let direct = tcp_frame(
            mac_of(*connection.backend.ip()),
            LB_MAC,
            connection.backend,
            from,
            SYN_ACK,
            b"",
        );
        let passed = lab.counter(Counter::Passed);
        let (verdict, out) = lab.run(&direct);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, direct);
        assert_eq!(lab.counter(Counter::Passed), passed + 1);
    });
}

/// A client that connects to a backend directly, from a port whose gateway
/// flow to that backend has ended, reuses the flow's 4-tuple: the ended
/// connection's last segments still leave from the VIP, the new
/// connection's (a fresh ISN) pass to the kernel untouched.
#[test]
fn gateway_ended_flow_keeps_its_last_segments_and_passes_a_direct_connection_on_its_4_tuple() {
    in_lab(Forwarding::Gateway, |lab| {
        let from = client(1004);
        let c = lab.handshake(from);
        let backend_fin = c.from_backend(FIN_ACK, b"");
        assert_eq!(lab.run(&backend_fin).0, XDP_REDIRECT);
        let client_fin = c.from_client_at(FIN_ACK, c.client_next, c.backend_next + 1, b"");
        assert_eq!(lab.run(&client_fin).0, XDP_REDIRECT);
        let flow = lab.flow(from).expect("pinned while it lingers");
        assert!(flow_state::has_ended(flow.state));

        let final_ack = c.from_backend_at(ACK, c.backend_next + 1, c.client_next + 1, b"");
        let (verdict, out) = lab.run(&final_ack);
        assert_eq!(verdict, XDP_REDIRECT, "the ended connection's final ACK");
        assert_eq!((parse_checked(&out).src, parse_checked(&out).dst), (VIP, from));

        let fresh_isn = BACKEND_ISN.wrapping_add(0x4000_0000);
        let direct = |flags, seq, payload: &'static [u8]| c.from_backend_at(flags, seq, 77_001, payload);
        for frame in [
            direct(SYN_ACK, fresh_isn, b""),
            direct(PSH_ACK, fresh_isn + 1, b"direct"),
        ] {
            let passed = lab.counter(Counter::Passed);
            let (verdict, out) = lab.run(&frame);
            assert_eq!(verdict, XDP_PASS, "a connection that did not go through the VIP");
            assert_eq!(out, frame);
            assert_eq!(lab.counter(Counter::Passed), passed + 1);
        }
    });
}

/// The client's stack reused its port for the same VIP while the backend,
/// which closed first, may still hold TIME_WAIT on the 4-tuple (this SYN
/// is one it would not accept, right after the flow's last packet): the
/// backend and the client settle that, as without a load balancer, so the
/// SYN is forwarded. The same client port through another VIP would be
/// another connection on that 4-tuple, refused before and after.
#[test]
fn gateway_syn_on_an_ended_flows_own_5_tuple_is_forwarded_at_once_and_another_vips_is_refused() {
    in_lab(Forwarding::Gateway, |mut lab| {
        lab.keep_only(BLUE[0]);
        lab.add_service(VIP_2);
        let from = client(1006);
        let c = lab.handshake(from);
        assert_eq!(lab.run(&c.from_backend(FIN_ACK, b"")).0, XDP_REDIRECT);
        let client_fin = c.from_client_at(FIN_ACK, c.client_next, c.backend_next + 1, b"");
        assert_eq!(lab.run(&client_fin).0, XDP_REDIRECT);
        let final_ack = c.from_backend_at(ACK, c.backend_next + 1, c.client_next + 1, b"");
        assert_eq!(lab.run(&final_ack).0, XDP_REDIRECT);
        let ended = lab.flow(from).expect("the ended flow lingers");
        assert!(flow_state::has_ended(ended.state));
        assert_ne!(ended.state & flow_state::BACKEND_CLOSED_FIRST, 0);

        assert_second_vips_syn_refused(&lab, "another VIP's SYN on the ended flow's 4-tuple", from);
        assert_gateway_syn_forwarded(&lab, "the same 5-tuple's SYN", from, BLUE[0]);
        let flow = lab.flow(from).expect("the new flow");
        assert!(
            !flow_state::has_ended(flow.state),
            "a new, live flow replaced the ended one"
        );
        assert_second_vips_syn_refused(&lab, "another VIP's SYN on the new flow's 4-tuple", from);
        assert_eq!(lab.counter(Counter::GatewayCollision), 2, "no other refusal");

        let (verdict, out) = lab.run(&c.from_backend_at(SYN_ACK, BACKEND_ISN, SEQ + 1, b""));
        assert_eq!(verdict, XDP_REDIRECT);
        let syn_ack = parse_checked(&out);
        assert_eq!((syn_ack.src, syn_ack.dst), (VIP, from), "the new connection's SYN-ACK");
    });
}

#[test]
fn gateway_syn_on_the_5_tuple_of_a_flow_just_reset_is_forwarded_at_once() {
    in_lab(Forwarding::Gateway, |lab| {
        let from = client(1007);
        let c = lab.handshake(from);
        assert_eq!(lab.run(&c.from_client(RST, b"")).0, XDP_REDIRECT, "the client's RST");
        let flow = lab.flow(from).expect("the reset flow lingers");
        assert_ne!(flow.state & flow_state::RESET, 0);
        assert_gateway_syn_forwarded(&lab, "the same 5-tuple's SYN", from, c.backend);
        assert_eq!(lab.counter(Counter::GatewayCollision), 0);
        assert!(!flow_state::has_ended(lab.flow(from).expect("the new flow").state));
    });
}

#[test]
fn gateway_collision_refuses_the_second_vips_syn_with_a_rst_and_keeps_the_first_flow() {
    in_lab(Forwarding::Gateway, |mut lab| {
        // One backend behind two VIPs: one client ip:port to both would
        // reach the backend as one connection.
        lab.keep_only(BLUE[0]);
        lab.add_service(VIP_2);
        let from = client(1002);
        let connection = lab.open(from);
        assert_eq!(connection.backend, BLUE[0]);

        assert_second_vips_syn_refused(&lab, "the second VIP's SYN", from);
        assert_eq!(lab.counter(Counter::SnatPortsExhausted), 0);

        assert_eq!(lab.reverse_nat_on(BLUE[0], from), Some(FlowKey::from_client(from, VIP)));
        let (verdict, out) = lab.run(&connection.from_backend(PSH_ACK, b""));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            parse_checked(&out).src,
            VIP,
            "the reply still belongs to the first VIP's flow"
        );
    });
}

#[test]
fn gateway_icmp_error_from_the_backend_about_a_forwarded_packet_reaches_the_client_about_the_vip() {
    in_lab(Forwarding::Gateway, |lab| {
        let from = client(1007);
        let (_, emitted) = lab.run(&from_client(from, SYN));
        let backend = parse_checked(&emitted).dst;
        let unreachable = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
        let error = icmp_error_frame(
            mac_of(*backend.ip()),
            LB_MAC,
            *backend.ip(),
            *from.ip(),
            unreachable,
            &quote_of(&emitted, 20),
        );
        let (verdict, out) = lab.run(&error);
        assert_eq!(verdict, XDP_REDIRECT);
        let icmp = parse_checked_icmp(&out);
        assert_eq!(icmp.dst, *from.ip());
        assert_eq!(
            (icmp.quoted_src, icmp.quoted_dst),
            (from, VIP),
            "the quote is of the packet the client sent"
        );
        assert_eq!(lab.counter(Counter::IcmpErrorToClient), 1);
    });
}

#[test]
fn gateway_syn_proxy_opens_the_backend_from_the_clients_address_and_translates_its_replies() {
    require_root();
    in_fresh_netns(|| {
        let lab = PacketLab::new(&PacketLabOptions {
            forwarding: Forwarding::Gateway,
            syn_proxy: SynProxy {
                mode: SynProxyMode::Always,
                ..SynProxy::default()
            },
            ..PacketLabOptions::with_ratio(100)
        });
        let from = client(1008);
        let (verdict, out) = lab.run(&from_client(from, SYN));
        // Routed to the client out of veth0: a redirect, as the lab's test
        // runs come in on another interface.
        assert_eq!(verdict, XDP_REDIRECT, "answered with a cookie");
        let cookie = parse_checked(&out).seq;

        let ack = numbered_tcp_frame(
            GATEWAY_MAC,
            LB_MAC,
            from,
            VIP,
            ACK,
            Numbers {
                seq: SEQ + 1,
                ack: cookie.wrapping_add(1),
            },
            b"",
        );
        let (verdict, out) = lab.run(&ack);
        assert_eq!(verdict, XDP_REDIRECT);
        let syn = parse_checked(&out);
        assert!(syn.flags_syn && !syn.flags_ack);
        assert_eq!(syn.src, from, "the backend's SYN comes from the client");

        let syn_ack = numbered_tcp_frame(
            mac_of(*syn.dst.ip()),
            LB_MAC,
            syn.dst,
            from,
            SYN_ACK,
            Numbers {
                seq: BACKEND_ISN,
                ack: SEQ + 1,
            },
            b"",
        );
        let (verdict, out) = lab.run(&syn_ack);
        assert_eq!(verdict, XDP_TX, "the proxy completes the backend's handshake");
        let completing = parse_checked(&out);
        assert_eq!((completing.src, completing.dst), (from, syn.dst));

        let data = numbered_tcp_frame(
            mac_of(*syn.dst.ip()),
            LB_MAC,
            syn.dst,
            from,
            PSH_ACK,
            Numbers {
                seq: BACKEND_ISN + 1,
                ack: SEQ + 1,
            },
            b"hi",
        );
        let (verdict, out) = lab.run(&data);
        assert_eq!(verdict, XDP_REDIRECT);
        let reply = parse_checked(&out);
        assert_eq!((reply.src, reply.dst), (VIP, from));
        assert_eq!(
            reply.seq,
            cookie.wrapping_add(1),
            "in the numbering the client got from the cookie"
        );
    });
}

#[test]
fn open_connections_keep_the_mode_they_were_opened_in_when_the_service_switches() {
    in_lab(Forwarding::FullNat, |mut lab| {
        let old = client(1009);
        let connection = lab.handshake(old);
        assert_ne!(connection.snat, old, "full NAT");

        lab.set_forwarding(Forwarding::Dsr);
        let (verdict, out) = lab.run(&connection.from_client(PSH_ACK, b"x"));
        assert_eq!(verdict, XDP_REDIRECT);
        let view = parse_checked(&out);
        assert_eq!(
            (view.src, view.dst),
            (connection.snat, connection.backend),
            "still NATed"
        );

        let new = client(1010);
        let (verdict, out) = lab.run(&from_client(new, SYN));
        assert_eq!(verdict, XDP_REDIRECT);
        let view = parse_checked(&out);
        assert_eq!((view.src, view.dst), (new, VIP), "a new connection is forwarded by MAC");
    });
}

#[test]
fn dsr_packets_have_only_their_macs_rewritten_and_keep_no_reverse_entry() {
    in_lab(Forwarding::Dsr, |lab| {
        let from = client(1003);
        let backend = lab.table_pick(from);
        for (flags, ack) in [(SYN, 0), (ACK, BACKEND_ISN + 1), (PSH_ACK, BACKEND_ISN + 1)] {
            let numbers = Numbers {
                seq: if flags == SYN { SEQ } else { SEQ + 1 },
                ack,
            };
            let frame = numbered_tcp_frame(GATEWAY_MAC, LB_MAC, from, VIP, flags, numbers, b"");
            let (verdict, out) = lab.run(&frame);
            assert_eq!(verdict, XDP_REDIRECT);
            let expected = numbered_tcp_frame(LB_MAC, mac_of(*backend.ip()), from, VIP, flags, numbers, b"");
            assert_eq!(out, expected, "IP and TCP untouched, TTL included");
        }
        let flow = lab.flow(from).expect("pinned");
        assert_eq!(
            flow_state::phase(flow.state),
            flow_state::FlowPhase::Established,
            "the client's ACK of the SYN-ACK it got from the backend establishes the flow"
        );
        assert!(lab.reverse_nats().is_empty(), "no reply path, no reverse entry");
    });
}

#[test]
fn dsr_client_fin_ends_the_flow_as_the_lb_never_sees_the_backends() {
    in_lab(Forwarding::Dsr, |lab| {
        let from = client(1006);
        let numbers = Numbers {
            seq: SEQ + 1,
            ack: BACKEND_ISN + 1,
        };
        assert_eq!(lab.run(&from_client(from, SYN)).0, XDP_REDIRECT);
        for flags in [ACK, FIN_ACK] {
            let frame = numbered_tcp_frame(GATEWAY_MAC, LB_MAC, from, VIP, flags, numbers, b"");
            assert_eq!(lab.run(&frame).0, XDP_REDIRECT);
        }
        let flow = lab.flow(from).expect("lingers for its last ACKs");
        assert_eq!(flow_state::phase(flow.state), flow_state::FlowPhase::Closed);
    });
}

#[test]
fn dsr_mid_stream_ack_without_a_flow_is_pinned_to_the_tables_backend() {
    in_lab(Forwarding::Dsr, |lab| {
        let from = client(1004);
        let readopted = lab.counter(Counter::FlowReadopted);
        let (verdict, out) = lab.run(&from_client(from, ACK));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(parse_checked(&out).dst_mac, mac_of(*lab.table_pick(from).ip()));
        assert_eq!(lab.counter(Counter::FlowReadopted), readopted + 1);
        assert!(lab.flow(from).is_some(), "another LB host's flow is taken over");
    });
}

#[test]
fn dsr_to_a_backend_behind_a_router_is_dropped_and_counted() {
    in_lab(Forwarding::Dsr, |mut lab| {
        lab.keep_only(BLUE[0]);
        lab.route_via_gateway(*BLUE[0].ip());
        let (verdict, _) = lab.run(&from_client(client(1005), SYN));
        assert_eq!(verdict, XDP_DROP, "a MAC rewrite cannot reach it");
        assert_eq!(lab.counter(Counter::DsrNotOnLink), 1);
    });
}
