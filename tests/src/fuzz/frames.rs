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
//! With the SYN proxy on, the same sessions meet it: the client's SYN gets a
//! cookie SYN-ACK, whose sequence number the client learns and acknowledges
//! (so its ACK proves the cookie, as the kernel computes it), data sent
//! before the backend answered is held, and the backend answers the LB's
//! SYN (now and then retransmitting its SYN-ACK with the same ISN). Forged
//! cookie ACKs join them.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::{
    packet_lab::{BLUE, GATEWAY_MAC, GREEN, LB_MAC, SNAT, VIP, mac_of},
    packets::{ACK, ETH_LEN, FIN, FIN_ACK, PSH_ACK, RST, SYN, SYN_ACK, Segment, fix_checksums, internet_checksum},
    rng::Rng,
    udp_frames::{udp_frame, udp_frame_without_checksum},
};

/// A router on the clients' side and one on the backends' side, which send
/// ICMP errors.
const CLIENT_SIDE_ROUTER: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
const BACKEND_SIDE_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);

/// What a frame is and what was done to it, for a failure message.
#[derive(Clone, Debug)]
pub struct Origin {
    pub kind: Kind,
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
    Ipv6,
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
    IpTotalLength(u16),
    Truncate(usize),
    Trailer(usize),
    DataOffset(u8),
    Ihl(u8),
    /// The 16-bit flags/fragment-offset field.
    Fragment(u16),
    Ttl(u8),
    Version(u8),
    Protocol(u8),
    EtherType(u16),
    SrcPort(u16),
    DstPort(u16),
    SrcAddr(Ipv4Addr),
    DstAddr(Ipv4Addr),
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
}

