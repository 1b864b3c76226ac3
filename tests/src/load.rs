//! Client load for end-to-end tests and the demo: paced short HTTP requests
//! (one connection each, the client closing first as browsers do, so no
//! TIME_WAIT piles up on backends) plus long-lived keep-alive connections
//! that send a request periodically for a bounded lifetime. Every outcome is
//! recorded: which backend and version served it, or how it failed. Short
//! requests can come from many client addresses, each request bound to one;
//! then every client's visits are kept in order (client affinity,
//! [`crate::affinity`]).

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, SocketAddr},
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
    /// Short requests answered, by the client address they were bound to
    /// (only with [`LoadSpec::sources`]), in the order each client sent them.
    pub clients: BTreeMap<IpAddr, Vec<Visit>>,
}

/// One short request of a client: when it ran and who served it.
#[derive(Clone, Debug)]
pub struct Visit {
    pub started: Instant,
    pub ended: Instant,
    pub backend: String,
    pub version: String,
}

impl Tally {
    fn record(&mut self, result: io::Result<http::Response>) -> Option<(String, String)> {
        self.sent += 1;
        match result {
            Ok(r) if r.status == 200 => {
                self.ok += 1;
                let served = (r.backend_name(), r.backend_version());
                *self.served.entry(served.clone()).or_default() += 1;
                Some(served)
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
    /// IPv4 or IPv6.
    pub vip: SocketAddr,
    /// Short requests per second, over all workers.
    pub rate: u32,
    pub workers: u32,
    /// Long-lived connections kept open, each replaced when it ends.
    pub long_lived: u32,
    pub long_lived_lifetime: Duration,
    pub long_lived_period: Duration,
    /// Client addresses (the client's, see
    /// [`crate::topology::OneArm::add_clients`]) the short requests are
    /// bound to, each worker taking its share in turn; empty: the kernel
    /// picks (the client's main address).
    pub sources: Vec<IpAddr>,
}

#[derive(Clone)]
pub struct TallyWatch(Arc<Mutex<Tally>>);

impl TallyWatch {
    pub fn get(&self) -> Tally {
        self.0.lock().expect("tally lock").clone()
    }

    /// Waits until every one of `clients` (bound [`LoadSpec::sources`]) was
    /// served after `since`; false after `patience`.
    pub fn every_client_served_after(&self, clients: &[IpAddr], since: Instant, patience: Duration) -> bool {
        let until = Instant::now() + patience;
        loop {
            let tally = self.get();
            let served = |c: &IpAddr| {
                tally
                    .clients
                    .get(c)
                    .and_then(|visits| visits.last())
                    .is_some_and(|v| v.started >= since)
            };
            if clients.iter().all(served) {
                return true;
            }
            if Instant::now() > until {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every client in `clients` was served in two rounds, one
    /// after the other, from now (`patience` for each). Then each client
    /// has a visit well inside the ratio in force, which the status polls
    /// of [`crate::affinity::RatioLog`] can place: a visit that ends or
    /// begins within a poll of a ratio change is placed in no phase, and
    /// one round's last visits may come that close to the change after it.
    pub fn every_client_served_twice(&self, clients: &[IpAddr], patience: Duration) -> bool {
        self.every_client_served_after(clients, Instant::now(), patience)
            && self.every_client_served_after(clients, Instant::now(), patience)
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
        for w in 0..spec.workers as usize {
            let (stop, tally, vip) = (stop.clone(), tally.clone(), spec.vip);
            let sources: Vec<IpAddr> = spec
                .sources
                .iter()
                .skip(w)
                .step_by(spec.workers as usize)
                .copied()
                .collect();
            threads.push(client.spawn(move || short_requests(vip, &sources, per_worker, &stop, &tally)));
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

/// Paced requests, each on a new connection, from each of `sources` in
/// turn (none: from the kernel's choice of address).
fn short_requests(vip: SocketAddr, sources: &[IpAddr], period: Duration, stop: &AtomicBool, tally: &Mutex<Tally>) {
    let mut next = Instant::now();
    let mut turn = sources.iter().cycle();
    while !stop.load(Ordering::Relaxed) {
        let source = turn.next().copied();
        let started = Instant::now();
        let result = http::request_from(source, vip, "GET", "/");
        let ended = Instant::now();
        let mut tally = tally.lock().expect("tally lock");
        if let (Some((backend, version)), Some(source)) = (tally.record(result), source) {
            tally.clients.entry(source).or_default().push(Visit {
                started,
                ended,
                backend,
                version,
            });
        }
        drop(tally);
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
            if let Some((name, _)) = tally.lock().expect("tally lock").record(result)
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
