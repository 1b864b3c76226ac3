//! Whole documents: complete configurations, the defaults, the example file and reading from disk.

use std::{fs, io, net::Ipv4Addr, path::Path, time::Duration};

use bg_lb_common::maps::{DEFAULT_LOOKUP_CAPACITY, DEFAULT_LUT_SIZE, DEFAULT_MAX_FLOWS};

use super::{
    AdminConfig, Config, ConfigError, DEFAULT_ADMIN_LIMITS, DEFAULT_METRICS_LIMITS, DEFAULT_WEIGHT, HealthCheck,
    HealthConfig, HttpCheck, Interfaces, OnDown, ServiceConfig, UdpCheck, load,
    test_support::{BLUE, TOP, WEB, assert_rejected, backend, parse_ok},
};
use crate::{
    dataplane::{
        AttachMode,
        affinity::Affinity,
        forwarding::Forwarding,
        housekeeping::FlowTimeouts,
        l4::Protocol,
        syn_proxy::{SynProxy, SynProxyMode},
    },
    ratio::{Pool, Ratio},
};

#[test]
fn full_one_arm_config_parses_to_expected_structs() {
    let config = parse_ok(
        r#"
        interface = "eth0"
        xdp_mode = "native"
        snat_address = "10.0.0.1"
        snat_ports = "40000-40999"
        max_flows = 4096
        lookup_capacity = 2000
        pin_dir = "/sys/fs/bpf/test"
        state_dir = "/tmp/state"
        metrics = "127.0.0.1:9750"

        [admin]
        socket = "/tmp/admin.sock"
        group = "ops"

        [timeouts]
        established_idle = "5m"
        closing = "500ms"
        syn = "2s"

        [[service]]
        name = "web"
        vip = "10.0.0.100:80"
        standby_vip = "10.0.0.100:8080"
        ratio = "30:70"
        lookup_table_size = 251
        syn_proxy = "always"
        syn_proxy_threshold = 50
        syn_proxy_mss = 1400

        [[service.backend]]
        pool = "blue"
        address = "10.0.1.11:8080"
        weight = 0

        [[service.backend]]
        pool = "green"
        address = "10.0.2.11:8080"
        weight = 1000

        [[service]]
        name = "api.v2"
        vip = "10.0.0.101:443"
        lookup_table_size = 7
        "#,
    );
    let expected = Config {
        interfaces: Interfaces::OneArm {
            interface: "eth0".into(),
        },
        xdp_mode: AttachMode::Native,
        snat_addresses: vec![Ipv4Addr::new(10, 0, 0, 1)],
        snat6_addresses: vec![],
        snat_ports: (40_000, 40_999),
        max_flows: 4096,
        lookup_capacity: 2000,
        pin_dir: "/sys/fs/bpf/test".into(),
        state_dir: "/tmp/state".into(),
        admin: AdminConfig {
            socket: "/tmp/admin.sock".into(),
            group: Some("ops".into()),
            limits: DEFAULT_ADMIN_LIMITS,
        },
        metrics: Some("127.0.0.1:9750".parse().unwrap()),
        metrics_limits: DEFAULT_METRICS_LIMITS,
        api: None,
        timeouts: FlowTimeouts {
            established_idle: Duration::from_secs(300),
            closing: Duration::from_millis(500),
            syn: Duration::from_secs(2),
        },
        bgp: None,
        cluster: None,
        services: vec![
            ServiceConfig {
                name: "web".into(),
                vips: vec!["10.0.0.100:80".parse().unwrap()],
                standby_vips: vec!["10.0.0.100:8080".parse().unwrap()],
                ratio: Ratio::new(30).unwrap(),
                lookup_table_size: 251,
                backends: vec![
                    backend(Pool::Blue, "10.0.1.11:8080", 0),
                    backend(Pool::Green, "10.0.2.11:8080", 1000),
                ],
                health: HealthConfig::default(),
                syn_proxy: SynProxy {
                    mode: SynProxyMode::Always,
                    threshold: 50,
                    mss: 1400,
                },
                forwarding: Default::default(),
                slowstart: None,
                drain_deadline: None,
                affinity: Default::default(),
                protocol: Default::default(),
                udp_idle: std::time::Duration::ZERO,
            },
            ServiceConfig {
                name: "api.v2".into(),
                vips: vec!["10.0.0.101:443".parse().unwrap()],
                standby_vips: vec![],
                ratio: Ratio::new(50).unwrap(),
                lookup_table_size: 7,
                backends: vec![],
                health: HealthConfig::default(),
                syn_proxy: SynProxy::default(),
                forwarding: Default::default(),
                slowstart: None,
                drain_deadline: None,
                affinity: Default::default(),
                protocol: Default::default(),
                udp_idle: std::time::Duration::ZERO,
            },
        ],
    };
    assert_eq!(config, expected);
    assert_eq!(config.interfaces.names(), ["eth0"]);
    assert_eq!(
        config.reverse_nat_entries(),
        4096,
        "max_flows, above every port of both backends twice over (4000)"
    );
    let more_ports = Config {
        snat_ports: (40_000, 41_999),
        ..config
    };
    assert_eq!(more_ports.reverse_nat_entries(), 2 * 2 * 2000);
}

