//! Test servers and clients: a stoppable TCP accept loop, name servers
//! (TCP and UDP) that answer every line or datagram with their own name, so
//! a client learns which backend served it, and a bulk server for large
//! transfers. Every one takes IPv4 and IPv6 addresses alike
//! (`impl Into<SocketAddr>`, so a `SocketAddrV4` still does).

use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::topology::{Family, Host, NetNs};

/// A TCP accept loop: each connection is served on a thread of its own
/// until the loop is dropped. Dropping it stops accepting and raises the
/// stop flag that long-running handlers watch.
pub struct AcceptLoop {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AcceptLoop {
    /// Listens on `addr` in `ns` and runs `serve(connection, stop flag)` for
    /// every connection.
    pub fn start(
        ns: &NetNs,
        addr: impl Into<SocketAddr>,
        serve: impl Fn(TcpStream, &AtomicBool) + Send + Sync + 'static,
    ) -> Self {
        let addr = addr.into();
        let listener = ns.run(move || bind_retrying("tcp", addr, TcpListener::bind));
        // Non-blocking, so the loop sees the stop flag between connections.
        listener.set_nonblocking(true).expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let serve = Arc::new(serve);
        let thread = thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (serve, stopping) = (serve.clone(), stopping.clone());
                        thread::spawn(move || {
                            let _ = stream.set_nonblocking(false);
                            serve(stream, &stopping);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        AcceptLoop {
            stop,
            thread: Some(thread),
        }
    }
}

/// A test server's `bind` (of `proto`) to `addr`, retried for up to 2 s
/// while the address is in use. A socket this process closed a moment ago
/// (a server stopped to start another on its address) can still be open in
/// a child that another test's thread has forked and not yet exec'd: the
/// child holds a copy of every descriptor until the exec closes them.
fn bind_retrying<S>(proto: &str, addr: SocketAddr, bind: impl Fn(SocketAddr) -> std::io::Result<S>) -> S {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match bind(addr) {
            Ok(socket) => return socket,
            Err(e) if e.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("bind {proto} {addr}: {e}"),
        }
    }
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A server that answers every line with its name, stopped on drop.
pub struct NameServer {
    _accept: AcceptLoop,
}

impl NameServer {
    pub fn start(ns: &NetNs, addr: impl Into<SocketAddr>, name: String) -> Self {
        let serve = move |stream, _: &AtomicBool| answer_with_name(stream, &name);
        NameServer {
            _accept: AcceptLoop::start(ns, addr, serve),
        }
    }

    /// One on `port` of every host's IPv4 address, named b0, b1, ... in
    /// order.
    pub fn start_on_each(hosts: &[Host], port: u16) -> Vec<NameServer> {
        Self::start_on_each_of(hosts, Family::Ipv4, port)
    }

    /// One on `port` of every host's `family` address, named b0, b1, ...
    /// in order.
    pub fn start_on_each_of(hosts: &[Host], family: Family, port: u16) -> Vec<NameServer> {
        hosts
            .iter()
            .enumerate()
            .map(|(i, h)| NameServer::start(&h.ns, (h.addr_of(family), port), format!("b{i}")))
            .collect()
    }
}

/// Answers `peer` with the address the connection comes from (what the
/// backend's access log would say), any other line with `name`.
fn answer_with_name(stream: TcpStream, name: &str) {
    let mut writer = stream.try_clone().expect("clone stream");
    let peer = stream.peer_addr().map_or_else(|e| e.to_string(), |a| a.to_string());
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let answer = if line == "peer" { peer.as_str() } else { name };
        if writeln!(writer, "{answer}").is_err() {
            return;
        }
    }
}

/// Opens `n` connections to `vip` from `client`, one after another, asks
/// each who served it and closes it.
pub fn ask_names(client: &NetNs, vip: impl Into<SocketAddr>, n: usize) -> std::io::Result<Vec<String>> {
    let vip = vip.into();
    client.run(move || {
        (0..n)
            .map(|_| NameClient::connect(vip).and_then(|mut c| c.ask()))
            .collect()
    })
}

/// How long a test client's connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A TCP connection to `to` from the local address `from` (one of the
/// client's, of `to`'s family), a port of the kernel's choice, its connect
/// bounded by [`CONNECT_TIMEOUT`].
pub fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect, setsockopt, socket, sockopt::SendTimeout,
    };
    let family = match to {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    // Bounds connect() as connect_timeout does.
    let limit = nix::sys::time::TimeVal::new(CONNECT_TIMEOUT.as_secs() as _, 0);
    setsockopt(&fd, SendTimeout, &limit)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(SocketAddr::new(from, 0)))?;
    connect(fd.as_raw_fd(), &SockaddrStorage::from(to))?;
    Ok(TcpStream::from(fd))
}

