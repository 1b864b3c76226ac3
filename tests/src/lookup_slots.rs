//! The LOOKUP_TABLES slots a service's new flows read, from its SERVICES
//! entry, as the data plane picks them (`bg_lb_common::flow_hash::
//! table_slot`): for tests that read the maps behind the daemon's back.

use std::ops::Range;

use bg_lb_common::maps::{POOL_SHARE_SCALE, Service, table_offset};

/// The slots of `pool`'s (0 blue, 1 green) table that packets read, or
/// with `spare` of its other buffer.
pub fn pool_table(service: &Service, pool: u32, spare: bool) -> Range<u32> {
    let buffer = service.active_buffer(pool) ^ u32::from(spare);
    let start = service.lut_base + table_offset(pool, buffer, service.lut_size);
    start..start + service.lut_size
}

/// The slots new flows read: each pool's active table, of the pools whose
/// share of new flows (the entry's blue share) is not nothing.
pub fn read_by_new_flows(service: &Service) -> impl Iterator<Item = u32> + use<> {
    let blue = u32::from(service.blue_share);
    let service = *service;
    [blue, POOL_SHARE_SCALE - blue]
        .into_iter()
        .zip(0..)
        .filter(|&(share, _)| share > 0)
        .flat_map(move |(_, pool)| pool_table(&service, pool, false))
}
