//! Backend -> SNAT address path: translate a reply back to VIP -> client,
//! but only for the flow that owns its (backend, SNAT address and port): a
//! reverse-NAT entry whose flow was evicted, or names another backend,
//! address or port, or a segment that flow's backend cannot have sent (such
//! as a straggler of the older connection whose port a new flow took over),
//! never reaches a client.
//!
//! A SYN-proxied flow's backend numbers its bytes from its own ISN, the
//! client from the cookie: the flow tracks the backend side in the client's
//! numbering (the backend's sequence numbers less `seq_delta`), so both
//! sides' state compares numbers of one space. Its backend's SYN-ACK is the
//! proxy's to answer ([`synproxy`]).

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_coarse_ns,
    programs::XdpContext,
};
use bg_lb_common::{
    counters::Counter,
    flow_state::{self, Direction, Segment},
    maps::{FlowOf, IPPROTO_TCP, NatKey, WireAddr},
    syn_proxy::Job,
};

use crate::{
    forward::forward,
    maps::{Way, account, account_event, count, flow_pinned_to, reverse_owner},
    nat::{Endpoints, decrement_ttl, rewrite},
    packet::TcpPacket,
    synproxy::{self, BackendStep},
};

/// A segment `seg` from `flow`'s backend, on the reply path of either
/// family: the flow's state takes it, after the SYN proxy's step (the
/// backend's SYN-ACK to the proxy's SYN goes to `ack_job`). The offset to
/// subtract from its sequence number, or the verdict that ends it here.
#[inline(always)]
pub(crate) fn backend_sent<A: WireAddr>(
    ctx: &XdpContext,
    flow: &mut FlowOf<A>,
    mut seg: Segment,
    to_group_mac: impl Fn() -> bool,
    ack_job: Job,
) -> Result<u32, u32> {
    // Before the flow's own SYN is answered, the port's previous connection
    // may still send (the flow took its port over): none of it reaches
    // this client.
    if !flow_state::backend_may_send(flow, &seg) {
        count(Counter::StaleReply);
        return Err(XDP_DROP);
    }
    let mut seq_offset = 0;
    if flow.proxy != 0 {
        match synproxy::backend_segment(seg.flags, seg.seq, flow) {
            BackendStep::Forward(offset) => seq_offset = offset,
            // Answered from the MAC it was sent to: never a group's.
            BackendStep::Absorb if to_group_mac() => return Err(XDP_DROP),
            BackendStep::Absorb => return Err(synproxy::hand_over(ctx, ack_job)),
            BackendStep::Drop => return Err(XDP_DROP),
        }
        seg.seq = seg.seq.wrapping_sub(seq_offset);
    }
    let event = flow_state::advance(flow, Direction::FromBackend, &seg);
    account_event(flow.backend_id, event);
    if flow_state::backend_keeps_alive(flow.state) {
        // SAFETY: a helper without arguments. Coarse, as on the client's
        // side (see to_backend).
        flow.last_seen_ns = unsafe { bpf_ktime_get_coarse_ns() };
    }
    Ok(seq_offset)
}

#[inline(always)]
pub fn to_client(ctx: &XdpContext, mut pkt: TcpPacket<'_>) -> u32 {
    let nat = NatKey {
        backend_addr: pkt.src_addr(),
        snat_addr: pkt.dst_addr(),
        backend_port: pkt.src_port(),
        snat_port: pkt.dst_port(),
    };
    // A pair a UDP flow holds is no TCP flow's: the kernel's, as for none.
    let Some(client) = reverse_owner(&nat).filter(|owner| owner.proto == IPPROTO_TCP) else {
        count(Counter::ReplyWithoutFlow);
        return XDP_PASS;
    };
    let Some(flow) = flow_pinned_to(&client, &nat) else {
        count(Counter::StaleReply);
        return XDP_DROP;
    };
    let seq_offset = match backend_sent(ctx, flow, pkt.segment(), || pkt.to_group_mac(), Job::AckToBackend) {
        Ok(offset) => offset,
        Err(verdict) => return verdict,
    };
    account(flow.backend_id, flow.service_id, Way::ToClient, pkt.ip_len(), false);
    decrement_ttl(&mut pkt);
    rewrite(
        &mut pkt,
        &Endpoints {
            src_addr: client.vip_addr,
            src_port: client.vip_port,
            dst_addr: client.client_addr,
            dst_port: client.client_port,
            seq_offset,
            ack_offset: 0,
        },
    );
    forward(ctx, &mut pkt)
}
