//! Address/port rewrites, and a SYN-proxied flow's sequence-number
//! translation, with incremental IP and TCP checksum updates.

use bg_lb_common::{
    checksum::{replace16, replace32},
    flow_state::TCP_ACK,
    syn_proxy::{ack_to_backend, seq_to_client},
};

use crate::packet::{Ipv4Frame, TcpPacket};

/// Wire-order source and destination for a rewrite, and the offsets of a
/// SYN-proxied flow (0 for every other flow).
pub struct Endpoints {
    pub src_addr: u32,
    pub src_port: u16,
    pub dst_addr: u32,
    pub dst_port: u16,
    /// Subtracted from the sequence number (backend -> client).
    pub seq_offset: u32,
    /// Added to the acknowledgment number, if ACK is set (client -> backend).
    pub ack_offset: u32,
}

/// Rewrites both endpoints. The addresses are in the IP header checksum and,
/// through the pseudo-header, in the TCP checksum; the ports only in the latter.
#[inline(always)]
pub fn rewrite(pkt: &mut TcpPacket<'_>, to: &Endpoints) {
    let (old_src, old_dst, old_sport, old_dport) = (pkt.src_addr(), pkt.dst_addr(), pkt.src_port(), pkt.dst_port());
    let mut ip_check = pkt.ip_check();
    ip_check = replace32(ip_check, old_src, to.src_addr);
    ip_check = replace32(ip_check, old_dst, to.dst_addr);
    pkt.set_ip_check(ip_check);
    pkt.set_addrs(to.src_addr, to.dst_addr);

    let mut tcp_check = pkt.tcp_check();
    tcp_check = replace32(tcp_check, old_src, to.src_addr);
    tcp_check = replace32(tcp_check, old_dst, to.dst_addr);
    tcp_check = replace16(tcp_check, old_sport, to.src_port);
    tcp_check = replace16(tcp_check, old_dport, to.dst_port);
    if to.seq_offset != 0 {
        let (old, new) = (pkt.seq(), seq_to_client(pkt.seq(), to.seq_offset));
        tcp_check = replace32(tcp_check, old.to_be(), new.to_be());
        pkt.set_seq(new);
    }
    if to.ack_offset != 0 && pkt.flags() & TCP_ACK != 0 {
        let (old, new) = (pkt.ack_seq(), ack_to_backend(pkt.ack_seq(), to.ack_offset));
        tcp_check = replace32(tcp_check, old.to_be(), new.to_be());
        pkt.set_ack_seq(new);
    }
    pkt.set_tcp_check(tcp_check);
    pkt.set_ports(to.src_port, to.dst_port);
}

/// Decrements the TTL as a router would, so a routing loop through the LB
/// dies out; for a packet being forwarded, whose TTL was found above 1.
#[inline(always)]
pub fn decrement_ttl(pkt: &mut Ipv4Frame<'_>) {
    let ttl = pkt.ttl();
    let next = ttl.saturating_sub(1);
    // TTL shares a 16-bit checksum word with the protocol byte.
    let old = u16::from_ne_bytes([ttl, pkt.proto()]);
    let new = u16::from_ne_bytes([next, pkt.proto()]);
    pkt.set_ip_check(replace16(pkt.ip_check(), old, new));
    pkt.set_ttl(next);
}
