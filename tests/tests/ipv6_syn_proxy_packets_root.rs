//! SYN proxy packet tests (root) on an IPv6 VIP: the real XDP program, its
//! IPv6 SYN proxy jobs included, through BPF_PROG_TEST_RUN in the packet
//! lab, with the lab's IPv6 TCP service ([`PacketLab::add_ipv6_services`])
//! in each proxy mode. Every emitted frame's TCP checksum is checked
//! against a full computation; the SYN cookie is the kernel's, so a test
//! proves it by the ACK that carries it opening the backend side.

use std::net::SocketAddrV6;

use bg_lb_common::{
    counters::Counter,
    maps::{Flow6, IPPROTO_TCP},
    syn_proxy::{BACKEND_READY, HELD, PROXIED, SYN_PROXY_ALWAYS, SYN_PROXY_AUTO, WATCHED},
};
use bg_lb_tests::{
    netns::in_fresh_netns,
    packet_lab::{
        BACKENDS6, GATEWAY_MAC, GATEWAY6, Ipv6Services, LB_MAC, PacketLab, PacketLabOptions, SNAT6, VIP6, XDP_DROP,
        XDP_REDIRECT, XDP_TX, client6, mac_of6,
    },
    packets::{
        ACK, Numbers, PSH_ACK, SEQ, SYN, SYN_ACK, Tcp6View, icmp6_error_frame, linux_syn_options, numbered_tcp6_frame,
        parse_checked6, window_and_options,
    },
    require_root,
};
use etherparse::{Icmpv6Type, PacketBuilder, TcpOptionElement};

/// The MSS the service's SYN-ACKs would offer on IPv4 (`syn_proxy_mss`).
const SERVICE_MSS: u16 = 1400;
/// What an IPv6 SYN-ACK offers: 20 bytes less, for the larger header.
const OFFERED_MSS6: u16 = SERVICE_MSS - 20;
/// The backend's ISN in its SYN-ACKs.
const BACKEND_ISN: u32 = 0x9000_0000;

/// A lab whose IPv6 TCP service's SYN proxy is in `mode` (with `threshold`).
fn in_proxy_lab(mode: u32, threshold: u32, test: impl FnOnce(PacketLab, Ipv6Services) + Send + 'static) {
    require_root();
    in_fresh_netns(move || {
        let lab = PacketLab::new(&PacketLabOptions::with_ratio(100));
        let mut services = lab.add_ipv6_services();
        services.set_tcp_syn_proxy(mode, threshold, SERVICE_MSS);
        test(lab, services)
    });
}

/// A SYN as Linux sends it over IPv6: MSS `mss`, SACK permitted,
/// timestamps, window scaling (the proxy keeps none but the MSS).
fn linux_syn6(from: SocketAddrV6, mss: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(GATEWAY_MAC, LB_MAC)
        .ipv6(from.ip().octets(), VIP6.ip().octets(), 64)
        .tcp(from.port(), VIP6.port(), SEQ, 64800)
        .syn()
        .options(&linux_syn_options(mss))
        .expect("options fit");
    let mut frame = Vec::with_capacity(builder.size(0));
    builder.write(&mut frame, b"").expect("frame builds");
    frame
}

/// A client segment to the VIP with `flags`, `(seq, ack)` and `payload`.
fn from_client(from: SocketAddrV6, flags: u8, (seq, ack): (u32, u32), payload: &[u8]) -> Vec<u8> {
    numbered_tcp6_frame(GATEWAY_MAC, LB_MAC, from, VIP6, flags, Numbers { seq, ack }, payload)
}

/// The backend's segment answering `to_backend` (a frame the LB sent it).
fn from_backend(to_backend: &Tcp6View, flags: u8, (seq, ack): (u32, u32), payload: &[u8]) -> Vec<u8> {
    numbered_tcp6_frame(
        mac_of6(*to_backend.dst.ip()),
        LB_MAC,
        to_backend.dst,
        to_backend.src,
        flags,
        Numbers { seq, ack },
        payload,
    )
}

