//! The fuzz test's traffic. Sessions behave like real connections: a client
//! sends a SYN to the VIP, learns (from what the program emits) which
//! backend and SNAT port the LB chose, and both sides then exchange
//! handshakes, data, FINs, RSTs and ICMP errors with plausible sequence
//! numbers. A share of those frames is mutated (flags, lengths, offsets,
//! header fields, ports at the edges of ranges, addresses, checksums,
//! truncation), and other frames belong to nothing: random bytes, other
//! protocols, other addresses and ports.
//!
//! UDP sessions run beside them, to the UDP service on the VIP's address
//! and port: a client socket sends datagrams, learns its backend and SNAT
//! port from what the program emits, and the backend answers through them;
//! stray replies go to SNAT ports no flow of theirs owns. Their mutations
//! add UDP lengths and checksums (wrong, or 0 for none) to the others.
//!
//! A share of the sessions of either kind are IPv6 clients of the lab's
//! IPv6 services ([`crate::packet_lab::Ipv6Services`]): the same
//! connections and datagrams, to [`VIP6`] and back through [`SNAT6`], with
//! ICMPv6 errors (destination unreachable, packet too big, time exceeded)
//! quoting their segments, and mutations of the IPv6 header's own (payload
//! length, next header, an extension header inserted, hop limit, traffic
//! class and flow label).
//!
//! With the SYN proxy on, the same sessions (of either family) meet it: the client's SYN gets a
//! cookie SYN-ACK, whose sequence number the client learns and acknowledges
//! (so its ACK proves the cookie, as the kernel computes it), data sent
//! before the backend answered is held, and the backend answers the LB's
//! SYN (now and then retransmitting its SYN-ACK with the same ISN). Forged
//! cookie ACKs join them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{
    packet_lab::{BACKENDS6, BLUE, GATEWAY_MAC, GATEWAY6, GREEN, LB_MAC, SNAT, SNAT6, VIP, VIP6, mac_of, mac_of6},
    packets::{
        ACK, ETH_LEN, FIN, FIN_ACK, PSH_ACK, RST, SYN, SYN_ACK, Segment, fix_checksums, internet_checksum, ipv6_l4,
        pseudo_header_sum6,
    },
    rng::Rng,
};

/// What a session of one address family talks to: the lab's addresses of
/// that family, and a router on the clients' side and one on the backends'
/// side, which send ICMP errors.
pub struct Family {
    pub vip: SocketAddr,
    pub snat: IpAddr,
    pub backends: &'static [SocketAddr],
    client_side_router: IpAddr,
    backend_side_router: IpAddr,
    /// Clients' addresses, besides random ones: odd, local, the LB's own.
    odd_clients: &'static [IpAddr],
    /// What mutated addresses become: the LB's, the backends', edges.
    odd_addrs: &'static [IpAddr],
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

const fn v6(segments: [u16; 8]) -> IpAddr {
    let [a, b, c, d, e, f, g, h] = segments;
    IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
}

pub const IPV4: Family = Family {
    vip: SocketAddr::V4(VIP),
    snat: IpAddr::V4(SNAT),
    backends: &[
        SocketAddr::V4(BLUE[0]),
        SocketAddr::V4(BLUE[1]),
        SocketAddr::V4(GREEN[0]),
        SocketAddr::V4(GREEN[1]),
    ],
    client_side_router: v4(192, 168, 0, 1),
    backend_side_router: v4(10, 0, 0, 254),
    odd_clients: &[
        v4(8, 8, 8, 8),
        IpAddr::V4(*BLUE[1].ip()),
        IpAddr::V4(SNAT),
        IpAddr::V4(*VIP.ip()),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        v4(10, 0, 0, 99),
    ],
    odd_addrs: &[
        IpAddr::V4(*VIP.ip()),
        IpAddr::V4(SNAT),
        IpAddr::V4(*BLUE[0].ip()),
        IpAddr::V4(*GREEN[1].ip()),
        v4(10, 0, 0, 99),
        v4(10, 0, 0, 255),
        IpAddr::V4(Ipv4Addr::BROADCAST),
        v4(224, 0, 0, 1),
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        v4(8, 8, 8, 8),
        v4(192, 168, 1, 5),
    ],
};

pub const IPV6: Family = Family {
    vip: SocketAddr::V6(VIP6),
    snat: IpAddr::V6(SNAT6),
    backends: &[SocketAddr::V6(BACKENDS6[0]), SocketAddr::V6(BACKENDS6[1])],
    client_side_router: v6([0xfd00, 0xc, 0, 0, 0, 0, 0, 1]),
    backend_side_router: v6([0xfd00, 0, 0, 0, 0, 0, 0, 0x254]),
    odd_clients: &[
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 8]),
        IpAddr::V6(*BACKENDS6[1].ip()),
        IpAddr::V6(SNAT6),
        IpAddr::V6(*VIP6.ip()),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        v6([0xfe80, 0, 0, 0, 0, 0, 0, 1]),
        // The VIP's IPv4 address, mapped.
        v6([0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0064]),
    ],
    odd_addrs: &[
        IpAddr::V6(*VIP6.ip()),
        IpAddr::V6(SNAT6),
        IpAddr::V6(*BACKENDS6[0].ip()),
        IpAddr::V6(GATEWAY6),
        v6([0xfd00, 0, 0, 0, 0, 0, 0, 0x99]),
        v6([0xff02, 0, 0, 0, 0, 0, 0, 1]),
        v6([0xfe80, 0, 0, 0, 0, 0, 0, 1]),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 8]),
        v6([0xfd00, 0xc, 0, 0, 0, 0, 0, 5]),
        v6([0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0064]),
    ],
};

impl Family {
    /// The family of `addr`.
    pub fn of(addr: IpAddr) -> &'static Family {
        if addr.is_ipv6() { &IPV6 } else { &IPV4 }
    }

    fn snat_at(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.snat, port)
    }

    /// A random client address of this family, now and then an odd one.
    fn client(&self, rng: &mut Rng) -> IpAddr {
        if rng.chance(2) {
            rng.pick(self.odd_clients)
        } else {
            let [a, b] = [rng.below(256) as u8, rng.below(256) as u8];
            match self.vip {
                SocketAddr::V4(_) => v4(192, 168, a, b),
                SocketAddr::V6(_) => v6([0xfd00, 0xc, 0, 0, 0, 0, a as u16, b as u16]),
            }
        }
    }
}

/// The MAC the lab's neighbour table gives `addr`.
pub fn mac_of_ip(addr: IpAddr) -> [u8; 6] {
    match addr {
        IpAddr::V4(a) => mac_of(a),
        IpAddr::V6(a) => mac_of6(a),
    }
}

