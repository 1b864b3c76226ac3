//! The daemon's state and request handling, independent of sockets and
//! signals (see [`crate::daemon::server`]): configuration, operator decisions and the
//! programmed data plane, kept consistent.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

mod added_backends;
mod analysis;
mod announce;
mod census;
mod drain_deadline;
mod error;
mod fleet;
mod floods;
mod last_health;
mod operator;
mod preflight;
mod probes;
mod reload;
pub mod server;
mod shifts;
mod slow_start;
mod status;
mod sweeper;
mod systemd;

use anyhow::{Context as _, bail};
use bg_lb_common::maps::DataplaneConfig;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

pub use self::{analysis::HookResult, error::RequestError, sweeper::Done};
use self::{last_health::LastHealth, sweeper::Sweeper, systemd::Notifier};
use crate::{
    bgp::speaker::Speaker,
    cluster::{store::StateStore, watch::FleetUpdate},
    config::{self, Config, ServiceConfig},
    dataplane::{Attached, Dataplane, DataplaneError, DataplaneOptions, housekeeping::FlowCensus, pins::PinLayout},
    desired::Health,
    health::{CheckKey, Report},
    metrics::{self, AdminRequests, ProbeStats, ReloadStats},
    protocol::{Reply, Request, parse_request},
    ratio::Ratio,
    state_file::OperatorState,
};

/// `status` asks for a new count unless the cost bound says otherwise, and
/// answers with the last one at once; its reply says how old the count is,
/// so `wait-drained` never trusts a count from before it began.
const STATUS_FRESHNESS: Duration = Duration::ZERO;
/// A sweep begins at least this many times the last one's cost after the
/// last one began: the sweeper keeps a core at most a quarter busy.
const SWEEP_DUTY_CYCLE: u32 = 4;

/// Pinned maps this bg-lb cannot adopt. The daemon exits with
/// [`PinsRefused::EXIT_CODE`], which the systemd unit does not restart on:
/// another try would only be refused again.
#[derive(Debug, thiserror::Error)]
#[error(
    "{mismatch}. Nothing was changed. This bg-lb cannot adopt that data plane: stop the daemon that left it and \
     remove it (open connections through the LB end) with `bg-lb teardown --config {}`, then start again",
    config.display()
)]
pub struct PinsRefused {
    mismatch: String,
    config: PathBuf,
}

impl PinsRefused {
    /// EX_CONFIG (sysexits.h); the unit's `RestartPreventExitStatus=`.
    pub const EXIT_CODE: u8 = 78;
}

pub struct Daemon {
    config_path: PathBuf,
    config: Config,
    operator: OperatorState,
    /// Where `operator` is kept: `state_dir`, or the fleet's etcd.
    store: StateStore,
    dataplane: Dataplane,
    health: Health,
    /// Each check's health as saved for the next start.
    last_health: LastHealth,
    probes: Vec<JoinHandle<()>>,
    reports: mpsc::Sender<Report>,
    shifts: HashMap<String, shifts::ActiveShift>,
    /// Shifts started or resumed, to tell one shift's hook results from
    /// another's.
    shifts_started: u64,
    /// Where the analysis hooks' checks report, and the daemon's loop reads.
    hook_results: mpsc::UnboundedSender<analysis::HookResult>,
    hook_results_rx: Option<mpsc::UnboundedReceiver<analysis::HookResult>>,
    /// The last sweep's census: metrics read it instead of walking the flow
    /// table on every scrape.
    census: FlowCensus,
    /// When the sweep that took the census began and what it cost, to
    /// bound the time spent walking a large flow table.
    swept: Option<(Instant, Duration)>,
    /// Sweeps the flow table and lists flows on a thread of its own.
    sweeper: Sweeper,
    /// A sweep was asked for and has not come back.
    sweeping: bool,
    probe_stats: BTreeMap<CheckKey, ProbeStats>,
    admin_requests: AdminRequests,
    notifier: Notifier,
    reloads: ReloadStats,
    /// Shifts the daemon rolled back, by service, for metrics.
    shift_rollbacks: BTreeMap<String, u64>,
    /// Slow-start ramps, by service (those with `slowstart`).
    ramps: HashMap<String, crate::slow_start::Ramps>,
    /// Auto-mode services whose SYN proxy is on, as last logged.
    flooded: HashMap<String, floods::Flooded>,
    /// Drain deadlines (service, when) this daemon has carried out: in a
    /// fleet each host resets its own connections, whichever saved first.
    deadlines_done: HashSet<(String, u64)>,
    /// Drives BIRD when the config has `[bgp]`.
    speaker: Option<Speaker>,
}

