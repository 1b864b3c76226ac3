//! Packet tests of the SNAT port lifecycle (BPF_PROG_TEST_RUN, root): a
//! new connection takes over the SNAT port of a flow that has ended as soon
//! as the backend will accept it there, never earlier, exactly one
//! connection wins a port, and nothing of the old connection reaches the
//! new client. The lab has one backend and one SNAT port, so every SYN's
//! candidates are that port, except where a client reconnects from the same
//! address and port: there it has two.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    thread,
    time::Duration,
};

use bg_lb_common::{
    counters::Counter,
    flow_state::{BACKEND_CLOSED_FIRST, CLIENT_TIMESTAMPS, GUARDS_TIME_WAIT},
    maps::{Backend, NatKey, NatOwner},
    port_reuse::SETTLE_NS,
};
use bg_lb_tests::{
    expect::Out,
    netns::in_fresh_netns,
    packet_lab::{
        BLUE, Connection, GATEWAY_MAC, LB_MAC, PacketLab, PacketLabOptions, SNAT, VIP, XDP_DROP, XDP_REDIRECT, XDP_TX,
        client,
    },
    packets::{ACK, FIN_ACK, PSH_ACK, RST, SEQ, SYN, SYN_ACK, Segment, parse_checked},
    require_root,
};

/// The lab's one SNAT port.
const PORT: u16 = 40000;
/// The client's TSval on its segments after the backend's FIN: TIME_WAIT's
/// `ts_recent`.
const TS_RECENT: u32 = 1_000_000;

fn in_one_port_lab(test: impl FnOnce(PacketLab) + Send + 'static) {
    in_lab(PORT, test);
}

/// The lab with SNAT ports [`PORT`] to `last`.
fn in_lab(last: u16, test: impl FnOnce(PacketLab) + Send + 'static) {
    require_root();
    let options = PacketLabOptions {
        snat_ports: (PORT, last),
        ..PacketLabOptions::with_ratio(100)
    };
    in_fresh_netns(move || {
        let mut lab = PacketLab::new(&options);
        lab.keep_only(BLUE[0]);
        test(lab)
    });
}

/// Waits until the ports of flows that just closed may be taken over: the
/// data plane leaves a port to its flow for `port_reuse::SETTLE_NS` after
/// the flow's last packet (`bpf_ktime_get_ns` runs on in test runs too).
fn settle() {
    thread::sleep(Duration::from_nanos(SETTLE_NS) + Duration::from_millis(50));
}

fn snat() -> SocketAddrV4 {
    SocketAddrV4::new(SNAT, PORT)
}

/// A client's segment to the VIP with sequence number `seq`, acknowledgment
/// `ack` and, if `tsval` is set, a timestamp option (NOP, NOP, TS), as
/// Linux sends one.
fn client_segment(from: SocketAddrV4, flags: u8, seq: u32, ack: u32, tsval: Option<u32>) -> Vec<u8> {
    let mut options = [1, 1, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0];
    if let Some(tsval) = tsval {
        options[4..8].copy_from_slice(&tsval.to_be_bytes());
    }
    let segment = Segment {
        seq,
        ack,
        tcp_options: if tsval.is_some() { &options } else { &[] },
        ..Segment::new(GATEWAY_MAC, LB_MAC, from, VIP, flags)
    };
    let mut frame = Vec::new();
    segment.write(&mut frame);
    frame
}

/// The SNAT port's reverse-NAT key.
fn nat() -> NatKey {
    NatKey::new(
        &Backend::new(0, 0, BLUE[0], 0, false),
        u32::from(SNAT).to_be(),
        PORT.to_be(),
    )
}

/// Which client owns the port, per REVERSE_NAT.
fn owner(lab: &PacketLab) -> Option<SocketAddrV4> {
    lab.reverse_nat(BLUE[0], PORT).map(|key| key.client())
}

/// Sends a SYN and checks it went to the backend from the one SNAT port,
/// NATed byte for byte.
fn assert_syn_forwarded(lab: &PacketLab, what: &str, from: SocketAddrV4, syn: &[u8]) {
    let (verdict, out) = lab.run(syn);
    assert_eq!(verdict, XDP_REDIRECT, "{what}: forwarded");
    Out::ToBackend {
        backend: BLUE[0],
        snat: snat(),
    }
    .check(lab, what, from, syn, &out);
    assert_eq!(owner(lab), Some(from), "{what}: it owns the port now");
}

