use std::net::{Ipv4Addr, SocketAddrV4};

use bg_lb_common::{
    flow_state::{ESTABLISHED, FIN_FROM_BACKEND, FIN_FROM_CLIENT, RESET, SYN_ACK_SEEN, SYN_SEEN},
    maps::{
        Backend, Backend6, FORWARDING_DSR, FORWARDING_GATEWAY, Flow, Flow6, FlowKey, FlowKey6, NatKey, NatKey6, Service,
    },
};

use super::*;

const S: u64 = 1_000_000_000;
const T: FlowTimeouts = FlowTimeouts {
    established_idle: Duration::from_secs(3600),
    closing: Duration::from_secs(10),
    syn: Duration::from_secs(10),
};
/// The service every judged flow belongs to unless told otherwise.
const SERVICE: u32 = 0;
/// A UDP service whose flows end after 3 s idle.
const UDP_SERVICE: u32 = 1;
const UDP_BACKEND_ID: u32 = 4;
const BACKEND_ID: u32 = 3;
const GENERATION: u32 = 7;
/// The SNAT address of [`pinned`] flows (wire order), and a second one.
const SNAT: u32 = u32::from_ne_bytes([10, 0, 0, 1]);
const SNAT_2: u32 = u32::from_ne_bytes([10, 0, 0, 2]);

fn flow(state: u32, last_seen_s: u64) -> Flow {
    Flow {
        state,
        last_seen_ns: last_seen_s * S,
        ..Default::default()
    }
}

fn backend() -> Backend {
    Backend::new(
        SERVICE,
        GENERATION,
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 10), 8080),
        0,
        false,
    )
}

/// The services in the data plane: [`SERVICE`] (TCP) and [`UDP_SERVICE`].
fn services() -> HashMap<u32, Service> {
    HashMap::from([
        (SERVICE, Service::default()),
        (
            UDP_SERVICE,
            Service {
                id: UDP_SERVICE,
                udp_idle_s: 3,
                ..Service::default()
            },
        ),
    ])
}

fn key(port: u16) -> FlowKey {
    FlowKey::from_client(
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 5), port),
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 80),
    )
}

/// A flow last seen at 100 s on [`BACKEND_ID`] (its current generation)
/// and `snat_port`.
fn pinned(state: u32, snat_port: u16) -> Flow {
    Flow {
        backend_id: BACKEND_ID,
        backend_gen: GENERATION,
        service_id: SERVICE,
        snat_addr: SNAT,
        snat_port: snat_port.to_be(),
        ..flow(state, 100)
    }
}

fn nat(snat_port: u16) -> NatKey {
    NatKey::new(&backend(), SNAT, snat_port.to_be())
}

/// Judges `flows` (each owning its reverse entry unless `reverse` says
/// otherwise) at 105 s.
fn sweep(flows: &[(FlowKey, Flow)], reverse: &[(NatKey, FlowKey)]) -> Sweep<u32> {
    judge(
        flows.iter().copied(),
        reverse.iter().copied(),
        &HashMap::from([(BACKEND_ID, backend())]),
        &services(),
        105 * S,
        &T,
    )
}

fn removals(sweep: &Sweep<u32>) -> Vec<(FlowKey, Option<NatKey>, Removal)> {
    sweep.flows.iter().map(|r| (r.key, r.reverse, r.why)).collect()
}

#[test]
fn closed_flows_linger_for_the_closing_timeout() {
    let closed = flow(SYN_SEEN | ESTABLISHED | FIN_FROM_CLIENT | FIN_FROM_BACKEND, 100);
    assert_eq!(expiry(&closed, 109 * S, &T), None);
    assert_eq!(expiry(&closed, 110 * S, &T), Some(Expiry::Closed));
    assert_eq!(expiry(&flow(SYN_SEEN | RESET, 100), 110 * S, &T), Some(Expiry::Closed));
}

#[test]
fn established_flows_live_until_idle_for_an_hour() {
    let f = flow(SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED, 100);
    assert_eq!(expiry(&f, (100 + 3599) * S, &T), None);
    assert_eq!(expiry(&f, (100 + 3600) * S, &T), Some(Expiry::Idle));
}

