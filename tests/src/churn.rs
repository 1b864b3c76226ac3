//! Connection churn: many short connections, paced, each one line asked
//! and answered, with a chosen side closing first, from one client address
//! or many. Every outcome is kept: failures, the client's SYN
//! retransmissions, and slow connects (stalls).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket, sockopt,
};

use crate::topology::NetNs;

/// Which side sends the first FIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closer {
    /// The client closes once it has its answer; the server closes when it
    /// reads the client's FIN (it ends in LAST_ACK, not TIME_WAIT).
    Client,
    /// The server closes right after its answer; the client closes when it
    /// reads the server's FIN (the server holds TIME_WAIT).
    Server,
}

/// A server answering one line per connection, then closing as `closer`
/// says. Several threads accept on one listener and serve inline: a thread
/// a connection would be slower than the connections it serves.
pub struct ChurnServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Accepting threads of a [`ChurnServer`].
const SERVER_THREADS: usize = 8;
/// Its listen backlog (and the namespace's `somaxconn`): a burst of
/// connections while its threads wait for a core must not overflow the
/// accept queue, whose drops would look like the LB's.
const BACKLOG: i32 = 4096;
/// How long a connection may wait for its peer's next step.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

impl ChurnServer {
    pub fn start(ns: &NetNs, addr: SocketAddrV4, closer: Closer) -> Self {
        ns.sysctl(&format!("net.core.somaxconn={BACKLOG}"));
        ns.sysctl(&format!("net.ipv4.tcp_max_syn_backlog={BACKLOG}"));
        let listener = ns.run(move || listen(addr).unwrap_or_else(|e| panic!("listen on {addr}: {e}")));
        listener.set_nonblocking(true).expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..SERVER_THREADS)
            .map(|_| {
                let listener = listener.try_clone().expect("clone the listener");
                let stop = stop.clone();
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match listener.accept() {
                            Ok((stream, _)) => serve(stream, closer),
                            Err(_) => thread::sleep(Duration::from_millis(1)),
                        }
                    }
                })
            })
            .collect();
        ChurnServer { stop, threads }
    }
}

impl Drop for ChurnServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn listen(addr: SocketAddrV4) -> nix::Result<TcpListener> {
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr))?;
    nix::sys::socket::listen(&fd, Backlog::new(BACKLOG)?)?;
    Ok(TcpListener::from(fd))
}

/// The TCP counters of `ns` that tell a server's own drops (its accept
/// queue overflowing, SYN cookies) from the network's: for a failing
/// test's message.
pub fn listen_drops(ns: &NetNs) -> String {
    let counters = [
        "TcpExtListenOverflows",
        "TcpExtListenDrops",
        "TcpExtSyncookiesSent",
        "TcpExtSyncookiesFailed",
        "TcpExtPAWSTimewait",
        "TcpExtTCPSYNChallenge",
        "TcpExtTCPChallengeACK",
        "TcpExtTCPAbortOnData",
        "TcpEstabResets",
        "TcpOutRsts",
        "TcpExtTCPSynRetrans",
    ];
    let mut command = vec!["nstat", "-az"];
    command.extend(counters);
    ns.output_of(&command)
}

/// `TcpExtTCPSynRetrans` of `ns`: the SYNs (and SYN-ACKs) its kernel has
/// retransmitted.
pub fn syn_retransmissions(ns: &NetNs) -> u64 {
    let out = ns.output_of(&["nstat", "-az", "TcpExtTCPSynRetrans"]);
    out.lines()
        .find_map(|l| l.strip_prefix("TcpExtTCPSynRetrans"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no TcpExtTCPSynRetrans in `nstat` of {}: {out:?}", ns.name))
}

fn serve(stream: TcpStream, closer: Closer) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(STEP_TIMEOUT));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || writer.write_all(b"ok\n").is_err() {
        return;
    }
    if closer == Closer::Client {
        // Until the client's FIN.
        let _ = reader.read_to_end(&mut Vec::new());
    }
}

/// What a churn run saw.
#[derive(Debug, Default)]
pub struct ChurnTally {
    pub ok: u64,
    pub failed: u64,
    /// Connects that took longer than [`STALL`]: a SYN retransmitted, or
    /// the client thread kept from a CPU that long.
    pub stalled: u64,
    /// SYNs the client's kernel sent again (`TcpExtTCPSynRetrans` over the
    /// run): each one a SYN or SYN-ACK lost, or a SYN refused. Unlike
    /// [`Self::stalled`] this is a protocol fact, not a time.
    pub syn_retransmissions: u64,
    pub failures: Vec<String>,
    /// The first stalled connects: source, when (since the start) and how
    /// long, to find them in a capture or a log.
    pub stalls: Vec<String>,
    pub elapsed: Duration,
}

