//! The fuzz test behind `tests/fuzz_root.rs`: millions of generated and
//! mutated frames ([`frames`]) through the real XDP program in a
//! [`PacketLab`] whose VIP has a TCP and a UDP service, and whose IPv6 VIP
//! has both too ([`PacketLab::add_ipv6_services`]), each judged by an
//! [`oracle`] that reads the program's maps.
//! Deterministic for a seed, but for the flow table's LRU eviction, which
//! only the small-table runs reach, and the SYN proxy's cookies (the
//! kernel's secret and clock make them) and SYN retransmissions (after a
//! time), which only the proxy run reaches.

pub mod frames;
pub mod oracle;

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap, VecDeque},
    fmt::Write as _,
    rc::Rc,
    time::{Duration, Instant},
};

use bg_lb::{
    dataplane::{
        FlowTimeouts,
        services::ServiceSpec,
        syn_proxy::{SynProxy, SynProxyMode},
    },
    ratio::Ratio,
};
use bg_lb_common::counters::Counter;
use frames::{Origin, Traffic};
use nix::{
    sched::{CpuSet, sched_setaffinity},
    unistd::Pid,
};
use oracle::{Class, Oracle};

use crate::packet_lab::{BACKENDS6, Ipv6Services, PacketLab, PacketLabOptions};

#[derive(Clone, Debug)]
pub struct FuzzOptions {
    pub seed: u64,
    pub frames: u64,
    /// Connections in play at a time (each is replaced now and then).
    pub sessions: usize,
    pub lab: PacketLabOptions,
    /// Frames between checks of the tables, each followed by a sweep.
    pub check_every: u64,
    /// Whether every flow that has not closed must own its REVERSE_NAT
    /// entry between sweeps too: true while the flow table is large enough
    /// that LRU eviction never runs (an evicted flow pinned again by a later
    /// segment may find its port taken until the sweep).
    pub reverse_nat_complete_between_sweeps: bool,
    /// Stop after this many violations.
    pub max_violations: usize,
    /// Run every frame on the CPU the run starts on ([`stay_on_this_cpu`]).
    pub one_cpu: bool,
}

#[derive(Debug, Default)]
pub struct FuzzReport {
    pub seed: u64,
    pub frames: u64,
    pub mutated: u64,
    pub elapsed: Duration,
    pub classes: BTreeMap<Class, u64>,
    /// The IPv6 frames' share of `classes`.
    pub classes6: BTreeMap<Class, u64>,
    pub table_checks: u64,
    /// The most flows the table held at a check.
    pub most_flows: usize,
    /// See [`Oracle::cookie_mss_fallbacks`].
    pub cookie_mss_fallbacks: u64,
    /// The data plane's counters that moved, at the end of the run.
    pub counters: Vec<(Counter, u64)>,
    pub violations: Vec<String>,
}

impl FuzzReport {
    pub fn count(&self, class: Class) -> u64 {
        self.classes.get(&class).copied().unwrap_or(0)
    }

    /// How many IPv6 frames took `class`'s path.
    pub fn count6(&self, class: Class) -> u64 {
        self.classes6.get(&class).copied().unwrap_or(0)
    }

    /// How many times the data plane counted `counter` in the run.
    pub fn counted(&self, counter: Counter) -> u64 {
        self.counters.iter().find(|(c, _)| *c == counter).map_or(0, |&(_, n)| n)
    }

    pub fn summary(&self) -> String {
        let mut text = format!(
            "seed {:#x}: {} frames ({} mutated) in {:.2?} ({:.0} frames/s), {} table checks, up to {} flows, {} cookie MSS fallbacks\n",
            self.seed,
            self.frames,
            self.mutated,
            self.elapsed,
            self.frames as f64 / self.elapsed.as_secs_f64(),
            self.table_checks,
            self.most_flows,
            self.cookie_mss_fallbacks
        );
        for (class, n) in &self.classes {
            let _ = writeln!(text, "  {class:?}: {n} ({} IPv6)", self.count6(*class));
        }
        let _ = writeln!(text, "data plane counters:");
        for (counter, n) in &self.counters {
            let _ = writeln!(text, "  {counter:?}: {n}");
        }
        text
    }
}

/// Sweeps as the daemon would, with timeouts that do not depend on how fast
/// the frames go: closed and unanswered flows go at every sweep.
const SWEEP: FlowTimeouts = FlowTimeouts {
    established_idle: Duration::from_secs(3600),
    closing: Duration::ZERO,
    syn: Duration::ZERO,
};

/// The UDP service's `udp_idle`: short, so that some UDP flows expire at a
/// sweep mid-run and their sessions' next datagrams pin them afresh.
const UDP_IDLE: Duration = Duration::from_secs(1);

