//! SYN proxy: while a service is flooded with SYNs (auto mode) or always
//! (as configured), the LB answers SYNs to its VIP itself with a SYN cookie
//! (`bpf_tcp_raw_gen_syncookie_ipv4`) and keeps no state, so spoofed SYNs
//! cost neither a flow nor a SNAT port. Only the client's ACK that proves
//! its cookie (`bpf_tcp_raw_check_syncookie_ipv4`) opens the backend side:
//! a flow, a SNAT port, and the ACK turned into a SYN to the backend (the
//! client's ISN, the MSS its cookie encodes, no other option). The
//! backend's SYN-ACK never reaches the client, who has its handshake
//! already: the LB records the sequence offset and answers the backend
//! with the ACK in its place. From then on `nat::rewrite` translates the
//! flow's sequence numbers.
//!
//! Neither side gets window scaling, SACK or timestamps: the cookie cannot
//! carry them without timestamps, and both sides then agree. The first
//! client segment with data that arrives before the backend answered is
//! held (`HELD_SEGMENTS`) and sent in place of the handshake's last ACK; the
//! SYN-ACK's window of one segment keeps the client's first flight to one.
//! Other early segments are dropped (counted) and retransmitted by the
//! client; after [`SYN_RETRANSMIT_NS`] one also resends the SYN, in case it
//! was lost.
//!
//! The flood detector (auto mode) counts, per service and one-second window,
//! connection requests and the handshakes clients complete; more than the
//! service's threshold left unanswered turns the proxy on for [`HOLD_NS`],
//! extended while the flood lasts.
//!
//! The verdicts and the flow's bookkeeping here serve both families
//! ([`ProxySegment`], `FlowOf<A>`); IPv6's jobs are in [`crate::ipv6_synproxy`].

use aya_ebpf::{
    bindings::{
        BPF_ANY,
        xdp_action::{XDP_DROP, XDP_TX},
    },
    helpers::bpf_ktime_get_ns,
    macros::xdp,
    programs::XdpContext,
};
use bg_lb_common::{
    counters::Counter,
    flow_state::{self, Direction, Event, Segment, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    maps::{
        FlowKey, FlowKeyOf, FlowOf, HeldSegment, IPPROTO_TCP, NatKey, NatKeyOf, Service, ServiceKey, SynFlood, WireAddr,
    },
    syn_proxy::{
        BACKEND_READY, COOKIE_MSS, DEFAULT_MSS, HELD, HELD_PAYLOAD_MAX, HOLD_NS, Job, PROXIED, SERVER_ISN_KNOWN,
        SYN_PROXY_AUTO, SYN_PROXY_MODES, SYN_RETRANSMIT_NS, WATCHED, accepts_cookies, extended_this_window, flooded,
        is_active, seq_delta, window_over,
    },
};

use crate::{
    forward::{Route, RouteQuery, dropped, forward, send},
    maps::{
        FamilyMaps, HELD_SCRATCH, SERVICES, SYN_FLOOD, SYN_PROXY_JOBS, Way, account, account_event, count, flow_entry,
        reverse_owner,
    },
    next_hop::cached_route,
    packet::{BareSegment, Ipv4Frame, SEGMENT_WITH_MSS_IP_LEN, TcpPacket, parse_tcp},
};

// Stack: the verifier allows 512 bytes for a program's deepest chain of
// calls, and the packet paths use most of it. So the paths ask the proxy
// with plain values and get small verdicts back, and the jobs that write a
// frame run as programs of their own ([`Job`], reached by tail call with
// [`hand_over`]): each parses the frame again and finishes it (XDP_TX, or
// forward) with a whole stack to itself.

/// What the proxy reads of a segment and asks the kernel's cookie helpers,
/// in either family: IPv4's [`TcpPacket`], IPv6's
/// [`crate::packet::ipv6::Tcp6Packet`].
pub trait ProxySegment {
    /// The job that answers a SYN with a cookie SYN-ACK.
    const SYN_ACK: Job;
    /// The MSS values the family's cookies encode, largest first, and the
    /// one assumed when none matches.
    const COOKIE_MSS: [u16; 4];
    const DEFAULT_MSS: u16;

    fn flags(&self) -> u8;
    fn to_group_mac(&self) -> bool;
    /// Wire order.
    fn ports(&self) -> (u16, u16);
    fn seq(&self) -> u32;
    /// See [`TcpPacket::proves_syncookie`].
    fn proves_syncookie(&self) -> bool;
    /// See [`TcpPacket::syncookie`].
    fn syncookie<const N: usize>(&self, tcp: &mut [u8; N], len: u32) -> Option<(u32, u16)>;
    /// See [`TcpPacket::copy_payload`].
    fn copy_payload(&self, ctx: &XdpContext, into: &mut [u8; HELD_PAYLOAD_MAX]) -> Option<u32>;
}

impl ProxySegment for TcpPacket<'_> {
    const SYN_ACK: Job = Job::SynAck;
    const COOKIE_MSS: [u16; 4] = COOKIE_MSS;
    const DEFAULT_MSS: u16 = DEFAULT_MSS;

    #[inline(always)]
    fn flags(&self) -> u8 {
        TcpPacket::flags(self)
    }

    #[inline(always)]
    fn to_group_mac(&self) -> bool {
        Ipv4Frame::to_group_mac(self)
    }

    #[inline(always)]
    fn ports(&self) -> (u16, u16) {
        (self.src_port(), self.dst_port())
    }

    #[inline(always)]
    fn seq(&self) -> u32 {
        TcpPacket::seq(self)
    }

    #[inline(always)]
    fn proves_syncookie(&self) -> bool {
        TcpPacket::proves_syncookie(self)
    }

    #[inline(always)]
    fn syncookie<const N: usize>(&self, tcp: &mut [u8; N], len: u32) -> Option<(u32, u16)> {
        TcpPacket::syncookie(self, tcp, len)
    }

    #[inline(always)]
    fn copy_payload(&self, ctx: &XdpContext, into: &mut [u8; HELD_PAYLOAD_MAX]) -> Option<u32> {
        TcpPacket::copy_payload(self, ctx, into)
    }
}

