//! The daemon's TOML configuration.
//!
//! ```toml
//! interface = "eth0"                # one-arm; or front_interface + back_interface (two-arm)
//! xdp_mode = "auto"                 # auto | native | generic
//! snat_address = "10.0.0.1"
//! snat_ports = "20000-29999"        # inclusive, >= 1024
//! max_flows = 1048576
//! lookup_capacity = 2097184         # slots for all lookup tables (2 per service)
//! pin_dir = "/sys/fs/bpf/bg-lb"
//! state_dir = "/var/lib/bg-lb"
//! metrics = "127.0.0.1:9750"        # Prometheus /metrics listener; off when absent
//!
//! [admin]
//! socket = "/run/bg-lb/admin.sock"
//! group = "bglb"
//!
//! [timeouts]
//! established_idle = "1h"
//! closing = "10s"
//! syn = "30s"
//!
//! [[service]]
//! name = "web"
//! vip = "10.0.0.100:80"
//! standby_vip = "10.0.0.100:8080"
//! ratio = "50:50"                   # BLUE:GREEN
//! lookup_table_size = 65537         # prime
//!
//! [service.health]                  # before or after the service's backends
//! type = "http"                     # tcp | http
//! interval = "2s"
//! fast_interval = "500ms"           # while a backend is changing state; <= interval
//! timeout = "1s"                    # < interval
//! rise = 2                          # 1..=100 successes in a row to go up
//! fall = 3                          # 1..=100 failures in a row to go down
//! on_down = "drain"                 # drain | reset
//! live_path = "/live"               # http only, like the keys below
//! standby_path = "/standby"
//! expect_status = "200"             # or "200-399"
//! host = "web.example"              # Host header; default: the backend address
//! expect_body = "ok"                # substring the body must contain
//!
//! [[service.backend]]
//! pool = "blue"
//! address = "10.0.1.11:8080"
//! weight = 100                      # 0..=1000, 0 drains
//! ```
//!
//! Everything but `snat_address`, the interface(s), and each service's `name`
//! and `vip` and each backend's `pool` and `address` has a default.
//!
//! Parsing is two-step: serde reads the file into `Raw*` structs whose values
//! keep their byte spans ([`toml::Spanned`]), then validation turns them into
//! the public structs. The spans let every error name `FILE:LINE:COL`, so an
//! operator can go straight to the offending line.

use std::{
    collections::HashMap,
    fmt, fs, io,
    net::{Ipv4Addr, SocketAddrV4},
    ops::{Range, RangeInclusive},
    path::{Path, PathBuf},
    time::Duration,
};

use bg_lb_common::maps::{DEFAULT_LOOKUP_CAPACITY, DEFAULT_LUT_SIZE, DEFAULT_MAX_FLOWS, MAX_BACKENDS, MAX_SERVICES};
use serde::Deserialize;
use toml::Spanned;

use crate::ratio::{Pool, Ratio};

const DEFAULT_SNAT_PORTS: (u16, u16) = (20_000, 29_999);
/// Ports below 1024 are the privileged, well-known ones that the host's own services listen on.
const MIN_SNAT_PORT: u16 = 1024;
const MAX_FLOWS_RANGE: RangeInclusive<i64> = 1024..=16_777_216;
const LUT_SIZE_RANGE: RangeInclusive<i64> = 7..=1_000_003;
/// Highest backend weight; 0 drains a backend.
pub const MAX_WEIGHT: u32 = 1000;
const DEFAULT_WEIGHT: u32 = 100;
const WEIGHT_RANGE: RangeInclusive<i64> = 0..=MAX_WEIGHT as i64;
const DEFAULT_BLUE_SHARE: u32 = 50;
const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/bg-lb";
const DEFAULT_STATE_DIR: &str = "/var/lib/bg-lb";
const DEFAULT_ADMIN_SOCKET: &str = "/run/bg-lb/admin.sock";
const DEFAULT_ESTABLISHED_IDLE: Duration = Duration::from_secs(60 * 60);
const DEFAULT_CLOSING: Duration = Duration::from_secs(10);
const DEFAULT_SYN: Duration = Duration::from_secs(30);
/// Linux interface names are at most IFNAMSIZ - 1 bytes.
const MAX_INTERFACE_NAME_LEN: usize = 15;
const MAX_SERVICE_NAME_LEN: usize = 64;
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_HEALTH_FAST_INTERVAL: Duration = Duration::from_millis(500);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_RISE: u32 = 2;
const DEFAULT_FALL: u32 = 3;
const RISE_FALL_RANGE: RangeInclusive<i64> = 1..=100;
const DEFAULT_LIVE_PATH: &str = "/live";
const DEFAULT_STANDBY_PATH: &str = "/standby";
const DEFAULT_EXPECT_STATUS: (u16, u16) = (200, 200);
const HTTP_STATUS_RANGE: RangeInclusive<u16> = 100..=599;

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Interfaces,
    pub xdp_mode: XdpModeSetting,
    pub snat_address: Ipv4Addr,
    /// Inclusive range.
    pub snat_ports: (u16, u16),
    pub max_flows: u32,
    pub lookup_capacity: u32,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub admin: AdminConfig,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None` serves none.
    pub metrics: Option<SocketAddrV4>,
    pub timeouts: Timeouts,
    pub services: Vec<ServiceConfig>,
}

/// Where the XDP program is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interfaces {
    /// Clients and backends are reached through the same interface (XDP_TX).
    OneArm { interface: String },
    /// Clients arrive on `front`, backends sit behind `back` (XDP_REDIRECT).
    TwoArm { front: String, back: String },
}

impl Interfaces {
    pub fn names(&self) -> Vec<&str> {
        match self {
            Interfaces::OneArm { interface } => vec![interface],
            Interfaces::TwoArm { front, back } => vec![front, back],
        }
    }
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum XdpModeSetting {
    /// Native (driver) mode; falls back to generic mode with a warning if the driver lacks XDP support.
    #[default]
    Auto,
    /// Native mode or fail.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
}

impl XdpModeSetting {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "auto" => Some(XdpModeSetting::Auto),
            "native" => Some(XdpModeSetting::Native),
            "generic" => Some(XdpModeSetting::Generic),
            _ => None,
        }
    }
}

impl fmt::Display for XdpModeSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpModeSetting::Auto => "auto",
            XdpModeSetting::Native => "native",
            XdpModeSetting::Generic => "generic",
        })
    }
}

/// The admin (control) socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    pub socket: PathBuf,
    /// Group that gets access to the socket, besides root.
    pub group: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: PathBuf::from(DEFAULT_ADMIN_SOCKET),
            group: None,
        }
    }
}

/// Flow-table timeouts; all non-zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub established_idle: Duration,
    pub closing: Duration,
    pub syn: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            established_idle: DEFAULT_ESTABLISHED_IDLE,
            closing: DEFAULT_CLOSING,
            syn: DEFAULT_SYN,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
    pub vip: SocketAddrV4,
    pub standby_vip: Option<SocketAddrV4>,
    pub ratio: Ratio,
    /// Prime.
    pub lookup_table_size: u32,
    pub backends: Vec<BackendConfig>,
    /// `[service.health]`; [`HealthConfig::default`] (TCP connect checks) when the table is absent.
    pub health: HealthConfig,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub pool: Pool,
    pub address: SocketAddrV4,
    /// 0 drains the backend: no new flows, existing ones continue.
    pub weight: u32,
}

/// How a service's backends are checked (`[service.health]`).
///
/// A backend goes up after `rise` consecutive successful checks and down after `fall` consecutive failed ones
/// (HAProxy semantics); results in between do not change its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    pub check: HealthCheck,
    /// Time between checks of a backend whose last result agrees with its up/down state.
    pub interval: Duration,
    /// Time between checks while a backend is transitioning (its last result differs from its up/down state);
    /// at most `interval`.
    pub fast_interval: Duration,
    /// How long one check may take; greater than zero and less than `interval`.
    pub timeout: Duration,
    /// Consecutive successes for a down backend to go up; 1..=100.
    pub rise: u32,
    /// Consecutive failures for an up backend to go down; 1..=100.
    pub fall: u32,
    pub on_down: OnDown,
}

impl Default for HealthConfig {
    /// TCP connect checks every 2s (500ms while transitioning), 1s timeout, rise 2, fall 3, drain when down.
    fn default() -> Self {
        HealthConfig {
            check: HealthCheck::Tcp,
            interval: DEFAULT_HEALTH_INTERVAL,
            fast_interval: DEFAULT_HEALTH_FAST_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            on_down: OnDown::default(),
        }
    }
}

/// What one check does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCheck {
    /// A TCP connect to the backend address succeeds. Says nothing about live or standby.
    Tcp,
    /// HTTP GETs of the live and standby paths.
    Http(HttpCheck),
}

/// HTTP checks: every instance serves `live_path` and `standby_path`, and the one that answers with an expected
/// status (and body) says whether the backend is live or standby.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    /// Starts with '/'; printable ASCII without spaces.
    pub live_path: String,
    /// Same rule as `live_path`.
    pub standby_path: String,
    /// Inclusive range within 100..=599, min <= max.
    pub expect_status: (u16, u16),
    /// Host header; `None` sends the backend address. Non-empty, printable ASCII without spaces.
    pub host: Option<String>,
    /// A substring the response body must contain; non-empty.
    pub expect_body: Option<String>,
}

impl Default for HttpCheck {
    /// `/live` and `/standby`, status 200, no Host override, any body.
    fn default() -> Self {
        HttpCheck {
            live_path: DEFAULT_LIVE_PATH.into(),
            standby_path: DEFAULT_STANDBY_PATH.into(),
            expect_status: DEFAULT_EXPECT_STATUS,
            host: None,
            expect_body: None,
        }
    }
}

/// What happens to the open flows of a backend that goes down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnDown {
    /// They are kept and drain: they continue until they end or time out.
    #[default]
    Drain,
    /// They are reset.
    Reset,
}

impl OnDown {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "drain" => Some(OnDown::Drain),
            "reset" => Some(OnDown::Reset),
            _ => None,
        }
    }
}

impl fmt::Display for OnDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnDown::Drain => "drain",
            OnDown::Reset => "reset",
        })
    }
}

/// Why the configuration was rejected; only the first problem found is reported.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read. Not marked `#[source]` because the message already includes it.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    /// Syntax or validation error at a place in the file; `line` and `column` are 1-based.
    #[error("{}:{line}:{column}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
}

