//! Tests of `[service.health]`.

use std::time::Duration;

use crate::{
    config::{
        HealthCheck, HealthConfig, HttpCheck, OnDown, UdpCheck,
        test_support::{API, BLUE, TOP, WEB, assert_rejected, backend, parse_ok},
    },
    ratio::Pool,
};

/// `[service.health]` of WEB: line 6 after TOP and WEB.
const HEALTH: &str = "[service.health]\n";

/// Parses WEB with `keys` in its `[service.health]` table and returns that service's health settings.
fn health_of(keys: &str) -> HealthConfig {
    parse_ok(&format!("{TOP}{WEB}{HEALTH}{keys}")).services[0]
        .health
        .clone()
}

#[test]
fn service_without_health_table_gets_tcp_checks_with_defaults() {
    let config = parse_ok(&format!("{TOP}{WEB}{BLUE}{API}"));
    for service in &config.services {
        assert_eq!(service.health, HealthConfig::default());
    }
    assert_eq!(
        health_of(""),
        HealthConfig::default(),
        "an empty table is the default too"
    );
    assert_eq!(
        HealthConfig::default(),
        HealthConfig {
            check: HealthCheck::Tcp,
            interval: Duration::from_secs(2),
            fast_interval: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            on_down: OnDown::Drain,
            port: None,
        }
    );
}

#[test]
fn full_http_health_table_parses_to_expected_struct() {
    let health = health_of(
        r#"type = "http"
        interval = "5s"
        fast_interval = "250ms"
        timeout = "1500ms"
        rise = 1
        fall = 100
        on_down = "reset"
        live_path = "/health/live?probe=lb"
        standby_path = "/health/standby"
        expect_status = "200-399"
        host = "web.example:8080"
        expect_body = "ok"
        "#,
    );
    let expected = HealthConfig {
        check: HealthCheck::Http(HttpCheck {
            live_path: "/health/live?probe=lb".into(),
            standby_path: "/health/standby".into(),
            expect_status: (200, 399),
            host: Some("web.example:8080".into()),
            expect_body: Some("ok".into()),
        }),
        interval: Duration::from_secs(5),
        fast_interval: Duration::from_millis(250),
        timeout: Duration::from_millis(1500),
        rise: 1,
        fall: 100,
        on_down: OnDown::Reset,
        port: None,
    };
    assert_eq!(health, expected);
}

#[test]
fn http_health_keys_take_their_defaults() {
    assert_eq!(
        health_of("type = \"http\"\n"),
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
    assert_eq!(
        HealthCheck::Http(HttpCheck::default()),
        health_of("type = \"http\"\n").check
    );
    let tcp = health_of("type = \"tcp\"\nrise = 5\non_down = \"drain\"\n");
    assert_eq!(
        tcp,
        HealthConfig {
            rise: 5,
            ..HealthConfig::default()
        }
    );
}

#[test]
fn health_table_may_come_before_or_after_the_backends() {
    let http = "type = \"http\"\nrise = 4\n";
    let green = "[[service.backend]]\npool = \"green\"\naddress = \"10.0.2.1:80\"\n";
    let expected_backends = [
        backend(Pool::Blue, "10.0.1.1:80", 100),
        backend(Pool::Green, "10.0.2.1:80", 100),
    ];
    for text in [
        format!("{TOP}{WEB}{HEALTH}{http}{BLUE}{green}{API}"),
        format!("{TOP}{WEB}{BLUE}{green}{HEALTH}{http}{API}"),
        format!("{TOP}{WEB}{BLUE}{HEALTH}{http}{green}{API}"),
        format!("{TOP}{WEB}health.type = \"http\"\nhealth.rise = 4\n{BLUE}{green}{API}"),
        format!("{TOP}{WEB}health = {{ type = \"http\", rise = 4 }}\n{BLUE}{green}{API}"),
    ] {
        let config = parse_ok(&text);
        let [web, api] = config.services.as_slice() else {
            panic!("two services expected:\n{text}")
        };
        assert_eq!(web.backends, expected_backends, "{text}");
        assert_eq!(web.health.rise, 4, "{text}");
        assert_eq!(web.health.check, HealthCheck::Http(HttpCheck::default()), "{text}");
        assert_eq!(
            api.health,
            HealthConfig::default(),
            "the table belongs to its own service:\n{text}"
        );
        assert!(api.backends.is_empty(), "{text}");
    }
    // Errors in a health table after the backends still point at the right line.
    assert_rejected(
        &format!("{TOP}{WEB}{BLUE}{green}{HEALTH}rise = 0  # <-\n{API}"),
        "health.rise 0 is out of range 1..=100",
    );
    assert_rejected(
        &format!("{TOP}{WEB}{BLUE}{HEALTH}checks = 3  # <-\n{green}"),
        "unknown field `checks`",
    );
    // A second [service.health] for the same service is a duplicate table.
    assert_rejected(
        &format!("{TOP}{WEB}{HEALTH}{BLUE}[service.health]  # <-\n"),
        "duplicate key `health`",
    );
}

#[test]
fn unknown_health_keys_are_rejected_by_name() {
    assert_rejected(
        &format!("{TOP}{WEB}{HEALTH}path = \"/live\"  # <-\n"),
        "unknown field `path`",
    );
    assert_rejected(
        &format!("{TOP}{WEB}{HEALTH}type = \"http\"\nexpect_status_code = \"200\"  # <-\n"),
        "unknown field `expect_status_code`",
    );
    assert_rejected(
        &format!("{TOP}{WEB}{HEALTH}type = \"http\"\nrise = \"2\"  # <-\n"),
        "invalid type: string \"2\", expected i64",
    );
}

#[test]
fn unknown_health_type_and_on_down_are_rejected() {
    for check in ["icmp", "HTTP", ""] {
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}type = {check:?}  # <-\n"),
            &format!("unknown health.type {check:?} (expected tcp, http or udp)"),
        );
    }
    for on_down in ["kill", "Drain", ""] {
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}on_down = {on_down:?}  # <-\n"),
            &format!("unknown health.on_down {on_down:?} (expected drain or reset)"),
        );
    }
}