/// What a frame is and what was done to it, for a failure message.
#[derive(Clone, Debug)]
pub struct Origin {
    pub kind: Kind,
    /// Whether it was built as IPv6.
    pub ipv6: bool,
    /// The session it belongs to, if any.
    pub session: Option<usize>,
    pub mutations: Vec<Mutation>,
    /// Whether checksums were recomputed after the mutations.
    pub checksums_fixed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ClientSyn,
    ClientAck,
    ClientData,
    /// Data larger than the link MTU, with DF set.
    ClientBigData,
    ClientFin,
    ClientRst {
        in_window: bool,
    },
    /// An ACK to the VIP whose cookie is not the one the client got, or
    /// whose sequence number is not its SYN's.
    ForgedCookieAck,
    BackendSynAck,
    BackendAck,
    BackendData,
    BackendFin,
    BackendRst {
        in_window: bool,
    },
    /// A backend's segment to a SNAT port the session does not own.
    StrayBackendReply,
    /// An ICMP error from a router near the backends about a segment the LB
    /// sent a backend.
    IcmpFromBackendSide,
    /// An ICMP error from a router near the clients about a segment the LB
    /// sent a client.
    IcmpFromClientSide,
    /// A UDP session's datagram, from its client to the VIP.
    UdpFromClient,
    /// A UDP session's backend answering through the SNAT port it learned.
    UdpFromBackend,
    /// A backend's datagram to a SNAT port the session does not own.
    UdpStrayReply,
    /// TCP to an address or port that is neither a VIP nor the SNAT range.
    Elsewhere,
    /// UDP from outside any session, to the VIP or the SNAT range.
    Udp,
    Arp,
    /// An Ethernet header to the LB and random bytes.
    RandomAfterEthernet,
    RandomBytes,
}

impl Kind {
    /// Sent by the session's client, to the VIP.
    pub fn from_client(self) -> bool {
        matches!(
            self,
            Kind::ClientSyn
                | Kind::ClientAck
                | Kind::ClientData
                | Kind::ClientBigData
                | Kind::ClientFin
                | Kind::ClientRst { .. }
                | Kind::ForgedCookieAck
        )
    }
}

/// A change to a built frame. Fields outside the frame are left alone.
#[derive(Clone, Copy, Debug)]
pub enum Mutation {
    TcpFlags(u8),
    /// IPv4's total length, IPv6's payload length.
    IpLength(u16),
    Truncate(usize),
    Trailer(usize),
    DataOffset(u8),
    Ihl(u8),
    /// The 16-bit flags/fragment-offset field.
    Fragment(u16),
    /// TTL, or hop limit.
    Ttl(u8),
    Version(u8),
    /// Protocol, or the IPv6 header's next header.
    Protocol(u8),
    EtherType(u16),
    SrcPort(u16),
    DstPort(u16),
    /// An address of the frame's family, where the frame's family has it.
    SrcAddr(IpAddr),
    DstAddr(IpAddr),
    Seq(u32),
    Ack(u32),
    DstMac([u8; 6]),
    Byte {
        offset: usize,
        value: u8,
    },
    /// Applied after any checksum fix-up, so it stays wrong.
    BadIpChecksum(u16),
    BadTcpChecksum(u16),
    /// The UDP header's length field.
    UdpLength(u16),
    /// Applied after any checksum fix-up, so it stays wrong.
    BadUdpChecksum(u16),
    /// A UDP checksum of 0 (none), after any fix-up.
    NoUdpChecksum,
    /// An 8-byte IPv6 extension header of this type (hop-by-hop, routing,
    /// fragment, destination options, ...) after the IPv6 header.
    ExtensionHeader(u8),
    /// The IPv6 header's traffic class and flow label (its low 28 bits).
    TrafficClassFlowLabel(u32),
}

/// One connection's view of itself: the client, and once the LB has shown
/// it, the backend side. Sequence numbers are what each end would send.
#[derive(Clone, Debug)]
struct Session {
    client: SocketAddr,
    syn_sent: bool,
    client_next: u32,
    /// What the client acknowledges: the next sequence number it expects.
    server_next: u32,
    /// The backend and the SNAT port the LB sends this session's segments
    /// from, as seen in the program's output.
    backend_side: Option<(SocketAddr, u16)>,
    /// The backend's ISN, once it sent a SYN-ACK.
    backend_isn: Option<u32>,
    /// The backend never answers (the SYN proxy's sessions only).
    silent_backend: bool,
    backend_next: u32,
    /// What the backend acknowledges.
    backend_ack: u32,
    /// The LB refused or reset it: the client gives up.
    over: bool,
}

/// One UDP flow's view of itself: the client socket and, once the LB has
/// shown it, the backend and SNAT port.
#[derive(Clone, Debug)]
struct UdpSession {
    client: SocketAddr,
    backend_side: Option<(SocketAddr, u16)>,
}

/// The share of sessions (percent) that are IPv6.
const IPV6_SESSIONS: u32 = 30;

/// Generates the frames, deterministically from its seed.
pub struct Traffic {
    rng: Rng,
    sessions: Vec<Session>,
    udp_sessions: Vec<UdpSession>,
    snat_ports: (u16, u16),
    /// Whether the service's SYN proxy is on.
    syn_proxy: bool,
    payload: Vec<u8>,
}

const TCP_OPTION_SETS: [&[u8]; 5] = [
    &[],
    // MSS 1460
    &[2, 4, 0x05, 0xb4],
    // MSS, SACK permitted, timestamps, NOP, window scale 7
    &[2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7],
    // garbage kinds and lengths
    &[0xfe, 0xff, 0x01, 0x00],
    // a length that runs past the header
    &[8, 40, 0, 0],
];

const IP_OPTION_SETS: [&[u8]; 4] = [
    // NOP, NOP, NOP, end
    &[1, 1, 1, 0],
    // record route with room for one address
    &[7, 7, 4, 0, 0, 0, 0, 0],
    // router alert
    &[148, 4, 0, 0],
    // a length of zero
    &[0x44, 0, 0, 0],
];

impl Traffic {
    pub fn new(seed: u64, sessions: usize, snat_ports: (u16, u16), syn_proxy: bool) -> Self {
        let mut rng = Rng::new(seed);
        let tcp_sessions = (0..sessions).map(|_| fresh_session(&mut rng)).collect();
        let udp_sessions = (0..sessions.div_ceil(4)).map(|_| fresh_udp_session(&mut rng)).collect();
        Traffic {
            rng,
            sessions: tcp_sessions,
            udp_sessions,
            snat_ports,
            syn_proxy,
            payload: vec![0; 1600],
        }
    }

    /// Writes the next frame into `frame` and says what it is.
    pub fn next(&mut self, frame: &mut Vec<u8>) -> Origin {
        let roll = self.rng.below(100);
        let (kind, session, ipv6) = if roll < 80 {
            let i = self.rng.below(self.sessions.len() as u32) as usize;
            if self.sessions[i].over || self.rng.chance(2) {
                self.sessions[i] = fresh_session(&mut self.rng);
            }
            let kind = self.session_kind(i);
            self.session_frame(i, kind, frame);
            (kind, Some(i), self.sessions[i].client.is_ipv6())
        } else if roll < 90 {
            let i = self.rng.below(self.udp_sessions.len() as u32) as usize;
            if self.rng.chance(2) {
                self.udp_sessions[i] = fresh_udp_session(&mut self.rng);
            }
            let kind = self.udp_session_frame(i, frame);
            (kind, Some(i), self.udp_sessions[i].client.is_ipv6())
        } else {
            let (kind, ipv6) = self.other_frame(frame);
            (kind, None, ipv6)
        };
        let mut origin = Origin {
            kind,
            ipv6,
            session,
            mutations: Vec::new(),
            checksums_fixed: false,
        };
        if self.rng.chance(35) {
            self.mutate(frame, &mut origin);
        }
        origin
    }

