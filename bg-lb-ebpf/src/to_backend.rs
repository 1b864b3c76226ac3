//! Client -> VIP path: find or pin the flow's backend, keep its TCP state,
//! full-NAT it towards the backend (source becomes SNAT addr:port), forward.
//!
//! One NAT state: a (backend, SNAT port) belongs to the one flow its
//! REVERSE_NAT entry names. Reverse entries go only with their flow, or
//! when the daemon's sweep removes them, after which it moves
//! `DataplaneConfig::nat_epoch` forward: a pinned flow then makes sure its
//! port is still its own (one lookup) before it uses it again, claiming it
//! again if it is free and resetting its client if another flow owns it.
//! A packet without a flow never uses a port another flow owns. A new
//! connection may take over the port of a flow that has ended, once the
//! backend will accept it there ([`port_takeover`]).
//!
//! A `gateway` or `dsr` service differs where [`forwarding`] says: its
//! source candidate, and for `dsr` no reverse entry and no rewrite.
//!
//! A service in SYN proxy mode has its SYNs answered by [`synproxy`]: a
//! segment of no flow goes there first, and a client segment of a proxied
//! flow whose backend has not answered yet is the proxy's to hold or drop
//! (it does not move the flow's state: the backend has not seen it).
//!
//! FLOWS is looked up before SERVICES: a packet its flow carries
//! ([`carries`]) needs nothing from its service, which saves the
//! established path a hash lookup. Any other packet is judged with the
//! VIP's service as before. A frame to no VIP address never comes here
//! unless its address shares a bit of CONFIG's VIP filter with one
//! (`DataplaneConfig::may_be_vip`); then it pays a FLOWS lookup besides the
//! SERVICES one.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, xdp_action::XDP_DROP},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use bg_lb_common::{
    counters::Counter,
    flow_hash::flow_hash,
    flow_state::{self, Direction, Event, Segment, TCP_SYN},
    maps::{
        BACKEND_RESET_FLOWS, BackendOf, DataplaneConfig, FlowKey, FlowKeyOf, FlowOf, IPPROTO_TCP, NatKey, NatKeyOf,
        NatOwnerOf, Service, ServiceKey,
    },
    port_reuse::Syn,
    snat_port::SNAT_PORT_ATTEMPTS,
    syn_proxy::Job,
};

use crate::{
    forward::forward,
    forwarding,
    maps::{
        FLOWS, FamilyMaps, REVERSE_NAT, SERVICES, Way, account, account_exhausted, count, flow_entry, log_due,
        reverse_owner,
    },
    nat::{Endpoints, decrement_ttl, rewrite},
    packet::TcpPacket,
    pick::pick_backend,
    port_takeover, rst, screen,
    synproxy::{self, ClientStep, ProxySegment, Unpinned},
};

/// Where a packet goes: its flow's (pinned, new, or stateless) ids, SNAT
/// address and port, and its backend. Only what the rest of the path
/// reads, so the fast path copies little. Generic over the address family
/// (`A`), as the flow logic below is: the IPv6 path ([`crate::ipv6`])
/// shares it.
pub struct Route<A: FamilyMaps> {
    pub backend_id: u32,
    pub service_id: u32,
    /// Wire order.
    pub snat_addr: A,
    /// Wire order.
    pub snat_port: u16,
    pub backend: BackendOf<A>,
    /// A flow that was in FLOWS before this packet.
    pub pinned: bool,
    pub event: Event,
    /// Added to the acknowledgment number: a proxied flow's offset.
    pub ack_offset: u32,
    /// The flow's mode rewrites addresses (full NAT, gateway), else only
    /// MACs (dsr): the mode it was opened in, whatever a reload made of
    /// its service since.
    pub reply_path: bool,
}

