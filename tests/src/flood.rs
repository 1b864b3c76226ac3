//! A spoofed SYN flood and a prober of legitimate connections, for the
//! SYN-flood benchmark workload and end-to-end tests.
//!
//! - [`flood`] sends crafted SYN frames from random source addresses of an
//!   unroutable network (IPv4 or, to an IPv6 target, IPv6: [`SOURCES6`])
//!   and random ports, as fast as one core can, through
//!   an AF_PACKET socket on an interface of the calling thread's namespace,
//!   until a frame count or a duration is reached. Nobody ever answers the
//!   SYN-ACKs: there is no route back to the sources.
//! - [`probe`] opens paced legitimate connections (connect, one HTTP
//!   request, the whole response) and records each one's outcome and
//!   connect latency; [`PhaseStats`] summarises those that started in a
//!   window (before, during or after a flood).

use std::{
    io,
    mem::size_of,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    thread,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    cmd::ifindex,
    http,
    packets::{ETH_LEN, SYN, Segment},
    rng::Rng,
};

/// Where spoofed sources come from: a network and its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Sources {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Sources {
    /// 198.18.0.0/15, set aside for benchmarks (RFC 2544): routed nowhere.
    pub const BENCHMARKING: Sources = Sources {
        network: Ipv4Addr::new(198, 18, 0, 0),
        prefix: 15,
    };

    /// A random address of the network.
    pub fn pick(&self, rng: &mut Rng) -> Ipv4Addr {
        let host_bits = 32 - self.prefix as u32;
        let mask = if host_bits == 32 {
            u32::MAX
        } else {
            (1u32 << host_bits) - 1
        };
        Ipv4Addr::from((u32::from(self.network) & !mask) | (rng.next_u32() & mask))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let shift = 32 - self.prefix as u32;
        let net = |a: Ipv4Addr| u32::from(a).checked_shr(shift).unwrap_or(0);
        net(addr) == net(self.network)
    }
}

/// The spoofed sources of a flood to an IPv6 target: 2001:2::/48, set
/// aside for benchmarks (RFC 5180), routed nowhere; the last 64 bits random.
pub const SOURCES6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0);

/// A random address of [`SOURCES6`].
fn pick6(rng: &mut Rng) -> Ipv6Addr {
    let host = (rng.next_u32() as u128) << 32 | rng.next_u32() as u128;
    Ipv6Addr::from(u128::from(SOURCES6) | host)
}

/// An Ethernet/IPv4/TCP SYN with an MSS option.
pub const SYN_FRAME_LEN: usize = ETH_LEN + 20 + 24;
/// An Ethernet/IPv6/TCP SYN with an MSS option.
pub const SYN6_FRAME_LEN: usize = ETH_LEN + 40 + 24;

/// Spoofed SYN frames to one target, built from a template: per frame only
/// the source address and port, the sequence number and the IP id change,
/// and both checksums are finished from precomputed partial sums.
pub struct SynFrames {
    template: [u8; SYN_FRAME_LEN],
    /// One's complement sums of the IP header and of the TCP pseudo-header
    /// plus segment, without the fields that change.
    ip_sum: u32,
    tcp_sum: u32,
}

const IP: usize = ETH_LEN;
const TCP: usize = ETH_LEN + 20;

fn word(bytes: &[u8], at: usize) -> u32 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]]) as u32
}

fn sum_words(bytes: &[u8]) -> u32 {
    (0..bytes.len() / 2).map(|i| word(bytes, 2 * i)).sum()
}

