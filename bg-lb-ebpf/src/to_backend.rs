//! Client -> VIP path: find or pin the flow's backend, full-NAT it towards
//! the backend (source becomes SNAT addr:port), forward.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, xdp_action::XDP_DROP},
    helpers::bpf_ktime_get_ns,
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use bg_lb_common::{
    counters::Counter,
    flow_hash::flow_hash,
    flow_state::{self, Direction, TCP_SYN},
    maps::{BACKEND_RESET_FLOWS, Backend, DataplaneConfig, Flow, FlowKey, IPPROTO_TCP, NO_BACKEND, NatKey, Service},
    snat_port::{self, SNAT_PORT_ATTEMPTS},
    syn_proxy::Job,
};

use crate::{
    forward::forward,
    maps::{BACKENDS, FLOWS, LOOKUP_TABLES, REVERSE_NAT, Way, account, count, flow_entry},
    nat::{Endpoints, rewrite},
    packet::TcpPacket,
    rst::reply_rst,
    synproxy::{self, ClientStep, Unpinned},
};

#[inline(always)]
pub fn to_backend(ctx: &XdpContext, mut pkt: TcpPacket<'_>, service: &Service, cfg: &DataplaneConfig) -> u32 {
    let key = FlowKey {
        client_addr: pkt.src_addr(),
        vip_addr: pkt.dst_addr(),
        client_port: pkt.src_port(),
        vip_port: pkt.dst_port(),
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let (flow, new_flow) = match pinned_flow(&key, pkt.flags(), now) {
        Some(flow) if flow.proxy != 0 => {
            match synproxy::client_segment(pkt.flags(), pkt.ack_seq(), pkt.payload_len(), &key, &flow) {
                ClientStep::Forward => (flow, false),
                ClientStep::Hold => return synproxy::hand_over(ctx, Job::HoldSegment),
                ClientStep::ResendSyn => return synproxy::hand_over(ctx, Job::ResendSyn),
                ClientStep::Drop => return XDP_DROP,
            }
        }
        Some(flow) => (flow, false),
        None => {
            let proven = match synproxy::unpinned(&pkt, service, now) {
                Unpinned::Usual => false,
                Unpinned::Proven => true,
                Unpinned::Answer => return synproxy::hand_over(ctx, Job::SynAck),
                Unpinned::Drop => return XDP_DROP,
            };
            // A proven cookie opens the flow as its SYN would have.
            let request = if proven { TCP_SYN } else { pkt.flags() };
            match new_flow(&key, request, service, cfg, now) {
                Ok(_) if proven => return synproxy::hand_over(ctx, Job::OpenBackend),
                Ok(flow) => {
                    if flow_state::is_connection_request(request) {
                        synproxy::opened(service, now);
                    }
                    (flow, true)
                }
                Err(Counter::NoBackend) if flow_state::is_connection_request(request) => {
                    count(Counter::Refused);
                    return reply_rst(ctx, pkt);
                }
                Err(counter) => {
                    count(counter);
                    log_drop(ctx, counter);
                    return XDP_DROP;
                }
            }
        }
    };
    let Some(backend) = BACKENDS.get(flow.backend_id) else {
        count(Counter::NoBackend);
        return XDP_DROP;
    };
    if backend.flags & BACKEND_RESET_FLOWS != 0 && !new_flow {
        let _ = FLOWS.remove(key);
        let _ = REVERSE_NAT.remove(nat_key(backend, flow.snat_port));
        count(Counter::FlowReset);
        return reply_rst(ctx, pkt);
    }
    account(&flow, Way::ToBackend, pkt.ip_len(), new_flow);
    rewrite(
        &mut pkt,
        &Endpoints {
            src_addr: cfg.snat_addr,
            src_port: flow.snat_port,
            dst_addr: backend.addr,
            dst_port: backend.port,
            seq_offset: 0,
            ack_offset: synproxy::seq_offset(&flow),
        },
    );
    forward(ctx, &mut pkt)
}

/// Rare capacity failures are worth a log line besides their counter;
/// aya-log carries it to the daemon's log.
#[inline(always)]
fn log_drop(ctx: &XdpContext, counter: Counter) {
    match counter {
        Counter::SnatPortsExhausted => warn!(
            ctx,
            "new flow dropped: no free SNAT port for its backend; widen snat_ports"
        ),
        Counter::FlowInsertFailed => warn!(ctx, "new flow dropped: flow table insert failed"),
        _ => {}
    }
}

/// The flow's pinned entry, updated for this packet, unless there is none or
/// this SYN reuses the 5-tuple of a flow that has ended.
#[inline(always)]
fn pinned_flow(key: &FlowKey, tcp_flags: u8, now: u64) -> Option<Flow> {
    let flow = flow_entry(key)?;
    if flow_state::is_connection_request(tcp_flags) && flow_state::has_ended(flow.state) {
        // Its reverse entry would otherwise hold the old SNAT port until LRU eviction.
        let backend = BACKENDS.get(flow.backend_id)?;
        let _ = REVERSE_NAT.remove(nat_key(backend, flow.snat_port));
        return None;
    }
    flow.state = flow_state::advance(flow.state, tcp_flags, Direction::FromClient);
    flow.last_seen_ns = now;
    Some(*flow)
}

#[inline(always)]
fn nat_key(backend: &Backend, snat_port: u16) -> NatKey {
    NatKey {
        backend_addr: backend.addr,
        backend_port: backend.port,
        snat_port,
    }
}

/// Picks a backend from the service's lookup table. A SYN pins the choice
/// (flow entry plus a reverse-NAT entry owning a unique SNAT port); any other
/// packet of an unknown flow is forwarded statelessly, as Maglev does.
#[inline(always)]
fn new_flow(key: &FlowKey, tcp_flags: u8, service: &Service, cfg: &DataplaneConfig, now: u64) -> Result<Flow, Counter> {
    let hash = flow_hash(key);
    let slot = hash.checked_rem(service.lut_size).ok_or(Counter::NoBackend)?;
    let backend_id = *LOOKUP_TABLES
        .get(service.lut_base.wrapping_add(slot))
        .ok_or(Counter::NoBackend)?;
    if backend_id == NO_BACKEND {
        return Err(Counter::NoBackend);
    }
    let backend = BACKENDS.get(backend_id).ok_or(Counter::NoBackend)?;
    let mut flow = Flow {
        backend_id,
        service_id: service.id,
        snat_port: 0,
        _pad: 0,
        state: flow_state::initial(tcp_flags),
        created_ns: now,
        last_seen_ns: now,
        proxy: synproxy::new_flow_bits(service),
        ..Flow::default()
    };
    if !flow_state::is_connection_request(tcp_flags) {
        count(Counter::UnpinnedForwarded);
        flow.snat_port = snat_port::candidate(hash, 0, cfg.snat_port_min, cfg.snat_port_max).to_be();
        return Ok(flow);
    }
    flow.snat_port = claim_snat_port(key, hash, backend, cfg)?;
    if FLOWS.insert(key, flow, BPF_ANY as u64).is_err() {
        let _ = REVERSE_NAT.remove(nat_key(backend, flow.snat_port));
        return Err(Counter::FlowInsertFailed);
    }
    Ok(flow)
}

/// Claims the first free SNAT port (wire order) for this backend. NOEXIST
/// makes the claim atomic, so two CPUs never hand out the same port.
#[inline(always)]
fn claim_snat_port(key: &FlowKey, hash: u32, backend: &Backend, cfg: &DataplaneConfig) -> Result<u16, Counter> {
    for attempt in 0..SNAT_PORT_ATTEMPTS {
        let port = snat_port::candidate(hash, attempt, cfg.snat_port_min, cfg.snat_port_max).to_be();
        if REVERSE_NAT
            .insert(nat_key(backend, port), key, BPF_NOEXIST as u64)
            .is_ok()
        {
            return Ok(port);
        }
    }
    Err(Counter::SnatPortsExhausted)
}
