//! The daemon's TOML configuration.
//!
//! ```toml
//! interface = "eth0"                # one-arm; or front_interface + back_interface (two-arm)
//! xdp_mode = "auto"                 # auto | native | generic
//! snat_address = "10.0.0.1"        # or snat_addresses = ["10.0.0.1", "fd00::1"] (up to 16 per family)
//! snat_ports = "20000-29999"        # inclusive, >= 1024
//! max_flows = 1048576
//! lookup_capacity = 4194368         # slots for all lookup tables (4 x table size per service)
//! pin_dir = "/sys/fs/bpf/bg-lb"
//! state_dir = "/var/lib/bg-lb"
//! metrics = "127.0.0.1:9750"        # Prometheus /metrics listener; off when absent
//! metrics_max_connections = 32      # when full, the longest-idle connection is closed
//! metrics_idle_timeout = "10s"      # a connection without a request for this long is closed
//!
//! [admin]
//! socket = "/run/bg-lb/admin.sock"
//! group = "bglb"
//! max_connections = 64              # when full, the longest-idle connection is closed
//! idle_timeout = "60s"              # a connection without a request for this long is closed
//!
//! [api]                             # the remote API (HTTP+JSON); absent: off
//! listen = "127.0.0.1:9751"
//! token_file = "/etc/bg-lb/api.token"            # bearer token: every command
//! read_only_token_file = "/etc/bg-lb/api-ro.token"  # optional: status and flows only
//! tls_cert = "/etc/bg-lb/api.crt"   # PEM; with tls_key, HTTPS; without both, plain HTTP
//! tls_key = "/etc/bg-lb/api.key"
//! max_connections = 32              # when full, the longest-idle connection is closed
//! idle_timeout = "10s"              # also bounds reading one request's body
//!
//! [timeouts]
//! established_idle = "1h"
//! closing = "10s"
//! syn = "10s"
//!
//! [bgp]                             # announce the VIPs through BIRD; absent: announce nothing
//! bird_include = "/run/bg-lb/bird-vips.conf"   # the file bird.conf includes
//! birdc = "birdc"                   # program name (PATH) or absolute path
//! bird_socket = "/run/bird/bird.ctl"
//! protocol_name = "bglb_vips"       # the include's IPv4 static protocol; IPv6's: "bglb_vips6"
//!
//! [cluster]                         # fleet state in etcd; absent: this host alone (state_dir)
//! etcd = ["http://10.0.0.5:2379"]   # etcd 3.4+ client URLs (plain http), tried in turn
//! host = "lb1"                      # this host's name in the fleet, unique per host
//! prefix = "/bg-lb"                 # where the fleet's keys live
//!
//! [[service]]
//! name = "web"
//! vip = "10.0.0.100:80"             # or one per family: ["10.0.0.100:80", "[fd00::100]:80"]
//! standby_vip = "10.0.0.100:8080"   # likewise
//! ratio = "50:50"                   # BLUE:GREEN
//! lookup_table_size = 65537         # prime
//! syn_proxy = "auto"                # auto | always | off: answer SYNs with SYN cookies
//! syn_proxy_threshold = 1000        # auto: unanswered connection requests per second
//! syn_proxy_mss = 1460              # the MSS the cookie SYN-ACKs offer
//! forwarding = "full-nat"           # full-nat | gateway | dsr (README: Forwarding modes)
//! affinity = "none"                 # none | client-ip: a client keeps its pool (moving only toward the pool a shift raises) and backend
//! drain_deadline = "5m"             # a drain's default deadline: then its leftover connections are reset; absent: none
//! slowstart = "30s"                 # ramp a backend that comes up (or is enabled) to its weight; absent: at once
//! protocol = "tcp"                  # tcp | udp (udp: no syn_proxy)
//! udp_idle = "30s"                  # udp only: a flow with no datagram for this long ends
//!
//! [service.health]                  # before or after the service's backends
//! type = "http"                     # tcp | http | udp (udp: request/expect datagrams)
//! port = 8080                       # tcp, http: check this port instead (required for udp services)
//! request = "ping"                  # udp only: the datagram sent
//! expect = "pong"                   # udp only: a substring the reply must contain
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
//! address = "10.0.1.11:8080"        # or "[fd00:1::11]:8080"
//! weight = 100                      # 0..=1000, 0 drains
//! ```
//!
//! Everything but the SNAT address(es), the interface(s), and each service's `name`
//! and `vip` and each backend's `pool` and `address` has a default: the
//! `DEFAULT_*` constants below, and those of `bg_lb_common::maps` for the map
//! sizes.
//!
//! Parsing goes by stage, one module each: serde reads the file into the
//! structs of `raw`, whose values keep their byte spans ([`toml::Spanned`]);
//! `validate` turns them into the structs here, with the parsers of single
//! values in `values`, the service list and what services must not share in
//! `services`, and `[service.health]` in `health`. The spans let every error
//! (`error`) name `FILE:LINE:COL`, so an operator can go straight to the
//! offending line.

