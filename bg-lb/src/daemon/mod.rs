//! The daemon's state and request handling, independent of sockets and
//! signals (see [`crate::server`]): configuration, operator decisions and the
//! programmed data plane, kept consistent.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

mod shifts;

use anyhow::{Context as _, bail};
use bg_lb_common::maps::DataplaneConfig;
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    config::{self, Config, HealthCheck, ServiceConfig},
    dataplane::{Attached, Dataplane, DataplaneOptions},
    desired::{self, Health, HealthView},
    health::{self, CheckKey, Listener, Report, Transition},
    housekeeping::{self, FlowCensus},
    metrics::{self, AdminRequests, ProbeMetrics, ProbeStats, Snapshot},
    pins::PinLayout,
    protocol::{BackendAction, BackendStatus, FlowInfo, RatioChange, Reply, Request, ServiceStatus, parse_request},
    ratio::{Pool, Ratio},
    services::{Services, backend_addr, backend_pool},
    shift::ShiftPlan,
    state_file::{self, OperatorState},
};

/// `status` counts flows afresh unless the cost bound says otherwise; its
/// reply says how old the count is, so `wait-drained` never trusts a count
/// from before it began.
const STATUS_FRESHNESS: Duration = Duration::ZERO;
/// A sweep waits at least this many times its own cost after the last one.
const SWEEP_DUTY_CYCLE: u32 = 4;

pub struct Daemon {
    config_path: PathBuf,
    config: Config,
    operator: OperatorState,
    services: Services,
    health: Health,
    probes: Vec<JoinHandle<()>>,
    reports: mpsc::Sender<Report>,
    shifts: HashMap<String, shifts::ActiveShift>,
    /// The last sweep's census: metrics read it instead of walking the flow
    /// table on every scrape.
    census: FlowCensus,
    /// When the census was taken and what the sweep cost, to bound the
    /// daemon's time spent walking a large flow table.
    swept: Option<(Instant, Duration)>,
    probe_stats: BTreeMap<CheckKey, ProbeStats>,
    admin_requests: AdminRequests,
}

impl Daemon {
    /// Loads the config and the operator state, then loads (or adopts) the
    /// data plane and programs every service. Adopting a previous daemon's
    /// pins keeps its flows and swaps this program in without a gap.
    /// Health probes report to `reports`; feed each to [`Daemon::on_health`].
    pub fn start(config_path: &Path, reports: mpsc::Sender<Report>) -> anyhow::Result<Self> {
        let config = config::load(config_path)?;
        let operator = state_file::load(&config.state_dir)?;
        let pins = PinLayout::new(&config.pin_dir);
        pins.prepare()?;
        let opts = DataplaneOptions {
            max_flows: config.max_flows,
            lookup_capacity: config.lookup_capacity,
            pin_dir: Some(pins.maps_dir()),
        };
        let dataplane = Dataplane::load(&opts).context("loading the XDP data plane")?;
        let mut services = Services::adopt(dataplane).context("adopting pinned data-plane state")?;
        for iface in config.interfaces.names() {
            enable_forwarding(iface)?;
            match services
                .dataplane_mut()
                .attach_pinned(iface, config.xdp_mode, &pins.link(iface))?
            {
                Attached::New(mode) => tracing::info!(interface = iface, ?mode, "XDP attached"),
                Attached::Replaced => {
                    tracing::info!(interface = iface, "XDP attachment adopted; new program swapped in")
                }
            }
        }
        let mut daemon = Daemon {
            config_path: config_path.to_owned(),
            config,
            operator,
            services,
            health: Health::new(),
            probes: Vec::new(),
            reports,
            shifts: HashMap::new(),
            census: FlowCensus::default(),
            swept: None,
            probe_stats: BTreeMap::new(),
            admin_requests: AdminRequests::default(),
        };
        daemon.apply_all()?;
        daemon.restart_probes();
        daemon.resume_shifts();
        let cfg = daemon.dataplane_config();
        daemon.services.dataplane_mut().set_config(&cfg)?;
        Ok(daemon)
    }