impl ConfigError {
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Io { path, .. } | ConfigError::Invalid { path, .. } => path,
        }
    }

    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Invalid { line, .. } => Some(*line),
        }
    }

    pub fn column(&self) -> Option<usize> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Invalid { column, .. } => Some(*column),
        }
    }
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = fs::read_to_string(path).map_err(|error| ConfigError::Io {
        path: path.to_owned(),
        error,
    })?;
    parse(path, &text)
}

/// Parses and validates `text`; `path` only appears in error messages.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let located = |Invalid { span, reason }: Invalid| {
        let (line, column) = position(text, span.start);
        ConfigError::Invalid {
            path: path.to_owned(),
            line,
            column,
            reason,
        }
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| located(Invalid::from_toml(&e)))?;
    validate(raw, text).map_err(located)
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.as_bytes().get(..offset).unwrap_or_default();
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    // Spans from toml are on char boundaries; fall back to bytes if one is not.
    let column = 1 + text
        .get(line_start..offset)
        .map_or(offset - line_start, |s| s.chars().count());
    (line, column)
}

/// An error before it is tied to a file: a byte span and what is wrong there.
#[derive(Debug)]
struct Invalid {
    span: Range<usize>,
    reason: String,
}

impl Invalid {
    fn new(span: Range<usize>, reason: impl Into<String>) -> Invalid {
        Invalid {
            span,
            reason: reason.into(),
        }
    }

    fn at<T>(span: Range<usize>, reason: impl Into<String>) -> Result<T, Invalid> {
        Err(Invalid::new(span, reason))
    }

    fn from_toml(error: &toml::de::Error) -> Invalid {
        // Some messages span lines ("invalid table header\nduplicate key ..."); keep the report on one.
        let reason = error.message().trim().replace('\n', ": ");
        Invalid::new(error.span().unwrap_or(0..0), reason)
    }
}

// The file as serde sees it. Values that validation may complain about are `Spanned` so the error can point at
// them; integers are `i64` (TOML's integer type) so out-of-range values get our message rather than serde's.
// Tables themselves are not wrapped: `Spanned` tables break on dotted keys (`admin.socket = ...`) in toml 0.8.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: Option<Spanned<String>>,
    front_interface: Option<Spanned<String>>,
    back_interface: Option<Spanned<String>>,
    xdp_mode: Option<Spanned<String>>,
    snat_address: Spanned<String>,
    snat_ports: Option<Spanned<String>>,
    max_flows: Option<Spanned<i64>>,
    lookup_capacity: Option<Spanned<i64>>,
    pin_dir: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    admin: Option<RawAdmin>,
    metrics: Option<Spanned<String>>,
    timeouts: Option<RawTimeouts>,
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    socket: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    established_idle: Option<Spanned<String>>,
    closing: Option<Spanned<String>>,
    syn: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    vip: Spanned<String>,
    standby_vip: Option<Spanned<String>>,
    ratio: Option<Spanned<String>>,
    lookup_table_size: Option<Spanned<i64>>,
    #[serde(default)]
    backend: Vec<RawBackend>,
    health: Option<RawHealth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(rename = "type")]
    check: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    fast_interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    on_down: Option<Spanned<String>>,
    live_path: Option<Spanned<String>>,
    standby_path: Option<Spanned<String>>,
    expect_status: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    expect_body: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    pool: Spanned<String>,
    address: Spanned<String>,
    weight: Option<Spanned<i64>>,
}

fn validate(raw: RawConfig, text: &str) -> Result<Config, Invalid> {
    let interfaces = interfaces(&raw)?;
    let xdp_mode = raw.xdp_mode.as_ref().map_or(Ok(XdpModeSetting::default()), xdp_mode)?;
    let snat_address = snat_address(&raw.snat_address)?;
    let snat_ports = raw.snat_ports.as_ref().map_or(Ok(DEFAULT_SNAT_PORTS), snat_ports)?;
    let max_flows = match &raw.max_flows {
        Some(value) => integer_in(value, "max_flows", MAX_FLOWS_RANGE)?,
        None => DEFAULT_MAX_FLOWS,
    };
    let lookup_capacity = match &raw.lookup_capacity {
        Some(value) => integer_in(value, "lookup_capacity", 1..=i64::from(u32::MAX))?,
        None => DEFAULT_LOOKUP_CAPACITY,
    };
    let pin_dir = absolute_path(raw.pin_dir.as_ref(), "pin_dir", DEFAULT_PIN_DIR)?;
    let state_dir = absolute_path(raw.state_dir.as_ref(), "state_dir", DEFAULT_STATE_DIR)?;
    let admin = raw.admin.as_ref().map_or(Ok(AdminConfig::default()), admin)?;
    let metrics = raw.metrics.as_ref().map(metrics_listen).transpose()?;
    let timeouts = raw.timeouts.as_ref().map_or(Ok(Timeouts::default()), timeouts)?;
    let services = services(&raw.service, snat_address, &raw.snat_address, text)?;
    check_lookup_capacity(lookup_capacity, raw.lookup_capacity.as_ref(), &raw.service, &services)?;
    Ok(Config {
        interfaces,
        xdp_mode,
        snat_address,
        snat_ports,
        max_flows,
        lookup_capacity,
        pin_dir,
        state_dir,
        admin,
        metrics,
        timeouts,
        services,
    })
}

fn interfaces(raw: &RawConfig) -> Result<Interfaces, Invalid> {
    match (&raw.interface, &raw.front_interface, &raw.back_interface) {
        (Some(interface), None, None) => Ok(Interfaces::OneArm {
            interface: interface_name(interface)?,
        }),
        (None, Some(front), Some(back)) => {
            let (front_name, back_name) = (interface_name(front)?, interface_name(back)?);
            if front_name == back_name {
                return Invalid::at(
                    back.span(),
                    format!(
                        "front_interface and back_interface are both {front_name:?}; for one interface use `interface`"
                    ),
                );
            }
            Ok(Interfaces::TwoArm {
                front: front_name,
                back: back_name,
            })
        }
        (Some(_), Some(two_arm), _) | (Some(_), None, Some(two_arm)) => Invalid::at(
            two_arm.span(),
            "`interface` (one-arm) and `front_interface`/`back_interface` (two-arm) are mutually exclusive",
        ),
        (None, Some(front), None) => Invalid::at(front.span(), "front_interface needs back_interface too (two-arm)"),
        (None, None, Some(back)) => Invalid::at(back.span(), "back_interface needs front_interface too (two-arm)"),
        (None, None, None) => Invalid::at(
            0..0,
            "no interface: set `interface` (one-arm) or `front_interface` and `back_interface` (two-arm)",
        ),
    }
}

/// The kernel's rules for a device name (`dev_valid_name`).
fn interface_name(name: &Spanned<String>) -> Result<String, Invalid> {
    let text = name.get_ref();
    let valid = !text.is_empty()
        && text.len() <= MAX_INTERFACE_NAME_LEN
        && text != "."
        && text != ".."
        && !text.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if !valid {
        return Invalid::at(
            name.span(),
            format!("invalid interface name {text:?}: 1 to {MAX_INTERFACE_NAME_LEN} bytes, no '/', ':' or spaces"),
        );
    }
    Ok(text.clone())
}

fn xdp_mode(mode: &Spanned<String>) -> Result<XdpModeSetting, Invalid> {
    let text = mode.get_ref();
    XdpModeSetting::parse(text).ok_or_else(|| {
        Invalid::new(
            mode.span(),
            format!("unknown xdp_mode {text:?} (expected auto, native or generic)"),
        )
    })
}

fn snat_address(address: &Spanned<String>) -> Result<Ipv4Addr, Invalid> {
    let text = address.get_ref();
    let ip = parse_ipv4(text).map_err(|reason| Invalid::new(address.span(), format!("snat_address: {reason}")))?;
    if ip.is_unspecified() {
        return Invalid::at(address.span(), "snat_address must not be 0.0.0.0");
    }
    Ok(ip)
}

/// `MIN-MAX`, inclusive.
fn snat_ports(ports: &Spanned<String>) -> Result<(u16, u16), Invalid> {
    let text = ports.get_ref();
    let parsed = text
        .split_once('-')
        .and_then(|(min, max)| Some((min.trim().parse().ok()?, max.trim().parse().ok()?)));
    let Some((min, max)): Option<(u16, u16)> = parsed else {
        return Invalid::at(
            ports.span(),
            format!("snat_ports {text:?} is not MIN-MAX with ports 0-65535 (e.g. 20000-29999)"),
        );
    };
    if min > max {
        return Invalid::at(
            ports.span(),
            format!("snat_ports {text:?} is inverted: {min} is above {max}"),
        );
    }
    if min < MIN_SNAT_PORT {
        return Invalid::at(
            ports.span(),
            format!("snat_ports {text:?} starts below {MIN_SNAT_PORT}"),
        );
    }
    Ok((min, max))
}

fn integer_in(value: &Spanned<i64>, key: &str, range: RangeInclusive<i64>) -> Result<u32, Invalid> {
    let n = *value.get_ref();
    // The ranges all lie within u32, so the conversion only fails for values the range check rejects anyway.
    match u32::try_from(n) {
        Ok(v) if range.contains(&n) => Ok(v),
        _ => Invalid::at(
            value.span(),
            format!("{key} {n} is out of range {}..={}", range.start(), range.end()),
        ),
    }
}

fn absolute_path(path: Option<&Spanned<String>>, key: &str, default: &str) -> Result<PathBuf, Invalid> {
    let Some(path) = path else {
        return Ok(PathBuf::from(default));
    };
    // The daemon may run from any directory; a relative path would silently depend on it.
    if !Path::new(path.get_ref()).is_absolute() {
        return Invalid::at(
            path.span(),
            format!("{key} {:?} must be an absolute path", path.get_ref()),
        );
    }
    Ok(PathBuf::from(path.get_ref()))
}

fn admin(raw: &RawAdmin) -> Result<AdminConfig, Invalid> {
    let socket = absolute_path(raw.socket.as_ref(), "admin.socket", DEFAULT_ADMIN_SOCKET)?;
    let group = match &raw.group {
        Some(group) if group.get_ref().is_empty() => return Invalid::at(group.span(), "admin.group must not be empty"),
        Some(group) => Some(group.get_ref().clone()),
        None => None,
    };
    Ok(AdminConfig { socket, group })
}

/// An IPv4 `ADDRESS:PORT` to listen on: 0.0.0.0 (every address) is allowed, port 0 is not (Prometheus needs a
/// known port).
fn metrics_listen(value: &Spanned<String>) -> Result<SocketAddrV4, Invalid> {
    let text = value.get_ref();
    let fail = |reason: String| Invalid::new(value.span(), format!("metrics {text:?}: {reason}"));
    let address = parse_socket_addr(text).map_err(fail)?;
    if address.port() == 0 {
        return Err(fail("port 0 is not allowed".into()));
    }
    Ok(address)
}

