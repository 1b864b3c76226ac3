//! SYN proxy packet tests (root): the real XDP program, its SYN proxy job
//! programs included, runs through BPF_PROG_TEST_RUN on crafted frames in
//! the packet lab; verdicts, output bytes, every checksum (etherparse), the
//! counters and the flow table are checked.
//!
//! Single frames are the rows of [`rows`]; the handshake and what follows it
//! are sequences, each a test of its own.

use std::net::{Ipv4Addr, SocketAddrV4};

use bg_lb::dataplane::syn_proxy::{SynProxy, SynProxyMode};
use bg_lb_common::{
    counters::Counter,
    flow_state,
    maps::{Flow, FlowKey},
    syn_proxy::{BACKEND_READY, HELD, PROXIED, SERVER_ISN_KNOWN, WATCHED},
};
use bg_lb_tests::{
    netns::in_fresh_netns,
    packet_lab::{
        GATEWAY_MAC, LB_MAC, PacketLab, PacketLabOptions, SNAT, SNAT_PORTS, VIP, XDP_DROP, XDP_REDIRECT, XDP_TX,
        client, from_client, mac_of,
    },
    packets::{
        ACK, Numbers, PSH_ACK, RST, SEQ, SYN, SYN_ACK, TcpView, icmp_error_frame, linux_syn_options,
        numbered_tcp_frame, parse_checked, parse_checked_icmp, quote_of, window_and_options,
    },
    require_root,
};
use etherparse::{Icmpv4Type, PacketBuilder, TcpOptionElement, icmpv4::DestUnreachableHeader};

/// The MSS the proxy's SYN-ACKs offer in these tests.
const OFFERED_MSS: u16 = 1400;
/// The backend's ISN in its SYN-ACKs.
const BACKEND_ISN: u32 = 0x9000_0000;

fn proxy(mode: SynProxyMode, threshold: u32) -> SynProxy {
    SynProxy {
        mode,
        threshold,
        mss: OFFERED_MSS,
    }
}

fn in_lab(syn_proxy: SynProxy, test: impl FnOnce(PacketLab) + Send + 'static) {
    require_root();
    in_fresh_netns(move || {
        test(PacketLab::new(&PacketLabOptions {
            syn_proxy,
            ..PacketLabOptions::with_ratio(100)
        }))
    });
}

/// A client in 198.18.0.0/15, which the lab routes nowhere: a spoofed
/// flood's source.
const UNROUTABLE_CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 7), 41010);
/// A client on the LB's own link with no neighbour entry.
const ON_LINK_CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 77), 41011);
/// A router other than the lab's gateway, which a SYN may come through
/// when the routes are asymmetric.
const OTHER_ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x77];

/// `frame` with source MAC `mac`.
fn from_mac(mac: [u8; 6], mut frame: Vec<u8>) -> Vec<u8> {
    frame[6..12].copy_from_slice(&mac);
    frame
}

/// A SYN as Linux sends it: MSS `mss`, SACK permitted, timestamps, window
/// scaling (the proxy keeps none but the MSS).
fn linux_syn(from: SocketAddrV4, mss: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(GATEWAY_MAC, LB_MAC)
        .ipv4(from.ip().octets(), VIP.ip().octets(), 64)
        .tcp(from.port(), VIP.port(), SEQ, 64240)
        .syn()
        .options(&linux_syn_options(mss))
        .expect("options fit");
    let mut frame = Vec::with_capacity(builder.size(0));
    builder.write(&mut frame, b"").expect("frame builds");
    frame
}

/// A segment from `from` to the VIP with `flags`, `(seq, ack)` and `payload`.
fn from_client_at(from: SocketAddrV4, flags: u8, (seq, ack): (u32, u32), payload: &[u8]) -> Vec<u8> {
    numbered_tcp_frame(GATEWAY_MAC, LB_MAC, from, VIP, flags, Numbers { seq, ack }, payload)
}

/// The backend's segment answering `to_backend` (a frame the LB sent it).
fn from_backend(to_backend: &TcpView, flags: u8, (seq, ack): (u32, u32), payload: &[u8]) -> Vec<u8> {
    numbered_tcp_frame(
        mac_of(*to_backend.dst.ip()),
        LB_MAC,
        to_backend.dst,
        to_backend.src,
        flags,
        Numbers { seq, ack },
        payload,
    )
}

/// A cookie SYN-ACK follows the route to its client, out of the lab's
/// `veth0`: a redirect, since the lab's test runs come in on another
/// interface (on a real link, in on the route's interface, it is XDP_TX).
const SYN_ACK_VERDICT: u32 = XDP_REDIRECT;

