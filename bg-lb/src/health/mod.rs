//! Health checks: a rise/fall state machine (HAProxy semantics) and the TCP
//! and HTTP probes that feed it. Probes are sourced from the SNAT address so
//! they take the same path as forwarded traffic (and keep the backends'
//! neighbour entries resolved, which the XDP fast path needs).

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpSocket, sync::mpsc, task::JoinHandle};

use crate::config::{HealthCheck, HealthConfig, HttpCheck};

/// Bodies larger than this fail an `expect_body` check.
const MAX_BODY: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    Refused,
    Network(String),
    HttpStatus(u16),
    BodyMismatch,
    BadResponse(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timeout"),
            Failure::Refused => f.write_str("connection refused"),
            Failure::Network(e) => write!(f, "network error: {e}"),
            Failure::HttpStatus(code) => write!(f, "HTTP {code}"),
            Failure::BodyMismatch => f.write_str("body mismatch"),
            Failure::BadResponse(e) => write!(f, "bad HTTP response: {e}"),
        }
    }
}

pub type Outcome = Result<(), Failure>;

/// Up or down after `rise` consecutive successes or `fall` consecutive
/// failures. Until the first result the backend counts as up, so a
/// restarted daemon keeps serving; the first result then sets the state
/// directly, and rise/fall govern every change after it.
#[derive(Clone, Debug)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    up: bool,
    checked: bool,
    /// Consecutive results contrary to the current state.
    streak: u32,
    last: Option<Outcome>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    WentUp,
    WentDown,
}

impl Tracker {
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise,
            fall,
            up: true,
            checked: false,
            streak: 0,
            last: None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    pub fn last(&self) -> Option<&Outcome> {
        self.last.as_ref()
    }

    /// A result contrary to the state was seen: probe faster to confirm.
    pub fn transitioning(&self) -> bool {
        self.streak > 0
    }

    pub fn record(&mut self, outcome: Outcome) -> Option<Transition> {
        let ok = outcome.is_ok();
        self.last = Some(outcome);
        if !self.checked {
            self.checked = true;
            let was_up = std::mem::replace(&mut self.up, ok);
            return (was_up != ok).then_some(if ok { Transition::WentUp } else { Transition::WentDown });
        }
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak < if ok { self.rise } else { self.fall } {
            return None;
        }
        self.streak = 0;
        self.up = ok;
        Some(if ok { Transition::WentUp } else { Transition::WentDown })
    }
}

/// Which listener a check serves: the live VIP checks the live path, the
/// standby VIP the standby path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Listener {
    Live,
    Standby,
}

/// One probe's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CheckKey {
    pub service: String,
    pub backend: SocketAddrV4,
    pub listener: Listener,
}

/// What a probe task reports after every check.
#[derive(Clone, Debug)]
pub struct Report {
    pub key: CheckKey,
    pub outcome: Outcome,
    pub up: bool,
    pub transition: Option<Transition>,
    /// How long the probe took (up to the timeout), for the latency metric.
    pub duration: Duration,
}

/// Runs `key`'s probe forever, reporting every result. Dropping (aborting)
/// the handle stops it.
pub fn spawn_probe(
    key: CheckKey,
    config: HealthConfig,
    source: Ipv4Addr,
    reports: mpsc::Sender<Report>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tracker = Tracker::new(config.rise, config.fall);
        loop {
            let started = Instant::now();
            let outcome = probe(&key, &config, source).await;
            let duration = started.elapsed();
            let transition = tracker.record(outcome.clone());
            let report = Report {
                key: key.clone(),
                outcome,
                up: tracker.is_up(),
                transition,
                duration,
            };
            if reports.send(report).await.is_err() {
                return;
            }
            let pause = if tracker.transitioning() {
                config.fast_interval
            } else {
                config.interval
            };
            tokio::time::sleep(pause).await;
        }
    })
}

async fn probe(key: &CheckKey, config: &HealthConfig, source: Ipv4Addr) -> Outcome {
    let check = async {
        let stream = connect(key.backend, source).await?;
        match &config.check {
            HealthCheck::Tcp => Ok(()),
            HealthCheck::Http(http) => http_check(stream, key, http).await,
        }
    };
    tokio::time::timeout(config.timeout, check)
        .await
        .unwrap_or(Err(Failure::Timeout))
}

async fn connect(backend: SocketAddrV4, source: Ipv4Addr) -> Result<tokio::net::TcpStream, Failure> {
    let socket = TcpSocket::new_v4().map_err(|e| Failure::Network(e.to_string()))?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .map_err(|e| Failure::Network(format!("cannot bind the SNAT address {source}: {e}")))?;
    socket.connect(backend.into()).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Failure::Refused,
        _ => Failure::Network(e.to_string()),
    })
}

