//! Serving: binding the listeners, the HTTP accept loop, one connection's
//! life, and the graceful shutdown described under Shutdown in the
//! `demo_backend` docs.

use std::{convert::Infallible, net::SocketAddr, pin::pin, sync::Arc, time::Duration};

use anyhow::Context as _;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpListener, TcpStream},
    signal::unix::{SignalKind, signal},
    sync::watch,
    task::JoinSet,
};

use super::{
    app::App,
    args::{AppConfig, DemoBackendArgs},
    echo::accept_echo,
    fault::{XorShift64, reset},
};

/// How long in-flight requests may take to finish once shutdown begins;
/// connections still open then are cut.
pub(super) const GRACE_PERIOD: Duration = Duration::from_secs(30);

/// Pause after a failed accept (e.g. out of file descriptors) so the loop
/// does not spin while the condition lasts.
pub(super) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds the listeners and serves until SIGTERM/SIGINT, then stops accepting,
/// finishes in-flight requests (bounded by `GRACE_PERIOD`) and returns.
pub async fn run(args: DemoBackendArgs) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM from an impatient supervisor while we bind
    // should still mean a clean exit, not the default kill.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let http = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", args.listen))?;
    let echo = match args.echo_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for echo on {addr}"))?,
        ),
        None => None,
    };
    tracing::info!(
        name = %args.name,
        version = %args.version,
        role = %args.role,
        listen = %args.listen,
        echo = ?args.echo_listen,
        fail_percent = args.fail_percent,
        "demo backend running"
    );
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    serve(http, echo, AppConfig::from(&args), shutdown).await?;
    tracing::info!("demo backend stopped");
    Ok(())
}

/// Serves on already-bound listeners until `shutdown` resolves, then drains
/// in-flight requests gracefully (see Shutdown in the `demo_backend` docs)
/// and returns.
async fn serve(
    http: TcpListener,
    echo: Option<TcpListener>,
    app: AppConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve_with_grace(http, echo, app, shutdown, GRACE_PERIOD).await
}

/// [`serve`] with the grace period as a parameter, so a test can exceed it
/// without waiting half a minute.
pub(super) async fn serve_with_grace(
    http: TcpListener,
    echo: Option<TcpListener>,
    config: AppConfig,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> anyhow::Result<()> {
    let fail_percent = config.fail_percent.min(100);
    let app = Arc::new(App::new(config)?);
    // Every connection task and the echo accept loop watch this; `true` means
    // shutdown has begun.
    let (stopping, stop) = watch::channel(false);
    let echo_loop = echo.map(|listener| tokio::spawn(accept_echo(listener, stop.clone())));

    let mut rng = XorShift64::seeded();
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = http.accept() => match accepted {
                Ok((stream, peer)) => {
                    if rng.chance(fail_percent) {
                        reset(stream, peer);
                    } else {
                        connections.spawn(serve_connection(stream, peer, Arc::clone(&app), stop.clone()));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap finished connections as we go, so a long run does not
            // accumulate their results.
            Some(joined) = connections.join_next(), if !connections.is_empty() => log_join(joined),
        }
    }

    // Close the listener before anything else: from here on, new connections
    // are refused and the load balancer's health checks see this instance go.
    drop(http);
    stopping.send_replace(true);
    if let Some(echo_loop) = echo_loop {
        // Returns once the echo listener is closed too.
        let _ = echo_loop.await;
    }
    tracing::info!(open_connections = connections.len(), "stopped accepting; draining");
    let drained = tokio::time::timeout(grace, async {
        while let Some(joined) = connections.join_next().await {
            log_join(joined);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open_connections = connections.len(),
            grace = ?grace,
            "grace period over; closing the remaining connections"
        );
        connections.shutdown().await;
    }
    Ok(())
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined {
        tracing::error!(error = %e, "HTTP connection task failed");
    }
}

/// Serves one HTTP/1.1 connection (keep-alive included) until the client
/// closes it or shutdown has begun and the current request is answered.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let service = service_fn(move |request| {
        let app = Arc::clone(&app);
        async move { Ok::<_, Infallible>(app.handle(request).await) }
    });
    let mut connection = pin!(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopped(&mut stop) => {
            // Idle (or not yet used) connections close now; one mid-request
            // answers it with `Connection: close` and then closes.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}

/// Resolves once shutdown has begun (or `serve` is gone, which is as good).
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; dropping it here keeps the
    // connection futures spawnable.
    let _ = stop.wait_for(|stopping| *stopping).await;
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use hyper::{Method, StatusCode};

    use super::*;
    use crate::demo_backend::{
        Role,
        test_client::{Backend, Client, call},
    };

    #[tokio::test]
    async fn shutdown_finishes_in_flight_requests_closes_idle_ones_and_refuses_new_connections() {
        let mut backend = Backend::start(Role::Live, 0).await;
        let addr = backend.addr;

        let mut idle = Client::connect(addr).await.unwrap();
        assert_eq!(idle.request(Method::GET, "/").await.unwrap().status, StatusCode::OK);
        let slow = tokio::spawn(async move { call(addr, Method::GET, "/slow?ms=500").await });
        // Let the slow request reach the server before shutdown begins.
        tokio::time::sleep(Duration::from_millis(150)).await;

        backend.shut_down();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let refused = TcpStream::connect(addr).await;
        assert!(refused.is_err(), "a new connection was accepted after shutdown");
        // The idle keep-alive connection is closed by the server.
        tokio::time::timeout(Duration::from_secs(2), &mut idle.connection)
            .await
            .expect("the idle keep-alive connection stayed open")
            .unwrap()
            .unwrap();
        assert!(!backend.task.is_finished(), "serve returned with a request in flight");

        let reply = slow.await.unwrap().unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["name"], "blue-1");
        tokio::time::timeout(Duration::from_secs(2), backend.task)
            .await
            .expect("serve did not return after the in-flight request finished")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn shutdown_cuts_requests_still_running_after_the_grace_period() {
        let mut backend = Backend::start_with(Role::Live, 0, false, Duration::from_millis(200)).await;
        let addr = backend.addr;
        let slow = tokio::spawn(async move { call(addr, Method::GET, "/slow?ms=60000").await });
        tokio::time::sleep(Duration::from_millis(150)).await;

        let started = Instant::now();
        backend.shut_down();
        tokio::time::timeout(Duration::from_secs(5), &mut backend.task)
            .await
            .expect("serve ignored its grace period")
            .unwrap()
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(200));
        let cut = tokio::time::timeout(Duration::from_secs(5), slow)
            .await
            .unwrap()
            .unwrap();
        assert!(cut.is_err(), "the cut request still got a response");
    }
}
