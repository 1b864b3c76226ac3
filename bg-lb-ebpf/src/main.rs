//! bg-lb's XDP program: full-NAT layer-4 load balancing with blue/green
//! weighted lookup tables and flow pinning.
//!
//! Paths: client -> VIP:port ([`to_backend`]), backend -> SNAT addr:port
//! ([`to_client`]); everything else passes to the kernel untouched. A
//! flooded service's SYNs get SYN cookies ([`synproxy`], whose jobs are XDP
//! programs of their own, reached by tail call).
#![no_std]
#![no_main]
// The SYN proxy's shared counters need the BPF atomic add (see synproxy).
#![feature(asm_experimental_arch)]

mod forward;
mod maps;
mod nat;
mod packet;
mod rst;
mod synproxy;
mod to_backend;
mod to_client;

use aya_ebpf::{bindings::xdp_action::XDP_PASS, macros::xdp, programs::XdpContext};
use bg_lb_common::{
    counters::Counter,
    maps::{DataplaneConfig, IPPROTO_TCP, ServiceKey},
};

use crate::{
    maps::{CONFIG, SERVICES, count},
    nat::decrement_ttl,
    packet::{NotForUs, TcpPacket, parse_tcp},
};

#[xdp]
pub fn bg_lb(ctx: XdpContext) -> u32 {
    let Some(cfg) = CONFIG.get(0).copied() else {
        return XDP_PASS;
    };
    if cfg.ready == 0 {
        return XDP_PASS;
    }
    let mut pkt = match parse_tcp(&ctx) {
        Ok(pkt) => pkt,
        Err(NotForUs::Other) => {
            count(Counter::Passed);
            return XDP_PASS;
        }
        Err(NotForUs::Unsafe(counter)) => {
            count(counter);
            return XDP_PASS;
        }
    };
    let service_key = ServiceKey {
        addr: pkt.dst_addr(),
        port: pkt.dst_port(),
        proto: IPPROTO_TCP,
        _pad: 0,
    };
    // Copy the service inside the branch: carrying an Option<Service> across
    // branches makes LLVM spill the None case's uninitialised payload, which
    // the verifier rejects.
    // SAFETY: SERVICES is BPF_F_NO_PREALLOC, so a looked-up element stays
    // intact under RCU until the program returns, as aya's `get` requires.
    if let Some(service) = unsafe { SERVICES.get(service_key) } {
        let service = *service;
        if !decrement_ttl(&mut pkt) {
            return ttl_expired();
        }
        return to_backend::to_backend(&ctx, pkt, &service, &cfg);
    }
    if is_snat_reply(&pkt, &cfg) {
        if !decrement_ttl(&mut pkt) {
            return ttl_expired();
        }
        return to_client::to_client(&ctx, &mut pkt);
    }
    count(Counter::Passed);
    XDP_PASS
}

/// Addressed to the SNAT address inside the SNAT port range: a backend reply.
#[inline(always)]
fn is_snat_reply(pkt: &TcpPacket<'_>, cfg: &DataplaneConfig) -> bool {
    let port = u16::from_be(pkt.dst_port());
    pkt.dst_addr() == cfg.snat_addr && port >= cfg.snat_port_min && port <= cfg.snat_port_max
}

/// Left to the kernel, which sends the ICMP time exceeded.
#[inline(always)]
fn ttl_expired() -> u32 {
    count(Counter::TtlExpired);
    XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