impl Daemon {
    /// Loads the config and the operator state, then loads (or adopts) the
    /// data plane and programs every service. Adopting a previous daemon's
    /// pins keeps its flows and swaps this program in without a gap.
    /// Health probes report to `reports`; feed each to [`Daemon::on_health`].
    /// The flow sweeper reports to `swept`; feed each to
    /// [`Daemon::on_sweeper`].
    pub fn start(
        config_path: &Path,
        reports: mpsc::Sender<Report>,
        swept: mpsc::UnboundedSender<Done>,
    ) -> anyhow::Result<Self> {
        let file_config = config::load(config_path)?;
        let (store, operator) = StateStore::open(&file_config.state_dir, file_config.cluster.as_ref())?;
        let config = added_backends::with_added_backends(file_config, &operator);
        preflight::refuse_foreign_snat_addresses(&config)?;
        preflight::refuse_snat_ports_overlapping_ephemeral_ports(&config)?;
        preflight::warn_dsr_backends_not_on_link(&config);
        preflight::stop_icmp_redirects_under_gateway(&config);
        let loaded_at = SystemTime::now();
        let pins = PinLayout::new(&config.pin_dir);
        let mounted_bpffs = pins.prepare()?;
        preflight::warn_if_pins_die_with_daemon(&pins, mounted_bpffs);
        let opts = DataplaneOptions {
            max_flows: config.max_flows,
            reverse_nat_entries: config.reverse_nat_entries(),
            lookup_capacity: config.lookup_capacity,
            ipv6: !config.snat6_addresses.is_empty(),
            pin_dir: Some(pins.maps_dir()),
        };
        let mut dataplane = match Dataplane::load(&opts) {
            Err(DataplaneError::IncompatiblePin(mismatch)) => {
                return Err(PinsRefused {
                    mismatch: mismatch.to_string(),
                    config: config_path.to_owned(),
                }
                .into());
            }
            loaded => loaded.context("loading the XDP data plane (adopting pinned state)")?,
        };
        for iface in config.interfaces.names() {
            enable_forwarding(iface, !config.snat6_addresses.is_empty())?;
            let link = pins.link(iface);
            let mode = preflight::attach_mode(iface, config.xdp_mode, link.exists());
            match dataplane.attach_pinned(iface, mode, &link)? {
                Attached::New(mode) => tracing::info!(interface = iface, ?mode, "XDP attached"),
                Attached::Replaced => {
                    tracing::info!(interface = iface, "XDP attachment adopted; new program swapped in")
                }
            }
        }
        dataplane.finish_migrations()?;
        // Before the first table write: a backend down when the last daemon
        // ran stays out of rotation until its probes bring it up.
        let last_health = LastHealth::load(&config.state_dir);
        let health = last_health.seed();
        let (hook_results, hook_results_rx) = mpsc::unbounded_channel();
        let sweeper = Sweeper::spawn(dataplane.sweep_maps()?, swept).context("starting the flow sweeper thread")?;
        let mut daemon = Daemon {
            config_path: config_path.to_owned(),
            config,
            operator,
            store,
            dataplane,
            health,
            last_health,
            probes: Vec::new(),
            reports,
            shifts: HashMap::new(),
            shifts_started: 0,
            hook_results,
            hook_results_rx: Some(hook_results_rx),
            census: FlowCensus::default(),
            swept: None,
            sweeper,
            sweeping: false,
            probe_stats: BTreeMap::new(),
            admin_requests: AdminRequests::default(),
            notifier: Notifier::from_env(),
            reloads: ReloadStats::new(loaded_at),
            shift_rollbacks: BTreeMap::new(),
            ramps: HashMap::new(),
            flooded: HashMap::new(),
            deadlines_done: HashSet::new(),
            speaker: None,
        };
        daemon.speaker = Self::speaker_for(&daemon.config);
        daemon.apply_all()?;
        // The first census before anything is served: later ones come from
        // the sweeper.
        daemon.sweep_now()?;
        daemon.restart_probes();
        daemon.resume_shifts();
        let cfg = daemon.dataplane_config();
        daemon.dataplane.set_config(&cfg)?;
        // Attached and programmed: announce what can serve. Health starts
        // from what the last daemon saw, so a restart announces what it did.
        daemon.announce();
        Ok(daemon)
    }

    pub fn take_ebpf_logger(&mut self) -> Option<crate::dataplane::EbpfLogger> {
        self.dataplane.take_logger()
    }

    /// New revisions of the fleet state (`[cluster]`); feed each to
    /// [`Daemon::on_fleet`]. Taken once; `None` on a host alone.
    pub fn take_fleet_updates(&mut self) -> Option<mpsc::UnboundedReceiver<FleetUpdate>> {
        self.store.fleet_mut()?.take_updates()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn dataplane_config(&self) -> DataplaneConfig {
        let (min, max) = self.config.snat_ports;
        DataplaneConfig::new(&self.config.snat_addresses, min..=max).with_snat6(&self.config.snat6_addresses)
    }

    fn service(&self, name: &str) -> Result<&ServiceConfig, RequestError> {
        self.config
            .services
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| RequestError::NoService {
                name: name.to_owned(),
                configured: self.config.services.iter().map(|s| s.name.clone()).collect(),
            })
    }

