//! Fixtures shared by unit tests in more than one module.

use crate::{
    protocol::{BackendHealth, BackendStatus},
    ratio::Pool,
};

/// A backend as `ctl status` reports it: enabled at weight 100, no traffic.
pub fn backend_status(address: &str, pool: Pool, health: BackendHealth) -> BackendStatus {
    BackendStatus {
        address: address.parse().unwrap(),
        pool,
        weight: 100,
        configured_weight: 100,
        enabled: true,
        added_at_runtime: false,
        health,
        last_check: None,
        standby_health: None,
        open_flows: 0,
        embryonic_flows: 0,
        new_flows: 0,
        packets_in: 0,
        bytes_in: 0,
        packets_out: 0,
        bytes_out: 0,
        handshakes: 0,
        refused: 0,
        resets: 0,
        snat_ports_in_use: 0,
        snat_ports_capacity: 10_000,
        snat_ports_exhausted: 0,
    }
}
