//! Backend -> SNAT address path: translate a reply back to VIP -> client,
//! but only for the flow that owns its (backend, SNAT port): a reverse-NAT
//! entry whose flow was evicted, or names another backend or port, or a
//! segment that flow's backend cannot have sent, never reaches a client.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_ns,
    programs::XdpContext,
};
use bg_lb_common::{
    counters::Counter,
    flow_state::{self, Direction},
    maps::NatKey,
};

use crate::{
    forward::forward,
    maps::{BACKENDS, REVERSE_NAT, Way, account, account_event, count, flow_entry},
    nat::{Endpoints, decrement_ttl, rewrite},
    packet::TcpPacket,
};

#[inline(always)]
pub fn to_client(ctx: &XdpContext, mut pkt: TcpPacket<'_>) -> u32 {
    let nat = NatKey {
        backend_addr: pkt.src_addr(),
        backend_port: pkt.src_port(),
        snat_port: pkt.dst_port(),
    };
    // SAFETY: copied at once. REVERSE_NAT is preallocated: should the entry be
    // removed and its slot reused meanwhile, the copy may show the new entry,
    // a race every preallocated BPF hash map has.
    let Some(client) = (unsafe { REVERSE_NAT.get(nat) }).copied() else {
        count(Counter::ReplyWithoutFlow);
        return XDP_PASS;
    };
    let Some(flow) = flow_entry(&client) else {
        count(Counter::StaleReply);
        return XDP_DROP;
    };
    let Some(backend) = BACKENDS.get(flow.backend_id) else {
        count(Counter::StaleReply);
        return XDP_DROP;
    };
    let seg = pkt.segment();
    if backend.generation != flow.backend_gen
        || NatKey::new(backend, flow.snat_port) != nat
        || !flow_state::backend_may_send(flow.state, &seg)
    {
        count(Counter::StaleReply);
        return XDP_DROP;
    }
    let event = flow_state::advance(flow, Direction::FromBackend, &seg);
    account_event(flow.backend_id, event);
    if flow_state::backend_keeps_alive(flow.state) {
        // SAFETY: a helper without arguments.
        flow.last_seen_ns = unsafe { bpf_ktime_get_ns() };
    }
    account(flow.backend_id, flow.service_id, Way::ToClient, pkt.ip_len(), false);
    decrement_ttl(&mut pkt);
    rewrite(
        &mut pkt,
        &Endpoints {
            src_addr: client.vip_addr,
            src_port: client.vip_port,
            dst_addr: client.client_addr,
            dst_port: client.client_port,
        },
    );
    forward(ctx, &mut pkt)
}
