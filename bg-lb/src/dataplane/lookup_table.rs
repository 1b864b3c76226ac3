//! Weighted Maglev lookup tables.
//!
//! A service's table has a prime number `M` of slots, each naming a backend;
//! the data plane sends a new flow to `table[hash(5-tuple) % M]`. Building it
//! takes two steps:
//!
//! 1. **Apportionment** ([`slot_quotas`]): each backend's exact number of
//!    slots, `M x pool_share x weight / pool_weight`, rounded by the largest
//!    remainder method so quotas sum to `M` and none is off by a whole slot.
//!    Shares are therefore within `1/M` of the target for any ratio/weights.
//! 2. **Placement** ([`build`]): Maglev's permutation fill (each backend walks
//!    its own pseudo-random permutation of slots and claims the next free
//!    one), with turns handed out in proportion to quotas and stopped at each
//!    quota. A backend's preferred slots depend only on its address, so a
//!    weight or ratio change moves few slots beyond the ones that must move.

use std::net::{IpAddr, SocketAddr};

use bg_lb_common::maps::NO_BACKEND;

use crate::{
    dataplane::affinity::Affinity,
    ratio::{Pool, Ratio},
};

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

/// Exact slot counts, in `backends` order.
pub fn slot_quotas(backends: &[TableBackend], ratio: Ratio, size: u32) -> Vec<u32> {
    let pool_weight = |pool| {
        backends
            .iter()
            .filter(|b| b.pool == pool)
            .map(|b| u128::from(b.weight))
            .sum::<u128>()
    };
    let weights = [pool_weight(Pool::Blue), pool_weight(Pool::Green)];
    let ratio = ratio.effective(weights[0] > 0, weights[1] > 0);
    // Ideal slots of backend b = size * share_pool(%) * w_b / (100 * W_pool),
    // kept as an exact fraction num/den.
    let fraction = |b: &TableBackend| -> (u128, u128) {
        let pool_weight = weights[b.pool.index()];
        if pool_weight == 0 {
            return (0, 1);
        }
        let num = u128::from(size) * u128::from(ratio.share(b.pool)) * u128::from(b.weight);
        (num, 100 * pool_weight)
    };
    let fractions: Vec<_> = backends.iter().map(fraction).collect();
    let mut quotas: Vec<u32> = fractions.iter().map(|&(n, d)| (n / d) as u32).collect();
    let assigned: u32 = quotas.iter().sum();
    if assigned == 0 {
        return quotas; // no backend can take traffic: the table stays empty
    }
    // Largest remainders first; ties go to the lower index for determinism.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, da) = (fractions[a].0 % fractions[a].1, fractions[a].1);
        let (rb, db) = (fractions[b].0 % fractions[b].1, fractions[b].1);
        (rb * da).cmp(&(ra * db)).then(a.cmp(&b))
    });
    for &i in order.iter().take((size - assigned) as usize) {
        quotas[i] += 1;
    }
    quotas
}

