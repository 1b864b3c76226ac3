//! The reference backend: a tiny HTTP/1.1 app server for bg-lb's demo, its
//! end-to-end tests and anyone trying bg-lb out.
//!
//! It follows the datacenter blue-green convention: every app instance serves
//! `GET /live` and `GET /standby`; exactly one of them answers 200 (the other
//! 500), and `POST /enable/live` / `POST /enable/standby` switch which.
//!
//! # Endpoints
//! Every response carries `X-Backend: NAME`, so a client behind the load
//! balancer can tell which instance answered.
//! - `GET /`: 200 with one line of JSON,
//!   `{"name":…,"version":…,"role":"live"|"standby","requests":N}`, where N
//!   counts the requests this process has served on any endpoint, this one
//!   included.
//! - `GET /live`, `GET /standby`: 200 when the instance has that role, else
//!   500; the body is the current role either way (`live\n` or `standby\n`).
//! - `POST /enable/live`, `POST /enable/standby`: switch the role; the body
//!   is the new role.
//! - `GET /slow?ms=N`: the JSON of `/` after N milliseconds (at most ten
//!   minutes), for exercising connection draining. A bad or missing `ms` is a
//!   400.
//! - Unknown paths are 404; a known path with the wrong method is 405 (`GET`
//!   endpoints also accept `HEAD`).
//!
//! # Echo port
//! With `--echo-listen`, a raw TCP port echoes every byte back until the
//! client closes: a long-lived connection whose pinning to one backend a test
//! can watch across ratio changes.
//!
//! # Fault injection
//! `--fail-percent P` resets P% of accepted HTTP connections (SO_LINGER 0,
//! then close) instead of serving them, so rollout tests can watch a bad
//! release fail its way out.
//!
//! # Shutdown
//! When shutdown begins the listeners close at once, so new connections are
//! refused. Idle keep-alive connections close; one in the middle of a request
//! finishes that response and then closes. [`serve`] returns when the last
//! one has, or after [`GRACE_PERIOD`], whichever is first. Echo connections
//! are not drained: they keep echoing until the client closes or the process
//! exits, which is the point of a long-lived test connection.

use std::{
    convert::Infallible,
    fmt,
    net::SocketAddr,
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ALLOW, CONTENT_TYPE, HeaderName, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
    signal::unix::{SignalKind, signal},
    sync::watch,
    task::JoinSet,
};

/// How long in-flight requests may take to finish once shutdown begins;
/// connections still open then are cut.
pub const GRACE_PERIOD: Duration = Duration::from_secs(30);

/// Longest `/slow` delay: long enough for any drain test, short enough that a
/// typo cannot park a connection for days.
const MAX_SLOW_MS: u64 = 600_000;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const X_BACKEND: HeaderName = HeaderName::from_static("x-backend");

/// Run the reference backend (a tiny HTTP app server for demos and tests).
#[derive(Debug, Clone, clap::Args)]
pub struct DemoBackendArgs {
    /// HTTP listen address, e.g. 10.0.1.11:8080
    #[arg(long)]
    pub listen: SocketAddr,
    /// Instance name, returned in the X-Backend header and in `GET /`.
    #[arg(long)]
    pub name: String,
    /// Application version reported by `GET /`.
    #[arg(long, default_value = "v1")]
    pub version: String,
    /// Role at startup: which of /live and /standby answers 200.
    #[arg(long, value_enum, default_value_t = Role::Live)]
    pub role: Role,
    /// Raw TCP echo port for long-lived connection tests (optional)
    #[arg(long)]
    pub echo_listen: Option<SocketAddr>,
    /// Reset this percentage (0..=100) of accepted HTTP connections instead
    /// of serving them (fault injection for rollout tests)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub fail_percent: u8,
}

/// Which of `/live` and `/standby` answers 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Live,
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Live => "live",
            Role::Standby => "standby",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the app reports and how it misbehaves; the listeners are separate so
/// tests can bind port 0.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub name: String,
    pub version: String,
    /// The role at startup; `POST /enable/...` changes it afterwards.
    pub role: Role,
    /// Percentage (0..=100) of accepted HTTP connections to reset.
    pub fail_percent: u8,
}

impl From<&DemoBackendArgs> for AppConfig {
    fn from(args: &DemoBackendArgs) -> Self {
        AppConfig {
            name: args.name.clone(),
            version: args.version.clone(),
            role: args.role,
            fail_percent: args.fail_percent,
        }
    }
}