fn timeouts(raw: &RawTimeouts) -> Result<Timeouts, Invalid> {
    let defaults = Timeouts::default();
    Ok(Timeouts {
        established_idle: duration(
            raw.established_idle.as_ref(),
            "timeouts.established_idle",
            defaults.established_idle,
        )?,
        closing: duration(raw.closing.as_ref(), "timeouts.closing", defaults.closing)?,
        syn: duration(raw.syn.as_ref(), "timeouts.syn", defaults.syn)?,
    })
}

/// A non-zero duration such as "500ms"; `key` is the dotted name used in errors (`timeouts.syn`).
fn duration(value: Option<&Spanned<String>>, key: &str, default: Duration) -> Result<Duration, Invalid> {
    let Some(value) = value else { return Ok(default) };
    let text = value.get_ref();
    let parsed =
        humantime::parse_duration(text).map_err(|e| Invalid::new(value.span(), format!("{key} {text:?}: {e}")))?;
    if parsed.is_zero() {
        return Invalid::at(value.span(), format!("{key} must be greater than zero"));
    }
    // The data plane keeps times as u64 nanoseconds.
    if u64::try_from(parsed.as_nanos()).is_err() {
        return Invalid::at(value.span(), format!("{key} {text:?} is too long"));
    }
    Ok(parsed)
}

/// Validates every service, then what services must not share.
fn services(
    raw: &[RawService],
    snat: Ipv4Addr,
    snat_key: &Spanned<String>,
    text: &str,
) -> Result<Vec<ServiceConfig>, Invalid> {
    let mut shared = SharedChecks {
        text,
        snat,
        snat_span: snat_key.span(),
        names: HashMap::new(),
        vips: HashMap::new(),
        backends: 0,
    };
    let mut services = Vec::with_capacity(raw.len());
    for (index, raw_service) in raw.iter().enumerate() {
        if index == MAX_SERVICES as usize {
            return Invalid::at(
                raw_service.name.span(),
                format!("too many services: at most {MAX_SERVICES}"),
            );
        }
        let service = service(raw_service, text)?;
        shared.name(raw_service)?;
        shared.vip(raw_service, "vip", &raw_service.vip, service.vip)?;
        if let (Some(value), Some(address)) = (&raw_service.standby_vip, service.standby_vip) {
            shared.vip(raw_service, "standby_vip", value, address)?;
        }
        shared.backend_budget(raw_service)?;
        services.push(service);
    }
    Ok(services)
}

/// State for the checks across services: names and VIPs are unique, no VIP is the SNAT address, and all backends
/// fit in the BACKENDS map.
struct SharedChecks<'a> {
    text: &'a str,
    snat: Ipv4Addr,
    snat_span: Range<usize>,
    // Spans are kept rather than lines: finding a line scans the text, so only do that for an error.
    /// Service name -> span.
    names: HashMap<&'a str, Range<usize>>,
    /// VIP -> (service, key, span).
    vips: HashMap<SocketAddrV4, (&'a str, &'static str, Range<usize>)>,
    backends: usize,
}

impl<'a> SharedChecks<'a> {
    fn name(&mut self, service: &'a RawService) -> Result<(), Invalid> {
        let name = &service.name;
        match self.names.insert(name.get_ref(), name.span()) {
            Some(first) => Invalid::at(
                name.span(),
                format!(
                    "duplicate service name {:?} (first on line {})",
                    name.get_ref(),
                    line_of(self.text, &first)
                ),
            ),
            None => Ok(()),
        }
    }

    fn vip(
        &mut self,
        service: &'a RawService,
        key: &'static str,
        value: &Spanned<String>,
        address: SocketAddrV4,
    ) -> Result<(), Invalid> {
        if *address.ip() == self.snat {
            return Invalid::at(
                value.span(),
                format!(
                    "{key} {address} uses the snat_address (line {}); they must differ",
                    line_of(self.text, &self.snat_span)
                ),
            );
        }
        match self.vips.insert(address, (service.name.get_ref(), key, value.span())) {
            Some((first_service, first_key, first_span)) => Invalid::at(
                value.span(),
                format!(
                    "overlapping VIPs: {key} {address} is already the {first_key} of service {first_service:?} \
                     (line {})",
                    line_of(self.text, &first_span)
                ),
            ),
            None => Ok(()),
        }
    }

    fn backend_budget(&mut self, service: &RawService) -> Result<(), Invalid> {
        let room = MAX_BACKENDS as usize - self.backends;
        if let Some(first_over) = service.backend.get(room) {
            return Invalid::at(
                first_over.address.span(),
                format!("too many backends: at most {MAX_BACKENDS} across all services"),
            );
        }
        self.backends += service.backend.len();
        Ok(())
    }
}

fn service(raw: &RawService, text: &str) -> Result<ServiceConfig, Invalid> {
    let name = service_name(&raw.name)?;
    let vip = endpoint(&raw.vip, "vip")?;
    let standby_vip = raw
        .standby_vip
        .as_ref()
        .map(|s| endpoint(s, "standby_vip"))
        .transpose()?;
    if let (Some(standby), Some(raw_standby)) = (standby_vip, &raw.standby_vip)
        && standby == vip
    {
        return Invalid::at(
            raw_standby.span(),
            format!("overlapping VIPs: standby_vip {standby} equals the service's vip"),
        );
    }
    let ratio = match &raw.ratio {
        Some(ratio) => ratio
            .get_ref()
            .parse::<Ratio>()
            .map_err(|e| Invalid::new(ratio.span(), e.to_string()))?,
        None => Ratio::new(DEFAULT_BLUE_SHARE).expect("the default blue share is at most 100"),
    };
    let lookup_table_size = raw
        .lookup_table_size
        .as_ref()
        .map_or(Ok(DEFAULT_LUT_SIZE), lookup_table_size)?;
    let backends = backends(&raw.backend, &name, text)?;
    let health = raw.health.as_ref().map_or(Ok(HealthConfig::default()), health)?;
    Ok(ServiceConfig {
        name,
        vip,
        standby_vip,
        ratio,
        lookup_table_size,
        backends,
        health,
    })
}

fn health(raw: &RawHealth) -> Result<HealthConfig, Invalid> {
    let check = match &raw.check {
        None => HealthCheck::Tcp,
        Some(check) => match check.get_ref().as_str() {
            "tcp" => HealthCheck::Tcp,
            "http" => HealthCheck::Http(http_check(raw)?),
            other => {
                return Invalid::at(
                    check.span(),
                    format!("unknown health.type {other:?} (expected tcp or http)"),
                );
            }
        },
    };
    if check == HealthCheck::Tcp {
        reject_http_keys(raw)?;
    }
    let interval = duration(raw.interval.as_ref(), "health.interval", DEFAULT_HEALTH_INTERVAL)?;
    let fast_interval = duration(
        raw.fast_interval.as_ref(),
        "health.fast_interval",
        DEFAULT_HEALTH_FAST_INTERVAL,
    )?;
    let timeout = duration(raw.timeout.as_ref(), "health.timeout", DEFAULT_HEALTH_TIMEOUT)?;
    // Point at the key that breaks the rule; when that one is absent (a default), at the key that was given.
    if fast_interval > interval {
        let (span, default) = given_or_default(&raw.fast_interval, &raw.interval);
        return Invalid::at(
            span,
            format!(
                "health.fast_interval {}{default} must be at most health.interval {}",
                humantime::format_duration(fast_interval),
                humantime::format_duration(interval),
            ),
        );
    }
    if timeout >= interval {
        let (span, default) = given_or_default(&raw.timeout, &raw.interval);
        return Invalid::at(
            span,
            format!(
                "health.timeout {}{default} must be less than health.interval {}",
                humantime::format_duration(timeout),
                humantime::format_duration(interval),
            ),
        );
    }
    let rise = match &raw.rise {
        Some(rise) => integer_in(rise, "health.rise", RISE_FALL_RANGE)?,
        None => DEFAULT_RISE,
    };
    let fall = match &raw.fall {
        Some(fall) => integer_in(fall, "health.fall", RISE_FALL_RANGE)?,
        None => DEFAULT_FALL,
    };
    let on_down = match &raw.on_down {
        Some(on_down) => OnDown::parse(on_down.get_ref()).ok_or_else(|| {
            Invalid::new(
                on_down.span(),
                format!(
                    "unknown health.on_down {:?} (expected drain or reset)",
                    on_down.get_ref()
                ),
            )
        })?,
        None => OnDown::default(),
    };
    Ok(HealthConfig {
        check,
        interval,
        fast_interval,
        timeout,
        rise,
        fall,
        on_down,
    })
}

/// Where to point when `key` breaks a rule against `other`: at `key` if it was given, else at `other` with a note
/// that `key` has its default (one of the two was given, as the defaults keep the rules).
fn given_or_default(key: &Option<Spanned<String>>, other: &Option<Spanned<String>>) -> (Range<usize>, &'static str) {
    match (key, other) {
        (Some(key), _) => (key.span(), ""),
        (None, Some(other)) => (other.span(), " (the default)"),
        // Only reachable if the defaults broke the rule themselves.
        (None, None) => (0..0, " (the default)"),
    }
}

/// The keys that only an HTTP check uses, in the order of `RawHealth`.
fn http_keys(raw: &RawHealth) -> [(&'static str, Option<&Spanned<String>>); 5] {
    [
        ("live_path", raw.live_path.as_ref()),
        ("standby_path", raw.standby_path.as_ref()),
        ("expect_status", raw.expect_status.as_ref()),
        ("host", raw.host.as_ref()),
        ("expect_body", raw.expect_body.as_ref()),
    ]
}

/// A TCP check ignores the HTTP keys, so one given there is a mistake: most likely a forgotten `type = "http"`.
fn reject_http_keys(raw: &RawHealth) -> Result<(), Invalid> {
    let first = http_keys(raw)
        .into_iter()
        .filter_map(|(key, value)| Some((key, value?)))
        .min_by_key(|(_, value)| value.span().start);
    match first {
        Some((key, value)) => Invalid::at(
            value.span(),
            format!(
                "health.{key} needs type = \"http\" (the check type is {})",
                match &raw.check {
                    Some(_) => "\"tcp\"",
                    None => "tcp by default",
                }
            ),
        ),
        None => Ok(()),
    }
}

fn http_check(raw: &RawHealth) -> Result<HttpCheck, Invalid> {
    let live_path = http_path(raw.live_path.as_ref(), "health.live_path", DEFAULT_LIVE_PATH)?;
    let standby_path = http_path(raw.standby_path.as_ref(), "health.standby_path", DEFAULT_STANDBY_PATH)?;
    let expect_status = raw
        .expect_status
        .as_ref()
        .map_or(Ok(DEFAULT_EXPECT_STATUS), expect_status)?;
    let host = match &raw.host {
        Some(host) if host.get_ref().is_empty() => return Invalid::at(host.span(), "health.host must not be empty"),
        Some(host) if !is_printable_ascii_without_spaces(host.get_ref()) => {
            return Invalid::at(
                host.span(),
                format!(
                    "health.host {:?} must be printable ASCII without whitespace",
                    host.get_ref()
                ),
            );
        }
        Some(host) => Some(host.get_ref().clone()),
        None => None,
    };
    let expect_body = match &raw.expect_body {
        Some(body) if body.get_ref().is_empty() => {
            return Invalid::at(
                body.span(),
                "health.expect_body must not be empty (leave it out to accept any body)",
            );
        }
        Some(body) => Some(body.get_ref().clone()),
        None => None,
    };
    Ok(HttpCheck {
        live_path,
        standby_path,
        expect_status,
        host,
        expect_body,
    })
}

/// Visible ASCII: no spaces, control characters or anything outside ASCII, so the value goes into a request line
/// or header as it is.
fn is_printable_ascii_without_spaces(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_graphic())
}

