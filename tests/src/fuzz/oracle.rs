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
//! 3. A forwarded frame (XDP_TX/XDP_REDIRECT) is IPv4, and is one of:
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
//!      the segment as its sender sent it (the TTL the LB decremented);
//!    - **an ICMP error translated** from an ICMP error the LB received: to
//!      a client quoting the client's own segment to the VIP, of a pinned
//!      flow, when the error received quoted that flow's segment to its
//!      backend; or to a backend quoting its segment to the SNAT port, of a
//!      flow REVERSE_NAT and FLOWS agree on, when the error received quoted
//!      that flow's segment from the VIP to its client. The same for a
//!      quoted UDP datagram and a UDP flow: the quoted protocol is the
//!      flow's, and stays what it was.
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
//!    With the SYN proxy on, what it sends is judged exactly by the model
//!    in `syn_proxy` (its docs list it): cookie SYN-ACKs, the SYN and the
//!    ACK (or held segment) to the backend, refusals of proven cookies, and
//!    the sequence translation of proxied flows. Every other forwarded
//!    segment keeps its sequence and acknowledgment numbers and its flags.
//! 4. Checksums: the program builds answers with correct IPv4, TCP and
//!    ICMP checksums, and never breaks one while forwarding (a frame that
//!    came in with a correct checksum leaves with a correct one; like every
//!    L4 balancer it does not verify what it forwards, so a corrupt frame
//!    may stay corrupt for its receiver to drop). A UDP datagram sent
//!    without a checksum (0) leaves without one; a forwarded datagram's UDP
//!    length is its IP payload's.
//! 5. A forwarded frame carries the payload and flags (UDP: length) it came with and a
//!    TTL one less, and leaves from the LB's MAC to the next hop's MAC. (A
//!    segment the proxy builds, in place of the one it came from, is judged
//!    by the proxy's model, its MACs as a forwarded frame's.) An answer
//!    goes back to the sender's MAC from a unicast one.
//!
//! # Invariants of the tables (checked periodically and at the end)
//! 6. Every flow is to the VIP (TCP or UDP), names an installed backend and
//!    a SNAT port inside the range.
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
//!
//! How FLOWS and REVERSE_NAT must agree (who owns a port, which flow a
//! reply or ICMP error may reach) is decided in one place, the "Ownership"
//! section below.

mod syn_proxy;

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use bg_lb::dataplane::syn_proxy::SynProxyMode;
use bg_lb_common::{
    flow_state::{self, FlowPhase},
    maps::{Backend, Flow, FlowKey, NatKey},
};
use etherparse::{Ipv4HeaderSlice, Ipv4Slice, TcpSlice};
use serde::Serialize;

use self::syn_proxy::{ProxyModel, untranslated};
use crate::{
    fuzz::frames::Learned,
    packet_lab::{
        GATEWAY_MAC, LB_MAC, PacketLab, PacketLabOptions, SNAT, VIP, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, mac_of,
    },
    packets::{ETH_LEN, internet_checksum},
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

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
    by_addr: HashMap<SocketAddrV4, u32>,
    by_id: HashMap<u32, SocketAddrV4>,
    snat_ports: (u16, u16),
    /// The SYN proxy's model, when the service's proxy is not off.
    proxy: Option<ProxyModel>,
}

/// An IPv4 packet as the oracle reads it.
struct Ip<'a> {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    /// The IPv4 header's bytes, options included.
    header: &'a [u8],
    ttl: u8,
    proto: u8,
    fragmented: bool,
    header_ok: bool,
    /// The IP payload, as long as the total length says.
    payload: &'a [u8],
}

/// A TCP segment as the oracle reads it.
struct Tcp<'a> {
    src: SocketAddrV4,
    dst: SocketAddrV4,
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
    if frame.len() < ETH_LEN || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = Ipv4Slice::from_slice(&frame[ETH_LEN..]).ok()?;
    let header = ip.header();
    Some(Ip {
        src_mac: frame[6..12].try_into().expect("6 bytes"),
        dst_mac: frame[0..6].try_into().expect("6 bytes"),
        src: header.source_addr(),
        dst: header.destination_addr(),
        header: &frame[ETH_LEN..ETH_LEN + header.slice().len()],
        ttl: header.ttl(),
        proto: header.protocol().0,
        fragmented: header.is_fragmenting_payload(),
        header_ok: internet_checksum(0, header.slice()) == 0,
        payload: &frame[ETH_LEN + header.slice().len()..ETH_LEN + header.total_len() as usize],
    })
}