#[test]
fn zero_or_invalid_health_durations_are_rejected() {
    for key in ["interval", "fast_interval", "timeout"] {
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}{key} = \"0s\"  # <-\n"),
            &format!("health.{key} must be greater than zero"),
        );
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}{key} = \"often\"  # <-\n"),
            &format!("health.{key} \"often\": "),
        );
        assert_rejected(&format!("{TOP}{WEB}{HEALTH}{key} = \"2\"  # <-\n"), "time unit needed");
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}{key} = \"1000 years\"  # <-\n"),
            &format!("health.{key} \"1000 years\" is too long"),
        );
    }
}

#[test]
fn health_timeout_must_be_below_interval() {
    assert_rejected(
        &format!("{TOP}{WEB}{HEALTH}interval = \"1s\"\ntimeout = \"1s\"  # <-\n"),
        "health.timeout 1s must be less than health.interval 1s",
    );
    assert_rejected(
        &format!("{TOP}{WEB}{HEALTH}timeout = \"3s\"  # <-\n"),
        "health.timeout 3s must be less than health.interval 2s",
    );
    // With the default timeout, the interval that is too short is the key to point at.
    assert_rejected(
        &format!("{TOP}{WEB}{HEALTH}interval = \"800ms\"  # <-\nfast_interval = \"100ms\"\n"),
        "health.timeout 1s (the default) must be less than health.interval 800ms",
    );
    let health = health_of("interval = \"1s\"\ntimeout = \"999ms\"\n");
    assert_eq!(
        (health.interval, health.timeout),
        (Duration::from_secs(1), Duration::from_millis(999))
    );
}

#[test]
fn health_fast_interval_must_not_exceed_interval() {
    assert_rejected(
        &format!("{TOP}{WEB}{HEALTH}fast_interval = \"3s\"  # <-\n"),
        "health.fast_interval 3s must be at most health.interval 2s",
    );
    assert_rejected(
        &format!("{TOP}{WEB}{HEALTH}interval = \"10s\"\nfast_interval = \"11s\"  # <-\n"),
        "health.fast_interval 11s must be at most health.interval 10s",
    );
    // With the default fast_interval, the interval is the key to point at.
    assert_rejected(
        &format!("{TOP}{WEB}{HEALTH}interval = \"400ms\"  # <-\ntimeout = \"100ms\"\n"),
        "health.fast_interval 500ms (the default) must be at most health.interval 400ms",
    );
    let equal = health_of("interval = \"3s\"\nfast_interval = \"3s\"\n");
    assert_eq!(
        (equal.interval, equal.fast_interval),
        (Duration::from_secs(3), Duration::from_secs(3))
    );
}

#[test]
fn rise_and_fall_out_of_range_are_rejected() {
    for key in ["rise", "fall"] {
        for n in ["0", "101", "-1"] {
            assert_rejected(
                &format!("{TOP}{WEB}{HEALTH}{key} = {n}  # <-\n"),
                &format!("health.{key} {n} is out of range 1..=100"),
            );
        }
    }
    let health = health_of("rise = 1\nfall = 100\n");
    assert_eq!((health.rise, health.fall), (1, 100));
}

#[test]
fn http_keys_need_type_http() {
    for (key, value) in [
        ("live_path", "\"/live\""),
        ("standby_path", "\"/standby\""),
        ("expect_status", "\"200\""),
        ("host", "\"web.example\""),
        ("expect_body", "\"ok\""),
    ] {
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}type = \"tcp\"\n{key} = {value}  # <-\n"),
            &format!("health.{key} needs type = \"http\" (the check type is \"tcp\")"),
        );
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}{key} = {value}  # <-\n"),
            &format!("health.{key} needs type = \"http\" (the check type is tcp by default)"),
        );
    }
    // The first such key in the file is the one reported.
    assert_rejected(
        &format!("{TOP}{WEB}{HEALTH}expect_body = \"ok\"  # <-\nlive_path = \"/live\"\n"),
        "health.expect_body needs type = \"http\"",
    );
}