/// What the proxy's jobs do with the frame's segment, in either family:
/// parse it, key it, write segments in its place and send them. Each job
/// below is written once, generic over this, and instantiated per family.
pub trait ProxyPacket<'a>: ProxySegment + Sized {
    type Addr: FamilyMaps;

    /// The frame's segment, parsed again (each job is a program of its own).
    fn parse(ctx: &'a XdpContext) -> Option<Self>;
    /// The flow of a client segment to a VIP.
    fn client_key(&self) -> FlowKeyOf<Self::Addr>;
    /// The SNAT pair a backend's segment is addressed to.
    fn nat_key(&self) -> NatKeyOf<Self::Addr>;
    /// Wire order.
    fn src_addr(&self) -> Self::Addr;
    fn dst_addr(&self) -> Self::Addr;
    fn ack_seq(&self) -> u32;
    /// Host order.
    fn window(&self) -> u16;
    fn payload_len(&self) -> u32;
    /// The IP length counted in statistics.
    fn ip_len(&self) -> u16;
    fn swap_macs(&mut self);
    /// See [`TcpPacket::become_segment`].
    fn become_segment(self, ctx: &'a XdpContext, segment: &BareSegment<Self::Addr>) -> Option<Self>;
    /// See [`TcpPacket::become_data_segment`].
    fn become_data_segment(
        self,
        ctx: &'a XdpContext,
        segment: &BareSegment<Self::Addr>,
        payload: &[u8; HELD_PAYLOAD_MAX],
        len: u32,
    ) -> Option<Self>;
    /// Routes and sends the segment.
    fn forward(&mut self, ctx: &XdpContext) -> u32;
    /// [`ProxyPacket::forward`] for a held segment sent in place of the
    /// backend's SYN-ACK.
    fn forward_held(&mut self, ctx: &XdpContext) -> u32;
}

impl<'a> ProxyPacket<'a> for TcpPacket<'a> {
    type Addr = u32;

    #[inline(always)]
    fn parse(ctx: &'a XdpContext) -> Option<Self> {
        parse_tcp(ctx).ok()
    }

    #[inline(always)]
    fn client_key(&self) -> FlowKey {
        FlowKey::from_wire(self.src_addr(), self.src_port(), self.dst_addr(), self.dst_port())
    }

    #[inline(always)]
    fn nat_key(&self) -> NatKey {
        NatKey {
            backend_addr: self.src_addr(),
            snat_addr: self.dst_addr(),
            backend_port: self.src_port(),
            snat_port: self.dst_port(),
        }
    }

    #[inline(always)]
    fn src_addr(&self) -> u32 {
        Ipv4Frame::src_addr(self)
    }

    #[inline(always)]
    fn dst_addr(&self) -> u32 {
        Ipv4Frame::dst_addr(self)
    }

    #[inline(always)]
    fn ack_seq(&self) -> u32 {
        TcpPacket::ack_seq(self)
    }

    #[inline(always)]
    fn window(&self) -> u16 {
        TcpPacket::window(self)
    }

    #[inline(always)]
    fn payload_len(&self) -> u32 {
        TcpPacket::payload_len(self)
    }

    #[inline(always)]
    fn ip_len(&self) -> u16 {
        TcpPacket::ip_len(self)
    }

    #[inline(always)]
    fn swap_macs(&mut self) {
        Ipv4Frame::swap_macs(self)
    }

    #[inline(always)]
    fn become_segment(self, ctx: &'a XdpContext, segment: &BareSegment) -> Option<Self> {
        TcpPacket::become_segment(self, ctx, segment)
    }

    #[inline(always)]
    fn become_data_segment(
        self,
        ctx: &'a XdpContext,
        segment: &BareSegment,
        payload: &[u8; HELD_PAYLOAD_MAX],
        len: u32,
    ) -> Option<Self> {
        TcpPacket::become_data_segment(self, ctx, segment, payload, len)
    }

    #[inline(always)]
    fn forward(&mut self, ctx: &XdpContext) -> u32 {
        forward(ctx, self)
    }

    #[inline(always)]
    fn forward_held(&mut self, ctx: &XdpContext) -> u32 {
        forward(ctx, self)
    }
}