    /// One admin socket line: parsed, handled, counted for metrics and
    /// answered on `reply`, at once or (`flows`) once the sweeper has
    /// listed.
    pub fn handle_line(&mut self, line: &str, reply: oneshot::Sender<Reply>) {
        match parse_request(line) {
            Ok(request) => self.handle(request, reply),
            Err(e) => self.answer(metrics::INVALID_COMMAND, Reply::error(e), reply),
        }
    }

    fn handle(&mut self, request: Request, reply: oneshot::Sender<Reply>) {
        let cmd = request.cmd();
        let result = match request {
            Request::Flows(r) => match self.flow_query(&r) {
                Ok(query) => match self.sweeper.list(query, reply) {
                    Ok(()) => return,
                    Err(reply) => return self.answer(cmd, Reply::error(RequestError::SweeperGone.to_string()), reply),
                },
                Err(e) => Err(e),
            },
            Request::Status(r) => self.status(r.service.as_deref()),
            Request::Ratio(r) => self.set_ratio(&r.service, r.ratio, r.force),
            Request::Drain(r) => self
                .set_ratio(&r.service, Ratio::all_to(r.pool.other()), r.force)
                .and_then(|reply| self.set_drain_deadline(&r, r.pool, reply)),
            Request::Backend(r) => self.change_backend(&r.service, r.address, r.action),
            Request::BackendAdd(r) => self.add_backend(r),
            Request::BackendRemove(r) => self.remove_backend(r),
            Request::Reload => self.reload().map(Reply::done),
            Request::Shift(r) => self.start_shift(r),
            Request::ShiftAbort(r) => self.abort_shift(&r.service, r.rollback),
            Request::Promote(r) => self
                .promote(&r.service, r.pool, r.force)
                .and_then(|reply| self.set_drain_deadline(&r, r.pool.other(), reply)),
            Request::Rollback(r) => self.rollback(&r.service),
            Request::Node(r) => self.set_node(r.action),
        };
        self.announce();
        let answer = result.unwrap_or_else(|e| Reply::error(e.to_string()));
        self.answer(cmd, answer, reply);
    }

    /// Counts `answer` for metrics and sends it.
    fn answer(&mut self, cmd: &'static str, answer: Reply, reply: oneshot::Sender<Reply>) {
        self.admin_requests.record(cmd, answer.ok);
        let _ = reply.send(answer);
    }

    /// Withdraws every VIP (`[bgp]`), then detaches XDP and removes every
    /// pin: the data plane stops for good.
    pub fn teardown(mut self) -> anyhow::Result<()> {
        self.withdraw_all();
        let pins = PinLayout::new(&self.config.pin_dir);
        // Closing our program and link fds first: the pins are the last refs.
        drop(self);
        pins.remove_all()?;
        Ok(())
    }
}

/// `bpf_fib_lookup` forwards only from interfaces with forwarding on, per
/// family: IPv4 always, IPv6 when IPv6 services can exist (an IPv6 SNAT
/// address is configured).
fn enable_forwarding(iface: &str, ipv6: bool) -> anyhow::Result<()> {
    enable_sysctl(iface, "ipv4", "forwarding", "1")?;
    if ipv6 {
        // Forwarding makes the kernel ignore router advertisements unless
        // accept_ra is 2: a host that took its IPv6 default route from RAs
        // (accept_ra 1) keeps doing so.
        let accept_ra = format!("/proc/sys/net/ipv6/conf/{iface}/accept_ra");
        if fs::read_to_string(&accept_ra).is_ok_and(|v| v.trim() == "1") {
            enable_sysctl(iface, "ipv6", "accept_ra", "2")?;
        }
        enable_sysctl(iface, "ipv6", "forwarding", "1")?;
    }
    Ok(())
}

/// Sets `net.<family>.conf.<iface>.<key>` to `value` unless it is already.
fn enable_sysctl(iface: &str, family: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/net/{family}/conf/{iface}/{key}");
    if fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    fs::write(&path, value).with_context(|| format!("setting {path} to {value} on {iface}"))?;
    tracing::info!(
        interface = iface,
        "set net.{family}.conf.{iface}.{key} = {value} (needed by bpf_fib_lookup)"
    );
    Ok(())
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

impl Drop for Daemon {
    fn drop(&mut self) {
        for probe in &self.probes {
            probe.abort();
        }
    }
}