    /// The program's verdict for a session's frame told the client where
    /// its connection went: `to_backend` is the (backend, SNAT port) a
    /// frame was sent to and the sequence number after it; `to_client` the
    /// next sequence number the client should acknowledge; `refused` that
    /// the LB answered with a RST; `udp_to_backend` where a UDP session's
    /// datagram went (`session` is then a UDP session's index).
    pub fn learn(&mut self, session: usize, what: Learned) {
        if let Learned::UdpToBackend { side } = what {
            self.udp_sessions[session].backend_side = Some(side);
            return;
        }
        let s = &mut self.sessions[session];
        match what {
            Learned::ToBackend { side, next_seq } => {
                s.backend_side = Some(side);
                s.backend_ack = next_seq;
            }
            Learned::ToClient { next_seq } => s.server_next = next_seq,
            Learned::Refused => s.over = true,
            Learned::UdpToBackend { .. } => unreachable!("handled above"),
        }
    }

    /// A UDP session's next datagram: mostly its client's, else (once it
    /// knows its backend side) its backend's, now and then a stray reply.
    fn udp_session_frame(&mut self, i: usize, frame: &mut Vec<u8>) -> Kind {
        let rng = &mut self.rng;
        let s = &self.udp_sessions[i];
        let payload_len = rng.below(300) as usize;
        rng.fill(&mut self.payload[..payload_len]);
        let payload = &self.payload[..payload_len];
        let roll = rng.below(100);
        let family = Family::of(s.client.ip());
        let (kind, src_mac, src, dst) = match s.backend_side {
            Some((backend, port)) if roll < 40 => (
                Kind::UdpFromBackend,
                mac_of_ip(backend.ip()),
                backend,
                family.snat_at(port),
            ),
            _ if roll >= 92 => {
                let backend = rng.pick(family.backends);
                let port = self.snat_ports.0 + rng.below((self.snat_ports.1 - self.snat_ports.0) as u32 + 1) as u16;
                (
                    Kind::UdpStrayReply,
                    mac_of_ip(backend.ip()),
                    backend,
                    family.snat_at(port),
                )
            }
            _ => (Kind::UdpFromClient, GATEWAY_MAC, s.client, family.vip),
        };
        datagram(frame, (src_mac, src), dst, payload, !rng.chance(10));
        kind
    }

    fn session_kind(&mut self, i: usize) -> Kind {
        let s = &self.sessions[i];
        if !s.syn_sent {
            return Kind::ClientSyn;
        }
        // A silent backend sends nothing: its client's segments meet the
        // proxy's waiting (held, dropped, or the SYN sent again).
        let with_backend = s.backend_side.is_some() && !s.silent_backend;
        let weights: [(Kind, u32); 17] = [
            (Kind::ClientSyn, 4),
            (Kind::ClientAck, 14),
            (Kind::ClientData, 14),
            (Kind::ClientBigData, 1),
            (Kind::ClientFin, 5),
            (Kind::ClientRst { in_window: true }, 2),
            (Kind::ClientRst { in_window: false }, 2),
            (Kind::ForgedCookieAck, if self.syn_proxy { 4 } else { 0 }),
            (Kind::BackendSynAck, if with_backend { 12 } else { 0 }),
            (Kind::BackendAck, if with_backend { 10 } else { 0 }),
            (Kind::BackendData, if with_backend { 14 } else { 0 }),
            (Kind::BackendFin, if with_backend { 5 } else { 0 }),
            (Kind::BackendRst { in_window: true }, if with_backend { 2 } else { 0 }),
            (Kind::BackendRst { in_window: false }, if with_backend { 2 } else { 0 }),
            (Kind::StrayBackendReply, 3),
            (Kind::IcmpFromBackendSide, if with_backend { 3 } else { 0 }),
            (Kind::IcmpFromClientSide, 3),
        ];
        let total: u32 = weights.iter().map(|w| w.1).sum();
        let mut roll = self.rng.below(total);
        for (kind, weight) in weights {
            if roll < weight {
                return kind;
            }
            roll -= weight;
        }
        unreachable!("the roll is below the total weight")
    }

    fn session_frame(&mut self, i: usize, kind: Kind, frame: &mut Vec<u8>) {
        let rng = &mut self.rng;
        let s = &mut self.sessions[i];
        let payload_len = match kind {
            Kind::ClientData | Kind::BackendData => 1 + rng.below(200) as usize,
            Kind::ForgedCookieAck if rng.chance(30) => 1 + rng.below(100) as usize,
            Kind::ClientBigData => 1461 + rng.below(140) as usize,
            _ => 0,
        };
        rng.fill(&mut self.payload[..payload_len]);
        let payload = &self.payload[..payload_len];
        let family = Family::of(s.client.ip());
        let from_client = |flags| Segment::new(GATEWAY_MAC, LB_MAC, s.client, family.vip, flags);
        let mut tcp_options: &[u8] = &[];
        let mut ip_options: &[u8] = &[];
        if rng.chance(3) {
            ip_options = rng.pick(&IP_OPTION_SETS);
        }
        let segment = match kind {
            Kind::ClientSyn => {
                if !s.syn_sent || rng.chance(30) {
                    s.client_next = rng.next_u32();
                }
                if self.syn_proxy && !s.syn_sent {
                    s.silent_backend = rng.chance(20);
                }
                s.syn_sent = true;
                tcp_options = rng.pick(&TCP_OPTION_SETS);
                let mut seg = from_client(SYN);
                seg.seq = s.client_next;
                s.client_next = s.client_next.wrapping_add(1);
                seg.ack = 0;
                seg
            }
            Kind::ClientAck | Kind::ClientData | Kind::ClientBigData | Kind::ClientFin => {
                let flags = match kind {
                    Kind::ClientAck => ACK,
                    Kind::ClientFin => FIN_ACK,
                    _ => PSH_ACK,
                };
                let mut seg = from_client(flags);
                seg.seq = s.client_next;
                seg.ack = s.server_next;
                seg.payload = payload;
                s.client_next = s
                    .client_next
                    .wrapping_add(payload_len as u32 + (kind == Kind::ClientFin) as u32);
                seg
            }
            Kind::ClientRst { in_window } => {
                let mut seg = from_client(if rng.chance(50) { RST } else { RST | ACK });
                seg.seq = if in_window { s.client_next } else { rng.next_u32() };
                seg.ack = if seg.flags & ACK != 0 { s.server_next } else { 0 };
                seg
            }
            Kind::ForgedCookieAck => {
                let mut seg = from_client(if payload_len == 0 { ACK } else { PSH_ACK });
                (seg.seq, seg.ack) = match rng.below(3) {
                    0 => (s.client_next, s.server_next ^ 1 << rng.below(32)),
                    1 => (s.client_next.wrapping_add(1), s.server_next),
                    _ => (s.client_next, rng.next_u32()),
                };
                seg.payload = payload;
                seg
            }
            Kind::BackendSynAck | Kind::BackendAck | Kind::BackendData | Kind::BackendFin | Kind::BackendRst { .. } => {
                let (backend, port) = s.backend_side.expect("a backend kind needs the backend side");
                let flags = match kind {
                    Kind::BackendSynAck => SYN_ACK,
                    Kind::BackendAck => ACK,
                    Kind::BackendData => PSH_ACK,
                    Kind::BackendFin => FIN_ACK,
                    _ if rng.chance(50) => RST,
                    _ => RST | ACK,
                };
                let mut seg = from_backend(backend, port, flags);
                if kind == Kind::BackendSynAck {
                    // A retransmission, with the ISN the LB has seen; the
                    // proxy must answer it as it did the first time.
                    let isn = match s.backend_isn {
                        Some(isn) if self.syn_proxy && rng.chance(70) => isn,
                        _ => rng.next_u32(),
                    };
                    s.backend_isn = Some(isn);
                    s.backend_next = isn;
                    tcp_options = rng.pick(&TCP_OPTION_SETS);
                }
                seg.seq = match kind {
                    Kind::BackendRst { in_window: false } => rng.next_u32(),
                    _ => s.backend_next,
                };
                seg.ack = if flags & ACK != 0 { s.backend_ack } else { 0 };
                seg.payload = payload;
                let consumed = payload_len as u32 + (flags & SYN != 0) as u32 + (flags & FIN != 0) as u32;
                s.backend_next = s.backend_next.wrapping_add(consumed);
                seg
            }
            Kind::StrayBackendReply => {
                let backend = rng.pick(family.backends);
                let port = self.snat_ports.0 + rng.below((self.snat_ports.1 - self.snat_ports.0) as u32 + 1) as u16;
                let flags = rng.pick(&[SYN_ACK, ACK, PSH_ACK, FIN_ACK, RST]);
                let mut seg = from_backend(backend, port, flags);
                seg.seq = rng.next_u32();
                seg.ack = rng.next_u32();
                seg
            }
            Kind::IcmpFromBackendSide => {
                let (backend, port) = s.backend_side.expect("an ICMP from the backend side needs it");
                let router = if rng.chance(50) {
                    backend.ip()
                } else {
                    family.backend_side_router
                };
                let quoted = (family.snat_at(port), backend, s.backend_ack);
                icmp_error(frame, rng, (mac_of_ip(router), router), family.snat, quoted);
                return;
            }
            Kind::IcmpFromClientSide => {
                let router = if rng.chance(50) {
                    s.client.ip()
                } else {
                    family.client_side_router
                };
                let quoted = (family.vip, s.client, s.server_next);
                icmp_error(frame, rng, (GATEWAY_MAC, router), family.vip.ip(), quoted);
                return;
            }
            other => unreachable!("{other:?} is not a session's frame"),
        };
        let mut segment = segment;
        segment.tcp_options = tcp_options;
        segment.ip_options = if s.client.is_ipv6() { &[] } else { ip_options };
        segment.dont_fragment = !rng.chance(5);
        segment.ip_id = rng.next_u32() as u16;
        segment.write(frame);
    }

