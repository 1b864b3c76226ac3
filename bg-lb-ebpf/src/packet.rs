//! The one module that touches packet memory: the bounds-checked pointer
//! helper, Ethernet/IPv4/TCP and ICMP error parsing, and safe reads and
//! in-place writes of the parsed headers. Everything else works through
//! [`TcpPacket`], [`udp::UdpPacket`] and [`IcmpError`].

use core::{
    mem::size_of,
    ops::{Deref, DerefMut},
};

use aya_ebpf::{
    bindings::{iphdr, tcphdr},
    check_bounds_signed,
    cty::c_void,
    helpers::{
        bpf_csum_diff, bpf_tcp_raw_check_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv4, bpf_xdp_adjust_head,
        bpf_xdp_adjust_tail, bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    programs::XdpContext,
};
use bg_lb_common::{
    checksum::finish,
    counters::Counter,
    flow_state::Segment,
    icmp::{self, ICMP_LEN, QUOTE_L4_LEN, QuoteChecksums, TCP_CHECK_OFFSET, Tuple, UDP_CHECK_OFFSET},
    port_reuse,
    syn_proxy::HELD_PAYLOAD_MAX,
};
use network_types::{
    eth::{EthHdr, EtherType},
    icmp::Icmpv4Hdr,
    ip::{IpProto, Ipv4Hdr},
    tcp::TcpHdr,
};

mod ipv4;
pub mod ipv6;
pub mod udp;

pub use ipv4::Ipv4Frame;

const ETH_LEN: usize = size_of::<EthHdr>();
/// An IPv4 header without options.
pub const IP_LEN: usize = size_of::<Ipv4Hdr>();
/// A TCP header without options.
pub const TCP_LEN: usize = size_of::<TcpHdr>();
/// The longest TCP header: 40 bytes of options.
pub const TCP_MAX_LEN: usize = 60;
const TCP_OFFSET: usize = ETH_LEN + IP_LEN;
/// Byte offset of the flags within the TCP header.
const TCP_FLAGS_OFFSET: usize = 13;
/// Don't Fragment and More Fragments flags and the fragment offset mask in
/// the 16-bit frags field.
const IP_DF: u16 = 0x4000;
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;
/// Where an ICMP error's parts start in the frame: its header after an
/// option-less IPv4 header, then the quoted IPv4 header and its payload.
const ICMP_OFFSET: usize = ETH_LEN + IP_LEN;
const QUOTE_IP_OFFSET: usize = ICMP_OFFSET + ICMP_LEN;
const QUOTE_L4_OFFSET: usize = QUOTE_IP_OFFSET + IP_LEN;
/// The shortest ICMP error that can be translated, from its IP header on:
/// the quote must hold the quoted IP header and the TCP or UDP ports.
const MIN_ICMP_ERROR_LEN: usize = IP_LEN + ICMP_LEN + IP_LEN + QUOTE_L4_LEN;

/// Pointer to a `T` at `offset` in the frame, if the whole `T` is inside it.
///
/// SAFETY: this is the bounds check every dereference in this module rests
/// on. A pointer it returns is valid for reads and writes of
/// `size_of::<T>()` bytes until the frame is resized, which only
/// [`TcpPacket::become_segment`] does, after giving up the packet's headers.
/// It is aligned too: the header types have alignment 1 except `EthHdr` (2,
/// for its EtherType), which sits at the frame start, an even address.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// An IPv4 TCP segment whose headers are all inside the frame, borrowed for
/// the rest of the program run.
pub struct TcpPacket<'a> {
    frame: Ipv4Frame<'a>,
    tcp: &'a mut TcpHdr,
    /// TCP flags byte (FIN, SYN, RST, PSH, ACK, ...).
    flags: u8,
    /// IP total length, host order.
    ip_len: u16,
}

impl<'a> Deref for TcpPacket<'a> {
    type Target = Ipv4Frame<'a>;

    #[inline(always)]
    fn deref(&self) -> &Ipv4Frame<'a> {
        &self.frame
    }
}

impl DerefMut for TcpPacket<'_> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.frame
    }
}

/// Why a frame is not a `TcpPacket` we may rewrite.
pub enum NotForUs {
    /// IPv4 ICMP: for [`parse_icmp_error`].
    Icmp,
    /// IPv4 UDP: for [`udp::parse_udp`].
    Udp,
    /// IPv6 (by its EtherType): for [`ipv6`].
    Ipv6,
    /// Not IPv4 TCP, UDP or ICMP at all (ARP, ...), nor IPv6, or too short
    /// to say where it goes.
    Other,
    /// A TCP/IPv4 frame we must not touch.
    Malformed(Malformed),
}

/// A TCP/IPv4 frame we must not rewrite, and where it was going, as far
/// as the frame shows it.
pub struct Malformed {
    /// Why it cannot be rewritten.
    pub counter: Counter,
    /// Wire order.
    pub dst_addr: u32,
    /// Wire order; `None` when the frame does not hold the TCP ports (a
    /// non-first fragment, or cut off before them).
    pub dst_port: Option<u16>,
}

