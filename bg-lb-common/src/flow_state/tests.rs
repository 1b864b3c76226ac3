use super::{Direction::*, *};
use crate::maps::Flow;

const CLIENT_ISN: u32 = 1_000;
const BACKEND_ISN: u32 = 900_000;

fn seg(flags: u8, seq: u32, ack: u32, payload_len: u32) -> Segment {
    Segment {
        flags,
        seq,
        ack,
        payload_len,
    }
}

/// A flow as the client's SYN (sequence number `isn`) opens it.
fn opened(isn: u32) -> Flow {
    let (state, client, backend) = opened_by(&seg(TCP_SYN, isn, 0, 0));
    Flow {
        state,
        client,
        backend,
        ..Default::default()
    }
}

/// SYN, SYN-ACK and the client's ACK, with the given initial sequence
/// numbers; nothing in flight afterwards.
fn established_with(client_isn: u32, backend_isn: u32) -> Flow {
    let mut flow = opened(client_isn);
    let syn_ack = seg(TCP_SYN | TCP_ACK, backend_isn, client_isn.wrapping_add(1), 0);
    assert_eq!(advance(&mut flow, FromBackend, &syn_ack), Event::Handshake);
    let ack = seg(TCP_ACK, client_isn.wrapping_add(1), backend_isn.wrapping_add(1), 0);
    assert_eq!(advance(&mut flow, FromClient, &ack), Event::Established);
    flow
}

fn established() -> Flow {
    established_with(CLIENT_ISN, BACKEND_ISN)
}

/// Sends `segment` and checks that a RST changed nothing but said so.
fn assert_rst_ignored(flow: &Flow, dir: Direction, rst: Segment, why: &str) {
    let mut after = *flow;
    assert_eq!(advance(&mut after, dir, &rst), Event::RstOutOfWindow, "{why}");
    assert_eq!(after, *flow, "{why}: the flow is left as it was");
}

#[test]
fn syn_without_ack_fin_or_rst_is_a_connection_request() {
    assert!(is_connection_request(TCP_SYN));
    for flags in [TCP_SYN | TCP_ACK, TCP_ACK, TCP_SYN | TCP_FIN, TCP_SYN | TCP_RST] {
        assert!(!is_connection_request(flags), "{flags:#x}");
    }
    assert!(has_bad_flags(TCP_SYN | TCP_FIN) && has_bad_flags(TCP_SYN | TCP_RST | TCP_ACK));
    assert!(!has_bad_flags(TCP_SYN) && !has_bad_flags(TCP_SYN | TCP_ACK) && !has_bad_flags(TCP_FIN | TCP_RST));
}

#[test]
fn a_flow_is_established_only_by_the_clients_ack_of_the_syn_ack() {
    let mut flow = opened(CLIENT_ISN);
    assert_eq!(phase(flow.state), FlowPhase::Embryonic);
    let syn_ack = seg(TCP_SYN | TCP_ACK, BACKEND_ISN, CLIENT_ISN + 1, 0);
    assert_eq!(advance(&mut flow, FromBackend, &syn_ack), Event::Handshake);
    assert_eq!(
        phase(flow.state),
        FlowPhase::Embryonic,
        "the backend's answer is not enough"
    );
    assert_eq!(
        advance(&mut flow, FromBackend, &syn_ack),
        Event::None,
        "a retransmitted SYN-ACK"
    );
    let ack = seg(TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 1, 0);
    assert_eq!(advance(&mut flow, FromClient, &ack), Event::Established);
    assert_eq!(phase(flow.state), FlowPhase::Established);
    assert_eq!(advance(&mut flow, FromClient, &ack), Event::None, "counted once");
}