impl<A: FamilyMaps> Route<A> {
    /// A flow this packet created or forwards without state: its port needs
    /// no check.
    #[inline(always)]
    fn unpinned(flow: &FlowOf<A>, backend: BackendOf<A>) -> Self {
        Route {
            backend_id: flow.backend_id,
            service_id: flow.service_id,
            snat_addr: flow.snat_addr,
            snat_port: flow.snat_port,
            backend,
            pinned: false,
            event: Event::None,
            ack_offset: 0,
            reply_path: flow.has_reply_path(),
        }
    }
}

/// What the flow table says about a packet's 5-tuple, when it has a usable
/// flow (else a backend is picked from the table).
pub enum Lookup<A: FamilyMaps> {
    Pinned(Route<A>),
    /// The flow's backend id or service changed under it, or it has ended
    /// and a new connection took its port over: dropped.
    Stale,
    /// Another flow owns the flow's SNAT port: the flow is forgotten.
    PortTaken,
    /// A proxied flow's segment that the proxy takes (see [`ClientStep`]).
    Proxy(ClientStep),
}

/// Client -> VIP:port: the packet's flow, pinned or new, towards its
/// backend; `None` for a packet no flow carries to a VIP:port without a
/// service (not ours: the caller passes it on).
#[inline(always)]
pub fn to_backend(ctx: &XdpContext, pkt: &mut TcpPacket<'_>, cfg: &DataplaneConfig) -> Option<u32> {
    let key = FlowKey::from_wire(pkt.src_addr(), pkt.src_port(), pkt.dst_addr(), pkt.dst_port());
    let seg = pkt.segment();
    // SAFETY: a helper without arguments. The coarse clock (a kernel tick
    // behind at most) is enough for idle timeouts and much cheaper.
    let seen = unsafe { bpf_ktime_get_coarse_ns() };
    let lookup = match flow_entry(&key) {
        Some(flow) if carries(flow, seg.flags) => {
            if let Err(verdict) = screen(pkt) {
                return Some(verdict);
            }
            let service_id = flow.service_id;
            // No usable flow after all only if the flow changed since
            // `carries` (its backend freed by the daemon, or ended by
            // another CPU's packet): dropped, and a SYN's retransmission
            // opens a new flow.
            pinned_flow(&key, Some(flow), &seg, service_id, cfg.nat_epoch, seen, || {
                pkt.timestamp(ctx)
            })
            .unwrap_or(Lookup::Stale)
        }
        flow => {
            // Copied inside the branch: carrying an Option<Service> across
            // branches makes LLVM spill the None case's uninitialised
            // payload, which the verifier rejects.
            // SAFETY: SERVICES is BPF_F_NO_PREALLOC, so a looked-up element
            // stays intact under RCU until the program returns, as aya's
            // `get` requires.
            let service = *unsafe { SERVICES.get(ServiceKey::from_wire(key.vip_addr, key.vip_port, IPPROTO_TCP)) }?;
            if let Err(verdict) = screen(pkt) {
                return Some(verdict);
            }
            match pinned_flow(&key, flow, &seg, service.id, cfg.nat_epoch, seen, || pkt.timestamp(ctx)) {
                Some(lookup) => lookup,
                None => match open(ctx, pkt, &key, &seg, &service, cfg, seen) {
                    Ok(route) => Lookup::Pinned(route),
                    Err(verdict) => return Some(verdict),
                },
            }
        }
    };
    Some(deliver(ctx, pkt, &key, lookup))
}

/// Whether `flow` carries a segment with `flags` without a look at its
/// service: its backend id still names the backend and service it was
/// pinned to, and the segment is no new connection on the 5-tuple of a flow
/// that has ended (which needs the service's table). Removing a service
/// frees its backends right after its SERVICES entry
/// (`Kernel::remove_service`), and a freed backend id names another
/// generation; so a flow of a removed service, or of an older service on
/// the same VIP:port, is carried here only between those two writes (and
/// then to the backend it was pinned to).
#[inline(always)]
pub fn carries<A: FamilyMaps>(flow: &FlowOf<A>, flags: u8) -> bool {
    A::backends()
        .get(flow.backend_id)
        .is_some_and(|b| b.generation == flow.backend_gen && b.service_id == flow.service_id)
        && !(flow_state::is_connection_request(flags) && flow_state::has_ended(flow.state))
}

