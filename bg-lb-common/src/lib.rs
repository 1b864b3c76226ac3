//! The single definition of every map name, key, value and capacity that the
//! bg-lb eBPF programs and userspace share, plus the pure packet-path logic
//! both sides must agree on bit for bit.
//!
//! # Layout
//! - [`maps`]: map names, capacities and `#[repr(C)]` key/value types.
//! - [`counters`]: indices of the global per-CPU drop/pass counters.
//! - [`flow_hash`]: the 5-tuple hash that picks a lookup-table slot (the client
//!   address alone under client affinity).
//! - [`checksum`]: RFC 1624 incremental checksum updates used by NAT.
//! - [`flow_state`]: TCP flow state tracking (when a pinned flow has ended).
//! - [`gateway`]: which backend segments a `gateway` flow owns once ended.
//! - [`icmp`]: which ICMP errors follow a flow; checksums of translating
//!   their quotes and of generated fragmentation-needed errors.
//! - [`port_reuse`]: when a new connection may take over the SNAT port of a
//!   flow that has ended (the backend's TIME_WAIT rules).
//! - [`snat_port`]: candidate SNAT (address, port) pairs for collision-free
//!   allocation.
//! - [`restore`]: the benchmark's frame restorer's map value.
//! - [`udp`]: UDP flows' state and the NAT rewrite of a UDP checksum (0:
//!   none).
//! - [`syn_proxy`]: SYN cookies for flooded services: modes, flow bits, the
//!   flood detector's rule, sequence translation.
//! - `test_support` (tests only): reference checksums and reproducible
//!   pseudo-random input the unit tests share.
//!
//! Addresses and ports inside map keys and values are stored exactly as on
//! the wire (network byte order, read as native `u32`/`u16`), so the data
//! plane never byte-swaps; userspace converts only through the constructors
//! and accessors in [`maps`] (`ServiceKey::new`, `Backend::addr`, ...).
#![cfg_attr(not(test), no_std)]

pub mod checksum;
pub mod counters;
pub mod flow_hash;
pub mod flow_state;
pub mod gateway;
pub mod icmp;
pub mod maps;
pub mod port_reuse;
pub mod restore;
pub mod snat_port;
pub mod syn_proxy;
#[cfg(test)]
mod test_support;
pub mod udp;