mod added;
mod api;
mod bgp;
mod cluster;
mod error;
mod health;
mod raw;
mod services;
mod validate;
mod values;

use std::{
    collections::HashSet,
    fmt, fs,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

pub use self::{added::added_backend_problem, error::ConfigError};
use self::{error::Invalid, raw::RawConfig};
use crate::{
    dataplane::{
        AttachMode, affinity::Affinity, forwarding::Forwarding, housekeeping::FlowTimeouts, l4::Protocol,
        listener::ListenerKey, syn_proxy::SynProxy,
    },
    family::Family,
    health::Listener,
    ratio::{Pool, Ratio},
};

/// The file `run` and `teardown` read unless given `--config`.
pub const DEFAULT_CONFIG: &str = "/etc/bg-lb/bg-lb.toml";
/// Native mode where the driver supports it, generic mode elsewhere.
pub const DEFAULT_XDP_MODE: AttachMode = AttachMode::Auto;
/// Inclusive range.
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (20_000, 29_999);
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/bg-lb";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/bg-lb";
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/bg-lb/admin.sock";
/// `ctl` opens one connection per command; `top` and waits poll on theirs.
pub const DEFAULT_ADMIN_LIMITS: ListenerLimits = ListenerLimits {
    max_connections: 64,
    idle_timeout: Duration::from_secs(60),
};
/// Scrapers are few; one that keeps its connection between scrapes
/// reconnects after the timeout.
pub const DEFAULT_METRICS_LIMITS: ListenerLimits = ListenerLimits {
    max_connections: 32,
    idle_timeout: Duration::from_secs(10),
};
/// Remote API clients are CI jobs and consoles, few at a time.
pub const DEFAULT_API_LIMITS: ListenerLimits = ListenerLimits {
    max_connections: 32,
    idle_timeout: Duration::from_secs(10),
};
/// The range of `max_connections` and `metrics_max_connections`.
pub const MAX_CONNECTIONS_RANGE: std::ops::RangeInclusive<i64> = 1..=4096;
pub const DEFAULT_TIMEOUTS: FlowTimeouts = FlowTimeouts {
    established_idle: Duration::from_secs(60 * 60),
    closing: Duration::from_secs(10),
    syn: Duration::from_secs(10),
};
/// The blue pool's share of new flows, in percent.
pub const DEFAULT_BLUE_SHARE: u32 = 50;
pub const DEFAULT_WEIGHT: u32 = 100;
/// Highest backend weight; 0 drains a backend.
pub const MAX_WEIGHT: u32 = 1000;
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_FAST_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
pub const DEFAULT_LIVE_PATH: &str = "/live";
pub const DEFAULT_STANDBY_PATH: &str = "/standby";
/// Inclusive range.
pub const DEFAULT_EXPECT_STATUS: (u16, u16) = (200, 200);
/// Under /run like the pins: both are gone after a reboot, so no route
/// outlives the data plane it leads to.
pub const DEFAULT_BIRD_INCLUDE: &str = "/run/bg-lb/bird-vips.conf";
pub const DEFAULT_BIRDC: &str = "birdc";
/// Debian's bird2 control socket.
pub const DEFAULT_BIRD_SOCKET: &str = "/run/bird/bird.ctl";
pub const DEFAULT_BGP_PROTOCOL: &str = "bglb_vips";
pub const DEFAULT_CLUSTER_PREFIX: &str = "/bg-lb";

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Interfaces,
    pub xdp_mode: AttachMode,
    /// Where NATed packets to IPv4 backends come from: up to
    /// [`bg_lb_common::maps::MAX_SNAT_ADDRESSES`], each once (at least one
    /// when a service has an IPv4 VIP). Health probes use the first.
    pub snat_addresses: Vec<Ipv4Addr>,
    /// The same for IPv6 backends.
    pub snat6_addresses: Vec<Ipv6Addr>,
    /// Inclusive range.
    pub snat_ports: (u16, u16),
    pub max_flows: u32,
    pub lookup_capacity: u32,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub admin: AdminConfig,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None` serves none.
    pub metrics: Option<SocketAddrV4>,
    pub metrics_limits: ListenerLimits,
    /// `[api]`: the remote API's listener; `None` serves none.
    pub api: Option<ApiConfig>,
    /// Flow-table timeouts (`[timeouts]`); all non-zero.
    pub timeouts: FlowTimeouts,
    /// `[bgp]`: announce the VIPs through BIRD; `None` announces nothing.
    pub bgp: Option<BgpConfig>,
    /// `[cluster]`: operator state shared by the fleet in etcd; `None`
    /// keeps it in `state_dir` for this host alone.
    pub cluster: Option<ClusterConfig>,
    pub services: Vec<ServiceConfig>,
}

impl Config {
    /// Capacity of the reverse-NAT table, which evicts nothing: one entry per
    /// (backend, SNAT address and port) in use. At least `max_flows`, and
    /// room for every SNAT pair of every configured backend twice over (for backends a reload
    /// replaces, and for the ports of flows the flow table evicted until the
    /// sweep frees them), up to the largest `max_flows` allowed. Fixed when
    /// the maps are created.
    pub fn reverse_nat_entries(&self) -> u32 {
        let backends: HashSet<SocketAddr> = self
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.address))
            .collect();
        let pairs: u64 = backends
            .iter()
            .map(|b| self.snat_pairs_per_backend(Family::of_socket(*b)))
            .sum();
        let limit = *validate::MAX_FLOWS_RANGE.end() as u64;
        (2 * pairs).clamp(self.max_flows.into(), limit) as u32
    }

    /// Where health probes of backends of `family` come from: that family's
    /// first SNAT address.
    pub fn probe_source(&self, family: Family) -> Option<std::net::IpAddr> {
        match family {
            Family::Ipv4 => self.snat_addresses.first().map(|&a| a.into()),
            Family::Ipv6 => self.snat6_addresses.first().map(|&a| a.into()),
        }
    }

    /// SNAT (address, port) pairs one backend of `family` can hold at once:
    /// that family's addresses times ports.
    pub fn snat_pairs_per_backend(&self, family: Family) -> u64 {
        let addresses = match family {
            Family::Ipv4 => self.snat_addresses.len(),
            Family::Ipv6 => self.snat6_addresses.len(),
        };
        addresses as u64 * (u64::from(self.snat_ports.1 - self.snat_ports.0) + 1)
    }
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

/// The admin (control) socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    pub socket: PathBuf,
    /// Group that gets access to the socket, besides root.
    pub group: Option<String>,
    pub limits: ListenerLimits,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: PathBuf::from(DEFAULT_ADMIN_SOCKET),
            group: None,
            limits: DEFAULT_ADMIN_LIMITS,
        }
    }
}

/// `[api]`: the remote API (see [`crate::api`]), HTTP+JSON with bearer
/// tokens, over TLS when a certificate is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiConfig {
    pub listen: SocketAddrV4,
    /// Holds the token that may do everything the admin socket can.
    pub token_file: PathBuf,
    /// Holds a token that may only read (`status`, `flows`).
    pub read_only_token_file: Option<PathBuf>,
    /// PEM certificate chain and private key; plain HTTP without them.
    pub tls: Option<TlsFiles>,
    pub limits: ListenerLimits,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[bgp]`: the BIRD the daemon drives (see [`crate::bgp`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpConfig {
    /// The file the daemon writes and bird.conf includes.
    pub bird_include: PathBuf,
    pub birdc: PathBuf,
    pub bird_socket: PathBuf,
    /// The static protocol the include file defines; export filters match it.
    pub protocol_name: String,
}

/// `[cluster]`: the etcd that holds the fleet's operator state (see
/// [`crate::cluster`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `host:port` of each etcd client URL, tried in turn.
    pub etcd: Vec<String>,
    /// This host's name: its keys (counters, health, shift leadership).
    pub host: String,
    /// Every key of the fleet is under `prefix/`; no trailing `/`.
    pub prefix: String,
}

/// A listener's connection cap and idle timeout (see
/// [`crate::connection_slots`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections held at once; when full, the longest-idle one is closed
    /// for a new one.
    pub max_connections: u32,
    /// A connection that sends no complete request for this long after
    /// connecting or after its last reply is closed.
    pub idle_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
    /// `vip`: the live VIPs, one, or one per family (a dual-stack service),
    /// as written. Each is a listener with its own lookup table over the
    /// backends of its family.
    pub vips: Vec<SocketAddr>,
    /// `standby_vip`: none, one, or one per family.
    pub standby_vips: Vec<SocketAddr>,
    pub ratio: Ratio,
    /// Prime.
    pub lookup_table_size: u32,
    pub backends: Vec<BackendConfig>,
    /// `[service.health]`; [`HealthConfig::default`] (TCP connect checks) when the table is absent.
    pub health: HealthConfig,
    /// SYN flood defence: `syn_proxy`, `syn_proxy_threshold`, `syn_proxy_mss`,
    /// of its IPv4 listeners (IPv6 ones have none: [`crate::desired::listener_spec`]).
    pub syn_proxy: SynProxy,
    /// `forwarding`: how packets reach the backends.
    pub forwarding: Forwarding,
    /// `affinity`: whether a client's connections keep to one pool and
    /// backend.
    pub affinity: Affinity,
    /// `slowstart`: how long a backend that starts taking connections takes
    /// to ramp up to its full weight; `None`: at once.
    pub slowstart: Option<Duration>,
    /// `drain_deadline`: a drain's or promote's default deadline, after
    /// which the drained pool's connections still open are reset; `None`:
    /// they are left to end.
    pub drain_deadline: Option<Duration>,
    /// `protocol`: TCP or UDP. A TCP and a UDP service may share a VIP.
    pub protocol: Protocol,
    /// `udp_idle`: a UDP flow with no datagram either way for this long
    /// ends (and a drain stops waiting for it). Unused for TCP.
    pub udp_idle: Duration,
}

impl ServiceConfig {
    /// The first live VIP: what names the service where one address does.
    pub fn vip(&self) -> SocketAddr {
        self.vips[0]
    }

    /// Its listeners: each VIP (live, then standby) with its data-plane key.
    pub fn listeners(&self) -> impl Iterator<Item = (ListenerKey, Listener)> + use<> {
        let protocol = self.protocol;
        let live = self.vips.clone().into_iter().map(|vip| (vip, Listener::Live));
        let standby = self
            .standby_vips
            .clone()
            .into_iter()
            .map(|vip| (vip, Listener::Standby));
        live.chain(standby)
            .map(move |(vip, listener)| (ListenerKey::new(vip, protocol), listener))
    }

    /// The data-plane keys of its live and standby VIPs.
    pub fn keys(&self) -> impl Iterator<Item = ListenerKey> + use<> {
        self.listeners().map(|(key, _)| key)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub pool: Pool,
    /// IPv4 or IPv6: the VIPs of its family send it connections.
    pub address: SocketAddr,
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
    /// `port`: TCP and HTTP checks connect to this port of each backend's
    /// address instead of its service port (a UDP service's backends must
    /// name one: their port is UDP).
    pub port: Option<u16>,
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
            port: None,
        }
    }
}

/// What one check does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCheck {
    /// A TCP connect to the backend address succeeds: the handshake completes (a reset right after
    /// still passes). Says nothing about live or standby.
    Tcp,
    /// HTTP GETs of the live and standby paths.
    Http(HttpCheck),
    /// A datagram to the backend's (UDP) address whose reply must contain
    /// an expected string. Says nothing about live or standby.
    Udp(UdpCheck),
}

/// A UDP request/response check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpCheck {
    /// `request`: the datagram's payload; non-empty.
    pub request: String,
    /// `expect`: a substring the reply must contain; non-empty.
    pub expect: String,
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
    let raw: RawConfig = toml::from_str(text).map_err(|e| Invalid::from_toml(&e).in_file(path, text))?;
    validate::validate(raw, text).map_err(|e| e.in_file(path, text))
}

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