/// Checks that `out` is the proxy's SYN-ACK to `from`'s SYN and returns its
/// cookie.
fn assert_cookie_syn_ack(verdict: u32, out: &[u8], from: SocketAddrV4) -> u32 {
    assert_eq!(verdict, SYN_ACK_VERDICT, "the SYN-ACK goes where the client is routed");
    assert_eq!(out.len(), 14 + 20 + 24, "Ethernet + IPv4 + TCP with one option");
    let syn_ack = parse_checked(out);
    assert_eq!((syn_ack.src, syn_ack.dst), (VIP, from), "from the VIP to the client");
    assert_eq!(
        (syn_ack.src_mac, syn_ack.dst_mac),
        (LB_MAC, GATEWAY_MAC),
        "back where it came from"
    );
    assert!(syn_ack.flags_syn && syn_ack.flags_ack && !syn_ack.flags_rst, "SYN-ACK");
    assert_eq!(syn_ack.ack, SEQ + 1, "acknowledges the SYN");
    assert_eq!(syn_ack.ttl, 64);
    assert_eq!(
        window_and_options(out),
        (OFFERED_MSS, vec![TcpOptionElement::MaximumSegmentSize(OFFERED_MSS)]),
        "the offered MSS only (no window scaling, SACK or timestamps), and a window of one segment"
    );
    syn_ack.seq
}

/// A client's handshake through the proxy up to its ACK: (cookie, the SYN
/// the LB sent the backend in the ACK's place).
fn handshake(lab: &PacketLab, from: SocketAddrV4, mss: u16) -> (u32, Vec<u8>) {
    let (verdict, out) = lab.run(&linux_syn(from, mss));
    let cookie = assert_cookie_syn_ack(verdict, &out, from);
    let (verdict, syn) = lab.run_counting(
        &from_client_at(from, ACK, (SEQ + 1, cookie.wrapping_add(1)), b""),
        &[Counter::SynCookieValid],
    );
    assert_eq!(verdict, XDP_REDIRECT, "the proven ACK becomes the SYN to the backend");
    (cookie, syn)
}

/// A handshake completed on both sides: (cookie, the LB's SYN to the
/// backend as sent).
fn proxied_connection(lab: &PacketLab, from: SocketAddrV4) -> (u32, TcpView) {
    let (cookie, syn) = handshake(lab, from, 1460);
    let syn = parse_checked(&syn);
    let (verdict, _) = lab.run(&from_backend(&syn, SYN_ACK, (BACKEND_ISN, SEQ + 1), b""));
    assert_eq!(verdict, XDP_TX, "the backend's SYN-ACK is answered");
    (cookie, syn)
}

fn flow(lab: &PacketLab, from: SocketAddrV4) -> Flow {
    lab.flow(from).unwrap_or_else(|| panic!("a flow for {from}"))
}

// --- Rows: one frame each --------------------------------------------------

/// One frame into a lab with `syn_proxy`, and what must come of it.
struct Row {
    name: &'static str,
    syn_proxy: SynProxy,
    frame: Vec<u8>,
    from: SocketAddrV4,
    verdict: u32,
    /// Counters the frame moves by exactly one.
    counted: &'static [Counter],
    /// What else must hold of the output and the lab.
    check: fn(&PacketLab, &[u8], SocketAddrV4),
}

fn no_flow(lab: &PacketLab, _: &[u8], _: SocketAddrV4) {
    assert!(lab.flows().is_empty(), "no flow and so no SNAT port: {:?}", lab.flows());
}

/// A row whose SYN, from `from`, gets a cookie SYN-ACK (checked by
/// [`assert_cookie_syn_ack`]) and leaves no flow.
fn cookie_row(name: &'static str, frame: Vec<u8>, from: SocketAddrV4) -> Row {
    Row {
        name,
        syn_proxy: proxy(SynProxyMode::Always, 1000),
        frame,
        from,
        verdict: SYN_ACK_VERDICT,
        counted: &[Counter::SynCookieSent],
        check: |lab, out, from| {
            assert_cookie_syn_ack(SYN_ACK_VERDICT, out, from);
            no_flow(lab, out, from);
        },
    }
}