    pub fn take_ebpf_logger(&mut self) -> Option<crate::dataplane::EbpfLogger> {
        self.services.dataplane_mut().take_logger()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn dataplane_config(&self) -> DataplaneConfig {
        DataplaneConfig {
            snat_addr: u32::from_ne_bytes(self.config.snat_address.octets()),
            snat_port_min: self.config.snat_ports.0,
            snat_port_max: self.config.snat_ports.1,
            ready: 1,
            _pad: 0,
        }
    }

    /// Programs every configured service (live and standby VIPs) and removes
    /// the others.
    fn apply_all(&mut self) -> anyhow::Result<()> {
        let wanted: HashSet<SocketAddrV4> = self
            .config
            .services
            .iter()
            .flat_map(|s| std::iter::once(s.vip).chain(s.standby_vip))
            .collect();
        for vip in self.services.vips() {
            if !wanted.contains(&vip) {
                self.services.remove(&vip)?;
                tracing::info!(vip = %vip, "listener removed");
            }
        }
        for service in self.config.services.clone() {
            self.apply_service(&service)
                .with_context(|| format!("service {}", service.name))?;
        }
        Ok(())
    }

    /// Rebuilds the live table and, if any, the standby table of `service`.
    fn apply_service(&mut self, service: &ServiceConfig) -> Result<(), crate::services::ServicesError> {
        let operator = self.operator.services.get(&service.name);
        let live = desired::live_spec(service, operator, &self.health);
        let standby = desired::standby_spec(service, operator, &self.health);
        self.services.apply(&live)?;
        if let Some(standby) = standby {
            self.services.apply(&standby)?;
        }
        Ok(())
    }

    /// One probe per backend for the live check, and one for the standby
    /// check where a standby VIP uses HTTP checks.
    fn restart_probes(&mut self) {
        for probe in self.probes.drain(..) {
            probe.abort();
        }
        let source = self.config.snat_address;
        for service in &self.config.services {
            let standby = service.standby_vip.is_some() && matches!(service.health.check, HealthCheck::Http(_));
            let listeners = [Some(Listener::Live), standby.then_some(Listener::Standby)];
            for backend in &service.backends {
                for listener in listeners.into_iter().flatten() {
                    let key = CheckKey {
                        service: service.name.clone(),
                        backend: backend.address,
                        listener,
                    };
                    let probe = health::spawn_probe(key, service.health.clone(), source, self.reports.clone());
                    self.probes.push(probe);
                }
            }
        }
        // Forget the health of probes that no longer exist.
        let services = &self.config.services;
        let exists = |key: &CheckKey| {
            services
                .iter()
                .any(|s| s.name == key.service && s.backends.iter().any(|b| b.address == key.backend))
        };
        self.health.retain(|key, _| exists(key));
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
    fn log_pool_health(&self, service: &ServiceConfig) {
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

    fn service(&self, name: &str) -> Result<&ServiceConfig, String> {
        self.config.services.iter().find(|s| s.name == name).ok_or_else(|| {
            let known: Vec<_> = self.config.services.iter().map(|s| s.name.as_str()).collect();
            format!("no service {name:?} (configured: {})", known.join(", "))
        })
    }

    /// One admin socket line: parsed, handled, and counted for metrics.
    pub fn handle_line(&mut self, line: &str) -> Reply {
        let (cmd, reply) = match parse_request(line) {
            Ok(request) => (request.cmd(), self.handle(request)),
            Err(e) => (metrics::INVALID_COMMAND, Reply::error(e)),
        };
        self.admin_requests.record(cmd, reply.ok);
        reply
    }

    pub fn handle(&mut self, request: Request) -> Reply {
        let result = match request {
            Request::Status { service } => self.status(service.as_deref()),
            Request::Ratio { service, ratio, force } => self.set_ratio(&service, ratio, force),
            Request::Drain { service, pool, force } => self.set_ratio(&service, Ratio::all_to(pool.other()), force),
            Request::Backend {
                service,
                address,
                action,
            } => self.change_backend(&service, address, action),
            Request::Flows { service, pool, limit } => self.flows(&service, pool, limit),
            Request::Reload => self.reload().map(Reply::done),
            Request::Shift {
                service,
                to,
                steps,
                interval_secs,
                max_error_rate,
                min_flows,
            } => match Duration::try_from_secs_f64(interval_secs) {
                Ok(interval) => {
                    let plan = ShiftPlan {
                        to,
                        steps,
                        interval,
                        max_error_rate,
                        min_flows,
                    };
                    self.start_shift(&service, plan)
                }
                Err(_) => Err(format!("interval {interval_secs}s is not a duration")),
            },
            Request::ShiftAbort { service, rollback } => self.abort_shift(&service, rollback),
            Request::Promote { service, pool, force } => self.promote(&service, pool, force),
            Request::Rollback { service } => self.rollback(&service),
        };
        result.unwrap_or_else(Reply::error)
    }

    /// Once a second: flow housekeeping, then progressive shifts.
    pub fn tick(&mut self) {
        if let Err(e) = self.refresh_census(Duration::from_secs(1)) {
            tracing::error!(error = %e, "flow housekeeping failed");
        }
        self.tick_shifts();
    }

    /// Sweeps again if the census is older than `max_age`, unless the last
    /// sweep was so costly (a huge flow table walked one syscall per entry)
    /// that sweeping now would keep the daemon busy more than a fifth of the
    /// time: requests and health reports must not wait behind sweeps.
    fn refresh_census(&mut self, max_age: Duration) -> Result<(), String> {
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
    fn housekeeping(&mut self) -> Result<&FlowCensus, String> {
        let census =
            housekeeping::sweep(self.services.dataplane_mut(), &self.config.timeouts).map_err(|e| e.to_string())?;
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
        self.services
            .reap(&live, |id| census.total_of(id))
            .map_err(|e| e.to_string())?;
        self.census = census;
        Ok(&self.census)
    }

    /// What `/metrics` shows. Open flows and flow-table entries come from the
    /// last sweep (at most a housekeeping interval old), so a scrape costs a
    /// few map reads per backend, never a walk of the flow table.
    pub fn metrics_snapshot(&self) -> Result<Snapshot, String> {
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
            packets: self.services.dataplane().counters().map_err(|e| e.to_string())?,
            admin_requests: self.admin_requests.clone(),
        })
    }

    fn status(&mut self, only: Option<&str>) -> Result<Reply, String> {
        if let Some(name) = only {
            self.service(name)?;
        }
        self.refresh_census(STATUS_FRESHNESS)?;
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
            ..Default::default()
        })
    }