    /// A frame that belongs to no session, and whether it is IPv6.
    fn other_frame(&mut self, frame: &mut Vec<u8>) -> (Kind, bool) {
        let rng = &mut self.rng;
        let kind = rng.pick(&[
            Kind::Elsewhere,
            Kind::Elsewhere,
            Kind::Elsewhere,
            Kind::Elsewhere,
            Kind::Udp,
            Kind::Arp,
            Kind::RandomAfterEthernet,
            Kind::RandomBytes,
        ]);
        let family = if rng.chance(IPV6_SESSIONS) { &IPV6 } else { &IPV4 };
        let (vip, snat) = (family.vip.ip(), family.snat);
        match kind {
            Kind::Elsewhere => {
                let client = SocketAddr::new(family.client(rng), 4000);
                let nowhere = match family.vip {
                    SocketAddr::V4(_) => v4(10, 0, 0, 99),
                    SocketAddr::V6(_) => v6([0xfd00, 0, 0, 0, 0, 0, 0, 0x99]),
                };
                let broadcast = match family.vip {
                    SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::BROADCAST),
                    SocketAddr::V6(_) => v6([0xff02, 0, 0, 0, 0, 0, 0, 1]),
                };
                let dst = rng.pick(&[
                    SocketAddr::new(nowhere, 80),
                    SocketAddr::new(vip, 81),
                    SocketAddr::new(vip, 443),
                    SocketAddr::new(vip, 0),
                    SocketAddr::new(snat, 22),
                    SocketAddr::new(snat, self.snat_ports.0 - 1),
                    SocketAddr::new(snat, self.snat_ports.1 + 1),
                    family.backends[0],
                    SocketAddr::new(broadcast, 80),
                ]);
                let flags = rng.pick(&[SYN, ACK, PSH_ACK, RST, FIN_ACK, SYN_ACK]);
                let mut seg = Segment::new(GATEWAY_MAC, LB_MAC, client, dst, flags);
                seg.seq = rng.next_u32();
                seg.write(frame);
            }
            Kind::Udp => {
                let dst = rng.pick(&[family.vip, family.snat_at(self.snat_ports.0)]);
                let src = SocketAddr::new(family.client(rng), 5353);
                datagram(frame, (GATEWAY_MAC, src), dst, b"not tcp", true);
            }
            Kind::Arp => {
                frame.clear();
                frame.extend([0xff; 6]);
                frame.extend(GATEWAY_MAC);
                frame.extend([0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
                frame.extend(GATEWAY_MAC);
                frame.extend([192, 168, 0, 1, 0, 0, 0, 0, 0, 0]);
                frame.extend(VIP.ip().octets());
            }
            Kind::RandomAfterEthernet | Kind::RandomBytes => {
                let len = rng.below(120) as usize;
                frame.clear();
                if kind == Kind::RandomBytes {
                    // The kernel hands XDP nothing shorter than an Ethernet header.
                    frame.resize(ETH_LEN, 0);
                    rng.fill(frame);
                } else {
                    frame.extend(LB_MAC);
                    frame.extend(GATEWAY_MAC);
                    frame.extend([0x08, 0x00]);
                }
                let start = frame.len();
                frame.resize(start + len, 0);
                rng.fill(&mut frame[start..]);
                if kind == Kind::RandomAfterEthernet && len > 0 && rng.chance(50) {
                    frame[ETH_LEN] = 0x45;
                }
            }
            other => unreachable!("{other:?} is not another frame"),
        }
        (kind, frame.get(12..14) == Some(&[0x86, 0xdd]))
    }

    fn mutate(&mut self, frame: &mut Vec<u8>, origin: &mut Origin) {
        let count = 1 + self.rng.below(3);
        let udp = l4(frame).is_some_and(|(proto, _)| proto == 17);
        let mut breaks = Vec::new();
        for _ in 0..count {
            let m = self.mutation(frame.len(), udp, origin.ipv6);
            match m {
                Mutation::BadIpChecksum(_)
                | Mutation::BadTcpChecksum(_)
                | Mutation::BadUdpChecksum(_)
                | Mutation::NoUdpChecksum => breaks.push(m),
                _ => apply(m, frame),
            }
            origin.mutations.push(m);
        }
        // Mostly, the lie is told consistently: a mutated frame whose
        // checksums fit reaches deeper into the program.
        if self.rng.chance(75) {
            fix_checksums(frame);
            origin.checksums_fixed = true;
        }
        for m in breaks {
            apply(m, frame);
        }
    }

    /// A mutation for a frame of `len` bytes; a `udp` one draws UDP
    /// lengths and checksums half the time; an `ipv6` one draws the IPv6
    /// header's fields where an IPv4 one draws IHL, fragment and header
    /// checksum.
    fn mutation(&mut self, len: usize, udp: bool, ipv6: bool) -> Mutation {
        let rng = &mut self.rng;
        let (lo, hi) = self.snat_ports;
        let family = if ipv6 { &IPV6 } else { &IPV4 };
        // Past the Ethernet header and, for IPv6, its fixed header: what
        // the length field counts.
        let ip_len = len.saturating_sub(ETH_LEN + if ipv6 { 40 } else { 0 }) as u16;
        // Drawn first: `pick`'s argument cannot borrow the generator again.
        let any = rng.next_u32() as u16;
        let port = |rng: &mut Rng| {
            rng.pick(&[
                0,
                1,
                79,
                80,
                81,
                1023,
                1024,
                8080,
                lo - 1,
                lo,
                lo + 1,
                hi - 1,
                hi,
                hi + 1,
                65535,
                any,
            ])
        };
        let extension_header = |rng: &mut Rng| Mutation::ExtensionHeader(rng.pick(&[0, 43, 44, 60, 51, 59, 135]));
        let draw = if udp && rng.chance(50) {
            21 + rng.below(3)
        } else {
            rng.below(21)
        };
        match draw {
            0 => Mutation::TcpFlags(if rng.chance(50) {
                rng.next_u32() as u8
            } else {
                rng.pick(&[SYN | RST, SYN | FIN, SYN | RST | ACK, 0, 0xff, FIN, 0x20, SYN | 0xc0])
            }),
            1 => Mutation::IpLength(rng.pick(&[
                0,
                7,
                19,
                20,
                39,
                40,
                ip_len.wrapping_sub(1),
                ip_len.wrapping_add(1),
                0xffff,
                any,
            ])),
            // The kernel hands XDP nothing shorter than an Ethernet header.
            2 => Mutation::Truncate(ETH_LEN + rng.below(len.saturating_sub(ETH_LEN) as u32 + 1) as usize),
            3 => Mutation::Trailer(1 + rng.below(64) as usize),
            4 => Mutation::DataOffset(rng.below(16) as u8),
            5 if ipv6 => extension_header(rng),
            5 => Mutation::Ihl(rng.below(16) as u8),
            6 if ipv6 => Mutation::TrafficClassFlowLabel(rng.next_u32() & 0x0fff_ffff),
            6 => Mutation::Fragment(rng.pick(&[0x2000, 0x0001, 0x2001, 0x1fff, 0x6000, 0x8000, any])),
            7 => Mutation::Ttl(rng.pick(&[0, 1, 2, 255])),
            8 if ipv6 => Mutation::Version(rng.pick(&[0, 4, 5, 15])),
            8 => Mutation::Version(rng.pick(&[0, 5, 6, 15])),
            9 if ipv6 => Mutation::Protocol(rng.pick(&[0, 1, 6, 17, 43, 44, 58, 59, 60, 255])),
            9 => Mutation::Protocol(rng.pick(&[0, 1, 17, 41, 47, 51, 255])),
            10 => Mutation::EtherType(rng.pick(&[if ipv6 { 0x0800 } else { 0x86dd }, 0x8100, 0x0806, 0x88a8, any])),
            11 => Mutation::SrcPort(port(rng)),
            12 => Mutation::DstPort(port(rng)),
            13 => Mutation::SrcAddr(rng.pick(family.odd_addrs)),
            14 => Mutation::DstAddr(rng.pick(family.odd_addrs)),
            15 => Mutation::Seq(rng.next_u32()),
            16 => Mutation::Ack(rng.next_u32()),
            17 => Mutation::DstMac(rng.pick(&[[0xff; 6], [0x02, 0, 0, 0, 0, 0x77], [0x01, 0, 0x5e, 0, 0, 1]])),
            18 => Mutation::Byte {
                offset: rng.below(len.max(1) as u32) as usize,
                value: rng.next_u32() as u8,
            },
            // IPv6 has no header checksum.
            19 if ipv6 => extension_header(rng),
            19 => Mutation::BadIpChecksum(1 + rng.below(0xfffe) as u16),
            20 => Mutation::BadTcpChecksum(1 + rng.below(0xfffe) as u16),
            21 => {
                let udp_len = ip_len.wrapping_sub(if ipv6 { 0 } else { 20 });
                Mutation::UdpLength(rng.pick(&[
                    0,
                    7,
                    8,
                    9,
                    udp_len.wrapping_sub(1),
                    udp_len.wrapping_add(1),
                    0xffff,
                    any,
                ]))
            }
            22 => Mutation::BadUdpChecksum(1 + rng.below(0xfffe) as u16),
            _ => Mutation::NoUdpChecksum,
        }
    }
}

/// What the program's output told a session.
#[derive(Clone, Copy, Debug)]
pub enum Learned {
    ToBackend {
        side: (SocketAddr, u16),
        next_seq: u32,
    },
    ToClient {
        next_seq: u32,
    },
    Refused,
    /// A UDP session's datagram went to this (backend, SNAT port).
    UdpToBackend {
        side: (SocketAddr, u16),
    },
}

/// A backend's segment to SNAT port `port`, as it arrives at the LB.
fn from_backend(backend: SocketAddr, port: u16, flags: u8) -> Segment<'static> {
    let snat = Family::of(backend.ip()).snat_at(port);
    Segment::new(mac_of_ip(backend.ip()), LB_MAC, backend, snat, flags)
}

