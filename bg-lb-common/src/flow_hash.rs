//! The flow hash that maps a client 5-tuple to a pool and a lookup-table
//! slot and to its first SNAT port candidate, and the client hash that
//! picks the pool and slot instead under client affinity. They must be identical in the data plane
//! and in userspace, so they live here. Murmur3's finaliser gives good
//! avalanche with only 32-bit multiplies, which BPF has.
//!
//! Generic over the address family: an address is mixed in a 32-bit word
//! at a time, so an IPv4 key hashes exactly as it always has and an IPv6
//! key over all eight of its words.

use crate::maps::{FlowKeyOf, POOL_SHARE_SCALE, SERVICE_AFFINITY_CLIENT_IP, Service, WireAddr, table_offset};

const SEED: u32 = 0x9e37_79b9;

#[inline(always)]
const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// `h` with each of `addr`'s words mixed in.
#[inline(always)]
fn mix_addr<A: WireAddr>(h: u32, addr: &A) -> u32 {
    addr.fold(h, |h, word| fmix32(h ^ word))
}

#[inline(always)]
pub fn flow_hash<A: WireAddr>(key: &FlowKeyOf<A>) -> u32 {
    let ports = ((key.client_port as u32) << 16) | key.vip_port as u32;
    let mut h = fmix32(SEED ^ key.proto as u32);
    h = mix_addr(h, &key.client_addr);
    h = mix_addr(h, &key.vip_addr);
    fmix32(h ^ ports)
}

/// A client address's hash (wire order in): its point on the table under
/// client affinity. Seeded apart from [`flow_hash`].
#[inline(always)]
pub fn client_hash<A: WireAddr>(client_addr: A) -> u32 {
    mix_addr(fmix32(SEED ^ 0x6c62_272e), &client_addr)
}

/// Where a new flow's pool point lies, in `[0, POOL_SHARE_SCALE)`: it
/// picks the pool against [`Service::blue_share`]. Remixed from the slot's
/// hash so that, within its pool, a flow's slot is independent of its
/// point, and every backend keeps its weight's share of its pool.
#[inline(always)]
pub const fn pool_point(hash: u32) -> u32 {
    ((fmix32(hash ^ 0x2545_f491) >> 16) * POOL_SHARE_SCALE) >> 16
}

/// The slot, counted from `lut_base`, that a new flow whose 5-tuple hashes
/// to `hash` reads: in blue's table below the service's blue share, else in
/// green's, in the buffer the service's flags name for that pool, at the
/// hash's slot. Under client affinity the client address's hash replaces
/// the flow's, so every connection of a client reads the same slot, and
/// raising blue's share moves clients only from green to blue (bg-lb's
/// `affinity`). `None` for tables of no slots.
#[inline(always)]
pub fn table_slot<A: WireAddr>(key: &FlowKeyOf<A>, hash: u32, service: &Service) -> Option<u32> {
    let hash = if service.flags & SERVICE_AFFINITY_CLIENT_IP != 0 {
        client_hash(key.client_addr)
    } else {
        hash
    };
    let slot = hash.checked_rem(service.lut_size)?;
    let pool = (pool_point(hash) >= service.blue_share as u32) as u32;
    Some(slot + table_offset(pool, service.active_buffer(pool), service.lut_size))
}

#[cfg(test)]
mod tests {
    use core::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

    use super::*;
    use crate::maps::{FlowKey, FlowKey6, second_buffer_flag};

