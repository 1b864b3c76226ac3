//! The drain deadline's reset for IPv6 flows: `crate::flow_reset`'s program
//! for IPv6 trigger frames. The daemon runs [`bg_lb_flow_reset6`] as it runs
//! `bg_lb_flow_reset`, with the same triggers in IPv6 frames; which flow a
//! trigger names, the RST's numbers and the flow's new state are
//! [`reset_for`]'s, as for IPv4. The RST is written over the trigger (a
//! bare segment, so in place) and routed as the IPv6 path routes any
//! packet.

use aya_ebpf::{bindings::xdp_action::XDP_DROP, macros::xdp, programs::XdpContext};
use bg_lb_common::flow_state::TCP_RST;

use crate::{flow_reset::reset_for, forward::forward6, packet::ipv6::parse_tcp6};

/// An IPv6 trigger frame turned into its RST and sent, or dropped.
#[xdp]
pub fn bg_lb_flow_reset6(ctx: XdpContext) -> u32 {
    let Some(pkt) = parse_tcp6(&ctx) else {
        return XDP_DROP;
    };
    if pkt.flags() != TCP_RST {
        return XDP_DROP;
    }
    let (src, dst) = (
        (pkt.frame.src_addr(), pkt.src_port()),
        (pkt.frame.dst_addr(), pkt.dst_port()),
    );
    let Some(rst) = reset_for(src, dst) else {
        return XDP_DROP;
    };
    match pkt.become_reset(rst.src, rst.dst, (rst.seq, rst.ack)) {
        Some(mut frame) => forward6(&ctx, &mut frame),
        None => XDP_DROP,
    }
}
