//! The SNAT port lifecycle end to end (root): `bg-lb run` with the example
//! config's defaults (SNAT ports 20000-29999, `closing` and `syn` 10 s,
//! `max_flows` 1,048,576),
//! native XDP, one-arm, one backend, and real TCP connections paced at
//! 5,000 a second for 60 s. Holding each port for `closing` after its
//! connection would allow 1,000 a second; the LB must reuse ports as soon
//! as the backend accepts the new connection on them, so that no
//! connection fails and no SYN is retransmitted, whichever side closes first and from
//! one client address or hundreds.
//!
//! The backend's veth hands each connection to one CPU, as a NIC's RSS
//! would ([`bg_lb_tests::topology::NetNs::steer_flows_like_rss`]): else a race in the backend's
//! Linux now and then resets a connection it has just accepted.
//!
//! The rate is the target, not an assertion: a machine that cannot pace
//! it still runs at least three connections per SNAT port (every port
//! reused several times), and the achieved rate is printed.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use bg_lb_common::maps::DEFAULT_MAX_FLOWS;
use bg_lb_tests::{
    churn::{Churn, ChurnServer, ChurnTally, Closer, listen_drops},
    http,
    lab::{NameLab, NameLabConfig},
    topology::LB_SWITCH_PORT,
};

/// The example config's SNAT port range, flow timeouts and flow table
/// size; metrics on the LB's loopback, to show the data plane's counters
/// should a test fail.
const SETTINGS: &str = "snat_ports = \"20000-29999\"\nmetrics = \"127.0.0.1:9750\"\n";
const METRICS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9750);
const TIMEOUTS: &str = "[timeouts]\nclosing = \"10s\"\nsyn = \"10s\"\n";
const PORTS: u64 = 10_000;

const RATE: u32 = 5_000;
const RUN_FOR: Duration = Duration::from_secs(60);
const CLIENT_THREADS: usize = 32;

/// Runs the churn against one backend whose server closes as `closer`
/// says, from `sources` (none: the client's one address), and checks it.
fn churn_through_the_lb(closer: Closer, setup_client: impl FnOnce(&NameLab) -> Vec<Ipv4Addr>) {
    let config = NameLabConfig {
        settings: SETTINGS,
        tables: TIMEOUTS,
        // 5,000 new flows a second, each kept `closing` (10 s) or, the
        // backend having closed first, its TIME_WAIT (61 s) unless a new
        // connection takes its port over: the lab's usual 65,536 entries
        // would make the LRU table evict flows, live ones too.
        max_flows: Some(DEFAULT_MAX_FLOWS),
        ..NameLabConfig::default()
    };
    let mut lab = NameLab::start(env!("CARGO_BIN_EXE_bg-lb-under-test"), 1, None, &config);
    lab.stop_server(0);
    // The backend's receive path as a NIC's would be: each connection on one
    // CPU (else Linux's own race resets a connection now and then).
    lab.topo.backends[0].ns.steer_flows_like_rss("eth0");
    let _server = ChurnServer::start(&lab.topo.backends[0].ns, lab.backend_addr(0), closer);
    let sources = setup_client(&lab);
    let tally = Churn {
        client: &lab.topo.client.ns,
        to: lab.vip(),
        sources,
        closer,
        rate: RATE,
        threads: CLIENT_THREADS,
        run_for: RUN_FOR,
        at_least: 3 * PORTS,
    }
    .run();
    report(&tally);
    let context = || {
        format!(
            "{tally:?}\n--- data plane counters ---\n{}\n--- backend TCP ---\n{}--- client TCP ---\n{}\n\
             --- links ---\n{}{}{}{}--- daemon log ---\n{}",
            counters(&lab),
            listen_drops(&lab.topo.backends[0].ns),
            listen_drops(&lab.topo.client.ns),
            lab.topo.lb.ns.link_drops("eth0"),
            lab.topo.switch.link_drops(LB_SWITCH_PORT),
            lab.topo.client.ns.link_drops("eth0"),
            lab.topo.backends[0].ns.link_drops("eth0"),
            lab.daemon.log()
        )
    };
    assert_eq!(tally.failed, 0, "no connection may fail: {}", context());
    // A protocol fact, not a timing threshold: no SYN lost, or refused by
    // the backend's TIME_WAIT. (A slow connect with no retransmission is a
    // thread that waited for a CPU; `stalled` lists them for the message.)
    assert_eq!(
        tally.syn_retransmissions,
        0,
        "no connect may need a SYN retransmission: {}",
        context()
    );
    assert!(
        tally.connections() >= 3 * PORTS,
        "every SNAT port reused several times: {}",
        context()
    );
}

/// The data plane's packet counters, and how full its flow table is, from
/// the LB's metrics.
fn counters(lab: &NameLab) -> String {
    match lab.topo.lb.ns.run(|| http::request(METRICS, "GET", "/metrics")) {
        Ok(response) => response
            .body
            .lines()
            .filter(|l| l.starts_with("bglb_packets_total") || l.starts_with("bglb_flow_table"))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("no metrics: {e}"),
    }
}

fn report(tally: &ChurnTally) {
    println!(
        "{} connections in {:.1?}: {:.0} a second (target {RATE}), {} failed, {} SYNs retransmitted, {} slow connects",
        tally.connections(),
        tally.elapsed,
        tally.connections() as f64 / tally.elapsed.as_secs_f64(),
        tally.failed,
        tally.syn_retransmissions,
        tally.stalled
    );
}

#[test]
fn one_client_closing_first_sustains_5000_connections_a_second_without_a_failure_or_a_syn_retransmission() {
    churn_through_the_lb(Closer::Client, |lab| {
        // The client holds TIME_WAIT on each of its ports (client -> VIP):
        // let it reuse them as Linux can, which the LB does not see.
        let client = &lab.topo.client.ns;
        client.sysctl("net.ipv4.tcp_tw_reuse=1");
        client.sysctl("net.ipv4.ip_local_port_range=1024 65535");
        Vec::new()
    });
}

#[test]
fn hundreds_of_clients_with_the_backend_closing_first_sustain_5000_connections_a_second_without_a_failure_or_a_syn_retransmission()
 {
    churn_through_the_lb(Closer::Server, |lab| {
        // 200 more addresses on the client's segment; the LB knows their
        // MAC from the start, as it would after their first packets.
        let client = &lab.topo.client.ns;
        let mac = client.mac("eth0");
        let sources: Vec<Ipv4Addr> = (20..=99)
            .chain(101..=220)
            .map(|i| Ipv4Addr::new(10, 99, 0, i))
            .collect();
        for addr in &sources {
            client.ip(&format!("addr add {addr}/24 dev eth0"));
            lab.topo
                .lb
                .ns
                .ip(&format!("neigh replace {addr} lladdr {mac} dev eth0 nud permanent"));
        }
        sources
    });
}
