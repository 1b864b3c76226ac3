//! What a table swap costs in userspace: a ratio change on one service of
//! 2, 100 or 1,000 backends, and a health flip (one backend down or up)
//! across many services, each through `Dataplane::apply` (build the table,
//! write it to the spare region through the mapping of LOOKUP_TABLES, flip
//! the service entry). The old way of writing a table, one map update per
//! slot, is timed on the same table in the same run for comparison. The
//! ratio changes alternate between two ratios, so each builds its table;
//! in a health flip the services share their backends, so all but the
//! first reuse its build (as in the daemon).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Instant,
};

use bg_lb::{
    dataplane::{
        Dataplane, DataplaneOptions,
        services::{BackendSpec, ServiceSpec},
        syn_proxy::SynProxy,
    },
    ratio::{Pool, Ratio},
};
use bg_lb_common::maps::DEFAULT_LUT_SIZE;
use serde::Serialize;

use crate::{
    bench::{
        procs,
        stats::{self, Summary},
    },
    packet_lab::PacketLab,
};

#[derive(Clone, Debug, Serialize)]
pub struct RatioChangeCost {
    pub backends: usize,
    /// Building the weighted Maglev table alone (pure computation).
    pub build_ms: Summary,
    /// `Dataplane::apply`: build, write every backend and the table to the
    /// inactive region, swap the service entry.
    pub apply_ms: Summary,
    /// The same table written with one `BPF_MAP_UPDATE_ELEM` per slot (the
    /// old path's writes, without its build and swap).
    pub per_slot_write_ms: Summary,
}

#[derive(Clone, Debug, Serialize)]
pub struct HealthFlipCost {
    pub services: usize,
    pub backends_per_service: usize,
    /// One backend (behind every service) down or up: `Dataplane::apply` on
    /// every service, in total.
    pub total_ms: Summary,
    /// The same flip with the old per-slot writes, estimated: the flip as
    /// measured plus one per-slot table write per service (from the ratio
    /// changes above). It counts the mapped writes twice, a few percent.
    pub per_slot_estimate_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TableSwaps {
    pub ratio_changes: Vec<RatioChangeCost>,
    pub health_flip: HealthFlipCost,
}

/// Services and backends of the health flip.
pub const FLIP_SERVICES: usize = 100;
const FLIP_BACKENDS: usize = 10;

/// Runs every measurement `runs` times.
pub fn run(runs: usize) -> TableSwaps {
    let ratio_changes: Vec<_> = [2, 100, 1000].iter().map(|&n| ratio_change(n, runs)).collect();
    let per_slot_ms = ratio_changes
        .iter()
        .map(|c| c.per_slot_write_ms.median)
        .fold(f64::NAN, f64::min);
    TableSwaps {
        health_flip: health_flip(runs, per_slot_ms),
        ratio_changes,
    }
}

/// Times ratio changes on a service of `n` backends (half blue, half green).
fn ratio_change(n: usize, runs: usize) -> RatioChangeCost {
    let mut lab = PacketLab::with_backends(n);
    let table = lab.table();
    let (mut build, mut apply, mut per_slot) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        procs::check_interrupt();
        // A ratio the daemon's table cache (4 builds) no longer holds, as
        // in a shift's steps: each apply builds its table. (Alternating two
        // ratios, as this did before, timed cache hits.)
        let blue_percent = 40 + (i % 20) as u32;
        let started = Instant::now();
        let built = std::hint::black_box(table.build(blue_percent));
        build.push(ms_since(started));
        let started = Instant::now();
        lab.set_ratio(blue_percent);
        apply.push(ms_since(started));
        let started = Instant::now();
        lab.write_spare_per_slot(&built);
        per_slot.push(ms_since(started));
    }
    RatioChangeCost {
        backends: n,
        build_ms: stats::summarize(&build).expect("timed"),
        apply_ms: stats::summarize(&apply).expect("timed"),
        per_slot_write_ms: stats::summarize(&per_slot).expect("timed"),
    }
}

/// Times a health flip: the first backend of [`FLIP_SERVICES`] services
/// (each with the same [`FLIP_BACKENDS`] backends) goes down, then up.
fn health_flip(runs: usize, per_slot_ms: f64) -> HealthFlipCost {
    let mut dataplane = Dataplane::load(&DataplaneOptions {
        max_flows: 4096,
        reverse_nat_entries: 4096,
        lookup_capacity: 2 * DEFAULT_LUT_SIZE * FLIP_SERVICES as u32,
        ipv6: false,
        pin_dir: None,
    })
    .expect("load the XDP program");
    let mut specs: Vec<ServiceSpec> = (0..FLIP_SERVICES).map(flip_service).collect();
    for spec in &specs {
        dataplane.apply(spec).expect("program a service");
    }
    let mut totals = Vec::new();
    for i in 0..runs {
        procs::check_interrupt();
        let weight = if i % 2 == 0 { 0 } else { 100 };
        for spec in &mut specs {
            spec.backends[0].weight = weight;
        }
        let started = Instant::now();
        for spec in &specs {
            dataplane.apply(spec).expect("apply the flip");
        }
        totals.push(ms_since(started));
    }
    let total_ms = stats::summarize(&totals).expect("timed");
    HealthFlipCost {
        services: FLIP_SERVICES,
        backends_per_service: FLIP_BACKENDS,
        per_slot_estimate_ms: total_ms.median + FLIP_SERVICES as f64 * per_slot_ms,
        total_ms,
    }
}

/// Service `s` of the flip: its own VIP, the shared backends, 50:50.
fn flip_service(s: usize) -> ServiceSpec {
    ServiceSpec {
        vip: SocketAddrV4::new(Ipv4Addr::new(10, 2, (s / 250) as u8, 1 + (s % 250) as u8), 80).into(),
        lut_size: DEFAULT_LUT_SIZE,
        ratio: Ratio::new(50).expect("valid ratio"),
        backends: (0..FLIP_BACKENDS)
            .map(|b| BackendSpec {
                addr: SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 1 + b as u8), 8080).into(),
                pool: if b < FLIP_BACKENDS / 2 { Pool::Blue } else { Pool::Green },
                weight: 100,
                reset_flows: false,
            })
            .collect(),
        syn_proxy: SynProxy::default(),
        protocol: Default::default(),
        udp_idle: Default::default(),
        forwarding: Default::default(),
        affinity: Default::default(),
    }
}

fn ms_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}

/// The table swaps' Markdown.
pub fn render(r: &TableSwaps) -> String {
    use std::fmt::Write as _;

    use crate::bench::report::{fmt_number, fmt_summary};
    let range = |s: &Summary| fmt_summary(&Some(*s), false);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| backends | ratio change: table build ms | ratio change: `Dataplane::apply` ms (build + mapped write + swap) \
         | before: the same table written per slot, ms (writes alone) |\n|---|---|---|---|"
    );
    for c in &r.ratio_changes {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            c.backends,
            range(&c.build_ms),
            range(&c.apply_ms),
            range(&c.per_slot_write_ms)
        );
    }
    let f = &r.health_flip;
    let _ = writeln!(
        md,
        "\nHealth flip (one backend down or up behind {} services of {} backends each, `Dataplane::apply` on each): \
         {} ms in total; with per-slot writes (est.): {} ms.",
        f.services,
        f.backends_per_service,
        range(&f.total_ms),
        fmt_number(f.per_slot_estimate_ms)
    );
    md
}