fn fresh_session(rng: &mut Rng) -> Session {
    let family = if rng.chance(IPV6_SESSIONS) { &IPV6 } else { &IPV4 };
    let addr = family.client(rng);
    let port = if rng.chance(3) {
        rng.pick(&[0, 1, 1023, 65535])
    } else {
        1024 + rng.below(64512) as u16
    };
    Session {
        client: SocketAddr::new(addr, port),
        syn_sent: false,
        client_next: 0,
        server_next: 0,
        backend_side: None,
        backend_isn: None,
        silent_backend: false,
        backend_next: 0,
        backend_ack: 0,
        over: false,
    }
}

fn fresh_udp_session(rng: &mut Rng) -> UdpSession {
    UdpSession {
        client: fresh_session(rng).client,
        backend_side: None,
    }
}

/// Writes a UDP datagram of `src`'s family from `src` (its MAC first) to
/// `dst` into `frame`, with its checksum or without (0).
fn datagram(
    frame: &mut Vec<u8>,
    (src_mac, src): ([u8; 6], SocketAddr),
    dst: SocketAddr,
    payload: &[u8],
    checksum: bool,
) {
    let builder = etherparse::PacketBuilder::ethernet2(src_mac, LB_MAC);
    let builder = match (src.ip(), dst.ip()) {
        (IpAddr::V6(s), IpAddr::V6(d)) => builder.ipv6(s.octets(), d.octets(), 64),
        (s, d) => builder.ipv4(octets4(s), octets4(d), 64),
    };
    frame.clear();
    builder
        .udp(src.port(), dst.port())
        .write(frame, payload)
        .expect("UDP frame builds");
    if !checksum {
        let at = frame.len() - payload.len() - 2;
        frame[at..at + 2].copy_from_slice(&[0, 0]);
    }
}

