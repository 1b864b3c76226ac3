//! The live-frames micro benchmark: the real XDP program run by
//! `BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`, in batches, as if the
//! frames arrived on a veth (veth0 of the packet lab's namespace), per packet
//! path, against `xdp_bounce` (parse + MAC swap + XDP_TX) and `xdp_pass`
//! timed the same way in the same run.
//!
//! # What is timed
//! In live mode the kernel carries the verdict out: XDP_TX and XDP_REDIRECT
//! frames are queued for veth0 and flushed at the end of each batch (veth1
//! runs no XDP, so the veth driver refuses them and they are freed: the cost
//! of a redirect up to the driver is counted, delivery to the peer is not);
//! XDP_PASS frames become skbs and go up the namespace's stack, which is
//! timed too. The kernel reports the mean time per frame of one call.
//!
//! Each frame lives in a page of a page pool the kernel creates per call and
//! initialises from `data_in` when it first hands the page out. A recycled
//! page is **not** rewritten (Documentation/bpf/bpf_prog_run.rst: "the page
//! content is not rewritten"), so a NAT rewrite would feed its own output
//! back in. Hence the methods:
//! - **batch**: `repeat` = `batch_size`, one batch per call: every frame is a
//!   fresh copy of `data_in`, every page newly allocated. The page
//!   allocation is in the timed region, for every program alike.
//! - **recycled**: a large `repeat` over recycled pages, for the bounce
//!   only (its MAC swap leaves a frame it handles the same way): shows what
//!   the fresh pages of the batch method add.
//! - **single**: one frame per call, for the first packet of a new flow:
//!   within a batch all frames are the same SYN, and only the first would
//!   open a flow (the others are retransmissions). Each call sends a SYN of
//!   a new client port, so every run opens a new flow; the per-call cost is
//!   taken out by timing the bounce the same way. The new-flow estimate is
//!   `SYN single - bounce single + bounce batch`.

use std::net::{Ipv4Addr, SocketAddrV4};

use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};
use bg_lb_common::counters::Counter;
use serde::Serialize;

use crate::{
    bench::{
        procs,
        stats::{self, Summary},
    },
    cmd::ifindex,
    packet_lab::{GATEWAY_MAC, INTERFACE, LB_MAC, PacketLab, SNAT, VIP, XDP_PASS, XDP_REDIRECT},
    packets::{ACK, SYN, tcp_frame},
};

/// The kernel's largest live-frames batch.
pub const MAX_BATCH: u32 = 256;

