//! The SYN proxy's shared definitions and pure logic: the service modes, the
//! bits a proxied flow carries, the flood detector's rule, the MSS values a
//! SYN cookie can encode and the sequence-number translation.
//!
//! A service in proxy mode answers SYNs itself with a SYN cookie and keeps no
//! state; only the client's ACK that proves the cookie opens the backend
//! side (a flow, a SNAT port, the SYN to the backend). The backend then picks
//! its own ISN, so every later segment has its sequence numbers translated
//! by the flow's `seq_delta`. The data plane (bg-lb-ebpf's `synproxy`)
//! applies these rules; userspace uses the same ones to report a service's
//! proxy as on or off.

use crate::maps::SynFlood;

/// `Service::flags`: the proxy engages while the flood detector says the
/// service is flooded.
pub const SYN_PROXY_AUTO: u32 = 1 << 0;
/// `Service::flags`: every SYN is answered with a cookie.
pub const SYN_PROXY_ALWAYS: u32 = 1 << 1;
/// `Service::flags` bits of either mode: the proxy is off without them.
pub const SYN_PROXY_MODES: u32 = SYN_PROXY_AUTO | SYN_PROXY_ALWAYS;

/// `Flow::proxy`: opened by a valid cookie. The LB completed the client's
/// handshake and sent the backend a SYN of its own.
pub const PROXIED: u32 = 1 << 0;
/// `Flow::proxy`: a proxied flow whose backend answered; `seq_delta` holds.
pub const BACKEND_READY: u32 = 1 << 1;
/// `Flow::proxy`: a flow of an auto-mode service whose completion (the
/// client's ACK of the backend's SYN-ACK) the flood detector waits for.
pub const WATCHED: u32 = 1 << 2;
/// `Flow::proxy`: a watched flow whose backend SYN-ACK passed, so
/// `server_isn` holds the backend's ISN.
pub const SERVER_ISN_KNOWN: u32 = 1 << 3;
/// `Flow::proxy`: a proxied flow holds a client segment (`HELD_SEGMENTS`)
/// that arrived before its backend answered.
pub const HELD: u32 = 1 << 4;

/// The most payload a held segment keeps: a segment of the default offered
/// MSS. A larger early segment is dropped (the client sends it again).
pub const HELD_PAYLOAD_MAX: usize = 1460;

