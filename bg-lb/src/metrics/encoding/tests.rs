//! Tests of the text encoding: one snapshot, every family's lines.

use std::{collections::HashSet, time::Duration};

use super::*;
use crate::{
    dataplane::{l4::Protocol, syn_proxy::SynProxyMode},
    family::Family,
    health::{CheckKey, Report, Transition},
    metrics::{AdminRequests, BuildInfo, INVALID_COMMAND, Kind, ProbeStats, ReloadStats, series_names},
    protocol::{ListenerStatus, Request, SynProxyStatus},
    ratio::Ratio,
    shift::ShiftPlan,
    test_support::backend_status,
};

/// A 100:0 -> green shift that the daemon rolled back at its first step.
fn rolled_back_shift() -> ShiftRecord {
    ShiftRecord {
        plan: ShiftPlan {
            to: Pool::Green,
            steps: vec![10, 100],
            interval: Duration::from_secs(30),
            max_error_rate: 0.01,
            min_flows: 20,
            hooks: Default::default(),
        },
        start_ratio: Ratio::all_to(Pool::Blue),
        step: 0,
        outcome: ShiftOutcome::RolledBack {
            reason: "green backend 10.0.2.1:80 down".into(),
        },
        rates: Default::default(),
    }
}

/// "web" at 30:70 with blue 10.0.1.1 (up, busy), green 10.0.2.1 (down)
/// and green 10.0.2.2 (not checked yet).
fn snapshot() -> Snapshot {
    let busy = BackendStatus {
        weight: 50,
        open_flows: 3,
        embryonic_flows: 4,
        new_flows: 7,
        handshakes: 6,
        refused: 1,
        packets_in: 40,
        bytes_in: 4000,
        packets_out: 30,
        bytes_out: 90_000,
        snat_ports_in_use: 9,
        snat_ports_capacity: 20_000,
        snat_ports_exhausted: 2,
        ..backend_status("10.0.1.1:80", Pool::Blue, BackendHealth::Up)
    };
    let down = BackendStatus {
        weight: 0,
        ..backend_status("10.0.2.1:80", Pool::Green, BackendHealth::Down)
    };
    let mut stats = ProbeStats::default();
    for (transition, millis) in [(None, 0.2), (Some(Transition::WentDown), 3.0), (None, 2_000.0)] {
        stats.record(&Report {
            key: CheckKey {
                service: "web".into(),
                backend: down.address,
                listener: Listener::Live,
            },
            outcome: Ok(()),
            up: false,
            transition,
            duration: Duration::from_secs_f64(millis / 1000.0),
        });
    }
    let mut admin_requests = AdminRequests::default();
    admin_requests.record("ratio", true);
    admin_requests.record("ratio", true);
    admin_requests.record(INVALID_COMMAND, false);
    let mut reloads = ReloadStats::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    reloads.record(true, SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000));
    reloads.record(true, SystemTime::UNIX_EPOCH + Duration::from_secs_f64(1_764_000_000.5));
    reloads.record(false, SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_000_000));
    Snapshot {
        services: vec![ServiceStatus {
            name: "web".into(),
            vip: "10.0.0.100:80".parse().unwrap(),
            standby_vip: None,
            listeners: vec![
                listener("10.0.0.100:80", Family::Ipv4, false),
                listener("[fd00::100]:80", Family::Ipv6, false),
                listener("10.0.0.100:8080", Family::Ipv4, true),
            ],
            ratio: Ratio::new(30).unwrap(),
            effective_ratio: Ratio::new(100).unwrap(),
            backends: vec![
                busy,
                down,
                backend_status("10.0.2.2:80", Pool::Green, BackendHealth::Unchecked),
            ],
            shift: Some(rolled_back_shift()),
            syn_proxy: SynProxyStatus {
                mode: SynProxyMode::Auto,
                active: true,
            },
            forwarding: Default::default(),
            affinity: Default::default(),
            drain_deadline: None,
            protocol: Default::default(),
        }],
        probes: vec![ProbeMetrics {
            service: "web".into(),
            pool: Pool::Green,
            backend: "10.0.2.1:80".parse().unwrap(),
            check: Listener::Live,
            stats,
        }],
        flow_entries: 5,
        flow_capacity: 65_536,
        packets: Counter::ALL.iter().map(|&c| (c, c as u64 * 10)).collect(),
        admin_requests,
        reloads,
        shift_rollbacks: [("web".to_owned(), 1)].into(),
        vips_announced: vec![([10, 0, 0, 100].into(), true), ([10, 0, 0, 101].into(), false)],
        build: BuildInfo {
            version: "0.9.0",
            commit: "0123456789ab",
            rustc: "1.95.0",
        },
    }
}

