//! Health-gated announcement of the VIPs over BGP, through the host's BIRD.
//!
//! The daemon writes a BIRD config fragment (`[bgp] bird_include`) holding
//! one static protocol with a `/32` route per VIP address that can serve,
//! and asks BIRD to read it (`birdc configure`). The operator's bird.conf
//! includes the file and exports that protocol's routes to its BGP peers
//! (docs/deploy.md, "Several hosts"). BIRD, not the daemon, holds the
//! routes: a daemon killed or restarted with its pinned data plane leaves
//! them announced, because the data plane keeps forwarding.
//!
//! This module decides what to announce (pure, unit-tested) and renders
//! the fragment; [`speaker`] writes it and drives `birdc`.

pub mod speaker;

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use crate::{
    config::Config,
    desired::{self, Health},
    health::Listener,
    ratio::Pool,
    state_file::OperatorState,
};

/// How long stopping for good waits between withdrawing the VIPs and
/// detaching the data plane: BIRD sends the withdrawal and the routers
/// reroute within milliseconds, and the packets they sent meanwhile still
/// find the data plane forwarding.
pub const WITHDRAW_GRACE: Duration = Duration::from_secs(2);

/// The VIP addresses to announce: none while the node is drained; else
/// each IPv4 address with a listener (live VIP or standby VIP) that can
/// serve. (IPv6 VIPs are not announced yet: the include file has one IPv4
/// static protocol; config refuses them with `[bgp]`.)
/// An address is one route, so services sharing it share its fate: it
/// stays announced while any of them can serve, since withdrawing it would
/// take down the ones that still can.
pub fn wanted(config: &Config, operator: &OperatorState, health: &Health) -> BTreeSet<Ipv4Addr> {
    if operator.node_drained {
        return BTreeSet::new();
    }
    let mut addresses = BTreeSet::new();
    for service in &config.services {
        let state = operator.services.get(&service.name);
        let live = desired::live_spec(service, state, health);
        let standby = desired::standby_spec(service, state, health);
        for (listener, spec) in desired::listener_specs(service, &live, standby.as_ref()) {
            let IpAddr::V4(address) = spec.vip.ip() else { continue };
            let can_serve = |pool| spec.backends.iter().any(|b| b.pool == pool && b.weight > 0);
            let serves = match listener {
                Listener::Live => {
                    let effective = spec.ratio.effective(can_serve(Pool::Blue), can_serve(Pool::Green));
                    [Pool::Blue, Pool::Green]
                        .into_iter()
                        .any(|pool| effective.share(pool) > 0 && can_serve(pool))
                }
                Listener::Standby => spec.backends.iter().any(|b| b.weight > 0),
            };
            if serves {
                addresses.insert(address);
            }
        }
    }
    addresses
}

/// Every VIP address of the config, announced or not.
pub fn vip_addresses(config: &Config) -> BTreeSet<Ipv4Addr> {
    config
        .services
        .iter()
        .flat_map(|s| s.vips.iter().chain(&s.standby_vips))
        .filter_map(|vip| match vip.ip() {
            IpAddr::V4(address) => Some(address),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// The include file: one static protocol named `protocol`, with a
/// blackhole `/32` per address. Blackhole, because the routes exist only to
/// be exported over BGP; the operator's kernel protocol must not install
/// them on this host (the VIP's packets are taken by XDP before routing).
/// With no address the protocol is empty, so bird.conf's filters that name
/// it keep parsing.
pub fn render(protocol: &str, addresses: &BTreeSet<Ipv4Addr>) -> String {
    let mut text = format!(
        "# Written by bg-lb: the VIPs this host announces. Do not edit; bg-lb rewrites it.\n\
         protocol static {protocol} {{\n  ipv4;\n"
    );
    for address in addresses {
        text.push_str(&format!("  route {address}/32 blackhole;\n"));
    }
    text.push_str("}\n");
    text
}

/// Whether BIRD took the new config, from `birdc configure`'s output: its
/// last line says so ("Reconfigured", or a reconfiguration in progress or
/// queued, which completes on its own); anything else is the error.
pub fn configure_result(output: &str) -> Result<String, String> {
    let last = output.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("");
    let accepted = last == "Reconfigured"
        || last == "Reconfiguration in progress"
        || last == "Reconfiguration already in progress, queueing new config";
    if accepted {
        Ok(last.to_owned())
    } else {
        let text = output.trim();
        Err(if text.is_empty() {
            "birdc said nothing".to_owned()
        } else {
            text.replace('\n', " | ")
        })
    }
}

#[cfg(test)]
mod tests;
