//! Metrics end-to-end tests (root): `bg-lb run` with `metrics` on loopback
//! inside the LB's namespace, real TCP clients through the VIP, and scrapes
//! of `/metrics` from a thread in that namespace. The counters must move as
//! the traffic did.

use std::{
    collections::HashMap,
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use bg_lb::ratio::Pool;
use bg_lb_common::counters::Counter;
use bg_lb_tests::{
    http,
    lab::{NameLab, NameLabConfig, backend_index, pool_of},
    servers::NameClient,
    topology::LB_ADDR,
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");
const METRICS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9750);

/// b0, b1 blue; b2, b3 green; ratio 50:50; fast TCP health checks; waits
/// until every backend has been checked and is up.
fn start_lab() -> NameLab {
    let settings = format!("metrics = \"{METRICS}\"\n");
    let config = NameLabConfig {
        settings: &settings,
        tables: "# Closed flows stay in the table for the whole test, so entries are countable.\n\
                 [timeouts]\nclosing = \"10m\"\n\n",
        service: "ratio = \"50:50\"\n\n[service.health]\ninterval = \"300ms\"\nfast_interval = \"100ms\"\n\
                  timeout = \"200ms\"\nrise = 2\nfall = 2\n",
        ..NameLabConfig::default()
    };
    let lab = NameLab::start(BG_LB, 4, None, &config);
    wait_for(&lab, "every backend checked and up", |m| {
        (0..4).all(|i| m.checked(&lab, i) && m.backend(&lab, "bglb_backend_up", i) == 1.0)
    });
    lab
}

fn get(lab: &NameLab, path: &'static str) -> http::Response {
    lab.topo
        .lb
        .ns
        .run(move || http::request(METRICS, "GET", path))
        .unwrap_or_else(|e| panic!("GET {path} from {METRICS}: {e}\n{}", lab.daemon.log()))
}

fn scrape(lab: &NameLab) -> Metrics {
    let response = get(lab, "/metrics");
    assert_eq!(response.status, 200, "{}", response.body);
    Metrics::parse(&response.body)
}

/// Scrapes until `done` (open flows and table entries come from the
/// once-a-second sweep, so they lag the traffic a little). The deadline only
/// bounds a hang: a loaded machine may take long.
fn wait_for(lab: &NameLab, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
    let started = Instant::now();
    loop {
        let metrics = scrape(lab);
        if done(&metrics) {
            return metrics;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: not after 60s; last scrape:\n{}\n{}",
            metrics.text,
            lab.daemon.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// How many of `n` fresh connections each backend served, by index.
fn connections(lab: &NameLab, n: usize) -> [usize; 4] {
    let mut served = [0; 4];
    for name in lab.names(n) {
        served[backend_index(&name)] += 1;
    }
    served
}

/// A parsed scrape: samples by name, each with its labels.
struct Metrics {
    text: String,
    samples: Vec<(String, HashMap<String, String>, f64)>,
}

impl Metrics {
    fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("NAME VALUE");
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                // Label values here (names, addresses, words) hold no commas or quotes.
                let labels = labels
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (key, value) = l.split_once('=').expect("KEY=\"VALUE\"");
                        (key.to_owned(), value.trim_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels, value.parse().expect("a number"))
            })
            .collect();
        Metrics {
            text: text.to_owned(),
            samples,
        }
    }

    /// The one sample of `name` whose labels include `labels`, or `None`
    /// while the daemon exports none (a probe's series appear with its
    /// first report).
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, _, value)| *value)
            .collect();
        match matching.as_slice() {
            [] => None,
            [value] => Some(*value),
            other => panic!("{} samples of {name} {labels:?}:\n{}", other.len(), self.text),
        }
    }

    /// The one sample of `name` whose labels include `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels)
            .unwrap_or_else(|| panic!("no sample of {name} {labels:?}:\n{}", self.text))
    }

    /// `name` of backend `i` of service "web" (its pool checked too), if
    /// exported yet; `extra` labels narrow it down further.
    fn find_backend(&self, lab: &NameLab, name: &str, i: usize, extra: &[(&str, &str)]) -> Option<f64> {
        let (addr, pool) = (lab.backend_addr(i).to_string(), pool_of(i).to_string());
        let mut labels = vec![("service", "web"), ("pool", pool.as_str()), ("backend", addr.as_str())];
        labels.extend_from_slice(extra);
        self.find(name, &labels)
    }

    /// Like [`Metrics::find_backend`], for a series that must exist.
    fn backend_with(&self, lab: &NameLab, name: &str, i: usize, extra: &[(&str, &str)]) -> f64 {
        self.find_backend(lab, name, i, extra)
            .unwrap_or_else(|| panic!("no sample of {name} for b{i} {extra:?}:\n{}", self.text))
    }

    fn backend(&self, lab: &NameLab, name: &str, i: usize) -> f64 {
        self.backend_with(lab, name, i, &[])
    }

    /// Whether backend `i`'s health checks have reported at least once.
    fn checked(&self, lab: &NameLab, i: usize) -> bool {
        self.find_backend(lab, "bglb_health_check_duration_seconds_count", i, &[])
            .is_some_and(|checks| checks > 0.0)
    }

    fn open_flows(&self, lab: &NameLab) -> [f64; 4] {
        [0, 1, 2, 3].map(|i| self.backend(lab, "bglb_backend_open_flows", i))
    }
}