/// Parses the frame once per program run; the packet it returns is the only
/// reference to its headers.
#[inline(always)]
pub fn parse_tcp(ctx: &XdpContext) -> Result<TcpPacket<'_>, NotForUs> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(NotForUs::Other)?;
    // SAFETY: inside the frame (ptr_at).
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type != EtherType::Ipv4 as u16 {
        return Err(if ether_type == EtherType::Ipv6 as u16 {
            NotForUs::Ipv6
        } else {
            NotForUs::Other
        });
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN).ok_or(NotForUs::Other)?;
    // SAFETY: inside the frame (ptr_at).
    let (vihl, proto, frags, ip_len, dst_addr) = unsafe {
        (
            (*ip).vihl,
            (*ip).proto,
            u16::from_be_bytes((*ip).frags),
            (*ip).tot_len(),
            u32::from_ne_bytes((*ip).dst_addr),
        )
    };
    if vihl >> 4 != 4 {
        return Err(NotForUs::Other);
    }
    if proto != IpProto::Tcp as u8 {
        return Err(if proto == IpProto::Icmp as u8 {
            NotForUs::Icmp
        } else if proto == IpProto::Udp as u8 {
            NotForUs::Udp
        } else {
            NotForUs::Other
        });
    }
    let first_fragment = frags & IP_OFFSET_MASK == 0;
    let malformed = |counter, tcp_offset| {
        NotForUs::Malformed(Malformed {
            counter,
            dst_addr,
            dst_port: if first_fragment {
                dst_port_at(ctx, tcp_offset)
            } else {
                None
            },
        })
    };
    let ip_header_len = (vihl & 0x0f) as usize * 4;
    if ip_header_len < IP_LEN {
        // No sound header, so no TCP header to read the port from.
        return Err(NotForUs::Malformed(Malformed {
            counter: Counter::Truncated,
            dst_addr,
            dst_port: None,
        }));
    }
    if ip_header_len > IP_LEN {
        return Err(malformed(Counter::IpOptions, ETH_LEN + ip_header_len));
    }
    if frags & (IP_MF | IP_OFFSET_MASK) != 0 {
        return Err(malformed(Counter::Fragmented, TCP_OFFSET));
    }
    let tcp: *mut TcpHdr = ptr_at(ctx, TCP_OFFSET).ok_or_else(|| malformed(Counter::Truncated, TCP_OFFSET))?;
    // The IP length must cover the TCP header and fit in the frame, or the
    // checksums we update would not describe what is sent.
    let frame_ip_len = ctx.data_end() - ctx.data() - ETH_LEN;
    // SAFETY: inside the frame (ptr_at).
    let tcp_len = (unsafe { (*tcp).doff() } as usize) * 4;
    if tcp_len < TCP_LEN || (ip_len as usize) < IP_LEN + tcp_len || ip_len as usize > frame_ip_len {
        return Err(malformed(Counter::Truncated, TCP_OFFSET));
    }
    let flags: *const u8 =
        ptr_at(ctx, TCP_OFFSET + TCP_FLAGS_OFFSET).ok_or_else(|| malformed(Counter::Truncated, TCP_OFFSET))?;
    // SAFETY: inside the frame (ptr_at), read before `tcp` becomes a reference.
    let flags = unsafe { *flags };
    // SAFETY: inside the frame (ptr_at); the three headers do not overlap and
    // the packet holds the only references to them.
    let (eth, ip, tcp) = unsafe { (&mut *eth, &mut *ip, &mut *tcp) };
    Ok(TcpPacket {
        frame: Ipv4Frame { eth, ip },
        tcp,
        flags,
        ip_len,
    })
}

/// The TCP destination port (wire order) of a header at `tcp_offset`, if
/// the frame holds it.
#[inline(always)]
fn dst_port_at(ctx: &XdpContext, tcp_offset: usize) -> Option<u16> {
    // Source and destination port: the first four bytes.
    let ports: *const [u8; 4] = ptr_at(ctx, tcp_offset)?;
    // SAFETY: inside the frame (ptr_at).
    let ports = unsafe { *ports };
    Some(u16::from_ne_bytes([ports[2], ports[3]]))
}

/// A segment without payload that the LB writes in place of a frame rather
/// than rewrites: a RST, a SYN cookie's SYN-ACK, the SYN and the ACK it sends
/// a backend on a client's behalf. IPv4 (`A = u32`) without options, TTL 64,
/// DF, or IPv6 (`A = Ipv6Wire`, [`ipv6::Tcp6Packet::become_segment`]) with
/// hop limit 64; an MSS option if `mss` is not 0. Addresses and ports in
/// wire order, as [`TcpPacket`] returns them; the rest host order.
pub struct BareSegment<A = u32> {
    pub src_addr: A,
    pub dst_addr: A,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub mss: u16,
}

/// A TCP header with one option, the MSS.
const TCP_WITH_MSS_LEN: usize = TCP_LEN + 4;
/// IP total length of a segment with the MSS option and no payload (a
/// SYN-ACK [`TcpPacket::become_segment`] writes).
pub const SEGMENT_WITH_MSS_IP_LEN: u16 = (IP_LEN + TCP_WITH_MSS_LEN) as u16;
const TCPOPT_MSS: u8 = 2;
const TCPOLEN_MSS: u8 = 4;

