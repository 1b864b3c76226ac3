//! Client load for end-to-end tests and the demo: paced short HTTP requests
//! (one connection each, the client closing first as browsers do, so no
//! TIME_WAIT piles up on backends) plus long-lived keep-alive connections
//! that send a request periodically for a bounded lifetime. Every outcome is
//! recorded: which backend and version served it, or how it failed.

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddrV4,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{
    http::{self, Connection},
    topology::NetNs,
};

/// What the load saw, for assertions and the demo's summary.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub sent: u64,
    pub ok: u64,
    /// Requests answered, by backend name and version.
    pub served: BTreeMap<(String, String), u64>,
    pub resets: u64,
    /// Other failures (timeouts, refusals, non-200), with a sample message.
    pub failed: u64,
    pub failures: Vec<String>,
    /// Long-lived connections: backends each one was served by, in order
    /// of first appearance.
    pub long_lived: Vec<Vec<String>>,
    pub long_lived_done: u64,
}

impl Tally {
    fn record(&mut self, result: io::Result<http::Response>) -> Option<String> {
        self.sent += 1;
        match result {
            Ok(r) if r.status == 200 => {
                self.ok += 1;
                let name = r.backend_name();
                *self.served.entry((name.clone(), r.backend_version())).or_default() += 1;
                Some(name)
            }
            Ok(r) => {
                self.fail(format!("HTTP {}: {}", r.status, r.body.trim()));
                None
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                self.resets += 1;
                self.fail(format!("reset: {e}"));
                None
            }
            Err(e) => {
                self.fail(e.to_string());
                None
            }
        }
    }

    fn fail(&mut self, message: String) {
        self.failed += 1;
        if self.failures.len() < 20 {
            self.failures.push(message);
        }
    }

    /// Requests served by `backend`.
    pub fn served_by(&self, backend: &str) -> u64 {
        self.served
            .iter()
            .filter(|((name, _), _)| name == backend)
            .map(|(_, n)| n)
            .sum()
    }
}

#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub vip: SocketAddrV4,
    /// Short requests per second, over all workers.
    pub rate: u32,
    pub workers: u32,
    /// Long-lived connections kept open, each replaced when it ends.
    pub long_lived: u32,
    pub long_lived_lifetime: Duration,
    pub long_lived_period: Duration,
}

#[derive(Clone)]
pub struct TallyWatch(Arc<Mutex<Tally>>);

impl TallyWatch {
    pub fn get(&self) -> Tally {
        self.0.lock().expect("tally lock").clone()
    }
}

/// Running load; stop it with [`Load::stop`] to get the final tally.
pub struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(client: &NetNs, spec: LoadSpec) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let mut threads = Vec::new();
        let per_worker = Duration::from_secs_f64(f64::from(spec.workers) / f64::from(spec.rate.max(1)));
        for _ in 0..spec.workers {
            let (stop, tally, vip) = (stop.clone(), tally.clone(), spec.vip);
            threads.push(client.spawn(move || short_requests(vip, per_worker, &stop, &tally)));
        }
        for _ in 0..spec.long_lived {
            let (stop, tally, spec) = (stop.clone(), tally.clone(), spec.clone());
            threads.push(client.spawn(move || long_lived(&spec, &stop, &tally)));
        }
        Load { stop, tally, threads }
    }

    /// The tally so far.
    pub fn tally(&self) -> Tally {
        self.tally.lock().expect("tally lock").clone()
    }

    /// A handle for reading the tally from another thread (the demo's live
    /// view).
    pub fn watch(&self) -> TallyWatch {
        TallyWatch(self.tally.clone())
    }

    /// Stops every worker (long-lived connections finish their current
    /// request and close) and returns the final tally.
    pub fn stop(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.tally()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn short_requests(vip: SocketAddrV4, period: Duration, stop: &AtomicBool, tally: &Mutex<Tally>) {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let result = http::request(vip, "GET", "/");
        tally.lock().expect("tally lock").record(result);
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        } else {
            next = Instant::now();
        }
    }
}

/// Keeps one long-lived connection open at a time, each for its lifetime.
fn long_lived(spec: &LoadSpec, stop: &AtomicBool, tally: &Mutex<Tally>) {
    while !stop.load(Ordering::Relaxed) {
        let born = Instant::now();
        let mut backends: Vec<String> = Vec::new();
        let mut connection = match Connection::open(spec.vip) {
            Ok(c) => c,
            Err(e) => {
                tally.lock().expect("tally lock").record(Err(e));
                thread::sleep(spec.long_lived_period);
                continue;
            }
        };
        while born.elapsed() < spec.long_lived_lifetime && !stop.load(Ordering::Relaxed) {
            let result = connection.request("GET", "/");
            let failed = result.is_err();
            if let Some(name) = tally.lock().expect("tally lock").record(result)
                && !backends.contains(&name)
            {
                backends.push(name);
            }
            if failed {
                break;
            }
            thread::sleep(spec.long_lived_period);
        }
        let mut tally = tally.lock().expect("tally lock");
        tally.long_lived.push(backends);
        tally.long_lived_done += 1;
    }
}
