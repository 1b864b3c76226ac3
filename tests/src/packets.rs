//! Frames for packet tests (IPv4 and IPv6 TCP segments, UDP datagrams, ICMP
//! errors, a neighbour solicitation), built and checked with etherparse.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use etherparse::{
    EtherType, Ethernet2Header, Icmpv4Header, Icmpv4Type, Icmpv6Type, IpNumber, Ipv4Header, Ipv6Header, PacketBuilder,
    PacketBuilderStep, SlicedPacket, TcpHeader, TcpOptionElement, TransportSlice, UdpHeader,
};

/// The options of a SYN as Linux sends it: MSS `mss`, SACK permitted,
/// timestamps, window scaling.
pub fn linux_syn_options(mss: u16) -> [TcpOptionElement; 5] {
    [
        TcpOptionElement::MaximumSegmentSize(mss),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Timestamp(12345, 0),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ]
}

/// The TCP window and options of an emitted frame, of either family.
pub fn window_and_options(frame: &[u8]) -> (u16, Vec<TcpOptionElement>) {
    let sliced = SlicedPacket::from_ethernet(frame).expect("parsable frame");
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
        panic!("not TCP")
    };
    let options = tcp.options_iterator().map(|o| o.expect("well-formed option")).collect();
    (tcp.window_size(), options)
}

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
    let builder = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.ip().octets(), dst.ip().octets(), 64)
        .tcp(src.port(), dst.port(), numbers.seq, 64240);
    write_segment(builder, flags, numbers, payload)
}

/// The frame `builder` starts, with the TCP `flags` (and `numbers.ack` with
/// ACK) and `payload`.
fn write_segment(mut builder: PacketBuilderStep<TcpHeader>, flags: u8, numbers: Numbers, payload: &[u8]) -> Vec<u8> {
    if flags & SYN != 0 {
        builder = builder.syn();
    }
    if flags & ACK != 0 {
        builder = builder.ack(numbers.ack);
    }
    if flags & FIN != 0 {
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

/// An Ethernet/IPv4 ICMP frame from `src` to `dst` (TTL 64): an error of
/// `icmp_type` whose payload is `quote`, the start of the datagram it is
/// about.
pub fn icmp_error_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp_type: Icmpv4Type,
    quote: &[u8],
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4(icmp_type);
    let mut frame = Vec::with_capacity(builder.size(quote.len()));
    builder.write(&mut frame, quote).expect("frame builds");
    frame
}

/// What a quote of `frame` holds: its IPv4 header and `l4_len` bytes of
/// what follows.
pub fn quote_of(frame: &[u8], l4_len: usize) -> Vec<u8> {
    frame[14..14 + 20 + l4_len].to_vec()
}

/// Rewrites a frame's IPv4 header in place with `change` and makes its
/// checksum right again.
pub fn edit_ip_header(frame: &mut [u8], change: impl FnOnce(&mut Ipv4Header)) {
    let (mut header, _) = Ipv4Header::from_slice(&frame[14..]).expect("IPv4 header");
    change(&mut header);
    header.header_checksum = header.calc_header_checksum();
    let bytes = header.to_bytes();
    frame[14..14 + bytes.len()].copy_from_slice(&bytes);
}

/// What a test checks in an ICMP error the program emitted.
#[derive(Debug)]
pub struct IcmpView {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub icmp_type: u8,
    pub code: u8,
    /// The ICMP header's last four bytes (unused, MTU, pointer).
    pub rest_of_header: [u8; 4],
    /// The quoted datagram's addresses and ports.
    pub quoted_src: SocketAddrV4,
    pub quoted_dst: SocketAddrV4,
    /// The quoted bytes: IPv4 header and as much of its payload as is there.
    pub quote: Vec<u8>,
    /// The quote holds the whole TCP segment or UDP datagram, so its
    /// checksum was checked (but a UDP checksum of 0: none).
    pub quoted_l4_checked: bool,
}

/// Parses an emitted ICMP error and panics unless every checksum in it is
/// right: the IPv4 header's, the ICMP checksum over the whole message, the
/// quoted IPv4 header's and, if the quote holds the whole segment or
/// datagram, the quoted TCP or UDP checksum.
pub fn parse_checked_icmp(frame: &[u8]) -> IcmpView {
    let eth = Ethernet2Header::from_slice(frame).expect("Ethernet header").0;
    assert_eq!(eth.ether_type, EtherType::IPV4);
    let (ip, icmp) = Ipv4Header::from_slice(&frame[14..]).expect("IPv4 header");
    assert_eq!(ip.protocol, IpNumber::ICMP);
    assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "IPv4 header checksum");
    assert_eq!(
        icmp.len(),
        ip.payload_len().expect("IP length") as usize,
        "the frame ends with the IP datagram"
    );
    let (header, quote) = Icmpv4Header::from_slice(icmp).expect("ICMP header");
    assert_eq!(header.checksum, header.icmp_type.calc_checksum(quote), "ICMP checksum");
    let bytes = header.to_bytes();

    let (quoted_ip, quoted_l4) = Ipv4Header::from_slice(quote).expect("quoted IPv4 header");
    assert_eq!(
        quoted_ip.header_checksum,
        quoted_ip.calc_header_checksum(),
        "quoted IPv4 header checksum"
    );
    let udp = quoted_ip.protocol == IpNumber::UDP;
    assert!(
        udp || quoted_ip.protocol == IpNumber::TCP,
        "quotes a TCP segment or a UDP datagram"
    );
    let port = |at: usize| u16::from_be_bytes([quoted_l4[at], quoted_l4[at + 1]]);
    let mut whole = quoted_l4.len() == quoted_ip.payload_len().expect("quoted IP length") as usize;
    if whole && udp {
        let (udp, payload) = UdpHeader::from_slice(quoted_l4).expect("quoted UDP header");
        whole = udp.checksum != 0;
        if whole {
            let expected = udp.calc_checksum_ipv4(&quoted_ip, payload).expect("checksum computes");
            assert_eq!(udp.checksum, expected, "quoted UDP checksum");
        }
    } else if whole {
        let (tcp, payload) = TcpHeader::from_slice(quoted_l4).expect("quoted TCP header");
        let expected = tcp.calc_checksum_ipv4(&quoted_ip, payload).expect("checksum computes");
        assert_eq!(tcp.checksum, expected, "quoted TCP checksum");
    }
    IcmpView {
        src_mac: eth.source,
        dst_mac: eth.destination,
        src: Ipv4Addr::from(ip.source),
        dst: Ipv4Addr::from(ip.destination),
        ttl: ip.time_to_live,
        icmp_type: bytes[0],
        code: bytes[1],
        rest_of_header: [bytes[4], bytes[5], bytes[6], bytes[7]],
        quoted_src: SocketAddrV4::new(Ipv4Addr::from(quoted_ip.source), port(0)),
        quoted_dst: SocketAddrV4::new(Ipv4Addr::from(quoted_ip.destination), port(2)),
        quote: quote.to_vec(),
        quoted_l4_checked: whole,
    }
}

