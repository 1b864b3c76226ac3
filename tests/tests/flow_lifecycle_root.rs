//! Packet tests (root) of a flow's life: the handshake that makes a flow a
//! connection, RSTs judged by their sequence numbers, SNAT ports that one
//! flow at a time owns, and flows whose backend id or service went away.
//! The real program runs through BPF_PROG_TEST_RUN in the packet lab, as in
//! `xdp_packets_root.rs`, with the same expectations ([`Out`]); NAT-state
//! divergence that only an LRU or a race would cause is forced through
//! `bg_lb_tests::map_surgery`.

use std::{net::SocketAddrV4, thread, time::Duration};

use bg_lb_common::{
    counters::Counter,
    flow_hash::flow_hash,
    flow_state::{ESTABLISHED, RESET, SYN_ACK_SEEN, SYN_SEEN},
    maps::{Backend, DataplaneConfig, FlowKey, NatKey, POOL_GREEN, TrafficStats},
};
use bg_lb_tests::{
    expect::Out,
    netns::in_fresh_netns,
    packet_lab::{
        BACKEND_ISN, BLUE, GREEN, PacketLab, PacketLabOptions, SNAT, SNAT_PORTS, VIP, XDP_DROP, XDP_PASS, XDP_REDIRECT,
        XDP_TX, client, from_client,
    },
    packets::{ACK, PSH_ACK, RST, SEQ, SYN, SYN_ACK, parse_checked},
    require_root,
};

/// Longer than a kernel tick (4 ms at HZ=250, 10 ms at HZ=100): the
/// coarse clock the data plane stamps `last_seen_ns` with has moved after it.
const CLOCK_TICK: Duration = Duration::from_millis(25);

const ESTABLISHED_STATE: u32 = SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED;

fn in_lab(options: PacketLabOptions, test: impl FnOnce(PacketLab) + Send + 'static) {
    require_root();
    in_fresh_netns(move || test(PacketLab::new(&options)));
}

/// Everything counted for both blue backends (the lab at 100:0).
fn blue_stats(lab: &PacketLab) -> TrafficStats {
    let mut total = TrafficStats::default();
    for b in BLUE {
        total.add(&lab.backend_stats(b));
    }
    total
}

/// Runs `frame` from `client`, expecting `verdict` and `out`.
fn expect(lab: &PacketLab, what: &str, client: SocketAddrV4, frame: &[u8], verdict: u32, out: Out) {
    let (got, bytes) = lab.run(frame);
    assert_eq!(got, verdict, "{what}: verdict");
    out.check(lab, what, client, frame, &bytes);
}

// --- Embryonic and established flows -------------------------------------------

#[test]
fn a_flow_is_embryonic_until_the_clients_ack_completes_the_handshake() {
    in_lab(PacketLabOptions::with_ratio(100), |lab| {
        let c = client(40100);
        let conn = lab.open(c);
        assert_eq!(lab.flow(c).unwrap().state, SYN_SEEN);
        let blind = conn.from_client_at(ACK, SEQ + 1, BACKEND_ISN + 1, b"");
        expect(
            &lab,
            "an ACK before the SYN-ACK",
            c,
            &blind,
            XDP_REDIRECT,
            Out::ToTableBackend,
        );
        assert_eq!(lab.flow(c).unwrap().state, SYN_SEEN, "no SYN-ACK to acknowledge yet");

        let syn_ack = conn.from_backend_at(SYN_ACK, BACKEND_ISN, SEQ + 1, b"");
        expect(&lab, "the SYN-ACK", c, &syn_ack, XDP_REDIRECT, Out::ToClient);
        assert_eq!(lab.flow(c).unwrap().state, SYN_SEEN | SYN_ACK_SEEN);
        assert_eq!(
            (blue_stats(&lab).handshakes, blue_stats(&lab).new_flows),
            (1, 0),
            "the backend answered, but no connection yet"
        );
        let wrong = conn.from_client_at(ACK, SEQ + 1, BACKEND_ISN + 2, b"");
        expect(
            &lab,
            "an ACK of the wrong number",
            c,
            &wrong,
            XDP_REDIRECT,
            Out::ToTableBackend,
        );
        assert_eq!(lab.flow(c).unwrap().state, SYN_SEEN | SYN_ACK_SEEN);

        let ack = conn.from_client(ACK, b"");
        expect(&lab, "the client's ACK", c, &ack, XDP_REDIRECT, Out::ToTableBackend);
        assert_eq!(lab.flow(c).unwrap().state, ESTABLISHED_STATE);
        lab.run(&conn.from_client(PSH_ACK, b"GET /"));
        assert_eq!(blue_stats(&lab).new_flows, 1, "one connection, counted once");
    });
}