#[test]
fn new_flows_per_backend_match_the_connections_each_backend_served() {
    let lab = start_lab();
    let before = scrape(&lab);
    let served = connections(&lab, 200);
    let moved = |m: &Metrics, name: &str, i: usize, direction: &str| {
        let labels = [("direction", direction)];
        m.backend_with(&lab, name, i, &labels) - before.backend_with(&lab, name, i, &labels)
    };
    // The last FINs may still be on their way when the clients are done.
    let after = wait_for(&lab, "every connection's packets counted", |m| {
        served.iter().enumerate().all(|(i, &n)| {
            // SYN, ACK, the question and a FIN in; SYN-ACK, the answer and a FIN out.
            moved(m, "bglb_backend_packets_total", i, "in") >= 4.0 * n as f64
                && moved(m, "bglb_backend_packets_total", i, "out") >= 3.0 * n as f64
        })
    });
    for (i, &n) in served.iter().enumerate() {
        let new_flows = after.backend(&lab, "bglb_backend_new_flows_total", i)
            - before.backend(&lab, "bglb_backend_new_flows_total", i);
        assert_eq!(new_flows, n as f64, "b{i}: clients saw {served:?}\n{}", after.text);
        for direction in ["in", "out"] {
            // Every packet has at least an IP and a TCP header.
            let packets = moved(&after, "bglb_backend_packets_total", i, direction);
            let bytes = moved(&after, "bglb_backend_bytes_total", i, direction);
            assert!(
                bytes >= 40.0 * packets,
                "b{i} {direction}: {bytes} bytes in {packets} packets"
            );
        }
    }
    assert!(
        served[0] + served[1] > 50 && served[2] + served[3] > 50,
        "50:50 reached both pools: {served:?}"
    );
    // Every flow lingers after it closed, each on its own SNAT pair, except
    // one whose pair a newer connection to its backend took over (the port
    // lifecycle): that one leaves at once. With 200 connections over 4 x
    // 10,000 pairs that happens to a few at most.
    let pairs_in_use = |m: &Metrics| {
        (0..4)
            .map(|i| m.backend(&lab, "bglb_snat_ports_in_use", i))
            .sum::<f64>()
    };
    let settled = wait_for(&lab, "the sweep counts every (closing) flow", |m| {
        let entries = m.get("bglb_flow_table_entries", &[]);
        (190.0..=200.0).contains(&entries) && entries == pairs_in_use(m)
    });
    assert_eq!(settled.get("bglb_flow_table_capacity", &[]), 65536.0);
}

#[test]
fn every_drop_and_pass_reason_is_exported_and_passed_packets_are_counted() {
    let lab = start_lab();
    connections(&lab, 20);
    let metrics = scrape(&lab);
    for counter in Counter::ALL {
        let value = metrics.get("bglb_packets_total", &[("reason", counter.name())]);
        assert!(value >= 0.0);
    }
    // Health-check replies reach the LB's own stack: not for a service.
    assert!(metrics.get("bglb_packets_total", &[("reason", "passed"), ("verdict", "pass")]) > 0.0);
    assert_eq!(
        metrics.get("bglb_packets_total", &[("reason", "no_backend"), ("verdict", "drop")]),
        0.0,
        "nothing dropped for want of a backend"
    );
}

