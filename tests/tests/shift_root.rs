//! Progressive shift end-to-end tests (root): `bg-lb ctl shift` under load,
//! judged by what the data plane sees of each connection's fate, and client
//! affinity across a shift's steps.

use std::{
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use bg_lb::{protocol::BackendHealth, ratio::Pool, shift::ShiftOutcome};
use bg_lb_tests::{
    lab::{BlueGreenLab, LabOptions, NameLab, NameLabConfig, SERVICE, pool_of_name},
    load::{Load, LoadSpec},
    servers::NameClient,
    topology::CLIENT_ADDR,
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");
const RATE: u32 = 100;

fn load(lab: &BlueGreenLab) -> Load {
    Load::start(
        &lab.topo.client.ns,
        LoadSpec {
            vip: lab.live_vip(),
            rate: RATE,
            workers: 4,
            long_lived: 0,
            long_lived_lifetime: Duration::ZERO,
            long_lived_period: Duration::ZERO,
        },
    )
}

fn outcome(lab: &BlueGreenLab) -> Option<ShiftOutcome> {
    lab.status().shift.map(|s| s.outcome)
}

#[test]
fn shift_to_a_healthy_pool_completes_every_step_without_failed_requests() {
    let lab = BlueGreenLab::start(BG_LB, &LabOptions::all_green());
    let load = load(&lab);
    let args = [
        "shift",
        SERVICE,
        "--to",
        "blue",
        "--steps",
        "25,50,100",
        "--interval",
        "1s",
        "--min-flows",
        "10",
    ];
    let out = lab.daemon.ctl_ok(&args);
    let tally = load.stop();
    assert!(out.contains("step 3/3") && out.contains("completed"), "{out}");
    let status = lab.status();
    assert_eq!(status.ratio.to_string(), "100:0");
    assert_eq!(status.shift.map(|s| s.outcome), Some(ShiftOutcome::Completed));
    assert_eq!((tally.failed, tally.resets), (0, 0), "{:?}", tally.failures);
    assert!(
        tally.served_by("b0") + tally.served_by("b1") > 0,
        "blue took traffic during the shift"
    );
}

#[test]
fn shift_to_a_pool_that_resets_connections_rolls_back_before_the_next_step() {
    // TCP checks pass (connections are accepted), so only the data plane's
    // view of each connection's fate can catch the faulty build.
    let options = LabOptions {
        check: "tcp",
        ..LabOptions::all_green()
    };
    let mut lab = BlueGreenLab::start(BG_LB, &options);
    for i in BlueGreenLab::pool(bg_lb::ratio::Pool::Blue) {
        lab.backends[i].redeploy_with(&lab.topo.backends[i].ns, "v2-bad", "live", &["--fail-percent", "50"]);
    }
    lab.wait(|s| s.backends.iter().all(|b| b.health == BackendHealth::Up), "all up");
    let load = load(&lab);
    let started = Instant::now();
    // Steps long enough for the judge's flows on a loaded host; the record
    // shows which step the rollback came in.
    let args = [
        "shift",
        SERVICE,
        "--to",
        "blue",
        "--steps",
        "10,50,100",
        "--interval",
        "30s",
        "--max-error-rate",
        "5%",
    ];
    let out = lab.daemon.ctl(&[&args[..], &["--min-flows", "10"]].concat());
    let took = started.elapsed();
    let tally = load.stop();

    assert!(!out.status.success(), "a rolled-back shift exits non-zero");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rolled back to 0:100") && err.contains("blue error rate"),
        "{err}"
    );
    let status = lab.status();
    assert_eq!(
        status.ratio.to_string(),
        "0:100",
        "back to the ratio before the shift, in one swap"
    );
    let shift = status.shift.expect("the shift's record");
    assert!(matches!(shift.outcome, ShiftOutcome::RolledBack { .. }), "{shift:?}");
    assert_eq!(shift.step, 0, "rolled back within the first step, before the next one");
    // Only the 10% share sent to blue during the first step could fail.
    let bound = (f64::from(RATE) * 0.10 * took.as_secs_f64()).ceil() as u64 + 5;
    assert!(tally.failed > 0, "the faulty build did fail requests");
    assert!(
        tally.failed <= bound,
        "{} failures > {bound}: {:?}",
        tally.failed,
        tally.failures
    );
}

#[test]
fn shift_abort_restores_the_ratio_the_shift_began_at() {
    let lab = BlueGreenLab::start(BG_LB, &LabOptions::all_green());
    lab.daemon
        .ctl_ok(&["shift", SERVICE, "--to", "blue", "--interval", "10m", "--detach"]);
    assert_eq!(lab.status().ratio.to_string(), "10:90");
    let refused = lab.daemon.ctl(&["ratio", SERVICE, "50:50"]);
    assert!(!refused.status.success(), "manual ratio changes wait for the shift");
    lab.daemon.ctl_ok(&["shift", SERVICE, "--abort"]);
    assert_eq!(lab.status().ratio.to_string(), "0:100");
    assert_eq!(outcome(&lab), Some(ShiftOutcome::Aborted { rolled_back: true }));
}

#[test]
fn a_restarted_daemon_resumes_a_running_shift() {
    let mut lab = BlueGreenLab::start(BG_LB, &LabOptions::all_green());
    lab.daemon.ctl_ok(&[
        "shift",
        SERVICE,
        "--to",
        "blue",
        "--steps",
        "50,100",
        "--interval",
        "1s",
        "--detach",
    ]);
    lab.daemon.kill9();
    thread::sleep(Duration::from_millis(300));
    lab.daemon.spawn();
    lab.wait(
        |s| s.shift.as_ref().is_some_and(|r| r.outcome == ShiftOutcome::Completed),
        "the resumed shift completes",
    );
    assert_eq!(lab.status().ratio.to_string(), "100:0");
    assert!(lab.daemon.log().contains("resuming the progressive shift"));
}

#[test]
fn promote_checks_health_and_rollback_returns_to_the_previous_ratio() {
    let mut lab = BlueGreenLab::start(BG_LB, &LabOptions::default());
    lab.backends[2].kill();
    lab.wait(|s| s.backends[2].health == BackendHealth::Down, "b2 down");
    let refused = lab.daemon.ctl(&["promote", SERVICE, "green"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("10.99.0.13:8080 down"),
        "{refused:?}"
    );
    lab.daemon.ctl_ok(&["promote", SERVICE, "blue"]);
    assert_eq!(lab.status().ratio.to_string(), "100:0");
    lab.daemon.ctl_ok(&["rollback", SERVICE]);
    assert_eq!(lab.status().ratio.to_string(), "50:50");
}

/// Client affinity across a 10/50/100 shift toward green, the new version,
/// with 200 client addresses (each connecting three times per step): no
/// client that reached green is ever sent back to blue, and at each step a
/// client's connections all reach one backend.
#[test]
fn under_client_affinity_no_client_goes_back_to_the_old_pool_during_a_10_50_100_shift() {
    let config = NameLabConfig {
        service: "ratio = \"100:0\"\naffinity = \"client-ip\"\n",
        ..NameLabConfig::default()
    };
    let lab = NameLab::start(BG_LB, 4, None, &config);
    let clients = client_addresses(&lab, 200);
    let vip = lab.vip();
    let mut reached_green = vec![false; clients.len()];
    for (ratio, green_share) in [("100:0", 0), ("90:10", 10), ("50:50", 50), ("0:100", 100)] {
        lab.daemon.ctl_ok(&["ratio", SERVICE, ratio]);
        lab.wait_for_ratio(ratio);
        let addrs = clients.clone();
        let served = lab.topo.client.ns.run(move || {
            addrs
                .iter()
                .map(|&from| {
                    (0..3)
                        .map(|_| NameClient::connect_from(from, vip).and_then(|mut c| c.ask()))
                        .collect::<std::io::Result<Vec<String>>>()
                })
                .collect::<std::io::Result<Vec<_>>>()
        });
        let served = served.unwrap_or_else(|e| panic!("ratio {ratio}: a connection failed: {e}\n{}", lab.daemon.log()));
        let mut green = 0;
        for ((client, names), reached) in clients.iter().zip(&served).zip(&mut reached_green) {
            assert!(
                names.iter().all(|n| *n == names[0]),
                "ratio {ratio}: {client}'s connections reached {names:?}"
            );
            let is_green = pool_of_name(&names[0]) == Pool::Green;
            assert!(
                is_green || !*reached,
                "ratio {ratio}: {client} saw green and then blue again"
            );
            *reached = is_green;
            green += usize::from(is_green);
        }
        // 200 clients: the green share within 15 points of the ratio's.
        let expected = clients.len() * green_share / 100;
        assert!(
            green.abs_diff(expected) <= 30,
            "ratio {ratio}: {green} of {} clients on green",
            clients.len()
        );
    }
}

/// `n` more addresses of the client, 10.99.1.1 on, each a /32 on its eth0,
/// and a route on the LB to them through the client's main address.
fn client_addresses(lab: &NameLab, n: u8) -> Vec<Ipv4Addr> {
    // The LB learns the client's MAC from its ARP for the VIP, asked from
    // its main address.
    lab.topo.client.ns.sysctl("net.ipv4.conf.all.arp_announce=2");
    lab.topo.client.ns.sysctl("net.ipv4.conf.eth0.arp_announce=2");
    lab.names(1);
    let addrs: Vec<Ipv4Addr> = (1..=n).map(|i| Ipv4Addr::new(10, 99, 1, i)).collect();
    for addr in &addrs {
        lab.topo.client.ns.ip(&format!("addr add {addr}/32 dev eth0"));
    }
    lab.topo.lb.ns.ip(&format!("route add 10.99.1.0/24 via {CLIENT_ADDR}"));
    addrs
}
