//! The running daemon: admin socket, signals, housekeeping, health reports
//! and metrics scrapes around one [`Daemon`], which handles every request in
//! turn so data-plane writes never interleave. Flow sweeps and listings run
//! on the sweeper thread and come back as messages.

use std::{fs, os::unix::fs::PermissionsExt as _, path::PathBuf, time::Duration};

use anyhow::Context as _;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Interest, unix::AsyncFd},
    net::{TcpListener, UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

use crate::{
    config::{AdminConfig, ListenerLimits},
    connection_slots::{ConnectionSlots, Slot},
    daemon::{Daemon, RequestError},
    metrics::server::{self as metrics_server, ScrapeRequest},
    protocol::{MAX_REQUEST_BYTES, Reply},
};

const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// One admin request line and where its reply goes: what the admin socket
/// and the remote API queue for the daemon.
pub type Job = (String, oneshot::Sender<Reply>);

/// Runs until SIGTERM or SIGINT. With `detach_on_exit` the VIPs are
/// withdrawn and the data plane is torn down then; otherwise it keeps
/// forwarding for the next daemon, and BIRD keeps announcing it.
pub async fn run(config_path: PathBuf, detach_on_exit: bool) -> anyhow::Result<()> {
    let (reports, mut health) = mpsc::channel(256);
    let (swept, mut sweeper) = mpsc::unbounded_channel();
    let mut daemon = Daemon::start(&config_path, reports, swept)?;
    // Kept alive here so the scrape branch below never sees a closed channel.
    let (scrapes, mut scrape_requests) = mpsc::channel::<ScrapeRequest>(8);
    if let Some(addr) = daemon.config().metrics {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics listener {addr} (config key `metrics`)"))?;
        tracing::info!("serving Prometheus metrics at http://{addr}/metrics");
        tokio::spawn(metrics_server::serve(
            listener,
            scrapes.clone(),
            daemon.config().metrics_limits,
        ));
    }
    let (jobs, mut queue) = mpsc::channel::<Job>(64);
    if let Some(api) = &daemon.config().api {
        crate::api::start(api, jobs.clone()).await?;
    }
    let listener = bind_admin_socket(&daemon.config().admin)?;
    let socket_path = daemon.config().admin.socket.clone();
    tracing::info!(socket = %socket_path.display(), config = %config_path.display(), "bg-lb running");

    let mut hook_results = daemon
        .take_hook_results()
        .context("the analysis hooks' results are read once")?;
    if let Some(logger) = daemon.take_ebpf_logger() {
        tokio::spawn(forward_ebpf_logs(logger));
    }
    let mut fleet = daemon.take_fleet_updates();
    tokio::spawn(accept_loop(listener, jobs, daemon.config().admin.limits));
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    let mut watchdog = daemon.watchdog_interval().map(tokio::time::interval);
    daemon.notify_ready();
    loop {
        tokio::select! {
            Some((line, reply)) = queue.recv() => daemon.handle_line(&line, reply),
            Some(done) = sweeper.recv() => daemon.on_sweeper(done),
            Some(update) = next(&mut fleet) => {
                daemon.on_fleet(update);
                daemon.announce();
            }
            Some(done) = hook_results.recv() => daemon.on_hook_result(done),
            Some(reply) = scrape_requests.recv() => {
                let _ = reply.send(daemon.metrics_snapshot().map_err(|e| e.to_string()));
            }
            _ = housekeeping.tick() => {
                daemon.tick();
                daemon.announce();
                daemon.notify_status();
            }
            _ = tick(&mut watchdog) => daemon.watchdog_ping(),
            Some(report) = health.recv() => {
                daemon.on_health(report);
                daemon.announce();
            }
            _ = hangup.recv() => {
                match daemon.reload() {
                    Ok(message) => tracing::info!("{message}"),
                    Err(e) => tracing::error!("{e}"),
                }
                daemon.announce();
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    daemon.notify_stopping();
    let _ = fs::remove_file(&socket_path);
    if detach_on_exit {
        daemon.teardown()?;
        tracing::info!("VIPs withdrawn, data plane detached and unpinned (--detach-on-exit)");
    } else {
        tracing::info!("exiting; the pinned data plane keeps forwarding until the next daemon adopts it");
    }
    Ok(())
}

/// The next tick of an optional timer; never without one.
async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The next message of an optional channel; never without one.
async fn next<T>(channel: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match channel {
        Some(channel) => channel.recv().await,
        None => std::future::pending().await,
    }
}

/// Binds the admin socket: root-only (0600), or 0660 for a configured group.
/// A stale socket from a killed daemon is replaced; a live one is an error.
fn bind_admin_socket(admin: &AdminConfig) -> anyhow::Result<UnixListener> {
    let path = &admin.socket;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("{} is in use: another bg-lb daemon is running", path.display());
        }
        fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    let mode = match &admin.group {
        Some(group) => {
            let gid = nix::unistd::Group::from_name(group)?
                .with_context(|| format!("no group {group:?}"))?
                .gid;
            nix::unistd::chown(path.as_path(), None, Some(gid)).with_context(|| {
                format!(
                    "giving the admin socket {} to group {group:?} (needs CAP_CHOWN, or membership of the group)",
                    path.display()
                )
            })?;
            0o660
        }
        None => 0o600,
    };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Accepts admin connections, at most `limits.max_connections` at once: when
/// full, a new connection closes the one idle the longest.
async fn accept_loop(listener: UnixListener, jobs: mpsc::Sender<Job>, limits: ListenerLimits) {
    let slots = ConnectionSlots::new(limits.max_connections as usize);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match slots.admit() {
                Some(slot) => {
                    tokio::spawn(serve_client(stream, jobs.clone(), slot, limits.idle_timeout));
                }
                None => tracing::warn!("every admin connection is busy with a request; closing a new one"),
            },
            Err(e) => tracing::warn!(error = %e, "admin socket accept failed"),
        }
    }
}

/// One connection: requests line by line until the client closes, sends no
/// complete line for `idle_timeout`, or a new connection takes its slot. A
/// line over the size limit gets an error reply and ends the connection.
async fn serve_client(stream: UnixStream, jobs: mpsc::Sender<Job>, slot: Slot, idle_timeout: Duration) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let line = tokio::select! {
            read = tokio::time::timeout(idle_timeout, read_line(&mut reader)) => read,
            () = slot.evicted() => return,
        };
        let reply = match line {
            Ok(Ok(Some(line))) => {
                let _busy = slot.busy();
                submit(&jobs, line).await
            }
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(e)) => {
                let _ = send(&mut write, &Reply::error(e.to_string())).await;
                return;
            }
        };
        if send(&mut write, &reply).await.is_err() {
            return;
        }
    }
}

