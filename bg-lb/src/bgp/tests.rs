use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use super::{configure_result, render, vip_addresses, wanted};
use crate::{
    config::{self, Config},
    desired::{Health, HealthView},
    health::{CheckKey, Failure, Listener},
    ratio::Ratio,
    state_file::{BackendState, OperatorState, ServiceState},
};

/// `web` on .100 (blue .1, green .2) with a standby VIP on .100 too, `api`
/// on .101 (blue .3 only).
fn config() -> Config {
    let text = "interface = \"eth0\"\nsnat_address = \"10.0.0.1\"\n[bgp]\n\
        [[service]]\nname = \"web\"\nvip = \"10.0.0.100:80\"\nstandby_vip = \"10.0.0.100:8080\"\nratio = \"100:0\"\n\
        [[service.backend]]\npool = \"blue\"\naddress = \"10.0.1.1:80\"\n\
        [[service.backend]]\npool = \"green\"\naddress = \"10.0.1.2:80\"\n\
        [[service]]\nname = \"api\"\nvip = \"10.0.0.101:80\"\n\
        [[service.backend]]\npool = \"blue\"\naddress = \"10.0.1.3:80\"\n";
    config::parse(Path::new("test.toml"), text).unwrap()
}

fn down(service: &str, backend: &str) -> (CheckKey, HealthView) {
    (
        CheckKey {
            service: service.into(),
            backend: backend.parse().unwrap(),
            listener: Listener::Live,
        },
        HealthView {
            up: false,
            last: Err(Failure::HttpStatus(500)),
        },
    )
}

fn addresses(list: &[u8]) -> BTreeSet<IpAddr> {
    list.iter().map(|&last| v4(last)).collect()
}

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

#[test]
fn every_vip_that_can_serve_is_announced() {
    let config = config();
    assert_eq!(
        wanted(&config, &OperatorState::default(), &Health::new()),
        addresses(&[100, 101])
    );
    assert_eq!(vip_addresses(&config), addresses(&[100, 101]));
}

#[test]
fn a_vip_without_a_backend_that_can_serve_is_withdrawn() {
    let config = config();
    let health: Health = [down("api", "10.0.1.3:80")].into();
    assert_eq!(wanted(&config, &OperatorState::default(), &health), addresses(&[100]));
    // A disabled backend serves no more than a down one.
    let mut operator = OperatorState::default();
    let disabled = BackendState {
        weight: None,
        enabled: false,
    };
    operator.services.insert(
        "api".into(),
        ServiceState {
            backends: [("10.0.1.3:80".parse().unwrap(), disabled)].into(),
            ..Default::default()
        },
    );
    assert_eq!(wanted(&config, &operator, &Health::new()), addresses(&[100]));
}

#[test]
fn a_pool_the_ratio_gives_nothing_still_serves_when_the_other_cannot() {
    // web's ratio is 100:0; with blue down the data plane sends green all of it.
    let config = config();
    let health: Health = [down("web", "10.0.1.1:80")].into();
    assert!(wanted(&config, &OperatorState::default(), &health).contains(&v4(100)));
    let health: Health = [down("web", "10.0.1.1:80"), down("web", "10.0.1.2:80")].into();
    assert!(!wanted(&config, &OperatorState::default(), &health).contains(&v4(100)));
}

#[test]
fn a_standby_vip_that_can_serve_keeps_its_address_announced() {
    // TCP checks: the standby VIP serves the pool with no share (green); the
    // live VIP's share goes to blue, which is down, so green serves it too.
    let mut config = config();
    config.services[0].standby_vips = vec!["10.0.0.102:8080".parse().unwrap()];
    let ops = OperatorState::default();
    assert!(wanted(&config, &ops, &Health::new()).contains(&v4(102)));
    let mut operator = OperatorState::default();
    operator.services.insert(
        "web".into(),
        ServiceState {
            ratio: Some(Ratio::new(50).unwrap()),
            ..Default::default()
        },
    );
    // Both pools have a share: no idle pool, nothing on the standby VIP.
    assert!(!wanted(&config, &operator, &Health::new()).contains(&v4(102)));
}

