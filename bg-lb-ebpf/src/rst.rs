//! Answers the client with a TCP RST from the VIP: a new connection that no
//! backend can take is refused at once instead of hanging in SYN retries,
//! and flows of a backend that went down with `on_down = "reset"` end at
//! their next packet. The frame is rebuilt in place and sent back out of the
//! interface it came in on. A RST is never answered with a RST: whatever
//! the caller, that one is dropped. The TCP path hands the frame to
//! [`bg_lb_rst`], a program of its own reached by tail call ([`refuse`]):
//! rebuilding the frame takes a call chain whose stack the TCP program,
//! near the verifier's 512-byte limit, cannot add to its own.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};
use bg_lb_common::{
    flow_state::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    syn_proxy::Job,
};

use crate::{
    packet::{BareSegment, TcpPacket, parse_tcp},
    synproxy,
};

/// Answers the TCP segment in the frame, unmodified so far, with a RST.
#[inline(always)]
pub fn refuse(ctx: &XdpContext) -> u32 {
    synproxy::hand_over(ctx, Job::Rst)
}

/// [`Job::Rst`]: the frame's segment answered with a RST, or dropped.
#[xdp]
pub fn bg_lb_rst(ctx: XdpContext) -> u32 {
    match parse_tcp(&ctx) {
        Ok(pkt) => reply_rst(&ctx, pkt),
        Err(_) => XDP_DROP,
    }
}

/// RFC 793 reset generation: to a segment with ACK, `seq = its ack`; else
/// `seq = 0, ack = its seq + length` with ACK set.
#[inline(always)]
fn answer(pkt: &TcpPacket<'_>) -> BareSegment {
    let flags = pkt.flags();
    let consumed = pkt.payload_len() + (flags & TCP_SYN != 0) as u32 + (flags & TCP_FIN != 0) as u32;
    let (seq, ack, flags) = if flags & TCP_ACK != 0 {
        (pkt.ack_seq(), 0, TCP_RST)
    } else {
        (0, pkt.seq().wrapping_add(consumed), TCP_RST | TCP_ACK)
    };
    BareSegment {
        src_addr: pkt.dst_addr(),
        dst_addr: pkt.src_addr(),
        src_port: pkt.dst_port(),
        dst_port: pkt.src_port(),
        seq,
        ack,
        flags,
        window: 0,
        mss: 0,
    }
}

#[inline(always)]
fn reply_rst(ctx: &XdpContext, mut pkt: TcpPacket<'_>) -> u32 {
    if pkt.flags() & TCP_RST != 0 || pkt.to_group_mac() {
        return XDP_DROP;
    }
    let answer = answer(&pkt);
    pkt.swap_macs();
    match pkt.become_segment(ctx, &answer) {
        Some(_) => XDP_TX,
        None => XDP_DROP,
    }
}
