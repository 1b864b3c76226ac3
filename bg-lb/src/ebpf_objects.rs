//! The eBPF objects built by build.rs and embedded in the binary.

/// The load balancer's object: the `bg_lb` XDP program and its maps.
pub fn load_balancer() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bg-lb-xdp"))
}

/// Helper programs: `xdp_pass` for veth peers and the `xdp_bounce` baseline.
pub fn aux() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bg-lb-aux"))
}