/// Sends a SYN and checks it was refused at once (no port for it): a RST
/// back to the client, counted.
fn assert_syn_refused(lab: &PacketLab, what: &str, from: SocketAddrV4, syn: &[u8]) {
    let before = lab.counter(Counter::SnatPortsExhausted);
    let (verdict, out) = lab.run(syn);
    assert_eq!(verdict, XDP_TX, "{what}: refused");
    let seq = parse_checked(syn).seq;
    Out::Rst {
        seq: 0,
        ack: Some(seq.wrapping_add(1)),
    }
    .check(lab, what, from, syn, &out);
    assert_eq!(lab.counter(Counter::SnatPortsExhausted), before + 1, "{what}: counted");
}

/// A connection the client closed first: its FIN, the backend's FIN
/// acknowledging it, and (if `final_ack`) the client's ACK of that.
fn closed_by_client(lab: &PacketLab, from: SocketAddrV4, final_ack: bool) -> Connection {
    let c = lab.handshake(from);
    assert_eq!(lab.run(&c.from_client(FIN_ACK, b"")).0, XDP_REDIRECT);
    let backend_fin = c.from_backend_at(FIN_ACK, c.backend_next, c.client_next + 1, b"");
    assert_eq!(lab.run(&backend_fin).0, XDP_REDIRECT);
    if final_ack {
        let ack = c.from_client_at(ACK, c.client_next + 1, c.backend_next + 1, b"");
        assert_eq!(lab.run(&ack).0, XDP_REDIRECT);
    }
    settle();
    c
}

/// A connection the backend closed first, the client's segments after the
/// backend's FIN carrying TSval [`TS_RECENT`]: the backend is in TIME_WAIT
/// with `rcv_nxt` the end of the client's FIN, which this returns.
fn closed_by_backend(lab: &PacketLab, from: SocketAddrV4) -> u32 {
    let rcv_nxt = close_by_backend(lab, lab.handshake(from));
    settle();
    rcv_nxt
}

/// [`closed_by_backend`] for connection `c`, which returns at once: its port
/// has not settled.
fn close_by_backend(lab: &PacketLab, c: Connection) -> u32 {
    let from = c.client;
    assert_eq!(lab.run(&c.from_backend(FIN_ACK, b"")).0, XDP_REDIRECT);
    let (seq, ack) = (c.client_next, c.backend_next + 1);
    let client_ack = client_segment(from, ACK, seq, ack, Some(TS_RECENT - 1));
    assert_eq!(lab.run(&client_ack).0, XDP_REDIRECT);
    let client_fin = client_segment(from, FIN_ACK, seq, ack, Some(TS_RECENT));
    assert_eq!(lab.run(&client_fin).0, XDP_REDIRECT);
    let last_ack = c.from_backend_at(ACK, c.backend_next + 1, seq + 1, b"");
    assert_eq!(lab.run(&last_ack).0, XDP_REDIRECT);
    let flow = lab.flow(from).expect("the closed flow lingers");
    assert_eq!(
        flow.state & (BACKEND_CLOSED_FIRST | CLIENT_TIMESTAMPS),
        BACKEND_CLOSED_FIRST | CLIENT_TIMESTAMPS,
        "who closed first and the client's timestamps are recorded"
    );
    assert_eq!(
        flow.client_tsval, TS_RECENT,
        "the newest TSval is TIME_WAIT's ts_recent"
    );
    seq + 1
}

#[test]
fn a_port_of_a_flow_the_client_closed_is_reused_at_once_once_the_backend_has_its_last_ack() {
    in_one_port_lab(|lab| {
        let old = client(41000);
        let c = closed_by_client(&lab, old, false);
        let next = client(41001);
        assert_syn_refused(
            &lab,
            "a SYN while the backend still waits in LAST_ACK",
            next,
            &client_segment(next, SYN, SEQ, 0, None),
        );
        let ack = c.from_client_at(ACK, c.client_next + 1, c.backend_next + 1, b"");
        assert_eq!(lab.run(&ack).0, XDP_REDIRECT, "the client's last ACK");
        let early = client(41002);
        assert_syn_refused(
            &lab,
            "a SYN right after the last ACK, which the backend may not have processed yet",
            early,
            &client_segment(early, SYN, SEQ, 0, None),
        );
        settle();
        // Any SYN: the backend has no socket left on the 4-tuple.
        let syn = client_segment(next, SYN, SEQ, 0, Some(1));
        assert_syn_forwarded(&lab, "a SYN after the last ACK", next, &syn);
        assert_eq!(lab.counter(Counter::SnatPortsExhausted), 2, "no other refusal");
    });
}

