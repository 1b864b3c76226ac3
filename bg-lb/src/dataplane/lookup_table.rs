//! Weighted Maglev lookup tables, one per pool.
//!
//! A service has a table per pool, blue's then green's, of a prime number
//! `M` of slots each naming a backend. The data plane sends a new flow to
//! blue's table or green's by the traffic ratio (its pool point against
//! the SERVICES entry's `blue_share`: [`blue_share`]), then to slot
//! `hash(5-tuple) % M` of that table. The ratio is therefore one field of
//! the entry, and a ratio change rebuilds no table. Building a pool's table
//! takes two steps:
//!
//! 1. **Apportionment** ([`slot_quotas`]): each backend's exact number of
//!    slots, `M x weight / pool_weight`, rounded by the largest remainder
//!    method so quotas sum to `M` and none is off by a whole slot. Shares
//!    are therefore within `1/M` of the target for any weights.
//! 2. **Placement** ([`build`]): Maglev's permutation fill (each backend walks
//!    its own pseudo-random permutation of slots and claims the next free
//!    one), with turns handed out in proportion to quotas and stopped at each
//!    quota. A backend's preferred slots depend only on its address, so a
//!    weight change moves few slots beyond the ones that must move.

use std::net::{IpAddr, SocketAddr};

use bg_lb_common::maps::{NO_BACKEND, POOL_SHARE_SCALE, service_table_slots, table_offset};

use crate::ratio::{Pool, Ratio};

/// A backend as the table builder sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableBackend {
    /// Index in the BACKENDS map: what the table's slots hold.
    pub id: u32,
    /// Seeds the backend's slot permutation, so it must be stable.
    pub addr: SocketAddr,
    pub pool: Pool,
    /// 0 takes no new flows.
    pub weight: u32,
}

/// Whether any of `pool`'s backends may take new flows.
fn can_serve(backends: &[TableBackend], pool: Pool) -> bool {
    backends.iter().any(|b| b.pool == pool && b.weight > 0)
}

/// The SERVICES entry's `blue_share` for `ratio`: blue's share of new
/// flows in `POOL_SHARE_SCALE`ths, all of them to one pool when the other
/// has no backend that may take them (its share is handed over, not
/// blackholed).
pub fn blue_share(backends: &[TableBackend], ratio: Ratio) -> u16 {
    let ratio = ratio.effective(can_serve(backends, Pool::Blue), can_serve(backends, Pool::Green));
    (u32::from(ratio.share(Pool::Blue)) * POOL_SHARE_SCALE / 100) as u16
}

/// Exact slot counts of `pool`'s backends, in `backends` order (0 for the
/// other pool's).
pub fn slot_quotas(backends: &[TableBackend], pool: Pool, size: u32) -> Vec<u32> {
    let weight = |b: &TableBackend| if b.pool == pool { u128::from(b.weight) } else { 0 };
    let pool_weight: u128 = backends.iter().map(weight).sum();
    if pool_weight == 0 {
        return vec![0; backends.len()]; // no backend can take traffic: the table stays empty
    }
    // Ideal slots of backend b = size * w_b / W_pool, kept as an exact
    // fraction (numerator over pool_weight).
    let numerators: Vec<u128> = backends.iter().map(|b| u128::from(size) * weight(b)).collect();
    let mut quotas: Vec<u32> = numerators.iter().map(|n| (n / pool_weight) as u32).collect();
    let assigned: u32 = quotas.iter().sum();
    // Largest remainders first; ties go to the lower index for determinism.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by(|&a, &b| {
        (numerators[b] % pool_weight)
            .cmp(&(numerators[a] % pool_weight))
            .then(a.cmp(&b))
    });
    for &i in order.iter().take((size - assigned) as usize) {
        quotas[i] += 1;
    }
    quotas
}