#[test]
fn the_reverse_nat_table_holds_at_least_max_flows_and_at_most_the_largest_max_flows() {
    let mut config = parse_ok(&format!("{TOP}{WEB}"));
    assert_eq!(config.reverse_nat_entries(), DEFAULT_MAX_FLOWS, "no backends");
    config.snat_ports = (1024, 65535);
    config.services[0].backends = (0..200u16)
        .map(|i| backend(Pool::Blue, &format!("10.0.{}.{}:80", i / 250, 1 + i % 250), 100))
        .collect();
    assert_eq!(config.reverse_nat_entries(), 16_777_216);
}

#[test]
fn full_two_arm_config_parses_to_expected_structs() {
    let config = parse_ok(
        r#"
        front_interface = "eth0"
        back_interface = "eth1"
        xdp_mode = "generic"
        snat_address = "192.168.1.1"

        [[service]]
        name = "db"
        vip = "10.0.0.100:5432"
        ratio = "100:0"

        [[service.backend]]
        pool = "green"
        address = "192.168.1.20:5432"
        "#,
    );
    let expected = Config {
        interfaces: Interfaces::TwoArm {
            front: "eth0".into(),
            back: "eth1".into(),
        },
        xdp_mode: AttachMode::Generic,
        snat_addresses: vec![Ipv4Addr::new(192, 168, 1, 1)],
        snat6_addresses: vec![],
        services: vec![ServiceConfig {
            name: "db".into(),
            vips: vec!["10.0.0.100:5432".parse().unwrap()],
            standby_vips: vec![],
            ratio: Ratio::all_to(Pool::Blue),
            lookup_table_size: DEFAULT_LUT_SIZE,
            backends: vec![backend(Pool::Green, "192.168.1.20:5432", DEFAULT_WEIGHT)],
            health: HealthConfig::default(),
            syn_proxy: SynProxy::default(),
            forwarding: Default::default(),
            slowstart: None,
            drain_deadline: None,
            affinity: Default::default(),
            protocol: Default::default(),
            udp_idle: std::time::Duration::ZERO,
        }],
        ..parse_ok(TOP)
    };
    assert_eq!(config, expected);
    assert_eq!(config.interfaces.names(), ["eth0", "eth1"]);
}

#[test]
fn absent_optional_keys_take_their_defaults() {
    let config = parse_ok(&format!("{TOP}{WEB}{BLUE}"));
    let expected = Config {
        interfaces: Interfaces::OneArm {
            interface: "eth0".into(),
        },
        xdp_mode: AttachMode::Auto,
        snat_addresses: vec![Ipv4Addr::new(10, 0, 0, 1)],
        snat6_addresses: vec![],
        snat_ports: (20_000, 29_999),
        max_flows: DEFAULT_MAX_FLOWS,
        lookup_capacity: DEFAULT_LOOKUP_CAPACITY,
        pin_dir: "/sys/fs/bpf/bg-lb".into(),
        state_dir: "/var/lib/bg-lb".into(),
        admin: AdminConfig {
            socket: "/run/bg-lb/admin.sock".into(),
            group: None,
            limits: DEFAULT_ADMIN_LIMITS,
        },
        metrics: None,
        metrics_limits: DEFAULT_METRICS_LIMITS,
        api: None,
        timeouts: FlowTimeouts {
            established_idle: Duration::from_secs(3600),
            closing: Duration::from_secs(10),
            syn: Duration::from_secs(10),
        },
        bgp: None,
        cluster: None,
        services: vec![ServiceConfig {
            name: "web".into(),
            vips: vec!["10.0.0.100:80".parse().unwrap()],
            standby_vips: vec![],
            ratio: "50:50".parse().unwrap(),
            lookup_table_size: 65_537,
            backends: vec![backend(Pool::Blue, "10.0.1.1:80", 100)],
            health: HealthConfig {
                check: HealthCheck::Tcp,
                interval: Duration::from_secs(2),
                fast_interval: Duration::from_millis(500),
                timeout: Duration::from_secs(1),
                rise: 2,
                fall: 3,
                on_down: OnDown::Drain,
                port: None,
            },
            syn_proxy: SynProxy {
                mode: SynProxyMode::Auto,
                threshold: 1000,
                mss: 1460,
            },
            forwarding: Default::default(),
            slowstart: None,
            drain_deadline: None,
            affinity: Default::default(),
            protocol: Default::default(),
            udp_idle: std::time::Duration::ZERO,
        }],
    };
    assert_eq!(config, expected);
}

