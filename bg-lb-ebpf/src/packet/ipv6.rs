//! IPv6: the frame's fixed header and a TCP or UDP header right after it
//! ([`Tcp6Packet`], [`Udp6Packet`]), with their safe reads and in-place
//! writes. No extension header is walked: [`peek`] tells the caller the
//! next header, and a frame with any other than TCP or UDP there is not
//! parsed further.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use bg_lb_common::{
    checksum::{finish, replace16, replace32, sum_words},
    flow_state::{Segment, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    maps::{FlowKey6, IPPROTO_TCP, IPPROTO_UDP, Ipv6Wire},
};
use network_types::{eth::EthHdr, ip::Ipv6Hdr, tcp::TcpHdr, udp::UdpHdr};

use super::{ETH_LEN, TCP_FLAGS_OFFSET, TCP_LEN, ptr_at, resize, tcp_timestamp};

pub mod synproxy;
pub mod too_big;

/// The fixed IPv6 header.
pub const IP6_LEN: usize = size_of::<Ipv6Hdr>();
/// Where the TCP or UDP header starts: right after the fixed header.
pub const L4_OFFSET6: usize = ETH_LEN + IP6_LEN;
const UDP_LEN: usize = size_of::<UdpHdr>();
/// The traffic class and flow label in the header's first word (wire
/// order read natively), without the version: what routing may use.
const FLOWINFO_MASK: u32 = u32::from_be(0x0fff_ffff);

/// What the fixed header of an IPv6 frame says: its next header and
/// destination; `None` for a frame that is not IPv6 or too short for the
/// fixed header.
#[inline(always)]
pub fn peek(ctx: &XdpContext) -> Option<(u8, Ipv6Wire)> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: inside the frame (ptr_at).
    let (vcf, next, dst) = unsafe { ((*ip).vcf[0], (*ip).next_hdr, (*ip).dst_addr) };
    (vcf >> 4 == 6).then(|| (next, wire(dst)))
}

#[inline(always)]
fn wire(addr: [u8; 16]) -> Ipv6Wire {
    let w = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

#[inline(always)]
fn bytes(addr: Ipv6Wire) -> [u8; 16] {
    let mut out = [0; 16];
    let mut i = 0;
    while i < 4 {
        let word = addr[i].to_ne_bytes();
        out[i * 4] = word[0];
        out[i * 4 + 1] = word[1];
        out[i * 4 + 2] = word[2];
        out[i * 4 + 3] = word[3];
        i += 1;
    }
    out
}

/// `addr` (as on the wire) into `out`, as [`wire`] reads it, through
/// memory.
#[inline(always)]
fn copy_addr(addr: &[u8; 16], out: &mut Ipv6Wire) {
    // SAFETY: 16 bytes each, not overlapping (one is in the frame, the
    // other is not).
    unsafe { core::ptr::copy_nonoverlapping(addr.as_ptr(), out.as_mut_ptr().cast::<u8>(), 16) };
}

/// The checksum `check` with `old` replaced by `new` in what it covers (an
/// address in the pseudo-header), a word at a time.
#[inline(always)]
pub fn replace_addr(check: u16, old: Ipv6Wire, new: Ipv6Wire) -> u16 {
    let mut check = check;
    let mut i = 0;
    while i < 4 {
        check = replace32(check, old[i], new[i]);
        i += 1;
    }
    check
}

/// The Ethernet and fixed IPv6 headers of a parsed frame, borrowed for the
/// rest of the program run.
pub struct Ipv6Frame<'a> {
    eth: &'a mut EthHdr,
    ip: &'a mut Ipv6Hdr,
}