/// A packet of no usable flow: a new flow from the service's table, a
/// SYN the proxy answers, or a verdict. `seen`: the coarse clock.
#[inline(always)]
fn open(
    ctx: &XdpContext,
    pkt: &TcpPacket<'_>,
    key: &FlowKey,
    seg: &Segment,
    service: &Service,
    cfg: &DataplaneConfig,
    seen: u64,
) -> Result<Route<u32>, u32> {
    // SAFETY: a helper without arguments. Precise: a new flow's creation
    // time is its port claim, which must not repeat.
    let now = unsafe { bpf_ktime_get_ns() };
    let proven = proxy_first(ctx, pkt, key, service, now)?;
    let request = opening_segment(seg, proven);
    // What the backend's TIME_WAIT, if the SNAT port has one, reads of the
    // SYN it gets: the proxy's carries no timestamp.
    let tsval = if proven || !flow_state::is_connection_request(request.flags) {
        None
    } else {
        pkt.timestamp(ctx)
    };
    let syn = Syn::new(request.seq, tsval);
    match new_flow(key, &request, &syn, service, cfg, (now, seen), Claim::FreeOrEnded) {
        Ok(_) if proven => Err(synproxy::hand_over(ctx, Job::OpenBackend)),
        Ok(route) => {
            if flow_state::is_connection_request(request.flags) {
                synproxy::opened(service, now);
            }
            Ok(route)
        }
        Err(counter) => Err(refuse(ctx, &request, counter, now, || rst::refuse(ctx))),
    }
}

/// What the SYN proxy makes of `pkt`, a segment of no usable flow (`key`)
/// to `service`: whether it proved a cookie (else it takes the usual way),
/// or the verdict, the proxy having answered or dropped it.
#[inline(always)]
pub fn proxy_first<A: FamilyMaps, P: ProxySegment>(
    ctx: &XdpContext,
    pkt: &P,
    key: &FlowKeyOf<A>,
    service: &Service,
    now: u64,
) -> Result<bool, u32> {
    match synproxy::unpinned(pkt, service, now) {
        Unpinned::Usual => Ok(false),
        Unpinned::Proven => Ok(true),
        Unpinned::Answer => {
            forget_ended(key);
            Err(synproxy::hand_over(ctx, P::SYN_ACK))
        }
        Unpinned::Drop => Err(XDP_DROP),
    }
}

/// The segment that opens the flow: `seg` itself, or for a proven cookie,
/// the client's SYN (its sequence number one less) as it would have.
#[inline(always)]
pub fn opening_segment(seg: &Segment, proven: bool) -> Segment {
    if proven {
        Segment {
            flags: TCP_SYN,
            seq: seg.seq.wrapping_sub(1),
            ack: 0,
            payload_len: 0,
        }
    } else {
        *seg
    }
}

/// Carries out what the flow table said: the packet rewritten and sent to
/// its flow's backend, or dropped, refused or handed to the SYN proxy.
#[inline(always)]
fn deliver(ctx: &XdpContext, pkt: &mut TcpPacket<'_>, key: &FlowKey, lookup: Lookup<u32>) -> u32 {
    let route = match lookup {
        Lookup::Pinned(route) => route,
        Lookup::Stale => {
            count(Counter::StaleFlow);
            return XDP_DROP;
        }
        Lookup::PortTaken => {
            count(Counter::NatConflict);
            return rst::refuse(ctx);
        }
        Lookup::Proxy(ClientStep::Hold) => return synproxy::hand_over(ctx, Job::HoldSegment),
        Lookup::Proxy(ClientStep::ResendSyn) => return synproxy::hand_over(ctx, Job::ResendSyn),
        Lookup::Proxy(_) => return XDP_DROP,
    };
    let backend = route.backend;
    if route.pinned && backend.flags & BACKEND_RESET_FLOWS != 0 {
        // A dsr flow has no reverse entry: the removal finds none.
        let _ = FLOWS.remove(key);
        let _ = REVERSE_NAT.remove(NatKey::new(&backend, route.snat_addr, route.snat_port));
        count(Counter::FlowReset);
        return rst::refuse(ctx);
    }
    if route.event == Event::RstOutOfWindow {
        count(Counter::RstOutOfWindow);
    }
    let established = route.event == Event::Established;
    account(
        route.backend_id,
        route.service_id,
        Way::ToBackend,
        pkt.ip_len(),
        established,
    );
    if !route.reply_path {
        return forwarding::to_backend_mac(ctx, pkt, &backend);
    }
    decrement_ttl(pkt);
    rewrite(
        pkt,
        &Endpoints {
            src_addr: route.snat_addr,
            src_port: route.snat_port,
            dst_addr: backend.addr,
            dst_port: backend.port,
            seq_offset: 0,
            ack_offset: route.ack_offset,
        },
    );
    forward(ctx, pkt)
}