#[test]
fn ratio_gauge_follows_ctl_ratio_and_admin_requests_are_counted() {
    let lab = start_lab();
    let out = lab.daemon.ctl_ok(&["ratio", "web", "30:70"]);
    assert!(out.contains("50:50 -> 30:70"), "{out}");
    assert!(!lab.daemon.ctl(&["ratio", "nosuch", "50:50"]).status.success());
    let metrics = scrape(&lab);
    let status = lab.daemon.status("web");
    for pool in [Pool::Blue, Pool::Green] {
        let labels = [("service", "web"), ("pool", &*pool.to_string())];
        let (set, effective) = (status.ratio.share(pool), status.effective_ratio.share(pool));
        assert_eq!(metrics.get("bglb_ratio", &labels), f64::from(set) / 100.0);
        assert_eq!(
            metrics.get("bglb_effective_ratio", &labels),
            f64::from(effective) / 100.0
        );
        // The deprecated percent families, kept for one release.
        assert_eq!(metrics.get("bglb_ratio_percent", &labels), f64::from(set));
        assert_eq!(
            metrics.get("bglb_effective_ratio_percent", &labels),
            f64::from(effective)
        );
    }
    assert_eq!(metrics.get("bglb_ratio", &[("pool", "blue")]), 0.3);
    let requests = |cmd, result| metrics.get("bglb_admin_requests_total", &[("cmd", cmd), ("result", result)]);
    assert_eq!(requests("ratio", "ok"), 1.0);
    assert_eq!(requests("ratio", "error"), 1.0);
    assert!(requests("status", "ok") >= 1.0, "the harness polls status");

    assert_eq!(get(&lab, "/").status, 404, "only /metrics is served");
    // Moving the listener is a restart-only change: a reload refuses it.
    let path = lab.daemon.config_path();
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, text.replace(&METRICS.to_string(), "127.0.0.1:9751")).unwrap();
    let reload = lab.daemon.ctl(&["reload"]);
    assert!(!reload.status.success());
    assert!(
        String::from_utf8_lossy(&reload.stderr).contains("changing metrics needs a restart"),
        "{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    assert_eq!(scrape(&lab).get("bglb_ratio", &[("pool", "green")]), 0.7);
}

#[test]
fn build_info_names_this_version_commit_and_compiler() {
    let lab = start_lab();
    let metrics = scrape(&lab);
    let build = bg_lb::metrics::BuildInfo::THIS;
    let labels = [
        ("version", env!("CARGO_PKG_VERSION")),
        ("commit", build.commit),
        ("rustc", build.rustc),
    ];
    assert_eq!(metrics.get("bglb_build_info", &labels), 1.0);
    // Built from this checkout (CI clones with git): the commit is HEAD's.
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git");
    if head.status.success() && std::env::var_os("BGLB_GIT_COMMIT").is_none() {
        assert_eq!(build.commit, String::from_utf8_lossy(&head.stdout).trim());
    }
    assert!(build.rustc.starts_with("1."), "{}", build.rustc);
}