impl Ipv6Frame<'_> {
    #[inline(always)]
    pub fn src_addr(&self) -> Ipv6Wire {
        wire(self.ip.src_addr)
    }

    #[inline(always)]
    pub fn dst_addr(&self) -> Ipv6Wire {
        wire(self.ip.dst_addr)
    }

    #[inline(always)]
    pub fn hop_limit(&self) -> u8 {
        self.ip.hop_limit
    }

    /// Traffic class and flow label, as `bpf_fib_lookup` takes them.
    #[inline(always)]
    pub fn flowinfo(&self) -> u32 {
        u32::from_ne_bytes(self.ip.vcf) & FLOWINFO_MASK
    }

    /// The payload length (host order) plus the fixed header: the bytes
    /// counted in statistics and compared with the egress MTU.
    #[inline(always)]
    pub fn ip_len(&self) -> u16 {
        u16::from_be_bytes(self.ip.payload_len).saturating_add(IP6_LEN as u16)
    }

    #[inline(always)]
    pub fn next_header(&self) -> u8 {
        self.ip.next_hdr
    }

    /// Whether the frame was sent to a group (multicast) MAC.
    #[inline(always)]
    pub fn to_group_mac(&self) -> bool {
        self.eth.dst_addr[0] & 1 != 0
    }

    #[inline(always)]
    pub fn set_macs(&mut self, src: [u8; 6], dst: [u8; 6]) {
        self.eth.src_addr = src;
        self.eth.dst_addr = dst;
    }

    /// Decrements the hop limit, as a router does (IPv6 has no header
    /// checksum, and the pseudo-header does not cover it): for a packet
    /// being forwarded, whose hop limit was found above 1.
    #[inline(always)]
    pub fn decrement_hop_limit(&mut self) {
        self.ip.hop_limit = self.ip.hop_limit.saturating_sub(1);
    }

    /// Sets both addresses; the caller keeps the checksum right.
    #[inline(always)]
    pub fn set_addrs(&mut self, src: Ipv6Wire, dst: Ipv6Wire) {
        self.ip.src_addr = bytes(src);
        self.ip.dst_addr = bytes(dst);
    }
}

/// The Ethernet and fixed IPv6 headers of a frame [`peek`] found to be
/// IPv6.
#[inline(always)]
pub fn parse_frame6(ctx: &XdpContext) -> Option<Ipv6Frame<'_>> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: inside the frame (ptr_at); the two headers do not overlap and
    // the frame holds the only references to them.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };
    Some(Ipv6Frame { eth, ip })
}

/// The payload length the frame holds after the fixed header, and the
/// header's own claim; `None` if the frame is shorter than the claim.
#[inline(always)]
fn payload(ctx: &XdpContext, ip: *const Ipv6Hdr) -> Option<usize> {
    // SAFETY: `ip` is inside the frame (the caller's ptr_at).
    let claimed = u16::from_be_bytes(unsafe { (*ip).payload_len }) as usize;
    let frame = ctx.data_end() - ctx.data() - L4_OFFSET6;
    (claimed <= frame).then_some(claimed)
}

/// What the IPv6 paths do alike to a TCP segment ([`Tcp6Packet`]) and a
/// UDP datagram ([`Udp6Packet`]).
pub trait L4Packet6<'a> {
    fn frame(&mut self) -> &mut Ipv6Frame<'a>;

    /// Rewrites both endpoints (wire order), with the layer-4 checksum.
    fn rewrite(&mut self, src: (Ipv6Wire, u16), dst: (Ipv6Wire, u16));
}

/// An IPv6 TCP segment right after the fixed header, all inside the frame.
pub struct Tcp6Packet<'a> {
    pub frame: Ipv6Frame<'a>,
    tcp: &'a mut TcpHdr,
    flags: u8,
    /// TCP header and payload bytes (the IPv6 payload length).
    tcp_len: u16,
}

