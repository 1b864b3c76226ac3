//! The host in its fleet (`[cluster]`): a revision of the operator state
//! written by another host's daemon replaces this host's services and is
//! programmed at once, exactly as a local change is; each second the host
//! publishes its counters and takes the lead of any running shift no live
//! host leads (see [`crate::cluster::lead`]).

use super::{Daemon, RequestError};
use crate::{
    cluster::{
        report::{self, HostHealth, HostReport},
        watch::FleetUpdate,
    },
    config::ServiceConfig,
    health::Listener,
    protocol::FleetStatus,
    shift::CountersByHost,
};

impl Daemon {
    /// Applies a new revision of the fleet state. A bad revision is logged
    /// and skipped: the host keeps forwarding with what it has.
    pub fn on_fleet(&mut self, update: FleetUpdate) {
        let Some(fleet) = self.store.fleet_mut() else {
            return;
        };
        let revision = update.revision;
        let services = match fleet.accept(update) {
            Ok(Some(services)) => services,
            Ok(None) => return,
            Err(error) => return tracing::error!(%error, revision, "fleet state not applied"),
        };
        let previous = std::mem::replace(&mut self.operator.services, services);
        self.follow_added_backends(&previous);
        if let Some(fleet) = self.store.fleet()
            && let Err(error) = fleet.cache(&self.operator)
        {
            tracing::warn!(%error, "the host's copy of the fleet state is not up to date");
        }
        // A shift stopped on another host (aborted there) is not driven here
        // any more.
        let stopped: Vec<String> = self
            .shifts
            .keys()
            .filter(|name| !self.shift_running(name))
            .cloned()
            .collect();
        for name in stopped {
            self.shifts.remove(&name);
            self.release_lead(&name);
            tracing::info!(service = %name, "the shift this host drove was stopped on another host");
        }
        match self.apply_all() {
            Ok(()) => tracing::info!(
                revision,
                changed = ?changed_services(&previous, &self.operator.services),
                "fleet state applied"
            ),
            Err(error) => tracing::error!(error = format!("{error:#}"), revision, "fleet state not programmed"),
        }
    }

    /// Publishes this host's report and settles who drives each running
    /// shift: a host that takes the lead resumes the shift from the step
    /// the fleet state records; one that lost it (its lease expired while
    /// etcd was away) stops driving.
    pub(super) fn tick_fleet(&mut self) {
        let Some(fleet) = self.store.fleet() else {
            return;
        };
        let counters = self
            .config
            .services
            .iter()
            .filter_map(|s| Some((s.name.clone(), self.pool_counters(s).ok()?)))
            .collect();
        fleet.publish(&HostReport {
            counters,
            health: self.health_view(),
        });
        let leads: Vec<_> = (self.running_shifts().into_iter())
            .map(|(name, record)| {
                let lead = fleet.lead(&name);
                (name, record, lead)
            })
            .collect();
        for (name, record, lead) in leads {
            match lead {
                Ok(true) if !self.shifts.contains_key(&name) => {
                    tracing::info!(service = %name, "this host took the lead of the running shift: resuming it");
                    let active = self.new_active_shift(&record.plan);
                    self.shifts.insert(name, active);
                }
                Ok(false) if self.shifts.remove(&name).is_some() => {
                    tracing::warn!(service = %name, "another host leads the shift now: this host stops driving it");
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(service = %name, %error, "shift lead not checked"),
            }
        }
    }

    /// Each checked backend's live health as this host sees it.
    fn health_view(&self) -> HostHealth {
        let mut view = HostHealth::new();
        for (key, health) in self.health.iter().filter(|(k, _)| k.listener == Listener::Live) {
            view.entry(key.service.clone())
                .or_default()
                .insert(key.backend, health.up);
        }
        view
    }

    /// What `status` shows of the fleet; `None` on a host alone.
    pub(super) fn fleet_status(&self) -> Option<FleetStatus> {
        let fleet = self.store.fleet()?;
        let mut leads: Vec<String> = self.shifts.keys().cloned().collect();
        leads.sort();
        let health_differs = match fleet.others() {
            Ok(others) => report::health_differences(&self.health_view(), &others),
            Err(_) => Vec::new(),
        };
        Some(fleet.status(leads, health_differs))
    }

    /// What a shift is judged on: this host's counters, plus with
    /// `[cluster]` every other live host's as last published (if etcd
    /// cannot say, this host's alone: no step is taken without etcd anyway).
    pub(super) fn shift_counters(&self, service: &ServiceConfig) -> Result<CountersByHost, RequestError> {
        let own = self.pool_counters(service)?;
        let Some(fleet) = self.store.fleet() else {
            return Ok(CountersByHost::from([(String::new(), own)]));
        };
        let mut counters = fleet.others_counters(&service.name).unwrap_or_else(|error| {
            tracing::debug!(service = %service.name, %error, "judging on this host's counters alone");
            CountersByHost::new()
        });
        counters.insert(fleet.host().to_owned(), own);
        Ok(counters)
    }

    /// The shift of `name` is over (or never started): its lead is free.
    pub(super) fn release_lead(&self, name: &str) {
        if let Some(fleet) = self.store.fleet() {
            fleet.step_down(name);
        }
    }
}

/// The services whose state differs between two revisions, for the log.
fn changed_services(
    old: &std::collections::BTreeMap<String, crate::state_file::ServiceState>,
    new: &std::collections::BTreeMap<String, crate::state_file::ServiceState>,
) -> Vec<String> {
    old.keys()
        .chain(new.keys())
        .filter(|name| old.get(*name) != new.get(*name))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}
