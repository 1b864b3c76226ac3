//! Which flows `ctl flows` lists, decided as flows are read: at most
//! `limit`, open ones first, in bounded memory, and whether more matched.

use crate::dataplane::FlowView;

/// Up to `limit` flows that have not ended, open ones first.
#[derive(Debug, Default)]
pub struct FlowListing {
    pub flows: Vec<FlowView>,
    /// More flows matched than are listed.
    pub truncated: bool,
    /// Flow-table entries read.
    pub scanned: u64,
}

/// Collects the flows offered, keeping at most `limit` of each kind.
pub(super) struct Picker {
    limit: usize,
    open: Vec<FlowView>,
    embryonic: Vec<FlowView>,
    matched: u64,
    /// An open flow was offered with `limit` kept: nothing offered later
    /// can be listed.
    full: bool,
}

impl Picker {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            open: Vec::new(),
            embryonic: Vec::new(),
            matched: 0,
            full: false,
        }
    }

    /// Whether reading more flows could change the listing.
    pub(super) fn wants_more(&self) -> bool {
        !self.full
    }

    /// A flow that matched the query (its phase is not closed).
    pub(super) fn offer(&mut self, flow: FlowView) {
        self.matched += 1;
        let open = flow.phase.is_open();
        let kept = if open { &mut self.open } else { &mut self.embryonic };
        if kept.len() < self.limit {
            kept.push(flow);
        } else {
            self.full |= open;
        }
    }

    pub(super) fn finish(mut self, scanned: u64) -> FlowListing {
        let truncated = self.full || self.matched > self.limit as u64;
        self.open.extend(self.embryonic);
        self.open.truncate(self.limit);
        FlowListing {
            flows: self.open,
            truncated,
            scanned,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, SocketAddrV4},
        time::Duration,
    };

    use bg_lb_common::flow_state::FlowPhase;

    use super::*;
    use crate::ratio::Pool;

    fn view(port: u16, phase: FlowPhase) -> FlowView {
        let addr = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), port).into();
        FlowView {
            client: addr,
            backend: addr,
            pool: Pool::Blue,
            phase,
            age: Duration::ZERO,
            idle: Duration::ZERO,
            protocol: None,
        }
    }

    fn ports(listing: &FlowListing) -> Vec<u16> {
        listing.flows.iter().map(|f| f.client.port()).collect()
    }

    #[test]
    fn open_flows_are_listed_before_embryonic_ones_up_to_the_limit() {
        let mut picker = Picker::new(3);
        picker.offer(view(1, FlowPhase::Embryonic));
        picker.offer(view(2, FlowPhase::Established));
        picker.offer(view(3, FlowPhase::Embryonic));
        picker.offer(view(4, FlowPhase::Closing));
        assert!(picker.wants_more(), "a third open flow would still be listed");
        let listing = picker.finish(10);
        assert_eq!(ports(&listing), [2, 4, 1]);
        assert!(listing.truncated, "four matched, three listed");
        assert_eq!(listing.scanned, 10);
    }

    #[test]
    fn a_listing_of_every_match_is_not_truncated() {
        let mut picker = Picker::new(3);
        picker.offer(view(1, FlowPhase::Embryonic));
        picker.offer(view(2, FlowPhase::Established));
        let listing = picker.finish(2);
        assert_eq!(ports(&listing), [2, 1]);
        assert!(!listing.truncated);
    }

    #[test]
    fn one_open_flow_past_the_limit_ends_the_reading() {
        let mut picker = Picker::new(2);
        for port in 1..=2 {
            picker.offer(view(port, FlowPhase::Established));
        }
        picker.offer(view(3, FlowPhase::Embryonic));
        assert!(picker.wants_more(), "embryonic flows never push out open ones");
        picker.offer(view(4, FlowPhase::Established));
        assert!(!picker.wants_more());
        let listing = picker.finish(4);
        assert_eq!(ports(&listing), [1, 2]);
        assert!(listing.truncated);
    }
}
