//! Drain deadlines (`ctl drain/promote --deadline`, a service's
//! `drain_deadline`): once a drained pool's deadline passes, the data plane
//! resets its connections still open at both ends
//! ([`crate::dataplane::Dataplane::reset_flows`]). The deadline is operator
//! state, so it survives a restart; a pool given a share again before its
//! deadline passes keeps its connections. In a fleet (`[cluster]`) every
//! host resets its own connections and adds its count to the deadline's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Daemon, RequestError};
use crate::{
    dataplane::{DataplaneError, listener::ListenerKey},
    desired,
    protocol::{PoolRequest, Reply},
    ratio::Pool,
    state_file::DrainDeadline,
};

impl Daemon {
    /// After a `drain` or `promote` that drained `drained`: records the
    /// deadline asked for, or the service's default (none: any earlier one
    /// is dropped), and says so in `reply`.
    pub(super) fn set_drain_deadline(
        &mut self,
        request: &PoolRequest,
        drained: Pool,
        mut reply: Reply,
    ) -> Result<Reply, RequestError> {
        let service = self.service(&request.service)?.clone();
        let after = request
            .deadline_secs
            .map(Duration::from_secs)
            .or(service.drain_deadline);
        let deadline = after.map(|after| DrainDeadline {
            pool: drained,
            at_unix_ms: unix_ms(SystemTime::now() + after),
            reset: None,
        });
        self.update_operator(&service, |state| state.drain_deadline = deadline)?;
        if let Some(after) = after {
            tracing::info!(
                service = service.name,
                pool = %drained,
                deadline = %humantime::format_duration(after),
                "drain deadline set: connections still open then will be reset"
            );
            reply.message = Some(format!(
                "{}: {drained}'s connections still open in {} will be reset",
                service.name,
                humantime::format_duration(after)
            ));
        }
        Ok(reply)
    }

    /// Resets the connections of every pool whose deadline passed; called
    /// once a second. A reset that fails is tried again at the next tick.
    pub(super) fn tick_drain_deadlines(&mut self) {
        let now = unix_ms(SystemTime::now());
        let due: Vec<_> = self
            .config
            .services
            .iter()
            .filter_map(|service| {
                let deadline = self.operator.services.get(&service.name)?.drain_deadline?;
                let done = self
                    .deadlines_done
                    .contains(&(service.name.clone(), deadline.at_unix_ms));
                (!done && deadline.at_unix_ms <= now).then(|| (service.clone(), deadline))
            })
            .collect();
        for (service, deadline) in due {
            let pool = deadline.pool;
            let ratio = desired::ratio(&service, self.operator.services.get(&service.name));
            let outcome = if ratio.share(pool) > 0 {
                tracing::info!(service = service.name, %pool, "drain deadline dropped: the pool takes connections again");
                None
            } else {
                match self.reset_pool(&service.keys().collect::<Vec<_>>(), pool) {
                    // Reset here already (a restarted daemon, or another host
                    // of the fleet saved first): nothing new to record.
                    Ok(0) if deadline.reset.is_some() => {
                        self.deadlines_done.insert((service.name.clone(), deadline.at_unix_ms));
                        continue;
                    }
                    Ok(reset) => {
                        self.deadlines_done.insert((service.name.clone(), deadline.at_unix_ms));
                        tracing::info!(
                            service = service.name,
                            %pool,
                            reset,
                            "drain deadline passed: connections still open were reset at both ends"
                        );
                        // A fleet's hosts add up their counts.
                        Some(DrainDeadline {
                            reset: Some(deadline.reset.unwrap_or(0) + reset),
                            ..deadline
                        })
                    }
                    Err(e) => {
                        tracing::error!(service = service.name, %pool, error = %e, "drain deadline: resetting connections failed");
                        continue;
                    }
                }
            };
            if let Err(e) = self.update_operator(&service, |state| state.drain_deadline = outcome) {
                tracing::error!(service = service.name, error = %e, "drain deadline: saving its outcome failed");
            }
            // A fresh census, so `wait-drained` sees the pool drained soon.
            self.request_sweep(Duration::ZERO);
        }
    }

    fn reset_pool(&mut self, keys: &[ListenerKey], pool: Pool) -> Result<u64, DataplaneError> {
        // Triggers arrive as on the front interface: the program routes each
        // RST from there, as it would a packet of the flow.
        let front = self.config.interfaces.names()[0].to_owned();
        let ifindex = nix::net::if_::if_nametoindex(front.as_str())
            .map_err(|cause| DataplaneError::Interface { name: front, cause })?;
        self.dataplane.reset_flows(keys, pool, ifindex)
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