#[test]
fn a_blind_ack_does_not_establish_a_flow() {
    let mut flow = opened(CLIENT_ISN);
    let guess = seg(TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 1, 0);
    assert_eq!(
        advance(&mut flow, FromClient, &guess),
        Event::None,
        "before the SYN-ACK"
    );
    advance(
        &mut flow,
        FromBackend,
        &seg(TCP_SYN | TCP_ACK, BACKEND_ISN, CLIENT_ISN + 1, 0),
    );
    for wrong in [BACKEND_ISN, BACKEND_ISN + 2, 12345] {
        let guess = seg(TCP_ACK, CLIENT_ISN + 1, wrong, 0);
        assert_eq!(advance(&mut flow, FromClient, &guess), Event::None, "ack {wrong}");
    }
    let data_and_ack = seg(TCP_ACK | 0x08, CLIENT_ISN + 1, BACKEND_ISN + 1, 100);
    assert_eq!(
        advance(&mut flow, FromClient, &data_and_ack),
        Event::Established,
        "the first data segment may complete it"
    );
}

#[test]
fn data_the_backend_sent_before_the_clients_ack_may_be_acknowledged_too() {
    let mut flow = opened(CLIENT_ISN);
    advance(
        &mut flow,
        FromBackend,
        &seg(TCP_SYN | TCP_ACK, BACKEND_ISN, CLIENT_ISN + 1, 0),
    );
    advance(
        &mut flow,
        FromBackend,
        &seg(TCP_ACK, BACKEND_ISN + 1, CLIENT_ISN + 1, 500),
    );
    let ack = seg(TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 501, 0);
    assert_eq!(advance(&mut flow, FromClient, &ack), Event::Established);
}

#[test]
fn a_rst_acknowledging_the_syn_is_a_refusal_whatever_its_sequence_number() {
    let flow = opened(CLIENT_ISN);
    let mut refused = flow;
    let rst = seg(TCP_RST | TCP_ACK, 0, CLIENT_ISN + 1, 0);
    assert_eq!(advance(&mut refused, FromBackend, &rst), Event::Refused);
    assert_eq!(phase(refused.state), FlowPhase::Closed);
    assert_rst_ignored(
        &flow,
        FromBackend,
        seg(TCP_RST | TCP_ACK, 0, CLIENT_ISN + 2, 0),
        "another ack",
    );
    assert_rst_ignored(&flow, FromBackend, seg(TCP_RST, 0, CLIENT_ISN + 1, 0), "no ACK flag");
}

#[test]
fn a_backend_rst_after_its_syn_ack_but_before_the_clients_ack_is_a_refusal() {
    let mut flow = opened(CLIENT_ISN);
    advance(
        &mut flow,
        FromBackend,
        &seg(TCP_SYN | TCP_ACK, BACKEND_ISN, CLIENT_ISN + 1, 0),
    );
    assert_rst_ignored(&flow, FromBackend, seg(TCP_RST, BACKEND_ISN + 7, 0, 0), "not its next");
    let rst = seg(TCP_RST, BACKEND_ISN + 1, 0, 0);
    assert_eq!(advance(&mut flow, FromBackend, &rst), Event::Refused);
}

#[test]
fn an_exact_rst_from_either_side_ends_an_established_flow() {
    let mut by_client = established();
    let rst = seg(TCP_RST | TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 1, 0);
    assert_eq!(advance(&mut by_client, FromClient, &rst), Event::None);
    assert_eq!(phase(by_client.state), FlowPhase::Closed);

    let mut by_backend = established();
    let rst = seg(TCP_RST, BACKEND_ISN + 1, 0, 0);
    assert_eq!(advance(&mut by_backend, FromBackend, &rst), Event::Reset);
    assert_eq!(phase(by_backend.state), FlowPhase::Closed);
    assert_eq!(
        advance(&mut by_backend, FromBackend, &rst),
        Event::None,
        "a second RST is not a second reset"
    );
}

#[test]
fn a_rst_inside_the_receivers_window_but_not_at_its_next_sequence_number_is_ignored() {
    let flow = established();
    for seq in [CLIENT_ISN + 2, CLIENT_ISN + 1000, CLIENT_ISN, CLIENT_ISN + 65535] {
        assert_rst_ignored(&flow, FromClient, seg(TCP_RST, seq, 0, 0), &format!("client seq {seq}"));
    }
    for seq in [BACKEND_ISN + 2, BACKEND_ISN + 30000, BACKEND_ISN] {
        assert_rst_ignored(
            &flow,
            FromBackend,
            seg(TCP_RST, seq, 0, 0),
            &format!("backend seq {seq}"),
        );
    }
}

