//! Packet tests (root) of the IPv6 flow lifecycle beyond forwarding: SNAT
//! port takeover, by unproxied connections and by those a SYN cookie
//! proves. The real XDP program through BPF_PROG_TEST_RUN in the
//! packet lab, each test in its own network namespace, with the lab's IPv6
//! services ([`PacketLab::add_ipv6_services`]) sending every new flow to one
//! backend from one SNAT port, so every SYN's only candidate is that pair.

use std::{net::SocketAddrV6, thread, time::Duration};

use bg_lb_common::{
    counters::Counter,
    maps::{FlowKey6, IPPROTO_TCP},
    port_reuse::SETTLE_NS,
    syn_proxy::{PROXIED, SYN_PROXY_ALWAYS},
};
use bg_lb_tests::{
    netns::in_fresh_netns,
    packet_lab::{
        BACKENDS6, GATEWAY_MAC, Ipv6Services, LB_MAC, PacketLab, PacketLabOptions, SNAT6, VIP6, XDP_REDIRECT, XDP_TX,
        client6, mac_of6,
    },
    packets::{ACK, FIN_ACK, Numbers, SEQ, SYN, SYN_ACK, numbered_tcp6_frame, parse_checked6},
    require_root,
};

/// The lab's one SNAT port.
const PORT: u16 = 40000;
/// The backend's first sequence number.
const BACKEND_ISN: u32 = 7_000_000;

/// The lab with SNAT port [`PORT`] only, every new IPv6 flow to
/// `BACKENDS6[0]`.
fn in_one_pair_lab(test: impl FnOnce(PacketLab, Ipv6Services) + Send + 'static) {
    in_one_pair_ipv4_lab(|lab| {
        let mut v6 = lab.add_ipv6_services();
        v6.send_all_to(BACKENDS6[0]);
        test(lab, v6)
    });
}

/// The lab with SNAT port [`PORT`] only, before its IPv6 services.
fn in_one_pair_ipv4_lab(test: impl FnOnce(PacketLab) + Send + 'static) {
    require_root();
    let options = PacketLabOptions {
        snat_ports: (PORT, PORT),
        ..PacketLabOptions::with_ratio(100)
    };
    in_fresh_netns(move || test(PacketLab::new(&options)));
}

fn pair() -> SocketAddrV6 {
    SocketAddrV6::new(SNAT6, PORT, 0, 0)
}

fn client_at(client: SocketAddrV6, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    numbered_tcp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6, flags, Numbers { seq, ack }, b"")
}

fn from_backend(flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let backend = BACKENDS6[0];
    numbered_tcp6_frame(
        mac_of6(*backend.ip()),
        LB_MAC,
        backend,
        pair(),
        flags,
        Numbers { seq, ack },
        b"",
    )
}

/// `client`'s handshake through the LB on the one pair.
fn handshake(lab: &PacketLab, v6: &Ipv6Services, client: SocketAddrV6) {
    assert_syn_forwarded(lab, v6, "the handshake's SYN", client);
    let steps = [
        from_backend(SYN_ACK, BACKEND_ISN, SEQ + 1),
        client_at(client, ACK, SEQ + 1, BACKEND_ISN + 1),
    ];
    for step in steps {
        assert_eq!(lab.run(&step).0, XDP_REDIRECT, "the handshake");
    }
}

/// A connection the client closed first, to its last ACK, which the backend
/// has had for longer than the data plane waits before it takes a pair
/// over (`port_reuse::SETTLE_NS`).
fn closed_by_client(lab: &PacketLab, v6: &Ipv6Services, client: SocketAddrV6) {
    handshake(lab, v6, client);
    let steps = [
        client_at(client, FIN_ACK, SEQ + 1, BACKEND_ISN + 1),
        from_backend(FIN_ACK, BACKEND_ISN + 1, SEQ + 2),
        client_at(client, ACK, SEQ + 2, BACKEND_ISN + 2),
    ];
    for step in steps {
        assert_eq!(lab.run(&step).0, XDP_REDIRECT, "the close");
    }
    let state = v6.flow(client, IPPROTO_TCP).expect("the ended flow lingers").state;
    assert!(bg_lb_common::flow_state::has_ended(state));
    thread::sleep(Duration::from_nanos(SETTLE_NS) + Duration::from_millis(50));
}

