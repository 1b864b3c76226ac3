//! The macro benchmark: every contender in a fresh lab, all workloads, in
//! interleaved rounds (the order rotates each round) so that drift on a
//! shared machine hits every contender alike. A contender that fails a
//! request is recorded as failing; a contender that cannot start is
//! recorded as failing and the run goes on.

use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::Serialize;

use crate::{
    bench::{
        bulk::BulkReport,
        contenders::Contender,
        lab::Lab,
        procs,
        syn_flood::{self, SynFloodReport},
        udp_rr::{self, UdpRrReport},
        workloads::{self, CpuReport, WorkloadOptions},
        wrk::WrkReport,
    },
    topology::Family,
};

#[derive(Clone, Debug, Serialize)]
pub struct MacroOptions {
    pub rounds: usize,
    pub workloads: WorkloadOptions,
    /// Which workloads run (all, unless `--workloads` picks some).
    pub selected: Vec<Workload>,
    pub contenders: Vec<Contender>,
    /// Every link's MTU in the labs (`--mtu`); the kernel's 1500 if unset.
    pub mtu: Option<u32>,
    /// The family every contender serves over (`--family`).
    pub family: Family,
}

/// The workloads of a contender's run, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    NewConnections,
    KeepAlive,
    Bulk,
    Paced,
    /// UDP request/response ([`udp_rr`]).
    Udp,
    /// Last: a flood leaves state behind that only the lab's end clears.
    SynFlood,
    /// After the rounds, in labs of its own: p50/p99/p999 at paced rates
    /// below the slowest contender's maximum ([`crate::bench::latency`]).
    Latency,
}

impl Workload {
    pub const ALL: [Workload; 7] = [
        Workload::NewConnections,
        Workload::KeepAlive,
        Workload::Bulk,
        Workload::Paced,
        Workload::Udp,
        Workload::SynFlood,
        Workload::Latency,
    ];

    /// The name `--workloads` takes.
    pub fn key(self) -> &'static str {
        match self {
            Workload::NewConnections => "new-connections",
            Workload::KeepAlive => "keep-alive",
            Workload::Bulk => "bulk",
            Workload::Paced => "paced",
            Workload::Udp => "udp",
            Workload::SynFlood => "syn-flood",
            Workload::Latency => "latency",
        }
    }

    /// Whether it runs in each round's labs ([`Workload::Latency`] does
    /// not).
    pub fn per_round(self) -> bool {
        self != Workload::Latency
    }

    /// Whether it sends HTTP requests to the demo-backends, whose counts
    /// show that every backend was reached.
    pub fn uses_http(self) -> bool {
        !matches!(self, Workload::Bulk | Workload::Udp)
    }
}

/// One contender in one round.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    pub contender: Contender,
    pub round: usize,
    pub family: Family,
    /// Why the contender did not run ([`Contender::refuses`]); its
    /// workloads have no figures and no failures.
    pub skipped: Option<String>,
    pub new_connections: Option<WrkReport>,
    pub keep_alive: Option<WrkReport>,
    pub bulk: Option<BulkReport>,
    pub cpu: Option<CpuReport>,
    pub syn_flood: Option<SynFloodReport>,
    pub udp: Option<UdpRrReport>,
    /// Requests each backend (b0..b3) served during the round.
    pub backend_requests: Vec<u64>,
    /// bg-lb's data-plane counters after the round (other contenders: none).
    pub dataplane_counters: Option<std::collections::BTreeMap<String, u64>>,
    /// Empty when every request of every workload succeeded.
    pub failures: Vec<String>,
}

impl RunRecord {
    pub(crate) fn new(contender: Contender, round: usize, family: Family) -> Self {
        RunRecord {
            contender,
            round,
            family,
            skipped: None,
            new_connections: None,
            keep_alive: None,
            bulk: None,
            cpu: None,
            syn_flood: None,
            udp: None,
            backend_requests: Vec::new(),
            dataplane_counters: None,
            failures: Vec::new(),
        }
    }

    /// Keeps a clean result, or records why it is not one.
    fn keep<T>(&mut self, what: &str, result: Result<T, String>, clean: impl Fn(&T) -> Option<String>) -> Option<T> {
        match result {
            Ok(value) => match clean(&value) {
                None => Some(value),
                Some(why) => {
                    self.failures.push(format!("{what}: {why}"));
                    None
                }
            },
            Err(why) => {
                self.failures.push(format!("{what}: {why}"));
                None
            }
        }
    }
}

