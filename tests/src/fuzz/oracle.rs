//! The fuzz test's judge. It reads what the program did (verdict, output
//! frame) and what the program's maps say after it, and checks invariants
//! that hold for any correct version of the data plane, whatever its state
//! machine or ICMP handling. It never re-implements the program: who owns
//! a flow, which backend and which SNAT port, comes from FLOWS and
//! REVERSE_NAT. The SYN proxy's outputs are exact functions of what it was
//! sent, so they are judged exactly, by a model that remembers what the
//! program sent (`syn_proxy`).
//!
//! # Invariants, per frame
//! 1. The verdict is XDP_PASS, XDP_DROP, XDP_TX or XDP_REDIRECT, never
//!    XDP_ABORTED or anything else.
//! 2. XDP_PASS hands the kernel the frame exactly as it came. (An XDP_DROP
//!    frame reaches no one, so its bytes are not judged.)
//! 3. A forwarded frame (XDP_TX/XDP_REDIRECT) is IPv4 or IPv6, of the
//!    frame's own family, and is one of (for IPv6, read the IPv6 VIP, SNAT
//!    address, backends, FLOWS6 and REVERSE_NAT6, ICMPv6):
//!    - **to a backend**, from the SNAT address and a port of the SNAT
//!      range: either it came from a client to the VIP whose flow (FLOWS,
//!      after the run) is pinned to exactly that backend and port, and no
//!      *other* flow owns that port in REVERSE_NAT; or it came from a
//!      client without a flow, is not a connection request, and the port
//!      is owned by no live flow (stateless forwarding); or it came from
//!      that backend to that SNAT port, which REVERSE_NAT gives to a flow
//!      pinned there (the LB answering a backend for a proxied handshake);
//!    - **a reply to a client**, from the VIP: it came from a backend to a
//!      SNAT port whose REVERSE_NAT owner is exactly this client's flow, and
//!      that flow (FLOWS) is pinned to that backend and port;
//!    - **an answer to the sender**, from the address it was sent to, by
//!      XDP_TX, never answering a RST: a bare RST refusing a connection
//!      request (RFC 793 sequence numbers), or an ACK proving a SYN cookie
//!      that no backend could take; a SYN cookie's SYN-ACK to a connection
//!      request, with the SYN proxy on (sent where the client is routed, or
//!      back to the sender when that route's next hop is unresolved); or ICMP fragmentation needed for a
//!      DF segment of a pinned flow too big for the egress link, quoting
//!      the segment as its sender sent it (the TTL the LB decremented; for
//!      IPv6, packet too big quoting the packet's start);
//!    - **an ICMP error translated** from an ICMP error the LB received: to
//!      a client quoting the client's own segment to the VIP, of a pinned
//!      flow, when the error received quoted that flow's segment to its
//!      backend; or to a backend quoting its segment to the SNAT port, of a
//!      flow REVERSE_NAT and FLOWS agree on, when the error received quoted
//!      that flow's segment from the VIP to its client. The same for a
//!      quoted UDP datagram and a UDP flow: the quoted protocol is the
//!      flow's, and stays what it was, as does the error's type.
//!
//!    - **a UDP datagram to a backend**, from the SNAT address and a port
//!      of the range: it came from a client to the VIP whose UDP flow
//!      (FLOWS, after the run) is pinned to exactly that backend and port,
//!      and REVERSE_NAT gives that pair to that UDP flow (a UDP flow is
//!      never forwarded statelessly, and claims only a free pair);
//!    - **a UDP reply to a client**, from the VIP: it came from a backend
//!      to a SNAT port whose REVERSE_NAT owner is exactly this client's UDP
//!      flow, pinned to that backend and port.
//!
//!    Nothing else is ever forwarded: no frame to an address that is
//!    neither a backend nor the client of a pinned flow.
//!
//!    With the SYN proxy on (for both families' TCP services), what it
//!    sends is judged exactly by the model in `syn_proxy` (its docs list
//!    it): cookie SYN-ACKs, the SYN and the
//!    ACK (or held segment) to the backend, refusals of proven cookies, and
//!    the sequence translation of proxied flows. Every other forwarded
//!    segment keeps its sequence and acknowledgment numbers and its flags.
//! 4. Checksums: the program builds answers with correct IPv4, TCP and
//!    ICMP checksums, and never breaks one while forwarding (a frame that
//!    came in with a correct checksum leaves with a correct one; like every
//!    L4 balancer it does not verify what it forwards, so a corrupt frame
//!    may stay corrupt for its receiver to drop). A UDP datagram sent
//!    without a checksum (0) leaves without one, and over IPv6 (where it is
//!    mandatory) is never forwarded; a forwarded datagram's UDP length is
//!    its IP payload's.
//! 5. A forwarded frame carries the payload and flags (UDP: length) it came with and a
//!    TTL (hop limit) one less, and leaves from the LB's MAC to the next
//!    hop's MAC. (A
//!    segment the proxy builds, in place of the one it came from, is judged
//!    by the proxy's model, its MACs as a forwarded frame's.) An answer
//!    goes back to the sender's MAC from a unicast one.
//!
//! # Invariants of the tables (checked periodically and at the end)
//! 6. Every flow (of either family's table) is to its family's VIP (TCP or
//!    UDP), names an installed backend, its family's SNAT address and a port
//!    inside the range.
//! 7. No two flows that have not closed own the same (backend, SNAT port):
//!    their replies would be indistinguishable (a cross-client leak).
//! 8. Every flow that has not closed owns its (backend, SNAT port): the
//!    port's REVERSE_NAT entry names it. Between sweeps this holds while
//!    nothing is evicted; after the daemon's sweep it always holds. (An
//!    entry whose flow is gone or pinned elsewhere is a free port, which the
//!    data plane reuses; invariant 3 checks that no frame reaches a client
//!    through one.)
//! 9. Every proxied flow is one the oracle saw opened, with the offset and
//!    held segment the oracle saw.
//! 10. A flow keeps its backend and SNAT pair for its life (from one check
//!     to the next, while its creation time is the same): no frame moves
//!     another client's flow.
//!
//! How FLOWS and REVERSE_NAT must agree (who owns a port, which flow a
//! reply or ICMP error may reach) is decided in one place, the "Ownership"
//! section below.

mod syn_proxy;

use std::{
    cell::RefCell,
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    rc::Rc,
};

use bg_lb::dataplane::syn_proxy::SynProxyMode;
use bg_lb_common::{
    flow_state::{self, FlowPhase},
    maps::{Flow, Flow6, FlowKey, FlowKey6, ip6},
};
use etherparse::{Ipv4HeaderSlice, Ipv4Slice, Ipv6HeaderSlice, TcpSlice};
use serde::Serialize;

use self::syn_proxy::{ProxyModel, ProxyView, untranslated};
use crate::{
    fuzz::frames::{Family, Learned},
    packet_lab::{
        GATEWAY_MAC, GATEWAY6, Ipv6Services, LB_MAC, PacketLab, PacketLabOptions, VIP, VIP6, XDP_DROP, XDP_PASS,
        XDP_REDIRECT, XDP_TX, mac_of, mac_of6,
    },
    packets::{ETH_LEN, internet_checksum, pseudo_header_sum, pseudo_header_sum6},
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

/// What the program did with a frame, when that was allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Class {
    Passed,
    Dropped,
    /// To the backend its flow is pinned to.
    ToBackendPinned,
    /// A client's mid-stream segment without a flow, by the lookup table.
    ToBackendStateless,
    /// The SYN proxy's ACK to a backend's SYN-ACK, in the client's place.
    ToBackendAnswer,
    /// The SYN proxy's SYN to a backend, for a proven cookie.
    ProxySyn,
    /// The SYN proxy's SYN again, its backend silent for a while.
    ProxySynAgain,
    /// A client segment the SYN proxy held (dropped until the backend answers).
    Held,
    /// The held segment, sent in place of the ACK to the backend's SYN-ACK.
    HeldToBackend,
    ReplyToClient,
    RstAnswer,
    SynAckAnswer,
    IcmpAnswer,
    IcmpToClient,
    IcmpToBackend,
    /// A UDP datagram to the backend its flow is pinned to.
    UdpToBackend,
    /// A backend's UDP reply, to the client of the flow owning its port.
    UdpReplyToClient,
}

