//! Answers the client with a TCP RST from the VIP: a new connection that no
//! backend can take is refused at once instead of hanging in SYN retries,
//! and flows of a backend that went down with `on_down = "reset"` end at
//! their next packet. The frame is rebuilt in place and sent back out of the
//! interface it came in on. A RST is never answered with a RST: whatever
//! the caller, that one is dropped.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_TX},
    programs::XdpContext,
};
use bg_lb_common::{
    checksum::{finish, sum_words},
    flow_state::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    maps::IPPROTO_TCP,
};

use crate::packet::{BareHeaders, IP_LEN, TCP_LEN, TcpPacket};

/// RFC 793 reset generation: to a segment with ACK, `seq = its ack`; else
/// `seq = 0, ack = its seq + length` with ACK set.
#[inline(always)]
fn answer(pkt: &TcpPacket<'_>) -> BareHeaders {
    let flags = pkt.flags();
    let consumed = pkt.payload_len() + (flags & TCP_SYN != 0) as u32 + (flags & TCP_FIN != 0) as u32;
    let (rst_seq, rst_ack, rst_flags) = if flags & TCP_ACK != 0 {
        (pkt.ack_seq(), 0, TCP_RST)
    } else {
        (0, pkt.seq().wrapping_add(consumed), TCP_RST | TCP_ACK)
    };
    let (src_addr, dst_addr) = (pkt.src_addr().to_ne_bytes(), pkt.dst_addr().to_ne_bytes());

    let mut ip_hdr = [0u8; IP_LEN];
    ip_hdr[0] = 0x45;
    ip_hdr[2..4].copy_from_slice(&((IP_LEN + TCP_LEN) as u16).to_be_bytes());
    ip_hdr[6] = 0x40; // don't fragment
    ip_hdr[8] = 64;
    ip_hdr[9] = IPPROTO_TCP;
    ip_hdr[12..16].copy_from_slice(&dst_addr);
    ip_hdr[16..20].copy_from_slice(&src_addr);
    let ip_check = finish(sum_words(&ip_hdr));
    ip_hdr[10..12].copy_from_slice(&ip_check.to_ne_bytes());

    let mut tcp_hdr = [0u8; TCP_LEN];
    tcp_hdr[0..2].copy_from_slice(&pkt.dst_port().to_ne_bytes());
    tcp_hdr[2..4].copy_from_slice(&pkt.src_port().to_ne_bytes());
    tcp_hdr[4..8].copy_from_slice(&rst_seq.to_be_bytes());
    tcp_hdr[8..12].copy_from_slice(&rst_ack.to_be_bytes());
    tcp_hdr[12] = (TCP_LEN as u8 / 4) << 4;
    tcp_hdr[13] = rst_flags;
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&dst_addr);
    pseudo[4..8].copy_from_slice(&src_addr);
    pseudo[9] = IPPROTO_TCP;
    pseudo[11] = TCP_LEN as u8;
    let tcp_check = finish(sum_words(&pseudo) + sum_words(&tcp_hdr));
    tcp_hdr[16..18].copy_from_slice(&tcp_check.to_ne_bytes());

    BareHeaders {
        ip: ip_hdr,
        tcp: tcp_hdr,
    }
}

#[inline(always)]
pub fn reply_rst(ctx: &XdpContext, mut pkt: TcpPacket<'_>) -> u32 {
    if pkt.flags() & TCP_RST != 0 || pkt.to_group_mac() {
        return XDP_DROP;
    }
    let answer = answer(&pkt);
    pkt.swap_macs();
    if !pkt.replace_with(ctx, &answer) {
        return XDP_DROP;
    }
    XDP_TX
}
