//! The flow sweep and the flow listing, in bounded slices, through
//! [`SweepMaps`]: duplicates of the map file descriptors that a thread of
//! its own can hold, so neither ever runs on the daemon's event loop.
//!
//! A sweep reads FLOWS a slice at a time ([`walk`]); for each slice it
//! then reads what the slice's flows name (their backends and reverse-NAT
//! entries, and the services in the data plane), asks
//! [`housekeeping::judge`], and removes what it returns after re-checking
//! each entry, before reading the next slice. A second walk, of
//! REVERSE_NAT, removes the entries whose flow is gone. It writes only
//! FLOWS and REVERSE_NAT; what follows from its census (freeing ids,
//! advancing the NAT epoch) is the [`super::Dataplane`] owner's to do.
//! The IPv6 tables (FLOWS6, REVERSE_NAT6, BACKENDS6) are swept the same
//! way, after the IPv4 ones, by the same code ([`FamilyMaps`], generic over
//! the family); the census counts both.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use aya::Pod;
use bg_lb_common::{
    flow_state::{FlowPhase, phase},
    maps::{
        BackendOf, FlowKeyOf, FlowOf, IPPROTO_UDP, Ipv6Wire, NatKeyOf, NatOwnerOf, Service, ServiceKey, ServiceKey6,
    },
};

use super::{
    DataplaneError, FlowView,
    housekeeping::{self, FlowCensus, FlowTimeouts, Sweep},
    kernel::raw::RawMap,
    l4::Protocol,
    services::FlowIds,
    walk::{Walk, WalkMap, WalkStats},
    wire::Wire,
};
use crate::ratio::Pool;

mod listing;

pub use listing::FlowListing;
use listing::Picker;

/// Entries read per slice: one batch syscall, about 350 KiB of flows.
pub const SLICE: usize = 4096;

/// The maps a sweep reads and writes, through fds of their own: each
/// family's flows, reverse-NAT entries and backends, and the services of
/// both (ids are one space).
pub struct SweepMaps {
    pub(super) v4: FamilyMaps<u32>,
    pub(super) v6: FamilyMaps<Ipv6Wire>,
    pub(super) services: RawMap<ServiceKey, Service>,
    pub(super) services6: RawMap<ServiceKey6, Service>,
}

/// One family's FLOWS, REVERSE_NAT and BACKENDS (or their `6` twins).
pub struct FamilyMaps<A: Wire> {
    pub(super) flows: RawMap<FlowKeyOf<A>, FlowOf<A>>,
    pub(super) reverse: RawMap<NatKeyOf<A>, NatOwnerOf<A>>,
    pub(super) backends: RawMap<u32, BackendOf<A>>,
}

/// What a sweep found and did.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub census: FlowCensus,
    /// Some reverse-NAT entry was removed: pinned flows must make sure
    /// their ports are their own again (the NAT epoch moves on).
    pub removed_reverse: bool,
    /// Every walk read its whole table, so a count of zero means none.
    pub complete: bool,
    /// The flow tables' walks (both families').
    pub flows: WalkStats,
    /// The reverse-NAT tables' walks (both families').
    pub reverse: WalkStats,
    pub took: Duration,
}

/// Which flows `ctl flows` lists.
#[derive(Clone, Debug)]
pub struct FlowQuery {
    pub service_ids: HashSet<u32>,
    pub pool: Option<Pool>,
    pub limit: usize,
}

impl SweepMaps {
    /// Sweeps the IPv4 tables, then the IPv6 ones: each family's FLOWS,
    /// then its REVERSE_NAT, one slice at a time. Between slices it calls
    /// `between`, which returns whether to go on: a sweep stopped early is
    /// not complete.
    pub fn sweep(
        &self,
        timeouts: &FlowTimeouts,
        mut between: impl FnMut() -> bool,
    ) -> Result<SweepReport, DataplaneError> {
        let started = Instant::now();
        let now = housekeeping::monotonic_now_ns();
        let mut report = SweepReport {
            complete: true,
            ..SweepReport::default()
        };
        let services = || self.services();
        let go_on = self.v4.sweep(&mut report, now, timeouts, &mut between, &services)?;
        if go_on {
            self.v6.sweep(&mut report, now, timeouts, &mut between, &services)?;
        } else {
            report.complete = false;
        }
        report.took = started.elapsed();
        Ok(report)
    }

