//! The fuzz test (root): at least a million generated and mutated frames
//! through the real XDP program (BPF_PROG_TEST_RUN in a packet lab), each
//! judged by the oracle in `bg_lb_tests::fuzz::oracle`, whose module docs
//! list every invariant: nothing is forwarded that does not belong to a
//! pinned flow or a valid new one, checksums stay right, passed frames are
//! untouched, the program never aborts, and FLOWS and REVERSE_NAT agree.
//!
//! A last test tampers with real outputs to prove the oracle rejects what
//! it must.
//!
//! Deterministic: the seed is printed (`-- --nocapture`, and in every
//! failure); `BG_LB_FUZZ_SEED=<hex>` replays or varies it,
//! `BG_LB_FUZZ_FRAMES=<n>` scales the runs.

use std::net::{Ipv4Addr, SocketAddrV4};

use bg_lb_tests::{
    fuzz::{
        self, FuzzOptions, FuzzReport,
        oracle::{Class, Oracle},
    },
    netns::in_fresh_netns,
    packet_lab::{
        GATEWAY_MAC, GREEN, LB_MAC, PacketLab, PacketLabOptions, SNAT_PORTS, VIP, XDP_PASS, XDP_TX, client,
        from_client, reply_to,
    },
    packets::{ACK, ETH_LEN, PSH_ACK, RST, SYN, fix_checksums, parse_checked, tcp_frame},
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
        // Every open flow must own its port at every check, not only after sweeps.
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
            ..PacketLabOptions::with_ratio(50)
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
            ..PacketLabOptions::with_ratio(50)
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

/// A change to a frame.
type Tamper<'a> = &'a dyn Fn(&mut Vec<u8>);

/// The oracle can fail: every kind of mis-forwarding it exists to catch,
/// made by tampering with real outputs of the program, is rejected.
#[test]
fn the_oracle_rejects_every_kind_of_mis_forwarding() {
    require_root();
    in_fresh_netns(|| {
        let lab = PacketLab::new(&PacketLabOptions::with_ratio(50));
        let oracle = Oracle::new(&lab, SNAT_PORTS);
        let c = client(40000);
        let syn = from_client(c, SYN);
        let (verdict, to_backend) = lab.run(&syn);
        let data = tcp_frame(GATEWAY_MAC, LB_MAC, c, VIP, PSH_ACK, b"payload");
        let (data_verdict, data_out) = lab.run(&data);
        let reply = reply_to(&parse_checked(&to_backend), ACK);
        let (reply_verdict, to_client) = lab.run(&reply);
        for (input, verdict, output) in [
            (&syn, verdict, &to_backend),
            (&data, data_verdict, &data_out),
            (&reply, reply_verdict, &to_client),
        ] {
            oracle
                .judge(&lab, input, verdict, output)
                .unwrap_or_else(|e| panic!("a correct output was rejected: {e}"));
        }

        let tcp = ETH_LEN + 20;
        let rejects = |what: &str, input: &[u8], verdict: u32, output: &[u8]| {
            assert!(
                oracle.judge(&lab, input, verdict, output).is_err(),
                "the oracle accepted {what}"
            );
        };
        let tampered = |frame: &[u8], change: Tamper, fix: bool| {
            let mut frame = frame.to_vec();
            change(&mut frame);
            if fix {
                fix_checksums(&mut frame);
            }
            frame
        };
        let set_dst = |addr: Ipv4Addr, port: u16| {
            move |f: &mut Vec<u8>| {
                f[ETH_LEN + 16..ETH_LEN + 20].copy_from_slice(&addr.octets());
                f[tcp + 2..tcp + 4].copy_from_slice(&port.to_be_bytes());
            }
        };
        let other_backend = if parse_checked(&to_backend).dst == GREEN[0] {
            GREEN[1]
        } else {
            GREEN[0]
        };
        let cases: [(&str, Tamper, bool); 8] = [
            ("a broken TCP checksum", &|f| f[tcp + 16] ^= 1, false),
            ("a broken IPv4 checksum", &|f| f[ETH_LEN + 10] ^= 1, false),
            (
                "another backend than the pinned one",
                &set_dst(*other_backend.ip(), other_backend.port()),
                true,
            ),
            (
                "an address that is no backend",
                &set_dst(Ipv4Addr::new(10, 0, 0, 99), 8080),
                true,
            ),
            (
                "a SNAT port outside the range",
                &|f| f[tcp..tcp + 2].copy_from_slice(&(SNAT_PORTS.1 + 1).to_be_bytes()),
                true,
            ),
            ("a TTL not decremented", &|f| f[ETH_LEN + 8] += 1, true),
            ("a wrong next-hop MAC", &|f| f[0] ^= 0x40, false),
            ("another IP protocol", &|f| f[ETH_LEN + 9] = 17, true),
        ];
        for (what, change, fix) in cases {
            rejects(what, &syn, verdict, &tampered(&to_backend, change, fix));
        }
        let last = data_out.len() - 1;
        rejects(
            "a changed payload",
            &data,
            data_verdict,
            &tampered(&data_out, &|f| f[last] ^= 1, true),
        );
        rejects(
            "a reply to another client",
            &reply,
            reply_verdict,
            &tampered(&to_client, &set_dst(Ipv4Addr::new(192, 168, 9, 9), 40000), true),
        );
        rejects("XDP_ABORTED", &syn, 0, &syn);
        rejects("a passed frame that changed", &syn, XDP_PASS, &to_backend);

        // Answers: a RST only refuses a connection request, never a RST.
        let other = client(40001);
        let rst = tcp_frame(LB_MAC, GATEWAY_MAC, VIP, other, RST | ACK, b"");
        let ack = from_client(other, ACK);
        rejects("a RST answering an ACK", &ack, XDP_TX, &rst);
        let syn_rst = from_client(other, SYN | RST);
        rejects("a RST answering a RST", &syn_rst, XDP_TX, &rst);
        let from_elsewhere = tcp_frame(
            LB_MAC,
            GATEWAY_MAC,
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 99), 80),
            other,
            RST,
            b"",
        );
        rejects(
            "a RST from an address that is not the VIP",
            &from_client(other, SYN),
            XDP_TX,
            &from_elsewhere,
        );
    });
}
