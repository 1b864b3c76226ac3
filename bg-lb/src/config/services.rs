//! The service list: each service and its backends, what services must not share, and whether their lookup tables
//! fit in `lookup_capacity`.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    ops::{Range, RangeInclusive},
};

use bg_lb_common::maps::{DEFAULT_LUT_SIZE, MAX_BACKENDS, MAX_SERVICES};
use toml::Spanned;

use super::{
    BackendConfig, DEFAULT_BLUE_SHARE, DEFAULT_WEIGHT, HealthConfig, MAX_WEIGHT, ServiceConfig,
    error::{Invalid, line_of},
    health::health,
    raw::{RawBackend, RawService},
    values::{duration, endpoint, integer_in, lookup_table_size, service_name},
};
use crate::{
    dataplane::{
        forwarding::Forwarding,
        syn_proxy::{SynProxy, SynProxyMode},
    },
    ratio::{Pool, Ratio},
};

pub(super) const WEIGHT_RANGE: RangeInclusive<i64> = 0..=MAX_WEIGHT as i64;
const SYN_PROXY_THRESHOLD_RANGE: RangeInclusive<i64> = 1..=u32::MAX as i64;
/// From the smallest MSS every IPv4 path carries to a 9000-byte jumbo frame's.
const SYN_PROXY_MSS_RANGE: RangeInclusive<i64> = 536..=8960;