/// Turns the SYN proxy on for every SYN of the IPv6 TCP service, then sends
/// `client`'s SYN and the ACK proving the cookie of the SYN-ACK it gets:
/// the ACK's (verdict, frame out), and the cookie.
fn proxied_connection(lab: &PacketLab, v6: &mut Ipv6Services, client: SocketAddrV6) -> (u32, Vec<u8>, u32) {
    v6.set_tcp_syn_proxy(SYN_PROXY_ALWAYS, 0, 1400);
    let (verdict, out) = lab.run(&client_at(client, SYN, SEQ, 0));
    assert_eq!(verdict, XDP_REDIRECT, "the SYN is answered");
    let syn_ack = parse_checked6(&out);
    assert!(syn_ack.flags_syn && syn_ack.flags_ack, "with the proxy's SYN-ACK");
    assert_eq!((syn_ack.src, syn_ack.dst, syn_ack.ack), (VIP6, client, SEQ + 1));
    assert!(v6.flow(client, IPPROTO_TCP).is_none(), "a cookie keeps no state");
    let cookie = syn_ack.seq;
    let (verdict, out) = lab.run(&client_at(client, ACK, SEQ + 1, cookie.wrapping_add(1)));
    (verdict, out, cookie)
}

/// `client`'s SYN reached the backend from the one pair, which it owns now.
fn assert_syn_forwarded(lab: &PacketLab, v6: &Ipv6Services, what: &str, client: SocketAddrV6) {
    let (verdict, out) = lab.run(&client_at(client, SYN, SEQ, 0));
    assert_eq!(verdict, XDP_REDIRECT, "{what}: forwarded");
    let view = parse_checked6(&out);
    assert_eq!((view.src, view.dst), (pair(), BACKENDS6[0]), "{what}: from the pair");
    assert!(view.flags_syn && !view.flags_ack && view.seq == SEQ, "{what}: the SYN");
    assert_eq!(view.hop_limit, 63, "{what}: forwarded once");
    assert_eq!(
        v6.reverse_owner(BACKENDS6[0], pair()),
        Some(FlowKey6::from_client(client, VIP6)),
        "{what}: the pair is its flow's"
    );
    assert_eq!(
        v6.pinned(client, IPPROTO_TCP),
        Some((BACKENDS6[0], pair())),
        "{what}: pinned"
    );
}

/// `next`'s connection was refused for want of a pair, counted once, and
/// `open`'s flow kept its pair and still carries its segments.
fn assert_refused_beside(lab: &PacketLab, v6: &Ipv6Services, open: SocketAddrV6, next: SocketAddrV6) {
    assert_eq!(lab.counter(Counter::SnatPortsExhausted), 1, "counted once");
    assert_eq!(v6.backend_stats(BACKENDS6[0]).snat_exhausted, 1);
    assert_eq!(
        v6.reverse_owner(BACKENDS6[0], pair()),
        Some(FlowKey6::from_client(open, VIP6)),
        "the pair stays the open flow's"
    );
    assert!(
        v6.flow(next, IPPROTO_TCP).is_none(),
        "no flow for the refused connection"
    );
    let (verdict, out) = lab.run(&client_at(open, ACK, SEQ + 1, BACKEND_ISN + 1));
    assert_eq!(verdict, XDP_REDIRECT, "the open flow still carries its segments");
    assert_eq!(parse_checked6(&out).src, pair());
}

#[test]
fn an_ended_ipv6_flows_pair_goes_to_a_new_connection_when_no_free_pair_remains() {
    in_one_pair_lab(|lab, v6| {
        closed_by_client(&lab, &v6, client6(41000));
        let next = client6(41001);
        assert_syn_forwarded(&lab, &v6, "a SYN with no free pair", next);
        assert_eq!(lab.counter(Counter::SnatPortsExhausted), 0, "nothing refused");
        assert_eq!(
            v6.backend_stats(BACKENDS6[0]).snat_exhausted,
            0,
            "nor counted against the backend"
        );
        // The new connection is whole: its backend's SYN-ACK reaches it.
        let (verdict, out) = lab.run(&from_backend(SYN_ACK, BACKEND_ISN, SEQ + 1));
        assert_eq!(verdict, XDP_REDIRECT);
        let view = parse_checked6(&out);
        assert_eq!((view.src, view.dst), (VIP6, next), "to the new client");
        assert!(view.flags_syn && view.flags_ack);
    });
}

#[test]
fn an_open_ipv6_flows_pair_is_never_taken_and_the_new_connection_is_refused() {
    in_one_pair_lab(|lab, v6| {
        let open = client6(41010);
        handshake(&lab, &v6, open);
        thread::sleep(Duration::from_nanos(SETTLE_NS) + Duration::from_millis(50));
        let next = client6(41011);
        let (verdict, out) = lab.run(&client_at(next, SYN, SEQ, 0));
        assert_eq!(verdict, XDP_TX, "refused at once");
        let rst = parse_checked6(&out);
        assert!(rst.flags_rst && rst.ack == SEQ + 1, "a RST acknowledging the SYN");
        assert_eq!((rst.src, rst.dst), (VIP6, next));
        assert_refused_beside(&lab, &v6, open, next);
    });
}

