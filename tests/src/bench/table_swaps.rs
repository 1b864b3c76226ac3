//! What a service change costs in userspace, through `Dataplane::apply`:
//! on one service of 2, 100 or 1,000 backends, a ratio change (the
//! SERVICES entry's blue share alone: the tables do not depend on the
//! ratio) and a weight change (one pool's table built, both written to the
//! spare buffer through the mapping of LOOKUP_TABLES, the entry flipped);
//! and a health flip (one backend down or up) across many services. The
//! old way of writing tables, one map update per slot, is timed on the
//! same tables in the same run for comparison. Each ratio and each weight
//! is one the daemon's caches do not hold (as in a shift's steps); in a
//! health flip the services share their backends, so all but the first
//! reuse its build (as in the daemon).

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
use bg_lb_common::maps::{DEFAULT_LUT_SIZE, service_table_slots};
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
    /// Building one pool's weighted Maglev table alone (pure computation).
    pub build_ms: Summary,
    /// `Dataplane::apply` of a new ratio: the SERVICES entry's blue share.
    pub apply_ms: Summary,
    /// `Dataplane::apply` of a new weight for one blue backend: blue's
    /// table built, both tables written to the spare buffer, the entry
    /// flipped.
    pub weight_change_ms: Summary,
    /// Both tables written with one `BPF_MAP_UPDATE_ELEM` per slot (the
    /// old path's writes, without its build and swap).
    pub per_slot_write_ms: Summary,
}

#[derive(Clone, Debug, Serialize)]
pub struct HealthFlipCost {
    pub services: usize,
    pub backends_per_service: usize,
    /// One backend (behind every service) down: `Dataplane::apply` on
    /// every service, in total. A table neither of its pool's buffers
    /// holds, so each service writes it (its build shared).
    pub down_ms: Summary,
    /// The same backend up again: its pool's spare buffer holds the table
    /// as it was before the down, so each service writes its entry alone.
    pub up_ms: Summary,
    /// The down with the old per-slot writes, estimated: the flip as
    /// measured plus one per-slot write of both tables per service (from
    /// the ratio changes above; the old layout had one table, of both
    /// pools). It counts the mapped writes twice.
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

/// Times ratio and weight changes on a service of `n` backends (half blue,
/// half green).
fn ratio_change(n: usize, runs: usize) -> RatioChangeCost {
    let mut lab = PacketLab::with_backends(n);
    let first = lab.backend_addrs()[0];
    let (mut build, mut apply, mut reweigh, mut per_slot) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        procs::check_interrupt();
        // A ratio and a weight no cache holds: 20 of each in turn (the
        // table cache keeps 8 builds).
        let blue_percent = 40 + (i % 20) as u32;
        let weight = 2 + (i % 20) as u32;
        let started = Instant::now();
        lab.set_ratio(blue_percent);
        apply.push(ms_since(started));
        let started = Instant::now();
        lab.reweigh(|b, w, _| *w = if b == first { weight } else { 100 });
        reweigh.push(ms_since(started));
        let table = lab.table();
        let started = Instant::now();
        std::hint::black_box(table.build_pool(Pool::Blue));
        build.push(ms_since(started));
        let built = table.build();
        let started = Instant::now();
        lab.write_spare_per_slot(&built);
        per_slot.push(ms_since(started));
    }
    RatioChangeCost {
        backends: n,
        build_ms: stats::summarize(&build).expect("timed"),
        apply_ms: stats::summarize(&apply).expect("timed"),
        weight_change_ms: stats::summarize(&reweigh).expect("timed"),
        per_slot_write_ms: stats::summarize(&per_slot).expect("timed"),
    }
}

/// Times health flips: one backend of [`FLIP_SERVICES`] services (each
/// with the same [`FLIP_BACKENDS`] backends) goes down, then up; each run
/// takes the next backend, blue and green in turn, so no down finds its
/// table in a buffer.
fn health_flip(runs: usize, per_slot_ms: f64) -> HealthFlipCost {
    let mut dataplane = Dataplane::load(&DataplaneOptions {
        max_flows: 4096,
        reverse_nat_entries: 4096,
        lookup_capacity: service_table_slots(DEFAULT_LUT_SIZE) * FLIP_SERVICES as u32,
        ipv6: false,
        pin_dir: None,
    })
    .expect("load the XDP program");
    let mut specs: Vec<ServiceSpec> = (0..FLIP_SERVICES).map(flip_service).collect();
    for spec in &specs {
        dataplane.apply(spec).expect("program a service");
    }
    let (mut downs, mut ups) = (Vec::new(), Vec::new());
    for i in 0..runs {
        // Blue's first, green's first, blue's second, ...
        let flipped = (i % 2) * FLIP_BACKENDS / 2 + (i / 2) % (FLIP_BACKENDS / 2);
        for (weight, times) in [(0, &mut downs), (100, &mut ups)] {
            procs::check_interrupt();
            for spec in &mut specs {
                spec.backends[flipped].weight = weight;
            }
            let started = Instant::now();
            for spec in &specs {
                dataplane.apply(spec).expect("apply the flip");
            }
            times.push(ms_since(started));
        }
    }
    let down_ms = stats::summarize(&downs).expect("timed");
    HealthFlipCost {
        services: FLIP_SERVICES,
        backends_per_service: FLIP_BACKENDS,
        per_slot_estimate_ms: down_ms.median + FLIP_SERVICES as f64 * per_slot_ms,
        down_ms,
        up_ms: stats::summarize(&ups).expect("timed"),
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
        "| backends | ratio change: `Dataplane::apply` ms (the entry's blue share) \
         | weight change: `Dataplane::apply` ms (one pool's build + mapped write + swap) \
         | one pool's table build ms | before: both tables written per slot, ms (writes alone) |\n|---|---|---|---|---|"
    );
    for c in &r.ratio_changes {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            c.backends,
            range(&c.apply_ms),
            range(&c.weight_change_ms),
            range(&c.build_ms),
            range(&c.per_slot_write_ms)
        );
    }
    let f = &r.health_flip;
    let _ = writeln!(
        md,
        "\nHealth flip (one backend behind {} services of {} backends each, `Dataplane::apply` on each), in total: \
         down {} ms (its pool's table written); up again {} ms (its pool's spare buffer holds the table); \
         down with per-slot writes (est.): {} ms.",
        f.services,
        f.backends_per_service,
        range(&f.down_ms),
        range(&f.up_ms),
        fmt_number(f.per_slot_estimate_ms)
    );
    md
}