#[test]
fn a_drained_node_announces_nothing() {
    let operator = OperatorState {
        node_drained: true,
        ..Default::default()
    };
    assert!(wanted(&config(), &operator, &Health::new()).is_empty());
}

#[test]
fn the_include_file_has_a_static_protocol_of_blackhole_routes_per_family() {
    let mut both = addresses(&[100, 101]);
    both.insert("fd00::100".parse().unwrap());
    assert_eq!(
        render("bglb_vips", &both),
        "# Written by bg-lb: the VIPs this host announces. Do not edit; bg-lb rewrites it.\n\
         protocol static bglb_vips {\n  ipv4;\n  route 10.0.0.100/32 blackhole;\n  route 10.0.0.101/32 blackhole;\n}\n\
         protocol static bglb_vips6 {\n  ipv6;\n  route fd00::100/128 blackhole;\n}\n"
    );
    // Empty protocols stay, so bird.conf's filters naming them parse.
    assert!(
        render("p", &BTreeSet::new()).ends_with("protocol static p {\n  ipv4;\n}\nprotocol static p6 {\n  ipv6;\n}\n")
    );
}

/// `web` dual-stack (fd00::100 with .100), `v6only` on fd00::101 alone.
fn dual_stack_config() -> Config {
    let text = "interface = \"eth0\"\nsnat_addresses = [\"10.0.0.1\", \"fd00::1\"]\n[bgp]\n\
        [[service]]\nname = \"web\"\nvip = [\"10.0.0.100:80\", \"[fd00::100]:80\"]\n\
        [[service.backend]]\npool = \"blue\"\naddress = \"10.0.1.1:80\"\n\
        [[service.backend]]\npool = \"blue\"\naddress = \"[fd00:1::1]:80\"\n\
        [[service]]\nname = \"v6only\"\nvip = \"[fd00::101]:80\"\n\
        [[service.backend]]\npool = \"blue\"\naddress = \"[fd00:1::2]:80\"\n";
    config::parse(Path::new("test.toml"), text).unwrap()
}

#[test]
fn ipv6_vips_are_announced_while_a_backend_of_their_family_can_serve() {
    let config = dual_stack_config();
    let (web6, only6): (IpAddr, IpAddr) = ("fd00::100".parse().unwrap(), "fd00::101".parse().unwrap());
    let all = BTreeSet::from([v4(100), web6, only6]);
    assert_eq!(vip_addresses(&config), all);
    assert_eq!(wanted(&config, &OperatorState::default(), &Health::new()), all);
    // Each VIP serves from its own family's backends: the IPv6 backend down
    // withdraws the IPv6 VIP alone.
    let health: Health = [down("web", "[fd00:1::1]:80")].into();
    assert_eq!(
        wanted(&config, &OperatorState::default(), &health),
        BTreeSet::from([v4(100), only6])
    );
}

#[test]
fn only_a_reconfiguration_birdc_reports_counts_as_success() {
    let ok = "BIRD 2.0.12 ready.\nReading configuration from /etc/bird/bird.conf\nReconfigured\n";
    assert_eq!(configure_result(ok), Ok("Reconfigured".into()));
    assert!(configure_result("BIRD 2.0.12 ready.\nReconfiguration in progress\n").is_ok());
    let bad = "BIRD 2.0.12 ready.\nReading configuration from /etc/bird/bird.conf\n/run/x.conf:3:9 syntax error\n";
    assert_eq!(
        configure_result(bad),
        Err(
            "BIRD 2.0.12 ready. | Reading configuration from /etc/bird/bird.conf | /run/x.conf:3:9 syntax error".into()
        )
    );
    assert!(configure_result("Unable to connect to server control socket (/run/bird/bird.ctl): No such file").is_err());
    assert_eq!(configure_result(""), Err("birdc said nothing".into()));
}