#[derive(Clone)]
pub struct Oracle {
    by_addr: HashMap<SocketAddr, u32>,
    by_id: HashMap<u32, SocketAddr>,
    snat_ports: (u16, u16),
    /// The SYN proxy's model, when the (IPv4) service's proxy is not off.
    proxy: Option<ProxyModel>,
    /// The lab's IPv6 services' tables, when it has them (shared with the
    /// operator who changes them).
    ipv6: Option<Rc<RefCell<Ipv6Services>>>,
    /// Every flow at the last table check: when it was pinned, and to which
    /// (backend, SNAT pair).
    pinned: HashMap<Key, (u64, Pair)>,
}

/// An IPv4 or IPv6 packet as the oracle reads it.
struct Ip<'a> {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    /// The IPv4 header's bytes, options included; IPv6's fixed header.
    header: &'a [u8],
    /// TTL, or hop limit.
    ttl: u8,
    /// Protocol, or the fixed IPv6 header's next header (an extension
    /// header's number if one follows).
    proto: u8,
    fragmented: bool,
    /// Whether the IPv4 header checksum is right (IPv6 has none: true).
    header_ok: bool,
    /// The IP payload, as long as the total (payload) length says.
    payload: &'a [u8],
}

impl Ip<'_> {
    fn ipv6(&self) -> bool {
        self.src.is_ipv6()
    }

    /// The one's complement sum of the pseudo-header for this packet's
    /// payload as protocol `proto`.
    fn pseudo_sum(&self, proto: u8) -> u32 {
        let len = self.payload.len();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut pseudo = [0u8; 20];
                pseudo[9] = proto;
                pseudo[12..16].copy_from_slice(&s.octets());
                pseudo[16..20].copy_from_slice(&d.octets());
                pseudo_header_sum(&pseudo, len as u16)
            }
            _ => pseudo_header_sum6(self.header, proto, len),
        }
    }

    /// Whether this packet's payload, of protocol `proto`, sums to a right
    /// checksum (ICMPv4's covers no pseudo-header).
    fn checksum_ok(&self, proto: u8) -> bool {
        let pseudo = if proto == IPPROTO_ICMP {
            0
        } else {
            self.pseudo_sum(proto)
        };
        internet_checksum(pseudo, self.payload) == 0
    }
}

/// A TCP segment as the oracle reads it.
struct Tcp<'a> {
    src: SocketAddr,
    dst: SocketAddr,
    flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
    options: &'a [u8],
    payload: &'a [u8],
    /// The first 8 bytes of the header: what an ICMP error must quote.
    head: &'a [u8],
    checksum_ok: bool,
}

impl Tcp<'_> {
    /// The sequence space it takes: payload, SYN and FIN.
    fn len(&self) -> u32 {
        self.payload.len() as u32 + (self.flags & TCP_SYN != 0) as u32 + (self.flags & TCP_FIN != 0) as u32
    }
}

fn parse_ip(frame: &[u8]) -> Option<Ip<'_>> {
    let packet = frame.get(ETH_LEN..)?;
    // Addresses, header length, TTL (hop limit), protocol (next header),
    // whether fragmented, whether the header checksum is right, and the
    // packet's length as its header says.
    let (src, dst, header_len, ttl, proto, fragmented, header_ok, len): (IpAddr, IpAddr, _, _, _, _, _, _) =
        match frame.get(12..14)? {
            [0x08, 0x00] => {
                let ip = Ipv4Slice::from_slice(packet).ok()?;
                let h = ip.header();
                (
                    h.source_addr().into(),
                    h.destination_addr().into(),
                    h.slice().len(),
                    h.ttl(),
                    h.protocol().0,
                    h.is_fragmenting_payload(),
                    internet_checksum(0, h.slice()) == 0,
                    h.total_len() as usize,
                )
            }
            [0x86, 0xdd] => {
                let h = Ipv6HeaderSlice::from_slice(packet).ok()?;
                (
                    h.source_addr().into(),
                    h.destination_addr().into(),
                    40,
                    h.hop_limit(),
                    h.next_header().0,
                    false,
                    true,
                    40 + h.payload_length() as usize,
                )
            }
            _ => return None,
        };
    Some(Ip {
        src_mac: frame[6..12].try_into().expect("6 bytes"),
        dst_mac: frame[0..6].try_into().expect("6 bytes"),
        src,
        dst,
        header: &packet[..header_len],
        ttl,
        proto,
        fragmented,
        header_ok,
        payload: packet.get(header_len..len)?,
    })
}

fn parse_tcp<'a>(ip: &Ip<'a>) -> Option<Tcp<'a>> {
    if ip.proto != IPPROTO_TCP || ip.fragmented {
        return None;
    }
    let tcp = TcpSlice::from_slice(ip.payload).ok()?;
    Some(Tcp {
        src: SocketAddr::new(ip.src, tcp.source_port()),
        dst: SocketAddr::new(ip.dst, tcp.destination_port()),
        flags: tcp.slice()[13],
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        window: tcp.window_size(),
        options: &ip.payload[20..tcp.header_len()],
        payload: tcp.payload(),
        head: &ip.payload[..8],
        checksum_ok: ip.checksum_ok(IPPROTO_TCP),
    })
}

/// A UDP datagram as the oracle reads it.
struct Udp<'a> {
    src: SocketAddr,
    dst: SocketAddr,
    /// The header's length field.
    len: u16,
    /// The checksum field: 0 when the sender computed none.
    checksum: u16,
    /// Whether the checksum verifies (false for 0, none).
    checksum_ok: bool,
    payload: &'a [u8],
}

fn parse_udp<'a>(ip: &Ip<'a>) -> Option<Udp<'a>> {
    if ip.proto != IPPROTO_UDP || ip.fragmented || ip.payload.len() < 8 {
        return None;
    }
    let d = ip.payload;
    let word = |i: usize| u16::from_be_bytes([d[i], d[i + 1]]);
    Some(Udp {
        src: SocketAddr::new(ip.src, word(0)),
        dst: SocketAddr::new(ip.dst, word(2)),
        len: word(4),
        checksum: word(6),
        checksum_ok: word(6) != 0 && ip.checksum_ok(IPPROTO_UDP),
        payload: &d[8..],
    })
}

/// The segment or datagram an ICMP error quotes: its protocol (TCP or
/// UDP), addresses and ports, and a TCP segment's sequence number if quoted.
struct Quoted {
    proto: u8,
    src: SocketAddr,
    dst: SocketAddr,
    seq: Option<u32>,
    /// Whether a quoted IPv4 header's checksum is right (IPv6: true).
    header_ok: bool,
}

