//! UDP flows: the state a pinned UDP flow carries, and the NAT rewrite of a
//! UDP checksum, which (on IPv4) may be 0 for "none", and its undoing for
//! a fragmentation-needed answer's quote.

use crate::{
    checksum::{replace16, replace32},
    flow_state::ESTABLISHED,
    icmp::{QUOTE_L4_LEN, Tuple},
};

/// The flow state of every UDP flow: UDP has no handshake or end, so a
/// flow is open from its first datagram until the daemon's sweep finds it
/// idle for its service's `udp_idle` ([`crate::maps::Service::udp_idle_ms`]).
/// A drain waits for open flows, so for that.
pub const UDP_FLOW_STATE: u32 = ESTABLISHED;

/// An IPv4 UDP checksum field of 0: the sender computed none (RFC 768).
pub const NO_CHECKSUM: u16 = 0;

/// A UDP datagram's new addresses and ports, wire order, as NAT writes them.
pub struct UdpRewrite {
    pub old_src: (u32, u16),
    pub old_dst: (u32, u16),
    pub new_src: (u32, u16),
    pub new_dst: (u32, u16),
}

/// The checksum field after `rewrite`: both addresses enter it through the
/// pseudo-header, both ports directly. A datagram sent without a checksum
/// keeps none; a computed 0 is sent as 0xffff, its other one's complement
/// form, as 0 would mean none.
#[inline(always)]
pub const fn nat_check(check: u16, rewrite: &UdpRewrite) -> u16 {
    if check == NO_CHECKSUM {
        return NO_CHECKSUM;
    }
    let mut check = replace32(check, rewrite.old_src.0, rewrite.new_src.0);
    check = replace32(check, rewrite.old_dst.0, rewrite.new_dst.0);
    check = replace16(check, rewrite.old_src.1, rewrite.new_src.1);
    check = replace16(check, rewrite.old_dst.1, rewrite.new_dst.1);
    if check == 0 { 0xffff } else { check }
}

/// Where the checksum sits in a UDP header.
const CHECK_OFFSET: usize = 6;

/// Sets the checksum field of `header`, the UDP header of a datagram the
/// LB rewrote from `sent`'s addressing to `emitted`'s, back to what its
/// sender sent: an ICMP error the LB answers a datagram with quotes it as
/// its sender sent it ([`crate::icmp::quote`] sets the addresses and ports).
pub fn restore_sent_check(header: &mut [u8; QUOTE_L4_LEN], emitted: &Tuple, sent: &Tuple) {
    let check = u16::from_ne_bytes([header[CHECK_OFFSET], header[CHECK_OFFSET + 1]]);
    let undone = nat_check(
        check,
        &UdpRewrite {
            old_src: (emitted.src_addr, emitted.src_port),
            old_dst: (emitted.dst_addr, emitted.dst_port),
            new_src: (sent.src_addr, sent.src_port),
            new_dst: (sent.dst_addr, sent.dst_port),
        },
    );
    header[CHECK_OFFSET..CHECK_OFFSET + 2].copy_from_slice(&undone.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const IPPROTO_UDP: u16 = 17;

    /// The checksum of a UDP datagram computed in full, as its receiver
    /// checks it (RFC 768), over native-read words like the data plane's.
    fn full_check(src: (u32, u16), dst: (u32, u16), payload: &[u8]) -> u16 {
        let len = (8 + payload.len()) as u16;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src.0.to_ne_bytes());
        bytes.extend_from_slice(&dst.0.to_ne_bytes());
        bytes.extend_from_slice(&IPPROTO_UDP.to_be_bytes());
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&src.1.to_ne_bytes());
        bytes.extend_from_slice(&dst.1.to_ne_bytes());
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(payload);
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let mut sum: u32 = bytes.chunks(2).map(|w| u16::from_ne_bytes([w[0], w[1]]) as u32).sum();
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        match !(sum as u16) {
            0 => 0xffff,
            check => check,
        }
    }

    fn wire(a: [u8; 4], port: u16) -> (u32, u16) {
        (u32::from_ne_bytes(a), port.to_be())
    }

    #[test]
    fn nat_check_equals_the_checksum_of_the_rewritten_datagram() {
        let client = wire([192, 168, 1, 5], 40000);
        let vip = wire([10, 0, 0, 100], 53);
        let snat = wire([10, 0, 0, 1], 20007);
        let backend = wire([10, 0, 1, 1], 5353);
        for payload in [&b"query"[..], b"", b"an odd-length payload!"] {
            let before = full_check(client, vip, payload);
            let rewrite = UdpRewrite {
                old_src: client,
                old_dst: vip,
                new_src: snat,
                new_dst: backend,
            };
            assert_eq!(nat_check(before, &rewrite), full_check(snat, backend, payload));
        }
    }

    #[test]
    fn a_datagram_without_checksum_keeps_none() {
        let rewrite = UdpRewrite {
            old_src: wire([192, 168, 1, 5], 40000),
            old_dst: wire([10, 0, 0, 100], 53),
            new_src: wire([10, 0, 0, 1], 20007),
            new_dst: wire([10, 0, 1, 1], 5353),
        };
        assert_eq!(nat_check(NO_CHECKSUM, &rewrite), NO_CHECKSUM);
    }

    #[test]
    fn restore_sent_check_gives_back_the_senders_checksum_or_none() {
        let (client, vip) = (wire([192, 168, 1, 5], 40000), wire([10, 0, 0, 100], 53));
        let (snat, backend) = (wire([10, 0, 0, 1], 20007), wire([10, 0, 1, 1], 5353));
        let tuple = |src: (u32, u16), dst: (u32, u16)| Tuple {
            src_addr: src.0,
            dst_addr: dst.0,
            src_port: src.1,
            dst_port: dst.1,
        };
        let (sent, emitted) = (tuple(client, vip), tuple(snat, backend));
        for (payload, none) in [
            (&b"query"[..], false),
            (b"an odd-length payload!", false),
            (b"bare", true),
        ] {
            let sent_check = if none {
                NO_CHECKSUM
            } else {
                full_check(client, vip, payload)
            };
            let rewrite = UdpRewrite {
                old_src: client,
                old_dst: vip,
                new_src: snat,
                new_dst: backend,
            };
            let mut header = [0u8; QUOTE_L4_LEN];
            header[CHECK_OFFSET..].copy_from_slice(&nat_check(sent_check, &rewrite).to_ne_bytes());
            restore_sent_check(&mut header, &emitted, &sent);
            assert_eq!(u16::from_ne_bytes([header[6], header[7]]), sent_check, "{payload:?}");
        }
    }

    #[test]
    fn a_rewrite_summing_to_zero_sends_all_ones() {
        // Only the source port changes, by exactly what makes the sum 0:
        // checksum 0x0001 over a port raised by 1 folds to 0x0000.
        let src = (0, 0x0001u16);
        let rewrite = UdpRewrite {
            old_src: src,
            old_dst: (0, 0),
            new_src: (0, 0x0002),
            new_dst: (0, 0),
        };
        let check = nat_check(0x0001, &rewrite);
        assert_eq!(check, 0xffff, "{check:#x}");
    }
}
