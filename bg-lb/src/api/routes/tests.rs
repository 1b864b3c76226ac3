use std::sync::{Arc, Mutex};

use hyper::header::HeaderValue;
use tokio::sync::oneshot;

use super::*;
use crate::{protocol::Request as Command, ratio::Ratio};

pub(in crate::api) const ADMIN: &str = "admin-token-0123456789";
pub(in crate::api) const VIEWER: &str = "viewer-token-0123456789";

/// An API over a daemon stand-in that records each line it is sent and
/// answers `ok` unless the line asks for service "nope".
pub(in crate::api) fn api() -> (Api, Arc<Mutex<Vec<String>>>) {
    let (jobs, mut queue) = mpsc::channel::<Job>(8);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Some((line, answer)) = queue.recv().await {
            let reply = if line.contains("\"nope\"") {
                Reply::error("no service \"nope\"")
            } else {
                Reply::done("done")
            };
            record.lock().unwrap().push(line);
            let _: Result<(), _> = oneshot::Sender::send(answer, reply);
        }
    });
    let api = Api {
        tokens: Tokens::new(ADMIN.into(), Some(VIEWER.into())),
        jobs,
        refusals: RefusalLog::default(),
        body_timeout: Duration::from_secs(5),
        sessions: Sessions::default(),
    };
    (api, seen)
}

async fn call(api: &Api, method: Method, path: &str, token: Option<&str>, body: &str) -> (StatusCode, Reply) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
    }
    let request = request.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let response = respond(api, "127.0.0.1:1234".parse().unwrap(), request).await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn the_admin_token_sends_the_command_down_the_admin_socket_path() {
    let (api, seen) = api();
    let (status, reply) = call(
        &api,
        Method::POST,
        "/v1/ratio",
        Some(ADMIN),
        r#"{"service":"web","ratio":"30:70"}"#,
    )
    .await;
    assert_eq!((status, reply.ok), (StatusCode::OK, true), "{reply:?}");
    let lines = seen.lock().unwrap().clone();
    assert_eq!(lines.len(), 1);
    assert_eq!(
        protocol::parse_request(&lines[0]).unwrap(),
        Command::Ratio(protocol::RatioRequest {
            service: "web".into(),
            ratio: Ratio::new(30).unwrap(),
            force: false,
        })
    );
}

#[tokio::test]
async fn missing_or_wrong_credentials_get_401_and_reach_nothing() {
    let (api, seen) = api();
    for token in [None, Some("admin-token-012345678"), Some("wrong")] {
        for (method, path) in [
            (Method::POST, "/v1/ratio"),
            (Method::GET, "/v1/status"),
            (Method::GET, "/nowhere"),
        ] {
            let (status, reply) = call(&api, method, path, token, r#"{"service":"web","ratio":"0:100"}"#).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?} {path}");
            assert!(!reply.ok);
        }
    }
    assert!(seen.lock().unwrap().is_empty(), "a refused request reached the daemon");
}

#[tokio::test]
async fn a_read_only_token_reads_but_cannot_change_anything() {
    let (api, seen) = api();
    let (status, _) = call(&api, Method::GET, "/v1/status", Some(VIEWER), "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&api, Method::POST, "/v1/flows", Some(VIEWER), r#"{"service":"web"}"#).await;
    assert_eq!(status, StatusCode::OK);
    for (path, body) in [
        ("/v1/ratio", r#"{"service":"web","ratio":"0:100"}"#),
        (
            "/v1/backend-add",
            r#"{"service":"web","address":"10.0.0.9:80","pool":"blue"}"#,
        ),
        ("/v1/reload", ""),
    ] {
        let (status, reply) = call(&api, Method::POST, path, Some(VIEWER), body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {reply:?}");
    }
    assert_eq!(seen.lock().unwrap().len(), 2, "only the two reads reached the daemon");
}

#[tokio::test]
async fn malformed_requests_are_refused_before_the_daemon() {
    let (api, seen) = api();
    let big = format!(r#"{{"service":"{}"}}"#, "x".repeat(MAX_REQUEST_BYTES));
    let cases = [
        (Method::POST, "/v1/explode", "", StatusCode::NOT_FOUND),
        (Method::POST, "/v1/ratio", "not json", StatusCode::BAD_REQUEST),
        (Method::POST, "/v1/ratio", "[1]", StatusCode::BAD_REQUEST),
        (
            Method::POST,
            "/v1/ratio",
            r#"{"service":"web"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/v1/status",
            r#"{"cmd":"reload"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (Method::POST, "/v1/status", big.as_str(), StatusCode::PAYLOAD_TOO_LARGE),
        (Method::GET, "/v1/reload", "", StatusCode::METHOD_NOT_ALLOWED),
        (Method::DELETE, "/v1/status", "", StatusCode::METHOD_NOT_ALLOWED),
    ];
    for (method, path, body, expected) in cases {
        let (status, reply) = call(&api, method.clone(), path, Some(ADMIN), body).await;
        assert_eq!(status, expected, "{method} {path}: {reply:?}");
        assert!(!reply.ok && reply.error.is_some());
    }
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_command_the_daemon_refuses_is_a_409_with_its_reason() {
    let (api, _) = api();
    let (status, reply) = call(&api, Method::POST, "/v1/rollback", Some(ADMIN), r#"{"service":"nope"}"#).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(reply.error.as_deref(), Some("no service \"nope\""));
}
