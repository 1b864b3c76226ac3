//! The admin socket protocol: one JSON request per line, one JSON reply per
//! line. Every reply has `"ok"`; failures carry `"error"`. Documented for
//! scripts in docs/admin-protocol.md.

use std::net::SocketAddrV4;

use serde::{Deserialize, Serialize};

use crate::ratio::{Pool, Ratio};

/// Requests longer than this are refused without being parsed.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Every service, or one.
    Status {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
    },
    /// New connections split BLUE:GREEN from now on.
    Ratio {
        service: String,
        ratio: Ratio,
        /// Allow a share for a pool that has no enabled backend.
        #[serde(default)]
        force: bool,
    },
    /// All new connections to the other pool.
    Drain {
        service: String,
        pool: Pool,
        #[serde(default)]
        force: bool,
    },
    /// Change one backend: weight, or pin it out of / back into rotation.
    Backend {
        service: String,
        address: SocketAddrV4,
        action: BackendAction,
    },
    /// Open flows of a service.
    Flows {
        service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<Pool>,
        #[serde(default = "default_flow_limit")]
        limit: usize,
    },
    /// Re-read the config file.
    Reload,
    /// Start a progressive shift of new connections to `to`.
    Shift {
        service: String,
        to: Pool,
        #[serde(default = "default_steps")]
        steps: Vec<u8>,
        #[serde(default = "default_interval_secs")]
        interval_secs: f64,
        #[serde(default = "default_max_error_rate")]
        max_error_rate: f64,
        #[serde(default = "default_min_flows")]
        min_flows: u64,
    },
    /// Stop a running shift, rolling back to where it began (default) or
    /// holding the current ratio.
    ShiftAbort {
        service: String,
        #[serde(default = "yes")]
        rollback: bool,
    },
    /// All new connections to `pool` at once, after checking its health.
    Promote {
        service: String,
        pool: Pool,
        #[serde(default)]
        force: bool,
    },
    /// Back to the ratio before the latest change.
    Rollback { service: String },
}

fn default_steps() -> Vec<u8> {
    crate::shift::DEFAULT_STEPS.to_vec()
}

fn default_interval_secs() -> f64 {
    30.0
}

fn default_max_error_rate() -> f64 {
    0.01
}

fn default_min_flows() -> u64 {
    20
}

fn yes() -> bool {
    true
}

impl Request {
    /// Every request's `cmd` tag, for per-command metrics.
    pub const COMMANDS: [&'static str; 10] = [
        "status",
        "ratio",
        "drain",
        "backend",
        "flows",
        "reload",
        "shift",
        "shift-abort",
        "promote",
        "rollback",
    ];

    /// The `cmd` tag this request has on the wire.
    pub fn cmd(&self) -> &'static str {
        match self {
            Request::Status { .. } => "status",
            Request::Ratio { .. } => "ratio",
            Request::Drain { .. } => "drain",
            Request::Backend { .. } => "backend",
            Request::Flows { .. } => "flows",
            Request::Reload => "reload",
            Request::Shift { .. } => "shift",
            Request::ShiftAbort { .. } => "shift-abort",
            Request::Promote { .. } => "promote",
            Request::Rollback { .. } => "rollback",
        }
    }
}

