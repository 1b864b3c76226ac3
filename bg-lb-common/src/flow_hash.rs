//! The flow hash that maps a client 5-tuple to a lookup-table slot and to its
//! first SNAT port candidate. It must be identical in the data plane and in
//! userspace tests, so it lives here. Murmur3's finaliser gives good avalanche
//! with only 32-bit multiplies, which BPF has.

use crate::maps::FlowKey;

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

#[inline(always)]
pub const fn flow_hash(key: &FlowKey) -> u32 {
    let ports = ((key.client_port as u32) << 16) | key.vip_port as u32;
    let mut h = fmix32(SEED ^ key.proto as u32);
    h = fmix32(h ^ key.client_addr);
    h = fmix32(h ^ key.vip_addr);
    fmix32(h ^ ports)
}

#[cfg(test)]
mod tests {
    use core::net::{Ipv4Addr, SocketAddrV4};

    use super::*;

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
}
