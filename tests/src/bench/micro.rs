//! The micro benchmark: the real XDP program through BPF_PROG_TEST_RUN,
//! per packet path, against the `xdp_bounce` baseline (parse
//! Ethernet/IPv4/TCP, swap MACs, XDP_TX: the practical limit of any XDP
//! program), one frame per run here and in live batches in [`super::live`];
//! the userspace cost of table swaps ([`super::table_swaps`]); flow-table
//! memory ([`super::flow_memory`]).
//!
//! # Timing
//! With `repeat = N` the kernel runs the program N times on the same buffer,
//! so a NAT rewrite would feed its own output back in (after one run the
//! frame no longer goes to the VIP). Every path, the baseline included, is
//! therefore timed the same way: many `repeat = 1` runs on a fresh copy of
//! the frame, taking the kernel's `duration` of each. That figure includes
//! the test-run harness's own overhead (timer reads, bottom-half toggling),
//! which `xdp_pass` shows on its own. An XDP_TX or XDP_REDIRECT verdict is
//! only returned, not carried out, for every program alike.
//!
//! Programs that leave the frame as it was (or, like the bounce's MAC swap,
//! undo their change on the next run) are also timed with a large `repeat`,
//! which spreads the overhead over many runs. The overhead of a single run
//! is then `xdp_pass` single minus `xdp_pass` repeated, and each path's
//! estimated own time is its single-run time minus that overhead.

use std::net::{Ipv4Addr, SocketAddrV4};

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp},
};
use bg_lb::dataplane::syn_proxy::{SynProxy, SynProxyMode};
use bg_lb_common::maps::DEFAULT_MAX_FLOWS;
use serde::Serialize;

use crate::{
    bench::{
        flow_memory::{self, MapMemory},
        live::{self, LiveOptions, LiveReport},
        procs,
        stats::{self, Summary},
        table_swaps::{self, TableSwaps},
    },
    netns::in_fresh_netns,
    packet_lab::{GATEWAY_MAC, LB_MAC, PacketLab, PacketLabOptions, SNAT, VIP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    packets::{ACK, SYN, tcp_frame},
};

#[derive(Clone, Debug, Serialize)]
pub struct MicroOptions {
    pub batches: usize,
    pub runs_per_batch: usize,
    /// Ratio changes timed per backend count (and health flips).
    pub ratio_changes: usize,
    pub live: LiveOptions,
}

#[derive(Clone, Debug, Serialize)]
pub struct PathCost {
    pub path: &'static str,
    pub program: &'static str,
    pub verdict: &'static str,
    /// ns per packet with `repeat = 1`: median of every run; min and max of
    /// the batch medians.
    pub ns: Summary,
    /// ns per packet with a large `repeat`, for frames a run leaves valid.
    pub repeated_ns: Option<Summary>,
    /// `ns` over the baseline's `ns` (the same single-run method).
    pub ratio_to_bounce: Option<f64>,
    /// `ns` minus the single-run overhead: the program's own time.
    pub own_ns: f64,
    /// `own_ns` over the baseline's repeated time (its own time).
    pub own_ratio_to_bounce: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MicroReport {
    pub options: MicroOptions,
    pub paths: Vec<PathCost>,
    pub live: LiveReport,
    pub table_swaps: TableSwaps,
    pub flow_maps: Vec<MapMemory>,
}

pub fn run(o: MicroOptions) -> MicroReport {
    let live_options = o.live.clone();
    let live = in_fresh_netns(move || live_frames(&live_options));
    in_fresh_netns(move || {
        let (paths, flow_maps) = packet_paths(&o);
        let table_swaps = table_swaps::run(o.ratio_changes);
        MicroReport {
            options: o,
            paths,
            live,
            table_swaps,
            flow_maps,
        }
    })
}

/// The live-frames benchmark, in a lab of its own.
fn live_frames(o: &LiveOptions) -> LiveReport {
    let lab = bench_lab();
    let mut aux = load_aux();
    live::run(&lab, &mut aux, o)
}

/// The packet lab both per-packet benchmarks use: the default flow table.
fn bench_lab() -> PacketLab {
    PacketLab::new(&PacketLabOptions {
        max_flows: DEFAULT_MAX_FLOWS,
        snat_addrs: vec![SNAT],
        // Wide, so that the SYN runs never make port claims probe far.
        snat_ports: (1024, 65535),
        blue_percent: 50,
        // Off: the SYN runs, which nobody answers, are a flood to "auto".
        syn_proxy: SynProxy {
            mode: SynProxyMode::Off,
            ..SynProxy::default()
        },
        forwarding: Default::default(),
    })
}

/// The client of the `i`-th SYN run: a distinct 5-tuple for every run
/// (60,000 ports per client address).
fn nth_client(i: usize) -> SocketAddrV4 {
    let host = 1 + (i / 60_000) as u8;
    SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, host), 1024 + (i % 60_000) as u16)
}