#[test]
fn embryonic_flows_expire_after_the_syn_timeout_whatever_the_backend_answered() {
    for state in [
        SYN_SEEN,
        SYN_SEEN | SYN_ACK_SEEN,
        SYN_SEEN | SYN_ACK_SEEN | FIN_FROM_CLIENT,
    ] {
        assert_eq!(expiry(&flow(state, 100), 109 * S, &T), None, "{state:#x}");
        assert_eq!(
            expiry(&flow(state, 100), 110 * S, &T),
            Some(Expiry::HandshakeTimedOut),
            "{state:#x}"
        );
    }
}

#[test]
fn half_closed_flows_are_still_open_and_idle_out_as_established() {
    let half_closed = flow(SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED | FIN_FROM_CLIENT, 100);
    assert!(phase(half_closed.state).is_open());
    assert_eq!(expiry(&half_closed, 130 * S, &T), None);
    assert_eq!(expiry(&half_closed, (100 + 3600) * S, &T), Some(Expiry::Idle));
}

#[test]
fn a_clock_behind_the_flow_never_expires_it() {
    assert_eq!(expiry(&flow(SYN_SEEN, 100), 50 * S, &T), None);
}

#[test]
fn the_census_counts_open_and_embryonic_flows_apart() {
    let established = SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED;
    let flows = [
        (key(1), pinned(established, 20000)),
        (key(2), pinned(established | FIN_FROM_BACKEND, 20001)),
        (key(3), pinned(SYN_SEEN, 20002)),
        (key(4), pinned(SYN_SEEN | SYN_ACK_SEEN, 20003)),
        (key(5), pinned(established | RESET, 20004)),
    ];
    let reverse: Vec<_> = flows
        .iter()
        .map(|(k, f)| (nat(u16::from_be(f.snat_port)), *k))
        .collect();
    let census = sweep(&flows, &reverse).census;
    assert_eq!(
        (
            census.open_of(BACKEND_ID),
            census.embryonic_of(BACKEND_ID),
            census.total_of(BACKEND_ID)
        ),
        (2, 2, 5),
        "a closed flow is neither, but still names its backend"
    );
    assert_eq!(census.total_of_service(SERVICE), 5);
    assert_eq!((census.expired, census.orphans), (0, 0));
    assert_eq!(
        census.snat_pairs_of(backend().addr().into()),
        5,
        "every flow holds a SNAT pair"
    );
}

#[test]
fn the_census_counts_the_snat_pairs_of_the_flows_that_stay_on_every_address() {
    let established = SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED;
    let second = Flow {
        snat_addr: SNAT_2,
        ..pinned(established, 20000)
    };
    let flows = [
        (key(1), pinned(established, 20000)),
        // The same port on the other address: a pair of its own.
        (key(2), second),
        // Closed long ago: removed with its entry, so no longer in use.
        (key(3), pinned(SYN_SEEN | RESET, 20001)),
    ];
    let reverse = [
        (nat(20000), key(1)),
        (NatKey::new(&backend(), SNAT_2, 20000u16.to_be()), key(2)),
        (nat(20001), key(3)),
    ];
    let judged = sweep(&flows.map(|(k, f)| (k, Flow { last_seen_ns: 0, ..f })), &reverse);
    assert_eq!(judged.census.snat_pairs_of(backend().addr().into()), 2);
    assert_eq!(judged.flows.len(), 1, "{:?}", judged.flows);
    assert!(judged.orphan_reverse.is_empty(), "{:?}", judged.orphan_reverse);
    let unknown = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 11), 8080);
    assert_eq!(judged.census.snat_pairs_of(unknown.into()), 0);
}

#[test]
fn expired_flows_are_removed_and_their_reverse_entry_left_to_the_data_plane() {
    let closed = pinned(SYN_SEEN | RESET, 20001);
    let flows = [
        (key(1), pinned(SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED, 20000)),
        (key(2), closed),
    ];
    let judged = judge(
        flows,
        [(nat(20000), key(1)), (nat(20001), key(2))],
        &HashMap::from([(BACKEND_ID, backend())]),
        &services(),
        110 * S,
        &T,
    );
    assert_eq!(
        judged.flows,
        [FlowRemoval {
            key: key(2),
            flow: closed,
            reverse: None,
            why: Removal::Expired(Expiry::Closed),
        }]
    );
    assert!(judged.orphan_reverse.is_empty());
    assert_eq!((judged.census.total_of(BACKEND_ID), judged.census.expired), (1, 1));
}

