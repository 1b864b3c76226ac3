//! What `status` and `flows` reply about services, listeners, backends
//! and flows.

use std::{fmt, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{
    dataplane::{affinity::Affinity, forwarding::Forwarding, l4::Protocol, syn_proxy::SynProxyMode},
    family::Family,
    ratio::{Pool, Ratio},
    state_file::DrainDeadline,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// The first live VIP (of `listeners`).
    pub vip: SocketAddr,
    /// The first standby VIP, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_vip: Option<SocketAddr>,
    /// Every VIP: live ones, then standby ones, one per family each.
    /// Absent from older daemons' replies.
    #[serde(default)]
    pub listeners: Vec<ListenerStatus>,
    /// The ratio operators set.
    pub ratio: Ratio,
    /// What the data plane applies: a pool that cannot serve hands its share
    /// to the other one.
    pub effective_ratio: Ratio,
    pub backends: Vec<BackendStatus>,
    /// The latest progressive shift, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift: Option<crate::shift::ShiftRecord>,
    /// The SYN flood defence.
    #[serde(default)]
    pub syn_proxy: SynProxyStatus,
    #[serde(default)]
    pub forwarding: Forwarding,
    #[serde(default)]
    pub affinity: Affinity,
    /// The latest drain's deadline, pending or passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_deadline: Option<DrainDeadline>,
    #[serde(default)]
    pub protocol: Protocol,
}

/// One VIP of a service, as `status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub vip: SocketAddr,
    pub family: Family,
    pub protocol: Protocol,
    /// The standby VIP (new connections to the pool being deployed), not the live one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
}

/// A service's SYN proxy, as `status` reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynProxyStatus {
    pub mode: SynProxyMode,
    /// The data plane answers the service's SYNs with SYN cookies now (in
    /// auto mode: the service is flooded), on its VIP or standby VIP.
    pub active: bool,
}

impl ServiceStatus {
    /// Its VIPs as `ctl status` and `ctl top` show them: `vip A  standby
    /// B`, each address followed by its family once a service has an IPv6
    /// VIP (an older daemon's reply, without listeners, shows `vip` and
    /// `standby_vip`).
    pub fn vips_text(&self) -> String {
        let dual = self.listeners.iter().any(|l| l.family == Family::Ipv6);
        let list = |standby: bool| -> Vec<String> {
            self.listeners
                .iter()
                .filter(|l| l.standby == standby)
                .map(|l| {
                    if dual {
                        format!("{} ({})", l.vip, l.family)
                    } else {
                        l.vip.to_string()
                    }
                })
                .collect()
        };
        let (live, standby) = if self.listeners.is_empty() {
            (
                vec![self.vip.to_string()],
                self.standby_vip.iter().map(|v| v.to_string()).collect(),
            )
        } else {
            (list(false), list(true))
        };
        let mut text = format!("vip {}", live.join(", "));
        if !standby.is_empty() {
            text += &format!("  standby {}", standby.join(", "));
        }
        text
    }

    /// Open flows on a pool's backends: zero means drained.
    pub fn open_flows(&self, pool: Pool) -> u64 {
        self.backends
            .iter()
            .filter(|b| b.pool == pool)
            .map(|b| b.open_flows)
            .sum()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: SocketAddr,
    pub pool: Pool,
    /// Weight in effect for new flows (0 when disabled).
    pub weight: u32,
    pub configured_weight: u32,
    pub enabled: bool,
    /// Added with `backend-add` rather than listed in the config file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub added_at_runtime: bool,
    /// Live check.
    pub health: BackendHealth,
    /// The live check's last result: "ok" or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<String>,
    /// Standby check (HTTP checks with a standby VIP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_health: Option<BackendHealth>,
    /// Established connections that have not ended: what a drain waits for.
    pub open_flows: u64,
    /// Flows whose client has not completed the handshake (a connection
    /// being set up, or a spoofed SYN): neither open nor new connections.
    /// Absent from older daemons' replies.
    #[serde(default)]
    pub embryonic_flows: u64,
    /// Connections whose handshake the client completed.
    pub new_flows: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// The backend's SYN-ACKs seen on the reply path.
    pub handshakes: u64,
    /// New connections it refused (a RST before the client completed the
    /// handshake).
    pub refused: u64,
    /// Established connections it reset.
    pub resets: u64,
    /// SNAT (address, port) pairs its flows hold (after the last sweep),
    /// shared with every service that has the same backend address.
    /// Absent from older daemons' replies.
    #[serde(default)]
    pub snat_ports_in_use: u64,
    /// The pairs it can hold at once: SNAT addresses times `snat_ports`.
    #[serde(default)]
    pub snat_ports_capacity: u64,
    /// Connection requests refused with a RST because every SNAT pair it
    /// could have got was in use.
    #[serde(default)]
    pub snat_ports_exhausted: u64,
}

/// A backend's health check as `status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendHealth {
    Up,
    Down,
    /// No result yet.
    Unchecked,
}

impl fmt::Display for BackendHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, not `write_str`, so tables can align it with `{:<10}`.
        f.pad(match self {
            BackendHealth::Up => "up",
            BackendHealth::Down => "down",
            BackendHealth::Unchecked => "unchecked",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowInfo {
    pub client: SocketAddr,
    pub backend: SocketAddr,
    pub pool: Pool,
    /// Absent from older daemons' replies (IPv4 then).
    #[serde(default)]
    pub family: Family,
    pub age_secs: f64,
    pub idle_secs: f64,
    pub state: String,
    #[serde(default)]
    pub protocol: Protocol,
}
