//! The forwarding modes on IPv6, as on IPv4 ([`crate::forwarding`] says
//! what each does; the flow logic deciding them is the generic one): the
//! one tail every IPv6 packet the LB carries leaves by ([`send`]: rewritten
//! under full NAT and `gateway`, either way; a `dsr` client packet
//! unchanged but for its MACs, to its on-link backend, by [`bg_lb_dsr6`],
//! whose route lookup, kept apart, does not weigh on the stacks of the
//! programs that choose the backend), and how a `gateway`
//! backend's reply, sent to the client's own address rather than to a SNAT
//! address, is recognised ([`is_tcp_gateway_reply`],
//! [`is_udp_gateway_reply`]).

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use bg_lb_common::{
    maps::{Ipv6Wire, NatKey6},
    syn_proxy::Job,
};

use crate::{
    forward::{forward6, forward6_to},
    forwarding,
    maps::{DSR6_BACKEND, Way, account},
    packet::ipv6::{L4Packet6, Tcp6Packet, Udp6Packet, parse_frame6},
    synproxy::hand_over,
    udp,
};

/// A packet's flow, as its statistics and its rewrite need it.
pub struct Carried {
    pub backend_id: u32,
    pub service_id: u32,
    pub way: Way,
    /// The packet opens (UDP) or establishes (TCP) its flow.
    pub first: bool,
    /// The flow's mode rewrites addresses (full NAT, `gateway`), else only
    /// MACs (`dsr`, towards the backend).
    pub rewrite: bool,
}

/// Accounts the packet to its flow, then sends it on: its hop limit
/// decremented and its endpoints rewritten to `src` -> `dst`, or (`dsr`)
/// unchanged but for its MACs to `dst`'s address ([`bg_lb_dsr6`]).
#[inline(always)]
pub fn send<'a, P: L4Packet6<'a>>(
    ctx: &XdpContext,
    pkt: &mut P,
    flow: &Carried,
    src: (&Ipv6Wire, u16),
    dst: (&Ipv6Wire, u16),
) -> u32 {
    account(
        flow.backend_id,
        flow.service_id,
        flow.way,
        pkt.frame().ip_len(),
        flow.first,
    );
    if !flow.rewrite {
        return to_backend_mac(ctx, dst.0);
    }
    pkt.frame().decrement_hop_limit();
    pkt.rewrite((*src.0, src.1), (*dst.0, dst.1));
    // The destination read back from the frame: the stack has no room to
    // keep `dst` across the route lookup.
    forward6(ctx, pkt.frame())
}

/// Hands a `dsr` packet to [`bg_lb_dsr6`], for `backend`.
#[inline(always)]
fn to_backend_mac(ctx: &XdpContext, backend: &Ipv6Wire) -> u32 {
    let Some(slot) = DSR6_BACKEND.get_ptr_mut(0) else {
        return XDP_DROP;
    };
    // SAFETY: this CPU's element of a per-CPU array, which no other program
    // run touches until this one's tail call has read it (a program runs to
    // its end on one CPU, and the tail call runs right away).
    unsafe { *slot = *backend };
    hand_over(ctx, Job::Dsr6)
}

/// [`Job::Dsr6`]: an IPv6 `dsr` packet, accounted, sent on unchanged but
/// for its MACs to the backend in `DSR6_BACKEND`, which must be on-link
/// (else dropped, `dsr_not_on_link`).
#[xdp]
pub fn bg_lb_dsr6(ctx: XdpContext) -> u32 {
    // This CPU's element, written by the program that handed the
    // frame over (see `to_backend_mac`); copied at once.
    let Some(backend) = DSR6_BACKEND.get(0).copied() else {
        return XDP_PASS;
    };
    match parse_frame6(&ctx) {
        Some(mut frame) => forward6_to(&ctx, &mut frame, &backend, true),
        None => XDP_DROP,
    }
}

/// Whether `pkt`, to no VIP or SNAT address, is a `gateway` TCP flow's
/// backend reply ([`forwarding::is_gateway_reply`]).
#[inline(always)]
pub fn is_tcp_gateway_reply(pkt: &Tcp6Packet<'_>) -> bool {
    let nat = NatKey6::from_wire(
        pkt.frame.src_addr(),
        pkt.src_port(),
        pkt.frame.dst_addr(),
        pkt.dst_port(),
    );
    forwarding::is_gateway_reply(&nat, &pkt.segment())
}

/// Whether `pkt`, to no UDP service or SNAT pair, is a `gateway` UDP flow's
/// backend reply ([`udp::is_gateway_reply`]).
#[inline(always)]
pub fn is_udp_gateway_reply(pkt: &Udp6Packet<'_>) -> bool {
    let nat = NatKey6::from_wire(
        pkt.frame.src_addr(),
        pkt.src_port(),
        pkt.frame.dst_addr(),
        pkt.dst_port(),
    );
    udp::is_gateway_reply(&nat)
}