fn parse_tcp<'a>(ip: &Ip<'a>) -> Option<Tcp<'a>> {
    if ip.proto != IPPROTO_TCP || ip.fragmented {
        return None;
    }
    let tcp = TcpSlice::from_slice(ip.payload).ok()?;
    let checksum_ok = tcp.calc_checksum_ipv4(ip.src.octets(), ip.dst.octets()) == Ok(tcp.checksum());
    Some(Tcp {
        src: SocketAddrV4::new(ip.src, tcp.source_port()),
        dst: SocketAddrV4::new(ip.dst, tcp.destination_port()),
        flags: tcp.slice()[13],
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        window: tcp.window_size(),
        options: &ip.payload[20..tcp.header_len()],
        payload: tcp.payload(),
        head: &ip.payload[..8],
        checksum_ok,
    })
}

/// A UDP datagram as the oracle reads it.
struct Udp<'a> {
    src: SocketAddrV4,
    dst: SocketAddrV4,
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
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend(ip.src.octets());
    pseudo.extend(ip.dst.octets());
    pseudo.extend([0, IPPROTO_UDP]);
    pseudo.extend((d.len() as u16).to_be_bytes());
    let sum = internet_checksum(0, &[pseudo.as_slice(), d].concat());
    Some(Udp {
        src: SocketAddrV4::new(ip.src, word(0)),
        dst: SocketAddrV4::new(ip.dst, word(2)),
        len: word(4),
        checksum: word(6),
        checksum_ok: word(6) != 0 && sum == 0,
        payload: &d[8..],
    })
}

/// The segment or datagram an ICMP error quotes: its protocol (TCP or
/// UDP), addresses and ports, and a TCP segment's sequence number if quoted.
struct Quoted {
    proto: u8,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: Option<u32>,
    header_ok: bool,
}

/// An ICMP error's type, code, whether its checksum is right, and the TCP
/// segment or UDP datagram it quotes.
fn parse_icmp_error(ip: &Ip<'_>) -> Option<(u8, u8, bool, Quoted)> {
    if ip.proto != IPPROTO_ICMP || ip.fragmented || ip.payload.len() < 8 {
        return None;
    }
    let icmp = ip.payload;
    let inner = Ipv4HeaderSlice::from_slice(&icmp[8..]).ok()?;
    let l4 = 8 + inner.slice().len();
    let ports = icmp.get(l4..l4 + 4)?;
    let proto = inner.protocol().0;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let quoted = Quoted {
        proto,
        src: SocketAddrV4::new(inner.source_addr(), u16::from_be_bytes([ports[0], ports[1]])),
        dst: SocketAddrV4::new(inner.destination_addr(), u16::from_be_bytes([ports[2], ports[3]])),
        seq: icmp
            .get(l4 + 4..l4 + 8)
            .filter(|_| proto == IPPROTO_TCP)
            .map(|s| u32::from_be_bytes(s.try_into().expect("4 bytes"))),
        header_ok: internet_checksum(0, inner.slice()) == 0,
    };
    Some((icmp[0], icmp[1], internet_checksum(0, icmp) == 0, quoted))
}

/// The MAC a forwarded packet to `addr` must carry: the neighbour's on the
/// LB's segment, else the gateway's.
fn next_hop_mac(addr: Ipv4Addr) -> [u8; 6] {
    match addr.octets() {
        [10, 0, 0, _] => mac_of(addr),
        _ => GATEWAY_MAC,
    }
}

fn is_connection_request(flags: u8) -> bool {
    flow_state::is_connection_request(flags)
}