/// Parses a frame [`peek`] found to be IPv6 with TCP next; `None` when its
/// lengths disagree or overrun the frame (the checksum we update would not
/// describe what is sent).
#[inline(always)]
pub fn parse_tcp6(ctx: &XdpContext) -> Option<Tcp6Packet<'_>> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH_LEN)?;
    let tcp: *mut TcpHdr = ptr_at(ctx, L4_OFFSET6)?;
    let tcp_len = payload(ctx, ip)?;
    // SAFETY: inside the frame (ptr_at).
    let header_len = unsafe { (*tcp).doff() } as usize * 4;
    if header_len < TCP_LEN || tcp_len < header_len {
        return None;
    }
    let flags: *const u8 = ptr_at(ctx, L4_OFFSET6 + TCP_FLAGS_OFFSET)?;
    // SAFETY: inside the frame (ptr_at), read before `tcp` becomes a reference.
    let flags = unsafe { *flags };
    // SAFETY: inside the frame (ptr_at); the three headers do not overlap and
    // the packet holds the only references to them.
    let (eth, ip, tcp) = unsafe { (&mut *eth, &mut *ip, &mut *tcp) };
    Some(Tcp6Packet {
        frame: Ipv6Frame { eth, ip },
        tcp,
        flags,
        tcp_len: tcp_len as u16,
    })
}

/// Ports and addresses wire order, sequence numbers host order, as
/// [`super::TcpPacket`]'s.
impl Tcp6Packet<'_> {
    #[inline(always)]
    pub fn flags(&self) -> u8 {
        self.flags
    }

    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        u16::from_ne_bytes(self.tcp.source)
    }

    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        u16::from_ne_bytes(self.tcp.dest)
    }

    /// What the flow state machine reads of the segment.
    #[inline(always)]
    pub fn segment(&self) -> Segment {
        Segment {
            flags: self.flags,
            seq: u32::from_be_bytes(self.tcp.seq),
            ack: u32::from_be_bytes(self.tcp.ack_seq),
            payload_len: self.tcp_len as u32 - self.tcp.doff() as u32 * 4,
        }
    }

    /// The segment's TCP timestamp (TSval, host order), if it has one.
    #[inline(always)]
    pub fn timestamp(&self, ctx: &XdpContext) -> Option<u32> {
        tcp_timestamp(ctx, self.tcp, L4_OFFSET6)
    }

    /// The flow key of this segment from a client (client = source, VIP =
    /// destination), written into `key` a byte at a time: built in
    /// registers (as [`Ipv6Frame::src_addr`] reads), its 32 address bytes
    /// are held apart and may spill an 8-byte stack slot each.
    #[inline(always)]
    pub fn write_client_key(&self, key: &mut FlowKey6) {
        copy_addr(&self.frame.ip.src_addr, &mut key.client_addr);
        copy_addr(&self.frame.ip.dst_addr, &mut key.vip_addr);
        key.client_port = self.src_port();
        key.vip_port = self.dst_port();
        key.proto = IPPROTO_TCP;
    }
}

impl<'a> L4Packet6<'a> for Tcp6Packet<'a> {
    #[inline(always)]
    fn frame(&mut self) -> &mut Ipv6Frame<'a> {
        &mut self.frame
    }

    /// With the TCP checksum: the addresses are in it through the
    /// pseudo-header, the ports directly.
    #[inline(always)]
    fn rewrite(&mut self, src: (Ipv6Wire, u16), dst: (Ipv6Wire, u16)) {
        let mut check = u16::from_ne_bytes(self.tcp.check);
        check = replace_addr(check, self.frame.src_addr(), src.0);
        check = replace_addr(check, self.frame.dst_addr(), dst.0);
        check = replace16(check, self.src_port(), src.1);
        check = replace16(check, self.dst_port(), dst.1);
        self.tcp.check = check.to_ne_bytes();
        self.frame.set_addrs(src.0, dst.0);
        self.tcp.source = src.1.to_ne_bytes();
        self.tcp.dest = dst.1.to_ne_bytes();
    }
}

