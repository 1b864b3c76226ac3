//! Packet tests (root): the real compiled XDP program runs through
//! BPF_PROG_TEST_RUN on crafted frames in the packet lab
//! (`bg_lb_tests::packet_lab`); verdicts, output bytes, checksums, counters
//! and map state are checked. Each test runs in its own network namespace.
//!
//! Most cases are one frame in, one verdict and one frame out: those are the
//! rows of [`rows`], in the manner of katran's test fixtures, and
//! [`row_tests!`] runs each row as a test of its own name. Cases that are
//! sequences (a SYN, then the backend's reply, ...) are written out as
//! tests, checked with the same [`Out`] expectations.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddrV4},
};

use bg_lb_common::{counters::Counter, flow_state, maps::TrafficStats};
use bg_lb_tests::{
    netns::in_fresh_netns,
    packet_lab::{
        BLUE, GATEWAY_MAC, GREEN, LB_MAC, PacketLab, PacketLabOptions, SNAT, SNAT_PORTS, VIP, XDP_DROP, XDP_PASS,
        XDP_REDIRECT, XDP_TX, client, from_client, is_blue, mac_of, reply_to,
    },
    packets::{
        ACK, ACK_NUMBER, FIN_ACK, IcmpView, PSH_ACK, RST, SEQ, SYN, SYN_ACK, edit_ip_header, icmp_error_frame,
        parse_checked, parse_checked_icmp, quote_of, tcp_frame,
    },
    require_root,
};
use etherparse::{
    IcmpEchoHeader, Icmpv4Type,
    icmpv4::{DestUnreachableHeader, RedirectCode, RedirectHeader, TimeExceededCode},
};

/// One case: the lab as the row sets it up, one frame in, then the verdict,
/// what must hold of the frame out, the counters it moves and the flow
/// table.
struct Row {
    /// The test's name: the behaviour the row proves.
    name: &'static str,
    blue_percent: u32,
    /// What happens to the lab before the frame (earlier packets, weights,
    /// neighbours).
    setup: fn(&mut PacketLab),
    /// The client the frame is from, whose flow `flow` speaks of.
    client: SocketAddrV4,
    frame: Vec<u8>,
    /// Builds the frame instead, after `setup`: for frames about what the
    /// lab sent earlier.
    build: Option<fn(&mut PacketLab) -> Vec<u8>>,
    verdict: u32,
    out: Out,
    /// Counters the frame moves by exactly one.
    counted: &'static [Counter],
    flow: FlowAfter,
}

impl Row {
    /// A frame with `flags` from `client` to the VIP, at 50:50; expects
    /// XDP_PASS with the frame unchanged until told otherwise.
    fn new(name: &'static str, client: SocketAddrV4, flags: u8) -> Self {
        Row {
            name,
            blue_percent: 50,
            setup: |_| {},
            client,
            frame: from_client(client, flags),
            build: None,
            verdict: XDP_PASS,
            out: Out::Unchanged,
            counted: &[],
            flow: FlowAfter::Unchecked,
        }
    }

    fn frame(self, frame: Vec<u8>) -> Self {
        Row { frame, ..self }
    }

    fn frame_from(self, build: fn(&mut PacketLab) -> Vec<u8>) -> Self {
        Row {
            build: Some(build),
            ..self
        }
    }

    fn ratio(self, blue_percent: u32) -> Self {
        Row { blue_percent, ..self }
    }

    fn setup(self, setup: fn(&mut PacketLab)) -> Self {
        Row { setup, ..self }
    }

    fn expect(self, verdict: u32, out: Out) -> Self {
        Row { verdict, out, ..self }
    }

    fn counts(self, counted: &'static [Counter]) -> Self {
        Row { counted, ..self }
    }

    fn flow(self, flow: FlowAfter) -> Self {
        Row { flow, ..self }
    }
}

/// What must hold of the frame the program returns.
enum Out {
    /// Byte for byte the frame that went in.
    Unchanged,
    /// Full NAT to the backend the lookup table picks for the client: from
    /// the SNAT address and a port of the range (the flow's, if pinned),
    /// the LB's MAC to the backend's, TTL 63, flags, sequence numbers and
    /// payload as sent, valid checksums.
    ToTableBackend,
    /// Translated back from the backend to the client: from the VIP, the
    /// LB's MAC to the gateway's, TTL 63, flags, sequence numbers and
    /// payload as sent, valid checksums.
    ToClient,
    /// A bare RST (Ethernet + IPv4 + TCP headers) from the VIP to the
    /// client, sent back to the gateway, with valid checksums: sequence
    /// number `seq`, and with `ack` set the ACK flag and that number (RFC
    /// 793: a RST to a segment with ACK carries its ack as seq).
    Rst { seq: u32, ack: Option<u32> },
    /// The ICMP error, about a packet the LB sent a backend for the row's
    /// client, translated to that client: from the VIP to the client, the
    /// LB's MAC to the gateway's, TTL 63, the same ICMP type, code and
    /// header, quoting what the client sent (client -> VIP) with every
    /// other quoted byte as it was; every checksum valid.
    IcmpToClient,
    /// The ICMP error, about a packet the LB sent the row's client,
    /// translated to the flow's backend: from the SNAT address to the
    /// backend, the LB's MAC to the backend's, TTL 63, quoting what the
    /// backend sent (backend -> SNAT address and the flow's port), as in
    /// `IcmpToClient`.
    IcmpToBackend,
    /// A bare fragmentation-needed error (70 bytes) with `mtu` sent back
    /// where the frame came from (MACs swapped), from the address the frame
    /// was sent to, quoting its IP header (TTL decremented) and first 8
    /// bytes; every checksum valid.
    FragNeeded { mtu: u16 },
    /// Nothing: the frame was dropped.
    Dropped,
}

