//! Each CPU's cache of recent `bpf_fib_lookup` successes ([`NEXT_HOPS`]):
//! the lookup (FIB rules, table, neighbour) is the largest single cost of
//! a forwarded packet, and a flow's packets ask it the same question again
//! and again. A cached answer is used for [`NEXT_HOP_TTL_JIFFIES`] kernel
//! ticks at most, so a route, neighbour or MTU change reaches every flow
//! within that time (`NEXT_HOP_TTL_MAX_NS` at most, whatever the HZ); a packet
//! bigger than the cached lookup let through, or one whose next hop does
//! not resolve, always asks the kernel.

use aya_ebpf::{helpers::bpf_jiffies64, programs::XdpContext};
use bg_lb_common::maps::{NEXT_HOP_TTL_JIFFIES, NextHop, next_hop_slot};

use crate::{
    forward::{Route, RouteQuery, route},
    maps::NEXT_HOPS,
};

/// [`route`], answered from this CPU's cache when it can be.
#[inline(always)]
pub fn cached_route(ctx: &XdpContext, query: &RouteQuery) -> Route {
    let Some(entry) = NEXT_HOPS.get_ptr_mut(next_hop_slot(&query.dst_addr)) else {
        return route(ctx, query);
    };
    // SAFETY: a per-CPU array element is never freed, and only this CPU,
    // which runs one program at a time, reads or writes it.
    let entry = unsafe { &mut *entry };
    // SAFETY: a helper without arguments, which the verifier inlines as a
    // load of `jiffies`: no call, unlike a clock read.
    let now = unsafe { bpf_jiffies64() };
    let ingress = ctx.ingress_ifindex() as u32;
    let fresh = entry.dst_addr == query.dst_addr
        && entry.src_addr == query.src_addr
        && entry.ingress == ingress
        && entry.tos == query.tos
        && now.wrapping_sub(entry.looked_up_jiffies) < NEXT_HOP_TTL_JIFFIES;
    if fresh && query.ip_len <= entry.fits {
        return Route::Next {
            ifindex: entry.ifindex,
            smac: entry.smac,
            dmac: entry.dmac,
            next_hop: entry.next_hop,
        };
    }
    let found = route(ctx, query);
    if let Route::Next {
        ifindex,
        smac,
        dmac,
        next_hop,
    } = found
    {
        *entry = NextHop {
            looked_up_jiffies: now,
            dst_addr: query.dst_addr,
            src_addr: query.src_addr,
            ingress,
            ifindex,
            next_hop,
            fits: query.ip_len,
            tos: query.tos,
            _pad: 0,
            smac,
            dmac,
            _pad2: [0; 4],
        };
    }
    found
}
