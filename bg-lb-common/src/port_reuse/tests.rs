use super::*;
use crate::{
    flow_state::{
        Direction::{FromBackend, FromClient},
        ESTABLISHED, FIN_FROM_BACKEND, FIN_FROM_CLIENT, SYN_ACK_SEEN, Segment, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
        advance, note_client_timestamp, opened_by,
    },
    maps::{Flow, FlowKey},
};

const CLIENT_ISN: u32 = 1_000;
const BACKEND_ISN: u32 = 900_000;
/// The client's FIN ends at this sequence number: TIME_WAIT's `rcv_nxt`.
const CLIENT_FIN_END: u32 = CLIENT_ISN + 2;
const TS_RECENT: u32 = 5_000_000;
const NOW: u64 = 100_000_000_000;
/// When a port may be taken: [`SETTLE_NS`] after the flows' last packet.
const LATER: u64 = NOW + SETTLE_NS;

fn seg(flags: u8, seq: u32, ack: u32) -> Segment {
    Segment {
        flags,
        seq,
        ack,
        payload_len: 0,
    }
}

fn established() -> Flow {
    let (state, client, backend) = opened_by(&seg(TCP_SYN, CLIENT_ISN, 0));
    let mut flow = Flow {
        state,
        client,
        backend,
        last_seen_ns: NOW,
        ..Default::default()
    };
    advance(
        &mut flow,
        FromBackend,
        &seg(TCP_SYN | TCP_ACK, BACKEND_ISN, CLIENT_ISN + 1),
    );
    advance(&mut flow, FromClient, &seg(TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 1));
    assert_ne!(flow.state & ESTABLISHED, 0);
    flow
}

/// The backend's FIN, the client's ACK and FIN (with TSval `ts`), and the
/// backend's ACK of it: the backend is in TIME_WAIT.
fn backend_closed_first(ts: Option<u32>) -> Flow {
    let mut flow = established();
    advance(
        &mut flow,
        FromBackend,
        &seg(TCP_FIN | TCP_ACK, BACKEND_ISN + 1, CLIENT_ISN + 1),
    );
    assert_ne!(flow.state & BACKEND_CLOSED_FIRST, 0, "the backend closed first");
    advance(&mut flow, FromClient, &seg(TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 2));
    note_client_timestamp(&mut flow, ts.map(|t| t.wrapping_sub(1)));
    advance(
        &mut flow,
        FromClient,
        &seg(TCP_FIN | TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 2),
    );
    note_client_timestamp(&mut flow, ts);
    advance(&mut flow, FromBackend, &seg(TCP_ACK, BACKEND_ISN + 2, CLIENT_FIN_END));
    assert!(has_ended(flow.state));
    assert_eq!(flow.client.end, CLIENT_FIN_END);
    flow
}

/// The client's FIN, the backend's ACK and FIN, and (if `final_ack`) the
/// client's ACK of it.
fn client_closed_first(final_ack: bool) -> Flow {
    let mut flow = established();
    advance(
        &mut flow,
        FromClient,
        &seg(TCP_FIN | TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 1),
    );
    advance(
        &mut flow,
        FromBackend,
        &seg(TCP_FIN | TCP_ACK, BACKEND_ISN + 1, CLIENT_FIN_END),
    );
    assert_eq!(
        flow.state & BACKEND_CLOSED_FIRST,
        0,
        "the backend acknowledged the client's FIN"
    );
    if final_ack {
        advance(&mut flow, FromClient, &seg(TCP_ACK, CLIENT_FIN_END, BACKEND_ISN + 2));
    }
    assert!(has_ended(flow.state));
    flow
}

fn syn(seq: u32, tsval: Option<u32>) -> Syn {
    Syn::new(seq, tsval)
}

#[test]
fn a_port_whose_owner_flow_is_gone_is_free() {
    assert!(reusable::<u32>(None, &syn(0, None), LATER));
}

