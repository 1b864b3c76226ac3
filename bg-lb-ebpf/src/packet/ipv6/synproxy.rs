//! The SYN proxy's IPv6 packet work: what it reads of a segment, the
//! kernel's IPv6 SYN cookie helpers, the sequence-number shift of a proxied
//! flow, and the segments it writes in place of a frame (a cookie SYN-ACK,
//! the SYN and ACK it sends a backend, a held segment), as
//! [`crate::packet::TcpPacket`]'s for IPv4.

use aya_ebpf::{
    bindings::{ipv6hdr, tcphdr},
    helpers::{bpf_tcp_raw_check_syncookie_ipv6, bpf_tcp_raw_gen_syncookie_ipv6},
    programs::XdpContext,
};
use bg_lb_common::{
    checksum::{finish, replace32},
    maps::{IPPROTO_TCP, Ipv6Wire},
    syn_proxy::{HELD_PAYLOAD_MAX, ack_to_backend, seq_to_client},
};
use network_types::{ip::Ipv6Hdr, tcp::TcpHdr};

use super::{L4_OFFSET6, Tcp6Packet, bytes, parse_tcp6};
use crate::packet::{
    BareSegment, SegmentIp, TCP_LEN, TCP_MAX_LEN, cookie_and_mss, csum, load_payload, load_tcp_header,
    write_bare_segment, write_segment,
};

/// Sequence numbers and the window host order, as [`crate::packet::TcpPacket`]'s.
impl Tcp6Packet<'_> {
    #[inline(always)]
    pub fn seq(&self) -> u32 {
        u32::from_be_bytes(self.tcp.seq)
    }

    #[inline(always)]
    pub fn ack_seq(&self) -> u32 {
        u32::from_be_bytes(self.tcp.ack_seq)
    }

    #[inline(always)]
    pub fn window(&self) -> u16 {
        u16::from_be_bytes(self.tcp.window)
    }

    #[inline(always)]
    pub fn payload_len(&self) -> u32 {
        self.tcp_len as u32 - self.tcp.doff() as u32 * 4
    }

    /// Addresses the frame back to where it came from, at the Ethernet layer.
    #[inline(always)]
    pub fn swap_macs(&mut self) {
        core::mem::swap(&mut self.frame.eth.src_addr, &mut self.frame.eth.dst_addr);
    }

    /// A proxied flow's translation after [`Tcp6Packet::rewrite`]: `seq_offset`
    /// subtracted from the sequence number (backend -> client), `ack_offset`
    /// added to the acknowledgment number (client -> backend, with ACK set),
    /// with the TCP checksum.
    #[inline(always)]
    pub fn shift(&mut self, seq_offset: u32, ack_offset: u32) {
        let mut check = u16::from_ne_bytes(self.tcp.check);
        if seq_offset != 0 {
            let (old, new) = (self.seq(), seq_to_client(self.seq(), seq_offset));
            check = replace32(check, old.to_be(), new.to_be());
            self.tcp.seq = new.to_be_bytes();
        }
        if ack_offset != 0 && self.flags & bg_lb_common::flow_state::TCP_ACK != 0 {
            let (old, new) = (self.ack_seq(), ack_to_backend(self.ack_seq(), ack_offset));
            check = replace32(check, old.to_be(), new.to_be());
            self.tcp.ack_seq = new.to_be_bytes();
        }
        self.tcp.check = check.to_ne_bytes();
    }

    /// The TCP header, options included, as
    /// [`crate::packet::TcpPacket::tcp_header`] copies it.
    #[inline(always)]
    pub fn tcp_header(&self, ctx: &XdpContext) -> Option<([u8; TCP_MAX_LEN], u32)> {
        load_tcp_header(ctx, self.tcp, L4_OFFSET6)
    }

    /// Whether the segment passed unharmed, as its receiver would check: the
    /// TCP checksum when the segment has no payload (`tcp` holds its
    /// header, as [`Tcp6Packet::tcp_header`] copies it). IPv6 has no header
    /// checksum.
    #[inline(always)]
    pub fn checksum_holds(&self, tcp: &[u8; TCP_MAX_LEN]) -> bool {
        self.payload_len() != 0 || finish(csum(tcp, pseudo_header_sum(self.frame.ip, self.tcp_len))) == 0
    }

    /// Copies the payload as [`crate::packet::TcpPacket::copy_payload`].
    #[inline(always)]
    pub fn copy_payload(&self, ctx: &XdpContext, into: &mut [u8; HELD_PAYLOAD_MAX]) -> Option<u32> {
        load_payload(ctx, self.tcp, L4_OFFSET6, self.payload_len(), into)
    }

    // The cookie helpers below mirror IPv4's but stay apart: each family
    // has its own kernel helpers and header types.

    /// The kernel's SYN cookie for a SYN with this packet's IPv6 header and
    /// the TCP header `tcp[..len]`, and the MSS (one of the kernel's IPv6
    /// table) it encodes.
    #[inline(always)]
    pub fn syncookie<const N: usize>(&self, tcp: &mut [u8; N], len: u32) -> Option<(u32, u16)> {
        // SAFETY: the IPv6 header is inside the frame (parse_tcp6) and tcp
        // is readable for len bytes (the helper checks len against its
        // doff); the helper only reads both.
        let rc = unsafe {
            bpf_tcp_raw_gen_syncookie_ipv6(
                &*self.frame.ip as *const Ipv6Hdr as *mut ipv6hdr,
                tcp.as_mut_ptr() as *mut tcphdr,
                len,
            )
        };
        cookie_and_mss(rc)
    }

    /// Whether this segment's ack - 1 is a valid SYN cookie for its 4-tuple
    /// and seq - 1.
    #[inline(always)]
    pub fn proves_syncookie(&self) -> bool {
        // SAFETY: both headers are inside the frame (parse_tcp6); the helper
        // only reads them.
        unsafe {
            bpf_tcp_raw_check_syncookie_ipv6(
                &*self.frame.ip as *const Ipv6Hdr as *mut ipv6hdr,
                &*self.tcp as *const TcpHdr as *mut tcphdr,
            ) == 0
        }
    }

    /// Turns the frame into `segment`, as
    /// [`crate::packet::TcpPacket::become_segment`] does for IPv4: resized to
    /// its headers (the Ethernet header stays), traffic class and flow
    /// label 0, hop limit 64, the TCP checksum computed in full.
    #[inline(always)]
    pub fn become_segment<'c>(self, ctx: &'c XdpContext, segment: &BareSegment<Ipv6Wire>) -> Option<Tcp6Packet<'c>> {
        if !write_bare_segment(self.frame.eth, ctx, segment) {
            return None;
        }
        parse_tcp6(ctx)
    }

    /// [`Tcp6Packet::become_segment`] carrying `payload[..len]` after a bare
    /// TCP header (`payload` is zero past `len` to a multiple of 4).
    #[inline(always)]
    pub fn become_data_segment<'c>(
        self,
        ctx: &'c XdpContext,
        segment: &BareSegment<Ipv6Wire>,
        payload: &[u8; HELD_PAYLOAD_MAX],
        len: u32,
    ) -> Option<Tcp6Packet<'c>> {
        if !write_segment::<_, TCP_LEN>(self.frame.eth, ctx, segment, Some((payload, len))) {
            return None;
        }
        parse_tcp6(ctx)
    }
}

