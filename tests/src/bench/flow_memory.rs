//! Flow-state memory: the kernel's own accounting (`memlock` in a map's
//! fdinfo) of the 1M-entry maps that hold one entry per flow, per family:
//! FLOWS + REVERSE_NAT for IPv4, FLOWS6 + REVERSE_NAT6 for IPv6.

use std::{fmt::Write as _, fs};

use bg_lb::family::Family;
use bg_lb_common::maps::{DEFAULT_MAX_FLOWS, Flow, Flow6, FlowKey, FlowKey6, NatKey, NatKey6, NatOwner, NatOwner6};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct MapMemory {
    pub map: &'static str,
    pub family: Family,
    /// The kernel's id: the same map opened twice by one process is counted
    /// once.
    pub map_id: u64,
    pub map_type: u32,
    pub key_size: u64,
    pub value_size: u64,
    pub max_entries: u64,
    /// The kernel's own accounting (`memlock` in the map's fdinfo).
    pub memlock_bytes: u64,
}

/// The flow maps by their key and value types, which tell them apart (an
/// LRU's value type alone would not: HELD_SEGMENTS6 shares FLOWS6's key).
fn flow_map_of(key_size: u64, value_size: u64) -> Option<(&'static str, Family)> {
    let size = |n: usize| n as u64;
    [
        ("FLOWS", Family::Ipv4, size_of::<FlowKey>(), size_of::<Flow>()),
        ("REVERSE_NAT", Family::Ipv4, size_of::<NatKey>(), size_of::<NatOwner>()),
        ("FLOWS6", Family::Ipv6, size_of::<FlowKey6>(), size_of::<Flow6>()),
        (
            "REVERSE_NAT6",
            Family::Ipv6,
            size_of::<NatKey6>(),
            size_of::<NatOwner6>(),
        ),
    ]
    .into_iter()
    .find(|&(_, _, k, v)| (size(k), size(v)) == (key_size, value_size))
    .map(|(name, family, _, _)| (name, family))
}

/// This process's flow maps, as the kernel accounts them.
pub fn of_this_process() -> Vec<MapMemory> {
    let mut maps: Vec<MapMemory> = fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
        .filter(|e| fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == "anon_inode:bpf-map"))
        .filter_map(|e| fs::read_to_string(format!("/proc/self/fdinfo/{}", e.file_name().to_string_lossy())).ok())
        .filter_map(|info| parse_map_fdinfo(&info))
        .filter(|m| m.max_entries == DEFAULT_MAX_FLOWS as u64)
        .collect();
    maps.sort_by_key(|m| (m.family, m.map, m.map_id));
    maps.dedup_by_key(|m| m.map_id);
    maps
}

/// A flow map's fdinfo; `None` for any other map or a non-map fdinfo.
pub fn parse_map_fdinfo(info: &str) -> Option<MapMemory> {
    let field = |name: &str| -> Option<u64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(|v| v.trim().parse().ok()))?
    };
    let (key_size, value_size) = (field("key_size")?, field("value_size")?);
    let (map, family) = flow_map_of(key_size, value_size)?;
    Some(MapMemory {
        map,
        family,
        map_id: field("map_id")?,
        map_type: field("map_type")? as u32,
        key_size,
        value_size,
        max_entries: field("max_entries")?,
        memlock_bytes: field("memlock")?,
    })
}

/// Bytes of flow state per flow of `family`: its maps' memlock per entry,
/// together. `None` if the family has no flow map here.
pub fn bytes_per_flow(maps: &[MapMemory], family: Family) -> Option<f64> {
    let per_entry = maps
        .iter()
        .filter(|m| m.family == family)
        .map(|m| m.memlock_bytes as f64 / m.max_entries as f64);
    per_entry.reduce(|a, b| a + b)
}

/// MiB of flow state per 1M (1,048,576) flows of `family`.
pub fn mib_per_1m_flows(maps: &[MapMemory], family: Family) -> Option<f64> {
    bytes_per_flow(maps, family).map(|bytes| bytes * 1_048_576.0 / (1 << 20) as f64)
}

/// The table of maps and each family's total, in Markdown.
pub fn render(maps: &[MapMemory]) -> String {
    let mut md =
        "| map (1,048,576 entries) | family | key B | value B | kernel memlock | per entry |\n|---|---|---|---|---|---|\n"
            .to_owned();
    for m in maps {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.1} MiB | {:.0} B |",
            m.map,
            m.family,
            m.key_size,
            m.value_size,
            m.memlock_bytes as f64 / (1 << 20) as f64,
            m.memlock_bytes as f64 / m.max_entries as f64
        );
    }
    for family in [Family::Ipv4, Family::Ipv6] {
        if let (Some(mib), Some(bytes)) = (mib_per_1m_flows(maps, family), bytes_per_flow(maps, family)) {
            let _ = writeln!(
                md,
                "\nFlow state per 1M {family} flows: {mib:.0} MiB ({bytes:.0} bytes per flow)."
            );
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fdinfo(key: usize, value: usize, memlock: u64, id: u64) -> String {
        format!(
            "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t9\nkey_size:\t{key}\n\
             value_size:\t{value}\nmax_entries:\t1048576\nmap_flags:\t0x0\nmap_extra:\t0x0\n\
             memlock:\t{memlock}\nmap_id:\t{id}\nfrozen:\t0\n"
        )
    }

    #[test]
    fn each_flow_map_is_recognised_by_its_key_and_value_sizes() {
        let cases = [
            (size_of::<FlowKey>(), size_of::<Flow>(), "FLOWS", Family::Ipv4),
            (size_of::<NatKey>(), size_of::<NatOwner>(), "REVERSE_NAT", Family::Ipv4),
            (size_of::<FlowKey6>(), size_of::<Flow6>(), "FLOWS6", Family::Ipv6),
            (
                size_of::<NatKey6>(),
                size_of::<NatOwner6>(),
                "REVERSE_NAT6",
                Family::Ipv6,
            ),
        ];
        for (key, value, name, family) in cases {
            let m = parse_map_fdinfo(&fdinfo(key, value, 109_051_904, 42)).unwrap();
            assert_eq!((m.map, m.family), (name, family));
            assert_eq!(
                (m.map_type, m.max_entries, m.memlock_bytes, m.map_id),
                (9, 1_048_576, 109_051_904, 42)
            );
        }
    }

    #[test]
    fn other_maps_and_non_map_fdinfo_are_not_flow_maps() {
        assert!(parse_map_fdinfo(&fdinfo(3, 5, 4096, 1)).is_none());
        assert!(parse_map_fdinfo("pos:\t0\nflags:\t02\n").is_none());
    }

    #[test]
    fn each_family_sums_only_its_own_maps() {
        let maps: Vec<MapMemory> = [
            fdinfo(size_of::<FlowKey>(), size_of::<Flow>(), 100 << 20, 1),
            fdinfo(size_of::<NatKey>(), size_of::<NatOwner>(), 50 << 20, 2),
            fdinfo(size_of::<NatKey6>(), size_of::<NatOwner6>(), 150 << 20, 3),
        ]
        .iter()
        .filter_map(|i| parse_map_fdinfo(i))
        .collect();
        assert_eq!(mib_per_1m_flows(&maps, Family::Ipv4), Some(150.0));
        assert_eq!(mib_per_1m_flows(&maps, Family::Ipv6), Some(150.0));
        assert_eq!(mib_per_1m_flows(&maps[..2], Family::Ipv6), None);
    }
}
