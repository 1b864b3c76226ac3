//! What one scrape shows: the [`Snapshot`] the task owning the daemon fills,
//! and the health-check, admin-request and reload counters the daemon keeps
//! for it.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use bg_lb_common::counters::Counter;

use crate::{
    health::{Listener, Report, Transition},
    protocol::{Request, ServiceStatus},
    ratio::Pool,
};

/// The `cmd` label of an admin request that could not be parsed.
pub const INVALID_COMMAND: &str = "invalid";

/// Upper bounds (seconds) of the health-check latency buckets: from a fast
/// LAN connect to the longest sensible timeout.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One probe's transitions and latencies since the daemon started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbeStats {
    pub went_up: u64,
    pub went_down: u64,
    pub latency: LatencyHistogram,
}

impl ProbeStats {
    pub fn record(&mut self, report: &Report) {
        match report.transition {
            Some(Transition::WentUp) => self.went_up += 1,
            Some(Transition::WentDown) => self.went_down += 1,
            None => {}
        }
        self.latency.observe(report.duration);
    }
}

/// Counts per bucket of [`LATENCY_BUCKETS`] plus one past the last bound (not
/// cumulative: the encoding adds them up).
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyHistogram {
    counts: [u64; LATENCY_BUCKETS.len() + 1],
    pub(super) sum_seconds: f64,
    pub(super) count: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: [0; LATENCY_BUCKETS.len() + 1],
            sum_seconds: 0.0,
            count: 0,
        }
    }
}

impl LatencyHistogram {
    pub fn observe(&mut self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[bucket] += 1;
        self.sum_seconds += seconds;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub(super) fn buckets(&self) -> Vec<(f64, u64)> {
        LATENCY_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts)
            .collect()
    }
}

/// Admin requests by command and result; every known command starts at 0 so
/// `rate()` sees the first request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminRequests(pub(super) BTreeMap<(&'static str, bool), u64>);

impl Default for AdminRequests {
    fn default() -> Self {
        // An unparsable request can only fail.
        let known = Request::COMMANDS
            .into_iter()
            .flat_map(|cmd| [((cmd, true), 0), ((cmd, false), 0)]);
        AdminRequests(known.chain([((INVALID_COMMAND, false), 0)]).collect())
    }
}

impl AdminRequests {
    pub fn record(&mut self, cmd: &'static str, ok: bool) {
        *self.0.entry((cmd, ok)).or_default() += 1;
    }
}

/// Config reloads since the daemon started. The config it started with
/// counts as loaded then, not as a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReloadStats {
    pub succeeded: u64,
    pub failed: u64,
    /// Whether the latest reload succeeded (true before the first one).
    pub last_succeeded: bool,
    /// When the config in effect was loaded.
    pub loaded_at: SystemTime,
}

impl ReloadStats {
    pub fn new(loaded_at: SystemTime) -> Self {
        ReloadStats {
            succeeded: 0,
            failed: 0,
            last_succeeded: true,
            loaded_at,
        }
    }

    pub fn record(&mut self, succeeded: bool, at: SystemTime) {
        self.last_succeeded = succeeded;
        if succeeded {
            self.succeeded += 1;
            self.loaded_at = at;
        } else {
            self.failed += 1;
        }
    }
}

impl Default for ReloadStats {
    fn default() -> Self {
        ReloadStats::new(SystemTime::UNIX_EPOCH)
    }
}

/// What `bglb_build_info` says about this binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: &'static str,
    /// The git commit it was built from, or "unknown" (see build.rs).
    pub commit: &'static str,
    pub rustc: &'static str,
}

impl BuildInfo {
    pub const THIS: BuildInfo = BuildInfo {
        version: env!("CARGO_PKG_VERSION"),
        commit: env!("BGLB_GIT_COMMIT"),
        rustc: env!("BGLB_RUSTC_VERSION"),
    };
}

impl Default for BuildInfo {
    fn default() -> Self {
        BuildInfo::THIS
    }
}

/// A health probe's stats with the labels that place it.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeMetrics {
    pub service: String,
    pub pool: Pool,
    pub backend: SocketAddr,
    pub check: Listener,
    pub stats: ProbeStats,
}

/// Everything one scrape shows, gathered by the task that owns the daemon.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// As `ctl status` reports them (counters summed over the live and
    /// standby listeners).
    pub services: Vec<ServiceStatus>,
    pub probes: Vec<ProbeMetrics>,
    pub flow_entries: u64,
    pub flow_capacity: u64,
    /// Every [`Counter`], summed over CPUs.
    pub packets: Vec<(Counter, u64)>,
    pub admin_requests: AdminRequests,
    pub reloads: ReloadStats,
    /// Shifts the daemon rolled back, by service; services it never rolled
    /// back are absent (and exported as 0).
    pub shift_rollbacks: BTreeMap<String, u64>,
    /// Every VIP address and whether BIRD announces it; empty without `[bgp]`.
    pub vips_announced: Vec<(std::net::IpAddr, bool)>,
    pub build: BuildInfo,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_past_the_last_bucket_counts_only_in_inf() {
        let mut histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_secs(60));
        let buckets = histogram.buckets();
        assert_eq!(buckets.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 1)));
        assert!(buckets[..LATENCY_BUCKETS.len()].iter().all(|&(_, n)| n == 0));
        assert_eq!(histogram.count(), 1);
    }

    #[test]
    fn a_failed_reload_keeps_the_time_the_config_in_effect_was_loaded() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut reloads = ReloadStats::new(start);
        assert!(reloads.last_succeeded, "nothing failed yet");
        reloads.record(false, start + Duration::from_secs(5));
        assert_eq!(
            (reloads.succeeded, reloads.failed, reloads.last_succeeded),
            (0, 1, false)
        );
        assert_eq!(reloads.loaded_at, start);
        let later = start + Duration::from_secs(9);
        reloads.record(true, later);
        assert_eq!(
            (reloads.succeeded, reloads.failed, reloads.last_succeeded),
            (1, 1, true)
        );
        assert_eq!(reloads.loaded_at, later);
    }
}
