//! Flow-table housekeeping, judged without the kernel: which flows have
//! expired (closed and idle ones, with their reverse-NAT entries) and how many
//! flows each backend still has, which is what "drained" means.
//! [`crate::dataplane::Dataplane::housekeeping`] reads the maps, asks
//! [`judge`], and removes what it returns.

use std::{collections::HashMap, time::Duration};

use bg_lb_common::{
    flow_state::{FlowPhase, phase},
    maps::{Backend, Flow, FlowKey, NatKey},
};
use nix::time::{ClockId, clock_gettime};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTimeouts {
    /// An established flow with no packet for this long is gone.
    pub established_idle: Duration,
    /// An ended flow (FIN both ways or RST) lingers this long for stragglers.
    pub closing: Duration,
    /// A SYN the backend never answered.
    pub syn: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    Closed,
    Idle,
    HandshakeTimedOut,
}

/// Whether `flow` should be removed at `now_ns` (CLOCK_MONOTONIC, the clock
/// of `bpf_ktime_get_ns`).
pub fn expiry(flow: &Flow, now_ns: u64, timeouts: &FlowTimeouts) -> Option<Expiry> {
    let idle = Duration::from_nanos(now_ns.saturating_sub(flow.last_seen_ns));
    let (timeout, expiry) = match phase(flow.state) {
        FlowPhase::Closed => (timeouts.closing, Expiry::Closed),
        FlowPhase::SynSent | FlowPhase::Closing { established: false } => (timeouts.syn, Expiry::HandshakeTimedOut),
        FlowPhase::Established | FlowPhase::Closing { established: true } => (timeouts.established_idle, Expiry::Idle),
    };
    (idle >= timeout).then_some(expiry)
}

pub fn monotonic_now_ns() -> u64 {
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Flow-table entries per backend id after a sweep.
#[derive(Debug, Default)]
pub struct FlowCensus {
    pub open: HashMap<u32, u64>,
    pub total: HashMap<u32, u64>,
    pub expired: u64,
}

impl FlowCensus {
    pub fn open_of(&self, backend_id: u32) -> u64 {
        self.open.get(&backend_id).copied().unwrap_or(0)
    }

    pub fn total_of(&self, backend_id: u32) -> u64 {
        self.total.get(&backend_id).copied().unwrap_or(0)
    }
}

/// A flow judged expired, with the reverse-NAT entry that belongs to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpiredFlow {
    pub key: FlowKey,
    /// As judged: it is removed only if the map still holds this flow.
    pub flow: Flow,
    pub reverse: NatKey,
}