fn rows() -> Vec<Row> {
    let always = proxy(SynProxyMode::Always, 1000);
    let mut bad_checksum = linux_syn(client(41003), 1460);
    bad_checksum[14 + 20 + 16] ^= 0xff;
    vec![
        cookie_row(
            "syn_in_proxy_mode_gets_a_cookie_syn_ack_from_the_vip_and_no_flow_or_port",
            linux_syn(client(41000), 1460),
            client(41000),
        ),
        Row {
            name: "syn_from_a_source_the_host_cannot_route_gets_no_syn_ack",
            syn_proxy: always,
            frame: linux_syn(UNROUTABLE_CLIENT, 1460),
            from: UNROUTABLE_CLIENT,
            verdict: XDP_DROP,
            counted: &[Counter::FibFailed],
            check: |lab, out, from| {
                assert_eq!(lab.counter(Counter::SynCookieSent), 0, "no SYN-ACK");
                no_flow(lab, out, from);
            },
        },
        cookie_row(
            "syn_ack_follows_the_route_to_the_client_not_the_mac_the_syn_came_from",
            from_mac(OTHER_ROUTER_MAC, linux_syn(client(41004), 1460)),
            client(41004),
        ),
        Row {
            name: "syn_ack_to_a_client_whose_next_hop_is_unresolved_goes_back_to_the_syns_sender",
            syn_proxy: always,
            frame: from_mac(OTHER_ROUTER_MAC, linux_syn(ON_LINK_CLIENT, 1460)),
            from: ON_LINK_CLIENT,
            verdict: XDP_TX,
            counted: &[Counter::SynCookieSent],
            check: |lab, out, from| {
                let syn_ack = parse_checked(out);
                assert_eq!((syn_ack.src, syn_ack.dst), (VIP, from), "from the VIP to the client");
                assert_eq!(
                    (syn_ack.src_mac, syn_ack.dst_mac),
                    (LB_MAC, OTHER_ROUTER_MAC),
                    "back to the sender"
                );
                assert!(syn_ack.flags_syn && syn_ack.flags_ack);
                no_flow(lab, out, from);
            },
        },
        Row {
            name: "syn_to_a_group_mac_is_never_answered",
            syn_proxy: always,
            frame: {
                let mut syn = linux_syn(client(41002), 1460);
                syn[..6].copy_from_slice(&[0xff; 6]);
                syn
            },
            from: client(41002),
            verdict: XDP_DROP,
            counted: &[Counter::SynCookieInvalid],
            check: no_flow,
        },
        cookie_row(
            "bare_syn_without_options_gets_a_cookie_syn_ack_too",
            from_client(client(41001), SYN),
            client(41001),
        ),
        Row {
            name: "forged_ack_without_a_valid_cookie_is_dropped_and_counted_and_creates_nothing",
            syn_proxy: always,
            frame: from_client_at(client(41002), ACK, (SEQ + 1, 0x1234_5678), b""),
            from: client(41002),
            verdict: XDP_DROP,
            counted: &[Counter::SynCookieInvalid],
            check: no_flow,
        },
        Row {
            name: "syn_with_a_bad_tcp_checksum_is_dropped_unanswered",
            syn_proxy: always,
            frame: bad_checksum,
            from: client(41003),
            verdict: XDP_DROP,
            counted: &[Counter::SynProxyBadChecksum],
            check: no_flow,
        },
        Row {
            name: "stray_rst_without_a_flow_is_dropped_while_the_proxy_is_on",
            syn_proxy: always,
            frame: from_client(client(41004), RST),
            from: client(41004),
            verdict: XDP_DROP,
            counted: &[Counter::SynCookieInvalid],
            check: no_flow,
        },
        Row {
            name: "syn_with_the_proxy_off_goes_to_the_backend_as_before",
            syn_proxy: proxy(SynProxyMode::Off, 1000),
            frame: linux_syn(client(41005), 1460),
            from: client(41005),
            verdict: XDP_REDIRECT,
            counted: &[],
            check: |lab, out, from| {
                let sent = parse_checked(&linux_syn(from, 1460));
                let syn = parse_checked(out);
                assert_eq!(syn.dst, lab.table_pick(from), "to the table's backend");
                assert_eq!((syn.seq, syn.payload.clone()), (sent.seq, sent.payload), "as sent");
                assert_eq!(window_and_options(out), window_and_options(&linux_syn(from, 1460)));
                let flow = flow(lab, from);
                assert_eq!((flow.state, flow.proxy), (flow_state::SYN_SEEN, 0));
                assert_eq!(lab.counter(Counter::SynCookieSent), 0);
            },
        },
        Row {
            name: "syn_in_auto_mode_below_the_threshold_goes_to_the_backend_watched",
            syn_proxy: proxy(SynProxyMode::Auto, 1000),
            frame: linux_syn(client(41006), 1460),
            from: client(41006),
            verdict: XDP_REDIRECT,
            counted: &[],
            check: |lab, out, from| {
                assert_eq!(parse_checked(out).dst, lab.table_pick(from));
                assert_eq!(flow(lab, from).proxy, WATCHED, "the detector waits for its completion");
                assert!(!lab.syn_proxy_active());
            },
        },
    ]
}

