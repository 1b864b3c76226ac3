//! Slow start end to end (root): a backend enabled again under
//! `slowstart` takes a small share of new connections at first and climbs
//! to its full weight a tenth at a time.

use bg_lb_tests::lab::{NameLab, NameLabConfig, SERVICE};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");
const CONNECTIONS: usize = 200;

#[test]
fn a_backend_enabled_under_slowstart_ramps_its_share_of_new_connections_a_tenth_at_a_time() {
    // b0 and b1, both blue, weight 100.
    let config = NameLabConfig {
        service: "ratio = \"100:0\"\nslowstart = \"30s\"\n",
        ..NameLabConfig::default()
    };
    let lab = NameLab::start(BG_LB, 2, None, &config);
    let b1 = lab.backend_addr(1);
    let weight = |lab: &NameLab| {
        let status = lab.daemon.status(SERVICE);
        status
            .backends
            .iter()
            .find(|b| b.address == b1.into())
            .map(|b| b.weight)
            .unwrap()
    };
    lab.daemon.ctl_ok(&["backend", SERVICE, &b1.to_string(), "disable"]);
    assert_eq!(weight(&lab), 0);

    lab.daemon.ctl_ok(&["backend", SERVICE, &b1.to_string(), "enable"]);
    let names = lab.names(CONNECTIONS);
    let ramped_to = weight(&lab);
    assert!(ramped_to < 100, "still ramping after the connections ({ramped_to})");
    let taken = names.iter().filter(|n| *n == "b1").count() as f64 / CONNECTIONS as f64;
    // b1's weight was at most `ramped_to` against b0's 100 throughout.
    let bound = f64::from(ramped_to) / f64::from(100 + ramped_to);
    assert!(taken > 0.0, "a ramping backend takes some connections");
    assert!(
        taken <= bound + 0.1,
        "b1 took {taken:.2} of new connections at weight <= {ramped_to}"
    );

    let log_weights = |lab: &NameLab| -> Vec<u32> {
        let prefix = format!("{b1} at ");
        lab.daemon
            .log()
            .lines()
            .filter(|l| l.contains("slow start: weights ramping"))
            .filter_map(|l| l.split(&prefix).nth(1)?.split('/').next()?.parse().ok())
            .collect()
    };
    let started = std::time::Instant::now();
    while weight(&lab) < 100 {
        assert!(
            started.elapsed().as_secs() < 60,
            "the ramp did not end:\n{}",
            lab.daemon.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let mut steps = log_weights(&lab);
    steps.dedup();
    assert_eq!(steps.first(), Some(&10), "starts at a tenth: {steps:?}");
    assert!(
        steps.windows(2).all(|w| w[1] > w[0] && w[1] - w[0] <= 10),
        "climbs a tenth at most at a time: {steps:?}"
    );
    assert_eq!(steps.last(), Some(&90), "{steps:?}");
    let names = lab.names(CONNECTIONS);
    assert!(
        names.iter().filter(|n| *n == "b1").count() > CONNECTIONS / 4,
        "full share after the ramp"
    );
}