#[test]
fn a_reverse_entry_whose_flow_was_evicted_is_left_to_the_data_plane_while_its_backend_is_there() {
    let kept = (key(1), pinned(SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED, 20000));
    let judged = sweep(&[kept], &[(nat(20000), key(1)), (nat(20001), key(2))]);
    assert!(judged.orphan_reverse.is_empty(), "a free port to the data plane");
    assert!(judged.flows.is_empty());
    assert_eq!(judged.census.orphans, 0);
}

#[test]
fn a_flow_whose_reverse_entry_is_gone_or_names_another_flow_is_an_orphan() {
    let established = SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED;
    let lost = (key(1), pinned(established, 20000));
    let taken = (key(2), pinned(established, 20001));
    let owner = (key(3), pinned(established, 20001));
    let judged = sweep(&[lost, taken, owner], &[(nat(20001), key(3))]);
    assert_eq!(
        removals(&judged),
        [(key(1), None, Removal::NatLost), (key(2), None, Removal::NatLost),],
        "neither touches the reverse entry of the flow that owns the port"
    );
    assert!(judged.orphan_reverse.is_empty());
    assert_eq!(judged.census.open_of(BACKEND_ID), 1);
}

#[test]
fn a_dsr_flow_owns_no_reverse_entry_and_is_no_orphan_without_one() {
    let established = SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED;
    let dsr = Flow {
        snat_addr: 0,
        snat_port: 0,
        forwarding: FORWARDING_DSR,
        ..pinned(established, 0)
    };
    let judged = sweep(&[(key(1), dsr)], &[]);
    assert!(removals(&judged).is_empty());
    assert_eq!((judged.census.open_of(BACKEND_ID), judged.census.orphans), (1, 0));
    assert_eq!(
        judged.census.snat_pairs_of(backend().addr().into()),
        0,
        "it holds no SNAT pair"
    );
}

#[test]
fn a_gateway_flow_owns_its_reverse_entry_but_holds_no_snat_pair() {
    let gateway = Flow {
        forwarding: FORWARDING_GATEWAY,
        ..pinned(SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED, 20000)
    };
    let judged = sweep(&[(key(1), gateway)], &[(nat(20000), key(1))]);
    assert!(removals(&judged).is_empty());
    assert_eq!(judged.census.open_of(BACKEND_ID), 1);
    assert_eq!(
        judged.census.snat_pairs_of(backend().addr().into()),
        0,
        "its pair is the client's"
    );
}

#[test]
fn flows_of_a_removed_service_end_with_their_reverse_entries() {
    let mut gone = pinned(SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED, 20000);
    gone.service_id = 5;
    let judged = sweep(&[(key(1), gone)], &[(nat(20000), key(1))]);
    assert_eq!(removals(&judged), [(key(1), Some(nat(20000)), Removal::ServiceGone)]);
    assert!(judged.orphan_reverse.is_empty(), "taken along with the flow");
    assert_eq!(judged.census.total_of_service(5), 0);
}

#[test]
fn a_flow_whose_backend_id_names_another_backend_now_is_an_orphan_and_so_is_its_reverse_entry() {
    let mut older = pinned(SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED, 20000);
    older.backend_gen = GENERATION - 1;
    // Its reverse entry names the backend it was pinned to, not the id's
    // current one.
    let old_backend = Backend::new(
        SERVICE,
        GENERATION - 1,
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 99), 80),
        0,
        false,
    );
    let old_nat = NatKey::new(&old_backend, SNAT, 20000u16.to_be());
    let judged = sweep(&[(key(1), older)], &[(old_nat, key(1))]);
    assert_eq!(removals(&judged), [(key(1), None, Removal::BackendGone)]);
    assert_eq!(judged.orphan_reverse, [(old_nat, key(1))]);
}

#[test]
fn ownership_is_rechecked_against_the_current_flow_and_backend() {
    let flow = pinned(SYN_SEEN, 20000);
    assert!(owns(Some(&flow), Some(&backend()), &nat(20000)));
    assert!(!owns(None, Some(&backend()), &nat(20000)), "the flow is gone");
    assert!(!owns(Some(&flow), Some(&backend()), &nat(20001)), "another port");
    let other_address = NatKey::new(&backend(), SNAT_2, 20000u16.to_be());
    assert!(!owns(Some(&flow), Some(&backend()), &other_address), "another address");
    assert!(!owns(Some(&flow), Some(&Backend::default()), &nat(20000)), "a free id");
    let reused = Backend {
        generation: GENERATION + 1,
        ..backend()
    };
    assert!(!owns(Some(&flow), Some(&reused), &nat(20000)), "the id's next backend");
}