async fn read_line(reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> Result<Option<String>, RequestError> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::new();
    let limit = MAX_REQUEST_BYTES as u64 + 1;
    let n = reader
        .take(limit)
        .read_until(b'\n', &mut buf)
        .await
        .map_err(RequestError::Read)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') && n as u64 == limit {
        return Err(RequestError::TooLong);
    }
    String::from_utf8(buf)
        .map(|s| Some(s.trim_end().to_owned()))
        .map_err(|_| RequestError::NotUtf8)
}

/// Queues `line` for the daemon and waits for its reply.
pub async fn submit(jobs: &mpsc::Sender<Job>, line: String) -> Reply {
    let (tx, rx) = oneshot::channel();
    if jobs.send((line, tx)).await.is_err() {
        return Reply::error("daemon is shutting down");
    }
    rx.await.unwrap_or_else(|_| Reply::error("daemon is shutting down"))
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).expect("replies serialize");
    line.push(b'\n');
    write.write_all(&line).await
}

/// aya-log records reach tracing through the `log` bridge (see logging).
async fn forward_ebpf_logs(logger: crate::dataplane::EbpfLogger) {
    // SAFETY: the logger owns its ring buffer's fd, which stays open and the
    // same for the logger's whole life, and the AsyncFd owns the logger.
    let mut logger = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => return tracing::warn!(error = %e.into_parts().1, "cannot poll eBPF log records"),
    };
    loop {
        let Ok(mut guard) = logger.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
