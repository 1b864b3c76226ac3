//! Bounds-checked access to packet memory and Ethernet/IPv4/TCP parsing.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use bg_lb_common::counters::Counter;
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{IpProto, Ipv4Hdr},
    tcp::TcpHdr,
};

/// Pointer to a `T` at `offset` in the packet, if the whole `T` is inside it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// An IPv4 TCP segment whose headers are all inside the frame.
pub struct TcpPacket {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    pub tcp: *mut TcpHdr,
    /// TCP flags byte (FIN, SYN, RST, PSH, ACK, ...).
    pub flags: u8,
    /// IP total length, host order: the bytes counted in statistics.
    pub ip_len: u16,
}

/// Why a frame is not a `TcpPacket` we may rewrite.
pub enum NotForUs {
    /// Not IPv4/TCP at all: ARP, IPv6, ICMP, UDP, ...
    Other,
    /// A TCP/IPv4 frame we must not touch; the counter says why.
    Unsafe(Counter),
}

const ETH_LEN: usize = size_of::<EthHdr>();
const IP_LEN: usize = size_of::<Ipv4Hdr>();
const TCP_OFFSET: usize = ETH_LEN + IP_LEN;
/// Byte offset of the flags within the TCP header.
const TCP_FLAGS_OFFSET: usize = 13;
/// More Fragments flag and fragment offset mask in the 16-bit frags field.
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

#[inline(always)]
pub fn parse_tcp(ctx: &XdpContext) -> Result<TcpPacket, NotForUs> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(NotForUs::Other)?;
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
        return Err(NotForUs::Other);
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN).ok_or(NotForUs::Unsafe(Counter::Truncated))?;
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
    let tcp_len = (unsafe { (*tcp).doff() } as usize) * 4;
    if tcp_len < size_of::<TcpHdr>() || (ip_len as usize) < IP_LEN + tcp_len || ip_len as usize > frame_ip_len {
        return Err(NotForUs::Unsafe(Counter::Truncated));
    }
    let flags: *const u8 = ptr_at(ctx, TCP_OFFSET + TCP_FLAGS_OFFSET).ok_or(NotForUs::Unsafe(Counter::Truncated))?;
    Ok(TcpPacket {
        eth,
        ip,
        tcp,
        flags: unsafe { *flags },
        ip_len,
    })
}

impl TcpPacket {
    #[inline(always)]
    pub fn src_addr(&self) -> u32 {
        u32::from_ne_bytes(unsafe { (*self.ip).src_addr })
    }

    #[inline(always)]
    pub fn dst_addr(&self) -> u32 {
        u32::from_ne_bytes(unsafe { (*self.ip).dst_addr })
    }

    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        u16::from_ne_bytes(unsafe { (*self.tcp).source })
    }

    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        u16::from_ne_bytes(unsafe { (*self.tcp).dest })
    }
}