/// Removes the 5-tuple's flow if it has ended: a SYN the proxy answers
/// opens no flow, so the ended one would stay, and the client's ACK proving
/// the new cookie would go through it (on a port another flow may own by
/// then) instead of opening the new connection. Its reverse entry stays, an
/// orphan a new connection may take over: what the flow knew of how the
/// backend closed is lost, so a proxied reconnection on the same 5-tuple
/// may meet the backend's TIME_WAIT (the backend answers with an ACK, the
/// client resets it and retries).
#[inline(always)]
fn forget_ended<A: FamilyMaps>(key: &FlowKeyOf<A>) {
    if flow_entry(key).is_some_and(|flow| flow_state::has_ended(flow.state)) {
        let _ = A::flows().remove(key);
    }
}

/// A segment no flow could be opened or found for: a connection request
/// refused with a RST (`reset`, the family's) when no backend or SNAT port
/// can take it, else dropped.
#[inline(always)]
pub fn refuse(ctx: &XdpContext, request: &Segment, counter: Counter, now: u64, reset: impl FnOnce() -> u32) -> u32 {
    let refused = flow_state::is_connection_request(request.flags)
        && matches!(
            counter,
            Counter::NoBackend | Counter::SnatPortsExhausted | Counter::GatewayCollision
        );
    count(if counter == Counter::NoBackend && refused {
        Counter::Refused
    } else {
        counter
    });
    log_drop(ctx, counter, now);
    if refused { reset() } else { XDP_DROP }
}

/// Capacity failures are worth a log line besides their counter, one a
/// second at most; aya-log carries it to the daemon's log.
#[inline(always)]
fn log_drop(ctx: &XdpContext, counter: Counter, now: u64) {
    if !matches!(counter, Counter::SnatPortsExhausted | Counter::FlowInsertFailed) || !log_due(counter, now) {
        return;
    }
    match counter {
        Counter::SnatPortsExhausted => warn!(
            ctx,
            "new connections refused: no free SNAT (address, port) for their backend; add snat_addresses or widen \
             snat_ports (at most one line a second; counter snat_ports_exhausted counts them all)"
        ),
        _ => warn!(
            ctx,
            "new connections dropped: flow table insert failed (at most one line a second; counter \
             flow_insert_failed counts them all)"
        ),
    }
}

