//! Sends a rewritten packet on its way: `bpf_fib_lookup` (or this CPU's
//! recent answer, [`crate::next_hop`]) finds the egress interface and next-hop MAC,
//! then XDP_TX (same interface) or XDP_REDIRECT
//! through the TX_PORTS devmap. The fast path never hands the packet to the
//! kernel stack: if the next hop is unresolved the packet is dropped and
//! counted (the daemon keeps backend neighbours resolved). A packet too big
//! for the egress link is answered with ICMP fragmentation needed if its
//! sender set DF, and dropped otherwise: XDP cannot fragment.
//!
//! IPv6 ([`forward6`]) has a next-hop cache of its own
//! ([`crate::next_hop6`]). An IPv6 packet too big for the egress link goes
//! to a program of its own that answers it with ICMPv6 Packet Too Big
//! ([`crate::ipv6_too_big`]).

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action::{XDP_DROP, XDP_TX},
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use bg_lb_common::{counters::Counter, maps::Ipv6Wire};

use crate::{
    icmp, ipv6_too_big,
    maps::{TX_PORTS, count},
    next_hop::cached_route,
    next_hop6::cached_route6,
    packet::{L4Packet, TcpPacket, ipv6::Ipv6Frame},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// What `bpf_fib_lookup` needs to know of an IPv4 packet; addresses wire
/// order, the length host order.
pub struct RouteQuery {
    pub proto: u8,
    pub tos: u8,
    /// IP total length: the kernel compares it with the egress MTU.
    pub ip_len: u16,
    pub src_addr: u32,
    pub dst_addr: u32,
}

/// Where a packet goes next.
pub enum Route {
    /// Out of `ifindex`, from `smac` to the next hop's `dmac`; the next
    /// hop's address is `next_hop` (the destination itself when on-link).
    Next {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
        next_hop: u32,
    },
    /// The egress link takes at most `mtu` bytes (host order), fewer than
    /// the packet has.
    TooBig { mtu: u16 },
    /// No route, or no resolved next hop: dropped, counted under this.
    Failed(Counter),
}

#[inline(always)]
pub fn route(ctx: &XdpContext, query: &RouteQuery) -> Route {
    // SAFETY: FibParams (struct bpf_fib_lookup) holds only integers and
    // unions of integers, for which all zeroes is a valid value.
    let mut fib: FibParams = unsafe { zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = query.proto;
    fib.__bindgen_anon_1.tot_len = query.ip_len;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_2.tos = query.tos;
    fib.__bindgen_anon_3.ipv4_src = query.src_addr;
    fib.__bindgen_anon_4.ipv4_dst = query.dst_addr;
    lookup(ctx, &mut fib)
}

/// Asks `bpf_fib_lookup` with `fib` filled in for either family.
/// [`Route::Next`]'s `next_hop` means something for IPv4 lookups only.
#[inline(always)]
fn lookup(ctx: &XdpContext, fib: &mut FibParams) -> Route {
    // SAFETY: ctx is this run's XDP context and fib a live parameter block of
    // the size passed; the helper touches no packet memory.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), fib, size_of::<FibParams>() as i32, 0) };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        Route::Next {
            ifindex: fib.ifindex,
            smac: fib.smac,
            dmac: fib.dmac,
            // SAFETY: an IPv4 lookup; the kernel wrote the gateway over the
            // destination when the route has one.
            next_hop: unsafe { fib.__bindgen_anon_4.ipv4_dst },
        }
    } else if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        // SAFETY: the kernel wrote the MTU over tot_len (a union of two
        // u16s) when it returned FRAG_NEEDED.
        Route::TooBig {
            mtu: unsafe { fib.__bindgen_anon_1.mtu_result },
        }
    } else if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        Route::Failed(Counter::FibNoNeighbour)
    } else {
        Route::Failed(Counter::FibFailed)
    }
}

/// Sends the frame, its MACs already set, out of `ifindex`.
#[inline(always)]
pub fn send(ctx: &XdpContext, ifindex: u32) -> u32 {
    if ifindex == ctx.ingress_ifindex() as u32 {
        return XDP_TX;
    }
    match TX_PORTS.redirect(ifindex, 0) {
        Ok(action) => action,
        Err(_) => dropped(Counter::RedirectFailed),
    }
}

#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &mut TcpPacket<'_>) -> u32 {
    let dst_addr = pkt.dst_addr();
    forward_to(ctx, pkt, dst_addr, false)
}