/// Checks that `(verdict, out)` is the proxy's SYN-ACK to `from`'s SYN and
/// returns its cookie.
fn assert_cookie_syn_ack((verdict, out): (u32, Vec<u8>), from: SocketAddrV6) -> u32 {
    // Routed to the client's router, out of veth0 (the test run comes in on lo).
    assert_eq!(verdict, XDP_REDIRECT, "the SYN-ACK goes where the client is routed");
    assert_eq!(out.len(), 14 + 40 + 24, "Ethernet + IPv6 + TCP with one option");
    let syn_ack = parse_checked6(&out);
    assert_eq!((syn_ack.src, syn_ack.dst), (VIP6, from), "from the VIP to the client");
    assert_eq!(
        (syn_ack.src_mac, syn_ack.dst_mac),
        (LB_MAC, mac_of6(GATEWAY6)),
        "to the client's router"
    );
    assert!(
        syn_ack.flags_syn && syn_ack.flags_ack && !syn_ack.flags_rst && !syn_ack.flags_fin,
        "SYN-ACK"
    );
    assert_eq!(syn_ack.ack, SEQ + 1, "acknowledges the SYN");
    assert_eq!(syn_ack.hop_limit, 64);
    assert!(syn_ack.payload.is_empty());
    assert_eq!(
        window_and_options(&out),
        (OFFERED_MSS6, vec![TcpOptionElement::MaximumSegmentSize(OFFERED_MSS6)]),
        "the offered MSS only (no window scaling, SACK or timestamps), and a window of one segment"
    );
    syn_ack.seq
}

/// A client's handshake through the proxy up to its ACK: (cookie, the SYN
/// the LB sent the backend in the ACK's place).
fn handshake(lab: &PacketLab, from: SocketAddrV6) -> (u32, Tcp6View) {
    let (cookie, syn) = handshake_frame(lab, from);
    (cookie, parse_checked6(&syn))
}

/// [`handshake`], with the SYN to the backend as sent.
fn handshake_frame(lab: &PacketLab, from: SocketAddrV6) -> (u32, Vec<u8>) {
    let cookie = assert_cookie_syn_ack(
        lab.run_counting(&linux_syn6(from, 1440), &[Counter::SynCookieSent]),
        from,
    );
    let (verdict, syn) = lab.run_counting(
        &from_client(from, ACK, (SEQ + 1, cookie.wrapping_add(1)), b""),
        &[Counter::SynCookieValid],
    );
    assert_eq!(verdict, XDP_REDIRECT, "the proven ACK becomes the SYN to the backend");
    (cookie, syn)
}

fn flow(v6: &Ipv6Services, from: SocketAddrV6) -> Flow6 {
    v6.flow(from, IPPROTO_TCP)
        .unwrap_or_else(|| panic!("a flow for {from}"))
}

#[test]
fn an_ipv6_syn_in_always_mode_gets_a_cookie_syn_ack_and_opens_no_flow() {
    in_proxy_lab(SYN_PROXY_ALWAYS, 0, |lab, v6| {
        let from = client6(41000);
        let out = lab.run_counting(&linux_syn6(from, 1440), &[Counter::SynCookieSent]);
        assert_cookie_syn_ack(out, from);
        assert!(v6.flow(from, IPPROTO_TCP).is_none(), "a cookie keeps no state");
        for backend in BACKENDS6 {
            assert_eq!(v6.backend_stats(backend).packets_in, 0, "no backend saw it");
        }
    });
}

#[test]
fn an_ack_proving_its_ipv6_cookie_opens_the_backend_with_the_clients_syn() {
    in_proxy_lab(SYN_PROXY_ALWAYS, 0, |lab, v6| {
        let from = client6(41001);
        let (cookie, frame) = handshake_frame(&lab, from);
        let (backend, snat) = v6.pinned(from, IPPROTO_TCP).expect("the proven ACK pinned a flow");
        assert_eq!(
            parse_checked6(&frame),
            Tcp6View {
                src_mac: LB_MAC,
                dst_mac: mac_of6(*backend.ip()),
                src: snat,
                dst: backend,
                hop_limit: 64,
                flags_syn: true,
                flags_rst: false,
                flags_ack: false,
                flags_fin: false,
                seq: SEQ,
                ack: 0,
                payload: Vec::new(),
            },
            "the client's ISN, from the flow's SNAT pair"
        );
        assert_eq!(*snat.ip(), SNAT6);
        assert_eq!(
            window_and_options(&frame),
            (64240, vec![TcpOptionElement::MaximumSegmentSize(1440)]),
            "the client's window (its ACK's), and the MSS the cookie encodes (the client's 1440, in the kernel's \
             IPv6 table)"
        );
        let flow = flow(&v6, from);
        assert_eq!(flow.proxy & (PROXIED | BACKEND_READY), PROXIED);
        assert_eq!(flow.server_isn, cookie, "the cookie is the VIP's ISN");
    });
}