/// Runs the fuzz in a fresh packet lab (call it in a fresh network
/// namespace: see [`crate::netns::in_fresh_netns`]).
pub fn run(o: &FuzzOptions) -> FuzzReport {
    if o.one_cpu {
        stay_on_this_cpu();
    }
    let mut lab = PacketLab::new(&o.lab);
    // Beside the TCP service, on its address and port: UDP flows share the
    // SNAT pairs' key space with TCP flows. Never proxied (a UDP service
    // has no SYN proxy; the config refuses one).
    let mut udp = lab.add_udp_service(50, UDP_IDLE);
    udp.syn_proxy = SynProxy::default();
    lab.apply(&udp);
    // The IPv6 TCP service's SYN proxy as the IPv4 one's.
    let ipv6 = Rc::new(RefCell::new(lab.add_ipv6_services()));
    ipv6.borrow_mut().apply_syn_proxy(&o.lab.syn_proxy);
    let mut oracle = Oracle::new(&lab, &o.lab).with_ipv6(Rc::clone(&ipv6));
    let syn_proxy = o.lab.syn_proxy.mode != SynProxyMode::Off;
    let mut traffic = Traffic::new(o.seed, o.sessions, o.lab.snat_ports, syn_proxy);
    let mut report = FuzzReport {
        seed: o.seed,
        ..FuzzReport::default()
    };
    let (mut frame, mut out) = (Vec::with_capacity(2048), vec![0u8; 4096]);
    let mut history = SessionHistory::default();
    let started = Instant::now();
    for i in 0..o.frames {
        let origin = traffic.next(&mut frame);
        let (verdict, len) = lab.run_into(&frame, &mut out);
        report.frames += 1;
        report.mutated += !origin.mutations.is_empty() as u64;
        let judged = oracle.judge(&lab, &frame, verdict, &out[..len]);
        let class = judged.as_ref().ok().map(|&(class, _)| class);
        match judged {
            Ok((class, learned)) => {
                *report.classes.entry(class).or_default() += 1;
                if origin.ipv6 {
                    *report.classes6.entry(class).or_default() += 1;
                }
                // A mutated frame may no longer be the session's.
                if let (Some(session), Some(learned), true) = (origin.session, learned, origin.mutations.is_empty()) {
                    traffic.learn(session, learned);
                }
            }
            Err(why) => report.violations.push(format!(
                "{}{}",
                describe(o.seed, i, &origin, &frame, verdict, &out[..len], &why),
                history.of(origin.session)
            )),
        }
        history.record(Seen {
            index: i,
            origin,
            frame: frame.clone(),
            verdict,
            class,
        });
        if (i + 1) % o.check_every == 0 || i + 1 == o.frames {
            check_tables(&mut lab, &mut oracle, o, &mut report, i);
            operate(&mut lab, &mut udp, &mut ipv6.borrow_mut(), report.table_checks);
        }
        if report.violations.len() >= o.max_violations {
            break;
        }
    }
    report.elapsed = started.elapsed();
    report.cookie_mss_fallbacks = oracle.cookie_mss_fallbacks();
    report.counters = lab.moved_counters();
    report
}

/// Keeps the calling thread, which runs every frame, on the CPU it is on.
/// BPF_PROG_RUN runs the program on the caller's CPU, and the flow table's
/// LRU hands each CPU its own batch of free slots: a thread that moved
/// between CPUs left free slots behind on the one it left, so a small
/// table filled less, by as much as a batch per CPU.
fn stay_on_this_cpu() {
    let cpu = nix::sched::sched_getcpu().expect("sched_getcpu");
    let mut only = CpuSet::new();
    only.set(cpu).expect("a CPU number within CpuSet");
    sched_setaffinity(Pid::from_raw(0), &only).expect("sched_setaffinity to the current CPU");
}

/// Invariants of the tables before and after a sweep.
fn check_tables(lab: &mut PacketLab, oracle: &mut Oracle, o: &FuzzOptions, report: &mut FuzzReport, frame: u64) {
    report.table_checks += 1;
    report.most_flows = report.most_flows.max(lab.flows().len());
    let before = oracle.check_tables(lab, o.reverse_nat_complete_between_sweeps);
    lab.sweep_with_udp(&SWEEP);
    let after = oracle.check_tables(lab, true);
    for (when, problems) in [("before", before), ("after", after)] {
        for p in problems.into_iter().take(3) {
            report.violations.push(format!(
                "seed {:#x}, tables after frame {frame}, {when} a sweep: {p}",
                o.seed
            ));
        }
    }
}