/// `pool`'s table: `size` slots of backend ids, or all [`NO_BACKEND`] when
/// none of its backends may take new flows.
///
/// Backends are placed in address order, not in the order given: hosts
/// whose configs list the same backends in different orders build the same
/// table, so a flow that ECMP moves to another host keeps its backend.
pub fn build(backends: &[TableBackend], pool: Pool, size: u32) -> Vec<u32> {
    let mut backends: Vec<TableBackend> = backends.iter().filter(|b| b.pool == pool).cloned().collect();
    backends.sort_by_key(|b| b.addr);
    let backends = backends.as_slice();
    let quotas = slot_quotas(backends, pool, size);
    let mut table = vec![NO_BACKEND; size as usize];
    let Some(&max_quota) = quotas.iter().max().filter(|&&q| q > 0) else {
        return table;
    };
    let mut walkers: Vec<Permutation> = backends.iter().map(|b| Permutation::new(b.addr, size)).collect();
    let mut claimed = vec![0u32; backends.len()];
    let mut credit = vec![0u64; backends.len()];
    let mut filled = 0u32;
    while filled < size {
        for (i, backend) in backends.iter().enumerate() {
            if claimed[i] == quotas[i] {
                continue;
            }
            // Turns in proportion to quota: every backend finishes near the
            // same round, as in unweighted Maglev, which keeps placement stable.
            credit[i] += u64::from(quotas[i]);
            if credit[i] < u64::from(max_quota) {
                continue;
            }
            credit[i] -= u64::from(max_quota);
            let slot = walkers[i].next_free(&table);
            table[slot] = backend.id;
            claimed[i] += 1;
            filled += 1;
        }
    }
    table
}

/// A service's region of LOOKUP_TABLES as an entry without buffer flags
/// reads it: each pool's table in its first buffer, from
/// [`table_offset`], the second buffers empty.
pub fn build_region(backends: &[TableBackend], size: u32) -> Vec<u32> {
    let mut region = vec![NO_BACKEND; service_table_slots(size) as usize];
    for pool in Pool::ALL {
        let start = table_offset(pool.index() as u32, 0, size) as usize;
        region[start..start + size as usize].copy_from_slice(&build(backends, pool, size));
    }
    region
}

/// Builds pools' tables, keeping the last few: a table depends only on its
/// pool's backends' addresses and weights (in order) and the size; the ids
/// are mere labels. Services with the same backends (one backend's health
/// change behind many services, each applied live then standby) therefore
/// share a build, each relabelled with its own ids.
#[derive(Default)]
pub struct TableCache {
    /// Most recently used first, at most [`TableCache::ENTRIES`].
    tables: Vec<CachedTable>,
}

struct CachedTable {
    backends: Vec<(SocketAddr, u32)>,
    size: u32,
    /// Slots holding positions in `backends` instead of ids.
    positions: Vec<u32>,
}

impl TableCache {
    /// Builds kept (each 4 bytes per slot): both pools of a live and a
    /// standby service, twice over.
    const ENTRIES: usize = 8;

    /// The same table as [`build`].
    pub fn build(&mut self, backends: &[TableBackend], pool: Pool, size: u32) -> Vec<u32> {
        let members: Vec<&TableBackend> = backends.iter().filter(|b| b.pool == pool).collect();
        let key: Vec<_> = members.iter().map(|b| (b.addr, b.weight)).collect();
        let found = self.tables.iter().position(|c| c.backends == key && c.size == size);
        let cached = match found {
            Some(i) => self.tables.remove(i),
            None => {
                let by_position: Vec<TableBackend> = members
                    .iter()
                    .enumerate()
                    .map(|(i, b)| TableBackend {
                        id: i as u32,
                        ..(*b).clone()
                    })
                    .collect();
                CachedTable {
                    positions: build(&by_position, pool, size),
                    backends: key,
                    size,
                }
            }
        };
        let table = cached
            .positions
            .iter()
            .map(|&p| members.get(p as usize).map_or(NO_BACKEND, |b| b.id))
            .collect();
        self.tables.insert(0, cached);
        self.tables.truncate(Self::ENTRIES);
        table
    }
}

/// One backend's walk through Maglev's permutation `(offset + j*skip) % M`,
/// which visits every slot because `M` is prime and `0 < skip < M`.
struct Permutation {
    skip: usize,
    size: usize,
    /// The walk's next slot, `(offset + j*skip) % M` for the next `j`,
    /// kept by adding `skip` (no division per step: the build's hot loop).
    next: usize,
}

