//! Slow start in the daemon (see [`crate::slow_start`]): every time a
//! service's live table is computed, the ramps see the weights it would get
//! and scale them down; each tick rebuilds the tables of the services whose
//! ramps moved a step, so a table is rebuilt at most once a second per
//! service, and at most [`crate::slow_start::RAMP_STEPS`] times per ramp.

use std::time::Instant;

use super::Daemon;
use crate::{config::ServiceConfig, dataplane::services::ServiceSpec};

impl Daemon {
    /// Observes `live`'s weights and ramps them: for the table to program.
    pub(super) fn slow_start(&mut self, service: &ServiceConfig, live: &mut ServiceSpec) {
        let Some(period) = service.slowstart else {
            self.ramps.remove(&service.name);
            return;
        };
        let now = Instant::now();
        let ramps = self.ramps.entry(service.name.clone()).or_default();
        ramps.observe(live.backends.iter().map(|b| (b.addr, b.weight)), now, period);
        let mut ramping = Vec::new();
        for backend in &mut live.backends {
            let full = backend.weight;
            backend.weight = ramps.weight(backend.addr, full, now, period);
            if backend.weight != full {
                ramping.push(format!("{} at {}/{full}", backend.addr, backend.weight));
            }
        }
        if !ramping.is_empty() {
            tracing::info!(service = %service.name, ramping = %ramping.join(", "), "slow start: weights ramping");
        }
    }

    /// `live`'s weights as the last programmed table has them, for `status`.
    pub(super) fn ramped(&self, service: &ServiceConfig, live: &mut ServiceSpec) {
        let (Some(period), Some(ramps)) = (service.slowstart, self.ramps.get(&service.name)) else {
            return;
        };
        let now = Instant::now();
        for backend in &mut live.backends {
            backend.weight = ramps.weight(backend.addr, backend.weight, now, period);
        }
    }

    /// Rebuilds the tables whose ramps moved a step; called once a second.
    pub(super) fn tick_slow_starts(&mut self) {
        let now = Instant::now();
        // Services a reload removed leave their ramps behind.
        let services = &self.config.services;
        self.ramps.retain(|name, _| services.iter().any(|s| &s.name == name));
        let due: Vec<ServiceConfig> = self
            .config
            .services
            .iter()
            .filter(|s| {
                let ramps = self.ramps.get(&s.name);
                s.slowstart.zip(ramps).is_some_and(|(period, r)| r.due(now, period))
            })
            .cloned()
            .collect();
        for service in due {
            if let Err(e) = self.apply_service(&service) {
                tracing::error!(service = %service.name, error = %e, "slow start: cannot rebuild the table");
            }
        }
    }
}
