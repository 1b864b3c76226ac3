//! The daemon's state and request handling, independent of sockets and
//! signals (see [`crate::server`]): configuration, operator decisions and the
//! programmed data plane, kept consistent.

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::SocketAddrV4,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use bg_lb_common::maps::DataplaneConfig;

use crate::{
    config::{self, Config, ServiceConfig, XdpModeSetting},
    dataplane::{AttachMode, Attached, Dataplane, DataplaneOptions},
    housekeeping::{self, FlowCensus, FlowTimeouts},
    pins::PinLayout,
    protocol::{BackendAction, BackendStatus, FlowInfo, RatioChange, Reply, Request, ServiceStatus},
    ratio::{Pool, Ratio},
    services::{BackendSpec, ServiceSpec, Services, backend_addr, backend_pool},
    state_file::{self, BackendState, OperatorState},
};

pub struct Daemon {
    config_path: PathBuf,
    config: Config,
    operator: OperatorState,
    services: Services,
}

impl Daemon {
    /// Loads the config and the operator state, then loads (or adopts) the
    /// data plane and programs every service. Adopting a previous daemon's
    /// pins keeps its flows and swaps this program in without a gap.
    pub fn start(config_path: &Path) -> anyhow::Result<Self> {
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
            let mode = attach_mode(config.xdp_mode);
            match services.dataplane_mut().attach_pinned(iface, mode, &pins.link(iface))? {
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
        };
        daemon.apply_all()?;
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

    /// Every backend address, for neighbour warm-up.
    pub fn backend_addrs(&self) -> Vec<SocketAddrV4> {
        self.config
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.address))
            .collect()
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

    fn timeouts(&self) -> FlowTimeouts {
        let t = &self.config.timeouts;
        FlowTimeouts {
            established_idle: t.established_idle,
            closing: t.closing,
            syn: t.syn,
        }
    }

    /// Programs every configured service and removes the others.
    fn apply_all(&mut self) -> anyhow::Result<()> {
        let wanted: HashSet<SocketAddrV4> = self.config.services.iter().map(|s| s.vip).collect();
        for vip in self.services.vips() {
            if !wanted.contains(&vip) {
                self.services.remove(&vip)?;
                tracing::info!(vip = %vip, "service removed");
            }
        }
        for service in self.config.services.clone() {
            self.services
                .apply(&self.spec(&service))
                .with_context(|| format!("service {}", service.name))?;
        }
        Ok(())
    }

    /// What the data plane should do for `service`: config topology with the
    /// operator's ratio, weights and disabled backends applied.
    fn spec(&self, service: &ServiceConfig) -> ServiceSpec {
        let state = self.operator.services.get(&service.name);
        let backends = service
            .backends
            .iter()
            .map(|b| BackendSpec {
                addr: b.address,
                pool: b.pool,
                weight: self.effective_weight(service, b.address),
                reset_flows: false,
            })
            .collect();
        ServiceSpec {
            vip: service.vip,
            lut_size: service.lookup_table_size,
            ratio: state.and_then(|s| s.ratio).unwrap_or(service.ratio),
            backends,
        }
    }

    fn backend_state(&self, service: &str, addr: SocketAddrV4) -> BackendState {
        self.operator
            .services
            .get(service)
            .and_then(|s| s.backends.get(&addr))
            .cloned()
            .unwrap_or_default()
    }

    fn effective_weight(&self, service: &ServiceConfig, addr: SocketAddrV4) -> u32 {
        let state = self.backend_state(&service.name, addr);
        let configured = service
            .backends
            .iter()
            .find(|b| b.address == addr)
            .map_or(0, |b| b.weight);
        if state.enabled {
            state.weight.unwrap_or(configured)
        } else {
            0
        }
    }

