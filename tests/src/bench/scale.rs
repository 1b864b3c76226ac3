//! The scale benchmark: bg-lb's new connections and keep-alive requests per
//! second with big tables (a million pinned flows in FLOWS, 1,000 backends
//! behind the service) against small ones (an empty flow table, 4
//! backends), in alternating labs of the same run.
//!
//! The 1,000 backends are 250 addresses on each of the lab's 4 backend
//! namespaces, all served by one demo-backend per namespace listening on
//! every address: no process per backend, which 2 cores could not afford.
//! Addresses, not ports: each backend has SNAT ports of its own, so two
//! backends on one address, redirected to one socket, would meet on one
//! 4-tuple there (the same SNAT port towards two of them) and fight over
//! it, which a real backend never sees. The small variant's 4 backends
//! are the first address of each namespace, on the same listeners, so both
//! variants pay the same per-connection cost on the backend side. The million flows are
//! written with batch updates from userspace (their reverse-NAT entries
//! too), as established connections
//! from 10.200.0.0/12 clients seen now, so neither the idle timeout nor
//! the sweeps remove them during the run. Both variants get a flow table
//! of twice that size, so the LRU keeps them; the report says how many a
//! sample finds left after the workloads.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    panic::{AssertUnwindSafe, catch_unwind},
};

use bg_lb::dataplane::{forwarding::Forwarding, housekeeping::monotonic_now_ns};
use bg_lb_common::{
    flow_state::{ESTABLISHED, SYN_ACK_SEEN, SYN_SEEN},
    maps::{Flow, FlowKey, MAX_BACKENDS},
};
use serde::Serialize;

use crate::{
    bench::{
        contenders::{self, Running},
        lab::{BACKENDS, BLUE_PERCENT, Lab, Pools},
        macro_bench::panic_text,
        procs,
        report::fmt_number,
        stats::{self, Summary},
        workloads::{self, WorkloadOptions},
        wrk::WrkReport,
    },
    daemon::DemoBackend,
    map_surgery::NatMaps,
    topology::{Family, LB_ADDR, OneArm},
};

/// The port every scale backend serves on: the lab's own HTTP servers
/// listen on one address each, these on every address of their namespace.
const SCALE_PORT: u16 = 8081;

#[derive(Clone, Debug, Serialize)]
pub struct ScaleOptions {
    pub rounds: usize,
    /// Flows written into FLOWS before the big variant's workloads.
    pub flows: u32,
    /// Backends of the big variant (a multiple of the lab's 4, at most 4 x
    /// 254: an address each).
    pub backends: usize,
    pub workloads: WorkloadOptions,
}

