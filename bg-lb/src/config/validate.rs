//! From the raw file to the [`Config`]: the top-level keys, with the services left to `services`.

use std::{
    collections::HashMap,
    net::IpAddr,
    ops::{Range, RangeInclusive},
};

use bg_lb_common::maps::{DEFAULT_LOOKUP_CAPACITY, DEFAULT_MAX_FLOWS, MAX_SNAT_ADDRESSES};
use toml::Spanned;

use super::{
    AdminConfig, Config, DEFAULT_ADMIN_LIMITS, DEFAULT_ADMIN_SOCKET, DEFAULT_METRICS_LIMITS, DEFAULT_PIN_DIR,
    DEFAULT_SNAT_PORTS, DEFAULT_STATE_DIR, DEFAULT_TIMEOUTS, DEFAULT_XDP_MODE, Interfaces, ListenerLimits,
    MAX_CONNECTIONS_RANGE, api, bgp, cluster,
    error::{Invalid, line_of},
    raw::{RawAdmin, RawConfig, RawTimeouts},
    services::{check_lookup_capacity, services},
    values::{absolute_path, duration, integer_in, interface_name, listen_address, snat_address, snat_ports, xdp_mode},
};
use crate::{dataplane::housekeeping::FlowTimeouts, family::Family};

pub(super) const MAX_FLOWS_RANGE: RangeInclusive<i64> = 1024..=16_777_216;