/// An absolute request path that goes into the request line as it is.
fn http_path(value: Option<&Spanned<String>>, key: &str, default: &str) -> Result<String, Invalid> {
    let Some(value) = value else { return Ok(default.into()) };
    let text = value.get_ref();
    if !text.starts_with('/') {
        return Invalid::at(value.span(), format!("{key} {text:?} must start with '/'"));
    }
    if !is_printable_ascii_without_spaces(text) {
        return Invalid::at(
            value.span(),
            format!("{key} {text:?} must be printable ASCII without whitespace (percent-encode the rest)"),
        );
    }
    Ok(text.clone())
}

/// `STATUS` or `MIN-MAX`, inclusive, within 100..=599.
fn expect_status(value: &Spanned<String>) -> Result<(u16, u16), Invalid> {
    let text = value.get_ref();
    let code = |s: &str| -> Option<u16> {
        let s = s.trim();
        // Digits only: u16's parser would also take a sign.
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let parsed = match text.split_once('-') {
        Some((min, max)) => code(min).zip(code(max)),
        None => code(text).map(|status| (status, status)),
    };
    let Some((min, max)) = parsed else {
        return Invalid::at(
            value.span(),
            format!("health.expect_status {text:?} is not STATUS or MIN-MAX (e.g. \"200\" or \"200-399\")"),
        );
    };
    if !HTTP_STATUS_RANGE.contains(&min) || !HTTP_STATUS_RANGE.contains(&max) {
        return Invalid::at(
            value.span(),
            format!(
                "health.expect_status {text:?} is out of range {}..={}",
                HTTP_STATUS_RANGE.start(),
                HTTP_STATUS_RANGE.end()
            ),
        );
    }
    if min > max {
        return Invalid::at(
            value.span(),
            format!("health.expect_status {text:?} is inverted: {min} is above {max}"),
        );
    }
    Ok((min, max))
}

/// `[A-Za-z0-9_.-]{1,64}`: safe in log lines, file names and pin paths.
fn service_name(name: &Spanned<String>) -> Result<String, Invalid> {
    let text = name.get_ref();
    let valid = (1..=MAX_SERVICE_NAME_LEN).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !valid {
        return Invalid::at(
            name.span(),
            format!("invalid service name {text:?}: 1 to {MAX_SERVICE_NAME_LEN} of A-Z a-z 0-9 _ . -"),
        );
    }
    Ok(text.clone())
}

fn lookup_table_size(size: &Spanned<i64>) -> Result<u32, Invalid> {
    let n = integer_in(size, "lookup_table_size", LUT_SIZE_RANGE)?;
    if !is_prime(n) {
        // Maglev's permutations cover every slot only when the table size is prime.
        return Invalid::at(size.span(), format!("lookup_table_size {n} is not prime (e.g. 65537)"));
    }
    Ok(n)
}

fn is_prime(n: u32) -> bool {
    let n = u64::from(n);
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

fn backends(raw: &[RawBackend], service: &str, text: &str) -> Result<Vec<BackendConfig>, Invalid> {
    // Address -> span; the line is only worked out for an error.
    let mut seen: HashMap<SocketAddrV4, Range<usize>> = HashMap::new();
    let mut backends = Vec::with_capacity(raw.len());
    for raw_backend in raw {
        let backend = backend(raw_backend)?;
        if let Some(first) = seen.insert(backend.address, raw_backend.address.span()) {
            return Invalid::at(
                raw_backend.address.span(),
                format!(
                    "duplicate backend {} in service {service:?} (first on line {})",
                    backend.address,
                    line_of(text, &first)
                ),
            );
        }
        backends.push(backend);
    }
    Ok(backends)
}

fn backend(raw: &RawBackend) -> Result<BackendConfig, Invalid> {
    let pool = raw
        .pool
        .get_ref()
        .parse::<Pool>()
        .map_err(|e| Invalid::new(raw.pool.span(), e.to_string()))?;
    let address = endpoint(&raw.address, "address")?;
    let weight = match &raw.weight {
        Some(weight) => integer_in(weight, "weight", WEIGHT_RANGE)?,
        None => DEFAULT_WEIGHT,
    };
    Ok(BackendConfig { pool, address, weight })
}

/// An IPv4 `ADDRESS:PORT` that traffic can be sent to: neither 0.0.0.0 nor port 0.
fn endpoint(value: &Spanned<String>, key: &str) -> Result<SocketAddrV4, Invalid> {
    let text = value.get_ref();
    let fail = |reason: String| Invalid::new(value.span(), format!("{key} {text:?}: {reason}"));
    let address = parse_socket_addr(text).map_err(fail)?;
    if address.ip().is_unspecified() {
        return Err(fail("0.0.0.0 is not an address traffic can be sent to".into()));
    }
    if address.port() == 0 {
        return Err(fail("port 0 is not allowed".into()));
    }
    Ok(address)
}

fn parse_socket_addr(text: &str) -> Result<SocketAddrV4, String> {
    if text.starts_with('[') || text.matches(':').count() > 1 {
        return Err("IPv6 is not supported; expected IPv4 ADDRESS:PORT".into());
    }
    let Some((host, port)) = text.split_once(':') else {
        return Err("missing port; expected IPv4 ADDRESS:PORT".into());
    };
    let ip = parse_ipv4(host)?;
    let port = port
        .parse()
        .map_err(|_| format!("invalid port {port:?} (expected 1-65535)"))?;
    Ok(SocketAddrV4::new(ip, port))
}

fn parse_ipv4(text: &str) -> Result<Ipv4Addr, String> {
    text.parse().map_err(|_| {
        if text.contains(':') {
            format!("{text:?} is not an IPv4 address (IPv6 and ports are not accepted here)")
        } else if text.chars().any(|c| c.is_ascii_alphabetic()) {
            format!("{text:?} is not an IPv4 address (host names are not resolved)")
        } else {
            format!("{text:?} is not a valid IPv4 address")
        }
    })
}

/// Each service takes two regions of `lookup_table_size` slots (live and being rebuilt, for atomic swaps).
fn check_lookup_capacity(
    capacity: u32,
    capacity_key: Option<&Spanned<i64>>,
    raw: &[RawService],
    services: &[ServiceConfig],
) -> Result<(), Invalid> {
    let slots = |service: &ServiceConfig| 2 * u64::from(service.lookup_table_size);
    let first_over = services
        .iter()
        .scan(0, |needed, service| {
            *needed += slots(service);
            Some(*needed)
        })
        .position(|needed| needed > u64::from(capacity));
    let Some(first_over) = first_over else { return Ok(()) };
    // An explicit capacity is the thing to raise; with the default, the service that overflows it is the news.
    match (capacity_key, raw.get(first_over)) {
        (Some(key), _) => {
            let needed: u64 = services.iter().map(slots).sum();
            Invalid::at(
                key.span(),
                format!(
                    "lookup_capacity {capacity} is too small: the services need {needed} slots \
                     (2 x lookup_table_size each)"
                ),
            )
        }
        (None, Some(raw_service)) => Invalid::at(
            raw_service.name.span(),
            format!(
                "service {:?} does not fit in the default lookup_capacity {capacity} \
                 (2 x lookup_table_size slots per service); raise lookup_capacity",
                raw_service.name.get_ref()
            ),
        ),
        (None, None) => Ok(()),
    }
}

fn line_of(text: &str, span: &Range<usize>) -> usize {
    position(text, span.start).0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The top-level keys every test document needs: lines 1-2.
    const TOP: &str = "interface = \"eth0\"\nsnat_address = \"10.0.0.1\"\n";

    /// A service without backends, to append service keys or `[[service.backend]]` tables to: lines 3-5 after TOP.
    const WEB: &str = "[[service]]\nname = \"web\"\nvip = \"10.0.0.100:80\"\n";

    /// A blue backend, to append backend keys to: lines 6-8 after TOP and WEB.
    const BLUE: &str = "[[service.backend]]\npool = \"blue\"\naddress = \"10.0.1.1:80\"\n";

    /// A second service, without backends.
    const API: &str = "[[service]]\nname = \"api\"\nvip = \"10.0.0.101:80\"\n";

    fn parse_ok(text: &str) -> Config {
        parse(Path::new("test.toml"), text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// Expects `text` to be rejected on the one line marked `# <-`, with a message containing `needle`.
    #[track_caller]
    fn assert_rejected(text: &str, needle: &str) {
        let marked: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains("# <-"))
            .map(|(i, _)| i + 1)
            .collect();
        assert_eq!(marked.len(), 1, "mark exactly one line with `# <-`:\n{text}");
        let error = parse(Path::new("test.toml"), text).expect_err(text);
        assert_eq!(error.line(), Some(marked[0]), "wrong line for: {error}\n{text}");
        assert!(
            error.to_string().contains(needle),
            "{error:?} does not contain {needle:?}\n{text}"
        );
    }

    fn backend(pool: Pool, address: &str, weight: u32) -> BackendConfig {
        BackendConfig {
            pool,
            address: address.parse().unwrap(),
            weight,
        }
    }

    #[test]
    fn full_one_arm_config_parses_to_expected_structs() {
        let config = parse_ok(
            r#"
            interface = "eth0"
            xdp_mode = "native"
            snat_address = "10.0.0.1"
            snat_ports = "40000-40999"
            max_flows = 4096
            lookup_capacity = 1000
            pin_dir = "/sys/fs/bpf/test"
            state_dir = "/tmp/state"
            metrics = "127.0.0.1:9750"

            [admin]
            socket = "/tmp/admin.sock"
            group = "ops"

            [timeouts]
            established_idle = "5m"
            closing = "500ms"
            syn = "2s"

            [[service]]
            name = "web"
            vip = "10.0.0.100:80"
            standby_vip = "10.0.0.100:8080"
            ratio = "30:70"
            lookup_table_size = 251

            [[service.backend]]
            pool = "blue"
            address = "10.0.1.11:8080"
            weight = 0

            [[service.backend]]
            pool = "green"
            address = "10.0.2.11:8080"
            weight = 1000

            [[service]]
            name = "api.v2"
            vip = "10.0.0.101:443"
            lookup_table_size = 7
            "#,
        );
        let expected = Config {
            interfaces: Interfaces::OneArm {
                interface: "eth0".into(),
            },
            xdp_mode: XdpModeSetting::Native,
            snat_address: Ipv4Addr::new(10, 0, 0, 1),
            snat_ports: (40_000, 40_999),
            max_flows: 4096,
            lookup_capacity: 1000,
            pin_dir: "/sys/fs/bpf/test".into(),
            state_dir: "/tmp/state".into(),
            admin: AdminConfig {
                socket: "/tmp/admin.sock".into(),
                group: Some("ops".into()),
            },
            metrics: Some("127.0.0.1:9750".parse().unwrap()),
            timeouts: Timeouts {
                established_idle: Duration::from_secs(300),
                closing: Duration::from_millis(500),
                syn: Duration::from_secs(2),
            },
            services: vec![
                ServiceConfig {
                    name: "web".into(),
                    vip: "10.0.0.100:80".parse().unwrap(),
                    standby_vip: Some("10.0.0.100:8080".parse().unwrap()),
                    ratio: Ratio::new(30).unwrap(),
                    lookup_table_size: 251,
                    backends: vec![
                        backend(Pool::Blue, "10.0.1.11:8080", 0),
                        backend(Pool::Green, "10.0.2.11:8080", 1000),
                    ],
                    health: HealthConfig::default(),
                },
                ServiceConfig {
                    name: "api.v2".into(),
                    vip: "10.0.0.101:443".parse().unwrap(),
                    standby_vip: None,
                    ratio: Ratio::new(50).unwrap(),
                    lookup_table_size: 7,
                    backends: vec![],
                    health: HealthConfig::default(),
                },
            ],
        };
        assert_eq!(config, expected);
        assert_eq!(config.interfaces.names(), ["eth0"]);
    }

    #[test]
    fn full_two_arm_config_parses_to_expected_structs() {
        let config = parse_ok(
            r#"
            front_interface = "eth0"
            back_interface = "eth1"
            xdp_mode = "generic"
            snat_address = "192.168.1.1"

            [[service]]
            name = "db"
            vip = "10.0.0.100:5432"
            ratio = "100:0"

            [[service.backend]]
            pool = "green"
            address = "192.168.1.20:5432"
            "#,
        );
        let expected = Config {
            interfaces: Interfaces::TwoArm {
                front: "eth0".into(),
                back: "eth1".into(),
            },
            xdp_mode: XdpModeSetting::Generic,
            snat_address: Ipv4Addr::new(192, 168, 1, 1),
            services: vec![ServiceConfig {
                name: "db".into(),
                vip: "10.0.0.100:5432".parse().unwrap(),
                standby_vip: None,
                ratio: Ratio::all_to(Pool::Blue),
                lookup_table_size: DEFAULT_LUT_SIZE,
                backends: vec![backend(Pool::Green, "192.168.1.20:5432", DEFAULT_WEIGHT)],
                health: HealthConfig::default(),
            }],
            ..parse_ok(TOP)
        };
        assert_eq!(config, expected);
        assert_eq!(config.interfaces.names(), ["eth0", "eth1"]);
    }

    #[test]
    fn absent_optional_keys_take_their_defaults() {
        let config = parse_ok(&format!("{TOP}{WEB}{BLUE}"));
        let expected = Config {
            interfaces: Interfaces::OneArm {
                interface: "eth0".into(),
            },
            xdp_mode: XdpModeSetting::Auto,
            snat_address: Ipv4Addr::new(10, 0, 0, 1),
            snat_ports: (20_000, 29_999),
            max_flows: DEFAULT_MAX_FLOWS,
            lookup_capacity: DEFAULT_LOOKUP_CAPACITY,
            pin_dir: "/sys/fs/bpf/bg-lb".into(),
            state_dir: "/var/lib/bg-lb".into(),
            admin: AdminConfig {
                socket: "/run/bg-lb/admin.sock".into(),
                group: None,
            },
            metrics: None,
            timeouts: Timeouts {
                established_idle: Duration::from_secs(3600),
                closing: Duration::from_secs(10),
                syn: Duration::from_secs(30),
            },
            services: vec![ServiceConfig {
                name: "web".into(),
                vip: "10.0.0.100:80".parse().unwrap(),
                standby_vip: None,
                ratio: "50:50".parse().unwrap(),
                lookup_table_size: 65_537,
                backends: vec![backend(Pool::Blue, "10.0.1.1:80", 100)],
                health: HealthConfig {
                    check: HealthCheck::Tcp,
                    interval: Duration::from_secs(2),
                    fast_interval: Duration::from_millis(500),
                    timeout: Duration::from_secs(1),
                    rise: 2,
                    fall: 3,
                    on_down: OnDown::Drain,
                },
            }],
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn empty_admin_and_timeouts_tables_take_their_defaults() {
        let config = parse_ok(&format!("{TOP}[admin]\n[timeouts]\nsyn = \"1s\"\n"));
        assert_eq!(config.admin, AdminConfig::default());
        assert_eq!(
            config.timeouts,
            Timeouts {
                syn: Duration::from_secs(1),
                ..Timeouts::default()
            }
        );
    }

    #[test]
    fn dotted_and_inline_tables_are_accepted() {
        let config = parse_ok(&format!(
            "{TOP}admin.group = \"ops\"\ntimeouts = {{ closing = \"1s\" }}\n\
             service = [{{ name = \"a\", vip = \"10.0.0.100:80\", \
             backend = [{{ pool = \"green\", address = \"10.0.2.1:80\" }}] }}]\n"
        ));
        assert_eq!(config.admin.group.as_deref(), Some("ops"));
        assert_eq!(config.timeouts.closing, Duration::from_secs(1));
        assert_eq!(config.services[0].backends, [backend(Pool::Green, "10.0.2.1:80", 100)]);
    }

    #[test]
    fn service_without_backends_and_ratio_towards_an_empty_pool_are_accepted() {
        // The data plane hands the share of a pool that cannot serve to the other one.
        let config = parse_ok(&format!("{TOP}{WEB}ratio = \"0:100\"\n{BLUE}{API}"));
        assert_eq!(config.services[0].backends.len(), 1);
        assert!(config.services[1].backends.is_empty());
    }

    #[test]
    fn example_file_parses() {
        let config = parse_ok(include_str!("../../examples/bg-lb.toml"));
        assert_eq!(
            config.interfaces,
            Interfaces::OneArm {
                interface: "eth0".into()
            }
        );
        assert_eq!(config.snat_address, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(config.lookup_capacity, DEFAULT_LOOKUP_CAPACITY);
        assert_eq!(config.max_flows, DEFAULT_MAX_FLOWS);
        let [web] = config.services.as_slice() else {
            panic!("one service expected: {config:?}")
        };
        assert_eq!(web.name, "web");
        assert_eq!(web.vip, "10.0.0.100:80".parse().unwrap());
        assert_eq!(web.standby_vip, Some("10.0.0.100:8080".parse().unwrap()));
        let pools: Vec<Pool> = web.backends.iter().map(|b| b.pool).collect();
        assert_eq!(pools, [Pool::Blue, Pool::Blue, Pool::Green, Pool::Green]);
        assert_eq!(web.backends[3].weight, 0, "the example shows a drained backend");
        assert_eq!(
            web.health,
            HealthConfig {
                check: HealthCheck::Http(HttpCheck {
                    live_path: "/live".into(),
                    standby_path: "/standby".into(),
                    expect_status: (200, 200),
                    host: None,
                    expect_body: None,
                }),
                ..HealthConfig::default()
            }
        );
    }

    #[test]
    fn load_reads_a_file() {
        let path = std::env::temp_dir().join(format!("bg-lb-config-test-{}.toml", std::process::id()));
        fs::write(&path, TOP).unwrap();
        let loaded = load(&path);
        fs::remove_file(&path).unwrap();
        assert_eq!(loaded.unwrap(), parse_ok(TOP));
    }

    #[test]
    fn load_error_names_the_path() {
        let error = load(Path::new("/nonexistent/bg-lb.toml")).unwrap_err();
        assert!(matches!(&error, ConfigError::Io { error, .. } if error.kind() == io::ErrorKind::NotFound));
        assert!(error.to_string().starts_with("/nonexistent/bg-lb.toml: "), "{error}");
        assert_eq!(error.line(), None);
        assert_eq!(error.path(), Path::new("/nonexistent/bg-lb.toml"));
    }

    #[test]
    fn error_display_is_file_line_column_reason() {
        let text = "interface = \"eth0\"\nsnat_address = \"10.0.0.1\"\nmax_flows = 5\n";
        let error = parse(Path::new("/etc/bg-lb.toml"), text).unwrap_err();
        assert_eq!(
            error.to_string(),
            "/etc/bg-lb.toml:3:13: max_flows 5 is out of range 1024..=16777216"
        );
        assert_eq!((error.line(), error.column()), (Some(3), Some(13)));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        // Each "é" is two bytes; the stray `x` is the 18th character of line 3.
        let error = parse(Path::new("t.toml"), &format!("{TOP}pin_dir = \"/é/é\" x\n")).unwrap_err();
        assert_eq!((error.line(), error.column()), (Some(3), Some(18)), "{error}");
    }

    #[test]
    fn syntax_errors_are_located() {
        assert_rejected(&format!("{TOP}pin_dir = \"/sys/fs/bpf  # <-\n"), "invalid basic string");
        assert_rejected(&format!("{TOP}max_flows = 1_000_  # <-\n"), "invalid");
        assert_rejected(&format!("{TOP}[admin]\n[admin]  # <-\n"), "duplicate key `admin`");
        assert_rejected(
            &format!("{TOP}interface = \"eth1\"  # <-\n"),
            "duplicate key `interface`",
        );
    }

    #[test]
    fn wrong_value_types_are_located() {
        assert_rejected(
            &format!("{TOP}max_flows = \"many\"  # <-\n"),
            "invalid type: string \"many\", expected i64",
        );
        assert_rejected(&format!("{TOP}{WEB}backend = \"x\"  # <-\n"), "expected a sequence");
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        assert_rejected(
            &format!("{TOP}interfaces = [\"eth0\"]  # <-\n"),
            "unknown field `interfaces`",
        );
        assert_rejected(
            &format!("{TOP}[admin]\nsocket_path = \"/x\"  # <-\n"),
            "unknown field `socket_path`",
        );
        assert_rejected(&format!("{TOP}[timeouts]\nfin = \"1s\"  # <-\n"), "unknown field `fin`");
        assert_rejected(&format!("{TOP}[stats]  # <-\n"), "unknown field `stats`");
        assert_rejected(&format!("{TOP}{WEB}weight = 1  # <-\n"), "unknown field `weight`");
        assert_rejected(&format!("{TOP}{WEB}{BLUE}port = 80  # <-\n"), "unknown field `port`");
    }

    #[test]
    fn missing_required_keys_point_at_their_table() {
        assert_rejected("interface = \"eth0\"  # <-\n", "missing field `snat_address`");
        assert_rejected(
            &format!("{TOP}[[service]]  # <-\nvip = \"10.0.0.100:80\"\n"),
            "missing field `name`",
        );
        assert_rejected(
            &format!("{TOP}[[service]]  # <-\nname = \"web\"\n"),
            "missing field `vip`",
        );
        assert_rejected(
            &format!("{TOP}{WEB}[[service.backend]]  # <-\naddress = \"10.0.1.1:80\"\n"),
            "missing field `pool`",
        );
        assert_rejected(
            &format!("{TOP}{WEB}[[service.backend]]  # <-\npool = \"blue\"\n"),
            "missing field `address`",
        );
    }

    #[test]
    fn interface_keys_must_be_one_arm_or_two_arm() {
        assert_rejected(
            "snat_address = \"10.0.0.1\"  # <-\n",
            "no interface: set `interface` (one-arm) or `front_interface` and `back_interface` (two-arm)",
        );
        assert_rejected(
            &format!("{TOP}front_interface = \"eth0\"  # <-\nback_interface = \"eth1\"\n"),
            "mutually exclusive",
        );
        assert_rejected(&format!("{TOP}back_interface = \"eth1\"  # <-\n"), "mutually exclusive");
        assert_rejected(
            "front_interface = \"eth0\"  # <-\nsnat_address = \"10.0.0.1\"\n",
            "front_interface needs back_interface",
        );
        assert_rejected(
            "back_interface = \"eth1\"  # <-\nsnat_address = \"10.0.0.1\"\n",
            "back_interface needs front_interface",
        );
        assert_rejected(
            "front_interface = \"eth0\"\nback_interface = \"eth0\"  # <-\nsnat_address = \"10.0.0.1\"\n",
            "are both \"eth0\"",
        );
    }

    #[test]
    fn interface_names_follow_kernel_rules() {
        for bad in ["", "eth 0", "a/b", "..", "sixteen_chars_xx"] {
            assert_rejected(
                &format!("interface = {bad:?}  # <-\nsnat_address = \"10.0.0.1\"\n"),
                "invalid interface name",
            );
        }
        assert_eq!(
            parse_ok("interface = \"fifteen_chars_x\"\nsnat_address = \"10.0.0.1\"\n")
                .interfaces
                .names(),
            ["fifteen_chars_x"]
        );
    }

    #[test]
    fn unknown_xdp_mode_is_rejected() {
        assert_rejected(
            &format!("{TOP}xdp_mode = \"turbo\"  # <-\n"),
            "unknown xdp_mode \"turbo\"",
        );
        assert_rejected(
            &format!("{TOP}xdp_mode = \"Native\"  # <-\n"),
            "expected auto, native or generic",
        );
    }

    #[test]
    fn bad_snat_address_is_rejected() {
        for (address, reason) in [
            ("10.0.0.256", "\"10.0.0.256\" is not a valid IPv4 address"),
            ("lb.example", "host names are not resolved"),
            ("10.0.0.1:80", "IPv6 and ports are not accepted here"),
            ("::1", "IPv6 and ports are not accepted here"),
            ("0.0.0.0", "snat_address must not be 0.0.0.0"),
        ] {
            assert_rejected(
                &format!("interface = \"eth0\"\nsnat_address = {address:?}  # <-\n"),
                reason,
            );
        }
    }

    #[test]
    fn bad_snat_ports_are_rejected() {
        for (ports, reason) in [
            ("20000", "is not MIN-MAX"),
            ("20000-70000", "is not MIN-MAX"),
            ("a-b", "is not MIN-MAX"),
            ("29999-20000", "is inverted: 29999 is above 20000"),
            ("80-2000", "starts below 1024"),
        ] {
            assert_rejected(&format!("{TOP}snat_ports = {ports:?}  # <-\n"), reason);
        }
        assert_eq!(
            parse_ok(&format!("{TOP}snat_ports = \"1024 - 1024\"\n")).snat_ports,
            (1024, 1024)
        );
    }

    #[test]
    fn max_flows_out_of_range_is_rejected() {
        assert_rejected(
            &format!("{TOP}max_flows = 1023  # <-\n"),
            "max_flows 1023 is out of range 1024..=16777216",
        );
        assert_rejected(
            &format!("{TOP}max_flows = 16777217  # <-\n"),
            "max_flows 16777217 is out of range",
        );
        assert_rejected(&format!("{TOP}max_flows = -1  # <-\n"), "max_flows -1 is out of range");
        assert_eq!(parse_ok(&format!("{TOP}max_flows = 16777216\n")).max_flows, 16_777_216);
    }

    #[test]
    fn paths_must_be_absolute_and_group_non_empty() {
        assert_rejected(
            &format!("{TOP}pin_dir = \"bpf\"  # <-\n"),
            "pin_dir \"bpf\" must be an absolute path",
        );
        assert_rejected(
            &format!("{TOP}state_dir = \"\"  # <-\n"),
            "state_dir \"\" must be an absolute path",
        );
        assert_rejected(
            &format!("{TOP}[admin]\nsocket = \"a.sock\"  # <-\n"),
            "admin.socket \"a.sock\" must be",
        );
        assert_rejected(
            &format!("{TOP}[admin]\ngroup = \"\"  # <-\n"),
            "admin.group must not be empty",
        );
    }

    #[test]
    fn metrics_listener_is_an_ipv4_address_and_port() {
        assert_eq!(
            parse_ok(&format!("{TOP}metrics = \"0.0.0.0:9750\"\n")).metrics,
            Some("0.0.0.0:9750".parse().unwrap()),
            "every address is a valid place to listen"
        );
        for (value, reason) in [
            ("9750", "missing port"),
            (
                "localhost:9750",
                "\"localhost\" is not an IPv4 address (host names are not resolved)",
            ),
            ("[::1]:9750", "IPv6 is not supported"),
            ("127.0.0.1:99999", "invalid port \"99999\""),
            ("127.0.0.1:0", "port 0 is not allowed"),
            ("127.0.0.1", "missing port"),
        ] {
            assert_rejected(
                &format!("{TOP}metrics = {value:?}  # <-\n"),
                &format!("metrics {value:?}: {reason}"),
            );
        }
        assert_rejected(&format!("{TOP}metrics = 9750  # <-\n"), "expected a string");
    }

    #[test]
    fn zero_or_invalid_durations_are_rejected() {
        for key in ["established_idle", "closing", "syn"] {
            assert_rejected(
                &format!("{TOP}[timeouts]\n{key} = \"0s\"  # <-\n"),
                &format!("timeouts.{key} must be greater than zero"),
            );
            assert_rejected(
                &format!("{TOP}[timeouts]\n{key} = \"soon\"  # <-\n"),
                &format!("timeouts.{key} \"soon\": "),
            );
            assert_rejected(&format!("{TOP}[timeouts]\n{key} = \"10\"  # <-\n"), "time unit needed");
            assert_rejected(
                &format!("{TOP}[timeouts]\n{key} = \"1000 years\"  # <-\n"),
                "is too long",
            );
        }
    }

    #[test]
    fn bad_service_names_are_rejected() {
        for name in ["", "web site", "web/1", "ü", &"a".repeat(65)] {
            assert_rejected(
                &format!("{TOP}[[service]]\nname = {name:?}  # <-\nvip = \"10.0.0.100:80\"\n"),
                "invalid service name",
            );
        }
        let name = "A-z_0.9".repeat(9) + "a";
        assert_eq!(
            parse_ok(&format!("{TOP}[[service]]\nname = {name:?}\nvip = \"10.0.0.100:80\"\n")).services[0].name,
            name
        );
    }

    #[test]
    fn bad_vips_are_rejected_with_a_reason() {
        for (vip, reason) in [
            ("10.0.0.300:80", "\"10.0.0.300\" is not a valid IPv4 address"),
            ("web.example:80", "host names are not resolved"),
            ("[::1]:80", "IPv6 is not supported"),
            ("fe80::1", "IPv6 is not supported"),
            ("10.0.0.100", "missing port"),
            ("10.0.0.100:", "invalid port \"\""),
            ("10.0.0.100:http", "invalid port \"http\""),
            ("10.0.0.100:65536", "invalid port \"65536\""),
            ("10.0.0.100:0", "port 0 is not allowed"),
            ("0.0.0.0:80", "0.0.0.0 is not an address"),
        ] {
            assert_rejected(
                &format!("{TOP}[[service]]\nname = \"web\"\nvip = {vip:?}  # <-\n"),
                reason,
            );
            assert_rejected(&format!("{TOP}{WEB}standby_vip = {vip:?}  # <-\n"), reason);
        }
    }

    #[test]
    fn bad_backend_addresses_are_rejected_with_a_reason() {
        for (address, reason) in [
            ("0.0.0.0:8080", "address \"0.0.0.0:8080\": 0.0.0.0 is not an address"),
            ("10.0.1.1:0", "port 0 is not allowed"),
            ("10.0.1.256:80", "is not a valid IPv4 address"),
            ("backend:80", "host names are not resolved"),
            ("[2001:db8::1]:80", "IPv6 is not supported"),
            ("10.0.1.1", "missing port"),
        ] {
            assert_rejected(
                &format!("{TOP}{WEB}[[service.backend]]\npool = \"blue\"\naddress = {address:?}  # <-\n"),
                reason,
            );
        }
    }

    #[test]
    fn unknown_pool_is_rejected() {
        assert_rejected(
            &format!("{TOP}{WEB}[[service.backend]]\npool = \"purple\"  # <-\naddress = \"10.0.1.1:80\"\n"),
            "unknown pool \"purple\" (expected blue or green)",
        );
    }

    #[test]
    fn weight_out_of_range_is_rejected() {
        for weight in ["1001", "-1"] {
            assert_rejected(
                &format!("{TOP}{WEB}{BLUE}weight = {weight}  # <-\n"),
                &format!("weight {weight} is out of range 0..=1000"),
            );
        }
    }

    #[test]
    fn malformed_ratio_is_rejected() {
        for ratio in ["60:50", "50", "blue:green", "101:-1"] {
            assert_rejected(
                &format!("{TOP}{WEB}ratio = {ratio:?}  # <-\n"),
                &format!("ratio {ratio:?} is not BLUE:GREEN"),
            );
        }
    }

    #[test]
    fn lookup_table_size_must_be_a_prime_in_range() {
        assert_rejected(
            &format!("{TOP}{WEB}lookup_table_size = 65536  # <-\n"),
            "lookup_table_size 65536 is not prime",
        );
        assert_rejected(
            &format!("{TOP}{WEB}lookup_table_size = 9  # <-\n"),
            "lookup_table_size 9 is not prime",
        );
        assert_rejected(
            &format!("{TOP}{WEB}lookup_table_size = 5  # <-\n"),
            "lookup_table_size 5 is out of range 7..=1000003",
        );
        assert_rejected(
            &format!("{TOP}{WEB}lookup_table_size = 1000033  # <-\n"),
            "is out of range 7..=1000003",
        );
        for prime in [7, 65_537, 1_000_003] {
            let config = parse_ok(&format!(
                "{TOP}lookup_capacity = 2000006\n{WEB}lookup_table_size = {prime}\n"
            ));
            assert_eq!(config.services[0].lookup_table_size, prime);
        }
    }

    #[test]
    fn is_prime_matches_trial_division() {
        let primes: Vec<u32> = (0..40).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37]);
        assert!(is_prime(65_537) && is_prime(1_000_003) && !is_prime(1_000_001));
    }

    #[test]
    fn explicit_lookup_capacity_too_small_points_at_the_key() {
        assert_rejected(
            &format!("{TOP}lookup_capacity = 100  # <-\n{WEB}lookup_table_size = 47\n{API}lookup_table_size = 7\n"),
            "lookup_capacity 100 is too small: the services need 108 slots",
        );
        assert_rejected(
            &format!("{TOP}lookup_capacity = 0  # <-\n"),
            "lookup_capacity 0 is out of range",
        );
        let exact = parse_ok(&format!("{TOP}lookup_capacity = 94\n{WEB}lookup_table_size = 47\n"));
        assert_eq!(exact.lookup_capacity, 94);
    }

    #[test]
    fn default_lookup_capacity_overflow_points_at_the_first_service_that_does_not_fit() {
        // The default capacity holds exactly 16 services of the default table size.
        let mut text = TOP.to_owned();
        for i in 0..18 {
            let mark = if i == 16 { "  # <-" } else { "" };
            text += &format!(
                "[[service]]\nname = \"s{i}\"{mark}\nvip = \"10.0.0.100:{}\"\n",
                1000 + i
            );
        }
        assert_rejected(
            &text,
            "service \"s16\" does not fit in the default lookup_capacity 2097184",
        );
    }

    #[test]
    fn duplicate_service_name_points_at_the_second() {
        assert_rejected(
            &format!("{TOP}{WEB}[[service]]\nname = \"web\"  # <-\nvip = \"10.0.0.101:80\"\n"),
            "duplicate service name \"web\" (first on line 4)",
        );
    }

    #[test]
    fn duplicate_backend_in_a_service_points_at_the_second() {
        let backend =
            |pool: &str, mark: &str| format!("[[service.backend]]\npool = {pool:?}\naddress = \"10.0.1.1:80\"{mark}\n");
        assert_rejected(
            &format!("{TOP}{WEB}{}{}", backend("blue", ""), backend("green", "  # <-")),
            "duplicate backend 10.0.1.1:80 in service \"web\" (first on line 8)",
        );
        // The same backend may serve several services.
        let shared = format!("{TOP}{WEB}{}{API}{}", backend("blue", ""), backend("blue", ""));
        assert_eq!(parse_ok(&shared).services.len(), 2);
    }

    #[test]
    fn overlapping_vips_point_at_the_second() {
        let second =
            |keys: &str| format!("{TOP}{WEB}standby_vip = \"10.0.0.100:8080\"\n[[service]]\nname = \"b\"\n{keys}");
        assert_rejected(
            &second("vip = \"10.0.0.100:80\"  # <-\n"),
            "overlapping VIPs: vip 10.0.0.100:80 is already the vip of service \"web\" (line 5)",
        );
        assert_rejected(
            &second("vip = \"10.0.0.100:8080\"  # <-\n"),
            "overlapping VIPs: vip 10.0.0.100:8080 is already the standby_vip of service \"web\" (line 6)",
        );
        assert_rejected(
            &second("vip = \"10.0.0.101:80\"\nstandby_vip = \"10.0.0.100:8080\"  # <-\n"),
            "overlapping VIPs: standby_vip 10.0.0.100:8080 is already the standby_vip of service \"web\"",
        );
        assert_rejected(
            &second("vip = \"10.0.0.101:80\"\nstandby_vip = \"10.0.0.100:80\"  # <-\n"),
            "overlapping VIPs: standby_vip 10.0.0.100:80 is already the vip of service \"web\"",
        );
        assert_rejected(
            &format!("{TOP}{WEB}standby_vip = \"10.0.0.100:80\"  # <-\n"),
            "overlapping VIPs: standby_vip 10.0.0.100:80 equals the service's vip",
        );
        // Same address, other port: a different VIP.
        assert_eq!(parse_ok(&second("vip = \"10.0.0.100:81\"\n")).services.len(), 2);
    }

    #[test]
    fn vip_on_the_snat_address_is_rejected() {
        assert_rejected(
            &format!("{TOP}[[service]]\nname = \"web\"\nvip = \"10.0.0.1:80\"  # <-\n"),
            "vip 10.0.0.1:80 uses the snat_address (line 2)",
        );
        assert_rejected(
            &format!("{TOP}{WEB}standby_vip = \"10.0.0.1:8080\"  # <-\n"),
            "standby_vip 10.0.0.1:8080 uses the snat_address",
        );
    }

    #[test]
    fn more_than_max_services_is_rejected_at_the_first_extra_one() {
        let mut text = format!("{TOP}lookup_capacity = 100000\n");
        for i in 0..=MAX_SERVICES {
            let mark = if i == MAX_SERVICES { "  # <-" } else { "" };
            let vip = SocketAddrV4::new(Ipv4Addr::from(0x0a64_0000 + i), 80);
            text += &format!("[[service]]\nname = \"s{i}\"{mark}\nvip = \"{vip}\"\nlookup_table_size = 7\n");
        }
        assert_rejected(&text, "too many services: at most 512");
    }

    #[test]
    fn more_than_max_backends_in_total_is_rejected_at_the_first_extra_one() {
        let backends = |service: u32, count: u32, mark_last: bool| {
            (0..count)
                .map(|i| {
                    let address = SocketAddrV4::new(Ipv4Addr::from(0x0a01_0000 + i), 8080);
                    let mark = if mark_last && i + 1 == count { "  # <-" } else { "" };
                    format!("[[service.backend]]\npool = \"blue\"\naddress = \"{address}\"{mark}\n")
                })
                .collect::<String>()
                + &format!("# end of service {service}\n")
        };
        let first = 4000;
        let text = format!(
            "{TOP}{WEB}{}{API}{}",
            backends(0, first, false),
            backends(1, MAX_BACKENDS + 1 - first, true)
        );
        assert_rejected(&text, "too many backends: at most 4096 across all services");
        let at_limit = format!("{TOP}{WEB}{}", backends(0, MAX_BACKENDS, false));
        assert_eq!(parse_ok(&at_limit).services[0].backends.len(), MAX_BACKENDS as usize);
    }

    /// `[service.health]` of WEB: line 6 after TOP and WEB.
    const HEALTH: &str = "[service.health]\n";

    /// Parses WEB with `keys` in its `[service.health]` table and returns that service's health settings.
    fn health_of(keys: &str) -> HealthConfig {
        parse_ok(&format!("{TOP}{WEB}{HEALTH}{keys}")).services[0]
            .health
            .clone()
    }

    #[test]
    fn service_without_health_table_gets_tcp_checks_with_defaults() {
        let config = parse_ok(&format!("{TOP}{WEB}{BLUE}{API}"));
        for service in &config.services {
            assert_eq!(service.health, HealthConfig::default());
        }
        assert_eq!(
            health_of(""),
            HealthConfig::default(),
            "an empty table is the default too"
        );
        assert_eq!(
            HealthConfig::default(),
            HealthConfig {
                check: HealthCheck::Tcp,
                interval: Duration::from_secs(2),
                fast_interval: Duration::from_millis(500),
                timeout: Duration::from_secs(1),
                rise: 2,
                fall: 3,
                on_down: OnDown::Drain,
            }
        );
    }

    #[test]
    fn full_http_health_table_parses_to_expected_struct() {
        let health = health_of(
            r#"type = "http"
            interval = "5s"
            fast_interval = "250ms"
            timeout = "1500ms"
            rise = 1
            fall = 100
            on_down = "reset"
            live_path = "/health/live?probe=lb"
            standby_path = "/health/standby"
            expect_status = "200-399"
            host = "web.example:8080"
            expect_body = "ok"
            "#,
        );
        let expected = HealthConfig {
            check: HealthCheck::Http(HttpCheck {
                live_path: "/health/live?probe=lb".into(),
                standby_path: "/health/standby".into(),
                expect_status: (200, 399),
                host: Some("web.example:8080".into()),
                expect_body: Some("ok".into()),
            }),
            interval: Duration::from_secs(5),
            fast_interval: Duration::from_millis(250),
            timeout: Duration::from_millis(1500),
            rise: 1,
            fall: 100,
            on_down: OnDown::Reset,
        };
        assert_eq!(health, expected);
    }

    #[test]
    fn http_health_keys_take_their_defaults() {
        assert_eq!(
            health_of("type = \"http\"\n"),
            HealthConfig {
                check: HealthCheck::Http(HttpCheck {
                    live_path: "/live".into(),
                    standby_path: "/standby".into(),
                    expect_status: (200, 200),
                    host: None,
                    expect_body: None,
                }),
                ..HealthConfig::default()
            }
        );
        assert_eq!(
            HealthCheck::Http(HttpCheck::default()),
            health_of("type = \"http\"\n").check
        );
        let tcp = health_of("type = \"tcp\"\nrise = 5\non_down = \"drain\"\n");
        assert_eq!(
            tcp,
            HealthConfig {
                rise: 5,
                ..HealthConfig::default()
            }
        );
    }

    #[test]
    fn health_table_may_come_before_or_after_the_backends() {
        let http = "type = \"http\"\nrise = 4\n";
        let green = "[[service.backend]]\npool = \"green\"\naddress = \"10.0.2.1:80\"\n";
        let expected_backends = [
            backend(Pool::Blue, "10.0.1.1:80", 100),
            backend(Pool::Green, "10.0.2.1:80", 100),
        ];
        for text in [
            format!("{TOP}{WEB}{HEALTH}{http}{BLUE}{green}{API}"),
            format!("{TOP}{WEB}{BLUE}{green}{HEALTH}{http}{API}"),
            format!("{TOP}{WEB}{BLUE}{HEALTH}{http}{green}{API}"),
            format!("{TOP}{WEB}health.type = \"http\"\nhealth.rise = 4\n{BLUE}{green}{API}"),
            format!("{TOP}{WEB}health = {{ type = \"http\", rise = 4 }}\n{BLUE}{green}{API}"),
        ] {
            let config = parse_ok(&text);
            let [web, api] = config.services.as_slice() else {
                panic!("two services expected:\n{text}")
            };
            assert_eq!(web.backends, expected_backends, "{text}");
            assert_eq!(web.health.rise, 4, "{text}");
            assert_eq!(web.health.check, HealthCheck::Http(HttpCheck::default()), "{text}");
            assert_eq!(
                api.health,
                HealthConfig::default(),
                "the table belongs to its own service:\n{text}"
            );
            assert!(api.backends.is_empty(), "{text}");
        }
        // Errors in a health table after the backends still point at the right line.
        assert_rejected(
            &format!("{TOP}{WEB}{BLUE}{green}{HEALTH}rise = 0  # <-\n{API}"),
            "health.rise 0 is out of range 1..=100",
        );
        assert_rejected(
            &format!("{TOP}{WEB}{BLUE}{HEALTH}checks = 3  # <-\n{green}"),
            "unknown field `checks`",
        );
        // A second [service.health] for the same service is a duplicate table.
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}{BLUE}[service.health]  # <-\n"),
            "duplicate key `health`",
        );
    }

    #[test]
    fn unknown_health_keys_are_rejected_by_name() {
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}path = \"/live\"  # <-\n"),
            "unknown field `path`",
        );
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}type = \"http\"\nexpect_status_code = \"200\"  # <-\n"),
            "unknown field `expect_status_code`",
        );
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}type = \"http\"\nrise = \"2\"  # <-\n"),
            "invalid type: string \"2\", expected i64",
        );
    }

    #[test]
    fn unknown_health_type_and_on_down_are_rejected() {
        for check in ["udp", "HTTP", ""] {
            assert_rejected(
                &format!("{TOP}{WEB}{HEALTH}type = {check:?}  # <-\n"),
                &format!("unknown health.type {check:?} (expected tcp or http)"),
            );
        }
        for on_down in ["kill", "Drain", ""] {
            assert_rejected(
                &format!("{TOP}{WEB}{HEALTH}on_down = {on_down:?}  # <-\n"),
                &format!("unknown health.on_down {on_down:?} (expected drain or reset)"),
            );
        }
    }

    #[test]
    fn zero_or_invalid_health_durations_are_rejected() {
        for key in ["interval", "fast_interval", "timeout"] {
            assert_rejected(
                &format!("{TOP}{WEB}{HEALTH}{key} = \"0s\"  # <-\n"),
                &format!("health.{key} must be greater than zero"),
            );
            assert_rejected(
                &format!("{TOP}{WEB}{HEALTH}{key} = \"often\"  # <-\n"),
                &format!("health.{key} \"often\": "),
            );
            assert_rejected(&format!("{TOP}{WEB}{HEALTH}{key} = \"2\"  # <-\n"), "time unit needed");
            assert_rejected(
                &format!("{TOP}{WEB}{HEALTH}{key} = \"1000 years\"  # <-\n"),
                &format!("health.{key} \"1000 years\" is too long"),
            );
        }
    }

    #[test]
    fn health_timeout_must_be_below_interval() {
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}interval = \"1s\"\ntimeout = \"1s\"  # <-\n"),
            "health.timeout 1s must be less than health.interval 1s",
        );
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}timeout = \"3s\"  # <-\n"),
            "health.timeout 3s must be less than health.interval 2s",
        );
        // With the default timeout, the interval that is too short is the key to point at.
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}interval = \"800ms\"  # <-\nfast_interval = \"100ms\"\n"),
            "health.timeout 1s (the default) must be less than health.interval 800ms",
        );
        let health = health_of("interval = \"1s\"\ntimeout = \"999ms\"\n");
        assert_eq!(
            (health.interval, health.timeout),
            (Duration::from_secs(1), Duration::from_millis(999))
        );
    }

    #[test]
    fn health_fast_interval_must_not_exceed_interval() {
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}fast_interval = \"3s\"  # <-\n"),
            "health.fast_interval 3s must be at most health.interval 2s",
        );
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}interval = \"10s\"\nfast_interval = \"11s\"  # <-\n"),
            "health.fast_interval 11s must be at most health.interval 10s",
        );
        // With the default fast_interval, the interval is the key to point at.
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}interval = \"400ms\"  # <-\ntimeout = \"100ms\"\n"),
            "health.fast_interval 500ms (the default) must be at most health.interval 400ms",
        );
        let equal = health_of("interval = \"3s\"\nfast_interval = \"3s\"\n");
        assert_eq!(
            (equal.interval, equal.fast_interval),
            (Duration::from_secs(3), Duration::from_secs(3))
        );
    }

    #[test]
    fn rise_and_fall_out_of_range_are_rejected() {
        for key in ["rise", "fall"] {
            for n in ["0", "101", "-1"] {
                assert_rejected(
                    &format!("{TOP}{WEB}{HEALTH}{key} = {n}  # <-\n"),
                    &format!("health.{key} {n} is out of range 1..=100"),
                );
            }
        }
        let health = health_of("rise = 1\nfall = 100\n");
        assert_eq!((health.rise, health.fall), (1, 100));
    }

    #[test]
    fn http_keys_need_type_http() {
        for (key, value) in [
            ("live_path", "\"/live\""),
            ("standby_path", "\"/standby\""),
            ("expect_status", "\"200\""),
            ("host", "\"web.example\""),
            ("expect_body", "\"ok\""),
        ] {
            assert_rejected(
                &format!("{TOP}{WEB}{HEALTH}type = \"tcp\"\n{key} = {value}  # <-\n"),
                &format!("health.{key} needs type = \"http\" (the check type is \"tcp\")"),
            );
            assert_rejected(
                &format!("{TOP}{WEB}{HEALTH}{key} = {value}  # <-\n"),
                &format!("health.{key} needs type = \"http\" (the check type is tcp by default)"),
            );
        }
        // The first such key in the file is the one reported.
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}expect_body = \"ok\"  # <-\nlive_path = \"/live\"\n"),
            "health.expect_body needs type = \"http\"",
        );
    }

    #[test]
    fn bad_http_paths_are_rejected() {
        for key in ["live_path", "standby_path"] {
            for path in ["live", "", "http://web/live", " /live"] {
                assert_rejected(
                    &format!("{TOP}{WEB}{HEALTH}type = \"http\"\n{key} = {path:?}  # <-\n"),
                    &format!("health.{key} {path:?} must start with '/'"),
                );
            }
            for path in ["/a b", "/live\t", "/live\r\nX-Injected: 1", "/ü"] {
                assert_rejected(
                    &format!("{TOP}{WEB}{HEALTH}type = \"http\"\n{key} = {path:?}  # <-\n"),
                    &format!("health.{key} {path:?} must be printable ASCII without whitespace"),
                );
            }
        }
        let health = health_of("type = \"http\"\nlive_path = \"/\"\nstandby_path = \"/a%20b?x=1&y=~\"\n");
        let HealthCheck::Http(http) = health.check else {
            panic!("http expected")
        };
        assert_eq!(
            (http.live_path.as_str(), http.standby_path.as_str()),
            ("/", "/a%20b?x=1&y=~")
        );
    }

    #[test]
    fn bad_expect_status_is_rejected() {
        for status in ["", "2xx", "200-", "-200", "+200", "200-300-400", "200,204", "70000"] {
            assert_rejected(
                &format!("{TOP}{WEB}{HEALTH}type = \"http\"\nexpect_status = {status:?}  # <-\n"),
                &format!("health.expect_status {status:?} is not STATUS or MIN-MAX"),
            );
        }
        for status in ["99", "600", "0-200", "200-600"] {
            assert_rejected(
                &format!("{TOP}{WEB}{HEALTH}type = \"http\"\nexpect_status = {status:?}  # <-\n"),
                &format!("health.expect_status {status:?} is out of range 100..=599"),
            );
        }
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}type = \"http\"\nexpect_status = \"399-200\"  # <-\n"),
            "health.expect_status \"399-200\" is inverted: 399 is above 200",
        );
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}type = \"http\"\nexpect_status = 200  # <-\n"),
            "invalid type: integer `200`, expected a string",
        );
        for (status, expected) in [("100", (100, 100)), ("599", (599, 599)), ("204 - 204", (204, 204))] {
            let health = health_of(&format!("type = \"http\"\nexpect_status = {status:?}\n"));
            let HealthCheck::Http(http) = health.check else {
                panic!("http expected")
            };
            assert_eq!(http.expect_status, expected, "{status}");
        }
    }

    #[test]
    fn empty_or_bad_host_and_empty_expect_body_are_rejected() {
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}type = \"http\"\nhost = \"\"  # <-\n"),
            "health.host must not be empty",
        );
        for host in ["web example", "web.example\r\nX: 1", " web"] {
            assert_rejected(
                &format!("{TOP}{WEB}{HEALTH}type = \"http\"\nhost = {host:?}  # <-\n"),
                &format!("health.host {host:?} must be printable ASCII without whitespace"),
            );
        }
        assert_rejected(
            &format!("{TOP}{WEB}{HEALTH}type = \"http\"\nexpect_body = \"\"  # <-\n"),
            "health.expect_body must not be empty",
        );
        // The body may be any non-empty text.
        let health = health_of("type = \"http\"\nexpect_body = \"status: ok ✓\"\n");
        let HealthCheck::Http(http) = health.check else {
            panic!("http expected")
        };
        assert_eq!(http.expect_body.as_deref(), Some("status: ok ✓"));
    }
}
