//! The last-known health of every check, kept in the state dir
//! (`health.json`) across restarts: a restarted daemon, or one in a crash
//! loop, keeps a backend that was down out of rotation until its probes
//! bring it up (`rise` successes). Written atomically whenever a check goes
//! up or down. A missing, unreadable or corrupt file means nothing is known:
//! logged, never fatal.

use std::{collections::BTreeMap, fs, io, path::Path};

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

/// The health a starting daemon begins with, before any probe: every check
/// saved as down, down. Checks saved as up, and checks with no record (a new
/// backend, or the first start), are left out and so keep the rule of
/// [`crate::health::Tracker::new`]: up until their first result. A first
/// start must serve at once, and a backend last seen up most likely still
/// is; its first probe corrects either within one interval.
pub fn seed(dir: &Path) -> Health {
    load(dir)
        .into_iter()
        .filter(|(_, up)| !up)
        .map(|(key, up)| {
            let view = HealthView {
                up,
                last: Err(Failure::DownBeforeRestart),
            };
            (key, view)
        })
        .collect()
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

/// Saves every check's up/down in `dir`; a failure is logged (the next
/// change tries again).
pub fn save(dir: &Path, health: &Health) {
    let saved = SavedHealth {
        checks: health
            .iter()
            .map(|(key, view)| Record {
                key: key.clone(),
                up: view.up,
            })
            .collect(),
    };
    let mut bytes = serde_json::to_vec_pretty(&saved).expect("health serializes");
    bytes.push(b'\n');
    if let Err((path, e)) = state_file::write_atomic(dir, HEALTH_FILE, &bytes) {
        tracing::warn!(path = %path.display(), error = %e, "cannot save the last-known health");
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

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

    fn view(up: bool) -> HealthView {
        HealthView {
            up,
            last: if up { Ok(()) } else { Err(Failure::Refused) },
        }
    }

    #[test]
    fn only_checks_saved_down_are_seeded_and_they_start_down() {
        let dir = temp_dir("seed");
        let health: Health = [
            (key("10.0.0.1:80", Listener::Live), view(true)),
            (key("10.0.0.2:80", Listener::Live), view(false)),
            (key("10.0.0.2:80", Listener::Standby), view(true)),
        ]
        .into_iter()
        .collect();
        save(&dir, &health);
        let seeded = seed(&dir);
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
    fn a_later_save_replaces_the_earlier_one() {
        let dir = temp_dir("replace");
        let k = key("10.0.0.2:80", Listener::Live);
        save(&dir, &[(k.clone(), view(false))].into_iter().collect());
        save(&dir, &[(k, view(true))].into_iter().collect());
        assert!(seed(&dir).is_empty(), "the backend came up since");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_or_corrupt_file_seeds_nothing_and_never_fails() {
        let dir = temp_dir("corrupt");
        assert!(seed(&dir).is_empty(), "no state dir yet");
        fs::create_dir_all(&dir).unwrap();
        for garbage in [&b"not json"[..], b"{\"checks\": [{\"service\": 1}]}", b"\xff\xfe", b""] {
            fs::write(dir.join(HEALTH_FILE), garbage).unwrap();
            assert!(seed(&dir).is_empty());
        }
        // A directory where the file should be: unreadable, not fatal.
        fs::remove_file(dir.join(HEALTH_FILE)).unwrap();
        fs::create_dir(dir.join(HEALTH_FILE)).unwrap();
        assert!(seed(&dir).is_empty());
        save(
            &dir,
            &[(key("10.0.0.2:80", Listener::Live), view(false))]
                .into_iter()
                .collect(),
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_file_names_checks_as_operators_read_them() {
        let dir = temp_dir("format");
        save(
            &dir,
            &[(key("10.0.0.2:80", Listener::Live), view(false))]
                .into_iter()
                .collect(),
        );
        let text = fs::read_to_string(dir.join(HEALTH_FILE)).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"checks": [{"service": "web", "backend": "10.0.0.2:80", "listener": "live", "up": false}]})
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