/// An Ethernet/IPv4/TCP or Ethernet/IPv6/TCP frame (the family of `src`
/// and `dst`) with every header field the caller's choice, written straight
/// into a buffer with correct checksums: cheap enough to build millions
/// (the fuzz test, the SYN flood), where [`tcp_frame`] is for readable
/// single frames.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    /// TCP flags byte (FIN, SYN, RST, PSH, ACK, ...).
    pub flags: u8,
    pub window: u16,
    /// TTL, or IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 identification, or IPv6 flow label.
    pub ip_id: u16,
    /// IPv4 only.
    pub dont_fragment: bool,
    /// IPv4 options, padded by the caller to a multiple of 4 bytes (at most
    /// 40); IPv6 has none.
    pub ip_options: &'a [u8],
    /// TCP options, padded by the caller to a multiple of 4 bytes (at most 40).
    pub tcp_options: &'a [u8],
    pub payload: &'a [u8],
}

/// Ethernet header length; the IPv4 header starts here.
pub const ETH_LEN: usize = 14;

impl<'a> Segment<'a> {
    /// A bare segment (no options, no payload, TTL 64, DF, window 64240);
    /// IPv6 if `src` and `dst` are.
    pub fn new(
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: impl Into<SocketAddr>,
        dst: impl Into<SocketAddr>,
        flags: u8,
    ) -> Self {
        Segment {
            src_mac,
            dst_mac,
            src: src.into(),
            dst: dst.into(),
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
        let tcp_header = 20 + self.tcp_options.len();
        frame.clear();
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let ip_header = 20 + self.ip_options.len();
                let ip_len = ip_header + tcp_header + self.payload.len();
                frame.extend_from_slice(&[0x08, 0x00]);
                frame.push(0x40 | (ip_header / 4) as u8);
                frame.push(0);
                frame.extend_from_slice(&(ip_len as u16).to_be_bytes());
                frame.extend_from_slice(&self.ip_id.to_be_bytes());
                frame.extend_from_slice(&[if self.dont_fragment { 0x40 } else { 0 }, 0]);
                frame.extend_from_slice(&[self.ttl, 6, 0, 0]);
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
                frame.extend_from_slice(self.ip_options);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                assert!(self.ip_options.is_empty(), "IPv6 has no IP options");
                let payload_len = tcp_header + self.payload.len();
                frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0]);
                frame.extend_from_slice(&self.ip_id.to_be_bytes());
                frame.extend_from_slice(&(payload_len as u16).to_be_bytes());
                frame.extend_from_slice(&[6, self.ttl]);
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
            }
            (src, dst) => panic!("a segment from {src} to {dst}: one family"),
        }
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

