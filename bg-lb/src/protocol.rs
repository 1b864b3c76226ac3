//! The admin socket protocol: one JSON request per line, one JSON reply per
//! line. Every reply has `"ok"`; failures carry `"error"`. Documented for
//! scripts in docs/admin-protocol.md. What `status` and `flows` say of
//! services and flows is in `status`.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

use crate::{
    config,
    ratio::{Pool, Ratio},
    shift::{self, hooks::PrometheusCheck},
};

/// Requests longer than this are refused without being parsed.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A request on the wire. Each payload is one struct that `bg-lb ctl` parses
/// its arguments into as well (clap derives from the same fields, so a
/// field's doc comment is its help text).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Every service, or one.
    Status(StatusRequest),
    /// New connections split BLUE:GREEN from now on.
    Ratio(RatioRequest),
    /// All new connections to the other pool.
    Drain(PoolRequest),
    /// Change one backend: weight, or pin it out of / back into rotation.
    Backend(BackendRequest),
    /// Add a backend to a service at runtime: checked like the config's,
    /// persisted in the state dir.
    BackendAdd(BackendAddRequest),
    /// Remove a backend added at runtime; its open flows drain.
    BackendRemove(BackendRemoveRequest),
    /// Open flows of a service.
    Flows(FlowsRequest),
    /// Re-read the config file.
    Reload,
    /// Start a progressive shift of new connections to `to`.
    Shift(ShiftRequest),
    /// Stop a running shift, rolling back to where it began (default) or
    /// holding the current ratio.
    ShiftAbort(ShiftAbortRequest),
    /// All new connections to `pool` at once, after checking its health.
    Promote(PoolRequest),
    /// Back to the ratio before the latest change.
    Rollback(ServiceRequest),
    /// This host as a whole: withdraw its VIPs from the routers (`[bgp]`),
    /// or announce them again.
    Node(NodeRequest),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct NodeRequest {
    #[command(subcommand)]
    pub action: NodeAction,
}

/// On the wire `"drain"` or `"resume"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::Subcommand)]
#[serde(rename_all = "kebab-case")]
pub enum NodeAction {
    /// Withdraw every VIP from the routers: they send this host's share of
    /// flows, open ones included, to the other hosts (in full NAT its open
    /// connections break there); the data plane keeps forwarding what still
    /// arrives. Persists across restarts.
    Drain,
    /// Announce the VIPs that can serve again.
    #[command(alias = "undrain")]
    Resume,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RatioRequest {
    pub service: String,
    pub ratio: Ratio,
    /// Allow a share for a pool with no enabled backend.
    #[arg(long)]
    #[serde(default)]
    pub force: bool,
}

/// `drain` (all new connections to the other pool) and `promote` (all to
/// this one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct PoolRequest {
    pub service: String,
    pub pool: Pool,
    #[arg(long)]
    #[serde(default)]
    pub force: bool,
    /// Reset the drained pool's connections still open after this long, at
    /// both ends (e.g. 5m; default: the service's `drain_deadline`, if any).
    #[arg(long = "deadline", value_name = "DURATION", value_parser = deadline_secs)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u64>,
}

/// `--deadline`: a duration, in whole seconds (rounded up), above zero.
fn deadline_secs(text: &str) -> Result<u64, String> {
    let duration = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    if secs == 0 {
        return Err("a deadline must be greater than zero".to_owned());
    }
    Ok(secs)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct BackendRequest {
    pub service: String,
    pub address: SocketAddr,
    #[command(subcommand)]
    pub action: BackendAction,
}

/// On the wire `"enable"`, `"disable"` or `{"weight": N}`; on the command
/// line a subcommand.
// Declared in the order serde's errors have always listed the variants;
// `display_order` keeps `weight` first in the help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::Subcommand)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum BackendAction {
    /// Back into rotation.
    #[command(display_order = 1)]
    Enable,
    /// Out of rotation regardless of health; open flows drain.
    #[command(display_order = 2)]
    Disable,
    /// New-flow weight, 0..=1000 (0 drains it).
    #[command(display_order = 0)]
    Weight(BackendWeight),
}

