//! The HTTP app: its endpoints and the role state they share across
//! connections.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ALLOW, CONTENT_TYPE, HeaderName, HeaderValue},
};
use serde::Serialize;

use super::args::{AppConfig, Role};

/// Longest `/slow` delay: long enough for any drain test, short enough that a
/// typo cannot park a connection for days.
const MAX_SLOW_MS: u64 = 600_000;

const X_BACKEND: HeaderName = HeaderName::from_static("x-backend");

/// The state the HTTP endpoints share across connections.
pub(super) struct App {
    name: String,
    version: String,
    backend_header: HeaderValue,
    /// The role as a flag, so a switch is one atomic store.
    live: AtomicBool,
    requests: AtomicU64,
}

/// What a path names; the method is checked separately so a wrong one is a
/// 405 rather than a 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Status,
    Check(Role),
    Enable(Role),
    Slow,
}

impl Endpoint {
    fn of(path: &str) -> Option<Self> {
        Some(match path {
            "/" => Endpoint::Status,
            "/live" => Endpoint::Check(Role::Live),
            "/standby" => Endpoint::Check(Role::Standby),
            "/enable/live" => Endpoint::Enable(Role::Live),
            "/enable/standby" => Endpoint::Enable(Role::Standby),
            "/slow" => Endpoint::Slow,
            _ => return None,
        })
    }

    /// The methods allowed, as the `Allow` header spells them.
    fn allow(self) -> &'static str {
        match self {
            Endpoint::Enable(_) => "POST",
            _ => "GET, HEAD",
        }
    }

    fn allows(self, method: &Method) -> bool {
        match self {
            Endpoint::Enable(_) => method == Method::POST,
            // hyper leaves the body out of HEAD responses itself.
            _ => method == Method::GET || method == Method::HEAD,
        }
    }
}

#[derive(Serialize)]
struct Status<'a> {
    name: &'a str,
    version: &'a str,
    role: Role,
    requests: u64,
}

impl App {
    pub(super) fn new(config: AppConfig) -> anyhow::Result<Self> {
        let backend_header = HeaderValue::from_str(&config.name)
            .with_context(|| format!("backend name {:?} cannot be an HTTP header value", config.name))?;
        Ok(App {
            name: config.name,
            version: config.version,
            backend_header,
            live: AtomicBool::new(config.role == Role::Live),
            requests: AtomicU64::new(0),
        })
    }

    fn role(&self) -> Role {
        if self.live.load(Ordering::SeqCst) {
            Role::Live
        } else {
            Role::Standby
        }
    }

    pub(super) async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        // Counted on arrival, so every endpoint counts and `/` includes itself.
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut response = match Endpoint::of(request.uri().path()) {
            None => text(StatusCode::NOT_FOUND, "not found\n"),
            Some(endpoint) if !endpoint.allows(request.method()) => {
                let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(endpoint.allow()));
                response
            }
            Some(endpoint) => self.respond(endpoint, request.uri().query()).await,
        };
        response.headers_mut().insert(X_BACKEND, self.backend_header.clone());
        response
    }

    async fn respond(&self, endpoint: Endpoint, query: Option<&str>) -> Response<Full<Bytes>> {
        match endpoint {
            Endpoint::Status => self.status(),
            Endpoint::Check(asked) => {
                let role = self.role();
                let code = if role == asked {
                    StatusCode::OK
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                text(code, role_line(role))
            }
            Endpoint::Enable(role) => {
                let was_live = self.live.swap(role == Role::Live, Ordering::SeqCst);
                let previous = if was_live { Role::Live } else { Role::Standby };
                tracing::info!(name = %self.name, from = %previous, to = %role, "role switched");
                text(StatusCode::OK, role_line(role))
            }
            Endpoint::Slow => match slow_delay(query) {
                Some(delay) => {
                    tokio::time::sleep(delay).await;
                    self.status()
                }
                None => text(StatusCode::BAD_REQUEST, "want /slow?ms=MILLISECONDS\n"),
            },
        }
    }

    fn status(&self) -> Response<Full<Bytes>> {
        let status = Status {
            name: &self.name,
            version: &self.version,
            role: self.role(),
            requests: self.requests.load(Ordering::SeqCst),
        };
        // Serializing strings and numbers cannot fail.
        let mut body = serde_json::to_string(&status).unwrap_or_default();
        body.push('\n');
        response(StatusCode::OK, "application/json", body)
    }
}