fn run_row(name: &'static str) {
    let row = rows()
        .into_iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no row {name}"));
    in_lab(row.syn_proxy, move |lab| {
        let (verdict, out) = lab.run_counting(&row.frame, row.counted);
        assert_eq!(verdict, row.verdict, "{name}: verdict");
        (row.check)(&lab, &out, row.from);
    });
}

bg_lb_tests::row_tests!(
    rows().iter().map(|r| r.name).collect::<Vec<_>>();
    syn_in_proxy_mode_gets_a_cookie_syn_ack_from_the_vip_and_no_flow_or_port,
    syn_to_a_group_mac_is_never_answered,
    syn_from_a_source_the_host_cannot_route_gets_no_syn_ack,
    syn_ack_follows_the_route_to_the_client_not_the_mac_the_syn_came_from,
    syn_ack_to_a_client_whose_next_hop_is_unresolved_goes_back_to_the_syns_sender,
    bare_syn_without_options_gets_a_cookie_syn_ack_too,
    forged_ack_without_a_valid_cookie_is_dropped_and_counted_and_creates_nothing,
    syn_with_a_bad_tcp_checksum_is_dropped_unanswered,
    stray_rst_without_a_flow_is_dropped_while_the_proxy_is_on,
    syn_with_the_proxy_off_goes_to_the_backend_as_before,
    syn_in_auto_mode_below_the_threshold_goes_to_the_backend_watched,
);

// --- Sequences -------------------------------------------------------------

#[test]
fn valid_ack_opens_the_backend_side_with_the_clients_isn_and_the_cookies_mss() {
    in_lab(proxy(SynProxyMode::Always, 1000), |lab| {
        // Each MSS comes back as the largest the cookie can encode at or
        // below it.
        for (port, mss, encoded) in [(42000, 1460, 1460), (42001, 1400, 1300), (42002, 1200, 536)] {
            let from = client(port);
            let (cookie, out) = handshake(&lab, from, mss);
            let syn = parse_checked(&out);
            assert_eq!(syn.dst, lab.table_pick(from), "to the backend the table picks");
            assert_eq!(*syn.src.ip(), SNAT, "from the SNAT address");
            assert!((SNAT_PORTS.0..=SNAT_PORTS.1).contains(&syn.src.port()), "a SNAT port");
            assert_eq!((syn.src_mac, syn.dst_mac), (LB_MAC, mac_of(*syn.dst.ip())));
            assert!(syn.flags_syn && !syn.flags_ack && !syn.flags_rst, "a bare SYN");
            assert_eq!(syn.seq, SEQ, "the client's ISN");
            assert_eq!(
                window_and_options(&out),
                (64240, vec![TcpOptionElement::MaximumSegmentSize(encoded)]),
                "the client's window, and the MSS the cookie encodes ({mss} asked)"
            );
            let flow = flow(&lab, from);
            assert_eq!(flow.proxy, PROXIED);
            assert_eq!(flow.server_isn, cookie, "the VIP's ISN towards the client");
            assert_eq!(u16::from_be(flow.snat_port), syn.src.port(), "the flow owns the port");
            assert_eq!(flow.state, flow_state::SYN_SEEN, "embryonic until the backend answers");
        }
        assert_eq!(lab.flows().len(), 3);
    });
}

