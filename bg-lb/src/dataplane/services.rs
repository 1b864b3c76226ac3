//! The bookkeeping of services in the data plane, without the kernel: stable
//! ids for services and backends, table regions, which buffer is active, and
//! each change computed as a value ([`ServiceUpdate`], [`ServiceRemoval`],
//! backend ids to free) for [`crate::dataplane::Dataplane`] to write.
//!
//! Backend ids are what flows are pinned to. A backend keeps its id while any
//! flow may still reference it: one removed from a service leaves the table at
//! once but stays in BACKENDS, so its open flows drain, and its id is freed
//! only when no flow names it ([`Services::reap`]). A restarted daemon
//! rebuilds all of this from the pinned maps ([`Services::adopt`]).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::SocketAddrV4,
};

use bg_lb_common::maps::{Backend, MAX_BACKENDS, MAX_SERVICES, Service, ServiceKey};

use crate::{
    dataplane::{
        lookup_table::{self, TableBackend},
        syn_proxy::SynProxy,
        table_regions::{RegionAllocator, RegionsExhausted, TableRegions},
    },
    ratio::{Pool, Ratio},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: SocketAddrV4,
    pub pool: Pool,
    /// 0 takes no new flows.
    pub weight: u32,
    /// Reset its open flows (down with `on_down = "reset"`) instead of
    /// letting them drain.
    pub reset_flows: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub vip: SocketAddrV4,
    /// Prime number of lookup-table slots.
    pub lut_size: u32,
    pub ratio: Ratio,
    pub backends: Vec<BackendSpec>,
    pub syn_proxy: SynProxy,
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
    TableSizeChanged { vip: SocketAddrV4, size: u32, new: u32 },
}

/// A service's new state as map writes. Written in field order, it keeps
/// every packet consistent: backends first, then the table into the inactive
/// buffer, then the SERVICES entry that swaps that buffer in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceUpdate {
    /// Every backend of the spec by id (new ones with fresh ids).
    pub backends: Vec<(u32, Backend)>,
    /// The lookup table, written from `service.lut_base`.
    pub table: Vec<u32>,
    pub key: ServiceKey,
    pub service: Service,
    /// The service is new (its id fresh): its flood detector starts clean.
    pub fresh: bool,
}

/// A service leaving the data plane: its SERVICES entry goes, then its
/// backends' entries and counters are cleared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRemoval {
    pub key: ServiceKey,
    pub backend_ids: Vec<u32>,
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

struct Installed {
    id: u32,
    regions: TableRegions,
    /// The buffer the SERVICES entry names: never written while it is.
    active_base: u32,
    /// Every backend id of the service, in the table or draining.
    backend_ids: HashMap<SocketAddrV4, u32>,
}

pub struct Services {
    regions: RegionAllocator,
    installed: HashMap<SocketAddrV4, Installed>,
    service_ids: IdPool,
    backend_ids: IdPool,
}

impl Services {
    /// No services, over a LOOKUP_TABLES of `lookup_capacity` slots.
    pub fn new(lookup_capacity: u32) -> Self {
        Self {
            regions: RegionAllocator::new(lookup_capacity),
            installed: HashMap::new(),
            service_ids: IdPool::new(MAX_SERVICES),
            backend_ids: IdPool::new(MAX_BACKENDS),
        }
    }