/// Recomputes the IPv4 header checksum and the TCP (or UDP) checksum of an
/// IPv4 or IPv6 frame from its own header fields (IHL and total length, or
/// payload length and next headers), as far as they lie inside the frame: a
/// mutated frame keeps valid checksums for what it claims to be. Leaves
/// other frames alone.
pub fn fix_checksums(frame: &mut [u8]) {
    match frame.get(12..14) {
        Some([0x08, 0x00]) => fix_checksums4(frame),
        Some([0x86, 0xdd]) => fix_checksums6(frame),
        _ => {}
    }
}

fn fix_checksums4(frame: &mut [u8]) {
    let Some(ip) = frame.get(ETH_LEN..) else { return };
    if ip.len() < 20 {
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
    if total < ihl || total > ip.len() {
        return;
    }
    let pseudo = pseudo_header_sum(ip, (total - ihl) as u16);
    fix_l4_checksum(frame, ip[9], ETH_LEN + ihl..ETH_LEN + total, pseudo);
}

fn fix_checksums6(frame: &mut [u8]) {
    let Some((next, l4)) = ipv6_l4(frame) else { return };
    let end = ETH_LEN + IP6_LEN + u16::from_be_bytes([frame[IP6 + 4], frame[IP6 + 5]]) as usize;
    if end < l4 || end > frame.len() {
        return;
    }
    let pseudo = pseudo_header_sum6(&frame[IP6..], next, end - l4);
    fix_l4_checksum(frame, next, l4..end, pseudo);
}

/// The TCP or UDP checksum of `frame[l4]` (protocol `proto`) on top of the
/// pseudo-header's sum; a UDP checksum of 0 (none computed) stays 0, a sum
/// of 0 is sent as 0xffff (RFC 768). Other protocols are left alone.
fn fix_l4_checksum(frame: &mut [u8], proto: u8, l4: std::ops::Range<usize>, pseudo: u32) {
    let at = match proto {
        6 if l4.len() >= 20 => l4.start + 16,
        17 if l4.len() >= 8 && frame[l4.start + 6..l4.start + 8] != [0, 0] => l4.start + 6,
        _ => return,
    };
    frame[at..at + 2].copy_from_slice(&[0, 0]);
    let check = match internet_checksum(pseudo, &frame[l4]) {
        0 if proto == 17 => 0xffff,
        check => check,
    };
    frame[at..at + 2].copy_from_slice(&check.to_be_bytes());
}

/// Where an IPv6 frame's upper-layer header starts and which protocol it
/// is: past the IPv6 header and up to four extension headers (hop-by-hop,
/// routing, fragment, destination options), as far as they lie inside the
/// frame.
pub fn ipv6_l4(frame: &[u8]) -> Option<(u8, usize)> {
    let mut next = *frame.get(IP6 + 6)?;
    let mut at = IP6 + IP6_LEN;
    if frame.len() < at {
        return None;
    }
    for _ in 0..4 {
        let len = match next {
            0 | 43 | 60 => (*frame.get(at + 1)? as usize + 1) * 8,
            44 => 8,
            _ => break,
        };
        next = *frame.get(at)?;
        at += len;
    }
    (frame.len() >= at).then_some((next, at))
}

/// The one's complement sum of an IPv6 pseudo-header (addresses from the
/// IPv6 header `ip`) for an upper-layer packet of protocol `next` and `len`
/// bytes.
pub fn pseudo_header_sum6(ip: &[u8], next: u8, len: usize) -> u32 {
    let addrs: u32 = ip[8..40]
        .chunks_exact(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum();
    addrs + (len >> 16) as u32 + (len & 0xffff) as u32 + next as u32
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

/// An Ethernet/IPv6/TCP frame from `src` to `dst` with the given TCP flags
/// and payload (hop limit 64, sequence [`SEQ`], and [`ACK_NUMBER`] when ACK
/// is set).
pub fn tcp6_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddrV6,
    dst: SocketAddrV6,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let numbers = Numbers {
        seq: SEQ,
        ack: ACK_NUMBER,
    };
    numbered_tcp6_frame(src_mac, dst_mac, src, dst, flags, numbers, payload)
}

/// Like [`tcp6_frame`], with the given sequence numbers.
pub fn numbered_tcp6_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddrV6,
    dst: SocketAddrV6,
    flags: u8,
    numbers: Numbers,
    payload: &[u8],
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv6(src.ip().octets(), dst.ip().octets(), 64)
        .tcp(src.port(), dst.port(), numbers.seq, 64240);
    write_segment(builder, flags, numbers, payload)
}

/// An Ethernet/IPv6/UDP frame from `src` to `dst` (hop limit 64) carrying
/// `payload`, its checksum computed.
pub fn udp6_frame(src_mac: [u8; 6], dst_mac: [u8; 6], src: SocketAddrV6, dst: SocketAddrV6, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv6(src.ip().octets(), dst.ip().octets(), 64)
        .udp(src.port(), dst.port());
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, payload).expect("frame builds");
    frame
}