impl Out {
    /// Checks `out`, what the program made of `sent` from `client`; `what`
    /// names the case in failure messages.
    fn check(&self, lab: &PacketLab, what: &str, client: SocketAddrV4, sent: &[u8], out: &[u8]) {
        match *self {
            Out::Unchanged => assert_eq!(out, sent, "{what}: the frame comes back unchanged"),
            Out::ToTableBackend => {
                let (sent, view) = (parse_checked(sent), parse_checked(out));
                let backend = lab.table_pick(client);
                assert_eq!(view.dst, backend, "{what}: to the backend the table picks");
                assert_eq!(*view.src.ip(), SNAT, "{what}: from the SNAT address");
                assert!(
                    (SNAT_PORTS.0..=SNAT_PORTS.1).contains(&view.src.port()),
                    "{what}: SNAT port {} outside {SNAT_PORTS:?}",
                    view.src.port()
                );
                if let Some(flow) = lab.flow(client) {
                    assert_eq!(
                        u16::from_be(flow.snat_port),
                        view.src.port(),
                        "{what}: from the flow's SNAT port"
                    );
                }
                assert_eq!(
                    (view.src_mac, view.dst_mac),
                    (LB_MAC, mac_of(*backend.ip())),
                    "{what}: MACs"
                );
                assert_eq!(view.ttl, 63, "{what}: TTL");
                assert_same_segment(what, &sent, &view);
            }
            Out::ToClient => {
                let (sent, view) = (parse_checked(sent), parse_checked(out));
                assert_eq!(
                    (view.src, view.dst),
                    (VIP, client),
                    "{what}: from the VIP to the client"
                );
                assert_eq!((view.src_mac, view.dst_mac), (LB_MAC, GATEWAY_MAC), "{what}: MACs");
                assert_eq!(view.ttl, 63, "{what}: TTL");
                assert_same_segment(what, &sent, &view);
            }
            Out::Rst { seq, ack } => {
                assert_eq!(out.len(), 54, "{what}: a bare RST: Ethernet + IPv4 + TCP headers");
                let rst = parse_checked(out);
                assert_eq!((rst.src, rst.dst), (VIP, client), "{what}: from the VIP to the client");
                assert_eq!((rst.src_mac, rst.dst_mac), (LB_MAC, GATEWAY_MAC), "{what}: MACs");
                assert!(rst.flags_rst && !rst.flags_syn, "{what}: RST flags");
                assert_eq!(
                    (rst.seq, rst.flags_ack, rst.ack),
                    (seq, ack.is_some(), ack.unwrap_or(0)),
                    "{what}: RST sequence numbers (RFC 793)"
                );
            }
            Out::IcmpToClient => {
                let view = parse_checked_icmp(out);
                assert_eq!((view.src, view.dst), (*VIP.ip(), *client.ip()), "{what}: VIP to client");
                assert_eq!((view.src_mac, view.dst_mac), (LB_MAC, GATEWAY_MAC), "{what}: MACs");
                assert_translated(what, &parse_checked_icmp(sent), &view, (client, VIP));
            }
            Out::IcmpToBackend => {
                let (backend, snat_port) = lab.pinned_backend(client).expect("a pinned flow");
                let view = parse_checked_icmp(out);
                assert_eq!((view.src, view.dst), (SNAT, *backend.ip()), "{what}: SNAT to backend");
                assert_eq!(
                    (view.src_mac, view.dst_mac),
                    (LB_MAC, mac_of(*backend.ip())),
                    "{what}: MACs"
                );
                let snat = SocketAddrV4::new(SNAT, snat_port);
                assert_translated(what, &parse_checked_icmp(sent), &view, (backend, snat));
            }
            Out::FragNeeded { mtu } => {
                assert_eq!(out.len(), 14 + 20 + 8 + 20 + 8, "{what}: a bare error quoting 8 bytes");
                let (sent_tcp, view) = (parse_checked(sent), parse_checked_icmp(out));
                assert_eq!(
                    (view.src_mac, view.dst_mac),
                    (sent_tcp.dst_mac, sent_tcp.src_mac),
                    "{what}: back where it came from"
                );
                assert_eq!(
                    (view.src, view.dst),
                    (*sent_tcp.dst.ip(), *sent_tcp.src.ip()),
                    "{what}: from the address the sender sent to"
                );
                assert_eq!((view.icmp_type, view.code), (3, 4), "{what}: fragmentation needed");
                let [m0, m1] = mtu.to_be_bytes();
                assert_eq!(view.rest_of_header, [0, 0, m0, m1], "{what}: next-hop MTU");
                assert_eq!(
                    (view.quoted_src, view.quoted_dst),
                    (sent_tcp.src, sent_tcp.dst),
                    "{what}: quotes what was sent"
                );
                let mut expected = quote_of(sent, 8);
                expected[8] -= 1;
                expected[10..12].copy_from_slice(&view.quote[10..12]);
                assert_eq!(view.quote, expected, "{what}: the quote, TTL decremented");
            }
            Out::Dropped => {}
        }
    }
}

