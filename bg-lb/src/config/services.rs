//! The service list: each service and its backends, what services must not share, and whether their lookup tables
//! fit in `lookup_capacity`.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    ops::{Range, RangeInclusive},
    time::Duration,
};

use bg_lb_common::maps::{DEFAULT_LUT_SIZE, MAX_BACKENDS, MAX_SERVICES, service_table_slots};
use toml::Spanned;

use super::{
    BackendConfig, DEFAULT_BLUE_SHARE, DEFAULT_WEIGHT, HealthCheck, HealthConfig, MAX_WEIGHT, ServiceConfig,
    error::{Invalid, line_of},
    health::health,
    raw::{OneOrList, RawBackend, RawService},
    values::{duration, endpoint, integer_in, lookup_table_size, service_name},
};
use crate::{
    dataplane::{
        affinity::Affinity,
        forwarding::Forwarding,
        l4::{DEFAULT_UDP_IDLE, Protocol},
        syn_proxy::{SynProxy, SynProxyMode},
    },
    family::Family,
    ratio::{Pool, Ratio},
};

pub(super) const WEIGHT_RANGE: RangeInclusive<i64> = 0..=MAX_WEIGHT as i64;
/// The longest `udp_idle` the SERVICES entry holds (seconds in a u16).
const MAX_UDP_IDLE: Duration = Duration::from_secs(u16::MAX as u64);
const SYN_PROXY_THRESHOLD_RANGE: RangeInclusive<i64> = 1..=u32::MAX as i64;
/// From the smallest MSS every IPv4 path carries to a 9000-byte jumbo frame's.
const SYN_PROXY_MSS_RANGE: RangeInclusive<i64> = 536..=8960;

/// Validates every service, then what services must not share.
pub(super) fn services(
    raw: &[RawService],
    snat: &[(IpAddr, Range<usize>)],
    text: &str,
) -> Result<Vec<ServiceConfig>, Invalid> {
    let mut shared = SharedChecks {
        text,
        snat,
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
        let (service, vips) = service(raw_service, snat, text)?;
        shared.name(raw_service)?;
        for (key, address, span) in vips {
            shared.vip(raw_service, key, span, (address, service.protocol))?;
        }
        shared.backend_budget(raw_service)?;
        services.push(service);
    }
    Ok(services)
}

