//! What a packet test expects of the frame the program returned: the shared
//! checks of the packet tests (addresses, MACs, TTL, flags, sequence
//! numbers, payload and both checksums).

use std::net::SocketAddrV4;

use crate::{
    packet_lab::{GATEWAY_MAC, LB_MAC, PacketLab, SNAT_PORTS, VIP, mac_of},
    packets::{IcmpView, TcpView, parse_checked, parse_checked_icmp, quote_of},
};

/// What must hold of the frame the program returns.
pub enum Out {
    /// Byte for byte the frame that went in.
    Unchanged,
    /// Full NAT to the backend the lookup table picks for the client: from
    /// a SNAT address and a port of the range (the flow's, if pinned),
    /// the LB's MAC to the backend's, TTL 63, flags, sequence numbers and
    /// payload as sent, valid checksums.
    ToTableBackend,
    /// Full NAT to `backend` from `snat` (a pinned flow's), otherwise as
    /// [`Out::ToTableBackend`].
    ToBackend { backend: SocketAddrV4, snat: SocketAddrV4 },
    /// Translated back from the backend to the client: from the VIP, the
    /// LB's MAC to the gateway's, TTL 63, flags, sequence numbers and
    /// payload as sent, valid checksums.
    ToClient,
    /// A bare RST (Ethernet + IPv4 + TCP headers) from the VIP to the
    /// client, sent back to the gateway, with valid checksums: sequence
    /// number `seq`, and with `ack` set the ACK flag and that number (RFC
    /// 793: a RST to a segment with ACK carries its ack as seq).
    Rst { seq: u32, ack: Option<u32> },
    /// The ICMP error, about a packet the LB sent a backend for the row's
    /// client, translated to that client: from the VIP to the client, the
    /// LB's MAC to the gateway's, TTL 63, the same ICMP type, code and
    /// header, quoting what the client sent (client -> VIP) with every
    /// other quoted byte as it was; every checksum valid.
    IcmpToClient,
    /// The ICMP error, about a packet the LB sent the row's client,
    /// translated to the flow's backend: from the flow's SNAT address to the
    /// backend, the LB's MAC to the backend's, TTL 63, quoting what the
    /// backend sent (backend -> the flow's SNAT address and port), as in
    /// `IcmpToClient`.
    IcmpToBackend,
    /// A bare fragmentation-needed error (70 bytes) with `mtu` sent back
    /// where the frame came from (MACs swapped), from the address the frame
    /// was sent to, quoting its IP header (TTL decremented) and first 8
    /// bytes; every checksum valid.
    FragNeeded { mtu: u16 },
    /// Nothing: the frame was dropped.
    Dropped,
}