/// `out` is the ICMP error `sent` translated: TTL decremented, ICMP type,
/// code and header as they were, the quote addressed `quoted`, and no other
/// quoted byte changed but the checksums.
fn assert_translated(what: &str, sent: &IcmpView, out: &IcmpView, quoted: (SocketAddrV4, SocketAddrV4)) {
    assert_eq!(out.ttl, sent.ttl - 1, "{what}: TTL");
    assert_eq!(
        (out.icmp_type, out.code, out.rest_of_header),
        (sent.icmp_type, sent.code, sent.rest_of_header),
        "{what}: ICMP type, code and header"
    );
    assert_eq!((out.quoted_src, out.quoted_dst), quoted, "{what}: quoted addressing");
    assert_eq!(
        out.quoted_tcp_checked, sent.quoted_tcp_checked,
        "{what}: the whole segment quoted"
    );
    // Quoted IP checksum, addresses and ports; the TCP checksum, if quoted.
    let rest = |quote: &[u8]| {
        let mut rest = quote.to_vec();
        rest[10..24].fill(0);
        if let Some(check) = rest.get_mut(36..38) {
            check.fill(0);
        }
        rest
    };
    assert_eq!(rest(&out.quote), rest(&sent.quote), "{what}: the rest of the quote");
}

/// Pins `client`'s flow, then returns the segment with `payload` that the
/// LB sent the backend for it.
fn sent_to_backend(lab: &mut PacketLab, client: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    lab.send_from_client(client, SYN);
    lab.run(&tcp_frame(GATEWAY_MAC, LB_MAC, client, VIP, PSH_ACK, payload))
        .1
}

/// Pins `client`'s flow, then returns the backend's SYN-ACK as the LB sent
/// it to the client.
fn sent_to_client(lab: &mut PacketLab, client: SocketAddrV4) -> Vec<u8> {
    let (_, syn) = lab.send_from_client(client, SYN);
    lab.run(&reply_to(&parse_checked(&syn), SYN_ACK)).1
}

/// An ICMP error of `icmp_type` about `emitted`, a frame the LB sent, from
/// a router on its way back to its source, quoting its IP header and
/// `l4_len` more bytes.
fn error_about(emitted: &[u8], icmp_type: Icmpv4Type, l4_len: usize) -> Vec<u8> {
    let view = parse_checked(emitted);
    let (router, router_mac) = if *view.src.ip() == SNAT {
        (BACKEND_SIDE_ROUTER, mac_of(BACKEND_SIDE_ROUTER))
    } else {
        (Ipv4Addr::new(192, 168, 0, 1), GATEWAY_MAC)
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

/// A router between the LB and the backends.
const BACKEND_SIDE_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);

fn frag_needed(mtu: u16) -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu })
}

fn time_exceeded() -> Icmpv4Type {
    Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit)
}

/// A segment with 1400 bytes of payload from `client`, after its SYN:
/// larger than a 1280-byte link takes.
fn oversized_from(lab: &mut PacketLab, client: SocketAddrV4) -> Vec<u8> {
    lab.send_from_client(client, SYN);
    tcp_frame(GATEWAY_MAC, LB_MAC, client, VIP, PSH_ACK, &[b'x'; 1400])
}

fn limit_backend_paths(lab: &mut PacketLab) {
    for b in BLUE.iter().chain(&GREEN) {
        lab.limit_path_mtu(*b.ip(), 1280);
    }
}

/// NAT changes addresses, ports, MACs and TTL only.
fn assert_same_segment(what: &str, sent: &bg_lb_tests::packets::TcpView, out: &bg_lb_tests::packets::TcpView) {
    assert_eq!(
        (out.flags_syn, out.flags_rst, out.flags_ack, out.seq, out.ack),
        (sent.flags_syn, sent.flags_rst, sent.flags_ack, sent.seq, sent.ack),
        "{what}: flags and sequence numbers as sent"
    );
    assert_eq!(out.payload, sent.payload, "{what}: payload byte for byte");
}

/// The row's client's entry in the flow table afterwards.
enum FlowAfter {
    Unchecked,
    Absent,
    /// Pinned, in exactly this state.
    State(u32),
}