#[test]
fn a_live_embryonic_or_half_closed_flow_keeps_its_port() {
    let any = syn(CLIENT_FIN_END + 10, Some(TS_RECENT + 10));
    let (state, client, backend) = opened_by(&seg(TCP_SYN, CLIENT_ISN, 0));
    let embryonic = Flow {
        state,
        client,
        backend,
        last_seen_ns: NOW,
        ..Default::default()
    };
    assert!(!reusable(Some(&embryonic), &any, LATER), "embryonic");
    assert!(!reusable(Some(&established()), &any, LATER), "established");
    let mut half_closed = established();
    advance(
        &mut half_closed,
        FromClient,
        &seg(TCP_FIN | TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 1),
    );
    assert!(!reusable(Some(&half_closed), &any, LATER), "half closed");
    assert!(
        !reusable(Some(&established()), &any, NOW + 2 * TIME_WAIT_NS),
        "an idle live flow keeps its port however long it is idle"
    );
}

#[test]
fn a_flow_the_client_closed_first_frees_its_port_once_the_client_acknowledged_the_backends_fin() {
    // Any SYN: the backend has no socket left on the 4-tuple.
    let older = syn(CLIENT_ISN, Some(1));
    assert!(reusable(Some(&client_closed_first(true)), &older, LATER));
    assert!(
        !reusable(Some(&client_closed_first(false)), &older, LATER),
        "the backend is still in LAST_ACK"
    );
}

#[test]
fn a_reset_flow_frees_its_port_at_once() {
    let mut flow = established();
    advance(
        &mut flow,
        FromBackend,
        &seg(TCP_RST | TCP_ACK, BACKEND_ISN + 1, CLIENT_ISN + 1),
    );
    assert_ne!(flow.state & RESET, 0);
    assert!(reusable(Some(&flow), &syn(0, None), LATER));
}

#[test]
fn time_wait_accepts_a_syn_with_a_newer_timestamp_whatever_its_sequence_number() {
    let flow = backend_closed_first(Some(TS_RECENT));
    assert_eq!(flow.client_tsval, TS_RECENT);
    assert!(time_wait_accepts(
        &flow,
        &syn(CLIENT_FIN_END - 100, Some(TS_RECENT + 1))
    ));
    assert!(reusable(
        Some(&flow),
        &syn(CLIENT_FIN_END - 100, Some(TS_RECENT + 1)),
        LATER
    ));
}

#[test]
fn time_wait_refuses_a_syn_with_an_older_timestamp_even_with_a_later_sequence_number() {
    // PAWS: tcp_paws_reject with a window of 0.
    let flow = backend_closed_first(Some(TS_RECENT));
    assert!(!time_wait_accepts(
        &flow,
        &syn(CLIENT_FIN_END + 1_000, Some(TS_RECENT - 1))
    ));
    assert!(!reusable(
        Some(&flow),
        &syn(CLIENT_FIN_END + 1_000, Some(TS_RECENT - 1)),
        LATER
    ));
    // Wrapping: "older" is in 32-bit timestamp space.
    let wrapped = backend_closed_first(Some(5));
    assert!(!time_wait_accepts(
        &wrapped,
        &syn(CLIENT_FIN_END + 1, Some(u32::MAX - 5))
    ));
    assert!(time_wait_accepts(&wrapped, &syn(CLIENT_FIN_END - 1, Some(6))));
}

#[test]
fn time_wait_with_the_same_timestamp_decides_by_sequence_number() {
    let flow = backend_closed_first(Some(TS_RECENT));
    assert!(time_wait_accepts(&flow, &syn(CLIENT_FIN_END + 1, Some(TS_RECENT))));
    assert!(!time_wait_accepts(&flow, &syn(CLIENT_FIN_END, Some(TS_RECENT))));
}

#[test]
fn without_timestamps_on_either_side_time_wait_decides_by_sequence_number() {
    // A SYN without the option (the SYN proxy's) against a TIME_WAIT with one...
    let flow = backend_closed_first(Some(TS_RECENT));
    assert!(time_wait_accepts(&flow, &syn(CLIENT_FIN_END + 1, None)));
    assert!(!time_wait_accepts(&flow, &syn(CLIENT_FIN_END, None)));
    assert!(!time_wait_accepts(&flow, &syn(CLIENT_FIN_END - 1, None)));
    // ... and a connection without timestamps, whose TIME_WAIT never reads
    // the SYN's.
    let plain = backend_closed_first(None);
    assert_eq!(plain.state & CLIENT_TIMESTAMPS, 0);
    assert!(time_wait_accepts(&plain, &syn(CLIENT_FIN_END + 1, Some(1))));
    assert!(!time_wait_accepts(&plain, &syn(CLIENT_FIN_END - 1, Some(u32::MAX / 2))));
}

