use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

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
    let second = |keys: &str| format!("{TOP}{WEB}standby_vip = \"10.0.0.100:8080\"\n[[service]]\nname = \"b\"\n{keys}");
    assert_rejected(
        &second("vip = \"10.0.0.100:80\"  # <-\n"),
        "overlapping VIPs: vip 10.0.0.100:80 (tcp) is already the vip of service \"web\" (line 5)",
    );
    assert_rejected(
        &second("vip = \"10.0.0.100:8080\"  # <-\n"),
        "overlapping VIPs: vip 10.0.0.100:8080 (tcp) is already the standby_vip of service \"web\" (line 6)",
    );
    assert_rejected(
        &second("vip = \"10.0.0.101:80\"\nstandby_vip = \"10.0.0.100:8080\"  # <-\n"),
        "overlapping VIPs: standby_vip 10.0.0.100:8080 (tcp) is already the standby_vip of service \"web\"",
    );
    assert_rejected(
        &second("vip = \"10.0.0.101:80\"\nstandby_vip = \"10.0.0.100:80\"  # <-\n"),
        "overlapping VIPs: standby_vip 10.0.0.100:80 (tcp) is already the vip of service \"web\"",
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
        "lookup_capacity 100 is too small: the services need 216 slots",
    );
    assert_rejected(
        &format!("{TOP}lookup_capacity = 0  # <-\n"),
        "lookup_capacity 0 is out of range",
    );
    let exact = parse_ok(&format!("{TOP}lookup_capacity = 188\n{WEB}lookup_table_size = 47\n"));
    assert_eq!(exact.lookup_capacity, 188);
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
        "service \"s16\" does not fit in the default lookup_capacity 4194368",
    );
}

/// A UDP service on the web service's VIP, to append keys to (its health
/// table must follow).
const DNS: &str = "[[service]]\nname = \"dns\"\nvip = \"10.0.0.100:80\"\nprotocol = \"udp\"\n";
const UDP_HEALTH: &str = "[service.health]\ntype = \"udp\"\nrequest = \"ping\"\nexpect = \"pong\"\n";

#[test]
fn a_udp_service_may_share_a_tcp_services_vip_and_has_its_idle_timeout() {
    let config = parse_ok(&format!("{TOP}{WEB}{DNS}udp_idle = \"5s\"\n{UDP_HEALTH}"));
    let (web, dns) = (&config.services[0], &config.services[1]);
    assert_eq!((web.protocol, dns.protocol), (Protocol::Tcp, Protocol::Udp));
    assert_eq!(web.vips, dns.vips);
    assert_ne!(web.keys().next(), dns.keys().next());
    assert_eq!(dns.udp_idle, Duration::from_secs(5));
    assert_eq!(dns.syn_proxy.mode, SynProxyMode::Off, "UDP has no SYNs");
    let default = parse_ok(&format!("{TOP}{DNS}{UDP_HEALTH}"));
    assert_eq!(default.services[0].udp_idle, DEFAULT_UDP_IDLE);
    // A TCP or HTTP check works on a port of its own.
    let tcp_check = parse_ok(&format!("{TOP}{DNS}[service.health]\ntype = \"tcp\"\nport = 8053\n"));
    assert_eq!(tcp_check.services[0].health.port, Some(8053));
}

#[test]
fn a_udp_service_may_forward_by_gateway_or_dsr_under_the_tcp_rules() {
    let backend = "[[service.backend]]\npool = \"blue\"\naddress = \"10.0.1.11:80\"\n";
    for mode in [Forwarding::Gateway, Forwarding::Dsr] {
        let config = parse_ok(&format!("{TOP}{DNS}forwarding = \"{mode}\"\n{UDP_HEALTH}{backend}"));
        assert_eq!(config.services[0].forwarding, mode);
        assert_eq!(config.services[0].protocol, Protocol::Udp);
    }
    // dsr keeps the port clients send to, for UDP as for TCP.
    assert_rejected(
        &format!(
            "{TOP}{DNS}forwarding = \"dsr\"\n{UDP_HEALTH}[[service.backend]]\npool = \"blue\"\naddress = \
             \"10.0.1.11:5353\"  # <-\n"
        ),
        "must listen on the vip's port 80",
    );
}