/// The flow's pinned entry (`flow`, FLOWS' entry under `key`), updated for
/// this packet; `None` (no usable flow) when there is none, this SYN reuses
/// the 5-tuple of a flow that has ended, or the flow's backend id or
/// service (`service_id`: the VIP's now) no longer is the one it was pinned
/// to. Else it may be stale (checked when `nat_epoch` moved, and for a flow
/// that has ended, whose port a new connection may have taken over: its
/// port is no longer its own). `timestamp` reads the segment's TSval,
/// wanted only once the backend closed first.
#[inline(always)]
pub fn pinned_flow<A: FamilyMaps>(
    key: &FlowKeyOf<A>,
    flow: Option<&'static mut FlowOf<A>>,
    seg: &Segment,
    service_id: u32,
    nat_epoch: u32,
    seen: u64,
    timestamp: impl FnOnce() -> Option<u32>,
) -> Option<Lookup<A>> {
    let flow = flow?;
    let backend = A::backends().get(flow.backend_id).copied()?;
    let current = backend.generation == flow.backend_gen && flow.service_id == service_id;
    let connection_request = flow_state::is_connection_request(seg.flags);
    if !current {
        // Its reverse entry names the old backend, whose address is unknown
        // here: the sweep removes it.
        let _ = A::flows().remove(key);
        return (!connection_request).then_some(Lookup::Stale);
    }
    if connection_request && flow_state::has_ended(flow.state) {
        // A new connection: its SYN claims a port, which may be the old
        // flow's port if the backend accepts it there (`port_takeover`).
        return None;
    }
    let ended = flow_state::has_ended(flow.state);
    if flow.has_reply_path() && (flow.nat_epoch != nat_epoch || ended) {
        if !owns_port(key, &flow.nat_key(&backend)) {
            // An ended flow guarding an older pair stays for the sweep to
            // remove (`flow_state::GUARDS_TIME_WAIT`).
            if !ended || flow.state & flow_state::GUARDS_TIME_WAIT == 0 {
                let _ = A::flows().remove(key);
            }
            // A straggler of a connection that is over at the backend too,
            // whose port a new connection took over: nothing to reset.
            return Some(if ended { Lookup::Stale } else { Lookup::PortTaken });
        }
        flow.nat_epoch = nat_epoch;
    }
    if flow.proxy != 0 {
        match synproxy::client_segment(seg.flags, seg.ack, seg.payload_len, flow) {
            ClientStep::Forward => {}
            step => return Some(Lookup::Proxy(step)),
        }
    }
    // Before `advance`: once the client's FIN makes the flow end, another
    // CPU may judge its port, and must find the FIN's timestamp recorded.
    if flow_state::wants_client_timestamp(flow.state) {
        flow_state::note_client_timestamp(flow, timestamp());
    }
    let event = if flow.has_reply_path() {
        flow_state::advance(flow, Direction::FromClient, seg)
    } else {
        forwarding::advance_dsr(flow, seg)
    };
    flow.last_seen_ns = seen;
    Some(Lookup::Pinned(Route {
        backend_id: flow.backend_id,
        service_id: flow.service_id,
        snat_addr: flow.snat_addr,
        snat_port: flow.snat_port,
        backend,
        pinned: true,
        event,
        ack_offset: synproxy::seq_offset(flow),
        reply_path: flow.has_reply_path(),
    }))
}

/// Whether the flow `key` owns the (backend, SNAT port) `nat`. A reverse
/// entry that went missing under it is claimed again; one that another flow
/// claimed meanwhile is that flow's, and this one must not use the port.
#[inline(always)]
pub fn owns_port<A: FamilyMaps>(key: &FlowKeyOf<A>, nat: &NatKeyOf<A>) -> bool {
    match reverse_owner(nat) {
        Some(owner) => owner == *key,
        None => {
            // SAFETY: a helper without arguments.
            let now = unsafe { bpf_ktime_get_ns() };
            let reclaimed = A::reverse_nat()
                .insert(nat, NatOwnerOf::new(*key, now), BPF_NOEXIST as u64)
                .is_ok();
            if reclaimed {
                count(Counter::NatReclaimed);
            }
            reclaimed
        }
    }
}

/// Which SNAT pair a new flow may claim.
#[derive(Clone, Copy)]
pub enum Claim<A> {
    /// A free pair, else that of a flow that has ended, taken over
    /// (`port_takeover`).
    FreeOrEnded,
    /// A free pair only: the caller has no stack left for the takeover's
    /// call, and hands a request that found none to a program that has
    /// (IPv6: `ipv6_port_takeover`), which counts it if that fails too.
    Free,
    /// This pair (address, port; wire order), which the request claimed
    /// already ([`claim_pair`]) at the time given as the flow's creation:
    /// still its own if its entry for the backend picked names the flow.
    Claimed(A, u16),
}