/// A bare number on the wire; a struct only so clap can take it as the
/// `weight` subcommand's argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(transparent)]
pub struct BackendWeight {
    pub weight: u32,
}

impl fmt::Display for BackendAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendAction::Weight(BackendWeight { weight }) => write!(f, "weight({weight})"),
            BackendAction::Enable => f.write_str("enable"),
            BackendAction::Disable => f.write_str("disable"),
        }
    }
}

/// `backend-add`: a backend the config file does not list, kept across
/// restarts and reloads until `backend-remove`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct BackendAddRequest {
    pub service: String,
    pub address: SocketAddr,
    /// The pool it serves in.
    #[arg(long)]
    pub pool: Pool,
    /// New-flow weight, 0..=1000.
    #[arg(long, default_value_t = config::DEFAULT_WEIGHT)]
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// `backend-remove`: only a backend added at runtime; one from the config
/// file is disabled (`backend ... disable`) or removed from the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct BackendRemoveRequest {
    pub service: String,
    pub address: SocketAddr,
}

/// `flows` lists at most this many flows unless asked for more.
pub const DEFAULT_FLOWS_LIMIT: usize = 100;
/// `flows` never lists more than this many flows (about 1.5 MB of reply).
pub const MAX_FLOWS_LIMIT: usize = 10_000;
/// The `cmd` of a `flows` request, answered once the sweeper has listed.
pub const FLOWS_CMD: &str = "flows";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct FlowsRequest {
    pub service: String,
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Pool>,
    /// List at most this many flows (at most 10000). The reply says when
    /// more matched.
    #[arg(long, default_value_t = DEFAULT_FLOWS_LIMIT)]
    #[serde(default = "default_flows_limit")]
    pub limit: usize,
}

/// `ctl shift` takes a duration (`--interval 30s`) instead of seconds, and
/// `--abort` for a `shift-abort`, so it has its own arguments,
/// [`crate::cli::ShiftArgs`], with the same defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShiftRequest {
    pub service: String,
    pub to: Pool,
    #[serde(default = "default_steps")]
    pub steps: Vec<u8>,
    #[serde(default = "default_interval_secs")]
    pub interval_secs: f64,
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: f64,
    #[serde(default = "default_min_flows")]
    pub min_flows: u64,
    /// Analysis hook: a URL each step GETs, a 2xx passing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_url: Option<String>,
    /// Analysis hook: a Prometheus query each step checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_prometheus: Option<PrometheusCheck>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShiftAbortRequest {
    pub service: String,
    #[serde(default = "yes")]
    pub rollback: bool,
}

/// A request naming only its service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ServiceRequest {
    pub service: String,
}

fn default_weight() -> u32 {
    config::DEFAULT_WEIGHT
}

fn default_flows_limit() -> usize {
    DEFAULT_FLOWS_LIMIT
}

// The shift defaults are written as an operator types them, and read with
// the same parsers the command line uses, so both sides agree by construction.
fn default_steps() -> Vec<u8> {
    shift::parse_steps(shift::DEFAULT_STEPS).expect("shift::DEFAULT_STEPS parses")
}

fn default_interval_secs() -> f64 {
    humantime::parse_duration(shift::DEFAULT_INTERVAL)
        .expect("shift::DEFAULT_INTERVAL parses")
        .as_secs_f64()
}

fn default_max_error_rate() -> f64 {
    shift::parse_rate(shift::DEFAULT_MAX_ERROR_RATE).expect("shift::DEFAULT_MAX_ERROR_RATE parses")
}

fn default_min_flows() -> u64 {
    shift::DEFAULT_MIN_FLOWS
}

fn yes() -> bool {
    true
}

