//! Flow sweeps of a large table (root): a million flows written into a
//! running daemon's pinned FLOWS, swept in slices off the event loop while
//! `ctl status` keeps answering, and `ctl flows` bounded on that table.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use bg_lb::{dataplane::housekeeping::monotonic_now_ns, protocol::Reply};
use bg_lb_common::{
    flow_state::{ESTABLISHED, RESET, SYN_ACK_SEEN, SYN_SEEN},
    maps::{Backend, Flow, FlowKey},
};
use bg_lb_tests::{
    lab::{NameLab, NameLabConfig, SERVICE},
    map_surgery::NatMaps,
    topology::LB_ADDR,
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");
const FLOWS: u32 = 1_000_000;
/// Per backend: flows established and active now, owning their SNAT port.
const LIVE: u16 = 5_000;
/// Per backend: flows reset an hour ago, owning their SNAT port.
const CLOSED: u16 = 5_000;
/// SNAT ports of the live and closed flows start here (the default range
/// is 20000-29999); the rest, handshakes abandoned long ago whose reverse
/// entries are gone, name ports above it.
const FIRST_PORT: u16 = 20_000;

/// The `i`-th synthetic client, one port each, 50,000 per address.
fn client(i: u32) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i / 50_000),
        1024 + (i % 50_000) as u16,
    )
}

/// A flow of `backend` (id `id`) on SNAT port `port` in `state`, last seen
/// at `last_seen_ns`.
fn flow(id: u32, backend: &Backend, port: u16, state: u32, last_seen_ns: u64) -> Flow {
    Flow {
        backend_id: id,
        service_id: backend.service_id,
        backend_gen: backend.generation,
        snat_addr: u32::from(LB_ADDR).to_be(),
        snat_port: port.to_be(),
        state,
        created_ns: last_seen_ns,
        last_seen_ns,
        ..Flow::default()
    }
}

/// Polls the service's status every few milliseconds until `done`; panics
/// after `secs` with the daemon's log.
fn status_until(lab: &NameLab, secs: u64, mut done: impl FnMut(&Reply) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let out = lab.daemon.ctl_ok(&["--json", "status", SERVICE]);
        let reply: Reply = serde_json::from_str(&out).expect("status JSON");
        if done(&reply) {
            return;
        }
        assert!(Instant::now() < deadline, "still {out}\n{}", lab.daemon.log());
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_million_flow_sweep_removes_exactly_the_stale_flows_while_status_keeps_answering() {
    let config = NameLabConfig {
        service: "ratio = \"100:0\"\n",
        tables: "[timeouts]\nsyn = \"10s\"\nclosing = \"10s\"\n",
        max_flows: Some(1 << 20),
        ..NameLabConfig::default()
    };
    let lab = NameLab::start(BG_LB, 4, None, &config);
    let mut maps = NatMaps::pinned(&lab.daemon.pin_dir);
    let backends: Vec<(u32, Backend)> = (0..16)
        .map(|id| (id, maps.backend(id)))
        .filter(|(_, b)| !b.is_free())
        .collect();
    assert_eq!(backends.len(), 4, "one id per backend: {backends:?}");
    let vip = lab.vip();

    // Live and closed flows own their (backend, SNAT port), written as the
    // data plane writes them: the reverse entry first. The rest were
    // abandoned before their handshake long ago, as a SYN flood leaves
    // them, and are written in batches.
    let now = monotonic_now_ns();
    let mut live = HashSet::new();
    let mut ended = HashSet::new();
    let mut abandoned = Vec::new();
    let mut entries = Vec::new();
    for i in 0..FLOWS {
        let key = FlowKey::from_client(client(i), vip);
        let (id, backend) = &backends[i as usize % backends.len()];
        let nth = (i / backends.len() as u32) as u16;
        let owned = if i < 4 * u32::from(LIVE) {
            live.insert(key);
            flow(
                *id,
                backend,
                FIRST_PORT + nth,
                SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED,
                now,
            )
        } else if i < 4 * u32::from(LIVE + CLOSED) {
            ended.insert(key);
            flow(*id, backend, FIRST_PORT + nth, SYN_SEEN | SYN_ACK_SEEN | RESET, 0)
        } else {
            abandoned.push(key);
            entries.push((key, flow(*id, backend, 40_000 + (nth % 20_000), SYN_SEEN, 0)));
            continue;
        };
        maps.set_owner(&owned.nat_key(backend), &key);
        maps.insert_flow(&key, &owned);
    }
    maps.insert_flows(&entries);
    assert_eq!(live.len(), 4 * usize::from(LIVE));
    let filled = Instant::now();

    // A status the daemon answers while its sweeper walks the table (a
    // sweep was running when the request came), with stale flows still in
    // the table after the answer.
    let sample: Vec<FlowKey> = abandoned.iter().rev().step_by(abandoned.len() / 256).copied().collect();
    status_until(&lab, 300, |reply| {
        reply.sweep_running == Some(true) && sample.iter().any(|k| maps.flow(k).is_some())
    });
    // Then a complete sweep counts exactly the live flows.
    status_until(&lab, 300, |reply| {
        let status = &reply.services.as_ref().expect("services")[0];
        let counted_since_filled = reply
            .flows_counted_secs_ago
            .is_some_and(|ago| ago < filled.elapsed().as_secs_f64());
        let open: u64 = status.backends.iter().map(|b| b.open_flows).sum();
        let embryonic: u64 = status.backends.iter().map(|b| b.embryonic_flows).sum();
        counted_since_filled && open == live.len() as u64 && embryonic == 0
    });

    let flows: HashSet<FlowKey> = maps.flows().into_iter().map(|(key, _)| key).collect();
    assert_eq!(flows, live, "exactly the live flows are left");
    let owners: HashSet<FlowKey> = maps.reverse_entries().into_iter().map(|(_, owner)| owner).collect();
    // The ended flows' entries stay too: their backends are still in the
    // data plane, whose new connections take such ports over (the sweep
    // never deletes an entry the data plane may be taking over).
    let kept: HashSet<FlowKey> = live.union(&ended).copied().collect();
    assert_eq!(
        owners, kept,
        "exactly the live and the ended flows' reverse-NAT entries are left"
    );
    // `ctl flows` lists a bounded number of them and says it did.
    let out = lab.daemon.ctl_ok(&["--json", "flows", SERVICE, "--limit", "100"]);
    let reply: Reply = serde_json::from_str(&out).expect("flows JSON");
    assert_eq!(reply.flows.as_ref().map(Vec::len), Some(100));
    assert_eq!(reply.flows_truncated, Some(true), "{out}");
    assert!(reply.flows_scanned.is_some_and(|n| n >= 100), "{out}");
    let table = lab.daemon.ctl_ok(&["flows", SERVICE, "--limit", "3"]);
    assert!(table.contains("more flows match than shown"), "{table}");
    let refused = lab.daemon.ctl(&["flows", SERVICE, "--limit", "10001"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("limit 10001 is over the maximum 10000"),
        "{refused:?}"
    );
}
