//! A test client for the demo backend: a [`Backend`] serving on loopback
//! ports the kernel picks, and HTTP/1.1 requests against it.

use std::{net::SocketAddr, time::Duration};

use http_body_util::{BodyExt as _, Empty};
use hyper::{
    Method, Request, StatusCode,
    body::Bytes,
    client::conn::http1::{SendRequest, handshake},
};
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};

use super::{
    args::{AppConfig, Role},
    serve::{GRACE_PERIOD, serve_with_grace},
};

/// A backend serving on loopback ports chosen by the kernel.
pub(super) struct Backend {
    pub(super) addr: SocketAddr,
    pub(super) echo: Option<SocketAddr>,
    pub(super) stop: Option<oneshot::Sender<()>>,
    pub(super) task: JoinHandle<anyhow::Result<()>>,
}

impl Backend {
    pub(super) async fn start(role: Role, fail_percent: u8) -> Self {
        Self::start_with(role, fail_percent, false, GRACE_PERIOD).await
    }

    pub(super) async fn start_with(role: Role, fail_percent: u8, with_echo: bool, grace: Duration) -> Self {
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

    pub(super) fn shut_down(&mut self) {
        let _ = self.stop.take().unwrap().send(());
    }
}

pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) headers: hyper::HeaderMap,
    pub(super) body: String,
}

impl Reply {
    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// One HTTP/1.1 client connection; requests on it reuse it (keep-alive).
pub(super) struct Client {
    sender: SendRequest<Empty<Bytes>>,
    pub(super) connection: JoinHandle<hyper::Result<()>>,
}

impl Client {
    pub(super) async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        let (sender, connection) = handshake(TokioIo::new(stream)).await?;
        Ok(Client {
            sender,
            connection: tokio::spawn(connection),
        })
    }

    pub(super) async fn request(&mut self, method: Method, path: &str) -> anyhow::Result<Reply> {
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
pub(super) async fn call(addr: SocketAddr, method: Method, path: &str) -> anyhow::Result<Reply> {
    Client::connect(addr).await?.request(method, path).await
}

pub(super) async fn get(addr: SocketAddr, path: &str) -> Reply {
    call(addr, Method::GET, path).await.unwrap()
}

pub(super) async fn post(addr: SocketAddr, path: &str) -> Reply {
    call(addr, Method::POST, path).await.unwrap()
}