#[test]
fn reloads_are_counted_by_result_and_a_success_moves_the_load_time() {
    let lab = start_lab();
    let reloads = |m: &Metrics, result| m.get("bglb_config_reloads_total", &[("result", result)]);
    let started = scrape(&lab);
    assert_eq!((reloads(&started, "ok"), reloads(&started, "error")), (0.0, 0.0));
    assert_eq!(started.get("bglb_config_last_reload_successful", &[]), 1.0);
    let loaded_at = started.get("bglb_config_last_reload_success_timestamp_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        loaded_at <= now && loaded_at > now - 60.0,
        "loaded at start: {loaded_at} (now {now})"
    );

    let path = lab.daemon.config_path();
    let good = fs::read_to_string(&path).unwrap();
    fs::write(&path, "not = [valid toml").unwrap();
    assert!(!lab.daemon.ctl(&["reload"]).status.success());
    let rejected = scrape(&lab);
    assert_eq!((reloads(&rejected, "ok"), reloads(&rejected, "error")), (0.0, 1.0));
    assert_eq!(rejected.get("bglb_config_last_reload_successful", &[]), 0.0);
    assert_eq!(
        rejected.get("bglb_config_last_reload_success_timestamp_seconds", &[]),
        loaded_at,
        "the config in effect is still the one loaded at start"
    );

    fs::write(&path, good).unwrap();
    thread::sleep(Duration::from_millis(10));
    // SIGHUP reloads too, and is counted the same way.
    lab.daemon.hangup();
    let reloaded = wait_for(&lab, "the SIGHUP reload counted", |m| reloads(m, "ok") == 1.0);
    assert_eq!(reloads(&reloaded, "error"), 1.0);
    assert_eq!(reloaded.get("bglb_config_last_reload_successful", &[]), 1.0);
    assert!(reloaded.get("bglb_config_last_reload_success_timestamp_seconds", &[]) > loaded_at);
}

#[test]
fn a_shift_the_daemon_rolls_back_shows_in_shift_state_and_rollbacks() {
    let mut lab = start_lab();
    let state = |m: &Metrics, state| m.get("bglb_shift_state", &[("service", "web"), ("state", state)]);
    let rollbacks = |m: &Metrics| m.get("bglb_shift_rollbacks_total", &[("service", "web")]);
    let before = scrape(&lab);
    assert_eq!(state(&before, "none"), 1.0);
    assert_eq!(rollbacks(&before), 0.0);

    lab.daemon.ctl_ok(&[
        "shift",
        "web",
        "--to",
        "green",
        "--steps",
        "60,100",
        "--interval",
        "10m",
        "--detach",
    ]);
    let running = scrape(&lab);
    assert_eq!((state(&running, "running"), state(&running, "none")), (1.0, 0.0));
    assert_eq!(running.get("bglb_ratio", &[("pool", "green")]), 0.6);

    // A target backend going down rolls the shift back.
    lab.stop_server(2);
    let rolled_back = wait_for(&lab, "the shift rolled back", |m| state(m, "rolled_back") == 1.0);
    assert_eq!(rollbacks(&rolled_back), 1.0);
    let states: f64 = ["none", "running", "completed", "rolled_back", "aborted"]
        .into_iter()
        .map(|s| state(&rolled_back, s))
        .sum();
    assert_eq!(states, 1.0, "one state at a time");
    assert_eq!(
        rolled_back.get("bglb_ratio", &[("pool", "green")]),
        0.5,
        "back where it began"
    );
}

#[test]
fn open_flows_per_backend_show_drain_progress() {
    let lab = start_lab();
    let vip = lab.vip();
    let mut held = lab.topo.client.ns.run(move || {
        (0..6)
            .map(|_| NameClient::connect(vip).expect("connect to the VIP"))
            .collect::<Vec<_>>()
    });
    let mut per_backend = [0.0; 4];
    for client in &mut held {
        per_backend[backend_index(&client.ask().expect("ask"))] += 1.0;
    }
    wait_for(&lab, "open flows per backend match the held connections", |m| {
        m.open_flows(&lab) == per_backend
    });
    lab.daemon.ctl_ok(&["drain", "web", "blue"]);
    let blue_open = per_backend[0] + per_backend[1];
    let drained = wait_for(&lab, "ratio 0:100 while blue still has its open flows", |m| {
        m.get("bglb_ratio", &[("pool", "blue")]) == 0.0
    });
    assert_eq!(
        drained.open_flows(&lab)[..2].iter().sum::<f64>(),
        blue_open,
        "draining keeps them open"
    );
    drop(held);
    wait_for(&lab, "every flow closed", |m| m.open_flows(&lab) == [0.0; 4]);
}

