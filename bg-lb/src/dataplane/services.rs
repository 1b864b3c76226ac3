//! The bookkeeping of services in the data plane, without the kernel: stable
//! ids for services and backends, table regions, which buffer is active, and
//! each change computed as a value ([`ServiceUpdate`], [`ServiceRemoval`],
//! backend ids to free) for [`crate::dataplane::Dataplane`] to write.
//!
//! Backend ids are what flows are pinned to. A backend keeps its id while any
//! flow may still reference it: one removed from a service leaves the table at
//! once but stays in BACKENDS, so its open flows drain, and its id is freed
//! only when no flow names it ([`Services::reap`]). A removed service's
//! backends leave BACKENDS at once (its flows end: the data plane drops
//! their packets and the sweep removes them), but its service and backend
//! ids are retired, not reused, until no flow names them either. Each time
//! an id is given to a backend it gets a new generation, which flows
//! remember, so even a flow that outlived its id is never sent to the
//! id's next backend. A restarted daemon rebuilds all of this from the
//! pinned maps ([`Services::adopt`]).
//!
//! All of this is family-free: listeners are [`ListenerKey`]s and backends
//! `SocketAddr`s, and ids are one space across the families; `kernel` puts
//! each entry in the map of its address's family (SERVICES or SERVICES6,
//! BACKENDS or BACKENDS6).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use bg_lb_common::maps::{MAX_BACKENDS, MAX_SERVICES, Service, second_buffer_flag, service_table_slots, table_offset};

use crate::{
    dataplane::{
        affinity::Affinity,
        forwarding::Forwarding,
        l4::Protocol,
        listener::ListenerKey,
        lookup_table::{TableBackend, TableCache, blue_share},
        syn_proxy::SynProxy,
        table_regions::{RegionAllocator, RegionsExhausted},
    },
    ratio::{Pool, Ratio},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Of the family of the service's VIP.
    pub addr: SocketAddr,
    pub pool: Pool,
    /// 0 takes no new flows.
    pub weight: u32,
    /// Reset its open flows (down with `on_down = "reset"`) instead of
    /// letting them drain.
    pub reset_flows: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub vip: SocketAddr,
    /// Prime number of lookup-table slots.
    pub lut_size: u32,
    pub ratio: Ratio,
    pub backends: Vec<BackendSpec>,
    pub syn_proxy: SynProxy,
    pub forwarding: Forwarding,
    pub affinity: Affinity,
    pub protocol: Protocol,
    /// A UDP flow's idle timeout (unused for TCP).
    pub udp_idle: Duration,
}

impl ServiceSpec {
    /// Its listener: VIP and protocol.
    pub fn key(&self) -> ListenerKey {
        ListenerKey::new(self.vip, self.protocol)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error(transparent)]
    Regions(#[from] RegionsExhausted),
    #[error("more than {MAX_SERVICES} services")]
    TooManyServices,
    #[error("more than {MAX_BACKENDS} backends (including removed ones whose flows are still draining)")]
    TooManyBackends,
    #[error(
        "service {vip}: lookup table size {size} cannot change to {new} while it runs; remove and re-add the service"
    )]
    TableSizeChanged { vip: SocketAddr, size: u32, new: u32 },
    #[error("service {vip}: backend {backend} is not of the VIP's address family")]
    OtherFamily { vip: SocketAddr, backend: SocketAddr },
}

/// A BACKENDS or BACKENDS6 entry, family-free: `kernel` writes it to the
/// array of its address's family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendEntry {
    pub service_id: u32,
    /// See `bg_lb_common::maps::BackendOf::generation`.
    pub generation: u32,
    pub addr: SocketAddr,
    pub pool: Pool,
    pub reset_flows: bool,
}

/// The ids a flow-table entry (FLOWS or FLOWS6) names: what adopting a
/// previous daemon's ids needs of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowIds {
    pub service_id: u32,
    pub backend_id: u32,
    pub backend_gen: u32,
}

