//! Frames for packet tests, built and checked with etherparse.

use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::{
    EtherType, Ethernet2Header, IpNumber, Ipv4Header, PacketBuilder, SlicedPacket, TcpHeader, TransportSlice,
};

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const SYN_ACK: u8 = SYN | ACK;
pub const FIN: u8 = 0x01;
pub const FIN_ACK: u8 = FIN | ACK;
pub const RST: u8 = 0x04;
pub const PSH_ACK: u8 = 0x18;

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
    let mut builder = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.ip().octets(), dst.ip().octets(), 64)
        .tcp(src.port(), dst.port(), SEQ, 64240);
    if flags & SYN != 0 {
        builder = builder.syn();
    }
    if flags & ACK != 0 {
        builder = builder.ack(ACK_NUMBER);
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

/// An Ethernet/IPv4/TCP frame with every header field the caller's choice,
/// written straight into a buffer with correct checksums: cheap enough to
/// build millions (the fuzz test, the SYN flood), where [`tcp_frame`] is
/// for readable single frames.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    pub ack: u32,
    /// TCP flags byte (FIN, SYN, RST, PSH, ACK, ...).
    pub flags: u8,
    pub window: u16,
    pub ttl: u8,
    pub ip_id: u16,
    pub dont_fragment: bool,
    /// IP options, padded by the caller to a multiple of 4 bytes (at most 40).
    pub ip_options: &'a [u8],
    /// TCP options, padded by the caller to a multiple of 4 bytes (at most 40).
    pub tcp_options: &'a [u8],
    pub payload: &'a [u8],
}

/// Ethernet header length; the IPv4 header starts here.
pub const ETH_LEN: usize = 14;