/// A client connection that asks "who are you?" line by line.
pub struct NameClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl NameClient {
    pub fn connect(to: impl Into<SocketAddr>) -> std::io::Result<Self> {
        Self::over(TcpStream::connect_timeout(&to.into(), CONNECT_TIMEOUT)?)
    }

    fn over(stream: TcpStream) -> std::io::Result<Self> {
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(NameClient {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// The client's end of the connection.
    pub fn local_addr(&self) -> SocketAddrV4 {
        match self.writer.local_addr().expect("a connected socket") {
            SocketAddr::V4(addr) => addr,
            SocketAddr::V6(addr) => panic!("an IPv4 connection, not {addr}"),
        }
    }

    /// The client's end of the connection, of either family.
    pub fn local_socket(&self) -> SocketAddr {
        self.writer.local_addr().expect("a connected socket")
    }

    /// The name of the server on the other end.
    pub fn ask(&mut self) -> std::io::Result<String> {
        self.request("who")
    }

    /// The address the server sees this connection come from.
    pub fn peer_seen(&mut self) -> std::io::Result<String> {
        self.request("peer")
    }

    fn request(&mut self, question: &str) -> std::io::Result<String> {
        writeln!(self.writer, "{question}")?;
        self.next_line()
    }

    /// The next line the server sends, unasked: how a test sees the
    /// connection end (a reset is `ConnectionReset`).
    pub fn next_line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim().to_owned())
    }
}

/// A server for bulk transfers. A connection's first line asks for one:
/// `upload N` (the server reads N bytes, then answers `ok N`) or
/// `download N` (the server writes N bytes, then closes).
pub struct BulkServer {
    _accept: AcceptLoop,
}

/// How long a bulk transfer may stall before it fails: a lost PMTU
/// signal stalls it for good (nothing else shrinks the segments).
const BULK_STALL: Duration = Duration::from_secs(20);

impl BulkServer {
    pub fn start(ns: &NetNs, addr: impl Into<SocketAddr>) -> Self {
        let serve = |stream: TcpStream, _: &AtomicBool| {
            // A peer may connect and go (the LB's neighbour warm-up).
            let _ = serve_bulk(stream);
        };
        BulkServer {
            _accept: AcceptLoop::start(ns, addr, serve),
        }
    }
}

fn serve_bulk(stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(BULK_STALL))?;
    stream.set_write_timeout(Some(BULK_STALL))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    match request.split_whitespace().collect::<Vec<_>>()[..] {
        ["upload", n] => {
            let n: u64 = n.parse().map_err(std::io::Error::other)?;
            let got = std::io::copy(&mut reader.by_ref().take(n), &mut std::io::sink())?;
            writeln!(writer, "ok {got}")
        }
        ["download", n] => {
            let n: u64 = n.parse().map_err(std::io::Error::other)?;
            std::io::copy(&mut std::io::repeat(b'd').take(n), &mut writer).map(|_| ())
        }
        _ => Ok(()),
    }
}

/// Sends `bytes` to the bulk server at `to` from `client`, and fails unless
/// the server got them all.
pub fn upload(client: &NetNs, to: impl Into<SocketAddr>, bytes: u64) -> std::io::Result<()> {
    let to = to.into();
    client.run(move || {
        let (mut writer, mut reader) = bulk_connect(to)?;
        writeln!(writer, "upload {bytes}")?;
        std::io::copy(&mut std::io::repeat(b'u').take(bytes), &mut writer)?;
        let mut answer = String::new();
        reader.read_line(&mut answer)?;
        if answer.trim() != format!("ok {bytes}") {
            return Err(std::io::Error::other(format!("server answered {answer:?}")));
        }
        Ok(())
    })
}

/// Fetches `bytes` from the bulk server at `from` into `client`; returns
/// how many arrived before the server closed.
pub fn download(client: &NetNs, from: impl Into<SocketAddr>, bytes: u64) -> std::io::Result<u64> {
    let from = from.into();
    client.run(move || {
        let (mut writer, mut reader) = bulk_connect(from)?;
        writeln!(writer, "download {bytes}")?;
        std::io::copy(&mut reader, &mut std::io::sink())
    })
}

