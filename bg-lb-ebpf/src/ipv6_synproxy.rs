//! The SYN proxy on IPv6 VIPs: [`crate::synproxy`]'s jobs for IPv6 flows,
//! each an XDP program of its own reached by tail call ([`Job::SynAck6`],
//! [`Job::Tcp6Proxy`], [`Job::Proven6`], [`Job::OpenBackend6`], [`Job::ResendSyn6`],
//! [`Job::AckToBackend6`], [`Job::HoldSegment6`]; the takeover of an ended
//! flow's SNAT pair is `ipv6_port_takeover`'s). The verdicts, the flood detector (per service,
//! shared with the service's IPv4 VIPs) and the flow's bookkeeping are the
//! IPv4 proxy's, generic over the family; what is IPv6's own is the packet
//! work ([`Tcp6Packet`]'s cookie helpers and the segments it writes) and
//! the route of a cookie SYN-ACK.
//!
//! A cookie SYN-ACK offers the service's `syn_proxy_mss` less
//! [`IPV6_MSS_REDUCTION`] (the larger header, on the same link MTU); the
//! SYN to the backend carries the MSS the cookie encodes (the kernel's
//! IPv6 table, [`COOKIE_MSS6`]).

use aya_ebpf::{
    bindings::xdp_action::XDP_DROP,
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::xdp,
    programs::XdpContext,
};
use bg_lb_common::{
    counters::Counter,
    flow_state::{Segment, TCP_ACK, TCP_SYN},
    maps::{FlowKey6, Ipv6Wire, NatKey6},
    port_reuse::Syn,
    syn_proxy::{COOKIE_MSS6, DEFAULT_MSS6, HELD_PAYLOAD_MAX, IPV6_MSS_REDUCTION, Job},
};

use crate::{
    forward::{Route, dropped, forward6, forward6_held, route6, send},
    ipv6::{flow_key, tcp_service},
    maps::{CONFIG, count},
    packet::{
        BareSegment,
        ipv6::{Tcp6Packet, parse_tcp6},
    },
    synproxy::{ProxyPacket, ProxySegment, ack_to_backend, hand_over, hold_segment, open_backend, resend_syn},
    to_backend::{Claim, new_flow, opening_segment, proxy_first, refuse},
};

impl ProxySegment for Tcp6Packet<'_> {
    const SYN_ACK: Job = Job::SynAck6;
    const COOKIE_MSS: [u16; 4] = COOKIE_MSS6;
    const DEFAULT_MSS: u16 = DEFAULT_MSS6;

    #[inline(always)]
    fn flags(&self) -> u8 {
        Tcp6Packet::flags(self)
    }

    #[inline(always)]
    fn to_group_mac(&self) -> bool {
        self.frame.to_group_mac()
    }

    #[inline(always)]
    fn ports(&self) -> (u16, u16) {
        (self.src_port(), self.dst_port())
    }

    #[inline(always)]
    fn seq(&self) -> u32 {
        Tcp6Packet::seq(self)
    }

    #[inline(always)]
    fn proves_syncookie(&self) -> bool {
        Tcp6Packet::proves_syncookie(self)
    }

    #[inline(always)]
    fn syncookie<const N: usize>(&self, tcp: &mut [u8; N], len: u32) -> Option<(u32, u16)> {
        Tcp6Packet::syncookie(self, tcp, len)
    }

    #[inline(always)]
    fn copy_payload(&self, ctx: &XdpContext, into: &mut [u8; HELD_PAYLOAD_MAX]) -> Option<u32> {
        Tcp6Packet::copy_payload(self, ctx, into)
    }
}