/// An ICMP (ICMPv6) error's type, code, whether its checksum is right, and
/// the TCP segment or UDP datagram it quotes.
fn parse_icmp_error(ip: &Ip<'_>) -> Option<(u8, u8, bool, Quoted)> {
    let icmp_proto = if ip.ipv6() { IPPROTO_ICMPV6 } else { IPPROTO_ICMP };
    if ip.proto != icmp_proto || ip.fragmented || ip.payload.len() < 8 {
        return None;
    }
    let icmp = ip.payload;
    let (src, dst, proto, l4, header_ok) = if ip.ipv6() {
        let inner = Ipv6HeaderSlice::from_slice(&icmp[8..]).ok()?;
        let (src, dst) = (inner.source_addr().into(), inner.destination_addr().into());
        (src, dst, inner.next_header().0, 8 + 40, true)
    } else {
        let inner = Ipv4HeaderSlice::from_slice(&icmp[8..]).ok()?;
        let ok = internet_checksum(0, inner.slice()) == 0;
        let (src, dst) = (inner.source_addr().into(), inner.destination_addr().into());
        (src, dst, inner.protocol().0, 8 + inner.slice().len(), ok)
    };
    let ports = icmp.get(l4..l4 + 4)?;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let quoted = Quoted {
        proto,
        src: SocketAddr::new(src, u16::from_be_bytes([ports[0], ports[1]])),
        dst: SocketAddr::new(dst, u16::from_be_bytes([ports[2], ports[3]])),
        seq: icmp
            .get(l4 + 4..l4 + 8)
            .filter(|_| proto == IPPROTO_TCP)
            .map(|s| u32::from_be_bytes(s.try_into().expect("4 bytes"))),
        header_ok,
    };
    Some((icmp[0], icmp[1], ip.checksum_ok(icmp_proto), quoted))
}

/// The MAC a forwarded packet to `addr` must carry: the neighbour's on the
/// LB's segment, else the gateway's.
fn next_hop_mac(addr: IpAddr) -> [u8; 6] {
    match addr {
        IpAddr::V4(a) if a.octets()[..3] == [10, 0, 0] => mac_of(a),
        IpAddr::V4(_) => GATEWAY_MAC,
        IpAddr::V6(a) if a.segments()[..4] == [0xfd00, 0, 0, 0] => mac_of6(a),
        IpAddr::V6(_) => mac_of6(GATEWAY6),
    }
}

fn is_connection_request(flags: u8) -> bool {
    flow_state::is_connection_request(flags)
}

/// A flow of either family's table: FLOWS' key or FLOWS6'.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    V4(FlowKey),
    V6(FlowKey6),
}

impl Key {
    /// `client`'s flow of protocol `proto` to its family's VIP.
    fn new(client: SocketAddr, proto: u8) -> Self {
        match client {
            SocketAddr::V4(c) => Key::V4(FlowKey::with_proto(c, VIP, proto)),
            SocketAddr::V6(c) => Key::V6(FlowKey6::with_proto(c, VIP6, proto)),
        }
    }

    fn client(&self) -> SocketAddr {
        match self {
            Key::V4(k) => k.client().into(),
            Key::V6(k) => k.client().into(),
        }
    }

    fn vip(&self) -> SocketAddr {
        match self {
            Key::V4(k) => k.vip().into(),
            Key::V6(k) => k.vip().into(),
        }
    }

    fn proto(&self) -> u8 {
        match self {
            Key::V4(k) => k.proto,
            Key::V6(k) => k.proto,
        }
    }
}

/// A FLOWS or FLOWS6 entry.
#[derive(Clone, Copy, Debug)]
enum Entry {
    V4(Flow),
    V6(Flow6),
}

impl Entry {
    fn backend_id(&self) -> u32 {
        match self {
            Entry::V4(f) => f.backend_id,
            Entry::V6(f) => f.backend_id,
        }
    }

    /// The SNAT address and port the flow's packets to its backend come from.
    fn snat(&self) -> SocketAddr {
        match self {
            Entry::V4(f) => SocketAddr::new(
                Ipv4Addr::from(f.snat_addr.to_ne_bytes()).into(),
                u16::from_be(f.snat_port),
            ),
            Entry::V6(f) => SocketAddr::new(ip6(f.snat_addr).into(), u16::from_be(f.snat_port)),
        }
    }

    /// What the SYN proxy's model reads of it.
    fn proxy_view(&self) -> ProxyView {
        let (created_ns, proxy, seq_delta) = match self {
            Entry::V4(f) => (f.created_ns, f.proxy, f.seq_delta),
            Entry::V6(f) => (f.created_ns, f.proxy, f.seq_delta),
        };
        ProxyView {
            created_ns,
            proxy,
            seq_delta,
        }
    }

    /// When the flow was pinned: which life of its key it is.
    fn created_ns(&self) -> u64 {
        match self {
            Entry::V4(f) => f.created_ns,
            Entry::V6(f) => f.created_ns,
        }
    }

    fn closed(&self) -> bool {
        let state = match self {
            Entry::V4(f) => f.state,
            Entry::V6(f) => f.state,
        };
        flow_state::phase(state) == FlowPhase::Closed
    }
}

/// A reverse-NAT key of either family: (backend, SNAT address and port).
type Pair = (SocketAddr, SocketAddr);

type Judged = Result<(Class, Option<Learned>), String>;

impl Oracle {
    /// The oracle for `lab`, set up with `options`.
    pub fn new(lab: &PacketLab, options: &PacketLabOptions) -> Self {
        let by_id: HashMap<u32, SocketAddr> = lab.backends_by_id().into_iter().map(|(id, b)| (id, b.into())).collect();
        let by_addr = by_id.iter().map(|(&id, &addr)| (addr, id)).collect();
        let proxy = (options.syn_proxy.mode != SynProxyMode::Off).then(|| ProxyModel::new(options.syn_proxy.mss));
        Oracle {
            by_addr,
            by_id,
            snat_ports: options.snat_ports,
            proxy,
            ipv6: None,
            pinned: HashMap::new(),
        }
    }

    /// The oracle judging the lab's IPv6 services too, whose tables
    /// `services` reads.
    pub fn with_ipv6(mut self, services: Rc<RefCell<Ipv6Services>>) -> Self {
        for (id, backend) in services.borrow().backends_by_id() {
            self.by_id.insert(id, backend.into());
            self.by_addr.insert(backend.into(), id);
        }
        self.ipv6 = Some(services);
        self
    }

    /// The proxy's SYNs to backends that carried the fallback MSS (see
    /// `synproxy::cookie_mss`): rare, or the MSS is not read back.
    pub fn cookie_mss_fallbacks(&self) -> u64 {
        self.proxy.as_ref().map_or(0, |p| p.mss_fallbacks)
    }

    fn in_snat_range(&self, port: u16) -> bool {
        (self.snat_ports.0..=self.snat_ports.1).contains(&port)
    }

    /// Whether `addr` is the SNAT address of its family.
    fn is_snat(&self, addr: IpAddr) -> bool {
        Family::of(addr).snat == addr
    }

    /// Whether `addr` is the VIP:port of its family's services.
    fn is_vip(&self, addr: SocketAddr) -> bool {
        Family::of(addr.ip()).vip == addr
    }

    /// A reverse-NAT key as "backend B port P", for failure messages.
    fn describe(&self, (backend, snat): &Pair) -> String {
        let known = if self.by_addr.contains_key(backend) {
            ""
        } else {
            " (no such backend)"
        };
        format!("backend {backend}{known} via {snat}")
    }

    // --- Tables: FLOWS and REVERSE_NAT, or their IPv6 twins ---

    fn flow_at(&self, lab: &PacketLab, key: &Key) -> Option<Entry> {
        match key {
            Key::V4(k) => lab.flow_at(k).map(Entry::V4),
            Key::V6(k) => self.ipv6.as_ref()?.borrow().flow_at(k).map(Entry::V6),
        }
    }

