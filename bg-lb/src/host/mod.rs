//! What the daemon checks about the host it runs on, before and while it
//! loads the data plane. Each check reads the host in the daemon's own
//! network and mount namespaces, and keeps its decision a pure function
//! with unit tests.
//!
//! - [`ports`]: the SNAT port range against the kernel's ephemeral ports.
//! - [`bpffs`]: whether the pins live on a bpffs that outlives the daemon.
//! - [`interface`]: the XDP mode `auto` picks for an interface's driver.
//! - [`routes`]: whether a `dsr` backend is on-link.
//! - [`redirects`]: the ICMP redirects a `gateway` service needs off.

pub mod bpffs;
pub mod interface;
pub mod ports;
pub mod redirects;
pub mod routes;