#[test]
fn backend_syn_ack_is_answered_with_the_ack_and_the_offset_recorded() {
    in_lab(proxy(SynProxyMode::Always, 1000), |lab| {
        let from = client(42010);
        let (cookie, syn) = handshake(&lab, from, 1460);
        let syn = parse_checked(&syn);
        let syn_ack = from_backend(&syn, SYN_ACK, (BACKEND_ISN, SEQ + 1), b"");
        let (verdict, out) = lab.run(&syn_ack);
        assert_eq!(verdict, XDP_TX, "back to the backend, never to the client");
        assert_eq!(out.len(), 54, "a bare ACK");
        let ack = parse_checked(&out);
        assert_eq!((ack.src, ack.dst), (syn.src, syn.dst), "from SNAT:port to the backend");
        assert_eq!((ack.src_mac, ack.dst_mac), (LB_MAC, mac_of(*syn.dst.ip())));
        assert!(ack.flags_ack && !ack.flags_syn && !ack.flags_rst);
        assert_eq!(
            (ack.seq, ack.ack),
            (SEQ + 1, BACKEND_ISN + 1),
            "the client's ACK, in its place"
        );
        assert_eq!(window_and_options(&out), (64240, vec![]), "the client's window");

        let flow = flow(&lab, from);
        assert_eq!(flow.proxy, PROXIED | BACKEND_READY);
        assert_eq!(flow.seq_delta, BACKEND_ISN.wrapping_sub(cookie), "backend ISN - cookie");
        assert_eq!(flow_state::phase(flow.state), flow_state::FlowPhase::Established);
        assert_eq!(lab.backend_stats(syn.dst).handshakes, 1);

        let (verdict, again) = lab.run(&syn_ack);
        assert_eq!(
            (verdict, again),
            (XDP_TX, out),
            "a retransmitted SYN-ACK gets the same ACK"
        );
        assert_eq!(lab.backend_stats(syn.dst).handshakes, 1, "one handshake");
    });
}

#[test]
fn a_backend_syn_ack_to_a_group_mac_is_never_answered() {
    in_lab(proxy(SynProxyMode::Always, 1000), |lab| {
        let from = client(42012);
        let (_, syn) = handshake(&lab, from, 1460);
        let syn = parse_checked(&syn);
        let mut syn_ack = from_backend(&syn, SYN_ACK, (BACKEND_ISN, SEQ + 1), b"");
        syn_ack[..6].copy_from_slice(&[0xff; 6]);
        assert_eq!(lab.run(&syn_ack).0, XDP_DROP);
        assert_eq!(
            flow(&lab, from).proxy,
            PROXIED,
            "the backend's next SYN-ACK is answered"
        );
    });
}

#[test]
fn data_both_ways_has_its_sequence_numbers_translated_with_valid_checksums() {
    in_lab(proxy(SynProxyMode::Always, 1000), |lab| {
        let from = client(42020);
        let (cookie, syn) = proxied_connection(&lab, from);
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let (verdict, out) = lab.run(&from_client_at(
            from,
            PSH_ACK,
            (SEQ + 1, cookie.wrapping_add(1)),
            request,
        ));
        assert_eq!(verdict, XDP_REDIRECT);
        let to_backend = parse_checked(&out);
        assert_eq!((to_backend.src, to_backend.dst), (syn.src, syn.dst));
        assert_eq!(
            (to_backend.seq, to_backend.ack),
            (SEQ + 1, BACKEND_ISN + 1),
            "the client's seq as is, its ack in the backend's numbers"
        );
        assert_eq!(to_backend.payload, request);

        let response = b"HTTP/1.1 200 OK\r\n\r\n";
        let acked = SEQ + 1 + request.len() as u32;
        let (verdict, out) = lab.run(&from_backend(&syn, PSH_ACK, (BACKEND_ISN + 1, acked), response));
        assert_eq!(verdict, XDP_REDIRECT);
        let to_client = parse_checked(&out);
        assert_eq!((to_client.src, to_client.dst), (VIP, from));
        assert_eq!(
            (to_client.seq, to_client.ack),
            (cookie.wrapping_add(1), acked),
            "the backend's seq in the cookie's numbers, its ack as is"
        );
        assert_eq!(to_client.payload, response);
        let tracked = flow(&lab, from);
        assert_eq!(
            (tracked.backend.end, tracked.backend.ack),
            (cookie.wrapping_add(1 + response.len() as u32), acked),
            "the backend's side tracked in the client's numbering"
        );
        assert_eq!(
            (tracked.client.end, tracked.client.ack),
            (acked, cookie.wrapping_add(1)),
            "the client's side as it sent it"
        );

        // Across the wrap of the offset's arithmetic too.
        let late = BACKEND_ISN.wrapping_add(0x8000_0001);
        let (_, out) = lab.run(&from_backend(&syn, ACK, (late, acked), b""));
        assert_eq!(
            parse_checked(&out).seq,
            late.wrapping_sub(BACKEND_ISN).wrapping_add(cookie)
        );
    });
}