/// The proxy's verdict on a segment to a VIP that no flow knows.
pub enum Unpinned {
    /// Not the proxy's: the usual path.
    Usual,
    /// A SYN the proxy answers: [`Job::SynAck`].
    Answer,
    /// An ACK that proved its cookie: pin a flow as for a SYN, then
    /// [`Job::OpenBackend`].
    Proven,
    /// Dropped (and counted).
    Drop,
}

/// The proxy's verdict on a client segment of a flow with proxy bits.
pub enum ClientStep {
    /// On to the usual NAT, which adds [`seq_offset`] to a proxied flow's ack.
    Forward,
    /// Data before the backend answered: [`Job::HoldSegment`].
    Hold,
    /// The backend has not answered for a while: [`Job::ResendSyn`].
    ResendSyn,
    /// Dropped (and counted): the backend cannot take it yet.
    Drop,
}

/// The proxy's verdict on a backend segment of a flow with proxy bits.
pub enum BackendStep {
    /// On to the usual NAT, subtracting this from the sequence number.
    Forward(u32),
    /// The backend's SYN-ACK: [`Job::AckToBackend`].
    Absorb,
    /// Dropped.
    Drop,
}

/// A segment to a service's VIP that no flow knows.
#[inline(always)]
pub fn unpinned<P: ProxySegment>(pkt: &P, service: &Service, now: u64) -> Unpinned {
    if service.flags & SYN_PROXY_MODES == 0 {
        return Unpinned::Usual;
    }
    unpinned_in_proxy_mode(pkt, service, now)
}

#[inline(never)]
fn unpinned_in_proxy_mode<P: ProxySegment>(pkt: &P, service: &Service, now: u64) -> Unpinned {
    let flags = pkt.flags();
    let Some(flood) = SYN_FLOOD.get(service.id) else {
        return Unpinned::Usual;
    };
    if flow_state::is_connection_request(flags) {
        if !is_active(service.flags, flood, now) {
            return Unpinned::Usual;
        }
        note_request(service, now);
        // Nor is a SYN to a group MAC answered, from that MAC (as a RST).
        if flags & (TCP_FIN | TCP_RST) != 0 || pkt.to_group_mac() {
            count(Counter::SynCookieInvalid);
            return Unpinned::Drop;
        }
        return Unpinned::Answer;
    }
    if !accepts_cookies(service.flags, flood, now) {
        return Unpinned::Usual;
    }
    // The cookie covers the addresses, ports and both sequence numbers:
    // a corrupted one does not prove it.
    if flags & (TCP_SYN | TCP_RST | TCP_ACK) == TCP_ACK && pkt.proves_syncookie() {
        if service.flags & SYN_PROXY_AUTO != 0 {
            note_completed(service.id);
        }
        return Unpinned::Proven;
    }
    if is_active(service.flags, flood, now) {
        count(Counter::SynCookieInvalid);
        return Unpinned::Drop;
    }
    // The proxy was on lately but is off: as without it.
    Unpinned::Usual
}