fn closed(flow: &Flow) -> bool {
    flow_state::phase(flow.state) == FlowPhase::Closed
}

type Judged = Result<(Class, Option<Learned>), String>;

impl Oracle {
    /// The oracle for `lab`, set up with `options`.
    pub fn new(lab: &PacketLab, options: &PacketLabOptions) -> Self {
        let by_id: HashMap<u32, SocketAddrV4> = lab.backends_by_id().into_iter().collect();
        let by_addr = by_id.iter().map(|(&id, &addr)| (addr, id)).collect();
        let proxy = (options.syn_proxy.mode != SynProxyMode::Off).then(|| ProxyModel::new(options.syn_proxy.mss));
        Oracle {
            by_addr,
            by_id,
            snat_ports: options.snat_ports,
            proxy,
        }
    }

    /// The proxy's SYNs to backends that carried the fallback MSS (see
    /// `synproxy::cookie_mss`): rare, or the MSS is not read back.
    pub fn cookie_mss_fallbacks(&self) -> u64 {
        self.proxy.as_ref().map_or(0, |p| p.mss_fallbacks)
    }

    fn in_snat_range(&self, port: u16) -> bool {
        (self.snat_ports.0..=self.snat_ports.1).contains(&port)
    }

    /// The reverse-NAT key of a flow's (backend, SNAT port).
    fn nat_key(&self, flow: &Flow) -> Option<NatKey> {
        let backend = self.by_id.get(&flow.backend_id)?;
        Some(flow.nat_key(&Backend::new(0, 0, *backend, 0, false)))
    }

    /// A reverse-NAT key as "backend B port P", for failure messages.
    fn describe(&self, nat: &NatKey) -> String {
        let port = u16::from_be(nat.snat_port);
        let backend = self
            .by_addr
            .keys()
            .find(|&&b| nat.backend() == b && nat.snat_ip() == SNAT);
        match backend {
            Some(b) => format!("backend {b} port {port}"),
            None => format!("{nat:?} (no such backend)"),
        }
    }

    /// Whether `flow` is pinned to `backend` and SNAT port `port` (host order).
    fn pinned_to(&self, flow: &Flow, backend: SocketAddrV4, port: u16) -> bool {
        self.by_id.get(&flow.backend_id) == Some(&backend) && u16::from_be(flow.snat_port) == port
    }

    // --- Ownership: how FLOWS and REVERSE_NAT must agree, in one place ---

    /// The flow that owns (`backend`, SNAT port `port`): REVERSE_NAT names
    /// it, and its FLOWS entry is pinned there. Only such a flow's client
    /// may get what arrives on that port (replies, ICMP errors).
    fn port_owner(&self, lab: &PacketLab, backend: SocketAddrV4, port: u16) -> Result<(FlowKey, Flow), String> {
        let key = lab
            .reverse_nat(backend, port)
            .ok_or_else(|| format!("{backend} port {port}, which no flow owns in REVERSE_NAT"))?;
        match lab.flow_at(&key) {
            Some(flow) if self.pinned_to(&flow, backend, port) => Ok((key, flow)),
            Some(flow) => Err(format!(
                "{backend} port {port}, which REVERSE_NAT gives {}, whose flow is pinned to backend id {} port {}",
                key.client(),
                flow.backend_id,
                u16::from_be(flow.snat_port)
            )),
            None => Err(format!(
                "{backend} port {port}, which REVERSE_NAT gives {}, whose flow is gone",
                key.client()
            )),
        }
    }

    /// `client`'s flow of protocol `proto`, when its REVERSE_NAT entry
    /// names it back: only then may what its client sends reach the backend
    /// side (an ICMP error, an answer about it).
    fn owned_flow(&self, lab: &PacketLab, client: SocketAddrV4, proto: u8) -> Result<(FlowKey, Flow), String> {
        let key = FlowKey::with_proto(client, VIP, proto);
        let flow = lab
            .flow_at(&key)
            .ok_or_else(|| format!("{client}, which has no flow"))?;
        let backend = self.by_id.get(&flow.backend_id).copied().ok_or_else(|| {
            format!(
                "{client}, whose flow names backend id {}, not installed",
                flow.backend_id
            )
        })?;
        let port = u16::from_be(flow.snat_port);
        if lab.reverse_nat(backend, port) != Some(key) {
            return Err(format!(
                "{client}, whose flow's port ({backend} port {port}) REVERSE_NAT does not give it"
            ));
        }
        Ok((key, flow))
    }

