//! A spoofed SYN flood for tests and benchmarks: SYNs to a VIP from sources
//! nobody routes back to, written as whole Ethernet frames to an interface
//! through an AF_PACKET socket, so no handshake ever completes. The sources
//! are spread over 198.18.0.0/15 (RFC 2544's benchmarking range) and their
//! ports, one new 4-tuple per SYN. Bounded in count and time.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    thread,
    time::{Duration, Instant},
};

use etherparse::{PacketBuilder, TcpOptionElement};

use crate::{cmd::ifindex, topology::NetNs};

/// What to send.
#[derive(Clone, Debug)]
pub struct SynFlood {
    /// The interface to send on, in the sender's namespace.
    pub interface: &'static str,
    /// The frames' source MAC (the sender's own, so the bridge never floods
    /// the answers) and destination MAC (the LB's).
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub target: SocketAddrV4,
    /// SYNs to send, spread evenly over `duration`.
    pub count: u64,
    pub duration: Duration,
}

/// What was sent.
#[derive(Clone, Copy, Debug)]
pub struct FloodReport {
    pub sent: u64,
    pub elapsed: Duration,
}

/// SYNs are sent in bursts of this many, then the pace is checked.
const BURST: u64 = 256;

impl SynFlood {
    /// Sends the flood from `ns`, on a thread of its own; join the handle
    /// for the report.
    pub fn start(self, ns: &NetNs) -> thread::JoinHandle<FloodReport> {
        ns.spawn(move || self.send().expect("send the SYN flood"))
    }

    fn send(&self) -> io::Result<FloodReport> {
        let socket = PacketSocket::bind(self.interface)?;
        let started = Instant::now();
        let mut frame = Vec::with_capacity(128);
        let mut sent = 0;
        while sent < self.count {
            for _ in 0..BURST.min(self.count - sent) {
                self.write_syn(sent, &mut frame);
                socket.send(&frame)?;
                sent += 1;
            }
            let due = self.duration.mul_f64(sent as f64 / self.count as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                thread::sleep(ahead);
            }
        }
        Ok(FloodReport {
            sent,
            elapsed: started.elapsed(),
        })
    }

    /// The `n`th SYN: its own source address and port, MSS and window
    /// scaling as a real stack would send.
    fn write_syn(&self, n: u64, frame: &mut Vec<u8>) {
        let source = spoofed_source(n);
        let builder = PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
            .ipv4(source.ip().octets(), self.target.ip().octets(), 64)
            .tcp(source.port(), self.target.port(), n as u32 ^ 0x5eed_5eed, 64240)
            .syn()
            .options(&[
                TcpOptionElement::MaximumSegmentSize(1460),
                TcpOptionElement::Noop,
                TcpOptionElement::WindowScale(7),
            ])
            .expect("options fit");
        frame.clear();
        builder.write(frame, b"").expect("frame builds");
    }
}

/// The source of SYN `n`: 198.18.0.0/15 host by host, then the next port.
pub fn spoofed_source(n: u64) -> SocketAddrV4 {
    const HOSTS: u64 = 1 << 17;
    let host = (n % HOSTS) as u32;
    let port = 1024 + ((n / HOSTS) % 64_000) as u16;
    SocketAddrV4::new(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + host), port)
}

/// An AF_PACKET socket bound to one interface, for whole frames.
struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    fn bind(interface: &str) -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex(interface) as i32;
        // Protocol 0: the socket sends and receives nothing it is not given.
        // SAFETY: addr is a live sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd })
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        loop {
            // SAFETY: frame is readable for its length; fd is a bound socket.
            let rc = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if rc >= 0 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            // A full device queue: wait for it rather than lose the SYN.
            if error.raw_os_error() != Some(libc::ENOBUFS) {
                return Err(error);
            }
            thread::sleep(Duration::from_micros(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_syn_has_its_own_unroutable_source() {
        let sources: HashSet<_> = (0..200_000).map(spoofed_source).collect();
        assert_eq!(sources.len(), 200_000);
        let benchmarking = u32::from(Ipv4Addr::new(198, 18, 0, 0));
        assert!(
            sources
                .iter()
                .all(|s| u32::from(*s.ip()) >> 17 == benchmarking >> 17 && s.port() >= 1024)
        );
    }
}
