//! The flow sweep and the flow listing, in bounded slices, through
//! [`SweepMaps`]: duplicates of the map file descriptors that a thread of
//! its own can hold, so neither ever runs on the daemon's event loop.
//!
//! A sweep first reads REVERSE_NAT whole (who owns each pair), then FLOWS
//! a slice at a time ([`walk`]); for each slice it reads what the slice's
//! flows name (their backends, the owners of their pairs where that
//! snapshot does not name the flow itself, and the services in the data
//! plane), asks [`housekeeping::judge`], and removes what it returns after
//! re-checking each entry, before reading the next slice. Then it removes
//! the reverse-NAT entries no flow owned whose flow is gone. It writes only
//! FLOWS and REVERSE_NAT; what follows from its census (freeing ids,
//! advancing the NAT epoch) is the [`super::Dataplane`] owner's to do.
//! The IPv6 tables (FLOWS6, REVERSE_NAT6, BACKENDS6) are swept the same
//! way, after the IPv4 ones, by the same code ([`FamilyMaps`], generic over
//! the family); the census counts both. While no IPv6 service exists and
//! the IPv6 tables were found empty, nothing has been written since, so
//! their walks, which cost a pass over a million buckets each whatever the
//! table holds, are skipped ([`SweepReport::ipv6_idle`]).

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
    housekeeping::{self, FlowCensus, FlowTimeouts, Owners, Sweep},
    kernel::raw::RawMap,
    l4::Protocol,
    services::FlowIds,
    walk::{Walk, WalkMap, WalkStats},
    wire::Wire,
};
use crate::ratio::Pool;

mod listing;
pub(crate) mod removal;

pub use listing::FlowListing;
use listing::Picker;