/// Judges every flow at `now_ns`: the census of the flows that stay, and the
/// expired ones to remove. An expired flow whose backend entry is gone is
/// left alone (its reverse-NAT key is unknown).
pub fn judge(
    flows: impl IntoIterator<Item = (FlowKey, Flow)>,
    backends: &HashMap<u32, Backend>,
    now_ns: u64,
    timeouts: &FlowTimeouts,
) -> (FlowCensus, Vec<ExpiredFlow>) {
    let mut census = FlowCensus::default();
    let mut expired = Vec::new();
    for (key, flow) in flows {
        if expiry(&flow, now_ns, timeouts).is_some() {
            if let Some(backend) = backends.get(&flow.backend_id) {
                expired.push(ExpiredFlow {
                    key,
                    flow,
                    reverse: NatKey::new(backend, flow.snat_port),
                });
            }
            continue;
        }
        *census.total.entry(flow.backend_id).or_default() += 1;
        if phase(flow.state).is_open() {
            *census.open.entry(flow.backend_id).or_default() += 1;
        }
    }
    census.expired = expired.len() as u64;
    (census, expired)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use bg_lb_common::flow_state::{ESTABLISHED, FIN_FROM_BACKEND, FIN_FROM_CLIENT, RESET, SYN_SEEN};

    use super::*;

    const S: u64 = 1_000_000_000;
    const T: FlowTimeouts = FlowTimeouts {
        established_idle: Duration::from_secs(3600),
        closing: Duration::from_secs(10),
        syn: Duration::from_secs(30),
    };

    fn flow(state: u32, last_seen_s: u64) -> Flow {
        Flow {
            state,
            last_seen_ns: last_seen_s * S,
            ..Default::default()
        }
    }

    #[test]
    fn closed_flows_linger_for_the_closing_timeout() {
        let closed = flow(SYN_SEEN | ESTABLISHED | FIN_FROM_CLIENT | FIN_FROM_BACKEND, 100);
        assert_eq!(expiry(&closed, 109 * S, &T), None);
        assert_eq!(expiry(&closed, 110 * S, &T), Some(Expiry::Closed));
        assert_eq!(expiry(&flow(SYN_SEEN | RESET, 100), 110 * S, &T), Some(Expiry::Closed));
    }

    #[test]
    fn established_flows_live_until_idle_for_an_hour() {
        let f = flow(SYN_SEEN | ESTABLISHED, 100);
        assert_eq!(expiry(&f, (100 + 3599) * S, &T), None);
        assert_eq!(expiry(&f, (100 + 3600) * S, &T), Some(Expiry::Idle));
    }

    #[test]
    fn unanswered_syn_expires_after_the_syn_timeout() {
        assert_eq!(expiry(&flow(SYN_SEEN, 100), 129 * S, &T), None);
        assert_eq!(
            expiry(&flow(SYN_SEEN, 100), 130 * S, &T),
            Some(Expiry::HandshakeTimedOut)
        );
    }

    #[test]
    fn half_closed_flows_are_still_open() {
        let is_open = |f: Flow| phase(f.state).is_open();
        assert!(is_open(flow(SYN_SEEN | ESTABLISHED | FIN_FROM_CLIENT, 0)));
        assert!(!is_open(flow(
            SYN_SEEN | ESTABLISHED | FIN_FROM_CLIENT | FIN_FROM_BACKEND,
            0
        )));
        assert!(!is_open(flow(SYN_SEEN | RESET, 0)));
    }

    #[test]
    fn half_closed_flows_idle_out_as_their_handshake_left_them() {
        let answered = flow(SYN_SEEN | ESTABLISHED | FIN_FROM_CLIENT, 100);
        assert_eq!(expiry(&answered, 130 * S, &T), None);
        assert_eq!(expiry(&answered, (100 + 3600) * S, &T), Some(Expiry::Idle));
        let unanswered = flow(SYN_SEEN | FIN_FROM_CLIENT, 100);
        assert_eq!(expiry(&unanswered, 130 * S, &T), Some(Expiry::HandshakeTimedOut));
    }

    #[test]
    fn judging_counts_the_flows_that_stay_and_returns_the_expired_with_their_reverse_nat_key() {
        let backend = Backend::new(0, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 10), 8080), 0, false);
        let backends = HashMap::from([(3, backend)]);
        let key = |port| {
            FlowKey::from_client(
                SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 5), port),
                SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 80),
            )
        };
        let on = |backend_id, state, snat_port: u16| Flow {
            backend_id,
            snat_port: snat_port.to_be(),
            ..flow(state, 100)
        };
        let closed = on(3, SYN_SEEN | RESET, 20001);
        let flows = [
            (key(1), on(3, SYN_SEEN | ESTABLISHED, 20000)),
            (key(2), closed),
            (key(3), on(3, SYN_SEEN | ESTABLISHED | FIN_FROM_CLIENT, 20002)),
            (key(4), on(9, SYN_SEEN | RESET, 20003)),
        ];
        let (census, expired) = judge(flows, &backends, 110 * S, &T);
        assert_eq!(
            expired,
            [ExpiredFlow {
                key: key(2),
                flow: closed,
                reverse: NatKey::new(&backend, 20001u16.to_be()),
            }],
            "the expired flow of an unknown backend stays"
        );
        assert_eq!((census.total_of(3), census.open_of(3), census.expired), (2, 2, 1));
        assert_eq!((census.total_of(9), census.open_of(9)), (0, 0));
    }

    #[test]
    fn a_clock_behind_the_flow_never_expires_it() {
        assert_eq!(expiry(&flow(SYN_SEEN, 100), 50 * S, &T), None);
    }
}
