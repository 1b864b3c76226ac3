//! Helper XDP programs kept out of the load balancer's object.
#![no_std]
#![no_main]

// Shared with the load balancer so the baseline parses exactly as it does;
// this object uses only part of it.
#[expect(dead_code, reason = "the baseline uses only parse_tcp and the MAC addresses")]
mod packet;

use aya_ebpf::{
    bindings::xdp_action::{XDP_PASS, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};

/// Lets native-mode XDP_TX/REDIRECT frames reach a veth peer: the veth driver
/// only delivers them to a peer that runs an XDP program.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Micro-benchmark baseline, the practical limit: parse Ethernet/IPv4/TCP as
/// the load balancer does, swap MACs and bounce with XDP_TX.
#[xdp]
pub fn xdp_bounce(ctx: XdpContext) -> u32 {
    let Ok(mut pkt) = packet::parse_tcp(&ctx) else {
        return XDP_PASS;
    };
    pkt.swap_macs();
    XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
