//! UDP over IPv4: client -> VIP:port datagrams pinned to a backend by their
//! 5-tuple, and the backend's replies translated back, in each forwarding
//! mode as TCP has it ([`crate::forwarding`]): full NAT (sent from a SNAT
//! (address, port)), `gateway` (the destination rewritten only; the
//! backend's reply, routed through the LB to the client's own address and
//! port, leaves from the VIP) and `dsr` (the frame sent on to the on-link
//! backend's MAC, untouched; replies bypass the LB).
//!
//! A UDP flow has no handshake: any datagram of an unknown 5-tuple opens
//! one, and it stays pinned (a ratio change never moves it) until the
//! daemon's sweep finds it idle for its service's `udp_idle`. Its SNAT
//! pair comes from the backend's budget like a TCP flow's, in the same
//! reverse-NAT key space, claimed with NOEXIST only (a free pair; no
//! takeover: UDP has no TIME_WAIT to honour), and each reply path
//! translates only for an owner of its own protocol. A `gateway` flow
//! claims the client's own (address, port) there, so a second flow with the
//! same (client, backend) key, of another VIP or of TCP, is a collision
//! (`udp_gateway_collision`): its datagram is dropped. A `dsr` flow claims
//! nothing. The
//! checksum is updated incrementally; a datagram sent without one keeps
//! none.
//!
//! The path is an XDP program of its own, [`bg_lb_udp`], which the load
//! balancer tail-calls for every IPv4 UDP frame (through the SYN proxy's
//! job array, [`Job::Udp`](bg_lb_common::syn_proxy::Job::Udp)): inlined, its stack would push the TCP
//! program's past the verifier's limit.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, xdp_action::XDP_PASS},
    helpers::bpf_ktime_get_ns,
    macros::xdp,
    programs::XdpContext,
};
use bg_lb_common::{
    checksum::replace32,
    counters::Counter,
    flow_hash::flow_hash,
    maps::{
        BACKEND_RESET_FLOWS, BackendOf, DataplaneConfig, FORWARDING_DSR, FORWARDING_FULL_NAT, FlowKey, FlowKeyOf,
        FlowOf, IPPROTO_UDP, NatKey, NatKeyOf, NatOwnerOf, Service, ServiceKey,
    },
    snat_port::SNAT_PORT_ATTEMPTS,
    udp::{UDP_FLOW_STATE, UdpRewrite, nat_check},
};

use crate::{
    forward::{dropped, forward_to},
    forwarding,
    maps::{
        CONFIG, FamilyMaps, SERVICES, Way, account, account_exhausted, count, flow_entry, flow_pinned_to, reverse_owner,
    },
    nat::decrement_ttl,
    packet::udp::{UdpPacket, Unusable, parse_udp, unusable},
    pick::pick_backend,
    to_backend::owns_port,
};

/// [`Job::Udp`](bg_lb_common::syn_proxy::Job::Udp): an IPv4 UDP frame ([`crate::packet::NotForUs::Udp`]): to a
/// UDP service, a reply to a SNAT port, or the kernel's.
#[xdp]
pub fn bg_lb_udp(ctx: XdpContext) -> u32 {
    // The load balancer found it ready before it handed the frame over.
    let Some(cfg) = CONFIG.get(0) else {
        return XDP_PASS;
    };
    udp(&ctx, cfg)
}

