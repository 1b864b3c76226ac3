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

use aya_ebpf::{bindings::xdp_action::XDP_DROP, macros::xdp, programs::XdpContext};
use bg_lb_common::{
    counters::Counter,
    flow_state::{RESET, TCP_ACK, TCP_RST},
    maps::{FlowKey, IPPROTO_TCP, NatKey},
};

use crate::{
    forward::forward,
    maps::{BACKENDS, count, flow_entry, flow_pinned_to, reverse_owner},
    packet::{BareSegment, TcpPacket, parse_tcp},
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
    let Some(rst) = rst_for(&pkt) else {
        return XDP_DROP;
    };
    match pkt.become_segment(&ctx, &rst) {
        Some(mut rst) => forward(&ctx, &mut rst),
        None => XDP_DROP,
    }
}

/// The RST the trigger asks for, its flow marked reset; `None` when the
/// trigger names no flow with a reply path.
#[inline(always)]
fn rst_for(pkt: &TcpPacket<'_>) -> Option<BareSegment> {
    let client_side = FlowKey {
        client_addr: pkt.src_addr(),
        vip_addr: pkt.dst_addr(),
        client_port: pkt.src_port(),
        vip_port: pkt.dst_port(),
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    };
    if let Some(flow) = flow_entry(&client_side) {
        let backend = BACKENDS.get(flow.backend_id)?;
        if backend.generation != flow.backend_gen || !flow.has_reply_path() {
            return None;
        }
        flow.state |= RESET;
        // Once per connection: the client's RST is its other half.
        count(Counter::DeadlineReset);
        return Some(BareSegment {
            src_addr: flow.snat_addr,
            dst_addr: backend.addr,
            src_port: flow.snat_port,
            dst_port: backend.port,
            seq: flow.backend.ack,
            ack: flow.backend.end,
            flags: TCP_RST | TCP_ACK,
            window: 0,
            mss: 0,
        });
    }
    let nat = NatKey {
        backend_addr: pkt.src_addr(),
        snat_addr: pkt.dst_addr(),
        backend_port: pkt.src_port(),
        snat_port: pkt.dst_port(),
    };
    let owner = reverse_owner(&nat)?;
    let flow = flow_pinned_to(&owner, &nat)?;
    if owner.proto != IPPROTO_TCP {
        return None;
    }
    flow.state |= RESET;
    // The client's numbering: a proxied flow's client acknowledged the
    // cookie's sequence space, which is what it expects.
    Some(BareSegment {
        src_addr: owner.vip_addr,
        dst_addr: owner.client_addr,
        src_port: owner.vip_port,
        dst_port: owner.client_port,
        seq: flow.client.ack,
        ack: flow.client.end,
        flags: TCP_RST | TCP_ACK,
        window: 0,
        mss: 0,
    })
}
