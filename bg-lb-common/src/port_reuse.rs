//! When a new connection may take over a (backend, SNAT port) whose
//! reverse-NAT entry still names an older flow, rather than wait for the
//! sweep to remove that flow after `closing`.
//!
//! The port's 4-tuple towards the backend is reused as is, so the takeover
//! is safe only if the backend will accept the new SYN on it and the old
//! connection can no longer be hurt:
//! - the owner flow is gone, or no longer pinned to the port: free, unless
//!   its 5-tuple's newer flow is pinned elsewhere ([`newer_flow_guards`]);
//! - the old connection ended by an accepted RST: the backend dropped it;
//! - the client closed first and acknowledged the backend's FIN: the
//!   backend went LAST_ACK -> CLOSED (the client's TIME_WAIT is on its own
//!   4-tuple, client -> VIP, which the takeover does not touch);
//! - the backend closed first: it holds TIME_WAIT on the 4-tuple, and the
//!   port is taken only by a SYN that TIME_WAIT accepts ([`time_wait_accepts`],
//!   Linux's rule), or once TIME_WAIT has surely expired ([`TIME_WAIT_NS`]).
//!
//! Even then, a port is taken only [`SETTLE_NS`] after its flow's last
//! packet. Anything else is not reusable: a live or half-closed connection, and an
//! embryonic one (the backend's request socket answers a SYN with another
//! sequence number on its 4-tuple with a RST, `tcp_check_req`, until the
//! sweep removes the flow after `timeouts.syn`).
//!
//! These rules keep another client's SYN off a 4-tuple the backend still
//! holds. Under `gateway` a 5-tuple's own reconnection meets none of that
//! ([`reconnects_on_own_4_tuple`]): it takes its ended flow's pair back at once.

use crate::{
    flow_state::{BACKEND_CLOSED_FIRST, CLIENT_TIMESTAMPS, RESET, after, has_ended},
    maps::{FlowKeyOf, FlowOf, WireAddr},
};

/// How long after a flow's last packet the backend's TIME_WAIT has surely
/// ended: Linux's `TCP_TIMEWAIT_LEN` (60 s; every segment TIME_WAIT gets
/// starts it again), plus a second for segments still in flight.
pub const TIME_WAIT_NS: u64 = 61_000_000_000;

/// How long after a flow's last packet its port stays its own even once
/// it may be reused: the backend must have processed that packet (the
/// client's FIN or last ACK) before the new SYN reaches it, which takes
/// longer than the wire order suggests when the backend's application
/// holds the socket (Linux then queues the segment in the socket's
/// backlog, and a SYN arriving meanwhile meets the old state).
pub const SETTLE_NS: u64 = 200_000_000;

/// TCP option kinds the timestamp parser steps over or reads (RFC 9293,
/// RFC 7323).
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_TIMESTAMP: u8 = 8;
const TCPOLEN_TIMESTAMP: u8 = 10;
/// Where a TCP header's options start, and the longest header.
const TCP_OPTIONS_OFFSET: usize = 20;
const TCP_MAX_HEADER: usize = 60;

/// What the SYN the backend will get carries, in host order. Plain
/// fields, not an `Option`: the data plane keeps it on the stack, and the
/// verifier refuses a `None` whose undefined payload LLVM filled from a
/// pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syn {
    pub seq: u32,
    /// Its timestamp option's TSval; 0 without one.
    pub tsval: u32,
    /// 1 if it has a timestamp option.
    pub timestamped: u32,
}

impl Syn {
    #[inline(always)]
    pub fn new(seq: u32, tsval: Option<u32>) -> Self {
        Self {
            seq,
            tsval: tsval.unwrap_or(0),
            timestamped: tsval.is_some() as u32,
        }
    }
}

/// Whether a new connection may take over the port `owner` holds, for the
/// SYN `syn`, at `now_ns`. `owner` is the flow the reverse-NAT entry names,
/// if it is still in the flow table and pinned to this port.
#[inline(always)]
pub fn reusable<A: WireAddr>(owner: Option<&FlowOf<A>>, syn: &Syn, now_ns: u64) -> bool {
    let Some(flow) = owner else {
        return true;
    };
    if !has_ended(flow.state) || now_ns.saturating_sub(flow.last_seen_ns) < SETTLE_NS {
        return false;
    }
    if now_ns.saturating_sub(flow.last_seen_ns) >= TIME_WAIT_NS {
        return true;
    }
    if flow.state & BACKEND_CLOSED_FIRST != 0 {
        return time_wait_accepts(flow, syn);
    }
    // Reset, or closed by the client: the backend's last state was
    // LAST_ACK, which the client's ACK of its FIN ended.
    flow.state & RESET != 0 || !after(flow.backend.end, flow.client.ack)
}

/// Whether the SYN of 5-tuple `key` takes back, without the rules above,
/// the pair whose entry names `owner` and whose flow, pinned to it, is
/// `flow`: `owner` is `key` itself, the pair is the client's own address
/// and port (`gateway`), and `flow` has ended. The backend then sees the
/// new connection on the very 4-tuple the client's own stack chose to
/// reuse, exactly as without a load balancer: the client's stack and the
/// backend's TIME_WAIT decide (it accepts a SYN with a newer TSval or a
/// later sequence number, else answers with an ACK that the client resets
/// before it retries). Refusing it instead would leave the client a RST,
/// as its port is the flow's only candidate. A live flow keeps its pair,
/// and another 5-tuple (the same client address and port through another
/// VIP) still meets the rules above.
#[inline(always)]
pub fn reconnects_on_own_4_tuple<A: WireAddr>(owner: &FlowKeyOf<A>, key: &FlowKeyOf<A>, flow: &FlowOf<A>) -> bool {
    same_key(owner, key)
        && flow.snat_addr == key.client_addr
        && flow.snat_port == key.client_port
        && has_ended(flow.state)
}