impl FlowAfter {
    fn check(&self, lab: &PacketLab, what: &str, client: SocketAddrV4) {
        let flow = lab.flow(client);
        match *self {
            FlowAfter::Unchecked => {}
            FlowAfter::Absent => assert!(flow.is_none(), "{what}: no flow entry: {flow:?}"),
            FlowAfter::State(state) => {
                let flow = flow.unwrap_or_else(|| panic!("{what}: the flow is pinned"));
                assert_eq!(flow.state, state, "{what}: flow state");
            }
        }
    }
}

fn rows() -> Vec<Row> {
    let non_service = client(40009);
    let malformed = client(40010);
    let syn = from_client(malformed, SYN);
    let mut fragment = syn.clone();
    fragment[14 + 6] |= 0x20; // More Fragments
    let mut with_options = syn.clone();
    with_options[14] = 0x46; // IHL 6: one word of IP options claimed
    let mut lying_length = syn.clone();
    lying_length[14 + 2] = 0x05; // total length 0x05xx: beyond the frame
    let mut udp = Vec::new();
    etherparse::PacketBuilder::ethernet2(GATEWAY_MAC, LB_MAC)
        .ipv4(client(1).ip().octets(), VIP.ip().octets(), 64)
        .udp(5353, 80)
        .write(&mut udp, b"x")
        .expect("UDP frame builds");
    let mut arp = vec![0xff; 6];
    arp.extend(GATEWAY_MAC);
    arp.extend([0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend(GATEWAY_MAC);
    arp.extend([192, 168, 1, 5, 0, 0, 0, 0, 0, 0, 10, 0, 0, 100]);
    let no_backend_takes_flows: fn(&mut PacketLab) = |lab| lab.reweigh(|_, weight, _| *weight = 0);

    vec![
        Row::new(
            "syn_to_vip_is_full_nated_to_the_table_backend_with_valid_checksums",
            client(40000),
            SYN,
        )
        .expect(XDP_REDIRECT, Out::ToTableBackend)
        .flow(FlowAfter::State(flow_state::SYN_SEEN)),
        Row::new("payload_survives_nat_byte_for_byte", client(40001), PSH_ACK)
            .frame(tcp_frame(
                GATEWAY_MAC,
                LB_MAC,
                client(40001),
                VIP,
                PSH_ACK,
                b"GET / HTTP/1.1\r\n\r\n",
            ))
            .setup(|lab| {
                lab.send_from_client(client(40001), SYN);
            })
            .expect(XDP_REDIRECT, Out::ToTableBackend),
        Row::new(
            "mid_stream_packet_without_flow_is_forwarded_by_table_without_state",
            client(40006),
            ACK,
        )
        .expect(XDP_REDIRECT, Out::ToTableBackend)
        .counts(&[Counter::UnpinnedForwarded])
        .flow(FlowAfter::Absent),
        Row::new(
            "syn_that_no_backend_can_take_is_refused_at_once_with_a_rst_from_the_vip",
            client(40007),
            SYN,
        )
        .setup(no_backend_takes_flows)
        .expect(
            XDP_TX,
            Out::Rst {
                seq: 0,
                ack: Some(SEQ + 1),
            },
        )
        .counts(&[Counter::Refused])
        .flow(FlowAfter::Absent),
        Row::new(
            "stray_segment_that_no_backend_can_take_is_dropped_not_answered",
            client(40012),
            ACK,
        )
        .setup(no_backend_takes_flows)
        .expect(XDP_DROP, Out::Dropped),
        Row::new("unresolved_next_hop_drops_and_counts", client(40008), SYN)
            .ratio(100)
            .setup(|lab| {
                for b in BLUE {
                    lab.remove_neighbour(*b.ip());
                }
            })
            .expect(XDP_DROP, Out::Dropped)
            .counts(&[Counter::FibNoNeighbour]),
        Row::new(
            "nothing_is_rewritten_until_userspace_marks_the_config_ready",
            client(40011),
            SYN,
        )
        .setup(PacketLab::mark_not_ready),
        // Frames that are not ours to rewrite.
        Row::new("frame_to_another_port_of_the_vip_passes_unchanged", non_service, SYN)
            .frame(tcp_frame(
                GATEWAY_MAC,
                LB_MAC,
                non_service,
                SocketAddrV4::new(*VIP.ip(), 22),
                SYN,
                b"",
            ))
            .counts(&[Counter::Passed]),
        Row::new("frame_to_another_local_address_passes_unchanged", non_service, SYN)
            .frame(tcp_frame(
                GATEWAY_MAC,
                LB_MAC,
                non_service,
                SocketAddrV4::new(SNAT, 80),
                SYN,
                b"",
            ))
            .counts(&[Counter::Passed]),
        Row::new("udp_to_the_vip_passes_unchanged", client(1), 0)
            .frame(udp)
            .counts(&[Counter::Passed]),
        Row::new("arp_passes_unchanged", client(1), 0)
            .frame(arp)
            .counts(&[Counter::Passed]),
        Row::new(
            "frame_to_the_snat_address_outside_the_port_range_passes_unchanged",
            BLUE[0],
            ACK,
        )
        .frame(tcp_frame(
            GATEWAY_MAC,
            LB_MAC,
            BLUE[0],
            SocketAddrV4::new(SNAT, 33000),
            ACK,
            b"",
        ))
        .counts(&[Counter::Passed]),
        // Malformed frames to the VIP: passed, counted, no flow.
        Row::new("truncated_vip_frame_passes_unchanged_and_is_counted", malformed, SYN)
            .frame(syn[..syn.len() - 6].to_vec())
            .counts(&[Counter::Truncated])
            .flow(FlowAfter::Absent),
        Row::new("fragment_to_the_vip_passes_unchanged_and_is_counted", malformed, SYN)
            .frame(fragment)
            .counts(&[Counter::Fragmented])
            .flow(FlowAfter::Absent),
        Row::new(
            "vip_frame_with_ip_options_passes_unchanged_and_is_counted",
            malformed,
            SYN,
        )
        .frame(with_options)
        .counts(&[Counter::IpOptions])
        .flow(FlowAfter::Absent),
        Row::new(
            "vip_frame_whose_ip_length_runs_past_it_passes_unchanged_and_is_counted",
            malformed,
            SYN,
        )
        .frame(lying_length)
        .counts(&[Counter::Truncated])
        .flow(FlowAfter::Absent),
        // ICMP errors about pinned flows go to the other side, translated.
        Row::new(
            "frag_needed_from_the_backend_side_is_translated_to_the_client",
            client(40030),
            0,
        )
        .frame_from(|lab| {
            let sent = sent_to_backend(lab, client(40030), b"GET / HTTP/1.1\r\n\r\n");
            // The whole segment, so the quoted TCP checksum is checked too.
            error_about(&sent, frag_needed(1280), sent.len() - 34)
        })
        .expect(XDP_REDIRECT, Out::IcmpToClient)
        .counts(&[Counter::IcmpErrorToClient]),
        Row::new(
            "time_exceeded_from_the_client_side_is_translated_to_the_backend",
            client(40031),
            0,
        )
        // The SYN-ACK whole (a bare TCP header).
        .frame_from(|lab| error_about(&sent_to_client(lab, client(40031)), time_exceeded(), 20))
        .expect(XDP_REDIRECT, Out::IcmpToBackend)
        .counts(&[Counter::IcmpErrorToBackend]),
        Row::new(
            "error_quoting_only_8_bytes_is_translated_without_the_tcp_checksum",
            client(40044),
            0,
        )
        .frame_from(|lab| error_about(&sent_to_backend(lab, client(40044), b"data"), frag_needed(1280), 8))
        .expect(XDP_REDIRECT, Out::IcmpToClient)
        .counts(&[Counter::IcmpErrorToClient]),
        Row::new(
            "icmp_error_whose_ttl_would_expire_is_left_to_the_kernel",
            client(40045),
            0,
        )
        .frame_from(|lab| {
            let mut error = error_about(&sent_to_backend(lab, client(40045), b""), frag_needed(1280), 8);
            edit_ip_header(&mut error, |ip| ip.time_to_live = 1);
            error
        })
        .counts(&[Counter::TtlExpired]),
        Row::new(
            "icmp_error_about_no_pinned_backend_connection_passes_unchanged_and_is_counted",
            client(40032),
            0,
        )
        .frame(error_about(
            &tcp_frame(
                LB_MAC,
                mac_of(*BLUE[0].ip()),
                SocketAddrV4::new(SNAT, SNAT_PORTS.0),
                BLUE[0],
                ACK,
                b"",
            ),
            frag_needed(1280),
            8,
        ))
        .counts(&[Counter::IcmpErrorWithoutFlow]),
        Row::new(
            "icmp_error_about_no_pinned_client_connection_passes_unchanged_and_is_counted",
            client(40033),
            0,
        )
        .frame(error_about(
            &tcp_frame(LB_MAC, GATEWAY_MAC, VIP, client(40033), SYN_ACK, b""),
            time_exceeded(),
            8,
        ))
        .counts(&[Counter::IcmpErrorWithoutFlow]),
        Row::new(
            "icmp_error_not_sent_to_the_source_it_quotes_passes_unchanged",
            client(40034),
            0,
        )
        .frame_from(|lab| {
            let mut error = error_about(&sent_to_backend(lab, client(40034), b""), frag_needed(1280), 8);
            edit_ip_header(&mut error, |ip| ip.destination = VIP.ip().octets());
            error
        })
        .counts(&[Counter::IcmpErrorWithoutFlow]),
        Row::new("redirect_about_a_pinned_flow_passes_unchanged", client(40035), 0)
            .frame_from(|lab| {
                let redirect = Icmpv4Type::Redirect(RedirectHeader {
                    code: RedirectCode::RedirectForHost,
                    gateway_internet_address: [10, 0, 0, 9],
                });
                error_about(&sent_to_backend(lab, client(40035), b""), redirect, 8)
            })
            .counts(&[Counter::Passed]),
        Row::new("echo_request_to_the_vip_passes_unchanged", client(40036), 0)
            .frame(icmp_error_frame(
                GATEWAY_MAC,
                LB_MAC,
                *client(40036).ip(),
                *VIP.ip(),
                Icmpv4Type::EchoRequest(IcmpEchoHeader { id: 7, seq: 1 }),
                b"ping",
            ))
            .counts(&[Counter::Passed]),
        // Malformed ICMP errors are never forwarded, even about a pinned flow.
        Row::new(
            "icmp_error_quoting_less_than_8_bytes_passes_unchanged_and_is_counted",
            client(40037),
            0,
        )
        .frame_from(|lab| error_about(&sent_to_backend(lab, client(40037), b""), frag_needed(1280), 6))
        .counts(&[Counter::IcmpMalformed]),
        Row::new(
            "icmp_error_whose_ip_length_runs_past_the_frame_passes_unchanged_and_is_counted",
            client(40038),
            0,
        )
        .frame_from(|lab| {
            let error = error_about(&sent_to_backend(lab, client(40038), b""), frag_needed(1280), 8);
            error[..error.len() - 4].to_vec()
        })
        .counts(&[Counter::IcmpMalformed]),
        Row::new(
            "icmp_error_quoting_ip_options_passes_unchanged_and_is_counted",
            client(40039),
            0,
        )
        .frame_from(|lab| {
            let mut quote = quote_of(&sent_to_backend(lab, client(40039), b""), 8);
            quote[0] = 0x46; // IHL 6
            let router = BACKEND_SIDE_ROUTER;
            icmp_error_frame(mac_of(router), LB_MAC, router, SNAT, frag_needed(1280), &quote)
        })
        .counts(&[Counter::IcmpMalformed]),
        // Packets too big for the egress link.
        Row::new(
            "oversized_df_segment_to_a_backend_is_answered_with_frag_needed",
            client(40040),
            0,
        )
        .setup(limit_backend_paths)
        .frame_from(|lab| oversized_from(lab, client(40040)))
        .expect(XDP_TX, Out::FragNeeded { mtu: 1280 })
        .counts(&[Counter::TooBigAnswered]),
        Row::new(
            "oversized_df_reply_to_a_client_is_answered_with_frag_needed",
            client(40041),
            0,
        )
        .setup(|lab| lab.limit_path_mtu(*client(40041).ip(), 1280))
        .frame_from(|lab| {
            let (_, syn) = lab.send_from_client(client(40041), SYN);
            let to_backend = parse_checked(&syn);
            let backend_mac = mac_of(*to_backend.dst.ip());
            tcp_frame(
                backend_mac,
                LB_MAC,
                to_backend.dst,
                to_backend.src,
                PSH_ACK,
                &[b'y'; 1400],
            )
        })
        .expect(XDP_TX, Out::FragNeeded { mtu: 1280 })
        .counts(&[Counter::TooBigAnswered]),
        Row::new("oversized_segment_without_df_is_dropped_and_counted", client(40042), 0)
            .setup(limit_backend_paths)
            .frame_from(|lab| {
                let mut segment = oversized_from(lab, client(40042));
                edit_ip_header(&mut segment, |ip| ip.dont_fragment = false);
                segment
            })
            .expect(XDP_DROP, Out::Dropped)
            .counts(&[Counter::TooBigDropped]),
        Row::new(
            "oversized_df_segment_without_a_pinned_flow_is_dropped_and_counted",
            client(40043),
            0,
        )
        .setup(limit_backend_paths)
        .frame(tcp_frame(
            GATEWAY_MAC,
            LB_MAC,
            client(40043),
            VIP,
            PSH_ACK,
            &[b'x'; 1400],
        ))
        .expect(XDP_DROP, Out::Dropped)
        .counts(&[Counter::UnpinnedForwarded, Counter::TooBigDropped]),
    ]
}

/// Runs the row `name` in a fresh lab.
fn run_row(name: &'static str) {
    require_root();
    in_fresh_netns(move || {
        let row = rows()
            .into_iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no row {name}"));
        let mut lab = PacketLab::new(&PacketLabOptions::with_ratio(row.blue_percent));
        (row.setup)(&mut lab);
        let frame = match row.build {
            Some(build) => build(&mut lab),
            None => row.frame,
        };
        let before: Vec<u64> = row.counted.iter().map(|&c| lab.counter(c)).collect();
        let (verdict, out) = lab.run(&frame);
        assert_eq!(verdict, row.verdict, "{name}: verdict");
        row.out.check(&lab, name, row.client, &frame, &out);
        for (&counter, before) in row.counted.iter().zip(before) {
            assert_eq!(lab.counter(counter), before + 1, "{name}: {counter:?} counts the frame");
        }
        row.flow.check(&lab, name, row.client);
    });
}

/// One test per row, named after it, and the list of those names.
macro_rules! row_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_row(stringify!($name));
            }
        )*
        const ROW_TESTS: &[&str] = &[$(stringify!($name)),*];
    };
}