fn finish(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl SynFrames {
    pub fn new(src_mac: [u8; 6], dst_mac: [u8; 6], target: SocketAddrV4) -> Self {
        let mut segment = Segment::new(
            src_mac,
            dst_mac,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            target,
            SYN,
        );
        segment.seq = 0;
        segment.tcp_options = &[2, 4, 0x05, 0xb4];
        let mut frame = Vec::with_capacity(SYN_FRAME_LEN);
        segment.write(&mut frame);
        let mut template: [u8; SYN_FRAME_LEN] = frame.try_into().expect("a SYN with MSS is 58 bytes");
        template[IP + 10..IP + 12].fill(0);
        template[TCP + 16..TCP + 18].fill(0);
        let ip_sum = sum_words(&template[IP..TCP]);
        let pseudo = word(&template, IP + 16) + word(&template, IP + 18) + 6 + (SYN_FRAME_LEN - TCP) as u32;
        let tcp_sum = pseudo + sum_words(&template[TCP..]);
        SynFrames {
            template,
            ip_sum,
            tcp_sum,
        }
    }

    /// Writes the SYN from `src` with sequence number `seq` and IP id
    /// `ip_id` into `frame`.
    pub fn write(&self, frame: &mut [u8; SYN_FRAME_LEN], src: SocketAddrV4, seq: u32, ip_id: u16) {
        *frame = self.template;
        let addr = src.ip().octets();
        frame[IP + 4..IP + 6].copy_from_slice(&ip_id.to_be_bytes());
        frame[IP + 12..IP + 16].copy_from_slice(&addr);
        frame[TCP..TCP + 2].copy_from_slice(&src.port().to_be_bytes());
        frame[TCP + 4..TCP + 8].copy_from_slice(&seq.to_be_bytes());
        let addr_sum = word(&addr, 0) + word(&addr, 2);
        let ip_check = finish(self.ip_sum + addr_sum + ip_id as u32);
        let tcp_check = finish(self.tcp_sum + addr_sum + src.port() as u32 + (seq >> 16) + (seq & 0xffff));
        frame[IP + 10..IP + 12].copy_from_slice(&ip_check.to_be_bytes());
        frame[TCP + 16..TCP + 18].copy_from_slice(&tcp_check.to_be_bytes());
    }
}

/// [`SynFrames`] for an IPv6 target: per frame the source address and
/// port and the sequence number change, and the TCP checksum (IPv6 has no
/// header checksum) is finished from a precomputed partial sum.
pub struct Syn6Frames {
    template: [u8; SYN6_FRAME_LEN],
    /// The pseudo-header and segment's sum without the fields that change.
    tcp_sum: u32,
}

const TCP6: usize = ETH_LEN + 40;

impl Syn6Frames {
    pub fn new(src_mac: [u8; 6], dst_mac: [u8; 6], target: SocketAddrV6) -> Self {
        let builder = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
            .ipv6(Ipv6Addr::UNSPECIFIED.octets(), target.ip().octets(), 64)
            .tcp(0, target.port(), 0, 64240)
            .syn()
            .options(&[etherparse::TcpOptionElement::MaximumSegmentSize(1440)])
            .expect("an MSS option fits");
        let mut frame = Vec::with_capacity(SYN6_FRAME_LEN);
        builder.write(&mut frame, b"").expect("the SYN builds");
        let mut template: [u8; SYN6_FRAME_LEN] = frame.try_into().expect("an IPv6 SYN with MSS is 78 bytes");
        template[TCP6 + 16..TCP6 + 18].fill(0);
        let pseudo = sum_words(&template[IP + 24..TCP6]) + 6 + (SYN6_FRAME_LEN - TCP6) as u32;
        Syn6Frames {
            template,
            tcp_sum: pseudo + sum_words(&template[TCP6..]),
        }
    }

    /// Writes the SYN from `src` with sequence number `seq` into `frame`.
    pub fn write(&self, frame: &mut [u8; SYN6_FRAME_LEN], src: SocketAddrV6, seq: u32) {
        *frame = self.template;
        let addr = src.ip().octets();
        frame[IP + 8..IP + 24].copy_from_slice(&addr);
        frame[TCP6..TCP6 + 2].copy_from_slice(&src.port().to_be_bytes());
        frame[TCP6 + 4..TCP6 + 8].copy_from_slice(&seq.to_be_bytes());
        let sum = self.tcp_sum + sum_words(&addr) + src.port() as u32 + (seq >> 16) + (seq & 0xffff);
        frame[TCP6 + 16..TCP6 + 18].copy_from_slice(&finish(sum).to_be_bytes());
    }
}

/// A flood's frames, for its target's family.
enum Frames {
    V4(SynFrames),
    V6(Syn6Frames),
}

impl Frames {
    fn new(o: &FloodOptions) -> Self {
        match o.target {
            SocketAddr::V4(target) => Frames::V4(SynFrames::new(o.src_mac, o.dst_mac, target)),
            SocketAddr::V6(target) => Frames::V6(Syn6Frames::new(o.src_mac, o.dst_mac, target)),
        }
    }

    /// The next spoofed SYN, written at the start of `buffer`; its length.
    fn write(&self, buffer: &mut [u8; SYN6_FRAME_LEN], sources: &Sources, rng: &mut Rng) -> usize {
        let port = 1024 + rng.below(64512) as u16;
        match self {
            Frames::V4(frames) => {
                let src = SocketAddrV4::new(sources.pick(rng), port);
                let frame = (&mut buffer[..SYN_FRAME_LEN]).try_into().expect("room for an IPv4 SYN");
                frames.write(frame, src, rng.next_u32(), rng.next_u32() as u16);
                SYN_FRAME_LEN
            }
            Frames::V6(frames) => {
                let src = SocketAddrV6::new(pick6(rng), port, 0, 0);
                frames.write(buffer, src, rng.next_u32());
                SYN6_FRAME_LEN
            }
        }
    }

    fn ether_type(&self) -> u16 {
        match self {
            Frames::V4(_) => libc::ETH_P_IP as u16,
            Frames::V6(_) => libc::ETH_P_IPV6 as u16,
        }
    }
}

#[derive(Clone, Debug)]
pub struct FloodOptions {
    /// The interface to send on, in the calling thread's namespace.
    pub interface: String,
    /// The interface's own MAC (a switch learns nothing new from the flood).
    pub src_mac: [u8; 6],
    /// The next hop's MAC: the target's, on one segment.
    pub dst_mac: [u8; 6],
    pub target: SocketAddr,
    /// The spoofed sources of an IPv4 target (an IPv6 one's: [`SOURCES6`]).
    pub sources: Sources,
    pub max_frames: u64,
    pub max_duration: Duration,
    pub seed: u64,
    /// Asked between batches: the flood ends early when it says so.
    pub abort: fn() -> bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FloodReport {
    /// Frames the kernel took.
    pub frames: u64,
    /// Batches the kernel refused (no buffer space): the sender outran the
    /// interface.
    pub refused: u64,
    pub seconds: f64,
    pub frames_per_sec: f64,
}

/// Frames per `sendmmsg`.
const BATCH: usize = 64;

/// Sends the flood from the calling thread, until `max_frames` are sent,
/// `max_duration` has passed or `abort` says so.
pub fn flood(o: &FloodOptions) -> io::Result<FloodReport> {
    // SAFETY: plain socket(2); the descriptor is owned at once. Protocol 0:
    // the socket sends only and never receives a copy of the traffic.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let bypass: libc::c_int = 1;
    // SAFETY: a valid option value of its declared size. Skipping the qdisc
    // is what raw senders do for rate; failure only costs speed.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&bypass as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // SAFETY: all zeroes is a valid sockaddr_ll, filled in below.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    let frames = Frames::new(o);
    to.sll_protocol = frames.ether_type().to_be();
    to.sll_ifindex = ifindex(&o.interface) as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&o.dst_mac);

    let mut rng = Rng::new(o.seed);
    let mut buffers = vec![[0u8; SYN6_FRAME_LEN]; BATCH];
    let mut lens = [0usize; BATCH];
    let (mut sent, mut refused) = (0u64, 0u64);
    let started = Instant::now();
    while sent < o.max_frames && started.elapsed() < o.max_duration && !(o.abort)() {
        let n = BATCH.min((o.max_frames - sent) as usize);
        for (buffer, len) in buffers[..n].iter_mut().zip(&mut lens) {
            *len = frames.write(buffer, &o.sources, &mut rng);
        }
        let mut iovecs: Vec<libc::iovec> = buffers[..n]
            .iter_mut()
            .zip(lens)
            .map(|(b, len)| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: len,
            })
            .collect();
        let mut headers: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iov| {
                // SAFETY: all zeroes is a valid msghdr; the fields that
                // matter are set next.
                let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                header.msg_hdr.msg_name = (&mut to as *mut libc::sockaddr_ll).cast();
                header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                header.msg_hdr.msg_iov = iov;
                header.msg_hdr.msg_iovlen = 1;
                header
            })
            .collect();
        // SAFETY: `headers` holds n messages whose pointers (address, iovec,
        // frame buffer) all outlive the call.
        let rc = unsafe { libc::sendmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), n as u32, 0) };
        if rc < 0 {
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => refused += 1,
                _ => return Err(error),
            }
        } else {
            sent += rc as u64;
            // The kernel stops a batch at the first frame it refuses.
            refused += ((rc as usize) < n) as u64;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(FloodReport {
        frames: sent,
        refused,
        seconds,
        frames_per_sec: sent as f64 / seconds,
    })
}

