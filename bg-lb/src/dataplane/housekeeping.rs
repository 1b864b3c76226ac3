//! Flow-table housekeeping: expires closed and idle flows (and their
//! reverse-NAT entries) and counts each backend's open flows, which is what
//! "drained" means.

use std::{collections::HashMap, time::Duration};

use bg_lb_common::{
    flow_state::{ESTABLISHED, has_ended},
    maps::{Flow, FlowKey, NatKey},
};
use nix::time::{ClockId, clock_gettime};

use crate::dataplane::{Dataplane, DataplaneError};

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
    if has_ended(flow.state) {
        (idle >= timeouts.closing).then_some(Expiry::Closed)
    } else if flow.state & ESTABLISHED == 0 {
        (idle >= timeouts.syn).then_some(Expiry::HandshakeTimedOut)
    } else {
        (idle >= timeouts.established_idle).then_some(Expiry::Idle)
    }
}

/// Open flows are those that have not ended: what a drain waits for.
pub fn is_open(flow: &Flow) -> bool {
    !has_ended(flow.state)
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

/// Removes expired flows and counts the rest.
pub fn sweep(dataplane: &mut Dataplane, timeouts: &FlowTimeouts) -> Result<FlowCensus, DataplaneError> {
    let now = monotonic_now_ns();
    let backends: HashMap<u32, _> = dataplane.backends()?.into_iter().collect();
    let mut census = FlowCensus::default();
    let mut expired: Vec<(FlowKey, Flow, NatKey)> = Vec::new();
    for (key, flow) in dataplane.flows()? {
        if expiry(&flow, now, timeouts).is_some() {
            if let Some(backend) = backends.get(&flow.backend_id) {
                let nat = NatKey {
                    backend_addr: backend.addr,
                    backend_port: backend.port,
                    snat_port: flow.snat_port,
                };
                expired.push((key, flow, nat));
            }
            continue;
        }
        *census.total.entry(flow.backend_id).or_default() += 1;
        if is_open(&flow) {
            *census.open.entry(flow.backend_id).or_default() += 1;
        }
    }
    for (key, flow, nat) in &expired {
        dataplane.remove_flow(key, flow, nat)?;
    }
    census.expired = expired.len() as u64;
    Ok(census)
}

#[cfg(test)]
mod tests {
    use bg_lb_common::flow_state::{FIN_FROM_BACKEND, FIN_FROM_CLIENT, RESET, SYN_SEEN};

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
        assert!(is_open(&flow(SYN_SEEN | ESTABLISHED | FIN_FROM_CLIENT, 0)));
        assert!(!is_open(&flow(
            SYN_SEEN | ESTABLISHED | FIN_FROM_CLIENT | FIN_FROM_BACKEND,
            0
        )));
        assert!(!is_open(&flow(SYN_SEEN | RESET, 0)));
    }

    #[test]
    fn a_clock_behind_the_flow_never_expires_it() {
        assert_eq!(expiry(&flow(SYN_SEEN, 100), 50 * S, &T), None);
    }
}
