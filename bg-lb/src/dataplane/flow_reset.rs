//! The drain deadline's reset as userspace sees it: which flows it ends,
//! and the trigger frames that ask the data plane's flow-reset program
//! (bg-lb-ebpf's `flow_reset`) for each end's RST. A trigger is a bare RST
//! shaped as a segment of the flow that one end could have sent; the
//! program writes the sequence numbers, routes and sends it. Generic over
//! the address family: an IPv6 flow's triggers are IPv6 frames, for the
//! IPv6 program (`bg_lb_flow_reset6`).

use std::net::IpAddr;

use bg_lb_common::{
    checksum,
    flow_state::{self, TCP_RST},
    maps::{BackendOf, FlowKeyOf, FlowOf, IPPROTO_TCP},
};

use super::wire::Wire;

/// Whether the deadline resets the flow: a TCP connection that has not
/// ended, with a reply path (the LB never sees a `dsr` backend's sequence
/// numbers, so such a flow is left to end by itself).
pub fn resettable<A: Wire>(key: &FlowKeyOf<A>, flow: &FlowOf<A>) -> bool {
    key.proto == IPPROTO_TCP && flow.has_reply_path() && flow_state::phase(flow.state).is_open()
}

/// The two triggers of a flow pinned to `backend`: the backend's segment
/// (for the client's RST), then the client's (for the backend's).
pub fn triggers<A: Wire>(key: &FlowKeyOf<A>, flow: &FlowOf<A>, backend: &BackendOf<A>) -> [Vec<u8>; 2] {
    [
        trigger((backend.addr, backend.port), (flow.snat_addr, flow.snat_port)),
        trigger((key.client_addr, key.client_port), (key.vip_addr, key.vip_port)),
    ]
}

/// A bare RST from `src` to `dst`, addresses and ports in wire order (as
/// the maps hold them), in an IPv4 or IPv6 frame as the addresses are. The
/// MACs are the program's to set; so is the TCP checksum (the program
/// writes the RST's own).
fn trigger<A: Wire>((src_addr, src_port): (A, u16), (dst_addr, dst_port): (A, u16)) -> Vec<u8> {
    let mut frame = vec![0u8; 14];
    match (src_addr.to_ip(), dst_addr.to_ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&40u16.to_be_bytes());
            ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
            ip[8] = 64;
            ip[9] = IPPROTO_TCP;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let check = checksum::finish(checksum::sum_words(&ip));
            ip[10..12].copy_from_slice(&check.to_ne_bytes());
            frame.extend_from_slice(&ip);
        }
        (src, dst) => {
            frame[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&20u16.to_be_bytes());
            ip[6] = IPPROTO_TCP;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&v6_octets(src));
            ip[24..40].copy_from_slice(&v6_octets(dst));
            frame.extend_from_slice(&ip);
        }
    }
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&src_port.to_ne_bytes());
    tcp[2..4].copy_from_slice(&dst_port.to_ne_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = TCP_RST;
    frame.extend_from_slice(&tcp);
    frame
}

