//! ICMP for NATed flows, so that PMTU discovery and unreachable and
//! time-exceeded reports work through the load balancer:
//! - An error that a router or endpoint sends about a packet the LB emitted
//!   quotes that packet. It is translated to the other side of the NAT, to
//!   the sender of the packet the LB translated, quote and outer header
//!   alike, every checksum with them (Linux conntrack and IPVS do the same).
//!   Errors about anything else pass to the kernel untouched.
//! - A DF packet (TCP or UDP) too big for its egress link is answered with
//!   fragmentation needed, as a router would, quoting what its sender sent.
//!
//! Either error comes from the address its receiver sent to (the VIP for a
//! client, the SNAT address for a backend), not from the router that found
//! the problem. Linux conntrack with full NAT rewrites the outer source the
//! same way, IPVS does for errors to clients, and Katran sends its own
//! too-big errors from the VIP; Cilium keeps the router's address, which
//! suits a cluster's private network but not the Internet: there a router
//! behind the LB has a private address that bogon filters drop on the way
//! to the client and that would reveal the network behind the LB. The
//! receiver's stack matches an error by its quote alone, whatever its
//! source.
//!
//! Errors quoting a UDP datagram are translated the same way, for UDP
//! flows only, by a program of its own ([`bg_lb_icmp_udp`], reached by tail
//! call as the UDP path is), so the TCP program's stack does not grow; a
//! quoted UDP checksum of 0 (none) stays 0.
//!
//! A SYN-proxied flow's backend numbers its bytes differently from what its
//! client sees (`seq_delta`): an error that goes to the backend quotes its
//! segment with the sequence number moved back into the backend's numbers,
//! which its stack checks. Errors to the client need no shift: the client's
//! sequence numbers cross the LB untranslated.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};
use bg_lb_common::{
    checksum::{replace16, replace32},
    counters::Counter,
    icmp::{IPPROTO_ICMP, Tuple, frag_needed, quote, shift_quoted_seq},
    maps::{FlowKey, IPPROTO_TCP, IPPROTO_UDP, NatKey},
    syn_proxy::Job,
    udp,
};

use crate::{
    forward::{Route, RouteQuery, dropped, route, send},
    maps::{BACKENDS, count, flow_entry, flow_pinned_to, reverse_owner},
    packet::{L4Packet, NotForUs, icmp_quotes_udp, parse_icmp_error, parse_tcp},
    synproxy,
};

/// Translates an ICMP error about a pinned TCP flow to the other side and
/// forwards it; hands one quoting UDP to [`bg_lb_icmp_udp`]; passes anything
/// else.
#[inline(always)]
pub fn icmp_error(ctx: &XdpContext) -> u32 {
    translate(ctx, IPPROTO_TCP)
}

/// [`Job::IcmpUdp`]: an ICMP error quoting a UDP datagram, translated for
/// its pinned UDP flow, or passed.
#[xdp]
pub fn bg_lb_icmp_udp(ctx: XdpContext) -> u32 {
    // Through the TCP program's parse, as the frame came: parsed directly,
    // LLVM zero-extends the frame's start pointer with shifts, which the
    // verifier refuses ("pointer arithmetic with <<= operator prohibited").
    match parse_tcp(&ctx) {
        Err(NotForUs::Icmp) => translate(&ctx, IPPROTO_UDP),
        _ => XDP_PASS,
    }
}

/// An ICMP error about a packet of protocol `proto` (TCP or UDP), for a
/// pinned flow of that protocol.
#[inline(always)]
fn translate(ctx: &XdpContext, proto: u8) -> u32 {
    let mut error = match parse_icmp_error(ctx, proto) {
        Ok(error) => error,
        Err(Counter::IcmpErrorWithoutFlow) if proto == IPPROTO_TCP && icmp_quotes_udp(ctx) => {
            return synproxy::hand_over(ctx, Job::IcmpUdp);
        }
        Err(counter) => {
            count(counter);
            return XDP_PASS;
        }
    };
    let quoted = error.quoted();
    // An error goes to the source of the packet it quotes.
    let origin = if error.dst_addr() == quoted.src_addr {
        origin_of(&quoted, proto)
    } else {
        None
    };
    let Some(origin) = origin else {
        count(Counter::IcmpErrorWithoutFlow);
        return XDP_PASS;
    };
    let ttl = error.ttl();
    if ttl <= 1 {
        count(Counter::TtlExpired);
        return XDP_PASS;
    }

    let mut checks = error.quote_checksums().translate(&quoted, &origin.sent);
    if origin.seq_shift != 0 {
        let old = error.quoted_seq();
        let new = u32::from_be(old).wrapping_add(origin.seq_shift).to_be();
        checks = checks.shift_seq(old, new);
        error.set_quoted_seq(new);
    }
    error.set_quoted(&origin.sent, &checks);
    let (src, dst) = (origin.sent.dst_addr, origin.sent.src_addr);
    let mut ip_check = replace32(error.ip_check(), error.src_addr(), src);
    ip_check = replace32(ip_check, error.dst_addr(), dst);
    // TTL shares a 16-bit checksum word with the protocol byte.
    ip_check = replace16(
        ip_check,
        u16::from_ne_bytes([ttl, IPPROTO_ICMP]),
        u16::from_ne_bytes([ttl - 1, IPPROTO_ICMP]),
    );
    error.set_addrs(src, dst);
    error.set_ttl(ttl - 1);
    error.set_ip_check(ip_check);

    let query = RouteQuery {
        proto: IPPROTO_ICMP,
        tos: error.tos(),
        ip_len: error.ip_len(),
        src_addr: src,
        dst_addr: dst,
    };
    match route(ctx, &query) {
        Route::Next {
            ifindex, smac, dmac, ..
        } => {
            error.set_macs(smac, dmac);
            count(origin.counter);
            send(ctx, ifindex)
        }
        // An error is never answered with another (RFC 1122 3.2.2).
        Route::TooBig { .. } => dropped(Counter::TooBigDropped),
        Route::Failed(counter) => dropped(counter),
    }
}