impl ScaleOptions {
    /// Both variants' flow table: room for the written flows twice over.
    pub fn max_flows(&self) -> u32 {
        (2 * self.flows).next_power_of_two()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    Small,
    Big,
}

/// One variant in one round.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleRecord {
    pub variant: Variant,
    pub round: usize,
    pub backends: usize,
    pub flows_written: u32,
    /// Of 1,000 sampled written flows, the share still in FLOWS after the
    /// workloads (percent).
    pub written_left_percent: Option<f64>,
    pub new_connections: Option<WrkReport>,
    pub keep_alive: Option<WrkReport>,
    /// bg-lb's data-plane counters after the workloads.
    pub dataplane_counters: Option<BTreeMap<String, u64>>,
    pub failures: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScaleReport {
    pub options: ScaleOptions,
    pub records: Vec<ScaleRecord>,
}

/// Runs both variants each round, the order alternating.
pub fn run(bg_lb: &'static str, opts: &ScaleOptions, progress: &mut dyn FnMut(&str)) -> ScaleReport {
    let mut records = Vec::new();
    for round in 0..opts.rounds {
        let order = match round % 2 {
            0 => [Variant::Small, Variant::Big],
            _ => [Variant::Big, Variant::Small],
        };
        for variant in order {
            progress(&format!(
                "scale: round {}/{}: {variant:?} tables",
                round + 1,
                opts.rounds
            ));
            let record = match catch_unwind(AssertUnwindSafe(|| run_one(bg_lb, opts, variant, round))) {
                Ok(record) => record,
                Err(panic) if procs::interrupted() => std::panic::resume_unwind(panic),
                Err(panic) => ScaleRecord {
                    variant,
                    round,
                    backends: 0,
                    flows_written: 0,
                    written_left_percent: None,
                    new_connections: None,
                    keep_alive: None,
                    dataplane_counters: None,
                    failures: vec![format!("setup or run aborted: {}", panic_text(&*panic))],
                },
            };
            for f in &record.failures {
                progress(&format!("  FAILING scale {variant:?}: {f}"));
            }
            records.push(record);
        }
    }
    ScaleReport {
        options: opts.clone(),
        records,
    }
}

fn run_one(bg_lb: &'static str, opts: &ScaleOptions, variant: Variant, round: usize) -> ScaleRecord {
    let per_namespace = match variant {
        Variant::Small => 1,
        Variant::Big => u8::try_from(opts.backends.div_ceil(BACKENDS))
            .ok()
            .filter(|&n| n < u8::MAX)
            .unwrap_or_else(|| panic!("{} backends: at most 254 per backend namespace", opts.backends)),
    };
    let lab = Lab::new(bg_lb, Forwarding::FullNat, Family::Ipv4);
    let addrs: Vec<Vec<IpAddr>> = (0..)
        .take(lab.topo.backends.len())
        .map(|n| add_backend_addrs(&lab.topo, n, per_namespace))
        .collect();
    let pools = pools(&addrs);
    let servers = DemoBackend::start_on_each_listening(bg_lb, &lab.topo.backends, Family::Ipv4, SCALE_PORT, true);
    // Both variants get a flow table twice the million written flows: the
    // default one (2^20) would be 95% full before the benchmark's own flows
    // come in, and its LRU would evict written ones, so the table would no
    // longer be big.
    let settings = format!("max_flows = {}\n", opts.max_flows());
    let running = contenders::start_bg_lb_with(&lab, bg_lb, &pools, &settings);
    let mut record = ScaleRecord {
        variant,
        round,
        backends: pools.all().count(),
        flows_written: 0,
        written_left_percent: None,
        new_connections: None,
        keep_alive: None,
        dataplane_counters: None,
        failures: Vec::new(),
    };
    let sample = match variant {
        Variant::Small => Vec::new(),
        Variant::Big => {
            record.flows_written = opts.flows;
            fill_flows(&running, opts.flows)
        }
    };
    let o = &opts.workloads;
    let clean = |what: &str, r: Result<WrkReport, String>, failures: &mut Vec<String>| match r {
        Ok(w) if w.clean() => Some(w),
        Ok(w) => {
            failures.extend(w.failure().map(|f| format!("{what}: {f}")));
            None
        }
        Err(e) => {
            failures.push(format!("{what}: {e}"));
            None
        }
    };
    let new = workloads::new_connections(lab.client(), running.http, o);
    record.new_connections = clean("new connections", new, &mut record.failures);
    let keep_alive = workloads::keep_alive(lab.client(), running.http, o);
    record.keep_alive = clean("keep-alive", keep_alive, &mut record.failures);
    if !sample.is_empty() {
        let maps = NatMaps::pinned(running.pin_dir().expect("bg-lb pins its maps"));
        let left = sample.iter().filter(|k| maps.flow(k).is_some()).count();
        record.written_left_percent = Some(100.0 * left as f64 / sample.len() as f64);
    }
    record.dataplane_counters = running.dataplane_counters();
    let exhausted = record
        .dataplane_counters
        .as_ref()
        .and_then(|c| c.get("SnatPortsExhausted").copied())
        .unwrap_or(0);
    if exhausted > 0 && !record.failures.is_empty() {
        record.failures.push(format!(
            "bg-lb refused {exhausted} connections for want of a SNAT port (snat_ports_exhausted)"
        ));
    }
    drop(running);
    drop(servers);
    let leftovers = lab.close();
    if !leftovers.is_empty() {
        record
            .failures
            .push(format!("processes outlived the run: {}", leftovers.join("; ")));
    }
    record
}

/// The backends at `addrs` (one list per backend namespace, from
/// [`add_backend_addrs`]) on [`SCALE_PORT`]: the first half of the
/// namespaces blue, the rest green, split as the macro benchmark's.
fn pools(addrs: &[Vec<IpAddr>]) -> Pools {
    let backends = |hosts: &[Vec<IpAddr>]| -> Vec<SocketAddr> {
        hosts
            .iter()
            .flatten()
            .map(|&ip| SocketAddr::new(ip, SCALE_PORT))
            .collect()
    };
    let (blue, green) = addrs.split_at(BACKENDS / 2);
    Pools {
        blue: backends(blue),
        green: backends(green),
        blue_percent: BLUE_PERCENT,
    }
}

/// Gives the `n`th backend namespace `count` more addresses, 10.98.n.1
/// on, in one `ip -batch`, and routes them from the LB through its main
/// address.
fn add_backend_addrs(topo: &OneArm, n: u8, count: u8) -> Vec<IpAddr> {
    let host = &topo.backends[usize::from(n)];
    let addrs: Vec<IpAddr> = (1..=count).map(|i| Ipv4Addr::new(10, 98, n, i).into()).collect();
    host.ns.sh(&format!(
        "printf 'addr add %s/32 dev eth0\\n' {} | ip -batch -",
        addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
    ));
    topo.lb.ns.ip(&format!("route add 10.98.{n}.0/24 via {}", host.addr));
    addrs
}

/// Writes `flows` established flows, spread over every backend in use, into
/// the daemon's FLOWS; returns a sample of 1,000 of their keys.
fn fill_flows(running: &Running, flows: u32) -> Vec<FlowKey> {
    let mut maps = NatMaps::pinned(running.pin_dir().expect("bg-lb pins its maps"));
    let backends: Vec<_> = (0..MAX_BACKENDS)
        .map(|id| (id, maps.backend(id)))
        .filter(|(_, b)| !b.is_free())
        .collect();
    assert!(
        !backends.is_empty() && flows as usize / backends.len() < 25_000,
        "ports 40000-65535 hold {flows} flows over {} backends",
        backends.len()
    );
    let now = monotonic_now_ns();
    let SocketAddr::V4(vip) = running.http else {
        panic!("the scale lab is IPv4")
    };
    let entries: Vec<(FlowKey, Flow)> = (0..flows)
        .map(|i| {
            let client = SocketAddrV4::new(
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i / 50_000),
                1024 + (i % 50_000) as u16,
            );
            let (id, backend) = &backends[i as usize % backends.len()];
            let nth = i / backends.len() as u32;
            let flow = Flow {
                backend_id: *id,
                service_id: backend.service_id,
                backend_gen: backend.generation,
                snat_addr: u32::from(LB_ADDR).to_be(),
                // A port of its own per backend, above the SNAT range, so
                // the data plane's own port choices never meet these.
                snat_port: (40_000 + nth as u16).to_be(),
                state: SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED,
                created_ns: now,
                last_seen_ns: now,
                ..Flow::default()
            };
            (FlowKey::from_client(client, vip), flow)
        })
        .collect();
    // Reverse entries first, as the data plane writes them: a sweep drops
    // a flow that does not own its (backend, SNAT port).
    let owners: Vec<_> = entries
        .iter()
        .enumerate()
        .map(|(i, (key, flow))| (flow.nat_key(&backends[i % backends.len()].1), *key))
        .collect();
    maps.add_owners(&owners);
    maps.insert_flows(&entries);
    entries
        .iter()
        .step_by(entries.len().div_ceil(1000).max(1))
        .map(|(k, _)| *k)
        .collect()
}

