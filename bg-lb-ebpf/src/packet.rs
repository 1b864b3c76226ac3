//! The one module that touches packet memory: the bounds-checked pointer
//! helper, Ethernet/IPv4/TCP parsing, and safe reads and in-place writes of
//! the parsed headers. Everything else works through [`TcpPacket`].

use core::mem::size_of;

use aya_ebpf::{helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use bg_lb_common::counters::Counter;
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
/// [`TcpPacket::replace_with`] does, after giving up the packet's headers.
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

/// IPv4 and TCP headers with neither options nor payload, built on the stack.
pub struct BareHeaders {
    pub ip: [u8; IP_LEN],
    pub tcp: [u8; TCP_LEN],
}

const BARE_FRAME_LEN: usize = ETH_LEN + IP_LEN + TCP_LEN;

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

    /// Whether the frame was sent to a group (broadcast or multicast) MAC:
    /// an answer would come from that address, which no host may use.
    #[inline(always)]
    pub fn to_group_mac(&self) -> bool {
        self.eth.dst_addr[0] & 1 != 0
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

    /// Cuts the frame down to bare headers and writes `headers` after the
    /// Ethernet header, which stays as it is. Takes the packet: resizing the
    /// frame invalidates its headers. Returns false if the frame could not be
    /// resized; the caller drops it.
    #[must_use]
    #[inline(always)]
    pub fn replace_with(self, ctx: &XdpContext, headers: &BareHeaders) -> bool {
        let delta = BARE_FRAME_LEN as i32 - (ctx.data_end() - ctx.data()) as i32;
        // SAFETY: ctx.ctx is this run's xdp_md; no reference into the frame
        // outlives the call, as the packet was taken by value.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return false;
        }
        // Shrinking the frame invalidated every packet pointer: take new ones.
        // They are always inside (the parsed frame held at least these
        // headers), so the checks are for the verifier.
        let (Some(ip), Some(tcp)) = (
            ptr_at::<[u8; IP_LEN]>(ctx, ETH_LEN),
            ptr_at::<[u8; TCP_LEN]>(ctx, TCP_OFFSET),
        ) else {
            return false;
        };
        // SAFETY: inside the resized frame (ptr_at, taken after the resize).
        unsafe {
            *ip = headers.ip;
            *tcp = headers.tcp;
        }
        true
    }
}