/// Validates every service, then what services must not share.
pub(super) fn services(
    raw: &[RawService],
    snat: &[(Ipv4Addr, Range<usize>)],
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

/// State for the checks across services: names and VIPs are unique, no VIP is a SNAT address, and all backends
/// fit in the BACKENDS map.
struct SharedChecks<'a> {
    text: &'a str,
    /// Each SNAT address and where it was written.
    snat: &'a [(Ipv4Addr, Range<usize>)],
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
        if let Some((_, snat_span)) = self.snat.iter().find(|(snat, _)| snat == address.ip()) {
            return Invalid::at(
                value.span(),
                format!(
                    "{key} {address} uses a SNAT address (line {}); they must differ",
                    line_of(self.text, snat_span)
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
    let forwarding = forwarding(raw, vip, standby_vip, &backends)?;
    Ok(ServiceConfig {
        name,
        vip,
        standby_vip,
        ratio,
        lookup_table_size,
        backends,
        health,
        syn_proxy: syn_proxy(raw, forwarding)?,
        forwarding,
        slowstart: raw
            .slowstart
            .as_ref()
            .map(|value| duration(Some(value), "slowstart", std::time::Duration::ZERO))
            .transpose()?,
    })
}

/// The service's forwarding mode, refused where it cannot work: `dsr`
/// forwards the frame unchanged but for its MACs, so each backend must
/// listen on the port clients connect to, on every VIP of the service.
/// (That a `dsr` backend is on-link is the data plane's to check, per
/// packet, as routes change after the config is read; the daemon warns
/// about one that is not when it starts or reloads.)
fn forwarding(
    raw: &RawService,
    vip: SocketAddrV4,
    standby_vip: Option<SocketAddrV4>,
    backends: &[BackendConfig],
) -> Result<Forwarding, Invalid> {
    let Some(setting) = &raw.forwarding else {
        return Ok(Forwarding::default());
    };
    let mode = setting
        .get_ref()
        .parse::<Forwarding>()
        .map_err(|e| Invalid::new(setting.span(), e))?;
    if mode != Forwarding::Dsr {
        return Ok(mode);
    }
    if let (Some(standby), Some(raw_standby)) = (standby_vip, &raw.standby_vip)
        && standby.port() != vip.port()
    {
        return Invalid::at(
            raw_standby.span(),
            format!(
                "forwarding = \"dsr\" keeps the port clients connect to, so standby_vip {standby} must use the vip's \
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
pub(super) fn backend_problem(mode: Forwarding, vip: SocketAddrV4, backend: &BackendConfig) -> Option<String> {
    (mode == Forwarding::Dsr && backend.address.port() != vip.port()).then(|| {
        format!(
            "forwarding = \"dsr\" keeps the port clients connect to, so backend {} must listen on the vip's port {}",
            backend.address,
            vip.port()
        )
    })
}

/// The SYN proxy needs each backend's SYN-ACK, which bypasses the LB under
/// `dsr`: off by default there, and refused if asked for.
fn syn_proxy(raw: &RawService, forwarding: Forwarding) -> Result<SynProxy, Invalid> {
    let default = SynProxy::default();
    let mode = match &raw.syn_proxy {
        Some(mode) => {
            let parsed = mode
                .get_ref()
                .parse::<SynProxyMode>()
                .map_err(|e| Invalid::new(mode.span(), e))?;
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
        None if forwarding == Forwarding::Dsr => SynProxyMode::Off,
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

/// Each service takes two regions of `lookup_table_size` slots (live and being rebuilt, for atomic swaps).
pub(super) fn check_lookup_capacity(
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

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use bg_lb_common::maps::{MAX_BACKENDS, MAX_SERVICES};

    use super::*;
    use crate::config::test_support::{API, BLUE, TOP, WEB, assert_rejected, parse_ok};

    #[test]
    fn service_without_backends_and_ratio_towards_an_empty_pool_are_accepted() {
        // The data plane hands the share of a pool that cannot serve to the other one.
        let config = parse_ok(&format!("{TOP}{WEB}ratio = \"0:100\"\n{BLUE}{API}"));
        assert_eq!(config.services[0].backends.len(), 1);
        assert!(config.services[1].backends.is_empty());
    }

    #[test]
    fn bad_syn_proxy_settings_are_rejected() {
        assert_rejected(
            &format!("{TOP}{WEB}syn_proxy = \"on\"  # <-\n"),
            "syn_proxy \"on\": expected \"auto\", \"always\" or \"off\"",
        );
        assert_rejected(
            &format!("{TOP}{WEB}syn_proxy_threshold = 0  # <-\n"),
            "syn_proxy_threshold",
        );
        for mss in [535, 8961] {
            assert_rejected(&format!("{TOP}{WEB}syn_proxy_mss = {mss}  # <-\n"), "syn_proxy_mss");
        }
    }

    #[test]
    fn forwarding_modes_parse_and_dsr_turns_the_syn_proxy_off() {
        let config = parse_ok(&format!(
            "{TOP}{WEB}forwarding = \"gateway\"\n{BLUE}{API}forwarding = \"dsr\"\n"
        ));
        assert_eq!(config.services[0].forwarding, Forwarding::Gateway);
        assert_eq!(config.services[0].syn_proxy, SynProxy::default());
        assert_eq!(config.services[1].forwarding, Forwarding::Dsr);
        assert_eq!(config.services[1].syn_proxy.mode, SynProxyMode::Off);
        assert_eq!(
            parse_ok(&format!("{TOP}{WEB}")).services[0].forwarding,
            Forwarding::FullNat
        );
        assert_rejected(
            &format!("{TOP}{WEB}forwarding = \"nat\"  # <-\n"),
            "forwarding \"nat\": expected \"full-nat\", \"gateway\" or \"dsr\"",
        );
    }

    #[test]
    fn dsr_refuses_another_backend_port_a_standby_port_and_the_syn_proxy() {
        assert_rejected(
            &format!(
                "{TOP}{WEB}forwarding = \"dsr\"\n[[service.backend]]\npool = \"blue\"\naddress = \"10.0.1.1:8080\"  # <-\n"
            ),
            "backend 10.0.1.1:8080 must listen on the vip's port 80",
        );
        assert_rejected(
            &format!("{TOP}{WEB}forwarding = \"dsr\"\nstandby_vip = \"10.0.0.100:8080\"  # <-\n{BLUE}"),
            "standby_vip 10.0.0.100:8080 must use the vip's port 80",
        );
        for mode in ["auto", "always"] {
            assert_rejected(
                &format!("{TOP}{WEB}forwarding = \"dsr\"\nsyn_proxy = \"{mode}\"  # <-\n{BLUE}"),
                &format!("syn_proxy = \"{mode}\" needs the backends' replies"),
            );
        }
        // Gateway rewrites the port: any backend port will do.
        let gateway = format!(
            "{TOP}{WEB}forwarding = \"gateway\"\n[[service.backend]]\npool = \"blue\"\naddress = \"10.0.1.1:8080\"\n"
        );
        assert_eq!(parse_ok(&gateway).services[0].backends[0].address.port(), 8080);
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
    fn unknown_pool_is_rejected() {
        assert_rejected(
            &format!("{TOP}{WEB}[[service.backend]]\npool = \"purple\"  # <-\naddress = \"10.0.1.1:80\"\n"),
            "unknown pool \"purple\" (expected blue or green)",
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
            "vip 10.0.0.1:80 uses a SNAT address (line 2)",
        );
        assert_rejected(
            &format!("{TOP}{WEB}standby_vip = \"10.0.0.1:8080\"  # <-\n"),
            "standby_vip 10.0.0.1:8080 uses a SNAT address",
        );
        let several = "interface = \"eth0\"\nsnat_addresses = [\n  \"10.0.0.1\",\n  \"10.0.0.2\",\n]\n";
        assert_rejected(
            &format!("{several}{WEB}standby_vip = \"10.0.0.2:8080\"  # <-\n"),
            "standby_vip 10.0.0.2:8080 uses a SNAT address (line 4)",
        );
        assert_rejected(
            &format!("{several}[[service]]\nname = \"web\"\nvip = \"10.0.0.1:80\"  # <-\n"),
            "vip 10.0.0.1:80 uses a SNAT address (line 3)",
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
}