    /// Rebuilds ids and table placement from the SERVICES and used BACKENDS
    /// entries of maps that may hold a previous daemon's state (pinned), so
    /// pinned flows keep their backends. Also returns the ids of backends
    /// whose service is gone: no packet can reach them, so they are cleared.
    pub fn adopt(
        lookup_capacity: u32,
        services: impl IntoIterator<Item = (ServiceKey, Service)>,
        backends: impl IntoIterator<Item = (u32, Backend)>,
    ) -> Result<(Self, Vec<u32>), ServicesError> {
        let mut adopted = Self::new(lookup_capacity);
        let mut vip_of_id = HashMap::new();
        for (key, service) in services {
            let regions = TableRegions {
                size: service.lut_size,
                bases: [service.lut_base, service.lut_spare_base],
            };
            adopted.regions.reserve(regions)?;
            adopted.service_ids.mark_used(service.id);
            vip_of_id.insert(service.id, key.vip());
            let installed = Installed {
                id: service.id,
                regions,
                active_base: service.lut_base,
                backend_ids: HashMap::new(),
            };
            adopted.installed.insert(key.vip(), installed);
        }
        let mut orphans = Vec::new();
        for (id, backend) in backends {
            match vip_of_id
                .get(&backend.service_id)
                .and_then(|vip| adopted.installed.get_mut(vip))
            {
                Some(installed) => {
                    installed.backend_ids.insert(backend.addr(), id);
                    adopted.backend_ids.mark_used(id);
                }
                None => orphans.push(id),
            }
        }
        Ok((adopted, orphans))
    }

    /// VIPs of the services in the data plane.
    pub fn vips(&self) -> Vec<SocketAddrV4> {
        self.installed.keys().copied().collect()
    }

    /// The id flows of `backend` on service `vip` are pinned to.
    pub fn backend_id(&self, vip: &SocketAddrV4, backend: &SocketAddrV4) -> Option<u32> {
        self.installed.get(vip)?.backend_ids.get(backend).copied()
    }

    pub fn service_id(&self, vip: &SocketAddrV4) -> Option<u32> {
        self.installed.get(vip).map(|s| s.id)
    }

    /// What creating or updating a service writes: ids are allocated here,
    /// the table goes to the buffer packets are not reading. The new table
    /// counts as active only once [`Services::swapped`] says it was written.
    pub fn update(&mut self, spec: &ServiceSpec) -> Result<ServiceUpdate, ServicesError> {
        let fresh = !self.installed.contains_key(&spec.vip);
        if fresh {
            self.install(spec)?;
        }
        let size = self.installed[&spec.vip].regions.size;
        if size != spec.lut_size {
            return Err(ServicesError::TableSizeChanged {
                vip: spec.vip,
                size,
                new: spec.lut_size,
            });
        }
        let table_backends = self.table_backends(spec)?;
        let installed = &self.installed[&spec.vip];
        let backends = spec
            .backends
            .iter()
            .zip(&table_backends)
            .map(|(b, t)| (t.id, Backend::new(installed.id, b.addr, b.pool.wire(), b.reset_flows)))
            .collect();
        let base = installed.regions.inactive(installed.active_base);
        let mut service = Service {
            id: installed.id,
            lut_base: base,
            lut_size: spec.lut_size,
            lut_spare_base: installed.regions.inactive(base),
            ..Service::default()
        };
        spec.syn_proxy.program(&mut service);
        Ok(ServiceUpdate {
            backends,
            table: lookup_table::build(&table_backends, spec.ratio, spec.lut_size),
            key: ServiceKey::new(spec.vip),
            service,
            fresh,
        })
    }

    /// Records that `update` is in the maps: its table is now the one
    /// packets read, so the next update writes the other buffer.
    pub fn swapped(&mut self, update: &ServiceUpdate) {
        if let Some(installed) = self.installed.get_mut(&update.key.vip()) {
            installed.active_base = update.service.lut_base;
        }
    }

    /// Forgets a service, freeing its table space and ids; `None` if it is
    /// not in the data plane.
    pub fn remove(&mut self, vip: &SocketAddrV4) -> Option<ServiceRemoval> {
        let installed = self.installed.remove(vip)?;
        self.regions.release(installed.regions);
        self.service_ids.release(installed.id);
        let backend_ids: Vec<u32> = installed.backend_ids.into_values().collect();
        for &id in &backend_ids {
            self.backend_ids.release(id);
        }
        Some(ServiceRemoval {
            key: ServiceKey::new(*vip),
            backend_ids,
        })
    }

