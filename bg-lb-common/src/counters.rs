//! Global per-CPU counters of packets the program did not forward normally,
//! by reason. Userspace sums them across CPUs.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Not for a service nor a NATed reply: passed to the kernel untouched.
    Passed = 0,
    /// Headers shorter than they claim (truncated frame), to a VIP or the
    /// SNAT range: dropped.
    Truncated,
    /// IPv4 TCP fragment to a VIP or the SNAT range: dropped.
    Fragmented,
    /// IPv4 TCP header with IP options, to a VIP or the SNAT range: dropped.
    IpOptions,
    /// New flow but the service's table has no backend: dropped.
    NoBackend,
    /// Non-SYN packet of an unknown flow forwarded by the table, statelessly.
    UnpinnedForwarded,
    /// Every SNAT port candidate was taken: the SYN is refused with a RST.
    SnatPortsExhausted,
    /// Flow table insert failed: dropped.
    FlowInsertFailed,
    /// No route to the destination: dropped.
    FibFailed,
    /// Next hop's MAC is not resolved yet: dropped (the daemon resolves it).
    FibNoNeighbour,
    /// Egress interface is not in the TX_PORTS devmap: dropped.
    RedirectFailed,
    /// Packet to the SNAT address and port range with no NAT entry: passed.
    ReplyWithoutFlow,
    /// TTL of at most 1, to a VIP or the SNAT range: dropped.
    TtlExpired,
    /// A new connection no backend could take, refused with a RST.
    Refused,
    /// A pinned flow of a backend that went down with `on_down = "reset"`,
    /// reset with a RST to the client.
    FlowReset,
    /// An ICMP error from the backend side about a pinned flow, translated
    /// and forwarded to its client.
    IcmpErrorToClient,
    /// An ICMP error from the client side about a pinned flow, translated
    /// and forwarded to its backend.
    IcmpErrorToBackend,
    /// An ICMP error that quotes no pinned flow: passed untouched.
    IcmpErrorWithoutFlow,
    /// An ICMP message the data plane cannot parse (IP options, a fragment)
    /// or an error too short to translate: passed untouched.
    IcmpMalformed,
    /// A Don't Fragment packet larger than the egress MTU, answered with ICMP
    /// fragmentation needed.
    TooBigAnswered,
    /// A packet larger than the egress MTU that may not be answered with
    /// fragmentation needed or Packet Too Big (IPv4 without DF, itself an
    /// ICMP or ICMPv6 error, of no pinned flow, from a multicast or
    /// unspecified source, or a segment the SYN proxy held): dropped, as XDP
    /// cannot fragment.
    TooBigDropped,
    /// SYN together with FIN or RST, to a VIP or the SNAT range: dropped.
    BadTcpFlags,
    /// A RST outside the window its receiver accepts: forwarded for the
    /// endpoint to judge, the flow left as it was.
    RstOutOfWindow,
    /// A pinned flow whose backend id now names another backend or none, or
    /// whose service is gone: dropped, and the flow forgotten.
    StaleFlow,
    /// A backend reply whose reverse-NAT entry names a flow that is gone,
    /// pinned elsewhere, or that cannot have sent it: dropped.
    StaleReply,
    /// A pinned flow's reverse-NAT entry was gone and was claimed again.
    NatReclaimed,
    /// A pinned flow's SNAT port is owned by another flow: the flow is
    /// forgotten and its client reset with a RST (a RST is only dropped).
    NatConflict,
    /// A segment without a flow whose every SNAT port candidate is owned by
    /// another flow: dropped.
    UnpinnedPortTaken,
    /// A segment without a flow whose reverse-NAT entry still names it (its
    /// flow was evicted): pinned again and forwarded.
    FlowReadopted,
    /// SYN proxy on: a SYN answered with a SYN cookie (XDP_TX), no state kept.
    SynCookieSent,
    /// A client's ACK proved its SYN cookie: the LB opened the backend side
    /// (the ACK became the SYN to the backend).
    SynCookieValid,
    /// SYN proxy on: a segment of no flow without a valid cookie, or a SYN
    /// sent to a group MAC (never answered): dropped.
    SynCookieInvalid,
    /// A client segment of a proxied flow before its backend answered that
    /// could not be held: dropped (the client retransmits it).
    SynProxyEarlyData,
    /// A handshake segment the SYN proxy would answer, with a wrong IPv4 or
    /// TCP checksum: dropped.
    SynProxyBadChecksum,
    /// A SYN proxy job whose program is not loaded: dropped.
    SynProxyUnavailable,
    /// A client segment of a proxied flow held until its backend answered,
    /// then sent on.
    SynProxyHeld,
    /// A `gateway` service's SYN whose (client address and port, backend)
    /// another VIP's flow already uses: the backend could not tell the two
    /// apart, so the SYN is refused with a RST.
    GatewayCollision,
    /// A `dsr` service's packet whose backend is not on-link (the route to
    /// it has a gateway): a MAC rewrite cannot reach it, so it is dropped.
    DsrNotOnLink,
    /// A connection still open at its pool's drain deadline, reset at both
    /// ends (a RST to the client and one to the backend).
    DeadlineReset,
    /// A UDP datagram opening a flow that found no free SNAT pair: dropped
    /// (UDP has no RST to refuse it with).
    UdpSnatPortsExhausted,
    /// A `gateway` UDP datagram opening a flow whose (client address and
    /// port, backend) another flow already uses: dropped.
    UdpGatewayCollision,
    /// An IPv6 packet to a VIP address with an extension header (hop-by-hop,
    /// routing, fragment, destination options, ...) before its TCP or UDP
    /// header: dropped (the data plane reads only a TCP or UDP header right
    /// after the fixed one).
    Ipv6ExtensionHeader,
    /// An IPv6 UDP datagram without a checksum (0, which IPv6 forbids), to a
    /// VIP:port or the SNAT range: dropped, as its receiver would.
    Udp6NoChecksum,
    /// An IPv6 TCP segment or UDP datagram of a pinned flow larger than the
    /// egress MTU, answered with ICMPv6 Packet Too Big (IPv6 routers never
    /// fragment; [`Counter::TooBigAnswered`] is IPv4's).
    PacketTooBigAnswered,
}