fn octets4(addr: IpAddr) -> [u8; 4] {
    match addr {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => panic!("{a} in an IPv4 header"),
    }
}

/// An ICMP error of the family of `src` (destination unreachable, time
/// exceeded, packet too big, and now and then another type) from `src` to
/// `dst` quoting the IP header and first 8 bytes of a TCP segment
/// `(from, to, seq)`, as routers send them.
fn icmp_error(
    frame: &mut Vec<u8>,
    rng: &mut Rng,
    (src_mac, src): ([u8; 6], IpAddr),
    dst: IpAddr,
    quoted: (SocketAddr, SocketAddr, u32),
) {
    let ipv6 = src.is_ipv6();
    let (icmp_type, code) = if ipv6 {
        rng.pick(&[(1, 4), (1, 0), (1, 1), (1, 3), (2, 0), (2, 0), (3, 0), (4, 0), (128, 0)])
    } else {
        rng.pick(&[(3, 4), (3, 4), (3, 1), (3, 3), (3, 13), (11, 0), (5, 1), (0, 0)])
    };
    let mtu: u16 = if ipv6 {
        rng.pick(&[1400, 1280, 1000, 0])
    } else {
        rng.pick(&[1400, 1280, 576, 68, 0])
    };
    let (from, to, seq) = quoted;
    let mut inner = ip_header(from.ip(), to.ip(), 6, 40, 63);
    inner.extend(from.port().to_be_bytes());
    inner.extend(to.port().to_be_bytes());
    inner.extend(seq.to_be_bytes());

    frame.clear();
    frame.extend(LB_MAC);
    frame.extend(src_mac);
    frame.extend(if ipv6 { [0x86, 0xdd] } else { [0x08, 0x00] });
    frame.extend(ip_header(src, dst, if ipv6 { 58 } else { 1 }, 8 + inner.len(), 64));
    let icmp = frame.len();
    frame.extend([icmp_type, code, 0, 0, 0, 0]);
    frame.extend(mtu.to_be_bytes());
    frame.extend(&inner);
    let pseudo = if ipv6 {
        pseudo_header_sum6(&frame[ETH_LEN..], 58, frame.len() - icmp)
    } else {
        0
    };
    let icmp_check = internet_checksum(pseudo, &frame[icmp..]);
    frame[icmp + 2..icmp + 4].copy_from_slice(&icmp_check.to_be_bytes());
}

/// An IP header of the family of `src`, from `src` to `dst`, for
/// `payload_len` bytes of protocol `proto` (IPv4: with its checksum, DF).
fn ip_header(src: IpAddr, dst: IpAddr, proto: u8, payload_len: usize, ttl: u8) -> Vec<u8> {
    let mut header = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            header.extend([0x60, 0, 0, 0]);
            header.extend((payload_len as u16).to_be_bytes());
            header.extend([proto, ttl]);
            header.extend(src.octets());
            header.extend(dst.octets());
        }
        (src, dst) => {
            header.extend([0x45, 0]);
            header.extend(((20 + payload_len) as u16).to_be_bytes());
            header.extend([0x12, 0x34, 0x40, 0, ttl, proto, 0, 0]);
            header.extend(octets4(src));
            header.extend(octets4(dst));
            let check = internet_checksum(0, &header);
            header[10..12].copy_from_slice(&check.to_be_bytes());
        }
    }
    header
}

/// The frame's upper-layer protocol and where its header starts: past an
/// IPv4 header that claims a sane length, or past the IPv6 header and its
/// extension headers.
fn l4(frame: &[u8]) -> Option<(u8, usize)> {
    if frame.get(12..14) == Some(&[0x86, 0xdd]) {
        return ipv6_l4(frame);
    }
    let ihl = (*frame.get(ETH_LEN)? & 0x0f) as usize * 4;
    (ihl >= 20).then_some((*frame.get(ETH_LEN + 9)?, ETH_LEN + ihl))
}

