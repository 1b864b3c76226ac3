//! The optional metrics listener (`metrics = "ADDR:PORT"`): plain HTTP/1.1,
//! read-only, `GET /metrics` and nothing else. A scrape asks the task that
//! owns the daemon for a [`Snapshot`] through a channel, so the data plane is
//! only ever touched by that task, and encodes it here, off that task.

use std::time::Duration;

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Bytes,
    header::{ALLOW, CONTENT_TYPE},
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use crate::{
    config::ListenerLimits,
    connection_slots::{ConnectionSlots, serve_http},
    metrics::{self, Snapshot},
};

/// A scrape's request to the daemon task: where to send the snapshot.
pub type ScrapeRequest = oneshot::Sender<Result<Snapshot, String>>;

const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `/metrics` on `listener` until the task is dropped, with at most
/// `limits.max_connections` connections (a new one closes the longest-idle
/// one when full), each closed once idle for `limits.idle_timeout`.
pub async fn serve(listener: TcpListener, scrapes: mpsc::Sender<ScrapeRequest>, limits: ListenerLimits) {
    let slots = ConnectionSlots::new(limits.max_connections as usize);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => match slots.admit() {
                Some(slot) => {
                    let scrapes = scrapes.clone();
                    let handler = move |request| {
                        let scrapes = scrapes.clone();
                        async move { respond(&request, &scrapes).await }
                    };
                    tokio::spawn(serve_http(stream, peer, slot, limits.idle_timeout, "metrics", handler));
                }
                None => tracing::warn!(%peer, "every metrics connection is busy with a scrape; closing this one"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// The answer to one request: metrics, 405 for another method on
/// `/metrics`, 404 elsewhere.
pub async fn respond<B>(request: &Request<B>, scrapes: &mpsc::Sender<ScrapeRequest>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found: metrics are at /metrics\n");
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "/metrics is read-only: GET it\n");
        response
            .headers_mut()
            .insert(ALLOW, "GET, HEAD".parse().expect("valid header"));
        return response;
    }
    match scrape(scrapes).await {
        Ok(text) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            let content_type = metrics::CONTENT_TYPE.parse().expect("valid header");
            response.headers_mut().insert(CONTENT_TYPE, content_type);
            response
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics scrape failed");
            plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n"))
        }
    }
}

async fn scrape(scrapes: &mpsc::Sender<ScrapeRequest>) -> Result<String, String> {
    let (reply, snapshot) = oneshot::channel();
    scrapes
        .send(reply)
        .await
        .map_err(|_| "the daemon is shutting down".to_owned())?;
    let snapshot = snapshot.await.map_err(|_| "the daemon is shutting down".to_owned())??;
    metrics::encode(snapshot).map_err(|_| "cannot encode the metrics".to_owned())
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, "text/plain; charset=utf-8".parse().expect("valid header"));
    response
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };

    use super::*;
    use crate::config::DEFAULT_METRICS_LIMITS;

    /// A daemon stand-in that answers every scrape with `snapshot`.
    fn daemon(snapshot: Result<Snapshot, String>) -> mpsc::Sender<ScrapeRequest> {
        let (scrapes, mut requests) = mpsc::channel::<ScrapeRequest>(4);
        tokio::spawn(async move {
            while let Some(reply) = requests.recv().await {
                let _ = reply.send(snapshot.clone());
            }
        });
        scrapes
    }

    /// One raw HTTP/1.1 request over loopback; the whole response as text.
    async fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    async fn listener() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    #[tokio::test]
    async fn get_metrics_answers_with_the_prometheus_text_format() {
        let (listener, addr) = listener().await;
        tokio::spawn(serve(listener, daemon(Ok(Snapshot::default())), DEFAULT_METRICS_LIMITS));
        let response = exchange(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(
            response.contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{response}"
        );
        assert!(
            response.contains("# TYPE bglb_flow_table_capacity gauge\n"),
            "{response}"
        );
    }

    #[tokio::test]
    async fn other_paths_are_not_found_and_metrics_are_read_only() {
        let (listener, addr) = listener().await;
        tokio::spawn(serve(listener, daemon(Ok(Snapshot::default())), DEFAULT_METRICS_LIMITS));
        let response = exchange(addr, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 404 Not Found\r\n"), "{response}");
        let response = exchange(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{response}"
        );
        assert!(response.contains("allow: GET, HEAD\r\n"), "{response}");
    }

    #[tokio::test]
    async fn a_failed_snapshot_is_a_500_with_the_reason() {
        let scrapes = daemon(Err("reading BACKEND_STATS: boom".into()));
        let request = Request::get("/metrics").body(()).unwrap();
        let response = respond(&request, &scrapes).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, "reading BACKEND_STATS: boom\n");
    }

    #[tokio::test]
    async fn a_daemon_that_is_gone_is_a_500_not_a_hang() {
        let (scrapes, requests) = mpsc::channel::<ScrapeRequest>(1);
        drop(requests);
        let request = Request::get("/metrics").body(()).unwrap();
        let response = respond(&request, &scrapes).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_cap_never_lock_a_scrape_out() {
        let (listener, addr) = listener().await;
        let limits = ListenerLimits {
            max_connections: 4,
            idle_timeout: Duration::from_secs(60),
        };
        tokio::spawn(serve(listener, daemon(Ok(Snapshot::default())), limits));
        let mut idle = Vec::new();
        for _ in 0..10 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let response = tokio::time::timeout(
            Duration::from_secs(5),
            exchange(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await
        .expect("a scrape is answered while idle connections fill the listener");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    }

    #[tokio::test]
    async fn a_connection_without_a_request_is_closed_after_the_idle_timeout() {
        let (listener, addr) = listener().await;
        let limits = ListenerLimits {
            max_connections: 4,
            idle_timeout: Duration::from_millis(200),
        };
        tokio::spawn(serve(listener, daemon(Ok(Snapshot::default())), limits));
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the idle connection is still open after 5s");
    }
}