#[test]
fn udp_services_refuse_what_they_cannot_do() {
    assert_rejected(
        &format!("{TOP}{DNS}syn_proxy = \"auto\"  # <-\n{UDP_HEALTH}"),
        "syn_proxy = \"auto\" answers TCP SYNs",
    );
    assert_rejected(
        &format!("{TOP}[[service]]\nname = \"dns\"\nvip = \"10.0.0.100:53\"\nprotocol = \"udp\"  # <-\n"),
        "needs [service.health] with type = \"udp\"",
    );
    assert_rejected(
        &format!("{TOP}{DNS}[service.health]\ntype = \"http\"  # <-\n"),
        "or a tcp or http check with a port",
    );
    assert_rejected(
        &format!("{TOP}{WEB}udp_idle = \"5s\"  # <-\n"),
        "udp_idle needs protocol = \"udp\"",
    );
    assert_rejected(
        &format!("{TOP}{WEB}[service.health]\ntype = \"udp\"  # <-\nrequest = \"a\"\nexpect = \"b\"\n"),
        "health.type = \"udp\" checks a UDP service",
    );
    assert_rejected(
        &format!("{TOP}{WEB}protocol = \"sctp\"  # <-\n"),
        "protocol \"sctp\": expected \"tcp\" or \"udp\"",
    );
    assert_rejected(
        &format!(
            "{TOP}{DNS}{UDP_HEALTH}[[service]]\nname = \"dns2\"\nvip = \"10.0.0.100:80\"  # <-\nprotocol = \"udp\"\n{UDP_HEALTH}"
        ),
        "overlapping VIPs: vip 10.0.0.100:80 (udp) is already the vip of service \"dns\"",
    );
    assert_rejected(
        &format!("{TOP}{DNS}udp_idle = \"0s\"  # <-\n{UDP_HEALTH}"),
        "udp_idle must be greater than zero",
    );
    assert_rejected(
        &format!("{TOP}{DNS}udp_idle = \"1500ms\"  # <-\n{UDP_HEALTH}"),
        "udp_idle must be whole seconds, at most 18h 12m 15s",
    );
}

/// Top-level keys with a SNAT address of each family: lines 1-2.
const TOP46: &str = "interface = \"eth0\"\nsnat_addresses = [\"10.0.0.1\", \"fd00::1\"]\n";
const BLUE6: &str = "[[service.backend]]\npool = \"blue\"\naddress = \"[fd00:1::1]:80\"\n";

#[test]
fn a_dual_stack_service_has_a_vip_and_a_standby_vip_per_family_over_shared_pools() {
    let config = parse_ok(&format!(
        "{TOP46}[[service]]\nname = \"web\"\nvip = [\"10.0.0.100:80\", \"[fd00::100]:80\"]\n\
         standby_vip = [\"[fd00::100]:8080\", \"10.0.0.100:8080\"]\n{BLUE}{BLUE6}"
    ));
    assert_eq!(config.snat_addresses, [Ipv4Addr::new(10, 0, 0, 1)]);
    assert_eq!(
        config.snat6_addresses,
        ["fd00::1".parse::<std::net::Ipv6Addr>().unwrap()]
    );
    let web = &config.services[0];
    let addresses = |list: &[&str]| list.iter().map(|a| a.parse().unwrap()).collect::<Vec<SocketAddr>>();
    assert_eq!(web.vips, addresses(&["10.0.0.100:80", "[fd00::100]:80"]));
    assert_eq!(web.standby_vips, addresses(&["[fd00::100]:8080", "10.0.0.100:8080"]));
    let families: Vec<_> = web.backends.iter().map(|b| Family::of_socket(b.address)).collect();
    assert_eq!(families, [Family::Ipv4, Family::Ipv6]);
    assert_eq!(web.syn_proxy, SynProxy::default(), "the default, for both VIPs");
    // IPv6 alone, with its own SNAT address.
    let v6 = parse_ok(&format!(
        "interface = \"eth0\"\nsnat_address = \"fd00::1\"\n[[service]]\nname = \"web\"\nvip = \"[fd00::100]:80\"\n{BLUE6}"
    ));
    assert!(v6.snat_addresses.is_empty());
    assert_eq!(v6.services[0].vips, addresses(&["[fd00::100]:80"]));
    assert_eq!(
        v6.services[0].syn_proxy,
        SynProxy::default(),
        "an IPv6 VIP's default, as an IPv4 one's"
    );
}

#[test]
fn vip_lists_hold_one_address_per_family() {
    let service = "[[service]]\nname = \"web\"\n";
    assert_rejected(
        &format!("{TOP46}{service}vip = [\"10.0.0.100:80\", \"10.0.0.101:80\"]  # <-\n"),
        "vip lists two IPv4 addresses (10.0.0.100:80 and 10.0.0.101:80): at most one per family",
    );
    assert_rejected(
        &format!("{TOP46}{service}vip = []  # <-\n"),
        "vip must name at least one address",
    );
    assert_rejected(
        &format!("{TOP46}{WEB}standby_vip = [\"[fd00::100]:80\", \"[fd00::101]:80\"]  # <-\n"),
        "standby_vip lists two IPv6 addresses",
    );
    assert_rejected(
        &format!(
            "{TOP46}{service}vip = [\"10.0.0.100:80\", \"[fd00::100]:80\"]\nstandby_vip = \"[fd00::100]:80\"  # <-\n"
        ),
        "overlapping VIPs: standby_vip [fd00::100]:80 equals the service's vip [fd00::100]:80",
    );
}

