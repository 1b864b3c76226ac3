//! What the daemon reports: `status`, `flows` and the metrics snapshot.

use std::net::SocketAddr;

use super::{Daemon, RequestError, STATUS_FRESHNESS};
use crate::{
    config::ServiceConfig,
    dataplane::{
        DataplaneError,
        housekeeping::FlowCensus,
        sweep::{FlowListing, FlowQuery},
    },
    desired::{self, HealthView},
    family::Family,
    health::{CheckKey, Listener},
    metrics::{BuildInfo, ProbeMetrics, Snapshot},
    protocol::{
        BackendHealth, BackendStatus, FlowInfo, FlowsRequest, ListenerStatus, MAX_FLOWS_LIMIT, Reply, ServiceStatus,
        SynProxyStatus,
    },
    ratio::Pool,
};

impl Daemon {
    /// What `/metrics` shows. Open flows and flow-table entries come from the
    /// last sweep (at most a housekeeping interval old), so a scrape costs a
    /// few map reads per backend, never a walk of the flow table.
    pub fn metrics_snapshot(&self) -> Result<Snapshot, RequestError> {
        let services = self
            .config
            .services
            .iter()
            .map(|s| self.service_status(s, &self.census))
            .collect::<Result<_, _>>()?;
        let probes = self
            .probe_stats
            .iter()
            .filter_map(|(key, stats)| {
                let backend = self
                    .service(&key.service)
                    .ok()?
                    .backends
                    .iter()
                    .find(|b| b.address == key.backend)?;
                Some(ProbeMetrics {
                    service: key.service.clone(),
                    pool: backend.pool,
                    backend: key.backend,
                    check: key.listener,
                    stats: stats.clone(),
                })
            })
            .collect();
        Ok(Snapshot {
            services,
            probes,
            flow_entries: self.census.total.values().sum(),
            flow_capacity: self.config.max_flows.into(),
            packets: self.dataplane.counters()?,
            admin_requests: self.admin_requests.clone(),
            reloads: self.reloads,
            shift_rollbacks: self.shift_rollbacks.clone(),
            vips_announced: self.vips_announced(),
            build: BuildInfo::THIS,
        })
    }

    pub(super) fn status(&mut self, only: Option<&str>) -> Result<Reply, RequestError> {
        if let Some(name) = only {
            self.service(name)?;
        }
        // Answered from the last census; one newer starts if due.
        let running = self.sweeping;
        self.request_sweep(STATUS_FRESHNESS);
        let census = &self.census;
        let services = self
            .config
            .services
            .iter()
            .filter(|s| only.is_none_or(|n| n == s.name))
            .map(|s| self.service_status(s, census))
            .collect::<Result<_, _>>()?;
        Ok(Reply {
            ok: true,
            services: Some(services),
            flows_counted_secs_ago: self.swept.map(|(at, _)| at.elapsed().as_secs_f64()),
            sweep_running: Some(running),
            bgp: self.bgp_status(),
            fleet: self.fleet_status(),
            ..Default::default()
        })
    }

    pub(super) fn service_status(
        &self,
        service: &ServiceConfig,
        census: &FlowCensus,
    ) -> Result<ServiceStatus, RequestError> {
        let operator = self.operator.services.get(&service.name);
        let mut spec = desired::live_spec(service, operator, &self.health);
        self.ramped(service, &mut spec);
        let can_serve = |pool| spec.backends.iter().any(|b| b.pool == pool && b.weight > 0);
        let backends = service
            .backends
            .iter()
            .map(|b| self.backend_status(service, &spec, b.address, b.pool, b.weight, census))
            .collect::<Result<_, _>>()?;
        Ok(ServiceStatus {
            name: service.name.clone(),
            vip: service.vip(),
            standby_vip: service.standby_vips.first().copied(),
            listeners: service
                .listeners()
                .map(|(key, listener)| ListenerStatus {
                    vip: key.vip,
                    family: key.family(),
                    protocol: key.protocol,
                    standby: listener == Listener::Standby,
                })
                .collect(),
            ratio: spec.ratio,
            effective_ratio: spec.ratio.effective(can_serve(Pool::Blue), can_serve(Pool::Green)),
            backends,
            shift: operator.and_then(|s| s.shift.clone()),
            syn_proxy: self.syn_proxy_status(service)?,
            forwarding: service.forwarding,
            affinity: service.affinity,
            drain_deadline: operator.and_then(|s| s.drain_deadline),
            protocol: service.protocol,
        })
    }