/// Addresses and ports are returned and taken in wire order, as the bytes
/// stand in the header read as a native integer; `seq`/`ack_seq` and the
/// lengths are host order.
impl TcpPacket<'_> {
    /// TCP flags byte (FIN, SYN, RST, PSH, ACK, ...).
    #[inline(always)]
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// IP total length: the bytes counted in statistics.
    #[inline(always)]
    pub fn ip_len(&self) -> u16 {
        self.ip_len
    }

    /// TCP payload bytes: the IP length less both headers.
    #[inline(always)]
    pub fn payload_len(&self) -> u32 {
        self.ip_len as u32 - IP_LEN as u32 - self.tcp.doff() as u32 * 4
    }

    /// What the flow state machine reads of the segment.
    #[inline(always)]
    pub fn segment(&self) -> Segment {
        Segment {
            flags: self.flags,
            seq: self.seq(),
            ack: self.ack_seq(),
            payload_len: self.payload_len(),
        }
    }

    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        u16::from_ne_bytes(self.tcp.source)
    }

    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        u16::from_ne_bytes(self.tcp.dest)
    }

    #[inline(always)]
    pub fn seq(&self) -> u32 {
        u32::from_be_bytes(self.tcp.seq)
    }

    #[inline(always)]
    pub fn ack_seq(&self) -> u32 {
        u32::from_be_bytes(self.tcp.ack_seq)
    }

    /// TCP checksum, wire order.
    #[inline(always)]
    pub fn tcp_check(&self) -> u16 {
        u16::from_ne_bytes(self.tcp.check)
    }

    /// Sets both TCP ports; the caller keeps the checksum right.
    #[inline(always)]
    pub fn set_ports(&mut self, src: u16, dst: u16) {
        self.tcp.source = src.to_ne_bytes();
        self.tcp.dest = dst.to_ne_bytes();
    }

    #[inline(always)]
    pub fn set_tcp_check(&mut self, check: u16) {
        self.tcp.check = check.to_ne_bytes();
    }

    /// Turns the frame into `segment`: resized to its headers (the Ethernet
    /// header stays as it is) and written with both checksums computed in
    /// full. Takes the packet, as resizing the frame invalidates its
    /// headers, and returns the new one; `None` if the frame could not be
    /// resized, and the caller drops it.
    #[inline(always)]
    pub fn become_segment<'c>(self, ctx: &'c XdpContext, segment: &BareSegment) -> Option<TcpPacket<'c>> {
        if !write_bare_segment(self.frame.eth, ctx, segment) {
            return None;
        }
        parse_tcp(ctx).ok()
    }

    /// [`TcpPacket::become_segment`] carrying `payload[..len]` after a bare
    /// TCP header (`payload` is zero past `len` to a multiple of 4).
    #[inline(always)]
    pub fn become_data_segment<'c>(
        self,
        ctx: &'c XdpContext,
        segment: &BareSegment,
        payload: &[u8; HELD_PAYLOAD_MAX],
        len: u32,
    ) -> Option<TcpPacket<'c>> {
        if !write_segment::<_, TCP_LEN>(self.frame.eth, ctx, segment, Some((payload, len))) {
            return None;
        }
        parse_tcp(ctx).ok()
    }
}

/// The IP header of a segment the LB writes ([`BareSegment`]), per family:
/// IPv4's here (`A = u32`), IPv6's in [`ipv6::synproxy`].
pub trait SegmentIp: Copy {
    /// The header as written, right after the Ethernet header.
    type Header;

    /// Writes the header of segment `s` of `segment_len` TCP bytes.
    fn fill_ip(ip: &mut Self::Header, s: &BareSegment<Self>, segment_len: u16);

    /// The one's complement sum of the segment's pseudo-header, unfolded.
    fn pseudo_sum(ip: &Self::Header, s: &BareSegment<Self>, segment_len: u16) -> u32;
}

impl SegmentIp for u32 {
    type Header = [u8; IP_LEN];

    /// No options, TTL 64, DF, with its checksum.
    #[inline(always)]
    fn fill_ip(ip: &mut [u8; IP_LEN], s: &BareSegment, segment_len: u16) {
        let (src, dst) = (s.src_addr.to_ne_bytes(), s.dst_addr.to_ne_bytes());
        *ip = [0; IP_LEN];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(IP_LEN as u16 + segment_len).to_be_bytes());
        ip[6] = 0x40; // don't fragment
        ip[8] = 64;
        ip[9] = IpProto::Tcp as u8;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let ip_check = finish(csum(ip, 0));
        ip[10..12].copy_from_slice(&ip_check.to_ne_bytes());
    }

    #[inline(always)]
    fn pseudo_sum(_: &[u8; IP_LEN], s: &BareSegment, segment_len: u16) -> u32 {
        pseudo_header_sum(s.src_addr, s.dst_addr, segment_len)
    }
}

/// Writes `segment` in place of the frame, as
/// [`TcpPacket::become_segment`] describes, the frame's Ethernet header at
/// `eth` kept; false if the frame could not take it. `eth` is a pointer,
/// not a reference: the resize invalidates it, so it must be read before
/// (a reference would let the compiler read it after).
#[inline(always)]
pub(crate) fn write_bare_segment<A: SegmentIp>(eth: *const EthHdr, ctx: &XdpContext, segment: &BareSegment<A>) -> bool {
    if segment.mss != 0 {
        write_segment::<A, TCP_WITH_MSS_LEN>(eth, ctx, segment, None)
    } else {
        write_segment::<A, TCP_LEN>(eth, ctx, segment, None)
    }
}

/// [`write_bare_segment`] with a TCP header of `TCP` bytes and perhaps a
/// payload. Out of line, so the segment's fields are read from memory after
/// the resize rather than held across it in registers the helper call
/// clobbers (spilled byte by byte, they overflowed the stack).
#[inline(never)]
pub(crate) fn write_segment<A: SegmentIp, const TCP: usize>(
    eth: *const EthHdr,
    ctx: &XdpContext,
    s: &BareSegment<A>,
    payload: Option<(&[u8; HELD_PAYLOAD_MAX], u32)>,
) -> bool {
    write_segment_fields::<A, TCP>(eth, ctx, s, payload).is_some()
}

