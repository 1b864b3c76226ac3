//! Ends an open flow at both ends: the drain deadline's reset. Not attached
//! to any interface: the daemon runs [`bg_lb_flow_reset`] through
//! `BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` on its interface, with
//! one trigger frame per end. A trigger is a bare RST shaped as a segment
//! of the flow that one end could have sent: client -> VIP:port asks for
//! the backend's RST, backend -> its SNAT (under `gateway`: client) address
//! and port asks for the client's. The program finds the flow, writes the
//! RST with the sequence number its receiver last acknowledged (its
//! RCV.NXT, which RFC 5961 and Linux require exactly: the flow's
//! per-direction sequence state), marks the flow reset, and sends it as
//! the data plane sends any packet (route lookup, XDP_TX or redirect).
//!
//! Why here and not from a raw socket: the sequence numbers are read when
//! the RST leaves, not when userspace last looked (a flow still sending
//! moves them), the frame takes the data plane's own route and MACs
//! (two-arm, `gateway`), and the flow's state changes in the same step.
//! A `dsr` flow is left alone: the LB never sees its backend's numbers.
//!
//! Which flow a trigger names and what its RST says is the same for both
//! families ([`reset_for`]); IPv6 triggers go to `bg_lb_flow_reset6`
//! (`crate::ipv6_flow_reset`), which writes and routes an IPv6 RST.

use aya_ebpf::{bindings::xdp_action::XDP_DROP, macros::xdp, programs::XdpContext};
use bg_lb_common::{
    counters::Counter,
    flow_state::{RESET, TCP_ACK, TCP_RST},
    maps::{FlowKeyOf, IPPROTO_TCP, NatKeyOf},
};

use crate::{
    forward::forward,
    maps::{FamilyMaps, count, flow_entry, flow_pinned_to, reverse_owner},
    packet::{BareSegment, parse_tcp},
};

/// A trigger frame turned into its RST and sent, or dropped.
#[xdp]
pub fn bg_lb_flow_reset(ctx: XdpContext) -> u32 {
    let Ok(pkt) = parse_tcp(&ctx) else {
        return XDP_DROP;
    };
    if pkt.flags() != TCP_RST {
        return XDP_DROP;
    }
    let Some(rst) = reset_for((pkt.src_addr(), pkt.src_port()), (pkt.dst_addr(), pkt.dst_port())) else {
        return XDP_DROP;
    };
    let rst = BareSegment {
        src_addr: rst.src.0,
        dst_addr: rst.dst.0,
        src_port: rst.src.1,
        dst_port: rst.dst.1,
        seq: rst.seq,
        ack: rst.ack,
        flags: TCP_RST | TCP_ACK,
        window: 0,
        mss: 0,
    };
    match pkt.become_segment(&ctx, &rst) {
        Some(mut rst) => forward(&ctx, &mut rst),
        None => XDP_DROP,
    }
}

/// The RST (with ACK, window 0) a trigger asks for: its endpoints (wire
/// order) and sequence numbers.
pub struct Reset<A> {
    pub src: (A, u16),
    pub dst: (A, u16),
    pub seq: u32,
    pub ack: u32,
}

/// The RST a trigger from `src` to `dst` asks for, its flow marked reset;
/// `None` when the trigger names no flow with a reply path.
#[inline(always)]
pub fn reset_for<A: FamilyMaps>(src: (A, u16), dst: (A, u16)) -> Option<Reset<A>> {
    let client_side = FlowKeyOf::from_wire(src.0, src.1, dst.0, dst.1);
    if let Some(flow) = flow_entry(&client_side) {
        let backend = A::backends().get(flow.backend_id)?;
        if backend.generation != flow.backend_gen || !flow.has_reply_path() {
            return None;
        }
        flow.state |= RESET;
        // Once per connection: the client's RST is its other half.
        count(Counter::DeadlineReset);
        return Some(Reset {
            src: (flow.snat_addr, flow.snat_port),
            dst: (backend.addr, backend.port),
            seq: flow.backend.ack,
            ack: flow.backend.end,
        });
    }
    let nat = NatKeyOf::from_wire(src.0, src.1, dst.0, dst.1);
    let owner = reverse_owner(&nat)?;
    let flow = flow_pinned_to(&owner, &nat)?;
    if owner.proto != IPPROTO_TCP {
        return None;
    }
    flow.state |= RESET;
    // The client's numbering: a proxied flow's client acknowledged the
    // cookie's sequence space, which is what it expects.
    Some(Reset {
        src: (owner.vip_addr, owner.vip_port),
        dst: (owner.client_addr, owner.client_port),
        seq: flow.client.ack,
        ack: flow.client.end,
    })
}
