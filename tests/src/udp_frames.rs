//! UDP datagrams for packet tests, built and checked with etherparse: the
//! UDP counterpart of [`crate::packets`].

use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::{IpNumber, Ipv4Header, PacketBuilder, SlicedPacket, TransportSlice, UdpHeader};

use crate::packets::ETH_LEN;

/// Where the UDP checksum sits in a frame with an option-less IPv4 header.
const UDP_CHECK: usize = ETH_LEN + 20 + 6;

/// An Ethernet/IPv4/UDP frame from `src` to `dst` (TTL 64) carrying
/// `payload`, with its checksum computed.
pub fn udp_frame(src_mac: [u8; 6], dst_mac: [u8; 6], src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.ip().octets(), dst.ip().octets(), 64)
        .udp(src.port(), dst.port());
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, payload).expect("build the UDP frame");
    frame
}

/// [`udp_frame`] sent without a checksum (field 0, as IPv4 allows).
pub fn udp_frame_without_checksum(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Vec<u8> {
    let mut frame = udp_frame(src_mac, dst_mac, src, dst, payload);
    frame[UDP_CHECK..UDP_CHECK + 2].copy_from_slice(&[0, 0]);
    frame
}

/// The UDP checksum field of a frame built by [`udp_frame`] (host order).
pub fn udp_checksum_field(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[UDP_CHECK], frame[UDP_CHECK + 1]])
}

/// What a test checks in a UDP frame the program emitted.
#[derive(Debug, PartialEq, Eq)]
pub struct UdpView {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub ttl: u8,
    /// The checksum field: 0 when the sender computed none.
    pub checksum: u16,
    pub payload: Vec<u8>,
}

/// Parses an emitted frame and panics unless its IPv4 header checksum is
/// right and its UDP checksum is either right or 0 (none).
pub fn parse_checked_udp(frame: &[u8]) -> UdpView {
    let sliced = SlicedPacket::from_ethernet(frame).expect("parsable IPv4/UDP frame");
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = sliced.link else {
        panic!("not Ethernet")
    };
    let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else {
        panic!("not IPv4")
    };
    let ip_header: Ipv4Header = ip.header().to_header();
    assert_eq!(ip_header.protocol, IpNumber::UDP);
    assert_eq!(
        ip_header.header_checksum,
        ip_header.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let Some(TransportSlice::Udp(udp)) = sliced.transport else {
        panic!("not UDP")
    };
    let udp_header: UdpHeader = udp.to_header();
    if udp_header.checksum != 0 {
        let expected = udp_header
            .calc_checksum_ipv4(&ip_header, udp.payload())
            .expect("checksum computes");
        assert_eq!(udp_header.checksum, expected, "UDP checksum");
    }
    UdpView {
        src_mac: eth.source(),
        dst_mac: eth.destination(),
        src: SocketAddrV4::new(Ipv4Addr::from(ip_header.source), udp_header.source_port),
        dst: SocketAddrV4::new(Ipv4Addr::from(ip_header.destination), udp_header.destination_port),
        ttl: ip_header.time_to_live,
        checksum: udp_header.checksum,
        payload: udp.payload().to_vec(),
    }
}