    /// The flows `query` asks for, of both families, read in slices: the
    /// walk ends early once more than `limit` open flows are found, since
    /// nothing read after them could be listed ([`Picker`]).
    pub fn list(&self, query: &FlowQuery) -> Result<FlowListing, DataplaneError> {
        let now = housekeeping::monotonic_now_ns();
        let mut picker = Picker::new(query.limit);
        let mut scanned = self.v4.list(query, now, &mut picker)?;
        scanned += self.v6.list(query, now, &mut picker)?;
        Ok(picker.finish(scanned))
    }

    /// The ids each flow of either family names, once per (service id,
    /// backend id, backend generation): all that adopting a previous
    /// daemon's ids needs, read in slices while the pinned data plane keeps
    /// forwarding.
    pub fn flow_ids(&self) -> Result<Vec<FlowIds>, DataplaneError> {
        let mut distinct = self.v4.flow_ids()?;
        distinct.extend(self.v6.flow_ids()?);
        Ok(distinct.into_iter().collect())
    }

    /// The services in the data plane now, of both families, by id.
    fn services(&self) -> Result<HashMap<u32, Service>, DataplaneError> {
        let mut ids = HashMap::new();
        ids.extend(all_of(&self.services)?.into_iter().map(|(_, s)| (s.id, s)));
        ids.extend(all_of(&self.services6)?.into_iter().map(|(_, s)| (s.id, s)));
        Ok(ids)
    }
}

/// Every entry of `map`, read in slices.
fn all_of<K, V>(map: &RawMap<K, V>) -> Result<Vec<(K, V)>, DataplaneError>
where
    K: Pod + Eq + std::hash::Hash,
    V: Pod,
{
    let mut walk = Walk::new(map.max_entries());
    let mut all = Vec::new();
    while !walk.finished() {
        all.extend(slice(&mut walk, map)?);
    }
    if !walk.complete() {
        // A service missed would have its flows removed as orphans, a
        // backend missed its ports' entries.
        return Err(map.error("walk", std::io::ErrorKind::Interrupted.into()));
    }
    Ok(all)
}

fn slice<K, V>(walk: &mut Walk<K>, map: &RawMap<K, V>) -> Result<Vec<(K, V)>, DataplaneError>
where
    K: Pod + Eq + std::hash::Hash,
    V: Pod,
    RawMap<K, V>: WalkMap<K, V, Error = std::io::Error>,
{
    walk.next_slice(map, SLICE).map_err(|e| map.error("walk", e))
}