pub(super) fn validate(raw: RawConfig, text: &str) -> Result<Config, Invalid> {
    let interfaces = interfaces(&raw)?;
    let xdp_mode = raw.xdp_mode.as_ref().map_or(Ok(DEFAULT_XDP_MODE), xdp_mode)?;
    let snat = snat_addresses(&raw, text)?;
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
    let metrics = raw.metrics.as_ref().map(|m| listen_address(m, "metrics")).transpose()?;
    let api = raw.api.as_ref().map(api::api).transpose()?;
    let metrics_limits = listener_limits(
        (raw.metrics_max_connections.as_ref(), "metrics_max_connections"),
        (raw.metrics_idle_timeout.as_ref(), "metrics_idle_timeout"),
        DEFAULT_METRICS_LIMITS,
    )?;
    let timeouts = raw.timeouts.as_ref().map_or(Ok(DEFAULT_TIMEOUTS), timeouts)?;
    let bgp = raw.bgp.as_ref().map(bgp::bgp).transpose()?;
    let cluster = raw.cluster.as_ref().map(cluster::cluster).transpose()?;
    let services = services(&raw.service, &snat, text)?;
    check_lookup_capacity(lookup_capacity, raw.lookup_capacity.as_ref(), &raw.service, &services)?;
    let (mut snat_addresses, mut snat6_addresses) = (Vec::new(), Vec::new());
    for (address, _) in snat {
        match address {
            IpAddr::V4(address) => snat_addresses.push(address),
            IpAddr::V6(address) => snat6_addresses.push(address),
        }
    }
    Ok(Config {
        interfaces,
        xdp_mode,
        snat_addresses,
        snat6_addresses,
        snat_ports,
        max_flows,
        lookup_capacity,
        pin_dir,
        state_dir,
        admin,
        metrics,
        metrics_limits,
        api,
        timeouts,
        bgp,
        cluster,
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

/// `snat_address` (one) or `snat_addresses` (1 to [`MAX_SNAT_ADDRESSES`]
/// per family, each once), with where each was written.
fn snat_addresses(raw: &RawConfig, text: &str) -> Result<Vec<(IpAddr, Range<usize>)>, Invalid> {
    let list = match (&raw.snat_address, &raw.snat_addresses) {
        (Some(one), None) => return Ok(vec![(snat_address(one, "snat_address")?, one.span())]),
        (None, Some(list)) => list,
        (Some(_), Some(list)) => {
            return Invalid::at(
                list.span(),
                "`snat_address` and `snat_addresses` are mutually exclusive: list every address in                  `snat_addresses`",
            );
        }
        (None, None) => {
            return Invalid::at(
                0..0,
                "no SNAT address: set `snat_address` (one) or `snat_addresses` (a list)",
            );
        }
    };
    if list.get_ref().is_empty() {
        return Invalid::at(list.span(), "snat_addresses must name at least one address");
    }
    let mut seen: HashMap<IpAddr, Range<usize>> = HashMap::new();
    let mut addresses: Vec<(IpAddr, Range<usize>)> = Vec::with_capacity(list.get_ref().len());
    for value in list.get_ref() {
        let address = snat_address(value, "snat_addresses")?;
        let family = Family::of(address);
        if addresses.iter().filter(|(a, _)| Family::of(*a) == family).count() == MAX_SNAT_ADDRESSES {
            return Invalid::at(
                value.span(),
                format!("too many {family} snat_addresses: at most {MAX_SNAT_ADDRESSES} per family"),
            );
        }
        if let Some(first) = seen.insert(address, value.span()) {
            return Invalid::at(
                value.span(),
                format!(
                    "duplicate SNAT address {address} (first on line {})",
                    line_of(text, &first)
                ),
            );
        }
        addresses.push((address, value.span()));
    }
    Ok(addresses)
}

fn admin(raw: &RawAdmin) -> Result<AdminConfig, Invalid> {
    let socket = absolute_path(raw.socket.as_ref(), "admin.socket", DEFAULT_ADMIN_SOCKET)?;
    let group = match &raw.group {
        Some(group) if group.get_ref().is_empty() => return Invalid::at(group.span(), "admin.group must not be empty"),
        Some(group) => Some(group.get_ref().clone()),
        None => None,
    };
    let limits = listener_limits(
        (raw.max_connections.as_ref(), "admin.max_connections"),
        (raw.idle_timeout.as_ref(), "admin.idle_timeout"),
        DEFAULT_ADMIN_LIMITS,
    )?;
    Ok(AdminConfig { socket, group, limits })
}

pub(super) fn listener_limits(
    (max_connections, max_key): (Option<&Spanned<i64>>, &str),
    (idle_timeout, idle_key): (Option<&Spanned<String>>, &str),
    default: ListenerLimits,
) -> Result<ListenerLimits, Invalid> {
    Ok(ListenerLimits {
        max_connections: match max_connections {
            Some(value) => integer_in(value, max_key, MAX_CONNECTIONS_RANGE)?,
            None => default.max_connections,
        },
        idle_timeout: duration(idle_timeout, idle_key, default.idle_timeout)?,
    })
}

fn timeouts(raw: &RawTimeouts) -> Result<FlowTimeouts, Invalid> {
    Ok(FlowTimeouts {
        established_idle: duration(
            raw.established_idle.as_ref(),
            "timeouts.established_idle",
            DEFAULT_TIMEOUTS.established_idle,
        )?,
        closing: duration(raw.closing.as_ref(), "timeouts.closing", DEFAULT_TIMEOUTS.closing)?,
        syn: duration(raw.syn.as_ref(), "timeouts.syn", DEFAULT_TIMEOUTS.syn)?,
    })
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, time::Duration};

    use crate::{
        config::{
            AdminConfig, DEFAULT_TIMEOUTS, ListenerLimits,
            test_support::{TOP, assert_rejected, parse_ok},
        },
        dataplane::housekeeping::FlowTimeouts,
    };

    #[test]
    fn empty_admin_and_timeouts_tables_take_their_defaults() {
        let config = parse_ok(&format!("{TOP}[admin]\n[timeouts]\nsyn = \"1s\"\n"));
        assert_eq!(config.admin, AdminConfig::default());
        assert_eq!(
            config.timeouts,
            FlowTimeouts {
                syn: Duration::from_secs(1),
                ..DEFAULT_TIMEOUTS
            }
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
    fn snat_addresses_take_a_list_of_distinct_addresses() {
        let config = parse_ok("interface = \"eth0\"\nsnat_addresses = [\"10.0.0.1\", \"10.0.0.2\"]\n");
        assert_eq!(
            config.snat_addresses,
            [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]
        );
        let sixteen: Vec<String> = (1..=16).map(|i| format!("\"10.0.1.{i}\"")).collect();
        let config = parse_ok(&format!(
            "interface = \"eth0\"\nsnat_addresses = [{}]\n",
            sixteen.join(", ")
        ));
        assert_eq!(config.snat_addresses.len(), 16);
    }

    #[test]
    fn bad_snat_address_lists_are_rejected_where_they_go_wrong() {
        let eth0 = "interface = \"eth0\"\n";
        assert_rejected(
            &format!("{eth0}snat_address = \"10.0.0.1\"\nsnat_addresses = [\"10.0.0.2\"]  # <-\n"),
            "`snat_address` and `snat_addresses` are mutually exclusive",
        );
        assert_rejected(
            &format!("{eth0}snat_addresses = []  # <-\n"),
            "snat_addresses must name at least one address",
        );
        assert_rejected(
            &format!("{eth0}snat_addresses = [\n  \"10.0.0.1\",\n  \"10.0.0.2\",\n  \"10.0.0.1\",  # <-\n]\n"),
            "duplicate SNAT address 10.0.0.1 (first on line 3)",
        );
        assert_rejected(
            &format!("{eth0}snat_addresses = [\n  \"10.0.0.1\",\n  \"0.0.0.0\",  # <-\n]\n"),
            "snat_addresses must not be 0.0.0.0",
        );
        assert_rejected(
            &format!("{eth0}snat_addresses = [\n  \"lb.example\",  # <-\n]\n"),
            "snat_addresses: \"lb.example\" is not an IPv4 address (host names are not resolved)",
        );
        let mut seventeen = format!("{eth0}snat_addresses = [\n");
        for i in 1..=16 {
            seventeen.push_str(&format!("  \"10.0.1.{i}\",\n"));
        }
        seventeen.push_str("  \"10.0.1.17\",  # <-\n]\n");
        assert_rejected(&seventeen, "too many IPv4 snat_addresses: at most 16 per family");
    }

    #[test]
    fn listener_limits_are_read_and_checked() {
        let config = parse_ok(&format!(
            "metrics = \"127.0.0.1:9750\"\nmetrics_max_connections = 2\nmetrics_idle_timeout = \"3s\"\n{TOP}\
             [admin]\nmax_connections = 5\nidle_timeout = \"500ms\"\n"
        ));
        assert_eq!(
            config.metrics_limits,
            ListenerLimits {
                max_connections: 2,
                idle_timeout: Duration::from_secs(3)
            }
        );
        assert_eq!(
            config.admin.limits,
            ListenerLimits {
                max_connections: 5,
                idle_timeout: Duration::from_millis(500)
            }
        );
        assert_rejected(
            &format!("{TOP}[admin]\nmax_connections = 0  # <-\n"),
            "admin.max_connections 0 is out of range 1..=4096",
        );
        assert_rejected(
            &format!("metrics_idle_timeout = \"0s\"  # <-\n{TOP}"),
            "metrics_idle_timeout must be greater than zero",
        );
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
}
