//! Global per-CPU counters of packets the program did not forward normally,
//! by reason. Userspace sums them across CPUs.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Not for a service nor a NATed reply: passed to the kernel untouched.
    Passed = 0,
    /// Headers shorter than they claim (truncated frame): passed.
    Truncated,
    /// IPv4 TCP fragment: passed, never NATed.
    Fragmented,
    /// IPv4 TCP header with IP options: passed, never NATed.
    IpOptions,
    /// New flow but the service's table has no backend: dropped.
    NoBackend,
    /// Non-SYN packet of an unknown flow forwarded by the table, statelessly.
    UnpinnedForwarded,
    /// Every SNAT port candidate was taken: dropped.
    SnatPortsExhausted,
    /// Flow table insert failed: dropped.
    FlowInsertFailed,
    /// No route to the destination, or it needs fragmentation: dropped.
    FibFailed,
    /// Next hop's MAC is not resolved yet: dropped (the daemon resolves it).
    FibNoNeighbour,
    /// Egress interface is not in the TX_PORTS devmap: dropped.
    RedirectFailed,
    /// Packet to the SNAT address and port range with no NAT entry: passed.
    ReplyWithoutFlow,
    /// TTL would expire: passed so the kernel sends ICMP time exceeded.
    TtlExpired,
    /// A new connection no backend could take, refused with a RST.
    Refused,
    /// A pinned flow of a backend that went down with `on_down = "reset"`,
    /// reset with a RST to the client.
    FlowReset,
    /// SYN proxy on: a SYN answered with a SYN cookie (XDP_TX), no state kept.
    SynCookieSent,
    /// A client's ACK proved its SYN cookie: the LB opened the backend side
    /// (the ACK became the SYN to the backend).
    SynCookieValid,
    /// SYN proxy on: a segment of no flow without a valid cookie: dropped.
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
}

pub const COUNTER_COUNT: u32 = Counter::SynProxyHeld as u32 + 1;

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
        Counter::SynCookieSent,
        Counter::SynCookieValid,
        Counter::SynCookieInvalid,
        Counter::SynProxyEarlyData,
        Counter::SynProxyBadChecksum,
        Counter::SynProxyUnavailable,
        Counter::SynProxyHeld,
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
            Counter::SynCookieSent => "syn_cookie_sent",
            Counter::SynCookieValid => "syn_cookie_valid",
            Counter::SynCookieInvalid => "syn_cookie_invalid",
            Counter::SynProxyEarlyData => "syn_proxy_early_data",
            Counter::SynProxyBadChecksum => "syn_proxy_bad_checksum",
            Counter::SynProxyUnavailable => "syn_proxy_unavailable",
            Counter::SynProxyHeld => "syn_proxy_held",
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
