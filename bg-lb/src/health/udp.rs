//! The UDP check: one request datagram from the SNAT address, and a reply
//! that must contain the expected string.

use std::net::{IpAddr, SocketAddr};

use tokio::net::UdpSocket;

use super::{Failure, Outcome};
use crate::config::UdpCheck;

/// Replies are read up to this size; the expected string must be in it.
const MAX_REPLY: usize = 64 * 1024;

pub(super) async fn udp_check(backend: SocketAddr, source: IpAddr, check: &UdpCheck) -> Outcome {
    let socket = UdpSocket::bind((source, 0))
        .await
        .map_err(|e| Failure::Network(format!("cannot bind the SNAT address {source}: {e}")))?;
    // Connected: only the backend's replies are read, and an ICMP port
    // unreachable comes back as refused.
    socket.connect(backend).await.map_err(udp_failure)?;
    socket.send(check.request.as_bytes()).await.map_err(udp_failure)?;
    let mut reply = vec![0; MAX_REPLY];
    let len = socket.recv(&mut reply).await.map_err(udp_failure)?;
    judge_reply(&reply[..len], &check.expect)
}

/// A reply passes if it contains `expect`.
fn judge_reply(reply: &[u8], expect: &str) -> Outcome {
    let found = reply.windows(expect.len()).any(|window| window == expect.as_bytes());
    if found { Ok(()) } else { Err(Failure::ReplyMismatch) }
}

fn udp_failure(e: std::io::Error) -> Failure {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Failure::Refused,
        _ => Failure::Network(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn check() -> UdpCheck {
        UdpCheck {
            request: "ping".into(),
            expect: "pong".into(),
        }
    }

    /// Real datagrams on loopback, over IPv4 and IPv6: a backend answering
    /// with the expected string passes, one answering otherwise fails, and a
    /// port nothing listens on is refused (the ICMP port unreachable).
    #[tokio::test]
    async fn udp_check_passes_on_the_expected_reply_only() {
        for loopback in [IpAddr::from(Ipv4Addr::LOCALHOST), IpAddr::from(Ipv6Addr::LOCALHOST)] {
            udp_check_judges(loopback).await;
        }
    }

    async fn udp_check_judges(loopback: IpAddr) {
        let backend = UdpSocket::bind((loopback, 0)).await.unwrap();
        let addr: SocketAddr = backend.local_addr().unwrap();
        let check = check();
        let serve = |answer: &'static [u8]| {
            let backend = &backend;
            async move {
                let mut buf = [0; 16];
                let (len, from) = backend.recv_from(&mut buf).await.unwrap();
                assert_eq!(&buf[..len], b"ping");
                backend.send_to(answer, from).await.unwrap();
            }
        };
        let (outcome, ()) = tokio::join!(udp_check(addr, loopback, &check), serve(b"pong 1"));
        assert_eq!(outcome, Ok(()));
        let (outcome, ()) = tokio::join!(udp_check(addr, loopback, &check), serve(b"nope"));
        assert_eq!(outcome, Err(Failure::ReplyMismatch));
        drop(backend);
        assert_eq!(udp_check(addr, loopback, &check).await, Err(Failure::Refused));
    }
}
