//! Backend -> SNAT address path: translate a reply back to VIP -> client.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_ns,
    programs::XdpContext,
};
use bg_lb_common::{
    counters::Counter,
    flow_state::{self, Direction},
    maps::NatKey,
    syn_proxy::Job,
};

use crate::{
    forward::forward,
    maps::{REVERSE_NAT, Way, account, account_signal, count, flow_entry},
    nat::{Endpoints, rewrite},
    packet::TcpPacket,
    synproxy::{self, BackendStep},
};

#[inline(always)]
pub fn to_client(ctx: &XdpContext, pkt: &mut TcpPacket<'_>) -> u32 {
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
    let mut seq_offset = 0;
    if let Some(flow) = flow_entry(&client) {
        if flow.proxy != 0 {
            match synproxy::backend_segment(pkt.flags(), pkt.seq(), flow) {
                BackendStep::Forward(offset) => seq_offset = offset,
                BackendStep::Absorb => return synproxy::hand_over(ctx, Job::AckToBackend),
                BackendStep::Drop => return XDP_DROP,
            }
        }
        account_signal(flow, flow_state::backend_signal(flow.state, pkt.flags()));
        flow.state = flow_state::advance(flow.state, pkt.flags(), Direction::FromBackend);
        // SAFETY: a helper without arguments.
        flow.last_seen_ns = unsafe { bpf_ktime_get_ns() };
        account(flow, Way::ToClient, pkt.ip_len(), false);
    }
    rewrite(
        pkt,
        &Endpoints {
            src_addr: client.vip_addr,
            src_port: client.vip_port,
            dst_addr: client.client_addr,
            dst_port: client.client_port,
            seq_offset,
            ack_offset: 0,
        },
    );
    forward(ctx, pkt)
}
