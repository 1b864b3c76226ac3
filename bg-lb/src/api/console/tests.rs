use hyper::{HeaderMap, header::AUTHORIZATION};

use super::*;
use crate::api::routes::tests::{ADMIN, VIEWER, api};

const PEER: &str = "127.0.0.1:1234";

async fn call(
    api: &Api,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, HeaderMap, Bytes) {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(http_body_util::Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = respond(api, PEER.parse().unwrap(), request).await;
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Signs in with `token`: the role and CSRF token the page gets.
async fn sign_in(api: &Api, token: &str) -> (String, String) {
    let (status, _, body) = call(
        api,
        Method::POST,
        "/console/session",
        &[(AUTHORIZATION.as_str(), bearer(token).as_str())],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    (
        value["role"].as_str().unwrap().into(),
        value["csrf"].as_str().unwrap().into(),
    )
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_from_the_binary_with_a_strict_policy() {
    let (api, seen) = api();
    for (path, kind, needle) in [
        ("/console", "text/html", "/console/console.js"),
        ("/console/console.js", "text/javascript", "/console/events"),
        ("/console/console.css", "text/css", "@media"),
    ] {
        let (status, headers, body) = call(&api, Method::GET, path, &[], "").await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(headers[CONTENT_TYPE].to_str().unwrap().starts_with(kind), "{path}");
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"));
        assert!(String::from_utf8_lossy(&body).contains(needle), "{path}");
    }
    let (status, headers, _) = call(&api, Method::GET, "/console/nothing", &[], "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(headers.contains_key("content-security-policy"));
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn signing_in_gives_the_tokens_role_and_a_fresh_csrf_token_and_a_wrong_token_nothing() {
    let (api, _) = api();
    let (role, admin_csrf) = sign_in(&api, ADMIN).await;
    assert_eq!(role, "admin");
    let (role, viewer_csrf) = sign_in(&api, VIEWER).await;
    assert_eq!(role, "read-only");
    assert_ne!(admin_csrf, viewer_csrf);
    let (status, _, body) = call(
        &api,
        Method::POST,
        "/console/session",
        &[("authorization", "Bearer wrong-token-0123456789")],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!String::from_utf8_lossy(&body).contains("csrf"));
    let (status, _, _) = call(&api, Method::GET, "/console/events", &[], "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no live view without a token");
}

#[tokio::test]
async fn an_action_needs_the_bearer_token_and_its_sessions_csrf_token() {
    let (api, seen) = api();
    let (_, csrf) = sign_in(&api, ADMIN).await;
    let (_, viewer_csrf) = sign_in(&api, VIEWER).await;
    let auth = bearer(ADMIN);
    let body = r#"{"service":"web","ratio":"30:70"}"#;
    for csrf_header in [None, Some("0".repeat(64)), Some(viewer_csrf.clone())] {
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(csrf) = &csrf_header {
            headers.push((CSRF_HEADER, csrf.as_str()));
        }
        let (status, _, reply) = call(&api, Method::POST, "/console/cmd/ratio", &headers, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{csrf_header:?}: {reply:?}");
    }
    let (status, _, _) = call(
        &api,
        Method::POST,
        "/console/cmd/ratio",
        &[(CSRF_HEADER, csrf.as_str())],
        body,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a CSRF token is no credential");
    let (status, _, _) = call(
        &api,
        Method::GET,
        "/console/cmd/ratio",
        &[("authorization", auth.as_str()), (CSRF_HEADER, csrf.as_str())],
        body,
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(seen.lock().unwrap().is_empty(), "a refused action reached the daemon");

    let headers = [("authorization", auth.as_str()), (CSRF_HEADER, csrf.as_str())];
    let (status, _, reply) = call(&api, Method::POST, "/console/cmd/ratio", &headers, body).await;
    assert_eq!(status, StatusCode::OK, "{reply:?}");
    let lines = seen.lock().unwrap().clone();
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].contains(r#""cmd":"ratio""#) && lines[0].contains(r#""ratio":"30:70""#),
        "{lines:?}"
    );
    let (status, _, _) = call(&api, Method::POST, "/console/cmd/explode", &headers, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_read_only_session_with_its_csrf_token_is_still_refused_any_change() {
    let (api, seen) = api();
    let (_, csrf) = sign_in(&api, VIEWER).await;
    let auth = bearer(VIEWER);
    let headers = [("authorization", auth.as_str()), (CSRF_HEADER, csrf.as_str())];
    let (status, _, _) = call(
        &api,
        Method::POST,
        "/console/cmd/drain",
        &headers,
        r#"{"service":"web","pool":"green"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_event_stream_carries_the_daemons_status_reply() {
    let (api, seen) = api();
    let (status, headers, mut body) = {
        let request = Request::builder()
            .uri("/console/events")
            .header("authorization", bearer(VIEWER))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = respond(&api, PEER.parse().unwrap(), request).await;
        let (parts, body) = response.into_parts();
        (parts.status, parts.headers, body)
    };
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[CONTENT_TYPE], "text/event-stream");
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let text = String::from_utf8(frame.to_vec()).unwrap();
    assert!(text.starts_with("event: status\ndata: {"), "{text}");
    assert!(text.contains(r#""ok":true"#), "{text}");
    let asked = seen.lock().unwrap().clone();
    assert!(
        !asked.is_empty() && asked.iter().all(|l| l == r#"{"cmd":"status"}"#),
        "{asked:?}"
    );
}
