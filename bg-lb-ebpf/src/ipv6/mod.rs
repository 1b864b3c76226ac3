//! The IPv6 data path: IPv6 services, TCP and UDP, in each forwarding mode
//! (full NAT as NAT66, `gateway`, `dsr`: [`modes`]), in XDP programs of
//! their own, reached by tail call so that each has a whole stack to itself
//! (IPv6 keys are larger, and spill more): the load balancer hands an IPv6
//! frame to [`bg_lb_ipv6`] ([`Job::Ipv6`]), which carries established TCP
//! flows itself and hands new flows ([`bg_lb_tcp6_open`]), backend replies
//! (to the SNAT range, or `gateway`: to a client; [`bg_lb_tcp6_reply`]),
//! UDP ([`bg_lb_udp6`], which hands new flows to [`bg_lb_udp6_open`] and
//! replies to [`bg_lb_udp6_reply`]) and RSTs ([`bg_lb_rst6`]) on.
//!
//! The flow logic is the IPv4 path's, generic over the address family
//! (`crate::maps::FamilyMaps`): pinning, backend choice from the same
//! lookup tables, the forwarding modes' sources (SNAT (address, port)
//! claims with their ownership rules: NOEXIST claims, epoch checks, the
//! takeover of an ended flow's pair in a program of its own,
//! [`crate::ipv6_port_takeover`]; `gateway`'s client pair; none under
//! `dsr`), TCP flow state and the traffic statistics
//! ([`to_backend::pinned_flow`], [`to_backend::new_flow`], [`udp::pinned`],
//! [`udp::new_flow`]). What is IPv6's own is the packet
//! work: parsing, the rewrite (no header checksum; the TCP and UDP checksums
//! cover the addresses through the pseudo-header, and a UDP checksum is
//! never sent as 0), the hop limit, routing ([`forward6`]) and a RST.
//!
//! Its SYN proxy is IPv4's logic with IPv6 jobs ([`crate::ipv6_synproxy`]).
//! Only a TCP or UDP header right after the fixed
//! header is read: a packet to a VIP address with an extension header is
//! dropped and counted (`ipv6_extension_header`); anything not for a VIP or
//! the IPv6 SNAT range, ICMPv6 (neighbour discovery) included, passes
//! untouched, but a `gateway` flow's backend reply and an ICMPv6 error
//! about a pinned flow ([`bg_lb_icmp6`]), which is translated to the other
//! side as IPv4's are (`crate::icmp`).

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::xdp,
    programs::XdpContext,
};
use bg_lb_common::{
    counters::Counter,
    flow_state::{self, Event},
    maps::{
        BACKEND_RESET_FLOWS, DataplaneConfig, Flow6, FlowKey6, IPPROTO_TCP, IPPROTO_UDP, Ipv6Wire, NatKey6, Service,
        ServiceKey6, WireAddr,
    },
    port_reuse::{Syn, same_key},
    syn_proxy::{BACKEND_READY, Job, PROXIED, SYN_PROXY_MODES},
};

use crate::{
    forward::{dropped, forward6},
    ipv6::modes::Carried,
    maps::{
        BACKENDS6, CONFIG, FLOWS6, REVERSE_NAT6, SERVICES6, VIP_ADDRESSES6, Way, count, flow_entry, flow_pinned_to,
        reverse_owner,
    },
    packet::ipv6::{
        Icmp6Error, L4Packet6, Tcp6Packet, Udp6Packet, parse_icmp6_error, parse_tcp6, parse_udp6, peek,
        too_big::IPPROTO_ICMPV6,
    },
    synproxy::{self, ClientStep, hand_over},
    to_backend::{Claim, Lookup, Route, carries, new_flow, pinned_flow, refuse},
    to_client::backend_sent,
    udp,
};

mod modes;