fn default_flow_limit() -> usize {
    100
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum BackendAction {
    Enable,
    Disable,
    Weight(u32),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceStatus>>,
    /// With `services`: how long ago the open flows were counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows_counted_secs_ago: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<RatioChange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<Vec<FlowInfo>>,
}

impl Reply {
    pub fn error(error: impl Into<String>) -> Self {
        Reply {
            ok: false,
            error: Some(error.into()),
            ..Default::default()
        }
    }

    pub fn done(message: impl Into<String>) -> Self {
        Reply {
            ok: true,
            message: Some(message.into()),
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatioChange {
    pub old: Ratio,
    pub new: Ratio,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: SocketAddrV4,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_vip: Option<SocketAddrV4>,
    /// The ratio operators set.
    pub ratio: Ratio,
    /// What the data plane applies: a pool that cannot serve hands its share
    /// to the other one.
    pub effective_ratio: Ratio,
    pub backends: Vec<BackendStatus>,
    /// The latest progressive shift, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift: Option<crate::shift::ShiftRecord>,
}

impl ServiceStatus {
    /// Open flows on a pool's backends: zero means drained.
    pub fn open_flows(&self, pool: Pool) -> u64 {
        self.backends
            .iter()
            .filter(|b| b.pool == pool)
            .map(|b| b.open_flows)
            .sum()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: SocketAddrV4,
    pub pool: Pool,
    /// Weight in effect for new flows (0 when disabled).
    pub weight: u32,
    pub configured_weight: u32,
    pub enabled: bool,
    /// Live check: up, down, or unchecked (no result yet).
    pub health: String,
    /// The live check's last result: "ok" or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<String>,
    /// Standby check (HTTP checks with a standby VIP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_health: Option<String>,
    pub open_flows: u64,
    pub new_flows: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// The backend's SYN-ACKs seen on the reply path.
    pub handshakes: u64,
    /// New connections it refused (RST before its SYN-ACK).
    pub refused: u64,
    /// Established connections it reset.
    pub resets: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowInfo {
    pub client: SocketAddrV4,
    pub backend: SocketAddrV4,
    pub pool: Pool,
    pub age_secs: f64,
    pub idle_secs: f64,
    pub state: String,
}

/// Parses one request line; the error is what the reply says.
pub fn parse_request(line: &str) -> Result<Request, String> {
    serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_round_trips_through_json() {
        let requests = [
            Request::Status { service: None },
            Request::Status {
                service: Some("web".into()),
            },
            Request::Ratio {
                service: "web".into(),
                ratio: Ratio::new(30).unwrap(),
                force: false,
            },
            Request::Drain {
                service: "web".into(),
                pool: Pool::Blue,
                force: true,
            },
            Request::Backend {
                service: "web".into(),
                address: "10.0.0.1:80".parse().unwrap(),
                action: BackendAction::Weight(5),
            },
            Request::Backend {
                service: "web".into(),
                address: "10.0.0.1:80".parse().unwrap(),
                action: BackendAction::Disable,
            },
            Request::Flows {
                service: "web".into(),
                pool: Some(Pool::Green),
                limit: 10,
            },
            Request::Reload,
            Request::Shift {
                service: "web".into(),
                to: Pool::Blue,
                steps: vec![10, 100],
                interval_secs: 5.0,
                max_error_rate: 0.02,
                min_flows: 10,
            },
            Request::ShiftAbort {
                service: "web".into(),
                rollback: false,
            },
            Request::Promote {
                service: "web".into(),
                pool: Pool::Green,
                force: false,
            },
            Request::Rollback { service: "web".into() },
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
            Request::Ratio {
                service: "web".into(),
                ratio: Ratio::new(30).unwrap(),
                force: false
            }
        );
        assert_eq!(
            parse_request(r#"{"cmd":"backend","service":"web","address":"10.0.0.1:80","action":{"weight":7}}"#)
                .unwrap(),
            Request::Backend {
                service: "web".into(),
                address: "10.0.0.1:80".parse().unwrap(),
                action: BackendAction::Weight(7)
            }
        );
        assert_eq!(
            parse_request(r#"{"cmd":"flows","service":"web"}"#).unwrap(),
            Request::Flows {
                service: "web".into(),
                pool: None,
                limit: 100
            }
        );
    }

    #[test]
    fn a_shift_request_takes_the_documented_defaults() {
        assert_eq!(
            parse_request(r#"{"cmd":"shift","service":"web","to":"blue"}"#).unwrap(),
            Request::Shift {
                service: "web".into(),
                to: Pool::Blue,
                steps: vec![10, 25, 50, 100],
                interval_secs: 30.0,
                max_error_rate: 0.01,
                min_flows: 20,
            }
        );
        assert_eq!(
            parse_request(r#"{"cmd":"shift-abort","service":"web"}"#).unwrap(),
            Request::ShiftAbort {
                service: "web".into(),
                rollback: true
            }
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
}