#[test]
fn a_zero_ts_recent_never_rejects_by_paws() {
    let flow = backend_closed_first(Some(0));
    assert!(time_wait_accepts(&flow, &syn(CLIENT_FIN_END + 1, Some(u32::MAX))));
}

#[test]
fn a_port_stays_its_flows_until_the_backend_surely_processed_its_last_packet() {
    let flow = client_closed_first(true);
    assert!(!reusable(Some(&flow), &syn(0, None), LATER - 1));
    assert!(reusable(Some(&flow), &syn(0, None), LATER));
}

#[test]
fn time_wait_is_over_a_minute_after_the_flows_last_packet() {
    let flow = backend_closed_first(Some(TS_RECENT));
    let refused = syn(CLIENT_FIN_END - 1, Some(TS_RECENT - 1));
    assert!(!reusable(Some(&flow), &refused, NOW + TIME_WAIT_NS - 1));
    assert!(reusable(Some(&flow), &refused, NOW + TIME_WAIT_NS));
}

#[test]
fn the_client_timestamp_record_keeps_the_newest_tsval() {
    let mut flow = backend_closed_first(Some(TS_RECENT));
    note_client_timestamp(&mut flow, Some(TS_RECENT - 7));
    assert_eq!(flow.client_tsval, TS_RECENT, "an older TSval leaves it");
    note_client_timestamp(&mut flow, None);
    assert_eq!(flow.client_tsval, TS_RECENT, "a segment without one leaves it");
    note_client_timestamp(&mut flow, Some(TS_RECENT + 7));
    assert_eq!(flow.client_tsval, TS_RECENT + 7);
}

#[test]
fn simultaneous_close_counts_as_the_backend_closing_first() {
    // Both FINs cross: the backend's does not acknowledge the client's, so
    // the backend goes CLOSING -> TIME_WAIT.
    let mut flow = established();
    advance(
        &mut flow,
        FromClient,
        &seg(TCP_FIN | TCP_ACK, CLIENT_ISN + 1, BACKEND_ISN + 1),
    );
    advance(
        &mut flow,
        FromBackend,
        &seg(TCP_FIN | TCP_ACK, BACKEND_ISN + 1, CLIENT_ISN + 1),
    );
    assert_eq!(
        flow.state & (FIN_FROM_CLIENT | FIN_FROM_BACKEND | BACKEND_CLOSED_FIRST | SYN_ACK_SEEN),
        FIN_FROM_CLIENT | FIN_FROM_BACKEND | BACKEND_CLOSED_FIRST | SYN_ACK_SEEN
    );
}

/// A TCP header (20 bytes) followed by `options`, zero-padded to 60.
fn header(options: &[u8]) -> ([u8; 60], u32) {
    let mut h = [0u8; 60];
    h[20..20 + options.len()].copy_from_slice(options);
    (h, (20 + options.len()) as u32)
}

fn tcp_timestamp(header: &[u8; 60], len: u32) -> Option<u32> {
    super::tcp_timestamp(
        len,
        |at| header.get(at).copied(),
        |at| Some(u32::from_be_bytes(header.get(at..at + 4)?.try_into().ok()?)),
    )
}

#[test]
fn the_timestamp_option_is_found_wherever_linux_puts_it() {
    // A SYN: MSS, SACK permitted, timestamps, NOP, window scale.
    let (syn, len) = header(&[2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 1, 2, 0, 0, 0, 0, 1, 3, 3, 7]);
    assert_eq!(tcp_timestamp(&syn, len), Some(0x0102));
    // A data segment: NOP, NOP, timestamps.
    let (data, len) = header(&[1, 1, 8, 10, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1]);
    assert_eq!(tcp_timestamp(&data, len), Some(0xdead_beef));
}