    /// The flow REVERSE_NAT (REVERSE_NAT6) gives `backend`'s replies to
    /// `snat`.
    fn reverse_nat(&self, lab: &PacketLab, backend: SocketAddr, snat: SocketAddr) -> Option<Key> {
        match (backend, snat) {
            (SocketAddr::V4(b), SocketAddr::V4(s)) => lab.reverse_nat_on(b, s).map(Key::V4),
            (SocketAddr::V6(b), SocketAddr::V6(s)) => self.ipv6.as_ref()?.borrow().reverse_owner(b, s).map(Key::V6),
            _ => None,
        }
    }

    fn flows(&self, lab: &PacketLab) -> HashMap<Key, Entry> {
        let v4 = lab.flows().into_iter().map(|(k, f)| (Key::V4(k), Entry::V4(f)));
        let v6 = self.ipv6.iter().flat_map(|t| t.borrow().flows());
        v4.chain(v6.map(|(k, f)| (Key::V6(k), Entry::V6(f)))).collect()
    }

    fn reverse_nats(&self, lab: &PacketLab) -> HashMap<Pair, Key> {
        let v4 = lab.reverse_nats().into_iter().map(|(nat, owner)| {
            let pair = (
                nat.backend().into(),
                SocketAddrV4::new(nat.snat_ip(), u16::from_be(nat.snat_port)).into(),
            );
            (pair, Key::V4(owner))
        });
        let v6 = self
            .ipv6
            .iter()
            .flat_map(|t| t.borrow().reverse_nats())
            .map(|(nat, owner)| {
                let pair = (
                    nat.backend().into(),
                    SocketAddrV6::new(nat.snat_ip(), u16::from_be(nat.snat_port), 0, 0).into(),
                );
                (pair, Key::V6(owner))
            });
        v4.chain(v6).collect()
    }

    /// The (backend, SNAT address and port) a flow holds, if its backend is
    /// installed.
    fn pair(&self, flow: &Entry) -> Option<Pair> {
        Some((*self.by_id.get(&flow.backend_id())?, flow.snat()))
    }

    /// Whether `flow` is pinned to `backend` through `snat`.
    fn pinned_to(&self, flow: &Entry, backend: SocketAddr, snat: SocketAddr) -> bool {
        self.pair(flow) == Some((backend, snat))
    }

    // --- Ownership: how FLOWS and REVERSE_NAT must agree, in one place ---

    /// The flow that owns (`backend`, `snat`): REVERSE_NAT names it, and
    /// its FLOWS entry is pinned there. Only such a flow's client may get
    /// what arrives on that pair (replies, ICMP errors).
    fn port_owner(&self, lab: &PacketLab, backend: SocketAddr, snat: SocketAddr) -> Result<(Key, Entry), String> {
        let key = self
            .reverse_nat(lab, backend, snat)
            .ok_or_else(|| format!("{backend} via {snat}, which no flow owns in REVERSE_NAT"))?;
        match self.flow_at(lab, &key) {
            Some(flow) if self.pinned_to(&flow, backend, snat) => Ok((key, flow)),
            Some(flow) => Err(format!(
                "{backend} via {snat}, which REVERSE_NAT gives {}, whose flow is pinned to backend id {} via {}",
                key.client(),
                flow.backend_id(),
                flow.snat()
            )),
            None => Err(format!(
                "{backend} via {snat}, which REVERSE_NAT gives {}, whose flow is gone",
                key.client()
            )),
        }
    }

    /// `client`'s flow of protocol `proto`, when its REVERSE_NAT entry
    /// names it back: only then may what its client sends reach the backend
    /// side (an ICMP error, an answer about it).
    fn owned_flow(&self, lab: &PacketLab, client: SocketAddr, proto: u8) -> Result<(Key, Entry), String> {
        let key = Key::new(client, proto);
        let flow = self
            .flow_at(lab, &key)
            .ok_or_else(|| format!("{client}, which has no flow"))?;
        let (backend, snat) = self.pair(&flow).ok_or_else(|| {
            format!(
                "{client}, whose flow names backend id {}, not installed",
                flow.backend_id()
            )
        })?;
        if self.reverse_nat(lab, backend, snat) != Some(key) {
            return Err(format!(
                "{client}, whose flow's pair ({backend} via {snat}) REVERSE_NAT does not give it"
            ));
        }
        Ok((key, flow))
    }

    /// Whether a segment from `client` may go through (`backend`, `snat`),
    /// its flow pinned there: no *other* flow owns the pair in REVERSE_NAT
    /// (a missing entry is claimed again).
    fn may_use_port(
        &self,
        lab: &PacketLab,
        client: SocketAddr,
        backend: SocketAddr,
        snat: SocketAddr,
    ) -> Result<(), String> {
        match self.reverse_nat(lab, backend, snat) {
            Some(other) if other != Key::new(client, IPPROTO_TCP) => Err(format!(
                "{client}'s segment sent through {backend} via {snat}, which REVERSE_NAT gives to {}",
                other.client()
            )),
            _ => Ok(()),
        }
    }

    /// Whether a segment without a flow may go through (`backend`, `snat`)
    /// statelessly: no live flow owns it.
    fn may_use_port_statelessly(
        &self,
        lab: &PacketLab,
        client: SocketAddr,
        backend: SocketAddr,
        snat: SocketAddr,
    ) -> Result<(), String> {
        if let Some(other) = self.reverse_nat(lab, backend, snat)
            && let Some(flow) = self.flow_at(lab, &other)
            && !flow.closed()
        {
            return Err(format!(
                "{client}'s segment forwarded statelessly through {backend} via {snat}, which live flow {} owns",
                other.client()
            ));
        }
        Ok(())
    }

    /// Invariants 7 and 8 of the module docs over the whole tables.
    fn ownership_problems(
        &self,
        lab: &PacketLab,
        flows: &HashMap<Key, Entry>,
        reverse_nat_complete: bool,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let mut owners: HashMap<Pair, Key> = HashMap::new();
        for (key, flow) in flows {
            let Some(pair) = self.pair(flow) else { continue };
            if flow.closed() {
                continue;
            }
            if let Some(other) = owners.insert(pair, *key) {
                problems.push(format!(
                    "{} and {} both own {} (neither has closed)",
                    other.client(),
                    key.client(),
                    self.describe(&pair)
                ));
            }
        }
        if reverse_nat_complete {
            let reverse = self.reverse_nats(lab);
            for (key, flow) in flows.iter().filter(|(_, flow)| !flow.closed()) {
                let Some(pair) = self.pair(flow) else { continue };
                match reverse.get(&pair) {
                    Some(owner) if owner == key => {}
                    Some(owner) => problems.push(format!(
                        "{}'s flow has not closed, but REVERSE_NAT gives its {} to {}",
                        key.client(),
                        self.describe(&pair),
                        owner.client()
                    )),
                    None => problems.push(format!(
                        "{}'s flow has not closed, but its {} has no REVERSE_NAT entry",
                        key.client(),
                        self.describe(&pair)
                    )),
                }
            }
        }
        problems
    }

    // --- Frames ---

    /// Judges one run of the program: `input` went in, `verdict` and
    /// `output` came out, and `lab`'s maps are as the run left them. On
    /// success, what the output teaches the frame's session.
    pub fn judge(&mut self, lab: &PacketLab, input: &[u8], verdict: u32, output: &[u8]) -> Judged {
        match verdict {
            XDP_PASS if output == input => Ok((Class::Passed, None)),
            XDP_PASS => Err("XDP_PASS with a changed frame: the kernel must get it as it came".to_owned()),
            XDP_DROP => match self.held(lab, input) {
                Some(class) => Ok((class, None)),
                None => self.backend_answer_dropped(lab, input).map(|()| (Class::Dropped, None)),
            },
            XDP_TX | XDP_REDIRECT => self.forwarded(lab, input, verdict, output),
            other => Err(format!("verdict {other} (0 is XDP_ABORTED)")),
        }
    }