row_tests!(
    syn_to_vip_is_full_nated_to_the_table_backend_with_valid_checksums,
    payload_survives_nat_byte_for_byte,
    mid_stream_packet_without_flow_is_forwarded_by_table_without_state,
    syn_that_no_backend_can_take_is_refused_at_once_with_a_rst_from_the_vip,
    stray_segment_that_no_backend_can_take_is_dropped_not_answered,
    unresolved_next_hop_drops_and_counts,
    nothing_is_rewritten_until_userspace_marks_the_config_ready,
    frame_to_another_port_of_the_vip_passes_unchanged,
    frame_to_another_local_address_passes_unchanged,
    udp_to_the_vip_passes_unchanged,
    arp_passes_unchanged,
    frame_to_the_snat_address_outside_the_port_range_passes_unchanged,
    truncated_vip_frame_passes_unchanged_and_is_counted,
    fragment_to_the_vip_passes_unchanged_and_is_counted,
    vip_frame_with_ip_options_passes_unchanged_and_is_counted,
    vip_frame_whose_ip_length_runs_past_it_passes_unchanged_and_is_counted,
    frag_needed_from_the_backend_side_is_translated_to_the_client,
    time_exceeded_from_the_client_side_is_translated_to_the_backend,
    error_quoting_only_8_bytes_is_translated_without_the_tcp_checksum,
    icmp_error_whose_ttl_would_expire_is_left_to_the_kernel,
    icmp_error_about_no_pinned_backend_connection_passes_unchanged_and_is_counted,
    icmp_error_about_no_pinned_client_connection_passes_unchanged_and_is_counted,
    icmp_error_not_sent_to_the_source_it_quotes_passes_unchanged,
    redirect_about_a_pinned_flow_passes_unchanged,
    echo_request_to_the_vip_passes_unchanged,
    icmp_error_quoting_less_than_8_bytes_passes_unchanged_and_is_counted,
    icmp_error_whose_ip_length_runs_past_the_frame_passes_unchanged_and_is_counted,
    icmp_error_quoting_ip_options_passes_unchanged_and_is_counted,
    oversized_df_segment_to_a_backend_is_answered_with_frag_needed,
    oversized_df_reply_to_a_client_is_answered_with_frag_needed,
    oversized_segment_without_df_is_dropped_and_counted,
    oversized_df_segment_without_a_pinned_flow_is_dropped_and_counted,
);

