//! Client affinity (`affinity = "none" | "client-ip"`): the setting, and
//! the flag it writes into the SERVICES entry.
//!
//! Under `client-ip` the data plane takes a new flow's pool and slot from
//! its client address alone ([`bg_lb_common::flow_hash::table_slot`]): the
//! address's point picks blue's table or green's against the service's
//! blue share, and its hash a slot of that pool's table. Raising blue's
//! share then moves clients only from green to blue, and lowering it only
//! back from blue to green, whatever the order of steps; a client keeps
//! its backend while it stays in its pool and the pool's backends and
//! weights are unchanged. Within a pool, clients spread over backends in
//! about their weights' proportion (statistically: a client is one point,
//! however many connections it opens).

use std::{fmt, str::FromStr};

use bg_lb_common::maps::{SERVICE_AFFINITY_CLIENT_IP, Service};

/// How a service's new connections are spread over pools and backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Affinity {
    /// By 5-tuple: each connection on its own.
    #[default]
    None,
    /// By client address: a client's connections go to one pool and, while
    /// that pool is unchanged, one backend.
    ClientIp,
}

impl Affinity {
    pub const fn name(self) -> &'static str {
        match self {
            Affinity::None => "none",
            Affinity::ClientIp => "client-ip",
        }
    }

    /// Writes the mode into a service's SERVICES entry (after the SYN
    /// proxy's bits, which it keeps).
    pub fn program(self, service: &mut Service) {
        match self {
            Affinity::None => service.flags &= !SERVICE_AFFINITY_CLIENT_IP,
            Affinity::ClientIp => service.flags |= SERVICE_AFFINITY_CLIENT_IP,
        }
    }
}

