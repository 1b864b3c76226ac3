//! Answers the client with a TCP RST from the VIP: a new connection that no
//! backend can take is refused at once instead of hanging in SYN retries,
//! and flows of a backend that went down with `on_down = "reset"` end at
//! their next packet. The frame is rebuilt in place and sent back out of the
//! interface it came in on.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_TX},
    helpers::bpf_xdp_adjust_tail,
    programs::XdpContext,
};
use bg_lb_common::{
    checksum::{finish, sum_words},
    flow_state::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    maps::IPPROTO_TCP,
};
use network_types::eth::EthHdr;

use crate::packet::{TcpPacket, ptr_at};

const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
const TCP_LEN: usize = 20;
const RST_FRAME_LEN: usize = ETH_LEN + IP_LEN + TCP_LEN;

/// Everything the reply needs, read before the frame is cut down.
struct Answer {
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    ip: [u8; IP_LEN],
    tcp: [u8; TCP_LEN],
}

/// RFC 793 reset generation: to a segment with ACK, `seq = its ack`; else
/// `seq = 0, ack = its seq + length` with ACK set.
#[inline(always)]
fn answer(pkt: &TcpPacket) -> Answer {
    let (eth, ip, tcp) = unsafe { (&*pkt.eth, &*pkt.ip, &*pkt.tcp) };
    let seq = u32::from_be_bytes(tcp.seq);
    let ack = u32::from_be_bytes(tcp.ack_seq);
    let payload = pkt.ip_len as u32 - IP_LEN as u32 - tcp.doff() as u32 * 4;
    let consumed = payload + (pkt.flags & TCP_SYN != 0) as u32 + (pkt.flags & TCP_FIN != 0) as u32;
    let (rst_seq, rst_ack, flags) = if pkt.flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        (0, seq.wrapping_add(consumed), TCP_RST | TCP_ACK)
    };

    let mut ip_hdr = [0u8; IP_LEN];
    ip_hdr[0] = 0x45;
    ip_hdr[2..4].copy_from_slice(&((IP_LEN + TCP_LEN) as u16).to_be_bytes());
    ip_hdr[6] = 0x40; // don't fragment
    ip_hdr[8] = 64;
    ip_hdr[9] = IPPROTO_TCP;
    ip_hdr[12..16].copy_from_slice(&ip.dst_addr);
    ip_hdr[16..20].copy_from_slice(&ip.src_addr);
    let ip_check = finish(sum_words(&ip_hdr));
    ip_hdr[10..12].copy_from_slice(&ip_check.to_ne_bytes());

    let mut tcp_hdr = [0u8; TCP_LEN];
    tcp_hdr[0..2].copy_from_slice(&tcp.dest);
    tcp_hdr[2..4].copy_from_slice(&tcp.source);
    tcp_hdr[4..8].copy_from_slice(&rst_seq.to_be_bytes());
    tcp_hdr[8..12].copy_from_slice(&rst_ack.to_be_bytes());
    tcp_hdr[12] = (TCP_LEN as u8 / 4) << 4;
    tcp_hdr[13] = flags;
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&ip.dst_addr);
    pseudo[4..8].copy_from_slice(&ip.src_addr);
    pseudo[9] = IPPROTO_TCP;
    pseudo[11] = TCP_LEN as u8;
    let tcp_check = finish(sum_words(&pseudo) + sum_words(&tcp_hdr));
    tcp_hdr[16..18].copy_from_slice(&tcp_check.to_ne_bytes());

    Answer {
        eth_src: eth.dst_addr,
        eth_dst: eth.src_addr,
        ip: ip_hdr,
        tcp: tcp_hdr,
    }
}

#[inline(always)]
pub fn reply_rst(ctx: &XdpContext, pkt: &TcpPacket) -> u32 {
    let answer = answer(pkt);
    let delta = RST_FRAME_LEN as i32 - (ctx.data_end() - ctx.data()) as i32;
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return XDP_DROP;
    }
    // Shrinking the frame invalidated every packet pointer: take new ones.
    let (Some(eth), Some(ip), Some(tcp)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<[u8; IP_LEN]>(ctx, ETH_LEN),
        ptr_at::<[u8; TCP_LEN]>(ctx, ETH_LEN + IP_LEN),
    ) else {
        return XDP_DROP;
    };
    unsafe {
        (*eth).src_addr = answer.eth_src;
        (*eth).dst_addr = answer.eth_dst;
        *ip = answer.ip;
        *tcp = answer.tcp;
    }
    XDP_TX
}