#[test]
fn an_ipv6_ack_with_a_bad_cookie_is_dropped_and_counted() {
    in_proxy_lab(SYN_PROXY_ALWAYS, 0, |lab, v6| {
        let from = client6(41002);
        let cookie = assert_cookie_syn_ack(lab.run(&linux_syn6(from, 1440)), from);
        for bad in [cookie.wrapping_add(2), cookie ^ 0x0100_0000] {
            let (verdict, _) = lab.run_counting(
                &from_client(from, ACK, (SEQ + 1, bad.wrapping_add(1)), b""),
                &[Counter::SynCookieInvalid],
            );
            assert_eq!(verdict, XDP_DROP);
        }
        let (verdict, _) = lab.run_counting(
            &from_client(client6(41003), ACK, (SEQ + 1, cookie.wrapping_add(1)), b""),
            &[Counter::SynCookieInvalid],
        );
        assert_eq!(verdict, XDP_DROP, "another client's cookie proves nothing");
        assert!(v6.flow(from, IPPROTO_TCP).is_none() && v6.flow(client6(41003), IPPROTO_TCP).is_none());
        assert_eq!(lab.counter(Counter::SynCookieValid), 0);
    });
}

#[test]
fn the_backends_ipv6_syn_ack_is_answered_and_the_flow_translates_sequence_numbers() {
    in_proxy_lab(SYN_PROXY_ALWAYS, 0, |lab, v6| {
        let from = client6(41004);
        let (cookie, syn) = handshake(&lab, from);
        let (verdict, out) = lab.run(&from_backend(&syn, SYN_ACK, (BACKEND_ISN, SEQ + 1), b""));
        assert_eq!(
            verdict, XDP_TX,
            "the backend's SYN-ACK is answered, back where it came from"
        );
        let ack = parse_checked6(&out);
        assert_eq!((ack.src, ack.dst), (syn.src, syn.dst));
        assert_eq!((ack.src_mac, ack.dst_mac), (LB_MAC, mac_of6(*syn.dst.ip())));
        assert!(ack.flags_ack && !ack.flags_syn && !ack.flags_rst);
        assert_eq!((ack.seq, ack.ack), (SEQ + 1, BACKEND_ISN + 1));
        assert_eq!(flow(&v6, from).proxy & BACKEND_READY, BACKEND_READY);
        let (backend, _) = v6.pinned(from, IPPROTO_TCP).expect("pinned");
        assert_eq!(v6.backend_stats(backend).handshakes, 1, "the handshake is counted");

        let request = b"GET / HTTP/1.1\r\n\r\n";
        let (verdict, out) = lab.run(&from_client(from, PSH_ACK, (SEQ + 1, cookie.wrapping_add(1)), request));
        assert_eq!(verdict, XDP_REDIRECT);
        let data = parse_checked6(&out);
        assert_eq!((data.src, data.dst), (syn.src, syn.dst));
        assert_eq!(
            (data.seq, data.ack),
            (SEQ + 1, BACKEND_ISN + 1),
            "the ack in the backend's numbering"
        );
        assert_eq!(data.payload, request);

        let response = b"HTTP/1.1 200 OK\r\n\r\n";
        let end = SEQ + 1 + request.len() as u32;
        let (verdict, out) = lab.run(&from_backend(&syn, PSH_ACK, (BACKEND_ISN + 1, end), response));
        assert_eq!(verdict, XDP_REDIRECT);
        let back = parse_checked6(&out);
        assert_eq!((back.src, back.dst), (VIP6, from));
        assert_eq!(
            (back.seq, back.ack),
            (cookie.wrapping_add(1), end),
            "the seq in the client's numbering"
        );
        assert_eq!(back.payload, response);
    });
}

