//! The remote API's requests: `POST /v1/CMD` with the admin socket
//! command's fields as a JSON object (`GET` too, for the read-only
//! commands), answered with the admin socket's JSON reply. The request is
//! turned into the admin socket's line and goes down the same path
//! ([`crate::daemon::Daemon::handle_line`]): the same checks, persistence,
//! logs and metrics.
//!
//! Credentials come first: without a token of ours, nothing else of the
//! request is read. Status codes: 200 done, 409 refused by the daemon (the
//! reply's `error` says why), 400 unreadable, 401 no or wrong token, 403 a
//! read-only token asking for a change, 404, 405, 408 body too slow, 413
//! body too large.
//!
//! Paths under `/console` are the web console's ([`console`]).

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use http_body_util::{BodyExt as _, Full, Limited, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Body, Bytes},
    header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE},
};
use tokio::sync::mpsc;

use super::{
    auth::{RefusalLog, Role, Tokens},
    console::{self, Sessions},
};
use crate::{
    daemon::server::{Job, submit},
    protocol::{self, MAX_REQUEST_BYTES, Reply},
};

/// The path every command is under.
pub const PREFIX: &str = "/v1/";

/// What answering a request needs; shared by the listener's connections.
pub struct Api {
    pub tokens: Tokens,
    /// The daemon's request queue, the admin socket's.
    pub jobs: mpsc::Sender<Job>,
    pub refusals: RefusalLog,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    /// The console's sessions: the CSRF tokens it issued.
    pub sessions: Sessions,
}

/// A response body: a whole reply, or the console's event stream.
pub type ApiBody = BoxBody<Bytes, Infallible>;

pub async fn respond<B>(api: &Api, peer: SocketAddr, request: Request<B>) -> Response<ApiBody>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if console::serves(request.uri().path()) {
        return console::respond(api, peer, request).await;
    }
    let Some(role) = authenticate(api, peer, &request) else {
        return unauthorized();
    };
    let Some(cmd) = request.uri().path().strip_prefix(PREFIX).filter(|c| known(c)) else {
        return unknown_command(PREFIX);
    };
    let cmd = cmd.to_owned();
    command(api, peer, role, &cmd, request).await
}

/// The role the request's bearer token grants; `None` without one, the
/// refusal logged: answer [`unauthorized`].
pub fn authenticate<B>(api: &Api, peer: SocketAddr, request: &Request<B>) -> Option<Role> {
    let authorization = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    let role = api.tokens.role(authorization);
    if role.is_none() {
        let why = if authorization.is_some() {
            "wrong credentials"
        } else {
            "no credentials"
        };
        api.refusals.refused(peer, why);
    }
    role
}

/// The 401 for a request [`authenticate`] refused.
pub fn unauthorized() -> Response<ApiBody> {
    let mut response = reply(
        StatusCode::UNAUTHORIZED,
        &Reply::error("a valid bearer token is needed"),
    );
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The 404 for a path under `prefix` that names no command.
pub fn unknown_command(prefix: &str) -> Response<ApiBody> {
    let known = protocol::Request::COMMANDS.join(", ");
    let error = format!("not found: commands are POST {prefix}CMD, CMD one of {known}");
    reply(StatusCode::NOT_FOUND, &Reply::error(error))
}

/// Runs the known command `cmd`, for a client with `role`, with the
/// request's body as its fields: down the admin socket's path.
pub async fn command<B>(api: &Api, peer: SocketAddr, role: Role, cmd: &str, request: Request<B>) -> Response<ApiBody>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = request.method().clone();
    if method != Method::POST && method != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &Reply::error("use POST (or GET to read)"),
        );
    }
    let body = match tokio::time::timeout(
        api.body_timeout,
        Limited::new(request.into_body(), MAX_REQUEST_BYTES).collect(),
    )
    .await
    {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(_)) => {
            let error = format!("request body over {} KiB, or broken", MAX_REQUEST_BYTES / 1024);
            return reply(StatusCode::PAYLOAD_TOO_LARGE, &Reply::error(error));
        }
        Err(_) => return reply(StatusCode::REQUEST_TIMEOUT, &Reply::error("request body too slow")),
    };
    let parsed = match line(cmd, &body) {
        Ok(line) => protocol::parse_request(&line),
        Err(e) => Err(e),
    };
    let request = match parsed {
        Ok(request) => request,
        Err(e) => return reply(StatusCode::BAD_REQUEST, &Reply::error(e)),
    };
    if !request.is_read_only() && method == Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &Reply::error(format!("{cmd} changes things: POST it")),
        );
    }
    if !request.is_read_only() && role == Role::ReadOnly {
        api.refusals.refused(peer, "a read-only token asked for a change");
        return reply(
            StatusCode::FORBIDDEN,
            &Reply::error(format!("{cmd} needs the admin token")),
        );
    }
    let answer = submit(&api.jobs, serde_json::to_string(&request).expect("requests serialize")).await;
    let status = if answer.ok {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    reply(status, &answer)
}

pub fn known(cmd: &str) -> bool {
    protocol::Request::COMMANDS.contains(&cmd)
}

/// The admin socket line for `cmd` with `body`'s fields (none when empty).
fn line(cmd: &str, body: &[u8]) -> Result<String, String> {
    let mut fields = if body.trim_ascii().is_empty() {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice(body) {
            Ok(serde_json::Value::Object(fields)) => fields,
            Ok(_) => return Err("bad request: the body must be a JSON object".into()),
            Err(e) => return Err(format!("bad request: {e}")),
        }
    };
    if fields.contains_key("cmd") {
        return Err("bad request: the command comes from the path, not a \"cmd\" field".into());
    }
    fields.insert("cmd".into(), cmd.into());
    Ok(serde_json::Value::Object(fields).to_string())
}

pub fn reply(status: StatusCode, reply: &Reply) -> Response<ApiBody> {
    let mut body = serde_json::to_vec(reply).expect("replies serialize");
    body.push(b'\n');
    whole(status, "application/json", Bytes::from(body))
}

/// A response with a whole body.
pub fn whole(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<ApiBody> {
    let mut response = Response::new(Full::new(body).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
pub(in crate::api) mod tests;