impl Tcp6Packet<'_> {
    /// Turns the frame into the RST that answers its segment (RFC 793: to a
    /// segment with ACK, `seq = its ack`; else `seq = 0, ack = its seq +
    /// length` with ACK), from its destination back to its source, written
    /// in place (hop limit 64, no options or payload, the checksum computed
    /// in full) and the frame cut to its headers. False, and the frame is
    /// to be dropped, for a RST (never answered), a segment sent to a group
    /// MAC, or a frame that could not be cut.
    #[inline(always)]
    pub fn become_rst(self, ctx: &XdpContext) -> bool {
        let seg = self.segment();
        if seg.flags & TCP_RST != 0 || self.frame.to_group_mac() {
            return false;
        }
        let consumed = seg.payload_len + (seg.flags & TCP_SYN != 0) as u32 + (seg.flags & TCP_FIN != 0) as u32;
        let (seq, ack, flags) = if seg.flags & TCP_ACK != 0 {
            (seg.ack, 0, TCP_RST)
        } else {
            (0, seg.seq.wrapping_add(consumed), TCP_RST | TCP_ACK)
        };
        let Tcp6Packet { mut frame, tcp, .. } = self;
        let (src, dst) = (frame.dst_addr(), frame.src_addr());
        core::mem::swap(&mut frame.eth.src_addr, &mut frame.eth.dst_addr);
        let (src_port, dst_port) = (u16::from_ne_bytes(tcp.dest), u16::from_ne_bytes(tcp.source));
        write_bare(&mut frame, tcp, (src, src_port), (dst, dst_port), (seq, ack, flags));
        resize(ctx, (L4_OFFSET6 + TCP_LEN) as i32)
    }
}

impl<'a> Tcp6Packet<'a> {
    /// Rewrites a bare segment (no options, no payload) in place as the
    /// RST with ACK from `src` to `dst` (wire order) numbered `seq` and
    /// `ack`, as [`Tcp6Packet::become_rst`] writes one; the frame to route
    /// (its MACs are the route's). `None` for a segment that is not bare.
    #[inline(always)]
    pub fn become_reset(
        self,
        src: (Ipv6Wire, u16),
        dst: (Ipv6Wire, u16),
        numbers: (u32, u32),
    ) -> Option<Ipv6Frame<'a>> {
        if self.tcp_len as usize != TCP_LEN || self.tcp.doff() as usize * 4 != TCP_LEN {
            return None;
        }
        let Tcp6Packet { mut frame, tcp, .. } = self;
        write_bare(&mut frame, tcp, src, dst, (numbers.0, numbers.1, TCP_RST | TCP_ACK));
        Some(frame)
    }
}

/// Writes a bare TCP header (window 0, no options) from `src` to `dst` (wire
/// order) with `(seq, ack, flags)` over the one in the frame, with its
/// checksum computed in full, and the IPv6 header to match (payload the TCP
/// header only, hop limit 64).
#[inline(always)]
fn write_bare(
    frame: &mut Ipv6Frame<'_>,
    tcp: &mut TcpHdr,
    (src, src_port): (Ipv6Wire, u16),
    (dst, dst_port): (Ipv6Wire, u16),
    (seq, ack, flags): (u32, u32, u8),
) {
    frame.ip.payload_len = (TCP_LEN as u16).to_be_bytes();
    frame.ip.hop_limit = 64;
    frame.ip.src_addr = bytes(src);
    frame.ip.dst_addr = bytes(dst);
    // SAFETY: TcpHdr is the 20-byte header as on the wire (alignment 1).
    let header = unsafe { &mut *(tcp as *mut TcpHdr).cast::<[u8; TCP_LEN]>() };
    *header = [0; TCP_LEN];
    header[0..2].copy_from_slice(&src_port.to_ne_bytes());
    header[2..4].copy_from_slice(&dst_port.to_ne_bytes());
    header[4..8].copy_from_slice(&seq.to_be_bytes());
    header[8..12].copy_from_slice(&ack.to_be_bytes());
    header[12] = (TCP_LEN as u8 / 4) << 4;
    header[TCP_FLAGS_OFFSET] = flags;
    let mut pseudo = [0u8; 40];
    pseudo[0..16].copy_from_slice(&bytes(src));
    pseudo[16..32].copy_from_slice(&bytes(dst));
    pseudo[35] = TCP_LEN as u8;
    pseudo[39] = IPPROTO_TCP;
    let check = finish(sum_words(&pseudo) + sum_words(header));
    header[16..18].copy_from_slice(&check.to_ne_bytes());
}

