//! The UDP check: one request datagram from the SNAT address, and a reply
//! that must contain the expected string.

use std::net::{Ipv4Addr, SocketAddrV4};

use tokio::net::UdpSocket;

use super::{Failure, Outcome};
use crate::config::UdpCheck;

/// Replies are read up to this size; the expected string must be in it.
const MAX_REPLY: usize = 64 * 1024;

pub(super) async fn udp_check(backend: SocketAddrV4, source: Ipv4Addr, check: &UdpCheck) -> Outcome {
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
    use std::net::SocketAddr;

    use super::*;

    fn check() -> UdpCheck {
        UdpCheck {
            request: "ping".into(),
            expect: "pong".into(),
        }
    }

    async fn bound() -> (UdpSocket, SocketAddrV4) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(addr) = socket.local_addr().unwrap() else {
            unreachable!()
        };
        (socket, addr)
    }

    /// Real datagrams on loopback: a backend answering with the expected
    /// string passes, one answering otherwise fails, and a port nothing
    /// listens on is refused (the ICMP port unreachable).
    #[tokio::test]
    async fn udp_check_passes_on_the_expected_reply_only() {
        let (backend, addr) = bound().await;
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
        let (outcome, ()) = tokio::join!(udp_check(addr, Ipv4Addr::LOCALHOST, &check), serve(b"pong 1"));
        assert_eq!(outcome, Ok(()));
        let (outcome, ()) = tokio::join!(udp_check(addr, Ipv4Addr::LOCALHOST, &check), serve(b"nope"));
        assert_eq!(outcome, Err(Failure::ReplyMismatch));
        drop(backend);
        assert_eq!(
            udp_check(addr, Ipv4Addr::LOCALHOST, &check).await,
            Err(Failure::Refused)
        );
    }
}