#[test]
fn a_port_the_backend_closed_first_goes_to_a_syn_with_a_newer_timestamp() {
    in_one_port_lab(|lab| {
        let rcv_nxt = closed_by_backend(&lab, client(41010));
        let next = client(41011);
        // Before rcv_nxt, but a newer TSval: TIME_WAIT accepts it.
        let syn = client_segment(next, SYN, rcv_nxt.wrapping_sub(100_000), 0, Some(TS_RECENT + 1));
        assert_syn_forwarded(&lab, "a SYN with a newer timestamp", next, &syn);
    });
}

#[test]
fn a_port_the_backend_closed_first_is_refused_to_a_syn_paws_rejects_and_goes_to_one_past_rcv_nxt() {
    in_one_port_lab(|lab| {
        let old = client(41020);
        let rcv_nxt = closed_by_backend(&lab, old);
        let older = client(41021);
        // After rcv_nxt, but an older TSval: PAWS rejects it, and TIME_WAIT
        // would answer with an ACK of the old connection.
        let syn = client_segment(older, SYN, rcv_nxt.wrapping_add(100_000), 0, Some(TS_RECENT - 1));
        assert_syn_refused(&lab, "a SYN with an older timestamp", older, &syn);
        assert_eq!(owner(&lab), Some(old), "the port stays with the old flow");
        let at_rcv_nxt = client(41022);
        let syn = client_segment(at_rcv_nxt, SYN, rcv_nxt, 0, None);
        assert_syn_refused(&lab, "a SYN without timestamp at rcv_nxt", at_rcv_nxt, &syn);
        let after = client(41023);
        let syn = client_segment(after, SYN, rcv_nxt.wrapping_add(1), 0, None);
        assert_syn_forwarded(&lab, "a SYN without timestamp past rcv_nxt", after, &syn);
    });
}

#[test]
fn nothing_of_the_old_connection_reaches_the_client_that_took_its_port_over() {
    in_one_port_lab(|lab| {
        let old = closed_by_client(&lab, client(41030), true);
        let next = client(41031);
        // Another ISN than the old client's, as a real client's would be.
        let isn = SEQ + 50_000;
        let syn = client_segment(next, SYN, isn, 0, None);
        assert_syn_forwarded(&lab, "the new connection's SYN", next, &syn);
        let stale_before = lab.counter(Counter::StaleReply);
        let stragglers = [
            (
                old.from_backend_at(FIN_ACK, old.backend_next, old.client_next + 1, b""),
                "its FIN",
            ),
            (
                old.from_backend_at(PSH_ACK, old.backend_next - 5, old.client_next, b"hello"),
                "its data",
            ),
            (
                old.from_backend_at(SYN_ACK, old.backend_next - 1, old.client_next, b""),
                "its SYN-ACK",
            ),
        ];
        for (frame, what) in &stragglers {
            let (verdict, _) = lab.run(frame);
            assert_eq!(verdict, XDP_DROP, "the old backend's {what} is dropped");
        }
        assert_eq!(
            lab.counter(Counter::StaleReply),
            stale_before + stragglers.len() as u64,
            "and counted"
        );
        // The old client's retransmitted last ACK: its flow no longer owns
        // the port, so it is dropped, not forwarded on the new connection.
        let old_ack = old.from_client_at(ACK, old.client_next + 1, old.backend_next + 1, b"");
        let stale_flows = lab.counter(Counter::StaleFlow);
        assert_eq!(lab.run(&old_ack).0, XDP_DROP, "the old client's straggler is dropped");
        assert_eq!(lab.counter(Counter::StaleFlow), stale_flows + 1);
        assert!(lab.flow(old.client).is_none(), "the old flow is forgotten");
        // The new connection's own SYN-ACK goes through.
        let new = Connection {
            client: next,
            backend: BLUE[0],
            snat: snat(),
            client_next: isn + 1,
            backend_next: 9_000_001,
        };
        let syn_ack = new.from_backend_at(SYN_ACK, 9_000_000, isn + 1, b"");
        let (verdict, out) = lab.run(&syn_ack);
        assert_eq!(verdict, XDP_REDIRECT);
        Out::ToClient.check(&lab, "the new connection's SYN-ACK", next, &syn_ack, &out);
        assert_eq!(owner(&lab), Some(next));
    });
}

#[test]
fn of_two_syns_for_one_reusable_port_exactly_one_takes_it() {
    in_one_port_lab(|lab| {
        closed_by_client(&lab, client(41040), true);
        let (first, second) = (client(41041), client(41042));
        assert_syn_forwarded(&lab, "the first SYN", first, &client_segment(first, SYN, SEQ, 0, None));
        assert_syn_refused(
            &lab,
            "the second SYN: the port's flow is the first's, embryonic",
            second,
            &client_segment(second, SYN, SEQ, 0, None),
        );
        assert_eq!(owner(&lab), Some(first));
    });
}