/// The proxy's jobs that write a frame, the UDP path (datagrams and ICMP
/// errors about them) and RSTs. Each is its own
/// XDP program, reached by tail call through `SYN_PROXY_JOBS` at the job's
/// index, so it has a stack frame of its own: the packet paths leave too
/// little of theirs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// Answer a SYN with a cookie SYN-ACK.
    SynAck = 0,
    /// A proven cookie's flow is pinned: send the backend its SYN.
    OpenBackend,
    /// Send a proxied flow's backend its SYN again.
    ResendSyn,
    /// Answer the backend's SYN-ACK with the ACK the client would have sent,
    /// or with the client segment held for it.
    AckToBackend,
    /// Hold a client segment until the backend answers.
    HoldSegment,
    /// Not the proxy's: an IPv4 UDP datagram, for the UDP path (inlined
    /// into the TCP program, its stack would overflow the verifier's limit).
    Udp,
    /// Refuse the TCP segment in the frame with a RST (rebuilding the frame
    /// as a RST needs a call chain the TCP program has no stack left for).
    Rst,
    /// An ICMP error quoting a UDP datagram: translated for its UDP flow as
    /// the TCP program translates one about a TCP flow, off its stack.
    IcmpUdp,
    /// Not the proxy's: an IPv6 frame, for the IPv6 path (TCP and UDP
    /// services, in each forwarding mode): its established TCP path, and the dispatch to
    /// the IPv6 jobs below, each a program of its own for the same reason.
    Ipv6,
    /// An IPv6 TCP segment of no usable flow: open one.
    Tcp6Open,
    /// An IPv6 TCP segment to the SNAT range (or, `gateway`, to a client):
    /// a backend's reply.
    Tcp6Reply,
    /// An IPv6 UDP datagram.
    Udp6,
    /// An IPv6 UDP datagram to the SNAT range, or to no service where a
    /// `gateway` service ever was: a backend's reply, or the kernel's.
    Udp6Reply,
    /// Refuse the IPv6 TCP segment in the frame with a RST.
    Rst6,
    /// An ICMPv6 message: an error about a pinned flow is translated.
    Icmp6,
    /// [`Job::SynAck`] for a SYN to an IPv6 VIP.
    SynAck6,
    /// An IPv6 TCP segment of no usable flow to a service in a proxy mode:
    /// the proxy's verdict.
    Tcp6Proxy,
    /// An IPv6 ACK proved its cookie: pin its flow as its SYN would have.
    Proven6,
    /// [`Job::OpenBackend`] for an IPv6 flow.
    OpenBackend6,
    /// [`Job::ResendSyn`] for an IPv6 flow.
    ResendSyn6,
    /// [`Job::AckToBackend`] for an IPv6 flow.
    AckToBackend6,
    /// [`Job::HoldSegment`] for an IPv6 flow.
    HoldSegment6,
    /// An IPv6 connection request that found no free SNAT pair: claim the
    /// pair of a flow that has ended (the takeover's call does not fit
    /// [`Job::Tcp6Open`]'s stack).
    Tcp6TakeOver,
    /// An IPv6 connection request whose SNAT pair [`Job::Tcp6TakeOver`]
    /// claimed: open its flow there.
    Tcp6Taken,
    /// An IPv6 UDP datagram to a service, of no usable flow: open one (the
    /// generic flow logic's modes do not fit the datagram program's stack
    /// besides its pinned path).
    Udp6Open,
    /// An IPv6 `dsr` packet, to the on-link backend in `DSR6_BACKEND`: sent
    /// on by MAC (a route lookup of its own, off the choosing program's
    /// stack).
    Dsr6,
    /// An IPv6 TCP segment or UDP datagram the LB translated, too big for
    /// its route (the egress MTU in `TOO_BIG6_MTU`): answered with ICMPv6
    /// Packet Too Big (building the answer in the packet needs a stack of
    /// its own).
    TooBig6,
    /// [`Job::Tcp6TakeOver`] for an IPv6 ACK that proved its cookie and
    /// found no free SNAT pair ([`Job::Proven6`]).
    Proven6TakeOver,
    /// [`Job::Tcp6Taken`] for the proven ACK whose pair
    /// [`Job::Proven6TakeOver`] claimed.
    Proven6Taken,
}

/// Each job's program name, by job index.
pub const JOB_PROGRAMS: [&str; 29] = [
    "bg_lb_syn_ack",
    "bg_lb_open_backend",
    "bg_lb_resend_syn",
    "bg_lb_ack_to_backend",
    "bg_lb_hold_segment",
    "bg_lb_udp",
    "bg_lb_rst",
    "bg_lb_icmp_udp",
    "bg_lb_ipv6",
    "bg_lb_tcp6_open",
    "bg_lb_tcp6_reply",
    "bg_lb_udp6",
    "bg_lb_udp6_reply",
    "bg_lb_rst6",
    "bg_lb_icmp6",
    "bg_lb_syn_ack6",
    "bg_lb_tcp6_proxy",
    "bg_lb_proven6",
    "bg_lb_open_backend6",
    "bg_lb_resend_syn6",
    "bg_lb_ack_to_backend6",
    "bg_lb_hold_segment6",
    "bg_lb_tcp6_take_over",
    "bg_lb_tcp6_taken",
    "bg_lb_udp6_open",
    "bg_lb_dsr6",
    "bg_lb_too_big6",
    "bg_lb_proven6_take_over",
    "bg_lb_proven6_taken",
];

/// The flood detector's window.
pub const WINDOW_NS: u64 = 1_000_000_000;
/// Auto mode: the proxy stays on this long after the last window over the
/// threshold, so a flood keeps it on and its end turns it off soon after.
pub const HOLD_NS: u64 = 10 * WINDOW_NS;
/// A segment without a flow is checked for a cookie until this long after
/// the proxy was last on: the kernel accepts a cookie for up to two of its
/// one-minute periods, and a client that got one must still get in.
pub const COOKIE_LIFETIME_NS: u64 = 180 * WINDOW_NS;
/// A proxied flow whose backend has not answered this long after the LB's
/// SYN gets the SYN again at the client's next segment.
pub const SYN_RETRANSMIT_NS: u64 = 200_000_000;