#[test]
fn mid_stream_packets_forwarded_without_state_are_no_new_connections() {
    in_lab(PacketLabOptions::with_ratio(100), |lab| {
        for i in 0..10 {
            assert_eq!(lab.send_from_client(client(40110 + i), ACK).0, XDP_REDIRECT);
        }
        assert_eq!(lab.counter(Counter::UnpinnedForwarded), 10);
        assert_eq!(blue_stats(&lab).new_flows, 0);
    });
}

#[test]
fn an_embryonic_flow_is_kept_alive_by_its_client_not_by_its_backends_syn_acks() {
    in_lab(PacketLabOptions::with_ratio(100), |lab| {
        let c = client(40120);
        let conn = lab.open(c);
        let opened = lab.flow(c).unwrap().last_seen_ns;
        // The data plane's clock for last_seen moves a kernel tick at a time.
        thread::sleep(CLOCK_TICK);
        // SYN-ACKs retransmitted to a spoofed source that never answers.
        for _ in 0..3 {
            lab.run(&conn.from_backend_at(SYN_ACK, BACKEND_ISN, SEQ + 1, b""));
        }
        assert_eq!(lab.flow(c).unwrap().last_seen_ns, opened);
        thread::sleep(CLOCK_TICK);
        lab.send_from_client(c, SYN); // the client's own retransmission
        assert!(lab.flow(c).unwrap().last_seen_ns > opened);
    });
}

// --- RSTs -------------------------------------------------------------------------

#[test]
fn a_backend_rst_at_its_next_sequence_number_ends_the_flow_and_counts_a_reset() {
    in_lab(PacketLabOptions::with_ratio(100), |lab| {
        let conn = lab.handshake(client(40130));
        let rst = conn.from_backend(RST, b"");
        expect(
            &lab,
            "the backend's RST",
            conn.client,
            &rst,
            XDP_REDIRECT,
            Out::ToClient,
        );
        assert_eq!(lab.flow(conn.client).unwrap().state, ESTABLISHED_STATE | RESET);
        assert_eq!(blue_stats(&lab).resets, 1);
        assert_eq!(lab.counter(Counter::RstOutOfWindow), 0);
    });
}

#[test]
fn a_backend_rst_outside_what_the_client_accepts_is_forwarded_and_leaves_the_flow() {
    in_lab(PacketLabOptions::with_ratio(100), |lab| {
        let conn = lab.handshake(client(40131));
        for (seq, what) in [
            (BACKEND_ISN + 1 + 1000, "in the window, not exact"),
            (0xdead_beef, "a random sequence number"),
        ] {
            let rst = conn.from_backend_at(RST, seq, 0, b"");
            expect(&lab, what, conn.client, &rst, XDP_REDIRECT, Out::ToClient);
            assert_eq!(lab.flow(conn.client).unwrap().state, ESTABLISHED_STATE, "{what}");
        }
        assert_eq!(lab.counter(Counter::RstOutOfWindow), 2);
        assert_eq!(blue_stats(&lab).resets, 0);
        let data = conn.from_backend(PSH_ACK, b"still here");
        expect(
            &lab,
            "the connection goes on",
            conn.client,
            &data,
            XDP_REDIRECT,
            Out::ToClient,
        );
    });
}