    /// A dropped client segment to a VIP whose data the SYN proxy held.
    fn held(&mut self, lab: &PacketLab, input: &[u8]) -> Option<Class> {
        self.proxy.as_ref()?;
        let ip = parse_ip(input)?;
        let seg = parse_tcp(&ip).filter(|seg| self.is_vip(seg.dst))?;
        let key = Key::new(seg.src, IPPROTO_TCP);
        let flow = self.flow_at(lab, &key)?.proxy_view();
        self.proxy.as_mut()?.dropped(&key, &flow, &seg)
    }

    /// A dropped backend segment to the SNAT address: what the proxy took
    /// of it if it was its flow's SYN-ACK ([`ProxyModel::answer_dropped`]).
    fn backend_answer_dropped(&mut self, lab: &PacketLab, input: &[u8]) -> Result<(), String> {
        let Some(seg) = parse_ip(input).as_ref().and_then(parse_tcp) else {
            return Ok(());
        };
        if self.proxy.is_none() || !self.by_addr.contains_key(&seg.src) || !self.is_snat(seg.dst.ip()) {
            return Ok(());
        }
        let Ok((key, flow)) = self.port_owner(lab, seg.src, seg.dst) else {
            return Ok(());
        };
        let proxy = self.proxy.as_mut().expect("checked above");
        proxy.answer_dropped(&key, &flow.proxy_view(), &seg)
    }

    fn forwarded(&mut self, lab: &PacketLab, input: &[u8], verdict: u32, output: &[u8]) -> Judged {
        let out_ip = parse_ip(output).ok_or("forwarded a frame that is neither IPv4 nor IPv6")?;
        let in_ip = parse_ip(input);
        if !out_ip.header_ok && in_ip.as_ref().is_some_and(|i| i.header_ok) {
            return Err("IPv4 header checksum broken by the program".to_owned());
        }
        if let Some(i) = &in_ip
            && i.ipv6() != out_ip.ipv6()
        {
            return Err(format!(
                "forwarded {} -> {} from a frame {} -> {}",
                out_ip.src, out_ip.dst, i.src, i.dst
            ));
        }
        match out_ip.proto {
            IPPROTO_TCP => {
                let out = parse_tcp(&out_ip).ok_or("forwarded TCP that does not parse")?;
                let in_tcp = in_ip.as_ref().and_then(parse_tcp);
                if self.by_addr.contains_key(&out.dst) && self.is_snat(out.src.ip()) {
                    self.toward_backend(lab, in_ip.as_ref(), in_tcp.as_ref(), verdict, &out_ip, &out)
                } else if self.is_vip(out.src) {
                    match (&in_ip, &in_tcp) {
                        (Some(i), Some(t)) if t.src == out.dst && t.dst == out.src => {
                            self.answer(lab, i, t, verdict, &out_ip, &out)
                        }
                        _ => self.reply_to_client(lab, in_ip.as_ref(), in_tcp.as_ref(), &out_ip, &out),
                    }
                } else {
                    Err(format!(
                        "forwarded TCP {} -> {} that is neither to a backend from the SNAT address nor from the VIP",
                        out.src, out.dst
                    ))
                }
            }
            IPPROTO_ICMP | IPPROTO_ICMPV6 => self.icmp(lab, in_ip.as_ref(), verdict, &out_ip),
            IPPROTO_UDP => self.udp(lab, in_ip.as_ref(), &out_ip),
            other => Err(format!("forwarded IP protocol {other}")),
        }
    }

    fn toward_backend(
        &mut self,
        lab: &PacketLab,
        in_ip: Option<&Ip<'_>>,
        in_tcp: Option<&Tcp<'_>>,
        verdict: u32,
        out_ip: &Ip<'_>,
        out: &Tcp<'_>,
    ) -> Judged {
        let (backend, snat, port) = (out.dst, out.src, out.src.port());
        if !self.in_snat_range(port) {
            return Err(format!("to backend {backend} from SNAT port {port}, outside the range"));
        }
        let (Some(in_ip), Some(seg)) = (in_ip, in_tcp) else {
            return Err(format!("to backend {backend} from a frame that is not TCP"));
        };
        let class = if self.is_vip(seg.dst) {
            let key = Key::new(seg.src, IPPROTO_TCP);
            match self.flow_at(lab, &key) {
                Some(flow) if self.pinned_to(&flow, backend, snat) => {
                    self.may_use_port(lab, seg.src, backend, snat)?;
                    let proxy_class = match &mut self.proxy {
                        Some(proxy) => proxy.client_to_backend(&key, &flow.proxy_view(), seg, out_ip, out)?,
                        None => {
                            untranslated(seg, out)?;
                            None
                        }
                    };
                    match proxy_class {
                        // Built whole by the proxy: judged there.
                        Some(class) => {
                            check_forwarding_macs(out_ip)?;
                            class
                        }
                        None => {
                            forwarding_checks(in_ip, seg, out_ip, out)?;
                            Class::ToBackendPinned
                        }
                    }
                }
                Some(flow) => {
                    return Err(format!(
                        "{}'s flow is pinned to backend id {} via {}, but the segment went to {backend} via {snat}",
                        seg.src,
                        flow.backend_id(),
                        flow.snat()
                    ));
                }
                None if is_connection_request(seg.flags) => {
                    return Err(format!("{}'s connection request forwarded without a flow", seg.src));
                }
                None => {
                    forwarding_checks(in_ip, seg, out_ip, out)?;
                    untranslated(seg, out)?;
                    self.may_use_port_statelessly(lab, seg.src, backend, snat)?;
                    Class::ToBackendStateless
                }
            }
        } else if seg.src == backend && seg.dst == snat {
            // The SYN proxy's answer to the backend's SYN-ACK: the ACK in the
            // client's place (back out with XDP_TX) or the client segment it
            // held (forwarded).
            if verdict == XDP_TX {
                check_answer_macs(in_ip, out_ip)?;
            } else {
                check_forwarding_macs(out_ip)?;
            }
            let (key, flow) = self
                .port_owner(lab, backend, snat)
                .map_err(|e| format!("answered {e}"))?;
            let proxy = self.proxy.as_mut().ok_or("answered a backend with the SYN proxy off")?;
            proxy.answer_backend(&key, &flow.proxy_view(), seg, verdict != XDP_TX, out_ip, out)?
        } else {
            return Err(format!(
                "to backend {backend} from {} -> {}: neither its flow's client nor that backend",
                seg.src, seg.dst
            ));
        };
        let learned = Learned::ToBackend {
            side: (backend, port),
            next_seq: out.seq.wrapping_add(out.len()),
        };
        Ok((class, Some(learned)))
    }

