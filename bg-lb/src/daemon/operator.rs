//! Operator changes: ratio and backend changes, persisted first, then
//! programmed into the data plane; and programming services from config.

use std::{collections::HashSet, net::SocketAddr};

use anyhow::Context as _;

use super::{Daemon, RequestError};
use crate::{
    config::{self, ServiceConfig},
    dataplane::listener::ListenerKey,
    desired,
    protocol::{BackendAction, BackendWeight, RatioChange, Reply},
    ratio::{Pool, Ratio},
    state_file,
};

impl Daemon {
    /// Programs every configured service (live and standby VIPs) and removes
    /// the others.
    pub(super) fn apply_all(&mut self) -> anyhow::Result<()> {
        let wanted: HashSet<ListenerKey> = self.config.services.iter().flat_map(|s| s.keys()).collect();
        for key in self.dataplane.keys() {
            if !wanted.contains(&key) {
                self.dataplane.remove(&key)?;
                tracing::info!(listener = %key, "listener removed");
            }
        }
        for service in self.config.services.clone() {
            self.apply_service(&service)
                .with_context(|| format!("service {}", service.name))?;
        }
        Ok(())
    }

    /// Rebuilds the table of each listener of `service`: each live VIP's,
    /// then each standby VIP's, each over the backends of its family.
    pub(super) fn apply_service(&mut self, service: &ServiceConfig) -> Result<(), crate::dataplane::DataplaneError> {
        let operator = self.operator.services.get(&service.name);
        let mut live = desired::live_spec(service, operator, &self.health);
        let standby = desired::standby_spec(service, operator, &self.health);
        self.slow_start(service, &mut live);
        for (_, spec) in desired::listener_specs(service, &live, standby.as_ref()) {
            self.dataplane.apply(&spec)?;
        }
        Ok(())
    }

    pub(super) fn set_ratio(&mut self, name: &str, ratio: Ratio, force: bool) -> Result<Reply, RequestError> {
        let service = self.service(name)?.clone();
        if self.shift_running(name) {
            return Err(RequestError::ShiftRunning {
                service: name.to_owned(),
            });
        }
        let operator = self.operator.services.get(name);
        for pool in [Pool::Blue, Pool::Green] {
            if ratio.share(pool) > 0 && !desired::pool_enabled(&service, operator, pool) && !force {
                return Err(RequestError::PoolCannotServe { ratio, pool });
            }
        }
        let old = desired::ratio(&service, operator);
        self.update_operator(&service, |state| {
            if state.ratio != Some(ratio) {
                state.previous_ratio = Some(old);
            }
            state.ratio = Some(ratio);
        })?;
        tracing::info!(service = name, %old, new = %ratio, "ratio changed");
        Ok(Reply {
            ok: true,
            ratio: Some(RatioChange { old, new: ratio }),
            ..Default::default()
        })
    }

    pub(super) fn change_backend(
        &mut self,
        name: &str,
        address: SocketAddr,
        action: BackendAction,
    ) -> Result<Reply, RequestError> {
        let service = self.service(name)?.clone();
        if !service.backends.iter().any(|b| b.address == address) {
            return Err(RequestError::NoBackend {
                service: name.to_owned(),
                address,
            });
        }
        if let BackendAction::Weight(BackendWeight { weight }) = action
            && weight > config::MAX_WEIGHT
        {
            return Err(RequestError::WeightOverMax(weight));
        }
        self.update_operator(&service, |state| {
            let backend = state.backends.entry(address).or_default();
            match action {
                BackendAction::Enable => backend.enabled = true,
                BackendAction::Disable => backend.enabled = false,
                BackendAction::Weight(BackendWeight { weight }) => backend.weight = Some(weight),
            }
        })?;
        tracing::info!(service = name, backend = %address, %action, "backend changed");
        Ok(Reply::done(
            format!("{name}: backend {address}: {action}").to_lowercase(),
        ))
    }

    /// Changes the operator state of `service`, persists it, then programs
    /// the data plane; on failure neither the store nor the data plane change.
    pub(super) fn update_operator(
        &mut self,
        service: &ServiceConfig,
        change: impl FnOnce(&mut state_file::ServiceState),
    ) -> Result<(), RequestError> {
        let previous = self.operator.clone();
        change(self.operator.services.entry(service.name.clone()).or_default());
        let result = self
            .store
            .save(&self.operator)
            .map_err(RequestError::NotPersisted)
            .and_then(|()| self.apply_service(service).map_err(RequestError::Dataplane));
        if result.is_err() {
            self.operator = previous;
            // Best effort: the file may already hold the new state.
            let _ = self.store.save(&self.operator);
        }
        result
    }
}
