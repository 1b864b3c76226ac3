//! The Ethernet and IPv4 headers every parsed packet ([`super::TcpPacket`],
//! [`super::udp::UdpPacket`], [`super::IcmpError`]) starts with, and their
//! safe reads and in-place writes: one set, which each packet lends its
//! callers through `Deref` (a packet is its frame plus a layer-4 view).

use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use super::IP_DF;

/// The Ethernet header and an option-less IPv4 header of a parsed frame,
/// borrowed for the rest of the program run. Addresses are wire order, as
/// the bytes stand in the header read as a native integer.
///
/// The IP length the parse checked stays with each packet, beside this
/// view: in here it would pad the view to 24 bytes and each packet by 8
/// more, which the TCP program's stack (a spilled packet) cannot spare.
pub struct Ipv4Frame<'a> {
    pub(super) eth: &'a mut EthHdr,
    pub(super) ip: &'a mut Ipv4Hdr,
}

impl Ipv4Frame<'_> {
    #[inline(always)]
    pub fn src_addr(&self) -> u32 {
        u32::from_ne_bytes(self.ip.src_addr)
    }

    #[inline(always)]
    pub fn dst_addr(&self) -> u32 {
        u32::from_ne_bytes(self.ip.dst_addr)
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

    /// The sender forbids fragmenting the packet (DF): a router that cannot
    /// forward it whole answers with ICMP fragmentation needed.
    #[inline(always)]
    pub fn dont_fragment(&self) -> bool {
        u16::from_be_bytes(self.ip.frags) & IP_DF != 0
    }

    /// Whether the frame was sent to a group (broadcast or multicast) MAC:
    /// an answer would come from that address, which no host may use.
    #[inline(always)]
    pub fn to_group_mac(&self) -> bool {
        self.eth.dst_addr[0] & 1 != 0
    }

    /// The frame's (source, destination) MACs.
    #[inline(always)]
    pub fn macs(&self) -> ([u8; 6], [u8; 6]) {
        (self.eth.src_addr, self.eth.dst_addr)
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

    #[inline(always)]
    pub fn set_ip_check(&mut self, check: u16) {
        self.ip.check = check.to_ne_bytes();
    }
}