#[test]
fn a_table_judged_slice_by_slice_counts_as_judged_whole() {
    let states = [SYN_SEEN, SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED, RESET];
    let flows: Vec<(FlowKey, Flow)> = (0..9u16)
        .map(|i| {
            let flow = pinned(states[usize::from(i) % 3], 20000 + i);
            // Reset flows have lingered past the closing timeout.
            let last_seen_ns = if flow.state == RESET { 90 * S } else { flow.last_seen_ns };
            (key(i), Flow { last_seen_ns, ..flow })
        })
        .chain([(
            key(100),
            Flow {
                service_id: 5,
                ..pinned(SYN_SEEN, 21000)
            },
        )])
        .collect();
    let reverse: Vec<(NatKey, FlowKey)> = (0..9u16).map(|i| (nat(20000 + i), key(i))).collect();
    let whole = sweep(&flows, &reverse).census;
    let mut sliced = FlowCensus::default();
    for (flows, reverse) in flows.chunks(4).zip(reverse.chunks(4)) {
        sliced.absorb(sweep(flows, reverse).census);
    }
    assert_eq!((whole.open_of(BACKEND_ID), whole.embryonic_of(BACKEND_ID)), (3, 3));
    assert_eq!(
        (whole.expired, whole.orphans),
        (3, 1),
        "RST ends three; one flow's service is gone"
    );
    assert_eq!((sliced.expired, sliced.orphans), (whole.expired, whole.orphans));
    assert_eq!(
        (sliced.open, sliced.embryonic, sliced.total, sliced.per_service),
        (whole.open, whole.embryonic, whole.total, whole.per_service)
    );
}

#[test]
fn a_closed_flow_whose_port_a_new_connection_took_over_leaves_as_reused_not_as_an_orphan() {
    let closed = SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED | FIN_FROM_CLIENT | FIN_FROM_BACKEND;
    let old = (key(1), pinned(closed, 20000));
    let new = (key(2), pinned(SYN_SEEN, 20000));
    let judged = sweep(&[old, new], &[(nat(20000), key(2))]);
    assert_eq!(removals(&judged), [(key(1), None, Removal::PortReused)]);
    assert_eq!((judged.census.expired, judged.census.orphans), (1, 0));
}

/// [`slice_owners`] for `slice` with `snapshot`, the map now answering
/// `now` for every lookup; with the lookups it made.
fn owners_of(
    slice: &[(FlowKey, Flow)],
    snapshot: &mut Owners<u32>,
    now: &HashMap<NatKey, FlowKey>,
) -> (SliceOwners<u32>, Vec<NatKey>) {
    let mut looked_up = Vec::new();
    let backends = HashMap::from([(BACKEND_ID, backend())]);
    let owners = slice_owners(slice, &backends, snapshot, |nat| {
        looked_up.push(*nat);
        Ok::<_, ()>(now.get(nat).copied())
    })
    .expect("the fake lookup never fails");
    (owners, looked_up)
}

#[test]
fn a_flow_the_reverse_nat_snapshot_names_as_its_pairs_owner_needs_no_lookup() {
    let slice = [
        (key(1), pinned(ESTABLISHED, 20000)),
        (key(2), pinned(ESTABLISHED, 20001)),
    ];
    let mut snapshot = Owners::from_iter([(nat(20000), key(1)), (nat(20001), key(2))]);
    let (owners, looked_up) = owners_of(&slice, &mut snapshot, &HashMap::new());
    assert_eq!(looked_up, []);
    assert_eq!(owners.owned, [nat(20000), nat(20001)]);
}

#[test]
fn a_port_taken_over_after_the_snapshot_is_judged_by_its_owner_now_whichever_flow_of_the_slice_comes_first() {
    let closed = SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED | FIN_FROM_CLIENT | FIN_FROM_BACKEND;
    let ended = (key(1), pinned(closed, 20000));
    let taker = (key(2), pinned(SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED, 20000));
    let now = HashMap::from([(nat(20000), key(2))]);
    for slice in [[ended, taker], [taker, ended]] {
        // Read before the takeover: the pair still the ended flow's.
        let mut snapshot = Owners::from_iter([(nat(20000), key(1))]);
        let (owners, looked_up) = owners_of(&slice, &mut snapshot, &now);
        assert_eq!(looked_up, [nat(20000)], "only the flow the snapshot does not name");
        assert_eq!(owners.owned, [nat(20000)]);
        let judged = judge(
            slice,
            owners.reverse,
            &HashMap::from([(BACKEND_ID, backend())]),
            &services(),
            105 * S,
            &T,
        );
        assert_eq!(
            removals(&judged),
            [(key(1), None, Removal::PortReused)],
            "the live flow keeps its pair"
        );
    }
}