#[test]
fn rsts_of_a_proxied_flow_are_judged_in_the_clients_numbering() {
    in_lab(proxy(SynProxyMode::Always, 1000), |lab| {
        let from = client(42025);
        let (cookie, syn) = proxied_connection(&lab, from);
        // A RST at the client's own numbers, as the backend would number
        // it untranslated: outside the window, forwarded for the client to
        // judge, the flow left as it was.
        let (verdict, out) = lab.run_counting(
            &from_backend(&syn, RST, (cookie.wrapping_add(1), SEQ + 1), b""),
            &[Counter::RstOutOfWindow],
        );
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            parse_checked(&out).seq,
            cookie.wrapping_add(1).wrapping_sub(BACKEND_ISN).wrapping_add(cookie)
        );
        assert!(!flow_state::has_ended(flow(&lab, from).state));
        // The backend's RST at its SND.NXT: accepted, and it reaches the
        // client at the number the client expects.
        let (verdict, out) = lab.run_counting(&from_backend(&syn, RST, (BACKEND_ISN + 1, SEQ + 1), b""), &[]);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(parse_checked(&out).seq, cookie.wrapping_add(1));
        assert!(flow_state::has_ended(flow(&lab, from).state));
        assert_eq!(lab.backend_stats(syn.dst).resets, 1);
    });
}

#[test]
fn an_icmp_error_from_the_client_side_reaches_the_backend_quoting_its_own_sequence_number() {
    in_lab(proxy(SynProxyMode::Always, 1000), |lab| {
        let from = client(42027);
        let (cookie, syn) = proxied_connection(&lab, from);
        let response = [7u8; 100];
        let (_, to_client) = lab.run(&from_backend(&syn, PSH_ACK, (BACKEND_ISN + 1, SEQ + 1), &response));
        assert_eq!(parse_checked(&to_client).seq, cookie.wrapping_add(1));
        let frag_needed =
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 });
        // The whole segment, and the 8 bytes a router must quote at least.
        for l4_len in [to_client.len() - 34, 8] {
            let error = icmp_error_frame(
                GATEWAY_MAC,
                LB_MAC,
                Ipv4Addr::new(192, 168, 0, 1),
                *VIP.ip(),
                frag_needed.clone(),
                &quote_of(&to_client, l4_len),
            );
            let (verdict, out) = lab.run_counting(&error, &[Counter::IcmpErrorToBackend]);
            assert_eq!(verdict, XDP_REDIRECT);
            let icmp = parse_checked_icmp(&out);
            assert_eq!((icmp.src, icmp.dst), (SNAT, *syn.dst.ip()), "from the SNAT address");
            assert_eq!((icmp.quoted_src, icmp.quoted_dst), (syn.dst, syn.src));
            assert_eq!(icmp.quoted_l4_checked, l4_len > 8);
            assert_eq!(
                u32::from_be_bytes(icmp.quote[24..28].try_into().unwrap()),
                BACKEND_ISN + 1,
                "the backend's own sequence number, which its stack checks"
            );
        }
    });
}

#[test]
fn client_data_before_the_backend_answered_is_held_and_sent_in_place_of_the_handshakes_ack() {
    in_lab(proxy(SynProxyMode::Always, 1000), |lab| {
        let from = client(42030);
        let (cookie, syn) = handshake(&lab, from, 1460);
        let syn = parse_checked(&syn);
        let request = b"GET /early HTTP/1.1\r\n\r\n";
        let acks = (SEQ + 1, cookie.wrapping_add(1));
        let (verdict, _) = lab.run_counting(&from_client_at(from, PSH_ACK, acks, request), &[Counter::SynProxyHeld]);
        assert_eq!(verdict, XDP_DROP, "held, not forwarded");
        assert_eq!(flow(&lab, from).proxy, PROXIED | HELD);
        let (verdict, _) = lab.run_counting(
            &from_client_at(from, PSH_ACK, (SEQ + 1 + request.len() as u32, acks.1), b"more"),
            &[Counter::SynProxyEarlyData],
        );
        assert_eq!(
            verdict, XDP_DROP,
            "one segment is held; the client sends the next again"
        );

        let syn_ack = from_backend(&syn, SYN_ACK, (BACKEND_ISN, SEQ + 1), b"");
        let (verdict, out) = lab.run(&syn_ack);
        assert_eq!(verdict, XDP_REDIRECT, "the held segment, forwarded to the backend");
        let data = parse_checked(&out);
        assert_eq!(
            (data.src, data.dst),
            (syn.src, syn.dst),
            "from SNAT:port to the backend"
        );
        assert_eq!((data.src_mac, data.dst_mac), (LB_MAC, mac_of(*syn.dst.ip())));
        assert!(
            data.flags_ack && !data.flags_syn,
            "it completes the backend's handshake"
        );
        assert_eq!((data.seq, data.ack), (SEQ + 1, BACKEND_ISN + 1));
        assert_eq!(data.payload, request, "byte for byte");
        assert_eq!(flow(&lab, from).proxy, PROXIED | BACKEND_READY, "nothing held any more");

        let (verdict, out) = lab.run(&syn_ack);
        assert_eq!(verdict, XDP_TX, "a retransmitted SYN-ACK gets the bare ACK");
        let ack = parse_checked(&out);
        assert_eq!((ack.seq, ack.ack, ack.payload.len()), (SEQ + 1, BACKEND_ISN + 1, 0));
    });
}