#[inline(always)]
fn udp(ctx: &XdpContext, cfg: &DataplaneConfig) -> u32 {
    let Some(pkt) = parse_udp(ctx) else {
        return judge_unusable(&unusable(ctx), cfg);
    };
    // SAFETY: as in `bg_lb`: SERVICES is BPF_F_NO_PREALLOC; copied at once.
    if let Some(service) = unsafe { SERVICES.get(ServiceKey::from_wire(pkt.dst_addr(), pkt.dst_port(), IPPROTO_UDP)) } {
        let service = *service;
        if pkt.ttl() <= 1 {
            return dropped(Counter::TtlExpired);
        }
        return to_backend(ctx, pkt, &service, cfg);
    }
    if cfg.is_snat_port(pkt.dst_addr(), pkt.dst_port()) {
        if pkt.ttl() <= 1 {
            return dropped(Counter::TtlExpired);
        }
        return to_client(ctx, pkt);
    }
    // As on the TCP path: a gateway reply costs one extra lookup, and none
    // is made where no gateway service ever was.
    if cfg.gateway_seen != 0 && is_gateway_reply(&reply_key(&pkt)) {
        if pkt.ttl() <= 1 {
            return dropped(Counter::TtlExpired);
        }
        return to_client(ctx, pkt);
    }
    count(Counter::Passed);
    XDP_PASS
}

/// Whether a datagram to no VIP or SNAT address, carrying the reverse-NAT
/// key `nat`, is a backend's reply to a `gateway` UDP flow's client: its
/// (backend, client) key names a UDP flow pinned to it. Anything else (the
/// backend's own datagrams to the client included) passes untouched. Either
/// family's.
#[inline(always)]
pub fn is_gateway_reply<A: FamilyMaps>(nat: &NatKeyOf<A>) -> bool {
    reverse_owner(nat).is_some_and(|owner| owner.proto == IPPROTO_UDP && flow_pinned_to(&owner, nat).is_some())
}

/// The reverse-NAT key a backend's datagram carries: (backend, SNAT pair),
/// or for a `gateway` flow (backend, client).
#[inline(always)]
fn reply_key(pkt: &UdpPacket<'_>) -> NatKey {
    NatKey {
        backend_addr: pkt.src_addr(),
        snat_addr: pkt.dst_addr(),
        backend_port: pkt.src_port(),
        snat_port: pkt.dst_port(),
    }
}

/// A UDP frame that cannot be rewritten (IP options, a fragment, lengths
/// that disagree): dropped and counted if it goes to a UDP service or the
/// SNAT range, else passed. A fragment without the UDP header passes: the
/// kernel cannot reassemble it without the first, which was dropped.
#[inline(always)]
fn judge_unusable(frame: &Unusable, cfg: &DataplaneConfig) -> u32 {
    let ours = frame.dst_port.is_some_and(|port| {
        // SAFETY: only whether an entry exists is read.
        unsafe { SERVICES.get(ServiceKey::from_wire(frame.dst_addr, port, IPPROTO_UDP)) }.is_some()
            || cfg.is_snat_port(frame.dst_addr, port)
    });
    if !ours {
        count(Counter::Passed);
        return XDP_PASS;
    }
    dropped(if frame.fragmented {
        Counter::Fragmented
    } else {
        Counter::Truncated
    })
}

/// Where a datagram goes: its flow's ids, source pair and backend. Generic
/// over the address family, as the flow logic below is: the IPv6 path
/// ([`crate::ipv6`]) shares it.
pub struct Pinned<A: FamilyMaps> {
    pub backend_id: u32,
    pub service_id: u32,
    /// The SNAT pair, the client's own (`gateway`), or none (`dsr`).
    pub snat_addr: A,
    pub snat_port: u16,
    pub backend: BackendOf<A>,
    /// Opened by this datagram.
    pub new: bool,
    /// The flow's mode rewrites addresses (full NAT, gateway), else only
    /// MACs (dsr): the mode it was opened in.
    pub reply_path: bool,
}