#[test]
fn random_sequence_numbers_do_not_reset_a_flow() {
    let flow = established();
    let mut x = 0x9e37_79b9u32;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let dir = if x & 1 == 0 { FromClient } else { FromBackend };
        assert_rst_ignored(&flow, dir, seg(TCP_RST | TCP_ACK, x, x.rotate_left(7), 0), "random");
    }
}

#[test]
fn with_data_in_flight_a_rst_from_what_the_receiver_acknowledged_to_what_the_sender_sent_ends_the_flow() {
    let mut flow = established();
    // The backend sends 3000 bytes; the client acknowledges the first 1000.
    advance(
        &mut flow,
        FromBackend,
        &seg(TCP_ACK, BACKEND_ISN + 1, CLIENT_ISN + 1, 3000),
    );
    advance(
        &mut flow,
        FromClient,
        &seg(TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 1001, 0),
    );
    for seq in [BACKEND_ISN + 1001, BACKEND_ISN + 2000, BACKEND_ISN + 3001] {
        let mut reset = flow;
        assert_eq!(
            advance(&mut reset, FromBackend, &seg(TCP_RST, seq, 0, 0)),
            Event::Reset,
            "seq {seq}"
        );
    }
    for seq in [BACKEND_ISN + 1000, BACKEND_ISN + 3002] {
        assert_rst_ignored(&flow, FromBackend, seg(TCP_RST, seq, 0, 0), &format!("seq {seq}"));
    }
}

#[test]
fn a_stateless_rst_echoing_the_clients_ack_ends_the_flow() {
    // A backend that lost the connection answers the client's segment with
    // a RST whose sequence number is that segment's acknowledgment.
    let mut flow = established();
    let data = seg(TCP_ACK | 0x08, CLIENT_ISN + 1, BACKEND_ISN + 1, 50);
    advance(&mut flow, FromClient, &data);
    assert_eq!(
        advance(&mut flow, FromBackend, &seg(TCP_RST, BACKEND_ISN + 1, 0, 0)),
        Event::Reset
    );
}

#[test]
fn forged_segments_far_ahead_or_acks_of_unsent_data_do_not_move_the_state() {
    let flow = established();
    let mut forged = flow;
    let far = CLIENT_ISN + 1 + MAX_SEQ_JUMP + 1;
    advance(&mut forged, FromClient, &seg(TCP_ACK, far, BACKEND_ISN + 1, 100));
    advance(
        &mut forged,
        FromClient,
        &seg(TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 5000, 0),
    );
    assert_eq!(forged, flow, "neither the end nor the ack moved");
    assert_rst_ignored(&forged, FromClient, seg(TCP_RST, far + 100, 0, 0), "at the forged end");
}

#[test]
fn the_end_follows_in_order_data_and_bounded_gaps_but_never_goes_back() {
    let mut flow = established();
    advance(
        &mut flow,
        FromClient,
        &seg(TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 1, 1000),
    );
    assert_eq!(flow.client.end, CLIENT_ISN + 1001);
    // A lost segment before the LB: the next one starts beyond the end.
    advance(
        &mut flow,
        FromClient,
        &seg(TCP_ACK, CLIENT_ISN + 2001, BACKEND_ISN + 1, 1000),
    );
    assert_eq!(flow.client.end, CLIENT_ISN + 3001);
    // Its retransmission fills the hole behind the end.
    advance(
        &mut flow,
        FromClient,
        &seg(TCP_ACK, CLIENT_ISN + 1001, BACKEND_ISN + 1, 1000),
    );
    assert_eq!(flow.client.end, CLIENT_ISN + 3001);
    // The backend acknowledges it all, which is within what the client sent.
    advance(
        &mut flow,
        FromBackend,
        &seg(TCP_ACK, BACKEND_ISN + 1, CLIENT_ISN + 3001, 0),
    );
    assert_eq!(flow.backend.ack, CLIENT_ISN + 3001);
}