/// A service's new state as map writes. Written in field order, it keeps
/// every packet consistent: backends first, then each changed pool's table
/// into that pool's buffer packets do not read, then the SERVICES entry
/// that flips the pools' buffers and sets the ratio.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceUpdate {
    /// The spec's backends by id whose BACKENDS entry is not yet what it
    /// says (new ones, with fresh ids, and changed ones); the others are
    /// left as they are.
    pub backends: Vec<(u32, BackendEntry)>,
    /// The tables to write: none for a ratio change, or for a pool whose
    /// spare buffer holds its table as it is now (a health flip back); one
    /// for a change to one pool.
    pub tables: Vec<TableWrite>,
    /// What each pool's table is built from.
    pub sources: PoolSources,
    pub key: ListenerKey,
    pub service: Service,
    /// The service is new (its id fresh): its flood detector starts clean.
    pub fresh: bool,
}

/// A pool's table, to write from LOOKUP_TABLES' slot `first_slot` (in the
/// buffer of that pool packets do not read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableWrite {
    pub pool: Pool,
    pub first_slot: u32,
    pub slots: Vec<u32>,
}

/// A service leaving the data plane: its SERVICES entry goes, then its
/// backends' entries and counters are cleared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRemoval {
    pub key: ListenerKey,
    pub backend_ids: Vec<u32>,
    /// No other service is on the VIP's address any more: it leaves
    /// VIP_ADDRESSES (or VIP_ADDRESSES6).
    pub release_address: bool,
}

/// Lowest-free id allocation over `0..capacity`.
#[derive(Debug)]
struct IdPool {
    capacity: u32,
    used: BTreeSet<u32>,
}

impl IdPool {
    fn new(capacity: u32) -> Self {
        Self {
            capacity,
            used: BTreeSet::new(),
        }
    }

    fn allocate(&mut self) -> Option<u32> {
        let id = (0..self.capacity).find(|id| !self.used.contains(id))?;
        self.used.insert(id);
        Some(id)
    }

    fn mark_used(&mut self, id: u32) {
        self.used.insert(id);
    }

    fn release(&mut self, id: u32) {
        self.used.remove(&id);
    }
}

/// A backend's id and the generation it holds it in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BackendSlot {
    id: u32,
    generation: u32,
    /// The BACKENDS entry last written for it, once written: an update
    /// leaves out a backend whose entry would not change, so a ratio
    /// change or a health flip writes no backend (1,000 backends cost a
    /// syscall each on every change). None after an adoption, so the first
    /// update writes every backend as before.
    written: Option<BackendEntry>,
}

struct Installed {
    id: u32,
    /// The service's region of LOOKUP_TABLES: each pool's two buffers.
    lut_base: u32,
    /// Slots of each table.
    lut_size: u32,
    /// By pool: the buffer (0 or 1) the SERVICES entry names, never
    /// written while it does.
    active: [u32; 2],
    /// By pool and buffer: what that table was built from, where this
    /// daemon knows it (not after an adoption, nor after a write that may
    /// not have finished).
    written: [[Option<Vec<TableBackend>>; 2]; 2],
    /// Every backend of the service, in the table or draining.
    backends: HashMap<SocketAddr, BackendSlot>,
}

impl Installed {
    /// The buffer of `pool` whose table packets are to read, given what
    /// `sources` builds it from, and the write it needs if that buffer does
    /// not hold it already (`build` gives the table). The active table
    /// stands when only the ratio changed.
    fn place(
        &mut self,
        pool: Pool,
        sources: &PoolSources,
        build: impl FnOnce() -> Vec<u32>,
    ) -> (u32, Option<TableWrite>) {
        let (p, active) = (pool.index(), self.active[pool.index()]);
        let holds = |buffer: u32| self.written[p][buffer as usize].as_ref() == Some(&sources[p]);
        let buffer = if holds(active) { active } else { 1 - active };
        if holds(buffer) {
            return (buffer, None);
        }
        // Unknown until the write is swapped in: one that fails half-way
        // leaves the slots neither table.
        self.written[p][buffer as usize] = None;
        let write = TableWrite {
            pool,
            first_slot: self.lut_base + table_offset(p as u32, buffer, self.lut_size),
            slots: build(),
        };
        (buffer, Some(write))
    }
}

