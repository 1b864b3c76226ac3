//! The one module that touches packet memory: the bounds-checked pointer
//! helper, Ethernet/IPv4/TCP parsing, and safe reads and in-place writes of
//! the parsed headers. Everything else works through [`TcpPacket`].

use core::mem::size_of;

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
use bg_lb_common::{checksum::finish, counters::Counter, syn_proxy::HELD_PAYLOAD_MAX};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{IpProto, Ipv4Hdr},
    tcp::TcpHdr,
};

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
/// More Fragments flag and fragment offset mask in the 16-bit frags field.
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

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
    eth: &'a mut EthHdr,
    ip: &'a mut Ipv4Hdr,
    tcp: &'a mut TcpHdr,
    /// TCP flags byte (FIN, SYN, RST, PSH, ACK, ...).
    flags: u8,
    /// IP total length, host order.
    ip_len: u16,
}

/// Why a frame is not a `TcpPacket` we may rewrite.
pub enum NotForUs {
    /// Not IPv4/TCP at all: ARP, IPv6, ICMP, UDP, ...
    Other,
    /// A TCP/IPv4 frame we must not touch; the counter says why.
    Unsafe(Counter),
}

/// Parses the frame once per program run; the packet it returns is the only
/// reference to its headers.
#[inline(always)]
pub fn parse_tcp(ctx: &XdpContext) -> Result<TcpPacket<'_>, NotForUs> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(NotForUs::Other)?;
    // SAFETY: inside the frame (ptr_at).
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
        return Err(NotForUs::Other);
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN).ok_or(NotForUs::Unsafe(Counter::Truncated))?;
    // SAFETY: inside the frame (ptr_at).
    let (vihl, proto, frags, ip_len) = unsafe {
        (
            (*ip).vihl,
            (*ip).proto,
            u16::from_be_bytes((*ip).frags),
            (*ip).tot_len(),
        )
    };
    if proto != IpProto::Tcp as u8 || vihl >> 4 != 4 {
        return Err(NotForUs::Other);
    }
    if vihl & 0x0f != 5 {
        return Err(NotForUs::Unsafe(Counter::IpOptions));
    }
    if frags & (IP_MF | IP_OFFSET_MASK) != 0 {
        return Err(NotForUs::Unsafe(Counter::Fragmented));
    }
    let tcp: *mut TcpHdr = ptr_at(ctx, TCP_OFFSET).ok_or(NotForUs::Unsafe(Counter::Truncated))?;
    // The IP length must cover the TCP header and fit in the frame, or the
    // checksums we update would not describe what is sent.
    let frame_ip_len = ctx.data_end() - ctx.data() - ETH_LEN;
    // SAFETY: inside the frame (ptr_at).
    let tcp_len = (unsafe { (*tcp).doff() } as usize) * 4;
    if tcp_len < TCP_LEN || (ip_len as usize) < IP_LEN + tcp_len || ip_len as usize > frame_ip_len {
        return Err(NotForUs::Unsafe(Counter::Truncated));
    }
    let flags: *const u8 = ptr_at(ctx, TCP_OFFSET + TCP_FLAGS_OFFSET).ok_or(NotForUs::Unsafe(Counter::Truncated))?;
    // SAFETY: inside the frame (ptr_at), read before `tcp` becomes a reference.
    let flags = unsafe { *flags };
    // SAFETY: inside the frame (ptr_at); the three headers do not overlap and
    // the packet holds the only references to them.
    let (eth, ip, tcp) = unsafe { (&mut *eth, &mut *ip, &mut *tcp) };
    Ok(TcpPacket {
        eth,
        ip,
        tcp,
        flags,
        ip_len,
    })
}

/// A segment without payload that the LB writes in place of a frame rather
/// than rewrites: a RST, a SYN cookie's SYN-ACK, the SYN and the ACK it sends
/// a backend on a client's behalf. IPv4 without options, TTL 64, DF; an MSS
/// option if `mss` is not 0. Addresses and ports in wire order, as
/// [`TcpPacket`] returns them; the rest host order.
pub struct Segment {
    pub src_addr: u32,
    pub dst_addr: u32,
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

    #[inline(always)]
    pub fn src_addr(&self) -> u32 {
        u32::from_ne_bytes(self.ip.src_addr)
    }

