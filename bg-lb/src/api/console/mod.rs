//! The web console: one page, served on the remote API's listener, with
//! its script and style embedded in the binary (no CDN, works offline).
//!
//! - `GET /console` (and `/console/console.js`, `/console/console.css`):
//!   the page. It holds no data: anyone who reaches the listener may load
//!   it, and it asks for the token.
//! - `POST /console/session` with a bearer token: the token's role and a
//!   CSRF token for this page ([`sessions`]).
//! - `GET /console/events` with a bearer token: the live status
//!   ([`events`]).
//! - `POST /console/cmd/CMD` with a bearer token and the session's CSRF
//!   token: an admin command, down the same path as `POST /v1/CMD`, so the
//!   admin socket's checks, persistence and logs apply and a read-only
//!   token gets 403.

pub mod events;
pub mod sessions;

use std::net::SocketAddr;

use http_body_util::BodyExt as _;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Body, Bytes},
    header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue},
};

pub use self::sessions::{CSRF_HEADER, Sessions};
use super::{
    auth::Role,
    routes::{Api, ApiBody, authenticate, command, known, reply, unauthorized, unknown_command, whole},
};
use crate::protocol::Reply;

/// The console's path; everything under it is the console's.
pub const PREFIX: &str = "/console";
/// Where actions go: `POST /console/cmd/CMD`.
const CMD_PREFIX: &str = "/console/cmd/";

const INDEX_HTML: &str = include_str!("assets/index.html");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");

/// Headers on every console response: only our own script and style run,
/// no other site may frame the page, nothing is cached or leaks a referrer.
const HARDENING: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
         img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

/// Whether `path` is the console's.
pub fn serves(path: &str) -> bool {
    path == PREFIX || path.strip_prefix(PREFIX).is_some_and(|rest| rest.starts_with('/'))
}

pub async fn respond<B>(api: &Api, peer: SocketAddr, request: Request<B>) -> Response<ApiBody>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = request.uri().path().to_owned();
    let get = request.method() == Method::GET;
    let post = request.method() == Method::POST;
    let mut response = match path.as_str() {
        "/console" | "/console/" if get => whole(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML.into()),
        "/console/console.js" if get => whole(StatusCode::OK, "text/javascript; charset=utf-8", CONSOLE_JS.into()),
        "/console/console.css" if get => whole(StatusCode::OK, "text/css; charset=utf-8", CONSOLE_CSS.into()),
        "/console/session" if post => session(api, peer, &request),
        "/console/events" if get => match authenticate(api, peer, &request) {
            Some(_) => event_stream(api),
            None => unauthorized(),
        },
        _ => match path.strip_prefix(CMD_PREFIX) {
            Some(cmd) if post => action(api, peer, cmd.to_owned(), request).await,
            Some(_) => reply(StatusCode::METHOD_NOT_ALLOWED, &Reply::error("actions are POSTed")),
            None => reply(StatusCode::NOT_FOUND, &Reply::error("not found")),
        },
    };
    for (name, value) in HARDENING {
        response
            .headers_mut()
            .insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    response
}

/// Signs a page in: its token's role and a new CSRF token.
fn session<B>(api: &Api, peer: SocketAddr, request: &Request<B>) -> Response<ApiBody> {
    let Some(role) = authenticate(api, peer, request) else {
        return unauthorized();
    };
    let csrf = match api.sessions.open(role) {
        Ok(csrf) => csrf,
        Err(e) => {
            tracing::warn!(error = %e, "console session: no random bytes");
            return reply(StatusCode::INTERNAL_SERVER_ERROR, &Reply::error("no random bytes"));
        }
    };
    let role = match role {
        Role::Admin => "admin",
        Role::ReadOnly => "read-only",
    };
    let body = serde_json::json!({ "ok": true, "role": role, "csrf": csrf }).to_string();
    whole(StatusCode::OK, "application/json", Bytes::from(body))
}

fn event_stream(api: &Api) -> Response<ApiBody> {
    let mut response = Response::new(events::EventStream::start(api.jobs.clone()).boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An action: credentials first, then the session's CSRF token, then the
/// command, as `POST /v1/CMD` runs it.
async fn action<B>(api: &Api, peer: SocketAddr, cmd: String, request: Request<B>) -> Response<ApiBody>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(role) = authenticate(api, peer, &request) else {
        return unauthorized();
    };
    let csrf = request.headers().get(CSRF_HEADER).map(HeaderValue::as_bytes);
    if !api.sessions.check(role, csrf) {
        api.refusals
            .refused(peer, "a console action without its session's CSRF token");
        return reply(
            StatusCode::FORBIDDEN,
            &Reply::error(format!(
                "a console action needs its session's {CSRF_HEADER} header: sign in again"
            )),
        );
    }
    if !known(&cmd) {
        return unknown_command(CMD_PREFIX);
    }
    command(api, peer, role, &cmd, request).await
}

#[cfg(test)]
mod tests;