impl SegmentIp for Ipv6Wire {
    type Header = Ipv6Hdr;

    /// Traffic class and flow label 0, hop limit 64.
    #[inline(always)]
    fn fill_ip(ip: &mut Ipv6Hdr, s: &BareSegment<Ipv6Wire>, segment_len: u16) {
        ip.vcf = [0x60, 0, 0, 0];
        ip.payload_len = segment_len.to_be_bytes();
        ip.next_hdr = IPPROTO_TCP;
        ip.hop_limit = 64;
        ip.src_addr = bytes(s.src_addr);
        ip.dst_addr = bytes(s.dst_addr);
    }

    #[inline(always)]
    fn pseudo_sum(ip: &Ipv6Hdr, _: &BareSegment<Ipv6Wire>, segment_len: u16) -> u32 {
        pseudo_header_sum(ip, segment_len)
    }
}

/// The one's complement sum of the IPv6 pseudo-header of `ip` (its
/// addresses) for `len` TCP bytes, unfolded.
#[inline(always)]
fn pseudo_header_sum(ip: &Ipv6Hdr, len: u16) -> u32 {
    // The length's and next header's 16-bit words; the rest of their
    // 32-bit fields is zero.
    let seed = u16::from_ne_bytes(len.to_be_bytes()) as u32 + u16::from_ne_bytes([0, IPPROTO_TCP]) as u32;
    // SAFETY: the two addresses are adjacent in the header (`repr(C)`, all
    // bytes): 32 plain bytes.
    let addrs = unsafe { &*(ip.src_addr.as_ptr() as *const [u8; 32]) };
    csum(addrs, seed)
}