/// Binds the listeners and serves until SIGTERM/SIGINT, then stops accepting,
/// finishes in-flight requests (bounded by [`GRACE_PERIOD`]) and returns.
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
/// in-flight requests gracefully (see the module docs) and returns.
pub async fn serve(
    http: TcpListener,
    echo: Option<TcpListener>,
    app: AppConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve_with_grace(http, echo, app, shutdown, GRACE_PERIOD).await
}

/// [`serve`] with the grace period as a parameter, so a test can exceed it
/// without waiting half a minute.
async fn serve_with_grace(
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

/// Fault injection: SO_LINGER 0 turns the close into an RST, so the client
/// sees "connection reset" rather than a clean (and retryable-looking) EOF.
fn reset(stream: TcpStream, peer: SocketAddr) {
    // `set_zero_linger` is tokio's non-deprecated `set_linger(Some(ZERO))`;
    // a zero linger never blocks on close.
    if let Err(e) = stream.set_zero_linger() {
        tracing::warn!(%peer, error = %e, "cannot set SO_LINGER 0; closing normally");
    }
    tracing::debug!(%peer, "fault injection: resetting connection");
    drop(stream);
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
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; dropping it here keeps the
    // connection futures spawnable.
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Accepts echo connections until shutdown begins. The connections it spawns
/// are detached on purpose: they outlive shutdown (see the module docs).
async fn accept_echo(listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(echo(stream, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "echo accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

async fn echo(mut stream: TcpStream, peer: SocketAddr) {
    let (mut reader, mut writer) = stream.split();
    match tokio::io::copy(&mut reader, &mut writer).await {
        Ok(bytes) => {
            // Pass the client's EOF on, so it knows everything came back.
            let _ = writer.shutdown().await;
            tracing::debug!(%peer, bytes, "echo connection closed");
        }
        Err(e) => tracing::debug!(%peer, error = %e, "echo connection failed"),
    }
}

/// The state the HTTP endpoints share across connections.
struct App {
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
    fn new(config: AppConfig) -> anyhow::Result<Self> {
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

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
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

/// xorshift64: plenty for picking which connections to reset, and no crate.
struct XorShift64(u64);

impl XorShift64 {
    /// Seeds from the clock and a process-wide counter, so backends started
    /// in the same instant (tests) still draw different sequences.
    fn seeded() -> Self {
        static SEEDS: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        let counter = SEEDS.fetch_add(1, Ordering::Relaxed);
        // The golden-ratio multiply spreads consecutive counters over all the
        // bits; `| 1` because an all-zero state would stay zero forever.
        XorShift64((nanos ^ counter.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// True with probability `percent`/100: always at 100, never at 0.
    fn chance(&mut self, percent: u8) -> bool {
        self.next() % 100 < u64::from(percent)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use http_body_util::{BodyExt as _, Empty};
    use hyper::client::conn::http1::{SendRequest, handshake};
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        sync::oneshot,
        task::JoinHandle,
    };

    use super::*;

    /// A backend serving on loopback ports chosen by the kernel.
    struct Backend {
        addr: SocketAddr,
        echo: Option<SocketAddr>,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<anyhow::Result<()>>,
    }

    impl Backend {
        async fn start(role: Role, fail_percent: u8) -> Self {
            Self::start_with(role, fail_percent, false, GRACE_PERIOD).await
        }

        async fn start_with(role: Role, fail_percent: u8, with_echo: bool, grace: Duration) -> Self {
            let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = http.local_addr().unwrap();
            let echo = if with_echo {
                Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
            } else {
                None
            };
            let echo_addr = echo.as_ref().map(|listener| listener.local_addr().unwrap());
            let config = AppConfig {
                name: "blue-1".into(),
                version: "v7".into(),
                role,
                fail_percent,
            };
            let (stop, stopped) = oneshot::channel::<()>();
            let shutdown = async move {
                let _ = stopped.await;
            };
            let task = tokio::spawn(serve_with_grace(http, echo, config, shutdown, grace));
            Backend {
                addr,
                echo: echo_addr,
                stop: Some(stop),
                task,
            }
        }

        fn shut_down(&mut self) {
            let _ = self.stop.take().unwrap().send(());
        }
    }

    struct Reply {
        status: StatusCode,
        headers: hyper::HeaderMap,
        body: String,
    }

    impl Reply {
        fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.body).unwrap()
        }
    }

    /// One HTTP/1.1 client connection; requests on it reuse it (keep-alive).
    struct Client {
        sender: SendRequest<Empty<Bytes>>,
        connection: JoinHandle<hyper::Result<()>>,
    }

    impl Client {
        async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
            let stream = TcpStream::connect(addr).await?;
            let (sender, connection) = handshake(TokioIo::new(stream)).await?;
            Ok(Client {
                sender,
                connection: tokio::spawn(connection),
            })
        }

        async fn request(&mut self, method: Method, path: &str) -> anyhow::Result<Reply> {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, "demo")
                .body(Empty::new())?;
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await?.to_bytes();
            Ok(Reply {
                status,
                headers,
                body: String::from_utf8(body.to_vec())?,
            })
        }
    }

    /// One request on a fresh connection.
    async fn call(addr: SocketAddr, method: Method, path: &str) -> anyhow::Result<Reply> {
        Client::connect(addr).await?.request(method, path).await
    }

    async fn get(addr: SocketAddr, path: &str) -> Reply {
        call(addr, Method::GET, path).await.unwrap()
    }

    async fn post(addr: SocketAddr, path: &str) -> Reply {
        call(addr, Method::POST, path).await.unwrap()
    }

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

    #[tokio::test]
    async fn the_echo_port_sends_every_byte_back_until_eof() {
        let backend = Backend::start_with(Role::Live, 0, true, GRACE_PERIOD).await;
        let mut stream = TcpStream::connect(backend.echo.unwrap()).await.unwrap();
        stream.write_all(b"hello").await.unwrap();
        let mut buf = [0; 5];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");

        let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let (mut reader, mut writer) = stream.into_split();
        let sent = payload.clone();
        let writing = tokio::spawn(async move {
            writer.write_all(&sent).await.unwrap();
            writer.shutdown().await.unwrap();
        });
        let mut echoed = Vec::new();
        reader.read_to_end(&mut echoed).await.unwrap();
        writing.await.unwrap();
        assert_eq!(echoed, payload);
    }

    #[tokio::test]
    async fn echo_connections_outlive_shutdown_but_new_ones_are_refused() {
        let mut backend = Backend::start_with(Role::Live, 0, true, GRACE_PERIOD).await;
        let echo_addr = backend.echo.unwrap();
        let mut stream = TcpStream::connect(echo_addr).await.unwrap();
        backend.shut_down();
        tokio::time::timeout(Duration::from_secs(5), &mut backend.task)
            .await
            .expect("serve did not return")
            .unwrap()
            .unwrap();

        stream.write_all(b"still here").await.unwrap();
        let mut buf = [0; 10];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still here");
        assert!(TcpStream::connect(echo_addr).await.is_err());
    }

    #[tokio::test]
    async fn fail_percent_100_resets_every_connection() {
        let backend = Backend::start(Role::Live, 100).await;
        for _ in 0..20 {
            if let Ok(reply) = call(backend.addr, Method::GET, "/live").await {
                panic!("got a {} through a connection that should be reset", reply.status);
            }
        }
    }

    #[tokio::test]
    async fn fail_percent_0_never_resets() {
        let backend = Backend::start(Role::Live, 0).await;
        for _ in 0..50 {
            assert_eq!(get(backend.addr, "/live").await.status, StatusCode::OK);
        }
    }

    #[test]
    fn chance_is_never_at_0_always_at_100_and_roughly_fair_between() {
        let mut rng = XorShift64::seeded();
        assert!((0..10_000).all(|_| !rng.chance(0)));
        assert!((0..10_000).all(|_| rng.chance(100)));
        let hits = (0..10_000).filter(|_| rng.chance(30)).count();
        assert!((2_500..3_500).contains(&hits), "{hits} of 10000 at 30%");
    }

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

    #[test]
    fn args_parse_with_defaults_and_reject_fail_percent_over_100() {
        use clap::Parser as _;

        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: DemoBackendArgs,
        }

        let cli = Cli::try_parse_from(["demo", "--listen", "127.0.0.1:8080", "--name", "green-2"]).unwrap();
        let config = AppConfig::from(&cli.args);
        assert_eq!(cli.args.echo_listen, None);
        assert_eq!(
            (config.version.as_str(), config.role, config.fail_percent),
            ("v1", Role::Live, 0)
        );

        let cli = Cli::try_parse_from([
            "demo",
            "--listen",
            "127.0.0.1:8080",
            "--name",
            "green-2",
            "--role",
            "standby",
            "--fail-percent",
            "100",
            "--echo-listen",
            "127.0.0.1:9000",
        ])
        .unwrap();
        assert_eq!((cli.args.role, cli.args.fail_percent), (Role::Standby, 100));
        assert!(
            Cli::try_parse_from([
                "demo",
                "--listen",
                "127.0.0.1:8080",
                "--name",
                "x",
                "--fail-percent",
                "101"
            ])
            .is_err()
        );
    }
}