    /// The service's SYN proxy: on if it is on for either of its VIPs.
    pub(super) fn syn_proxy_status(&self, service: &ServiceConfig) -> Result<SynProxyStatus, RequestError> {
        let mut active = false;
        for key in service.keys() {
            active |= self.dataplane.syn_proxy_active(&key)?;
        }
        Ok(SynProxyStatus {
            mode: service.syn_proxy.mode,
            active,
        })
    }

    /// A backend's row: counters and open flows add up its traffic through
    /// both listeners (it has one id per VIP).
    pub(super) fn backend_status(
        &self,
        service: &ServiceConfig,
        live: &crate::dataplane::services::ServiceSpec,
        address: SocketAddr,
        pool: Pool,
        configured_weight: u32,
        census: &FlowCensus,
    ) -> Result<BackendStatus, RequestError> {
        let operator = self.operator.services.get(&service.name);
        let ids: Vec<u32> = service
            .keys()
            .filter_map(|key| self.dataplane.backend_id(&key, &address))
            .collect();
        let mut stats = bg_lb_common::maps::TrafficStats::default();
        for &id in &ids {
            stats.add(&self.dataplane.backend_stats(id)?);
        }
        let view = |listener| {
            self.health.get(&CheckKey {
                service: service.name.clone(),
                backend: address,
                listener,
            })
        };
        let live_view = view(Listener::Live);
        Ok(BackendStatus {
            address,
            pool,
            weight: live.backends.iter().find(|b| b.addr == address).map_or(0, |b| b.weight),
            configured_weight,
            enabled: desired::backend_state(operator, address).enabled,
            added_at_runtime: self.added_at_runtime(&service.name, address),
            health: live_view.map_or(BackendHealth::Unchecked, BackendHealth::from),
            last_check: live_view.map(|v| match &v.last {
                Ok(()) => "ok".to_owned(),
                Err(reason) => reason.to_string(),
            }),
            standby_health: view(Listener::Standby).map(BackendHealth::from),
            open_flows: ids.iter().map(|&id| census.open_of(id)).sum(),
            embryonic_flows: ids.iter().map(|&id| census.embryonic_of(id)).sum(),
            new_flows: stats.new_flows,
            packets_in: stats.packets_in,
            bytes_in: stats.bytes_in,
            packets_out: stats.packets_out,
            bytes_out: stats.bytes_out,
            handshakes: stats.handshakes,
            refused: stats.refused,
            resets: stats.resets,
            snat_ports_in_use: census.snat_pairs_of(address),
            snat_ports_capacity: self.config.snat_pairs_per_backend(Family::of_socket(address)),
            snat_ports_exhausted: stats.snat_exhausted,
        })
    }

    /// What a `flows` request asks the sweeper to list.
    pub(super) fn flow_query(&self, request: &FlowsRequest) -> Result<FlowQuery, RequestError> {
        if request.limit > MAX_FLOWS_LIMIT {
            return Err(RequestError::FlowsLimit(request.limit));
        }
        let service = self.service(&request.service)?;
        let keys: Vec<_> = service.keys().collect();
        Ok(self.dataplane.flow_query(&keys, request.pool, request.limit))
    }

    /// The reply to a `flows` request, once the sweeper has listed.
    pub(super) fn flows_reply(&self, listing: Result<FlowListing, DataplaneError>) -> Reply {
        let listing = match listing {
            Ok(listing) => listing,
            Err(e) => return Reply::error(RequestError::from(e).to_string()),
        };
        let flows = listing
            .flows
            .into_iter()
            .map(|f| FlowInfo {
                client: f.client,
                backend: f.backend,
                pool: f.pool,
                family: Family::of_socket(f.client),
                age_secs: f.age.as_secs_f64(),
                idle_secs: f.idle.as_secs_f64(),
                state: f.phase.name().into(),
                protocol: f.protocol.unwrap_or_default(),
            })
            .collect();
        Reply {
            ok: true,
            flows: Some(flows),
            flows_truncated: Some(listing.truncated),
            flows_scanned: Some(listing.scanned),
            ..Default::default()
        }
    }
}

impl From<&HealthView> for BackendHealth {
    fn from(view: &HealthView) -> Self {
        if view.up {
            BackendHealth::Up
        } else {
            BackendHealth::Down
        }
    }
}
