//! Bulk throughput: each backend streams zeros to every connection; the
//! client reads from a few long-lived connections for a fixed time.
//!
//! iperf3 does not fit a load balancer: its control and data connections are
//! separate TCP connections that may land on different backends.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{bench::procs, servers::AcceptLoop, topology::NetNs};

const CHUNK: usize = 64 * 1024;

/// A streaming server in a backend's namespace, stopped on drop.
pub struct BulkServer {
    _accept: AcceptLoop,
}

impl BulkServer {
    pub fn start(ns: &NetNs, addr: SocketAddr) -> Self {
        BulkServer {
            _accept: AcceptLoop::start(ns, addr, stream_zeros),
        }
    }
}

/// Writes until the client goes away or the server stops; the write timeout
/// keeps a vanished peer from parking the thread.
fn stream_zeros(mut stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let chunk = vec![0u8; CHUNK];
    while !stop.load(Ordering::Relaxed) {
        if stream.write_all(&chunk).is_err() {
            return;
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BulkReport {
    pub connections: usize,
    pub bytes: u64,
    pub seconds: f64,
    pub gbit_per_s: f64,
}

/// Reads from `connections` connections to `target` (opened from `client`)
/// for `duration`. Any connection that fails or ends early fails the run.
pub fn run(client: &NetNs, target: SocketAddr, connections: usize, duration: Duration) -> Result<BulkReport, String> {
    let started = Instant::now();
    let readers: Vec<_> = (0..connections)
        .map(|_| client.spawn(move || read_for(target, duration)))
        .collect();
    let mut bytes = 0;
    let mut errors = Vec::new();
    for reader in readers {
        match reader.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)) {
            Ok(n) => bytes += n,
            Err(e) => errors.push(e),
        }
    }
    procs::check_interrupt();
    let seconds = started.elapsed().as_secs_f64().max(duration.as_secs_f64());
    if !errors.is_empty() {
        return Err(format!(
            "bulk: {} of {connections} connections failed: {}",
            errors.len(),
            errors[0]
        ));
    }
    Ok(BulkReport {
        connections,
        bytes,
        seconds,
        gbit_per_s: bytes as f64 * 8.0 / seconds / 1e9,
    })
}

fn read_for(target: SocketAddr, duration: Duration) -> Result<u64, String> {
    let mut stream =
        TcpStream::connect_timeout(&target, Duration::from_secs(3)).map_err(|e| format!("connect {target}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4 * CHUNK];
    let mut total = 0u64;
    let end = Instant::now() + duration;
    while Instant::now() < end && !procs::interrupted() {
        match stream.read(&mut buf) {
            Ok(0) => return Err(format!("{target} closed the stream after {total} bytes")),
            Ok(n) => total += n as u64,
            Err(e) => return Err(format!("reading from {target}: {e}")),
        }
    }
    Ok(total)
}