#[test]
fn a_rst_acknowledging_the_syn_is_a_refusal_and_another_ack_is_not() {
    in_lab(PacketLabOptions::with_ratio(100), |lab| {
        let conn = lab.open(client(40132));
        // Not an answer to this SYN: an older connection's on the port (the
        // client would ignore it too).
        let wrong = conn.from_backend_at(RST | ACK, 0, SEQ + 7, b"");
        expect(
            &lab,
            "a RST acking something else",
            conn.client,
            &wrong,
            XDP_DROP,
            Out::Dropped,
        );
        assert_eq!(lab.flow(conn.client).unwrap().state, SYN_SEEN);
        assert_eq!(lab.counter(Counter::StaleReply), 1);

        let refusal = conn.from_backend_at(RST | ACK, 0, SEQ + 1, b"");
        expect(&lab, "the refusal", conn.client, &refusal, XDP_REDIRECT, Out::ToClient);
        assert_eq!(lab.flow(conn.client).unwrap().state, SYN_SEEN | RESET);
        let stats = blue_stats(&lab);
        assert_eq!((stats.refused, stats.resets, stats.new_flows), (1, 0, 0));
    });
}

// --- One NAT state ----------------------------------------------------------------

#[test]
fn a_reply_whose_flow_was_evicted_is_dropped_until_the_clients_next_ack_pins_it_again() {
    in_lab(PacketLabOptions::with_ratio(100), |lab| {
        let conn = lab.handshake(client(40140));
        lab.nat_maps().evict_flow(&conn.key());
        let reply = conn.from_backend(PSH_ACK, b"data");
        assert_eq!(lab.run(&reply).0, XDP_DROP, "no flow says which client this is for");
        assert_eq!(lab.counter(Counter::StaleReply), 1);

        let ack = conn.from_client(ACK, b"");
        let same_port = Out::ToBackend {
            backend: conn.backend,
            snat: conn.snat,
        };
        expect(
            &lab,
            "the client's next ACK",
            conn.client,
            &ack,
            XDP_REDIRECT,
            same_port,
        );
        assert_eq!(lab.counter(Counter::FlowReadopted), 1);
        assert_eq!(lab.flow(conn.client).unwrap().state & ESTABLISHED, ESTABLISHED);
        expect(
            &lab,
            "the retransmitted reply",
            conn.client,
            &reply,
            XDP_REDIRECT,
            Out::ToClient,
        );
    });
}

#[test]
fn a_reply_on_a_port_whose_reverse_entry_names_another_flow_never_reaches_that_client() {
    in_lab(PacketLabOptions::with_ratio(100), |lab| {
        let a = lab.handshake(client(40141));
        let b = lab.handshake(client(40142));
        let mut maps = lab.nat_maps();
        let a_nat = maps.nat_of(&lab.flow(a.client).unwrap());
        maps.set_owner(&a_nat, &b.key());
        assert_eq!(lab.run(&a.from_backend(PSH_ACK, b"for a")).0, XDP_DROP);
        assert_eq!(lab.counter(Counter::StaleReply), 1);
        let for_b = b.from_backend(PSH_ACK, b"for b");
        expect(&lab, "b's own reply", b.client, &for_b, XDP_REDIRECT, Out::ToClient);
    });
}

#[test]
fn a_flow_whose_port_another_flow_owns_is_reset_and_forgotten_not_forwarded() {
    in_lab(PacketLabOptions::with_ratio(100), |lab| {
        let a = lab.handshake(client(40143));
        let b = lab.handshake(client(40144));
        let mut maps = lab.nat_maps();
        let a_nat = maps.nat_of(&lab.flow(a.client).unwrap());
        maps.set_owner(&a_nat, &b.key());
        let ack = a.from_client(ACK, b"");
        let rst = Out::Rst {
            seq: a.backend_next,
            ack: None,
        };
        expect(&lab, "a's next segment", a.client, &ack, XDP_TX, rst);
        assert_eq!(lab.counter(Counter::NatConflict), 1);
        assert!(lab.flow(a.client).is_none(), "a's flow is forgotten");
        assert_eq!(maps.owner(&a_nat), Some(b.key()), "the port stays its owner's");
        let b_ack = b.from_client(ACK, b"");
        let b_out = Out::ToBackend {
            backend: b.backend,
            snat: b.snat,
        };
        expect(&lab, "b goes on", b.client, &b_ack, XDP_REDIRECT, b_out);
    });
}

