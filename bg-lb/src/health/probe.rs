//! Probing: which backend and listener a probe checks, the task that probes
//! it forever, and the TCP connect TCP and HTTP checks start with.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{net::TcpSocket, sync::mpsc, task::JoinHandle};

use super::{Failure, Outcome, Tracker, Transition, http::http_check, udp::udp_check};
use crate::config::{HealthCheck, HealthConfig};

/// Which listener a check serves: the live VIP checks the live path, the
/// standby VIP the standby path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Listener {
    Live,
    Standby,
}

/// One probe's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CheckKey {
    pub service: String,
    pub backend: SocketAddr,
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

/// Runs `key`'s probe forever from `source` (the first SNAT address of the
/// backend's family), reporting every result; `known_down` starts
/// it down (see [`Tracker::known_down`]). The first check waits
/// `first_delay` ([`first_check_delay`]). Dropping (aborting) the handle
/// stops it.
pub fn spawn_probe(
    key: CheckKey,
    config: HealthConfig,
    source: IpAddr,
    (known_down, first_delay): (bool, Duration),
    reports: mpsc::Sender<Report>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tracker = if known_down {
            Tracker::known_down(config.rise, config.fall)
        } else {
            Tracker::new(config.rise, config.fall)
        };
        tokio::time::sleep(first_delay).await;
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

/// When the `nth` of `count` probes started together makes its first
/// check: evenly spread over `spread` (a check's `fast_interval`), the
/// first at once. As HAProxy spreads its servers' first checks: in one
/// burst, 12 to 135 of the scale bench's 1,000 backends timed out on their
/// first check (all on one backend host), and a failed first check takes a
/// healthy backend down at once. The fast interval keeps a backend dead
/// at start found within it and a timeout.
pub fn first_check_delay(spread: Duration, nth: usize, count: usize) -> Duration {
    let nanos = spread.as_nanos() * nth as u128 / count.max(1) as u128;
    // Below `spread` (nth < count), so it fits as `spread` did.
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

async fn probe(key: &CheckKey, config: &HealthConfig, source: IpAddr) -> Outcome {
    let target = config
        .port
        .map_or(key.backend, |port| SocketAddr::new(key.backend.ip(), port));
    let check = async {
        match &config.check {
            HealthCheck::Tcp => tcp_verdict(connect(target, source).await),
            HealthCheck::Http(http) => http_check(connect(target, source).await?, key, http).await,
            HealthCheck::Udp(udp) => udp_check(target, source, udp).await,
        }
    };
    tokio::time::timeout(config.timeout, check)
        .await
        .unwrap_or(Err(Failure::Timeout))
}

/// A TCP check passes once the backend completed the handshake, whatever it
/// did next. A backend that accepts and resets at once passes every time:
/// whether the connect reports that reset depends only on how soon the probe
/// task ran after the handshake, which must not decide health.
fn tcp_verdict(connected: Result<tokio::net::TcpStream, Failure>) -> Outcome {
    match connected {
        Ok(_) | Err(Failure::Reset) => Ok(()),
        Err(failure) => Err(failure),
    }
}

async fn connect(backend: SocketAddr, source: IpAddr) -> Result<tokio::net::TcpStream, Failure> {
    let socket = match backend {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| Failure::Network(e.to_string()))?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| Failure::Network(format!("cannot bind the SNAT address {source}: {e}")))?;
    socket.connect(backend).await.map_err(connect_failure)
}

/// What a failed connect says. The kernel reports a RST answering the SYN as
/// refused; a reset (or a FIN then a reset: broken pipe) came after the
/// handshake.
fn connect_failure(e: std::io::Error) -> Failure {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Failure::Refused,
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => Failure::Reset,
        _ => Failure::Network(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_checks_are_spread_evenly_over_the_fast_interval_the_first_at_once() {
        let spread = Duration::from_millis(500);
        let delays: Vec<Duration> = (0..4).map(|nth| first_check_delay(spread, nth, 4)).collect();
        assert_eq!(
            delays,
            [0, 125, 250, 375].map(Duration::from_millis),
            "a quarter of the window apart, all inside it"
        );
        let thousand: Vec<Duration> = (0..1000).map(|nth| first_check_delay(spread, nth, 1000)).collect();
        assert!(thousand.windows(2).all(|w| w[1] - w[0] == Duration::from_micros(500)));
        assert!(thousand.iter().all(|d| *d < spread));
        assert_eq!(
            first_check_delay(spread, 0, 1),
            Duration::ZERO,
            "a lone probe checks at once"
        );
    }

    /// A real probe against loopback listeners, over IPv4 and over IPv6
    /// (from a source of the backend's family): up while one listens,
    /// refused once it is gone.
    #[tokio::test]
    async fn tcp_probe_reports_refused_when_nothing_listens_over_either_family() {
        for loopback in [
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ] {
            let listener = tokio::net::TcpListener::bind((loopback, 0)).await.unwrap();
            let key = CheckKey {
                service: "web".into(),
                backend: listener.local_addr().unwrap(),
                listener: Listener::Live,
            };
            let config = HealthConfig::default();
            assert_eq!(probe(&key, &config, loopback).await, Ok(()), "{loopback}");
            drop(listener);
            assert_eq!(
                probe(&key, &config, loopback).await,
                Err(Failure::Refused),
                "{loopback}"
            );
        }
    }

    /// A backend that completes the handshake and resets the connection at
    /// once (a build that fails every request) passes a TCP check even when
    /// the probe sees the reset: catching that build is the error judge's job.
    #[tokio::test]
    async fn a_reset_after_the_handshake_passes_a_tcp_check() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        accepted.set_zero_linger().unwrap();
        drop(accepted);
        // The error a connect reports once the reset arrived: the socket's.
        let reset = std::io::Read::read(&mut client, &mut [0; 1]).unwrap_err();
        assert_eq!(connect_failure(reset), Failure::Reset);
        assert_eq!(tcp_verdict(Err(Failure::Reset)), Ok(()));
        assert_eq!(tcp_verdict(Err(Failure::Refused)), Err(Failure::Refused));
        assert_eq!(tcp_verdict(Err(Failure::Timeout)), Err(Failure::Timeout));
    }
}
