//! ICMPv4 as the data plane handles it: which messages are errors that
//! follow a flow, and the checksum arithmetic of translating an error's quote
//! to the other side of the NAT and of building a fragmentation-needed
//! answer. Pure functions over wire-order values, so the host tests check
//! them against full recomputation.

use crate::checksum::{finish, replace16, replace32, sum_words};

pub const IPPROTO_ICMP: u8 = 1;
pub const DEST_UNREACHABLE: u8 = 3;
pub const TIME_EXCEEDED: u8 = 11;
pub const PARAMETER_PROBLEM: u8 = 12;
/// Destination unreachable code: fragmentation needed and DF set (RFC 1191).
pub const FRAG_NEEDED: u8 = 4;

/// The ICMP header: type, code, checksum and four type-specific bytes.
pub const ICMP_LEN: usize = 8;
/// An IPv4 header without options.
pub const IPV4_LEN: usize = 20;
/// The payload bytes an error quotes at least (RFC 792): TCP's ports and
/// sequence number.
pub const QUOTE_L4_LEN: usize = 8;
/// The quote of a generated error: the IP header and [`QUOTE_L4_LEN`] bytes.
pub const QUOTE_LEN: usize = IPV4_LEN + QUOTE_L4_LEN;
/// IPv4 header, ICMP header and quote of a generated fragmentation-needed.
pub const FRAG_NEEDED_LEN: usize = IPV4_LEN + ICMP_LEN + QUOTE_LEN;
/// Offset of the TCP checksum in the TCP header: a quote must hold this and
/// the next byte for the checksum to be rewritten with it.
pub const TCP_CHECK_OFFSET: usize = 16;
/// Offset of the UDP checksum in the UDP header: inside every quote.
pub const UDP_CHECK_OFFSET: usize = 6;

/// TTL of the errors the data plane generates (Linux's default).
const TTL: u8 = 64;
/// Type of service of generated errors: precedence "internetwork control",
/// as Linux sends its ICMP errors.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;

/// Whether an ICMP message of `icmp_type` is an error about a datagram that
/// goes where that datagram's flow goes. Redirects are not: they re-route
/// the receiver, and only a router on its own link may send one. Source
/// quench is deprecated (RFC 6633) and ignored by receivers.
pub const fn follows_flow(icmp_type: u8) -> bool {
    matches!(icmp_type, DEST_UNREACHABLE | TIME_EXCEEDED | PARAMETER_PROBLEM)
}

/// A TCP segment's addresses and ports, wire order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
}

/// The checksums an ICMP error holds that its quote's addressing enters,
/// wire order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuoteChecksums {
    /// Over the whole ICMP message, quote included.
    pub icmp: u16,
    /// The quoted IP header's.
    pub ip: u16,
    /// The quoted TCP header's, if the quote reaches it; or the quoted UDP
    /// header's, unless it is 0 (none), which stays 0.
    pub tcp: Option<u16>,
}

impl QuoteChecksums {
    /// The checksums once the quoted segment's addressing changes from
    /// `from` to `to`: the quoted IP header's for its addresses, the quoted
    /// TCP header's for addresses (pseudo-header) and ports, and the ICMP
    /// checksum for every quoted word that changed, the two checksums
    /// included. All those words sit at even offsets of the ICMP message
    /// (the quoted IP header has no options), so word-wise updates hold.
    pub fn translate(self, from: &Tuple, to: &Tuple) -> QuoteChecksums {
        let addrs = |check: u16| replace32(replace32(check, from.src_addr, to.src_addr), from.dst_addr, to.dst_addr);
        let ports = |check: u16| replace16(replace16(check, from.src_port, to.src_port), from.dst_port, to.dst_port);
        let ip = addrs(self.ip);
        let mut icmp = ports(addrs(self.icmp));
        icmp = replace16(icmp, self.ip, ip);
        let tcp = match self.tcp {
            Some(old) => {
                let new = ports(addrs(old));
                icmp = replace16(icmp, old, new);
                Some(new)
            }
            None => None,
        };
        QuoteChecksums { icmp, ip, tcp }
    }