#[inline(always)]
fn write_segment_fields<A: SegmentIp, const TCP: usize>(
    eth: *const EthHdr,
    ctx: &XdpContext,
    s: &BareSegment<A>,
    payload: Option<(&[u8; HELD_PAYLOAD_MAX], u32)>,
) -> Option<()> {
    // SAFETY: the caller's parsed Ethernet header, inside the frame until
    // the resize below.
    let eth = unsafe { *eth };
    // 64 bits from here on: a copy widened later would be a register the
    // verifier does not connect with the one checked below.
    let payload_len = match payload {
        Some((_, len)) if len as usize <= HELD_PAYLOAD_MAX => u64::from(len),
        Some(_) => return None,
        None => 0,
    };
    let tcp_offset = ETH_LEN + size_of::<A::Header>();
    let headers = (tcp_offset + TCP) as i32;
    if !resize(ctx, headers + payload_len as i32) {
        return None;
    }
    // Resizing invalidated every packet pointer: take new ones. They are
    // inside (the frame is now exactly this long), so the checks are for
    // the verifier.
    let eth_at: *mut EthHdr = ptr_at(ctx, 0)?;
    let ip: *mut A::Header = ptr_at(ctx, ETH_LEN)?;
    let tcp: *mut [u8; TCP] = ptr_at(ctx, tcp_offset)?;
    // Written in place, field by field: headers built on the stack and
    // copied in would cost more stack than the program has.
    // SAFETY: inside the resized frame (ptr_at, taken after the resize);
    // the three do not overlap and nothing else refers to the frame.
    let (ip, tcp) = unsafe {
        *eth_at = eth;
        (&mut *ip, &mut *tcp)
    };
    let segment_len = (TCP as u64 + payload_len) as u16;
    A::fill_ip(ip, s, segment_len);
    fill_tcp(tcp, s);
    let mut sum = A::pseudo_sum(ip, s, segment_len);
    if let Some((bytes, _)) = payload {
        sum = store_payload(ctx, headers, bytes, payload_len, sum)?;
    }
    let tcp_check = finish(csum(tcp, sum));
    tcp[16..18].copy_from_slice(&tcp_check.to_ne_bytes());
    Some(())
}

/// Writes `s`'s TCP header (its checksum left 0) into `tcp`, which is a bare
/// header or one with the MSS option.
#[inline(always)]
fn fill_tcp<A, const TCP: usize>(tcp: &mut [u8; TCP], s: &BareSegment<A>) {
    *tcp = [0; TCP];
    tcp[0..2].copy_from_slice(&s.src_port.to_ne_bytes());
    tcp[2..4].copy_from_slice(&s.dst_port.to_ne_bytes());
    tcp[4..8].copy_from_slice(&s.seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&s.ack.to_be_bytes());
    tcp[12] = (TCP as u8 / 4) << 4;
    tcp[TCP_FLAGS_OFFSET] = s.flags;
    tcp[14..16].copy_from_slice(&s.window.to_be_bytes());
    if let Some(option) = tcp.get_mut(TCP_LEN..TCP_WITH_MSS_LEN) {
        let [hi, lo] = s.mss.to_be_bytes();
        option.copy_from_slice(&[TCPOPT_MSS, TCPOLEN_MSS, hi, lo]);
    }
}

/// Stores `bytes[..payload_len]` in the frame at `headers` (resized to
/// hold it) and returns the checksum sum `sum` with the payload's added.
#[inline(always)]
fn store_payload(
    ctx: &XdpContext,
    headers: i32,
    bytes: &[u8; HELD_PAYLOAD_MAX],
    payload_len: u64,
    sum: u32,
) -> Option<u32> {
    let sum = csum_words(bytes, payload_len as u32, sum)?;
    // Checked again right before the call, in the verifier's own
    // terms: the compiler folds a plain check into arithmetic on a
    // copy, whose bounds the verifier does not carry back.
    if !check_bounds_signed(payload_len as i64, 1, HELD_PAYLOAD_MAX as i64) {
        return None;
    }
    // SAFETY: ctx.ctx is this run's xdp_md; bytes is readable for
    // payload_len (at most its size) bytes, and the frame has room for
    // them after the headers (resized by the caller).
    let rc = unsafe {
        bpf_xdp_store_bytes(
            ctx.ctx,
            headers as u32,
            bytes.as_ptr() as *mut c_void,
            payload_len as u32,
        )
    };
    (rc == 0).then_some(sum)
}

/// [`TcpPacket::timestamp`] for a TCP header `tcp` at `offset` in the
/// frame (either family's).
#[inline(always)]
fn tcp_timestamp(ctx: &XdpContext, tcp: &TcpHdr, offset: usize) -> Option<u32> {
    let len = tcp.doff() as u32 * 4;
    if len as usize <= TCP_LEN {
        return None;
    }
    let found = timestamp_option(ctx, len, offset);
    (found >> 32 != 0).then_some(found as u32)
}

/// [`tcp_timestamp`]'s walk of the options of a TCP header of `len` bytes:
/// bit 32 set and the TSval below it, or 0.
#[inline(always)]
fn timestamp_option(ctx: &XdpContext, len: u32, tcp_offset: usize) -> u64 {
    // SAFETY (both reads): ptr_at checked that the bytes are inside the frame.
    let tsval = port_reuse::tcp_timestamp(
        len,
        |at| ptr_at::<u8>(ctx, tcp_offset + at).map(|byte| unsafe { *byte }),
        |at| ptr_at::<[u8; 4]>(ctx, tcp_offset + at).map(|word| u32::from_be_bytes(unsafe { *word })),
    );
    match tsval {
        Some(tsval) => 1 << 32 | tsval as u64,
        None => 0,
    }
}