fn bulk_connect(to: SocketAddr) -> std::io::Result<(TcpStream, BufReader<TcpStream>)> {
    let stream = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(BULK_STALL))?;
    stream.set_write_timeout(Some(BULK_STALL))?;
    Ok((stream.try_clone()?, BufReader::new(stream)))
}

/// A UDP server that answers every datagram with its name (`peer` with the
/// address the datagram came from), stopped on drop.
pub struct UdpNameServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpNameServer {
    pub fn start(ns: &NetNs, addr: impl Into<SocketAddr>, name: String) -> Self {
        let addr = addr.into();
        let socket = ns.run(move || bind_retrying("udp", addr, UdpSocket::bind));
        // A timeout, so the loop sees the stop flag between datagrams.
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("udp read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stopping.load(Ordering::Relaxed) {
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let peer = from.to_string();
                let answer = if &buf[..len] == b"peer" {
                    peer.as_str()
                } else {
                    name.as_str()
                };
                let _ = socket.send_to(answer.as_bytes(), from);
            }
        });
        UdpNameServer {
            stop,
            thread: Some(thread),
        }
    }

    /// One on UDP `port` of every host's IPv4 address, named b0, b1, ...
    /// in order.
    pub fn start_on_each(hosts: &[Host], port: u16) -> Vec<UdpNameServer> {
        Self::start_on_each_of(hosts, Family::Ipv4, port)
    }

    /// One on UDP `port` of every host's `family` address, named b0, b1,
    /// ... in order.
    pub fn start_on_each_of(hosts: &[Host], family: Family, port: u16) -> Vec<UdpNameServer> {
        hosts
            .iter()
            .enumerate()
            .map(|(i, h)| UdpNameServer::start(&h.ns, (h.addr_of(family), port), format!("b{i}")))
            .collect()
    }
}

impl Drop for UdpNameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP client socket connected to one address (it takes datagrams from
/// that address only), asking "who are you?" datagram by datagram: every
/// question from the same socket is one UDP flow.
pub struct UdpNameClient {
    socket: UdpSocket,
}

impl UdpNameClient {
    /// A socket on an ephemeral port of `to`'s family, connected to `to`;
    /// created in the caller's namespace.
    pub fn connect(to: impl Into<SocketAddr>) -> std::io::Result<Self> {
        let to = to.into();
        let socket = UdpSocket::bind((Family::of(to.ip()).unspecified(), 0))?;
        socket.connect(to)?;
        socket.set_read_timeout(Some(Duration::from_secs(1)))?;
        Ok(UdpNameClient { socket })
    }

    /// The client's end of the flow.
    pub fn local_addr(&self) -> SocketAddrV4 {
        match self.socket.local_addr().expect("a bound socket") {
            SocketAddr::V4(addr) => addr,
            SocketAddr::V6(addr) => panic!("an IPv4 socket, not {addr}"),
        }
    }

    /// The client's end of the flow, of either family.
    pub fn local_socket(&self) -> SocketAddr {
        self.socket.local_addr().expect("a bound socket")
    }

    /// The name of the server that answers. A question or answer lost (UDP
    /// promises no delivery; the first datagram may wait for ARP) is asked
    /// again, on the same flow, up to three times.
    pub fn ask(&self) -> std::io::Result<String> {
        self.request(b"who")
    }

    /// The address and port the server sees this flow's datagrams come
    /// from, asked as [`UdpNameClient::ask`] asks.
    pub fn peer_seen(&self) -> std::io::Result<String> {
        self.request(b"peer")
    }

    fn request(&self, question: &[u8]) -> std::io::Result<String> {
        let mut buf = [0u8; 1500];
        let mut last = std::io::ErrorKind::TimedOut.into();
        for _ in 0..3 {
            self.socket.send(question)?;
            match self.socket.recv(&mut buf) {
                Ok(len) => return Ok(String::from_utf8_lossy(&buf[..len]).into_owned()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// Asks `vip` who it is from `n` fresh UDP sockets in `client`, one after
/// another: `n` new flows.
pub fn ask_names_udp(client: &NetNs, vip: impl Into<SocketAddr>, n: usize) -> std::io::Result<Vec<String>> {
    let vip = vip.into();
    client.run(move || {
        (0..n)
            .map(|_| UdpNameClient::connect(vip).and_then(|c| c.ask()))
            .collect()
    })
}
