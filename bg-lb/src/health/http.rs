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
    let path = match key.listener {
        Listener::Live => &http.live_path,
        Listener::Standby => &http.standby_path,
    };
    let host = http.host.clone().unwrap_or_else(|| key.backend.to_string());
    let read_body = http.expect_body.is_some();
    let (status, body) = get(stream, &host, path, "bg-lb-health-check", read_body)
        .await
        .map_err(Failure::BadResponse)?;
    judge_response(http, status, body.as_deref())
}

/// One `GET path` over `stream` (then closed): the status, and with
/// `read_body` the body, if it arrives whole and within [`MAX_BODY`] bytes.
/// The health checks and the shifts' analysis hooks send theirs with it.
pub(crate) async fn get(
    stream: tokio::net::TcpStream,
    host: &str,
    path: &str,
    user_agent: &str,
    read_body: bool,
) -> Result<(u16, Option<Bytes>), String> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header("Host", host)
        .header("User-Agent", user_agent)
        .header("Connection", "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = if read_body {
        Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .ok()
    } else {
        None
    };
    Ok((status, body))
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
