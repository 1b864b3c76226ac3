//! An IPv6 frame turned, in place, into the ICMPv6 Packet Too Big (RFC 4443
//! 3.2) that answers it: the packet cut to its first [`QUOTE6_LEN`] bytes,
//! the new IPv6 and ICMPv6 headers put in front of it, the checksum summed
//! over the packet by `bpf_csum_diff` in chunks. Nothing is built on the
//! stack (a copy of the quote would overflow it), as Katran's
//! `send_icmp6_too_big` does.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use bg_lb_common::checksum::{finish, sum_words};

use super::{IP6_LEN, Ipv6Frame};
use crate::packet::{ETH_LEN, csum, ptr_at};

pub const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 type Packet Too Big; its code is 0.
const PACKET_TOO_BIG: u8 = 2;
/// Type, code, checksum and MTU.
const ICMP6_LEN: usize = 8;
/// How much of the packet the answer quotes: as much as fits in IPv6's
/// minimum MTU, 1,280 bytes (RFC 4443 2.4 (c)). Always this much (a
/// constant length keeps every access and checksum chunk provable to the
/// verifier): a packet too big for a link of at least 1,280 bytes has more.
pub const QUOTE6_LEN: usize = 1280 - IP6_LEN - ICMP6_LEN;
/// The ICMPv6 message: header and quote.
const MESSAGE_LEN: usize = ICMP6_LEN + QUOTE6_LEN;
/// Where the quote starts once the new headers are in front of it; the
/// frame's old Ethernet header lies just before it.
const QUOTE_AT: usize = ETH_LEN + IP6_LEN + ICMP6_LEN;
const OLD_ETH_AT: usize = QUOTE_AT - ETH_LEN;
/// The checksum's chunks: `bpf_csum_diff` sums at most 512 bytes at a time,
/// whole words.
const CHUNK: usize = 512;
const LAST_CHUNK: usize = MESSAGE_LEN - 2 * CHUNK;
/// Hop limit of the errors the data plane generates (Linux's default, as
/// IPv4's TTL).
const HOP_LIMIT: u8 = 64;
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];

impl Ipv6Frame<'_> {
    /// Turns the frame into the Packet Too Big that answers its packet
    /// (which the caller has restored to what its sender sent, and whose
    /// IPv6 packet is at least [`QUOTE6_LEN`] bytes long), saying the next
    /// hop takes `mtu` bytes: from the packet's destination back to its
    /// source, MACs swapped, hop limit 64. False, and the frame is to be
    /// dropped, if it could not be resized.
    #[inline(always)]
    pub fn become_packet_too_big(self, ctx: &XdpContext, mtu: u32) -> bool {
        let len = (ctx.data_end() - ctx.data()) as i32;
        // SAFETY (both): ctx.ctx is this run's xdp_md; the frame (`self`) is
        // given up, so no reference into it outlives the resize.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, (ETH_LEN + QUOTE6_LEN) as i32 - len) } != 0
            || unsafe { bpf_xdp_adjust_head(ctx.ctx, -((QUOTE_AT - ETH_LEN) as i32)) } != 0
        {
            return false;
        }
        // The new headers, the old Ethernet header and the quoted IPv6
        // header; always inside (the check is for the verifier).
        let Some(head) = ptr_at::<[u8; QUOTE_AT + IP6_LEN]>(ctx, 0) else {
            return false;
        };
        // SAFETY: inside the resized frame (ptr_at, taken after the resize);
        // no other reference to it is live.
        let head = unsafe { &mut *head };
        let copy = |head: &mut [u8; QUOTE_AT + IP6_LEN], from: usize, to: usize, n: usize| {
            let mut i = 0;
            while i < n {
                head[to + i] = head[from + i];
                i += 1;
            }
        };
        // Ethernet: back to where the frame came from. The old header is
        // read before the new IPv6 header overwrites it.
        copy(head, OLD_ETH_AT + 6, 0, 6);
        copy(head, OLD_ETH_AT, 6, 6);
        head[12..14].copy_from_slice(&ETHERTYPE_IPV6);
        // IPv6: version 6, no traffic class or flow label; from the quoted
        // packet's destination to its source.
        head[ETH_LEN..ETH_LEN + 4].copy_from_slice(&[0x60, 0, 0, 0]);
        head[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&(MESSAGE_LEN as u16).to_be_bytes());
        head[ETH_LEN + 6] = IPPROTO_ICMPV6;
        head[ETH_LEN + 7] = HOP_LIMIT;
        copy(head, QUOTE_AT + 24, ETH_LEN + 8, 16);
        copy(head, QUOTE_AT + 8, ETH_LEN + 24, 16);
        let icmp = ETH_LEN + IP6_LEN;
        head[icmp..icmp + 4].copy_from_slice(&[PACKET_TOO_BIG, 0, 0, 0]);
        head[icmp + 4..icmp + 8].copy_from_slice(&mtu.to_be_bytes());
        // The pseudo-header's length and next header, each a big-endian
        // word.
        let len = (MESSAGE_LEN as u32).to_be_bytes();
        let mut sum = sum_words(&[len[0], len[1], len[2], len[3], 0, 0, 0, IPPROTO_ICMPV6]);
        // Its addresses: the quoted packet's, whose order the sum ignores.
        let Some(addrs) = ptr_at::<[u8; 32]>(ctx, QUOTE_AT + 8) else {
            return false;
        };
        // SAFETY (each chunk): inside the frame (ptr_at), only read.
        sum = csum(unsafe { &*addrs }, sum);
        let Some(first) = ptr_at::<[u8; CHUNK]>(ctx, icmp) else {
            return false;
        };
        sum = csum(unsafe { &*first }, sum);
        let Some(second) = ptr_at::<[u8; CHUNK]>(ctx, icmp + CHUNK) else {
            return false;
        };
        sum = csum(unsafe { &*second }, sum);
        let Some(last) = ptr_at::<[u8; LAST_CHUNK]>(ctx, icmp + 2 * CHUNK) else {
            return false;
        };
        sum = csum(unsafe { &*last }, sum);
        let Some(check) = ptr_at::<[u8; 2]>(ctx, icmp + 2) else {
            return false;
        };
        // SAFETY: inside the frame (ptr_at); nothing else refers to it now.
        unsafe { *check = finish(sum).to_ne_bytes() };
        true
    }

    /// Undoes the LB's hop limit decrement: the packet as its sender sent
    /// it, for a quote.
    #[inline(always)]
    pub fn restore_hop_limit(&mut self) {
        self.ip.hop_limit = self.ip.hop_limit.saturating_add(1);
    }
}
