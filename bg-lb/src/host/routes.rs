//! Which next hop the host's main routing table gives an address, read from
//! `/proc/net/route`: a `dsr` backend must be on-link, since only its MAC
//! is rewritten. (Policy routing is not consulted; the data plane's
//! `bpf_fib_lookup` is the per-packet judge and counts what it cannot
//! reach, `dsr_not_on_link`.)

use std::{fs, io, net::Ipv4Addr};

/// How the main table reaches an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextHop {
    /// On a connected network: the address itself.
    OnLink,
    /// Through this router.
    Via(Ipv4Addr),
    /// No route.
    Unreachable,
}

/// The main table's next hop for `addr`, from the kernel's table now.
pub fn next_hop(addr: Ipv4Addr) -> io::Result<NextHop> {
    Ok(next_hop_in(&fs::read_to_string("/proc/net/route")?, addr))
}

/// The longest matching prefix's next hop in `table` (`/proc/net/route`'s
/// text: addresses as the kernel's `%08X` of a network-order word, so read
/// back in the host's byte order). A line that does not parse is skipped.
pub fn next_hop_in(table: &str, addr: Ipv4Addr) -> NextHop {
    let word = |field: &str| {
        u32::from_str_radix(field, 16)
            .ok()
            .map(|w| Ipv4Addr::from(w.to_ne_bytes()))
    };
    let best = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (destination, gateway, mask) = (word(fields.get(1)?)?, word(fields.get(2)?)?, word(fields.get(7)?)?);
            let mask_bits = u32::from(mask);
            (u32::from(addr) & mask_bits == u32::from(destination) & mask_bits)
                .then_some((mask_bits.count_ones(), gateway))
        })
        .max_by_key(|(prefix, _)| *prefix);
    match best {
        None => NextHop::Unreachable,
        Some((_, gateway)) if gateway.is_unspecified() => NextHop::OnLink,
        Some((_, gateway)) => NextHop::Via(gateway),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A default route via 10.0.0.254, 10.0.0.0/24 connected, and
    /// 10.1.0.0/16 through 10.0.0.50, as the kernel prints them (in a
    /// little-endian host's order).
    fn table() -> String {
        let hex = |a: Ipv4Addr| format!("{:08X}", u32::from_ne_bytes(a.octets()));
        let line = |dest: [u8; 4], gw: [u8; 4], mask: [u8; 4]| {
            format!(
                "eth0\t{}\t{}\t0003\t0\t0\t0\t{}\t0\t0\t0\n",
                hex(dest.into()),
                hex(gw.into()),
                hex(mask.into())
            )
        };
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n".to_owned()
            + &line([0; 4], [10, 0, 0, 254], [0; 4])
            + &line([10, 0, 0, 0], [0; 4], [255, 255, 255, 0])
            + &line([10, 1, 0, 0], [10, 0, 0, 50], [255, 255, 0, 0])
            + "garbage line\n"
    }

    #[test]
    fn the_longest_prefix_decides_whether_an_address_is_on_link() {
        let table = table();
        assert_eq!(next_hop_in(&table, Ipv4Addr::new(10, 0, 0, 11)), NextHop::OnLink);
        assert_eq!(
            next_hop_in(&table, Ipv4Addr::new(10, 1, 2, 3)),
            NextHop::Via(Ipv4Addr::new(10, 0, 0, 50))
        );
        assert_eq!(
            next_hop_in(&table, Ipv4Addr::new(192, 0, 2, 1)),
            NextHop::Via(Ipv4Addr::new(10, 0, 0, 254)),
            "the default route"
        );
        assert_eq!(
            next_hop_in("header only\n", Ipv4Addr::new(10, 0, 0, 1)),
            NextHop::Unreachable
        );
    }
}
