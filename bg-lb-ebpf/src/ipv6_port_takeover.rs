//! SNAT port takeover for IPv6: a new IPv6 connection that found no free
//! SNAT pair in `bg_lb_tcp6_open` (or, proxied, in `bg_lb_proven6`) gets
//! the pair of a flow that has ended, by the same rules and the same
//! compare-and-swap as IPv4's (`crate::port_takeover`, through
//! `to_backend::claim_pair`).
//!
//! The takeover's BPF-to-BPF call does not fit on top of the IPv6
//! new-flow program's stack, nor on top of a program that builds the new
//! flow, so it takes two programs, each with a stack of its own:
//! [`bg_lb_tcp6_take_over`] claims the pair and leaves it in this CPU's
//! `TAKEN_PAIRS6` entry, and [`bg_lb_tcp6_taken`] opens the flow on it
//! (created at the claim's time, as the takeover's rules expect) and
//! delivers the SYN as `bg_lb_tcp6_open` does. A proxied connection takes
//! the same two steps, [`bg_lb_proven6_take_over`] and
//! [`bg_lb_proven6_taken`], for the SYN the proxy sends in the proven
//! ACK's place, as `bg_lb_proven6` would have. The pair is the request's
//! from the claim on: a request that cannot use it (its table moved to
//! another backend meanwhile) leaves an entry that names no pinned flow,
//! which the next takeover treats as an orphan.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_ns,
    macros::xdp,
    programs::XdpContext,
};
use bg_lb_common::{flow_state, maps::TakenPair6, port_reuse::Syn, syn_proxy::Job};

use crate::{
    ipv6::{flow_key, open_flow, passed, tcp_service},
    ipv6_synproxy::{open_proven, proven_syn},
    maps::{CONFIG, TAKEN_PAIRS6},
    packet::ipv6::parse_tcp6,
    synproxy::hand_over,
    to_backend::{Claim, claim_pair, opening_segment, refuse},
};

/// [`Job::Tcp6TakeOver`]: the frame's connection request, to a TCP
/// service's VIP:port, screened, found no free SNAT pair: a pair claimed
/// for it (free by now, or an ended flow's) and the frame on to
/// [`Job::Tcp6Taken`], or the refusal (counted as IPv4's: no pair for it).
#[xdp]
pub fn bg_lb_tcp6_take_over(ctx: XdpContext) -> u32 {
    take_over(&ctx, false)
}

/// [`Job::Proven6TakeOver`]: as [`Job::Tcp6TakeOver`], for the ACK that
/// proved its cookie ([`Job::Proven6`] found no free pair): the pair
/// claimed for the SYN the proxy sends the backend in its place, and the
/// frame on to [`Job::Proven6Taken`].
#[xdp]
pub fn bg_lb_proven6_take_over(ctx: XdpContext) -> u32 {
    take_over(&ctx, true)
}

/// The frame's request (`proven`: the proven ACK's opening SYN) claiming a
/// pair, left in this CPU's `TAKEN_PAIRS6` entry for the job that opens
/// its flow there; or the refusal.
#[inline(always)]
fn take_over(ctx: &XdpContext, proven: bool) -> u32 {
    let Some(cfg) = CONFIG.get(0) else {
        return XDP_PASS;
    };
    let Some(pkt) = parse_tcp6(ctx) else {
        return XDP_DROP;
    };
    let seg = opening_segment(&pkt.segment(), proven);
    // Only a connection request finds no free pair.
    if !flow_state::is_connection_request(seg.flags) {
        return XDP_DROP;
    }
    let key = flow_key(&pkt);
    // Gone since the frame was handed over: as for a frame without one.
    let Some(service) = tcp_service(&key) else {
        return if proven { XDP_DROP } else { passed() };
    };
    // SAFETY: a helper without arguments: the claim, and the new flow's
    // creation.
    let now = unsafe { bpf_ktime_get_ns() };
    let syn = if proven {
        proven_syn(&seg)
    } else {
        Syn::new(seg.seq, pkt.timestamp(ctx))
    };
    let (snat_addr, snat_port) = match claim_pair(&key, &syn, &service, cfg, now) {
        Ok(pair) => pair,
        Err(counter) => return refuse(ctx, &seg, counter, now, || hand_over(ctx, Job::Rst6)),
    };
    let Some(taken) = TAKEN_PAIRS6.get_ptr_mut(0) else {
        return XDP_DROP;
    };
    // SAFETY: a per-CPU array element, written only by this CPU, which runs
    // one program at a time.
    unsafe {
        *taken = TakenPair6 {
            snat_addr,
            snat_port,
            _pad: [0; 6],
            claim: now,
        }
    };
    hand_over(ctx, if proven { Job::Proven6Taken } else { Job::Tcp6Taken })
}

/// [`Job::Tcp6Taken`]: the frame's connection request, whose pair
/// [`bg_lb_tcp6_take_over`] claimed on this CPU a moment ago: its flow
/// opened there and the SYN delivered, or the refusal.
#[xdp]
pub fn bg_lb_tcp6_taken(ctx: XdpContext) -> u32 {
    let Some(taken) = TAKEN_PAIRS6.get(0).copied() else {
        return XDP_DROP;
    };
    open_flow(&ctx, Claim::Claimed(taken.snat_addr, taken.snat_port), taken.claim)
}

/// [`Job::Proven6Taken`]: the proven ACK in the frame, whose pair
/// [`bg_lb_proven6_take_over`] claimed on this CPU a moment ago: its flow
/// opened there and on to [`Job::OpenBackend6`], or the refusal.
#[xdp]
pub fn bg_lb_proven6_taken(ctx: XdpContext) -> u32 {
    let Some(taken) = TAKEN_PAIRS6.get(0).copied() else {
        return XDP_DROP;
    };
    open_proven(&ctx, Claim::Claimed(taken.snat_addr, taken.snat_port), taken.claim)
}