#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub target: SocketAddr,
    /// Connections started per second, on schedule whatever earlier ones do.
    pub rate: u32,
    pub duration: Duration,
    /// For the connect, and again for the response.
    pub timeout: Duration,
}

/// One legitimate connection: when it started, how long its connect took,
/// and why it failed, if it did.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub at: Instant,
    pub connect: Option<Duration>,
    pub error: Option<String>,
}

impl Attempt {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// Opens `rate` connections a second to `target` for `duration`, from the
/// calling thread's namespace, each on a thread of its own so that a slow
/// one delays no other: connect, `GET /`, the response read to its end,
/// which must be a 200. Returns every attempt once the last has finished;
/// `abort` stops starting new ones.
pub fn probe(o: &ProbeOptions, abort: fn() -> bool) -> Vec<Attempt> {
    let interval = Duration::from_secs_f64(1.0 / o.rate as f64);
    let total = (o.duration.as_secs_f64() * o.rate as f64) as u32;
    let started = Instant::now();
    let mut running = Vec::with_capacity(total as usize);
    for i in 0..total {
        if abort() {
            break;
        }
        let due = started + interval * i;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let (target, timeout) = (o.target, o.timeout);
        running.push(thread::spawn(move || attempt(target, timeout)));
    }
    running
        .into_iter()
        .map(|t| t.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        .collect()
}

fn attempt(target: SocketAddr, timeout: Duration) -> Attempt {
    let at = Instant::now();
    let mut stream = match TcpStream::connect_timeout(&target, timeout) {
        Ok(stream) => stream,
        Err(e) => {
            return Attempt {
                at,
                connect: None,
                error: Some(format!("connect: {e}")),
            };
        }
    };
    let connect = Some(at.elapsed());
    let error = http::get_and_close(&mut stream, timeout).err();
    Attempt { at, connect, error }
}

/// The attempts that started in one window: how many succeeded and how
/// long their connects took (successful attempts only; a failure counts
/// in the success share).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseStats {
    pub attempts: usize,
    pub succeeded: usize,
    pub success_percent: Option<f64>,
    pub connect_p50_ms: Option<f64>,
    pub connect_p99_ms: Option<f64>,
    pub first_error: Option<String>,
}

impl PhaseStats {
    /// The attempts that started at or after `from` and before `until`.
    pub fn of(attempts: &[Attempt], from: Instant, until: Option<Instant>) -> Self {
        let window: Vec<&Attempt> = attempts
            .iter()
            .filter(|a| a.at >= from && until.is_none_or(|u| a.at < u))
            .collect();
        let mut connects: Vec<f64> = window
            .iter()
            .filter(|a| a.succeeded())
            .filter_map(|a| a.connect)
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        connects.sort_by(f64::total_cmp);
        let succeeded = window.iter().filter(|a| a.succeeded()).count();
        PhaseStats {
            attempts: window.len(),
            succeeded,
            success_percent: (!window.is_empty()).then(|| 100.0 * succeeded as f64 / window.len() as f64),
            connect_p50_ms: percentile(&connects, 50.0),
            connect_p99_ms: percentile(&connects, 99.0),
            first_error: window.iter().find_map(|a| a.error.clone()),
        }
    }
}

/// The nearest-rank percentile `p` of an ascending slice.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packets::{parse_checked, parse_checked6};

