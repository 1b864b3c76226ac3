use super::*;
use crate::{dataplane::l4::Protocol, family::Family};

#[test]
fn every_request_round_trips_through_json() {
    let requests = [
        Request::Status(StatusRequest { service: None }),
        Request::Status(StatusRequest {
            service: Some("web".into()),
        }),
        Request::Ratio(RatioRequest {
            service: "web".into(),
            ratio: Ratio::new(30).unwrap(),
            force: false,
        }),
        Request::Drain(PoolRequest {
            service: "web".into(),
            pool: Pool::Blue,
            force: true,
            deadline_secs: Some(300),
        }),
        Request::Backend(BackendRequest {
            service: "web".into(),
            address: "10.0.0.1:80".parse().unwrap(),
            action: BackendAction::Weight(BackendWeight { weight: 5 }),
        }),
        Request::Backend(BackendRequest {
            service: "web".into(),
            address: "10.0.0.1:80".parse().unwrap(),
            action: BackendAction::Disable,
        }),
        Request::BackendAdd(BackendAddRequest {
            service: "web".into(),
            address: "10.0.0.2:80".parse().unwrap(),
            pool: Pool::Green,
            weight: 50,
        }),
        Request::BackendRemove(BackendRemoveRequest {
            service: "web".into(),
            address: "10.0.0.2:80".parse().unwrap(),
        }),
        Request::Flows(FlowsRequest {
            service: "web".into(),
            pool: Some(Pool::Green),
            limit: 10,
        }),
        Request::Reload,
        Request::Shift(ShiftRequest {
            service: "web".into(),
            to: Pool::Blue,
            steps: vec![10, 100],
            interval_secs: 5.0,
            max_error_rate: 0.02,
            min_flows: 10,
            check_url: Some("http://10.0.0.5/ok".into()),
            check_prometheus: Some(crate::shift::hooks::PrometheusCheck {
                url: "http://prom:9090".into(),
                query: "up".into(),
                max: 1.0,
            }),
        }),
        Request::ShiftAbort(ShiftAbortRequest {
            service: "web".into(),
            rollback: false,
        }),
        Request::Promote(PoolRequest {
            service: "web".into(),
            pool: Pool::Green,
            force: false,
            deadline_secs: None,
        }),
        Request::Rollback(ServiceRequest { service: "web".into() }),
        Request::Node(NodeRequest {
            action: NodeAction::Drain,
        }),
        Request::Node(NodeRequest {
            action: NodeAction::Resume,
        }),
    ];
    for request in requests {
        let line = serde_json::to_string(&request).unwrap();
        assert_eq!(parse_request(&line).unwrap(), request, "{line}");
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["cmd"], request.cmd(), "cmd() is the wire tag");
        assert!(Request::COMMANDS.contains(&request.cmd()));
    }
}

