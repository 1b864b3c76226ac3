//! bg-lb: an XDP layer-4 load balancer for blue-green deployments.
//!
//! # Layout
//! - [`dataplane`]: the only code that talks to the kernel's BPF objects:
//!   loading and attaching XDP, pins, and the maps; service ids, table
//!   regions and Maglev lookup tables computed as values and written there;
//!   the flow sweep, walking the flow table in bounded slices.
//! - [`daemon`]: the running daemon: one owner of config, operator state,
//!   health and the data plane, driven by one event loop (admin socket,
//!   signals, timers); one file per concern; a sweeper thread that sweeps
//!   the flow table and reports back.
//! - [`api`]: the remote API (`[api]`): the admin commands over HTTP+JSON
//!   with bearer tokens and rustls, into the admin socket's request path.
//! - [`cli`]: the command line, the admin client (`ctl`), `ctl top`, and the
//!   completions and man page generated from it.
//! - [`config`]: the TOML config and its validation (file:line:col errors).
//! - [`health`]: rise/fall health tracking and TCP/HTTP probes.
//! - [`host`]: what the daemon checks about its host: the SNAT range against
//!   ephemeral ports, the bpffs lifetime, the XDP mode for a veth.
//! - [`metrics`]: the exported Prometheus metrics and their HTTP listener.
//! - [`connection_slots`]: connection caps of the admin, metrics and API
//!   listeners (a new connection closes the longest-idle one), and the
//!   HTTP connection server the metrics and API listeners share.
//! - [`demo_backend`]: the reference HTTP app with /live and /standby.
//! - [`protocol`]: admin socket requests and replies (JSON lines): the one
//!   definition of every command.
//! - [`ratio`]: pools and the blue:green ratio.
//! - [`bgp`]: health-gated VIP announcements through BIRD (`[bgp]`).
//! - [`cluster`]: operator state shared by several hosts in etcd
//!   (`[cluster]`), behind the same store seam as the local state file.
//! - [`desired`]: what each listener's table should hold (config + operator + health).
//! - [`shift`]: progressive shifts judged by data-plane signals and
//!   analysis hooks (pure).
//! - [`slow_start`]: the ramp of a backend that starts taking connections (pure).
//! - [`state_file`]: operator decisions persisted atomically.
//! - [`ebpf_objects`]: the eBPF objects embedded at build time.
//! - [`logging`]: tracing setup, with aya-log bridged in.
//! - [`entry`]: what `main` runs.
//! - [`family`]: IPv4 or IPv6, of a VIP, backend, SNAT address or flow.
pub mod api;
pub mod bgp;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connection_slots;
pub mod daemon;
pub mod dataplane;
pub mod demo_backend;
pub mod desired;
pub mod ebpf_objects;
pub mod entry;
pub mod family;
pub mod health;
pub mod host;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod ratio;
pub mod shift;
pub mod slow_start;
pub mod state_file;
#[cfg(test)]
mod test_support;