#[test]
fn a_missing_or_malformed_timestamp_option_reads_as_none() {
    let (bare, len) = header(&[]);
    assert_eq!(tcp_timestamp(&bare, len), None);
    let (mss_only, len) = header(&[2, 4, 5, 180]);
    assert_eq!(tcp_timestamp(&mss_only, len), None);
    let (after_eol, len) = header(&[0, 0, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0]);
    assert_eq!(tcp_timestamp(&after_eol, len), None, "options end at EOL");
    let (short, len) = header(&[8, 6, 0, 0, 0, 9, 0, 0]);
    assert_eq!(
        tcp_timestamp(&short, len),
        None,
        "a timestamp option of the wrong length"
    );
    let (zero_len, len) = header(&[3, 0, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0]);
    assert_eq!(
        tcp_timestamp(&zero_len, len),
        None,
        "an option of length 0 ends parsing"
    );
    let (cut, _) = header(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0]);
    assert_eq!(tcp_timestamp(&cut, 28), None, "an option past the header's end");
    let (nops, len) = header(&[1; 40]);
    assert_eq!(tcp_timestamp(&nops, len), None);
    let mut late = [1u8; 20];
    late[TCP_OPTIONS_WALKED..TCP_OPTIONS_WALKED + 10].copy_from_slice(&[8, 10, 0, 0, 0, 9, 0, 0, 0, 0]);
    let (late, len) = header(&late);
    assert_eq!(tcp_timestamp(&late, len), None, "past the options walked");
}

/// A client 10.0.0.7:41000 (wire order) to VIP 10.0.0.100:80.
const CLIENT_ADDR: u32 = u32::from_be_bytes([10, 0, 0, 7]).to_be();
const CLIENT_PORT: u16 = 41_000u16.to_be();

fn to_vip(vip_last_octet: u8) -> FlowKey {
    let vip = u32::from_be_bytes([10, 0, 0, vip_last_octet]).to_be();
    FlowKey::from_wire(CLIENT_ADDR, CLIENT_PORT, vip, 80u16.to_be())
}

/// `flow` pinned to the client's own address and port, as under `gateway`.
fn on_clients_own_pair(flow: Flow) -> Flow {
    Flow {
        snat_addr: CLIENT_ADDR,
        snat_port: CLIENT_PORT,
        ..flow
    }
}

#[test]
fn a_gateway_reconnection_takes_its_ended_flows_4_tuple_back_at_once_whatever_time_wait_would_say() {
    let key = to_vip(100);
    // PAWS would reject it, and the flow's last packet was just now: the
    // rules for another client refuse it; the client's own reconnection is
    // for its own stack and the backend to settle.
    let paws_rejected = syn(CLIENT_FIN_END + 1, Some(TS_RECENT - 1));
    let time_wait = on_clients_own_pair(backend_closed_first(Some(TS_RECENT)));
    assert!(!reusable(Some(&time_wait), &paws_rejected, NOW));
    assert!(reconnects_on_own_4_tuple(&key, &key, &time_wait));
    let mut reset = established();
    advance(&mut reset, FromClient, &seg(TCP_RST, CLIENT_ISN + 1, 0));
    for (what, ended) in [
        ("reset", reset),
        ("the client closed first", client_closed_first(false)),
    ] {
        assert!(
            reconnects_on_own_4_tuple(&key, &key, &on_clients_own_pair(ended)),
            "{what}"
        );
    }
}

#[test]
fn a_live_flow_keeps_its_4_tuple_from_its_own_5_tuples_syn() {
    let key = to_vip(100);
    let (state, client, backend) = opened_by(&seg(TCP_SYN, CLIENT_ISN, 0));
    let embryonic = Flow {
        state,
        client,
        backend,
        ..Default::default()
    };
    for (what, live) in [("embryonic", embryonic), ("established", established())] {
        assert!(
            !reconnects_on_own_4_tuple(&key, &key, &on_clients_own_pair(live)),
            "{what}"
        );
    }
}

#[test]
fn another_vips_flow_or_a_snat_pair_gets_no_own_4_tuple_exemption() {
    let key = to_vip(100);
    let ended = on_clients_own_pair(client_closed_first(false));
    assert!(
        !reconnects_on_own_4_tuple(&to_vip(101), &key, &ended),
        "the same client address and port through another VIP: a collision at the backend"
    );
    let snat_pair = Flow {
        snat_addr: u32::from_be_bytes([10, 0, 0, 1]).to_be(),
        snat_port: 20_000u16.to_be(),
        ..ended
    };
    assert!(
        !reconnects_on_own_4_tuple(&key, &key, &snat_pair),
        "full NAT: the backend saw the SNAT pair, not the client's own 4-tuple"
    );
}
