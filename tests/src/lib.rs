//! Shared harness for bg-lb's root tests.
//!
//! # Layout
//! - [`netns`]: throwaway network namespaces (unshared threads and named
//!   namespaces) that are always removed, even when a test fails.
//! - [`daemon`]: `bg-lb run` and `bg-lb demo-backend` processes in test
//!   namespaces, cleaned up on drop.
//! - [`http`]: a minimal HTTP/1.1 client for demo-backend, over IPv4 or IPv6.
//! - [`lab`]: the blue-green lab (4 demo-backends, daemon with HTTP checks),
//!   over IPv4 or IPv6.
//! - [`load`]: paced client load with a tally of every outcome, from one
//!   client address or many (each client's visits kept in order).
//! - [`affinity`]: the ratio polled over time and each client's visits laid
//!   against it: who moved to the new version at which step, who went back,
//!   who was split between backends within a step.
//! - [`release`]: the step-by-step blue-green release (demo and tests).
//! - [`cmd`]: running `ip`/`sysctl` with clear failure messages.
//! - [`deploy`]: the Dockerfile and systemd unit in `deploy/`, parsed, and
//!   install layouts to run their commands against.
//! - [`container`]: the image built with podman from a debootstrapped base,
//!   and containers run as the deployment docs run them.
//! - [`packets`]: crafting and checking Ethernet/IPv4/TCP frames.
//! - [`expect`]: what packet tests expect of the frame the program returned.
//! - [`map_surgery`]: direct edits of the NAT maps, to force an eviction or
//!   a reused backend id.
//! - [`packet_lab`]: the XDP program under BPF_PROG_TEST_RUN with one
//!   service, for the packet tests and the micro benchmark; the one place
//!   they call bg-lb's data-plane API.
//! - [`fuzz`]: the fuzz test's traffic (sessions, mutations, garbage) and
//!   its oracle, which judges every verdict and output by the program's maps.
//! - [`rng`]: a small seeded random number generator.
//! - [`rows`]: the machinery of table-driven packet tests (`row_tests!`).
//! - [`flood`]: a spoofed SYN flood (AF_PACKET) and a paced prober of
//!   legitimate connections, summarised per phase.
//! - [`fleet`]: several LB hosts behind a router running BIRD with ECMP,
//!   each host with its own BIRD for bg-lb's `[bgp]`; and a prober that
//!   measures what an event costs new connections.
//! - [`cluster`]: that fleet with one operator state: an etcd every host's
//!   daemon uses, and a blue and a green backend behind each host.
//! - [`fleet_release`]: a release across the cluster's hosts under load with
//!   a host stopped for good in the middle (`cargo xtask demo --hosts N`).
//! - [`etcd`]: one etcd process (loopback or a namespace) for the fleet
//!   tests, killed by PID on drop.
//! - [`topology`]: named namespaces and the one-arm client/LB/backends
//!   segment (with many client addresses if asked), the two-arm and routed
//!   labs, each dual-stack on request (`add_ipv6`, a ULA plan mirroring the
//!   IPv4 one).
//! - [`udp_frames`]: UDP datagrams for packet tests, built and checked.
//! - [`lookup_slots`]: the LOOKUP_TABLES slots a service's new flows read.
//! - [`raw`]: hand-made TCP segments from any source (forged RSTs, spoofed
//!   SYNs) through a raw socket.
//! - [`servers`]: a stoppable TCP accept loop, TCP and UDP servers that
//!   answer with their name, and their clients, on addresses of either
//!   family.
//! - [`churn`]: paced short connections (one line each, either side closing
//!   first, from one client address or many) and their server, counting
//!   failures, SYN retransmissions and slow connects.
//! - [`console`]: the web console's tokens and `[api]` table, and a
//!   loopback forwarder for a browser on the host (the demo).
//! - [`bench`]: `cargo xtask bench` (the `bg-lb-bench` binary): contenders,
//!   workloads, statistics and reports.
pub mod affinity;
pub mod bench;
pub mod churn;
pub mod cluster;
pub mod cmd;
pub mod console;
pub mod container;
pub mod daemon;
pub mod deploy;
pub mod etcd;
pub mod expect;
pub mod fleet;
pub mod fleet_release;
pub mod flood;
pub mod fuzz;
pub mod http;
pub mod lab;
pub mod load;
pub mod lookup_slots;
pub mod map_surgery;
pub mod netns;
pub mod packet_lab;
pub mod packets;
pub mod raw;
pub mod release;
pub mod rng;
pub mod rows;
pub mod servers;
pub mod topology;
pub mod udp_frames;

/// Fails fast with a clear message when not root: these tests need BPF and
/// network namespaces, and a silent skip would hide that they never ran.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (BPF, network namespaces): run `cargo xtask test`"
    );
}