#[test]
fn every_row_runs_as_a_test_of_its_own() {
    let rows: Vec<&str> = rows().iter().map(|r| r.name).collect();
    let names: HashSet<&str> = rows.iter().copied().collect();
    assert_eq!(names.len(), rows.len(), "row names are unique");
    assert_eq!(
        names,
        ROW_TESTS.iter().copied().collect(),
        "every row is listed in row_tests!, and nothing else"
    );
}

// --- Sequences -----------------------------------------------------------------

fn in_lab(blue_percent: u32, test: impl FnOnce(PacketLab) + Send + 'static) {
    in_lab_with(PacketLabOptions::with_ratio(blue_percent), test);
}

fn in_lab_with(options: PacketLabOptions, test: impl FnOnce(PacketLab) + Send + 'static) {
    require_root();
    in_fresh_netns(move || test(PacketLab::new(&options)));
}

#[test]
fn reply_from_backend_is_translated_back_to_vip_and_client() {
    in_lab(50, |lab| {
        let c = client(40002);
        let (_, out) = lab.send_from_client(c, SYN);
        let reply = reply_to(&parse_checked(&out), SYN_ACK);
        let (verdict, out) = lab.run(&reply);
        assert_eq!(verdict, XDP_REDIRECT);
        Out::ToClient.check(&lab, "the backend's SYN-ACK", c, &reply, &out);
        assert_eq!(
            lab.flow(c).unwrap().state & flow_state::ESTABLISHED,
            flow_state::ESTABLISHED
        );
    });
}