/// Makes the frame `len` bytes long: shrinks it at the tail, grows it at the
/// front (XDP guarantees headroom) or else at the tail.
#[inline(always)]
fn resize(ctx: &XdpContext, len: i32) -> bool {
    let delta = len - (ctx.data_end() - ctx.data()) as i32;
    // SAFETY (each call): ctx.ctx is this run's xdp_md; the caller gave up
    // its packet, so no reference into the frame outlives the resize.
    if delta < 0 {
        return unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } == 0;
    }
    delta == 0
        || unsafe { bpf_xdp_adjust_head(ctx.ctx, -delta) } == 0
        || unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } == 0
}

/// The one's complement sum of an IPv4 pseudo-header (addresses in wire
/// order, `len` TCP bytes), unfolded.
#[inline(always)]
fn pseudo_header_sum(src_addr: u32, dst_addr: u32, len: u16) -> u32 {
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src_addr.to_ne_bytes());
    pseudo[4..8].copy_from_slice(&dst_addr.to_ne_bytes());
    pseudo[9] = IpProto::Tcp as u8;
    pseudo[10..12].copy_from_slice(&len.to_be_bytes());
    csum(&pseudo, 0)
}

/// The one's complement sum of `bytes[..len]` rounded up to whole words
/// (the buffer is zero past `len`), on top of `seed`; `None` if that runs
/// past the buffer.
#[inline(always)]
fn csum_words<const N: usize>(bytes: &[u8; N], len: u32, seed: u32) -> Option<u32> {
    let words = (len + 3) & !3;
    if words as usize > N {
        return None;
    }
    // SAFETY: bytes is readable for `words` (at most N) bytes; the helper
    // only reads it.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, bytes.as_ptr() as *mut u32, words, seed) };
    (sum >= 0).then_some(sum as u32)
}

/// The one's complement sum of `bytes` (native 16-bit words, as checksum
/// fields are read) on top of `seed`, unfolded: `finish` makes it a
/// checksum. `bpf_csum_diff` does the summing, as an unrolled loop spills
/// every byte to the stack.
#[inline(always)]
fn csum<const N: usize>(bytes: &[u8; N], seed: u32) -> u32 {
    const {
        assert!(
            N.is_multiple_of(4) && N <= 512,
            "bpf_csum_diff sums whole words of a small buffer"
        )
    };
    // SAFETY: bytes is readable for N bytes (packet or stack memory); the
    // helper only reads it, and the null `from` of size 0 subtracts nothing.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, bytes.as_ptr() as *mut u32, N as u32, seed) };
    sum as u32
}