/// An IPv6 address's octets (a flow's addresses are of one family, so
/// never an IPv4 one here).
fn v6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V6(ip) => ip.octets(),
        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv6Addr, SocketAddrV4, SocketAddrV6};

    use bg_lb_common::{
        flow_state::{ESTABLISHED, FIN_FROM_BACKEND, FIN_FROM_CLIENT, RESET, SYN_SEEN},
        maps::{Backend, Backend6, FORWARDING_DSR, Flow, Flow6, FlowKey, FlowKey6, IPPROTO_UDP, wire_ip6},
    };
    use etherparse::IpNumber;

    use super::*;

    fn key() -> FlowKey {
        FlowKey::from_client(
            SocketAddrV4::new([10, 0, 0, 7].into(), 40000),
            SocketAddrV4::new([10, 0, 0, 100].into(), 80),
        )
    }

    #[test]
    fn only_open_tcp_flows_with_a_reply_path_are_reset() {
        let open = Flow {
            state: SYN_SEEN | ESTABLISHED,
            ..Flow::default()
        };
        assert!(resettable(&key(), &open));
        let half_closed = Flow {
            state: open.state | FIN_FROM_CLIENT,
            ..open
        };
        assert!(resettable(&key(), &half_closed));
        for ended in [RESET, FIN_FROM_CLIENT | FIN_FROM_BACKEND] {
            let flow = Flow {
                state: open.state | ended,
                ..open
            };
            assert!(!resettable(&key(), &flow));
        }
        assert!(
            !resettable(
                &key(),
                &Flow {
                    state: SYN_SEEN,
                    ..open
                }
            ),
            "embryonic"
        );
        let dsr = Flow {
            forwarding: FORWARDING_DSR,
            ..open
        };
        assert!(!resettable(&key(), &dsr));
        let udp = FlowKey {
            proto: IPPROTO_UDP,
            ..key()
        };
        assert!(!resettable(&udp, &open));
    }

    #[test]
    fn triggers_are_bare_rsts_from_each_end_with_valid_ip_headers() {
        let backend = Backend::new(0, 1, SocketAddrV4::new([10, 1, 0, 1].into(), 8080), 0, false);
        let flow = Flow {
            snat_addr: u32::from_ne_bytes([10, 0, 0, 1]),
            snat_port: 20001u16.to_be(),
            ..Flow::default()
        };
        let [to_client, to_backend] = triggers(&key(), &flow, &backend);
        let parse = |frame: &Vec<u8>| {
            assert_eq!(frame.len(), 14 + 20 + 20, "bare headers");
            let (ip, _) = etherparse::Ipv4Header::from_slice(&frame[14..]).expect("an IPv4 header");
            let tcp = etherparse::TcpHeader::from_slice(&frame[34..]).expect("a TCP header").0;
            assert_eq!(ip.header_checksum, ip.calc_header_checksum());
            assert!(tcp.rst && !tcp.ack && !tcp.syn && !tcp.fin);
            (
                SocketAddrV4::new(ip.source.into(), tcp.source_port),
                SocketAddrV4::new(ip.destination.into(), tcp.destination_port),
            )
        };
        assert_eq!(
            parse(&to_client),
            (
                SocketAddrV4::new([10, 1, 0, 1].into(), 8080),
                SocketAddrV4::new([10, 0, 0, 1].into(), 20001)
            )
        );
        assert_eq!(
            parse(&to_backend),
            (
                SocketAddrV4::new([10, 0, 0, 7].into(), 40000),
                SocketAddrV4::new([10, 0, 0, 100].into(), 80)
            )
        );
    }

    #[test]
    fn an_ipv6_flows_triggers_are_bare_rsts_in_ipv6_frames_from_each_end() {
        let client = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0xc, 0, 0, 0, 0, 0, 7), 40000, 0, 0);
        let vip = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100), 80, 0, 0);
        let snat = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1), 20001, 0, 0);
        let backend = Backend6::new(
            0,
            1,
            SocketAddrV6::new(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x11), 8080, 0, 0),
            0,
            false,
        );
        let flow = Flow6 {
            snat_addr: wire_ip6(*snat.ip()),
            snat_port: snat.port().to_be(),
            ..Flow6::default()
        };
        let [to_client, to_backend] = triggers(&FlowKey6::from_client(client, vip), &flow, &backend);
        let parse = |frame: &Vec<u8>| {
            assert_eq!(frame.len(), 14 + 40 + 20, "bare headers");
            assert_eq!(frame[12..14], [0x86, 0xdd]);
            let (ip, _) = etherparse::Ipv6Header::from_slice(&frame[14..]).expect("an IPv6 header");
            assert_eq!(
                (ip.payload_length, ip.next_header, ip.hop_limit),
                (20, IpNumber::TCP, 64)
            );
            let tcp = etherparse::TcpHeader::from_slice(&frame[54..]).expect("a TCP header").0;
            assert!(tcp.rst && !tcp.ack && !tcp.syn && !tcp.fin);
            (
                SocketAddrV6::new(ip.source.into(), tcp.source_port, 0, 0),
                SocketAddrV6::new(ip.destination.into(), tcp.destination_port, 0, 0),
            )
        };
        assert_eq!(parse(&to_client), (backend.addr(), snat));
        assert_eq!(parse(&to_backend), (client, vip));
    }
}