/// Sends the packet (a TCP segment or UDP datagram) towards `dst_addr`
/// (wire order), which need not be its destination: a `dsr` packet keeps
/// the VIP and goes to its backend's MAC. With `on_link`, a route through a
/// gateway is refused: the frame must reach `dst_addr` itself.
#[inline(always)]
pub fn forward_to<'a, P: L4Packet<'a>>(ctx: &XdpContext, pkt: &mut P, dst_addr: u32, on_link: bool) -> u32 {
    let query = RouteQuery {
        proto: pkt.proto(),
        tos: pkt.tos(),
        ip_len: pkt.ip_len(),
        src_addr: pkt.src_addr(),
        dst_addr,
    };
    match cached_route(ctx, &query) {
        Route::Next { next_hop, .. } if on_link && next_hop != dst_addr => dropped(Counter::DsrNotOnLink),
        Route::Next {
            ifindex, smac, dmac, ..
        } => {
            pkt.set_macs(smac, dmac);
            send(ctx, ifindex)
        }
        Route::TooBig { mtu } if pkt.dont_fragment() => icmp::answer_too_big(ctx, pkt, mtu),
        Route::TooBig { .. } => dropped(Counter::TooBigDropped),
        Route::Failed(counter) => dropped(counter),
    }
}

/// Sends an IPv6 packet, its addresses rewritten, towards its destination.
#[inline(always)]
pub fn forward6(ctx: &XdpContext, frame: &mut Ipv6Frame<'_>) -> u32 {
    let dst_addr = frame.dst_addr();
    forward6_to(ctx, frame, &dst_addr, false)
}

/// Sends an IPv6 packet towards `dst_addr`, which need not be its
/// destination, as [`forward_to`] does: with `on_link` (a `dsr` packet,
/// which keeps the VIP), a route through a gateway is refused.
#[inline(always)]
pub fn forward6_to(ctx: &XdpContext, frame: &mut Ipv6Frame<'_>, dst_addr: &Ipv6Wire, on_link: bool) -> u32 {
    route_and_send6(ctx, frame, dst_addr, on_link, true)
}

/// [`forward6`] for a client segment the SYN proxy held, sent in place of
/// the backend's SYN-ACK: too big for its route, it is dropped
/// (`too_big_dropped`), as on IPv4. Its sender is on the other side of the
/// interface the frame came in on, so no answer can go back out of it; the
/// client retransmits the segment and is answered then.
#[inline(always)]
pub fn forward6_held(ctx: &XdpContext, frame: &mut Ipv6Frame<'_>) -> u32 {
    let dst_addr = frame.dst_addr();
    route_and_send6(ctx, frame, &dst_addr, false, false)
}

/// Routes and sends the frame; one too big for its route is answered with
/// Packet Too Big if `answer_too_big`, else dropped.
#[inline(always)]
fn route_and_send6(
    ctx: &XdpContext,
    frame: &mut Ipv6Frame<'_>,
    dst_addr: &Ipv6Wire,
    on_link: bool,
    answer_too_big: bool,
) -> u32 {
    match route6(ctx, frame, dst_addr, on_link) {
        Route::Next {
            ifindex, smac, dmac, ..
        } => {
            frame.set_macs(smac, dmac);
            send(ctx, ifindex)
        }
        Route::TooBig { mtu } if answer_too_big => ipv6_too_big::too_big(ctx, frame, mtu),
        Route::TooBig { .. } => dropped(Counter::TooBigDropped),
        Route::Failed(counter) => dropped(counter),
    }
}

/// Where an IPv6 packet goes towards `dst_addr` (this CPU's recent
/// answer, else `bpf_fib_lookup`); with `on_link`, a route through a
/// gateway is refused (`dsr_not_on_link`).
#[inline(always)]
pub fn route6(ctx: &XdpContext, frame: &Ipv6Frame<'_>, dst_addr: &Ipv6Wire, on_link: bool) -> Route {
    cached_route6(ctx, frame, dst_addr, on_link)
}

/// `bpf_fib_lookup`'s answer for an IPv6 packet towards `dst_addr`, and
/// whether the destination is on-link (the next hop is `dst_addr` itself).
#[inline(always)]
pub fn lookup6(ctx: &XdpContext, frame: &Ipv6Frame<'_>, dst_addr: &Ipv6Wire) -> (Route, bool) {
    // SAFETY: as in `route`: all zeroes is a valid parameter block.
    let mut fib: FibParams = unsafe { zeroed() };
    fib.family = AF_INET6;
    fib.l4_protocol = frame.next_header();
    fib.__bindgen_anon_1.tot_len = frame.ip_len();
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_2.flowinfo = frame.flowinfo();
    fib.__bindgen_anon_3.ipv6_src = frame.src_addr();
    fib.__bindgen_anon_4.ipv6_dst = *dst_addr;
    let route = lookup(ctx, &mut fib);
    // SAFETY: an IPv6 lookup; the kernel wrote the gateway over the
    // destination when the route has one.
    let direct = unsafe { fib.__bindgen_anon_4.ipv6_dst } == *dst_addr;
    (route, direct)
}

/// Drops the packet, counted under `counter`.
#[inline(always)]
pub fn dropped(counter: Counter) -> u32 {
    count(counter);
    XDP_DROP
}