pub const COUNTER_COUNT: u32 = Counter::PacketTooBigAnswered as u32 + 1;

impl Counter {
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::Passed,
        Counter::Truncated,
        Counter::Fragmented,
        Counter::IpOptions,
        Counter::NoBackend,
        Counter::UnpinnedForwarded,
        Counter::SnatPortsExhausted,
        Counter::FlowInsertFailed,
        Counter::FibFailed,
        Counter::FibNoNeighbour,
        Counter::RedirectFailed,
        Counter::ReplyWithoutFlow,
        Counter::TtlExpired,
        Counter::Refused,
        Counter::FlowReset,
        Counter::IcmpErrorToClient,
        Counter::IcmpErrorToBackend,
        Counter::IcmpErrorWithoutFlow,
        Counter::IcmpMalformed,
        Counter::TooBigAnswered,
        Counter::TooBigDropped,
        Counter::BadTcpFlags,
        Counter::RstOutOfWindow,
        Counter::StaleFlow,
        Counter::StaleReply,
        Counter::NatReclaimed,
        Counter::NatConflict,
        Counter::UnpinnedPortTaken,
        Counter::FlowReadopted,
        Counter::SynCookieSent,
        Counter::SynCookieValid,
        Counter::SynCookieInvalid,
        Counter::SynProxyEarlyData,
        Counter::SynProxyBadChecksum,
        Counter::SynProxyUnavailable,
        Counter::SynProxyHeld,
        Counter::GatewayCollision,
        Counter::DsrNotOnLink,
        Counter::DeadlineReset,
        Counter::UdpSnatPortsExhausted,
        Counter::UdpGatewayCollision,
        Counter::Ipv6ExtensionHeader,
        Counter::Udp6NoChecksum,
        Counter::PacketTooBigAnswered,
    ];

    /// Stable snake_case name for logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Passed => "passed",
            Counter::Truncated => "truncated",
            Counter::Fragmented => "fragmented",
            Counter::IpOptions => "ip_options",
            Counter::NoBackend => "no_backend",
            Counter::UnpinnedForwarded => "unpinned_forwarded",
            Counter::SnatPortsExhausted => "snat_ports_exhausted",
            Counter::FlowInsertFailed => "flow_insert_failed",
            Counter::FibFailed => "fib_failed",
            Counter::FibNoNeighbour => "fib_no_neighbour",
            Counter::RedirectFailed => "redirect_failed",
            Counter::ReplyWithoutFlow => "reply_without_flow",
            Counter::TtlExpired => "ttl_expired",
            Counter::Refused => "refused",
            Counter::FlowReset => "flow_reset",
            Counter::IcmpErrorToClient => "icmp_error_to_client",
            Counter::IcmpErrorToBackend => "icmp_error_to_backend",
            Counter::IcmpErrorWithoutFlow => "icmp_error_without_flow",
            Counter::IcmpMalformed => "icmp_malformed",
            Counter::TooBigAnswered => "too_big_answered",
            Counter::TooBigDropped => "too_big_dropped",
            Counter::BadTcpFlags => "bad_tcp_flags",
            Counter::RstOutOfWindow => "rst_out_of_window",
            Counter::StaleFlow => "stale_flow",
            Counter::StaleReply => "stale_reply",
            Counter::NatReclaimed => "nat_reclaimed",
            Counter::NatConflict => "nat_conflict",
            Counter::UnpinnedPortTaken => "unpinned_port_taken",
            Counter::FlowReadopted => "flow_readopted",
            Counter::SynCookieSent => "syn_cookie_sent",
            Counter::SynCookieValid => "syn_cookie_valid",
            Counter::SynCookieInvalid => "syn_cookie_invalid",
            Counter::SynProxyEarlyData => "syn_proxy_early_data",
            Counter::SynProxyBadChecksum => "syn_proxy_bad_checksum",
            Counter::SynProxyUnavailable => "syn_proxy_unavailable",
            Counter::SynProxyHeld => "syn_proxy_held",
            Counter::GatewayCollision => "gateway_collision",
            Counter::DsrNotOnLink => "dsr_not_on_link",
            Counter::DeadlineReset => "deadline_reset",
            Counter::UdpSnatPortsExhausted => "udp_snat_ports_exhausted",
            Counter::UdpGatewayCollision => "udp_gateway_collision",
            Counter::Ipv6ExtensionHeader => "ipv6_extension_header",
            Counter::Udp6NoChecksum => "udp6_no_checksum",
            Counter::PacketTooBigAnswered => "packet_too_big_answered",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_counter_at_its_own_index() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
