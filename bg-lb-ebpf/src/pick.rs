//! Backend selection for a new flow, TCP or UDP: the slot its hash (or, under
//! client affinity, its client address) names in its service's lookup
//! tables, blue's or green's by the service's blue share.

use bg_lb_common::{
    counters::Counter,
    flow_hash::table_slot,
    maps::{BackendOf, FlowKeyOf, NO_BACKEND, Service},
};

use crate::maps::{FamilyMaps, LOOKUP_TABLES};

/// The backend (id and entry) the service's lookup tables hold for the flow
/// `key` hashing to `hash`; [`Counter::NoBackend`] when the table is empty or
/// its slot names none.
#[inline(always)]
pub fn pick_backend<A: FamilyMaps>(
    service: &Service,
    key: &FlowKeyOf<A>,
    hash: u32,
) -> Result<(u32, BackendOf<A>), Counter> {
    let slot = table_slot(key, hash, service).ok_or(Counter::NoBackend)?;
    let backend_id = *LOOKUP_TABLES
        .get(service.lut_base.wrapping_add(slot))
        .ok_or(Counter::NoBackend)?;
    if backend_id == NO_BACKEND {
        return Err(Counter::NoBackend);
    }
    let backend = *A::backends().get(backend_id).ok_or(Counter::NoBackend)?;
    Ok((backend_id, backend))
}