#[test]
fn a_proxied_ipv6_connection_takes_over_an_ended_flows_pair_when_no_free_pair_remains() {
    in_one_pair_lab(|lab, mut v6| {
        closed_by_client(&lab, &v6, client6(41020));
        let next = client6(41021);
        let (verdict, out, cookie) = proxied_connection(&lab, &mut v6, next);
        assert_eq!(verdict, XDP_REDIRECT, "the proven ACK becomes the SYN to the backend");
        let syn = parse_checked6(&out);
        assert_eq!(
            (syn.src, syn.dst, syn.dst_mac),
            (pair(), BACKENDS6[0], mac_of6(*BACKENDS6[0].ip())),
            "from the ended flow's pair"
        );
        assert!(syn.flags_syn && !syn.flags_ack && !syn.flags_rst && syn.payload.is_empty());
        assert_eq!(
            (syn.seq, syn.hop_limit),
            (SEQ, 64),
            "the client's ISN, in the LB's own SYN"
        );
        assert_eq!(lab.counter(Counter::SynCookieValid), 1);
        assert_eq!(lab.counter(Counter::SnatPortsExhausted), 0, "nothing refused");
        assert_eq!(v6.backend_stats(BACKENDS6[0]).snat_exhausted, 0);
        assert_eq!(
            v6.reverse_owner(BACKENDS6[0], pair()),
            Some(FlowKey6::from_client(next, VIP6)),
            "the pair is the proxied flow's"
        );
        let flow = v6.flow(next, IPPROTO_TCP).expect("the proxied flow");
        assert_eq!(flow.proxy & PROXIED, PROXIED);
        assert_eq!(flow.server_isn, cookie, "the cookie is the VIP's ISN");
        // The backend's SYN-ACK gets the ACK the client would have sent.
        let (verdict, out) = lab.run(&from_backend(SYN_ACK, BACKEND_ISN, SEQ + 1));
        assert_eq!(verdict, XDP_TX, "answered back to the backend");
        let ack = parse_checked6(&out);
        assert_eq!((ack.src, ack.dst), (pair(), BACKENDS6[0]));
        assert!(ack.flags_ack && !ack.flags_syn && !ack.flags_rst);
        assert_eq!((ack.seq, ack.ack), (SEQ + 1, BACKEND_ISN + 1));
    });
}

#[test]
fn a_proxied_ipv6_connection_never_takes_an_open_flows_pair_and_is_refused() {
    in_one_pair_lab(|lab, mut v6| {
        let open = client6(41030);
        handshake(&lab, &v6, open);
        thread::sleep(Duration::from_nanos(SETTLE_NS) + Duration::from_millis(50));
        let next = client6(41031);
        let (verdict, out, cookie) = proxied_connection(&lab, &mut v6, next);
        assert_eq!(verdict, XDP_TX, "refused at once");
        let rst = parse_checked6(&out);
        assert!(rst.flags_rst, "a RST");
        assert_eq!((rst.src, rst.dst), (VIP6, next));
        assert_eq!(rst.seq, cookie.wrapping_add(1), "where the ACK said the VIP was");
        assert_eq!(lab.counter(Counter::SynCookieValid), 0, "no backend side opened");
        assert_refused_beside(&lab, &v6, open, next);
    });
}

/// The sweeper may leave the IPv6 tables unwalked only after a sweep found
/// no IPv6 service and no IPv6 entry: a flow its removed service left keeps
/// them busy until a sweep ends it.
#[test]
fn the_ipv6_tables_are_idle_only_with_no_ipv6_service_and_no_ipv6_entry() {
    in_one_pair_ipv4_lab(|lab| {
        assert!(lab.sweep_report(false).ipv6_idle, "an IPv4-only data plane");
        let mut v6 = lab.add_ipv6_services();
        v6.send_all_to(BACKENDS6[0]);
        assert!(!lab.sweep_report(false).ipv6_idle, "an IPv6 service");
        let client = client6(41000);
        handshake(&lab, &v6, client);
        v6.remove_services();
        lab.sweep_report(true);
        assert!(
            v6.flow(client, IPPROTO_TCP).is_some(),
            "a sweep told to skip IPv6 leaves its flow"
        );
        let report = lab.sweep_report(false);
        assert!(!report.ipv6_idle, "the removed service's flow was read: {report:?}");
        assert!(v6.flow(client, IPPROTO_TCP).is_none(), "and ended with its service");
        assert!(
            v6.reverse_owner(BACKENDS6[0], pair()).is_none(),
            "and its reverse entry"
        );
        assert!(lab.sweep_report(false).ipv6_idle, "nothing IPv6 is left");
    });
}