    /// The checksums once the quoted sequence number (wire order, as
    /// read) changes from `old` to `new`: the quoted TCP header's and the
    /// ICMP checksum (which covers the former too).
    pub fn shift_seq(self, old: u32, new: u32) -> QuoteChecksums {
        let mut icmp = replace32(self.icmp, old, new);
        let tcp = match self.tcp {
            Some(check) => {
                let shifted = replace32(check, old, new);
                icmp = replace16(icmp, check, shifted);
                Some(shifted)
            }
            None => None,
        };
        QuoteChecksums { icmp, tcp, ..self }
    }
}

/// The quoted sequence number of `l4` (the first bytes of a TCP segment)
/// moved forward by `by`: a SYN-proxied flow's segment as its backend
/// numbered it.
pub fn shift_quoted_seq(l4: &mut [u8; QUOTE_L4_LEN], by: u32) {
    let seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
    l4[4..8].copy_from_slice(&seq.wrapping_add(by).to_be_bytes());
}

/// What a generated error quotes: `ip` (an IPv4 header without options) and
/// the first bytes of its TCP segment, `l4`, with the addressing set to
/// `tuple` and the IP header checksum made right for it.
pub fn quote(ip: &[u8; IPV4_LEN], l4: &[u8; QUOTE_L4_LEN], tuple: &Tuple) -> [u8; QUOTE_LEN] {
    let mut quote = [0u8; QUOTE_LEN];
    quote[..IPV4_LEN].copy_from_slice(ip);
    quote[IPV4_LEN..].copy_from_slice(l4);
    quote[12..16].copy_from_slice(&tuple.src_addr.to_ne_bytes());
    quote[16..20].copy_from_slice(&tuple.dst_addr.to_ne_bytes());
    quote[20..22].copy_from_slice(&tuple.src_port.to_ne_bytes());
    quote[22..24].copy_from_slice(&tuple.dst_port.to_ne_bytes());
    quote[10..12].copy_from_slice(&[0, 0]);
    let mut header = [0u8; IPV4_LEN];
    header.copy_from_slice(&quote[..IPV4_LEN]);
    quote[10..12].copy_from_slice(&finish(sum_words(&header)).to_ne_bytes());
    quote
}