/// An IPv6 UDP datagram right after the fixed header, all inside the frame.
pub struct Udp6Packet<'a> {
    pub frame: Ipv6Frame<'a>,
    udp: &'a mut UdpHdr,
}

/// Parses a frame [`peek`] found to be IPv6 with UDP next; `None` when its
/// lengths disagree or overrun the frame.
#[inline(always)]
pub fn parse_udp6(ctx: &XdpContext) -> Option<Udp6Packet<'_>> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH_LEN)?;
    let udp: *mut UdpHdr = ptr_at(ctx, L4_OFFSET6)?;
    let len = payload(ctx, ip)?;
    // SAFETY: inside the frame (ptr_at).
    let udp_len = u16::from_be_bytes(unsafe { (*udp).len }) as usize;
    if udp_len < UDP_LEN || udp_len != len {
        return None;
    }
    // SAFETY: inside the frame (ptr_at); the three headers do not overlap and
    // the packet holds the only references to them.
    let (eth, ip, udp) = unsafe { (&mut *eth, &mut *ip, &mut *udp) };
    Some(Udp6Packet {
        frame: Ipv6Frame { eth, ip },
        udp,
    })
}

impl Udp6Packet<'_> {
    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        u16::from_ne_bytes(self.udp.src)
    }

    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        u16::from_ne_bytes(self.udp.dst)
    }

    /// The checksum, wire order. Never 0 on IPv6 (RFC 8200: mandatory).
    #[inline(always)]
    pub fn udp_check(&self) -> u16 {
        u16::from_ne_bytes(self.udp.check)
    }
}

impl<'a> L4Packet6<'a> for Udp6Packet<'a> {
    #[inline(always)]
    fn frame(&mut self) -> &mut Ipv6Frame<'a> {
        &mut self.frame
    }

    /// With the UDP checksum, which a result of 0 sends as 0xffff (0 would
    /// say "none", which IPv6 forbids).
    #[inline(always)]
    fn rewrite(&mut self, src: (Ipv6Wire, u16), dst: (Ipv6Wire, u16)) {
        let mut check = self.udp_check();
        check = replace_addr(check, self.frame.src_addr(), src.0);
        check = replace_addr(check, self.frame.dst_addr(), dst.0);
        check = replace16(check, self.src_port(), src.1);
        check = replace16(check, self.dst_port(), dst.1);
        self.udp.check = (if check == 0 { 0xffff } else { check }).to_ne_bytes();
        self.frame.set_addrs(src.0, dst.0);
        self.udp.src = src.1.to_ne_bytes();
        self.udp.dst = dst.1.to_ne_bytes();
    }
}

/// The ICMPv6 header: type, code, checksum and four bytes (MTU, pointer or
/// unused).
const ICMP6_LEN: usize = 8;
/// Where an ICMPv6 error's quote starts: the quoted IPv6 header, then its
/// TCP or UDP header.
const QUOTE6_IP_OFFSET: usize = L4_OFFSET6 + ICMP6_LEN;
const QUOTE6_L4_OFFSET: usize = QUOTE6_IP_OFFSET + IP6_LEN;
/// The ICMPv6 error types: destination unreachable, packet too big, time
/// exceeded, parameter problem.
const ICMP6_ERRORS: core::ops::RangeInclusive<u8> = 1..=4;
/// Where the checksum is in a quoted TCP and UDP header, and the sequence
/// number in a TCP one.
const QUOTED_TCP_CHECK: usize = 16;
const QUOTED_TCP_SEQ: usize = 4;
const QUOTED_UDP_CHECK: usize = 6;