/// Picks a backend from the service's lookup table. A SYN pins the choice
/// (flow entry plus a reverse-NAT entry owning a unique SNAT port, as
/// `claim` allows); any other packet of an unknown flow is forwarded
/// statelessly, as Maglev does. `(now, seen)`: the precise and the coarse
/// clock, for the flow's creation and its last packet.
#[inline(always)]
pub fn new_flow<A: FamilyMaps>(
    key: &FlowKeyOf<A>,
    seg: &Segment,
    syn: &Syn,
    service: &Service,
    cfg: &DataplaneConfig,
    (now, seen): (u64, u64),
    claim: Claim<A>,
) -> Result<Route<A>, Counter> {
    let hash = flow_hash(key);
    let (backend_id, backend) = pick_backend(service, key, hash)?;
    let mut flow = FlowOf {
        backend_id,
        service_id: service.id,
        created_ns: now,
        last_seen_ns: seen,
        backend_gen: backend.generation,
        // Its port is claimed (or, readopted, checked) now.
        nat_epoch: cfg.nat_epoch,
        proxy: synproxy::new_flow_bits(service),
        // A mode is below 3: the cast keeps it.
        forwarding: service.forwarding,
        ..FlowOf::default()
    };
    if !flow_state::is_connection_request(seg.flags) {
        return unpinned(key, seg, hash, flow, backend, service, cfg);
    }
    (flow.state, flow.client, flow.backend) = flow_state::opened_by(seg);
    if flow.has_reply_path() {
        (flow.snat_addr, flow.snat_port) =
            claim_snat_port(key, hash, (backend_id, &backend), service, syn, cfg, now, claim).inspect_err(|e| {
                if *e == Counter::SnatPortsExhausted && matches!(claim, Claim::FreeOrEnded) {
                    account_exhausted(backend_id);
                }
            })?;
        // The ended flow of this 5-tuple that the new one replaces (still
        // in the table until the insert below; the claim leaves FLOWS alone),
        // if any: if the new flow left its pair, it guards that pair
        // (`flow_state::GUARDS_TIME_WAIT`). Looked up after the claim, so
        // that no pointer to it stays live across the claim's stack.
        if let Some(old) = flow_entry(key).filter(|old| flow_state::has_ended(old.state)) {
            let same_pair = flow.snat_addr == old.snat_addr && flow.snat_port == old.snat_port;
            flow.state |= flow_state::inherited_by_reconnection(old.state, same_pair);
        }
    }
    if A::flows().insert(key, flow, BPF_ANY as u64).is_err() {
        let _ = A::reverse_nat().remove(flow.nat_key(&backend));
        return Err(Counter::FlowInsertFailed);
    }
    Ok(Route::unpinned(&flow, backend))
}

/// A packet of an unknown flow, on the first SNAT port candidate no other
/// flow owns. A candidate whose reverse entry names this very flow is its
/// own: its flow entry was evicted, and an ACK pins it again.
#[inline(always)]
fn unpinned<A: FamilyMaps>(
    key: &FlowKeyOf<A>,
    seg: &Segment,
    hash: u32,
    mut flow: FlowOf<A>,
    backend: BackendOf<A>,
    service: &Service,
    cfg: &DataplaneConfig,
) -> Result<Route<A>, Counter> {
    if !flow.has_reply_path() {
        return Ok(readopt(key, seg, flow, backend));
    }
    for attempt in 0..SNAT_PORT_ATTEMPTS {
        let Some((addr, port)) = forwarding::source(service, key, cfg, hash, attempt) else {
            break;
        };
        let own = match reverse_owner(&NatKeyOf::new(&backend, addr, port)) {
            None => false,
            Some(owner) if owner == *key => true,
            Some(_) => continue,
        };
        (flow.snat_addr, flow.snat_port) = (addr, port);
        return Ok(if own {
            readopt(key, seg, flow, backend)
        } else {
            count(Counter::UnpinnedForwarded);
            Route::unpinned(&flow, backend)
        });
    }
    Err(Counter::UnpinnedPortTaken)
}