/// IPv4 and ICMP headers and quote of a fragmentation-needed error about
/// the datagram that `quote` holds, saying the next hop takes `mtu` bytes
/// (host order). It goes back to the datagram's source, from the address the
/// source sent to: for a client the VIP, for a backend the SNAT address, as
/// the source sees no other hop.
pub fn frag_needed(quote: &[u8; QUOTE_LEN], mtu: u16) -> [u8; FRAG_NEEDED_LEN] {
    let mut error = [0u8; FRAG_NEEDED_LEN];
    let ip = &mut error[..IPV4_LEN];
    ip[0] = 0x45;
    ip[1] = TOS_INTERNETWORK_CONTROL;
    ip[2..4].copy_from_slice(&(FRAG_NEEDED_LEN as u16).to_be_bytes());
    ip[8] = TTL;
    ip[9] = IPPROTO_ICMP;
    ip[12..16].copy_from_slice(&quote[16..20]);
    ip[16..20].copy_from_slice(&quote[12..16]);
    let icmp = &mut error[IPV4_LEN..];
    icmp[0] = DEST_UNREACHABLE;
    icmp[1] = FRAG_NEEDED;
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[ICMP_LEN..].copy_from_slice(quote);

    let mut header = [0u8; IPV4_LEN];
    header.copy_from_slice(&error[..IPV4_LEN]);
    error[10..12].copy_from_slice(&finish(sum_words(&header)).to_ne_bytes());
    let mut message = [0u8; ICMP_LEN + QUOTE_LEN];
    message.copy_from_slice(&error[IPV4_LEN..]);
    error[IPV4_LEN + 2..IPV4_LEN + 4].copy_from_slice(&finish(sum_words(&message)).to_ne_bytes());
    error
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{bytes, checksum};

    fn word(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }

    fn tuple_at(b: &[u8], ip: usize) -> Tuple {
        let addr = |at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
        Tuple {
            src_addr: addr(ip + 12),
            dst_addr: addr(ip + 16),
            src_port: word(b, ip + 20),
            dst_port: word(b, ip + 22),
        }
    }

    fn set_tuple(b: &mut [u8], ip: usize, t: &Tuple) {
        b[ip + 12..ip + 16].copy_from_slice(&t.src_addr.to_ne_bytes());
        b[ip + 16..ip + 20].copy_from_slice(&t.dst_addr.to_ne_bytes());
        b[ip + 20..ip + 22].copy_from_slice(&t.src_port.to_ne_bytes());
        b[ip + 22..ip + 24].copy_from_slice(&t.dst_port.to_ne_bytes());
    }

    /// Makes every checksum of an ICMP message (ICMP header, quoted IP
    /// header, TCP header) right, the TCP one only if the whole segment
    /// (`segment_len` bytes) is quoted.
    fn fix_checksums(m: &mut [u8], segment_len: usize) {
        let ip = ICMP_LEN;
        m[ip] = 0x45;
        m[ip + 9] = 6;
        m[ip + 10..ip + 12].fill(0);
        let check = checksum(&m[ip..ip + IPV4_LEN]);
        m[ip + 10..ip + 12].copy_from_slice(&check.to_ne_bytes());
        let tcp = ip + IPV4_LEN;
        if m.len() == tcp + segment_len {
            m[tcp + 16..tcp + 18].fill(0);
            let mut pseudo = m[ip + 12..ip + 20].to_vec();
            pseudo.extend([0, 6]);
            pseudo.extend((segment_len as u16).to_be_bytes());
            pseudo.extend(&m[tcp..]);
            let check = checksum(&pseudo);
            m[tcp + 16..tcp + 18].copy_from_slice(&check.to_ne_bytes());
        }
        m[2..4].fill(0);
        let check = checksum(m);
        m[2..4].copy_from_slice(&check.to_ne_bytes());
    }

    /// Translates the quote of ICMP message `m` to `to` as the data plane
    /// does, writing the checksums `translate` returns.
    fn translate_in_place(m: &mut [u8], to: &Tuple) {
        let tcp_check_at = ICMP_LEN + IPV4_LEN + TCP_CHECK_OFFSET;
        let before = QuoteChecksums {
            icmp: word(m, 2),
            ip: word(m, ICMP_LEN + 10),
            tcp: (m.len() >= tcp_check_at + 2).then(|| word(m, tcp_check_at)),
        };
        let after = before.translate(&tuple_at(m, ICMP_LEN), to);
        set_tuple(m, ICMP_LEN, to);
        m[2..4].copy_from_slice(&after.icmp.to_ne_bytes());
        m[ICMP_LEN + 10..ICMP_LEN + 12].copy_from_slice(&after.ip.to_ne_bytes());
        if let Some(tcp) = after.tcp {
            m[tcp_check_at..tcp_check_at + 2].copy_from_slice(&tcp.to_ne_bytes());
        }
    }

    #[test]
    fn translating_a_quote_keeps_the_icmp_and_quoted_ip_checksums_right() {
        // RFC 792's 8 bytes, one byte short of the TCP checksum, just
        // reaching it, a whole segment, and part of a longer one.
        for (segment_len, quoted) in [(1000, 8), (1000, 17), (1000, 18), (40, 40), (41, 41), (1000, 60)] {
            for seed in 1..500 {
                let mut m = bytes(seed, ICMP_LEN + IPV4_LEN + quoted);
                fix_checksums(&mut m, segment_len);
                translate_in_place(&mut m, &tuple_at(&bytes(seed.wrapping_mul(7919), 24), 0));
                let mut reference = m.clone();
                fix_checksums(&mut reference, segment_len);
                assert_eq!(m, reference, "segment {segment_len}, quoted {quoted}, seed {seed}");
            }
        }
    }

    #[test]
    fn translating_a_quote_updates_the_tcp_checksum_as_a_full_recompute_would() {
        for segment_len in [20, 21, 40, 333] {
            for seed in 1..500 {
                let mut m = bytes(seed, ICMP_LEN + IPV4_LEN + segment_len);
                fix_checksums(&mut m, segment_len);
                translate_in_place(&mut m, &tuple_at(&bytes(seed.wrapping_mul(104_729), 24), 0));
                let mut reference = m.clone();
                fix_checksums(&mut reference, segment_len);
                let at = ICMP_LEN + IPV4_LEN + TCP_CHECK_OFFSET;
                assert_eq!(
                    m[at..at + 2],
                    reference[at..at + 2],
                    "segment {segment_len}, seed {seed}"
                );
            }
        }
    }

    #[test]
    fn shifting_the_quoted_sequence_number_keeps_every_checksum_as_a_recompute_would() {
        // 8 bytes (no TCP checksum quoted), a whole segment, part of one.
        for (segment_len, quoted) in [(1000, 8), (40, 40), (333, 333), (1000, 60)] {
            for seed in 1..300 {
                let mut m = bytes(seed, ICMP_LEN + IPV4_LEN + quoted);
                fix_checksums(&mut m, segment_len);
                let tcp_check_at = ICMP_LEN + IPV4_LEN + TCP_CHECK_OFFSET;
                let before = QuoteChecksums {
                    icmp: word(&m, 2),
                    ip: word(&m, ICMP_LEN + 10),
                    tcp: (m.len() >= tcp_check_at + 2).then(|| word(&m, tcp_check_at)),
                };
                let seq_at = ICMP_LEN + IPV4_LEN + 4;
                let old = u32::from_ne_bytes(m[seq_at..seq_at + 4].try_into().unwrap());
                let mut l4: [u8; QUOTE_L4_LEN] = m[seq_at - 4..seq_at + 4].try_into().unwrap();
                shift_quoted_seq(&mut l4, seed.wrapping_mul(0x9e37_79b9));
                let new = u32::from_ne_bytes(l4[4..8].try_into().unwrap());
                let after = before.shift_seq(old, new);
                m[seq_at..seq_at + 4].copy_from_slice(&l4[4..8]);
                m[2..4].copy_from_slice(&after.icmp.to_ne_bytes());
                if let Some(tcp) = after.tcp {
                    m[tcp_check_at..tcp_check_at + 2].copy_from_slice(&tcp.to_ne_bytes());
                }
                let mut reference = m.clone();
                fix_checksums(&mut reference, segment_len);
                assert_eq!(m, reference, "segment {segment_len}, quoted {quoted}, seed {seed}");
            }
        }
    }

    #[test]
    fn only_errors_about_a_datagram_follow_its_flow() {
        for t in 0..=255u8 {
            assert_eq!(follows_flow(t), [3, 11, 12].contains(&t), "type {t}");
        }
    }

    #[test]
    fn frag_needed_answers_the_sender_with_its_quote_and_valid_checksums() {
        let sent = bytes(42, QUOTE_LEN);
        let (ip, l4) = sent.split_at(IPV4_LEN);
        let sender = Tuple {
            src_addr: u32::from_ne_bytes([192, 168, 1, 5]),
            dst_addr: u32::from_ne_bytes([10, 0, 0, 100]),
            src_port: 40000u16.to_be(),
            dst_port: 80u16.to_be(),
        };
        let q = quote(ip.try_into().unwrap(), l4.try_into().unwrap(), &sender);
        assert_eq!(checksum(&q[..IPV4_LEN]), 0, "quoted IP header checksum");
        assert_eq!(tuple_at(&q, 0), sender);
        assert_eq!(q[24..], sent[24..], "sequence number as sent");

        let e = frag_needed(&q, 1280);
        assert_eq!(checksum(&e[..IPV4_LEN]), 0, "IP header checksum");
        assert_eq!(checksum(&e[IPV4_LEN..]), 0, "ICMP checksum");
        assert_eq!(e[0], 0x45);
        assert_eq!(u16::from_be_bytes([e[2], e[3]]) as usize, FRAG_NEEDED_LEN);
        assert_eq!((e[8], e[9]), (TTL, IPPROTO_ICMP));
        assert_eq!(e[12..16], [10, 0, 0, 100], "from the address the sender sent to");
        assert_eq!(e[16..20], [192, 168, 1, 5], "to the sender");
        assert_eq!((e[20], e[21]), (DEST_UNREACHABLE, FRAG_NEEDED));
        assert_eq!(u16::from_be_bytes([e[26], e[27]]), 1280, "next-hop MTU");
        assert_eq!(e[28..], q, "the quote");
    }
}