#[test]
fn data_whose_ack_was_lost_proves_the_cookie_itself_and_is_held() {
    in_lab(proxy(SynProxyMode::Always, 1000), |lab| {
        let from = client(42032);
        let (verdict, out) = lab.run(&linux_syn(from, 1460));
        let cookie = assert_cookie_syn_ack(verdict, &out, from);
        let request = b"GET /after-a-lost-ack HTTP/1.1\r\n\r\n";
        let (verdict, out) = lab.run_counting(
            &from_client_at(from, PSH_ACK, (SEQ + 1, cookie.wrapping_add(1)), request),
            &[Counter::SynCookieValid, Counter::SynProxyHeld],
        );
        assert_eq!(verdict, XDP_REDIRECT, "the backend gets its SYN");
        let syn = parse_checked(&out);
        assert!(syn.flags_syn && syn.payload.is_empty());
        assert_eq!(flow(&lab, from).proxy, PROXIED | HELD);

        let (verdict, out) = lab.run(&from_backend(&syn, SYN_ACK, (BACKEND_ISN, SEQ + 1), b""));
        assert_eq!(verdict, XDP_REDIRECT);
        let data = parse_checked(&out);
        assert_eq!(
            (data.seq, data.ack, data.payload.as_slice()),
            (SEQ + 1, BACKEND_ISN + 1, &request[..])
        );
    });
}

#[test]
fn a_segment_too_big_to_hold_is_dropped_and_counted() {
    in_lab(proxy(SynProxyMode::Always, 1000), |lab| {
        let from = client(42031);
        let (cookie, _) = handshake(&lab, from, 1460);
        let (verdict, _) = lab.run_counting(
            &from_client_at(from, PSH_ACK, (SEQ + 1, cookie.wrapping_add(1)), &[7; 1461]),
            &[Counter::SynProxyEarlyData],
        );
        assert_eq!(verdict, XDP_DROP, "the client sends it again");
        assert_eq!(flow(&lab, from).proxy, PROXIED);
    });
}

/// Found by the fuzz test: the ended flow used to stay after the SYN that
/// reused its 4-tuple (which the proxy answers, opening no flow) without its
/// port, so the ACK proving the new cookie went to the old backend
/// connection through a port another flow could own by then.
#[test]
fn a_new_connection_on_the_four_tuple_of_an_ended_proxied_flow_gets_a_backend_side_of_its_own() {
    in_lab(proxy(SynProxyMode::Always, 1000), |lab| {
        let from = client(42045);
        let (_, old_syn) = proxied_connection(&lab, from);
        let (verdict, _) = lab.run(&from_client_at(from, RST, (SEQ + 1, 0), b""));
        assert_eq!(verdict, XDP_REDIRECT, "the client's RST reaches the backend");
        assert!(flow_state::has_ended(flow(&lab, from).state));

        let isn = SEQ + 100_000;
        let (verdict, out) = lab.run(&from_client_at(from, SYN, (isn, 0), b""));
        assert_eq!(verdict, SYN_ACK_VERDICT, "the new SYN gets a cookie");
        let syn_ack = parse_checked(&out);
        assert_eq!(syn_ack.ack, isn + 1);
        assert!(lab.flow(from).is_none(), "the ended flow is forgotten");
        assert_eq!(
            lab.reverse_nat_on(old_syn.dst, old_syn.src),
            Some(FlowKey::from_client(from, VIP)),
            "its port's entry stays, an orphan a new connection takes over once it settles"
        );

        let (verdict, out) = lab.run_counting(
            &from_client_at(from, ACK, (isn + 1, syn_ack.seq.wrapping_add(1)), b""),
            &[Counter::SynCookieValid],
        );
        assert_eq!(verdict, XDP_REDIRECT);
        let syn = parse_checked(&out);
        assert!(
            syn.flags_syn && !syn.flags_ack,
            "the proven ACK becomes the backend's SYN, not a segment of the old connection"
        );
        assert_eq!(syn.seq, isn, "the new connection's ISN");
        let flow = flow(&lab, from);
        assert_eq!((flow.proxy, flow.server_isn), (PROXIED, syn_ack.seq));
        assert_eq!(
            lab.reverse_nat_on(syn.dst, syn.src).map(|k| k.client()),
            Some(from),
            "its port is its own"
        );
    });
}