#[test]
fn health_metrics_show_a_backend_going_down_and_check_latency() {
    let mut lab = start_lab();
    let before = scrape(&lab);
    let checks = before.backend_with(
        &lab,
        "bglb_health_check_duration_seconds_count",
        0,
        &[("check", "live")],
    );
    let inf = before.backend_with(
        &lab,
        "bglb_health_check_duration_seconds_bucket",
        0,
        &[("check", "live"), ("le", "+Inf")],
    );
    assert_eq!(inf, checks, "+Inf counts every check");
    assert_eq!(before.backend(&lab, "bglb_backend_weight", 0), 100.0);

    lab.stop_server(0);
    let after = wait_for(&lab, "b0 down", |m| m.backend(&lab, "bglb_backend_up", 0) == 0.0);
    assert_eq!(
        after.backend_with(&lab, "bglb_health_check_transitions_total", 0, &[("to", "down")]),
        1.0
    );
    assert_eq!(
        after.backend(&lab, "bglb_backend_weight", 0),
        0.0,
        "a down backend takes no new flows"
    );
    assert_eq!(after.backend(&lab, "bglb_backend_up", 1), 1.0);
}

#[test]
fn traffic_counters_survive_a_daemon_restart() {
    let mut lab = start_lab();
    let served = connections(&lab, 40);
    let before = scrape(&lab);
    lab.daemon.kill9();
    lab.daemon.spawn();
    let after = scrape(&lab);
    for (i, &n) in served.iter().enumerate() {
        let new_flows = after.backend(&lab, "bglb_backend_new_flows_total", i);
        assert_eq!(new_flows, before.backend(&lab, "bglb_backend_new_flows_total", i));
        assert_eq!(new_flows, n as f64, "b{i}: the counters live in the pinned maps");
    }
}

#[test]
fn ctl_top_shows_ratio_backends_and_rates() {
    let lab = start_lab();
    // Clients keep connecting while top polls, so its rates have something to show.
    let stop = Arc::new(AtomicBool::new(false));
    let (vip, stopping) = (lab.vip(), Arc::clone(&stop));
    let clients = lab.topo.client.ns.spawn(move || {
        let mut done = 0;
        while !stopping.load(Ordering::Relaxed) && done < 5_000 {
            NameClient::connect(vip)
                .and_then(|mut c| c.ask())
                .expect("connection through the VIP");
            done += 1;
        }
        done
    });
    let out = lab.daemon.ctl_ok(&["top", "web", "-n", "3", "--interval", "400ms"]);
    stop.store(true, Ordering::Relaxed);
    assert!(clients.join().expect("clients") > 0);

    let frames: Vec<&str> = out.split("bg-lb top").filter(|f| !f.trim().is_empty()).collect();
    assert_eq!(frames.len(), 3, "{out}");
    for frame in &frames {
        assert!(frame.contains("ratio 50:50"), "{frame}");
        for i in 0..4 {
            assert!(frame.contains(&lab.backend_addr(i).to_string()), "{frame}");
        }
    }
    assert!(!out.contains('\x1b'), "no escapes when stdout is not a terminal");
    let new_per_second = |frame: &str, pool: &str| -> Option<f64> {
        let line = frame.lines().find(|l| l.trim_start().starts_with(pool))?;
        line.split("new/s").nth(1)?.split_whitespace().next()?.parse().ok()
    };
    assert_eq!(
        new_per_second(frames[0], "blue "),
        None,
        "no rate before a second poll: {}",
        frames[0]
    );
    for frame in &frames[1..] {
        let total = new_per_second(frame, "blue ").unwrap() + new_per_second(frame, "green ").unwrap();
        assert!(total > 0.0, "new connections per second while clients connect: {frame}");
        assert!(frame.contains("B/s"), "{frame}");
    }
}

/// The peers of the established connections to `port` in the calling
/// thread's network namespace, from `/proc/thread-self/net/tcp`.
fn established_peers(port: u16) -> Vec<SocketAddrV4> {
    let table = fs::read_to_string("/proc/thread-self/net/tcp").expect("read /proc/thread-self/net/tcp");
    let endpoint = |text: &str| {
        let (ip, port) = text.split_once(':').expect("ADDR:PORT");
        let ip = u32::from_str_radix(ip, 16).expect("hex address");
        // The kernel prints the wire-order address as a native integer.
        SocketAddrV4::new(
            Ipv4Addr::from(ip.to_ne_bytes()),
            u16::from_str_radix(port, 16).expect("hex port"),
        )
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state) = (endpoint(fields[1]), endpoint(fields[2]), fields[3]);
            (local.port() == port && state == "01").then_some(remote)
        })
        .collect()
}