impl<A: Wire> FamilyMaps<A> {
    /// Sweeps this family's FLOWS, then its REVERSE_NAT, into `report`;
    /// returns whether to go on (`between` said so after every slice).
    fn sweep(
        &self,
        report: &mut SweepReport,
        now: u64,
        timeouts: &FlowTimeouts,
        between: &mut impl FnMut() -> bool,
        services: &impl Fn() -> Result<HashMap<u32, Service>, DataplaneError>,
    ) -> Result<bool, DataplaneError> {
        let mut walk = Walk::new(self.flows.max_entries());
        let mut stopped = false;
        while !walk.finished() && !stopped {
            let slice = slice(&mut walk, &self.flows)?;
            // What the slice's flows name exists before they do: read after.
            let backends = self.backends_of(slice.iter().map(|(_, f)| f.backend_id))?;
            let mut reverse = Vec::new();
            for (_, flow) in &slice {
                if let Some(nat) = housekeeping::pinned_nat(flow, backends.get(&flow.backend_id))
                    && let Some(owner) = self.owner(&nat)?
                {
                    reverse.push((nat, owner));
                }
            }
            let sweep = housekeeping::judge(slice, reverse, &backends, &services()?, now, timeouts);
            report.removed_reverse |= self.remove(&sweep)?;
            report.census.absorb(sweep.census);
            stopped = !between();
        }
        report.flows.add(&walk.stats);
        let flows_complete = walk.complete();
        let live = self.live_backends()?;
        let mut walk = Walk::new(self.reverse.max_entries());
        while !walk.finished() && !stopped {
            let slice = slice(&mut walk, &self.reverse)?;
            let mut backends = HashMap::new();
            // A live backend's TCP entries are the data plane's to reuse,
            // even when their flow is gone (see `housekeeping`).
            let candidate = |nat: &NatKeyOf<A>, owner: &NatOwnerOf<A>| {
                owner.flow.proto == IPPROTO_UDP || !live.contains(&A::socket(nat.backend_addr, nat.backend_port))
            };
            for (nat, owner) in slice.into_iter().filter(|(nat, owner)| candidate(nat, owner)) {
                if self.remove_orphan(&nat, &owner.flow, &mut backends)? {
                    report.removed_reverse = true;
                    report.census.orphans += 1;
                }
            }
            stopped = !between();
        }
        report.reverse.add(&walk.stats);
        report.complete &= flows_complete && walk.complete();
        Ok(!stopped)
    }

    /// Offers this family's flows that `query` asks for to `picker`;
    /// returns the entries read.
    fn list(&self, query: &FlowQuery, now: u64, picker: &mut Picker) -> Result<u64, DataplaneError> {
        let since = |ns: u64| Duration::from_nanos(now.saturating_sub(ns));
        let mut scanned = 0;
        let mut walk = Walk::new(self.flows.max_entries());
        while !walk.finished() && picker.wants_more() {
            let slice = slice(&mut walk, &self.flows)?;
            scanned += slice.len() as u64;
            let backends = self.backends_of(slice.iter().map(|(_, f)| f.backend_id))?;
            for (key, flow) in slice {
                let phase = phase(flow.state);
                let Some(backend) = backends
                    .get(&flow.backend_id)
                    .filter(|b| b.generation == flow.backend_gen)
                else {
                    continue;
                };
                let pool = Pool::from_wire(backend.pool);
                if query.service_ids.contains(&flow.service_id)
                    && phase != FlowPhase::Closed
                    && query.pool.is_none_or(|p| p == pool)
                {
                    picker.offer(FlowView {
                        client: A::socket(key.client_addr, key.client_port),
                        backend: A::socket(backend.addr, backend.port),
                        pool,
                        phase,
                        age: since(flow.created_ns),
                        idle: since(flow.last_seen_ns),
                        protocol: Protocol::from_wire(key.proto),
                    });
                }
            }
        }
        Ok(scanned)
    }

    /// The ids of this family's flows, once per (service, backend, generation).
    fn flow_ids(&self) -> Result<HashSet<FlowIds>, DataplaneError> {
        let mut distinct = HashSet::new();
        let mut walk = Walk::new(self.flows.max_entries());
        while !walk.finished() {
            for (_, flow) in slice(&mut walk, &self.flows)? {
                distinct.insert(FlowIds {
                    service_id: flow.service_id,
                    backend_id: flow.backend_id,
                    backend_gen: flow.backend_gen,
                });
            }
        }
        if !walk.complete() {
            // An id missed could be handed out again under a live flow.
            return Err(self.flows.error("walk", std::io::ErrorKind::Interrupted.into()));
        }
        Ok(distinct)
    }

