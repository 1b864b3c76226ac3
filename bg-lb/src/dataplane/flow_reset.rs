//! The drain deadline's reset as userspace sees it: which flows it ends,
//! and the trigger frames that ask the data plane's flow-reset program
//! (bg-lb-ebpf's `flow_reset`) for each end's RST. A trigger is a bare RST
//! shaped as a segment of the flow that one end could have sent; the
//! program writes the sequence numbers, routes and sends it.

use bg_lb_common::{
    checksum,
    flow_state::{self, TCP_RST},
    maps::{Backend, Flow, FlowKey, IPPROTO_TCP},
};

/// Ethernet, IPv4 and TCP headers, no options.
pub const TRIGGER_LEN: usize = 14 + 20 + 20;

/// Whether the deadline resets the flow: a TCP connection that has not
/// ended, with a reply path (the LB never sees a `dsr` backend's sequence
/// numbers, so such a flow is left to end by itself).
pub fn resettable(key: &FlowKey, flow: &Flow) -> bool {
    key.proto == IPPROTO_TCP && flow.has_reply_path() && flow_state::phase(flow.state).is_open()
}

/// The two triggers of a flow pinned to `backend`: the backend's segment
/// (for the client's RST), then the client's (for the backend's).
pub fn triggers(key: &FlowKey, flow: &Flow, backend: &Backend) -> [[u8; TRIGGER_LEN]; 2] {
    [
        trigger((backend.addr, backend.port), (flow.snat_addr, flow.snat_port)),
        trigger((key.client_addr, key.client_port), (key.vip_addr, key.vip_port)),
    ]
}

/// A bare RST from `src` to `dst`, addresses and ports in wire order (as
/// the maps hold them). The MACs are the program's to set.
fn trigger((src_addr, src_port): (u32, u16), (dst_addr, dst_port): (u32, u16)) -> [u8; TRIGGER_LEN] {
    let mut frame = [0u8; TRIGGER_LEN];
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = 64;
    ip[9] = IPPROTO_TCP;
    ip[12..16].copy_from_slice(&src_addr.to_ne_bytes());
    ip[16..20].copy_from_slice(&dst_addr.to_ne_bytes());
    let check = checksum::finish(checksum::sum_words(&ip));
    ip[10..12].copy_from_slice(&check.to_ne_bytes());
    frame[14..34].copy_from_slice(&ip);
    let tcp = &mut frame[34..];
    tcp[0..2].copy_from_slice(&src_port.to_ne_bytes());
    tcp[2..4].copy_from_slice(&dst_port.to_ne_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = TCP_RST;
    frame
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use bg_lb_common::{
        flow_state::{ESTABLISHED, FIN_FROM_BACKEND, FIN_FROM_CLIENT, RESET, SYN_SEEN},
        maps::{FORWARDING_DSR, IPPROTO_UDP},
    };

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
            forwarding: FORWARDING_DSR as u16,
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
        let parse = |frame: &[u8; TRIGGER_LEN]| {
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
}
