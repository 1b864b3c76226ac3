//! Frames for packet tests, built and checked with etherparse.

use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::{
    EtherType, Ethernet2Header, IpNumber, Ipv4Header, PacketBuilder, SlicedPacket, TcpHeader, TransportSlice,
};

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const SYN_ACK: u8 = SYN | ACK;
pub const FIN_ACK: u8 = 0x11;
pub const RST: u8 = 0x04;
pub const PSH_ACK: u8 = 0x18;
pub const FIN: u8 = 0x01;

/// Sequence and acknowledgment numbers of every crafted frame.
pub const SEQ: u32 = 1000;
pub const ACK_NUMBER: u32 = 5000;

/// An Ethernet/IPv4/TCP frame from `src` to `dst` with the given TCP flags
/// and payload (TTL 64, sequence [`SEQ`], and [`ACK_NUMBER`] when ACK is set).
pub fn tcp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let numbers = Numbers {
        seq: SEQ,
        ack: ACK_NUMBER,
    };
    numbered_tcp_frame(src_mac, dst_mac, src, dst, flags, numbers, payload)
}

/// A segment's sequence and acknowledgment numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Numbers {
    pub seq: u32,
    /// Sent only with the ACK flag.
    pub ack: u32,
}

/// Like [`tcp_frame`], with the given sequence numbers.
pub fn numbered_tcp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    flags: u8,
    numbers: Numbers,
    payload: &[u8],
) -> Vec<u8> {
    let mut builder = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.ip().octets(), dst.ip().octets(), 64)
        .tcp(src.port(), dst.port(), numbers.seq, 64240);
    if flags & SYN != 0 {
        builder = builder.syn();
    }
    if flags & ACK != 0 {
        builder = builder.ack(numbers.ack);
    }
    if flags & 0x01 != 0 {
        builder = builder.fin();
    }
    if flags & RST != 0 {
        builder = builder.rst();
    }
    if flags & 0x08 != 0 {
        builder = builder.psh();
    }
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, payload).expect("frame builds");
    frame
}

/// `frame` with its IPv4 TTL set to `ttl` and the header checksum redone.
pub fn with_ttl(frame: &[u8], ttl: u8) -> Vec<u8> {
    let (mut header, _) = Ipv4Header::from_slice(&frame[14..]).expect("an IPv4 header");
    header.time_to_live = ttl;
    header.header_checksum = header.calc_header_checksum();
    let mut out = frame[..14].to_vec();
    out.extend(header.to_bytes());
    out.extend(&frame[14 + header.header_len()..]);
    out
}

/// `frame` with one word of IP options (three NOPs and an end of list)
/// after its 20-byte IPv4 header, lengths and header checksum redone.
pub fn with_ip_options(frame: &[u8]) -> Vec<u8> {
    let (mut header, _) = Ipv4Header::from_slice(&frame[14..]).expect("an IPv4 header");
    header.options = [1, 1, 1, 0].into();
    header.total_len += 4;
    header.header_checksum = header.calc_header_checksum();
    let mut out = frame[..14].to_vec();
    out.extend(header.to_bytes());
    out.extend(&frame[14 + 20..]);
    out
}

/// What a test checks in a frame the program emitted.
#[derive(Debug, PartialEq, Eq)]
pub struct TcpView {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub ttl: u8,
    pub flags_syn: bool,
    pub flags_rst: bool,
    pub flags_ack: bool,
    pub seq: u32,
    pub ack: u32,
    pub payload: Vec<u8>,
}

/// Parses an emitted frame and panics unless its IPv4 header checksum and
/// TCP checksum are both correct.
pub fn parse_checked(frame: &[u8]) -> TcpView {
    let eth = Ethernet2Header::from_slice(frame).expect("Ethernet header").0;
    assert_eq!(eth.ether_type, EtherType::IPV4);
    let sliced = SlicedPacket::from_ethernet(frame).expect("parsable IPv4/TCP frame");
    let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else {
        panic!("not IPv4")
    };
    let ip_header: Ipv4Header = ip.header().to_header();
    assert_eq!(ip_header.protocol, IpNumber::TCP);
    assert_eq!(
        ip_header.header_checksum,
        ip_header.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
        panic!("not TCP")
    };
    let tcp_header: TcpHeader = tcp.to_header();
    let expected = tcp_header
        .calc_checksum_ipv4(&ip_header, tcp.payload())
        .expect("checksum computes");
    assert_eq!(tcp_header.checksum, expected, "TCP checksum");
    TcpView {
        src_mac: eth.source,
        dst_mac: eth.destination,
        src: SocketAddrV4::new(Ipv4Addr::from(ip_header.source), tcp_header.source_port),
        dst: SocketAddrV4::new(Ipv4Addr::from(ip_header.destination), tcp_header.destination_port),
        ttl: ip_header.time_to_live,
        flags_syn: tcp_header.syn,
        flags_rst: tcp_header.rst,
        flags_ack: tcp_header.ack,
        seq: tcp_header.sequence_number,
        ack: tcp_header.acknowledgment_number,
        payload: tcp.payload().to_vec(),
    }
}
