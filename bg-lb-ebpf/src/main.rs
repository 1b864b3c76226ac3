//! bg-lb's XDP program: layer-4 load balancing (full NAT, gateway or DSR,
//! per service) with blue/green weighted lookup tables and flow pinning.
//!
//! Paths: client -> VIP:port ([`to_backend`]; UDP: [`udp`]), backend -> SNAT addr:port
//! or, for a `gateway` service, backend -> client ([`to_client`]; the
//! modes are in [`forwarding`]), ICMP errors about those flows ([`icmp`]).
//! Frames to a VIP or the SNAT range that no TCP stack should see
//! (malformed, SYN with FIN or RST, TTL expiring) are dropped and counted,
//! not handed to the host the VIP lives on; everything else passes to the
//! kernel untouched.
//! A flooded service's SYNs get SYN cookies ([`synproxy`], whose jobs are XDP
//! programs of their own, reached by tail call). IPv6 frames go to a
//! program of their own too ([`ipv6`]: IPv6 services, in each mode).
#![no_std]
#![no_main]
// The SYN proxy's shared counters need the BPF atomic add (see synproxy).
#![feature(asm_experimental_arch)]

mod flow_reset;
mod forward;
mod forwarding;
mod icmp;
mod ipv6;
mod ipv6_flow_reset;
mod ipv6_port_takeover;
mod ipv6_synproxy;
mod ipv6_too_big;
mod maps;
mod nat;
mod next_hop;
mod next_hop6;
mod packet;
mod pick;
mod port_takeover;
mod rst;
mod synproxy;
mod to_backend;
mod to_client;
mod udp;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use bg_lb_common::{
    counters::Counter,
    flow_state,
    maps::{DataplaneConfig, IPPROTO_TCP, NatKey, ServiceKey},
    syn_proxy::Job,
};

use crate::{
    maps::{CONFIG, SERVICES, VIP_ADDRESSES, count},
    packet::{Malformed, NotForUs, TcpPacket, parse_tcp},
};

#[xdp]
pub fn bg_lb(ctx: XdpContext) -> u32 {
    // By reference, not copied: the SNAT address list would cost the stack
    // 80 bytes. An array element stays put, and userspace rewrites it with
    // the same addresses and ports (only `nat_epoch` moves), so reading it
    // field by field sees what a copy would.
    let Some(cfg) = CONFIG.get(0) else {
        return XDP_PASS;
    };
    if cfg.ready == 0 {
        return XDP_PASS;
    }
    let mut pkt = match parse_tcp(&ctx) {
        Ok(pkt) => pkt,
        Err(NotForUs::Icmp) => return icmp::icmp_error(&ctx),
        // A program of its own (see `udp`): the TCP path's stack is full.
        Err(NotForUs::Udp) => return synproxy::hand_over(&ctx, Job::Udp),
        Err(NotForUs::Ipv6) => return synproxy::hand_over(&ctx, Job::Ipv6),
        Err(NotForUs::Other) => {
            count(Counter::Passed);
            return XDP_PASS;
        }
        Err(NotForUs::Malformed(malformed)) => return judge_malformed(&malformed, cfg),
    };
    // No VIP is a SNAT address (config validation refuses one): a frame to
    // a SNAT address is a reply or the host's own, and costs no SERVICES
    // lookup.
    let to_snat_addr = cfg.is_snat_addr(pkt.dst_addr());
    if to_snat_addr && cfg.in_snat_ports(pkt.dst_port()) {
        if let Err(verdict) = screen(&pkt) {
            return verdict;
        }
        return to_client::to_client(&ctx, pkt);
    }
    // FLOWS first, then SERVICES (see to_backend): a VIP:port's packet. A
    // frame to an address the VIP filter leaves out needs neither lookup.
    if !to_snat_addr
        && cfg.may_be_vip(pkt.dst_addr())
        && let Some(verdict) = to_backend::to_backend(&ctx, &mut pkt, cfg)
    {
        return verdict;
    }
    // A gateway reply is found by its reverse entry, which to_client then
    // reads again: one extra lookup for those replies, none for the others,
    // and none at all where no gateway service ever was.
    if cfg.gateway_seen != 0 && forwarding::is_gateway_reply(&reply_key(&pkt), &pkt.segment()) {
        if let Err(verdict) = screen(&pkt) {
            return verdict;
        }
        return to_client::to_client(&ctx, pkt);
    }
    count(Counter::Passed);
    XDP_PASS
}

/// The reverse-NAT key a segment to no VIP carries: (backend, SNAT pair),
/// or for a `gateway` flow (backend, client).
#[inline(always)]
fn reply_key(pkt: &TcpPacket<'_>) -> NatKey {
    NatKey::from_wire(pkt.src_addr(), pkt.src_port(), pkt.dst_addr(), pkt.dst_port())
}

/// A frame to a VIP or the SNAT range is ours to drop; a frame elsewhere
/// passes untouched. When its ports cannot be read (a non-first fragment)
/// the VIP's address alone decides.
#[inline(always)]
fn judge_malformed(frame: &Malformed, cfg: &DataplaneConfig) -> u32 {
    let ours = match frame.dst_port {
        // SAFETY: as in `bg_lb`; only whether an entry exists is read.
        Some(port) => {
            unsafe { SERVICES.get(ServiceKey::from_wire(frame.dst_addr, port, IPPROTO_TCP)) }.is_some()
                || cfg.is_snat_port(frame.dst_addr, port)
        }
        // SAFETY: only whether an entry exists is read.
        None => unsafe { VIP_ADDRESSES.get(frame.dst_addr) }.is_some(),
    };
    if ours {
        count(frame.counter);
        XDP_DROP
    } else {
        count(Counter::Passed);
        XDP_PASS
    }
}

/// Drops what no TCP stack sends (SYN with FIN or RST) and what has run out
/// of hops. What passes has a TTL above 1, for the path to decrement when it
/// forwards.
#[inline(always)]
pub fn screen(pkt: &TcpPacket<'_>) -> Result<(), u32> {
    if flow_state::has_bad_flags(pkt.flags()) {
        count(Counter::BadTcpFlags);
        return Err(XDP_DROP);
    }
    if pkt.ttl() <= 1 {
        return Err(ttl_expired(pkt));
    }
    Ok(())
}

/// A packet whose TTL would reach 0 here. Passing it to the kernel would not
/// make it send ICMP time exceeded: the VIP and the SNAT address are local,
/// so the kernel would deliver it. It is dropped and counted; this is where
/// a time-exceeded reply would be built.
#[inline(always)]
fn ttl_expired(_pkt: &TcpPacket<'_>) -> u32 {
    count(Counter::TtlExpired);
    XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