#[test]
fn pinned_flows_keep_their_backend_after_a_ratio_flip_and_new_flows_follow_it() {
    in_lab(100, |mut lab| {
        let clients: Vec<_> = (0..200).map(|i| client(41000 + i)).collect();
        let first: Vec<_> = clients
            .iter()
            .map(|&c| parse_checked(&lab.send_from_client(c, SYN).1).dst)
            .collect();
        assert!(first.iter().all(|b| is_blue(*b)), "100:0 sends every new flow to blue");

        lab.set_ratio(0);
        for (c, backend) in clients.iter().zip(&first) {
            let (verdict, out) = lab.send_from_client(*c, ACK);
            assert_eq!(verdict, XDP_REDIRECT);
            assert_eq!(
                parse_checked(&out).dst,
                *backend,
                "pinned flow moved after the table swap"
            );
        }
        for i in 0..200 {
            let backend = parse_checked(&lab.send_from_client(client(43000 + i), SYN).1).dst;
            assert!(!is_blue(backend), "new flows follow the new ratio");
        }
    });
}

#[test]
fn new_flows_split_by_ratio() {
    in_lab(30, |lab| {
        let blue = (0..2000)
            .filter(|i| is_blue(parse_checked(&lab.send_from_client(client(30000 + i), SYN).1).dst))
            .count();
        assert!((500..=700).contains(&blue), "30:70 sent {blue}/2000 new flows to blue");
    });
}

