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
//! fills from `data_in` only when it first hands a page out. A recycled page
//! is **not** rewritten (Documentation/bpf/bpf_prog_run.rst: "the page
//! content is not rewritten"), so a NAT rewrite would be fed its own output
//! on the next batch. Fresh pages are no way out: allocating them costs
//! several times the bounce itself (the "fresh frames" row shows it). So
//! the paths that rewrite run through `xdp_restore` (aux object), which
//! writes the pristine frame over the packet and tail-calls `bg_lb`; for
//! the first packet of a new flow it also gives every repetition the next
//! source port (and every call a new client address), so each SYN opens a
//! new flow. The bounce is timed through the same restore (with and
//! without the new ports), and a path's estimate is
//! `path through restore - bounce through restore + bounce`: the restore's
//! cost cancels out. The passed path rewrites nothing and runs directly, as
//! does `xdp_pass`, on the same frame.
//!
//! Every `bg_lb` row checks afterwards that each frame took its path (the
//! counter it moves grew by the number of frames).

use std::net::{Ipv4Addr, SocketAddrV4};

use aya::{
    Ebpf,
    maps::{Array, MapData, ProgramArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};
use bg_lb_common::{
    counters::Counter,
    restore::{PRISTINE, Pristine, RESTORED_TARGET},
};
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
    /// Batches per call.
    pub batches_per_call: u32,
    /// New flows to open in all (each a flow table entry and an SNAT port):
    /// the SYN rows make fewer calls.
    pub syn_frames: usize,
}

/// How a row's frames reach the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Method {
    /// `data_in` as is, on pages recycled batch after batch.
    Direct,
    /// Through `xdp_restore`, which writes the frame back first.
    Restored,
    /// Through `xdp_restore`, with a new source port every repetition.
    RestoredNewPorts,
    /// One batch per call, every page newly allocated and filled.
    Fresh,
}

impl Method {
    fn describe(self) -> &'static str {
        match self {
            Method::Direct => "direct",
            Method::Restored => "through xdp_restore",
            Method::RestoredNewPorts => "through xdp_restore, new source port each",
            Method::Fresh => "direct, fresh frames (one batch per call)",
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
    /// The path's ns per packet (estimated for the restored paths).
    pub ns: f64,
    pub ratio: Option<f64>,
    pub target: f64,
}

impl LiveTarget {
    pub fn met(&self) -> Option<bool> {
        self.ratio.map(|r| r <= self.target)
    }

    /// Million packets per second on one core at `ns`.
    pub fn mpps(&self) -> f64 {
        1e3 / self.ns
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
const PASSED_ELSEWHERE: &str = "packet to another address of the host (passed)";
const BOUNCE: &str = "baseline: parse + MAC swap + XDP_TX";
const PASS: &str = "baseline: return XDP_PASS";

/// A unicast MAC that is not veth0's: the passed frame goes to it, so the
/// stack drops it as soon as it sees it is for another host, and the
/// stack's share of the passed rows stays small (and equal for both).
const OTHER_HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x77];

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

/// `xdp_restore` and its maps.
struct Restorer<'a> {
    prog: &'a Xdp,
    pristine: Array<MapData, Pristine>,
    target: ProgramArray<MapData>,
}

impl<'a> Restorer<'a> {
    /// Takes the maps out of `aux` (loaded, with `xdp_restore`).
    fn new(aux: &'a mut Ebpf) -> (Self, &'a Ebpf) {
        let take = |aux: &mut Ebpf, name| aux.take_map(name).unwrap_or_else(|| panic!("aux map {name}"));
        let pristine = take(aux, PRISTINE).try_into().expect("PRISTINE is an array");
        let target = take(aux, RESTORED_TARGET)
            .try_into()
            .expect("RESTORED_TARGET is a program array");
        let aux: &'a Ebpf = aux;
        let prog = aux
            .program("xdp_restore")
            .expect("xdp_restore")
            .try_into()
            .expect("XDP");
        (Self { prog, pristine, target }, aux)
    }