/// An ICMPv6 error quoting an IPv6 TCP or UDP packet (its fixed header and
/// at least its ports), all inside the frame.
pub struct Icmp6Error<'a> {
    pub frame: Ipv6Frame<'a>,
    icmp: &'a mut [u8; ICMP6_LEN],
    quote: &'a mut Ipv6Hdr,
    ports: &'a mut [u8; 4],
    /// The quoted packet's own checksum, when the quote holds it.
    l4_check: Option<&'a mut [u8; 2]>,
    /// A quoted TCP segment's sequence number, when the quote holds it.
    seq: Option<&'a mut [u8; 4]>,
}

/// Parses a frame [`peek`] found to be ICMPv6 as an error quoting an IPv6
/// TCP or UDP packet; `None` for any other ICMPv6 message (neighbour
/// discovery, echo, ...) or an error too short to translate, or quoting
/// what is not IPv6.
#[inline(always)]
pub fn parse_icmp6_error(ctx: &XdpContext) -> Option<Icmp6Error<'_>> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH_LEN)?;
    let icmp: *mut [u8; ICMP6_LEN] = ptr_at(ctx, L4_OFFSET6)?;
    let quote: *mut Ipv6Hdr = ptr_at(ctx, QUOTE6_IP_OFFSET)?;
    let ports: *mut [u8; 4] = ptr_at(ctx, QUOTE6_L4_OFFSET)?;
    let len = payload(ctx, ip)?;
    // SAFETY: inside the frame (ptr_at).
    let (kind, version, proto) = unsafe { ((*icmp)[0], (*quote).vcf[0] >> 4, (*quote).next_hdr) };
    // A quote that is not IPv6 is of no packet the LB sent (as IPv4 checks
    // its quote's version).
    if !ICMP6_ERRORS.contains(&kind) || version != 6 || len < ICMP6_LEN + IP6_LEN + 4 {
        return None;
    }
    let check_at = match proto {
        IPPROTO_TCP => QUOTED_TCP_CHECK,
        IPPROTO_UDP => QUOTED_UDP_CHECK,
        _ => return None,
    };
    // Only what the message's length covers is the quote.
    let l4_check = if ICMP6_LEN + IP6_LEN + check_at + 2 <= len {
        ptr_at::<[u8; 2]>(ctx, QUOTE6_L4_OFFSET + check_at)
    } else {
        None
    };
    let seq = if proto == IPPROTO_TCP && ICMP6_LEN + IP6_LEN + QUOTED_TCP_SEQ + 4 <= len {
        ptr_at::<[u8; 4]>(ctx, QUOTE6_L4_OFFSET + QUOTED_TCP_SEQ)
    } else {
        None
    };
    // SAFETY: inside the frame (ptr_at); the six parts do not overlap (the
    // sequence number and the checksum are past the ports, and apart) and
    // the error holds the only references.
    unsafe {
        Some(Icmp6Error {
            frame: Ipv6Frame {
                eth: &mut *eth,
                ip: &mut *ip,
            },
            icmp: &mut *icmp,
            quote: &mut *quote,
            ports: &mut *ports,
            l4_check: l4_check.map(|check| &mut *check),
            seq: seq.map(|seq| &mut *seq),
        })
    }
}