struct Timed<'a> {
    path: &'static str,
    program: &'static str,
    prog: &'a Xdp,
    expect: u32,
    frame: Box<dyn Fn(usize) -> Vec<u8> + 'a>,
    /// Whether a run leaves the frame valid for the next (large `repeat`).
    repeatable: bool,
    batch_medians: Vec<f64>,
    all: Vec<f64>,
    repeated: Vec<f64>,
}

fn packet_paths(o: &MicroOptions) -> (Vec<PathCost>, Vec<MapMemory>) {
    let lab = bench_lab();
    let flow_maps = flow_memory::of_this_process();
    let lb = lab.program();
    let aux = load_aux();
    let prog = |name| -> &Xdp { aux.program(name).expect(name).try_into().expect("XDP") };

    // One established flow: SYN, the backend's SYN-ACK, the client's ACK.
    let client = SocketAddrV4::new(Ipv4Addr::new(192, 168, 200, 1), 40000);
    let connection = lab.handshake(client);
    let established = connection.from_client(ACK, b"");
    let reply = connection.from_backend(ACK, b"");
    let not_ours = tcp_frame(GATEWAY_MAC, LB_MAC, client, SocketAddrV4::new(SNAT, 22), SYN, b"");
    // The host's own traffic on an address that is neither a VIP nor a SNAT
    // address.
    let elsewhere = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 50), 22);
    let elsewhere = tcp_frame(GATEWAY_MAC, LB_MAC, client, elsewhere, ACK, b"");

    let fixed = |frame: Vec<u8>| -> Box<dyn Fn(usize) -> Vec<u8>> { Box::new(move |_| frame.clone()) };
    let mut timed = vec![
        Timed::new(
            "first packet of a new flow (SYN)",
            "bg_lb",
            lb,
            XDP_REDIRECT,
            Box::new(|i| tcp_frame(GATEWAY_MAC, LB_MAC, nth_client(i), VIP, SYN, b"")),
            false,
        ),
        Timed::new(
            "established flow, client -> backend",
            "bg_lb",
            lb,
            XDP_REDIRECT,
            fixed(established.clone()),
            false,
        ),
        Timed::new(
            "reply, backend -> client",
            "bg_lb",
            lb,
            XDP_REDIRECT,
            fixed(reply),
            false,
        ),
        Timed::new("non-VIP packet (passed)", "bg_lb", lb, XDP_PASS, fixed(not_ours), true),
        Timed::new(
            "packet to another address of the host (passed)",
            "bg_lb",
            lb,
            XDP_PASS,
            fixed(elsewhere),
            true,
        ),
        Timed::new(
            BASELINE,
            "xdp_bounce",
            prog("xdp_bounce"),
            XDP_TX,
            fixed(established.clone()),
            true,
        ),
        Timed::new(FLOOR, "xdp_pass", prog("xdp_pass"), XDP_PASS, fixed(established), true),
    ];
    let mut n = 0;
    for _ in 0..o.batches {
        for t in &mut timed {
            procs::check_interrupt();
            t.batch(o.runs_per_batch, &mut n);
        }
    }
    let paths: Vec<PathCost> = timed
        .iter()
        .map(|t| PathCost {
            path: t.path,
            program: t.program,
            verdict: verdict_name(t.expect),
            ns: t.summary(),
            repeated_ns: stats::summarize(&t.repeated),
            ratio_to_bounce: None,
            own_ns: f64::NAN,
            own_ratio_to_bounce: None,
        })
        .collect();
    (with_ratios(paths), flow_maps)
}

const BASELINE: &str = "baseline: parse + MAC swap + XDP_TX";
const FLOOR: &str = "test-run floor: return XDP_PASS";

/// Fills in the ratios to the baseline and the own times, which need the
/// baseline's and the floor's figures.
fn with_ratios(mut paths: Vec<PathCost>) -> Vec<PathCost> {
    let find = |name: &str| paths.iter().find(|p| p.path == name).cloned();
    let (Some(bounce), Some(floor)) = (find(BASELINE), find(FLOOR)) else {
        return paths;
    };
    let overhead = floor.ns.median - floor.repeated_ns.map_or(0.0, |r| r.median);
    let bounce_own = bounce.repeated_ns.map_or(bounce.ns.median - overhead, |r| r.median);
    for p in &mut paths {
        p.ratio_to_bounce = stats::ratio(p.ns.median, bounce.ns.median);
        p.own_ns = p.repeated_ns.map_or(p.ns.median - overhead, |r| r.median);
        p.own_ratio_to_bounce = stats::ratio(p.own_ns, bounce_own);
    }
    paths
}