#[test]
fn a_port_another_cpu_is_taking_over_is_skipped() {
    in_one_port_lab(|lab| {
        let old = client(41050);
        closed_by_client(&lab, old, true);
        // As another CPU leaves the entry between its compare-and-swap and
        // its write of the new owner.
        let mut maps = lab.nat_maps();
        let mut entry = maps.reverse_entry(&nat()).expect("the port's entry");
        entry.claim |= NatOwner::TAKING_OVER;
        maps.set_reverse_entry(&nat(), &entry);
        let next = client(41051);
        assert_syn_refused(
            &lab,
            "a SYN while the port is being taken over",
            next,
            &client_segment(next, SYN, SEQ, 0, None),
        );
        assert_eq!(maps.reverse_entry(&nat()), Some(entry), "the entry is left alone");
    });
}

#[test]
fn concurrent_takeovers_of_one_port_on_two_cpus_leave_exactly_one_owner() {
    in_one_port_lab(|lab| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        for round in 0..40u16 {
            let old = client(42000 + round);
            closed_by_client(&lab, old, true);
            let racers = [
                SocketAddrV4::new(Ipv4Addr::new(192, 168, 2, 1), 43000 + round),
                SocketAddrV4::new(Ipv4Addr::new(192, 168, 2, 2), 43000 + round),
            ];
            let barrier = std::sync::Barrier::new(2);
            let verdicts: Vec<u32> = std::thread::scope(|s| {
                let runs: Vec<_> = racers
                    .iter()
                    .map(|&from| {
                        let (lab, barrier) = (&lab, &barrier);
                        s.spawn(move || {
                            let syn = client_segment(from, SYN, SEQ, 0, None);
                            barrier.wait();
                            lab.run(&syn).0
                        })
                    })
                    .collect();
                runs.into_iter().map(|r| r.join().expect("racer")).collect()
            });
            let winners: Vec<_> = racers
                .iter()
                .zip(&verdicts)
                .filter(|&(_, &v)| v == XDP_REDIRECT)
                .map(|(&c, _)| c)
                .collect();
            assert_eq!(winners.len(), 1, "round {round} ({cpus} CPUs): verdicts {verdicts:?}");
            assert_eq!(owner(&lab), Some(winners[0]), "round {round}: the winner owns the port");
            // Close the winner's connection so the next round races again.
            let won = Connection {
                client: winners[0],
                backend: BLUE[0],
                snat: snat(),
                client_next: SEQ + 1,
                backend_next: 9_000_001,
            };
            lab.run(&won.from_backend_at(RST | ACK, 0, SEQ + 1, b""));
            settle();
        }
    });
}

/// A SYN from `from` that must go to the backend from SNAT port `port`.
fn assert_syn_forwarded_from(lab: &PacketLab, what: &str, from: SocketAddrV4, syn: &[u8], port: u16) {
    let (verdict, out) = lab.run(syn);
    assert_eq!(verdict, XDP_REDIRECT, "{what}: forwarded");
    Out::ToBackend {
        backend: BLUE[0],
        snat: SocketAddrV4::new(SNAT, port),
    }
    .check(lab, what, from, syn, &out);
}

#[test]
fn a_reconnection_that_cannot_take_its_old_pair_yet_guards_it_against_syns_time_wait_refuses() {
    in_lab(PORT + 1, |lab| {
        let reconnecting = client(41200);
        let old = lab.handshake(reconnecting);
        let old_port = old.snat.port();
        let rcv_nxt = close_by_backend(&lab, old);
        // At once: the backend may not have processed the client's FIN yet,
        // so the old pair is not taken; the reconnection gets the other.
        let syn = client_segment(reconnecting, SYN, SEQ + 77, 0, Some(TS_RECENT + 1));
        let other_port = if old_port == PORT { PORT + 1 } else { PORT };
        assert_syn_forwarded_from(&lab, "the reconnection's SYN", reconnecting, &syn, other_port);
        let flow = lab.flow(reconnecting).expect("the new flow");
        assert_ne!(
            flow.state & GUARDS_TIME_WAIT,
            0,
            "the only flow of the 5-tuple its old pair's entry names guards that pair"
        );
        assert_eq!(
            lab.reverse_nat(BLUE[0], old_port).map(|k| k.client()),
            Some(reconnecting)
        );
        settle();
        // A SYN the old pair's TIME_WAIT refuses by PAWS finds no pair: the
        // old one is guarded, the other is the reconnection's.
        let older = client(41201);
        let syn = client_segment(older, SYN, rcv_nxt.wrapping_add(100_000), 0, Some(TS_RECENT - 1));
        assert_syn_refused(&lab, "a SYN with an older timestamp", older, &syn);
    });
}