    /// Frees the ids of backends that left their service's configuration
    /// (`live` backends per VIP) once no flow names them; `flows_of` counts
    /// the flow-table entries of a backend id. Returns the freed ids, whose
    /// entries and counters must be cleared before they are handed out again.
    pub fn reap(
        &mut self,
        live: &HashMap<SocketAddrV4, HashSet<SocketAddrV4>>,
        flows_of: impl Fn(u32) -> u64,
    ) -> Vec<u32> {
        let mut freed = Vec::new();
        for (vip, installed) in &mut self.installed {
            let Some(live) = live.get(vip) else { continue };
            let gone: Vec<_> = installed
                .backend_ids
                .iter()
                .filter(|(addr, id)| !live.contains(addr) && flows_of(**id) == 0)
                .map(|(addr, id)| (*addr, *id))
                .collect();
            for (addr, id) in gone {
                self.backend_ids.release(id);
                installed.backend_ids.remove(&addr);
                freed.push(id);
                tracing::info!(service = %vip, backend = %addr, "removed backend drained; id freed");
            }
        }
        freed
    }

    fn install(&mut self, spec: &ServiceSpec) -> Result<(), ServicesError> {
        let id = self.service_ids.allocate().ok_or(ServicesError::TooManyServices)?;
        let regions = match self.regions.allocate(spec.lut_size) {
            Ok(regions) => regions,
            Err(e) => {
                self.service_ids.release(id);
                return Err(e.into());
            }
        };
        // active_base = bases[1] makes the first table land in bases[0].
        let installed = Installed {
            id,
            regions,
            active_base: regions.bases[1],
            backend_ids: HashMap::new(),
        };
        self.installed.insert(spec.vip, installed);
        Ok(())
    }