#[test]
fn sequence_numbers_wrap_around() {
    let mut flow = established_with(u32::MAX - 10, u32::MAX - 2);
    advance(&mut flow, FromClient, &seg(TCP_ACK, u32::MAX - 9, 0, 100));
    assert_eq!(flow.client.end, 90);
    let mut reset = flow;
    assert_eq!(advance(&mut reset, FromClient, &seg(TCP_RST, 90, 0, 0)), Event::None);
    assert!(has_ended(reset.state));
    assert_rst_ignored(&flow, FromClient, seg(TCP_RST, 91, 0, 0), "one past");
}

#[test]
fn flow_ends_only_after_fin_from_both_sides() {
    let mut flow = established();
    advance(
        &mut flow,
        FromClient,
        &seg(TCP_FIN | TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 1, 0),
    );
    assert_eq!(
        phase(flow.state),
        FlowPhase::Closing,
        "half-closed flow still carries data"
    );
    advance(
        &mut flow,
        FromClient,
        &seg(TCP_FIN | TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 1, 0),
    );
    assert!(!has_ended(flow.state), "two FINs from the client do not end it");
    advance(
        &mut flow,
        FromBackend,
        &seg(TCP_FIN | TCP_ACK, BACKEND_ISN + 1, CLIENT_ISN + 2, 0),
    );
    assert!(has_ended(flow.state));
}

#[test]
fn a_fin_behind_or_far_beyond_the_stream_is_not_a_close() {
    let mut flow = established();
    advance(
        &mut flow,
        FromClient,
        &seg(TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 1, 5000),
    );
    let before = flow.state;
    advance(
        &mut flow,
        FromClient,
        &seg(TCP_FIN | TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 1, 0),
    );
    advance(
        &mut flow,
        FromClient,
        &seg(
            TCP_FIN | TCP_ACK,
            CLIENT_ISN + 5001 + MAX_SEQ_JUMP + 1,
            BACKEND_ISN + 1,
            0,
        ),
    );
    assert_eq!(flow.state, before);
}

#[test]
fn before_its_syn_ack_the_backend_sends_only_an_answer_to_the_syn() {
    let embryonic = opened(CLIENT_ISN);
    let syn_end = CLIENT_ISN + 1;
    let allowed = [
        (seg(TCP_SYN | TCP_ACK, 5, syn_end, 0), "its SYN-ACK"),
        (seg(TCP_RST | TCP_ACK, 0, syn_end, 0), "its refusal"),
        (
            seg(TCP_ACK, 5, 6, 0),
            "a bare ACK (an older connection's state answering the SYN)",
        ),
    ];
    for (segment, what) in allowed {
        assert!(backend_may_send(&embryonic, &segment), "{what}");
    }
    let refused = [
        (seg(TCP_ACK, 5, 6, 10), "data of another connection"),
        (seg(TCP_FIN | TCP_ACK, 5, 6, 0), "another connection's FIN"),
        (seg(TCP_SYN | TCP_ACK, 5, syn_end + 7, 0), "a SYN-ACK of another SYN"),
        (seg(TCP_RST | TCP_ACK, 5, syn_end - 1, 0), "a RST of another connection"),
        (seg(TCP_RST, 5, 0, 0), "a RST acknowledging nothing"),
    ];
    for (segment, what) in refused {
        assert!(!backend_may_send(&embryonic, &segment), "{what}");
    }
    assert!(backend_may_send(&established(), &seg(TCP_FIN | TCP_ACK, 5, 6, 10)));
}

#[test]
fn a_backend_fin_that_does_not_acknowledge_a_client_fin_marks_the_backend_closing_first() {
    let mut backend_first = established();
    let backend_fin = seg(TCP_FIN | TCP_ACK, BACKEND_ISN + 1, CLIENT_ISN + 1, 0);
    advance(&mut backend_first, FromBackend, &backend_fin);
    assert_ne!(backend_first.state & BACKEND_CLOSED_FIRST, 0);
    assert!(wants_client_timestamp(backend_first.state));

    let mut client_first = established();
    advance(
        &mut client_first,
        FromClient,
        &seg(TCP_FIN | TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 1, 0),
    );
    let passive_fin = seg(TCP_FIN | TCP_ACK, BACKEND_ISN + 1, CLIENT_ISN + 2, 0);
    advance(&mut client_first, FromBackend, &passive_fin);
    assert_eq!(client_first.state & BACKEND_CLOSED_FIRST, 0);
    assert!(!wants_client_timestamp(client_first.state));
    // A retransmission of the backend's FIN changes nothing.
    advance(&mut client_first, FromBackend, &backend_fin);
    assert_eq!(client_first.state & BACKEND_CLOSED_FIRST, 0);
}