impl Out {
    /// Checks `out`, what the program made of `sent` from `client`; `what`
    /// names the case in failure messages.
    pub fn check(&self, lab: &PacketLab, what: &str, client: SocketAddrV4, sent: &[u8], out: &[u8]) {
        match *self {
            Out::Unchanged => assert_eq!(out, sent, "{what}: the frame comes back unchanged"),
            Out::ToTableBackend => {
                let (sent, view) = (parse_checked(sent), parse_checked(out));
                let backend = lab.table_pick(client);
                assert_eq!(view.dst, backend, "{what}: to the backend the table picks");
                assert!(
                    lab.snat_addrs().contains(view.src.ip()),
                    "{what}: from a SNAT address, not {}",
                    view.src.ip()
                );
                assert!(
                    (SNAT_PORTS.0..=SNAT_PORTS.1).contains(&view.src.port()),
                    "{what}: SNAT port {} outside {SNAT_PORTS:?}",
                    view.src.port()
                );
                if let Some(flow) = lab.flow(client) {
                    assert_eq!(
                        (flow.snat_addr.to_ne_bytes(), u16::from_be(flow.snat_port)),
                        (view.src.ip().octets(), view.src.port()),
                        "{what}: from the flow's SNAT address and port"
                    );
                }
                assert_routed(what, &sent, &view, mac_of(*backend.ip()));
            }
            Out::ToBackend { backend, snat } => {
                let (sent, view) = (parse_checked(sent), parse_checked(out));
                assert_eq!(
                    (view.src, view.dst),
                    (snat, backend),
                    "{what}: from {snat} to {backend}"
                );
                assert_routed(what, &sent, &view, mac_of(*backend.ip()));
            }
            Out::ToClient => {
                let (sent, view) = (parse_checked(sent), parse_checked(out));
                assert_eq!(
                    (view.src, view.dst),
                    (VIP, client),
                    "{what}: from the VIP to the client"
                );
                assert_routed(what, &sent, &view, GATEWAY_MAC);
            }
            Out::Rst { seq, ack } => {
                assert_eq!(out.len(), 54, "{what}: a bare RST: Ethernet + IPv4 + TCP headers");
                let rst = parse_checked(out);
                assert_eq!((rst.src, rst.dst), (VIP, client), "{what}: from the VIP to the client");
                assert_eq!((rst.src_mac, rst.dst_mac), (LB_MAC, GATEWAY_MAC), "{what}: MACs");
                assert!(rst.flags_rst && !rst.flags_syn, "{what}: RST flags");
                assert_eq!(
                    (rst.seq, rst.flags_ack, rst.ack),
                    (seq, ack.is_some(), ack.unwrap_or(0)),
                    "{what}: RST sequence numbers (RFC 793)"
                );
            }
            Out::IcmpToClient => {
                let view = parse_checked_icmp(out);
                assert_eq!((view.src, view.dst), (*VIP.ip(), *client.ip()), "{what}: VIP to client");
                assert_eq!((view.src_mac, view.dst_mac), (LB_MAC, GATEWAY_MAC), "{what}: MACs");
                assert_translated(what, &parse_checked_icmp(sent), &view, (client, VIP));
            }
            Out::IcmpToBackend => {
                let (backend, snat) = lab.pinned_backend(client).expect("a pinned flow");
                let view = parse_checked_icmp(out);
                assert_eq!(
                    (view.src, view.dst),
                    (*snat.ip(), *backend.ip()),
                    "{what}: the flow's SNAT address to backend"
                );
                assert_eq!(
                    (view.src_mac, view.dst_mac),
                    (LB_MAC, mac_of(*backend.ip())),
                    "{what}: MACs"
                );
                assert_translated(what, &parse_checked_icmp(sent), &view, (backend, snat));
            }
            Out::FragNeeded { mtu } => {
                assert_eq!(out.len(), 14 + 20 + 8 + 20 + 8, "{what}: a bare error quoting 8 bytes");
                let (sent_tcp, view) = (parse_checked(sent), parse_checked_icmp(out));
                assert_eq!(
                    (view.src_mac, view.dst_mac),
                    (sent_tcp.dst_mac, sent_tcp.src_mac),
                    "{what}: back where it came from"
                );
                assert_eq!(
                    (view.src, view.dst),
                    (*sent_tcp.dst.ip(), *sent_tcp.src.ip()),
                    "{what}: from the address the sender sent to"
                );
                assert_eq!((view.icmp_type, view.code), (3, 4), "{what}: fragmentation needed");
                let [m0, m1] = mtu.to_be_bytes();
                assert_eq!(view.rest_of_header, [0, 0, m0, m1], "{what}: next-hop MTU");
                assert_eq!(
                    (view.quoted_src, view.quoted_dst),
                    (sent_tcp.src, sent_tcp.dst),
                    "{what}: quotes what was sent"
                );
                let mut expected = quote_of(sent, 8);
                expected[8] -= 1;
                expected[10..12].copy_from_slice(&view.quote[10..12]);
                assert_eq!(view.quote, expected, "{what}: the quote, TTL decremented");
            }
            Out::Dropped => {}
        }
    }
}

/// `out` is the ICMP error `sent` translated: TTL decremented, ICMP type,
/// code and header as they were, the quote addressed `quoted`, and no other
/// quoted byte changed but the checksums.
fn assert_translated(what: &str, sent: &IcmpView, out: &IcmpView, quoted: (SocketAddrV4, SocketAddrV4)) {
    assert_eq!(out.ttl, sent.ttl - 1, "{what}: TTL");
    assert_eq!(
        (out.icmp_type, out.code, out.rest_of_header),
        (sent.icmp_type, sent.code, sent.rest_of_header),
        "{what}: ICMP type, code and header"
    );
    assert_eq!((out.quoted_src, out.quoted_dst), quoted, "{what}: quoted addressing");
    assert_eq!(
        out.quoted_l4_checked, sent.quoted_l4_checked,
        "{what}: the whole segment quoted"
    );
    // Quoted IP checksum, addresses and ports; the TCP checksum, if quoted.
    let rest = |quote: &[u8]| {
        let mut rest = quote.to_vec();
        rest[10..24].fill(0);
        if let Some(check) = rest.get_mut(36..38) {
            check.fill(0);
        }
        rest
    };
    assert_eq!(rest(&out.quote), rest(&sent.quote), "{what}: the rest of the quote");
}

/// Sent from the LB's MAC to `next_hop`, one hop older, and otherwise the
/// segment as sent.
fn assert_routed(what: &str, sent: &TcpView, out: &TcpView, next_hop: [u8; 6]) {
    assert_eq!((out.src_mac, out.dst_mac), (LB_MAC, next_hop), "{what}: MACs");
    assert_eq!(out.ttl, 63, "{what}: TTL");
    assert_same_segment(what, sent, out);
}

/// NAT changes addresses, ports, MACs and TTL only.
fn assert_same_segment(what: &str, sent: &TcpView, out: &TcpView) {
    assert_eq!(
        (out.flags_syn, out.flags_rst, out.flags_ack, out.seq, out.ack),
        (sent.flags_syn, sent.flags_rst, sent.flags_ack, sent.seq, sent.ack),
        "{what}: flags and sequence numbers as sent"
    );
    assert_eq!(out.payload, sent.payload, "{what}: payload byte for byte");
}