/// What the SYN proxy reads of a handshake segment, and the kernel's SYN
/// cookie helpers, which take the headers themselves.
impl TcpPacket<'_> {
    /// TCP window field, host order.
    #[inline(always)]
    pub fn window(&self) -> u16 {
        u16::from_be_bytes(self.tcp.window)
    }

    /// Sets the sequence number (host order); the caller keeps the checksum right.
    #[inline(always)]
    pub fn set_seq(&mut self, seq: u32) {
        self.tcp.seq = seq.to_be_bytes();
    }

    /// Sets the acknowledgment number (host order); the caller keeps the
    /// checksum right.
    #[inline(always)]
    pub fn set_ack_seq(&mut self, ack: u32) {
        self.tcp.ack_seq = ack.to_be_bytes();
    }

    /// Whether the segment passed unharmed, as its receiver would check:
    /// the IPv4 header checksum, and the TCP checksum when the segment has
    /// no payload (`tcp` holds its header, as [`TcpPacket::tcp_header`]
    /// copies it).
    #[inline(always)]
    pub fn checksums_hold(&self, tcp: &[u8; TCP_MAX_LEN]) -> bool {
        // SAFETY: Ipv4Hdr is IP_LEN plain bytes (an option-less header).
        let ip = unsafe { &*(&*self.frame.ip as *const Ipv4Hdr as *const [u8; IP_LEN]) };
        if finish(csum(ip, 0)) != 0 {
            return false;
        }
        if self.payload_len() != 0 {
            return true;
        }
        let pseudo = pseudo_header_sum(self.src_addr(), self.dst_addr(), self.ip_len - IP_LEN as u16);
        finish(csum(tcp, pseudo)) == 0
    }

    /// The TCP header, options included, in a zeroed buffer (the bytes past
    /// it stay zero, so the buffer's checksum sum is the header's), and its
    /// length.
    #[inline(always)]
    pub fn tcp_header(&self, ctx: &XdpContext) -> Option<([u8; TCP_MAX_LEN], u32)> {
        load_tcp_header(ctx, self.tcp, TCP_OFFSET)
    }

    /// The TSval of the segment's timestamp option, if it has one. Read only
    /// for the few segments that need it (a SYN that may reuse a port, a
    /// client's segment once its backend closed first), never on the
    /// established path.
    #[inline(always)]
    pub fn timestamp(&self, ctx: &XdpContext) -> Option<u32> {
        tcp_timestamp(ctx, self.tcp, TCP_OFFSET)
    }

    /// Copies the payload into `into`, zero past it to a multiple of 4 (as
    /// [`TcpPacket::become_data_segment`] takes it); its length, or `None`
    /// if it is empty or does not fit.
    #[inline(always)]
    pub fn copy_payload(&self, ctx: &XdpContext, into: &mut [u8; HELD_PAYLOAD_MAX]) -> Option<u32> {
        load_payload(ctx, self.tcp, TCP_OFFSET, self.payload_len(), into)
    }

    /// The kernel's SYN cookie for a SYN with this packet's IPv4 header and
    /// the TCP header `tcp[..len]`, and the MSS (one of the kernel's table)
    /// it encodes.
    #[inline(always)]
    pub fn syncookie<const N: usize>(&self, tcp: &mut [u8; N], len: u32) -> Option<(u32, u16)> {
        // SAFETY: the IPv4 header is inside the frame (parse_tcp) and tcp is
        // readable for len bytes (the helper checks len against its doff);
        // the helper only reads both.
        let rc = unsafe {
            bpf_tcp_raw_gen_syncookie_ipv4(
                &*self.frame.ip as *const Ipv4Hdr as *mut iphdr,
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
        // SAFETY: both headers are inside the frame (parse_tcp); the helper
        // only reads them.
        unsafe {
            bpf_tcp_raw_check_syncookie_ipv4(
                &*self.frame.ip as *const Ipv4Hdr as *mut iphdr,
                &*self.tcp as *const TcpHdr as *mut tcphdr,
            ) == 0
        }
    }
}

/// [`TcpPacket::tcp_header`] for a TCP header `tcp` at `offset` in the
/// frame (either family's).
#[inline(always)]
fn load_tcp_header(ctx: &XdpContext, tcp: &TcpHdr, offset: usize) -> Option<([u8; TCP_MAX_LEN], u32)> {
    let mut buf = [0u8; TCP_MAX_LEN];
    // The mask bounds the length for the verifier; the parser checked the
    // header is at least TCP_LEN long and inside the frame.
    let len = (tcp.doff() as u32 * 4) & 0x3c;
    if len < TCP_LEN as u32 {
        return None;
    }
    // SAFETY: ctx.ctx is this run's xdp_md and buf is writable for len
    // (at most TCP_MAX_LEN) bytes.
    let rc = unsafe { bpf_xdp_load_bytes(ctx.ctx, offset as u32, buf.as_mut_ptr() as *mut c_void, len) };
    (rc == 0).then_some((buf, len))
}

/// What a kernel SYN cookie generator returned (`rc`, either family's): the
/// cookie and the MSS it encodes, or `None` for an error.
#[inline(always)]
fn cookie_and_mss(rc: i64) -> Option<(u32, u16)> {
    (rc >= 0).then_some((rc as u32, (rc >> 32) as u16))
}

/// [`TcpPacket::copy_payload`] for a payload of `len` bytes after the TCP
/// header `tcp` at `tcp_offset` in the frame (either family's).
#[inline(always)]
fn load_payload(
    ctx: &XdpContext,
    tcp: &TcpHdr,
    tcp_offset: usize,
    len: u32,
    into: &mut [u8; HELD_PAYLOAD_MAX],
) -> Option<u32> {
    let offset = (tcp_offset + tcp.doff() as usize * 4) as u32;
    if len == 0 || len as usize > HELD_PAYLOAD_MAX {
        return None;
    }
    // SAFETY: ctx.ctx is this run's xdp_md and `into` is writable for
    // len (at most its size) bytes; the helper checks the frame holds
    // them.
    if unsafe { bpf_xdp_load_bytes(ctx.ctx, offset, into.as_mut_ptr() as *mut c_void, len) } != 0 {
        return None;
    }
    for pad in len..(len + 3) & !3 {
        if let Some(byte) = into.get_mut(pad as usize) {
            *byte = 0;
        }
    }
    Some(len)
}

/// A parsed TCP segment or UDP datagram: what forwarding it
/// ([`crate::forward::forward_to`]) and answering it with an ICMP error
/// quoting it ([`crate::icmp::answer_too_big`]) need of either.
pub trait L4Packet<'a>: DerefMut<Target = Ipv4Frame<'a>> {
    /// Its IP protocol number.
    const PROTO: u8;
    /// Its layer-4 header, which starts with the two ports.
    type Header: 'a;

    fn header(&self) -> &Self::Header;

    /// IP total length, host order.
    fn ip_len(&self) -> u16;

    /// Source and destination port, wire order.
    fn ports(&self) -> (u16, u16);

    /// Replaces the packet's header references with ones into the frame as
    /// it now stands ([`L4Packet::answer_with`]).
    fn rebind(&mut self, eth: &'a mut EthHdr, ip: &'a mut Ipv4Hdr, header: &'a mut Self::Header);

    /// Addresses and ports.
    #[inline(always)]
    fn tuple(&self) -> Tuple {
        let (src_port, dst_port) = self.ports();
        Tuple {
            src_addr: self.src_addr(),
            dst_addr: self.dst_addr(),
            src_port,
            dst_port,
        }
    }

    /// What an ICMP error about this packet quotes: its IP header and the
    /// first bytes of its layer-4 header, as they stand now.
    #[inline(always)]
    fn quote(&self) -> ([u8; IP_LEN], [u8; QUOTE_L4_LEN]) {
        const { assert!(size_of::<Self::Header>() >= QUOTE_L4_LEN, "the header holds the quote") };
        // SAFETY: both headers are plain byte arrays (`repr(C)`, alignment
        // 1, no padding) at least as long as the arrays read from them.
        unsafe {
            (
                *(&*self.ip as *const Ipv4Hdr).cast::<[u8; IP_LEN]>(),
                *(self.header() as *const Self::Header).cast::<[u8; QUOTE_L4_LEN]>(),
            )
        }
    }

    /// Turns the frame into an answer to this packet: cuts it down to the
    /// Ethernet header, which stays as it is, and `l3` after it. Returns
    /// false if the frame could not be resized; the caller drops it.
    ///
    /// Where the caller holds the packet only by reference, it cannot give
    /// the packet up, so the packet's header references are taken again in
    /// the new frame: they stay valid (the answer is at least as long as the
    /// headers), but view the answer now, not the packet, so the caller
    /// only sends the frame afterwards.
    #[must_use]
    #[inline(always)]
    fn answer_with<const N: usize>(&mut self, ctx: &XdpContext, l3: &[u8; N]) -> bool {
        const {
            assert!(
                N >= IP_LEN + size_of::<Self::Header>(),
                "the headers must stay inside the answer"
            )
        };
        // SAFETY: the packet's references are not used again before they
        // are replaced with ones taken in the resized frame, below.
        if !resize(ctx, (ETH_LEN + N) as i32) {
            return false;
        }
        // Always inside (the resized frame holds the Ethernet header and
        // `l3`); the checks are for the verifier.
        let Some(dst) = ptr_at::<[u8; N]>(ctx, ETH_LEN) else {
            return false;
        };
        // SAFETY: inside the resized frame (ptr_at, taken after the resize);
        // no other reference to it is live.
        unsafe { *dst = *l3 };
        let (Some(eth), Some(ip), Some(header)) = (
            ptr_at::<EthHdr>(ctx, 0),
            ptr_at::<Ipv4Hdr>(ctx, ETH_LEN),
            ptr_at::<Self::Header>(ctx, ETH_LEN + IP_LEN),
        ) else {
            return false;
        };
        // SAFETY: inside the resized frame (ptr_at); the three do not overlap
        // and replace the packet's only references.
        unsafe { self.rebind(&mut *eth, &mut *ip, &mut *header) };
        true
    }
}

impl<'a> L4Packet<'a> for TcpPacket<'a> {
    const PROTO: u8 = IpProto::Tcp as u8;
    type Header = TcpHdr;

    #[inline(always)]
    fn header(&self) -> &TcpHdr {
        self.tcp
    }

    #[inline(always)]
    fn ip_len(&self) -> u16 {
        self.ip_len
    }

    #[inline(always)]
    fn ports(&self) -> (u16, u16) {
        (self.src_port(), self.dst_port())
    }

    #[inline(always)]
    fn rebind(&mut self, eth: &'a mut EthHdr, ip: &'a mut Ipv4Hdr, header: &'a mut TcpHdr) {
        (self.frame.eth, self.frame.ip, self.tcp) = (eth, ip, header);
    }
}

/// An ICMPv4 error about a TCP segment or a UDP datagram, as the data plane
/// translates it: the outer IPv4 header (no options, not a fragment), the
/// ICMP header, and the quote, whose IPv4 header (no options) and ports are
/// all inside the frame and the outer IP length. Borrowed for the rest of
/// the run.
pub struct IcmpError<'a> {
    /// The outer headers.
    frame: Ipv4Frame<'a>,
    icmp: &'a mut Icmpv4Hdr,
    quote_ip: &'a mut Ipv4Hdr,
    /// The quoted source and destination ports.
    quote_ports: &'a mut [[u8; 2]; 2],
    /// The quoted TCP sequence number, as the bytes stand (of a UDP quote:
    /// its length and checksum, never shifted).
    quote_seq: &'a mut [u8; 4],
    /// The quoted TCP or UDP checksum, if the quote holds it (a UDP
    /// checksum of 0, none, is not one).
    quote_l4_check: Option<&'a mut [u8; 2]>,
    /// Outer IP total length, host order.
    ip_len: u16,
}

