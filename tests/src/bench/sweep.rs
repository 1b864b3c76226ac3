//! Leftovers of a run that was killed outright (SIGKILL gives no chance to
//! clean up): namespaces, pin directories and scratch directories named
//! after a process that no longer exists. Anything of a live process,
//! such as a test run going on next to the benchmark, is left alone.

use std::{fs, path::Path};

/// The pid in a harness name: `bglb{pid}-...` (namespaces),
/// `bglb-test-{pid}-...` (daemon dirs and pins), `bglb-bench-{pid}-...`.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix("bglb-test-")
        .or_else(|| name.strip_prefix("bglb-bench-"))
        .or_else(|| name.strip_prefix("bglb"))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = &rest[digits.len()..];
    (after.starts_with('-') && !digits.is_empty())
        .then(|| digits.parse().ok())
        .flatten()
}

fn stale(name: &str) -> bool {
    owner_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes stale namespaces, pins and the benchmark's scratch dirs;
/// returns what it removed.
pub fn sweep() -> Vec<String> {
    let mut removed = Vec::new();
    for name in names_in("/run/netns").into_iter().filter(|n| stale(n)) {
        let ok = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            removed.push(format!("namespace {name}"));
        }
    }
    // Test daemons' temp dirs are kept on purpose after a failure (their
    // logs), so only the benchmark's own scratch dirs are swept.
    let temp = std::env::temp_dir().to_string_lossy().into_owned();
    for (dir, prefix) in [("/sys/fs/bpf".to_owned(), "bglb"), (temp, "bglb-bench-")] {
        for name in names_in(&dir).into_iter().filter(|n| n.starts_with(prefix) && stale(n)) {
            let path = Path::new(&dir).join(&name);
            if fs::remove_dir_all(&path).is_ok() {
                removed.push(path.display().to_string());
            }
        }
    }
    removed
}

fn names_in(dir: &str) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_every_harness_naming_scheme() {
        assert_eq!(owner_pid("bglb1234-7-client"), Some(1234));
        assert_eq!(owner_pid("bglb-test-99-0"), Some(99));
        assert_eq!(owner_pid("bglb-bench-42-3-nginx"), Some(42));
        assert_eq!(owner_pid("bg-lb"), None);
        assert_eq!(owner_pid("bglb-other"), None);
        assert_eq!(owner_pid("bglbx-1"), None);
    }
}