impl<'a> Timed<'a> {
    fn new(
        path: &'static str,
        program: &'static str,
        prog: &'a Xdp,
        expect: u32,
        frame: Box<dyn Fn(usize) -> Vec<u8> + 'a>,
        repeatable: bool,
    ) -> Self {
        Timed {
            path,
            program,
            prog,
            expect,
            frame,
            repeatable,
            batch_medians: Vec::new(),
            all: Vec::new(),
            repeated: Vec::new(),
        }
    }

    /// `runs` single runs; `n` numbers frames across batches (fresh SYNs).
    fn batch(&mut self, runs: usize, n: &mut usize) {
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let frame = (self.frame)(*n);
            *n += 1;
            times.push(self.time(&frame, 1, "unexpected verdict (is the namespace set up?)"));
        }
        self.batch_medians
            .push(stats::summarize(&times).expect("at least one run").median);
        self.all.extend(times);
        if self.repeatable {
            let frame = (self.frame)(*n);
            // The kernel reports the mean per run, in whole ns: with enough
            // runs, below-ns detail is lost but nothing else.
            let mean = self.time(&frame, 100 * runs as u32, "repeated run");
            self.repeated.push(mean);
        }
    }

    /// ns per run of `frame`, run `repeat` times in one test run; panics
    /// with `what` unless the verdict is the expected one.
    fn time(&self, frame: &[u8], repeat: u32, what: &str) -> f64 {
        let mut out = vec![0u8; frame.len() + 256];
        let result = self
            .prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::new()
            })
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(result.return_value, self.expect, "{}: {what}", self.path);
        result.duration.as_nanos() as f64
    }

    fn summary(&self) -> Summary {
        stats::over_groups(&self.all, &self.batch_medians).expect("batches were run")
    }
}

fn load_aux() -> Ebpf {
    let mut aux = Ebpf::load(bg_lb::ebpf_objects::aux()).expect("load aux object");
    for name in ["xdp_bounce", "xdp_pass", "xdp_restore"] {
        let prog: &mut Xdp = aux.program_mut(name).expect(name).try_into().expect("XDP");
        prog.load().expect("load aux program");
    }
    aux
}

fn verdict_name(verdict: u32) -> &'static str {
    match verdict {
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "other",
    }
}

/// The micro benchmark's Markdown.
pub fn render(r: &MicroReport) -> String {
    use std::fmt::Write as _;

    use crate::bench::report::{fmt_number, fmt_summary};
    let mut md = String::new();
    let ratio = |r: Option<f64>| r.map_or("n/a".to_owned(), |x| format!("{x:.2}×"));
    let _ = writeln!(
        md,
        "| packet path | program | verdict | ns/packet, repeat=1 (median; batch range) | ratio to xdp_bounce | \
         ns/packet, large repeat | own ns (est.) | own ratio to xdp_bounce |\n|---|---|---|---|---|---|---|---|"
    );
    for p in &r.paths {
        let _ = writeln!(
            md,
            "| {} | `{}` | {} | {} | {} | {} | {} | {} |",
            p.path,
            p.program,
            p.verdict,
            fmt_summary(&Some(p.ns), false),
            ratio(p.ratio_to_bounce),
            p.repeated_ns.map_or("-".to_owned(), |s| fmt_number(s.median)),
            fmt_number(p.own_ns),
            ratio(p.own_ratio_to_bounce),
        );
    }
    let _ = writeln!(md, "\n{}", live::render(&r.live));
    let _ = writeln!(md, "{}", table_swaps::render(&r.table_swaps));
    let _ = writeln!(md, "\n{}", flow_memory::render(&r.flow_maps));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(path: &'static str, single: f64, repeated: Option<f64>) -> PathCost {
        let summary = |v: f64| Summary {
            median: v,
            min: v,
            max: v,
            n: 1,
        };
        PathCost {
            path,
            program: "p",
            verdict: "v",
            ns: summary(single),
            repeated_ns: repeated.map(summary),
            ratio_to_bounce: None,
            own_ns: f64::NAN,
            own_ratio_to_bounce: None,
        }
    }

    #[test]
    fn own_time_removes_the_single_run_overhead_measured_on_xdp_pass() {
        let paths = with_ratios(vec![
            cost("rewrite", 430.0, None),
            cost(BASELINE, 80.0, Some(10.0)),
            cost(FLOOR, 80.0, Some(2.0)),
        ]);
        let rewrite = &paths[0];
        assert_eq!(rewrite.ratio_to_bounce, Some(430.0 / 80.0));
        assert_eq!(rewrite.own_ns, 430.0 - 78.0);
        assert_eq!(rewrite.own_ratio_to_bounce, Some(35.2));
        assert_eq!(paths[1].own_ns, 10.0, "repeatable paths use their repeated time");
    }

    #[test]
    fn syn_clients_are_distinct_for_every_run() {
        let clients: std::collections::HashSet<_> = (0..150_000).map(nth_client).collect();
        assert_eq!(clients.len(), 150_000);
    }
}