#[test]
fn a_flow_whose_reverse_entry_went_missing_claims_it_again() {
    in_lab(PacketLabOptions::with_ratio(100), |lab| {
        let conn = lab.handshake(client(40145));
        let mut maps = lab.nat_maps();
        let nat = maps.nat_of(&lab.flow(conn.client).unwrap());
        maps.evict_reverse(&nat);
        let ack = conn.from_client(ACK, b"");
        let out = Out::ToBackend {
            backend: conn.backend,
            snat: conn.snat,
        };
        expect(&lab, "the next segment", conn.client, &ack, XDP_REDIRECT, out);
        assert_eq!(lab.counter(Counter::NatReclaimed), 1);
        assert_eq!(maps.owner(&nat), Some(conn.key()));
    });
}

#[test]
fn one_port_is_never_owned_by_two_live_flows_and_the_old_connections_data_never_reaches_the_new_client() {
    // One SNAT port and one backend: the new flow can only get a's port.
    let options = PacketLabOptions {
        snat_ports: (40000, 40000),
        ..PacketLabOptions::with_ratio(100)
    };
    in_lab(options, |mut lab| {
        lab.keep_only(BLUE[0]);
        let a = lab.handshake(client(40150));
        let mut maps = lab.nat_maps();
        let a_nat = maps.nat_of(&lab.flow(a.client).unwrap());
        maps.evict_reverse(&a_nat);
        let c = lab.open(client(40151));
        assert_eq!(c.snat, a.snat, "the evicted port was claimed again");

        let old_data = a.from_backend(PSH_ACK, b"a's secret");
        assert_eq!(
            lab.run(&old_data).0,
            XDP_DROP,
            "c's backend has sent no SYN-ACK, so no data"
        );
        assert_eq!(lab.counter(Counter::StaleReply), 1);
        let a_ack = a.from_client(ACK, b"");
        let rst = Out::Rst {
            seq: a.backend_next,
            ack: None,
        };
        expect(&lab, "a's next segment", a.client, &a_ack, XDP_TX, rst);
        assert!(lab.flow(a.client).is_none());
        let syn_ack = c.from_backend_at(SYN_ACK, BACKEND_ISN, SEQ + 1, b"");
        expect(&lab, "c's SYN-ACK", c.client, &syn_ack, XDP_REDIRECT, Out::ToClient);
    });
}

#[test]
fn stateless_forwarding_skips_a_port_another_flow_owns() {
    in_lab(PacketLabOptions::with_ratio(100), |lab| {
        let x = client(40160);
        let backend = lab.table_pick(x);
        let hash = flow_hash(&FlowKey::from_client(x, VIP));
        let cfg = DataplaneConfig::new(&[SNAT], SNAT_PORTS.0..=SNAT_PORTS.1);
        let (snat, first) = cfg.snat_candidate(hash, 0);
        let nat = NatKey::new(&Backend::new(0, 1, backend, 0, false), snat, first);
        lab.nat_maps()
            .set_owner(&nat, &FlowKey::from_client(client(40161), VIP));
        let (verdict, out) = lab.send_from_client(x, ACK);
        assert_eq!(verdict, XDP_REDIRECT);
        let view = parse_checked(&out);
        assert_eq!(
            (view.dst, view.src.port()),
            (backend, u16::from_be(cfg.snat_candidate(hash, 1).1)),
            "the next candidate, not the owned one"
        );
        assert_eq!(lab.counter(Counter::UnpinnedForwarded), 1);
    });
}

#[test]
fn stateless_forwarding_drops_what_only_owned_ports_are_left_for() {
    let options = PacketLabOptions {
        snat_ports: (40000, 40003),
        ..PacketLabOptions::with_ratio(100)
    };
    in_lab(options, |mut lab| {
        lab.keep_only(BLUE[0]);
        for i in 0..4 {
            lab.open(client(40170 + i));
        }
        let stray = from_client(client(40179), ACK);
        let (verdict, _) = lab.run(&stray);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(lab.counter(Counter::UnpinnedPortTaken), 1);
        assert_eq!(lab.counter(Counter::UnpinnedForwarded), 0);
    });
}

// --- Backend and service ids --------------------------------------------------------

