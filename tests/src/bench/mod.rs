//! `bg-lb-bench`, run by `cargo xtask bench`: bg-lb against HAProxy, nginx
//! stream, nftables DNAT and a direct connection on the same namespace
//! topology (the macro benchmark), and the XDP program's cost per packet
//! against a bounce-only baseline (the micro benchmark).
//!
//! # Layout
//! - [`procs`]: child processes (stopped with SIGTERM), timeouts, leftovers
//!   in a lab's namespaces killed, and Ctrl-C turned into unwinding.
//! - [`lab`]: a fresh topology with HTTP and bulk backends per contender run.
//! - [`contenders`]: each contender's configuration and start-up.
//! - [`wrk`], [`bulk`], [`workloads`]: the load generators and what they report;
//!   [`paced`]: the open-loop paced generator (latency from due times).
//! - [`latency`]: p50/p99/p999 of every contender at the same paced rates.
//! - [`scale`]: bg-lb with a million flows and 1,000 backends against small
//!   tables.
//! - [`syn_flood`]: the SYN-flood workload (a spoofed flood with paced
//!   legitimate connections alongside) and its table.
//! - [`udp_rr`]: the UDP request/response workload and its table.
//! - [`cpu`]: CPU time from /proc, machine-wide and per network namespace;
//!   [`xdp_time`]: the XDP programs' own run time, from BPF statistics.
//! - [`macro_bench`]: interleaved rounds over contenders and workloads.
//! - [`stats`], [`report`]: medians, ranges, ratios, Markdown tables.
//! - [`micro`]: BPF_PROG_TEST_RUN timings (one frame per run), flow-table
//!   memory; [`live`]: live-frames timings in batches; [`table_swaps`]:
//!   ratio changes and health flips in userspace.
//! - [`flow_sweep`]: admin and health latency while the daemon sweeps a
//!   million flows, against a near-empty table.
//! - [`targets`]: the speed issue's targets judged on this run's figures.
//! - [`sweep`]: removes what a killed earlier run left behind.
pub mod bulk;
pub mod contenders;
pub mod cpu;
pub mod flow_memory;
pub mod flow_sweep;
pub mod lab;
pub mod latency;
pub mod live;
pub mod macro_bench;
pub mod micro;
pub mod paced;
pub mod procs;
pub mod report;
pub mod scale;
pub mod stats;
pub mod sweep;
pub mod syn_flood;
pub mod table_swaps;
pub mod targets;
pub mod udp_rr;
pub mod workloads;
pub mod wrk;
pub mod xdp_time;