impl<'a> ProxyPacket<'a> for Tcp6Packet<'a> {
    type Addr = Ipv6Wire;

    #[inline(always)]
    fn parse(ctx: &'a XdpContext) -> Option<Self> {
        parse_tcp6(ctx)
    }

    #[inline(always)]
    fn client_key(&self) -> FlowKey6 {
        flow_key(self)
    }

    #[inline(always)]
    fn nat_key(&self) -> NatKey6 {
        NatKey6::from_wire(
            self.frame.src_addr(),
            self.src_port(),
            self.frame.dst_addr(),
            self.dst_port(),
        )
    }

    #[inline(always)]
    fn src_addr(&self) -> Ipv6Wire {
        self.frame.src_addr()
    }

    #[inline(always)]
    fn dst_addr(&self) -> Ipv6Wire {
        self.frame.dst_addr()
    }

    #[inline(always)]
    fn ack_seq(&self) -> u32 {
        Tcp6Packet::ack_seq(self)
    }

    #[inline(always)]
    fn window(&self) -> u16 {
        Tcp6Packet::window(self)
    }

    #[inline(always)]
    fn payload_len(&self) -> u32 {
        Tcp6Packet::payload_len(self)
    }

    #[inline(always)]
    fn ip_len(&self) -> u16 {
        self.frame.ip_len()
    }

    #[inline(always)]
    fn swap_macs(&mut self) {
        Tcp6Packet::swap_macs(self)
    }

    #[inline(always)]
    fn become_segment(self, ctx: &'a XdpContext, segment: &BareSegment<Ipv6Wire>) -> Option<Self> {
        Tcp6Packet::become_segment(self, ctx, segment)
    }

    #[inline(always)]
    fn become_data_segment(
        self,
        ctx: &'a XdpContext,
        segment: &BareSegment<Ipv6Wire>,
        payload: &[u8; HELD_PAYLOAD_MAX],
        len: u32,
    ) -> Option<Self> {
        Tcp6Packet::become_data_segment(self, ctx, segment, payload, len)
    }

    #[inline(always)]
    fn forward(&mut self, ctx: &XdpContext) -> u32 {
        forward6(ctx, &mut self.frame)
    }

    #[inline(always)]
    fn forward_held(&mut self, ctx: &XdpContext) -> u32 {
        forward6_held(ctx, &mut self.frame)
    }
}

/// [`Job::SynAck6`]: answers the SYN to an IPv6 VIP in the frame with a
/// cookie SYN-ACK from the VIP, routed as IPv4's (the host's routing table;
/// back to the MAC the SYN came from while the next hop is unresolved; a
/// source the host cannot reach gets no answer).
#[xdp]
pub fn bg_lb_syn_ack6(ctx: XdpContext) -> u32 {
    let Some(pkt) = parse_tcp6(&ctx) else {
        return XDP_DROP;
    };
    let Some(service) = tcp_service(&flow_key(&pkt)) else {
        return XDP_DROP;
    };
    let Some((mut tcp, len)) = pkt.tcp_header(&ctx) else {
        return XDP_DROP;
    };
    if !pkt.checksum_holds(&tcp) {
        return dropped(Counter::SynProxyBadChecksum);
    }
    let Some((cookie, _)) = pkt.syncookie(&mut tcp, len) else {
        return XDP_DROP;
    };
    let mss = service.syn_proxy_mss.saturating_sub(IPV6_MSS_REDUCTION);
    let syn_ack = BareSegment {
        src_addr: pkt.frame.dst_addr(),
        dst_addr: pkt.frame.src_addr(),
        src_port: pkt.dst_port(),
        dst_port: pkt.src_port(),
        seq: cookie,
        ack: pkt.seq().wrapping_add(1),
        flags: TCP_SYN | TCP_ACK,
        // One segment, as IPv4's.
        window: mss,
        mss,
    };
    let Some(mut syn_ack) = pkt.become_segment(&ctx, &syn_ack) else {
        return XDP_DROP;
    };
    let dst_addr = syn_ack.frame.dst_addr();
    let ifindex = match route6(&ctx, &syn_ack.frame, &dst_addr, false) {
        Route::Next {
            ifindex, smac, dmac, ..
        } => {
            syn_ack.frame.set_macs(smac, dmac);
            ifindex
        }
        Route::Failed(Counter::FibNoNeighbour) => {
            syn_ack.swap_macs();
            ctx.ingress_ifindex() as u32
        }
        Route::Failed(counter) => return dropped(counter),
        Route::TooBig { .. } => return dropped(Counter::TooBigDropped),
    };
    count(Counter::SynCookieSent);
    send(&ctx, ifindex)
}