/// The MSS values a SYN cookie can encode (the kernel's table for IPv4),
/// largest first: a cookie carries the largest one not above the client's.
pub const COOKIE_MSS: [u16; 4] = [1460, 1440, 1300, 536];
/// The MSS assumed for a cookie whose value cannot be read back (RFC 9293's
/// default, which every path carries).
pub const DEFAULT_MSS: u16 = 536;
/// [`COOKIE_MSS`] for IPv6 (the kernel's table: links of 9000, 1500, 1480
/// and 1280 bytes less 60 for the headers), largest first.
pub const COOKIE_MSS6: [u16; 4] = [8940, 1440, 1420, 1220];
/// [`DEFAULT_MSS`] for IPv6: IPv6's minimum MTU, 1280, less the headers.
pub const DEFAULT_MSS6: u16 = 1220;
/// How much larger an IPv6 header is than an option-less IPv4 one: an IPv6
/// SYN-ACK offers the service's `syn_proxy_mss` (an IPv4 value) less this,
/// for the same link MTU.
pub const IPV6_MSS_REDUCTION: u16 = 20;
/// The MSS a service's SYN-ACKs offer clients unless configured otherwise:
/// an Ethernet MTU without IP or TCP options.
pub const DEFAULT_OFFERED_MSS: u16 = 1460;
/// Auto mode's default threshold: connection requests left unanswered in
/// one second before the proxy engages.
pub const DEFAULT_THRESHOLD: u32 = 1000;

/// Whether the proxy answers SYNs for a service with `flags` now.
#[inline(always)]
pub const fn is_active(flags: u32, flood: &SynFlood, now_ns: u64) -> bool {
    flags & SYN_PROXY_ALWAYS != 0 || (flags & SYN_PROXY_AUTO != 0 && flood.active_until_ns > now_ns)
}

/// Whether a segment without a flow may be a cookie's ACK: the proxy is on,
/// or was within a cookie's lifetime.
#[inline(always)]
pub const fn accepts_cookies(flags: u32, flood: &SynFlood, now_ns: u64) -> bool {
    flags & SYN_PROXY_ALWAYS != 0
        || (flags & SYN_PROXY_AUTO != 0
            && flood.active_until_ns != 0
            && flood.active_until_ns.saturating_add(COOKIE_LIFETIME_NS) > now_ns)
}

/// Whether the detector's window that began at `start_ns` is over.
#[inline(always)]
pub const fn window_over(start_ns: u64, now_ns: u64) -> bool {
    now_ns.saturating_sub(start_ns) >= WINDOW_NS
}

/// The detector's rule: more connection requests than completed handshakes
/// in one window, by more than `threshold`, is a flood.
#[inline(always)]
pub const fn flooded(requests: u64, completed: u64, threshold: u32) -> bool {
    requests.saturating_sub(completed) > threshold as u64
}

/// Whether the proxy was already kept on during the current window, so the
/// detector need not count (sparing a flood one shared atomic add per SYN).
#[inline(always)]
pub const fn extended_this_window(active_until_ns: u64, now_ns: u64) -> bool {
    active_until_ns >= now_ns.saturating_add(HOLD_NS - WINDOW_NS)
}

/// A proxied flow's offset once the backend answered with `backend_isn` to
/// the connection whose client got `cookie` as the VIP's ISN.
#[inline(always)]
pub const fn seq_delta(backend_isn: u32, cookie: u32) -> u32 {
    backend_isn.wrapping_sub(cookie)
}

/// A backend's sequence number as the client knows it.
#[inline(always)]
pub const fn seq_to_client(seq: u32, delta: u32) -> u32 {
    seq.wrapping_sub(delta)
}

