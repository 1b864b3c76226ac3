//! Client affinity (`affinity = "none" | "client-ip"`): the setting, the
//! flag it writes into the SERVICES entry, and the lookup table it needs.
//!
//! Under `client-ip` the data plane picks a new flow's slot by its client
//! address alone ([`bg_lb_common::flow_hash::table_slot`]), so the slot is
//! the client's point in `[0, 1)` (slot / size). The table is laid out so
//! that the point decides the colour: slots `[0, blue share x size)` are
//! blue, the rest green. Raising blue's share then moves clients only from
//! green to blue, and lowering it only back from blue to green, whatever
//! the order of steps. Each region's slot `i` holds slot `i` of its pool's
//! own Maglev table (the pool alone, at its full size), so a client keeps
//! its backend while it stays in its pool and the pool's backends and
//! weights are unchanged. Within a region, backends get slots in about
//! their weights' proportion (Maglev's placement is pseudo-random, so a
//! region's share is statistical, not exact as in a plain table).

use std::{fmt, str::FromStr};

use bg_lb_common::maps::{SERVICE_AFFINITY_CLIENT_IP, Service};

use crate::{
    dataplane::lookup_table::{self, TableBackend},
    ratio::{Pool, Ratio},
};

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

    /// The service's table: `size` slots of backend ids.
    pub fn table(self, backends: &[TableBackend], ratio: Ratio, size: u32) -> Vec<u32> {
        match self {
            Affinity::None => lookup_table::build(backends, ratio, size),
            Affinity::ClientIp => by_client(backends, ratio, size),
        }
    }
}

/// The table of a `client-ip` service (see the module doc).
fn by_client(backends: &[TableBackend], ratio: Ratio, size: u32) -> Vec<u32> {
    let can_serve = |pool| backends.iter().any(|b| b.pool == pool && b.weight > 0);
    let ratio = ratio.effective(can_serve(Pool::Blue), can_serve(Pool::Green));
    let blue_slots = blue_slots(ratio, size);
    let pool_table = |pool: Pool| {
        let members: Vec<TableBackend> = backends.iter().filter(|b| b.pool == pool).cloned().collect();
        lookup_table::build(&members, Ratio::all_to(pool), size)
    };
    let mut table = if blue_slots > 0 {
        pool_table(Pool::Blue)
    } else {
        Vec::new()
    };
    if blue_slots < size {
        let green = pool_table(Pool::Green);
        table.truncate(blue_slots as usize);
        table.extend_from_slice(&green[blue_slots as usize..]);
    }
    table
}

/// The blue region's end: `size x blue share`, rounded, which never falls
/// as the share rises.
fn blue_slots(ratio: Ratio, size: u32) -> u32 {
    let slots = (u64::from(size) * u64::from(ratio.share(Pool::Blue)) + 50) / 100;
    // At most `size`: the share is at most 100.
    slots as u32
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

    fn service() -> Service {
        let mut service = Service {
            lut_size: M,
            ..Service::default()
        };
        Affinity::ClientIp.program(&mut service);
        service
    }

    /// 3000 clients, each connecting from a few ports: their slots as the
    /// data plane picks them.
    fn clients() -> Vec<Vec<usize>> {
        let vip = SocketAddrV4::new([10, 0, 0, 100].into(), 80);
        let service = service();
        (0..3000u32)
            .map(|n| {
                let ip = std::net::Ipv4Addr::from_bits(0x0a14_0000 + n);
                (0..3u16)
                    .map(|p| {
                        let key = FlowKey::from_client(SocketAddrV4::new(ip, 40000 + p), vip);
                        table_slot(&key, flow_hash(&key), &service).unwrap() as usize
                    })
                    .collect()
            })
            .collect()
    }

    fn pool_of(id: u32) -> Pool {
        backends().iter().find(|b| b.id == id).expect("a backend").pool
    }

    #[test]
    fn every_connection_of_a_client_reads_the_same_slot() {
        for slots in clients() {
            assert!(slots.iter().all(|&s| s == slots[0]), "{slots:?}");
        }
    }

    #[test]
    fn raising_blues_share_moves_clients_only_from_green_to_blue() {
        let clients = clients();
        let mut blue_before = vec![false; clients.len()];
        for share in 0..=100 {
            let table = Affinity::ClientIp.table(&backends(), Ratio::new(share).unwrap(), M);
            assert!(!table.contains(&NO_BACKEND), "share {share}");
            let mut blue_clients = 0;
            for (client, slots) in clients.iter().enumerate() {
                let blue = pool_of(table[slots[0]]) == Pool::Blue;
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
            let table = Affinity::ClientIp.table(&backends(), Ratio::new(share).unwrap(), M);
            for (client, slots) in clients.iter().enumerate() {
                let id = table[slots[0]];
                let first = *seen.entry((client, pool_of(id))).or_insert(id);
                assert_eq!(
                    id, first,
                    "share {share}: client {client} changed backend within its pool"
                );
            }
        }
        // The other pool's weights change: a blue client's backend does not.
        let mut heavier_green = backends();
        heavier_green[4].weight = 500;
        let before = Affinity::ClientIp.table(&backends(), Ratio::new(50).unwrap(), M);
        let after = Affinity::ClientIp.table(&heavier_green, Ratio::new(50).unwrap(), M);
        for slots in &clients {
            if pool_of(before[slots[0]]) == Pool::Blue {
                assert_eq!(before[slots[0]], after[slots[0]]);
            }
        }
    }

    #[test]
    fn backends_share_their_pools_region_by_weight() {
        let table = Affinity::ClientIp.table(&backends(), Ratio::new(50).unwrap(), M);
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &id in &table {
            *counts.entry(id).or_default() += 1;
        }
        let half = f64::from(M) / 2.0;
        for (id, expected) in [(0, 0.2), (1, 0.2), (2, 0.6), (3, 0.5), (4, 0.5)] {
            let share = f64::from(counts[&id]) / half;
            assert!(
                (share - expected).abs() < 0.02,
                "backend {id}: {share} of its region, not {expected}"
            );
        }
    }

    #[test]
    fn a_pool_that_cannot_serve_gives_its_region_to_the_other() {
        let mut no_green = backends();
        no_green[3].weight = 0;
        no_green[4].weight = 0;
        let table = Affinity::ClientIp.table(&no_green, Ratio::new(10).unwrap(), M);
        assert!(table.iter().all(|&id| pool_of(id) == Pool::Blue));
        let none: Vec<_> = no_green.into_iter().map(|b| TableBackend { weight: 0, ..b }).collect();
        let table = Affinity::ClientIp.table(&none, Ratio::new(10).unwrap(), M);
        assert!(table.iter().all(|&id| id == NO_BACKEND));
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
