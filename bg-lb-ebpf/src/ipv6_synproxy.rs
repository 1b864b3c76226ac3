//! The SYN proxy on IPv6 VIPs: [`crate::synproxy`]'s jobs for IPv6 flows,
//! each an XDP program of its own reached by tail call ([`Job::SynAck6`],
//! [`Job::Tcp6Proxy`], [`Job::Proven6`], [`Job::OpenBackend6`], [`Job::ResendSyn6`],
//! [`Job::AckToBackend6`], [`Job::HoldSegment6`]). The verdicts, the flood detector (per service,
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
    bindings::xdp_action::{XDP_DROP, XDP_TX},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::xdp,
    programs::XdpContext,
};
use bg_lb_common::{
    counters::Counter,
    flow_state::{TCP_ACK, TCP_SYN},
    maps::{Flow6, Ipv6Wire, NatKey6},
    port_reuse::Syn,
    syn_proxy::{COOKIE_MSS6, DEFAULT_MSS6, HELD, HELD_PAYLOAD_MAX, IPV6_MSS_REDUCTION, Job},
};

use crate::{
    forward::{Route, dropped, forward6, route6, send},
    ipv6::{flow_key, tcp_service},
    maps::{BACKENDS6, CONFIG, HELD_SEGMENTS6, Way, account, count, flow_entry, reverse_owner},
    packet::{
        BareSegment,
        ipv6::{Tcp6Packet, parse_tcp6},
    },
    synproxy::{ProxySegment, backend_answered, client_completes, count_hold, hand_over, hold, prove},
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
/// a flow from the service's table, opened as the client's SYN would have,
/// then [`Job::OpenBackend6`]; or the refusal.
#[xdp]
pub fn bg_lb_proven6(ctx: XdpContext) -> u32 {
    let Some(pkt) = parse_tcp6(&ctx) else {
        return XDP_DROP;
    };
    let key = flow_key(&pkt);
    let (Some(service), Some(cfg)) = (tcp_service(&key), CONFIG.get(0)) else {
        return XDP_DROP;
    };
    // SAFETY: helpers without arguments, as in `ipv6::open`.
    let (now, seen) = unsafe { (bpf_ktime_get_ns(), bpf_ktime_get_coarse_ns()) };
    let request = opening_segment(&pkt.segment(), true);
    // The proxy's SYN carries no timestamp.
    let syn = Syn::new(request.seq, None);
    // A free pair only: the takeover does not fit this program's stack, and
    // its program (`Job::Tcp6TakeOver`) opens from a SYN, not from the
    // proven ACK. With no free pair the proven connection is refused and
    // counted (`snat_ports_exhausted`); its client's retry gets a cookie
    // again.
    match new_flow(&key, &request, &syn, &service, cfg, (now, seen), Claim::Free) {
        Ok(_) => hand_over(&ctx, Job::OpenBackend6),
        Err(counter) => refuse(&ctx, &request, counter, now, || hand_over(&ctx, Job::Rst6)),
    }
}

/// [`Job::OpenBackend6`]: as [`Job::OpenBackend`], for an IPv6 flow; the
/// SYN is [`Job::ResendSyn6`]'s to send (in one program, the two overflow
/// the stack).
#[xdp]
pub fn bg_lb_open_backend6(ctx: XdpContext) -> u32 {
    count(Counter::SynCookieValid);
    let Some(pkt) = parse_tcp6(&ctx) else {
        return XDP_DROP;
    };
    let key = flow_key(&pkt);
    let Some(flow) = flow_entry(&key) else {
        return XDP_DROP;
    };
    prove(&ctx, &pkt, &key, flow, pkt.ack_seq(), pkt.window(), pkt.payload_len());
    hand_over(&ctx, Job::ResendSyn6)
}

/// [`Job::ResendSyn6`]: as [`Job::ResendSyn`], for an IPv6 flow (and its
/// first SYN, after [`Job::OpenBackend6`]).
#[xdp]
pub fn bg_lb_resend_syn6(ctx: XdpContext) -> u32 {
    let Some(pkt) = parse_tcp6(&ctx) else {
        return XDP_DROP;
    };
    match flow_entry(&flow_key(&pkt)) {
        Some(flow) => send_syn(&ctx, pkt, flow),
        None => XDP_DROP,
    }
}

/// The proxied flow's SYN to its backend, written in place of `pkt` (from
/// the flow's SNAT address and port), and forwarded.
#[inline(always)]
fn send_syn(ctx: &XdpContext, pkt: Tcp6Packet<'_>, flow: &Flow6) -> u32 {
    let Some(backend) = BACKENDS6.get(flow.backend_id) else {
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
    account(
        flow.backend_id,
        flow.service_id,
        Way::ToBackend,
        syn.frame.ip_len(),
        false,
    );
    forward6(ctx, &mut syn.frame)
}

/// [`Job::AckToBackend6`]: as [`Job::AckToBackend`], for an IPv6 flow: the
/// backend's SYN-ACK answered with the held client segment, or else the
/// ACK the client would have sent.
#[xdp]
pub fn bg_lb_ack_to_backend6(ctx: XdpContext) -> u32 {
    let Some(mut pkt) = parse_tcp6(&ctx) else {
        return XDP_DROP;
    };
    let nat = NatKey6::from_wire(
        pkt.frame.src_addr(),
        pkt.src_port(),
        pkt.frame.dst_addr(),
        pkt.dst_port(),
    );
    let Some(client) = reverse_owner(&nat) else {
        return XDP_DROP;
    };
    let Some(flow) = flow_entry(&client) else {
        return XDP_DROP;
    };
    let first = backend_answered(flow, pkt.flags(), pkt.seq(), pkt.ack_seq());
    let mut answer = BareSegment {
        src_addr: pkt.frame.dst_addr(),
        dst_addr: pkt.frame.src_addr(),
        src_port: pkt.dst_port(),
        dst_port: pkt.src_port(),
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
        if let Some(held) = unsafe { HELD_SEGMENTS6.get(client) } {
            answer.seq = held.seq;
            answer.flags = held.flags;
            let established = first && client_completes(flow, held.flags, held.seq, held.len.into());
            let sent = pkt.become_data_segment(&ctx, &answer, &held.payload, held.len.into());
            let _ = HELD_SEGMENTS6.remove(client);
            return match sent {
                Some(mut data) => {
                    account(
                        flow.backend_id,
                        flow.service_id,
                        Way::ToBackend,
                        data.frame.ip_len(),
                        established,
                    );
                    forward6(&ctx, &mut data.frame)
                }
                None => held_segment_lost(&ctx, &answer),
            };
        }
    }
    let established = first && client_completes(flow, TCP_ACK, answer.seq, 0);
    pkt.swap_macs();
    match pkt.become_segment(&ctx, &answer) {
        Some(ack) => {
            account(
                flow.backend_id,
                flow.service_id,
                Way::ToBackend,
                ack.frame.ip_len(),
                established,
            );
            XDP_TX
        }
        None => XDP_DROP,
    }
}

/// As IPv4's: the held segment did not fit the frame, so the backend gets
/// the bare ACK if the frame is still its SYN-ACK.
#[inline(always)]
fn held_segment_lost(ctx: &XdpContext, answer: &BareSegment<Ipv6Wire>) -> u32 {
    count(Counter::SynProxyEarlyData);
    let Some(mut pkt) = parse_tcp6(ctx) else {
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

/// [`Job::HoldSegment6`]: as [`Job::HoldSegment`], for an IPv6 flow.
#[xdp]
pub fn bg_lb_hold_segment6(ctx: XdpContext) -> u32 {
    let held = parse_tcp6(&ctx).and_then(|pkt| {
        let key = flow_key(&pkt);
        hold(&ctx, &pkt, &key, flow_entry(&key)?)
    });
    count_hold(held);
    XDP_DROP
}