    fn reply_to_client(
        &self,
        lab: &PacketLab,
        in_ip: Option<&Ip<'_>>,
        in_tcp: Option<&Tcp<'_>>,
        out_ip: &Ip<'_>,
        out: &Tcp<'_>,
    ) -> Judged {
        let client = out.dst;
        let (Some(in_ip), Some(seg)) = (in_ip, in_tcp) else {
            return Err(format!("to client {client} from a frame that is not TCP"));
        };
        let (backend, snat) = (seg.src, seg.dst);
        if !self.by_addr.contains_key(&backend) || !self.is_snat(snat.ip()) || !self.in_snat_range(snat.port()) {
            return Err(format!(
                "to client {client} from {} -> {}: neither a backend's reply to the SNAT range nor an answer",
                seg.src, seg.dst
            ));
        }
        forwarding_checks(in_ip, seg, out_ip, out)?;
        let (owner, flow) = self
            .port_owner(lab, backend, snat)
            .map_err(|e| format!("{backend}'s reply forwarded to {client} through {e}"))?;
        if owner != Key::new(client, IPPROTO_TCP) {
            return Err(format!(
                "{backend}'s reply to {snat} forwarded to {client}, but the pair is {}'s",
                owner.client()
            ));
        }
        match &self.proxy {
            Some(proxy) => proxy.backend_to_client(&owner, &flow.proxy_view(), seg, out)?,
            None => untranslated(seg, out)?,
        }
        let learned = Learned::ToClient {
            next_seq: out.seq.wrapping_add(out.len()),
        };
        Ok((Class::ReplyToClient, Some(learned)))
    }

    /// A forwarded UDP datagram: to a backend for a client's pinned UDP
    /// flow, or a backend's reply to the client whose flow owns its port.
    fn udp(&self, lab: &PacketLab, in_ip: Option<&Ip<'_>>, out_ip: &Ip<'_>) -> Judged {
        let out = parse_udp(out_ip).ok_or("forwarded UDP that does not parse")?;
        let (Some(in_ip), Some(dgram)) = (in_ip, in_ip.and_then(parse_udp)) else {
            return Err(format!(
                "UDP {} -> {} forwarded from a frame that is not UDP",
                out.src, out.dst
            ));
        };
        udp_forwarding_checks(in_ip, &dgram, out_ip, &out)?;
        if self.by_addr.contains_key(&out.dst) && self.is_snat(out.src.ip()) {
            let (backend, snat) = (out.dst, out.src);
            if !self.in_snat_range(snat.port()) {
                return Err(format!("UDP to backend {backend} from SNAT {snat}, outside the range"));
            }
            if !self.is_vip(dgram.dst) {
                return Err(format!(
                    "UDP to backend {backend} from a datagram {} -> {}, not to the VIP",
                    dgram.src, dgram.dst
                ));
            }
            let key = Key::new(dgram.src, IPPROTO_UDP);
            let flow = self
                .flow_at(lab, &key)
                .ok_or_else(|| format!("{}'s UDP datagram forwarded without a flow", dgram.src))?;
            if !self.pinned_to(&flow, backend, snat) {
                return Err(format!(
                    "{}'s UDP flow is pinned to backend id {} via {}, but the datagram went to {backend} via {snat}",
                    dgram.src,
                    flow.backend_id(),
                    flow.snat()
                ));
            }
            match self.reverse_nat(lab, backend, snat) {
                Some(owner) if owner == key => {}
                owner => {
                    return Err(format!(
                        "{}'s UDP datagram sent through {backend} via {snat}, which REVERSE_NAT gives to {owner:?}",
                        dgram.src
                    ));
                }
            }
            let learned = Learned::UdpToBackend {
                side: (backend, snat.port()),
            };
            Ok((Class::UdpToBackend, Some(learned)))
        } else if self.is_vip(out.src) {
            let client = out.dst;
            let (backend, snat) = (dgram.src, dgram.dst);
            if !self.by_addr.contains_key(&backend) || !self.is_snat(snat.ip()) || !self.in_snat_range(snat.port()) {
                return Err(format!(
                    "UDP to client {client} from {} -> {}: not a backend's reply to the SNAT range",
                    dgram.src, dgram.dst
                ));
            }
            let (owner, _) = self
                .port_owner(lab, backend, snat)
                .map_err(|e| format!("{backend}'s UDP reply forwarded to {client} through {e}"))?;
            if owner != Key::new(client, IPPROTO_UDP) {
                return Err(format!(
                    "{backend}'s UDP reply to {snat} forwarded to {client}, but the pair is {owner:?}'s"
                ));
            }
            Ok((Class::UdpReplyToClient, None))
        } else {
            Err(format!(
                "forwarded UDP {} -> {} that is neither to a backend from the SNAT address nor from the VIP",
                out.src, out.dst
            ))
        }
    }

    fn icmp(&self, lab: &PacketLab, in_ip: Option<&Ip<'_>>, verdict: u32, out_ip: &Ip<'_>) -> Judged {
        let (icmp_type, _, checksum_ok, quoted) = parse_icmp_error(out_ip)
            .ok_or("forwarded ICMP that is not an error quoting a TCP segment or UDP datagram")?;
        // Destination unreachable, time exceeded; ICMPv6 also packet too big
        // and parameter problem.
        let error_types: &[u8] = if out_ip.ipv6() { &[1, 2, 3, 4] } else { &[3, 11] };
        if !error_types.contains(&icmp_type) {
            return Err(format!("forwarded ICMP type {icmp_type}"));
        }
        let in_ip = in_ip.ok_or("ICMP from a frame that is not IP")?;
        if let Some(seg) = parse_tcp(in_ip) {
            return self.too_big_answer(lab, in_ip, &seg, verdict, out_ip);
        }
        let (in_type, _, in_checksum_ok, in_quoted) =
            parse_icmp_error(in_ip).ok_or("forwarded ICMP from a frame that is neither TCP nor an ICMP error")?;
        if in_type != icmp_type {
            return Err(format!("ICMP type {icmp_type} translated from type {in_type}"));
        }
        if in_checksum_ok && !checksum_ok {
            return Err("ICMP checksum broken by the translation".to_owned());
        }
        if in_quoted.header_ok && !quoted.header_ok {
            return Err("quoted IPv4 header checksum broken by the translation".to_owned());
        }
        if in_quoted.proto != quoted.proto {
            return Err(format!(
                "ICMP quoting protocol {} translated from one quoting {}",
                quoted.proto, in_quoted.proto
            ));
        }
        check_forwarding_macs(out_ip)?;
        if self.by_addr.contains_key(&quoted.src) && out_ip.dst == quoted.src.ip() {
            // To a backend, about its segment to a SNAT port.
            let (backend, snat) = (quoted.src, quoted.dst);
            if !self.is_snat(snat.ip()) {
                return Err(format!("ICMP to backend {backend} quoting a segment to {snat}"));
            }
            let (key, flow) = self
                .port_owner(lab, backend, snat)
                .map_err(|e| format!("ICMP about {e}"))?;
            if key.proto() != quoted.proto {
                return Err(format!(
                    "ICMP quoting protocol {} to {backend} for {}'s flow of protocol {}",
                    quoted.proto,
                    key.client(),
                    key.proto()
                ));
            }
            if in_quoted.src != key.vip() || in_quoted.dst != key.client() {
                return Err(format!(
                    "ICMP to {backend} for {}'s flow, translated from one quoting {} -> {}",
                    key.client(),
                    in_quoted.src,
                    in_quoted.dst
                ));
            }
            // A proxied flow's backend checks its own sequence numbers.
            let shift = match &self.proxy {
                Some(proxy) => proxy.quoted_seq_shift(&key, &flow.proxy_view())?,
                None => 0,
            };
            quoted_seq_shifted(&in_quoted, &quoted, shift)?;
            Ok((Class::IcmpToBackend, None))
        } else {
            // To a client, about its segment to the VIP.
            let client = quoted.src;
            if out_ip.dst != client.ip() || !self.is_vip(quoted.dst) {
                return Err(format!(
                    "ICMP to {} quoting {} -> {}: neither a client's segment to the VIP nor a backend's to the SNAT address",
                    out_ip.dst, quoted.src, quoted.dst
                ));
            }
            let (_, flow) = self
                .owned_flow(lab, client, quoted.proto)
                .map_err(|e| format!("ICMP to {e}"))?;
            let (backend, from) = self.pair(&flow).ok_or("ICMP for a flow of no installed backend")?;
            if in_quoted.dst != backend || in_quoted.src != from {
                return Err(format!(
                    "ICMP to {client}, whose flow is {from} -> {backend}, translated from one quoting {} -> {}",
                    in_quoted.src, in_quoted.dst
                ));
            }
            quoted_seq_shifted(&in_quoted, &quoted, 0)?;
            Ok((Class::IcmpToClient, None))
        }
    }

