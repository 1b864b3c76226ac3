//! The flow census: housekeeping sweeps of the flow table, bounded in cost,
//! whose counts status, metrics and drains read.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use super::{Daemon, RequestError, SWEEP_DUTY_CYCLE};
use crate::dataplane::housekeeping::FlowCensus;

impl Daemon {
    /// Once a second: flow housekeeping, then progressive shifts, then SYN
    /// floods.
    pub fn tick(&mut self) {
        if let Err(e) = self.refresh_census(Duration::from_secs(1)) {
            tracing::error!(error = %e, "flow housekeeping failed");
        }
        self.tick_shifts();
        if let Err(e) = self.log_syn_floods() {
            tracing::error!(error = %e, "reading the SYN flood detectors failed");
        }
    }

    /// Sweeps again if the census is older than `max_age`, unless the last
    /// sweep was so costly (a huge flow table walked one syscall per entry)
    /// that sweeping now would keep the daemon busy more than a fifth of the
    /// time: requests and health reports must not wait behind sweeps.
    pub(super) fn refresh_census(&mut self, max_age: Duration) -> Result<(), RequestError> {
        let due = self
            .swept
            .is_none_or(|(at, cost)| at.elapsed() >= max_age.max(cost * SWEEP_DUTY_CYCLE));
        if due {
            let started = Instant::now();
            self.housekeeping()?;
            self.swept = Some((Instant::now(), started.elapsed()));
        }
        Ok(())
    }

    /// Sweeps the flow table: expires finished flows, frees drained ids.
    pub(super) fn housekeeping(&mut self) -> Result<&FlowCensus, RequestError> {
        let live: HashMap<SocketAddrV4, HashSet<SocketAddrV4>> = self
            .config
            .services
            .iter()
            .flat_map(|s| {
                let backends: HashSet<_> = s.backends.iter().map(|b| b.address).collect();
                std::iter::once(s.vip)
                    .chain(s.standby_vip)
                    .map(move |vip| (vip, backends.clone()))
            })
            .collect();
        self.census = self.dataplane.housekeeping(&self.config.timeouts, &live)?;
        Ok(&self.census)
    }
}
