//! Which next hop the host's routing table gives an address, read from
//! `/proc/net/route` (IPv4's main table) or `/proc/net/ipv6_route`: a
//! `dsr` backend must be on-link, since only its MAC is rewritten. (Policy routing is not consulted; the data plane's
//! `bpf_fib_lookup` is the per-packet judge and counts what it cannot
//! reach, `dsr_not_on_link`.)

use std::{
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// How the main table reaches an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextHop {
    /// On a connected network: the address itself.
    OnLink,
    /// Through this router.
    Via(IpAddr),
    /// No route.
    Unreachable,
}

/// The routing table's next hop for `addr`, from the kernel's table now.
pub fn next_hop(addr: IpAddr) -> io::Result<NextHop> {
    Ok(match addr {
        IpAddr::V4(addr) => next_hop_in(&fs::read_to_string("/proc/net/route")?, addr),
        IpAddr::V6(addr) => next_hop6_in(&fs::read_to_string("/proc/net/ipv6_route")?, addr),
    })
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
        Some((_, gateway)) => NextHop::Via(gateway.into()),
    }
}

/// A route that answers "unreachable" (`RTF_REJECT`): the kernel lists the
/// default one IPv6 has without any other.
const RTF_REJECT: u32 = 0x0200;

/// The longest matching prefix's next hop in `table` (`/proc/net/ipv6_route`'s
/// text, every table's routes: destination, its prefix length, source and
/// its length, next hop, metric, counts, flags, device, in hex). A line
/// that does not parse is skipped.
pub fn next_hop6_in(table: &str, addr: Ipv6Addr) -> NextHop {
    let address = |field: &str| u128::from_str_radix(field, 16).ok().filter(|_| field.len() == 32);
    let best = table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let destination = address(fields.first()?)?;
            let prefix = u32::from_str_radix(fields.get(1)?, 16).ok().filter(|p| *p <= 128)?;
            let gateway = address(fields.get(4)?)?;
            let flags = u32::from_str_radix(fields.get(8)?, 16).ok()?;
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            (u128::from(addr) & mask == destination & mask).then_some((prefix, gateway, flags))
        })
        .max_by_key(|(prefix, ..)| *prefix);
    match best {
        None => NextHop::Unreachable,
        Some((.., flags)) if flags & RTF_REJECT != 0 => NextHop::Unreachable,
        Some((_, 0, _)) => NextHop::OnLink,
        Some((_, gateway, _)) => NextHop::Via(Ipv6Addr::from(gateway).into()),
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
            NextHop::Via(Ipv4Addr::new(10, 0, 0, 50).into())
        );
        assert_eq!(
            next_hop_in(&table, Ipv4Addr::new(192, 0, 2, 1)),
            NextHop::Via(Ipv4Addr::new(10, 0, 0, 254).into()),
            "the default route"
        );
        assert_eq!(
            next_hop_in("header only\n", Ipv4Addr::new(10, 0, 0, 1)),
            NextHop::Unreachable
        );
    }

    /// fd00::/64 connected, fd01::/48 through fd00::50, a default route via
    /// fe80::1, and the reject route a table ends with, as the kernel prints
    /// them.
    const IPV6_TABLE: &str = "\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
fd010000000000000000000000000000 30 00000000000000000000000000000000 00 fd000000000000000000000000000050 00000400 00000001 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000003 00000000 00000003     eth0
fd020000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
garbage line
";

    #[test]
    fn the_longest_ipv6_prefix_decides_whether_an_address_is_on_link() {
        let hop = |addr: &str| next_hop6_in(IPV6_TABLE, addr.parse().unwrap());
        assert_eq!(hop("fd00::11"), NextHop::OnLink);
        assert_eq!(hop("fd01:0:0:5::1"), NextHop::Via("fd00::50".parse().unwrap()));
        assert_eq!(
            hop("2001:db8::1"),
            NextHop::Via("fe80::1".parse().unwrap()),
            "the default route"
        );
        assert_eq!(hop("fd02::1"), NextHop::Unreachable, "a reject route");
        assert_eq!(next_hop6_in("", "fd00::1".parse().unwrap()), NextHop::Unreachable);
    }
}