    /// The program's ICMP answer: fragmentation needed (forward.rs; IPv6:
    /// packet too big), by XDP_TX, for a segment of a pinned flow that is
    /// too big for its egress link (IPv4: with DF), from the address the
    /// segment went to, quoting it as its sender sent it (IPv4: its header
    /// and first 8 bytes, the TTL the LB decremented; IPv6: as much as fits,
    /// its hop limit as sent or decremented).
    fn too_big_answer(&self, lab: &PacketLab, in_ip: &Ip<'_>, seg: &Tcp<'_>, verdict: u32, out_ip: &Ip<'_>) -> Judged {
        if verdict != XDP_TX {
            return Err("an ICMP answer not sent back with XDP_TX".to_owned());
        }
        if (out_ip.src, out_ip.dst) != (in_ip.dst, in_ip.src) {
            return Err(format!(
                "an ICMP answer {} -> {} to a segment {} -> {}",
                out_ip.src, out_ip.dst, seg.src, seg.dst
            ));
        }
        if in_ip.ipv6() {
            packet_too_big(in_ip, out_ip)?;
        } else {
            fragmentation_needed(in_ip, seg, out_ip)?;
        }
        check_answer_macs(in_ip, out_ip)?;
        // Of a pinned flow, whose tables agree.
        if self.is_vip(seg.dst) {
            self.owned_flow(lab, seg.src, IPPROTO_TCP)
                .map_err(|e| format!("fragmentation needed for {e}"))?;
        } else {
            self.port_owner(lab, seg.src, seg.dst)
                .map_err(|e| format!("fragmentation needed for {e}"))?;
        }
        Ok((Class::IcmpAnswer, None))
    }

    /// An answer from the VIP to the frame's sender (invariant 3).
    fn answer(
        &mut self,
        lab: &PacketLab,
        in_ip: &Ip<'_>,
        seg: &Tcp<'_>,
        verdict: u32,
        out_ip: &Ip<'_>,
        out: &Tcp<'_>,
    ) -> Judged {
        if !out_ip.header_ok || !out.checksum_ok {
            return Err("an answer with a wrong checksum".to_owned());
        }
        if seg.flags & TCP_RST != 0 {
            return Err("answered a RST".to_owned());
        }
        let handshake = out.flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN);
        if handshake == TCP_SYN | TCP_ACK {
            check_syn_ack_hop(in_ip, verdict, out_ip)?;
        } else if verdict != XDP_TX {
            return Err("an answer to the sender not sent back with XDP_TX".to_owned());
        } else {
            check_answer_macs(in_ip, out_ip)?;
        }
        if !out.payload.is_empty() {
            return Err("an answer with a payload".to_owned());
        }
        let request = is_connection_request(seg.flags);
        if out_ip.ipv6() != in_ip.ipv6() {
            return Err("an answer of another family".to_owned());
        }
        if out.flags & TCP_RST != 0 && out.flags & TCP_SYN == 0 {
            let flowless = self.is_vip(seg.dst) && self.flow_at(lab, &Key::new(seg.src, IPPROTO_TCP)).is_none();
            if !request && !self.proxy.as_ref().is_some_and(|p| p.refuses(seg, flowless)) {
                return Err(format!(
                    "a RST answering flags {:#04x}: neither a connection request nor an ACK proving a cookie",
                    seg.flags
                ));
            }
            // RFC 793: to a segment with ACK, seq = its ack; else ack = its
            // seq + length, with ACK set.
            let ok = if seg.flags & TCP_ACK != 0 {
                out.seq == seg.ack
            } else {
                out.flags & TCP_ACK != 0 && out.ack == seg.seq.wrapping_add(seg.len())
            };
            if !ok {
                return Err(format!(
                    "a RST with seq {} ack {} to seq {} ack {}",
                    out.seq, out.ack, seg.seq, seg.ack
                ));
            }
            Ok((Class::RstAnswer, Some(Learned::Refused)))
        } else if handshake == TCP_SYN | TCP_ACK {
            if !request {
                return Err(format!("a SYN-ACK answering flags {:#04x}", seg.flags));
            }
            if out.ack != seg.seq.wrapping_add(1) {
                return Err(format!(
                    "a SYN-ACK acknowledging {} to a SYN with seq {}",
                    out.ack, seg.seq
                ));
            }
            let proxy = self.proxy.as_mut().ok_or("a SYN-ACK answer with the SYN proxy off")?;
            proxy.cookie_syn_ack(in_ip, seg, out_ip, out)?;
            let learned = Learned::ToClient {
                next_seq: out.seq.wrapping_add(1),
            };
            Ok((Class::SynAckAnswer, Some(learned)))
        } else {
            Err(format!("an answer with flags {:#04x}", out.flags))
        }
    }

    /// The tables' invariants (6 to 10 of the module docs); with
    /// `reverse_nat_complete`, also that every REVERSE_NAT entry's flow names
    /// it.
    pub fn check_tables(&mut self, lab: &PacketLab, reverse_nat_complete: bool) -> Vec<String> {
        let mut problems = Vec::new();
        let flows = self.flows(lab);
        let mut pinned = HashMap::with_capacity(flows.len());
        for (key, flow) in &flows {
            // A flow keeps its backend and SNAT pair for its life: no frame,
            // hostile or not, moves it.
            if let Some(pair) = self.pair(flow) {
                if let Some(&(created, was)) = self.pinned.get(key)
                    && created == flow.created_ns()
                    && was != pair
                {
                    problems.push(format!(
                        "{}'s flow moved from {} to {} during its life",
                        key.client(),
                        self.describe(&was),
                        self.describe(&pair)
                    ));
                }
                pinned.insert(*key, (flow.created_ns(), pair));
            }
            let proto_served = key.proto() == IPPROTO_TCP || key.proto() == IPPROTO_UDP;
            if !proto_served || *key != Key::new(key.client(), key.proto()) {
                problems.push(format!("a flow to something else than the VIP's services: {key:?}"));
            }
            if self.pair(flow).is_none() {
                problems.push(format!(
                    "{}'s flow names backend id {}, not installed",
                    key.client(),
                    flow.backend_id()
                ));
            }
            if !self.is_snat(flow.snat().ip()) || !self.in_snat_range(flow.snat().port()) {
                problems.push(format!(
                    "{}'s flow has SNAT {}, outside the address or range",
                    key.client(),
                    flow.snat()
                ));
            }
        }
        problems.extend(self.ownership_problems(lab, &flows, reverse_nat_complete));
        if let Some(proxy) = &self.proxy {
            let views = flows.iter().map(|(key, flow)| (*key, flow.proxy_view()));
            problems.extend(proxy.check_flows(&views.collect()));
        }
        self.pinned = pinned;
        problems
    }
}

/// Invariants 4 and 5 for a frame forwarded (not answered, not built).
fn forwarding_checks(in_ip: &Ip<'_>, seg: &Tcp<'_>, out_ip: &Ip<'_>, out: &Tcp<'_>) -> Result<(), String> {
    if seg.checksum_ok && !out.checksum_ok {
        return Err("TCP checksum broken by the program".to_owned());
    }
    if out.payload != seg.payload {
        return Err("payload changed on the way".to_owned());
    }
    if out.flags != seg.flags {
        return Err(format!("flags {:#04x} in, {:#04x} out", seg.flags, out.flags));
    }
    if out_ip.ttl != in_ip.ttl.wrapping_sub(1) {
        return Err(format!("TTL {} in, {} out", in_ip.ttl, out_ip.ttl));
    }
    check_forwarding_macs(out_ip)
}

