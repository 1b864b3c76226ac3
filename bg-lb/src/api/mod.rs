//! The remote API (`[api]`, off by default): the admin socket's commands
//! over HTTP+JSON, for CI/CD pipelines, Argo Rollouts or Flagger webhooks
//! and a web console. Bearer tokens from files ([`auth`]), admin or
//! read-only; TLS through rustls when `[api]` names a certificate
//! ([`tls`]); the commands themselves in [`routes`], which hands each to
//! the daemon's request queue, the admin socket's.
//!
//! The listener is built to carry more than commands: a console's pages
//! and event stream would be more routes behind the same [`auth::Tokens`]
//! and connection limits.

pub mod auth;
pub mod routes;
pub mod tls;

use std::{convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::mpsc,
};
use tokio_rustls::TlsAcceptor;

use self::{
    auth::{RefusalLog, Tokens},
    routes::Api,
};
use crate::{
    config::{ApiConfig, ListenerLimits},
    connection_slots::{ConnectionSlots, Slot},
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
    tracing::info!("serving the remote API at {scheme}://{addr}{}", routes::PREFIX);
    let api = Api {
        tokens,
        jobs,
        refusals: RefusalLog::default(),
        body_timeout: config.limits.idle_timeout,
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
            match tls {
                None => serve_connection(stream, peer, api, slot, limits.idle_timeout).await,
                Some(tls) => match tokio::time::timeout(limits.idle_timeout, tls.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(stream, peer, api, slot, limits.idle_timeout).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "api TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "api TLS handshake timed out"),
                },
            }
        });
    }
}

/// One connection (plain or TLS), until the client closes it, it idles past
/// `idle_timeout`, or a new connection takes its slot.
async fn serve_connection<S>(stream: S, peer: SocketAddr, api: Arc<Api>, slot: Slot, idle_timeout: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let serving = slot.clone();
    let service = service_fn(move |request| {
        let api = api.clone();
        let busy = serving.busy();
        async move {
            let response = routes::respond(&api, peer, request).await;
            drop(busy);
            Ok::<_, Infallible>(response)
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = connection => if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "api connection ended with an error");
        },
        () = slot.evicted() => tracing::debug!(%peer, "idle api connection closed for a new one"),
    }
}