fn encoded() -> String {
    encode(snapshot()).unwrap()
}

#[track_caller]
fn assert_line(text: &str, line: &str) {
    assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
}

#[test]
fn every_family_is_encoded_with_help_and_type() {
    let text = encoded();
    let typed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let expected: Vec<String> = Metric::ALL
        .iter()
        .map(|m| match m.kind() {
            Kind::Counter => format!("{}_total", m.name()),
            Kind::Gauge | Kind::Histogram => m.name().to_owned(),
        })
        .collect();
    assert_eq!(typed, expected);
    assert_eq!(text.matches("# HELP ").count(), Metric::ALL.len());
    // Every sample line uses a series name a query may use.
    let series: HashSet<String> = series_names().into_iter().collect();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(series.contains(name), "{name} is not in series_names()");
    }
}

#[test]
fn every_sample_has_exactly_its_family_labels() {
    let text = encoded();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, labels) = line.split_once('{').unwrap_or((line.split(' ').next().unwrap(), ""));
        let keys: Vec<&str> = labels
            .split("\",")
            .filter_map(|pair| pair.split_once('=').map(|(key, _)| key))
            .collect();
        let family = Metric::of_series(name).unwrap_or_else(|| panic!("{name}"));
        let mut expected = family.labels().to_vec();
        if name.ends_with("_bucket") {
            expected.push("le");
        }
        assert_eq!(keys, expected, "{line}");
    }
}

fn listener(vip: &str, family: Family, standby: bool) -> ListenerStatus {
    ListenerStatus {
        vip: vip.parse().unwrap(),
        family,
        protocol: Protocol::Tcp,
        standby,
    }
}

#[test]
fn each_listener_is_a_series_with_its_family() {
    let text = encoded();
    for line in [
        r#"bglb_listener_info{service="web",vip="10.0.0.100:80",family="ipv4",protocol="tcp",listener="live"} 1"#,
        r#"bglb_listener_info{service="web",vip="[fd00::100]:80",family="ipv6",protocol="tcp",listener="live"} 1"#,
        r#"bglb_listener_info{service="web",vip="10.0.0.100:8080",family="ipv4",protocol="tcp",listener="standby"} 1"#,
    ] {
        assert_line(&text, line);
    }
}