    /// Sets up the next call: `frame` restored before `prog` runs.
    fn prepare(&mut self, prog: &Xdp, frame: &[u8], new_ports: bool) -> &Xdp {
        self.target
            .set(0, prog.fd().expect("a loaded program"), 0)
            .expect("RESTORED_TARGET");
        self.pristine
            .set(0, Pristine::new(frame, new_ports), 0)
            .expect("PRISTINE");
        self.prog
    }
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
    /// Calls made so far: `frame`'s argument.
    calls: usize,
}

/// Runs the cases in `lab` (a fresh [`PacketLab`], on veth0), with `aux` the
/// loaded aux object (`xdp_bounce`, `xdp_pass`, `xdp_restore`).
pub fn run(lab: &PacketLab, aux: &mut Ebpf, o: &LiveOptions) -> LiveReport {
    assert!((1..=MAX_BATCH).contains(&o.batch_size), "batch size 1..={MAX_BATCH}");
    let ifindex = ifindex(INTERFACE);
    let (mut restorer, aux) = Restorer::new(aux);
    let prog = |name| -> &Xdp { aux.program(name).expect(name).try_into().expect("XDP") };
    let (lb, bounce, pass) = (lab.program(), prog("xdp_bounce"), prog("xdp_pass"));
    let client = SocketAddrV4::new(Ipv4Addr::new(192, 168, 99, 1), 40000);
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
    // The host's own traffic on an address that is neither a VIP nor a SNAT
    // address: the program looks it up as a VIP's before it passes it.
    let elsewhere = tcp_frame(
        GATEWAY_MAC,
        OTHER_HOST_MAC,
        client,
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 50), 22),
        ACK,
        b"",
    );
    // The frames take their path when run the ordinary way.
    assert_eq!(lab.run(&established).0, XDP_REDIRECT, "established frame");
    assert_eq!(lab.run(&reply).0, XDP_REDIRECT, "reply frame");
    assert_eq!(lab.run(&not_ours).0, XDP_PASS, "passed frame");
    assert_eq!(lab.run(&elsewhere).0, XDP_PASS, "frame to another address");

    let fixed = |frame: &Vec<u8>| -> Box<dyn Fn(usize) -> Vec<u8>> {
        let frame = frame.clone();
        Box::new(move |_| frame.clone())
    };
    // A new client address per call (the SYN rows make few); xdp_restore
    // varies the port.
    let syn = |i: usize| {
        assert!(i < 250 * 150, "out of client addresses");
        let client = SocketAddrV4::new(
            Ipv4Addr::new(192, 168, 100 + (i / 250) as u8, 1 + (i % 250) as u8),
            1024,
        );
        tcp_frame(GATEWAY_MAC, LB_MAC, client, VIP, SYN, b"")
    };
    let bounce_case = |method, frame: Box<dyn Fn(usize) -> Vec<u8>>| {
        Case::new(BOUNCE, "xdp_bounce", bounce, method, frame, Check::Nothing)
    };
    let mut cases = vec![
        Case::new(
            SYN_PATH,
            "bg_lb",
            lb,
            Method::RestoredNewPorts,
            Box::new(syn),
            Check::Flows,
        ),
        Case::new(
            ESTABLISHED,
            "bg_lb",
            lb,
            Method::Restored,
            fixed(&established),
            Check::ToBackend(connection.backend),
        ),
        Case::new(
            REPLY,
            "bg_lb",
            lb,
            Method::Restored,
            fixed(&reply),
            Check::ToClient(connection.backend),
        ),
        Case::new(
            PASSED,
            "bg_lb",
            lb,
            Method::Direct,
            fixed(&not_ours),
            Check::Counter(Counter::Passed),
        ),
        Case::new(
            PASSED_ELSEWHERE,
            "bg_lb",
            lb,
            Method::Direct,
            fixed(&elsewhere),
            Check::Counter(Counter::Passed),
        ),
        bounce_case(Method::Direct, fixed(&established)),
        bounce_case(Method::Restored, fixed(&established)),
        bounce_case(Method::RestoredNewPorts, Box::new(syn)),
        bounce_case(Method::Fresh, fixed(&established)),
        Case::new(PASS, "xdp_pass", pass, Method::Direct, fixed(&not_ours), Check::Nothing),
    ];
    for _ in 0..o.rounds {
        for case in &mut cases {
            procs::check_interrupt();
            let before = case.count(lab);
            let frames = case.round(o, ifindex, &mut restorer);
            if let (Some(before), Some(after)) = (before, case.count(lab)) {
                assert_eq!(
                    after - before,
                    frames,
                    "{} ({:?}): every frame must take the path; where the others went, the counters: {:?}",
                    case.path,
                    case.method,
                    lab.moved_counters()
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
            calls: 0,
        }
    }

    /// (repeat, batch_size) of one call.
    fn shape(&self, o: &LiveOptions) -> (u32, u32) {
        match self.method {
            Method::Fresh => (o.batch_size, o.batch_size),
            _ => (o.batch_size * o.batches_per_call, o.batch_size),
        }
    }

    fn calls(&self, o: &LiveOptions) -> usize {
        match self.method {
            Method::RestoredNewPorts => (o.syn_frames / (o.rounds * self.shape(o).0 as usize)).max(1),
            _ => o.calls_per_round,
        }
    }

    /// One round of calls; returns the frames run.
    fn round(&mut self, o: &LiveOptions, ifindex: u32, restorer: &mut Restorer<'_>) -> u64 {
        let (repeat, batch) = self.shape(o);
        let calls = self.calls(o);
        let mut times = Vec::with_capacity(calls);
        for _ in 0..calls {
            let frame = (self.frame)(self.calls);
            self.calls += 1;
            let prog = match self.method {
                Method::Direct | Method::Fresh => self.prog,
                Method::Restored => restorer.prepare(self.prog, &frame, false),
                Method::RestoredNewPorts => restorer.prepare(self.prog, &frame, true),
            };
            times.push(live_run(prog, &frame, ifindex, repeat, batch));
        }
        self.round_medians
            .push(stats::summarize(&times).expect("at least one call").median);
        self.all.extend(times);
        let frames = u64::from(repeat) * calls as u64;
        self.frames += frames;
        frames
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
        LivePath {
            path: self.path,
            program: self.program,
            method: self.method,
            ns: stats::over_groups(&self.all, &self.round_medians).expect("rounds were run"),
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

const NEW_FLOW: &str = "new flow";

/// The targets, (path, reference, most ratio): established and
/// reply at most 1.5x the bounce, a new flow at most 3x, passed (to the
/// LB's own SNAT address and to another address) at most 1.1x `xdp_pass`.
pub const TARGETS: [(&str, &str, f64); 5] = [
    (ESTABLISHED, "xdp_bounce", 1.5),
    (REPLY, "xdp_bounce", 1.5),
    (NEW_FLOW, "xdp_bounce", 3.0),
    (PASSED, "xdp_pass", 1.1),
    (PASSED_ELSEWHERE, "xdp_pass", 1.1),
];

/// [`TARGETS`] measured in `paths`. A restored path counts as
/// `path - bounce`, both through the restore, `+ bounce`.
fn targets(paths: &[LivePath]) -> Vec<LiveTarget> {
    let ns = |path: &str, method: Method| {
        paths
            .iter()
            .find(|p| p.path == path && p.method == method)
            .map_or(f64::NAN, |p| p.ns.median)
    };
    let bounce = ns(BOUNCE, Method::Direct);
    let restored = |path, method| ns(path, method) - ns(BOUNCE, method) + bounce;
    TARGETS
        .iter()
        .map(|&(what, reference, target)| {
            let (ns, reference_ns) = match what {
                NEW_FLOW => (restored(SYN_PATH, Method::RestoredNewPorts), bounce),
                ESTABLISHED | REPLY => (restored(what, Method::Restored), bounce),
                _ => (ns(what, Method::Direct), ns(PASS, Method::Direct)),
            };
            LiveTarget {
                what,
                reference,
                ns,
                ratio: stats::ratio(ns, reference_ns),
                target,
            }
        })
        .collect()
}

/// The live benchmark's Markdown.
pub fn render(r: &LiveReport) -> String {
    use std::fmt::Write as _;

    use crate::bench::report::{fmt_number, fmt_summary};
    let mut md = String::new();
    let o = &r.options;
    let _ = writeln!(
        md,
        "Live frames (`BPF_F_TEST_XDP_LIVE_FRAMES`) arriving on a veth: batches of {}, {} per call; {} rounds of {} \
         calls per row (fewer for new flows).\n\n\
         | packet path | program | method | ns/packet (median; round range) | Mpps per core | frames |\n\
         |---|---|---|---|---|---|",
        o.batch_size, o.batches_per_call, o.rounds, o.calls_per_round
    );
    for p in &r.paths {
        let _ = writeln!(
            md,
            "| {} | `{}` | {} | {} | {:.2} | {} |",
            p.path,
            p.program,
            p.method.describe(),
            fmt_summary(&Some(p.ns), false),
            p.mpps(),
            p.frames
        );
    }
    let _ = writeln!(
        md,
        "\n| target (live frames; restored paths: path − bounce through xdp_restore, + bounce) | ns/packet \
         | Mpps per core | ratio | target | met |\n|---|---|---|---|---|---|"
    );
    for t in &r.targets {
        let _ = writeln!(
            md,
            "| {} vs `{}` | {} | {:.2} | {} | ≤ {}× | {} |",
            t.what,
            t.reference,
            fmt_number(t.ns),
            t.mpps(),
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
    fn restored_paths_count_only_what_they_cost_beyond_the_restored_bounce() {
        let targets = targets(&[
            path(SYN_PATH, Method::RestoredNewPorts, 240.0),
            path(BOUNCE, Method::RestoredNewPorts, 100.0),
            path(ESTABLISHED, Method::Restored, 120.0),
            path(REPLY, Method::Restored, 140.0),
            path(BOUNCE, Method::Restored, 84.0),
            path(BOUNCE, Method::Direct, 40.0),
            path(PASSED, Method::Direct, 1050.0),
            path(PASSED_ELSEWHERE, Method::Direct, 1200.0),
            path(PASS, Method::Direct, 1000.0),
        ]);
        let ns: Vec<_> = targets.iter().map(|t| t.ns).collect();
        assert_eq!(ns, [76.0, 96.0, 180.0, 1050.0, 1200.0]);
        let ratios: Vec<_> = targets.iter().map(|t| t.ratio.unwrap()).collect();
        assert_eq!(ratios, [1.9, 2.4, 4.5, 1.05, 1.2]);
        let met: Vec<_> = targets.iter().map(|t| t.met().unwrap()).collect();
        assert_eq!(met, [false, false, false, true, false]);
    }

    #[test]
    fn a_missing_baseline_gives_no_ratio() {
        let targets = targets(&[path(ESTABLISHED, Method::Restored, 140.0)]);
        assert!(targets.iter().all(|t| t.ratio.is_none() && t.met().is_none()));
    }
}