/// A client's acknowledgment number as the backend knows it.
#[inline(always)]
pub const fn ack_to_backend(ack: u32, delta: u32) -> u32 {
    ack.wrapping_add(delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flood(active_until_ns: u64) -> SynFlood {
        SynFlood {
            active_until_ns,
            ..SynFlood::default()
        }
    }

    #[test]
    fn always_is_active_and_off_never_whatever_the_detector_says() {
        assert!(is_active(SYN_PROXY_ALWAYS, &flood(0), 5));
        assert!(!is_active(0, &flood(u64::MAX), 5));
        assert!(accepts_cookies(SYN_PROXY_ALWAYS, &flood(0), 5));
        assert!(!accepts_cookies(0, &flood(u64::MAX), 5));
    }

    #[test]
    fn auto_is_active_until_the_hold_ends_and_takes_cookies_for_their_lifetime() {
        let until = 100 * WINDOW_NS;
        assert!(is_active(SYN_PROXY_AUTO, &flood(until), until - 1));
        assert!(!is_active(SYN_PROXY_AUTO, &flood(until), until));
        assert!(accepts_cookies(
            SYN_PROXY_AUTO,
            &flood(until),
            until + COOKIE_LIFETIME_NS - 1
        ));
        assert!(!accepts_cookies(
            SYN_PROXY_AUTO,
            &flood(until),
            until + COOKIE_LIFETIME_NS
        ));
        assert!(
            !accepts_cookies(SYN_PROXY_AUTO, &flood(0), 1),
            "a service whose proxy never engaged issued no cookie"
        );
    }

    #[test]
    fn the_detector_trips_on_unanswered_requests_above_the_threshold() {
        assert!(!flooded(1000, 0, 1000));
        assert!(flooded(1001, 0, 1000));
        assert!(!flooded(5000, 4500, 1000), "answered requests are no flood");
        assert!(!flooded(3, 10, 0), "more completions than requests (a window boundary)");
        assert!(window_over(0, WINDOW_NS) && !window_over(1, WINDOW_NS));
    }

    #[test]
    fn an_extension_within_the_window_stops_the_counting() {
        let now = 50 * WINDOW_NS;
        assert!(extended_this_window(now + HOLD_NS, now));
        assert!(extended_this_window(now + HOLD_NS - WINDOW_NS, now));
        assert!(!extended_this_window(now + HOLD_NS - WINDOW_NS - 1, now));
        assert!(!extended_this_window(0, now));
    }

    #[test]
    fn sequence_numbers_translate_both_ways_across_the_wrap() {
        for (backend_isn, cookie) in [(5, 10), (u32::MAX - 3, 7), (0x8000_0000, 0x7fff_ffff)] {
            let delta = seq_delta(backend_isn, cookie);
            assert_eq!(
                seq_to_client(backend_isn.wrapping_add(1), delta),
                cookie.wrapping_add(1)
            );
            assert_eq!(
                ack_to_backend(cookie.wrapping_add(1), delta),
                backend_isn.wrapping_add(1)
            );
            assert_eq!(seq_to_client(ack_to_backend(12345, delta), delta), 12345);
        }
    }

    #[test]
    fn jobs_index_their_programs() {
        let jobs = [
            Job::SynAck,
            Job::OpenBackend,
            Job::ResendSyn,
            Job::AckToBackend,
            Job::HoldSegment,
            Job::Udp,
            Job::Rst,
            Job::IcmpUdp,
            Job::Ipv6,
            Job::Tcp6Open,
            Job::Tcp6Reply,
            Job::Udp6,
            Job::Udp6Reply,
            Job::Rst6,
            Job::Icmp6,
            Job::SynAck6,
            Job::Tcp6Proxy,
            Job::Proven6,
            Job::OpenBackend6,
            Job::ResendSyn6,
            Job::AckToBackend6,
            Job::HoldSegment6,
            Job::Tcp6TakeOver,
            Job::Tcp6Taken,
            Job::Udp6Open,
            Job::Dsr6,
            Job::TooBig6,
            Job::Proven6TakeOver,
            Job::Proven6Taken,
        ];
        assert_eq!(jobs.len(), JOB_PROGRAMS.len());
        for (i, job) in jobs.into_iter().enumerate() {
            assert_eq!(job as usize, i);
        }
    }

    #[test]
    fn cookie_mss_values_are_the_kernels_largest_first() {
        assert!(COOKIE_MSS.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(COOKIE_MSS.last(), Some(&DEFAULT_MSS));
        assert!(COOKIE_MSS6.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(COOKIE_MSS6.last(), Some(&DEFAULT_MSS6));
    }
}