#[test]
fn syn_retransmission_keeps_backend_and_snat_port() {
    in_lab(50, |lab| {
        let c = client(40003);
        let first = parse_checked(&lab.send_from_client(c, SYN).1);
        let again = parse_checked(&lab.send_from_client(c, SYN).1);
        assert_eq!((first.src, first.dst), (again.src, again.dst));
    });
}

#[test]
fn syn_after_the_flow_ended_picks_again_and_frees_the_old_snat_port() {
    in_lab(100, |mut lab| {
        let c = client(40004);
        let first = parse_checked(&lab.send_from_client(c, SYN).1);
        lab.send_from_client(c, RST);
        assert!(flow_state::has_ended(lab.flow(c).unwrap().state));
        lab.set_ratio(0);
        let second = parse_checked(&lab.send_from_client(c, SYN).1);
        assert!(is_blue(first.dst));
        assert!(!is_blue(second.dst), "a reused 5-tuple is a new connection");
        assert_eq!(
            lab.run(&reply_to(&first, ACK)).0,
            XDP_PASS,
            "the old reverse-NAT entry is gone"
        );
    });
}

#[test]
fn backend_replies_count_handshakes_refusals_and_resets() {
    in_lab(100, |lab| {
        let accepted = parse_checked(&lab.send_from_client(client(40020), SYN).1);
        lab.run(&reply_to(&accepted, SYN_ACK));
        lab.run(&reply_to(&accepted, SYN_ACK)); // a retransmission is not a second handshake
        lab.run(&reply_to(&accepted, RST));
        let refused = parse_checked(&lab.send_from_client(client(40021), SYN).1);
        lab.run(&reply_to(&refused, RST | ACK));
        let mut total = TrafficStats::default();
        for b in BLUE {
            total.add(&lab.backend_stats(b));
        }
        assert_eq!(
            (total.new_flows, total.handshakes, total.resets, total.refused),
            (2, 1, 1, 1)
        );
    });
}

#[test]
fn fin_from_both_sides_ends_the_flow() {
    in_lab(50, |lab| {
        let c = client(40005);
        let to_backend = parse_checked(&lab.send_from_client(c, SYN).1);
        lab.send_from_client(c, FIN_ACK);
        assert!(!flow_state::has_ended(lab.flow(c).unwrap().state));
        lab.run(&reply_to(&to_backend, FIN_ACK));
        assert!(flow_state::has_ended(lab.flow(c).unwrap().state));
    });
}

#[test]
fn snat_ports_are_never_shared_and_exhaustion_drops() {
    // Four ports, one backend: four flows fit, the fifth cannot.
    let options = PacketLabOptions {
        snat_ports: (40000, 40003),
        ..PacketLabOptions::with_ratio(100)
    };
    in_lab_with(options, |mut lab| {
        lab.keep_only(BLUE[0]);
        let ports: HashSet<_> = (0..4)
            .map(|i| {
                parse_checked(&lab.send_from_client(client(50000 + i), SYN).1)
                    .src
                    .port()
            })
            .collect();
        assert_eq!(ports.len(), 4, "each flow owns its SNAT port");
        assert_eq!(lab.send_from_client(client(50010), SYN).0, XDP_DROP);
        assert_eq!(lab.counter(Counter::SnatPortsExhausted), 1);
    });
}

#[test]
fn flows_of_a_backend_flagged_for_reset_get_a_rst_and_are_forgotten() {
    in_lab(100, |mut lab| {
        let c = client(40013);
        let backend = parse_checked(&lab.send_from_client(c, SYN).1).dst;
        lab.reweigh(|addr, weight, reset_flows| {
            if addr == backend {
                *weight = 0;
                *reset_flows = true;
            }
        });

        let sent = from_client(c, PSH_ACK);
        let (verdict, out) = lab.run(&sent);
        assert_eq!(verdict, XDP_TX);
        let rst = Out::Rst {
            seq: ACK_NUMBER,
            ack: None,
        };
        rst.check(&lab, "a segment of a reset flow", c, &sent, &out);
        assert!(lab.flow(c).is_none(), "the reset flow is removed");
        assert_eq!(lab.counter(Counter::FlowReset), 1);
        let other = parse_checked(&lab.send_from_client(client(40014), SYN).1).dst;
        assert_ne!(other, backend, "new flows avoid the down backend");
    });
}
