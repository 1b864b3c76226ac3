//! Health probes: one per backend and check, and what a report changes.

use super::Daemon;
use crate::{
    config::{HealthCheck, ServiceConfig},
    desired::{self, HealthView},
    family::Family,
    health::{self, CheckKey, Listener, Report, Transition},
    ratio::Pool,
};

/// A service's checks: the live check of every backend, and the standby
/// check where a standby VIP of the backend's family uses HTTP checks.
pub(super) fn check_keys(service: &ServiceConfig) -> impl Iterator<Item = CheckKey> + '_ {
    let http = matches!(service.health.check, HealthCheck::Http(_));
    service.backends.iter().flat_map(move |backend| {
        let family = Family::of_socket(backend.address);
        let standby = http && service.standby_vips.iter().any(|v| Family::of_socket(*v) == family);
        let listeners = [Some(Listener::Live), standby.then_some(Listener::Standby)];
        listeners.into_iter().flatten().map(move |listener| CheckKey {
            service: service.name.clone(),
            backend: backend.address,
            listener,
        })
    })
}

impl Daemon {
    /// One probe per backend for the live check, and one for the standby
    /// check where a standby VIP uses HTTP checks.
    pub(super) fn restart_probes(&mut self) {
        for probe in self.probes.drain(..) {
            probe.abort();
        }
        // Probes come from the first SNAT address of the backend's family,
        // whichever flows use: its ports outside snat_ports are the
        // kernel's to hand out.
        let checks: Vec<_> = self
            .config
            .services
            .iter()
            .flat_map(|service| check_keys(service).map(move |key| (service, key)))
            .collect();
        let count = checks.len();
        for (nth, (service, key)) in checks.into_iter().enumerate() {
            let Some(source) = self.config.probe_source(Family::of_socket(key.backend)) else {
                // Validation gives every backend's family a SNAT address.
                tracing::error!(service = %service.name, backend = %key.backend, "no SNAT address of the backend's family to probe from");
                continue;
            };
            // A check down now (or before the restart) stays down until `rise`.
            let known_down = self.health.get(&key).is_some_and(|v| !v.up);
            let first_delay = health::first_check_delay(service.health.fast_interval, nth, count);
            let probe = health::spawn_probe(
                key,
                service.health.clone(),
                source,
                (known_down, first_delay),
                self.reports.clone(),
            );
            self.probes.push(probe);
        }
        // Forget the health of probes that no longer exist.
        let services = &self.config.services;
        let exists = |key: &CheckKey| {
            services
                .iter()
                .any(|s| s.name == key.service && s.backends.iter().any(|b| b.address == key.backend))
        };
        self.health.retain(|key, _| exists(key));
        self.last_health.retain(exists);
        self.probe_stats.retain(|key, _| exists(key));
    }

    /// A probe's result: a state change rebuilds the service's tables at once
    /// (new flows avoid a down backend; its open flows drain or are reset).
    pub fn on_health(&mut self, report: Report) {
        let Ok(service) = self.service(&report.key.service).cloned() else {
            return;
        };
        self.probe_stats.entry(report.key.clone()).or_default().record(&report);
        let view = HealthView {
            up: report.up,
            last: report.outcome.clone(),
        };
        self.health.insert(report.key.clone(), view);
        self.last_health.record(&report.key, report.up);
        let Some(transition) = report.transition else { return };
        let (name, backend, listener) = (&report.key.service, report.key.backend, report.key.listener);
        match (transition, &report.outcome) {
            (Transition::WentDown, Err(reason)) => {
                tracing::warn!(service = %name, %backend, ?listener, %reason, "backend DOWN")
            }
            _ => tracing::info!(service = %name, %backend, ?listener, "backend UP"),
        }
        if let Err(e) = self.apply_service(&service) {
            tracing::error!(service = %name, error = %e, "cannot apply a health change");
        }
        self.log_pool_health(&service);
    }

    /// Loud when a pool with a share has no healthy backend left.
    pub(super) fn log_pool_health(&self, service: &ServiceConfig) {
        let operator = self.operator.services.get(&service.name);
        let spec = desired::live_spec(service, operator, &self.health);
        let serving = |pool| spec.backends.iter().any(|b| b.pool == pool && b.weight > 0);
        match (serving(Pool::Blue), serving(Pool::Green)) {
            (false, false) => {
                tracing::error!(service = %service.name, "NO healthy backend in either pool: new connections are refused")
            }
            (blue, green) => {
                for (pool, ok) in [(Pool::Blue, blue), (Pool::Green, green)] {
                    if !ok && spec.ratio.share(pool) > 0 {
                        tracing::error!(service = %service.name, %pool, "pool has no healthy backend: its share goes to the other pool");
                    }
                }
            }
        }
    }
}