impl Permutation {
    fn new(addr: SocketAddr, size: u32) -> Self {
        let key = match addr.ip() {
            IpAddr::V4(ip) => u64::from(ip.to_bits()) << 16 | u64::from(addr.port()),
            // Every bit counts: IPv6 backends often differ in a few low
            // bits of either half.
            IpAddr::V6(ip) => {
                let bits = ip.to_bits();
                splitmix64((bits >> 64) as u64) ^ (bits as u64).rotate_left(16) ^ u64::from(addr.port())
            }
        };
        let size = u64::from(size);
        Self {
            next: (splitmix64(key ^ 0x5bd1_e995_1234_5678) % size) as usize,
            skip: (splitmix64(key ^ 0x2545_f491_4f6c_dd1d) % (size - 1).max(1) + 1) as usize,
            size: size as usize,
        }
    }

    fn next_free(&mut self, table: &[u32]) -> usize {
        loop {
            let slot = self.next;
            // Both below `size`, so one subtraction wraps the sum.
            self.next += self.skip;
            if self.next >= self.size {
                self.next -= self.size;
            }
            if table[slot] == NO_BACKEND {
                return slot;
            }
        }
    }
}

/// SplitMix64's finaliser: a stable, well-mixed hash of a backend's address.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bg_lb_common::maps::DEFAULT_LUT_SIZE;

    use super::*;

    const M: u32 = DEFAULT_LUT_SIZE;

    fn backend(id: u32, pool: Pool, weight: u32) -> TableBackend {
        let addr = SocketAddr::from(([10, 1, (id >> 8) as u8, id as u8], 8080));
        TableBackend { id, addr, pool, weight }
    }

    fn mixed() -> Vec<TableBackend> {
        vec![
            backend(0, Pool::Blue, 1),
            backend(1, Pool::Blue, 3),
            backend(2, Pool::Blue, 1000),
            backend(3, Pool::Green, 7),
            backend(4, Pool::Green, 7),
            backend(5, Pool::Green, 250),
        ]
    }

    fn counts(table: &[u32]) -> HashMap<u32, u32> {
        let mut c = HashMap::new();
        for &id in table {
            *c.entry(id).or_default() += 1;
        }
        c
    }

    fn target_share(backends: &[TableBackend], b: &TableBackend) -> f64 {
        let pool_weight: u32 = backends.iter().filter(|x| x.pool == b.pool).map(|x| x.weight).sum();
        f64::from(b.weight) / f64::from(pool_weight)
    }

    #[test]
    fn each_pools_table_gives_its_backends_their_weights_share_within_half_a_percent() {
        let backends = mixed();
        for pool in [Pool::Blue, Pool::Green] {
            let counts = counts(&build(&backends, pool, M));
            assert!(!counts.contains_key(&NO_BACKEND), "{pool}: table has empty slots");
            for b in &backends {
                let share = f64::from(counts.get(&b.id).copied().unwrap_or(0)) / f64::from(M);
                if b.pool != pool {
                    assert_eq!(share, 0.0, "{pool}'s table names {}", b.id);
                    continue;
                }
                let target = target_share(&backends, b);
                // Never off by a whole slot, so within 0.5% of any target
                // that a 65537-slot table can express (>= 1% share).
                assert!(
                    (share - target).abs() * f64::from(M) < 1.0,
                    "backend {}: {share} vs {target}",
                    b.id
                );
                if target >= 0.01 {
                    assert!((share - target).abs() / target < 0.005, "backend {}", b.id);
                }
            }
        }
    }

    #[test]
    fn the_blue_share_is_the_ratio_in_ten_thousandths() {
        for blue in [0, 1, 30, 50, 99, 100] {
            let share = blue_share(&mixed(), Ratio::new(blue).unwrap());
            assert_eq!(u32::from(share), blue * 100);
        }
    }

    #[test]
    fn a_pool_without_weight_gives_its_share_to_the_other_pool() {
        let (seventy, thirty) = (Ratio::new(70).unwrap(), Ratio::new(30).unwrap());
        let blue_idle = vec![backend(0, Pool::Blue, 0), backend(1, Pool::Green, 5)];
        assert_eq!(blue_share(&blue_idle, seventy), 0);
        let green_idle = vec![backend(0, Pool::Blue, 5), backend(1, Pool::Green, 0)];
        assert_eq!(u32::from(blue_share(&green_idle, thirty)), POOL_SHARE_SCALE);
        let blue_only = vec![backend(0, Pool::Blue, 5)];
        assert_eq!(u32::from(blue_share(&blue_only, thirty)), POOL_SHARE_SCALE);
        // Neither can serve: the ratio stands (both tables are empty).
        let none = vec![backend(0, Pool::Blue, 0), backend(1, Pool::Green, 0)];
        assert_eq!(blue_share(&none, thirty), 3000);
    }

    #[test]
    fn a_table_is_empty_when_none_of_its_pools_backends_has_weight() {
        let backends = vec![backend(0, Pool::Blue, 0), backend(1, Pool::Green, 0)];
        for pool in [Pool::Blue, Pool::Green] {
            assert!(build(&backends, pool, M).iter().all(|&id| id == NO_BACKEND));
            assert!(build(&[], pool, M).iter().all(|&id| id == NO_BACKEND));
        }
        let region = build_region(&[backend(0, Pool::Green, 3)], M);
        let m = M as usize;
        assert_eq!(region.len(), 4 * m);
        assert!(region[..2 * m].iter().all(|&id| id == NO_BACKEND), "blue's buffers");
        assert!(region[2 * m..3 * m].iter().all(|&id| id == 0), "green's first buffer");
        assert!(
            region[3 * m..].iter().all(|&id| id == NO_BACKEND),
            "green's second buffer"
        );
    }

    /// Slots of `pool`'s table that changed owner, and the fewest any table
    /// could change.
    fn disruption(before: &[TableBackend], after: &[TableBackend], pool: Pool) -> (u32, u32) {
        let (t0, t1) = (build(before, pool, M), build(after, pool, M));
        let moved = t0.iter().zip(&t1).filter(|(a, b)| a != b).count() as u32;
        let (q0, q1) = (slot_quotas(before, pool, M), slot_quotas(after, pool, M));
        let minimum = q0.iter().zip(&q1).map(|(a, b)| a.saturating_sub(*b)).sum();
        (moved, minimum)
    }

    /// Maglev is not perfectly minimal: a changed backend claims its slots in
    /// a new rhythm, displacing some others. 1.6x the minimum bounds it here
    /// (measured 1.51x), far from the ~100% a modulo table would move.
    const MAX_OVERHEAD: (u32, u32) = (16, 10);

    #[test]
    fn changing_one_weight_moves_little_more_than_the_share_that_must_move() {
        let before: Vec<_> = (0..10)
            .map(|i| backend(i, if i < 5 { Pool::Blue } else { Pool::Green }, 100))
            .collect();
        let mut after = before.clone();
        after[2].weight = 150;
        let (moved, minimum) = disruption(&before, &after, Pool::Blue);
        assert!(minimum > 0);
        assert!(
            moved * MAX_OVERHEAD.1 <= minimum * MAX_OVERHEAD.0,
            "moved {moved} slots, minimum {minimum}"
        );
        assert_eq!(
            disruption(&before, &after, Pool::Green),
            (0, 0),
            "the other pool's table"
        );
    }

    #[test]
    fn removing_a_backend_moves_only_its_slots_and_a_few_more() {
        let before: Vec<_> = (0..10).map(|i| backend(i, Pool::Blue, 100)).collect();
        let mut after = before.clone();
        after[7].weight = 0;
        let (moved, minimum) = disruption(&before, &after, Pool::Blue);
        assert!(
            moved * MAX_OVERHEAD.1 <= minimum * MAX_OVERHEAD.0,
            "moved {moved} slots, minimum {minimum}"
        );
    }

    #[test]
    fn the_walk_visits_offset_plus_j_skip_modulo_the_size() {
        for size in [2, 3, 7, M] {
            let addr = SocketAddr::from(([10, 1, 2, 3], 8080));
            let (start, mut walk) = (Permutation::new(addr, size), Permutation::new(addr, size));
            let (offset, skip) = (start.next as u64, start.skip as u64);
            let empty = vec![NO_BACKEND; size as usize];
            for j in 0..3 * u64::from(size) {
                let expected = ((offset + j * skip) % u64::from(size)) as usize;
                assert_eq!(walk.next_free(&empty), expected, "size {size}, step {j}");
            }
        }
    }

    /// Both pools' tables, blue's then green's.
    fn both(backends: &[TableBackend], size: u32) -> Vec<u32> {
        let mut tables = build(backends, Pool::Blue, size);
        tables.extend(build(backends, Pool::Green, size));
        tables
    }

    fn cached_both(cache: &mut TableCache, backends: &[TableBackend], size: u32) -> Vec<u32> {
        let mut tables = cache.build(backends, Pool::Blue, size);
        tables.extend(cache.build(backends, Pool::Green, size));
        tables
    }

    #[test]
    fn a_cached_build_is_the_table_built_afresh_with_each_services_ids() {
        let mut cache = TableCache::default();
        let relabelled = |offset: u32| -> Vec<TableBackend> {
            mixed()
                .into_iter()
                .map(|b| TableBackend { id: b.id + offset, ..b })
                .collect()
        };
        for offset in [0, 100, 200] {
            let backends = relabelled(offset);
            assert_eq!(cached_both(&mut cache, &backends, M), both(&backends, M));
        }
        let mut lighter = relabelled(300);
        lighter[2].weight = 1;
        assert_eq!(cached_both(&mut cache, &lighter, M), both(&lighter, M));
        let mut greener = lighter.clone();
        greener[5].weight = 1;
        assert_eq!(cached_both(&mut cache, &greener, M), both(&greener, M));
        let none = vec![backend(7, Pool::Blue, 0)];
        assert_eq!(cached_both(&mut cache, &none, M), both(&none, M));
        // Alternating specs (live, standby) hit their own entries.
        for _ in 0..2 {
            assert_eq!(cached_both(&mut cache, &lighter, M), both(&lighter, M));
            assert_eq!(cached_both(&mut cache, &greener, M), both(&greener, M));
        }
        assert!(cache.tables.len() <= TableCache::ENTRIES);
    }

    /// What several hosts rely on: the same backends and weights give the
    /// same bytes whatever the order the config lists them in, and a host
    /// that numbers its backends otherwise (its own id history) still
    /// names the same backend in every slot.
    #[test]
    fn hosts_build_byte_identical_tables_from_the_same_backends_listed_in_any_order() {
        let bytes = |table: &[u32]| table.iter().flat_map(|s| s.to_ne_bytes()).collect::<Vec<u8>>();
        let one_host = both(&mixed(), M);
        let mut reordered = mixed();
        reordered.reverse();
        reordered.swap(1, 4);
        assert_eq!(bytes(&both(&reordered, M)), bytes(&one_host));
        assert_eq!(
            bytes(&cached_both(&mut TableCache::default(), &reordered, M)),
            bytes(&one_host)
        );

        let renumbered: Vec<TableBackend> = reordered
            .iter()
            .map(|b| TableBackend {
                id: 40 - b.id,
                ..b.clone()
            })
            .collect();
        let other_host = both(&renumbered, M);
        let address = |backends: &[TableBackend], id: u32| backends.iter().find(|b| b.id == id).map(|b| b.addr);
        for (slot, (&a, &b)) in one_host.iter().zip(&other_host).enumerate() {
            assert_eq!(address(&mixed(), a), address(&renumbered, b), "slot {slot}");
        }
    }

    /// Hosts of one fleet may run different bg-lb versions during an
    /// upgrade, and must still agree on every slot: the placement of a
    /// given input is fixed across versions (a change to it must be made on
    /// purpose, and said in the release notes). The digest is FNV-1a over
    /// the slots of a 1,000-backend service's two tables. (Changed on
    /// purpose once: when the ratio left the table for the SERVICES entry,
    /// one table over both pools became a table per pool; a pool's table
    /// is the one a `client-ip` service had before.)
    #[test]
    fn placement_is_the_same_in_every_version() {
        let backends: Vec<TableBackend> = (0..1000)
            .map(|i| backend(i, if i % 3 == 0 { Pool::Green } else { Pool::Blue }, 1 + i % 7))
            .collect();
        let tables = both(&backends, M);
        let digest = tables.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &slot| {
            slot.to_le_bytes()
                .iter()
                .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
        });
        assert_eq!(digest, 0x4941_7219_e561_e41c, "the placement changed");
    }

    #[test]
    fn building_twice_gives_the_same_table() {
        assert_eq!(both(&mixed(), M), both(&mixed(), M));
    }
}
