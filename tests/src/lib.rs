//! Shared harness for bg-lb's root tests.
//!
//! # Layout
//! - [`netns`]: throwaway network namespaces (unshared threads and named
//!   namespaces) that are always removed, even when a test fails.
//! - [`daemon`]: `bg-lb run` and `bg-lb demo-backend` processes in test
//!   namespaces, cleaned up on drop.
//! - [`http`]: a minimal HTTP/1.1 client for demo-backend.
//! - [`lab`]: the blue-green lab (4 demo-backends, daemon with HTTP checks).
//! - [`load`]: paced client load with a tally of every outcome.
//! - [`release`]: the step-by-step blue-green release (demo and tests).
//! - [`cmd`]: running `ip`/`sysctl` with clear failure messages.
//! - [`deploy`]: the Dockerfile and systemd unit in `deploy/`, parsed, and
//!   install layouts to run their commands against.
//! - [`packets`]: crafting and checking Ethernet/IPv4/TCP frames.
//! - [`packet_lab`]: the XDP program under BPF_PROG_TEST_RUN with one
//!   service, for the packet tests and the micro benchmark; the one place
//!   they call bg-lb's data-plane API.
//! - [`topology`]: named namespaces and the one-arm client/LB/backends segment.
//! - [`servers`]: a stoppable TCP accept loop, servers that answer with
//!   their name, and their client.
//! - [`syn_flood`]: a spoofed SYN flood sent from a test namespace.
//! - [`bench`]: `cargo xtask bench` (the `bg-lb-bench` binary): contenders,
//!   workloads, statistics and reports.
pub mod bench;
pub mod cmd;
pub mod daemon;
pub mod deploy;
pub mod http;
pub mod lab;
pub mod load;
pub mod netns;
pub mod packet_lab;
pub mod packets;
pub mod release;
pub mod servers;
pub mod syn_flood;
pub mod topology;

/// Fails fast with a clear message when not root: these tests need BPF and
/// network namespaces, and a silent skip would hide that they never ran.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (BPF, network namespaces): run `cargo xtask test`"
    );
}
