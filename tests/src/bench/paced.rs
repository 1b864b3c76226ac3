//! An open-loop paced load generator, wrk2's model: request `i` is due at
//! `start + i / rate` whatever the answers do, and its latency runs from
//! when it was due, not from when it went out, so a stall counts against
//! every request it delays (no coordinated omission). Workers take the
//! next due request in turn; one that is late because every worker was
//! busy is still timed from its due time.

use std::{
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Barrier, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    bench::{cpu, procs},
    http::{self, Connection},
    topology::NetNs,
};

/// What one request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Connect, one request with `Connection: close`, response read to its
    /// end.
    NewConnections,
    /// One request on the worker's keep-alive connection (opened before the
    /// clock starts; reopened after a failure).
    KeepAlive,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::NewConnections => "new connections",
            Mode::KeepAlive => "keep-alive",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct PacedSpec {
    pub target: SocketAddr,
    pub mode: Mode,
    /// Requests per second, over all workers.
    pub rate: u32,
    pub duration: Duration,
    /// Requests in flight at most (and keep-alive connections).
    pub workers: u32,
}

/// One paced run.
#[derive(Clone, Debug, Default)]
pub struct PacedRun {
    /// Requests that fell due.
    pub due: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// From the first due time to the last answer.
    pub seconds: f64,
    /// CPU time of the workers (the client's share of the experiment).
    pub client_cpu_ns: u64,
    /// Of the successful requests, in µs, ascending.
    pub latencies_us: Vec<u64>,
}

impl PacedRun {
    pub fn ok(&self) -> u64 {
        self.latencies_us.len() as u64
    }

    /// The `q` quantile of the successful requests' latency, in ms.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let n = self.latencies_us.len();
        (n > 0).then(|| self.latencies_us[((n - 1) as f64 * q).round() as usize] as f64 / 1e3)
    }
}

/// Sends `spec.rate` requests a second for `spec.duration` from `client`.
pub fn run(client: &NetNs, spec: PacedSpec) -> PacedRun {
    let total = (f64::from(spec.rate) * spec.duration.as_secs_f64()) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let start = Arc::new(OnceLock::new());
    let ready = Arc::new(Barrier::new(spec.workers as usize));
    let first_error = Arc::new(Mutex::new(None));
    let workers: Vec<_> = (0..spec.workers)
        .map(|_| {
            let (next, start, ready, first_error) = (next.clone(), start.clone(), ready.clone(), first_error.clone());
            client.spawn(move || worker(spec, total, &next, &start, &ready, &first_error))
        })
        .collect();
    let mut run = PacedRun {
        due: total,
        ..PacedRun::default()
    };
    for w in workers {
        let (latencies, errors, cpu_ns) = w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        run.latencies_us.extend(latencies);
        run.errors += errors;
        run.client_cpu_ns += cpu_ns;
    }
    procs::check_interrupt();
    run.latencies_us.sort_unstable();
    run.seconds = start.get().map_or(0.0, |s: &Instant| s.elapsed().as_secs_f64());
    run.first_error = first_error.lock().expect("error lock").take();
    run
}

/// Returns the latencies it measured (µs), its error count and its CPU time.
fn worker(
    spec: PacedSpec,
    total: u64,
    next: &AtomicU64,
    start: &OnceLock<Instant>,
    ready: &Barrier,
    first_error: &Mutex<Option<String>>,
) -> (Vec<u64>, u64, u64) {
    // Sleeps end within a microsecond, not the default 50 µs slack, which
    // would add to every latency.
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let cpu_start = cpu::this_thread_cpu_ns();
    let mut connection = match spec.mode {
        Mode::KeepAlive => Connection::open(spec.target).ok(),
        Mode::NewConnections => None,
    };
    let (mut latencies, mut errors) = (Vec::new(), 0);
    ready.wait();
    let started = *start.get_or_init(|| Instant::now() + Duration::from_millis(5));
    let interval = 1.0 / f64::from(spec.rate);
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total || procs::interrupted() {
            break;
        }
        let due = started + Duration::from_secs_f64(i as f64 * interval);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let result = match spec.mode {
            Mode::NewConnections => one_request(spec.target),
            Mode::KeepAlive => keep_alive_request(spec.target, &mut connection),
        };
        match result {
            Ok(()) => latencies.push(due.elapsed().as_micros() as u64),
            Err(e) => {
                errors += 1;
                first_error.lock().expect("error lock").get_or_insert(e);
            }
        }
    }
    (latencies, errors, cpu::this_thread_cpu_ns() - cpu_start)
}

/// One request on a connection of its own; only a complete 200 counts.
fn one_request(target: SocketAddr) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&target, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
    http::get_and_close(&mut stream, Duration::from_secs(3))
}

/// One request on `connection`, opened first if there is none; a failed
/// connection is dropped, so the next request opens another.
fn keep_alive_request(target: SocketAddr, connection: &mut Option<Connection>) -> Result<(), String> {
    let c = match connection {
        Some(c) => c,
        None => connection.insert(Connection::open(target).map_err(|e| format!("connect: {e}"))?),
    };
    let result = match c.request("GET", "/") {
        Ok(r) if r.status == 200 => Ok(()),
        Ok(r) => Err(format!("HTTP {}", r.status)),
        Err(e) => Err(format!("request: {e}")),
    };
    if result.is_err() {
        *connection = None;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank_of_sorted_latencies() {
        let run = PacedRun {
            latencies_us: (1..=1000).collect(),
            ..PacedRun::default()
        };
        assert_eq!(run.quantile_ms(0.5), Some(0.501));
        assert_eq!(run.quantile_ms(0.99), Some(0.99));
        assert_eq!(run.quantile_ms(0.999), Some(0.999));
        assert_eq!(PacedRun::default().quantile_ms(0.5), None);
    }
}