#[test]
fn ipv6_addresses_are_bracketed_and_sendable() {
    for (vip, reason) in [
        ("fd00::100:80", "an IPv6 address needs brackets: [ADDRESS]:PORT"),
        ("[fd00::100]", "missing port; expected [IPV6 ADDRESS]:PORT"),
        ("[fd00::100:80", "missing ']'"),
        ("[fd00::zz]:80", "\"fd00::zz\" is not a valid IPv6 address"),
        (
            "[fe80::1%eth0]:80",
            "is not a valid IPv6 address (no zone ids or host names)",
        ),
        ("[::]:80", ":: is not an address traffic can be sent to"),
        ("[::ffff:10.0.0.100]:80", "an IPv4-mapped IPv6 address"),
        ("[fd00::100]:0", "port 0 is not allowed"),
    ] {
        assert_rejected(
            &format!("{TOP46}[[service]]\nname = \"web\"\nvip = {vip:?}  # <-\n"),
            reason,
        );
    }
    assert_rejected(
        "interface = \"eth0\"\nsnat_address = \"::\"  # <-\n",
        "snat_address must not be ::",
    );
    assert_rejected(
        "interface = \"eth0\"\nsnat_addresses = [\"fd00::1\", \"fd00::1\"]  # <-\n",
        "duplicate SNAT address fd00::1",
    );
}

#[test]
fn each_family_takes_up_to_sixteen_snat_addresses() {
    let list = |v4: u16, v6: u16| {
        let v4 = (1..=v4).map(|i| format!("\"10.0.0.{i}\""));
        let v6 = (1..=v6).map(|i| format!("\"fd00::{i:x}\""));
        v4.chain(v6).collect::<Vec<_>>().join(", ")
    };
    let config = parse_ok(&format!("interface = \"eth0\"\nsnat_addresses = [{}]\n", list(16, 16)));
    assert_eq!((config.snat_addresses.len(), config.snat6_addresses.len()), (16, 16));
    assert_rejected(
        &format!("interface = \"eth0\"\nsnat_addresses = [{}]  # <-\n", list(3, 17)),
        "too many IPv6 snat_addresses: at most 16 per family",
    );
}

#[test]
fn a_vip_family_needs_a_snat_address_of_that_family() {
    assert_rejected(
        &format!("{TOP}[[service]]\nname = \"web\"\nvip = \"[fd00::100]:80\"  # <-\n"),
        "vip [fd00::100]:80 is IPv6, but no SNAT address is: add an IPv6 address of this host to snat_addresses",
    );
    assert_rejected(
        &format!("{TOP}{WEB}standby_vip = [\"10.0.0.100:8080\", \"[fd00::100]:8080\"]  # <-\n"),
        "standby_vip [fd00::100]:8080 is IPv6, but no SNAT address is",
    );
    assert_rejected(
        "interface = \"eth0\"\nsnat_address = \"fd00::1\"\n[[service]]\nname = \"web\"\nvip = \"10.0.0.100:80\"  # <-\n",
        "vip 10.0.0.100:80 is IPv4, but no SNAT address is",
    );
}

#[test]
fn each_vip_family_needs_backends_of_its_family_and_each_backend_a_vip_of_its_own() {
    let dual = "[[service]]\nname = \"web\"\nvip = [\"10.0.0.100:80\", \"[fd00::100]:80\"]";
    assert_rejected(
        &format!("{TOP46}{dual}  # <-\n{BLUE}"),
        "vip [fd00::100]:80 is IPv6, but service \"web\" has no IPv6 backend: each VIP sends new connections only \
         to backends of its own family",
    );
    assert_rejected(
        &format!("{TOP46}{WEB}{BLUE}[[service.backend]]\npool = \"green\"\naddress = \"[fd00:1::2]:80\"  # <-\n"),
        "backend [fd00:1::2]:80 is IPv6, but the service has no IPv6 vip",
    );
    assert_rejected(
        &format!(
            "{TOP46}{dual}\nstandby_vip = \"[fd00::100]:8080\"\n{BLUE}{BLUE6}[[service]]\nname = \"api\"\nvip = \"[fd00::101]:80\"\nstandby_vip = \"10.0.0.101:80\"  # <-\n{BLUE6}"
        ),
        "standby_vip 10.0.0.101:80 is IPv4, but service \"api\" has no IPv4 backend",
    );
    // No backends yet: nothing to disagree with.
    assert_eq!(parse_ok(&format!("{TOP46}{dual}\n")).services[0].vips.len(), 2);
}