    #[inline(always)]
    pub fn dst_addr(&self) -> u32 {
        u32::from_ne_bytes(self.ip.dst_addr)
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

    #[inline(always)]
    pub fn ttl(&self) -> u8 {
        self.ip.ttl
    }

    #[inline(always)]
    pub fn tos(&self) -> u8 {
        self.ip.tos
    }

    #[inline(always)]
    pub fn proto(&self) -> u8 {
        self.ip.proto
    }

    /// IP header checksum, wire order.
    #[inline(always)]
    pub fn ip_check(&self) -> u16 {
        u16::from_ne_bytes(self.ip.check)
    }

    /// TCP checksum, wire order.
    #[inline(always)]
    pub fn tcp_check(&self) -> u16 {
        u16::from_ne_bytes(self.tcp.check)
    }

    #[inline(always)]
    pub fn set_macs(&mut self, src: [u8; 6], dst: [u8; 6]) {
        self.eth.src_addr = src;
        self.eth.dst_addr = dst;
    }

    /// Addresses the frame back to where it came from, at the Ethernet layer.
    #[inline(always)]
    pub fn swap_macs(&mut self) {
        core::mem::swap(&mut self.eth.src_addr, &mut self.eth.dst_addr);
    }

    /// Sets the TTL; the caller keeps the IP checksum right.
    #[inline(always)]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.ip.ttl = ttl;
    }

    /// Sets both IP addresses; the caller keeps the checksums right.
    #[inline(always)]
    pub fn set_addrs(&mut self, src: u32, dst: u32) {
        self.ip.src_addr = src.to_ne_bytes();
        self.ip.dst_addr = dst.to_ne_bytes();
    }

    /// Sets both TCP ports; the caller keeps the checksum right.
    #[inline(always)]
    pub fn set_ports(&mut self, src: u16, dst: u16) {
        self.tcp.source = src.to_ne_bytes();
        self.tcp.dest = dst.to_ne_bytes();
    }