    /// The BACKENDS entries of `ids`.
    fn backends_of(&self, ids: impl Iterator<Item = u32>) -> Result<HashMap<u32, BackendOf<A>>, DataplaneError> {
        let mut backends = HashMap::new();
        for id in ids {
            if let std::collections::hash_map::Entry::Vacant(entry) = backends.entry(id)
                && let Some(backend) = self.backend(id)?
            {
                entry.insert(backend);
            }
        }
        Ok(backends)
    }

    /// The flow the reverse-NAT entry `nat` names, if there is one.
    fn owner(&self, nat: &NatKeyOf<A>) -> Result<Option<FlowKeyOf<A>>, DataplaneError> {
        let found = self.reverse.lookup(nat).map_err(|e| self.reverse.error("lookup", e))?;
        Ok(found.map(|owner| owner.flow))
    }

    /// The addresses of this family's backends in the data plane now.
    fn live_backends(&self) -> Result<HashSet<SocketAddr>, DataplaneError> {
        let backends = all_of(&self.backends)?;
        let live = backends.into_iter().filter(|(_, b)| !b.is_free());
        Ok(live.map(|(_, b)| A::socket(b.addr, b.port)).collect())
    }

    fn backend(&self, id: u32) -> Result<Option<BackendOf<A>>, DataplaneError> {
        self.backends.lookup(&id).map_err(|e| self.backends.error("lookup", e))
    }

    /// Removes what `sweep` judged, each entry only if it is still what was
    /// judged. Returns whether a reverse-NAT entry went.
    fn remove(&self, sweep: &Sweep<A>) -> Result<bool, DataplaneError> {
        let mut removed_reverse = false;
        for r in &sweep.flows {
            removed_reverse |= self.remove_flow(&r.key, &r.flow, r.reverse.as_ref())?;
        }
        let mut backends = HashMap::new();
        for (nat, owner) in &sweep.orphan_reverse {
            removed_reverse |= self.remove_orphan(nat, owner, &mut backends)?;
        }
        Ok(removed_reverse)
    }

    /// Removes a flow, and its reverse-NAT entry `reverse` if it has one,
    /// unless they changed since the sweep judged them: a client may have
    /// reused the 5-tuple for a new connection, or another flow claimed the
    /// SNAT port. Returns whether a reverse entry went.
    fn remove_flow(
        &self,
        key: &FlowKeyOf<A>,
        judged: &FlowOf<A>,
        reverse: Option<&NatKeyOf<A>>,
    ) -> Result<bool, DataplaneError> {
        let flows = &self.flows;
        match flows.lookup(key).map_err(|e| flows.error("lookup", e))? {
            Some(flow) if flow.created_ns == judged.created_ns => {
                flows.delete(key).map_err(|e| flows.error("delete", e))?;
            }
            _ => return Ok(false),
        }
        match reverse {
            Some(nat) if self.owner(nat)? == Some(*key) => {
                self.reverse.delete(nat).map_err(|e| self.reverse.error("delete", e))
            }
            _ => Ok(false),
        }
    }

    /// Removes the reverse-NAT entry `nat` if `owner` still does not own it
    /// (the flow may have been pinned again since it was read) and it still
    /// names `owner`. `backends` caches BACKENDS reads.
    fn remove_orphan(
        &self,
        nat: &NatKeyOf<A>,
        owner: &FlowKeyOf<A>,
        backends: &mut HashMap<u32, Option<BackendOf<A>>>,
    ) -> Result<bool, DataplaneError> {
        let flow = self.flows.lookup(owner).map_err(|e| self.flows.error("lookup", e))?;
        let backend = match &flow {
            Some(flow) => match backends.get(&flow.backend_id) {
                Some(cached) => *cached,
                None => *backends
                    .entry(flow.backend_id)
                    .or_insert(self.backend(flow.backend_id)?),
            },
            None => None,
        };
        if housekeeping::owns(flow.as_ref(), backend.as_ref(), nat) || self.owner(nat)? != Some(*owner) {
            return Ok(false);
        }
        self.reverse.delete(nat).map_err(|e| self.reverse.error("delete", e))
    }
}