fn role_line(role: Role) -> &'static str {
    match role {
        Role::Live => "live\n",
        Role::Standby => "standby\n",
    }
}

/// The `ms` query parameter of `/slow`, capped at [`MAX_SLOW_MS`].
fn slow_delay(query: Option<&str>) -> Option<Duration> {
    let ms: u64 = query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))?
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms.min(MAX_SLOW_MS)))
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body)
}

fn response(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::demo_backend::test_client::{Backend, Client, call, get, post};

    #[tokio::test]
    async fn root_reports_name_version_role_and_a_request_count_including_itself() {
        let backend = Backend::start(Role::Live, 0).await;
        let reply = get(backend.addr, "/").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.headers[CONTENT_TYPE], "application/json");
        assert!(reply.body.ends_with('\n') && reply.body.trim_end().lines().count() == 1);
        assert_eq!(
            reply.json(),
            serde_json::json!({"name": "blue-1", "version": "v7", "role": "live", "requests": 1})
        );
        // Every endpoint counts, 404s included.
        get(backend.addr, "/live").await;
        get(backend.addr, "/no-such-page").await;
        assert_eq!(get(backend.addr, "/").await.json()["requests"], 4);
    }

    #[tokio::test]
    async fn a_live_instance_answers_200_on_live_and_500_on_standby() {
        let backend = Backend::start(Role::Live, 0).await;
        let live = get(backend.addr, "/live").await;
        assert_eq!((live.status, live.body.as_str()), (StatusCode::OK, "live\n"));
        let standby = get(backend.addr, "/standby").await;
        assert_eq!(
            (standby.status, standby.body.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, "live\n")
        );
    }

    #[tokio::test]
    async fn a_standby_instance_answers_200_on_standby_and_500_on_live() {
        let backend = Backend::start(Role::Standby, 0).await;
        let live = get(backend.addr, "/live").await;
        assert_eq!(
            (live.status, live.body.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, "standby\n")
        );
        let standby = get(backend.addr, "/standby").await;
        assert_eq!((standby.status, standby.body.as_str()), (StatusCode::OK, "standby\n"));
        assert_eq!(get(backend.addr, "/").await.json()["role"], "standby");
    }

    #[tokio::test]
    async fn enable_standby_flips_both_endpoints_and_enable_live_flips_them_back() {
        let backend = Backend::start(Role::Live, 0).await;

        let switched = post(backend.addr, "/enable/standby").await;
        assert_eq!((switched.status, switched.body.as_str()), (StatusCode::OK, "standby\n"));
        assert_eq!(
            get(backend.addr, "/live").await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(get(backend.addr, "/standby").await.status, StatusCode::OK);
        assert_eq!(get(backend.addr, "/").await.json()["role"], "standby");

        let switched = post(backend.addr, "/enable/live").await;
        assert_eq!((switched.status, switched.body.as_str()), (StatusCode::OK, "live\n"));
        assert_eq!(get(backend.addr, "/live").await.status, StatusCode::OK);
        assert_eq!(
            get(backend.addr, "/standby").await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );

        // Enabling the current role again is harmless.
        assert_eq!(post(backend.addr, "/enable/live").await.status, StatusCode::OK);
        assert_eq!(get(backend.addr, "/live").await.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn slow_answers_with_the_status_json_after_the_delay() {
        let backend = Backend::start(Role::Live, 0).await;
        let started = Instant::now();
        let reply = get(backend.addr, "/slow?ms=200").await;
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["name"], "blue-1");
        assert_eq!(reply.json()["requests"], 1);
        // Other query parameters are ignored.
        assert_eq!(get(backend.addr, "/slow?x=1&ms=0").await.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn slow_with_a_bad_or_missing_ms_is_a_400() {
        let backend = Backend::start(Role::Live, 0).await;
        for path in [
            "/slow",
            "/slow?",
            "/slow?ms=",
            "/slow?ms=abc",
            "/slow?ms=-1",
            "/slow?ms=1.5",
        ] {
            assert_eq!(get(backend.addr, path).await.status, StatusCode::BAD_REQUEST, "{path}");
        }
    }

    #[test]
    fn slow_delays_are_capped_at_ten_minutes() {
        assert_eq!(slow_delay(Some("ms=250")), Some(Duration::from_millis(250)));
        assert_eq!(slow_delay(Some("ms=600000")), Some(Duration::from_secs(600)));
        assert_eq!(
            slow_delay(Some("ms=18446744073709551615")),
            Some(Duration::from_secs(600))
        );
        assert_eq!(slow_delay(Some("ms=18446744073709551616")), None);
        assert_eq!(slow_delay(None), None);
    }

    #[tokio::test]
    async fn unknown_paths_are_404() {
        let backend = Backend::start(Role::Live, 0).await;
        for path in ["/nope", "/enable", "/enable/blue", "/live/", "/slowly"] {
            assert_eq!(get(backend.addr, path).await.status, StatusCode::NOT_FOUND, "{path}");
        }
        assert_eq!(post(backend.addr, "/nope").await.status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_known_path_with_the_wrong_method_is_405_and_names_the_allowed_ones() {
        let backend = Backend::start(Role::Live, 0).await;
        for path in ["/", "/live", "/standby", "/slow?ms=1"] {
            let reply = post(backend.addr, path).await;
            assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
            assert_eq!(reply.headers[ALLOW], "GET, HEAD");
        }
        for path in ["/enable/live", "/enable/standby"] {
            let reply = get(backend.addr, path).await;
            assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
            assert_eq!(reply.headers[ALLOW], "POST");
        }
        let reply = call(backend.addr, Method::PUT, "/enable/standby").await.unwrap();
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
        // A refused switch leaves the role alone.
        assert_eq!(get(backend.addr, "/live").await.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn head_works_where_get_does() {
        let backend = Backend::start(Role::Live, 0).await;
        let reply = call(backend.addr, Method::HEAD, "/live").await.unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, ""));
    }

    #[tokio::test]
    async fn every_response_names_the_backend_in_x_backend() {
        let backend = Backend::start(Role::Live, 0).await;
        let replies = [
            get(backend.addr, "/").await,
            get(backend.addr, "/live").await,
            get(backend.addr, "/standby").await,
            get(backend.addr, "/slow").await,
            get(backend.addr, "/nope").await,
            get(backend.addr, "/enable/live").await,
            post(backend.addr, "/enable/live").await,
        ];
        for reply in replies {
            assert_eq!(reply.headers["x-backend"], "blue-1", "status {}", reply.status);
        }
    }

    #[tokio::test]
    async fn a_keep_alive_connection_serves_several_requests() {
        let backend = Backend::start(Role::Live, 0).await;
        let mut client = Client::connect(backend.addr).await.unwrap();
        assert_eq!(client.request(Method::GET, "/").await.unwrap().json()["requests"], 1);
        assert_eq!(
            client.request(Method::GET, "/live").await.unwrap().status,
            StatusCode::OK
        );
        assert_eq!(client.request(Method::GET, "/").await.unwrap().json()["requests"], 3);
        assert!(
            !client.connection.is_finished(),
            "the server closed a keep-alive connection"
        );
    }

    #[test]
    fn a_name_that_cannot_be_a_header_value_is_rejected() {
        let config = AppConfig {
            name: "bad\nname".into(),
            version: "v1".into(),
            role: Role::Live,
            fail_percent: 0,
        };
        assert!(App::new(config).is_err());
    }
}