/// The `Flow::proxy` bits of a flow a plain SYN opens.
#[inline(always)]
pub fn new_flow_bits(service: &Service) -> u32 {
    if service.flags & SYN_PROXY_AUTO != 0 {
        WATCHED
    } else {
        0
    }
}

/// A plain SYN opened a flow: a connection request for the detector.
#[inline(always)]
pub fn opened(service: &Service, now: u64) {
    note_request(service, now);
}

/// A client segment with `flags`, `ack` and `payload` bytes of a flow with
/// proxy bits (the pinned path).
#[inline(never)]
pub fn client_segment<A: WireAddr>(flags: u8, ack: u32, payload: u32, flow: &mut FlowOf<A>) -> ClientStep {
    if flow.proxy & WATCHED != 0 {
        if flow.proxy & SERVER_ISN_KNOWN != 0
            && flags & (TCP_SYN | TCP_RST | TCP_ACK) == TCP_ACK
            && ack == flow.server_isn.wrapping_add(1)
        {
            flow.proxy = 0;
            note_completed(flow.service_id);
        }
        return ClientStep::Forward;
    }
    if flow.proxy & (PROXIED | BACKEND_READY) != PROXIED || flags & TCP_RST != 0 {
        // A RST before the backend answered resets its half-open
        // connection by the sequence number alone.
        return ClientStep::Forward;
    }
    if payload != 0 && flow.proxy & HELD == 0 && flags & TCP_SYN == 0 {
        return ClientStep::Hold;
    }
    count(Counter::SynProxyEarlyData);
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(flow.created_ns) < SYN_RETRANSMIT_NS || flags & TCP_SYN != 0 {
        return ClientStep::Drop;
    }
    ClientStep::ResendSyn
}

/// A backend segment with `flags` and `seq` of a flow with proxy bits (the
/// reply path).
#[inline(never)]
pub fn backend_segment<A: WireAddr>(flags: u8, seq: u32, flow: &mut FlowOf<A>) -> BackendStep {
    if flow.proxy & WATCHED != 0 {
        if flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN | TCP_ACK {
            flow.server_isn = seq;
            flow.proxy |= SERVER_ISN_KNOWN;
        }
        return BackendStep::Forward(0);
    }
    if flow.proxy & PROXIED == 0 {
        return BackendStep::Forward(0);
    }
    if flags & TCP_SYN != 0 {
        return if flags & (TCP_ACK | TCP_RST | TCP_FIN) == TCP_ACK {
            BackendStep::Absorb
        } else {
            BackendStep::Drop
        };
    }
    if flow.proxy & BACKEND_READY != 0 {
        return BackendStep::Forward(flow.seq_delta);
    }
    if flags & TCP_RST == 0 {
        return BackendStep::Drop;
    }
    // The backend refused the LB's SYN. The client, whose handshake the LB
    // completed, accepts a RST only at the sequence number it expects.
    BackendStep::Forward(seq.wrapping_sub(flow.server_isn.wrapping_add(1)))
}

/// What `nat::rewrite` adds to the acks of the flow's client segments.
#[inline(always)]
pub fn seq_offset<A: WireAddr>(flow: &FlowOf<A>) -> u32 {
    if flow.proxy & BACKEND_READY != 0 {
        flow.seq_delta
    } else {
        0
    }
}

/// Hands the frame to the program of `job`, which finishes it; returns
/// only if that program is not loaded.
#[inline(always)]
pub fn hand_over(ctx: &XdpContext, job: Job) -> u32 {
    // SAFETY: ctx is this run's context; a tail call either leaves this
    // program for good or returns having done nothing.
    unsafe { SYN_PROXY_JOBS.tail_call(ctx, job as u32) };
    count(Counter::SynProxyUnavailable);
    XDP_DROP
}

