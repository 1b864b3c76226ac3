//! bg-lb: an XDP layer-4 load balancer for blue-green deployments.
//!
//! # Layout
//! - [`ebpf_objects`]: the eBPF objects embedded at build time.
//! - [`ratio`]: pools and the blue:green ratio.
//! - [`lookup_table`]: weighted Maglev lookup tables (pure).
//! - [`table_regions`]: double-buffered placement of lookup tables.
//! - [`dataplane`]: loads/attaches the XDP program and reads/writes its maps.
//! - [`services`]: programs services, backends and tables with stable ids.
pub mod dataplane;
pub mod ebpf_objects;
pub mod lookup_table;
pub mod ratio;
pub mod services;
pub mod table_regions;