    /// Every backend of `spec` as the table builder needs it, with its id
    /// (new ones get fresh ids).
    fn table_backends(&mut self, spec: &ServiceSpec) -> Result<Vec<TableBackend>, ServicesError> {
        let installed = self.installed.get_mut(&spec.vip).expect("installed before");
        let mut table_backends = Vec::with_capacity(spec.backends.len());
        for b in &spec.backends {
            let id = match installed.backend_ids.get(&b.addr) {
                Some(&id) => id,
                None => {
                    let id = self.backend_ids.allocate().ok_or(ServicesError::TooManyBackends)?;
                    installed.backend_ids.insert(b.addr, id);
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

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::Ipv4Addr};

    use super::*;

    const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 80);
    const STANDBY_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 8080);
    const LUT_SIZE: u32 = 7;

    fn backend(last_octet: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, last_octet), 8080)
    }

    fn spec(vip: SocketAddrV4, backends: &[u8]) -> ServiceSpec {
        ServiceSpec {
            vip,
            lut_size: LUT_SIZE,
            ratio: Ratio::new(100).unwrap(),
            backends: backends
                .iter()
                .map(|&b| BackendSpec {
                    addr: backend(b),
                    pool: Pool::Blue,
                    weight: 100,
                    reset_flows: false,
                })
                .collect(),
            syn_proxy: SynProxy::default(),
        }
    }

    /// SERVICES and BACKENDS as the kernel would hold them after the writes.
    #[derive(Default)]
    struct Maps {
        services: HashMap<ServiceKey, Service>,
        backends: BTreeMap<u32, Backend>,
    }

    impl Maps {
        fn apply(&mut self, services: &mut Services, spec: &ServiceSpec) -> ServiceUpdate {
            let update = services.update(spec).unwrap();
            self.backends.extend(update.backends.iter().copied());
            self.services.insert(update.key, update.service);
            services.swapped(&update);
            update
        }
    }

    #[test]
    fn id_pool_reuses_the_lowest_released_id() {
        let mut pool = IdPool::new(3);
        assert_eq!(
            (pool.allocate(), pool.allocate(), pool.allocate(), pool.allocate()),
            (Some(0), Some(1), Some(2), None)
        );
        pool.release(1);
        assert_eq!(pool.allocate(), Some(1));
    }

    #[test]
    fn adopted_ids_are_not_handed_out_again() {
        let mut pool = IdPool::new(4);
        pool.mark_used(0);
        pool.mark_used(2);
        assert_eq!(
            (pool.allocate(), pool.allocate(), pool.allocate()),
            (Some(1), Some(3), None)
        );
    }

    #[test]
    fn an_update_writes_every_backend_and_names_the_spare_buffer() {
        let mut services = Services::new(100);
        let update = services.update(&spec(VIP, &[1, 2])).unwrap();
        assert_eq!(
            update.backends,
            [
                (0, Backend::new(0, backend(1), Pool::Blue.wire(), false)),
                (1, Backend::new(0, backend(2), Pool::Blue.wire(), false)),
            ]
        );
        assert_eq!(update.key, ServiceKey::new(VIP));
        assert_eq!(
            (
                update.service.lut_base,
                update.service.lut_spare_base,
                update.service.lut_size
            ),
            (0, LUT_SIZE, LUT_SIZE)
        );
        assert_eq!(update.table.len(), LUT_SIZE as usize);
        assert!(update.table.iter().all(|id| [0, 1].contains(id)), "{:?}", update.table);
    }

    #[test]
    fn applying_a_spec_twice_alternates_the_table_base() {
        let mut services = Services::new(100);
        let mut maps = Maps::default();
        let bases: Vec<u32> = (0..3)
            .map(|_| maps.apply(&mut services, &spec(VIP, &[1])).service.lut_base)
            .collect();
        assert_eq!(bases, [0, LUT_SIZE, 0]);
    }

    #[test]
    fn a_table_never_swapped_in_leaves_the_active_buffer_alone() {
        let mut services = Services::new(100);
        let mut maps = Maps::default();
        maps.apply(&mut services, &spec(VIP, &[1]));
        // Computed but not written (say the kernel refused): packets still
        // read buffer 0, so the retry writes buffer 1 again.
        let lost = services.update(&spec(VIP, &[1, 2])).unwrap();
        let retry = services.update(&spec(VIP, &[1, 2])).unwrap();
        assert_eq!((lost.service.lut_base, retry.service.lut_base), (LUT_SIZE, LUT_SIZE));
    }

    #[test]
    fn a_removed_backend_keeps_its_id_until_no_flow_names_it() {
        let mut services = Services::new(100);
        let mut maps = Maps::default();
        maps.apply(&mut services, &spec(VIP, &[1, 2]));
        let removed = services.backend_id(&VIP, &backend(2)).unwrap();
        let update = maps.apply(&mut services, &spec(VIP, &[1]));
        assert!(!update.table.contains(&removed), "it leaves the table at once");
        assert_eq!(
            services.backend_id(&VIP, &backend(2)),
            Some(removed),
            "but keeps its id"
        );

        let live = HashMap::from([(VIP, HashSet::from([backend(1)]))]);
        assert_eq!(services.reap(&live, |_| 1), [] as [u32; 0], "a flow still names it");
        assert_eq!(services.reap(&live, |_| 0), [removed]);
        assert_eq!(services.backend_id(&VIP, &backend(2)), None);
        let update = maps.apply(&mut services, &spec(VIP, &[1, 3]));
        assert_eq!(
            services.backend_id(&VIP, &backend(3)),
            Some(removed),
            "the id is reused"
        );
        assert!(
            update
                .backends
                .contains(&(removed, Backend::new(0, backend(3), Pool::Blue.wire(), false)))
        );
    }

    #[test]
    fn backends_of_a_service_missing_from_live_are_not_reaped() {
        let mut services = Services::new(100);
        Maps::default().apply(&mut services, &spec(VIP, &[1]));
        assert_eq!(services.reap(&HashMap::new(), |_| 0), [] as [u32; 0]);
    }

    #[test]
    fn removing_a_service_frees_its_ids_and_table_space() {
        let mut services = Services::new(2 * LUT_SIZE);
        let mut maps = Maps::default();
        maps.apply(&mut services, &spec(VIP, &[1, 2]));
        let removal = services.remove(&VIP).unwrap();
        assert_eq!(removal.key, ServiceKey::new(VIP));
        let mut freed = removal.backend_ids;
        freed.sort();
        assert_eq!(freed, [0, 1]);
        assert!(services.remove(&VIP).is_none());
        assert!(services.vips().is_empty());
        let update = services.update(&spec(STANDBY_VIP, &[3])).unwrap();
        assert_eq!(
            (update.service.id, update.backends[0].0, update.service.lut_base),
            (0, 0, 0)
        );
    }

    #[test]
    fn only_a_new_services_first_update_is_fresh_and_every_update_carries_its_syn_proxy() {
        let mut services = Services::new(100);
        let mut maps = Maps::default();
        let always = ServiceSpec {
            syn_proxy: SynProxy {
                mode: crate::dataplane::syn_proxy::SynProxyMode::Always,
                threshold: 9,
                mss: 1400,
            },
            ..spec(VIP, &[1])
        };
        let first = maps.apply(&mut services, &always);
        assert!(first.fresh, "a new id: its flood detector is cleared");
        let again = maps.apply(&mut services, &always);
        assert!(!again.fresh, "the running service keeps its detector");
        assert_eq!(
            (
                again.service.flags,
                again.service.syn_proxy_threshold,
                again.service.syn_proxy_mss
            ),
            (bg_lb_common::syn_proxy::SYN_PROXY_ALWAYS, 9, 1400)
        );
    }

    #[test]
    fn the_table_size_of_a_running_service_cannot_change() {
        let mut services = Services::new(100);
        Maps::default().apply(&mut services, &spec(VIP, &[1]));
        let bigger = ServiceSpec {
            lut_size: 11,
            ..spec(VIP, &[1])
        };
        assert!(matches!(
            services.update(&bigger),
            Err(ServicesError::TableSizeChanged { size: 7, new: 11, .. })
        ));
    }

    #[test]
    fn adopting_maps_rebuilds_ids() {
        let mut before = Services::new(100);
        let mut maps = Maps::default();
        maps.apply(&mut before, &spec(VIP, &[1, 2]));
        maps.apply(&mut before, &spec(STANDBY_VIP, &[1, 2]));
        maps.apply(&mut before, &spec(VIP, &[1, 2])); // VIP's table now in its second buffer
        let orphan = Backend::new(99, backend(9), Pool::Green.wire(), false);
        maps.backends.insert(7, orphan);

        let (mut after, orphans) = Services::adopt(100, maps.services.clone(), maps.backends.clone()).unwrap();
        assert_eq!(orphans, [7], "its service is gone");
        let mut vips = after.vips();
        vips.sort();
        assert_eq!(vips, [VIP, STANDBY_VIP]);
        for vip in [VIP, STANDBY_VIP] {
            assert_eq!(after.service_id(&vip), before.service_id(&vip));
            for b in [1, 2] {
                assert_eq!(
                    after.backend_id(&vip, &backend(b)),
                    before.backend_id(&vip, &backend(b))
                );
            }
        }
        let next = after.update(&spec(VIP, &[1, 2])).unwrap();
        assert_eq!(
            next.service.lut_base, 0,
            "the next table goes to the buffer packets do not read"
        );
        let new_backend = after.update(&spec(VIP, &[1, 2, 3])).unwrap();
        assert_eq!(
            new_backend.backends[2].0, 4,
            "adopted ids 0..4 are not handed out again"
        );
        let new_service = ServiceSpec {
            vip: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 101), 80),
            ..spec(VIP, &[])
        };
        let placed = after.update(&new_service).unwrap().service;
        assert_eq!(
            (placed.id, placed.lut_base),
            (2, 4 * LUT_SIZE),
            "ids and regions in use are skipped"
        );
    }
}