/// [`Job::Ipv6`]: an IPv6 frame.
#[xdp]
pub fn bg_lb_ipv6(ctx: XdpContext) -> u32 {
    // The load balancer found it ready before it handed the frame over.
    let Some(cfg) = CONFIG.get(0) else {
        return XDP_PASS;
    };
    let Some((next, dst)) = peek(&ctx) else {
        return passed();
    };
    match next {
        IPPROTO_TCP => tcp(&ctx, cfg, dst),
        IPPROTO_UDP => hand_over(&ctx, Job::Udp6),
        IPPROTO_ICMPV6 => hand_over(&ctx, Job::Icmp6),
        // ICMPv6 (neighbour discovery), no next header, other protocols.
        next if !is_extension_header(next) => passed(),
        _ if is_vip(&dst) => dropped(Counter::Ipv6ExtensionHeader),
        _ => passed(),
    }
}

/// The IANA list of IPv6 extension headers (RFC 7045): hop-by-hop options,
/// routing, fragment, ESP, AH, destination options, mobility, HIP, shim6,
/// and the two experimental ones.
#[inline(always)]
fn is_extension_header(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

/// Whether `addr` is an IPv6 VIP's address.
#[inline(always)]
fn is_vip(addr: &Ipv6Wire) -> bool {
    // SAFETY: only whether an entry exists is read.
    unsafe { VIP_ADDRESSES6.get(addr) }.is_some()
}

#[inline(always)]
pub(crate) fn passed() -> u32 {
    count(Counter::Passed);
    XDP_PASS
}

/// A TCP or UDP frame whose lengths cannot be trusted: dropped if it goes
/// to a VIP address, else the kernel's.
#[inline(always)]
fn malformed(dst: &Ipv6Wire) -> u32 {
    if is_vip(dst) {
        dropped(Counter::Truncated)
    } else {
        passed()
    }
}

#[inline(always)]
fn tcp(ctx: &XdpContext, cfg: &DataplaneConfig, dst: Ipv6Wire) -> u32 {
    let Some(mut pkt) = parse_tcp6(ctx) else {
        return malformed(&dst);
    };
    // No VIP is a SNAT address, as for IPv4.
    let to_snat_addr = cfg.is_snat_addr(dst);
    if to_snat_addr && cfg.in_snat_ports(pkt.dst_port()) {
        if let Err(verdict) = screen(&pkt) {
            return verdict;
        }
        return hand_over(ctx, Job::Tcp6Reply);
    }
    if !to_snat_addr
        && cfg.may_be_vip(dst)
        && let Some(verdict) = to_backend(ctx, &mut pkt, cfg)
    {
        return verdict;
    }
    // As for IPv4: one lookup more for a gateway reply, none where no
    // gateway service ever was.
    if cfg.gateway_seen != 0 && modes::is_tcp_gateway_reply(&pkt) {
        if let Err(verdict) = screen(&pkt) {
            return verdict;
        }
        return hand_over(ctx, Job::Tcp6Reply);
    }
    passed()
}

/// As IPv4's `screen`: SYN with FIN or RST dropped, and a hop limit that
/// would reach 0 here (the VIP and SNAT addresses are local: the kernel
/// would deliver it, not answer time exceeded).
#[inline(always)]
fn screen(pkt: &Tcp6Packet<'_>) -> Result<(), u32> {
    if flow_state::has_bad_flags(pkt.flags()) {
        return Err(dropped(Counter::BadTcpFlags));
    }
    if pkt.frame.hop_limit() <= 1 {
        return Err(dropped(Counter::TtlExpired));
    }
    Ok(())
}

/// The flow a client segment belongs to.
#[inline(always)]
pub(crate) fn flow_key(pkt: &Tcp6Packet<'_>) -> FlowKey6 {
    let mut key = FlowKey6::default();
    pkt.write_client_key(&mut key);
    key
}

/// The TCP service at the segment's VIP:port, copied.
#[inline(always)]
pub(crate) fn tcp_service(key: &FlowKey6) -> Option<Service> {
    // SAFETY: as for SERVICES: not preallocated, copied at once.
    unsafe { SERVICES6.get(ServiceKey6::from_wire(key.vip_addr, key.vip_port, IPPROTO_TCP)) }.copied()
}

/// Client -> VIP:port, as IPv4's `to_backend`: FLOWS6 first, then
/// SERVICES6; `None` for a packet of no flow to a VIP:port without a
/// service (the caller's to pass on); one of no usable flow to a service
/// opens one ([`bg_lb_tcp6_open`]).
// Step by step IPv4's `to_backend`, but kept apart: each is its program's
// hot path at the edge of the stack (bg_lb and bg_lb_ipv6, 440 bytes), and
// the flow key here is written byte by byte for that reason.
#[inline(always)]
fn to_backend(ctx: &XdpContext, pkt: &mut Tcp6Packet<'_>, cfg: &DataplaneConfig) -> Option<u32> {
    let key = flow_key(pkt);
    let seg = pkt.segment();
    // SAFETY: a helper without arguments (coarse: as for IPv4).
    let seen = unsafe { bpf_ktime_get_coarse_ns() };
    let lookup = match flow_entry(&key) {
        Some(flow) if carries(flow, seg.flags) => {
            if let Err(verdict) = screen(pkt) {
                return Some(verdict);
            }
            let service_id = flow.service_id;
            pinned_flow(&key, Some(flow), &seg, service_id, cfg.nat_epoch, seen, || {
                pkt.timestamp(ctx)
            })
            .unwrap_or(Lookup::Stale)
        }
        flow => {
            let service = tcp_service(&key)?;
            if let Err(verdict) = screen(pkt) {
                return Some(verdict);
            }
            match pinned_flow(&key, flow, &seg, service.id, cfg.nat_epoch, seen, || pkt.timestamp(ctx)) {
                Some(lookup) => lookup,
                // The proxy's verdict first, in a program of its own (with
                // the proxy's work, Tcp6Open's stack would overflow).
                None if service.flags & SYN_PROXY_MODES != 0 => return Some(hand_over(ctx, Job::Tcp6Proxy)),
                None => return Some(hand_over(ctx, Job::Tcp6Open)),
            }
        }
    };
    Some(deliver(ctx, pkt, &key, lookup))
}

/// [`Job::Tcp6Open`]: the frame's segment, to a TCP service's VIP:port,
/// screened, has no usable flow (and the SYN proxy, if the service has it
/// on, none of its business: [`crate::ipv6_synproxy::bg_lb_tcp6_proxy`]): a
/// new flow from the service's table, or the refusal. A connection request
/// that finds no free SNAT pair goes on to [`Job::Tcp6TakeOver`].
#[xdp]
pub fn bg_lb_tcp6_open(ctx: XdpContext) -> u32 {
    // SAFETY: a helper without arguments (precise: the flow's port claim).
    let now = unsafe { bpf_ktime_get_ns() };
    open_flow(&ctx, Claim::Free, now)
}

/// The frame's segment of no usable flow, opening one on a pair `claim`
/// allows, created at `now`, and delivered; or its refusal.
#[inline(always)]
pub(crate) fn open_flow(ctx: &XdpContext, claim: Claim<Ipv6Wire>, now: u64) -> u32 {
    let Some(mut pkt) = parse_tcp6(ctx) else {
        return XDP_DROP;
    };
    let key = flow_key(&pkt);
    // Gone since the frame was handed over: as for a frame without one.
    let Some(service) = tcp_service(&key) else {
        return passed();
    };
    match open(ctx, &pkt, &key, &service, claim, now) {
        Ok(route) => deliver(ctx, &mut pkt, &key, Lookup::Pinned(route)),
        // No free pair: perhaps one whose flow has ended.
        Err((Counter::SnatPortsExhausted | Counter::GatewayCollision, _)) if matches!(claim, Claim::Free) => {
            hand_over(ctx, Job::Tcp6TakeOver)
        }
        Err((counter, now)) => refuse(ctx, &pkt.segment(), counter, now, || hand_over(ctx, Job::Rst6)),
    }
}

/// A segment of no usable flow: a new flow from the service's table (pinned
/// by a SYN on a pair `claim` allows, created at `now`, else forwarded
/// without state), or why none opened and when.
#[inline(always)]
fn open(
    ctx: &XdpContext,
    pkt: &Tcp6Packet<'_>,
    key: &FlowKey6,
    service: &Service,
    claim: Claim<Ipv6Wire>,
    now: u64,
) -> Result<Route<Ipv6Wire>, (Counter, u64)> {
    // SAFETY: a helper without arguments (coarse: the flow's last packet,
    // as for IPv4).
    let seen = unsafe { bpf_ktime_get_coarse_ns() };
    let Some(cfg) = CONFIG.get(0) else {
        return Err((Counter::NoBackend, now));
    };
    let seg = pkt.segment();
    let request = flow_state::is_connection_request(seg.flags);
    let tsval = if request { pkt.timestamp(ctx) } else { None };
    let route = new_flow(key, &seg, &Syn::new(seg.seq, tsval), service, cfg, (now, seen), claim)
        .map_err(|counter| (counter, now))?;
    if request {
        synproxy::opened(service, now);
    }
    Ok(route)
}

/// Carries out what the flow table said, as IPv4's `deliver`.
#[inline(always)]
fn deliver(ctx: &XdpContext, pkt: &mut Tcp6Packet<'_>, key: &FlowKey6, lookup: Lookup<Ipv6Wire>) -> u32 {
    let route = match lookup {
        Lookup::Pinned(route) => route,
        Lookup::Stale => return dropped(Counter::StaleFlow),
        Lookup::PortTaken => {
            count(Counter::NatConflict);
            return hand_over(ctx, Job::Rst6);
        }
        Lookup::Proxy(ClientStep::Hold) => return hand_over(ctx, Job::HoldSegment6),
        Lookup::Proxy(ClientStep::ResendSyn) => return hand_over(ctx, Job::ResendSyn6),
        Lookup::Proxy(_) => return XDP_DROP,
    };
    if route.pinned && route.backend.flags & BACKEND_RESET_FLOWS != 0 {
        // A dsr flow has no reverse entry: the removal finds none.
        let _ = FLOWS6.remove(key);
        let _ = REVERSE_NAT6.remove(NatKey6::new(&route.backend, route.snat_addr, route.snat_port));
        count(Counter::FlowReset);
        return hand_over(ctx, Job::Rst6);
    }
    if route.event == Event::RstOutOfWindow {
        count(Counter::RstOutOfWindow);
    }
    if route.ack_offset != 0 {
        pkt.shift(0, route.ack_offset);
    }
    let flow = Carried {
        backend_id: route.backend_id,
        service_id: route.service_id,
        way: Way::ToBackend,
        first: route.event == Event::Established,
        rewrite: route.reply_path,
    };
    modes::send(
        ctx,
        pkt,
        &flow,
        (&route.snat_addr, route.snat_port),
        (&route.backend.addr, route.backend.port),
    )
}

/// [`Job::Rst6`]: the frame's segment answered with a RST back out of the
/// interface it came in on, or dropped.
#[xdp]
pub fn bg_lb_rst6(ctx: XdpContext) -> u32 {
    match parse_tcp6(&ctx).map(|pkt| pkt.become_rst(&ctx)) {
        Some(true) => XDP_TX,
        _ => XDP_DROP,
    }
}

/// The flow of protocol `proto` that owns the pair a backend's reply
/// carries (`nat`), and its client; else the verdict: a pair no flow of that
/// protocol holds is the kernel's (a pair a flow of the other protocol holds
/// included), a reply whose flow is gone or pinned elsewhere is dropped.
#[inline(always)]
fn reply_flow(nat: &NatKey6, proto: u8) -> Result<(FlowKey6, &'static mut Flow6), u32> {
    let Some(client) = reverse_owner(nat).filter(|owner| owner.proto == proto) else {
        count(Counter::ReplyWithoutFlow);
        return Err(XDP_PASS);
    };
    let flow = flow_pinned_to(&client, nat).ok_or_else(|| dropped(Counter::StaleReply))?;
    Ok((client, flow))
}

/// A backend's reply, its flow found, back to VIP -> client.
#[inline(always)]
fn to_client<'a, P: L4Packet6<'a>>(ctx: &XdpContext, pkt: &mut P, client: &FlowKey6, flow: &Flow6) -> u32 {
    let carried = Carried {
        backend_id: flow.backend_id,
        service_id: flow.service_id,
        way: Way::ToClient,
        first: false,
        rewrite: true,
    };
    modes::send(
        ctx,
        pkt,
        &carried,
        (&client.vip_addr, client.vip_port),
        (&client.client_addr, client.client_port),
    )
}

/// [`Job::Tcp6Reply`]: backend -> SNAT address:port (or, `gateway`, backend
/// -> client), screened, as IPv4's `to_client`: back to VIP -> client for
/// the flow that owns the pair only.
#[xdp]
pub fn bg_lb_tcp6_reply(ctx: XdpContext) -> u32 {
    let Some(mut pkt) = parse_tcp6(&ctx) else {
        return XDP_DROP;
    };
    let ctx = &ctx;
    let nat = NatKey6::from_wire(
        pkt.frame.src_addr(),
        pkt.src_port(),
        pkt.frame.dst_addr(),
        pkt.dst_port(),
    );
    let (client, flow) = match reply_flow(&nat, IPPROTO_TCP) {
        Ok(found) => found,
        Err(verdict) => return verdict,
    };
    let seq_offset = match backend_sent(
        ctx,
        flow,
        pkt.segment(),
        || pkt.frame.to_group_mac(),
        Job::AckToBackend6,
    ) {
        Ok(offset) => offset,
        Err(verdict) => return verdict,
    };
    if seq_offset != 0 {
        pkt.shift(seq_offset, 0);
    }
    to_client(ctx, &mut pkt, &client, flow)
}

/// [`Job::Udp6`]: an IPv6 frame with UDP next: to a UDP service, a reply
/// to the SNAT range or a `gateway` flow's client ([`bg_lb_udp6_reply`]),
/// or the kernel's.
#[xdp]
pub fn bg_lb_udp6(ctx: XdpContext) -> u32 {
    let Some(cfg) = CONFIG.get(0) else {
        return XDP_PASS;
    };
    let ctx = &ctx;
    let Some(pkt) = parse_udp6(ctx) else {
        return match peek(ctx) {
            Some((_, dst)) => malformed(&dst),
            None => passed(),
        };
    };
    let (dst, port) = (pkt.frame.dst_addr(), pkt.dst_port());
    // SAFETY: SERVICES6 is not preallocated: the entry stays intact under
    // RCU until the program returns.
    let service = unsafe { SERVICES6.get(ServiceKey6::from_wire(dst, port, IPPROTO_UDP)) };
    match service {
        Some(service) => match screen_udp(&pkt) {
            Ok(()) => udp_to_backend(ctx, pkt, service, cfg),
            Err(verdict) => verdict,
        },
        // Where a gateway service ever was, a datagram to no service or
        // SNAT pair may be a gateway reply: the reply program, whose stack
        // has room for the lookup, tells.
        None if cfg.is_snat_port(dst, port) || cfg.gateway_seen != 0 => hand_over(ctx, Job::Udp6Reply),
        None => passed(),
    }
}

/// Drops a datagram to a service or a backend's reply that has no checksum
/// (IPv6 requires one) or has run out of hops.
#[inline(always)]
fn screen_udp(pkt: &Udp6Packet<'_>) -> Result<(), u32> {
    if pkt.udp_check() == 0 {
        return Err(dropped(Counter::Udp6NoChecksum));
    }
    if pkt.frame.hop_limit() <= 1 {
        return Err(dropped(Counter::TtlExpired));
    }
    Ok(())
}

/// The UDP flow a client datagram belongs to.
#[inline(always)]
fn udp_flow_key(pkt: &Udp6Packet<'_>) -> FlowKey6 {
    FlowKey6::from_wire_proto(
        pkt.frame.src_addr(),
        pkt.src_port(),
        pkt.frame.dst_addr(),
        pkt.dst_port(),
        IPPROTO_UDP,
    )
}

/// Client -> VIP:port datagram, screened: its pinned flow's, towards its
/// backend (IPv4's UDP flow logic, [`udp::pinned`]), or one to open
/// ([`bg_lb_udp6_open`]).
#[inline(always)]
fn udp_to_backend(ctx: &XdpContext, mut pkt: Udp6Packet<'_>, service: &Service, cfg: &DataplaneConfig) -> u32 {
    let key = udp_flow_key(&pkt);
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    match udp::pinned(&key, service, cfg.nat_epoch, now) {
        Some(flow) => udp_send(ctx, &mut pkt, &flow),
        None => hand_over(ctx, Job::Udp6Open),
    }
}

/// [`Job::Udp6Open`]: the frame's datagram, to a UDP service's VIP:port,
/// screened, has no usable flow: a new flow from the service's table
/// ([`udp::new_flow`]), or dropped and counted.
#[xdp]
pub fn bg_lb_udp6_open(ctx: XdpContext) -> u32 {
    let Some(cfg) = CONFIG.get(0) else {
        return XDP_PASS;
    };
    let Some(mut pkt) = parse_udp6(&ctx) else {
        return XDP_DROP;
    };
    let key = udp_flow_key(&pkt);
    // SAFETY: as in `bg_lb_udp6`; copied at once.
    let Some(service) =
        unsafe { SERVICES6.get(ServiceKey6::from_wire(key.vip_addr, key.vip_port, IPPROTO_UDP)) }.copied()
    else {
        // Gone since the frame was handed over: as for a frame without one.
        return passed();
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    match udp::new_flow(&key, &service, cfg, now) {
        Ok(flow) => udp_send(&ctx, &mut pkt, &flow),
        Err(counter) => dropped(counter),
    }
}

/// A client datagram on to its flow's backend.
#[inline(always)]
fn udp_send(ctx: &XdpContext, pkt: &mut Udp6Packet<'_>, flow: &udp::Pinned<Ipv6Wire>) -> u32 {
    let carried = Carried {
        backend_id: flow.backend_id,
        service_id: flow.service_id,
        way: Way::ToBackend,
        first: flow.new,
        rewrite: flow.reply_path,
    };
    modes::send(
        ctx,
        pkt,
        &carried,
        (&flow.snat_addr, flow.snat_port),
        (&flow.backend.addr, flow.backend.port),
    )
}

/// [`Job::Udp6Reply`]: a datagram to a SNAT pair, or to no service or SNAT
/// pair where a gateway service ever was: a backend's reply (to the SNAT
/// pair, or `gateway`: to the client) back to VIP -> client, for the UDP
/// flow that owns the pair only; anything else to no SNAT pair is the
/// kernel's, untouched.
#[xdp]
pub fn bg_lb_udp6_reply(ctx: XdpContext) -> u32 {
    let Some(cfg) = CONFIG.get(0) else {
        return XDP_PASS;
    };
    let Some(mut pkt) = parse_udp6(&ctx) else {
        return XDP_DROP;
    };
    let ctx = &ctx;
    if !cfg.is_snat_port(pkt.frame.dst_addr(), pkt.dst_port()) && !modes::is_udp_gateway_reply(&pkt) {
        return passed();
    }
    if let Err(verdict) = screen_udp(&pkt) {
        return verdict;
    }
    let nat = NatKey6::from_wire(
        pkt.frame.src_addr(),
        pkt.src_port(),
        pkt.frame.dst_addr(),
        pkt.dst_port(),
    );
    let (client, flow) = match reply_flow(&nat, IPPROTO_UDP) {
        Ok(found) => found,
        Err(verdict) => return verdict,
    };
    // SAFETY: a helper without arguments.
    flow.last_seen_ns = unsafe { bpf_ktime_get_ns() };
    to_client(ctx, &mut pkt, &client, flow)
}

/// [`Job::Icmp6`]: an ICMPv6 message. An error (destination unreachable,
/// packet too big, time exceeded, parameter problem) that a router or host
/// sent about a packet the LB emitted, to that packet's source, is
/// translated to the other side of the NAT, as IPv4's (`crate::icmp`): about
/// a packet to a backend, it goes to the client from the VIP, quoting what
/// the client sent; about a packet to a client, to the backend from the SNAT
/// address (`gateway`: the client's), quoting what the backend sent. (A
/// `dsr` flow's packets keep their addresses: nothing to translate.)
/// Anything else passes untouched.
#[xdp]
pub fn bg_lb_icmp6(ctx: XdpContext) -> u32 {
    let Some(cfg) = CONFIG.get(0) else {
        return XDP_PASS;
    };
    let Some(mut error) = parse_icmp6_error(&ctx) else {
        return passed();
    };
    let (quoted_src, _) = error.quoted();
    // Sent to the quoted packet's source: the VIP or the SNAT address.
    if error.frame.dst_addr().differs(&quoted_src.0) != 0 {
        return without_flow();
    }
    // A `gateway` flow's packets to its backend leave from the client's own
    // address: any source with a reverse entry is tried, as for IPv4.
    let from_snat = cfg.is_snat_port(quoted_src.0, quoted_src.1);
    let mut translated = None;
    if from_snat || cfg.gateway_seen != 0 {
        translated = to_client_side(&mut error);
    }
    if translated.is_none() && !from_snat {
        translated = to_backend_side(&mut error);
    }
    match translated {
        None => without_flow(),
        Some(Counter::TtlExpired) => dropped(Counter::TtlExpired),
        Some(counter) => {
            count(counter);
            forward6(&ctx, &mut error.frame)
        }
    }
}

/// An error about a packet the LB sent a backend (SNAT pair -> backend),
/// translated for the client of the flow that owns the pair: from the VIP,
/// quoting client -> VIP. What it was counted as, or `None` (untouched)
/// without such a flow.
#[inline(always)]
fn to_client_side(error: &mut Icmp6Error<'_>) -> Option<Counter> {
    let (quoted_src, quoted_dst) = error.quoted();
    let nat = NatKey6::from_wire(quoted_dst.0, quoted_dst.1, quoted_src.0, quoted_src.1);
    let client = reverse_owner(&nat).filter(|owner| owner.proto == error.quoted_proto())?;
    flow_pinned_to(&client, &nat)?;
    if error.frame.hop_limit() <= 1 {
        return Some(Counter::TtlExpired);
    }
    error.frame.decrement_hop_limit();
    error.translate(
        (&client.vip_addr, &client.client_addr),
        (&client.client_addr, client.client_port),
        (&client.vip_addr, client.vip_port),
    );
    Some(Counter::IcmpErrorToClient)
}

/// An error about a packet the LB sent a client (VIP -> client), translated
/// for the flow's backend, if the flow is pinned (its backend id current,
/// its reverse entry its own): from the SNAT address, quoting backend ->
/// SNAT pair.
#[inline(always)]
fn to_backend_side(error: &mut Icmp6Error<'_>) -> Option<Counter> {
    let (quoted_src, quoted_dst) = error.quoted();
    let key = FlowKey6::from_wire_proto(
        quoted_dst.0,
        quoted_dst.1,
        quoted_src.0,
        quoted_src.1,
        error.quoted_proto(),
    );
    let flow = flow_entry(&key)?;
    let backend = BACKENDS6.get(flow.backend_id).copied()?;
    let owner = reverse_owner(&flow.nat_key(&backend))?;
    if backend.generation != flow.backend_gen || !same_key(&owner, &key) {
        return None;
    }
    if error.frame.hop_limit() <= 1 {
        return Some(Counter::TtlExpired);
    }
    error.frame.decrement_hop_limit();
    error.translate(
        (&flow.snat_addr, &backend.addr),
        (&backend.addr, backend.port),
        (&flow.snat_addr, flow.snat_port),
    );
    // A SYN-proxied flow's backend numbers its bytes its own way: the quote
    // in its numbers, which its stack checks (as for IPv4).
    if flow.proxy & (PROXIED | BACKEND_READY) == PROXIED | BACKEND_READY {
        error.shift_quoted_seq(flow.seq_delta);
    }
    Some(Counter::IcmpErrorToBackend)
}

/// An ICMPv6 error that quotes no pinned flow: the kernel's.
#[inline(always)]
fn without_flow() -> u32 {
    count(Counter::IcmpErrorWithoutFlow);
    XDP_PASS
}
