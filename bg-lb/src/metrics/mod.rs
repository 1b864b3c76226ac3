//! Prometheus metrics: the families the daemon exports, the snapshot the task
//! owning the daemon gathers for a scrape, and its encoding in the Prometheus
//! text format (0.0.4) with `prometheus-client`.
//!
//! Traffic counters are the per-CPU BPF map values summed at scrape time.
//! They live in the pinned maps, so a daemon restart does not reset them.
//! Health-check, admin-request, reload and shift-rollback counters live in
//! the daemon and start over with it, which `rate()` and `increase()` treat
//! as a counter reset.
//!
//! # Layout
//! - `family`: every exported family ([`Metric`]): name, type, labels, help
//!   text; the one list the Grafana dashboard and the alert rules are checked
//!   against.
//! - `snapshot`: what one scrape shows ([`Snapshot`]) and the counters the
//!   daemon keeps for it ([`ProbeStats`], [`AdminRequests`], [`ReloadStats`]).
//! - `encoding`: a snapshot as Prometheus text: rows, labels, label values.
//! - [`server`]: the HTTP listener that serves `GET /metrics`.

mod encoding;
mod family;
pub mod server;
mod snapshot;

pub use encoding::{CONTENT_TYPE, encode, verdict};
pub use family::{Kind, Metric, label_names, series_names};
pub use snapshot::{
    AdminRequests, BuildInfo, INVALID_COMMAND, LATENCY_BUCKETS, LatencyHistogram, ProbeMetrics, ProbeStats,
    ReloadStats, Snapshot,
};