#[test]
fn a_second_snat_address_doubles_a_backends_ports_and_a_syn_past_them_is_refused_and_counted() {
    // Four ports per address, two addresses: one backend holds at most
    // eight connections at once.
    let second = Ipv4Addr::new(10, 99, 0, 200);
    let settings = format!("metrics = \"{METRICS}\"\nsnat_ports = \"20000-20003\"\n");
    let config = NameLabConfig {
        snat_addresses: &[LB_ADDR, second],
        settings: &settings,
        service: "[service.health]\ninterval = \"300ms\"\nfast_interval = \"100ms\"\ntimeout = \"200ms\"\n",
        ..NameLabConfig::default()
    };
    let lab = NameLab::start(BG_LB, 1, None, &config);
    wait_for(&lab, "the backend checked and up", |m| {
        m.checked(&lab, 0) && m.backend(&lab, "bglb_backend_up", 0) == 1.0
    });
    let vip = lab.vip();
    let connect = move |n: usize| {
        (0..n)
            .map(|_| {
                let mut client = NameClient::connect(vip)?;
                assert_eq!(client.ask()?, "b0");
                Ok(client)
            })
            .collect::<std::io::Result<Vec<_>>>()
    };

    // Six at once: more than one address's four ports.
    let mut held = lab
        .topo
        .client
        .ns
        .run(move || connect(6))
        .unwrap_or_else(|e| panic!("six connections through two SNAT addresses: {e}\n{}", lab.daemon.log()));
    let peers = lab.topo.backends[0].ns.run(move || established_peers(8080));
    assert_eq!(peers.len(), 6, "{peers:?}");
    for address in [LB_ADDR, second] {
        assert!(
            peers.iter().any(|p| *p.ip() == address),
            "the backend sees {address}: {peers:?}"
        );
    }
    assert!(peers.iter().all(|p| (20000..=20003).contains(&p.port())), "{peers:?}");
    let metrics = wait_for(&lab, "six SNAT pairs in use", |m| {
        m.backend(&lab, "bglb_snat_ports_in_use", 0) == 6.0
    });
    assert_eq!(metrics.backend(&lab, "bglb_snat_ports_capacity", 0), 8.0);
    assert_eq!(metrics.backend(&lab, "bglb_snat_ports_exhausted_total", 0), 0.0);
    let b0 = &lab.daemon.status("web").backends[0];
    assert_eq!((b0.snat_ports_in_use, b0.snat_ports_capacity), (6, 8), "{b0:?}");
    let table = lab.daemon.ctl_ok(&["status"]);
    assert!(table.contains("SNAT PORTS") && table.contains("6/8"), "{table}");

    // Two more spend the budget; the next SYN finds no pair and gets a RST.
    held.extend(
        lab.topo
            .client
            .ns
            .run(move || connect(2))
            .unwrap_or_else(|e| panic!("the seventh and eighth connections: {e}\n{}", lab.daemon.log())),
    );
    let refused = lab
        .topo
        .client
        .ns
        .run(move || NameClient::connect(vip).err().map(|e| e.kind()));
    assert_eq!(refused, Some(std::io::ErrorKind::ConnectionRefused), "refused at once");
    // The sweep counts pairs in use once a second: wait for it.
    let metrics = wait_for(&lab, "the exhaustion counted for the backend, every pair in use", |m| {
        m.backend(&lab, "bglb_snat_ports_exhausted_total", 0) == 1.0
            && m.backend(&lab, "bglb_snat_ports_in_use", 0) == 8.0
    });
    assert_eq!(
        metrics.get(
            "bglb_packets_total",
            &[("reason", Counter::SnatPortsExhausted.name()), ("verdict", "reset")]
        ),
        1.0
    );
    let b0 = &lab.daemon.status("web").backends[0];
    assert_eq!((b0.snat_ports_in_use, b0.snat_ports_exhausted), (8, 1), "{b0:?}");
    // Every held connection still works.
    for client in &mut held {
        assert_eq!(client.ask().expect("a held connection answers"), "b0");
    }
}
