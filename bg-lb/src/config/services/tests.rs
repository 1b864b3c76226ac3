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

/// A UDP service on the web service's VIP, to append keys to (its health
/// table must follow).
const DNS: &str = "[[service]]\nname = \"dns\"\nvip = \"10.0.0.100:80\"\nprotocol = \"udp\"\n";
const UDP_HEALTH: &str = "[service.health]\ntype = \"udp\"\nrequest = \"ping\"\nexpect = \"pong\"\n";

#[test]
fn a_udp_service_may_share_a_tcp_services_vip_and_has_its_idle_timeout() {
    let config = parse_ok(&format!("{TOP}{WEB}{DNS}udp_idle = \"5s\"\n{UDP_HEALTH}"));
    let (web, dns) = (&config.services[0], &config.services[1]);
    assert_eq!((web.protocol, dns.protocol), (Protocol::Tcp, Protocol::Udp));
    assert_eq!(web.vip, dns.vip);
    assert_ne!(web.key(), dns.key());
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