/// One connection's view of itself: the client, and once the LB has shown
/// it, the backend side. Sequence numbers are what each end would send.
#[derive(Clone, Debug)]
struct Session {
    client: SocketAddrV4,
    syn_sent: bool,
    client_next: u32,
    /// What the client acknowledges: the next sequence number it expects.
    server_next: u32,
    /// The backend and the SNAT port the LB sends this session's segments
    /// from, as seen in the program's output.
    backend_side: Option<(SocketAddrV4, u16)>,
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
    client: SocketAddrV4,
    backend_side: Option<(SocketAddrV4, u16)>,
}

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
        let (kind, session) = if roll < 80 {
            let i = self.rng.below(self.sessions.len() as u32) as usize;
            if self.sessions[i].over || self.rng.chance(2) {
                self.sessions[i] = fresh_session(&mut self.rng);
            }
            let kind = self.session_kind(i);
            self.session_frame(i, kind, frame);
            (kind, Some(i))
        } else if roll < 90 {
            let i = self.rng.below(self.udp_sessions.len() as u32) as usize;
            if self.rng.chance(2) {
                self.udp_sessions[i] = fresh_udp_session(&mut self.rng);
            }
            let kind = self.udp_session_frame(i, frame);
            (kind, Some(i))
        } else {
            let kind = self.other_frame(frame);
            (kind, None)
        };
        let mut origin = Origin {
            kind,
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
        let (kind, src_mac, src, dst) = match s.backend_side {
            Some((backend, port)) if roll < 40 => (
                Kind::UdpFromBackend,
                mac_of(*backend.ip()),
                backend,
                SocketAddrV4::new(SNAT, port),
            ),
            _ if roll >= 92 => {
                let backend = rng.pick(&[BLUE[0], BLUE[1], GREEN[0], GREEN[1]]);
                let port = self.snat_ports.0 + rng.below((self.snat_ports.1 - self.snat_ports.0) as u32 + 1) as u16;
                (
                    Kind::UdpStrayReply,
                    mac_of(*backend.ip()),
                    backend,
                    SocketAddrV4::new(SNAT, port),
                )
            }
            _ => (Kind::UdpFromClient, GATEWAY_MAC, s.client, VIP),
        };
        *frame = if rng.chance(10) {
            udp_frame_without_checksum(src_mac, LB_MAC, src, dst, payload)
        } else {
            udp_frame(src_mac, LB_MAC, src, dst, payload)
        };
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
        let from_client = |flags| Segment::new(GATEWAY_MAC, LB_MAC, s.client, VIP, flags);
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
                let backend = rng.pick(&[BLUE[0], BLUE[1], GREEN[0], GREEN[1]]);
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
                    *backend.ip()
                } else {
                    BACKEND_SIDE_ROUTER
                };
                let quoted = (SocketAddrV4::new(SNAT, port), backend, s.backend_ack);
                icmp_error(frame, rng, mac_of(router), router, SNAT, quoted);
                return;
            }
            Kind::IcmpFromClientSide => {
                let router = if rng.chance(50) {
                    *s.client.ip()
                } else {
                    CLIENT_SIDE_ROUTER
                };
                let quoted = (VIP, s.client, s.server_next);
                icmp_error(frame, rng, GATEWAY_MAC, router, *VIP.ip(), quoted);
                return;
            }
            other => unreachable!("{other:?} is not a session's frame"),
        };
        let mut segment = segment;
        segment.tcp_options = tcp_options;
        segment.ip_options = ip_options;
        segment.dont_fragment = !rng.chance(5);
        segment.ip_id = rng.next_u32() as u16;
        segment.write(frame);
    }

    /// A frame that belongs to no session.
    fn other_frame(&mut self, frame: &mut Vec<u8>) -> Kind {
        let rng = &mut self.rng;
        let kind = rng.pick(&[
            Kind::Elsewhere,
            Kind::Elsewhere,
            Kind::Elsewhere,
            Kind::Udp,
            Kind::Arp,
            Kind::Ipv6,
            Kind::RandomAfterEthernet,
            Kind::RandomBytes,
        ]);
        match kind {
            Kind::Elsewhere => {
                let client = fresh_session(rng).client;
                let dst = rng.pick(&[
                    SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 99), 80),
                    SocketAddrV4::new(*VIP.ip(), 81),
                    SocketAddrV4::new(*VIP.ip(), 443),
                    SocketAddrV4::new(*VIP.ip(), 0),
                    SocketAddrV4::new(SNAT, 22),
                    SocketAddrV4::new(SNAT, self.snat_ports.0 - 1),
                    SocketAddrV4::new(SNAT, self.snat_ports.1 + 1),
                    BLUE[0],
                    SocketAddrV4::new(Ipv4Addr::BROADCAST, 80),
                ]);
                let flags = rng.pick(&[SYN, ACK, PSH_ACK, RST, FIN_ACK, SYN_ACK]);
                let mut seg = Segment::new(GATEWAY_MAC, LB_MAC, client, dst, flags);
                seg.seq = rng.next_u32();
                seg.write(frame);
            }
            Kind::Udp => {
                let dst = rng.pick(&[VIP, SocketAddrV4::new(SNAT, self.snat_ports.0)]);
                frame.clear();
                etherparse::PacketBuilder::ethernet2(GATEWAY_MAC, LB_MAC)
                    .ipv4([192, 168, 7, 7], dst.ip().octets(), 64)
                    .udp(5353, dst.port())
                    .write(frame, b"not tcp")
                    .expect("UDP frame builds");
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
            Kind::Ipv6 => {
                frame.clear();
                etherparse::PacketBuilder::ethernet2(GATEWAY_MAC, LB_MAC)
                    .ipv6([0xfd; 16], [0xfe; 16], 64)
                    .tcp(4000, 80, rng.next_u32(), 1000)
                    .syn()
                    .write(frame, &[])
                    .expect("IPv6 frame builds");
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
        kind
    }

    fn mutate(&mut self, frame: &mut Vec<u8>, origin: &mut Origin) {
        let count = 1 + self.rng.below(3);
        let udp = frame.get(ETH_LEN + 9) == Some(&17);
        let mut breaks = Vec::new();
        for _ in 0..count {
            let m = self.mutation(frame.len(), udp);
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
    /// lengths and checksums half the time.
    fn mutation(&mut self, len: usize, udp: bool) -> Mutation {
        let rng = &mut self.rng;
        let (lo, hi) = self.snat_ports;
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
        let addr = |rng: &mut Rng| {
            rng.pick(&[
                *VIP.ip(),
                SNAT,
                *BLUE[0].ip(),
                *GREEN[1].ip(),
                Ipv4Addr::new(10, 0, 0, 99),
                Ipv4Addr::new(10, 0, 0, 255),
                Ipv4Addr::BROADCAST,
                Ipv4Addr::new(224, 0, 0, 1),
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::LOCALHOST,
                Ipv4Addr::new(8, 8, 8, 8),
                Ipv4Addr::new(192, 168, 1, 5),
            ])
        };
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
            1 => Mutation::IpTotalLength(rng.pick(&[
                0,
                19,
                20,
                39,
                40,
                (len.saturating_sub(ETH_LEN) as u16).wrapping_sub(1),
                (len.saturating_sub(ETH_LEN) as u16).wrapping_add(1),
                0xffff,
                any,
            ])),
            // The kernel hands XDP nothing shorter than an Ethernet header.
            2 => Mutation::Truncate(ETH_LEN + rng.below(len.saturating_sub(ETH_LEN) as u32 + 1) as usize),
            3 => Mutation::Trailer(1 + rng.below(64) as usize),
            4 => Mutation::DataOffset(rng.below(16) as u8),
            5 => Mutation::Ihl(rng.below(16) as u8),
            6 => Mutation::Fragment(rng.pick(&[0x2000, 0x0001, 0x2001, 0x1fff, 0x6000, 0x8000, any])),
            7 => Mutation::Ttl(rng.pick(&[0, 1, 2, 255])),
            8 => Mutation::Version(rng.pick(&[0, 5, 6, 15])),
            9 => Mutation::Protocol(rng.pick(&[0, 1, 17, 41, 47, 51, 255])),
            10 => Mutation::EtherType(rng.pick(&[0x86dd, 0x8100, 0x0806, 0x88a8, any])),
            11 => Mutation::SrcPort(port(rng)),
            12 => Mutation::DstPort(port(rng)),
            13 => Mutation::SrcAddr(addr(rng)),
            14 => Mutation::DstAddr(addr(rng)),
            15 => Mutation::Seq(rng.next_u32()),
            16 => Mutation::Ack(rng.next_u32()),
            17 => Mutation::DstMac(rng.pick(&[[0xff; 6], [0x02, 0, 0, 0, 0, 0x77], [0x01, 0, 0x5e, 0, 0, 1]])),
            18 => Mutation::Byte {
                offset: rng.below(len.max(1) as u32) as usize,
                value: rng.next_u32() as u8,
            },
            19 => Mutation::BadIpChecksum(1 + rng.below(0xfffe) as u16),
            20 => Mutation::BadTcpChecksum(1 + rng.below(0xfffe) as u16),
            21 => {
                let udp_len = len.saturating_sub(ETH_LEN + 20) as u16;
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
        side: (SocketAddrV4, u16),
        next_seq: u32,
    },
    ToClient {
        next_seq: u32,
    },
    Refused,
    /// A UDP session's datagram went to this (backend, SNAT port).
    UdpToBackend {
        side: (SocketAddrV4, u16),
    },
}

/// A backend's segment to SNAT port `port`, as it arrives at the LB.
fn from_backend(backend: SocketAddrV4, port: u16, flags: u8) -> Segment<'static> {
    Segment::new(
        mac_of(*backend.ip()),
        LB_MAC,
        backend,
        SocketAddrV4::new(SNAT, port),
        flags,
    )
}

fn fresh_session(rng: &mut Rng) -> Session {
    let addr = if rng.chance(2) {
        rng.pick(&[
            Ipv4Addr::new(8, 8, 8, 8),
            *BLUE[1].ip(),
            SNAT,
            *VIP.ip(),
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 0, 99),
        ])
    } else {
        Ipv4Addr::new(192, 168, rng.below(256) as u8, rng.below(256) as u8)
    };
    let port = if rng.chance(3) {
        rng.pick(&[0, 1, 1023, 65535])
    } else {
        1024 + rng.below(64512) as u16
    };
    Session {
        client: SocketAddrV4::new(addr, port),
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

/// An ICMP error (destination unreachable or time exceeded) from `src` to
/// `dst` quoting the IPv4 header and first 8 bytes of a TCP segment
/// `(from, to, seq)`, as routers send them.
fn icmp_error(
    frame: &mut Vec<u8>,
    rng: &mut Rng,
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    quoted: (SocketAddrV4, SocketAddrV4, u32),
) {
    let (icmp_type, code) = rng.pick(&[(3, 4), (3, 4), (3, 1), (3, 3), (3, 13), (11, 0), (5, 1), (0, 0)]);
    let mtu: u16 = rng.pick(&[1400, 1280, 576, 68, 0]);
    let (from, to, seq) = quoted;
    let mut inner = Vec::with_capacity(28);
    inner.extend([0x45, 0, 0, 60, 0x12, 0x34, 0x40, 0, 63, 6, 0, 0]);
    inner.extend(from.ip().octets());
    inner.extend(to.ip().octets());
    let inner_check = internet_checksum(0, &inner);
    inner[10..12].copy_from_slice(&inner_check.to_be_bytes());
    inner.extend(from.port().to_be_bytes());
    inner.extend(to.port().to_be_bytes());
    inner.extend(seq.to_be_bytes());

    let icmp_len = 8 + inner.len();
    let total = 20 + icmp_len;
    frame.clear();
    frame.extend(LB_MAC);
    frame.extend(src_mac);
    frame.extend([0x08, 0x00, 0x45, 0xc0]);
    frame.extend((total as u16).to_be_bytes());
    frame.extend([0, 0, 0, 0, 64, 1, 0, 0]);
    frame.extend(src.octets());
    frame.extend(dst.octets());
    let ip_check = internet_checksum(0, &frame[ETH_LEN..ETH_LEN + 20]);
    frame[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&ip_check.to_be_bytes());
    let icmp = frame.len();
    frame.extend([icmp_type, code, 0, 0, 0, 0]);
    frame.extend(mtu.to_be_bytes());
    frame.extend(&inner);
    let icmp_check = internet_checksum(0, &frame[icmp..]);
    frame[icmp + 2..icmp + 4].copy_from_slice(&icmp_check.to_be_bytes());
}

/// The IPv4 header's length if it claims a sane one inside the frame.
fn ihl(frame: &[u8]) -> Option<usize> {
    let ihl = (*frame.get(ETH_LEN)? & 0x0f) as usize * 4;
    (ihl >= 20).then_some(ihl)
}

fn set(frame: &mut [u8], offset: usize, bytes: &[u8]) {
    if let Some(dst) = frame.get_mut(offset..offset + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

pub fn apply(m: Mutation, frame: &mut Vec<u8>) {
    let ip = ETH_LEN;
    // Where the TCP or UDP header starts.
    let tcp = ihl(frame).map(|h| ETH_LEN + h);
    match m {
        Mutation::TcpFlags(flags) => tcp.into_iter().for_each(|t| set(frame, t + 13, &[flags])),
        Mutation::IpTotalLength(len) => set(frame, ip + 2, &len.to_be_bytes()),
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
        Mutation::Ttl(ttl) => set(frame, ip + 8, &[ttl]),
        Mutation::Version(v) => {
            if let Some(b) = frame.get_mut(ip) {
                *b = (*b & 0x0f) | v << 4;
            }
        }
        Mutation::Protocol(p) => set(frame, ip + 9, &[p]),
        Mutation::EtherType(t) => set(frame, 12, &t.to_be_bytes()),
        Mutation::SrcPort(p) => tcp.into_iter().for_each(|t| set(frame, t, &p.to_be_bytes())),
        Mutation::DstPort(p) => tcp.into_iter().for_each(|t| set(frame, t + 2, &p.to_be_bytes())),
        Mutation::SrcAddr(a) => set(frame, ip + 12, &a.octets()),
        Mutation::DstAddr(a) => set(frame, ip + 16, &a.octets()),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{packets::parse_checked, udp_frames::parse_checked_udp};

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
    fn unmutated_session_frames_are_valid_tcp_and_mutations_are_common() {
        let mut traffic = Traffic::new(11, 64, (20000, 29999), false);
        let mut frame = Vec::new();
        let (mut valid, mut mutated, mut kinds) = (0, 0, std::collections::HashSet::new());
        for _ in 0..20_000 {
            let origin = traffic.next(&mut frame);
            kinds.insert(format!("{:?}", origin.kind));
            if !origin.mutations.is_empty() {
                mutated += 1;
            } else if origin.kind.from_client() {
                let view = parse_checked(&frame);
                assert_eq!(view.dst, VIP);
                valid += 1;
            }
        }
        assert!(valid > 5_000, "{valid} valid client frames");
        assert!((5_000..9_000).contains(&mutated), "{mutated} mutated frames");
        assert!(kinds.len() >= 15, "kinds seen: {kinds:?}");
    }

    #[test]
    fn udp_sessions_send_valid_datagrams_and_mutations_reach_their_lengths_and_checksums() {
        let mut traffic = Traffic::new(13, 64, (20000, 29999), false);
        let mut frame = Vec::new();
        let (mut valid, mut without_checksum, mut udp_mutations) = (0, 0, 0);
        for _ in 0..20_000 {
            let origin = traffic.next(&mut frame);
            if origin.kind != Kind::UdpFromClient {
                continue;
            }
            if origin.mutations.is_empty() {
                let view = parse_checked_udp(&frame);
                assert_eq!(view.dst, VIP);
                valid += 1;
                without_checksum += (view.checksum == 0) as u32;
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
        assert!(valid > 400, "{valid} valid UDP client datagrams");
        assert!(without_checksum > 10, "{without_checksum} datagrams without a checksum");
        assert!(udp_mutations > 100, "{udp_mutations} UDP length and checksum mutations");
    }

    #[test]
    fn udp_backend_datagrams_follow_what_the_session_learned() {
        let mut traffic = Traffic::new(5, 4, (20000, 29999), false);
        traffic.learn(0, Learned::UdpToBackend { side: (BLUE[1], 20777) });
        let mut frame = Vec::new();
        let from_backend = (0..100)
            .map(|_| traffic.udp_session_frame(0, &mut frame))
            .filter(|&kind| kind == Kind::UdpFromBackend)
            .count();
        assert!(from_backend > 10, "{from_backend} of 100 from the backend");
        while traffic.udp_session_frame(0, &mut frame) != Kind::UdpFromBackend {}
        let view = parse_checked_udp(&frame);
        assert_eq!((view.src, view.dst), (BLUE[1], SocketAddrV4::new(SNAT, 20777)));
    }

    #[test]
    fn backend_frames_follow_what_the_session_learned() {
        let mut traffic = Traffic::new(5, 1, (20000, 29999), false);
        traffic.learn(
            0,
            Learned::ToBackend {
                side: (GREEN[0], 20123),
                next_seq: 777,
            },
        );
        traffic.sessions[0].syn_sent = true;
        let mut frame = Vec::new();
        traffic.session_frame(0, Kind::BackendSynAck, &mut frame);
        let view = parse_checked(&frame);
        assert_eq!((view.src, view.dst), (GREEN[0], SocketAddrV4::new(SNAT, 20123)));
        assert_eq!(view.ack, 777);
        assert!(view.flags_syn && view.flags_ack);
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
    fn icmp_errors_quote_the_segment_with_valid_checksums() {
        let mut frame = Vec::new();
        let quoted = (SocketAddrV4::new(SNAT, 20001), BLUE[0], 99);
        icmp_error(
            &mut frame,
            &mut Rng::new(1),
            mac_of(BACKEND_SIDE_ROUTER),
            BACKEND_SIDE_ROUTER,
            SNAT,
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
}
