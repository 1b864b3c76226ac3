//! Parsers for single values: addresses, port ranges, integers in range, durations, paths, names and the XDP mode.
//! Each takes the spanned value, so its error points at the value, and names the key in the message.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    ops::RangeInclusive,
    path::{Path, PathBuf},
    time::Duration,
};

use toml::Spanned;

use super::error::Invalid;
use crate::dataplane::AttachMode;

/// Ports below 1024 are the privileged, well-known ones that the host's own services listen on.
const MIN_SNAT_PORT: u16 = 1024;
/// Linux interface names are at most IFNAMSIZ - 1 bytes.
const MAX_INTERFACE_NAME_LEN: usize = 15;
const MAX_SERVICE_NAME_LEN: usize = 64;
const LUT_SIZE_RANGE: RangeInclusive<i64> = 7..=1_000_003;

/// The XDP attach mode by its name in the file; the names belong to the config, the data plane only needs the enum.
pub(super) fn xdp_mode(mode: &Spanned<String>) -> Result<AttachMode, Invalid> {
    let text = mode.get_ref();
    match text.as_str() {
        "auto" => Ok(AttachMode::Auto),
        "native" => Ok(AttachMode::Native),
        "generic" => Ok(AttachMode::Generic),
        _ => Invalid::at(
            mode.span(),
            format!("unknown xdp_mode {text:?} (expected auto, native or generic)"),
        ),
    }
}

/// The kernel's rules for a device name (`dev_valid_name`).
pub(super) fn interface_name(name: &Spanned<String>) -> Result<String, Invalid> {
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

/// `[A-Za-z0-9_.-]{1,64}`: safe in log lines, file names and pin paths.
pub(super) fn service_name(name: &Spanned<String>) -> Result<String, Invalid> {
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

/// One SNAT address, IPv4 or IPv6; `key` names it in messages (`snat_address` or
/// `snat_addresses`).
pub(super) fn snat_address(address: &Spanned<String>, key: &str) -> Result<IpAddr, Invalid> {
    let text = address.get_ref();
    let ip = parse_ip(text).map_err(|reason| Invalid::new(address.span(), format!("{key}: {reason}")))?;
    if ip.is_unspecified() {
        return Invalid::at(address.span(), format!("{key} must not be {ip}"));
    }
    Ok(ip)
}

/// An `ADDRESS:PORT` (IPv4) or `[ADDRESS]:PORT` (IPv6) that traffic can be
/// sent to: neither 0.0.0.0 nor :: nor port 0.
pub(super) fn endpoint(value: &Spanned<String>, key: &str) -> Result<SocketAddr, Invalid> {
    let text = value.get_ref();
    let fail = |reason: String| Invalid::new(value.span(), format!("{key} {text:?}: {reason}"));
    let address = parse_endpoint(text).map_err(fail)?;
    match endpoint_problem(address) {
        Some(problem) => Err(fail(problem.into())),
        None => Ok(address),
    }
}

/// Why `address` cannot be a VIP or a backend, if it cannot.
pub(super) fn endpoint_problem(address: SocketAddr) -> Option<&'static str> {
    match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => Some("0.0.0.0 is not an address traffic can be sent to"),
        IpAddr::V6(ip) if ip.is_unspecified() => Some(":: is not an address traffic can be sent to"),
        // The data plane keeps the families apart; such an address is an
        // IPv4 one in disguise.
        IpAddr::V6(ip) if ip.to_ipv4_mapped().is_some() => {
            Some("an IPv4-mapped IPv6 address; write the IPv4 address as ADDRESS:PORT")
        }
        _ if address.port() == 0 => Some("port 0 is not allowed"),
        _ => None,
    }
}

/// An IPv4 `ADDRESS:PORT` to listen on: 0.0.0.0 (every address) is allowed, port 0 is not (Prometheus needs a
/// known port).
pub(super) fn listen_address(value: &Spanned<String>, key: &str) -> Result<SocketAddrV4, Invalid> {
    let text = value.get_ref();
    let fail = |reason: String| Invalid::new(value.span(), format!("{key} {text:?}: {reason}"));
    let address = parse_socket_addr(text).map_err(fail)?;
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
    Ok(SocketAddrV4::new(parse_ipv4(host)?, parse_port(port)?))
}

