//! The per-service forwarding modes besides full NAT
//! ([`Service::forwarding`]); the client -> VIP path ([`to_backend`]) and
//! the reply path ([`to_client`]) stay one each, and ask here where a mode
//! differs.
//!
//! - `gateway`: a flow's "SNAT" source is the client's own address and
//!   port, so the rewrite changes the destination only, and the flow's
//!   reverse-NAT key is what the backend's reply carries (backend ->
//!   client). Two VIPs' flows from one client address and port to one
//!   backend address and port would share that key: the backend could not
//!   tell them apart. The second flow's SYN is refused with a RST and
//!   counted (`gateway_collision`); picking another backend would break the
//!   lookup table's ratio and pinning for a case a client's next port ends.
//!   The same 5-tuple's new SYN after its flow ended is no collision: it
//!   takes the entry back (`port_takeover`), and the backend's TIME_WAIT
//!   and the client's stack settle it, as without a load balancer.
//! - `dsr`: no reverse entry and no rewrite; the frame goes to the backend's
//!   MAC, which must be on-link. Replies bypass the LB, so the flow's state
//!   follows the client alone ([`advance_dsr`]).
//!
//! A flow keeps the mode it was opened in ([`Flow::forwarding`]), whatever
//! a reload makes of its service.

use aya_ebpf::programs::XdpContext;
use bg_lb_common::{
    counters::Counter,
    flow_state::{
        self, Direction, Event, FIN_FROM_BACKEND, FIN_FROM_CLIENT, SYN_ACK_SEEN, SYN_SEEN, Segment, TCP_ACK, TCP_FIN,
        TCP_SYN,
    },
    gateway,
    maps::{Backend, DataplaneConfig, FORWARDING_GATEWAY, FlowKeyOf, FlowOf, IPPROTO_TCP, NatKeyOf, Service, WireAddr},
};

use crate::{
    forward::forward_to,
    maps::{FamilyMaps, flow_pinned_to, reverse_owner},
    packet::TcpPacket,
    synproxy,
};

/// Candidate `attempt` for a new flow's source (address, port), wire order:
/// a SNAT pair, or for `gateway` the client's own (one candidate only).
/// None without a SNAT address of the flow's family (config validation
/// wants one where the family has a VIP).
#[inline(always)]
pub fn source<A: WireAddr>(
    service: &Service,
    key: &FlowKeyOf<A>,
    cfg: &DataplaneConfig,
    hash: u32,
    attempt: u32,
) -> Option<(A, u16)> {
    if service.forwarding == FORWARDING_GATEWAY {
        return (attempt == 0).then_some((key.client_addr, key.client_port));
    }
    cfg.has_snat::<A>().then(|| cfg.snat_candidate_of(hash, attempt))
}

/// What a SYN that found no free source is counted as.
#[inline(always)]
pub const fn no_source(service: &Service) -> Counter {
    if service.forwarding == FORWARDING_GATEWAY {
        Counter::GatewayCollision
    } else {
        Counter::SnatPortsExhausted
    }
}

/// What a UDP datagram opening a flow that found no free source is counted
/// as: dropped, where a SYN is refused.
#[inline(always)]
pub const fn no_udp_source(service: &Service) -> Counter {
    if service.forwarding == FORWARDING_GATEWAY {
        Counter::UdpGatewayCollision
    } else {
        Counter::UdpSnatPortsExhausted
    }
}

/// Whether a TCP segment to no VIP or SNAT address, carrying the reverse-NAT
/// key `nat` (its source, then its destination) and `seg`, is a backend's
/// reply to a `gateway` flow's client: its (backend, client) key names a TCP
/// flow pinned to it, whose connection it belongs to. Anything else (the
/// host's own traffic included) passes untouched. A later connection from
/// the same client address and port to the backend that does not go
/// through a VIP is not the flow's: neither when the entry's flow is gone
/// (the sweep leaves a live backend's entries for the port lifecycle to
/// take over) nor when the flow has ended and lingers
/// ([`gateway::owns_backend_segment`]). Either family's.
#[inline(always)]
pub fn is_gateway_reply<A: FamilyMaps>(nat: &NatKeyOf<A>, seg: &Segment) -> bool {
    // A UDP flow's key is no TCP segment's (see `crate::udp`).
    reverse_owner(nat).is_some_and(|owner| {
        owner.proto == IPPROTO_TCP
            && flow_pinned_to(&owner, nat).is_some_and(|flow| {
                let seg = Segment {
                    seq: seg.seq.wrapping_sub(synproxy::seq_offset(flow)),
                    ..*seg
                };
                gateway::owns_backend_segment(flow, &seg)
            })
    })
}

/// Takes a `dsr` flow's client segment into its state, with what the
/// segment shows of the backend's side, which the LB never sees:
/// - an ACK before the handshake is done acknowledges the backend's SYN-ACK,
///   taken in as ending at the acknowledged number (the LB cannot check an
///   ISN it never saw), so the ACK establishes the flow as in the other
///   modes;
/// - the client's FIN ends the flow as both FINs would: after it only the
///   client's last ACKs normally follow, which the flow, lingering for the
///   closing timeout, still forwards. (A backend that goes on sending after
///   the client's FIN is acknowledged through a flow the sweep may remove:
///   the README says so.)
#[inline(always)]
pub fn advance_dsr<A: WireAddr>(flow: &mut FlowOf<A>, seg: &Segment) -> Event {
    if flow.state & (SYN_SEEN | SYN_ACK_SEEN) == SYN_SEEN && seg.flags & (TCP_SYN | TCP_ACK) == TCP_ACK {
        let syn_ack = Segment {
            flags: TCP_SYN | TCP_ACK,
            seq: seg.ack.wrapping_sub(1),
            ack: flow.client.end,
            payload_len: 0,
        };
        flow_state::advance(flow, Direction::FromBackend, &syn_ack);
    }
    let event = flow_state::advance(flow, Direction::FromClient, seg);
    if flow.state & (FIN_FROM_CLIENT | FIN_FROM_BACKEND) == FIN_FROM_CLIENT {
        let fin = Segment {
            flags: TCP_FIN | TCP_ACK,
            seq: flow.backend.end,
            ack: flow.client.end,
            payload_len: 0,
        };
        flow_state::advance(flow, Direction::FromBackend, &fin);
    }
    event
}

/// Sends a `dsr` packet unchanged but for its MACs to `backend`, which must
/// be on-link (else dropped, `dsr_not_on_link`).
#[inline(always)]
pub fn to_backend_mac(ctx: &XdpContext, pkt: &mut TcpPacket<'_>, backend: &Backend) -> u32 {
    forward_to(ctx, pkt, backend.addr, true)
}