/// The SNAT pair a connection request `key` to `service` claims at `now`
/// (free, or taken over from a flow that has ended, for the backend its
/// table picks), for a new flow that opens on it later ([`Claim::Claimed`],
/// created at `now`): for a program without the stack for both.
#[inline(always)]
pub fn claim_pair<A: FamilyMaps>(
    key: &FlowKeyOf<A>,
    syn: &Syn,
    service: &Service,
    cfg: &DataplaneConfig,
    now: u64,
) -> Result<(A, u16), Counter> {
    let hash = flow_hash(key);
    let (backend_id, backend) = pick_backend(service, key, hash)?;
    claim_snat_port(
        key,
        hash,
        (backend_id, &backend),
        service,
        syn,
        cfg,
        now,
        Claim::FreeOrEnded,
    )
    .inspect_err(|e| {
        if *e == Counter::SnatPortsExhausted {
            account_exhausted(backend_id);
        }
    })
}

/// Claims the first free SNAT (address, port), both wire order, for this
/// backend (id and entry), or (if `claim` allows) the first whose flow has
/// ended so that `syn` may reuse it. NOEXIST makes the claim of a free pair
/// atomic, and a compare-and-swap the takeover of a used one, so two CPUs
/// never hand out the same pair. `now` is the new flow's `created_ns`,
/// which becomes the claim.
#[expect(
    clippy::too_many_arguments,
    reason = "inlined: the BPF call's five registers do not apply"
)]
#[inline(always)]
fn claim_snat_port<A: FamilyMaps>(
    key: &FlowKeyOf<A>,
    hash: u32,
    (backend_id, backend): (u32, &BackendOf<A>),
    service: &Service,
    syn: &Syn,
    cfg: &DataplaneConfig,
    now: u64,
    claim: Claim<A>,
) -> Result<(A, u16), Counter> {
    if let Claim::Claimed(addr, port) = claim {
        return match reverse_owner(&NatKeyOf::new(backend, addr, port)) {
            Some(owner) if owner == *key => Ok((addr, port)),
            // Another backend's pair (the table changed since), or lost.
            _ => Err(forwarding::no_source(service)),
        };
    }
    let packed = port_takeover::backend_of(backend_id, backend.generation);
    for attempt in 0..SNAT_PORT_ATTEMPTS {
        let Some((addr, port)) = forwarding::source(service, key, cfg, hash, attempt) else {
            break;
        };
        let nat = NatKeyOf::new(backend, addr, port);
        if A::reverse_nat()
            .insert(nat, NatOwnerOf::new(*key, now), BPF_NOEXIST as u64)
            .is_ok()
            || (matches!(claim, Claim::FreeOrEnded) && port_takeover::take_over(&nat, key, syn, packed, now))
        {
            return Ok((addr, port));
        }
    }
    Err(forwarding::no_source(service))
}

/// A segment of an unknown flow that may be its own (full NAT and gateway:
/// its reverse entry names it; `dsr`: there is no port to own, and another
/// LB host may have pinned it): a mid-stream ACK pins it again, anything
/// else is forwarded by the table without state.
#[inline(always)]
fn readopt<A: FamilyMaps>(key: &FlowKeyOf<A>, seg: &Segment, mut flow: FlowOf<A>, backend: BackendOf<A>) -> Route<A> {
    if flow_state::can_readopt(seg.flags) {
        (flow.state, flow.client, flow.backend) = flow_state::readopted_by(seg);
        if A::flows().insert(key, flow, BPF_NOEXIST as u64).is_ok() {
            count(Counter::FlowReadopted);
            return Route::unpinned(&flow, backend);
        }
    }
    count(Counter::UnpinnedForwarded);
    Route::unpinned(&flow, backend)
}
