//! What the data plane should do for a service, derived from three inputs:
//! the config (topology, initial ratio and weights), the operator's runtime
//! decisions (ratio, weights, disabled backends) and health. Pure, so every
//! rule is unit-tested.
//!
//! - Live VIP: ratio x weight over backends that are enabled, have weight,
//!   and pass the live check. A down backend with `on_down = "reset"` has its
//!   open flows reset; otherwise they drain.
//! - Standby VIP: weights alone over the backends passing the standby check
//!   (HTTP checks), or, with TCP checks, over the healthy backends of the
//!   pool whose ratio share is 0 (none if both pools have a share).
//! - Each VIP of a dual-stack service (one per family, live or standby)
//!   takes those rules over the backends of its own family only
//!   ([`listener_specs`]).

use std::{collections::BTreeMap, net::SocketAddr};

use crate::{
    config::{HealthCheck, OnDown, ServiceConfig},
    dataplane::services::{BackendSpec, ServiceSpec},
    family::Family,
    health::{CheckKey, Listener, Outcome},
    ratio::{Pool, Ratio},
    state_file::{BackendState, ServiceState},
};

/// The latest health of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthView {
    pub up: bool,
    pub last: Outcome,
}

pub type Health = BTreeMap<CheckKey, HealthView>;

pub fn ratio(service: &ServiceConfig, operator: Option<&ServiceState>) -> Ratio {
    operator.and_then(|s| s.ratio).unwrap_or(service.ratio)
}

pub fn backend_state(operator: Option<&ServiceState>, addr: SocketAddr) -> BackendState {
    operator
        .and_then(|s| s.backends.get(&addr))
        .cloned()
        .unwrap_or_default()
}

/// The weight operators want for new flows: 0 when disabled.
pub fn operator_weight(service: &ServiceConfig, operator: Option<&ServiceState>, addr: SocketAddr) -> u32 {
    let state = backend_state(operator, addr);
    let configured = service
        .backends
        .iter()
        .find(|b| b.address == addr)
        .map_or(0, |b| b.weight);
    if state.enabled {
        state.weight.unwrap_or(configured)
    } else {
        0
    }
}

/// Unchecked backends count as up: see [`crate::health::Tracker`].
pub fn is_up(health: &Health, service: &str, backend: SocketAddr, listener: Listener) -> bool {
    let key = CheckKey {
        service: service.to_owned(),
        backend,
        listener,
    };
    health.get(&key).is_none_or(|v| v.up)
}

/// The live rules over all the service's backends, on its first VIP: what
/// `status` and the pool checks read; [`listener_spec`] narrows it to one VIP.
pub fn live_spec(service: &ServiceConfig, operator: Option<&ServiceState>, health: &Health) -> ServiceSpec {
    let backends = service
        .backends
        .iter()
        .map(|b| {
            let up = is_up(health, &service.name, b.address, Listener::Live);
            BackendSpec {
                addr: b.address,
                pool: b.pool,
                weight: if up {
                    operator_weight(service, operator, b.address)
                } else {
                    0
                },
                reset_flows: !up && service.health.on_down == OnDown::Reset,
            }
        })
        .collect();
    ServiceSpec {
        vip: service.vip(),
        lut_size: service.lookup_table_size,
        ratio: ratio(service, operator),
        backends,
        syn_proxy: service.syn_proxy,
        forwarding: service.forwarding,
        affinity: service.affinity,
        protocol: service.protocol,
        udp_idle: service.udp_idle,
    }
}

/// The standby rules over all the service's backends, on its first standby
/// VIP; `None` without one.
pub fn standby_spec(service: &ServiceConfig, operator: Option<&ServiceState>, health: &Health) -> Option<ServiceSpec> {
    let vip = *service.standby_vips.first()?;
    let ratio = ratio(service, operator);
    let idle_pool = [Pool::Blue, Pool::Green].into_iter().find(|&p| ratio.share(p) == 0);
    let backends = service
        .backends
        .iter()
        .filter(|b| match service.health.check {
            HealthCheck::Http(_) => is_up(health, &service.name, b.address, Listener::Standby),
            HealthCheck::Tcp | HealthCheck::Udp(_) => {
                Some(b.pool) == idle_pool && is_up(health, &service.name, b.address, Listener::Live)
            }
        })
        // One pool and all its share: the table then splits by weight alone.
        .map(|b| BackendSpec {
            addr: b.address,
            pool: Pool::Blue,
            weight: operator_weight(service, operator, b.address),
            reset_flows: false,
        })
        .collect();
    Some(ServiceSpec {
        vip,
        lut_size: service.lookup_table_size,
        ratio: Ratio::all_to(Pool::Blue),
        backends,
        syn_proxy: service.syn_proxy,
        forwarding: service.forwarding,
        affinity: service.affinity,
        protocol: service.protocol,
        udp_idle: service.udp_idle,
    })
}

