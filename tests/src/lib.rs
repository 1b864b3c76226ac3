//! Shared harness for bg-lb's root tests.
//!
//! # Layout
//! - [`netns`]: throwaway network namespaces (unshared threads and named
//!   namespaces) that are always removed, even when a test fails.
//! - [`daemon`]: `bg-lb run` and `bg-lb demo-backend` processes in test
//!   namespaces, cleaned up on drop.
//! - [`http`]: a minimal HTTP/1.1 client for demo-backend.
//! - [`cmd`]: running `ip`/`sysctl` with clear failure messages.
//! - [`packets`]: crafting and checking Ethernet/IPv4/TCP frames.
//! - [`topology`]: named namespaces and the one-arm client/LB/backends segment.
//! - [`servers`]: TCP servers that answer with their name, and their client.
//! - [`bench`]: `cargo xtask bench` (the `bg-lb-bench` binary): contenders,
//!   workloads, statistics and reports.
pub mod bench;
pub mod cmd;
pub mod daemon;
pub mod http;
pub mod netns;
pub mod packets;
pub mod servers;
pub mod topology;

/// Fails fast with a clear message when not root: these tests need BPF and
/// network namespaces, and a silent skip would hide that they never ran.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (BPF, network namespaces): run `cargo xtask test`"
    );
}
