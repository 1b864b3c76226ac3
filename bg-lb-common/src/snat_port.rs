//! SNAT source-port candidates. The data plane tries candidates in order and
//! claims the first whose reverse-NAT entry it can insert with `BPF_NOEXIST`,
//! which makes allocation collision-free even across CPUs. Linear probing from
//! a hashed start spreads flows over the range and guarantees the first
//! `span` candidates are distinct.

/// Candidates tried per new flow before giving up (bounded for the verifier).
/// 32: when backends close first, a port in TIME_WAIT takes a SYN from
/// another client about half the time (`crate::port_reuse`), so with most
/// ports in TIME_WAIT, 16 candidates still left one SYN in a few thousand
/// without a port; 32 leave about one in 10^8.
pub const SNAT_PORT_ATTEMPTS: u32 = 32;

/// Candidate `attempt` (0-based) for a flow hashing to `hash`, in host byte
/// order within `min..=max`. Returns `min` for an empty or inverted range,
/// which userspace config validation forbids.
#[inline(always)]
pub const fn candidate(hash: u32, attempt: u32, min: u16, max: u16) -> u16 {
    if max < min {
        return min;
    }
    let span = (max - min) as u32 + 1;
    // checked_rem: a plain `%` would keep a panic branch the verifier rejects.
    match hash.wrapping_add(attempt).checked_rem(span) {
        Some(offset) => min + offset as u16,
        None => min,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn candidates_stay_inside_the_configured_range() {
        for hash in [0, 1, 12345, u32::MAX - 3, u32::MAX] {
            for attempt in 0..SNAT_PORT_ATTEMPTS {
                let p = candidate(hash, attempt, 20000, 29999);
                assert!((20000..=29999).contains(&p));
            }
        }
        assert_eq!(candidate(77, 3, 40000, 40000), 40000);
    }

    #[test]
    fn attempts_give_distinct_ports_until_the_range_is_used_up() {
        let ports: HashSet<_> = (0..SNAT_PORT_ATTEMPTS)
            .map(|a| candidate(u32::MAX, a, 1000, 1999))
            .collect();
        assert_eq!(ports.len(), SNAT_PORT_ATTEMPTS as usize);
        let tiny: HashSet<_> = (0..SNAT_PORT_ATTEMPTS).map(|a| candidate(9, a, 1000, 1003)).collect();
        assert_eq!(tiny.len(), 4);
    }

    #[test]
    fn first_candidates_spread_over_the_whole_range() {
        let firsts: HashSet<_> = (0..50_000u32)
            .map(|h| candidate(h.wrapping_mul(2_654_435_761), 0, 20000, 29999))
            .collect();
        assert!(firsts.len() > 9_900, "only {} distinct first ports", firsts.len());
    }
}
