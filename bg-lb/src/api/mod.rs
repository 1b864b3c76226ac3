//! The remote API (`[api]`, off by default): the admin socket's commands
//! over HTTP+JSON, for CI/CD pipelines, Argo Rollouts or Flagger webhooks
//! and a web console. Bearer tokens from files ([`auth`]), admin or
//! read-only; TLS through rustls when `[api]` names a certificate
//! ([`tls`]); the commands themselves in [`routes`], which hands each to
//! the daemon's request queue, the admin socket's.
//!
//! The same listener serves the web console ([`console`]): its page, its
//! event stream and its actions, behind the same [`auth::Tokens`] and
//! connection limits.

pub mod auth;
pub mod console;
pub mod routes;
pub mod tls;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::mpsc};
use tokio_rustls::TlsAcceptor;

use self::{
    auth::{RefusalLog, Tokens},
    console::Sessions,
    routes::Api,
};
use crate::{
    config::{ApiConfig, ListenerLimits},
    connection_slots::{ConnectionSlots, serve_http},
    daemon::server::Job,
};

const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why the remote API cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("api token file {path}: {cause}")]
    TokenFile { path: PathBuf, cause: std::io::Error },
    #[error("api token file {path} can be read by other users: chmod o-rwx it (a token is a password)")]
    TokenReadableByOthers { path: PathBuf },
    #[error(
        "api token file {path}: the token must be at least {} printable characters without spaces \
         (e.g. `openssl rand -hex 32`)",
        auth::MIN_TOKEN_LEN
    )]
    BadToken { path: PathBuf },
    #[error("api TLS file {path}: {cause}")]
    Tls { path: PathBuf, cause: String },
    #[error("binding the api listener {addr}: {cause}")]
    Bind { addr: SocketAddr, cause: std::io::Error },
}

/// Reads the tokens and TLS files, binds `[api] listen` and serves there
/// until the task is dropped, sending commands to `jobs`.
pub async fn start(config: &ApiConfig, jobs: mpsc::Sender<Job>) -> Result<(), ApiError> {
    let tokens = Tokens::load(config)?;
    let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
    let addr = SocketAddr::V4(config.listen);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|cause| ApiError::Bind { addr, cause })?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    if tls.is_none() && !config.listen.ip().is_loopback() {
        tracing::warn!(%addr, "the remote API serves plain HTTP beyond loopback: tokens cross the network in clear; set [api] tls_cert and tls_key");
    }
    tracing::info!(
        "serving the remote API at {scheme}://{addr}{} and the console at {scheme}://{addr}{}",
        routes::PREFIX,
        console::PREFIX
    );
    let api = Api {
        tokens,
        jobs,
        refusals: RefusalLog::default(),
        body_timeout: config.limits.idle_timeout,
        sessions: Sessions::default(),
    };
    tokio::spawn(serve(listener, tls, Arc::new(api), config.limits));
    Ok(())
}

/// Accepts connections, at most `limits.max_connections` at once (a new one
/// closes the longest-idle one when full).
pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, api: Arc<Api>, limits: ListenerLimits) {
    let slots = ConnectionSlots::new(limits.max_connections as usize);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "api accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(slot) = slots.admit() else {
            tracing::warn!(%peer, "every api connection is busy with a request; closing this one");
            continue;
        };
        let (api, tls) = (api.clone(), tls.clone());
        tokio::spawn(async move {
            let handler = move |request| {
                let api = api.clone();
                async move { routes::respond(&api, peer, request).await }
            };
            match tls {
                None => serve_http(stream, peer, slot, limits.idle_timeout, "api", handler).await,
                Some(tls) => match tokio::time::timeout(limits.idle_timeout, tls.accept(stream)).await {
                    Ok(Ok(stream)) => serve_http(stream, peer, slot, limits.idle_timeout, "api", handler).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "api TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "api TLS handshake timed out"),
                },
            }
        });
    }
}
