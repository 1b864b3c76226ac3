//! Migrating a pinned map into one of another capacity (a changed
//! `max_flows`) so an upgrade drops no connection: the new map is created and
//! pinned beside the old one (`NAME-migrating`) and filled before the new program
//! loads with it; once that program is attached (replacing the old one on
//! the pinned links), the entries the old program added meanwhile are copied
//! too, and the new pin is renamed over the old one. The old map goes with
//! the old program.
//!
//! A crash before the rename leaves the old pins in place and a `-migrating` pin,
//! which the next start removes and migrates again. Flows the new program
//! created between its attachment and such a crash are lost with it.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Pod,
    maps::{HashMap, Map, MapData, MapError},
};
use bg_lb_common::maps::{self, Flow, FlowKey, NatKey, NatOwner};

/// Copies every entry of one map into another (of the same layout) with
/// these `bpf_map_update_elem` flags; returns how many it wrote and how many
/// the target holds afterwards.
type CopyFn = fn(&Map, &mut Map, u64) -> Result<(usize, usize), MapError>;

/// The maps whose capacity the config sets, with their key and value types.
const MIGRATABLE: [(&str, CopyFn); 2] = [
    (maps::FLOWS, copy::<FlowKey, Flow>),
    (maps::REVERSE_NAT, copy::<NatKey, NatOwner>),
];

/// `BPF_NOEXIST`: keep what the new program wrote since it took over.
const NOEXIST: u64 = 1;

pub fn can_migrate(name: &str) -> bool {
    MIGRATABLE.iter().any(|(n, _)| *n == name)
}

/// Where the new map of a migration is pinned until it replaces the old one
/// (bpffs refuses names with a dot).
pub fn next_pin(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-migrating"))
}

/// One map being migrated: the old map, open from its pin.
pub(super) struct Migration {
    pub name: &'static str,
    old: Map,
    pin: PathBuf,
    next: PathBuf,
    copy: CopyFn,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("{name}: {cause}")]
    Map { name: &'static str, cause: MapError },
    #[error(
        "{name}: the new capacity holds {held} of the {copied} entries in use; raise max_flows or wait until fewer \
         flows are open"
    )]
    TooSmall {
        name: &'static str,
        copied: usize,
        held: usize,
    },
    #[error("{0}: its capacity is not set from the config")]
    NotMigratable(&'static str),
    #[error("{name}: replacing the pin {path}: {cause}")]
    Pin {
        name: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
}

impl Migration {
    /// Opens the old map pinned in `dir`.
    pub(super) fn open(dir: &Path, name: &'static str) -> Result<Self, MigrationError> {
        let (_, copy) = MIGRATABLE
            .into_iter()
            .find(|(n, _)| *n == name)
            .ok_or(MigrationError::NotMigratable(name))?;
        let pin = dir.join(name);
        let old = MapData::from_pin(&pin)
            .and_then(Map::from_map_data)
            .map_err(|cause| MigrationError::Map { name, cause })?;
        Ok(Self {
            name,
            old,
            next: next_pin(dir, name),
            pin,
            copy,
        })
    }

    /// Where the new map is pinned meanwhile.
    pub(super) fn next(&self) -> &Path {
        &self.next
    }

    /// Fills the new map (before the new program runs). Returns how many
    /// entries it copied; fails if they do not all fit.
    pub(super) fn fill(&self, new: &mut Map) -> Result<usize, MigrationError> {
        let name = self.name;
        let (copied, held) = (self.copy)(&self.old, new, 0).map_err(|cause| MigrationError::Map { name, cause })?;
        if held < copied {
            return Err(MigrationError::TooSmall { name, copied, held });
        }
        Ok(copied)
    }

    /// Once the new program is attached: copies what the old program added
    /// since [`Migration::fill`] and puts the new map at the old one's pin.
    /// Returns how many entries it added.
    pub(super) fn finish(self, new: &mut Map) -> Result<usize, MigrationError> {
        let name = self.name;
        let (added, _) = (self.copy)(&self.old, new, NOEXIST).map_err(|cause| MigrationError::Map { name, cause })?;
        fs::rename(&self.next, &self.pin).map_err(|cause| MigrationError::Pin {
            name,
            path: self.pin.clone(),
            cause,
        })?;
        Ok(added)
    }

    /// Removes the new map's pin after a failed start: the old pins stay.
    pub(super) fn abandon(&self) {
        remove_next_pin(&self.next);
    }
}

/// Removes a `-migrating` pin a crashed migration left (it is copied afresh).
pub(super) fn remove_next_pin(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => tracing::info!(path = %path.display(), "removed the pin of an unfinished migration"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the pin of an unfinished migration")
        }
    }
}

fn copy<K: Pod, V: Pod>(from: &Map, to: &mut Map, flags: u64) -> Result<(usize, usize), MapError> {
    let from: HashMap<&MapData, K, V> = from.try_into()?;
    let mut to: HashMap<&mut MapData, K, V> = to.try_into()?;
    let mut copied = 0;
    for entry in from.iter() {
        let (key, value) = match entry {
            Ok(entry) => entry,
            // Removed by the program or the sweep while we walk.
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(e),
        };
        match to.insert(key, value, flags) {
            Ok(()) => copied += 1,
            Err(MapError::SyscallError(e)) if flags == NOEXIST && e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    let held = to.keys().filter(Result::is_ok).count();
    Ok((copied, held))
}