#[test]
fn example_file_parses() {
    let config = parse_ok(include_str!("../../../examples/bg-lb.toml"));
    assert_eq!(
        config.interfaces,
        Interfaces::OneArm {
            interface: "eth0".into()
        }
    );
    assert_eq!(config.snat_addresses, [Ipv4Addr::new(10, 0, 0, 1)]);
    assert_eq!(config.lookup_capacity, DEFAULT_LOOKUP_CAPACITY);
    assert_eq!(config.max_flows, DEFAULT_MAX_FLOWS);
    let [web, dns, api] = config.services.as_slice() else {
        panic!("three services expected: {config:?}")
    };
    assert_eq!(
        api.vips,
        [
            "10.0.0.101:443".parse::<std::net::SocketAddr>().unwrap(),
            "[fd00::101]:443".parse().unwrap()
        ],
        "the example shows a dual-stack service"
    );
    assert_eq!(
        config.snat6_addresses,
        ["fd00::1".parse::<std::net::Ipv6Addr>().unwrap()]
    );
    assert_eq!(
        (dns.protocol, dns.udp_idle, dns.vip()),
        (Protocol::Udp, Duration::from_secs(30), "10.0.0.100:53".parse().unwrap())
    );
    assert_eq!(
        dns.health.check,
        HealthCheck::Udp(UdpCheck {
            request: "health".into(),
            expect: "ok".into()
        })
    );
    assert_eq!(web.protocol, Protocol::Tcp);
    assert_eq!(web.name, "web");
    assert_eq!(web.vips, ["10.0.0.100:80".parse().unwrap()]);
    assert_eq!(web.standby_vips, ["10.0.0.100:8080".parse().unwrap()]);
    let pools: Vec<Pool> = web.backends.iter().map(|b| b.pool).collect();
    assert_eq!(pools, [Pool::Blue, Pool::Blue, Pool::Green, Pool::Green]);
    assert_eq!(web.backends[3].weight, 0, "the example shows a drained backend");
    assert_eq!(web.syn_proxy, SynProxy::default(), "the example shows the defaults");
    assert_eq!(web.forwarding, Forwarding::default(), "the example shows the default");
    assert_eq!(web.affinity, Affinity::ClientIp);
    assert_eq!(web.drain_deadline, Some(Duration::from_secs(600)));
    assert_eq!(
        web.health,
        HealthConfig {
            check: HealthCheck::Http(HttpCheck {
                live_path: "/live".into(),
                standby_path: "/standby".into(),
                expect_status: (200, 200),
                host: None,
                expect_body: None,
            }),
            ..HealthConfig::default()
        }
    );
}

#[test]
fn load_reads_a_file() {
    let path = std::env::temp_dir().join(format!("bg-lb-config-test-{}.toml", std::process::id()));
    fs::write(&path, TOP).unwrap();
    let loaded = load(&path);
    fs::remove_file(&path).unwrap();
    assert_eq!(loaded.unwrap(), parse_ok(TOP));
}

#[test]
fn load_error_names_the_path() {
    let error = load(Path::new("/nonexistent/bg-lb.toml")).unwrap_err();
    assert!(matches!(&error, ConfigError::Io { error, .. } if error.kind() == io::ErrorKind::NotFound));
    assert!(error.to_string().starts_with("/nonexistent/bg-lb.toml: "), "{error}");
    assert_eq!(error.line(), None);
    assert_eq!(error.path(), Path::new("/nonexistent/bg-lb.toml"));
}

#[test]
fn slowstart_is_off_unless_set_and_must_be_a_positive_duration() {
    assert_eq!(parse_ok(&format!("{TOP}{WEB}")).services[0].slowstart, None);
    let set = parse_ok(&format!("{TOP}{WEB}slowstart = \"30s\"\n"));
    assert_eq!(set.services[0].slowstart, Some(Duration::from_secs(30)));
    assert_rejected(
        &format!("{TOP}{WEB}slowstart = \"0s\"  # <-\n"),
        "slowstart must be greater than zero",
    );
    assert_rejected(&format!("{TOP}{WEB}slowstart = \"soon\"  # <-\n"), "slowstart \"soon\"");
}

#[test]
fn affinity_and_drain_deadline_are_off_unless_set() {
    let plain = parse_ok(&format!("{TOP}{WEB}"));
    assert_eq!(
        (plain.services[0].affinity, plain.services[0].drain_deadline),
        (Affinity::None, None)
    );
    let set = parse_ok(&format!(
        "{TOP}{WEB}affinity = \"client-ip\"\ndrain_deadline = \"5m\"\n"
    ));
    assert_eq!(
        (set.services[0].affinity, set.services[0].drain_deadline),
        (Affinity::ClientIp, Some(Duration::from_secs(300)))
    );
    assert_rejected(
        &format!("{TOP}{WEB}affinity = \"sticky\"  # <-\n"),
        "affinity \"sticky\"",
    );
    assert_rejected(
        &format!("{TOP}{WEB}drain_deadline = \"0s\"  # <-\n"),
        "drain_deadline must be greater than zero",
    );
}