#[test]
fn a_flow_whose_backend_id_now_names_another_backend_is_dropped_not_forwarded_there() {
    in_lab(PacketLabOptions::with_ratio(100), |lab| {
        let conn = lab.handshake(client(40180));
        let flow = lab.flow(conn.client).unwrap();
        let mut maps = lab.nat_maps();
        let old = maps.backend(flow.backend_id);
        // The id handed to another backend, as a reuse racing the sweep would.
        let other = Backend::new(old.service_id, old.generation + 1, GREEN[1], POOL_GREEN, false);
        maps.set_backend(flow.backend_id, &other);

        assert_eq!(lab.run(&conn.from_client(PSH_ACK, b"GET /")).0, XDP_DROP);
        assert_eq!(lab.counter(Counter::StaleFlow), 1);
        assert!(lab.flow(conn.client).is_none(), "the stale flow is forgotten");
        assert_eq!(
            lab.run(&conn.from_backend(PSH_ACK, b"late")).0,
            XDP_DROP,
            "the old backend's reply has no flow"
        );
        let (verdict, _) = lab.send_from_client(conn.client, SYN);
        assert_eq!(verdict, XDP_REDIRECT, "a new SYN pins again");
        assert_eq!(lab.flow(conn.client).unwrap().backend_gen, other.generation);
    });
}

#[test]
fn replies_of_a_removed_service_never_reach_its_clients_and_the_sweep_ends_its_flows() {
    in_lab(PacketLabOptions::with_ratio(100), |mut lab| {
        let conn = lab.handshake(client(40190));
        lab.remove_service();
        assert_eq!(lab.run(&conn.from_backend(PSH_ACK, b"late")).0, XDP_DROP);
        assert_eq!(lab.counter(Counter::StaleReply), 1);
        assert_eq!(
            lab.run(&conn.from_client(ACK, b"")).0,
            XDP_PASS,
            "no service on the VIP any more"
        );
        let census = lab.sweep();
        assert_eq!(census.orphans, 2, "the flow and its reverse entry: {census:?}");
        let maps = lab.nat_maps();
        assert!(maps.flows().is_empty() && maps.reverse_entries().is_empty());
    });
}

#[test]
fn the_sweep_removes_a_flow_that_lost_its_reverse_entry_and_leaves_a_port_whose_flow_is_gone_free() {
    in_lab(PacketLabOptions::with_ratio(100), |mut lab| {
        let a = lab.handshake(client(40200));
        let b = lab.handshake(client(40201));
        let kept = lab.handshake(client(40202));
        let mut maps = lab.nat_maps();
        let b_nat = maps.nat_of(&lab.flow(b.client).unwrap());
        maps.evict_flow(&a.key());
        maps.evict_reverse(&b_nat);
        let census = lab.sweep();
        assert_eq!(census.orphans, 1, "b's flow: {census:?}");
        let mut owners: Vec<FlowKey> = maps.reverse_entries().into_iter().map(|(_, owner)| owner).collect();
        owners.sort_by_key(|k| k.client().port());
        // a's port names no flow: a free port, which the data plane reuses
        // (the sweep leaves it: deleting it could undo a takeover).
        assert_eq!(
            owners,
            [a.key(), kept.key()],
            "a's reverse entry is left to the data plane"
        );
        assert!(maps.flow(&a.key()).is_none());
        let flows: Vec<FlowKey> = maps.flows().into_iter().map(|(key, _)| key).collect();
        assert_eq!(flows, [kept.key()], "b's flow went with its reverse entry");
        assert_eq!(census.open_of(lab.nat_maps().flow(&kept.key()).unwrap().backend_id), 1);
    });
}

#[test]
fn ids_of_a_removed_service_stay_retired_until_the_sweep_ends_its_flows() {
    in_lab(PacketLabOptions::with_ratio(100), |mut lab| {
        let conn = lab.handshake(client(40210));
        let old = lab.flow(conn.client).unwrap();
        lab.remove_service();
        lab.restore_service();
        let fresh = lab.open(client(40211));
        let new = lab.flow(fresh.client).unwrap();
        assert_ne!(
            new.service_id, old.service_id,
            "the old flow still names its service id"
        );
        assert_ne!(new.backend_id, old.backend_id);
        assert_eq!(
            lab.run(&conn.from_client(ACK, b"")).0,
            XDP_DROP,
            "an old flow never reaches the new service's backends"
        );
        assert_eq!(lab.counter(Counter::StaleFlow), 1);
    });
}