    const TARGET: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 100), 80);

    #[test]
    fn spoofed_syns_have_the_fields_they_were_given_and_valid_checksums() {
        let frames = SynFrames::new([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], TARGET);
        let mut rng = Rng::new(9);
        let mut frame = [0u8; SYN_FRAME_LEN];
        for _ in 0..2000 {
            let src = SocketAddrV4::new(Sources::BENCHMARKING.pick(&mut rng), rng.next_u32() as u16);
            let (seq, id) = (rng.next_u32(), rng.next_u32() as u16);
            frames.write(&mut frame, src, seq, id);
            // Panics unless the IPv4 and TCP checksums are both right.
            let view = parse_checked(&frame);
            assert_eq!((view.src, view.dst, view.seq), (src, TARGET, seq));
            assert!(view.flags_syn && !view.flags_ack && !view.flags_rst);
            assert_eq!((view.src_mac, view.dst_mac), ([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]));
            assert_eq!(u16::from_be_bytes([frame[IP + 4], frame[IP + 5]]), id);
        }
    }

    #[test]
    fn spoofed_ipv6_syns_have_the_fields_they_were_given_and_valid_checksums() {
        let target = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 0x100), 80, 0, 0);
        let frames = Syn6Frames::new([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], target);
        let mut rng = Rng::new(9);
        let mut frame = [0u8; SYN6_FRAME_LEN];
        for _ in 0..2000 {
            let src = SocketAddrV6::new(pick6(&mut rng), rng.next_u32() as u16, 0, 0);
            let seq = rng.next_u32();
            frames.write(&mut frame, src, seq);
            assert_eq!(
                u128::from(*src.ip()) >> 80,
                u128::from(SOURCES6) >> 80,
                "in 2001:2::/48"
            );
            // Panics unless the TCP checksum is right.
            let view = parse_checked6(&frame);
            assert_eq!((view.src, view.dst, view.seq), (src, target, seq));
            assert!(view.flags_syn && !view.flags_ack && !view.flags_rst);
            assert_eq!((view.src_mac, view.dst_mac), ([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]));
        }
    }

    #[test]
    fn sources_stay_in_their_network_and_spread_over_it() {
        let mut rng = Rng::new(1);
        let picked: Vec<Ipv4Addr> = (0..10_000).map(|_| Sources::BENCHMARKING.pick(&mut rng)).collect();
        assert!(picked.iter().all(|&a| Sources::BENCHMARKING.contains(a)));
        assert!(picked.iter().any(|a| a.octets()[1] == 18) && picked.iter().any(|a| a.octets()[1] == 19));
        let distinct: std::collections::HashSet<_> = picked.iter().collect();
        assert!(distinct.len() > 9_000, "{} distinct sources", distinct.len());
        assert!(!Sources::BENCHMARKING.contains(Ipv4Addr::new(198, 20, 0, 1)));
        assert!(!Sources::BENCHMARKING.contains(Ipv4Addr::new(10, 99, 0, 2)));
    }

    fn attempt_at(start: Instant, after_ms: u64, connect_ms: Option<u64>, error: Option<&str>) -> Attempt {
        Attempt {
            at: start + Duration::from_millis(after_ms),
            connect: connect_ms.map(Duration::from_millis),
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn phase_stats_count_the_attempts_that_started_in_the_window() {
        let t = Instant::now();
        let attempts = vec![
            attempt_at(t, 0, Some(1), None),
            attempt_at(t, 100, Some(3), None),
            attempt_at(t, 200, None, Some("connect: timed out")),
            attempt_at(t, 300, Some(2), Some("read: reset")),
            attempt_at(t, 400, Some(5), None),
        ];
        let during = PhaseStats::of(
            &attempts,
            t + Duration::from_millis(100),
            Some(t + Duration::from_millis(400)),
        );
        assert_eq!((during.attempts, during.succeeded), (3, 1));
        assert_eq!(during.success_percent.map(|p| p.round()), Some(33.0));
        assert_eq!(
            during.connect_p99_ms,
            Some(3.0),
            "failed attempts' connects are left out"
        );
        assert_eq!(during.first_error.as_deref(), Some("connect: timed out"));
        let after = PhaseStats::of(&attempts, t + Duration::from_millis(400), None);
        assert_eq!((after.attempts, after.success_percent), (1, Some(100.0)));
        let none = PhaseStats::of(&attempts, t + Duration::from_secs(9), None);
        assert_eq!(
            (none.attempts, none.success_percent, none.connect_p50_ms),
            (0, None, None)
        );
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let values: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(100.0));
        assert_eq!(percentile(&values, 99.0), Some(198.0));
        assert_eq!(percentile(&values[..1], 99.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