    /// Whether a segment from `client` may go through (`backend`, `port`),
    /// its flow pinned there: no *other* flow owns the port in REVERSE_NAT
    /// (a missing entry is claimed again).
    fn may_use_port(
        &self,
        lab: &PacketLab,
        client: SocketAddrV4,
        backend: SocketAddrV4,
        port: u16,
    ) -> Result<(), String> {
        match lab.reverse_nat(backend, port) {
            Some(other) if other != FlowKey::from_client(client, VIP) => Err(format!(
                "{client}'s segment sent through {backend} port {port}, which REVERSE_NAT gives to {}",
                other.client()
            )),
            _ => Ok(()),
        }
    }

    /// Whether a segment without a flow may go through (`backend`, `port`)
    /// statelessly: no live flow owns it.
    fn may_use_port_statelessly(
        &self,
        lab: &PacketLab,
        client: SocketAddrV4,
        backend: SocketAddrV4,
        port: u16,
    ) -> Result<(), String> {
        if let Some(other) = lab.reverse_nat(backend, port)
            && let Some(flow) = lab.flow_at(&other)
            && !closed(&flow)
        {
            return Err(format!(
                "{client}'s segment forwarded statelessly through {backend} port {port}, which live flow {} owns",
                other.client()
            ));
        }
        Ok(())
    }