/// [`Job::SynAck`]: answers the SYN to a VIP in the frame with a cookie
/// SYN-ACK from the VIP, back out of the interface it came in on.
#[xdp]
pub fn bg_lb_syn_ack(ctx: XdpContext) -> u32 {
    let Ok(mut pkt) = parse_tcp(&ctx) else {
        return XDP_DROP;
    };
    // SAFETY: SERVICES is BPF_F_NO_PREALLOC: the element stays intact
    // under RCU until the program returns (as in bg_lb).
    let Some(service) =
        (unsafe { SERVICES.get(ServiceKey::from_wire(pkt.dst_addr(), pkt.dst_port(), IPPROTO_TCP)) }).copied()
    else {
        return XDP_DROP;
    };
    let Some((mut tcp, len)) = pkt.tcp_header(&ctx) else {
        return XDP_DROP;
    };
    if !pkt.checksums_hold(&tcp) {
        count(Counter::SynProxyBadChecksum);
        return XDP_DROP;
    }
    let Some(hop) = syn_ack_hop(&ctx, &pkt) else {
        return XDP_DROP;
    };
    let Some((cookie, _)) = pkt.syncookie(&mut tcp, len) else {
        return XDP_DROP;
    };
    let syn_ack = BareSegment {
        src_addr: pkt.dst_addr(),
        dst_addr: pkt.src_addr(),
        src_port: pkt.dst_port(),
        dst_port: pkt.src_port(),
        seq: cookie,
        ack: pkt.seq().wrapping_add(1),
        flags: TCP_SYN | TCP_ACK,
        // One segment: the client's first flight is then one the proxy can
        // hold until the backend answers. The backend's own window follows
        // with its first segment.
        window: service.syn_proxy_mss,
        mss: service.syn_proxy_mss,
    };
    pkt.set_macs(hop.smac, hop.dmac);
    if pkt.become_segment(&ctx, &syn_ack).is_none() {
        return XDP_DROP;
    }
    count(Counter::SynCookieSent);
    send(&ctx, hop.ifindex)
}

/// Where a cookie SYN-ACK goes: out of `ifindex`, from `smac` to `dmac`.
#[derive(Clone, Copy)]
struct SynAckHop {
    ifindex: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}

/// The SYN-ACK follows the host's routing table, like the kernel's own
/// SYN-ACK and every reply bg-lb forwards: a SYN from a source the host
/// cannot reach (a flood of spoofed, unroutable addresses) gets no answer,
/// and costs no SYN-ACK's trip; one that came in on another link than the
/// route back (asymmetric routing) is answered on the route's. When the
/// route's next hop is not resolved yet, back to the MAC the SYN came from:
/// a hop known to reach the client. `None`: dropped and counted.
#[inline(always)]
fn syn_ack_hop(ctx: &XdpContext, syn: &TcpPacket<'_>) -> Option<SynAckHop> {
    let query = RouteQuery {
        proto: IPPROTO_TCP,
        tos: syn.tos(),
        ip_len: SEGMENT_WITH_MSS_IP_LEN,
        src_addr: syn.dst_addr(),
        dst_addr: syn.src_addr(),
    };
    match cached_route(ctx, &query) {
        Route::Next {
            ifindex, smac, dmac, ..
        } => Some(SynAckHop { ifindex, smac, dmac }),
        Route::Failed(Counter::FibNoNeighbour) => {
            let (src, dst) = syn.macs();
            Some(SynAckHop {
                ifindex: ctx.ingress_ifindex() as u32,
                smac: dst,
                dmac: src,
            })
        }
        Route::Failed(counter) => {
            count(counter);
            None
        }
        Route::TooBig { .. } => {
            count(Counter::TooBigDropped);
            None
        }
    }
}

/// [`Job::OpenBackend`]: the segment in the frame proved its cookie and a
/// flow is pinned for it. Marks the flow proxied and sends its backend the
/// SYN in the segment's place. Data on it (its ACK was lost, and this is
/// the client's first data) is held like any early segment.
#[xdp]
pub fn bg_lb_open_backend(ctx: XdpContext) -> u32 {
    match open_backend::<TcpPacket>(&ctx) {
        Some((pkt, flow)) => send_syn(&ctx, pkt, flow),
        None => XDP_DROP,
    }
}

/// The frame's segment proved its cookie and its flow is pinned: marks the
/// flow proxied ([`prove`]); the segment and its flow, for the SYN.
#[inline(always)]
pub fn open_backend<'a, P: ProxyPacket<'a>>(ctx: &'a XdpContext) -> Option<(P, &'static mut FlowOf<P::Addr>)> {
    count(Counter::SynCookieValid);
    let pkt = P::parse(ctx)?;
    let key = pkt.client_key();
    let flow = flow_entry(&key)?;
    prove(ctx, &pkt, &key, flow, pkt.ack_seq(), pkt.window(), pkt.payload_len());
    Some((pkt, flow))
}