impl Icmp6Error<'_> {
    /// The quoted packet's protocol: TCP or UDP.
    #[inline(always)]
    pub fn quoted_proto(&self) -> u8 {
        self.quote.next_hdr
    }

    /// The quoted packet's source and destination (address, port), wire
    /// order.
    #[inline(always)]
    pub fn quoted(&self) -> ((Ipv6Wire, u16), (Ipv6Wire, u16)) {
        let p = *self.ports;
        (
            (wire(self.quote.src_addr), u16::from_ne_bytes([p[0], p[1]])),
            (wire(self.quote.dst_addr), u16::from_ne_bytes([p[2], p[3]])),
        )
    }

    /// Readdresses the error (outer source and destination `outer`) and
    /// rewrites its quote to `src` -> `dst`, with the ICMPv6 checksum (its
    /// pseudo-header, the quote) and the quoted packet's own checksum, when
    /// the quote holds it, updated. Field by field, each old value read
    /// from the frame as it is replaced: held together, the 16-byte
    /// addresses spilled past the stack the program has.
    #[inline(always)]
    pub fn translate(&mut self, outer: (&Ipv6Wire, &Ipv6Wire), src: (&Ipv6Wire, u16), dst: (&Ipv6Wire, u16)) {
        let mut check = u16::from_ne_bytes([self.icmp[2], self.icmp[3]]);
        check = replace_addr(check, wire(self.frame.ip.src_addr), *outer.0);
        self.frame.ip.src_addr = bytes(*outer.0);
        check = replace_addr(check, wire(self.frame.ip.dst_addr), *outer.1);
        self.frame.ip.dst_addr = bytes(*outer.1);
        let old_l4 = self.l4_check.as_deref().map(|c| u16::from_ne_bytes(*c));
        let mut l4 = old_l4;
        let old = wire(self.quote.src_addr);
        check = replace_addr(check, old, *src.0);
        l4 = l4.map(|c| replace_addr(c, old, *src.0));
        self.quote.src_addr = bytes(*src.0);
        let old = wire(self.quote.dst_addr);
        check = replace_addr(check, old, *dst.0);
        l4 = l4.map(|c| replace_addr(c, old, *dst.0));
        self.quote.dst_addr = bytes(*dst.0);
        let p = *self.ports;
        let (old_src_port, old_dst_port) = (u16::from_ne_bytes([p[0], p[1]]), u16::from_ne_bytes([p[2], p[3]]));
        check = replace16(replace16(check, old_src_port, src.1), old_dst_port, dst.1);
        l4 = l4.map(|c| replace16(replace16(c, old_src_port, src.1), old_dst_port, dst.1));
        let (s, d) = (src.1.to_ne_bytes(), dst.1.to_ne_bytes());
        *self.ports = [s[0], s[1], d[0], d[1]];
        if let (Some(old), Some(mut new), Some(field)) = (old_l4, l4, self.l4_check.as_deref_mut()) {
            if new == 0 && self.quote.next_hdr == IPPROTO_UDP {
                new = 0xffff;
            }
            check = replace16(check, old, new);
            *field = new.to_ne_bytes();
        }
        self.icmp[2..4].copy_from_slice(&check.to_ne_bytes());
    }

    /// Moves the quoted TCP sequence number forward by `delta` (into a
    /// SYN-proxied flow's backend numbers, as IPv4's `shift_quoted_seq`),
    /// with the ICMPv6 checksum and the quoted segment's own, when the
    /// quote holds them.
    #[inline(always)]
    pub fn shift_quoted_seq(&mut self, delta: u32) {
        let Some(seq) = self.seq.as_deref_mut() else {
            return;
        };
        let old = u32::from_ne_bytes(*seq);
        let new = u32::from_be(old).wrapping_add(delta).to_be();
        *seq = new.to_ne_bytes();
        let mut check = replace32(u16::from_ne_bytes([self.icmp[2], self.icmp[3]]), old, new);
        // The ICMPv6 checksum covers the quoted one too.
        if let Some(field) = self.l4_check.as_deref_mut() {
            let (old_l4, new_l4) = (
                u16::from_ne_bytes(*field),
                replace32(u16::from_ne_bytes(*field), old, new),
            );
            check = replace16(check, old_l4, new_l4);
            *field = new_l4.to_ne_bytes();
        }
        self.icmp[2..4].copy_from_slice(&check.to_ne_bytes());
    }
}
