//! Whether a previous bg-lb's pinned maps can be adopted. aya reuses any map
//! pinned at a path, whatever its definition, so before loading, every
//! pinned map's type, key and value sizes, capacity and flags are compared
//! with this build's object (read from the object itself, so no table here
//! can fall out of step with bg-lb-common), and the pinned layout version
//! ([`maps::LAYOUT`]) with a hash of every map's definition. A pinned map
//! that differs only in a capacity set from the config (`max_flows`) is
//! migrated (see [`migration`]); any other difference refuses the adoption.

use std::{collections::BTreeMap, fmt, path::PathBuf};

use aya::maps::MapType;
use aya_obj::generated::{BPF_F_RDONLY_PROG, bpf_map_type};
use bg_lb_common::maps;

use super::migration;

/// A map's definition as the kernel holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDef {
    /// `bpf_map_type`.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapDef {
    /// Whether this is `other` but for its capacity.
    fn resized_from(&self, other: &MapDef) -> bool {
        let resized = MapDef {
            max_entries: other.max_entries,
            ..*self
        };
        resized == *other
    }

    fn type_name(&self) -> String {
        bpf_map_type::try_from(self.map_type)
            .ok()
            .and_then(|t| MapType::try_from(t).ok())
            .map_or_else(|| format!("type {}", self.map_type), |t| format!("{t:?}"))
    }
}

impl fmt::Display for MapDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, key {} B, value {} B, {} entries, flags {:#x}",
            self.type_name(),
            self.key_size,
            self.value_size,
            self.max_entries,
            self.flags
        )
    }
}

/// Every pinned map's definition as this build creates it: the object's,
/// with the capacities userspace sets at load time (`capacities`).
pub fn expected(object: &[u8], capacities: &[(&str, u32)]) -> Result<BTreeMap<&'static str, MapDef>, String> {
    let object = aya_obj::Object::parse(object).map_err(|e| e.to_string())?;
    maps::ALL_MAPS
        .into_iter()
        .map(|name| {
            let map = object
                .maps
                .get(name)
                .ok_or_else(|| format!("the object defines no map {name}"))?;
            let max_entries = capacities
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(map.max_entries(), |&(_, n)| n);
            let def = MapDef {
                map_type: map.map_type(),
                key_size: map.key_size(),
                value_size: map.value_size(),
                max_entries,
                flags: kernel_flags(map.map_type(), map.map_flags()),
            };
            Ok((name, def))
        })
        .collect()
}

/// The flags the kernel reports for a map created with `flags`: it makes
/// devmaps read-only to programs (`dev_map_alloc_check`, kernel/bpf/devmap.c).
fn kernel_flags(map_type: u32, flags: u32) -> u32 {
    let devmap = [
        bpf_map_type::BPF_MAP_TYPE_DEVMAP,
        bpf_map_type::BPF_MAP_TYPE_DEVMAP_HASH,
    ]
    .into_iter()
    .any(|t| t as u32 == map_type);
    if devmap { flags | BPF_F_RDONLY_PROG } else { flags }
}

/// The layout version of `expected`: a hash (FNV-1a, stable across
/// builds) of [`maps::LAYOUT_REVISION`] and every map's name and
/// definition, leaving out the capacities set from the config, which
/// [`judge`] compares on their own.
pub fn version(expected: &BTreeMap<&str, MapDef>, capacities: &[(&str, u32)]) -> u64 {
    revision_version(maps::LAYOUT_REVISION, expected, capacities)
}

fn revision_version(revision: u32, expected: &BTreeMap<&str, MapDef>, capacities: &[(&str, u32)]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&revision.to_le_bytes());
    for (name, def) in expected.iter().filter(|(name, _)| **name != maps::LAYOUT) {
        let max_entries = if capacities.iter().any(|(n, _)| n == name) {
            0
        } else {
            def.max_entries
        };
        eat(name.as_bytes());
        eat(&[0]);
        for field in [def.map_type, def.key_size, def.value_size, max_entries, def.flags] {
            eat(&field.to_le_bytes());
        }
    }
    hash
}

/// What the pin directory holds: each pinned map's definition (or why it
/// could not be read), and the layout version if one is pinned.
#[derive(Debug, Default)]
pub struct Pinned {
    pub dir: PathBuf,
    pub maps: BTreeMap<&'static str, Result<MapDef, String>>,
    pub version: Option<u64>,
}