async fn http_check(stream: tokio::net::TcpStream, key: &CheckKey, http: &HttpCheck) -> Outcome {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::BadResponse(e.to_string()))?;
    tokio::spawn(connection);
    let path = match key.listener {
        Listener::Live => &http.live_path,
        Listener::Standby => &http.standby_path,
    };
    let host = http.host.clone().unwrap_or_else(|| key.backend.to_string());
    let request = Request::get(path)
        .header("Host", host)
        .header("User-Agent", "bg-lb-health-check")
        .header("Connection", "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| Failure::BadResponse(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Failure::BadResponse(e.to_string()))?;
    let status = response.status().as_u16();
    let body = match &http.expect_body {
        Some(_) => Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .ok(),
        None => None,
    };
    judge_response(http, status, body.as_deref())
}

/// Turns an HTTP response into an outcome: status within the expected range,
/// then (if configured) the body contains the expected text.
pub fn judge_response(http: &HttpCheck, status: u16, body: Option<&[u8]>) -> Outcome {
    let (min, max) = http.expect_status;
    if !(min..=max).contains(&status) {
        return Err(Failure::HttpStatus(status));
    }
    match (&http.expect_body, body) {
        (None, _) => Ok(()),
        (Some(want), Some(body)) if String::from_utf8_lossy(body).contains(want.as_str()) => Ok(()),
        (Some(_), _) => Err(Failure::BodyMismatch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail() -> Outcome {
        Err(Failure::Refused)
    }

    #[test]
    fn the_first_result_sets_the_state_directly() {
        let mut t = Tracker::new(2, 3);
        assert!(t.is_up(), "unchecked backends keep serving");
        assert_eq!(t.record(fail()), Some(Transition::WentDown));
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.record(Ok(())), None);
        assert!(t.is_up());
    }

    #[test]
    fn goes_down_after_fall_consecutive_failures() {
        let mut t = Tracker::new(2, 3);
        t.record(Ok(()));
        assert_eq!(t.record(fail()), None);
        assert!(t.transitioning(), "probe faster while a change is being confirmed");
        assert_eq!(t.record(fail()), None);
        assert_eq!(t.record(fail()), Some(Transition::WentDown));
        assert!(!t.is_up() && !t.transitioning());
    }

    #[test]
    fn goes_up_after_rise_consecutive_successes() {
        let mut t = Tracker::new(2, 3);
        t.record(fail());
        assert_eq!(t.record(Ok(())), None);
        assert_eq!(t.record(Ok(())), Some(Transition::WentUp));
        assert!(t.is_up());
    }

    #[test]
    fn an_interrupted_streak_starts_over() {
        let mut t = Tracker::new(2, 3);
        t.record(Ok(()));
        t.record(fail());
        t.record(fail());
        t.record(Ok(()));
        assert!(!t.transitioning());
        assert_eq!(t.record(fail()), None);
        assert_eq!(t.record(fail()), None);
        assert!(t.is_up(), "two failures after a success are not three in a row");
    }

    fn http(expect_status: (u16, u16), expect_body: Option<&str>) -> HttpCheck {
        HttpCheck {
            live_path: "/live".into(),
            standby_path: "/standby".into(),
            expect_status,
            host: None,
            expect_body: expect_body.map(Into::into),
        }
    }

    #[test]
    fn http_status_must_be_in_the_expected_range() {
        assert_eq!(judge_response(&http((200, 200), None), 200, None), Ok(()));
        assert_eq!(
            judge_response(&http((200, 200), None), 500, None),
            Err(Failure::HttpStatus(500))
        );
        assert_eq!(judge_response(&http((200, 399), None), 302, None), Ok(()));
        assert_eq!(
            judge_response(&http((200, 399), None), 404, None),
            Err(Failure::HttpStatus(404))
        );
    }

    #[test]
    fn http_body_must_contain_the_expected_text() {
        let check = http((200, 200), Some("live"));
        assert_eq!(judge_response(&check, 200, Some(b"live\n")), Ok(()));
        assert_eq!(
            judge_response(&check, 200, Some(b"standby\n")),
            Err(Failure::BodyMismatch)
        );
        assert_eq!(
            judge_response(&check, 200, None),
            Err(Failure::BodyMismatch),
            "unreadable or oversized body"
        );
        assert_eq!(
            judge_response(&check, 500, Some(b"live")),
            Err(Failure::HttpStatus(500)),
            "status first"
        );
    }

    #[test]
    fn failures_read_as_operators_expect() {
        assert_eq!(Failure::HttpStatus(500).to_string(), "HTTP 500");
        assert_eq!(Failure::Timeout.to_string(), "timeout");
        assert_eq!(Failure::Refused.to_string(), "connection refused");
        assert_eq!(Failure::BodyMismatch.to_string(), "body mismatch");
    }

    /// A real probe against loopback listeners: up while one listens, refused
    /// once it is gone.
    #[tokio::test]
    async fn tcp_probe_reports_refused_when_nothing_listens() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        let key = CheckKey {
            service: "web".into(),
            backend: addr,
            listener: Listener::Live,
        };
        let config = HealthConfig::default();
        assert_eq!(probe(&key, &config, Ipv4Addr::LOCALHOST).await, Ok(()));
        drop(listener);
        assert_eq!(probe(&key, &config, Ipv4Addr::LOCALHOST).await, Err(Failure::Refused));
    }
}