#[test]
fn only_established_flows_are_kept_alive_by_their_backend() {
    let mut answered = opened(CLIENT_ISN);
    advance(
        &mut answered,
        FromBackend,
        &seg(TCP_SYN | TCP_ACK, BACKEND_ISN, CLIENT_ISN + 1, 0),
    );
    assert!(!backend_keeps_alive(answered.state), "a SYN-ACK to a spoofed source");
    assert!(backend_keeps_alive(established().state));
}

#[test]
fn a_readopted_flow_is_established_where_its_segment_shows_it() {
    let ack = seg(TCP_ACK, CLIENT_ISN + 500, BACKEND_ISN + 700, 0);
    assert!(can_readopt(ack.flags) && !can_readopt(TCP_SYN) && !can_readopt(TCP_RST | TCP_ACK));
    let (state, client, backend) = readopted_by(&ack);
    let mut flow = Flow {
        state,
        client,
        backend,
        ..Default::default()
    };
    assert_eq!(phase(flow.state), FlowPhase::Established);
    assert_eq!(
        advance(&mut flow, FromBackend, &seg(TCP_RST, BACKEND_ISN + 700, 0, 0)),
        Event::Reset,
        "a stateless RST echoing the client's ack"
    );
}

#[test]
fn phases_follow_the_handshake_and_the_close() {
    let established = established();
    let mut half_closed = established;
    advance(
        &mut half_closed,
        FromBackend,
        &seg(TCP_FIN | TCP_ACK, BACKEND_ISN + 1, CLIENT_ISN + 1, 0),
    );
    assert_eq!(phase(half_closed.state), FlowPhase::Closing);
    assert_eq!(phase(opened(7).state), FlowPhase::Embryonic);
    assert_eq!(phase(SYN_SEEN | SYN_ACK_SEEN | FIN_FROM_CLIENT), FlowPhase::Embryonic);
    assert_eq!(phase(established.state | RESET), FlowPhase::Closed);
    assert_eq!(phase(SYN_SEEN | RESET), FlowPhase::Closed);
}

#[test]
fn only_established_and_closing_flows_are_open_and_each_phase_has_its_ctl_name() {
    let phases = [
        (FlowPhase::Embryonic, false, "embryonic"),
        (FlowPhase::Established, true, "established"),
        (FlowPhase::Closing, true, "closing"),
        (FlowPhase::Closed, false, "closed"),
    ];
    for (phase, open, name) in phases {
        assert_eq!((phase.is_open(), phase.name()), (open, name), "{phase:?}");
    }
}

#[test]
fn a_reconnection_guards_the_older_pair_of_a_flow_whose_backend_may_hold_time_wait() {
    let closed = SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED | FIN_FROM_CLIENT | FIN_FROM_BACKEND;
    let backend_first = closed | BACKEND_CLOSED_FIRST;
    assert_eq!(inherited_by_reconnection(backend_first, false), GUARDS_TIME_WAIT);
    assert_eq!(
        inherited_by_reconnection(backend_first, true),
        0,
        "it took the pair over: no pair left behind"
    );
    for same_pair in [false, true] {
        assert_eq!(
            inherited_by_reconnection(closed | GUARDS_TIME_WAIT, same_pair),
            GUARDS_TIME_WAIT,
            "the guard passes on to the next reconnection"
        );
        assert_eq!(
            inherited_by_reconnection(closed, same_pair),
            0,
            "the client closed first"
        );
        assert_eq!(inherited_by_reconnection(closed | RESET, same_pair), 0);
    }
    // The guard is no state the connection's tracking reads.
    let guarded = closed | GUARDS_TIME_WAIT;
    assert_eq!(phase(guarded), phase(closed));
    assert!(!wants_client_timestamp(guarded));
}