/// Marks `flow` (`key`'s) proxied, for the segment `pkt` whose ack proved
/// its cookie, and holds the segment's data, if any.
#[inline(always)]
pub fn prove<A: FamilyMaps, P: ProxySegment>(
    ctx: &XdpContext,
    pkt: &P,
    key: &FlowKeyOf<A>,
    flow: &mut FlowOf<A>,
    ack: u32,
    window: u16,
    payload_len: u32,
) {
    let (client_isn, cookie) = (pkt.seq().wrapping_sub(1), ack.wrapping_sub(1));
    flow.proxy = PROXIED;
    flow.server_isn = cookie;
    // Until the backend answers, the offset's place keeps the client's ISN,
    // for the SYN and its retransmissions.
    flow.seq_delta = client_isn;
    flow.client_window = window;
    flow.client_mss = cookie_mss(pkt, client_isn, cookie);
    // An earlier connection's segment must never reach this one's backend.
    let _ = A::held_segments().remove(key);
    if payload_len != 0 {
        count_hold(hold(ctx, pkt, key, flow));
    }
}

/// [`Job::ResendSyn`]: sends the backend of the proxied flow its SYN again,
/// in place of the client segment in the frame, which it cannot take yet.
#[xdp]
pub fn bg_lb_resend_syn(ctx: XdpContext) -> u32 {
    resend_syn::<TcpPacket>(&ctx)
}

/// The proxied flow's SYN again, in place of its client segment in the
/// frame: [`Job::ResendSyn`]'s work, in either family.
#[inline(always)]
pub fn resend_syn<'a, P: ProxyPacket<'a>>(ctx: &'a XdpContext) -> u32 {
    let Some(pkt) = P::parse(ctx) else {
        return XDP_DROP;
    };
    match flow_entry(&pkt.client_key()) {
        Some(flow) => send_syn(ctx, pkt, flow),
        None => XDP_DROP,
    }
}

/// [`Job::AckToBackend`]: the frame is the backend's SYN-ACK to the LB's
/// SYN. Records the offset (the first time), counts the handshake, and
/// answers with the client segment held for it, which completes the
/// backend's handshake, or else with the ACK the client would have sent. A
/// retransmitted SYN-ACK gets the ACK again.
#[xdp]
pub fn bg_lb_ack_to_backend(ctx: XdpContext) -> u32 {
    ack_to_backend::<TcpPacket>(&ctx)
}

/// [`Job::AckToBackend`]'s work, in either family.
#[inline(always)]
pub fn ack_to_backend<'a, P: ProxyPacket<'a>>(ctx: &'a XdpContext) -> u32 {
    let Some(mut pkt) = P::parse(ctx) else {
        return XDP_DROP;
    };
    let Some(client) = reverse_owner(&pkt.nat_key()) else {
        return XDP_DROP;
    };
    let Some(flow) = flow_entry(&client) else {
        return XDP_DROP;
    };
    let first = backend_answered(flow, pkt.flags(), pkt.seq(), pkt.ack_seq());
    let (src_port, dst_port) = pkt.ports();
    let mut answer = BareSegment {
        src_addr: pkt.dst_addr(),
        dst_addr: pkt.src_addr(),
        src_port: dst_port,
        dst_port: src_port,
        seq: pkt.ack_seq(),
        ack: pkt.seq().wrapping_add(1),
        flags: TCP_ACK,
        window: flow.client_window,
        mss: 0,
    };
    if flow.proxy & HELD != 0 {
        flow.proxy &= !HELD;
        // SAFETY: an LRU hash map: the element stays intact under RCU until
        // the program returns, though it may be removed meanwhile.
        if let Some(held) = unsafe { P::Addr::held_segments().get(client) } {
            answer.seq = held.seq;
            answer.flags = held.flags;
            let established = first && client_completes(flow, held.flags, held.seq, held.len.into());
            let sent = pkt.become_data_segment(ctx, &answer, &held.payload, held.len.into());
            let _ = P::Addr::held_segments().remove(client);
            return match sent {
                Some(mut data) => {
                    account(
                        flow.backend_id,
                        flow.service_id,
                        Way::ToBackend,
                        data.ip_len(),
                        established,
                    );
                    data.forward_held(ctx)
                }
                None => held_segment_lost::<P>(ctx, &answer),
            };
        }
    }
    let established = first && client_completes(flow, TCP_ACK, answer.seq, 0);
    pkt.swap_macs();
    match pkt.become_segment(ctx, &answer) {
        Some(ack) => {
            account(
                flow.backend_id,
                flow.service_id,
                Way::ToBackend,
                ack.ip_len(),
                established,
            );
            XDP_TX
        }
        None => XDP_DROP,
    }
}