impl fmt::Display for Affinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Affinity {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [Affinity::None, Affinity::ClientIp]
            .into_iter()
            .find(|mode| mode.name() == text)
            .ok_or_else(|| format!("affinity {text:?}: expected \"none\" or \"client-ip\""))
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, net::SocketAddrV4};

    use bg_lb_common::{
        flow_hash::{flow_hash, table_slot},
        maps::{DEFAULT_LUT_SIZE, FlowKey, NO_BACKEND},
    };

    use super::*;
    use crate::{
        dataplane::lookup_table::{TableBackend, blue_share, build_region},
        ratio::{Pool, Ratio},
    };

    const M: u32 = DEFAULT_LUT_SIZE;

    fn backend(id: u32, pool: Pool, weight: u32) -> TableBackend {
        let addr = SocketAddrV4::new([10, 1, 0, id as u8].into(), 8080).into();
        TableBackend { id, addr, pool, weight }
    }

    fn backends() -> Vec<TableBackend> {
        vec![
            backend(0, Pool::Blue, 100),
            backend(1, Pool::Blue, 100),
            backend(2, Pool::Blue, 300),
            backend(3, Pool::Green, 100),
            backend(4, Pool::Green, 100),
        ]
    }

    /// 3000 clients, each connecting from a few ports.
    fn clients() -> Vec<Vec<FlowKey>> {
        let vip = SocketAddrV4::new([10, 0, 0, 100].into(), 80);
        (0..3000u32)
            .map(|n| {
                let ip = std::net::Ipv4Addr::from_bits(0x0a14_0000 + n);
                (0..3u16)
                    .map(|p| FlowKey::from_client(SocketAddrV4::new(ip, 40000 + p), vip))
                    .collect()
            })
            .collect()
    }

    /// The backend ids the data plane picks for each client's connections,
    /// from the tables of `backends` at blue share `ratio`.
    fn picks(backends: &[TableBackend], ratio: u32, clients: &[Vec<FlowKey>]) -> Vec<Vec<u32>> {
        let tables = build_region(backends, M);
        let mut service = Service {
            lut_size: M,
            blue_share: blue_share(backends, Ratio::new(ratio).unwrap()),
            ..Service::default()
        };
        Affinity::ClientIp.program(&mut service);
        let pick = |key: &FlowKey| tables[table_slot(key, flow_hash(key), &service).unwrap() as usize];
        clients.iter().map(|keys| keys.iter().map(pick).collect()).collect()
    }

    fn pool_of(id: u32) -> Pool {
        backends().iter().find(|b| b.id == id).expect("a backend").pool
    }

    #[test]
    fn every_connection_of_a_client_goes_to_the_same_backend() {
        for ids in picks(&backends(), 50, &clients()) {
            assert!(ids.iter().all(|&id| id == ids[0]), "{ids:?}");
        }
    }

    #[test]
    fn raising_blues_share_moves_clients_only_from_green_to_blue() {
        let clients = clients();
        let mut blue_before = vec![false; clients.len()];
        for share in 0..=100 {
            let picks = picks(&backends(), share, &clients);
            let mut blue_clients = 0;
            for (client, ids) in picks.iter().enumerate() {
                assert_ne!(ids[0], NO_BACKEND, "share {share}");
                let blue = pool_of(ids[0]) == Pool::Blue;
                assert!(
                    blue || !blue_before[client],
                    "share {share}: client {client} went back to green"
                );
                blue_before[client] = blue;
                blue_clients += u32::from(blue);
            }
            // The share of clients follows the ratio (3000 clients: within 4
            // points of it).
            let percent = f64::from(blue_clients) * 100.0 / clients.len() as f64;
            assert!(
                (percent - f64::from(share)).abs() < 4.0,
                "share {share}: {percent}% blue"
            );
        }
    }

    #[test]
    fn a_client_keeps_its_backend_while_its_pool_is_unchanged() {
        let clients = clients();
        let mut seen: HashMap<(usize, Pool), u32> = HashMap::new();
        for share in [0, 10, 50, 90, 100, 50, 10, 0] {
            for (client, ids) in picks(&backends(), share, &clients).iter().enumerate() {
                let first = *seen.entry((client, pool_of(ids[0]))).or_insert(ids[0]);
                assert_eq!(
                    ids[0], first,
                    "share {share}: client {client} changed backend within its pool"
                );
            }
        }
        // The other pool's weights change: a blue client's backend does not.
        let mut heavier_green = backends();
        heavier_green[4].weight = 500;
        let before = picks(&backends(), 50, &clients);
        let after = picks(&heavier_green, 50, &clients);
        for (before, after) in before.iter().zip(&after) {
            if pool_of(before[0]) == Pool::Blue {
                assert_eq!(before[0], after[0]);
            }
        }
    }

    #[test]
    fn a_pools_clients_spread_over_its_backends_by_weight() {
        let mut per_backend: HashMap<u32, u32> = HashMap::new();
        for ids in picks(&backends(), 50, &clients()) {
            *per_backend.entry(ids[0]).or_default() += 1;
        }
        let in_pool = |pool| {
            f64::from(
                per_backend
                    .iter()
                    .filter(|(id, _)| pool_of(**id) == pool)
                    .map(|(_, n)| n)
                    .sum::<u32>(),
            )
        };
        for (id, expected) in [(0, 0.2), (1, 0.2), (2, 0.6), (3, 0.5), (4, 0.5)] {
            let share = f64::from(per_backend[&id]) / in_pool(pool_of(id));
            assert!(
                (share - expected).abs() < 0.05,
                "backend {id}: {share} of its pool's clients, not {expected}"
            );
        }
    }

    #[test]
    fn a_pool_that_cannot_serve_gives_its_clients_to_the_other() {
        let mut no_green = backends();
        no_green[3].weight = 0;
        no_green[4].weight = 0;
        let clients = clients();
        assert!(
            picks(&no_green, 10, &clients)
                .iter()
                .all(|ids| pool_of(ids[0]) == Pool::Blue)
        );
        let none: Vec<_> = no_green.into_iter().map(|b| TableBackend { weight: 0, ..b }).collect();
        assert!(picks(&none, 10, &clients).iter().all(|ids| ids[0] == NO_BACKEND));
    }

    #[test]
    fn the_flag_is_set_for_client_ip_only_and_keeps_the_syn_proxy_bits() {
        let mut service = Service {
            flags: 1,
            ..Service::default()
        };
        Affinity::ClientIp.program(&mut service);
        assert_eq!(service.flags, 1 | SERVICE_AFFINITY_CLIENT_IP);
        Affinity::None.program(&mut service);
        assert_eq!(service.flags, 1);
        assert_eq!("client-ip".parse::<Affinity>(), Ok(Affinity::ClientIp));
        assert_eq!("none".parse::<Affinity>(), Ok(Affinity::None));
        assert!("sticky".parse::<Affinity>().is_err());
    }
}