    fn service(&self, name: &str) -> Result<&ServiceConfig, String> {
        self.config.services.iter().find(|s| s.name == name).ok_or_else(|| {
            let known: Vec<_> = self.config.services.iter().map(|s| s.name.as_str()).collect();
            format!("no service {name:?} (configured: {})", known.join(", "))
        })
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
        };
        result.unwrap_or_else(Reply::error)
    }

    /// Sweeps the flow table: expires finished flows, frees drained ids.
    pub fn housekeeping(&mut self) -> Result<FlowCensus, String> {
        let timeouts = self.timeouts();
        let census = housekeeping::sweep(self.services.dataplane_mut(), &timeouts).map_err(|e| e.to_string())?;
        let live: HashMap<SocketAddrV4, HashSet<SocketAddrV4>> = self
            .config
            .services
            .iter()
            .map(|s| (s.vip, s.backends.iter().map(|b| b.address).collect()))
            .collect();
        self.services
            .reap(&live, |id| census.total_of(id))
            .map_err(|e| e.to_string())?;
        Ok(census)
    }

    fn status(&mut self, only: Option<&str>) -> Result<Reply, String> {
        if let Some(name) = only {
            self.service(name)?;
        }
        let census = self.housekeeping()?;
        let services = self
            .config
            .services
            .iter()
            .filter(|s| only.is_none_or(|n| n == s.name))
            .map(|s| self.service_status(s, &census))
            .collect::<Result<_, _>>()?;
        Ok(Reply {
            ok: true,
            services: Some(services),
            ..Default::default()
        })
    }

    fn service_status(&self, service: &ServiceConfig, census: &FlowCensus) -> Result<ServiceStatus, String> {
        let spec = self.spec(service);
        let can_serve = |pool| spec.backends.iter().any(|b| b.pool == pool && b.weight > 0);
        let backends = service
            .backends
            .iter()
            .map(|b| {
                let state = self.backend_state(&service.name, b.address);
                let id = self.services.backend_id(&service.vip, &b.address);
                let stats = match id {
                    Some(id) => self.services.dataplane().backend_stats(id).map_err(|e| e.to_string())?,
                    None => Default::default(),
                };
                Ok(BackendStatus {
                    address: b.address,
                    pool: b.pool,
                    weight: self.effective_weight(service, b.address),
                    configured_weight: b.weight,
                    enabled: state.enabled,
                    health: "unchecked".into(),
                    open_flows: id.map_or(0, |id| census.open_of(id)),
                    new_flows: stats.new_flows,
                    packets_in: stats.packets_in,
                    bytes_in: stats.bytes_in,
                    packets_out: stats.packets_out,
                    bytes_out: stats.bytes_out,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(ServiceStatus {
            name: service.name.clone(),
            vip: service.vip,
            standby_vip: service.standby_vip,
            ratio: spec.ratio,
            effective_ratio: spec.ratio.effective(can_serve(Pool::Blue), can_serve(Pool::Green)),
            backends,
        })
    }

    fn set_ratio(&mut self, name: &str, ratio: Ratio, force: bool) -> Result<Reply, String> {
        let service = self.service(name)?.clone();
        let spec = self.spec(&service);
        for pool in [Pool::Blue, Pool::Green] {
            let serving = spec.backends.iter().any(|b| b.pool == pool && b.weight > 0);
            if ratio.share(pool) > 0 && !serving && !force {
                return Err(format!(
                    "ratio {ratio} gives {pool} {}% but {pool} has no enabled backend with weight > 0; \
                     its share would go to the other pool (use --force to set it anyway)",
                    ratio.share(pool)
                ));
            }
        }
        let old = spec.ratio;
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
            .and_then(|()| self.services.apply(&self.spec(service)).map_err(|e| e.to_string()));
        if result.is_err() {
            self.operator = previous;
            // Best effort: the file may already hold the new state.
            let _ = state_file::save(&self.config.state_dir, &self.operator);
        }
        result
    }

    fn flows(&mut self, name: &str, pool: Option<Pool>, limit: usize) -> Result<Reply, String> {
        let service = self.service(name)?.clone();
        let service_id = self
            .services
            .service_id(&service.vip)
            .ok_or("service is not programmed")?;
        let dataplane = self.services.dataplane();
        let backends: HashMap<u32, _> = dataplane.backends().map_err(|e| e.to_string())?.into_iter().collect();
        let now = housekeeping::monotonic_now_ns();
        let secs = |ns: u64| now.saturating_sub(ns) as f64 / 1e9;
        let flows = dataplane
            .flows()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|(_, f)| f.service_id == service_id && housekeeping::is_open(f))
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
        tracing::info!(path = %self.config_path.display(), "config reloaded");
        Ok(format!("reloaded {}", self.config_path.display()))
    }

    /// Detaches XDP and removes every pin: the data plane stops for good.
    pub fn teardown(self) -> anyhow::Result<()> {
        let pins = PinLayout::new(&self.config.pin_dir);
        drop(self.services);
        pins.remove_all()?;
        Ok(())
    }
}

fn attach_mode(setting: XdpModeSetting) -> AttachMode {
    match setting {
        XdpModeSetting::Auto => AttachMode::Auto,
        XdpModeSetting::Native => AttachMode::Native,
        XdpModeSetting::Generic => AttachMode::Generic,
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