/// `a == b`, written out: LLVM turns the derived comparison into a call
/// to `bcmp`, a BPF-to-BPF call whose frame the data plane's stack has no
/// room for.
#[inline(always)]
pub fn same_key<A: WireAddr>(a: &FlowKeyOf<A>, b: &FlowKeyOf<A>) -> bool {
    a.client_addr.differs(&b.client_addr)
        | a.vip_addr.differs(&b.vip_addr)
        | (a.client_port ^ b.client_port) as u32
        | (a.vip_port ^ b.vip_port) as u32
        | (a.proto ^ b.proto) as u32
        == 0
}

/// Whether `newer`, a flow whose 5-tuple's reverse entry names a pair it is
/// not pinned to (its SYN replaced the ended flow that was, and took
/// another pair), still keeps that pair from being taken over at `now_ns`.
/// The ended flow closed before `newer` opened, so its backend's TIME_WAIT
/// on the pair is over [`TIME_WAIT_NS`] after `newer.created_ns`; until
/// then nothing else records how it closed, so the pair is not free. The
/// sweep keeps such a flow as long (`flow_state::GUARDS_TIME_WAIT`):
/// without it, the pair's entry would name no flow and count as free.
#[inline(always)]
pub fn newer_flow_guards<A: WireAddr>(newer: &FlowOf<A>, now_ns: u64) -> bool {
    now_ns.saturating_sub(newer.created_ns) < TIME_WAIT_NS
}

/// Whether the backend's TIME_WAIT of `flow` (the backend closed first)
/// accepts `syn` as a new connection, as Linux decides it in
/// `tcp_timewait_state_process` (net/ipv4/tcp_minisocks.c):
///
/// ```c
/// if (th->syn && !th->rst && !th->ack && !paws_reject &&
///     (after(TCP_SKB_CB(skb)->seq, tcptw->tw_rcv_nxt) ||
///      (tmp_opt.saw_tstamp &&
///       (s32)(tcptw->tw_ts_recent - tmp_opt.rcv_tsval) < 0)))
/// ```
///
/// The timestamp is read only if the old connection used timestamps
/// (`tw_ts_recent_stamp`), and `paws_reject` is `tcp_paws_reject` with a
/// window of 0: the TSval is older than `ts_recent` (and `ts_recent` is not
/// 0; the 24-day `TCP_PAWS_WRAP` case never arises within TIME_WAIT).
/// `tw_rcv_nxt` is the end of the client's FIN (`flow.client.end`);
/// `tw_ts_recent` the newest TSval the client sent since (`client_tsval`).
/// Otherwise TIME_WAIT answers with an ACK of the old connection, and the
/// new client waits a second to retry: the stall this rule avoids.
#[inline(always)]
pub fn time_wait_accepts<A: WireAddr>(flow: &FlowOf<A>, syn: &Syn) -> bool {
    let ts_recent = flow.client_tsval;
    // saw_tstamp: the SYN's option is read only if the old connection had
    // timestamps.
    let saw_tstamp = syn.timestamped != 0 && flow.state & CLIENT_TIMESTAMPS != 0;
    let age = ts_recent.wrapping_sub(syn.tsval) as i32;
    let paws_reject = saw_tstamp && ts_recent != 0 && age > 0;
    let newer_ts = saw_tstamp && age < 0;
    !paws_reject && (after(syn.seq, flow.client.end) || newer_ts)
}

/// How many options (a NOP counts as one) [`tcp_timestamp`] walks before
/// it gives up. Stacks put the timestamp among the first five (Linux: NOP,
/// NOP, TS on a segment; MSS, SACK permitted, TS on a SYN); a bound this
/// small keeps the eBPF verifier's work small.
pub const TCP_OPTIONS_WALKED: usize = 10;

/// The TSval of the timestamp option of a TCP header of `len` bytes
/// (options included) whose byte at offset `at` is `byte_at(at)` (and the
/// big-endian u32 there `u32_at(at)`), if it has a well-formed one among
/// its first [`TCP_OPTIONS_WALKED`] options.
/// The data plane reads the packet itself: a copy of the header would cost
/// stack it does not have.
#[inline(always)]
pub fn tcp_timestamp(
    len: u32,
    byte_at: impl Fn(usize) -> Option<u8>,
    u32_at: impl Fn(usize) -> Option<u32>,
) -> Option<u32> {
    let end = (len as usize).min(TCP_MAX_HEADER);
    let mut at = TCP_OPTIONS_OFFSET;
    for _ in 0..TCP_OPTIONS_WALKED {
        if at >= end {
            return None;
        }
        match byte_at(at)? {
            TCPOPT_EOL => return None,
            TCPOPT_NOP => at += 1,
            kind => {
                let opt_len = byte_at(at + 1)? as usize;
                if opt_len < 2 || at + opt_len > end {
                    return None;
                }
                if kind == TCPOPT_TIMESTAMP {
                    if opt_len != TCPOLEN_TIMESTAMP as usize {
                        return None;
                    }
                    return u32_at(at + 2);
                }
                at += opt_len;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