#[test]
fn requests_read_as_documented() {
    assert_eq!(
        parse_request(r#"{"cmd":"ratio","service":"web","ratio":"30:70"}"#).unwrap(),
        Request::Ratio(RatioRequest {
            service: "web".into(),
            ratio: Ratio::new(30).unwrap(),
            force: false
        })
    );
    assert_eq!(
        parse_request(r#"{"cmd":"backend","service":"web","address":"10.0.0.1:80","action":{"weight":7}}"#).unwrap(),
        Request::Backend(BackendRequest {
            service: "web".into(),
            address: "10.0.0.1:80".parse().unwrap(),
            action: BackendAction::Weight(BackendWeight { weight: 7 })
        })
    );
    assert_eq!(
        parse_request(r#"{"cmd":"node","action":"drain"}"#).unwrap(),
        Request::Node(NodeRequest {
            action: NodeAction::Drain
        })
    );
    assert_eq!(
        parse_request(r#"{"cmd":"backend-add","service":"web","address":"10.0.0.9:80","pool":"green"}"#).unwrap(),
        Request::BackendAdd(BackendAddRequest {
            service: "web".into(),
            address: "10.0.0.9:80".parse().unwrap(),
            pool: Pool::Green,
            weight: crate::config::DEFAULT_WEIGHT,
        })
    );
    assert_eq!(
        parse_request(r#"{"cmd":"flows","service":"web"}"#).unwrap(),
        Request::Flows(FlowsRequest {
            service: "web".into(),
            pool: None,
            limit: 100
        })
    );
}

#[test]
fn only_status_and_flows_are_read_only() {
    let read_only: Vec<&str> = Request::COMMANDS
        .into_iter()
        .filter(|cmd| {
            let line = match *cmd {
                "status" | "reload" => format!(r#"{{"cmd":"{cmd}"}}"#),
                _ => return false,
            };
            parse_request(&line).unwrap().is_read_only()
        })
        .collect();
    assert_eq!(read_only, ["status"]);
    let flows = parse_request(r#"{"cmd":"flows","service":"web"}"#).unwrap();
    assert!(flows.is_read_only());
    let ratio = parse_request(r#"{"cmd":"ratio","service":"web","ratio":"30:70"}"#).unwrap();
    assert!(!ratio.is_read_only());
}

#[test]
fn a_shift_request_takes_the_documented_defaults() {
    assert_eq!(
        parse_request(r#"{"cmd":"shift","service":"web","to":"blue"}"#).unwrap(),
        Request::Shift(ShiftRequest {
            service: "web".into(),
            to: Pool::Blue,
            steps: vec![10, 25, 50, 100],
            interval_secs: 30.0,
            max_error_rate: 0.01,
            min_flows: 20,
            check_url: None,
            check_prometheus: None,
        })
    );
    assert_eq!(
        parse_request(r#"{"cmd":"shift-abort","service":"web"}"#).unwrap(),
        Request::ShiftAbort(ShiftAbortRequest {
            service: "web".into(),
            rollback: true
        })
    );
}

#[test]
fn malformed_requests_are_errors_not_panics() {
    for bad in [
        "",
        "not json",
        "{}",
        r#"{"cmd":"explode"}"#,
        r#"{"cmd":"ratio","service":"web","ratio":"30:60"}"#,
        r#"{"cmd":"ratio","service":"web"}"#,
        r#"{"cmd":"drain","service":"web","pool":"purple"}"#,
        r#"{"cmd":"status","extra":1}"#,
        r#"{"cmd":"backend","service":"web","address":"nowhere","action":"enable"}"#,
        r#"[1,2,3]"#,
    ] {
        let err = parse_request(bad).unwrap_err();
        assert!(err.starts_with("bad request"), "{bad}: {err}");
    }
}

#[test]
fn replies_round_trip_and_errors_say_ok_false() {
    let reply = Reply::error("no such service \"x\"");
    let line = serde_json::to_string(&reply).unwrap();
    assert_eq!(line, r#"{"ok":false,"error":"no such service \"x\""}"#);
    let change = Reply {
        ok: true,
        ratio: Some(RatioChange {
            old: Ratio::new(50).unwrap(),
            new: Ratio::new(0).unwrap(),
        }),
        ..Default::default()
    };
    let line = serde_json::to_string(&change).unwrap();
    assert_eq!(line, r#"{"ok":true,"ratio":{"old":"50:50","new":"0:100"}}"#);
    assert_eq!(serde_json::from_str::<Reply>(&line).unwrap(), change);
}

/// A reply of an older daemon has no listeners: `vip` and `standby_vip`
/// still show; an IPv4 service's line is what it always was; once a
/// service has an IPv6 VIP, every address names its family.
#[test]
fn vips_text_shows_each_listener_and_its_family_once_one_is_ipv6() {
    let older = r#"{"name":"web","vip":"10.0.0.100:80","standby_vip":"10.0.0.100:8080","ratio":"50:50",
        "effective_ratio":"50:50","backends":[]}"#;
    let mut status: ServiceStatus = serde_json::from_str(older).unwrap();
    assert!(status.listeners.is_empty());
    assert_eq!(status.vips_text(), "vip 10.0.0.100:80  standby 10.0.0.100:8080");
    let listener = |vip: &str, standby| ListenerStatus {
        vip: vip.parse().unwrap(),
        family: Family::of_socket(vip.parse().unwrap()),
        protocol: Protocol::Tcp,
        standby,
    };
    status.listeners = vec![listener("10.0.0.100:80", false), listener("10.0.0.100:8080", true)];
    assert_eq!(status.vips_text(), "vip 10.0.0.100:80  standby 10.0.0.100:8080");
    status.listeners.insert(1, listener("[fd00::100]:80", false));
    assert_eq!(
        status.vips_text(),
        "vip 10.0.0.100:80 (IPv4), [fd00::100]:80 (IPv6)  standby 10.0.0.100:8080 (IPv4)"
    );
    let json = serde_json::to_string(&status).unwrap();
    assert!(
        json.contains(r#"{"vip":"[fd00::100]:80","family":"ipv6","protocol":"tcp"}"#),
        "{json}"
    );
}