    #[inline(always)]
    pub fn set_ip_check(&mut self, check: u16) {
        self.ip.check = check.to_ne_bytes();
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
    pub fn become_segment<'c>(self, ctx: &'c XdpContext, segment: &Segment) -> Option<TcpPacket<'c>> {
        let written = if segment.mss != 0 {
            self.write_segment::<TCP_WITH_MSS_LEN>(ctx, segment, None)
        } else {
            self.write_segment::<TCP_LEN>(ctx, segment, None)
        };
        if !written {
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
        segment: &Segment,
        payload: &[u8; HELD_PAYLOAD_MAX],
        len: u32,
    ) -> Option<TcpPacket<'c>> {
        if !self.write_segment::<TCP_LEN>(ctx, segment, Some((payload, len))) {
            return None;
        }
        parse_tcp(ctx).ok()
    }

    /// [`TcpPacket::become_segment`] with a TCP header of `TCP` bytes and
    /// perhaps a payload; false if the frame could not take it. Out of
    /// line, so the segment's fields are read from memory after the resize
    /// rather than held across it in registers the helper call clobbers
    /// (spilled byte by byte, they overflowed the stack).
    #[inline(never)]
    fn write_segment<const TCP: usize>(
        self,
        ctx: &XdpContext,
        s: &Segment,
        payload: Option<(&[u8; HELD_PAYLOAD_MAX], u32)>,
    ) -> bool {
        self.write_segment_fields::<TCP>(ctx, s, payload).is_some()
    }

    #[inline(always)]
    fn write_segment_fields<const TCP: usize>(
        self,
        ctx: &XdpContext,
        s: &Segment,
        payload: Option<(&[u8; HELD_PAYLOAD_MAX], u32)>,
    ) -> Option<()> {
        let eth = *self.eth;
        // 64 bits from here on: a copy widened later would be a register the
        // verifier does not connect with the one checked below.
        let payload_len = match payload {
            Some((_, len)) if len as usize <= HELD_PAYLOAD_MAX => u64::from(len),
            Some(_) => return None,
            None => 0,
        };
        let headers = (ETH_LEN + IP_LEN + TCP) as i32;
        if !resize(ctx, headers + payload_len as i32) {
            return None;
        }
        // Resizing invalidated every packet pointer: take new ones. They are
        // inside (the frame is now exactly this long), so the checks are for
        // the verifier.
        let eth_at: *mut EthHdr = ptr_at(ctx, 0)?;
        let ip: *mut [u8; IP_LEN] = ptr_at(ctx, ETH_LEN)?;
        let tcp: *mut [u8; TCP] = ptr_at(ctx, TCP_OFFSET)?;
        // Written in place, field by field: headers built on the stack and
        // copied in would cost more stack than the program has.
        // SAFETY: inside the resized frame (ptr_at, taken after the resize);
        // the three do not overlap and nothing else refers to the frame.
        let (ip, tcp) = unsafe {
            *eth_at = eth;
            (&mut *ip, &mut *tcp)
        };
        let (src, dst) = (s.src_addr.to_ne_bytes(), s.dst_addr.to_ne_bytes());
        let segment_len = (TCP as u64 + payload_len) as u16;
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
        let mut sum = pseudo_header_sum(s.src_addr, s.dst_addr, segment_len);
        if let Some((bytes, _)) = payload {
            sum = csum_words(bytes, payload_len as u32, sum)?;
            // Checked again right before the call, in the verifier's own
            // terms: the compiler folds a plain check into arithmetic on a
            // copy, whose bounds the verifier does not carry back.
            if !check_bounds_signed(payload_len as i64, 1, HELD_PAYLOAD_MAX as i64) {
                return None;
            }
            // SAFETY: ctx.ctx is this run's xdp_md; bytes is readable for
            // payload_len (at most its size) bytes, and the frame has room for
            // them after the headers (resized above).
            let rc = unsafe {
                bpf_xdp_store_bytes(
                    ctx.ctx,
                    headers as u32,
                    bytes.as_ptr() as *mut c_void,
                    payload_len as u32,
                )
            };
            if rc != 0 {
                return None;
            }
        }
        let tcp_check = finish(csum(tcp, sum));
        tcp[16..18].copy_from_slice(&tcp_check.to_ne_bytes());
        Some(())
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
        let ip = unsafe { &*(&*self.ip as *const Ipv4Hdr as *const [u8; IP_LEN]) };
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
        let mut buf = [0u8; TCP_MAX_LEN];
        // The mask bounds the length for the verifier; parse_tcp checked the
        // header is at least TCP_LEN long and inside the frame.
        let len = (self.tcp.doff() as u32 * 4) & 0x3c;
        if len < TCP_LEN as u32 {
            return None;
        }
        // SAFETY: ctx.ctx is this run's xdp_md and buf is writable for len
        // (at most TCP_MAX_LEN) bytes.
        let rc = unsafe { bpf_xdp_load_bytes(ctx.ctx, TCP_OFFSET as u32, buf.as_mut_ptr() as *mut c_void, len) };
        (rc == 0).then_some((buf, len))
    }

    /// Copies the payload into `into`, zero past it to a multiple of 4 (as
    /// [`TcpPacket::become_data_segment`] takes it); its length, or `None`
    /// if it is empty or does not fit.
    #[inline(always)]
    pub fn copy_payload(&self, ctx: &XdpContext, into: &mut [u8; HELD_PAYLOAD_MAX]) -> Option<u32> {
        let len = self.payload_len();
        if len == 0 || len as usize > HELD_PAYLOAD_MAX {
            return None;
        }
        let offset = (TCP_OFFSET + self.tcp.doff() as usize * 4) as u32;
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
                &*self.ip as *const Ipv4Hdr as *mut iphdr,
                tcp.as_mut_ptr() as *mut tcphdr,
                len,
            )
        };
        (rc >= 0).then_some((rc as u32, (rc >> 32) as u16))
    }

    /// Whether this segment's ack - 1 is a valid SYN cookie for its 4-tuple
    /// and seq - 1.
    #[inline(always)]
    pub fn proves_syncookie(&self) -> bool {
        // SAFETY: both headers are inside the frame (parse_tcp); the helper
        // only reads them.
        unsafe {
            bpf_tcp_raw_check_syncookie_ipv4(
                &*self.ip as *const Ipv4Hdr as *mut iphdr,
                &*self.tcp as *const TcpHdr as *mut tcphdr,
            ) == 0
        }
    }
}