/// Median over the clean rounds of `variant` (`None` if any round failed).
fn median(r: &ScaleReport, variant: Variant, value: impl Fn(&ScaleRecord) -> Option<f64>) -> Option<Summary> {
    let mine: Vec<&ScaleRecord> = r.records.iter().filter(|x| x.variant == variant).collect();
    let values: Vec<f64> = mine.iter().filter_map(|x| value(x)).collect();
    (values.len() == mine.len())
        .then(|| stats::summarize(&values))
        .flatten()
}

/// One figure of a record, if its workload was clean.
pub type Figure = fn(&ScaleRecord) -> Option<f64>;

/// The figures compared between big and small tables.
pub const FIGURES: [(&str, Figure); 2] = [
    ("new conn/s", |x| x.new_connections.as_ref().map(|w| w.requests_per_sec)),
    ("keep-alive req/s", |x| {
        x.keep_alive.as_ref().map(|w| w.requests_per_sec)
    }),
];

/// The big tables' median of `figure` over the small ones': 1.0 when table
/// size costs nothing. `None` when a variant failed a round.
pub fn big_over_small(r: &ScaleReport, figure: Figure) -> Option<f64> {
    let (small, big) = (median(r, Variant::Small, figure)?, median(r, Variant::Big, figure)?);
    stats::ratio(big.median, small.median)
}

pub fn render(r: &ScaleReport) -> String {
    let cell = |s: &Option<Summary>| s.as_ref().map_or("FAIL".to_owned(), |s| fmt_number(s.median));
    let mut out = format!(
        "bg-lb alone, {} round(s) x {} s per workload. Small: 4 backends, empty flow table. Big: {} backends \
         (an address each, on the 4 backend hosts), {} established flows written into FLOWS first. \
         Both: `max_flows = {}`, the example's other defaults.\n\n\
         | | small tables | big tables | big / small |\n|---|---|---|---|\n",
        r.options.rounds,
        r.options.workloads.duration.as_secs(),
        r.options.backends,
        r.options.flows,
        r.options.max_flows(),
    );
    for (name, value) in FIGURES {
        let (small, big) = (median(r, Variant::Small, value), median(r, Variant::Big, value));
        let ratio = big_over_small(r, value).map_or("-".to_owned(), |x| format!("{x:.2}x"));
        out += &format!("| {name} | {} | {} | {ratio} |\n", cell(&small), cell(&big));
    }
    let left: Vec<String> = r
        .records
        .iter()
        .filter_map(|x| x.written_left_percent)
        .map(|p| format!("{p:.0}%"))
        .collect();
    out += &format!(
        "\nWritten flows still in FLOWS after the big variant's workloads (sampled): {}.\n",
        if left.is_empty() {
            "-".to_owned()
        } else {
            left.join(", ")
        }
    );
    for x in r.records.iter().filter(|x| !x.failures.is_empty()) {
        out += &format!(
            "\nFAILING round {} {:?}: {}\n",
            x.round + 1,
            x.variant,
            x.failures.join("; ")
        );
    }
    out
}