fn set(frame: &mut [u8], offset: usize, bytes: &[u8]) {
    if let Some(dst) = frame.get_mut(offset..offset + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

pub fn apply(m: Mutation, frame: &mut Vec<u8>) {
    let ip = ETH_LEN;
    let ipv6 = frame.get(12..14) == Some(&[0x86, 0xdd]);
    // Where the TCP or UDP header starts.
    let tcp = l4(frame).map(|(_, at)| at);
    // Where the IPv4 or IPv6 header has its length, TTL (hop limit) and
    // protocol (next header).
    let (length, ttl, proto) = if ipv6 { (4, 7, 6) } else { (2, 8, 9) };
    match m {
        Mutation::TcpFlags(flags) => tcp.into_iter().for_each(|t| set(frame, t + 13, &[flags])),
        Mutation::IpLength(len) => set(frame, ip + length, &len.to_be_bytes()),
        Mutation::Truncate(len) => frame.truncate(len),
        Mutation::Trailer(n) => frame.extend((0..n).map(|i| i as u8 ^ 0x5a)),
        Mutation::DataOffset(doff) => {
            if let Some(t) = tcp
                && let Some(b) = frame.get_mut(t + 12)
            {
                *b = (*b & 0x0f) | doff << 4;
            }
        }
        Mutation::Ihl(ihl) => {
            if let Some(b) = frame.get_mut(ip) {
                *b = (*b & 0xf0) | ihl;
            }
        }
        Mutation::Fragment(frags) => set(frame, ip + 6, &frags.to_be_bytes()),
        Mutation::Ttl(t) => set(frame, ip + ttl, &[t]),
        Mutation::Version(v) => {
            if let Some(b) = frame.get_mut(ip) {
                *b = (*b & 0x0f) | v << 4;
            }
        }
        Mutation::Protocol(p) => set(frame, ip + proto, &[p]),
        Mutation::EtherType(t) => set(frame, 12, &t.to_be_bytes()),
        Mutation::SrcPort(p) => tcp.into_iter().for_each(|t| set(frame, t, &p.to_be_bytes())),
        Mutation::DstPort(p) => tcp.into_iter().for_each(|t| set(frame, t + 2, &p.to_be_bytes())),
        Mutation::SrcAddr(IpAddr::V4(a)) if !ipv6 => set(frame, ip + 12, &a.octets()),
        Mutation::DstAddr(IpAddr::V4(a)) if !ipv6 => set(frame, ip + 16, &a.octets()),
        Mutation::SrcAddr(IpAddr::V6(a)) if ipv6 => set(frame, ip + 8, &a.octets()),
        Mutation::DstAddr(IpAddr::V6(a)) if ipv6 => set(frame, ip + 24, &a.octets()),
        Mutation::SrcAddr(_) | Mutation::DstAddr(_) => {}
        Mutation::Seq(s) => tcp.into_iter().for_each(|t| set(frame, t + 4, &s.to_be_bytes())),
        Mutation::Ack(a) => tcp.into_iter().for_each(|t| set(frame, t + 8, &a.to_be_bytes())),
        Mutation::DstMac(mac) => set(frame, 0, &mac),
        Mutation::Byte { offset, value } => set(frame, offset, &[value]),
        Mutation::BadIpChecksum(x) => {
            if let Some(c) = frame.get(ip + 10..ip + 12) {
                let broken = u16::from_be_bytes([c[0], c[1]]) ^ x;
                set(frame, ip + 10, &broken.to_be_bytes());
            }
        }
        Mutation::BadTcpChecksum(x) => {
            if let Some(t) = tcp
                && let Some(c) = frame.get(t + 16..t + 18)
            {
                let broken = u16::from_be_bytes([c[0], c[1]]) ^ x;
                set(frame, t + 16, &broken.to_be_bytes());
            }
        }
        Mutation::UdpLength(len) => tcp.into_iter().for_each(|u| set(frame, u + 4, &len.to_be_bytes())),
        Mutation::BadUdpChecksum(x) => {
            if let Some(u) = tcp
                && let Some(c) = frame.get(u + 6..u + 8)
            {
                let broken = u16::from_be_bytes([c[0], c[1]]) ^ x;
                set(frame, u + 6, &broken.to_be_bytes());
            }
        }
        Mutation::NoUdpChecksum => tcp.into_iter().for_each(|u| set(frame, u + 6, &[0, 0])),
        Mutation::ExtensionHeader(kind) => {
            if ipv6 && frame.len() >= ip + 40 {
                let next = frame[ip + 6];
                frame[ip + 6] = kind;
                let len = u16::from_be_bytes([frame[ip + 4], frame[ip + 5]]).wrapping_add(8);
                set(frame, ip + 4, &len.to_be_bytes());
                // Next header, length 0 (8 bytes), a PadN option.
                frame.splice(ip + 40..ip + 40, [next, 0, 1, 4, 0, 0, 0, 0]);
            }
        }
        Mutation::TrafficClassFlowLabel(bits) => {
            if let Some(w) = frame.get(ip..ip + 4) {
                let word = u32::from_be_bytes(w.try_into().expect("4 bytes")) & 0xf000_0000 | bits & 0x0fff_ffff;
                set(frame, ip, &word.to_be_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddrV4, SocketAddrV6};

    use super::*;
    use crate::{
        packets::{parse_checked, parse_checked_udp6, parse_checked6},
        udp_frames::parse_checked_udp,
    };

    #[test]
    fn the_same_seed_gives_the_same_frames() {
        let frames = |seed| {
            let mut traffic = Traffic::new(seed, 16, (20000, 29999), false);
            let mut frame = Vec::new();
            (0..500)
                .map(|_| {
                    traffic.next(&mut frame);
                    frame.clone()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(frames(3), frames(3));
        assert_ne!(frames(3), frames(4));
    }

    #[test]
    fn unmutated_session_frames_are_valid_tcp_of_either_family_and_mutations_are_common() {
        let mut traffic = Traffic::new(11, 64, (20000, 29999), false);
        let mut frame = Vec::new();
        let (mut valid, mut valid6, mut mutated, mut kinds) = (0, 0, 0, std::collections::HashSet::new());
        for _ in 0..20_000 {
            let origin = traffic.next(&mut frame);
            kinds.insert(format!("{:?}", origin.kind));
            if !origin.mutations.is_empty() {
                mutated += 1;
            } else if origin.kind.from_client() && origin.ipv6 {
                // Checks the TCP checksum and the payload length.
                let view = parse_checked6(&frame);
                assert_eq!(view.dst, VIP6);
                valid6 += 1;
            } else if origin.kind.from_client() {
                let view = parse_checked(&frame);
                assert_eq!(view.dst, VIP);
                valid += 1;
            }
        }
        assert!(valid > 3_000, "{valid} valid IPv4 client frames");
        assert!(valid6 > 1_500, "{valid6} valid IPv6 client frames");
        assert!((5_000..9_000).contains(&mutated), "{mutated} mutated frames");
        assert!(kinds.len() >= 15, "kinds seen: {kinds:?}");
    }

    #[test]
    fn udp_sessions_send_valid_datagrams_of_either_family_and_mutations_reach_their_lengths_and_checksums() {
        let mut traffic = Traffic::new(13, 64, (20000, 29999), false);
        let mut frame = Vec::new();
        let (mut valid, mut valid6, mut without_checksum, mut udp_mutations) = (0, 0, 0, 0);
        for _ in 0..20_000 {
            let origin = traffic.next(&mut frame);
            if origin.kind != Kind::UdpFromClient {
                continue;
            }
            if origin.mutations.is_empty() {
                let at = l4(&frame).expect("a UDP header").1 + 6;
                let checksum = u16::from_be_bytes([frame[at], frame[at + 1]]);
                if checksum == 0 {
                    without_checksum += 1;
                } else if origin.ipv6 {
                    assert_eq!(parse_checked_udp6(&frame).dst, VIP6);
                    valid6 += 1;
                } else {
                    assert_eq!(parse_checked_udp(&frame).dst, VIP);
                    valid += 1;
                }
            }
            udp_mutations += origin
                .mutations
                .iter()
                .filter(|m| {
                    matches!(
                        m,
                        Mutation::UdpLength(_) | Mutation::BadUdpChecksum(_) | Mutation::NoUdpChecksum
                    )
                })
                .count();
        }
        assert!(valid > 250, "{valid} valid IPv4 UDP client datagrams");
        assert!(valid6 > 100, "{valid6} valid IPv6 UDP client datagrams");
        assert!(without_checksum > 10, "{without_checksum} datagrams without a checksum");
        assert!(udp_mutations > 100, "{udp_mutations} UDP length and checksum mutations");
    }

    #[test]
    fn udp_backend_datagrams_follow_what_the_session_learned() {
        for backend in [SocketAddr::V4(BLUE[1]), SocketAddr::V6(BACKENDS6[1])] {
            let mut traffic = Traffic::new(5, 4, (20000, 29999), false);
            let family = Family::of(backend.ip());
            traffic.udp_sessions[0].client = SocketAddr::new(family.client(&mut Rng::new(1)), 4000);
            traffic.learn(0, Learned::UdpToBackend { side: (backend, 20777) });
            let mut frame = Vec::new();
            let from_backend = (0..100)
                .map(|_| traffic.udp_session_frame(0, &mut frame))
                .filter(|&kind| kind == Kind::UdpFromBackend)
                .count();
            assert!(from_backend > 10, "{from_backend} of 100 from the backend");
            while traffic.udp_session_frame(0, &mut frame) != Kind::UdpFromBackend {}
            match backend {
                SocketAddr::V4(b) => {
                    let view = parse_checked_udp(&frame);
                    assert_eq!((view.src, view.dst), (b, SocketAddrV4::new(SNAT, 20777)));
                }
                SocketAddr::V6(b) => {
                    let view = parse_checked_udp6(&frame);
                    assert_eq!((view.src, view.dst), (b, SocketAddrV6::new(SNAT6, 20777, 0, 0)));
                }
            }
        }
    }

    #[test]
    fn backend_frames_follow_what_the_session_learned() {
        for backend in [SocketAddr::V4(GREEN[0]), SocketAddr::V6(BACKENDS6[0])] {
            let mut traffic = Traffic::new(5, 1, (20000, 29999), false);
            let family = Family::of(backend.ip());
            traffic.sessions[0].client = SocketAddr::new(family.client(&mut Rng::new(1)), 4000);
            traffic.learn(
                0,
                Learned::ToBackend {
                    side: (backend, 20123),
                    next_seq: 777,
                },
            );
            traffic.sessions[0].syn_sent = true;
            let mut frame = Vec::new();
            traffic.session_frame(0, Kind::BackendSynAck, &mut frame);
            let (src, dst, ack, syn_ack) = match backend {
                SocketAddr::V4(_) => {
                    let v = parse_checked(&frame);
                    (v.src.into(), v.dst.into(), v.ack, v.flags_syn && v.flags_ack)
                }
                SocketAddr::V6(_) => {
                    let v = parse_checked6(&frame);
                    (v.src.into(), v.dst.into(), v.ack, v.flags_syn && v.flags_ack)
                }
            };
            assert_eq!((src, dst), (backend, family.snat_at(20123)));
            assert_eq!(ack, 777);
            assert!(syn_ack);
        }
    }

    #[test]
    fn mutations_change_what_they_name_and_nothing_outside_the_frame() {
        let mut frame = Vec::new();
        Segment::new(
            GATEWAY_MAC,
            LB_MAC,
            SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 1), 4000),
            VIP,
            SYN,
        )
        .write(&mut frame);
        let len = frame.len();
        apply(Mutation::DataOffset(15), &mut frame);
        assert_eq!(frame[ETH_LEN + 20 + 12] >> 4, 15);
        apply(Mutation::Ihl(6), &mut frame);
        assert_eq!(frame[ETH_LEN] & 0x0f, 6);
        apply(Mutation::Truncate(20), &mut frame);
        assert_eq!(frame.len(), 20);
        apply(Mutation::Seq(1), &mut frame);
        apply(Mutation::DstPort(1), &mut frame);
        assert_eq!(frame.len(), 20, "fields beyond the end are left alone");
        assert!(len > 20);
    }

    #[test]
    fn ipv6_mutations_change_the_ipv6_header_fields_they_name() {
        let ip = ETH_LEN;
        let client = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0xc, 0, 0, 0, 0, 0, 5), 4000, 0, 0);
        let mut frame = Vec::new();
        Segment::new(GATEWAY_MAC, LB_MAC, client, VIP6, SYN).write(&mut frame);
        let unchanged = frame.clone();
        let mutated = |m: Mutation| {
            let mut f = unchanged.clone();
            apply(m, &mut f);
            f
        };
        assert_eq!(mutated(Mutation::IpLength(7))[ip + 4..ip + 6], [0, 7]);
        assert_eq!(mutated(Mutation::Ttl(1))[ip + 7], 1);
        assert_eq!(mutated(Mutation::Protocol(17))[ip + 6], 17);
        let flipped = mutated(Mutation::DstAddr(IpAddr::V6(SNAT6)));
        assert_eq!(flipped[ip + 24..ip + 40], SNAT6.octets());
        assert_eq!(
            mutated(Mutation::SrcAddr(IpAddr::V4(SNAT))),
            unchanged,
            "no IPv4 address in IPv6"
        );
        let labelled = mutated(Mutation::TrafficClassFlowLabel(0x0abc_def1));
        assert_eq!(labelled[ip..ip + 4], [0x6a, 0xbc, 0xde, 0xf1], "the version stays");
        assert_eq!(mutated(Mutation::Seq(9))[ip + 40 + 4..ip + 40 + 8], [0, 0, 0, 9]);

        // An extension header: inserted, chained, counted; the TCP header
        // found after it, and its checksum right again once fixed.
        let mut extended = mutated(Mutation::ExtensionHeader(60));
        assert_eq!(extended.len(), unchanged.len() + 8);
        assert_eq!((extended[ip + 6], extended[ip + 40]), (60, 6));
        assert_eq!(extended[ip + 4..ip + 6], [0, 28]);
        assert_eq!(l4(&extended), Some((6, ip + 48)));
        apply(Mutation::Ack(5), &mut extended);
        assert_eq!(extended[ip + 48 + 8..ip + 48 + 12], [0, 0, 0, 5]);
        fix_checksums(&mut extended);
        let pseudo = pseudo_header_sum6(&extended[ip..], 6, 20);
        assert_eq!(internet_checksum(pseudo, &extended[ip + 48..]), 0);
    }

    #[test]
    fn icmp_errors_quote_the_segment_with_valid_checksums() {
        let mut frame = Vec::new();
        let quoted = (SocketAddr::new(IpAddr::V4(SNAT), 20001), BLUE[0].into(), 99);
        let router = IPV4.backend_side_router;
        icmp_error(
            &mut frame,
            &mut Rng::new(1),
            (mac_of_ip(router), router),
            IpAddr::V4(SNAT),
            quoted,
        );
        let ip = etherparse::Ipv4Slice::from_slice(&frame[ETH_LEN..]).expect("IPv4");
        assert_eq!(internet_checksum(0, ip.header().slice()), 0);
        let icmp = ip.payload().payload;
        assert_eq!(internet_checksum(0, icmp), 0);
        let inner = etherparse::Ipv4HeaderSlice::from_slice(&icmp[8..]).expect("quoted IPv4 header");
        assert_eq!((inner.source_addr(), inner.destination_addr()), (SNAT, *BLUE[0].ip()));
        assert_eq!(&icmp[28..30], &20001u16.to_be_bytes());
    }

    #[test]
    fn icmpv6_errors_quote_the_segment_with_valid_checksums() {
        let mut types = std::collections::HashSet::new();
        let mut rng = Rng::new(2);
        for _ in 0..100 {
            let mut frame = Vec::new();
            let quoted = (IPV6.vip, SocketAddr::V6(crate::packet_lab::client6(4000)), 77);
            let router = IPV6.client_side_router;
            icmp_error(&mut frame, &mut rng, (GATEWAY_MAC, router), IPV6.vip.ip(), quoted);
            let ip = etherparse::Ipv6Slice::from_slice(&frame[ETH_LEN..]).expect("IPv6");
            assert_eq!(ip.header().next_header().0, 58);
            let icmp = &frame[ETH_LEN + 40..];
            assert_eq!(
                internet_checksum(pseudo_header_sum6(&frame[ETH_LEN..], 58, icmp.len()), icmp),
                0
            );
            let inner = etherparse::Ipv6HeaderSlice::from_slice(&icmp[8..]).expect("quoted IPv6 header");
            assert_eq!(
                (inner.source_addr(), inner.destination_addr(), inner.next_header().0),
                (*VIP6.ip(), *crate::packet_lab::client6(4000).ip(), 6)
            );
            assert_eq!(icmp[48..52], [0, 80, 0x0f, 0xa0]);
            assert_eq!(icmp[52..56], 77u32.to_be_bytes());
            types.insert(icmp[0]);
        }
        // Destination unreachable, packet too big, time exceeded, parameter
        // problem and an echo request.
        assert_eq!(types, [1, 2, 3, 4, 128].into());
    }
}