impl<'a> Deref for IcmpError<'a> {
    type Target = Ipv4Frame<'a>;

    #[inline(always)]
    fn deref(&self) -> &Ipv4Frame<'a> {
        &self.frame
    }
}

impl DerefMut for IcmpError<'_> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.frame
    }
}

/// Parses an IPv4 ICMP frame ([`NotForUs::Icmp`]) as an error about a
/// packet of protocol `proto` (TCP or UDP) the data plane may translate.
/// Otherwise the counter says why not: [`Counter::Passed`] for messages
/// that are not such errors (echo, redirect, ...), [`Counter::IcmpMalformed`]
/// for ones it cannot parse, and [`Counter::IcmpErrorWithoutFlow`] for
/// errors about another protocol ([`icmp_quotes_udp`] tells UDP apart).
#[inline(always)]
pub fn parse_icmp_error(ctx: &XdpContext, proto: u8) -> Result<IcmpError<'_>, Counter> {
    let (Some(eth), Some(ip), Some(icmp_hdr)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv4Hdr>(ctx, ETH_LEN),
        ptr_at::<Icmpv4Hdr>(ctx, ICMP_OFFSET),
    ) else {
        return Err(Counter::IcmpMalformed);
    };
    // SAFETY: inside the frame (ptr_at).
    let (vihl, frags, ip_len, icmp_type) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).frags),
            (*ip).tot_len(),
            (*icmp_hdr).type_,
        )
    };
    // Options would move the ICMP header; a fragment may lack the quote.
    if vihl != 0x45 || frags & (IP_MF | IP_OFFSET_MASK) != 0 {
        return Err(Counter::IcmpMalformed);
    }
    if !icmp::follows_flow(icmp_type) {
        return Err(Counter::Passed);
    }
    let frame_ip_len = ctx.data_end() - ctx.data() - ETH_LEN;
    if (ip_len as usize) < MIN_ICMP_ERROR_LEN || ip_len as usize > frame_ip_len {
        return Err(Counter::IcmpMalformed);
    }
    let (Some(quote_ip), Some(quote_ports), Some(quote_seq)) = (
        ptr_at::<Ipv4Hdr>(ctx, QUOTE_IP_OFFSET),
        ptr_at::<[[u8; 2]; 2]>(ctx, QUOTE_L4_OFFSET),
        ptr_at::<[u8; 4]>(ctx, QUOTE_L4_OFFSET + 4),
    ) else {
        return Err(Counter::IcmpMalformed);
    };
    // SAFETY: inside the frame (ptr_at).
    let (quote_vihl, quote_proto, quote_frags) = unsafe {
        (
            (*quote_ip).vihl,
            (*quote_ip).proto,
            u16::from_be_bytes((*quote_ip).frags),
        )
    };
    // Only a first fragment quotes the L4 header; the data plane sends no
    // options, so a quote with them is not of a packet it sent.
    if quote_vihl != 0x45 || quote_frags & IP_OFFSET_MASK != 0 {
        return Err(Counter::IcmpMalformed);
    }
    if quote_proto != proto {
        return Err(Counter::IcmpErrorWithoutFlow);
    }
    let udp = proto == IpProto::Udp as u8;
    let check_offset = QUOTE_L4_OFFSET + if udp { UDP_CHECK_OFFSET } else { TCP_CHECK_OFFSET };
    let quote_l4_check = if ip_len as usize >= check_offset + 2 - ETH_LEN {
        // Inside the IP length, which is inside the frame: the check is for
        // the verifier.
        Some(ptr_at::<[u8; 2]>(ctx, check_offset).ok_or(Counter::IcmpMalformed)?)
    } else {
        None
    };
    // SAFETY: inside the frame (ptr_at).
    let quote_l4_check = quote_l4_check.filter(|check| !udp || unsafe { **check } != [0, 0]);
    // SAFETY: inside the frame (ptr_at); the parts do not overlap and the
    // error holds the only references to them.
    unsafe {
        Ok(IcmpError {
            frame: Ipv4Frame {
                eth: &mut *eth,
                ip: &mut *ip,
            },
            icmp: &mut *icmp_hdr,
            quote_ip: &mut *quote_ip,
            quote_ports: &mut *quote_ports,
            quote_seq: &mut *quote_seq,
            quote_l4_check: quote_l4_check.map(|check| &mut *check),
            ip_len,
        })
    }
}