#[test]
fn a_pair_whose_entry_went_after_the_snapshot_is_no_flows_and_leaves_the_snapshot() {
    let slice = [(key(1), pinned(ESTABLISHED, 20000))];
    let mut snapshot = Owners::from_iter([(nat(20000), key(9))]);
    let (owners, looked_up) = owners_of(&slice, &mut snapshot, &HashMap::new());
    assert_eq!(
        (looked_up, owners.reverse, owners.owned),
        (vec![nat(20000)], vec![], vec![])
    );
    assert!(snapshot.is_empty(), "not an orphan candidate any more");
}

#[test]
fn a_closed_flow_whose_backend_closed_first_stays_while_its_time_wait_may_last() {
    let closed = SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED | FIN_FROM_CLIENT | FIN_FROM_BACKEND;
    let time_wait = flow(closed | BACKEND_CLOSED_FIRST, 100);
    assert_eq!(
        expiry(&time_wait, 150 * S, &T),
        None,
        "past `closing`, inside TIME_WAIT"
    );
    assert_eq!(expiry(&time_wait, 100 * S + TIME_WAIT_NS, &T), Some(Expiry::Closed));
    assert_eq!(expiry(&flow(closed, 100), 110 * S, &T), Some(Expiry::Closed));
}

#[test]
fn a_reconnection_that_guards_its_5_tuples_older_pair_stays_until_that_pairs_time_wait_is_over() {
    // Key 1's flow replaced an ended flow of the same 5-tuple pinned to
    // 20001 (whose entry still names key 1), took 20000, closed at 100 s,
    // and a newer connection has taken 20000 over: without the flow, 20001
    // would look free while its backend may still hold TIME_WAIT there.
    let closed = SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED | FIN_FROM_CLIENT | FIN_FROM_BACKEND;
    let created = 99 * S;
    let guard = Flow {
        created_ns: created,
        ..pinned(closed | GUARDS_TIME_WAIT, 20000)
    };
    let reverse = [(nat(20000), key(2)), (nat(20001), key(1))];
    let judged = sweep(&[(key(1), guard)], &reverse);
    assert_eq!(removals(&judged), [], "kept, although its own pair was taken over");
    assert_eq!(
        judged.census.snat_pairs_of(backend().addr().into()),
        0,
        "it holds no pair"
    );
    assert_eq!(expiry(&guard, 150 * S, &T), None, "past `closing`");
    let over = created + TIME_WAIT_NS;
    assert_eq!(expiry(&guard, over, &T), Some(Expiry::Closed));
    let later = judge(
        [(key(1), guard)],
        reverse,
        &HashMap::from([(BACKEND_ID, backend())]),
        &services(),
        over,
        &T,
    );
    assert_eq!(removals(&later), [(key(1), None, Removal::PortReused)]);
    // A flow without the guard leaves as before.
    let plain = Flow {
        created_ns: created,
        ..pinned(closed, 20000)
    };
    assert_eq!(
        removals(&sweep(&[(key(1), plain)], &reverse)),
        [(key(1), None, Removal::PortReused)]
    );
}

#[test]
fn a_udp_flow_stays_open_until_idle_for_its_services_timeout_and_its_pair_goes_with_it() {
    let udp_backend = Backend::new(
        UDP_SERVICE,
        GENERATION,
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 10), 5353),
        0,
        false,
    );
    let client = FlowKey::with_proto(
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 5), 40000),
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 53),
        IPPROTO_UDP,
    );
    let udp_flow = Flow {
        backend_id: UDP_BACKEND_ID,
        service_id: UDP_SERVICE,
        ..pinned(bg_lb_common::udp::UDP_FLOW_STATE, 20000)
    };
    let udp_nat = udp_flow.nat_key(&udp_backend);
    // A TCP flow idle as long stays: its timeout is established_idle.
    let tcp_flow = (key(1), pinned(SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED, 20000));
    let judge_at = |now_s: u64| {
        judge(
            [(client, udp_flow), tcp_flow],
            [(udp_nat, client), (nat(20000), key(1))],
            &HashMap::from([(BACKEND_ID, backend()), (UDP_BACKEND_ID, udp_backend)]),
            &services(),
            now_s * S,
            &T,
        )
    };
    let early = judge_at(102);
    assert!(early.flows.is_empty());
    assert_eq!(early.census.open_of(UDP_BACKEND_ID), 1, "a drain waits for it");
    let late = judge_at(103);
    assert_eq!(
        removals(&late),
        [(client, Some(udp_nat), Removal::Expired(Expiry::Idle))],
        "the UDP pair is freed with its flow; the TCP flow stays"
    );
    assert_eq!(late.census.open_of(BACKEND_ID), 1);
}

