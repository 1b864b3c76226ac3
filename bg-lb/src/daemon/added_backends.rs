//! Backends added and removed at runtime (`backend-add`, `backend-remove`,
//! from `ctl` or the remote API). They live in the operator state, so they
//! survive restarts and reloads, and join the config file's backends in the
//! daemon's running config, where every other part of the daemon (tables,
//! probes, status, shifts) sees them as it sees the file's.

use std::collections::BTreeMap;

use super::{Daemon, RequestError};
use crate::{
    config::{self, BackendConfig, Config},
    protocol::{BackendAddRequest, BackendRemoveRequest, Reply},
    state_file::{AddedBackend, OperatorState, ServiceState},
};

/// `config` (as read from its file) with the backends operators added. One
/// the file's rules now refuse (the file lists it too, or its service went
/// to `dsr` on another port) is left out with a warning; its record stays,
/// for `backend-remove` or a later config that accepts it again.
pub(super) fn with_added_backends(mut config: Config, operator: &OperatorState) -> Config {
    for (name, state) in &operator.services {
        for (&address, added) in &state.added_backends {
            let Some(index) = config.services.iter().position(|s| &s.name == name) else {
                tracing::warn!(service = %name, backend = %address, "a backend added at runtime has no service in the config; left out");
                continue;
            };
            let backend = BackendConfig {
                pool: added.pool,
                address,
                weight: added.weight,
            };
            match config::added_backend_problem(&config, &config.services[index], &backend) {
                Some(problem) => {
                    tracing::warn!(service = %name, backend = %address, %problem, "a backend added at runtime is left out");
                }
                None => config.services[index].backends.push(backend),
            }
        }
    }
    config
}

impl Daemon {
    pub(super) fn add_backend(&mut self, request: BackendAddRequest) -> Result<Reply, RequestError> {
        let BackendAddRequest {
            service: name,
            address,
            pool,
            weight,
        } = request;
        let mut service = self.service(&name)?.clone();
        let backend = BackendConfig { pool, address, weight };
        if let Some(problem) = config::added_backend_problem(&self.config, &service, &backend) {
            return Err(RequestError::BackendRefused(problem));
        }
        service.backends.push(backend);
        self.update_operator(&service, |state| {
            // A backend added again starts from its new settings.
            state.backends.remove(&address);
            state.added_backends.insert(address, AddedBackend { pool, weight });
        })?;
        self.replace_service(service);
        tracing::info!(service = %name, backend = %address, %pool, weight, "backend added at runtime");
        Ok(Reply::done(format!(
            "{name}: backend {address} added to {pool} with weight {weight}"
        )))
    }

    pub(super) fn remove_backend(&mut self, request: BackendRemoveRequest) -> Result<Reply, RequestError> {
        let BackendRemoveRequest { service: name, address } = request;
        let mut service = self.service(&name)?.clone();
        let added = self
            .operator
            .services
            .get(&name)
            .is_some_and(|s| s.added_backends.contains_key(&address));
        if !added {
            return Err(if service.backends.iter().any(|b| b.address == address) {
                RequestError::BackendFromFile { service: name, address }
            } else {
                RequestError::NoBackend { service: name, address }
            });
        }
        service.backends.retain(|b| b.address != address);
        self.update_operator(&service, |state| {
            state.backends.remove(&address);
            state.added_backends.remove(&address);
        })?;
        self.replace_service(service);
        tracing::info!(service = %name, backend = %address, "backend removed at runtime; its open flows drain");
        Ok(Reply::done(format!(
            "{name}: backend {address} removed; its open connections drain"
        )))
    }

    /// Puts `service` (same name, other backends) in the running config and
    /// checks its backends from now on.
    fn replace_service(&mut self, service: config::ServiceConfig) {
        if let Some(slot) = self.config.services.iter_mut().find(|s| s.name == service.name) {
            *slot = service;
        }
        self.restart_probes();
    }

    /// Follows backends another host added or removed at runtime (a new
    /// fleet state revision replaced the operator state, which was
    /// `previous`): the running config's runtime backends become the new
    /// state's.
    pub(super) fn follow_added_backends(&mut self, previous: &BTreeMap<String, ServiceState>) {
        let added = |services: &BTreeMap<String, ServiceState>| {
            services
                .iter()
                .map(|(name, state)| (name.clone(), state.added_backends.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        if added(previous) == added(&self.operator.services) {
            return;
        }
        let mut config = self.config.clone();
        for service in &mut config.services {
            if let Some(state) = previous.get(&service.name) {
                service
                    .backends
                    .retain(|b| !state.added_backends.contains_key(&b.address));
            }
        }
        self.config = with_added_backends(config, &self.operator);
        self.restart_probes();
    }

    /// Whether `address` of service `name` was added at runtime.
    pub(super) fn added_at_runtime(&self, name: &str, address: std::net::SocketAddr) -> bool {
        self.operator
            .services
            .get(name)
            .is_some_and(|s| s.added_backends.contains_key(&address))
    }
}