/// Why pinned maps cannot be adopted.
#[derive(Debug, PartialEq, Eq)]
pub enum Mismatch {
    Map {
        name: &'static str,
        path: PathBuf,
        pinned: MapDef,
        expected: MapDef,
    },
    Unreadable {
        name: &'static str,
        path: PathBuf,
        cause: String,
    },
    Version {
        path: PathBuf,
        pinned: u64,
        expected: u64,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Map {
                name,
                path,
                pinned,
                expected,
            } => {
                let cause = if pinned.resized_from(expected) {
                    "was created with another capacity, which cannot be migrated (restore the setting that sized it, \
                     e.g. lookup_capacity, or start afresh)"
                } else {
                    "was left by a bg-lb whose data plane differs"
                };
                write!(
                    f,
                    "the map {name} pinned at {} {cause}: pinned {pinned}; this bg-lb expects {expected}",
                    path.display()
                )
            }
            Mismatch::Unreadable { name, path, cause } => {
                write!(f, "the map {name} pinned at {} cannot be read: {cause}", path.display())
            }
            Mismatch::Version { path, pinned, expected } => write!(
                f,
                "the maps pinned in {} were left by a bg-lb whose data plane differs: layout version {pinned:#018x} \
                 pinned; this bg-lb expects {expected:#018x} (a map was added, removed or redefined, or its \
                 entries changed meaning)",
                path.parent().unwrap_or(path).display()
            ),
        }
    }
}