/// Takes the backend's SYN-ACK (`flags`, `seq`, `ack`) into the proxied
/// `flow`: the offset and the flow's state the first time (returns
/// whether it was), its last packet every time.
#[inline(always)]
pub fn backend_answered<A: WireAddr>(flow: &mut FlowOf<A>, flags: u8, seq: u32, ack: u32) -> bool {
    let first = flow.proxy & BACKEND_READY == 0;
    if first {
        flow.seq_delta = seq_delta(seq, flow.server_isn);
        flow.proxy |= BACKEND_READY;
        // The flow tracks the backend in the client's numbering: its
        // SYN-ACK as the client saw the cookie's.
        let syn_ack = Segment {
            flags,
            seq: flow.server_isn,
            ack,
            payload_len: 0,
        };
        account_event(
            flow.backend_id,
            flow_state::advance(flow, Direction::FromBackend, &syn_ack),
        );
    }
    // SAFETY: a helper without arguments.
    flow.last_seen_ns = unsafe { bpf_ktime_get_ns() };
    first
}

/// Takes the segment the LB sends the backend in the client's place (the
/// handshake's last ACK, or the held segment) into the flow's state: it
/// acknowledges the cookie, so the flow becomes established, as a plain
/// flow does with the client's ACK of the backend's SYN-ACK.
#[inline(always)]
pub fn client_completes<A: WireAddr>(flow: &mut FlowOf<A>, flags: u8, seq: u32, payload_len: u32) -> bool {
    let ack = Segment {
        flags,
        seq,
        ack: flow.server_isn.wrapping_add(1),
        payload_len,
    };
    flow_state::advance(flow, Direction::FromClient, &ack) == Event::Established
}

/// The frame had no room for the held segment: it is lost (the client sends
/// it again), and the backend gets the bare ACK (`answer` with the client's
/// next sequence number) if the frame is still its SYN-ACK.
#[inline(always)]
fn held_segment_lost<'a, P: ProxyPacket<'a>>(ctx: &'a XdpContext, answer: &BareSegment<P::Addr>) -> u32 {
    count(Counter::SynProxyEarlyData);
    let Some(mut pkt) = P::parse(ctx) else {
        return XDP_DROP;
    };
    if pkt.flags() & (TCP_SYN | TCP_ACK) != TCP_SYN | TCP_ACK {
        return XDP_DROP;
    }
    let ack = BareSegment {
        seq: pkt.ack_seq(),
        flags: TCP_ACK,
        ..*answer
    };
    pkt.swap_macs();
    match pkt.become_segment(ctx, &ack) {
        Some(_) => XDP_TX,
        None => XDP_DROP,
    }
}

/// [`Job::HoldSegment`]: a client segment with data arrived before the
/// backend answered. Keeps it to send on in place of the handshake's last
/// ACK, and drops the frame.
#[xdp]
pub fn bg_lb_hold_segment(ctx: XdpContext) -> u32 {
    hold_segment::<TcpPacket>(&ctx)
}

/// [`Job::HoldSegment`]'s work, in either family.
#[inline(always)]
pub fn hold_segment<'a, P: ProxyPacket<'a>>(ctx: &'a XdpContext) -> u32 {
    let held = P::parse(ctx).and_then(|pkt| {
        let key = pkt.client_key();
        hold(ctx, &pkt, &key, flow_entry(&key)?)
    });
    count_hold(held);
    XDP_DROP
}

#[inline(always)]
pub fn count_hold(held: Option<()>) {
    count(if held.is_some() {
        Counter::SynProxyHeld
    } else {
        Counter::SynProxyEarlyData
    });
}

/// Keeps the payload of `pkt`, a segment of the proxied flow `key` whose
/// backend has not answered and which holds nothing yet.
#[inline(always)]
pub fn hold<A: FamilyMaps, P: ProxySegment>(
    ctx: &XdpContext,
    pkt: &P,
    key: &FlowKeyOf<A>,
    flow: &mut FlowOf<A>,
) -> Option<()> {
    if flow.proxy & (PROXIED | BACKEND_READY | HELD) != PROXIED {
        return None;
    }
    let scratch = HELD_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU array element, used by this CPU only, for this
    // program run.
    let scratch = unsafe { &mut *scratch };
    scratch.len = pkt.copy_payload(ctx, &mut scratch.payload)? as u16;
    scratch.seq = pkt.seq();
    scratch.flags = pkt.flags();
    // By reference: the value is copied map to map, never onto the stack,
    // which it would not fit.
    let segment: &HeldSegment = scratch;
    A::held_segments().insert(key, segment, BPF_ANY as u64).ok()?;
    flow.proxy |= HELD;
    Some(())
}