#[test]
fn ipv6_vips_take_gateway_and_dsr_under_the_ipv4_rules() {
    let dual = "[[service]]\nname = \"web\"\nvip = [\"10.0.0.100:80\", \"[fd00::100]:80\"]\n";
    let v6 = "[[service]]\nname = \"web\"\nvip = \"[fd00::100]:80\"\n";
    for mode in [Forwarding::Gateway, Forwarding::Dsr] {
        for (vips, backends) in [(dual, format!("{BLUE}{BLUE6}")), (v6, BLUE6.to_owned())] {
            let config = parse_ok(&format!("{TOP46}{vips}forwarding = \"{mode}\"\n{backends}"));
            assert_eq!(config.services[0].forwarding, mode);
        }
    }
    // dsr keeps the port clients connect to: an IPv6 backend's port too, and
    // every VIP of a dual-stack service shares it.
    assert_rejected(
        &format!(
            "{TOP46}{v6}forwarding = \"dsr\"\n[[service.backend]]\npool = \"blue\"\naddress = \"[fd00:1::1]:8080\"  # <-\n"
        ),
        "backend [fd00:1::1]:8080 must listen on the vip's port 80",
    );
    assert_rejected(
        &format!(
            "{TOP46}[[service]]\nname = \"web\"\nvip = [\"10.0.0.100:80\", \"[fd00::100]:81\"]  # <-\nforwarding = \"dsr\"\n{BLUE}{BLUE6}"
        ),
        "vip [fd00::100]:81 must use the vip's port 80",
    );
    // Gateway rewrites the port: any IPv6 backend port will do.
    let gateway = parse_ok(&format!(
        "{TOP46}{v6}forwarding = \"gateway\"\n[[service.backend]]\npool = \"blue\"\naddress = \"[fd00:1::1]:8080\"\n"
    ));
    assert_eq!(gateway.services[0].backends[0].address.port(), 8080);
}

#[test]
fn ipv6_vips_take_every_syn_proxy_mode_and_default_to_auto() {
    let dual = "[[service]]\nname = \"web\"\nvip = [\"10.0.0.100:80\", \"[fd00::100]:80\"]\n";
    let v6 = "[[service]]\nname = \"web\"\nvip = \"[fd00::100]:80\"\n";
    for (vips, backends) in [(dual, format!("{BLUE}{BLUE6}")), (v6, BLUE6.to_string())] {
        for (line, mode) in [
            ("syn_proxy = \"auto\"\n", SynProxyMode::Auto),
            ("syn_proxy = \"always\"\n", SynProxyMode::Always),
            ("syn_proxy = \"off\"\n", SynProxyMode::Off),
            ("", SynProxy::default().mode),
        ] {
            let config = parse_ok(&format!("{TOP46}{vips}{line}{backends}"));
            assert_eq!(config.services[0].syn_proxy.mode, mode, "{vips}{line}");
        }
    }
    assert_eq!(SynProxy::default().mode, SynProxyMode::Auto);
}

#[test]
fn uniqueness_rules_hold_across_families() {
    let six = "[[service]]\nname = \"b\"\nvip = \"[fd00::100]:80\"";
    assert_rejected(
        &format!("{TOP46}[[service]]\nname = \"a\"\nvip = [\"10.0.0.100:80\", \"[fd00::100]:80\"]\n{six}  # <-\n"),
        "overlapping VIPs: vip [fd00::100]:80 (tcp) is already the vip of service \"a\" (line 5)",
    );
    assert_rejected(
        &format!("{TOP46}[[service]]\nname = \"a\"\nvip = \"[fd00::1]:80\"  # <-\n"),
        "vip [fd00::1]:80 uses a SNAT address (line 2)",
    );
    assert_rejected(
        &format!("{TOP46}{six}\n{BLUE6}[[service.backend]]\npool = \"green\"\naddress = \"[fd00:1::1]:80\"  # <-\n"),
        "duplicate backend [fd00:1::1]:80 in service \"b\"",
    );
    // The same port on an address of each family: two VIPs.
    let both = format!("{TOP46}{WEB}[[service]]\nname = \"b\"\nvip = \"[fd00::100]:80\"\n");
    assert_eq!(parse_ok(&both).services.len(), 2);
}

#[test]
fn bgp_takes_ipv6_vips() {
    let config = parse_ok(&format!(
        "{TOP46}[bgp]\n[[service]]\nname = \"a\"\nvip = \"[fd00::100]:80\"\n{BLUE6}"
    ));
    assert!(config.bgp.is_some() && config.services[0].vips[0].is_ipv6());
}