/// Which pinned maps must be migrated to be adopted (none when nothing is
/// pinned), or why they cannot be.
pub fn judge(
    pinned: &Pinned,
    expected: &BTreeMap<&'static str, MapDef>,
    version: u64,
) -> Result<Vec<&'static str>, Mismatch> {
    let mut migrate = Vec::new();
    for (&name, found) in &pinned.maps {
        let path = pinned.dir.join(name);
        let found = match found {
            Ok(def) => *def,
            Err(cause) => {
                return Err(Mismatch::Unreadable {
                    name,
                    path,
                    cause: cause.clone(),
                });
            }
        };
        let Some(&want) = expected.get(name) else {
            continue;
        };
        if found == want {
            continue;
        }
        if found.resized_from(&want) && migration::can_migrate(name) {
            migrate.push(name);
            continue;
        }
        return Err(Mismatch::Map {
            name,
            path,
            pinned: found,
            expected: want,
        });
    }
    match pinned.version {
        // Pins of a bg-lb from before the layout version: their maps alone judge.
        Some(found) if found != version => Err(Mismatch::Version {
            path: pinned.dir.join(maps::LAYOUT),
            pinned: found,
            expected: version,
        }),
        _ => Ok(migrate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ebpf_objects;

    const CAPACITIES: [(&str, u32); 3] = [
        (maps::FLOWS, 1000),
        (maps::REVERSE_NAT, 1000),
        (maps::LOOKUP_TABLES, 5000),
    ];

    fn expected() -> BTreeMap<&'static str, MapDef> {
        super::expected(ebpf_objects::load_balancer(), &CAPACITIES).unwrap()
    }

    /// Pins exactly as this build creates them, with the layout version.
    fn pinned_as_expected() -> Pinned {
        let expected = expected();
        Pinned {
            dir: "/sys/fs/bpf/bg-lb/maps".into(),
            maps: expected.iter().map(|(&name, def)| (name, Ok(*def))).collect(),
            version: Some(version(&expected, &CAPACITIES)),
        }
    }

    #[test]
    fn every_pinned_map_is_defined_by_the_object_with_the_configured_capacities() {
        let expected = expected();
        assert_eq!(expected.len(), maps::ALL_MAPS.len());
        assert_eq!(expected[maps::FLOWS].max_entries, 1000);
        assert_eq!(expected[maps::LOOKUP_TABLES].max_entries, 5000);
        assert_eq!(
            expected[maps::FLOWS].value_size as usize,
            size_of::<maps::Flow>(),
            "sizes come from the object, built from bg-lb-common"
        );
        assert_eq!(expected[maps::LAYOUT].value_size, 8);
        assert_eq!(
            expected[maps::TX_PORTS].flags,
            BPF_F_RDONLY_PROG,
            "the kernel makes a devmap read-only to programs"
        );
    }

    #[test]
    fn identical_pins_are_adopted_and_nothing_pinned_is_a_fresh_start() {
        let expected = expected();
        let v = version(&expected, &CAPACITIES);
        assert_eq!(judge(&pinned_as_expected(), &expected, v), Ok(vec![]));
        assert_eq!(judge(&Pinned::default(), &expected, v), Ok(vec![]));
    }

    #[test]
    fn a_changed_max_flows_migrates_the_flow_tables_and_keeps_the_layout_version() {
        let expected = expected();
        let bigger = [
            (maps::FLOWS, 4000),
            (maps::REVERSE_NAT, 4000),
            (maps::LOOKUP_TABLES, 5000),
        ];
        let wanted = super::expected(ebpf_objects::load_balancer(), &bigger).unwrap();
        let v = version(&wanted, &bigger);
        assert_eq!(
            v,
            version(&expected, &CAPACITIES),
            "capacities are not part of the version"
        );
        assert_eq!(
            judge(&pinned_as_expected(), &wanted, v),
            Ok(vec![maps::FLOWS, maps::REVERSE_NAT])
        );
    }

    /// Maps of the same definitions whose entries mean something else (a
    /// raised revision) are another layout: their pins are refused.
    #[test]
    fn a_raised_revision_is_another_layout_version() {
        let expected = expected();
        let now = revision_version(maps::LAYOUT_REVISION, &expected, &CAPACITIES);
        assert_eq!(now, version(&expected, &CAPACITIES));
        let before = revision_version(maps::LAYOUT_REVISION - 1, &expected, &CAPACITIES);
        assert_ne!(before, now);
        let mut pinned = pinned_as_expected();
        pinned.version = Some(before);
        assert!(matches!(
            judge(&pinned, &expected, now),
            Err(Mismatch::Version { pinned, expected, .. }) if pinned == before && expected == now
        ));
    }

    #[test]
    fn a_changed_value_size_is_refused_naming_the_map_and_both_layouts() {
        let expected = expected();
        let mut pinned = pinned_as_expected();
        let mut def = expected[maps::FLOWS];
        def.value_size += 8;
        pinned.maps.insert(maps::FLOWS, Ok(def));
        let err = judge(&pinned, &expected, version(&expected, &CAPACITIES)).unwrap_err();
        let text = err.to_string();
        let want = expected[maps::FLOWS];
        assert!(
            text.contains("the map FLOWS pinned at /sys/fs/bpf/bg-lb/maps/FLOWS")
                && text.contains(&format!(
                    "pinned LruHash, key {} B, value {} B, 1000 entries",
                    want.key_size,
                    want.value_size + 8
                ))
                && text.contains(&format!(
                    "expects LruHash, key {} B, value {} B, 1000 entries, flags 0x0",
                    want.key_size, want.value_size
                )),
            "{text}"
        );
    }

    #[test]
    fn other_capacity_type_or_flag_changes_are_refused() {
        let expected = expected();
        let v = version(&expected, &CAPACITIES);
        type Change = fn(&mut MapDef);
        let changes: [(&str, Change); 4] = [
            (maps::COUNTERS, |d| d.max_entries += 1),
            (maps::LOOKUP_TABLES, |d| d.max_entries *= 2),
            (maps::SERVICES, |d| d.flags = 0),
            (maps::REVERSE_NAT, |d| {
                d.map_type = bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32
            }),
        ];
        for (name, change) in changes {
            let mut pinned = pinned_as_expected();
            let mut def = expected[name];
            change(&mut def);
            pinned.maps.insert(name, Ok(def));
            assert!(
                matches!(judge(&pinned, &expected, v), Err(Mismatch::Map { name: n, .. }) if n == name),
                "{name}"
            );
        }
        let mut pinned = pinned_as_expected();
        let mut def = expected[maps::LOOKUP_TABLES];
        def.max_entries = 7;
        pinned.maps.insert(maps::LOOKUP_TABLES, Ok(def));
        let err = judge(&pinned, &expected, v).unwrap_err().to_string();
        assert!(
            err.contains("LOOKUP_TABLES")
                && err.contains("was created with another capacity")
                && err.contains("7 entries")
                && err.contains("5000 entries"),
            "{err}"
        );
    }

    #[test]
    fn another_layout_version_is_refused_even_when_every_pinned_map_fits() {
        let expected = expected();
        let mut pinned = pinned_as_expected();
        pinned.version = Some(7);
        let err = judge(&pinned, &expected, version(&expected, &CAPACITIES)).unwrap_err();
        assert!(
            err.to_string().contains("layout version 0x0000000000000007 pinned"),
            "{err}"
        );
        pinned.version = None;
        assert_eq!(
            judge(&pinned, &expected, version(&expected, &CAPACITIES)),
            Ok(vec![]),
            "pins from before the layout version are judged by their maps"
        );
    }

    #[test]
    fn the_version_covers_every_definition_but_configured_capacities() {
        let expected = expected();
        let v = version(&expected, &CAPACITIES);
        for name in maps::ALL_MAPS.into_iter().filter(|&n| n != maps::LAYOUT) {
            let mut changed = expected.clone();
            changed.get_mut(name).unwrap().value_size += 1;
            assert_ne!(version(&changed, &CAPACITIES), v, "{name}");
        }
        let mut fewer = expected.clone();
        fewer.remove(maps::HELD_SCRATCH);
        assert_ne!(version(&fewer, &CAPACITIES), v, "a removed map changes it");
    }

    #[test]
    fn an_unreadable_pin_is_refused_with_its_cause() {
        let expected = expected();
        let mut pinned = pinned_as_expected();
        pinned.maps.insert(maps::CONFIG, Err("permission denied".into()));
        let err = judge(&pinned, &expected, version(&expected, &CAPACITIES)).unwrap_err();
        assert!(err.to_string().contains("CONFIG") && err.to_string().contains("permission denied"));
    }
}