/// Answers `pkt`, a TCP segment or UDP datagram the LB has translated and
/// found too big for the egress link's `mtu`, with fragmentation needed to
/// its sender, back out of the interface it came in on. The answer quotes
/// the packet as its sender sent it, for the sender's stack to find the
/// connection (and to check the sequence number; a UDP checksum is quoted
/// as sent too); the LB has decremented its TTL.
#[inline(always)]
pub fn answer_too_big<'a, P: L4Packet<'a>>(ctx: &XdpContext, pkt: &mut P, mtu: u16) -> u32 {
    let emitted = pkt.tuple();
    let origin = origin_of(&emitted, P::PROTO);
    // A packet forwarded without a pinned flow has no way back, and one sent
    // to a group MAC must not be answered from it.
    let Some(origin) = origin.filter(|_| !pkt.to_group_mac()) else {
        return dropped(Counter::TooBigDropped);
    };
    let (ip, mut l4) = pkt.quote();
    if P::PROTO == IPPROTO_UDP {
        udp::restore_sent_check(&mut l4, &emitted, &origin.sent);
    } else {
        shift_quoted_seq(&mut l4, origin.seq_shift);
    }
    let answer = frag_needed(&quote(&ip, &l4, &origin.sent), mtu);
    pkt.swap_macs();
    if !pkt.answer_with(ctx, &answer) {
        return XDP_DROP;
    }
    count(Counter::TooBigAnswered);
    XDP_TX
}

/// The packet the LB translated into the one it emitted, and the counter of
/// errors that go back to that packet's sender.
struct Origin {
    /// Addresses and ports as the sender sent it.
    sent: Tuple,
    counter: Counter,
    /// Added to the quoted sequence number: a SYN-proxied flow's offset,
    /// for its backend.
    seq_shift: u32,
}

/// Where `emitted`, a packet the LB sent (or is about to send), came from:
/// a client's packet if it goes to a backend from the SNAT address (or, for
/// a `gateway` flow, from the client's own: so any source whose reverse-NAT
/// key exists is tried), a backend's if it goes to a client. Only a pinned
/// flow whose flow and reverse-NAT entries agree has an origin: an error
/// about one flow must never reach another's endpoint, as its quote may
/// carry that flow's data. Only a flow of `proto` has an origin: a flow of
/// the other protocol on the same pair is not the one quoted.
#[inline(always)]
fn origin_of(emitted: &Tuple, proto: u8) -> Option<Origin> {
    let nat = NatKey {
        backend_addr: emitted.dst_addr,
        snat_addr: emitted.src_addr,
        backend_port: emitted.dst_port,
        snat_port: emitted.src_port,
    };
    if let Some(client) = reverse_owner(&nat) {
        if client.proto != proto {
            return None;
        }
        flow_pinned_to(&client, &nat)?;
        return Some(Origin {
            sent: Tuple {
                src_addr: client.client_addr,
                dst_addr: client.vip_addr,
                src_port: client.client_port,
                dst_port: client.vip_port,
            },
            counter: Counter::IcmpErrorToClient,
            seq_shift: 0,
        });
    }
    let client = FlowKey {
        client_addr: emitted.dst_addr,
        vip_addr: emitted.src_addr,
        client_port: emitted.dst_port,
        vip_port: emitted.src_port,
        proto,
        _pad: [0; 3],
    };
    let flow = flow_entry(&client)?;
    let backend = BACKENDS.get(flow.backend_id)?;
    if backend.generation != flow.backend_gen {
        return None;
    }
    let owner = reverse_owner(&flow.nat_key(backend))?;
    if owner != client {
        return None;
    }
    Some(Origin {
        sent: Tuple {
            src_addr: backend.addr,
            dst_addr: flow.snat_addr,
            src_port: backend.port,
            dst_port: flow.snat_port,
        },
        counter: Counter::IcmpErrorToBackend,
        seq_shift: synproxy::seq_offset(flow),
    })
}
