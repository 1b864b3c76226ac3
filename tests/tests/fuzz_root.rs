//! The fuzz test (root): at least a million generated and mutated frames
//! through the real XDP program (BPF_PROG_TEST_RUN in a packet lab), each
//! judged by the oracle in `bg_lb_tests::fuzz::oracle`, whose module docs
//! list every invariant: nothing is forwarded that does not belong to a
//! pinned flow or a valid new one, checksums stay right, passed frames are
//! untouched, the program never aborts, and FLOWS and REVERSE_NAT agree.
//!
//! Deterministic: the seed is printed; `BG_LB_FUZZ_SEED=<n>` replays or
//! varies it, `BG_LB_FUZZ_FRAMES=<n>` scales the runs.

use bg_lb_tests::{
    fuzz::{self, FuzzOptions, FuzzReport, oracle::Class},
    netns::in_fresh_netns,
    packet_lab::PacketLabOptions,
    require_root,
};

const DEFAULT_SEED: u64 = 0x6267_6c62_0013;

fn seed() -> u64 {
    std::env::var("BG_LB_FUZZ_SEED").map_or(DEFAULT_SEED, |s| {
        let s = s.trim_start_matches("0x");
        u64::from_str_radix(s, 16).unwrap_or_else(|e| panic!("BG_LB_FUZZ_SEED={s} (hex): {e}"))
    })
}

fn frames(default: u64) -> u64 {
    std::env::var("BG_LB_FUZZ_FRAMES").map_or(default, |n| n.parse().expect("BG_LB_FUZZ_FRAMES: a count"))
}

fn run(options: FuzzOptions) -> FuzzReport {
    require_root();
    let report = in_fresh_netns(move || fuzz::run(&options));
    eprintln!("{}", report.summary());
    assert!(
        report.violations.is_empty(),
        "{} violations (replay with BG_LB_FUZZ_SEED={:#x}):\n{}",
        report.violations.len(),
        report.seed,
        report.violations.join("\n")
    );
    report
}

/// Every path a correct data plane takes on ordinary traffic must have been
/// reached, or the fuzz proved little.
fn assert_reached(report: &FuzzReport, classes: &[Class], at_least: u64) {
    for &class in classes {
        assert!(
            report.count(class) >= at_least,
            "only {} frames took the {class:?} path:\n{}",
            report.count(class),
            report.summary()
        );
    }
}

#[test]
fn a_million_hostile_frames_are_never_forwarded_outside_a_flow_and_never_corrupted() {
    let frames = frames(1_000_000);
    let report = run(FuzzOptions {
        seed: seed(),
        frames,
        sessions: 512,
        // Room for every flow the run opens: nothing is evicted, so
        // REVERSE_NAT must match FLOWS at every check, not only after sweeps.
        lab: PacketLabOptions {
            max_flows: 1 << 16,
            ..PacketLabOptions::with_ratio(50)
        },
        check_every: 100_000,
        reverse_nat_complete_between_sweeps: true,
        max_violations: 10,
    });
    assert_eq!(report.frames, frames);
    assert!(
        report.mutated > frames / 4,
        "{} of {frames} frames mutated",
        report.mutated
    );
    assert_reached(
        &report,
        &[
            Class::ToBackendPinned,
            Class::ReplyToClient,
            Class::Passed,
            Class::Dropped,
        ],
        frames / 100,
    );
    // While no backend takes new flows, connection requests are refused.
    assert_reached(&report, &[Class::RstAnswer], frames / 1000);
}

#[test]
fn hostile_frames_while_flows_are_evicted_never_cross_clients() {
    let frames = frames(1_000_000) / 4;
    let report = run(FuzzOptions {
        seed: seed() ^ 0xe71c,
        frames,
        sessions: 2048,
        // 256 flow slots for 2048 connections and 1024 SNAT ports: FLOWS and
        // REVERSE_NAT evict all the time, each on its own.
        lab: PacketLabOptions {
            max_flows: 256,
            snat_ports: (20000, 20255),
            blue_percent: 50,
        },
        check_every: 25_000,
        reverse_nat_complete_between_sweeps: false,
        max_violations: 10,
    });
    assert_eq!(report.frames, frames);
    assert!(
        report.most_flows >= 200,
        "the flow table never filled:\n{}",
        report.summary()
    );
    assert_reached(&report, &[Class::ToBackendPinned, Class::ReplyToClient], frames / 100);
}

#[test]
fn hostile_frames_while_snat_ports_run_out_never_cross_clients() {
    let frames = frames(1_000_000) / 4;
    let report = run(FuzzOptions {
        seed: seed() ^ 0x5a47,
        frames,
        sessions: 1024,
        // 16 SNAT ports per backend for 1024 connections: new flows find no
        // port most of the time; the flow table has room for all of them.
        lab: PacketLabOptions {
            max_flows: 4096,
            snat_ports: (20000, 20015),
            blue_percent: 50,
        },
        check_every: 25_000,
        reverse_nat_complete_between_sweeps: true,
        max_violations: 10,
    });
    assert_eq!(report.frames, frames);
    assert!(
        report.most_flows >= 60,
        "the SNAT ports were never used up:\n{}",
        report.summary()
    );
    assert_reached(&report, &[Class::ToBackendPinned, Class::ReplyToClient], frames / 200);
}
