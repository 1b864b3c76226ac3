//! UDP over IPv4: parsing a datagram into [`UdpPacket`] and its safe reads
//! and in-place writes, as [`super::TcpPacket`] does for TCP.

use core::{
    mem::size_of,
    ops::{Deref, DerefMut},
};

use aya_ebpf::programs::XdpContext;
use network_types::{
    eth::EthHdr,
    ip::{IpProto, Ipv4Hdr},
    udp::UdpHdr,
};

use super::{ETH_LEN, IP_LEN, IP_MF, IP_OFFSET_MASK, Ipv4Frame, L4Packet, ptr_at};

const UDP_OFFSET: usize = ETH_LEN + IP_LEN;
const UDP_LEN: usize = size_of::<UdpHdr>();

/// An IPv4 UDP datagram whose headers are inside the frame, borrowed for
/// the rest of the program run. Addresses and ports wire order, as in
/// [`super::TcpPacket`].
pub struct UdpPacket<'a> {
    frame: Ipv4Frame<'a>,
    udp: &'a mut UdpHdr,
    /// IP total length, host order.
    ip_len: u16,
}

impl<'a> Deref for UdpPacket<'a> {
    type Target = Ipv4Frame<'a>;

    #[inline(always)]
    fn deref(&self) -> &Ipv4Frame<'a> {
        &self.frame
    }
}

impl DerefMut for UdpPacket<'_> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.frame
    }
}

/// Why a UDP frame cannot be rewritten, and where it was going.
pub struct Unusable {
    /// Wire order.
    pub dst_addr: u32,
    /// Wire order; `None` when the frame does not hold the UDP ports.
    pub dst_port: Option<u16>,
    /// Fragmented (or with IP options) rather than cut short.
    pub fragmented: bool,
}

/// Parses a frame the TCP parser found to be IPv4 UDP
/// ([`super::NotForUs::Udp`]); `None` if it cannot be rewritten: IP options
/// (they move the UDP header), a fragment (its checksum covers bytes this
/// frame lacks), or lengths that disagree or overrun the frame (the
/// checksum we update would not describe what is sent). [`unusable`] then
/// says where it was going.
#[inline(always)]
pub fn parse_udp(ctx: &XdpContext) -> Option<UdpPacket<'_>> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN)?;
    let udp = ptr_at::<UdpHdr>(ctx, UDP_OFFSET)?;
    // SAFETY: inside the frame (ptr_at).
    let (vihl, frags, ip_len, udp_len) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).frags),
            (*ip).tot_len() as usize,
            u16::from_be_bytes((*udp).len) as usize,
        )
    };
    let frame_ip_len = ctx.data_end() - ctx.data() - ETH_LEN;
    if vihl != 0x45
        || frags & (IP_MF | IP_OFFSET_MASK) != 0
        || udp_len < UDP_LEN
        || ip_len != IP_LEN + udp_len
        || ip_len > frame_ip_len
    {
        return None;
    }
    // SAFETY: inside the frame (ptr_at); the three headers do not overlap and
    // the packet holds the only references to them.
    let (eth, ip, udp) = unsafe { (&mut *eth, &mut *ip, &mut *udp) };
    Some(UdpPacket {
        frame: Ipv4Frame { eth, ip },
        udp,
        ip_len: ip_len as u16,
    })
}

/// Where a UDP frame [`parse_udp`] refused was going, as far as it shows.
/// Read again, apart from the parse: a result carrying either the headers
/// or these scalars made LLVM share registers between them, which the
/// verifier refuses.
#[inline(always)]
pub fn unusable(ctx: &XdpContext) -> Unusable {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return Unusable {
            dst_addr: 0,
            dst_port: None,
            fragmented: false,
        };
    };
    // SAFETY: inside the frame (ptr_at).
    let (vihl, frags, dst_addr) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).frags),
            u32::from_ne_bytes((*ip).dst_addr),
        )
    };
    // Only an option-less first fragment has its UDP header here.
    let dst_port = if vihl == 0x45 && frags & IP_OFFSET_MASK == 0 {
        // SAFETY: inside the frame (ptr_at).
        ptr_at::<UdpHdr>(ctx, UDP_OFFSET).map(|udp| u16::from_ne_bytes(unsafe { (*udp).dst }))
    } else {
        None
    };
    Unusable {
        dst_addr,
        dst_port,
        fragmented: vihl != 0x45 || frags & (IP_MF | IP_OFFSET_MASK) != 0,
    }
}

/// The IPv4 accessors are [`Ipv4Frame`]'s.
impl UdpPacket<'_> {
    /// IP total length: the bytes counted in statistics.
    #[inline(always)]
    pub fn ip_len(&self) -> u16 {
        self.ip_len
    }

    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        u16::from_ne_bytes(self.udp.src)
    }

    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        u16::from_ne_bytes(self.udp.dst)
    }

    /// UDP checksum, wire order; 0: none.
    #[inline(always)]
    pub fn udp_check(&self) -> u16 {
        u16::from_ne_bytes(self.udp.check)
    }

    /// Sets both UDP ports; the caller keeps the checksum right.
    #[inline(always)]
    pub fn set_ports(&mut self, src: u16, dst: u16) {
        self.udp.src = src.to_ne_bytes();
        self.udp.dst = dst.to_ne_bytes();
    }

    #[inline(always)]
    pub fn set_udp_check(&mut self, check: u16) {
        self.udp.check = check.to_ne_bytes();
    }
}

impl<'a> L4Packet<'a> for UdpPacket<'a> {
    const PROTO: u8 = IpProto::Udp as u8;
    type Header = UdpHdr;

    /// The whole UDP header: ports, length, checksum.
    #[inline(always)]
    fn header(&self) -> &UdpHdr {
        self.udp
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
    fn rebind(&mut self, eth: &'a mut EthHdr, ip: &'a mut Ipv4Hdr, header: &'a mut UdpHdr) {
        (self.frame.eth, self.frame.ip, self.udp) = (eth, ip, header);
    }
}
