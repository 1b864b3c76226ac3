//! Hand-made TCP segments sent through a raw IPv4 socket, from any source
//! address: a forged RST on someone's connection, SYNs from sources that
//! will never answer. The socket belongs to the namespace it was opened in.

use std::{
    net::SocketAddrV4,
    os::fd::{AsRawFd as _, OwnedFd},
};

use etherparse::PacketBuilder;
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, sendto, socket};

use crate::{
    packets::{ACK, FIN, RST, SYN},
    topology::NetNs,
};

/// A raw socket that sends whole IPv4 packets as given (`IPPROTO_RAW`
/// implies `IP_HDRINCL`).
pub struct RawSender {
    socket: OwnedFd,
}

/// A segment's header fields, as on the wire but host order.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub flags: u8,
    pub seq: u32,
    /// Sent only with the ACK flag.
    pub ack: u32,
}

impl RawSender {
    /// A raw socket of `ns`.
    pub fn open_in(ns: &NetNs) -> Self {
        ns.run(|| {
            let socket = socket(AddressFamily::Inet, SockType::Raw, SockFlag::empty(), SockProtocol::Raw)
                .expect("a raw socket (needs root)");
            RawSender { socket }
        })
    }

    /// Sends `segment` (no payload, TTL 64, valid checksums).
    pub fn send(&self, segment: &Segment) {
        let mut builder = PacketBuilder::ipv4(segment.src.ip().octets(), segment.dst.ip().octets(), 64).tcp(
            segment.src.port(),
            segment.dst.port(),
            segment.seq,
            64240,
        );
        if segment.flags & SYN != 0 {
            builder = builder.syn();
        }
        if segment.flags & ACK != 0 {
            builder = builder.ack(segment.ack);
        }
        if segment.flags & RST != 0 {
            builder = builder.rst();
        }
        if segment.flags & FIN != 0 {
            builder = builder.fin();
        }
        let mut packet = Vec::with_capacity(builder.size(0));
        builder.write(&mut packet, &[]).expect("the segment builds");
        let to = SockaddrIn::from(segment.dst);
        sendto(self.socket.as_raw_fd(), &packet, &to, MsgFlags::empty()).expect("send the raw segment");
    }
}