impl Request {
    /// Every request's `cmd` tag, for per-command metrics.
    pub const COMMANDS: [&'static str; 13] = [
        "status",
        "ratio",
        "drain",
        "backend",
        "backend-add",
        "backend-remove",
        "flows",
        "reload",
        "shift",
        "shift-abort",
        "promote",
        "rollback",
        "node",
    ];

    /// The `cmd` tag this request has on the wire.
    pub fn cmd(&self) -> &'static str {
        match self {
            Request::Status(_) => "status",
            Request::Ratio(_) => "ratio",
            Request::Drain(_) => "drain",
            Request::Backend(_) => "backend",
            Request::BackendAdd(_) => "backend-add",
            Request::BackendRemove(_) => "backend-remove",
            Request::Flows(_) => FLOWS_CMD,
            Request::Reload => "reload",
            Request::Shift(_) => "shift",
            Request::ShiftAbort(_) => "shift-abort",
            Request::Promote(_) => "promote",
            Request::Rollback(_) => "rollback",
            Request::Node(_) => "node",
        }
    }

    /// Whether the request only reads: what a read-only token of the remote
    /// API may send.
    pub fn is_read_only(&self) -> bool {
        matches!(self, Request::Status(_) | Request::Flows(_))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceStatus>>,
    /// With `services`: how long ago the open flows were counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows_counted_secs_ago: Option<f64>,
    /// With `services`: a flow sweep was running when the request came (the
    /// counts are the last complete sweep's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep_running: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<RatioChange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<Vec<FlowInfo>>,
    /// With `flows`: more flows matched than are listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows_truncated: Option<bool>,
    /// With `flows`: how many flow-table entries were read to list them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows_scanned: Option<u64>,
    /// With `services`, when the config has `[bgp]`: what this host announces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpStatus>,
    /// With `services`, when the config has `[cluster]`: this host in its fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
}

/// What `status` shows of the fleet (`[cluster]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// This host's name in the fleet.
    pub host: String,
    /// The etcd endpoints.
    pub etcd: String,
    /// Whether etcd answered this host's last read (every 200 ms).
    pub etcd_answers: bool,
    /// The revision of the fleet state this host applies; none before its
    /// first read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// The services whose shift this host drives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leads: Vec<String>,
    /// Backends another host's health check sees otherwise than this
    /// host's ("web 10.0.1.11:8080: up here, down on lb2"): their tables
    /// differ in those backends' slots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_differs: Vec<String>,
}

/// What `status` shows of the VIP announcements (`[bgp]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BgpStatus {
    /// `ctl node drain` is in effect: nothing is announced.
    pub node_drained: bool,
    /// The VIP addresses BIRD accepted to announce, as of the last
    /// successful `birdc configure`.
    pub announced: Vec<IpAddr>,
    /// The other VIP addresses: drained, no backend can serve, or BIRD has
    /// not taken them yet.
    pub withdrawn: Vec<IpAddr>,
    /// The file bird.conf includes.
    pub include: PathBuf,
    /// Whether the last `birdc configure` succeeded.
    pub last_configure_ok: bool,
    /// birdc's reply, or why it failed (retried every second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_configure: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_configure_unix_secs: Option<f64>,
}

impl Reply {
    pub fn error(error: impl Into<String>) -> Self {
        Reply {
            ok: false,
            error: Some(error.into()),
            ..Default::default()
        }
    }

    pub fn done(message: impl Into<String>) -> Self {
        Reply {
            ok: true,
            message: Some(message.into()),
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatioChange {
    pub old: Ratio,
    pub new: Ratio,
}

pub use self::status::{BackendHealth, BackendStatus, FlowInfo, ListenerStatus, ServiceStatus, SynProxyStatus};

/// Parses one request line; the error is what the reply says.
pub fn parse_request(line: &str) -> Result<Request, String> {
    serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))
}

mod status;
#[cfg(test)]
mod tests;