/// Whether the ICMP frame in `ctx` quotes a UDP datagram: read apart from
/// [`parse_icmp_error`], to pick the program that translates it.
#[inline(always)]
pub fn icmp_quotes_udp(ctx: &XdpContext) -> bool {
    // SAFETY: inside the frame (ptr_at).
    ptr_at::<Ipv4Hdr>(ctx, QUOTE_IP_OFFSET).is_some_and(|ip| unsafe { (*ip).proto } == IpProto::Udp as u8)
}

/// Addresses, ports and checksums are wire order, as in [`TcpPacket`]; the
/// outer headers' accessors are [`Ipv4Frame`]'s.
impl IcmpError<'_> {
    /// Outer IP total length.
    #[inline(always)]
    pub fn ip_len(&self) -> u16 {
        self.ip_len
    }

    /// The quoted segment's addresses and ports.
    #[inline(always)]
    pub fn quoted(&self) -> Tuple {
        Tuple {
            src_addr: u32::from_ne_bytes(self.quote_ip.src_addr),
            dst_addr: u32::from_ne_bytes(self.quote_ip.dst_addr),
            src_port: u16::from_ne_bytes(self.quote_ports[0]),
            dst_port: u16::from_ne_bytes(self.quote_ports[1]),
        }
    }

    /// The checksums the quote's addressing enters.
    #[inline(always)]
    pub fn quote_checksums(&self) -> QuoteChecksums {
        QuoteChecksums {
            icmp: u16::from_ne_bytes(self.icmp.check),
            ip: u16::from_ne_bytes(self.quote_ip.check),
            tcp: self.quote_l4_check.as_ref().map(|check| u16::from_ne_bytes(**check)),
        }
    }

    /// The quoted TCP sequence number, wire order (the bytes as they stand).
    #[inline(always)]
    pub fn quoted_seq(&self) -> u32 {
        u32::from_ne_bytes(*self.quote_seq)
    }

    /// Sets the quoted sequence number (as read by [`IcmpError::quoted_seq`]);
    /// the caller keeps the checksums right.
    #[inline(always)]
    pub fn set_quoted_seq(&mut self, seq: u32) {
        *self.quote_seq = seq.to_ne_bytes();
    }

    /// Sets the quote's addressing and the checksums that go with it, as
    /// [`QuoteChecksums::translate`] computes them.
    #[inline(always)]
    pub fn set_quoted(&mut self, tuple: &Tuple, checks: &QuoteChecksums) {
        self.quote_ip.src_addr = tuple.src_addr.to_ne_bytes();
        self.quote_ip.dst_addr = tuple.dst_addr.to_ne_bytes();
        self.quote_ports[0] = tuple.src_port.to_ne_bytes();
        self.quote_ports[1] = tuple.dst_port.to_ne_bytes();
        self.icmp.check = checks.icmp.to_ne_bytes();
        self.quote_ip.check = checks.ip.to_ne_bytes();
        if let (Some(field), Some(check)) = (self.quote_l4_check.as_mut(), checks.tcp) {
            **field = check.to_ne_bytes();
        }
    }
}
