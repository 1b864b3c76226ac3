//! Health-gated announcement of the VIPs over BGP, through the host's BIRD.
//!
//! The daemon writes a BIRD config fragment (`[bgp] bird_include`) holding
//! two static protocols, a `/32` route per IPv4 VIP address that can serve
//! in one and a `/128` per IPv6 one in the other (a BIRD static protocol
//! has one channel, so one family), and asks BIRD to read it (`birdc
//! configure`). The operator's bird.conf
//! includes the file and exports that protocol's routes to its BGP peers
//! (docs/deploy.md, "Several hosts"). BIRD, not the daemon, holds the
//! routes: a daemon killed or restarted with its pinned data plane leaves
//! them announced, because the data plane keeps forwarding.
//!
//! This module decides what to announce (pure, unit-tested) and renders
//! the fragment; [`speaker`] writes it and drives `birdc`.

pub mod speaker;

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

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
/// each address, of either family, with a listener (live VIP or standby
/// VIP) that can serve.
/// An address is one route, so services sharing it share its fate: it
/// stays announced while any of them can serve, since withdrawing it would
/// take down the ones that still can.
pub fn wanted(config: &Config, operator: &OperatorState, health: &Health) -> BTreeSet<IpAddr> {
    if operator.node_drained {
        return BTreeSet::new();
    }
    let mut addresses = BTreeSet::new();
    for service in &config.services {
        let state = operator.services.get(&service.name);
        let live = desired::live_spec(service, state, health);
        let standby = desired::standby_spec(service, state, health);
        for (listener, spec) in desired::listener_specs(service, &live, standby.as_ref()) {
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
                addresses.insert(spec.vip.ip());
            }
        }
    }
    addresses
}

/// Every VIP address of the config, announced or not.
pub fn vip_addresses(config: &Config) -> BTreeSet<IpAddr> {
    config
        .services
        .iter()
        .flat_map(|s| s.vips.iter().chain(&s.standby_vips))
        .map(|vip| vip.ip())
        .collect()
}

/// The IPv6 static protocol's name: the configured one (IPv4's) with `6`
/// appended, so bird.conf's IPv6 channels export `proto = "bglb_vips6"`.
pub fn ipv6_protocol(protocol: &str) -> String {
    format!("{protocol}6")
}

/// The include file: static protocol `protocol` with a blackhole `/32` per
/// IPv4 address, and [`ipv6_protocol`] with a blackhole `/128` per IPv6 one.
/// Blackhole, because the routes exist only to be exported over BGP; the
/// operator's kernel protocol must not install them on this host (the VIP's
/// packets are taken by XDP before routing). Both protocols are always
/// there, empty when their family has no address, so bird.conf's filters
/// that name them keep parsing.
pub fn render(protocol: &str, addresses: &BTreeSet<IpAddr>) -> String {
    let mut text = "# Written by bg-lb: the VIPs this host announces. Do not edit; bg-lb rewrites it.\n".to_owned();
    for (name, channel, ipv6) in [
        (protocol.to_owned(), "ipv4", false),
        (ipv6_protocol(protocol), "ipv6", true),
    ] {
        text.push_str(&format!("protocol static {name} {{\n  {channel};\n"));
        for address in addresses.iter().filter(|a| a.is_ipv6() == ipv6) {
            let length = if ipv6 { 128 } else { 32 };
            text.push_str(&format!("  route {address}/{length} blackhole;\n"));
        }
        text.push_str("}\n");
    }
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
