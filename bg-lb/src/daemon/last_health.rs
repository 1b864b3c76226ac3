//! The last-known health of every check, kept in the state dir
//! (`health.json`) across restarts: a restarted daemon, or one in a crash
//! loop, keeps a backend that was down out of rotation until its probes
//! bring it up (`rise` successes). Written atomically whenever a check goes
//! up or down, or is new or gone (a start with every check as it was writes
//! nothing). A missing, unreadable or corrupt file means nothing is known:
//! logged, never fatal.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    desired::{Health, HealthView},
    health::{CheckKey, Failure},
    state_file,
};

pub const HEALTH_FILE: &str = "health.json";

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct SavedHealth {
    checks: Vec<Record>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    key: CheckKey,
    up: bool,
}

/// What the file holds, and where it is.
#[derive(Debug)]
pub struct LastHealth {
    dir: PathBuf,
    saved: BTreeMap<CheckKey, bool>,
}

impl LastHealth {
    /// Reads what was saved in `dir`; nothing when the file cannot be used
    /// (logged).
    pub fn load(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            saved: load(dir),
        }
    }

    /// The health a starting daemon begins with, before any probe: every
    /// check saved as down, down. Checks saved as up, and checks with no
    /// record (a new backend, or the first start), are left out and so keep
    /// the rule of [`crate::health::Tracker::new`]: up until their first
    /// result. A first start must serve at once, and a backend last seen up
    /// most likely still is; its first probe corrects either within one
    /// interval.
    pub fn seed(&self) -> Health {
        self.saved
            .iter()
            .filter(|(_, up)| !**up)
            .map(|(key, _)| {
                let view = HealthView {
                    up: false,
                    last: Err(Failure::DownBeforeRestart),
                };
                (key.clone(), view)
            })
            .collect()
    }

    /// Whether the last daemon saw the check up.
    pub fn was_up(&self, key: &CheckKey) -> bool {
        self.saved.get(key).copied().unwrap_or(false)
    }

    /// A check's health now; saved if it changed (a restart with every
    /// backend as it was writes nothing).
    pub fn record(&mut self, key: &CheckKey, up: bool) {
        if self.saved.insert(key.clone(), up) != Some(up) {
            self.save();
        }
    }

    /// Forgets the checks that no longer exist.
    pub fn retain(&mut self, exists: impl Fn(&CheckKey) -> bool) {
        let before = self.saved.len();
        self.saved.retain(|key, _| exists(key));
        if self.saved.len() != before {
            self.save();
        }
    }

    /// A failure is logged; the next change tries again.
    fn save(&self) {
        let saved = SavedHealth {
            checks: self
                .saved
                .iter()
                .map(|(key, &up)| Record { key: key.clone(), up })
                .collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&saved).expect("health serializes");
        bytes.push(b'\n');
        if let Err((path, e)) = state_file::write_atomic(&self.dir, HEALTH_FILE, &bytes) {
            tracing::warn!(path = %path.display(), error = %e, "cannot save the last-known health");
        }
    }
}

/// Up or down by check, as saved in `dir`; empty (and logged) when the file
/// cannot be used.
fn load(dir: &Path) -> BTreeMap<CheckKey, bool> {
    let path = dir.join(HEALTH_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the last-known health; every backend counts as new");
            return BTreeMap::new();
        }
    };
    match serde_json::from_slice::<SavedHealth>(&bytes) {
        Ok(saved) => saved.checks.into_iter().map(|r| (r.key, r.up)).collect(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring a corrupt last-known health file; every backend counts as new");
            BTreeMap::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Listener;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bglb-health-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn key(backend: &str, listener: Listener) -> CheckKey {
        CheckKey {
            service: "web".into(),
            backend: backend.parse().unwrap(),
            listener,
        }
    }

    #[test]
    fn only_checks_saved_down_are_seeded_and_they_start_down() {
        let dir = temp_dir("seed");
        let mut last = LastHealth::load(&dir);
        last.record(&key("10.0.0.1:80", Listener::Live), true);
        last.record(&key("10.0.0.2:80", Listener::Live), false);
        last.record(&key("10.0.0.2:80", Listener::Standby), true);
        let seeded = LastHealth::load(&dir).seed();
        assert_eq!(
            seeded.keys().collect::<Vec<_>>(),
            [&key("10.0.0.2:80", Listener::Live)],
            "up and unknown checks keep the first-result rule"
        );
        let down = &seeded[&key("10.0.0.2:80", Listener::Live)];
        assert!(!down.up);
        assert_eq!(down.last, Err(Failure::DownBeforeRestart));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_change_is_saved_and_an_unchanged_health_is_not_written_again() {
        let dir = temp_dir("replace");
        let k = key("10.0.0.2:80", Listener::Live);
        LastHealth::load(&dir).record(&k, false);
        let mut restarted = LastHealth::load(&dir);
        // Anything written from now on would replace this.
        fs::write(dir.join(HEALTH_FILE), b"marker").unwrap();
        restarted.record(&k, false);
        assert_eq!(
            fs::read(dir.join(HEALTH_FILE)).unwrap(),
            b"marker",
            "unchanged: not written"
        );
        restarted.record(&k, true);
        let reloaded = LastHealth::load(&dir);
        assert_eq!(
            reloaded.saved,
            [(k, true)].into_iter().collect(),
            "the backend came up since"
        );
        assert!(reloaded.seed().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn checks_that_no_longer_exist_are_forgotten() {
        let dir = temp_dir("retain");
        let mut last = LastHealth::load(&dir);
        last.record(&key("10.0.0.2:80", Listener::Live), false);
        last.record(&key("10.0.0.3:80", Listener::Live), false);
        last.retain(|k| k.backend == "10.0.0.3:80".parse().unwrap());
        let seeded = LastHealth::load(&dir).seed();
        assert_eq!(seeded.keys().collect::<Vec<_>>(), [&key("10.0.0.3:80", Listener::Live)]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_or_corrupt_file_seeds_nothing_and_never_fails() {
        let dir = temp_dir("corrupt");
        assert!(LastHealth::load(&dir).seed().is_empty(), "no state dir yet");
        fs::create_dir_all(&dir).unwrap();
        for garbage in [&b"not json"[..], b"{\"checks\": [{\"service\": 1}]}", b"\xff\xfe", b""] {
            fs::write(dir.join(HEALTH_FILE), garbage).unwrap();
            assert!(LastHealth::load(&dir).seed().is_empty());
        }
        // A directory where the file should be: unreadable, and unwritable.
        fs::remove_file(dir.join(HEALTH_FILE)).unwrap();
        fs::create_dir(dir.join(HEALTH_FILE)).unwrap();
        let mut last = LastHealth::load(&dir);
        assert!(last.seed().is_empty());
        last.record(&key("10.0.0.2:80", Listener::Live), false);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_file_names_checks_as_operators_read_them() {
        let dir = temp_dir("format");
        LastHealth::load(&dir).record(&key("10.0.0.2:80", Listener::Live), false);
        let text = fs::read_to_string(dir.join(HEALTH_FILE)).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"checks": [{"service": "web", "backend": "10.0.0.2:80", "listener": "live", "up": false}]})
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