#[inline(always)]
fn to_backend(ctx: &XdpContext, mut pkt: UdpPacket<'_>, service: &Service, cfg: &DataplaneConfig) -> u32 {
    let key = FlowKey {
        client_addr: pkt.src_addr(),
        vip_addr: pkt.dst_addr(),
        client_port: pkt.src_port(),
        vip_port: pkt.dst_port(),
        proto: IPPROTO_UDP,
        _pad: [0; 3],
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let flow = match pin(&key, service, cfg, now) {
        Ok(flow) => flow,
        Err(counter) => return dropped(counter),
    };
    account(flow.backend_id, flow.service_id, Way::ToBackend, pkt.ip_len(), flow.new);
    if !flow.reply_path {
        // `dsr`: unchanged but for its MACs, to the backend itself, which
        // must be on-link.
        return forward_to(ctx, &mut pkt, flow.backend.addr, true);
    }
    decrement_ttl(&mut pkt);
    rewrite(
        &mut pkt,
        (flow.snat_addr, flow.snat_port),
        (flow.backend.addr, flow.backend.port),
    );
    let dst_addr = pkt.dst_addr();
    forward_to(ctx, &mut pkt, dst_addr, false)
}

/// The 5-tuple's flow: its pinned one if it may still be used, else a new
/// one (or why none could be opened). `now`: the clock.
#[inline(always)]
pub fn pin<A: FamilyMaps>(
    key: &FlowKeyOf<A>,
    service: &Service,
    cfg: &DataplaneConfig,
    now: u64,
) -> Result<Pinned<A>, Counter> {
    match pinned(key, service, cfg.nat_epoch, now) {
        Some(flow) => Ok(flow),
        None => new_flow(key, service, cfg, now),
    }
}

/// The 5-tuple's pinned flow, refreshed, if it may still be used: its
/// backend id names the backend it was pinned to, of this service, which
/// is not resetting its flows, and its source pair (none under `dsr`) is
/// still its own. A flow that may not is removed, and the datagram opens a
/// new one.
#[inline(always)]
pub fn pinned<A: FamilyMaps>(key: &FlowKeyOf<A>, service: &Service, nat_epoch: u32, now: u64) -> Option<Pinned<A>> {
    let flow = flow_entry(key)?;
    let backend = A::backends().get(flow.backend_id).copied()?;
    let current = backend.generation == flow.backend_gen && flow.service_id == service.id;
    let unusable = if !current {
        // Its reverse entry names the old backend, whose address is unknown
        // here: the sweep removes it.
        Some(None)
    } else if backend.flags & BACKEND_RESET_FLOWS != 0 {
        // Its backend is down: the flow moves, and its pair is free again.
        let _ = A::reverse_nat().remove(flow.nat_key(&backend));
        Some(Some(Counter::FlowReset))
    } else if flow.has_reply_path() && flow.nat_epoch != nat_epoch && !owns_port(key, &flow.nat_key(&backend)) {
        Some(Some(Counter::NatConflict))
    } else {
        None
    };
    if let Some(counter) = unusable {
        let _ = A::flows().remove(key);
        if let Some(counter) = counter {
            count(counter);
        }
        return None;
    }
    flow.nat_epoch = nat_epoch;
    flow.last_seen_ns = now;
    Some(Pinned {
        backend_id: flow.backend_id,
        service_id: flow.service_id,
        snat_addr: flow.snat_addr,
        snat_port: flow.snat_port,
        backend,
        new: false,
        reply_path: flow.has_reply_path(),
    })
}

/// Pins a new flow: a backend from the service's lookup table, and for it
/// the first free SNAT pair, or the client's own pair (`gateway`), or none
/// (`dsr`).
#[inline(always)]
pub fn new_flow<A: FamilyMaps>(
    key: &FlowKeyOf<A>,
    service: &Service,
    cfg: &DataplaneConfig,
    now: u64,
) -> Result<Pinned<A>, Counter> {
    let hash = flow_hash(key);
    let (backend_id, backend) = pick_backend(service, key, hash)?;
    let (snat_addr, snat_port) = if service.forwarding == FORWARDING_DSR {
        (A::default(), 0)
    } else {
        claim_source(key, hash, &backend, service, cfg, now).ok_or_else(|| {
            if service.forwarding == FORWARDING_FULL_NAT {
                account_exhausted(backend_id);
            }
            forwarding::no_udp_source(service)
        })?
    };
    let flow = FlowOf {
        backend_id,
        service_id: service.id,
        snat_addr,
        snat_port,
        // A mode is below 3: the cast keeps it.
        forwarding: service.forwarding,
        state: UDP_FLOW_STATE,
        created_ns: now,
        last_seen_ns: now,
        backend_gen: backend.generation,
        nat_epoch: cfg.nat_epoch,
        ..FlowOf::default()
    };
    if A::flows().insert(key, flow, BPF_ANY as u64).is_err() {
        let _ = A::reverse_nat().remove(flow.nat_key(&backend));
        return Err(Counter::FlowInsertFailed);
    }
    Ok(Pinned {
        backend_id,
        service_id: service.id,
        snat_addr,
        snat_port,
        backend,
        new: true,
        reply_path: flow.has_reply_path(),
    })
}

/// The first source candidate ([`forwarding::source`]: a SNAT pair, or
/// the client's own) no flow holds for `backend`, claimed atomically
/// (NOEXIST), both wire order.
#[inline(always)]
fn claim_source<A: FamilyMaps>(
    key: &FlowKeyOf<A>,
    hash: u32,
    backend: &BackendOf<A>,
    service: &Service,
    cfg: &DataplaneConfig,
    now: u64,
) -> Option<(A, u16)> {
    for attempt in 0..SNAT_PORT_ATTEMPTS {
        let (addr, port) = forwarding::source(service, key, cfg, hash, attempt)?;
        let claimed = A::reverse_nat()
            .insert(
                NatKeyOf::new(backend, addr, port),
                NatOwnerOf::new(*key, now),
                BPF_NOEXIST as u64,
            )
            .is_ok();
        if claimed {
            return Some((addr, port));
        }
    }
    None
}

/// Backend -> SNAT pair (or, `gateway`, backend -> client): back to VIP ->
/// client, for the flow that owns the pair only.
#[inline(always)]
fn to_client(ctx: &XdpContext, mut pkt: UdpPacket<'_>) -> u32 {
    let nat = reply_key(&pkt);
    // A pair a TCP flow holds is no UDP flow's: the kernel's, as for none.
    let Some(client) = reverse_owner(&nat).filter(|owner| owner.proto == IPPROTO_UDP) else {
        count(Counter::ReplyWithoutFlow);
        return XDP_PASS;
    };
    let Some(flow) = flow_pinned_to(&client, &nat) else {
        return dropped(Counter::StaleReply);
    };
    // SAFETY: a helper without arguments.
    flow.last_seen_ns = unsafe { bpf_ktime_get_ns() };
    account(flow.backend_id, flow.service_id, Way::ToClient, pkt.ip_len(), false);
    decrement_ttl(&mut pkt);
    rewrite(
        &mut pkt,
        (client.vip_addr, client.vip_port),
        (client.client_addr, client.client_port),
    );
    forward_to(ctx, &mut pkt, client.client_addr, false)
}

/// Rewrites both endpoints (wire order), with the IP and UDP checksums.
#[inline(always)]
fn rewrite(pkt: &mut UdpPacket<'_>, src: (u32, u16), dst: (u32, u16)) {
    let (old_src, old_dst) = ((pkt.src_addr(), pkt.src_port()), (pkt.dst_addr(), pkt.dst_port()));
    let mut ip_check = pkt.ip_check();
    ip_check = replace32(ip_check, old_src.0, src.0);
    ip_check = replace32(ip_check, old_dst.0, dst.0);
    pkt.set_ip_check(ip_check);
    pkt.set_udp_check(nat_check(
        pkt.udp_check(),
        &UdpRewrite {
            old_src,
            old_dst,
            new_src: src,
            new_dst: dst,
        },
    ));
    pkt.set_addrs(src.0, dst.0);
    pkt.set_ports(src.1, dst.1);
}