#[test]
fn an_icmpv6_error_about_a_proxied_flows_segment_to_its_client_reaches_the_backend_in_its_own_numbers() {
    in_proxy_lab(SYN_PROXY_ALWAYS, 0, |lab, _| {
        let from = client6(41005);
        let (cookie, syn) = handshake(&lab, from);
        let (verdict, _) = lab.run(&from_backend(&syn, SYN_ACK, (BACKEND_ISN, SEQ + 1), b""));
        assert_eq!(verdict, XDP_TX);
        let response = b"HTTP/1.1 200 OK\r\n\r\n";
        let sent_backend = from_backend(&syn, PSH_ACK, (BACKEND_ISN + 1, SEQ + 1), response);
        let (verdict, to_client) = lab.run(&sent_backend);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            parse_checked6(&to_client).seq,
            cookie.wrapping_add(1),
            "the client's numbering"
        );
        // The client's router found the response, as the LB sent it, too big.
        let too_big = Icmpv6Type::PacketTooBig { mtu: 1280 };
        let error = icmp6_error_frame(
            (GATEWAY_MAC, LB_MAC),
            GATEWAY6,
            *VIP6.ip(),
            64,
            too_big,
            &to_client[14..],
        );
        let (verdict, out) = lab.run(&error);
        assert_eq!(verdict, XDP_REDIRECT);
        // To the backend from the SNAT pair, quoting the response as the
        // backend sent it (its own sequence number, which its stack checks),
        // but for the hop limit the LB left it: every checksum as if built so.
        let mut quote = sent_backend[14..].to_vec();
        quote[7] -= 1;
        let expected = icmp6_error_frame(
            (LB_MAC, mac_of6(*syn.dst.ip())),
            *syn.src.ip(),
            *syn.dst.ip(),
            63,
            too_big,
            &quote,
        );
        assert_eq!(out, expected);
    });
}

#[test]
fn an_early_ipv6_client_segment_is_held_and_delivered_in_place_of_the_handshakes_ack() {
    in_proxy_lab(SYN_PROXY_ALWAYS, 0, |lab, v6| {
        let from = client6(41005);
        let (cookie, syn) = handshake(&lab, from);
        let request = b"early request";
        let (verdict, _) = lab.run_counting(
            &from_client(from, PSH_ACK, (SEQ + 1, cookie.wrapping_add(1)), request),
            &[Counter::SynProxyHeld],
        );
        assert_eq!(verdict, XDP_DROP, "held, not sent before the backend answered");
        assert_eq!(flow(&v6, from).proxy & HELD, HELD);
        let (verdict, out) = lab.run(&from_backend(&syn, SYN_ACK, (BACKEND_ISN, SEQ + 1), b""));
        assert_eq!(verdict, XDP_REDIRECT, "the held segment is forwarded to the backend");
        let data = parse_checked6(&out);
        assert_eq!((data.src, data.dst), (syn.src, syn.dst));
        assert_eq!((data.seq, data.ack), (SEQ + 1, BACKEND_ISN + 1));
        assert!(data.flags_ack && !data.flags_syn);
        assert_eq!(data.payload, request);
        let flow = flow(&v6, from);
        assert_eq!(flow.proxy & (HELD | BACKEND_READY), BACKEND_READY);
        let (backend, _) = v6.pinned(from, IPPROTO_TCP).expect("pinned");
        assert_eq!(
            v6.backend_stats(backend).handshakes,
            1,
            "the held segment completes the handshake"
        );
    });
}

#[test]
fn an_ipv6_service_in_auto_mode_engages_the_proxy_when_syns_go_unanswered() {
    in_proxy_lab(SYN_PROXY_AUTO, 2, |lab, v6| {
        for port in [41010, 41011, 41012] {
            let (verdict, out) = lab.run(&from_client(client6(port), SYN, (SEQ, 0), b""));
            assert_eq!(verdict, XDP_REDIRECT, "below the threshold: to a backend");
            assert!(parse_checked6(&out).flags_syn);
            assert_eq!(
                flow(&v6, client6(port)).proxy,
                WATCHED,
                "the detector waits for its handshake"
            );
        }
        // Three requests, none completed, over a threshold of 2: flooded.
        let from = client6(41013);
        let out = lab.run_counting(&linux_syn6(from, 1440), &[Counter::SynCookieSent]);
        assert_cookie_syn_ack(out, from);
        assert!(v6.flow(from, IPPROTO_TCP).is_none());
        handshake(&lab, client6(41014));
    });
}

#[test]
fn an_ipv6_service_with_the_proxy_off_forwards_syns_as_before() {
    in_proxy_lab(0, 0, |lab, v6| {
        let from = client6(41020);
        let (verdict, out) = lab.run(&linux_syn6(from, 1440));
        assert_eq!(verdict, XDP_REDIRECT);
        let syn = parse_checked6(&out);
        assert!(syn.flags_syn && !syn.flags_ack);
        assert_eq!((syn.src.ip(), syn.seq, syn.hop_limit), (&SNAT6, SEQ, 63));
        assert_eq!(flow(&v6, from).proxy, 0, "no proxy bits");
        assert_eq!(lab.counter(Counter::SynCookieSent), 0);
    });
}