/// `spec` (live or standby rules) for one VIP: the backends of the VIP's
/// family only.
pub fn listener_spec(spec: &ServiceSpec, vip: SocketAddr) -> ServiceSpec {
    let family = Family::of_socket(vip);
    ServiceSpec {
        vip,
        backends: spec
            .backends
            .iter()
            .filter(|b| Family::of_socket(b.addr) == family)
            .cloned()
            .collect(),
        ..spec.clone()
    }
}

/// Every listener's spec: `live` (the live rules, after any slow start)
/// for each live VIP, `standby` ([`standby_spec`]) for each standby VIP.
pub fn listener_specs(
    service: &ServiceConfig,
    live: &ServiceSpec,
    standby: Option<&ServiceSpec>,
) -> Vec<(Listener, ServiceSpec)> {
    service
        .listeners()
        .filter_map(|(key, listener)| {
            let rules = match listener {
                Listener::Live => live,
                Listener::Standby => standby?,
            };
            Some((listener, listener_spec(rules, key.vip)))
        })
        .collect()
}

/// Whether `pool` has a backend operators enabled with weight (health aside):
/// what a ratio giving it a share needs.
pub fn pool_enabled(service: &ServiceConfig, operator: Option<&ServiceState>, pool: Pool) -> bool {
    service
        .backends
        .iter()
        .any(|b| b.pool == pool && operator_weight(service, operator, b.address) > 0)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use super::*;
    use crate::{
        config::{BackendConfig, HealthConfig, HttpCheck},
        dataplane::syn_proxy::SynProxy,
        health::Failure,
    };

    fn addr(last: u8) -> SocketAddr {
        SocketAddrV4::new([10, 0, 1, last].into(), 8080).into()
    }

    fn addr6(last: u8) -> SocketAddr {
        SocketAddr::new(
            std::net::Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, last.into()).into(),
            8080,
        )
    }

    fn service(check: HealthCheck, on_down: OnDown) -> ServiceConfig {
        let backend = |last, pool| BackendConfig {
            pool,
            address: addr(last),
            weight: 100,
        };
        ServiceConfig {
            name: "web".into(),
            vips: vec!["10.0.0.100:80".parse().unwrap()],
            standby_vips: vec!["10.0.0.100:8080".parse().unwrap()],
            ratio: Ratio::new(100).unwrap(),
            lookup_table_size: 65537,
            backends: vec![backend(1, Pool::Blue), backend(2, Pool::Blue), backend(3, Pool::Green)],
            health: HealthConfig {
                check,
                on_down,
                ..HealthConfig::default()
            },
            syn_proxy: SynProxy::default(),
            forwarding: Default::default(),
            slowstart: None,
            drain_deadline: None,
            affinity: Default::default(),
            protocol: Default::default(),
            udp_idle: std::time::Duration::ZERO,
        }
    }

    fn http() -> HealthCheck {
        HealthCheck::Http(HttpCheck {
            live_path: "/live".into(),
            standby_path: "/standby".into(),
            expect_status: (200, 200),
            host: None,
            expect_body: None,
        })
    }

    fn health(entries: &[(u8, Listener, bool)]) -> Health {
        entries
            .iter()
            .map(|&(last, listener, up)| {
                let key = CheckKey {
                    service: "web".into(),
                    backend: addr(last),
                    listener,
                };
                (
                    key,
                    HealthView {
                        up,
                        last: if up { Ok(()) } else { Err(Failure::HttpStatus(500)) },
                    },
                )
            })
            .collect()
    }

    fn weights(spec: &ServiceSpec) -> Vec<(u8, u32)> {
        spec.backends.iter().map(|b| (last_octet(b.addr), b.weight)).collect()
    }

    fn last_octet(address: SocketAddr) -> u8 {
        match address.ip() {
            std::net::IpAddr::V4(ip) => ip.octets()[3],
            std::net::IpAddr::V6(ip) => ip.octets()[15],
        }
    }

    #[test]
    fn a_down_backend_leaves_the_live_table_and_drains_by_default() {
        let s = service(http(), OnDown::Drain);
        let spec = live_spec(&s, None, &health(&[(1, Listener::Live, false)]));
        assert_eq!(weights(&spec), [(1, 0), (2, 100), (3, 100)]);
        assert!(spec.backends.iter().all(|b| !b.reset_flows));
    }

    #[test]
    fn on_down_reset_resets_only_the_down_backends_flows() {
        let s = service(http(), OnDown::Reset);
        let spec = live_spec(
            &s,
            None,
            &health(&[(1, Listener::Live, false), (2, Listener::Live, true)]),
        );
        let reset: Vec<_> = spec.backends.iter().map(|b| b.reset_flows).collect();
        assert_eq!(reset, [true, false, false]);
    }

    #[test]
    fn unchecked_backends_keep_serving() {
        let spec = live_spec(&service(http(), OnDown::Drain), None, &Health::new());
        assert_eq!(weights(&spec), [(1, 100), (2, 100), (3, 100)]);
    }

    #[test]
    fn operator_decisions_override_the_config() {
        let s = service(http(), OnDown::Drain);
        let mut state = ServiceState {
            ratio: Some(Ratio::new(30).unwrap()),
            ..Default::default()
        };
        state.backends.insert(
            addr(1),
            BackendState {
                weight: Some(7),
                enabled: true,
            },
        );
        state.backends.insert(
            addr(2),
            BackendState {
                weight: None,
                enabled: false,
            },
        );
        let spec = live_spec(&s, Some(&state), &Health::new());
        assert_eq!(spec.ratio, Ratio::new(30).unwrap());
        assert_eq!(weights(&spec), [(1, 7), (2, 0), (3, 100)]);
    }

    #[test]
    fn http_standby_listener_takes_backends_passing_the_standby_check_by_weight_alone() {
        let s = service(http(), OnDown::Drain);
        let h = health(&[
            (1, Listener::Standby, false),
            (2, Listener::Standby, true),
            (3, Listener::Standby, true),
        ]);
        let spec = standby_spec(&s, None, &h).unwrap();
        assert_eq!(spec.vip, s.standby_vips[0]);
        assert_eq!(spec.ratio, Ratio::all_to(Pool::Blue));
        assert!(
            spec.backends.iter().all(|b| b.pool == Pool::Blue),
            "one pool: weights alone decide"
        );
        assert_eq!(
            weights(&spec),
            [(2, 100), (3, 100)],
            "backend 3 is green, still standby-eligible"
        );
    }

    #[test]
    fn tcp_standby_listener_routes_to_the_pool_with_no_share() {
        let s = service(HealthCheck::Tcp, OnDown::Drain);
        let spec = standby_spec(&s, None, &Health::new()).unwrap();
        assert_eq!(weights(&spec), [(3, 100)], "ratio 100:0: green is the standby pool");
        let half = ServiceState {
            ratio: Some(Ratio::new(50).unwrap()),
            ..Default::default()
        };
        assert!(
            standby_spec(&s, Some(&half), &Health::new())
                .unwrap()
                .backends
                .is_empty(),
            "no idle pool at 50:50"
        );
    }

    #[test]
    fn no_standby_vip_no_standby_spec() {
        let mut s = service(http(), OnDown::Drain);
        s.standby_vips.clear();
        assert!(standby_spec(&s, None, &Health::new()).is_none());
    }

    /// A dual-stack service: each VIP, live or standby, gets the rules over
    /// the backends of its own family, and the service's SYN proxy.
    #[test]
    fn each_vip_of_a_dual_stack_service_takes_the_backends_of_its_family() {
        let mut s = service(HealthCheck::Tcp, OnDown::Drain);
        s.vips.push("[fd00::100]:80".parse().unwrap());
        s.standby_vips.push("[fd00::100]:8080".parse().unwrap());
        for (last, pool) in [(1, Pool::Blue), (3, Pool::Green)] {
            s.backends.push(BackendConfig {
                pool,
                address: addr6(last),
                weight: 100,
            });
        }
        let h = health(&[(3, Listener::Live, false)]);
        let live = live_spec(&s, None, &h);
        let standby = standby_spec(&s, None, &h);
        let specs = listener_specs(&s, &live, standby.as_ref());
        let summary: Vec<_> = specs
            .iter()
            .map(|(listener, spec)| {
                let families: Vec<_> = spec.backends.iter().map(|b| Family::of_socket(b.addr)).collect();
                (*listener, spec.vip, weights(spec), families, spec.syn_proxy.mode)
            })
            .collect();
        let (v4, v6) = (Family::Ipv4, Family::Ipv6);
        let auto = SynProxy::default().mode;
        assert_eq!(
            summary,
            [
                (
                    Listener::Live,
                    s.vips[0],
                    vec![(1, 100), (2, 100), (3, 0)],
                    vec![v4; 3],
                    auto
                ),
                (Listener::Live, s.vips[1], vec![(1, 100), (3, 100)], vec![v6; 2], auto),
                // Ratio 100:0, so green is the standby pool; IPv4 green is down.
                (Listener::Standby, s.standby_vips[0], vec![], vec![], auto),
                (Listener::Standby, s.standby_vips[1], vec![(3, 100)], vec![v6], auto),
            ]
        );
    }

    #[test]
    fn pool_enabled_ignores_health_but_not_operator_decisions() {
        let s = service(http(), OnDown::Drain);
        let mut state = ServiceState::default();
        state.backends.insert(
            addr(3),
            BackendState {
                weight: None,
                enabled: false,
            },
        );
        assert!(!pool_enabled(&s, Some(&state), Pool::Green));
        assert!(pool_enabled(&s, None, Pool::Green));
    }
}