    fn service_status(&self, service: &ServiceConfig, census: &FlowCensus) -> Result<ServiceStatus, String> {
        let operator = self.operator.services.get(&service.name);
        let spec = desired::live_spec(service, operator, &self.health);
        let can_serve = |pool| spec.backends.iter().any(|b| b.pool == pool && b.weight > 0);
        let backends = service
            .backends
            .iter()
            .map(|b| self.backend_status(service, &spec, b.address, b.pool, b.weight, census))
            .collect::<Result<_, String>>()?;
        Ok(ServiceStatus {
            name: service.name.clone(),
            vip: service.vip,
            standby_vip: service.standby_vip,
            ratio: spec.ratio,
            effective_ratio: spec.ratio.effective(can_serve(Pool::Blue), can_serve(Pool::Green)),
            backends,
            shift: operator.and_then(|s| s.shift.clone()),
        })
    }

    /// A backend's row: counters and open flows add up its traffic through
    /// both listeners (it has one id per VIP).
    fn backend_status(
        &self,
        service: &ServiceConfig,
        live: &crate::services::ServiceSpec,
        address: SocketAddrV4,
        pool: Pool,
        configured_weight: u32,
        census: &FlowCensus,
    ) -> Result<BackendStatus, String> {
        let operator = self.operator.services.get(&service.name);
        let ids: Vec<u32> = std::iter::once(service.vip)
            .chain(service.standby_vip)
            .filter_map(|vip| self.services.backend_id(&vip, &address))
            .collect();
        let mut stats = bg_lb_common::maps::TrafficStats::default();
        for &id in &ids {
            stats.add(&self.services.dataplane().backend_stats(id).map_err(|e| e.to_string())?);
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
            health: health_word(live_view).into(),
            last_check: live_view.map(|v| match &v.last {
                Ok(()) => "ok".to_owned(),
                Err(reason) => reason.to_string(),
            }),
            standby_health: view(Listener::Standby).map(|v| health_word(Some(v)).to_owned()),
            open_flows: ids.iter().map(|&id| census.open_of(id)).sum(),
            new_flows: stats.new_flows,
            packets_in: stats.packets_in,
            bytes_in: stats.bytes_in,
            packets_out: stats.packets_out,
            bytes_out: stats.bytes_out,
            handshakes: stats.handshakes,
            refused: stats.refused,
            resets: stats.resets,
        })
    }

    fn set_ratio(&mut self, name: &str, ratio: Ratio, force: bool) -> Result<Reply, String> {
        let service = self.service(name)?.clone();
        if self.shifts.contains_key(name) {
            return Err(format!(
                "a progressive shift of {name} is running; `ctl shift {name} --abort` stops it first"
            ));
        }
        let operator = self.operator.services.get(name);
        for pool in [Pool::Blue, Pool::Green] {
            if ratio.share(pool) > 0 && !desired::pool_enabled(&service, operator, pool) && !force {
                return Err(format!(
                    "ratio {ratio} gives {pool} {}% but {pool} has no enabled backend with weight > 0; \
                     its share would go to the other pool (use --force to set it anyway)",
                    ratio.share(pool)
                ));
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

    fn change_backend(&mut self, name: &str, address: SocketAddrV4, action: BackendAction) -> Result<Reply, String> {
        let service = self.service(name)?.clone();
        if !service.backends.iter().any(|b| b.address == address) {
            return Err(format!("service {name:?} has no backend {address}"));
        }
        if let BackendAction::Weight(weight) = action
            && weight > config::MAX_WEIGHT
        {
            return Err(format!("weight {weight} is over {}", config::MAX_WEIGHT));
        }
        self.update_operator(&service, |state| {
            let backend = state.backends.entry(address).or_default();
            match action {
                BackendAction::Enable => backend.enabled = true,
                BackendAction::Disable => backend.enabled = false,
                BackendAction::Weight(w) => backend.weight = Some(w),
            }
        })?;
        tracing::info!(service = name, backend = %address, ?action, "backend changed");
        Ok(Reply::done(
            format!("{name}: backend {address}: {action:?}").to_lowercase(),
        ))
    }

    /// Changes the operator state of `service`, persists it, then programs
    /// the data plane; on failure neither the file nor the data plane change.
    fn update_operator(
        &mut self,
        service: &ServiceConfig,
        change: impl FnOnce(&mut state_file::ServiceState),
    ) -> Result<(), String> {
        let previous = self.operator.clone();
        change(self.operator.services.entry(service.name.clone()).or_default());
        let result = state_file::save(&self.config.state_dir, &self.operator)
            .map_err(|e| format!("not applied: cannot persist the change: {e}"))
            .and_then(|()| self.apply_service(service).map_err(|e| e.to_string()));
        if result.is_err() {
            self.operator = previous;
            // Best effort: the file may already hold the new state.
            let _ = state_file::save(&self.config.state_dir, &self.operator);
        }
        result
    }

    fn flows(&mut self, name: &str, pool: Option<Pool>, limit: usize) -> Result<Reply, String> {
        let service = self.service(name)?.clone();
        let service_ids: Vec<u32> = std::iter::once(service.vip)
            .chain(service.standby_vip)
            .filter_map(|vip| self.services.service_id(&vip))
            .collect();
        let dataplane = self.services.dataplane();
        let backends: HashMap<u32, _> = dataplane.backends().map_err(|e| e.to_string())?.into_iter().collect();
        let now = housekeeping::monotonic_now_ns();
        let secs = |ns: u64| now.saturating_sub(ns) as f64 / 1e9;
        let flows = dataplane
            .flows()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|(_, f)| service_ids.contains(&f.service_id) && housekeeping::is_open(f))
            .filter_map(|(key, flow)| {
                let backend = backends.get(&flow.backend_id)?;
                Some(FlowInfo {
                    client: SocketAddrV4::new(key.client_addr.to_ne_bytes().into(), u16::from_be(key.client_port)),
                    backend: backend_addr(backend),
                    pool: backend_pool(backend),
                    age_secs: secs(flow.created_ns),
                    idle_secs: secs(flow.last_seen_ns),
                    state: flow_state_name(flow.state).into(),
                })
            })
            .filter(|f| pool.is_none_or(|p| p == f.pool))
            .take(limit)
            .collect();
        Ok(Reply {
            ok: true,
            flows: Some(flows),
            ..Default::default()
        })
    }

    /// Re-reads the config. An invalid config, or one changing what only a
    /// restart can change, is rejected and the running config stays.
    pub fn reload(&mut self) -> Result<String, String> {
        let new = config::load(&self.config_path)
            .map_err(|e| format!("config rejected, still serving the previous one: {e}"))?;
        if let Some(what) = restart_only_change(&self.config, &new) {
            return Err(format!(
                "config rejected: changing {what} needs a restart; still serving the previous config"
            ));
        }
        for service in &new.services {
            if let Some(old) = self.config.services.iter().find(|s| s.vip == service.vip)
                && old.lookup_table_size != service.lookup_table_size
            {
                return Err(format!(
                    "config rejected: service {}: lookup_table_size cannot change while the service runs",
                    service.name
                ));
            }
        }
        let old = std::mem::replace(&mut self.config, new);
        if let Err(e) = self.apply_all() {
            self.config = old;
            let _ = self.apply_all();
            return Err(format!("config rejected: {e:#}; restored the previous config"));
        }
        self.restart_probes();
        tracing::info!(path = %self.config_path.display(), "config reloaded");
        Ok(format!("reloaded {}", self.config_path.display()))
    }

    /// Detaches XDP and removes every pin: the data plane stops for good.
    pub fn teardown(self) -> anyhow::Result<()> {
        let pins = PinLayout::new(&self.config.pin_dir);
        // Closing our program and link fds first: the pins are the last refs.
        drop(self);
        pins.remove_all()?;
        Ok(())
    }
}

/// `bpf_fib_lookup` forwards only from interfaces with IPv4 forwarding on.
fn enable_forwarding(iface: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/forwarding");
    if fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    fs::write(&path, "1").with_context(|| format!("enabling IPv4 forwarding on {iface} ({path})"))?;
    tracing::info!(interface = iface, "enabled IPv4 forwarding (needed by bpf_fib_lookup)");
    Ok(())
}

/// Settings baked into the loaded data plane or the daemon's sockets.
fn restart_only_change(old: &Config, new: &Config) -> Option<&'static str> {
    [
        (old.interfaces != new.interfaces, "the interfaces"),
        (old.xdp_mode != new.xdp_mode, "xdp_mode"),
        (old.snat_address != new.snat_address, "snat_address"),
        (old.snat_ports != new.snat_ports, "snat_ports"),
        (old.max_flows != new.max_flows, "max_flows"),
        (old.lookup_capacity != new.lookup_capacity, "lookup_capacity"),
        (old.pin_dir != new.pin_dir, "pin_dir"),
        (old.state_dir != new.state_dir, "state_dir"),
        (old.admin != new.admin, "[admin]"),
        (old.metrics != new.metrics, "metrics"),
    ]
    .into_iter()
    .find_map(|(changed, what)| changed.then_some(what))
}