/// What an operator does meanwhile, in turn: shifts all new flows to one
/// pool, lets no backend take new flows (connection requests are refused),
/// restores the weights with all new flows to the other pool, and returns
/// to 50:50; the UDP service's ratio flips with the TCP one's, the IPv6
/// services' tables with them. Pinned flows must keep their backends
/// throughout.
fn operate(lab: &mut PacketLab, udp: &mut ServiceSpec, ipv6: &mut Ipv6Services, step: u64) {
    let blue_percent = match step % 4 {
        0 => {
            ipv6.send_all_to(BACKENDS6[0]);
            100
        }
        1 => {
            lab.reweigh(|_, weight, _| *weight = 0);
            ipv6.clear_tables();
            return;
        }
        2 => {
            lab.reweigh(|_, weight, _| *weight = 100);
            ipv6.send_all_to(BACKENDS6[1]);
            0
        }
        _ => {
            ipv6.split_tables();
            50
        }
    };
    lab.set_ratio(blue_percent);
    udp.ratio = Ratio::new(blue_percent).expect("valid ratio");
    lab.apply(udp);
}

fn describe(seed: u64, index: u64, origin: &Origin, input: &[u8], verdict: u32, output: &[u8], why: &str) -> String {
    format!(
        "seed {seed:#x}, frame {index} ({:?}, session {:?}, mutations {:?}, checksums fixed: {}): {why}\n  in:  {}\n  out: verdict {verdict}, {}",
        origin.kind,
        origin.session,
        origin.mutations,
        origin.checksums_fixed,
        hex(input),
        hex(output)
    )
}

/// A frame as the run sent and judged it, for a later violation's report.
struct Seen {
    index: u64,
    origin: Origin,
    frame: Vec<u8>,
    verdict: u32,
    /// None: a violation (reported on its own).
    class: Option<Class>,
}

/// The last frames of each session. What set the data plane and the
/// oracle apart often came a few frames before the violation that shows
/// it: an XDP_DROP, say, whose bytes the oracle does not judge.
#[derive(Default)]
struct SessionHistory(HashMap<usize, VecDeque<Seen>>);

impl SessionHistory {
    const KEPT: usize = 12;

    fn record(&mut self, seen: Seen) {
        let Some(session) = seen.origin.session else {
            return;
        };
        let kept = self.0.entry(session).or_default();
        if kept.len() == Self::KEPT {
            kept.pop_front();
        }
        kept.push_back(seen);
    }

    /// The session's frames before this one, one line each.
    fn of(&self, session: Option<usize>) -> String {
        let Some(kept) = session.and_then(|s| self.0.get(&s)) else {
            return String::new();
        };
        let mut text = String::from("\n  the session's frames before it:");
        for seen in kept {
            let _ = write!(
                text,
                "\n    frame {} ({:?}, mutations {:?}, checksums fixed: {}): verdict {}, {}: {}",
                seen.index,
                seen.origin.kind,
                seen.origin.mutations,
                seen.origin.checksums_fixed,
                seen.verdict,
                seen.class
                    .map_or_else(|| "a violation".to_owned(), |c| format!("{c:?}")),
                hex(&seen.frame)
            );
        }
        text
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{fuzz::frames::Kind, packet_lab::XDP_DROP};

    fn seen(index: u64, session: usize, class: Option<Class>) -> Seen {
        Seen {
            index,
            origin: Origin {
                kind: Kind::BackendSynAck,
                ipv6: false,
                session: Some(session),
                mutations: Vec::new(),
                checksums_fixed: false,
            },
            frame: vec![0xab, index as u8],
            verdict: XDP_DROP,
            class,
        }
    }

    #[test]
    fn a_violations_report_lists_its_sessions_last_frames_and_no_others() {
        let mut history = SessionHistory::default();
        for i in 0..20 {
            history.record(seen(i, 7, (i != 15).then_some(Class::Dropped)));
            history.record(seen(100 + i, 8, Some(Class::Dropped)));
        }
        let report = history.of(Some(7));
        let frames: Vec<&str> = report
            .lines()
            .skip_while(|l| !l.ends_with("before it:"))
            .skip(1)
            .collect();
        assert_eq!(frames.len(), SessionHistory::KEPT, "{report}");
        assert!(frames[0].starts_with("    frame 8 (BackendSynAck"), "{report}");
        assert!(
            frames[11].starts_with("    frame 19 ") && frames[11].ends_with("Dropped: ab13"),
            "{report}"
        );
        assert!(frames[7].contains("verdict 1, a violation"), "{report}");
        assert!(!report.contains("frame 119"), "another session's frame: {report}");
        assert_eq!(history.of(Some(9)), "");
        assert_eq!(history.of(None), "");
    }
}
