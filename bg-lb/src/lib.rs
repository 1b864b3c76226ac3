//! bg-lb: an XDP layer-4 load balancer for blue-green deployments.
//!
//! # Layout
//! - [`ebpf_objects`]: the eBPF objects embedded at build time.
//! - [`ratio`]: pools and the blue:green ratio.
//! - [`lookup_table`]: weighted Maglev lookup tables (pure).
//! - [`table_regions`]: double-buffered placement of lookup tables.
//! - [`pins`]: bpffs layout of pinned maps and links; mount and teardown.
//! - [`dataplane`]: loads/attaches the XDP program and reads/writes its maps.
//! - [`services`]: programs services, backends and tables with stable ids.
//! - [`housekeeping`]: expires closed/idle flows, counts open flows.
//! - [`state_file`]: operator decisions persisted atomically.
//! - [`protocol`]: admin socket requests and replies (JSON lines).
//! - [`config`]: the TOML config and its validation (file:line errors).
//! - [`health`]: rise/fall health tracking and TCP/HTTP probes.
//! - [`desired`]: what each listener's table should hold (config + operator + health).
//! - [`shift`]: progressive shifts judged by data-plane signals (pure).
//! - [`daemon`]: config + operator state + data plane, request handling.
//! - [`server`]: the running daemon: admin socket, signals, timers.
//! - [`metrics`]: the exported Prometheus metrics, their snapshot and encoding.
//! - [`metrics_server`]: the optional HTTP listener serving `/metrics`.
//! - [`demo_backend`]: the reference HTTP app with /live and /standby.
//! - [`cli`], [`ctl`], [`entry`]: command line, the admin client, and `main`.
//! - [`top`]: `ctl top`, the live view for watching a release.
//! - [`logging`]: tracing setup, with aya-log bridged in.
//! - [`cli_docs`]: shell completions and the man page, generated from [`cli`].
pub mod cli;
pub mod cli_docs;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod dataplane;
pub mod demo_backend;
pub mod desired;
pub mod ebpf_objects;
pub mod entry;
pub mod health;
pub mod housekeeping;
pub mod logging;
pub mod lookup_table;
pub mod metrics;
pub mod metrics_server;
pub mod pins;
pub mod protocol;
pub mod ratio;
pub mod server;
pub mod services;
pub mod shift;
pub mod state_file;
pub mod table_regions;
pub mod top;