/// Where the IPv6 header's fields are in an Ethernet frame.
const IP6: usize = ETH_LEN;
const IP6_HOP_LIMIT: usize = IP6 + 7;
const IP6_NEXT_HEADER: usize = IP6 + 6;
const IP6_LEN: usize = 40;

/// `frame` (IPv6) with its hop limit set to `hop_limit` (no checksum covers it).
pub fn with_hop_limit(frame: &[u8], hop_limit: u8) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[IP6_HOP_LIMIT] = hop_limit;
    out
}

/// `frame` (IPv6) with an empty destination options extension header (8
/// bytes: next header, length 0, a PadN option) between its IPv6 header and
/// its TCP or UDP header, the payload length redone. The layer-4 checksum
/// stays right: extension headers are not in the pseudo-header.
pub fn with_extension_header(frame: &[u8]) -> Vec<u8> {
    let l4 = IP6 + IP6_LEN;
    let next = frame[IP6_NEXT_HEADER];
    let mut out = frame[..l4].to_vec();
    out[IP6_NEXT_HEADER] = 60;
    let len = u16::from_be_bytes([out[IP6 + 4], out[IP6 + 5]]) + 8;
    out[IP6 + 4..IP6 + 6].copy_from_slice(&len.to_be_bytes());
    out.extend([next, 0, 1, 4, 0, 0, 0, 0]);
    out.extend(&frame[l4..]);
    out
}

/// An ICMPv6 neighbour solicitation from `src` for `target`, to its
/// solicited-node multicast address and MAC (hop limit 255), as neighbour
/// discovery sends it.
pub fn neighbour_solicitation(src_mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let t = target.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | t[13] as u16,
        u16::from_be_bytes([t[14], t[15]]),
    );
    let dst_mac = [0x33, 0x33, 0xff, t[13], t[14], t[15]];
    // After the reserved word (the header's last four bytes): the target
    // and a source link-layer address option.
    let mut body = t.to_vec();
    body.extend([1, 1]);
    body.extend(src_mac);
    let builder = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv6(src.octets(), group.octets(), 255)
        .icmpv6(Icmpv6Type::Unknown {
            type_u8: 135,
            code_u8: 0,
            bytes5to8: [0; 4],
        });
    let mut frame = Vec::with_capacity(builder.size(body.len()));
    builder.write(&mut frame, &body).expect("frame builds");
    frame
}

