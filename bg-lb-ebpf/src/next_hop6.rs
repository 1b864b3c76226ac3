//! [`crate::next_hop`] for IPv6: each CPU's recent `bpf_fib_lookup`
//! successes for IPv6 destinations ([`NEXT_HOPS6`]), by the same rules: an
//! answer is used for [`NEXT_HOP_TTL_JIFFIES`] kernel ticks at most, for a
//! packet with the same destination, source, traffic class and flow label
//! and ingress interface, no longer than the one the lookup let through;
//! anything else asks the kernel. An entry also says whether the destination was on-link,
//! so a `dsr` packet is refused from the cache as the lookup refuses it.

use aya_ebpf::{helpers::bpf_jiffies64, programs::XdpContext};
use bg_lb_common::{
    counters::Counter,
    maps::{Ipv6Wire, NEXT_HOP_TTL_JIFFIES, next_hop_slot},
};

use crate::{
    forward::{Route, lookup6},
    maps::NEXT_HOPS6,
    packet::ipv6::Ipv6Frame,
};

/// Where an IPv6 packet goes towards `dst_addr`, answered from this CPU's
/// cache when it can be; with `on_link`, a route through a gateway is
/// refused (`dsr_not_on_link`).
#[inline(always)]
pub fn cached_route6(ctx: &XdpContext, frame: &Ipv6Frame<'_>, dst_addr: &Ipv6Wire, on_link: bool) -> Route {
    let Some(entry) = NEXT_HOPS6.get_ptr_mut(next_hop_slot(dst_addr)) else {
        return refuse_off_link(lookup6(ctx, frame, dst_addr), on_link);
    };
    // SAFETY: as in `next_hop`: a per-CPU array element is never freed, and
    // only this CPU, which runs one program at a time, reads or writes it.
    let entry = unsafe { &mut *entry };
    // SAFETY: a helper without arguments (inlined: see `next_hop`).
    let now = unsafe { bpf_jiffies64() };
    let ingress = ctx.ingress_ifindex() as u32;
    let fresh = entry.dst_addr == *dst_addr
        && entry.src_addr == frame.src_addr()
        && entry.ingress == ingress
        && entry.flowinfo == frame.flowinfo()
        && now.wrapping_sub(entry.looked_up_jiffies) < NEXT_HOP_TTL_JIFFIES;
    if fresh && frame.ip_len() <= entry.fits {
        return refuse_off_link(
            (
                Route::Next {
                    ifindex: entry.ifindex,
                    smac: entry.smac,
                    dmac: entry.dmac,
                    next_hop: 0,
                },
                entry.on_link != 0,
            ),
            on_link,
        );
    }
    let found = lookup6(ctx, frame, dst_addr);
    if let (
        Route::Next {
            ifindex, smac, dmac, ..
        },
        direct,
    ) = found
    {
        // Field by field, in place: a whole entry built first would take
        // the stack's room.
        entry.looked_up_jiffies = now;
        entry.dst_addr = *dst_addr;
        entry.src_addr = frame.src_addr();
        entry.ingress = ingress;
        entry.ifindex = ifindex;
        entry.flowinfo = frame.flowinfo();
        entry.fits = frame.ip_len();
        entry.on_link = direct as u8;
        entry.smac = smac;
        entry.dmac = dmac;
    }
    refuse_off_link(found, on_link)
}

/// The route, unless the packet must reach its destination on-link and the
/// route goes through a gateway.
#[inline(always)]
fn refuse_off_link((route, direct): (Route, bool), on_link: bool) -> Route {
    match route {
        Route::Next { .. } if on_link && !direct => Route::Failed(Counter::DsrNotOnLink),
        route => route,
    }
}