fn flow_state_name(state: u32) -> &'static str {
    use bg_lb_common::flow_state::{ESTABLISHED, FIN_FROM_BACKEND, FIN_FROM_CLIENT};
    if state & (FIN_FROM_CLIENT | FIN_FROM_BACKEND) != 0 {
        "closing"
    } else if state & ESTABLISHED != 0 {
        "established"
    } else {
        "syn-sent"
    }
}

/// Stops a daemon for good without a running instance: detaches XDP and
/// removes the pins named by the config (or the default pin dir).
pub fn teardown(pin_dir: &Path) -> anyhow::Result<()> {
    if !pin_dir.exists() {
        bail!("{}: nothing pinned there (already torn down?)", pin_dir.display());
    }
    PinLayout::new(pin_dir).remove_all()?;
    Ok(())
}

fn health_word(view: Option<&HealthView>) -> &'static str {
    match view {
        None => "unchecked",
        Some(v) if v.up => "up",
        Some(_) => "down",
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        for probe in &self.probes {
            probe.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!("interface = \"eth0\"\nsnat_address = \"10.0.0.1\"\n{extra}");
        config::parse(Path::new("test.toml"), &text).unwrap()
    }

    #[test]
    fn turning_metrics_on_off_or_moving_them_needs_a_restart() {
        let off = config("");
        let on = config("metrics = \"127.0.0.1:9750\"\n");
        let moved = config("metrics = \"127.0.0.1:9751\"\n");
        assert_eq!(restart_only_change(&off, &on), Some("metrics"));
        assert_eq!(restart_only_change(&on, &off), Some("metrics"));
        assert_eq!(restart_only_change(&on, &moved), Some("metrics"));
        assert_eq!(restart_only_change(&on, &on.clone()), None);
    }
}