/// What a test checks in an IPv6 TCP frame the program emitted.
#[derive(Debug, PartialEq, Eq)]
pub struct Tcp6View {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: SocketAddrV6,
    pub dst: SocketAddrV6,
    pub hop_limit: u8,
    pub flags_syn: bool,
    pub flags_rst: bool,
    pub flags_ack: bool,
    pub flags_fin: bool,
    pub seq: u32,
    pub ack: u32,
    pub payload: Vec<u8>,
}

/// The IPv6 header of an Ethernet frame.
fn ipv6_header(frame: &[u8]) -> Ipv6Header {
    let eth = Ethernet2Header::from_slice(frame).expect("Ethernet header").0;
    assert_eq!(eth.ether_type, EtherType::IPV6);
    Ipv6Header::from_slice(&frame[ETH_LEN..]).expect("an IPv6 header").0
}

/// Parses an emitted IPv6 frame and panics unless its TCP checksum is
/// correct and its payload length matches the frame.
pub fn parse_checked6(frame: &[u8]) -> Tcp6View {
    let eth = Ethernet2Header::from_slice(frame).expect("Ethernet header").0;
    let ip = ipv6_header(frame);
    assert_eq!(ip.next_header, IpNumber::TCP);
    assert_eq!(
        ETH_LEN + IP6_LEN + ip.payload_length as usize,
        frame.len(),
        "payload length"
    );
    let (tcp, payload) = TcpHeader::from_slice(&frame[ETH_LEN + IP6_LEN..]).expect("a TCP header");
    let expected = tcp.calc_checksum_ipv6(&ip, payload).expect("checksum computes");
    assert_eq!(tcp.checksum, expected, "TCP checksum");
    Tcp6View {
        src_mac: eth.source,
        dst_mac: eth.destination,
        src: SocketAddrV6::new(Ipv6Addr::from(ip.source), tcp.source_port, 0, 0),
        dst: SocketAddrV6::new(Ipv6Addr::from(ip.destination), tcp.destination_port, 0, 0),
        hop_limit: ip.hop_limit,
        flags_syn: tcp.syn,
        flags_rst: tcp.rst,
        flags_ack: tcp.ack,
        flags_fin: tcp.fin,
        seq: tcp.sequence_number,
        ack: tcp.acknowledgment_number,
        payload: payload.to_vec(),
    }
}

/// What a test checks in an IPv6 UDP frame the program emitted.
#[derive(Debug, PartialEq, Eq)]
pub struct Udp6View {
    pub dst_mac: [u8; 6],
    pub src: SocketAddrV6,
    pub dst: SocketAddrV6,
    pub hop_limit: u8,
    pub checksum: u16,
    pub payload: Vec<u8>,
}

/// Parses an emitted IPv6 UDP frame and panics unless its checksum is
/// present (never 0 on IPv6) and correct.
pub fn parse_checked_udp6(frame: &[u8]) -> Udp6View {
    let eth = Ethernet2Header::from_slice(frame).expect("Ethernet header").0;
    let ip = ipv6_header(frame);
    assert_eq!(ip.next_header, IpNumber::UDP);
    let (udp, payload) = UdpHeader::from_slice(&frame[ETH_LEN + IP6_LEN..]).expect("a UDP header");
    assert_ne!(udp.checksum, 0, "an IPv6 UDP checksum is mandatory");
    let expected = udp.calc_checksum_ipv6(&ip, payload).expect("checksum computes");
    assert_eq!(udp.checksum, expected, "UDP checksum");
    Udp6View {
        dst_mac: eth.destination,
        src: SocketAddrV6::new(Ipv6Addr::from(ip.source), udp.source_port, 0, 0),
        dst: SocketAddrV6::new(Ipv6Addr::from(ip.destination), udp.destination_port, 0, 0),
        hop_limit: ip.hop_limit,
        checksum: udp.checksum,
        payload: payload.to_vec(),
    }
}

/// An Ethernet/IPv6 ICMPv6 error frame from `src` to `dst` with hop limit
/// `hop_limit`: `icmp_type` quoting `quote` (the start of the IPv6 packet it
/// is about), its checksum computed.
pub fn icmp6_error_frame(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    icmp_type: Icmpv6Type,
    quote: &[u8],
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(src.octets(), dst.octets(), hop_limit)
        .icmpv6(icmp_type);
    let mut frame = Vec::with_capacity(builder.size(quote.len()));
    builder.write(&mut frame, quote).expect("frame builds");
    frame
}