/// Ids of removed services and of their backends: no longer installed,
/// not yet free, while flows may name them.
#[derive(Default)]
struct Retired {
    services: BTreeSet<u32>,
    backends: BTreeSet<u32>,
}

pub struct Services {
    regions: RegionAllocator,
    /// By listener: a TCP and a UDP service may share a VIP.
    installed: HashMap<ListenerKey, Installed>,
    service_ids: IdPool,
    backend_ids: IdPool,
    retired: Retired,
    /// The generation the next backend id assignment gets (never 0).
    next_generation: u32,
    tables: TableCache,
}

impl Services {
    /// No services, over a LOOKUP_TABLES of `lookup_capacity` slots.
    pub fn new(lookup_capacity: u32) -> Self {
        Self {
            regions: RegionAllocator::new(lookup_capacity),
            installed: HashMap::new(),
            service_ids: IdPool::new(MAX_SERVICES),
            backend_ids: IdPool::new(MAX_BACKENDS),
            retired: Retired::default(),
            next_generation: 1,
            tables: TableCache::default(),
        }
    }

    /// Rebuilds ids and table placement from the SERVICES(6) and used
    /// BACKENDS(6) entries of maps that may hold a previous daemon's state (pinned), so
    /// pinned flows keep their backends. Ids that only `flows` still name
    /// are retired, and generations continue above every one in use. Also
    /// returns the ids of backends whose service is gone: no packet can
    /// reach them, so they are cleared.
    pub fn adopt<'a>(
        lookup_capacity: u32,
        services: impl IntoIterator<Item = (ListenerKey, Service)>,
        backends: impl IntoIterator<Item = (u32, BackendEntry)>,
        flows: impl IntoIterator<Item = &'a FlowIds>,
    ) -> Result<(Self, Vec<u32>), ServicesError> {
        let mut adopted = Self::new(lookup_capacity);
        let mut highest = 0;
        let mut key_of_id = HashMap::new();
        for (key, service) in services {
            adopted
                .regions
                .reserve(service.lut_base, service_table_slots(service.lut_size))?;
            adopted.service_ids.mark_used(service.id);
            key_of_id.insert(service.id, key);
            let installed = Installed {
                id: service.id,
                lut_base: service.lut_base,
                lut_size: service.lut_size,
                active: [0, 1].map(|pool| service.active_buffer(pool)),
                written: Default::default(),
                backends: HashMap::new(),
            };
            adopted.installed.insert(key, installed);
        }
        let mut orphans = Vec::new();
        for (id, backend) in backends {
            highest = highest.max(backend.generation);
            match key_of_id
                .get(&backend.service_id)
                .and_then(|key| adopted.installed.get_mut(key))
            {
                Some(installed) => {
                    let slot = BackendSlot {
                        id,
                        generation: backend.generation,
                        written: None,
                    };
                    installed.backends.insert(backend.addr, slot);
                    adopted.backend_ids.mark_used(id);
                }
                None => orphans.push(id),
            }
        }
        for flow in flows {
            highest = highest.max(flow.backend_gen);
            if !adopted.service_ids.used.contains(&flow.service_id) {
                adopted.retired.services.insert(flow.service_id);
            }
            if !adopted.backend_ids.used.contains(&flow.backend_id) {
                adopted.retired.backends.insert(flow.backend_id);
            }
        }
        for &id in &adopted.retired.services {
            adopted.service_ids.mark_used(id);
        }
        for &id in &adopted.retired.backends {
            adopted.backend_ids.mark_used(id);
        }
        adopted.next_generation = highest.wrapping_add(1).max(1);
        Ok((adopted, orphans))
    }

    /// Keys (VIP and protocol) of the services in the data plane.
    pub fn keys(&self) -> Vec<ListenerKey> {
        self.installed.keys().copied().collect()
    }

    /// The addresses of the VIPs: what VIP_ADDRESSES and VIP_ADDRESSES6 hold.
    pub fn vip_addresses(&self) -> HashSet<IpAddr> {
        self.installed.keys().map(|key| key.vip.ip()).collect()
    }

    /// The id flows of `backend` on service `key` are pinned to.
    pub fn backend_id(&self, key: &ListenerKey, backend: &SocketAddr) -> Option<u32> {
        Some(self.installed.get(key)?.backends.get(backend)?.id)
    }

    pub fn service_id(&self, key: &ListenerKey) -> Option<u32> {
        self.installed.get(key).map(|s| s.id)
    }

    /// Ids of the services in the data plane: a flow of any other service
    /// has ended.
    pub fn service_ids(&self) -> HashSet<u32> {
        self.installed.values().map(|s| s.id).collect()
    }

    /// What creating or updating a service writes: ids are allocated here,
    /// the table goes to the buffer packets are not reading. The new table
    /// counts as active only once [`Services::swapped`] says it was written.
    pub fn update(&mut self, spec: &ServiceSpec) -> Result<ServiceUpdate, ServicesError> {
        if let Some(b) = spec.backends.iter().find(|b| b.addr.is_ipv4() != spec.vip.is_ipv4()) {
            return Err(ServicesError::OtherFamily {
                vip: spec.vip,
                backend: b.addr,
            });
        }
        let key = spec.key();
        let fresh = !self.installed.contains_key(&key);
        if fresh {
            self.install(spec)?;
        }
        let size = self.installed[&key].lut_size;
        if size != spec.lut_size {
            return Err(ServicesError::TableSizeChanged {
                vip: spec.vip,
                size,
                new: spec.lut_size,
            });
        }
        let table_backends = self.table_backends(spec)?;
        let installed = &self.installed[&key];
        let backends = spec
            .backends
            .iter()
            .filter_map(|b| {
                let slot = installed.backends[&b.addr];
                let backend = BackendEntry {
                    service_id: installed.id,
                    generation: slot.generation,
                    addr: b.addr,
                    pool: b.pool,
                    reset_flows: b.reset_flows,
                };
                (slot.written != Some(backend)).then_some((slot.id, backend))
            })
            .collect();
        let mut service = Service {
            id: installed.id,
            lut_base: installed.lut_base,
            lut_size: spec.lut_size,
            blue_share: blue_share(&table_backends, spec.ratio),
            ..Service::default()
        };
        spec.syn_proxy.program(&mut service);
        spec.forwarding.program(&mut service);
        spec.affinity.program(&mut service);
        if spec.protocol == Protocol::Udp {
            // Config validation keeps it to whole seconds in a u16.
            service.udp_idle_s = u16::try_from(spec.udp_idle.as_secs()).unwrap_or(u16::MAX);
        }
        let sources = pool_sources(&table_backends);
        let installed = self.installed.get_mut(&key).expect("installed above");
        let mut tables = Vec::new();
        for pool in Pool::ALL {
            let (buffer, write) = installed.place(pool, &sources, || {
                self.tables.build(&table_backends, pool, spec.lut_size)
            });
            tables.extend(write);
            if buffer == 1 {
                service.flags |= second_buffer_flag(pool.index() as u32);
            }
        }
        Ok(ServiceUpdate {
            backends,
            tables,
            sources,
            key,
            service,
            fresh,
        })
    }

    /// Records that `update` is in the maps: its tables are now the ones
    /// packets read, so the next change to a pool writes its other buffer,
    /// and its backends' entries are what the next update compares with.
    pub fn swapped(&mut self, update: &ServiceUpdate) {
        let Some(installed) = self.installed.get_mut(&update.key) else {
            return;
        };
        for (p, sources) in update.sources.iter().enumerate() {
            let active = update.service.active_buffer(p as u32);
            installed.active[p] = active;
            installed.written[p][active as usize] = Some(sources.clone());
        }
        for (id, entry) in &update.backends {
            if let Some(slot) = installed.backends.get_mut(&entry.addr).filter(|slot| slot.id == *id) {
                slot.written = Some(*entry);
            }
        }
    }

    /// Takes a service out: its table space is free at once, its ids are
    /// retired until no flow names them ([`Services::reap`]); `None` if it
    /// is not in the data plane.
    pub fn remove(&mut self, key: &ListenerKey) -> Option<ServiceRemoval> {
        let installed = self.installed.remove(key)?;
        self.regions
            .release(installed.lut_base, service_table_slots(installed.lut_size));
        self.retired.services.insert(installed.id);
        let backend_ids: Vec<u32> = installed.backends.into_values().map(|slot| slot.id).collect();
        self.retired.backends.extend(&backend_ids);
        Some(ServiceRemoval {
            key: *key,
            backend_ids,
            release_address: !self.vip_addresses().contains(&key.vip.ip()),
        })
    }

    /// Frees the ids no flow names any more (`flows_of_backend` and
    /// `flows_of_service` count a census's flow-table entries): those of
    /// backends that left their service's configuration (`live` backends
    /// per VIP), and those retired with a removed service. Returns the
    /// freed ids of backends still in BACKENDS, whose entries and counters
    /// must be cleared before they are handed out again.
    pub fn reap(
        &mut self,
        live: &HashMap<ListenerKey, HashSet<SocketAddr>>,
        flows_of_backend: impl Fn(u32) -> u64,
        flows_of_service: impl Fn(u32) -> u64,
    ) -> Vec<u32> {
        let mut freed = Vec::new();
        for (key, installed) in &mut self.installed {
            let Some(live) = live.get(key) else { continue };
            let gone: Vec<_> = installed
                .backends
                .iter()
                .filter(|(addr, slot)| !live.contains(addr) && flows_of_backend(slot.id) == 0)
                .map(|(addr, slot)| (*addr, slot.id))
                .collect();
            for (addr, id) in gone {
                self.backend_ids.release(id);
                installed.backends.remove(&addr);
                freed.push(id);
                tracing::info!(service = %key, backend = %addr, "removed backend drained; id freed");
            }
        }
        let free = |pool: &mut IdPool, id: u32, flows: u64| {
            if flows == 0 {
                pool.release(id);
            }
            flows > 0
        };
        let Retired { services, backends } = &mut self.retired;
        services.retain(|&id| free(&mut self.service_ids, id, flows_of_service(id)));
        backends.retain(|&id| free(&mut self.backend_ids, id, flows_of_backend(id)));
        freed
    }

    fn install(&mut self, spec: &ServiceSpec) -> Result<(), ServicesError> {
        let id = self.service_ids.allocate().ok_or(ServicesError::TooManyServices)?;
        let lut_base = match self.regions.allocate(service_table_slots(spec.lut_size)) {
            Ok(lut_base) => lut_base,
            Err(e) => {
                self.service_ids.release(id);
                return Err(e.into());
            }
        };
        // Buffer 1 active makes the first tables land in buffer 0.
        let installed = Installed {
            id,
            lut_base,
            lut_size: spec.lut_size,
            active: [1, 1],
            written: Default::default(),
            backends: HashMap::new(),
        };
        self.installed.insert(spec.key(), installed);
        Ok(())
    }

    /// Every backend of `spec` as the table builder needs it, with its id
    /// (new ones get fresh ids, in a new generation).
    fn table_backends(&mut self, spec: &ServiceSpec) -> Result<Vec<TableBackend>, ServicesError> {
        let installed = self.installed.get_mut(&spec.key()).expect("installed before");
        let mut table_backends = Vec::with_capacity(spec.backends.len());
        for b in &spec.backends {
            let id = match installed.backends.get(&b.addr) {
                Some(slot) => slot.id,
                None => {
                    let id = self.backend_ids.allocate().ok_or(ServicesError::TooManyBackends)?;
                    let generation = self.next_generation;
                    self.next_generation = generation.wrapping_add(1).max(1);
                    let slot = BackendSlot {
                        id,
                        generation,
                        written: None,
                    };
                    installed.backends.insert(b.addr, slot);
                    id
                }
            };
            table_backends.push(TableBackend {
                id,
                addr: b.addr,
                pool: b.pool,
                weight: b.weight,
            });
        }
        Ok(table_backends)
    }
}

/// What each pool's table is built from (its backends, ids and weights,
/// in the spec's order), by [`Pool::index`].
pub type PoolSources = [Vec<TableBackend>; 2];

fn pool_sources(backends: &[TableBackend]) -> PoolSources {
    Pool::ALL.map(|pool| backends.iter().filter(|b| b.pool == pool).cloned().collect())
}

#[cfg(test)]
mod tests;