#[test]
fn bad_http_paths_are_rejected() {
    for key in ["live_path", "standby_path"] {
        for path in ["live", "", "http://web/live", " /live"] {
            assert_rejected(
                &format!("{TOP}{WEB}{HEALTH}type = \"http\"\n{key} = {path:?}  # <-\n"),
                &format!("health.{key} {path:?} must start with '/'"),
            );
        }
        for path in ["/a b", "/live\t", "/live\r\nX-Injected: 1", "/ü"] {
            assert_rejected(
                &format!("{TOP}{WEB}{HEALTH}type = \"http\"\n{key} = {path:?}  # <-\n"),
                &format!("health.{key} {path:?} must be printable ASCII without whitespace"),
            );
        }
    }
    let health = health_of("type = \"http\"\nlive_path = \"/\"\nstandby_path = \"/a%20b?x=1&y=~\"\n");
    let HealthCheck::Http(http) = health.check else {
        panic!("http expected")
    };
    assert_eq!(
        (http.live_path.as_str(), http.standby_path.as_str()),
        ("/", "/a%20b?x=1&y=~")
    );
}

#[test]
fn bad_expect_status_is_rejected() {
    for status in ["", "2xx", "200-", "-200", "+200", "200-300-400", "200,204", "70000"] {
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}type = \"http\"\nexpect_status = {status:?}  # <-\n"),
            &format!("health.expect_status {status:?} is not STATUS or MIN-MAX"),
        );
    }
    for status in ["99", "600", "0-200", "200-600"] {
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}type = \"http\"\nexpect_status = {status:?}  # <-\n"),
            &format!("health.expect_status {status:?} is out of range 100..=599"),
        );
    }
    assert_rejected(
        &format!("{TOP}{WEB}{HEALTH}type = \"http\"\nexpect_status = \"399-200\"  # <-\n"),
        "health.expect_status \"399-200\" is inverted: 399 is above 200",
    );
    assert_rejected(
        &format!("{TOP}{WEB}{HEALTH}type = \"http\"\nexpect_status = 200  # <-\n"),
        "invalid type: integer `200`, expected a string",
    );
    for (status, expected) in [("100", (100, 100)), ("599", (599, 599)), ("204 - 204", (204, 204))] {
        let health = health_of(&format!("type = \"http\"\nexpect_status = {status:?}\n"));
        let HealthCheck::Http(http) = health.check else {
            panic!("http expected")
        };
        assert_eq!(http.expect_status, expected, "{status}");
    }
}

#[test]
fn empty_or_bad_host_and_empty_expect_body_are_rejected() {
    assert_rejected(
        &format!("{TOP}{WEB}{HEALTH}type = \"http\"\nhost = \"\"  # <-\n"),
        "health.host must not be empty",
    );
    for host in ["web example", "web.example\r\nX: 1", " web"] {
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}type = \"http\"\nhost = {host:?}  # <-\n"),
            &format!("health.host {host:?} must be printable ASCII without whitespace"),
        );
    }
    assert_rejected(
        &format!("{TOP}{WEB}{HEALTH}type = \"http\"\nexpect_body = \"\"  # <-\n"),
        "health.expect_body must not be empty",
    );
    // The body may be any non-empty text.
    let health = health_of("type = \"http\"\nexpect_body = \"status: ok ✓\"\n");
    let HealthCheck::Http(http) = health.check else {
        panic!("http expected")
    };
    assert_eq!(http.expect_body.as_deref(), Some("status: ok ✓"));
}

#[test]
fn a_udp_check_needs_its_request_and_expected_reply_and_other_checks_refuse_them() {
    let udp = "[[service]]\nname = \"dns\"\nvip = \"10.0.0.100:53\"\nprotocol = \"udp\"\n";
    let config = parse_ok(&format!(
        "{TOP}{udp}{HEALTH}type = \"udp\"\nrequest = \"ping\"\nexpect = \"pong\"\nport = 5353\n"
    ));
    let health = &config.services[0].health;
    assert_eq!(
        health.check,
        HealthCheck::Udp(UdpCheck {
            request: "ping".into(),
            expect: "pong".into()
        })
    );
    assert_eq!(health.port, Some(5353));
    assert_rejected(
        &format!("{TOP}{udp}{HEALTH}type = \"udp\"  # <-\nexpect = \"pong\"\n"),
        "type = \"udp\" needs health.request",
    );
    assert_rejected(
        &format!("{TOP}{udp}{HEALTH}type = \"udp\"\nrequest = \"\"  # <-\nexpect = \"pong\"\n"),
        "health.request must not be empty",
    );
    assert_rejected(
        &format!("{TOP}{WEB}{HEALTH}request = \"ping\"  # <-\n"),
        "health.request needs type = \"udp\" (the check type is tcp by default)",
    );
    assert_rejected(
        &format!("{TOP}{WEB}{HEALTH}type = \"udp\"\nrequest = \"a\"\nexpect = \"b\"\nlive_path = \"/x\"  # <-\n"),
        "health.live_path needs type = \"http\"",
    );
    assert_rejected(&format!("{TOP}{WEB}{HEALTH}port = 0  # <-\n"), "health.port");
}