#[test]
fn ratios_are_gauges_from_0_to_1_per_pool() {
    let text = encoded();
    assert_line(&text, r#"bglb_ratio{service="web",pool="blue"} 0.3"#);
    assert_line(&text, r#"bglb_ratio{service="web",pool="green"} 0.7"#);
    assert_line(&text, r#"bglb_effective_ratio{service="web",pool="blue"} 1.0"#);
    assert_line(&text, r#"bglb_effective_ratio{service="web",pool="green"} 0.0"#);
}

#[test]
fn deprecated_percent_ratios_are_still_exported_and_say_so() {
    let text = encoded();
    assert_line(&text, r#"bglb_ratio_percent{service="web",pool="blue"} 30"#);
    assert_line(&text, r#"bglb_ratio_percent{service="web",pool="green"} 70"#);
    assert_line(&text, r#"bglb_effective_ratio_percent{service="web",pool="blue"} 100"#);
    assert_line(&text, r#"bglb_effective_ratio_percent{service="web",pool="green"} 0"#);
    for metric in [Metric::RatioPercent, Metric::EffectiveRatioPercent] {
        let replacement = metric.replaced_by().expect("deprecated").name();
        let help = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# HELP {} ", metric.name())))
            .expect("HELP");
        assert!(help.starts_with("Deprecated") && help.contains(replacement), "{help}");
    }
}

#[test]
fn build_info_is_1_with_version_commit_and_rustc() {
    let text = encoded();
    assert_line(
        &text,
        r#"bglb_build_info{version="0.9.0",commit="0123456789ab",rustc="1.95.0"} 1"#,
    );
    let this = BuildInfo::THIS;
    assert_eq!(this.version, env!("CARGO_PKG_VERSION"));
    for label in [this.commit, this.rustc] {
        assert!(
            !label.is_empty() && !label.contains(['"', '\\', '\n']),
            "{label:?} is a plain label value"
        );
    }
}

#[test]
fn reloads_count_by_result_and_the_load_time_is_in_unix_seconds() {
    let text = encoded();
    assert_line(&text, r#"bglb_config_reloads_total{result="ok"} 2"#);
    assert_line(&text, r#"bglb_config_reloads_total{result="error"} 1"#);
    assert_line(&text, "bglb_config_last_reload_successful 0");
    assert_line(&text, "bglb_config_last_reload_success_timestamp_seconds 1764000000.5");
    let fresh = encode(Snapshot::default()).unwrap();
    assert_line(&fresh, "bglb_config_last_reload_successful 1");
}

#[test]
fn shift_state_is_one_series_per_state_and_rollbacks_count_per_service() {
    let mut snapshot = snapshot();
    let mut idle = snapshot.services[0].clone();
    idle.name = "api".into();
    idle.shift = None;
    snapshot.services.push(idle);
    let text = encode(snapshot).unwrap();
    for state in SHIFT_STATES {
        let web = u8::from(state == "rolled_back");
        assert_line(
            &text,
            &format!(r#"bglb_shift_state{{service="web",state="{state}"}} {web}"#),
        );
        let api = u8::from(state == "none");
        assert_line(
            &text,
            &format!(r#"bglb_shift_state{{service="api",state="{state}"}} {api}"#),
        );
    }
    assert_line(&text, r#"bglb_shift_rollbacks_total{service="web"} 1"#);
    assert_line(&text, r#"bglb_shift_rollbacks_total{service="api"} 0"#);
}

#[test]
fn each_vip_address_says_whether_it_is_announced() {
    let text = encoded();
    assert_line(&text, r#"bglb_vip_announced{vip="10.0.0.100"} 1"#);
    assert_line(&text, r#"bglb_vip_announced{vip="10.0.0.101"} 0"#);
}

#[test]
fn every_shift_outcome_has_its_state() {
    let mut record = rolled_back_shift();
    let mut states = vec![shift_state(None)];
    for outcome in [
        ShiftOutcome::Running,
        ShiftOutcome::Completed,
        ShiftOutcome::RolledBack { reason: "x".into() },
        ShiftOutcome::Aborted { rolled_back: true },
    ] {
        record.outcome = outcome;
        states.push(shift_state(Some(&record)));
    }
    assert_eq!(states, SHIFT_STATES);
}

#[test]
fn backend_series_carry_service_pool_and_backend() {
    let text = encoded();
    let blue = r#"service="web",pool="blue",backend="10.0.1.1:80""#;
    // (family, extra labels, value)
    let rows = [
        ("bglb_backend_weight", "", 50),
        ("bglb_backend_open_flows", "", 3),
        ("bglb_backend_embryonic_flows", "", 4),
        ("bglb_backend_new_flows_total", "", 7),
        ("bglb_backend_connection_events_total", r#",event="handshake""#, 6),
        ("bglb_backend_connection_events_total", r#",event="refused""#, 1),
        ("bglb_backend_connection_events_total", r#",event="reset""#, 0),
        ("bglb_backend_packets_total", r#",direction="in""#, 40),
        ("bglb_backend_packets_total", r#",direction="out""#, 30),
        ("bglb_backend_bytes_total", r#",direction="in""#, 4000),
        ("bglb_backend_bytes_total", r#",direction="out""#, 90000),
        ("bglb_snat_ports_in_use", "", 9),
        ("bglb_snat_ports_capacity", "", 20000),
        ("bglb_snat_ports_exhausted_total", "", 2),
    ];
    for (family, extra, value) in rows {
        assert_line(&text, &format!("{family}{{{blue}{extra}}} {value}"));
    }
}

#[test]
fn down_backends_are_0_and_unchecked_ones_count_as_up() {
    let text = encoded();
    assert_line(
        &text,
        r#"bglb_backend_up{service="web",pool="blue",backend="10.0.1.1:80"} 1"#,
    );
    assert_line(
        &text,
        r#"bglb_backend_up{service="web",pool="green",backend="10.0.2.1:80"} 0"#,
    );
    assert_line(
        &text,
        r#"bglb_backend_up{service="web",pool="green",backend="10.0.2.2:80"} 1"#,
    );
}

#[test]
fn health_checks_have_transitions_and_a_cumulative_latency_histogram() {
    let text = encoded();
    let probe = r#"service="web",pool="green",backend="10.0.2.1:80",check="live""#;
    assert_line(
        &text,
        &format!(r#"bglb_health_check_transitions_total{{{probe},to="down"}} 1"#),
    );
    assert_line(
        &text,
        &format!(r#"bglb_health_check_transitions_total{{{probe},to="up"}} 0"#),
    );
    let bucket = |le: &str, n: u64| format!(r#"bglb_health_check_duration_seconds_bucket{{{probe},le="{le}"}} {n}"#);
    assert_line(&text, &bucket("0.0005", 1));
    assert_line(&text, &bucket("0.0025", 1));
    assert_line(&text, &bucket("0.005", 2));
    assert_line(&text, &bucket("1", 2));
    assert_line(&text, &bucket("2.5", 3));
    assert_line(&text, &bucket("+Inf", 3));
    assert_line(&text, &format!("bglb_health_check_duration_seconds_count{{{probe}}} 3"));
    let sum = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("bglb_health_check_duration_seconds_sum{{{probe}}} ")))
        .expect("a _sum line");
    assert!((sum.parse::<f64>().unwrap() - 2.0032).abs() < 1e-9, "{sum}");
}

#[test]
fn every_data_plane_counter_is_a_reason_with_its_verdict() {
    let text = encoded();
    for counter in Counter::ALL {
        let line = format!(
            r#"bglb_packets_total{{reason="{}",verdict="{}"}} {}"#,
            counter.name(),
            verdict(counter),
            counter as u64 * 10
        );
        assert_line(&text, &line);
    }
    assert_eq!(verdict(Counter::NoBackend), "drop");
    assert_eq!(verdict(Counter::Passed), "pass");
    assert_eq!(verdict(Counter::Refused), "reset");
    assert_eq!(verdict(Counter::SynCookieSent), "answer");
    assert_eq!(verdict(Counter::TooBigAnswered), "icmp");
    assert_eq!(verdict(Counter::PacketTooBigAnswered), "icmp");
    assert_eq!(verdict(Counter::SnatPortsExhausted), "reset", "refused with a RST");
    assert_eq!(verdict(Counter::UdpSnatPortsExhausted), "drop", "UDP has no RST");
    assert_eq!(verdict(Counter::UdpGatewayCollision), "drop", "UDP has no RST");
    assert_eq!(verdict(Counter::Fragmented), "drop", "malformed frames to a VIP");
    assert_eq!(verdict(Counter::RstOutOfWindow), "forward");
}

#[test]
fn syn_proxy_state_is_a_gauge_per_service_with_its_mode() {
    assert_line(&encoded(), r#"bglb_syn_proxy_active{service="web",mode="auto"} 1"#);
}

#[test]
fn flow_table_entries_and_capacity_are_gauges() {
    let text = encoded();
    assert_line(&text, "bglb_flow_table_entries 5");
    assert_line(&text, "bglb_flow_table_capacity 65536");
}

#[test]
fn admin_requests_count_by_command_and_result_from_zero() {
    let text = encoded();
    assert_line(&text, r#"bglb_admin_requests_total{cmd="ratio",result="ok"} 2"#);
    assert_line(&text, r#"bglb_admin_requests_total{cmd="ratio",result="error"} 0"#);
    assert_line(&text, r#"bglb_admin_requests_total{cmd="invalid",result="error"} 1"#);
    assert!(!text.contains(r#"cmd="invalid",result="ok""#));
    for cmd in Request::COMMANDS {
        for result in ["ok", "error"] {
            assert!(
                text.contains(&format!(
                    r#"bglb_admin_requests_total{{cmd="{cmd}",result="{result}"}} "#
                )),
                "{cmd} {result} is there before the first request"
            );
        }
    }
}

#[test]
fn an_empty_snapshot_still_describes_every_family() {
    let text = encode(Snapshot::default()).unwrap();
    assert_eq!(text.matches("# TYPE ").count(), Metric::ALL.len());
    assert_line(&text, "bglb_flow_table_capacity 0");
}