#[test]
fn a_udp_reverse_entry_whose_flow_is_gone_is_an_orphan_even_on_a_live_backend() {
    let gone = FlowKey::with_proto(
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 5), 40001),
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 53),
        IPPROTO_UDP,
    );
    // A flow pinned to the pair that the gone flow's entry still holds.
    let flow = (key(7), pinned(SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED, 20000));
    let judged = judge(
        [flow],
        [(nat(20000), gone)],
        &HashMap::from([(BACKEND_ID, backend())]),
        &services(),
        101 * S,
        &T,
    );
    assert_eq!(judged.orphan_reverse, [(nat(20000), gone)]);
    // A TCP owner's entry on a live backend stays: the data plane may take it over.
    let tcp = judge(
        [flow],
        [(nat(20000), key(8))],
        &HashMap::from([(BACKEND_ID, backend())]),
        &services(),
        101 * S,
        &T,
    );
    assert!(tcp.orphan_reverse.is_empty());
}

/// IPv6 flows are judged by the same rules, through the same code: an
/// established TCP flow stays (counted open, its SNAT pair in use by its
/// IPv6 backend), one idle past `established_idle` goes without its reverse
/// entry (the data plane reuses that port), and an idle UDP flow goes with
/// its entry.
#[test]
fn ipv6_flows_are_counted_and_expire_like_ipv4_ones() {
    use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
    let v6 = |last: u16, port: u16| SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last), port, 0, 0);
    let backend_addr = v6(0x10, 8080);
    let backend = Backend6::new(SERVICE, GENERATION, backend_addr, 0, false);
    let udp_backend = Backend6::new(UDP_SERVICE, GENERATION, backend_addr, 0, false);
    let snat = bg_lb_common::maps::wire_ip6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
    let key = |port: u16, proto| FlowKey6::with_proto(v6(0x99, port), v6(0x100, 80), proto);
    let flow = |state, last_seen_s: u64, (backend_id, service_id), snat_port: u16| Flow6 {
        backend_id,
        service_id,
        backend_gen: GENERATION,
        snat_addr: snat,
        snat_port: snat_port.to_be(),
        state,
        last_seen_ns: last_seen_s * S,
        ..Default::default()
    };
    let established = SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED;
    let tcp = (BACKEND_ID, SERVICE);
    let udp = (UDP_BACKEND_ID, UDP_SERVICE);
    let flows = [
        (key(1, 6), flow(established, 3650, tcp, 20000)),
        (key(2, 6), flow(established, 50, tcp, 20001)),
        (key(3, 17), flow(0, 3650, udp, 20002)),
    ];
    let nat = |backend: &Backend6, port: u16| NatKey6::new(backend, snat, port.to_be());
    let reverse = [
        (nat(&backend, 20000), key(1, 6)),
        (nat(&backend, 20001), key(2, 6)),
        (nat(&udp_backend, 20002), key(3, 17)),
    ];
    let backends = HashMap::from([(BACKEND_ID, backend), (UDP_BACKEND_ID, udp_backend)]);
    let judged = judge(flows, reverse, &backends, &services(), 3700 * S, &T);
    let removed: Vec<_> = judged.flows.iter().map(|r| (r.key, r.reverse, r.why)).collect();
    assert_eq!(
        removed,
        [
            (key(2, 6), None, Removal::Expired(Expiry::Idle)),
            (
                key(3, 17),
                Some(nat(&udp_backend, 20002)),
                Removal::Expired(Expiry::Idle)
            ),
        ]
    );
    assert_eq!(judged.census.open_of(BACKEND_ID), 1);
    assert_eq!(judged.census.snat_pairs_of(SocketAddr::V6(backend_addr)), 1);
    assert!(judged.orphan_reverse.is_empty(), "{:?}", judged.orphan_reverse);
}
