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

use std::{collections::HashSet, net::SocketAddrV4};

use bg_lb_common::{counters::Counter, flow_state, maps::TrafficStats};
use bg_lb_tests::{
    netns::in_fresh_netns,
    packet_lab::{
        BLUE, GATEWAY_MAC, LB_MAC, PacketLab, PacketLabOptions, SNAT, SNAT_PORTS, VIP, XDP_DROP, XDP_PASS,
        XDP_REDIRECT, XDP_TX, client, from_client, is_blue, mac_of, reply_to,
    },
    packets::{ACK, ACK_NUMBER, FIN_ACK, PSH_ACK, RST, SEQ, SYN, SYN_ACK, parse_checked, tcp_frame},
    require_root,
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
            verdict: XDP_PASS,
            out: Out::Unchanged,
            counted: &[],
            flow: FlowAfter::Unchecked,
        }
    }

    fn frame(self, frame: Vec<u8>) -> Self {
        Row { frame, ..self }
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
            Out::Dropped => {}
        }
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
        // Found by the fuzz test: the TTL was decremented before the lookup.
        Row::new(
            "backend_segment_to_a_snat_port_no_flow_owns_passes_unchanged",
            BLUE[0],
            ACK,
        )
        .frame(tcp_frame(
            mac_of(*BLUE[0].ip()),
            LB_MAC,
            BLUE[0],
            SocketAddrV4::new(SNAT, SNAT_PORTS.0),
            ACK,
            b"",
        ))
        .counts(&[Counter::ReplyWithoutFlow]),
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
        let before: Vec<u64> = row.counted.iter().map(|&c| lab.counter(c)).collect();
        let (verdict, out) = lab.run(&row.frame);
        assert_eq!(verdict, row.verdict, "{name}: verdict");
        row.out.check(&lab, name, row.client, &row.frame, &out);
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
    syn_refused_in_a_broadcast_frame_is_dropped_not_answered_from_a_group_mac,
    stray_segment_that_no_backend_can_take_is_dropped_not_answered,
    unresolved_next_hop_drops_and_counts,
    nothing_is_rewritten_until_userspace_marks_the_config_ready,
    frame_to_another_port_of_the_vip_passes_unchanged,
    frame_to_another_local_address_passes_unchanged,
    udp_to_the_vip_passes_unchanged,
    arp_passes_unchanged,
    frame_to_the_snat_address_outside_the_port_range_passes_unchanged,
    backend_segment_to_a_snat_port_no_flow_owns_passes_unchanged,
    truncated_vip_frame_passes_unchanged_and_is_counted,
    fragment_to_the_vip_passes_unchanged_and_is_counted,
    vip_frame_with_ip_options_passes_unchanged_and_is_counted,
    vip_frame_whose_ip_length_runs_past_it_passes_unchanged_and_is_counted,
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
