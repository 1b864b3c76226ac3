//! Packet tests (root): the real compiled XDP program runs through
//! BPF_PROG_TEST_RUN on crafted frames in the packet lab
//! (`bg_lb_tests::packet_lab`); verdicts, output bytes, checksums, counters
//! and map state are checked. Each test runs in its own network namespace.
//!
//! Most cases are one frame in, one verdict and one frame out: those are the
//! rows of [`rows`], in the manner of katran's test fixtures, and
//! [`bg_lb_tests::row_tests!`] runs each row as a test of its own name. Cases that are
//! sequences (a SYN, then the backend's reply, ...) are written out as
//! tests, checked with the same [`Out`] expectations. The flow lifecycle's
//! sequences (handshake, RST validation, NAT state) are in
//! `flow_lifecycle_root.rs`.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddrV4},
};

use bg_lb::dataplane::{Dataplane, DataplaneError, DataplaneOptions, pins::PinLayout};
use bg_lb_common::{
    counters::Counter,
    flow_state,
    maps::{self as map_names, TrafficStats},
};
use bg_lb_tests::{
    expect::Out,
    map_surgery::pin_plain_u32_array,
    netns::in_fresh_netns,
    packet_lab::{
        BACKEND_ISN, BLUE, GATEWAY_MAC, GREEN, LB_MAC, PacketLab, PacketLabOptions, SNAT, SNAT_PORTS, VIP, XDP_DROP,
        XDP_PASS, XDP_REDIRECT, XDP_TX, client, from_client, is_blue, mac_of, reply_to,
    },
    packets::{
        ACK, ACK_NUMBER, FIN, FIN_ACK, Numbers, PSH_ACK, RST, SEQ, SYN, SYN_ACK, edit_ip_header, icmp_error_frame,
        numbered_tcp_frame, parse_checked, quote_of, tcp_frame, with_ip_options, with_ttl,
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
    let later_fragment = |mut frame: Vec<u8>| {
        frame[14 + 7] = 0x10; // fragment offset 16 x 8 bytes: no TCP header
        frame
    };
    let mut lying_length = syn.clone();
    lying_length[14 + 2] = 0x05; // total length 0x05xx: beyond the frame
    let to_snat = |port, flags| {
        tcp_frame(
            GATEWAY_MAC,
            LB_MAC,
            non_service,
            SocketAddrV4::new(SNAT, port),
            flags,
            b"",
        )
    };
    let to_vip_port = |port, flags| {
        tcp_frame(
            GATEWAY_MAC,
            LB_MAC,
            non_service,
            SocketAddrV4::new(*VIP.ip(), port),
            flags,
            b"",
        )
    };
    let from_backend = |flags| tcp_frame(GATEWAY_MAC, LB_MAC, BLUE[0], SocketAddrV4::new(SNAT, 20000), flags, b"");
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
    // A client RST on an established connection (see `PacketLab::handshake`).
    let client_rst = |c, seq| {
        let numbers = Numbers {
            seq,
            ack: BACKEND_ISN + 1,
        };
        numbered_tcp_frame(GATEWAY_MAC, LB_MAC, c, VIP, RST | ACK, numbers, b"")
    };
    let established = flow_state::SYN_SEEN | flow_state::SYN_ACK_SEEN | flow_state::ESTABLISHED;

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
        // Found by the fuzz test: the RST came from the broadcast MAC.
        Row::new(
            "syn_refused_in_a_broadcast_frame_is_dropped_not_answered_from_a_group_mac",
            client(40013),
            SYN,
        )
        .frame(tcp_frame(GATEWAY_MAC, [0xff; 6], client(40013), VIP, SYN, b""))
        .setup(no_backend_takes_flows)
        .expect(XDP_DROP, Out::Dropped)
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
            .frame(to_vip_port(22, SYN))
            .counts(&[Counter::Passed]),
        Row::new("frame_to_another_local_address_passes_unchanged", non_service, SYN)
            .frame(to_snat(80, SYN))
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
        Row::new("reply_to_the_snat_range_without_a_flow_passes_unchanged", BLUE[0], ACK)
            .frame(from_backend(ACK))
            .counts(&[Counter::ReplyWithoutFlow]),
        // Malformed frames to a VIP or the SNAT range: dropped and counted,
        // never handed to the host the VIP lives on; elsewhere untouched.
        Row::new("truncated_vip_frame_is_dropped_and_counted", malformed, SYN)
            .frame(syn[..syn.len() - 6].to_vec())
            .expect(XDP_DROP, Out::Dropped)
            .counts(&[Counter::Truncated])
            .flow(FlowAfter::Absent),
        Row::new("fragment_to_the_vip_is_dropped_and_counted", malformed, SYN)
            .frame(fragment.clone())
            .expect(XDP_DROP, Out::Dropped)
            .counts(&[Counter::Fragmented])
            .flow(FlowAfter::Absent),
        Row::new(
            "non_first_fragment_to_a_vip_address_is_dropped_and_counted",
            malformed,
            SYN,
        )
        .frame(later_fragment(to_vip_port(22, ACK)))
        .expect(XDP_DROP, Out::Dropped)
        .counts(&[Counter::Fragmented]),
        Row::new(
            "non_first_fragment_to_another_address_passes_unchanged",
            non_service,
            SYN,
        )
        .frame(later_fragment(to_snat(80, ACK)))
        .counts(&[Counter::Passed]),
        Row::new("fragment_to_the_snat_port_range_is_dropped_and_counted", BLUE[0], ACK)
            .frame({
                let mut frame = from_backend(ACK);
                frame[14 + 6] |= 0x20;
                frame
            })
            .expect(XDP_DROP, Out::Dropped)
            .counts(&[Counter::Fragmented]),
        Row::new("vip_frame_with_ip_options_is_dropped_and_counted", malformed, SYN)
            .frame(with_ip_options(&syn))
            .expect(XDP_DROP, Out::Dropped)
            .counts(&[Counter::IpOptions])
            .flow(FlowAfter::Absent),
        Row::new(
            "frame_with_ip_options_to_another_port_of_the_vip_passes_unchanged",
            non_service,
            SYN,
        )
        .frame(with_ip_options(&to_vip_port(22, SYN)))
        .counts(&[Counter::Passed]),
        Row::new(
            "vip_frame_whose_ip_length_runs_past_it_is_dropped_and_counted",
            malformed,
            SYN,
        )
        .frame(lying_length)
        .expect(XDP_DROP, Out::Dropped)
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
        // The reply path forwards only what an established connection's
        // backend can have sent.
        .frame_from(|lab| lab.handshake(client(40041)).from_backend(PSH_ACK, &[b'y'; 1400]))
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
        Row::new("syn_fin_to_the_vip_is_dropped_and_counted", malformed, SYN | FIN)
            .expect(XDP_DROP, Out::Dropped)
            .counts(&[Counter::BadTcpFlags])
            .flow(FlowAfter::Absent),
        Row::new("syn_rst_to_the_vip_is_dropped_and_counted", malformed, SYN | RST)
            .expect(XDP_DROP, Out::Dropped)
            .counts(&[Counter::BadTcpFlags])
            .flow(FlowAfter::Absent),
        Row::new(
            "syn_fin_to_the_snat_port_range_is_dropped_and_counted",
            BLUE[0],
            SYN | FIN,
        )
        .frame(from_backend(SYN | FIN | ACK))
        .expect(XDP_DROP, Out::Dropped)
        .counts(&[Counter::BadTcpFlags]),
        Row::new("syn_fin_to_another_address_passes_unchanged", non_service, SYN | FIN)
            .frame(to_snat(80, SYN | FIN))
            .counts(&[Counter::Passed]),
        Row::new("ttl_1_to_the_vip_is_dropped_and_counted", malformed, SYN)
            .frame(with_ttl(&syn, 1))
            .expect(XDP_DROP, Out::Dropped)
            .counts(&[Counter::TtlExpired])
            .flow(FlowAfter::Absent),
        Row::new("ttl_1_to_another_address_passes_unchanged", non_service, SYN)
            .frame(with_ttl(&to_snat(80, SYN), 1))
            .counts(&[Counter::Passed]),
        // RSTs from the client on an established connection.
        Row::new(
            "client_rst_at_its_next_sequence_number_is_forwarded_and_ends_the_flow",
            client(40030),
            RST | ACK,
        )
        .frame(client_rst(client(40030), SEQ + 1))
        .setup(|lab| {
            lab.handshake(client(40030));
        })
        .expect(XDP_REDIRECT, Out::ToTableBackend)
        .flow(FlowAfter::State(established | flow_state::RESET)),
        Row::new(
            "client_rst_in_the_window_but_not_at_its_next_sequence_number_is_forwarded_and_leaves_the_flow",
            client(40031),
            RST | ACK,
        )
        .frame(client_rst(client(40031), SEQ + 1 + 1448))
        .setup(|lab| {
            lab.handshake(client(40031));
        })
        .expect(XDP_REDIRECT, Out::ToTableBackend)
        .counts(&[Counter::RstOutOfWindow])
        .flow(FlowAfter::State(established)),
        Row::new(
            "client_rst_with_a_random_sequence_number_is_forwarded_and_leaves_the_flow",
            client(40032),
            RST | ACK,
        )
        .frame(client_rst(client(40032), 0x5eed_1234))
        .setup(|lab| {
            lab.handshake(client(40032));
        })
        .expect(XDP_REDIRECT, Out::ToTableBackend)
        .counts(&[Counter::RstOutOfWindow])
        .flow(FlowAfter::State(established)),
        Row::new(
            "a_rst_on_a_flow_flagged_for_reset_is_dropped_not_answered_with_a_rst",
            client(40033),
            RST | ACK,
        )
        .frame(client_rst(client(40033), SEQ + 1))
        .setup(|lab| {
            lab.handshake(client(40033));
            let backend = lab.table_pick(client(40033));
            lab.reweigh(|addr, weight, reset_flows| {
                if addr == backend {
                    *weight = 0;
                    *reset_flows = true;
                }
            });
        })
        .expect(XDP_DROP, Out::Dropped)
        .counts(&[Counter::FlowReset])
        .flow(FlowAfter::Absent),
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

bg_lb_tests::row_tests!(
    rows().iter().map(|r| r.name).collect::<Vec<_>>();
    syn_to_vip_is_full_nated_to_the_table_backend_with_valid_checksums,
    payload_survives_nat_byte_for_byte,
    mid_stream_packet_without_flow_is_forwarded_by_table_without_state,
    syn_that_no_backend_can_take_is_refused_at_once_with_a_rst_from_the_vip,
    syn_refused_in_a_broadcast_frame_is_dropped_not_answered_from_a_group_mac,
    stray_segment_that_no_backend_can_take_is_dropped_not_answered,
    unresolved_next_hop_drops_and_counts,
    nothing_is_rewritten_until_userspace_marks_the_config_ready,
    frame_to_another_port_of_the_vip_passes_unchanged,
    frame_to_another_local_address_passes_unchanged,
    udp_to_the_vip_passes_unchanged,
    arp_passes_unchanged,
    frame_to_the_snat_address_outside_the_port_range_passes_unchanged,
    reply_to_the_snat_range_without_a_flow_passes_unchanged,
    truncated_vip_frame_is_dropped_and_counted,
    fragment_to_the_vip_is_dropped_and_counted,
    non_first_fragment_to_a_vip_address_is_dropped_and_counted,
    non_first_fragment_to_another_address_passes_unchanged,
    fragment_to_the_snat_port_range_is_dropped_and_counted,
    vip_frame_with_ip_options_is_dropped_and_counted,
    frame_with_ip_options_to_another_port_of_the_vip_passes_unchanged,
    vip_frame_whose_ip_length_runs_past_it_is_dropped_and_counted,
    syn_fin_to_the_vip_is_dropped_and_counted,
    syn_rst_to_the_vip_is_dropped_and_counted,
    syn_fin_to_the_snat_port_range_is_dropped_and_counted,
    syn_fin_to_another_address_passes_unchanged,
    ttl_1_to_the_vip_is_dropped_and_counted,
    ttl_1_to_another_address_passes_unchanged,
    client_rst_at_its_next_sequence_number_is_forwarded_and_ends_the_flow,
    client_rst_in_the_window_but_not_at_its_next_sequence_number_is_forwarded_and_leaves_the_flow,
    client_rst_with_a_random_sequence_number_is_forwarded_and_leaves_the_flow,
    a_rst_on_a_flow_flagged_for_reset_is_dropped_not_answered_with_a_rst,
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
            lab.flow(c).unwrap().state,
            flow_state::SYN_SEEN | flow_state::SYN_ACK_SEEN,
            "answered, but embryonic until the client's ACK"
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

/// A service's write lists its VIP again only where that changes
/// something: a VIP listed with its filter bit clear (left by a daemon
/// stopped between the two writes) gets its bit back.
#[test]
fn a_vip_listed_without_its_filter_bit_gets_it_back_at_its_services_next_write() {
    in_lab(50, |mut lab| {
        lab.clear_vip_filter();
        let (verdict, _) = lab.send_from_client(client(40010), SYN);
        assert_eq!(
            verdict, XDP_PASS,
            "a frame to an address whose bit is clear is not looked up"
        );
        lab.set_ratio(50);
        let (verdict, _) = lab.send_from_client(client(40011), SYN);
        assert_eq!(verdict, XDP_REDIRECT, "the write set the VIP's bit again");
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

/// The daemon writes tables through a mapping of LOOKUP_TABLES; the map
/// API must read back exactly the tables it built, in both buffers.
#[test]
fn tables_written_through_the_mapping_read_back_slot_for_slot_through_the_map_api() {
    require_root();
    in_fresh_netns(|| {
        let mut lab = PacketLab::with_backends(100);
        let mut buffers = HashSet::new();
        for weight in [100, 20, 90, 1] {
            let first = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 1), 8080);
            lab.reweigh(|b, w, _| *w = if b == first { weight } else { 100 });
            let (expected, read) = (lab.table().build(), lab.table_in_map());
            assert_eq!(read.len(), expected.len());
            let first_difference = read.iter().zip(&expected).position(|(r, e)| r != e);
            assert_eq!(first_difference, None, "weight {weight}: slot differs");
            buffers.insert(lab.service_entry().active_buffer(0));
        }
        assert_eq!(buffers.len(), 2, "both of blue's buffers were written and read back");
    });
}

/// A ratio change is one SERVICES write: the tables packets read stay
/// where they are, slot for slot, and the entry's blue share moves.
#[test]
fn a_ratio_change_moves_the_blue_share_and_leaves_the_tables_in_place() {
    require_root();
    in_fresh_netns(|| {
        let mut lab = PacketLab::with_backends(100);
        let (before, entry) = (lab.table_in_map(), lab.service_entry());
        for (blue_percent, share) in [(20, 2000), (90, 9000), (0, 0), (100, 10_000)] {
            lab.set_ratio(blue_percent);
            let now = lab.service_entry();
            assert_eq!(now.blue_share, share, "ratio {blue_percent}");
            assert_eq!(
                (now.lut_base, now.flags),
                (entry.lut_base, entry.flags),
                "the same buffers"
            );
            assert!(lab.table_in_map() == before, "ratio {blue_percent}: a table changed");
        }
    });
}

/// A LOOKUP_TABLES pinned by a bg-lb from before it was mmapable cannot be
/// written through a mapping: loading refuses it (and names the map) rather
/// than failing later or adopting it.
#[test]
fn a_pinned_lookup_table_that_is_not_mmapable_is_refused_at_load() {
    require_root();
    let layout = PinLayout::new(format!("/sys/fs/bpf/bglb-packets-{}-plain-lut", std::process::id()));
    struct Remove<'a>(&'a PinLayout);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = self.0.remove_all();
        }
    }
    let _remove = Remove(&layout);
    layout.prepare().expect("pin directories");
    let maps = layout.maps_dir();
    pin_plain_u32_array(&maps.join(map_names::LOOKUP_TABLES), map_names::LOOKUP_TABLES, 1024);
    let loaded = Dataplane::load(&DataplaneOptions {
        pin_dir: Some(maps),
        ..DataplaneOptions::default()
    });
    match loaded {
        Err(e @ DataplaneError::IncompatiblePin(_)) => {
            let message = e.to_string();
            assert!(
                message.contains(&format!("the map {} pinned at", map_names::LOOKUP_TABLES)),
                "{message}"
            );
        }
        Err(e) => panic!("refused, but not as an incompatible pin: {e}"),
        Ok(_) => panic!("a non-mmapable LOOKUP_TABLES was adopted"),
    }
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
        // The client's RST at its next sequence number (the SYN's end).
        let numbers = Numbers { seq: SEQ + 1, ack: 0 };
        lab.run(&numbered_tcp_frame(GATEWAY_MAC, LB_MAC, c, VIP, RST, numbers, b""));
        assert!(flow_state::has_ended(lab.flow(c).unwrap().state));
        lab.set_ratio(0);
        let second = parse_checked(&lab.send_from_client(c, SYN).1);
        assert!(is_blue(first.dst));
        assert!(!is_blue(second.dst), "a reused 5-tuple is a new connection");
        // The old port's reverse entry still names the 5-tuple, whose flow
        // is pinned elsewhere now: no reply reaches the client through it,
        // and a new connection may take the port over (an orphan).
        assert_eq!(
            lab.run(&reply_to(&first, ACK)).0,
            XDP_DROP,
            "the old port no longer leads to the client"
        );
        assert_eq!(lab.counter(Counter::StaleReply), 1);
    });
}