/// State for the checks across services: names and VIPs are unique, no VIP is a SNAT address, and all backends
/// fit in the BACKENDS map.
struct SharedChecks<'a> {
    text: &'a str,
    /// Each SNAT address and where it was written.
    snat: &'a [(IpAddr, Range<usize>)],
    // Spans are kept rather than lines: finding a line scans the text, so only do that for an error.
    /// Service name -> span.
    names: HashMap<&'a str, Range<usize>>,
    /// VIP and protocol -> (service, key, span): a TCP and a UDP service may
    /// share a VIP.
    vips: HashMap<(SocketAddr, Protocol), (&'a str, &'static str, Range<usize>)>,
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
        span: Range<usize>,
        (address, protocol): (SocketAddr, Protocol),
    ) -> Result<(), Invalid> {
        if let Some((_, snat_span)) = self.snat.iter().find(|(snat, _)| *snat == address.ip()) {
            return Invalid::at(
                span,
                format!(
                    "{key} {address} uses a SNAT address (line {}); they must differ",
                    line_of(self.text, snat_span)
                ),
            );
        }
        match self
            .vips
            .insert((address, protocol), (service.name.get_ref(), key, span.clone()))
        {
            Some((first_service, first_key, first_span)) => Invalid::at(
                span,
                format!(
                    "overlapping VIPs: {key} {address} ({protocol}) is already the {first_key} of service \
                     {first_service:?} (line {})",
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

/// A VIP key's addresses, each with its key and where it was written.
type Vips = Vec<(&'static str, SocketAddr, Range<usize>)>;

/// Validates one service; also returns its VIPs (live, then standby) with
/// where each was written, for the checks across services.
fn service(raw: &RawService, snat: &[(IpAddr, Range<usize>)], text: &str) -> Result<(ServiceConfig, Vips), Invalid> {
    let name = service_name(&raw.name)?;
    let mut vips = vip_list(&raw.vip, "vip")?;
    if let Some(standby) = &raw.standby_vip {
        for (key, standby, span) in vip_list(standby, "standby_vip")? {
            if let Some((_, vip, _)) = vips.iter().find(|(_, vip, _)| *vip == standby) {
                return Invalid::at(
                    span,
                    format!("overlapping VIPs: {key} {standby} equals the service's vip {vip}"),
                );
            }
            vips.push((key, standby, span));
        }
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
    families(raw, &vips, &backends, snat)?;
    let health = raw.health.as_ref().map_or(Ok(HealthConfig::default()), health)?;
    let addresses = |wanted: &str| -> Vec<SocketAddr> {
        vips.iter()
            .filter(|(key, _, _)| *key == wanted)
            .map(|(_, address, _)| *address)
            .collect()
    };
    let (live, standby) = (addresses("vip"), addresses("standby_vip"));
    let forwarding = forwarding(raw, &vips, &backends)?;
    let (protocol, udp_idle) = protocol(raw, &health)?;
    let service = ServiceConfig {
        name,
        vips: live,
        standby_vips: standby,
        ratio,
        lookup_table_size,
        backends,
        health,
        syn_proxy: syn_proxy(raw, forwarding, protocol)?,
        forwarding,
        affinity: match &raw.affinity {
            Some(value) => value
                .get_ref()
                .parse::<Affinity>()
                .map_err(|e| Invalid::new(value.span(), e))?,
            None => Affinity::default(),
        },
        slowstart: raw
            .slowstart
            .as_ref()
            .map(|value| duration(Some(value), "slowstart", std::time::Duration::ZERO))
            .transpose()?,
        drain_deadline: raw
            .drain_deadline
            .as_ref()
            .map(|value| duration(Some(value), "drain_deadline", std::time::Duration::ZERO))
            .transpose()?,
        protocol,
        udp_idle,
    };
    Ok((service, vips))
}

/// `vip` or `standby_vip`: one address, or one per family.
fn vip_list(value: &Spanned<OneOrList>, key: &'static str) -> Result<Vips, Invalid> {
    let items = OneOrList::items(value);
    if items.is_empty() {
        return Invalid::at(value.span(), format!("{key} must name at least one address"));
    }
    let mut vips: Vips = Vec::with_capacity(items.len());
    for item in &items {
        let address = endpoint(item, key)?;
        let family = Family::of_socket(address);
        if let Some((_, first, _)) = vips.iter().find(|(_, a, _)| Family::of_socket(*a) == family) {
            return Invalid::at(
                item.span(),
                format!("{key} lists two {family} addresses ({first} and {address}): at most one per family"),
            );
        }
        vips.push((key, address, item.span()));
    }
    Ok(vips)
}

/// What the families of a service's addresses must agree on: each VIP's
/// family has a SNAT address (NAT and health probes come from it) and, when
/// the service has backends, a backend; each backend's family has a live
/// VIP (nothing else could reach it).
fn families(
    raw: &RawService,
    vips: &Vips,
    backends: &[BackendConfig],
    snat: &[(IpAddr, Range<usize>)],
) -> Result<(), Invalid> {
    for (raw_backend, backend) in raw.backend.iter().zip(backends) {
        if let Some(problem) = family_problem(vips.iter().filter(|(key, ..)| *key == "vip").map(|v| v.1), backend) {
            return Invalid::at(raw_backend.address.span(), problem);
        }
    }
    for (key, vip, span) in vips {
        let family = Family::of_socket(*vip);
        if !snat.iter().any(|(address, _)| Family::of(*address) == family) {
            return Invalid::at(
                span.clone(),
                format!(
                    "{key} {vip} is {family}, but no SNAT address is: add an {family} address of this host to \
                     snat_addresses"
                ),
            );
        }
        if !backends.is_empty() && !backends.iter().any(|b| Family::of_socket(b.address) == family) {
            return Invalid::at(
                span.clone(),
                format!(
                    "{key} {vip} is {family}, but service {:?} has no {family} backend: each VIP sends new \
                     connections only to backends of its own family",
                    raw.name.get_ref()
                ),
            );
        }
    }
    Ok(())
}

/// Why `backend` can serve none of the live VIPs `vips`, if it cannot: they
/// are all of the other family.
pub(super) fn family_problem(mut vips: impl Iterator<Item = SocketAddr>, backend: &BackendConfig) -> Option<String> {
    let family = Family::of_socket(backend.address);
    (!vips.any(|vip| Family::of_socket(vip) == family)).then(|| {
        format!(
            "backend {} is {family}, but the service has no {family} vip: a VIP sends connections only to \
             backends of its own family",
            backend.address
        )
    })
}

/// The service's protocol and UDP idle timeout. A UDP service's backends'
/// ports are UDP: a TCP or HTTP check needs a `port` to connect to, and a
/// service without `[service.health]` (whose default is a TCP check of the
/// backend's port) is refused.
fn protocol(raw: &RawService, health: &HealthConfig) -> Result<(Protocol, Duration), Invalid> {
    let protocol = match &raw.protocol {
        Some(value) => value
            .get_ref()
            .parse::<Protocol>()
            .map_err(|e| Invalid::new(value.span(), e))?,
        None => Protocol::default(),
    };
    if protocol == Protocol::Tcp {
        if let Some(value) = &raw.udp_idle {
            return Invalid::at(value.span(), "udp_idle needs protocol = \"udp\"");
        }
        if let (HealthCheck::Udp(_), Some(health)) = (&health.check, &raw.health)
            && let Some(check) = &health.check
        {
            return Invalid::at(
                check.span(),
                "health.type = \"udp\" checks a UDP service; this service is tcp (set protocol = \"udp\")",
            );
        }
        return Ok((protocol, Duration::ZERO));
    }
    let needs_port = matches!(health.check, HealthCheck::Tcp | HealthCheck::Http(_)) && health.port.is_none();
    if needs_port {
        let at = raw
            .health
            .as_ref()
            .and_then(|h| h.check.as_ref().map(|c| c.span()))
            .or_else(|| raw.protocol.as_ref().map(|p| p.span()))
            .unwrap_or(raw.name.span());
        return Invalid::at(
            at,
            "a protocol = \"udp\" service needs [service.health] with type = \"udp\" (request, expect), or a \
             tcp or http check with a port: the backends' ports are UDP",
        );
    }
    let udp_idle = duration(raw.udp_idle.as_ref(), "udp_idle", DEFAULT_UDP_IDLE)?;
    // The data plane's SERVICES entry holds it in whole seconds, in 16 bits.
    if udp_idle.subsec_nanos() != 0 || udp_idle > MAX_UDP_IDLE {
        return Invalid::at(
            raw.udp_idle.as_ref().map_or(0..0, |v| v.span()),
            format!(
                "udp_idle must be whole seconds, at most {}",
                humantime::format_duration(MAX_UDP_IDLE)
            ),
        );
    }
    Ok((protocol, udp_idle))
}

/// The service's forwarding mode, refused where it cannot work: `dsr`
/// forwards the frame unchanged but for its MACs, so each backend must
/// listen on the port clients connect to, on every VIP of the service,
/// IPv4 and IPv6 alike.
/// (That a `dsr` backend is on-link is the data plane's to check, per
/// packet, as routes change after the config is read; the daemon warns
/// about one that is not when it starts or reloads.)
fn forwarding(raw: &RawService, vips: &Vips, backends: &[BackendConfig]) -> Result<Forwarding, Invalid> {
    let Some(setting) = &raw.forwarding else {
        return Ok(Forwarding::default());
    };
    let mode = setting
        .get_ref()
        .parse::<Forwarding>()
        .map_err(|e| Invalid::new(setting.span(), e))?;
    if mode == Forwarding::FullNat {
        return Ok(mode);
    }
    if mode != Forwarding::Dsr {
        return Ok(mode);
    }
    // The first VIP; every other, of either family, standby or live, must
    // share its port.
    let vip = vips[0].1;
    if let Some((key, standby, span)) = vips.iter().find(|(_, standby, _)| standby.port() != vip.port()) {
        return Invalid::at(
            span.clone(),
            format!(
                "forwarding = \"dsr\" keeps the port clients connect to, so {key} {standby} must use the vip's \
                 port {}",
                vip.port()
            ),
        );
    }
    if let Some((raw_backend, problem)) = raw
        .backend
        .iter()
        .zip(backends)
        .find_map(|(raw, b)| Some((raw, backend_problem(mode, vip, b)?)))
    {
        return Invalid::at(raw_backend.address.span(), problem);
    }
    Ok(mode)
}

/// Why `backend` cannot serve a service on `vip` forwarding by `mode`, if
/// it cannot: `dsr` keeps the port clients connect to.
pub(super) fn backend_problem(mode: Forwarding, vip: SocketAddr, backend: &BackendConfig) -> Option<String> {
    (mode == Forwarding::Dsr && backend.address.port() != vip.port()).then(|| {
        format!(
            "forwarding = \"dsr\" keeps the port clients connect to, so backend {} must listen on the vip's port {}",
            backend.address,
            vip.port()
        )
    })
}

/// The SYN proxy needs each backend's SYN-ACK, which bypasses the LB under
/// `dsr`: off by default there, and refused if asked for. UDP has no SYNs:
/// off, and refused likewise. It serves VIPs of both families.
fn syn_proxy(raw: &RawService, forwarding: Forwarding, protocol: Protocol) -> Result<SynProxy, Invalid> {
    let default = SynProxy::default();
    let mode = match &raw.syn_proxy {
        Some(mode) => {
            let parsed = mode
                .get_ref()
                .parse::<SynProxyMode>()
                .map_err(|e| Invalid::new(mode.span(), e))?;
            if protocol == Protocol::Udp && parsed != SynProxyMode::Off {
                return Invalid::at(
                    mode.span(),
                    format!("syn_proxy = \"{parsed}\" answers TCP SYNs; a protocol = \"udp\" service has none"),
                );
            }
            if forwarding == Forwarding::Dsr && parsed != SynProxyMode::Off {
                return Invalid::at(
                    mode.span(),
                    format!(
                        "syn_proxy = \"{parsed}\" needs the backends' replies, which bypass the LB under forwarding = \"dsr\"; \
                         set syn_proxy = \"off\""
                    ),
                );
            }
            parsed
        }
        None if forwarding == Forwarding::Dsr || protocol == Protocol::Udp => SynProxyMode::Off,
        None => default.mode,
    };
    let threshold = match &raw.syn_proxy_threshold {
        Some(value) => integer_in(value, "syn_proxy_threshold", SYN_PROXY_THRESHOLD_RANGE)?,
        None => default.threshold,
    };
    let mss = match &raw.syn_proxy_mss {
        Some(value) => integer_in(value, "syn_proxy_mss", SYN_PROXY_MSS_RANGE)? as u16,
        None => default.mss,
    };
    Ok(SynProxy { mode, threshold, mss })
}

fn backends(raw: &[RawBackend], service: &str, text: &str) -> Result<Vec<BackendConfig>, Invalid> {
    // Address -> span; the line is only worked out for an error.
    let mut seen: HashMap<SocketAddr, Range<usize>> = HashMap::new();
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

/// Each service takes two buffers (live and being rebuilt, for atomic swaps), each of a table of
/// `lookup_table_size` slots per pool, per live VIP (one per family).
pub(super) fn check_lookup_capacity(
    capacity: u32,
    capacity_key: Option<&Spanned<i64>>,
    raw: &[RawService],
    services: &[ServiceConfig],
) -> Result<(), Invalid> {
    let slots =
        |service: &ServiceConfig| u64::from(service_table_slots(service.lookup_table_size)) * service.vips.len() as u64;
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
                     (4 x lookup_table_size per vip: 2 pools' tables, twice)"
                ),
            )
        }
        (None, Some(raw_service)) => Invalid::at(
            raw_service.name.span(),
            format!(
                "service {:?} does not fit in the default lookup_capacity {capacity} \
                 (4 x lookup_table_size slots per vip: 2 pools' tables, twice); raise lookup_capacity",
                raw_service.name.get_ref()
            ),
        ),
        (None, None) => Ok(()),
    }
}

#[cfg(test)]
mod tests;