/// The proxied flow's SYN to its backend, written in place of `pkt` (from
/// the flow's SNAT address and port), and forwarded.
#[inline(always)]
fn send_syn<'a, P: ProxyPacket<'a>>(ctx: &'a XdpContext, pkt: P, flow: &FlowOf<P::Addr>) -> u32 {
    let Some(backend) = P::Addr::backends().get(flow.backend_id) else {
        return dropped(Counter::NoBackend);
    };
    let syn = BareSegment {
        src_addr: flow.snat_addr,
        dst_addr: backend.addr,
        src_port: flow.snat_port,
        dst_port: backend.port,
        seq: flow.seq_delta,
        ack: 0,
        flags: TCP_SYN,
        window: flow.client_window,
        mss: flow.client_mss,
    };
    let Some(mut syn) = pkt.become_segment(ctx, &syn) else {
        return XDP_DROP;
    };
    account(flow.backend_id, flow.service_id, Way::ToBackend, syn.ip_len(), false);
    syn.forward(ctx)
}

/// The MSS a cookie encodes. Only the kernel knows the cookie's secret, so
/// this regenerates the cookie for a SYN with each MSS it can encode and
/// keeps the one that matches. In the rare case that the kernel's cookie
/// clock ticked between SYN and ACK nothing matches, and the MSS every path
/// carries is used.
#[inline(always)]
fn cookie_mss<P: ProxySegment>(pkt: &P, client_isn: u32, cookie: u32) -> u16 {
    // The SYN's TCP header: ports, sequence number, one option, the MSS.
    let mut syn = [0u8; 24];
    let (src_port, dst_port) = pkt.ports();
    syn[0..2].copy_from_slice(&src_port.to_ne_bytes());
    syn[2..4].copy_from_slice(&dst_port.to_ne_bytes());
    syn[4..8].copy_from_slice(&client_isn.to_be_bytes());
    syn[12] = (syn.len() as u8 / 4) << 4;
    syn[13] = TCP_SYN;
    syn[20] = 2;
    syn[21] = 4;
    for mss in P::COOKIE_MSS {
        syn[22..24].copy_from_slice(&mss.to_be_bytes());
        if let Some((regenerated, _)) = pkt.syncookie(&mut syn, 24)
            && regenerated == cookie
        {
            return mss;
        }
    }
    P::DEFAULT_MSS
}

/// A connection request to an auto-mode service: a flow opened for a plain
/// SYN, or a cookie sent while the proxy is on. Engages (or keeps on) the
/// proxy when the window's unanswered requests pass the threshold.
#[inline(always)]
fn note_request(service: &Service, now: u64) {
    if service.flags & SYN_PROXY_AUTO == 0 {
        return;
    }
    let Some(flood) = SYN_FLOOD.get_ptr_mut(service.id) else {
        return;
    };
    // SAFETY: an array element is never freed. Every CPU updates it: the
    // counters with atomic adds, the rest with plain stores whose races
    // cost at most a request counted in the wrong window.
    let flood: &mut SynFlood = unsafe { &mut *flood };
    if extended_this_window(flood.active_until_ns, now) {
        return;
    }
    if window_over(flood.window_start_ns, now) {
        flood.window_start_ns = now;
        flood.requests = 0;
        flood.completed = 0;
    }
    atomic_increment(&mut flood.requests);
    if flooded(flood.requests, flood.completed, service.syn_proxy_threshold) {
        flood.active_until_ns = now + HOLD_NS;
    }
}

/// A client completed its handshake (flow `service_id`'s, or a cookie's).
#[inline(always)]
fn note_completed(service_id: u32) {
    if let Some(flood) = SYN_FLOOD.get_ptr_mut(service_id) {
        // SAFETY: as in note_request.
        atomic_increment(unsafe { &mut (*flood).completed });
    }
}

/// Adds one with the BPF atomic add (without fetch, which every kernel's
/// verifier takes). Rust's atomics need compare-and-swap, which the BPF
/// target does not promise.
#[inline(always)]
fn atomic_increment(counter: &mut u64) {
    // SAFETY: `counter` is a live, aligned u64; the instruction adds to it
    // atomically and touches nothing else.
    unsafe { core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) counter as *mut u64, in(reg) 1u64) };
}