/// What every forwarded UDP datagram keeps: payload and length (its IP
/// payload's), a correct checksum if it came with one and none if it came
/// with none, a TTL one less, and the forwarding MACs.
fn udp_forwarding_checks(in_ip: &Ip<'_>, dgram: &Udp<'_>, out_ip: &Ip<'_>, out: &Udp<'_>) -> Result<(), String> {
    if out.len as usize != out_ip.payload.len() {
        return Err(format!(
            "forwarded a UDP datagram of length {} in an IP payload of {}",
            out.len,
            out_ip.payload.len()
        ));
    }
    if out.payload != dgram.payload || out.len != dgram.len {
        return Err("UDP payload or length changed on the way".to_owned());
    }
    if out_ip.ipv6() && dgram.checksum == 0 {
        return Err("forwarded an IPv6 datagram without a checksum".to_owned());
    }
    if dgram.checksum == 0 && out.checksum != 0 {
        return Err(format!(
            "a datagram sent without a checksum left with {:#06x}",
            out.checksum
        ));
    }
    if dgram.checksum_ok && !out.checksum_ok {
        return Err("UDP checksum broken by the program".to_owned());
    }
    if out_ip.ttl != in_ip.ttl.wrapping_sub(1) {
        return Err(format!("TTL {} in, {} out", in_ip.ttl, out_ip.ttl));
    }
    check_forwarding_macs(out_ip)
}

/// IPv4's ICMP answer to `seg` (in `in_ip`): fragmentation needed, for a
/// DF segment without IP options, at an MTU below its length, quoting its
/// header (the TTL the LB decremented, the checksum made right for it)
/// and first 8 bytes.
fn fragmentation_needed(in_ip: &Ip<'_>, seg: &Tcp<'_>, out_ip: &Ip<'_>) -> Result<(), String> {
    let icmp = out_ip.payload;
    if icmp.len() != 8 + 28 || icmp[..2] != [3, 4] || icmp[4..6] != [0, 0] {
        return Err(format!(
            "an ICMP answer {:02x?}: only fragmentation needed is sent",
            icmp
        ));
    }
    let h = out_ip.header;
    if h.len() != 20 || h[1] != 0xc0 || out_ip.ttl != 64 || !out_ip.header_ok || internet_checksum(0, icmp) != 0 {
        return Err(format!(
            "an ICMP answer with IPv4 header {h:02x?} and a wrong or right ICMP checksum"
        ));
    }
    if in_ip.header.len() != 20 || in_ip.header[6] & 0x40 == 0 {
        return Err("fragmentation needed for a segment without DF, or with IP options".to_owned());
    }
    let mtu = u16::from_be_bytes([icmp[6], icmp[7]]);
    let in_len = u16::from_be_bytes([in_ip.header[2], in_ip.header[3]]);
    if mtu == 0 || mtu >= in_len {
        return Err(format!("fragmentation needed at MTU {mtu} for a {in_len}-byte segment"));
    }
    let mut quote = in_ip.header.to_vec();
    quote[8] = in_ip.ttl.wrapping_sub(1);
    quote[10..12].copy_from_slice(&[0, 0]);
    let check = internet_checksum(0, &quote);
    quote[10..12].copy_from_slice(&check.to_be_bytes());
    quote.extend_from_slice(seg.head);
    if icmp[8..] != quote[..] {
        return Err(format!(
            "an ICMP answer quoting {:02x?}: {quote:02x?} expected",
            &icmp[8..]
        ));
    }
    Ok(())
}

/// IPv6's ICMP answer to the segment in `in_ip`: packet too big, with a
/// right checksum, at an MTU of at least 1280 below the packet's length,
/// quoting the packet's start (at most what fits 1280 bytes), its hop limit
/// as sent or decremented.
fn packet_too_big(in_ip: &Ip<'_>, out_ip: &Ip<'_>) -> Result<(), String> {
    let icmp = out_ip.payload;
    if icmp.len() < 8 || icmp[..2] != [2, 0] || !out_ip.checksum_ok(IPPROTO_ICMPV6) {
        return Err(format!(
            "an ICMPv6 answer {:02x?}: only packet too big, with a right checksum, is sent",
            &icmp[..icmp.len().min(8)]
        ));
    }
    let mtu = u32::from_be_bytes(icmp[4..8].try_into().expect("4 bytes"));
    let in_len = (40 + in_ip.payload.len()) as u32;
    if !(1280..in_len).contains(&mtu) {
        return Err(format!("packet too big at MTU {mtu} for a {in_len}-byte packet"));
    }
    let quote = &icmp[8..];
    let sent: Vec<u8> = in_ip.header.iter().chain(in_ip.payload).copied().collect();
    let hop_limit_ok = quote
        .get(7)
        .is_some_and(|&h| h == in_ip.ttl || h == in_ip.ttl.wrapping_sub(1));
    let rest_ok =
        quote.len() <= sent.len() && quote.len() >= 48 && quote[..7] == sent[..7] && quote[8..] == sent[8..quote.len()];
    if !hop_limit_ok || !rest_ok || 48 + quote.len() > 1280 {
        return Err(format!(
            "packet too big quoting {} bytes that are not the packet's start",
            quote.len()
        ));
    }
    Ok(())
}

/// A forwarded frame leaves from the LB's MAC to its next hop's.
fn check_forwarding_macs(out_ip: &Ip<'_>) -> Result<(), String> {
    if out_ip.src_mac != LB_MAC || out_ip.dst_mac != next_hop_mac(out_ip.dst) {
        return Err(format!(
            "forwarded to {} with MACs {:02x?}",
            out_ip.dst,
            (out_ip.src_mac, out_ip.dst_mac)
        ));
    }
    Ok(())
}

/// A translated ICMP error quotes the sequence number the error it came
/// from quoted, plus `shift`.
fn quoted_seq_shifted(from: &Quoted, to: &Quoted, shift: u32) -> Result<(), String> {
    if let (Some(a), Some(b)) = (from.seq, to.seq)
        && b != a.wrapping_add(shift)
    {
        return Err(format!(
            "a translated ICMP error quoting seq {b}, from one quoting {a}: {} expected",
            a.wrapping_add(shift)
        ));
    }
    Ok(())
}

/// A cookie SYN-ACK follows the route to its client (a redirect in the
/// lab, whose test runs come in on another interface than the route's), or
/// goes back to the SYN's sender when that route's next hop is unresolved.
fn check_syn_ack_hop(in_ip: &Ip<'_>, verdict: u32, out_ip: &Ip<'_>) -> Result<(), String> {
    match verdict {
        XDP_REDIRECT => check_forwarding_macs(out_ip),
        XDP_TX => check_answer_macs(in_ip, out_ip),
        _ => Err(format!("a SYN-ACK with verdict {verdict}")),
    }
}

fn check_answer_macs(in_ip: &Ip<'_>, out_ip: &Ip<'_>) -> Result<(), String> {
    if out_ip.dst_mac != in_ip.src_mac || out_ip.src_mac[0] & 1 != 0 {
        return Err(format!(
            "an answer with MACs {:02x?} to a frame with MACs {:02x?}",
            (out_ip.src_mac, out_ip.dst_mac),
            (in_ip.src_mac, in_ip.dst_mac)
        ));
    }
    Ok(())
}
