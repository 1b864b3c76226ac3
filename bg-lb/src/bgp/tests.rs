use std::{collections::BTreeSet, net::Ipv4Addr, path::Path};

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

fn addresses(list: &[u8]) -> BTreeSet<Ipv4Addr> {
    list.iter().map(|&last| Ipv4Addr::new(10, 0, 0, last)).collect()
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
    assert!(wanted(&config, &OperatorState::default(), &health).contains(&Ipv4Addr::new(10, 0, 0, 100)));
    let health: Health = [down("web", "10.0.1.1:80"), down("web", "10.0.1.2:80")].into();
    assert!(!wanted(&config, &OperatorState::default(), &health).contains(&Ipv4Addr::new(10, 0, 0, 100)));
}

#[test]
fn a_standby_vip_that_can_serve_keeps_its_address_announced() {
    // TCP checks: the standby VIP serves the pool with no share (green); the
    // live VIP's share goes to blue, which is down, so green serves it too.
    let mut config = config();
    config.services[0].standby_vips = vec!["10.0.0.102:8080".parse().unwrap()];
    let ops = OperatorState::default();
    assert!(wanted(&config, &ops, &Health::new()).contains(&Ipv4Addr::new(10, 0, 0, 102)));
    let mut operator = OperatorState::default();
    operator.services.insert(
        "web".into(),
        ServiceState {
            ratio: Some(Ratio::new(50).unwrap()),
            ..Default::default()
        },
    );
    // Both pools have a share: no idle pool, nothing on the standby VIP.
    assert!(!wanted(&config, &operator, &Health::new()).contains(&Ipv4Addr::new(10, 0, 0, 102)));
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
fn the_include_file_is_one_static_protocol_of_blackhole_routes() {
    assert_eq!(
        render("bglb_vips", &addresses(&[100, 101])),
        "# Written by bg-lb: the VIPs this host announces. Do not edit; bg-lb rewrites it.\n\
         protocol static bglb_vips {\n  ipv4;\n  route 10.0.0.100/32 blackhole;\n  route 10.0.0.101/32 blackhole;\n}\n"
    );
    assert!(render("p", &BTreeSet::new()).ends_with("protocol static p {\n  ipv4;\n}\n"));
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
