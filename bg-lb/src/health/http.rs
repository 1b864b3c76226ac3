//! The HTTP check: the request it sends over a connected probe socket, and
//! how the response is judged.

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;

use super::{CheckKey, Failure, Listener, Outcome};
use crate::config::HttpCheck;

/// Bodies larger than this fail an `expect_body` check.
const MAX_BODY: usize = 64 * 1024;

pub(super) async fn http_check(stream: tokio::net::TcpStream, key: &CheckKey, http: &HttpCheck) -> Outcome {
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
}