/// Runs every round (none if no per-round workload is selected);
/// `progress` hears about each step.
pub fn run(opts: &MacroOptions, bg_lb: &'static str, progress: &mut dyn FnMut(&str)) -> Vec<RunRecord> {
    let mut records = Vec::new();
    if !opts.selected.iter().any(|w| w.per_round()) {
        return records;
    }
    for round in 0..opts.rounds {
        let n = opts.contenders.len();
        for i in 0..n {
            let contender = opts.contenders[(i + round) % n];
            progress(&format!("round {}/{}: {}", round + 1, opts.rounds, contender.label()));
            let outcome = catch_unwind(AssertUnwindSafe(|| run_one(contender, round, opts, bg_lb)));
            let record = match outcome {
                Ok(record) => record,
                Err(panic) if procs::interrupted() => std::panic::resume_unwind(panic),
                Err(panic) => {
                    let mut record = RunRecord::new(contender, round, opts.family);
                    record
                        .failures
                        .push(format!("setup or run aborted: {}", panic_text(&*panic)));
                    record
                }
            };
            for f in &record.failures {
                progress(&format!("  FAILING {}: {f}", contender.label()));
            }
            records.push(record);
        }
    }
    records
}

fn run_one(contender: Contender, round: usize, opts: &MacroOptions, bg_lb: &'static str) -> RunRecord {
    let o = &opts.workloads;
    let lab = Lab::new(bg_lb, contender.forwarding(), opts.family);
    let mut r = RunRecord::new(contender, round, opts.family);
    if let Some(why) = contender.refuses(&lab) {
        r.skipped = Some(why);
        lab.close();
        return r;
    }
    if let Some(mtu) = opts.mtu {
        lab.set_mtu(mtu);
    }
    let running = contender.start(&lab, bg_lb);
    let before = lab.requests_served();
    let wrk_clean = |w: &WrkReport| w.failure();
    let selected = |w| opts.selected.contains(&w);
    if selected(Workload::NewConnections) {
        r.new_connections = r.keep(
            "new connections",
            workloads::new_connections(lab.client(), running.http, o),
            wrk_clean,
        );
    }
    if selected(Workload::KeepAlive) {
        r.keep_alive = r.keep(
            "keep-alive",
            workloads::keep_alive(lab.client(), running.http, o),
            wrk_clean,
        );
    }
    if selected(Workload::Bulk) {
        r.bulk = r.keep("bulk", workloads::bulk(lab.client(), running.bulk, o), |_| None);
    }
    if selected(Workload::Paced) {
        r.cpu = r.keep("paced", workloads::paced(&lab, running.http, o), |_| None);
    }
    if selected(Workload::Udp)
        && let Some(target) = running.udp
    {
        // Every backend answers with its name: a balancing contender must
        // have reached each.
        let names: Vec<String> = match contender.balances() {
            true => (0..lab.topo.backends.len()).map(|i| format!("b{i}")).collect(),
            false => Vec::new(),
        };
        r.udp = r.keep(
            udp_rr::WORKLOAD,
            udp_rr::run(lab.client(), target, o.udp_clients, o.duration),
            |u| u.failure(&names),
        );
    }
    // Counted before the SYN flood: the flood's state may outlive it (a
    // 10 s flood fills nftables' conntrack table, whose SYN_SENT entries
    // last 120 s, so the LB host's own connection to ask a backend times
    // out), and the counts are the workloads' requests, not the flood's.
    let after = lab.requests_served();
    // Each count includes the previous asking.
    r.backend_requests = after.iter().zip(&before).map(|(a, b)| a - b - 1).collect();
    if selected(Workload::SynFlood) {
        r.syn_flood = r.keep(
            syn_flood::WORKLOAD,
            syn_flood::run(&lab, running.http, &o.syn_flood),
            |_| None,
        );
    }
    r.dataplane_counters = running.dataplane_counters();
    if contender.balances()
        && opts.selected.iter().any(|w| w.per_round() && w.uses_http())
        && let Some(idle) = r.backend_requests.iter().position(|&n| n == 0)
    {
        r.failures.push(format!("backend b{idle} served no request"));
    }
    drop(running);
    let leftovers = lab.close();
    if !leftovers.is_empty() {
        r.failures.push(format!(
            "processes outlived the run and were killed: {}",
            leftovers.join("; ")
        ));
    }
    r
}

/// The failures of `workload` (their text starts with its name) in
/// `records`, each with its round.
pub fn failures_of(records: &[&RunRecord], workload: &str) -> Vec<String> {
    records
        .iter()
        .flat_map(|r| {
            r.failures
                .iter()
                .filter(|f| f.starts_with(workload))
                .map(move |f| format!("round {}: {f}", r.round + 1))
        })
        .collect()
}

pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".to_owned())
}