/// `ADDRESS:PORT` or `[IPV6 ADDRESS]:PORT`.
fn parse_endpoint(text: &str) -> Result<SocketAddr, String> {
    let Some(bracketed) = text.strip_prefix('[') else {
        if text.matches(':').count() > 1 {
            return Err("an IPv6 address needs brackets: [ADDRESS]:PORT".into());
        }
        return parse_socket_addr(text).map(SocketAddr::V4);
    };
    let Some((host, port)) = bracketed.split_once(']') else {
        return Err("missing ']'; expected [IPV6 ADDRESS]:PORT".into());
    };
    let Some(port) = port.strip_prefix(':') else {
        return Err("missing port; expected [IPV6 ADDRESS]:PORT".into());
    };
    let ip: Ipv6Addr = host
        .parse()
        .map_err(|_| format!("{host:?} is not a valid IPv6 address (no zone ids or host names)"))?;
    Ok(SocketAddr::V6(SocketAddrV6::new(ip, parse_port(port)?, 0, 0)))
}

fn parse_port(port: &str) -> Result<u16, String> {
    port.parse()
        .map_err(|_| format!("invalid port {port:?} (expected 1-65535)"))
}

/// An IPv4 or IPv6 address, without port or brackets.
fn parse_ip(text: &str) -> Result<IpAddr, String> {
    if text.contains(':') {
        return text
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| format!("{text:?} is not an IP address (ports and brackets are not accepted here)"));
    }
    parse_ipv4(text).map(IpAddr::V4)
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

/// `MIN-MAX`, inclusive.
pub(super) fn snat_ports(ports: &Spanned<String>) -> Result<(u16, u16), Invalid> {
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

pub(super) fn integer_in(value: &Spanned<i64>, key: &str, range: RangeInclusive<i64>) -> Result<u32, Invalid> {
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

pub(super) fn lookup_table_size(size: &Spanned<i64>) -> Result<u32, Invalid> {
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

/// A non-zero duration such as "500ms"; `key` is the dotted name used in errors (`timeouts.syn`).
pub(super) fn duration(value: Option<&Spanned<String>>, key: &str, default: Duration) -> Result<Duration, Invalid> {
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

pub(super) fn absolute_path(path: Option<&Spanned<String>>, key: &str, default: &str) -> Result<PathBuf, Invalid> {
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

#[cfg(test)]
mod tests {
    use super::is_prime;
    use crate::config::test_support::{BLUE, TOP, WEB, assert_rejected, parse_ok};

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
            ("10.0.0.1:80", "ports and brackets are not accepted here"),
            ("[fd00::1]", "ports and brackets are not accepted here"),
            ("0.0.0.0", "snat_address must not be 0.0.0.0"),
        ] {
            assert_rejected(
                &format!("interface = \"eth0\"\nsnat_address = {address:?}  # <-\n"),
                reason,
            );
        }
    }

    #[test]
    fn bad_vips_are_rejected_with_a_reason() {
        for (vip, reason) in [
            ("10.0.0.300:80", "\"10.0.0.300\" is not a valid IPv4 address"),
            ("web.example:80", "host names are not resolved"),
            ("fe80::1", "an IPv6 address needs brackets"),
            ("[fe80::1]", "missing port; expected [IPV6 ADDRESS]:PORT"),
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
            (
                "[2001:db8::1]:80",
                "backend [2001:db8::1]:80 is IPv6, but the service has no IPv6 vip",
            ),
            ("10.0.1.1", "missing port"),
        ] {
            assert_rejected(
                &format!("{TOP}{WEB}[[service.backend]]\npool = \"blue\"\naddress = {address:?}  # <-\n"),
                reason,
            );
        }
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
    fn weight_out_of_range_is_rejected() {
        for weight in ["1001", "-1"] {
            assert_rejected(
                &format!("{TOP}{WEB}{BLUE}weight = {weight}  # <-\n"),
                &format!("weight {weight} is out of range 0..=1000"),
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
                "{TOP}lookup_capacity = 4000012\n{WEB}lookup_table_size = {prime}\n"
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
}