    fn key(port: u16) -> FlowKey {
        FlowKey::from_client(
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), port),
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 80),
        )
    }

    #[test]
    fn flow_hash_spreads_sequential_client_ports_evenly() {
        // 60k sequential source ports into 101 buckets: each within 10% of fair.
        let buckets = 101u32;
        let mut counts = vec![0u32; buckets as usize];
        for p in 0..60_000u16 {
            counts[(flow_hash(&key(p)) % buckets) as usize] += 1;
        }
        let fair = 60_000 / buckets;
        for c in counts {
            assert!(c.abs_diff(fair) < fair / 10, "bucket {c} vs fair {fair}");
        }
    }

    #[test]
    fn ipv4_hashes_are_the_ones_before_ipv6() {
        // Computed with the IPv4-only functions this crate had before its
        // map types became generic: a pinned flow's slot and SNAT
        // candidates must not move across the upgrade.
        fn old_flow_hash(key: &FlowKey) -> u32 {
            let ports = ((key.client_port as u32) << 16) | key.vip_port as u32;
            let mut h = fmix32(SEED ^ key.proto as u32);
            h = fmix32(h ^ key.client_addr);
            h = fmix32(h ^ key.vip_addr);
            fmix32(h ^ ports)
        }
        for port in [0, 1, 1000, 40000, 65535] {
            let k = key(port);
            assert_eq!(flow_hash(&k), old_flow_hash(&k));
            assert_eq!(
                client_hash(k.client_addr),
                fmix32(fmix32(SEED ^ 0x6c62_272e) ^ k.client_addr)
            );
        }
    }

    #[test]
    fn an_ipv6_flow_hash_depends_on_every_address_word() {
        let client = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5), 40000, 0, 0);
        let vip = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100), 80, 0, 0);
        let base = FlowKey6::from_client(client, vip);
        let h = flow_hash(&base);
        let c = client_hash(base.client_addr);
        for word in 0..4 {
            let mut other = base;
            other.client_addr[word] ^= 1;
            assert_ne!(h, flow_hash(&other), "client word {word}");
            assert_ne!(c, client_hash(other.client_addr), "client word {word}");
            let mut other = base;
            other.vip_addr[word] ^= 1;
            assert_ne!(h, flow_hash(&other), "VIP word {word}");
        }
    }

    #[test]
    fn flow_hash_depends_on_every_field() {
        let base = key(1000);
        let h = flow_hash(&base);
        assert_ne!(
            h,
            flow_hash(&FlowKey {
                client_addr: base.client_addr ^ 1,
                ..base
            })
        );
        assert_ne!(
            h,
            flow_hash(&FlowKey {
                vip_addr: base.vip_addr ^ 1,
                ..base
            })
        );
        assert_ne!(
            h,
            flow_hash(&FlowKey {
                client_port: base.client_port ^ 1,
                ..base
            })
        );
        assert_ne!(
            h,
            flow_hash(&FlowKey {
                vip_port: base.vip_port ^ 1,
                ..base
            })
        );
        assert_ne!(h, flow_hash(&FlowKey { proto: 17, ..base }));
    }

    const ALL_BLUE: u16 = POOL_SHARE_SCALE as u16;

    #[test]
    fn an_affinity_service_picks_the_slot_by_client_address_alone() {
        let plain = Service {
            lut_size: 65537,
            blue_share: ALL_BLUE,
            ..Service::default()
        };
        let affine = Service {
            flags: SERVICE_AFFINITY_CLIENT_IP,
            ..plain
        };
        let slot = |key: &FlowKey, service: &Service| table_slot(key, flow_hash(key), service);
        let (a, b) = (key(1000), key(1001));
        assert_eq!(slot(&a, &affine), slot(&b, &affine));
        assert_eq!(slot(&a, &affine), Some(client_hash(a.client_addr) % 65537));
        assert_ne!(slot(&a, &plain), slot(&b, &plain));
        assert_eq!(slot(&a, &plain), Some(flow_hash(&a) % 65537));
        let other_client = FlowKey {
            client_addr: a.client_addr ^ 1,
            ..a
        };
        assert_ne!(slot(&a, &affine), slot(&other_client, &affine));
        assert_eq!(table_slot(&a, 7, &Service::default()), None);
    }

    #[test]
    fn a_new_flow_reads_blues_table_below_the_blue_share_and_greens_at_the_same_slot_above() {
        const M: u32 = 1009;
        let service = |blue_share, flags| Service {
            lut_size: M,
            blue_share,
            flags,
            ..Service::default()
        };
        let (blue_second, green_second) = (second_buffer_flag(0), second_buffer_flag(1));
        for port in 0..2000 {
            let (k, h) = (key(port), flow_hash(&key(port)));
            let slot = h % M;
            assert_eq!(table_slot(&k, h, &service(ALL_BLUE, 0)), Some(slot));
            assert_eq!(table_slot(&k, h, &service(ALL_BLUE, blue_second)), Some(slot + M));
            assert_eq!(table_slot(&k, h, &service(ALL_BLUE, green_second)), Some(slot));
            assert_eq!(table_slot(&k, h, &service(0, 0)), Some(slot + 2 * M));
            assert_eq!(table_slot(&k, h, &service(0, green_second)), Some(slot + 3 * M));
            let blue = pool_point(h) < 3000;
            let expected = if blue { slot } else { slot + 2 * M };
            assert_eq!(table_slot(&k, h, &service(3000, 0)), Some(expected));
        }
    }

    #[test]
    fn blues_share_of_new_flows_is_its_share_and_raising_it_moves_flows_only_to_blue() {
        let points: Vec<u32> = (0..60_000u16).map(|p| pool_point(flow_hash(&key(p)))).collect();
        assert!(points.iter().all(|&p| p < POOL_SHARE_SCALE));
        let mut blue_before = vec![false; points.len()];
        for share in (0..=POOL_SHARE_SCALE).step_by(500) {
            let blue: Vec<bool> = points.iter().map(|&p| p < share).collect();
            let count = blue.iter().filter(|&&b| b).count() as u32;
            let expected = 60_000 * share / POOL_SHARE_SCALE;
            assert!(count.abs_diff(expected) <= 600, "share {share}: {count} of 60000 blue");
            assert!(
                blue_before.iter().zip(&blue).all(|(&before, &now)| !before || now),
                "share {share} moved a flow from blue to green"
            );
            blue_before = blue;
        }
    }

    #[test]
    fn within_a_pool_its_flows_read_every_part_of_its_table_evenly() {
        // The point and the slot come from one hash. Were the point the
        // slot's position (as when one table held both pools), a quarter
        // share would read only the first quarter of blue's table.
        let size = 1009;
        let mut quarters = [0u32; 4];
        for h in (0..60_000u16).map(|p| flow_hash(&key(p))) {
            if pool_point(h) < POOL_SHARE_SCALE / 4 {
                quarters[(h % size * 4 / size) as usize] += 1;
            }
        }
        let fair = quarters.iter().sum::<u32>() / 4;
        for n in quarters {
            assert!(n.abs_diff(fair) < fair / 10, "quarters {quarters:?}");
        }
    }

    #[test]
    fn client_hash_spreads_sequential_addresses_evenly() {
        let buckets = 101u32;
        let mut counts = vec![0u32; buckets as usize];
        for host in 0..60_000u32 {
            let addr = (u32::from_be_bytes([10, 0, 0, 0]) + host).to_be();
            counts[(client_hash(addr) % buckets) as usize] += 1;
        }
        let fair = 60_000 / buckets;
        for c in counts {
            assert!(c.abs_diff(fair) < fair / 10, "bucket {c} vs fair {fair}");
        }
    }
}