impl<'a> Segment<'a> {
    /// A bare segment (no options, no payload, TTL 64, DF, window 64240).
    pub fn new(src_mac: [u8; 6], dst_mac: [u8; 6], src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Self {
        Segment {
            src_mac,
            dst_mac,
            src,
            dst,
            seq: SEQ,
            ack: if flags & ACK != 0 { ACK_NUMBER } else { 0 },
            flags,
            window: 64240,
            ttl: 64,
            ip_id: 0,
            dont_fragment: true,
            ip_options: &[],
            tcp_options: &[],
            payload: &[],
        }
    }

    /// Replaces `frame`'s contents with this segment.
    pub fn write(&self, frame: &mut Vec<u8>) {
        assert!(
            self.ip_options.len().is_multiple_of(4) && self.ip_options.len() <= 40,
            "IP options: a multiple of 4 bytes, at most 40"
        );
        assert!(
            self.tcp_options.len().is_multiple_of(4) && self.tcp_options.len() <= 40,
            "TCP options: a multiple of 4 bytes, at most 40"
        );
        let ip_header = 20 + self.ip_options.len();
        let tcp_header = 20 + self.tcp_options.len();
        let ip_len = ip_header + tcp_header + self.payload.len();
        frame.clear();
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.push(0x40 | (ip_header / 4) as u8);
        frame.push(0);
        frame.extend_from_slice(&(ip_len as u16).to_be_bytes());
        frame.extend_from_slice(&self.ip_id.to_be_bytes());
        frame.extend_from_slice(&[if self.dont_fragment { 0x40 } else { 0 }, 0]);
        frame.extend_from_slice(&[self.ttl, 6, 0, 0]);
        frame.extend_from_slice(&self.src.ip().octets());
        frame.extend_from_slice(&self.dst.ip().octets());
        frame.extend_from_slice(self.ip_options);
        frame.extend_from_slice(&self.src.port().to_be_bytes());
        frame.extend_from_slice(&self.dst.port().to_be_bytes());
        frame.extend_from_slice(&self.seq.to_be_bytes());
        frame.extend_from_slice(&self.ack.to_be_bytes());
        frame.extend_from_slice(&[((tcp_header / 4) as u8) << 4, self.flags]);
        frame.extend_from_slice(&self.window.to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(self.tcp_options);
        frame.extend_from_slice(self.payload);
        fix_checksums(frame);
    }
}

/// Recomputes the IPv4 header checksum and the TCP checksum of an IPv4/TCP
/// frame from its own header fields (IHL, total length), as far as they lie
/// inside the frame: a mutated frame keeps valid checksums for what it
/// claims to be. Leaves other frames alone.
pub fn fix_checksums(frame: &mut [u8]) {
    let Some(ip) = frame.get(ETH_LEN..) else { return };
    if frame[12..14] != [0x08, 0x00] || ip.len() < 20 {
        return;
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    if ihl < 20 || ip.len() < ihl {
        return;
    }
    frame[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&[0, 0]);
    let ip_check = internet_checksum(0, &frame[ETH_LEN..ETH_LEN + ihl]);
    frame[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&ip_check.to_be_bytes());
    let ip = &frame[ETH_LEN..];
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if ip[9] != 6 || total < ihl + 20 || total > ip.len() {
        return;
    }
    let tcp = ETH_LEN + ihl;
    frame[tcp + 16..tcp + 18].copy_from_slice(&[0, 0]);
    let pseudo = pseudo_header_sum(&frame[ETH_LEN..], (total - ihl) as u16);
    let check = internet_checksum(pseudo, &frame[tcp..ETH_LEN + total]);
    frame[tcp + 16..tcp + 18].copy_from_slice(&check.to_be_bytes());
}

/// The one's complement sum of an IPv4 pseudo-header for a transport
/// segment of `len` bytes (addresses and protocol from the IPv4 header `ip`).
pub fn pseudo_header_sum(ip: &[u8], len: u16) -> u32 {
    let word = |i: usize| u16::from_be_bytes([ip[i], ip[i + 1]]) as u32;
    word(12) + word(14) + word(16) + word(18) + ip[9] as u32 + len as u32
}

/// The Internet checksum (RFC 1071) of `bytes` on top of a partial sum.
pub fn internet_checksum(initial: u32, bytes: &[u8]) -> u16 {
    let mut sum = initial as u64;
    let mut words = bytes.chunks_exact(2);
    for w in &mut words {
        sum += u16::from_be_bytes([w[0], w[1]]) as u64;
    }
    if let [last] = words.remainder() {
        sum += (*last as u64) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(a: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, a), port)
    }

    #[test]
    fn a_written_segment_parses_with_the_fields_it_was_given_and_valid_checksums() {
        let mut segment = Segment::new([2; 6], [4; 6], addr(1, 40000), addr(2, 80), PSH_ACK);
        segment.seq = 0xdead_beef;
        segment.ack = 7;
        segment.ttl = 9;
        segment.ip_options = &[1, 1, 1, 0];
        segment.tcp_options = &[2, 4, 5, 0xb4];
        segment.payload = b"odd";
        let mut frame = Vec::new();
        segment.write(&mut frame);
        let view = parse_checked(&frame);
        assert_eq!((view.src, view.dst, view.ttl), (addr(1, 40000), addr(2, 80), 9));
        assert_eq!(
            (view.seq, view.ack, view.flags_ack, view.flags_syn),
            (0xdead_beef, 7, true, false)
        );
        assert_eq!(view.payload, b"odd");
        assert_eq!((view.src_mac, view.dst_mac), ([2; 6], [4; 6]));
        assert_eq!(frame[ETH_LEN] & 0x0f, 6, "IHL counts the IP options");
    }

    #[test]
    fn fixed_checksums_match_etherparse_after_a_field_changes() {
        let mut frame = Vec::new();
        Segment::new([2; 6], [4; 6], addr(1, 1), addr(2, 2), SYN).write(&mut frame);
        frame[ETH_LEN + 20 + 13] = FIN_ACK;
        frame[ETH_LEN + 12] = 192;
        fix_checksums(&mut frame);
        let view = parse_checked(&frame);
        assert_eq!(*view.src.ip(), Ipv4Addr::new(192, 0, 0, 1));
        assert!(view.flags_ack && !view.flags_syn);
    }

    #[test]
    fn checksums_of_odd_lengths_pad_with_a_zero_byte() {
        assert_eq!(internet_checksum(0, &[0x01]), !0x0100);
        assert_eq!(internet_checksum(0, &[0xff, 0xff, 0x00, 0x01]), !0x0001);
        assert_eq!(internet_checksum(0, &[]), 0xffff);
    }
}
