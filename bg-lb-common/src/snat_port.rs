//! SNAT (address, port) candidates. The data plane tries candidates in order
//! and claims the first whose reverse-NAT entry it can insert with
//! `BPF_NOEXIST`, which makes allocation collision-free even across CPUs.
//!
//! The pairs of all addresses form one space of `addresses x ports` slots,
//! numbered so that neighbours differ in address (slot `s` is address
//! `s % addresses`, port `s / addresses`). Probing from a hashed slot in
//! even strides, the stride hashed too (see [`stride`]), spreads flows over
//! every address and port, keeps a flow's candidates distinct (every pair,
//! in a space smaller than the candidates), and moves on to another address
//! at once when one address's port is taken.

/// Candidates tried per new flow before giving up (bounded for the verifier).
/// 64: when backends close first, nearly every port of a busy backend sits
/// in its TIME_WAIT, which takes a SYN from another client about half the
/// time (`crate::port_reuse`), and the ports a client's SYN may take are
/// not spread evenly (they are those whose last client's timestamps are
/// behind its own). The churn test with 32 candidates in one stride for all
/// flows left one SYN in 1.2 million without a port; so does the model of
/// it below (600,000 SYNs), where hashed strides ([`stride`]) need up to 30
/// of 32 candidates, one stride with 64 up to 30, and both at most 20.
pub const SNAT_PORT_ATTEMPTS: u32 = 64;

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
    // `attempt` is below 64 and a stride below 2^16: the product cannot
    // wrap. The hash is added whole, in 64 bits (one value fewer for the
    // data plane to keep across its candidate loop than a reduced start).
    // checked_rem: a plain `%` would keep a panic branch the verifier rejects.
    let Some(step) = attempt.wrapping_mul(stride(hash, slots, addresses)).checked_rem(slots) else {
        return (0, min);
    };
    let Some(slot) = (hash as u64 + step as u64).checked_rem(slots as u64) else {
        return (0, min);
    };
    // Below `slots`, which is a u32.
    let slot = slot as u32;
    match (slot.checked_rem(addresses), slot.checked_div(addresses)) {
        (Some(address), Some(port)) => (address, min + port as u16),
        _ => (0, min),
    }
}

/// Slots between one candidate and the next, for a flow hashing to `hash`.
/// Linear probing (a stride of one) walks through runs of pairs that recent
/// flows took, and while a backend's closed connections sit in TIME_WAIT
/// most pairs are taken for a while: the runs grow, and a SYN whose
/// neighbours are all taken finds no pair although most of the space is
/// free. A space large enough is therefore crossed in even strides, one slot
/// more than a multiple of the address count (so the next candidate is on
/// another address), short enough that the candidates never wrap onto each
/// other: they stay distinct. One stride for every flow would still be
/// linear probing, in another order: runs would form along it. So the
/// stride is hashed too, from two thirds of the longest to the longest
/// (double hashing): flows whose first candidates meet go different ways
/// from there. A small space is probed linearly, every pair in turn.
#[inline(always)]
const fn stride(hash: u32, slots: u32, addresses: u32) -> u32 {
    if slots < SNAT_PORT_ATTEMPTS * SNAT_PORT_ATTEMPTS {
        return 1;
    }
    let Some(longest) = (slots / SNAT_PORT_ATTEMPTS).checked_div(addresses) else {
        return 1;
    };
    // Up to a third shorter, by other bits of the hash than the start's
    // (Fibonacci hashing mixes them all into the top 16).
    let mixed = hash.wrapping_mul(0x9e37_79b1) >> 16;
    match mixed.checked_rem(longest / 3 + 1) {
        Some(extra) => (longest - extra) * addresses + 1,
        None => 1,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::{
        flow_state::{BACKEND_CLOSED_FIRST, CLIENT_TIMESTAMPS, ESTABLISHED, FIN_FROM_BACKEND, FIN_FROM_CLIENT},
        maps::{Flow, SeqState},
        port_reuse::{Syn, reusable},
        test_support::xorshift,
    };

    /// The churn of `tests/tests/port_lifecycle_root.rs` with hundreds of
    /// clients, modelled: 200 client addresses (each its own TCP timestamp
    /// offset), 5,000 SYNs a second for two minutes on the example's 10,000
    /// ports, each connection 3 ms long and closed by the backend first, so
    /// that every port sits in the backend's TIME_WAIT and a SYN may take
    /// it only by Linux's rule ([`reusable`]). Every SYN finds a port, with
    /// candidates to spare.
    #[test]
    fn hundreds_of_clients_find_ports_while_every_port_is_in_time_wait() {
        const MS: u64 = 1_000_000;
        let mut random = xorshift(0x6c62_0013);
        let offsets: Vec<u32> = random.by_ref().take(200).collect();
        let mut owners: Vec<Option<Flow>> = vec![None; 10_000];
        let mut deepest = 0;
        for n in 0..600_000u64 {
            let now = n * 200_000;
            let tsval = offsets[n as usize % offsets.len()].wrapping_add((now / MS) as u32);
            let (hash, isn) = (random.next().unwrap(), random.next().unwrap());
            let syn = Syn::new(isn, Some(tsval));
            let found = (0..SNAT_PORT_ATTEMPTS).find_map(|attempt| {
                let (_, port) = candidate(hash, attempt, 1, 20000, 29999);
                let slot = usize::from(port - 20000);
                reusable(owners[slot].as_ref(), &syn, now).then_some((attempt, slot))
            });
            let Some((attempt, slot)) = found else {
                panic!("SYN {n} found no port");
            };
            deepest = deepest.max(attempt);
            owners[slot] = Some(Flow {
                state: ESTABLISHED | FIN_FROM_BACKEND | FIN_FROM_CLIENT | BACKEND_CLOSED_FIRST | CLIENT_TIMESTAMPS,
                last_seen_ns: now + 3 * MS,
                client_tsval: tsval.wrapping_add(3),
                // SYN, "hello\n", FIN.
                client: SeqState {
                    end: isn.wrapping_add(8),
                    ack: 0,
                },
                ..Flow::default()
            });
        }
        assert!(
            deepest < SNAT_PORT_ATTEMPTS * 3 / 4,
            "a SYN needed {deepest} of {SNAT_PORT_ATTEMPTS} candidates"
        );
    }

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
        for (addresses, max) in [(1, 29999), (3, 29999), (16, 65535), (1, 24095)] {
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
    fn flows_whose_first_candidates_meet_part_ways_after_it() {
        let slots = 10_000;
        let mut same_second = 0;
        for k in 1..=100u32 {
            // Same first candidate, other hashes.
            let (a, b) = (7, 7 + k * slots);
            assert_eq!(candidate(a, 0, 1, 20000, 29999), candidate(b, 0, 1, 20000, 29999));
            same_second += u32::from(candidate(a, 1, 1, 20000, 29999) == candidate(b, 1, 1, 20000, 29999));
        }
        assert!(same_second <= 10, "{same_second} of 100 took the same way");
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