/// Entries read per slice: one batch syscall, about 100 KiB of flows. The
/// kernel does not reschedule inside the call (this kernel runs without
/// preemption), and it passes over every empty bucket on the way, so a
/// smaller slice is a shorter stall of whatever else waits for that CPU:
/// with 4,096 the paced bench's p99 rose with each sweep.
pub const SLICE: usize = 1024;

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
    /// No IPv6 service existed and the IPv6 tables were empty (or the sweep
    /// was asked to skip them): until the data plane is written again, they
    /// stay so.
    pub ipv6_idle: bool,
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
    /// Sweeps the IPv4 tables, then the IPv6 ones unless `skip_ipv6`
    /// (an earlier sweep found them idle, and nothing was written since).
    /// Between slices it calls `between`, which returns whether to go on: a
    /// sweep stopped early is not complete.
    pub fn sweep(
        &self,
        timeouts: &FlowTimeouts,
        skip_ipv6: bool,
        mut between: impl FnMut() -> bool,
    ) -> Result<SweepReport, DataplaneError> {
        let started = Instant::now();
        let now = housekeeping::monotonic_now_ns();
        let mut report = SweepReport {
            complete: true,
            ipv6_idle: skip_ipv6,
            ..SweepReport::default()
        };
        let services = || self.services();
        let go_on = self.v4.sweep(&mut report, now, timeouts, &mut between, &services)?;
        if !go_on {
            report.complete = false;
        } else if !skip_ipv6 {
            // Read before the tables: an IPv6 flow needs an IPv6 service.
            let no_service = all_of(&self.services6)?.is_empty();
            let read_before = (report.flows.visited, report.reverse.visited);
            let go_on = self.v6.sweep(&mut report, now, timeouts, &mut between, &services)?;
            let read_none = (report.flows.visited, report.reverse.visited) == read_before;
            report.ipv6_idle = go_on && report.complete && no_service && read_none;
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
    /// Sweeps this family's tables into `report`; returns whether to go on
    /// (`between` said so after every slice). REVERSE_NAT is walked once,
    /// before the flows ([`Self::owners`]): a flow that snapshot names as
    /// its pair's owner needs no lookup of its own
    /// ([`housekeeping::slice_owners`]), and the entries no flow turned out
    /// to own are the orphan search's candidates.
    fn sweep(
        &self,
        report: &mut SweepReport,
        now: u64,
        timeouts: &FlowTimeouts,
        between: &mut impl FnMut() -> bool,
        services: &impl Fn() -> Result<HashMap<u32, Service>, DataplaneError>,
    ) -> Result<bool, DataplaneError> {
        let (mut owners, owners_walk) = self.owners()?;
        report.reverse.add(&owners_walk.stats);
        let mut walk = Walk::new(self.flows.max_entries());
        let mut stopped = false;
        while !walk.finished() && !stopped {
            let slice = slice(&mut walk, &self.flows)?;
            // What the slice's flows name exists before they do: read after.
            let backends = self.backends_of(slice.iter().map(|(_, f)| f.backend_id))?;
            let pairs = housekeeping::slice_owners(&slice, &backends, &mut owners, |nat| self.owner(nat))?;
            let sweep = housekeeping::judge(slice, pairs.reverse, &backends, &services()?, now, timeouts);
            report.removed_reverse |= self.remove(&sweep)?;
            // No orphan search for these: owned (whatever became of the
            // flow since), or judged and handled as orphans already.
            for nat in pairs
                .owned
                .iter()
                .chain(sweep.orphan_reverse.iter().map(|(nat, _)| nat))
            {
                owners.remove(nat);
            }
            report.census.absorb(sweep.census);
            stopped = !between();
        }
        report.flows.add(&walk.stats);
        let flows_complete = walk.complete();
        let live = self.live_backends()?;
        // A live backend's TCP entries are the data plane's to reuse, even
        // when their flow is gone (see `housekeeping`).
        let candidates: Vec<(NatKeyOf<A>, FlowKeyOf<A>)> = owners
            .into_iter()
            .filter(|(nat, owner)| {
                owner.proto == IPPROTO_UDP || !live.contains(&A::socket(nat.backend_addr, nat.backend_port))
            })
            .collect();
        let mut backends = HashMap::new();
        for chunk in candidates.chunks(SLICE) {
            if stopped {
                break;
            }
            for (nat, owner) in chunk {
                if self.remove_orphan(nat, owner, &mut backends)? {
                    report.removed_reverse = true;
                    report.census.orphans += 1;
                }
            }
            stopped = !between();
        }
        report.complete &= flows_complete && owners_walk.complete();
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

    /// Who owns each reverse-NAT entry, read before the flows: one batch
    /// syscall per [`SLICE`] entries, where a lookup per flow costs a
    /// syscall each. Held for the sweep: a hash table of 29 B a slot for
    /// IPv4 (77 B for IPv6), 1.1 to 2.3 slots an entry: 61 MB for a
    /// million IPv4 entries. A walk cut short only leaves more to lookups,
    /// and orphans to the next sweep.
    fn owners(&self) -> Result<(Owners<A>, Walk<NatKeyOf<A>>), DataplaneError> {
        let mut walk = Walk::new(self.reverse.max_entries());
        let mut owners = Owners::default();
        while !walk.finished() {
            owners.extend(
                slice(&mut walk, &self.reverse)?
                    .into_iter()
                    .map(|(nat, owner)| (nat, owner.flow)),
            );
        }
        Ok((owners, walk))
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
        if !removal::remove_flow_created_at(flows, key, judged.created_ns).map_err(|e| flows.error("remove", e))? {
            return Ok(false);
        }
        match reverse {
            Some(nat) => self.remove_reverse_named(nat, key),
            None => Ok(false),
        }
    }

    /// Removes the reverse-NAT entry `nat` if it names `owner`.
    fn remove_reverse_named(&self, nat: &NatKeyOf<A>, owner: &FlowKeyOf<A>) -> Result<bool, DataplaneError> {
        let reverse = &self.reverse;
        removal::remove_if(reverse, nat, |entry| entry.flow == *owner).map_err(|e| reverse.error("remove", e))
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
        if housekeeping::owns(flow.as_ref(), backend.as_ref(), nat) {
            return Ok(false);
        }
        self.remove_reverse_named(nat, owner)
    }
}