/// [`Job::Tcp6Proxy`]: the frame's segment, to a TCP service in a proxy
/// mode, screened, has no usable flow: the proxy's verdict, as IPv4's TCP
/// program takes it (each step below in a program of its own, for the
/// stack). A SYN it answers goes to [`Job::SynAck6`], an ACK that proved
/// its cookie to [`Job::Proven6`], a segment that is not the proxy's on to
/// [`Job::Tcp6Open`].
#[xdp]
pub fn bg_lb_tcp6_proxy(ctx: XdpContext) -> u32 {
    let Some(pkt) = parse_tcp6(&ctx) else {
        return XDP_DROP;
    };
    let key = flow_key(&pkt);
    let Some(service) = tcp_service(&key) else {
        return XDP_DROP;
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    match proxy_first(&ctx, &pkt, &key, &service, now) {
        Ok(true) => hand_over(&ctx, Job::Proven6),
        Ok(false) => hand_over(&ctx, Job::Tcp6Open),
        Err(verdict) => verdict,
    }
}

/// [`Job::Proven6`]: the frame's ACK proved its cookie ([`Job::Tcp6Proxy`]):
/// a flow from the service's table on a free SNAT pair, opened as the
/// client's SYN would have, then [`Job::OpenBackend6`]; with no free pair,
/// on to [`Job::Proven6TakeOver`]; or the refusal.
#[xdp]
pub fn bg_lb_proven6(ctx: XdpContext) -> u32 {
    // SAFETY: a helper without arguments (precise: the flow's port claim).
    let now = unsafe { bpf_ktime_get_ns() };
    open_proven(&ctx, Claim::Free, now)
}

/// The proven ACK in the frame opening its flow on a pair `claim` allows,
/// created at `now`, as the client's SYN would have; then
/// [`Job::OpenBackend6`], or (no free pair) [`Job::Proven6TakeOver`], or
/// the refusal.
#[inline(always)]
pub(crate) fn open_proven(ctx: &XdpContext, claim: Claim<Ipv6Wire>, now: u64) -> u32 {
    let Some(pkt) = parse_tcp6(ctx) else {
        return XDP_DROP;
    };
    let key = flow_key(&pkt);
    let (Some(service), Some(cfg)) = (tcp_service(&key), CONFIG.get(0)) else {
        return XDP_DROP;
    };
    // SAFETY: a helper without arguments (coarse: the flow's last packet).
    let seen = unsafe { bpf_ktime_get_coarse_ns() };
    let request = opening_segment(&pkt.segment(), true);
    match new_flow(&key, &request, &proven_syn(&request), &service, cfg, (now, seen), claim) {
        Ok(_) => hand_over(ctx, Job::OpenBackend6),
        // No free pair: perhaps one whose flow has ended (the takeover does
        // not fit this program's stack).
        Err(Counter::SnatPortsExhausted | Counter::GatewayCollision) if matches!(claim, Claim::Free) => {
            hand_over(ctx, Job::Proven6TakeOver)
        }
        Err(counter) => refuse(ctx, &request, counter, now, || hand_over(ctx, Job::Rst6)),
    }
}

/// What a backend's TIME_WAIT reads of the proxy's SYN for `request` (the
/// proven ACK's opening segment): the SYN carries no timestamp.
#[inline(always)]
pub(crate) fn proven_syn(request: &Segment) -> Syn {
    Syn::new(request.seq, None)
}

/// [`Job::OpenBackend6`]: as [`Job::OpenBackend`], for an IPv6 flow; the
/// SYN is [`Job::ResendSyn6`]'s to send (in one program, the two overflow
/// the stack).
#[xdp]
pub fn bg_lb_open_backend6(ctx: XdpContext) -> u32 {
    if open_backend::<Tcp6Packet>(&ctx).is_none() {
        return XDP_DROP;
    }
    hand_over(&ctx, Job::ResendSyn6)
}

/// [`Job::ResendSyn6`]: as [`Job::ResendSyn`], for an IPv6 flow (and its
/// first SYN, after [`Job::OpenBackend6`]).
#[xdp]
pub fn bg_lb_resend_syn6(ctx: XdpContext) -> u32 {
    resend_syn::<Tcp6Packet>(&ctx)
}

/// [`Job::AckToBackend6`]: as [`Job::AckToBackend`], for an IPv6 flow: the
/// backend's SYN-ACK answered with the held client segment, or else the
/// ACK the client would have sent.
#[xdp]
pub fn bg_lb_ack_to_backend6(ctx: XdpContext) -> u32 {
    ack_to_backend::<Tcp6Packet>(&ctx)
}

/// [`Job::HoldSegment6`]: as [`Job::HoldSegment`], for an IPv6 flow.
#[xdp]
pub fn bg_lb_hold_segment6(ctx: XdpContext) -> u32 {
    hold_segment::<Tcp6Packet>(&ctx)
}