/// The table: `size` slots of backend ids, or all [`NO_BACKEND`] when no
/// backend may take new flows.
///
/// Backends are placed in address order, not in the order given: hosts
/// whose configs list the same backends in different orders build the same
/// table, so a flow that ECMP moves to another host keeps its backend.
pub fn build(backends: &[TableBackend], ratio: Ratio, size: u32) -> Vec<u32> {
    let mut backends = backends.to_vec();
    backends.sort_by_key(|b| b.addr);
    let backends = backends.as_slice();
    let quotas = slot_quotas(backends, ratio, size);
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

/// Builds tables, keeping the last few: a table depends only on its
/// backends' addresses, pools and weights (in order), the ratio, the
/// affinity and the size; the ids are mere labels. Services with the same backends (one
/// backend's health change behind many services, each applied live then
/// standby) therefore share a build, each relabelled with its own ids.
#[derive(Default)]
pub struct TableCache {
    /// Most recently used first, at most [`TableCache::ENTRIES`].
    tables: Vec<CachedTable>,
}

struct CachedTable {
    backends: Vec<(SocketAddr, Pool, u32)>,
    ratio: Ratio,
    affinity: Affinity,
    size: u32,
    /// Slots holding positions in `backends` instead of ids.
    positions: Vec<u32>,
}

impl TableCache {
    /// Builds kept (each 4 bytes per slot).
    const ENTRIES: usize = 4;

    /// The same table as [`Affinity::table`].
    pub fn build(&mut self, backends: &[TableBackend], ratio: Ratio, affinity: Affinity, size: u32) -> Vec<u32> {
        let key: Vec<_> = backends.iter().map(|b| (b.addr, b.pool, b.weight)).collect();
        let found = self
            .tables
            .iter()
            .position(|c| c.backends == key && c.ratio == ratio && c.affinity == affinity && c.size == size);
        let cached = match found {
            Some(i) => self.tables.remove(i),
            None => {
                let by_position: Vec<TableBackend> = backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| TableBackend {
                        id: i as u32,
                        ..b.clone()
                    })
                    .collect();
                CachedTable {
                    positions: affinity.table(&by_position, ratio, size),
                    backends: key,
                    ratio,
                    affinity,
                    size,
                }
            }
        };
        let table = cached
            .positions
            .iter()
            .map(|&p| backends.get(p as usize).map_or(NO_BACKEND, |b| b.id))
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

    fn target_share(backends: &[TableBackend], b: &TableBackend, ratio: Ratio) -> f64 {
        let pool_weight: u32 = backends.iter().filter(|x| x.pool == b.pool).map(|x| x.weight).sum();
        f64::from(ratio.share(b.pool)) / 100.0 * f64::from(b.weight) / f64::from(pool_weight)
    }

    #[test]
    fn shares_match_ratio_times_weight_within_half_a_percent() {
        let backends = mixed();
        for blue in [0, 1, 30, 50, 99, 100] {
            let ratio = Ratio::new(blue).unwrap();
            let table = build(&backends, ratio, M);
            let counts = counts(&table);
            assert!(!counts.contains_key(&NO_BACKEND), "ratio {blue}: table has empty slots");
            for b in &backends {
                let target = target_share(&backends, b, ratio);
                let share = f64::from(counts.get(&b.id).copied().unwrap_or(0)) / f64::from(M);
                // Never off by a whole slot, so within 0.5% of any target
                // that a 65537-slot table can express (>= 1% share).
                assert!(
                    (share - target).abs() * f64::from(M) < 1.0,
                    "ratio {blue}, backend {}: {share} vs {target}",
                    b.id
                );
                if target >= 0.01 {
                    assert!(
                        (share - target).abs() / target < 0.005,
                        "ratio {blue}, backend {}",
                        b.id
                    );
                }
            }
        }
    }

    #[test]
    fn ratio_zero_and_hundred_send_nothing_to_the_drained_pool() {
        let backends = mixed();
        let all_green = counts(&build(&backends, Ratio::new(0).unwrap(), M));
        assert!(
            backends
                .iter()
                .filter(|b| b.pool == Pool::Blue)
                .all(|b| !all_green.contains_key(&b.id))
        );
        let all_blue = counts(&build(&backends, Ratio::new(100).unwrap(), M));
        assert!(
            backends
                .iter()
                .filter(|b| b.pool == Pool::Green)
                .all(|b| !all_blue.contains_key(&b.id))
        );
    }

    #[test]
    fn pool_without_weight_gives_its_share_to_the_other_pool() {
        let backends = vec![backend(0, Pool::Blue, 0), backend(1, Pool::Green, 5)];
        let table = build(&backends, Ratio::new(70).unwrap(), M);
        assert!(table.iter().all(|&id| id == 1));
    }

    #[test]
    fn table_is_empty_when_no_backend_has_weight() {
        let backends = vec![backend(0, Pool::Blue, 0), backend(1, Pool::Green, 0)];
        assert!(
            build(&backends, Ratio::new(50).unwrap(), M)
                .iter()
                .all(|&id| id == NO_BACKEND)
        );
        assert!(
            build(&[], Ratio::new(50).unwrap(), M)
                .iter()
                .all(|&id| id == NO_BACKEND)
        );
    }

    /// Slots that changed owner, and the fewest any table could change.
    fn disruption(before: &[TableBackend], after: &[TableBackend], ratio: Ratio) -> (u32, u32) {
        let (t0, t1) = (build(before, ratio, M), build(after, ratio, M));
        let moved = t0.iter().zip(&t1).filter(|(a, b)| a != b).count() as u32;
        let (q0, q1) = (slot_quotas(before, ratio, M), slot_quotas(after, ratio, M));
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
        let (moved, minimum) = disruption(&before, &after, Ratio::new(50).unwrap());
        assert!(minimum > 0);
        assert!(
            moved * MAX_OVERHEAD.1 <= minimum * MAX_OVERHEAD.0,
            "moved {moved} slots, minimum {minimum}"
        );
    }

    #[test]
    fn removing_a_backend_moves_only_its_slots_and_a_few_more() {
        let before: Vec<_> = (0..10).map(|i| backend(i, Pool::Blue, 100)).collect();
        let mut after = before.clone();
        after[7].weight = 0;
        let (moved, minimum) = disruption(&before, &after, Ratio::new(100).unwrap());
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

    #[test]
    fn a_cached_build_is_the_table_built_afresh_with_each_services_ids() {
        let mut cache = TableCache::default();
        let ratio = Ratio::new(37).unwrap();
        let relabelled = |offset: u32| -> Vec<TableBackend> {
            mixed()
                .into_iter()
                .map(|b| TableBackend { id: b.id + offset, ..b })
                .collect()
        };
        for offset in [0, 100, 200] {
            let backends = relabelled(offset);
            assert_eq!(
                cache.build(&backends, ratio, Affinity::None, M),
                build(&backends, ratio, M)
            );
        }
        let mut lighter = relabelled(300);
        lighter[2].weight = 1;
        assert_eq!(
            cache.build(&lighter, ratio, Affinity::None, M),
            build(&lighter, ratio, M)
        );
        let other = Ratio::new(80).unwrap();
        assert_eq!(
            cache.build(&lighter, other, Affinity::None, M),
            build(&lighter, other, M)
        );
        let none = vec![backend(7, Pool::Blue, 0)];
        assert_eq!(cache.build(&none, other, Affinity::None, M), build(&none, other, M));
        // Alternating specs (live, standby) hit their own entries.
        for _ in 0..2 {
            assert_eq!(
                cache.build(&lighter, ratio, Affinity::None, M),
                build(&lighter, ratio, M)
            );
            assert_eq!(
                cache.build(&lighter, other, Affinity::None, M),
                build(&lighter, other, M)
            );
        }
        assert!(cache.tables.len() <= TableCache::ENTRIES);
    }

    /// What several hosts rely on: the same backends, ratio and weights
    /// give the same bytes whatever the order the config lists them in, and
    /// a host that numbers its backends otherwise (its own id history)
    /// still names the same backend in every slot.
    #[test]
    fn hosts_build_byte_identical_tables_from_the_same_backends_listed_in_any_order() {
        let ratio = Ratio::new(37).unwrap();
        let bytes = |table: &[u32]| table.iter().flat_map(|s| s.to_ne_bytes()).collect::<Vec<u8>>();
        let one_host = build(&mixed(), ratio, M);
        let mut reordered = mixed();
        reordered.reverse();
        reordered.swap(1, 4);
        assert_eq!(bytes(&build(&reordered, ratio, M)), bytes(&one_host));
        assert_eq!(
            bytes(&TableCache::default().build(&reordered, ratio, Affinity::None, M)),
            bytes(&one_host)
        );

        let renumbered: Vec<TableBackend> = reordered
            .iter()
            .map(|b| TableBackend {
                id: 40 - b.id,
                ..b.clone()
            })
            .collect();
        let other_host = build(&renumbered, ratio, M);
        let address = |backends: &[TableBackend], id: u32| backends.iter().find(|b| b.id == id).map(|b| b.addr);
        for (slot, (&a, &b)) in one_host.iter().zip(&other_host).enumerate() {
            assert_eq!(address(&mixed(), a), address(&renumbered, b), "slot {slot}");
        }
    }

    /// Hosts of one fleet may run different bg-lb versions during an
    /// upgrade, and must still agree on every slot: the placement of a
    /// given input is fixed across versions (a change to it must be made on
    /// purpose, and said in the release notes). The digest is FNV-1a over
    /// the slots of a 1,000-backend table.
    #[test]
    fn placement_is_the_same_in_every_version() {
        let backends: Vec<TableBackend> = (0..1000)
            .map(|i| backend(i, if i % 3 == 0 { Pool::Green } else { Pool::Blue }, 1 + i % 7))
            .collect();
        let table = build(&backends, Ratio::new(30).unwrap(), M);
        let digest = table.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &slot| {
            slot.to_le_bytes()
                .iter()
                .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
        });
        assert_eq!(digest, 0xc760_76cb_cd7f_51d9, "the placement changed");
    }

    #[test]
    fn building_twice_gives_the_same_table() {
        let ratio = Ratio::new(37).unwrap();
        assert_eq!(build(&mixed(), ratio, M), build(&mixed(), ratio, M));
    }
}