impl ChurnTally {
    pub fn connections(&self) -> u64 {
        self.ok + self.failed
    }

    fn add(&mut self, other: ChurnTally) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.stalled += other.stalled;
        self.failures.extend(other.failures.into_iter().take(10));
        self.stalls.extend(other.stalls.into_iter().take(10));
    }
}

/// A connect that takes this long most likely lost or had refused its first
/// SYN: Linux retransmits a SYN after its initial RTO of 1 s, and a
/// connection inside the test's namespaces needs well under a millisecond
/// otherwise. On a starved machine a thread can also wait that long for a
/// CPU, so [`ChurnTally::syn_retransmissions`] is what tells them apart.
pub const STALL: Duration = Duration::from_millis(900);

/// Paced short connections from `client` to `to`, `rate` a second spread
/// over `threads` threads, each from the next of `sources` (the client's
/// addresses, bound before connecting; none: the kernel picks address and
/// port), for at least `run_for` and until at least `at_least` connections
/// were made.
pub struct Churn<'a> {
    pub client: &'a NetNs,
    pub to: SocketAddrV4,
    pub sources: Vec<Ipv4Addr>,
    pub closer: Closer,
    pub rate: u32,
    pub threads: usize,
    pub run_for: Duration,
    pub at_least: u64,
}

impl Churn<'_> {
    pub fn run(&self) -> ChurnTally {
        let retransmitted_before = syn_retransmissions(self.client);
        let started = Instant::now();
        let per_thread = (self.at_least as usize).div_ceil(self.threads) as u64;
        let interval = Duration::from_secs(1) * self.threads as u32 / self.rate;
        let handles: Vec<_> = (0..self.threads)
            .map(|t| {
                let (to, closer, run_for) = (self.to, self.closer, self.run_for);
                let mut sources: Vec<Option<Ipv4Addr>> = self
                    .sources
                    .iter()
                    .skip(t)
                    .step_by(self.threads)
                    .copied()
                    .map(Some)
                    .collect();
                if sources.is_empty() {
                    sources = vec![self.sources.first().copied()];
                }
                self.client.spawn(move || {
                    let mut tally = ChurnTally::default();
                    let mut next = Instant::now();
                    let mut i = 0usize;
                    while started.elapsed() < run_for || tally.connections() < per_thread {
                        let source = sources[i % sources.len()];
                        i += 1;
                        let at = started.elapsed();
                        match one_connection(source, to, closer) {
                            Ok((connect, _)) if connect < STALL => tally.ok += 1,
                            Ok((connect, from)) => {
                                tally.ok += 1;
                                tally.stalled += 1;
                                if tally.stalls.len() < 10 {
                                    tally
                                        .stalls
                                        .push(format!("from {from} at {at:.3?}: connect took {connect:.3?}"));
                                }
                            }
                            Err(e) => {
                                tally.failed += 1;
                                if tally.failures.len() < 10 {
                                    tally.failures.push(format!("from {source:?}: {e}"));
                                }
                            }
                        }
                        next += interval;
                        match next.checked_duration_since(Instant::now()) {
                            Some(wait) => thread::sleep(wait),
                            // Behind: no burst to catch up.
                            None => next = Instant::now(),
                        }
                    }
                    tally
                })
            })
            .collect();
        let mut tally = ChurnTally::default();
        for h in handles {
            tally.add(h.join().expect("a churn thread"));
        }
        tally.elapsed = started.elapsed();
        tally.syn_retransmissions = syn_retransmissions(self.client) - retransmitted_before;
        tally
    }
}

/// One connection from `source` (or the kernel's choice): connect, ask, read the answer, close as
/// `closer` says. Returns how long the connect took, and from where.
fn one_connection(
    source: Option<Ipv4Addr>,
    to: SocketAddrV4,
    closer: Closer,
) -> std::io::Result<(Duration, std::net::SocketAddr)> {
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    if let Some(source) = source {
        bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(source, 0)))?;
    }
    // A connect refused by silence fails after this, not after Linux's two
    // minutes of SYN retries.
    let limit = nix::sys::time::TimeVal::new(STEP_TIMEOUT.as_secs() as _, 0);
    setsockopt(&fd, sockopt::SendTimeout, &limit)?;
    let started = Instant::now();
    connect(fd.as_raw_fd(), &SockaddrIn::from(to))?;
    let connected = started.elapsed();
    let stream = TcpStream::from(fd);
    let from = stream.local_addr()?;
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    (&stream).write_all(b"hello\n")?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 || line != "ok\n" {
        return Err(std::io::Error::other(format!("answer {line:?}")));
    }
    if closer == Closer::Server {
        // Until the server's FIN, so it surely closed first.
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest)?;
    }
    Ok((connected, from))
}