#[test]
fn backend_refusal_reaches_the_client_as_a_rst_it_accepts() {
    in_lab(proxy(SynProxyMode::Always, 1000), |lab| {
        let from = client(42040);
        let (cookie, syn) = handshake(&lab, from, 1460);
        let syn = parse_checked(&syn);
        let (verdict, out) = lab.run(&from_backend(&syn, RST | ACK, (0, SEQ + 1), b""));
        assert_eq!(verdict, XDP_REDIRECT);
        let rst = parse_checked(&out);
        assert_eq!((rst.src, rst.dst), (VIP, from));
        assert!(rst.flags_rst);
        assert_eq!(
            rst.seq,
            cookie.wrapping_add(1),
            "the sequence number the client expects from the VIP"
        );
        assert!(flow_state::has_ended(flow(&lab, from).state));
        assert_eq!(lab.backend_stats(syn.dst).refused, 1);
    });
}

#[test]
fn auto_mode_engages_when_unanswered_syns_pass_the_threshold() {
    in_lab(proxy(SynProxyMode::Auto, 5), |lab| {
        // Handshakes that complete do not count against the threshold.
        for i in 0..10 {
            let from = client(43000 + i);
            let (_, out) = lab.run(&linux_syn(from, 1460));
            let syn = parse_checked(&out);
            let (_, reply) = lab.run(&from_backend(&syn, SYN_ACK, (BACKEND_ISN, SEQ + 1), b""));
            assert_eq!(flow(&lab, from).proxy, WATCHED | SERVER_ISN_KNOWN);
            lab.run(&from_client_at(
                from,
                ACK,
                (SEQ + 1, parse_checked(&reply).seq + 1),
                b"",
            ));
            assert_eq!(flow(&lab, from).proxy, 0, "completed: no longer watched");
        }
        assert!(!lab.syn_proxy_active(), "ten answered SYNs are no flood");

        // Unanswered ones do: the sixth past the threshold engages the proxy.
        for i in 0..6 {
            let (verdict, _) = lab.run(&linux_syn(client(44000 + i), 1460));
            assert_eq!(verdict, XDP_REDIRECT, "SYN {i} still goes to a backend");
        }
        assert!(lab.syn_proxy_active());
        let flows = lab.flows().len();
        let from = client(44100);
        let (verdict, out) = lab.run_counting(&linux_syn(from, 1460), &[Counter::SynCookieSent]);
        let cookie = assert_cookie_syn_ack(verdict, &out, from);
        assert_eq!(lab.flows().len(), flows, "a cookie costs no flow");

        // The cookie's ACK opens the backend side.
        let (verdict, _) = lab.run(&from_client_at(from, ACK, (SEQ + 1, cookie.wrapping_add(1)), b""));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(flow(&lab, from).proxy, PROXIED);
    });
}

#[test]
fn connections_pinned_before_the_proxy_engaged_keep_their_path() {
    in_lab(proxy(SynProxyMode::Auto, 1000), |mut lab| {
        let from = client(45000);
        let (_, out) = lab.run(&linux_syn(from, 1460));
        let syn = parse_checked(&out);
        let (_, reply) = lab.run(&from_backend(&syn, SYN_ACK, (BACKEND_ISN, SEQ + 1), b""));
        let ack = (SEQ + 1, parse_checked(&reply).seq + 1);
        lab.run(&from_client_at(from, ACK, ack, b""));

        lab.set_syn_proxy(proxy(SynProxyMode::Always, 1000));
        let (verdict, out) = lab.run(&from_client_at(from, PSH_ACK, ack, b"more"));
        assert_eq!(verdict, XDP_REDIRECT);
        let data = parse_checked(&out);
        assert_eq!(
            (data.dst, data.seq, data.ack),
            (syn.dst, SEQ + 1, ack.1),
            "untranslated"
        );
        let (verdict, out) = lab.run(&from_backend(&syn, ACK, (BACKEND_ISN + 1, SEQ + 5), b""));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(parse_checked(&out).seq, BACKEND_ISN + 1);
    });
}
