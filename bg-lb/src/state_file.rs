//! Operator decisions (ratio, weights, enabled backends) persisted across
//! restarts. The config file is the cause of topology; this file records
//! what operators changed at runtime through the admin socket.
//!
//! Writes are atomic: the new state goes to a temporary file in the same
//! directory, is fsynced, renamed over the old one, and the directory is
//! fsynced. A crash at any point leaves the old file or the new one, never a
//! torn mix, and a leftover temporary file is ignored.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    ratio::{Pool, Ratio},
    shift::ShiftRecord,
};

pub const STATE_FILE: &str = "state.json";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorState {
    /// By service name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceState>,
    /// `ctl node drain`: this host announces no VIP until `ctl node resume`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub node_drained: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceState {
    /// Overrides the config's initial ratio once an operator set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<Ratio>,
    /// The ratio before the latest change, for rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_ratio: Option<Ratio>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backends: BTreeMap<SocketAddr, BackendState>,
    /// Backends added at runtime (`backend-add`), beside the config file's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub added_backends: BTreeMap<SocketAddr, AddedBackend>,
    /// The latest progressive shift, running or finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift: Option<ShiftRecord>,
    /// The latest drain's deadline (`--deadline`, `drain_deadline`), pending
    /// or passed: kept here so that it survives a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_deadline: Option<DrainDeadline>,
}

/// When a drained pool's leftover connections are reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainDeadline {
    pub pool: Pool,
    /// Wall clock, milliseconds since the Unix epoch: a restart keeps it.
    pub at_unix_ms: u64,
    /// Once it passed: the connections it reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendState {
    /// Overrides the config's weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// A disabled backend takes no new flows whatever its health or weight.
    #[serde(default = "enabled")]
    pub enabled: bool,
}

/// A backend added at runtime: what a `[[service.backend]]` would say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddedBackend {
    pub pool: Pool,
    pub weight: u32,
}

fn enabled() -> bool {
    true
}

impl Default for BackendState {
    fn default() -> Self {
        Self {
            weight: None,
            enabled: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("{path}: not a valid bg-lb state file ({cause}); fix or remove it to start from the config alone")]
    Corrupt { path: PathBuf, cause: serde_json::Error },
}

/// The saved state, or the empty state if none was saved yet.
pub fn load(dir: &Path) -> Result<OperatorState, StateError> {
    let path = dir.join(STATE_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|cause| StateError::Corrupt { path, cause }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(OperatorState::default()),
        Err(cause) => Err(StateError::Io { path, cause }),
    }
}

pub fn save(dir: &Path, state: &OperatorState) -> Result<(), StateError> {
    let mut bytes = serde_json::to_vec_pretty(state).expect("state serializes");
    bytes.push(b'\n');
    write_atomic(dir, STATE_FILE, &bytes).map_err(|(path, cause)| StateError::Io { path, cause })
}

/// Writes `bytes` to `dir/name` atomically (see the module docs), creating
/// `dir` if needed; on failure, the path that failed and why.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), (PathBuf, io::Error)> {
    let at = |path: &Path| {
        let path = path.to_owned();
        move |cause| (path, cause)
    };
    fs::create_dir_all(dir).map_err(at(dir))?;
    let temp = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&temp).map_err(at(&temp))?;
    file.write_all(bytes).map_err(at(&temp))?;
    file.sync_all().map_err(at(&temp))?;
    let path = dir.join(name);
    fs::rename(&temp, &path).map_err(at(&path))?;
    // The rename itself must reach the disk too.
    File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bglb-state-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn sample() -> OperatorState {
        let mut state = OperatorState::default();
        let service = state.services.entry("web".into()).or_default();
        service.ratio = Some(Ratio::new(30).unwrap());
        service.backends.insert(
            "10.0.0.11:8080".parse().unwrap(),
            BackendState {
                weight: Some(50),
                enabled: false,
            },
        );
        service.added_backends.insert(
            "10.0.0.12:8080".parse().unwrap(),
            AddedBackend {
                pool: Pool::Green,
                weight: 100,
            },
        );
        state
    }

    #[test]
    fn saved_state_loads_back_identically() {
        let dir = temp_dir("roundtrip");
        save(&dir, &sample()).unwrap();
        assert_eq!(load(&dir).unwrap(), sample());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_state_file_is_the_empty_state() {
        assert_eq!(load(&temp_dir("missing")).unwrap(), OperatorState::default());
    }

    #[test]
    fn a_torn_write_is_never_read_back() {
        let dir = temp_dir("torn");
        save(&dir, &sample()).unwrap();
        // A crash mid-write leaves a partial temporary file beside the state.
        fs::write(
            dir.join(format!(".{STATE_FILE}.tmp")),
            b"{\"services\": {\"web\": {\"ra",
        )
        .unwrap();
        assert_eq!(load(&dir).unwrap(), sample());
        // The next save replaces it and still yields a complete file.
        let mut next = sample();
        next.services.get_mut("web").unwrap().ratio = Some(Ratio::new(0).unwrap());
        save(&dir, &next).unwrap();
        assert_eq!(load(&dir).unwrap(), next);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn corrupt_state_file_is_an_error_naming_the_file() {
        let dir = temp_dir("corrupt");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(STATE_FILE), b"not json").unwrap();
        let err = load(&dir).unwrap_err().to_string();
        assert!(
            err.contains("state.json") && err.contains("not a valid bg-lb state file"),
            "{err}"
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