#[test]
fn backend_replies_count_handshakes_refusals_and_resets() {
    in_lab(100, |lab| {
        let accepted = lab.handshake(client(40020));
        let syn_ack = accepted.from_backend_at(SYN_ACK, BACKEND_ISN, SEQ + 1, b"");
        lab.run(&syn_ack); // a retransmission is not a second handshake
        lab.run(&accepted.from_backend(RST, b""));
        // Refused: a RST acknowledging the SYN. It is no new connection.
        let refused = lab.open(client(40021));
        lab.run(&refused.from_backend_at(RST | ACK, 0, SEQ + 1, b""));
        let mut total = TrafficStats::default();
        for b in BLUE {
            total.add(&lab.backend_stats(b));
        }
        assert_eq!(
            (total.new_flows, total.handshakes, total.resets, total.refused),
            (1, 1, 1, 1)
        );
    });
}

#[test]
fn fin_from_both_sides_ends_the_flow() {
    in_lab(50, |lab| {
        let connection = lab.handshake(client(40005));
        let c = connection.client;
        lab.run(&connection.from_client(FIN_ACK, b""));
        assert!(!flow_state::has_ended(lab.flow(c).unwrap().state));
        lab.run(&connection.from_backend(FIN_ACK, b""));
        assert!(flow_state::has_ended(lab.flow(c).unwrap().state));
    });
}

#[test]
fn snat_ports_are_never_shared_and_exhaustion_is_refused_with_a_rst() {
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
        let fifth = client(50010);
        let syn = from_client(fifth, SYN);
        let (verdict, out) = lab.run(&syn);
        assert_eq!(verdict, XDP_TX, "the client learns at once, not after SYN retries");
        let rst = Out::Rst {
            seq: 0,
            ack: Some(SEQ + 1),
        };
        rst.check(&lab, "a SYN no port is left for", fifth, &syn, &out);
        assert_eq!(lab.counter(Counter::SnatPortsExhausted), 1);
        assert!(lab.flow(fifth).is_none());
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
