//! SNAT (address, port) candidates. The data plane tries candidates in order
//! and claims the first whose reverse-NAT entry it can insert with
//! `BPF_NOEXIST`, which makes allocation collision-free even across CPUs.
//!
//! The pairs of all addresses form one space of `addresses x ports` slots,
//! numbered so that neighbours differ in address (slot `s` is address
//! `s % addresses`, port `s / addresses`). Probing from a hashed slot in
//! even strides (see [`stride`]) spreads flows over every address and port,
//! keeps a flow's candidates distinct (every pair, in a space smaller than
//! the candidates), and moves on to another address at once when one
//! address's port is taken.

/// Candidates tried per new flow before giving up (bounded for the verifier).
/// 32: when backends close first, a port in TIME_WAIT takes a SYN from
/// another client about half the time (`crate::port_reuse`), so with most
/// ports in TIME_WAIT, 16 candidates still left one SYN in a few thousand
/// without a port; 32 leave about one in 10^8.
pub const SNAT_PORT_ATTEMPTS: u32 = 32;

/// Candidate `attempt` (0-based) for a flow hashing to `hash`: the index of
/// its address (below `addresses`) and its port in host byte order within
/// `min..=max`. An empty or inverted range, or no address, gives `(0, min)`:
/// userspace config validation forbids both.
#[inline(always)]
pub const fn candidate(hash: u32, attempt: u32, addresses: u32, min: u16, max: u16) -> (u32, u16) {
    if max < min || addresses == 0 {
        return (0, min);
    }
    // At most 2^16 ports times 2^16 addresses would overflow; userspace
    // allows 16 addresses, so `slots` stays below 2^21.
    let slots = addresses.saturating_mul((max - min) as u32 + 1);
    // checked_rem: a plain `%` would keep a panic branch the verifier rejects.
    let (Some(start), Some(step)) = (hash.checked_rem(slots), attempt.checked_mul(stride(slots, addresses))) else {
        return (0, min);
    };
    let Some(step) = step.checked_rem(slots) else {
        return (0, min);
    };
    // Both below `slots` < 2^32 / 2: the sum cannot wrap.
    let Some(slot) = (start + step).checked_rem(slots) else {
        return (0, min);
    };
    match (slot.checked_rem(addresses), slot.checked_div(addresses)) {
        (Some(address), Some(port)) => (address, min + port as u16),
        _ => (0, min),
    }
}

/// Slots between one candidate and the next. Linear probing (a stride of
/// one) walks through runs of pairs that recent flows took, and while a
/// backend's closed connections sit in TIME_WAIT most pairs are taken for a
/// while: the runs grow, and a SYN whose 32 neighbours are all taken finds
/// no pair although most of the space is free. A space large enough is
/// therefore crossed in even strides, one slot more than a multiple of the
/// address count (so the next candidate is on another address), short
/// enough that the candidates never wrap onto each other: they stay
/// distinct. A small space is probed linearly, every pair in turn.
#[inline(always)]
const fn stride(slots: u32, addresses: u32) -> u32 {
    if slots < 32 * SNAT_PORT_ATTEMPTS {
        return 1;
    }
    match (slots / SNAT_PORT_ATTEMPTS).checked_div(addresses) {
        Some(per_address) => per_address * addresses + 1,
        None => 1,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn candidates_stay_inside_the_configured_addresses_and_range() {
        for addresses in [1, 2, 3, 16] {
            for hash in [0, 1, 12345, u32::MAX - 3, u32::MAX] {
                for attempt in 0..SNAT_PORT_ATTEMPTS {
                    let (address, port) = candidate(hash, attempt, addresses, 20000, 29999);
                    assert!(address < addresses);
                    assert!((20000..=29999).contains(&port));
                }
            }
        }
        assert_eq!(candidate(77, 3, 1, 40000, 40000), (0, 40000));
        assert_eq!(candidate(77, 3, 0, 40000, 40010), (0, 40000));
    }

    #[test]
    fn attempts_give_distinct_pairs_until_every_pair_is_used_up() {
        for addresses in [1, 2, 3, 16] {
            let pairs: HashSet<_> = (0..SNAT_PORT_ATTEMPTS)
                .map(|a| candidate(u32::MAX, a, addresses, 1000, 1999))
                .collect();
            assert_eq!(pairs.len(), SNAT_PORT_ATTEMPTS as usize);
        }
        // Fewer pairs than attempts: every pair comes up.
        for (addresses, hash) in [(1, 9), (2, 9), (3, u32::MAX), (3, 7)] {
            let tiny: HashSet<_> = (0..SNAT_PORT_ATTEMPTS)
                .map(|a| candidate(hash, a, addresses, 1000, 1003))
                .collect();
            assert_eq!(tiny.len(), 4 * addresses as usize, "{addresses} addresses, hash {hash}");
        }
    }

    #[test]
    fn candidates_of_a_large_space_are_spread_over_all_of_it_and_distinct() {
        for (addresses, max) in [(1, 29999), (3, 29999), (16, 65535), (1, 21023)] {
            let slots = addresses * (u32::from(max) - 20000 + 1);
            let pairs: Vec<_> = (0..SNAT_PORT_ATTEMPTS)
                .map(|a| candidate(7, a, addresses, 20000, max))
                .collect();
            let distinct: HashSet<_> = pairs.iter().collect();
            assert_eq!(distinct.len(), pairs.len(), "{addresses} addresses up to {max}");
            // Neighbouring candidates are far apart: not a run of taken ports.
            let ports: HashSet<_> = pairs.iter().map(|&(_, p)| p).collect();
            let spread = ports.iter().max().unwrap() - ports.iter().min().unwrap();
            assert!(
                u32::from(spread) * addresses > slots / 2,
                "{addresses} addresses up to {max}: spread {spread}"
            );
        }
    }

    #[test]
    fn a_taken_candidate_is_followed_by_another_address() {
        for attempt in 0..SNAT_PORT_ATTEMPTS - 1 {
            let (first, _) = candidate(4242, attempt, 4, 20000, 29999);
            let (next, _) = candidate(4242, attempt + 1, 4, 20000, 29999);
            assert_ne!(first, next);
        }
    }

    #[test]
    fn first_candidates_spread_over_every_address_and_the_whole_range() {
        let addresses = 3;
        let firsts: Vec<_> = (0..60_000u32)
            .map(|h| candidate(h.wrapping_mul(2_654_435_761), 0, addresses, 20000, 29999))
            .collect();
        for address in 0..addresses {
            let on_it = firsts.iter().filter(|(a, _)| *a == address).count();
            // 20,000 each if even; allow 10% either way.
            assert!(
                (18_000..=22_000).contains(&on_it),
                "address {address} got {on_it} of 60000"
            );
        }
        let distinct: HashSet<_> = firsts.iter().collect();
        assert!(distinct.len() > 20_000, "only {} distinct first pairs", distinct.len());
        let ports: HashSet<_> = firsts.iter().map(|(_, p)| p).collect();
        assert!(ports.len() > 9_900, "only {} distinct first ports", ports.len());
    }
}