#[derive(Clone, Debug, Serialize)]
pub struct LiveOptions {
    /// Rounds over every case, interleaved so drifts hit all alike.
    pub rounds: usize,
    /// Calls per case and round.
    pub calls_per_round: usize,
    /// Frames per batch (at most [`MAX_BATCH`]).
    pub batch_size: u32,
    /// Batches per call of the recycled method.
    pub recycled_batches: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Method {
    Batch,
    Recycled,
    Single,
}

impl Method {
    fn describe(self) -> &'static str {
        match self {
            Method::Batch => "batch, fresh frames",
            Method::Recycled => "batches, recycled frames",
            Method::Single => "one frame per call",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LivePath {
    pub path: &'static str,
    pub program: &'static str,
    pub method: Method,
    /// ns per frame: median over calls; min and max of the round medians.
    pub ns: Summary,
    /// Frames run.
    pub frames: u64,
}

impl LivePath {
    /// Million packets per second on one core at the median cost.
    pub fn mpps(&self) -> f64 {
        1e3 / self.ns.median
    }
}

/// One of the targets, as a ratio measured in this run.
#[derive(Clone, Debug, Serialize)]
pub struct LiveTarget {
    pub what: &'static str,
    pub reference: &'static str,
    /// The path's ns per packet (an estimate for the new flow).
    pub ns: f64,
    pub ratio: Option<f64>,
    pub target: f64,
}

impl LiveTarget {
    pub fn met(&self) -> Option<bool> {
        self.ratio.map(|r| r <= self.target)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LiveReport {
    pub options: LiveOptions,
    pub paths: Vec<LivePath>,
    pub targets: Vec<LiveTarget>,
}

const SYN_PATH: &str = "first packet of a new flow (SYN)";
const ESTABLISHED: &str = "established flow, client -> backend";
const REPLY: &str = "reply, backend -> client";
const PASSED: &str = "non-VIP packet (passed)";
const BOUNCE: &str = "baseline: parse + MAC swap + XDP_TX";
const PASS: &str = "baseline: return XDP_PASS";

/// How a case checks afterwards that every frame took its path: the
/// counter it moves by one per frame.
enum Check {
    /// New flows in FLOWS.
    Flows,
    /// BACKEND_STATS packets towards the backend.
    ToBackend(SocketAddrV4),
    /// BACKEND_STATS packets towards the client.
    ToClient(SocketAddrV4),
    Counter(Counter),
    /// The baselines count nothing.
    Nothing,
}

struct Case<'a> {
    path: &'static str,
    program: &'static str,
    prog: &'a Xdp,
    method: Method,
    frame: Box<dyn Fn(usize) -> Vec<u8> + 'a>,
    check: Check,
    round_medians: Vec<f64>,
    all: Vec<f64>,
    frames: u64,
}

/// A unicast MAC that is not veth0's: the passed frame goes to it, so the
/// stack drops it as soon as it sees it is for another host, and the
/// stack's share of the passed rows stays small (and equal for both).
const OTHER_HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x77];

/// Runs the cases in `lab` (a fresh [`PacketLab`], on veth0), with `bounce`
/// and `pass` the loaded baselines; `client_of(i)` is the client of the
/// `i`-th SYN, distinct for every `i`.
pub fn run(
    lab: &PacketLab,
    bounce: &Xdp,
    pass: &Xdp,
    client_of: &dyn Fn(usize) -> SocketAddrV4,
    o: &LiveOptions,
) -> LiveReport {
    assert!((1..=MAX_BATCH).contains(&o.batch_size), "batch size 1..={MAX_BATCH}");
    let ifindex = ifindex(INTERFACE);
    let lb = lab.program();
    let client = SocketAddrV4::new(Ipv4Addr::new(192, 168, 201, 1), 40000);
    let connection = lab.handshake(client);
    let established = connection.from_client(ACK, b"");
    let reply = connection.from_backend(ACK, b"");
    let not_ours = tcp_frame(
        GATEWAY_MAC,
        OTHER_HOST_MAC,
        client,
        SocketAddrV4::new(SNAT, 22),
        SYN,
        b"",
    );
    // The frames take their path when run the ordinary way.
    assert_eq!(lab.run(&established).0, XDP_REDIRECT, "established frame");
    assert_eq!(lab.run(&reply).0, XDP_REDIRECT, "reply frame");
    assert_eq!(lab.run(&not_ours).0, XDP_PASS, "passed frame");

    let fixed = |frame: &Vec<u8>| -> Box<dyn Fn(usize) -> Vec<u8>> {
        let frame = frame.clone();
        Box::new(move |_| frame.clone())
    };
    let syn = move |i: usize| tcp_frame(GATEWAY_MAC, LB_MAC, client_of(i), VIP, SYN, b"");
    let mut cases = vec![
        Case::new(SYN_PATH, "bg_lb", lb, Method::Single, Box::new(syn), Check::Flows),
        Case::new(
            ESTABLISHED,
            "bg_lb",
            lb,
            Method::Batch,
            fixed(&established),
            Check::ToBackend(connection.backend),
        ),
        Case::new(
            REPLY,
            "bg_lb",
            lb,
            Method::Batch,
            fixed(&reply),
            Check::ToClient(connection.backend),
        ),
        Case::new(
            PASSED,
            "bg_lb",
            lb,
            Method::Batch,
            fixed(&not_ours),
            Check::Counter(Counter::Passed),
        ),
        Case::new(
            BOUNCE,
            "xdp_bounce",
            bounce,
            Method::Batch,
            fixed(&established),
            Check::Nothing,
        ),
        Case::new(
            BOUNCE,
            "xdp_bounce",
            bounce,
            Method::Single,
            fixed(&established),
            Check::Nothing,
        ),
        Case::new(
            BOUNCE,
            "xdp_bounce",
            bounce,
            Method::Recycled,
            fixed(&established),
            Check::Nothing,
        ),
        Case::new(PASS, "xdp_pass", pass, Method::Batch, fixed(&not_ours), Check::Nothing),
    ];
    let mut syns = 0;
    for _ in 0..o.rounds {
        for case in &mut cases {
            procs::check_interrupt();
            let before = case.count(lab);
            case.round(o, ifindex, &mut syns);
            let counted = case.count(lab).map(|after| after - before.unwrap_or(0));
            if let Some(counted) = counted {
                assert_eq!(
                    counted,
                    case.frames_per_round(o),
                    "{} ({:?}): every frame must take the path",
                    case.path,
                    case.method
                );
            }
        }
    }
    let paths: Vec<LivePath> = cases.iter().map(Case::summary).collect();
    let targets = targets(&paths);
    LiveReport {
        options: o.clone(),
        paths,
        targets,
    }
}

impl<'a> Case<'a> {
    fn new(
        path: &'static str,
        program: &'static str,
        prog: &'a Xdp,
        method: Method,
        frame: Box<dyn Fn(usize) -> Vec<u8> + 'a>,
        check: Check,
    ) -> Self {
        Case {
            path,
            program,
            prog,
            method,
            frame,
            check,
            round_medians: Vec::new(),
            all: Vec::new(),
            frames: 0,
        }
    }

    /// (repeat, batch_size) of one call.
    fn shape(&self, o: &LiveOptions) -> (u32, u32) {
        match self.method {
            Method::Batch => (o.batch_size, o.batch_size),
            Method::Recycled => (o.batch_size * o.recycled_batches, o.batch_size),
            Method::Single => (1, 1),
        }
    }

    fn frames_per_round(&self, o: &LiveOptions) -> u64 {
        u64::from(self.shape(o).0) * o.calls_per_round as u64
    }

    fn round(&mut self, o: &LiveOptions, ifindex: u32, n: &mut usize) {
        let (repeat, batch) = self.shape(o);
        let mut times = Vec::with_capacity(o.calls_per_round);
        for _ in 0..o.calls_per_round {
            let frame = (self.frame)(*n);
            *n += 1;
            times.push(live_run(self.prog, &frame, ifindex, repeat, batch));
        }
        self.round_medians
            .push(stats::summarize(&times).expect("at least one call").median);
        self.all.extend(times);
        self.frames += self.frames_per_round(o);
    }

    /// The counter this case moves, read now.
    fn count(&self, lab: &PacketLab) -> Option<u64> {
        match self.check {
            Check::Flows => Some(lab.flows().len() as u64),
            Check::ToBackend(backend) => Some(lab.backend_stats(backend).packets_in),
            Check::ToClient(backend) => Some(lab.backend_stats(backend).packets_out),
            Check::Counter(counter) => Some(lab.counter(counter)),
            Check::Nothing => None,
        }
    }

    fn summary(&self) -> LivePath {
        let overall = stats::summarize(&self.all).expect("calls were made");
        let rounds = stats::summarize(&self.round_medians).expect("rounds were run");
        LivePath {
            path: self.path,
            program: self.program,
            method: self.method,
            ns: Summary {
                median: overall.median,
                min: rounds.min,
                max: rounds.max,
                n: self.all.len(),
            },
            frames: self.frames,
        }
    }
}

/// One live-frames call: `repeat` copies of `frame` arriving on `ifindex`,
/// in batches of `batch`; the kernel's mean ns per frame.
fn live_run(prog: &Xdp, frame: &[u8], ifindex: u32, repeat: u32, batch: u32) -> f64 {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex; the kernel wants data_end = the frame's
    // length and no metadata.
    let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
    let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            attrs: TestRunAttrs::new().xdp_live_frames(batch),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES");
    result.duration.as_nanos() as f64
}

/// The targets: established and reply at most 1.5x the bounce, a
/// new flow at most 3x, passed at most 1.1x `xdp_pass`.
fn targets(paths: &[LivePath]) -> Vec<LiveTarget> {
    let ns = |path: &str, method: Method| {
        paths
            .iter()
            .find(|p| p.path == path && p.method == method)
            .map_or(f64::NAN, |p| p.ns.median)
    };
    let bounce = ns(BOUNCE, Method::Batch);
    let new_flow = ns(SYN_PATH, Method::Single) - ns(BOUNCE, Method::Single) + bounce;
    let target = |what, reference, ns: f64, reference_ns: f64, target| LiveTarget {
        what,
        reference,
        ns,
        ratio: stats::ratio(ns, reference_ns),
        target,
    };
    vec![
        target(ESTABLISHED, "xdp_bounce", ns(ESTABLISHED, Method::Batch), bounce, 1.5),
        target(REPLY, "xdp_bounce", ns(REPLY, Method::Batch), bounce, 1.5),
        target(
            "new flow (est.: SYN single - bounce single + bounce batch)",
            "xdp_bounce",
            new_flow,
            bounce,
            3.0,
        ),
        target(
            PASSED,
            "xdp_pass",
            ns(PASSED, Method::Batch),
            ns(PASS, Method::Batch),
            1.1,
        ),
    ]
}

/// The live benchmark's Markdown.
pub fn render(r: &LiveReport) -> String {
    use std::fmt::Write as _;

    use crate::bench::report::fmt_number;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Live frames (`BPF_F_TEST_XDP_LIVE_FRAMES`) on a veth, batch size {}; {} rounds of {} calls per row.\n\n\
         | packet path | program | method | ns/packet (median; round range) | Mpps per core | frames |\n\
         |---|---|---|---|---|---|",
        r.options.batch_size, r.options.rounds, r.options.calls_per_round
    );
    for p in &r.paths {
        let _ = writeln!(
            md,
            "| {} | `{}` | {} | {} ({}–{}) | {:.2} | {} |",
            p.path,
            p.program,
            p.method.describe(),
            fmt_number(p.ns.median),
            fmt_number(p.ns.min),
            fmt_number(p.ns.max),
            p.mpps(),
            p.frames
        );
    }
    let _ = writeln!(
        md,
        "\n| target (live frames) | ns/packet | ratio | target | met |\n|---|---|---|---|---|"
    );
    for t in &r.targets {
        let _ = writeln!(
            md,
            "| {} vs `{}` | {} | {} | ≤ {}× | {} |",
            t.what,
            t.reference,
            fmt_number(t.ns),
            t.ratio.map_or("n/a".to_owned(), |x| format!("{x:.2}×")),
            t.target,
            match t.met() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "n/a",
            }
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(path: &'static str, method: Method, ns: f64) -> LivePath {
        LivePath {
            path,
            program: "p",
            method,
            ns: Summary {
                median: ns,
                min: ns,
                max: ns,
                n: 1,
            },
            frames: 1,
        }
    }

    #[test]
    fn new_flow_estimate_replaces_the_single_call_cost_by_the_batched_bounce() {
        let targets = targets(&[
            path(SYN_PATH, Method::Single, 900.0),
            path(BOUNCE, Method::Single, 600.0),
            path(BOUNCE, Method::Batch, 100.0),
            path(ESTABLISHED, Method::Batch, 140.0),
            path(REPLY, Method::Batch, 160.0),
            path(PASSED, Method::Batch, 1050.0),
            path(PASS, Method::Batch, 1000.0),
        ]);
        let ratios: Vec<_> = targets.iter().map(|t| t.ratio.unwrap()).collect();
        assert_eq!(ratios, [1.4, 1.6, 4.0, 1.05]);
        let met: Vec<_> = targets.iter().map(|t| t.met().unwrap()).collect();
        assert_eq!(met, [true, false, false, true]);
    }

    #[test]
    fn a_missing_baseline_gives_no_ratio() {
        let targets = targets(&[path(ESTABLISHED, Method::Batch, 140.0)]);
        assert!(targets.iter().all(|t| t.ratio.is_none() && t.met().is_none()));
    }
}