    /// Invariants 7 and 8 of the module docs over the whole tables.
    fn ownership_problems(
        &self,
        lab: &PacketLab,
        flows: &HashMap<FlowKey, Flow>,
        reverse_nat_complete: bool,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let mut owners: HashMap<NatKey, FlowKey> = HashMap::new();
        for (key, flow) in flows {
            let Some(nat) = self.nat_key(flow) else { continue };
            if closed(flow) {
                continue;
            }
            if let Some(other) = owners.insert(nat, *key) {
                problems.push(format!(
                    "{} and {} both own {} (neither has closed)",
                    other.client(),
                    key.client(),
                    self.describe(&nat)
                ));
            }
        }
        if reverse_nat_complete {
            let reverse: HashMap<NatKey, FlowKey> = lab.reverse_nats().into_iter().collect();
            for (key, flow) in flows.iter().filter(|(_, flow)| !closed(flow)) {
                let Some(nat) = self.nat_key(flow) else { continue };
                match reverse.get(&nat) {
                    Some(owner) if owner == key => {}
                    Some(owner) => problems.push(format!(
                        "{}'s flow has not closed, but REVERSE_NAT gives its {} to {}",
                        key.client(),
                        self.describe(&nat),
                        owner.client()
                    )),
                    None => problems.push(format!(
                        "{}'s flow has not closed, but its {} has no REVERSE_NAT entry",
                        key.client(),
                        self.describe(&nat)
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
            XDP_DROP => {
                let held = self.proxy.as_mut().and_then(|p| p.dropped(lab, input));
                Ok((held.unwrap_or(Class::Dropped), None))
            }
            XDP_TX | XDP_REDIRECT => self.forwarded(lab, input, verdict, output),
            other => Err(format!("verdict {other} (0 is XDP_ABORTED)")),
        }
    }

    fn forwarded(&mut self, lab: &PacketLab, input: &[u8], verdict: u32, output: &[u8]) -> Judged {
        let out_ip = parse_ip(output).ok_or("forwarded a frame that is not IPv4")?;
        let in_ip = parse_ip(input);
        if !out_ip.header_ok && in_ip.as_ref().is_some_and(|i| i.header_ok) {
            return Err("IPv4 header checksum broken by the program".to_owned());
        }
        match out_ip.proto {
            IPPROTO_TCP => {
                let out = parse_tcp(&out_ip).ok_or("forwarded TCP that does not parse")?;
                let in_tcp = in_ip.as_ref().and_then(parse_tcp);
                if self.by_addr.contains_key(&out.dst) && *out.src.ip() == SNAT {
                    self.toward_backend(lab, in_ip.as_ref(), in_tcp.as_ref(), verdict, &out_ip, &out)
                } else if out.src == VIP {
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
            IPPROTO_ICMP => self.icmp(lab, in_ip.as_ref(), verdict, &out_ip),
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
        let (backend, port) = (out.dst, out.src.port());
        if !self.in_snat_range(port) {
            return Err(format!("to backend {backend} from SNAT port {port}, outside the range"));
        }
        let (Some(in_ip), Some(seg)) = (in_ip, in_tcp) else {
            return Err(format!("to backend {backend} from a frame that is not TCP/IPv4"));
        };
        let class = if seg.dst == VIP {
            let key = FlowKey::from_client(seg.src, VIP);
            match lab.flow_at(&key) {
                Some(flow) if self.pinned_to(&flow, backend, port) => {
                    self.may_use_port(lab, seg.src, backend, port)?;
                    let proxy_class = match &mut self.proxy {
                        Some(proxy) => proxy.client_to_backend(&key, &flow, seg, out_ip, out)?,
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
                        "{}'s flow is pinned to backend id {} port {}, but the segment went to {backend} port {port}",
                        seg.src,
                        flow.backend_id,
                        u16::from_be(flow.snat_port)
                    ));
                }
                None if is_connection_request(seg.flags) => {
                    return Err(format!("{}'s connection request forwarded without a flow", seg.src));
                }
                None => {
                    forwarding_checks(in_ip, seg, out_ip, out)?;
                    untranslated(seg, out)?;
                    self.may_use_port_statelessly(lab, seg.src, backend, port)?;
                    Class::ToBackendStateless
                }
            }
        } else if seg.src == backend && seg.dst == SocketAddrV4::new(SNAT, port) {
            // The SYN proxy's answer to the backend's SYN-ACK: the ACK in the
            // client's place (back out with XDP_TX) or the client segment it
            // held (forwarded).
            if verdict == XDP_TX {
                check_answer_macs(in_ip, out_ip)?;
            } else {
                check_forwarding_macs(out_ip)?;
            }
            let (key, flow) = self
                .port_owner(lab, backend, port)
                .map_err(|e| format!("answered {e}"))?;
            let proxy = self.proxy.as_mut().ok_or("answered a backend with the SYN proxy off")?;
            proxy.answer_backend(&key, &flow, seg, verdict != XDP_TX, out_ip, out)?
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
            return Err(format!("to client {client} from a frame that is not TCP/IPv4"));
        };
        let (backend, port) = (seg.src, seg.dst.port());
        if !self.by_addr.contains_key(&backend) || *seg.dst.ip() != SNAT || !self.in_snat_range(port) {
            return Err(format!(
                "to client {client} from {} -> {}: neither a backend's reply to the SNAT range nor an answer",
                seg.src, seg.dst
            ));
        }
        forwarding_checks(in_ip, seg, out_ip, out)?;
        let (owner, flow) = self
            .port_owner(lab, backend, port)
            .map_err(|e| format!("{backend}'s reply forwarded to {client} through {e}"))?;
        if owner != FlowKey::from_client(client, VIP) {
            return Err(format!(
                "{backend}'s reply to port {port} forwarded to {client}, but the port is {}'s",
                owner.client()
            ));
        }
        match &self.proxy {
            Some(proxy) => proxy.backend_to_client(&owner, &flow, seg, out)?,
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
                "UDP {} -> {} forwarded from a frame that is not UDP/IPv4",
                out.src, out.dst
            ));
        };
        udp_forwarding_checks(in_ip, &dgram, out_ip, &out)?;
        if self.by_addr.contains_key(&out.dst) && *out.src.ip() == SNAT {
            let (backend, port) = (out.dst, out.src.port());
            if !self.in_snat_range(port) {
                return Err(format!(
                    "UDP to backend {backend} from SNAT port {port}, outside the range"
                ));
            }
            if dgram.dst != VIP {
                return Err(format!(
                    "UDP to backend {backend} from a datagram {} -> {}, not to the VIP",
                    dgram.src, dgram.dst
                ));
            }
            let key = FlowKey::with_proto(dgram.src, VIP, IPPROTO_UDP);
            let flow = lab
                .flow_at(&key)
                .ok_or_else(|| format!("{}'s UDP datagram forwarded without a flow", dgram.src))?;
            if !self.pinned_to(&flow, backend, port) {
                return Err(format!(
                    "{}'s UDP flow is pinned to backend id {} port {}, but the datagram went to {backend} port {port}",
                    dgram.src,
                    flow.backend_id,
                    u16::from_be(flow.snat_port)
                ));
            }
            match lab.reverse_nat(backend, port) {
                Some(owner) if owner == key => {}
                owner => {
                    return Err(format!(
                        "{}'s UDP datagram sent through {backend} port {port}, which REVERSE_NAT gives to {owner:?}",
                        dgram.src
                    ));
                }
            }
            let learned = Learned::UdpToBackend { side: (backend, port) };
            Ok((Class::UdpToBackend, Some(learned)))
        } else if out.src == VIP {
            let client = out.dst;
            let (backend, port) = (dgram.src, dgram.dst.port());
            if !self.by_addr.contains_key(&backend) || *dgram.dst.ip() != SNAT || !self.in_snat_range(port) {
                return Err(format!(
                    "UDP to client {client} from {} -> {}: not a backend's reply to the SNAT range",
                    dgram.src, dgram.dst
                ));
            }
            let (owner, _) = self
                .port_owner(lab, backend, port)
                .map_err(|e| format!("{backend}'s UDP reply forwarded to {client} through {e}"))?;
            if owner != FlowKey::with_proto(client, VIP, IPPROTO_UDP) {
                return Err(format!(
                    "{backend}'s UDP reply to port {port} forwarded to {client}, but the port is {owner:?}'s"
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
        if icmp_type != 3 && icmp_type != 11 {
            return Err(format!("forwarded ICMP type {icmp_type}"));
        }
        let in_ip = in_ip.ok_or("ICMP from a frame that is not IPv4")?;
        if let Some(seg) = parse_tcp(in_ip) {
            return self.too_big_answer(lab, in_ip, &seg, verdict, out_ip);
        }
        let (_, _, in_checksum_ok, in_quoted) =
            parse_icmp_error(in_ip).ok_or("forwarded ICMP from a frame that is neither TCP nor an ICMP error")?;
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
        if self.by_addr.contains_key(&quoted.src) && out_ip.dst == *quoted.src.ip() {
            // To a backend, about its segment to a SNAT port.
            let (backend, port) = (quoted.src, quoted.dst.port());
            if *quoted.dst.ip() != SNAT {
                return Err(format!("ICMP to backend {backend} quoting a segment to {}", quoted.dst));
            }
            let (key, flow) = self
                .port_owner(lab, backend, port)
                .map_err(|e| format!("ICMP about {e}"))?;
            if key.proto != quoted.proto {
                return Err(format!(
                    "ICMP quoting protocol {} to {backend} for {}'s flow of protocol {}",
                    quoted.proto,
                    key.client(),
                    key.proto
                ));
            }
            if in_quoted.src != VIP || in_quoted.dst != key.client() {
                return Err(format!(
                    "ICMP to {backend} for {}'s flow, translated from one quoting {} -> {}",
                    key.client(),
                    in_quoted.src,
                    in_quoted.dst
                ));
            }
            // A proxied flow's backend checks its own sequence numbers.
            let shift = match &self.proxy {
                Some(proxy) => proxy.quoted_seq_shift(&key, &flow)?,
                None => 0,
            };
            quoted_seq_shifted(&in_quoted, &quoted, shift)?;
            Ok((Class::IcmpToBackend, None))
        } else {
            // To a client, about its segment to the VIP.
            let client = quoted.src;
            if out_ip.dst != *client.ip() || quoted.dst != VIP {
                return Err(format!(
                    "ICMP to {} quoting {} -> {}: neither a client's segment to the VIP nor a backend's to the SNAT address",
                    out_ip.dst, quoted.src, quoted.dst
                ));
            }
            let (_, flow) = self
                .owned_flow(lab, client, quoted.proto)
                .map_err(|e| format!("ICMP to {e}"))?;
            let backend = self.by_id.get(&flow.backend_id).copied();
            let from = SocketAddrV4::new(SNAT, u16::from_be(flow.snat_port));
            if Some(in_quoted.dst) != backend || in_quoted.src != from {
                return Err(format!(
                    "ICMP to {client}, whose flow is {from} -> {backend:?}, translated from one quoting {} -> {}",
                    in_quoted.src, in_quoted.dst
                ));
            }
            quoted_seq_shifted(&in_quoted, &quoted, 0)?;
            Ok((Class::IcmpToClient, None))
        }
    }

    /// The program's one ICMP answer (forward.rs): fragmentation needed,
    /// by XDP_TX, for a DF segment of a pinned flow that is too big for its
    /// egress link, from the address the segment went to, quoting its IPv4
    /// header (the TTL the LB decremented, the checksum made right for it)
    /// and first 8 bytes as its sender sent them.
    fn too_big_answer(&self, lab: &PacketLab, in_ip: &Ip<'_>, seg: &Tcp<'_>, verdict: u32, out_ip: &Ip<'_>) -> Judged {
        if verdict != XDP_TX {
            return Err("an ICMP answer not sent back with XDP_TX".to_owned());
        }
        let icmp = out_ip.payload;
        if icmp.len() != 8 + 28 || icmp[..2] != [3, 4] || icmp[4..6] != [0, 0] {
            return Err(format!(
                "an ICMP answer {:02x?}: only fragmentation needed is sent",
                icmp
            ));
        }
        if (out_ip.src, out_ip.dst) != (in_ip.dst, in_ip.src) {
            return Err(format!(
                "an ICMP answer {} -> {} to a segment {} -> {}",
                out_ip.src, out_ip.dst, seg.src, seg.dst
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
        check_answer_macs(in_ip, out_ip)?;
        // Of a pinned flow, whose tables agree.
        if seg.dst == VIP {
            self.owned_flow(lab, seg.src, IPPROTO_TCP)
                .map_err(|e| format!("fragmentation needed for {e}"))?;
        } else {
            self.port_owner(lab, seg.src, seg.dst.port())
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
        if out.flags & TCP_RST != 0 && out.flags & TCP_SYN == 0 {
            if !request && !self.proxy.as_ref().is_some_and(|p| p.refuses(lab, seg)) {
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

    /// The tables' invariants (6 to 9 of the module docs); with
    /// `reverse_nat_complete`, also that every REVERSE_NAT entry's flow names
    /// it.
    pub fn check_tables(&self, lab: &PacketLab, reverse_nat_complete: bool) -> Vec<String> {
        let mut problems = Vec::new();
        let flows: HashMap<FlowKey, Flow> = lab.flows().into_iter().collect();
        for (key, flow) in &flows {
            let proto_served = key.proto == IPPROTO_TCP || key.proto == IPPROTO_UDP;
            if !proto_served || *key != FlowKey::with_proto(key.client(), VIP, key.proto) {
                problems.push(format!("a flow to something else than the VIP's services: {key:?}"));
            }
            if self.nat_key(flow).is_none() {
                problems.push(format!(
                    "{}'s flow names backend id {}, not installed",
                    key.client(),
                    flow.backend_id
                ));
            }
            if !self.in_snat_range(u16::from_be(flow.snat_port)) {
                problems.push(format!(
                    "{}'s flow has SNAT port {}, outside the range",
                    key.client(),
                    u16::from_be(flow.snat_port)
                ));
            }
        }
        problems.extend(self.ownership_problems(lab, &flows, reverse_nat_complete));
        if let Some(proxy) = &self.proxy {
            problems.extend(proxy.check_flows(&flows));
        }
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
