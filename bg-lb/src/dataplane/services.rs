//! Programs services into the data plane: stable ids for services and
//! backends, Maglev tables built from ratio and weights, and atomic swaps.
//!
//! Backend ids are what flows are pinned to. A backend keeps its id while any
//! flow may still reference it: one removed from a service leaves the table at
//! once but stays in BACKENDS, so its open flows drain, and its id is freed
//! only when no flow names it ([`Services::reap`]). A restarted daemon
//! rebuilds all of this from the pinned maps ([`Services::adopt`]).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use bg_lb_common::maps::{BACKEND_RESET_FLOWS, Backend, MAX_BACKENDS, MAX_SERVICES, POOL_BLUE, Service, ServiceKey};

use crate::{
    dataplane::{
        Dataplane, DataplaneError,
        lookup_table::{self, TableBackend},
        service_key,
        table_regions::{RegionAllocator, RegionsExhausted, TableRegions},
        wire_addr,
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
}

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
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
    active_base: u32,
    /// Every backend id of the service, in the table or draining.
    backend_ids: HashMap<SocketAddrV4, u32>,
}

pub struct Services {
    dataplane: Dataplane,
    regions: RegionAllocator,
    installed: HashMap<SocketAddrV4, Installed>,
    service_ids: IdPool,
    backend_ids: IdPool,
}

impl Services {
    /// Starts from empty maps.
    pub fn new(dataplane: Dataplane, lookup_capacity: u32) -> Self {
        Self {
            dataplane,
            regions: RegionAllocator::new(lookup_capacity),
            installed: HashMap::new(),
            service_ids: IdPool::new(MAX_SERVICES),
            backend_ids: IdPool::new(MAX_BACKENDS),
        }
    }

    /// Rebuilds ids and table placement from maps that may hold a previous
    /// daemon's state (pinned), so pinned flows keep their backends.
    pub fn adopt(dataplane: Dataplane) -> Result<Self, ServicesError> {
        let capacity = dataplane.lookup_capacity()?;
        let mut services = Self::new(dataplane, capacity);
        let mut vip_of_id = HashMap::new();
        for (key, service) in services.dataplane.services()? {
            let vip = vip_of_key(&key);
            let regions = TableRegions {
                size: service.lut_size,
                bases: [service.lut_base, service.lut_spare_base],
            };
            services.regions.reserve(regions)?;
            services.service_ids.mark_used(service.id);
            vip_of_id.insert(service.id, vip);
            let installed = Installed {
                id: service.id,
                regions,
                active_base: service.lut_base,
                backend_ids: HashMap::new(),
            };
            services.installed.insert(vip, installed);
        }
        for (id, backend) in services.dataplane.backends()? {
            match vip_of_id
                .get(&backend.service_id)
                .and_then(|vip| services.installed.get_mut(vip))
            {
                Some(installed) => {
                    installed.backend_ids.insert(backend_addr(&backend), id);
                    services.backend_ids.mark_used(id);
                }
                // Its service is gone, so no packet can reach it any more.
                None => services.dataplane.clear_backend(id)?,
            }
        }
        Ok(services)
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
    }

    pub fn dataplane_mut(&mut self) -> &mut Dataplane {
        &mut self.dataplane
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

    /// Creates or updates a service. New flows follow the new table as soon
    /// as this returns; pinned flows are untouched.
    pub fn apply(&mut self, spec: &ServiceSpec) -> Result<(), ServicesError> {
        if !self.installed.contains_key(&spec.vip) {
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
        let table_backends = self.program_backends(spec)?;
        let installed = self.installed.get_mut(&spec.vip).expect("installed above");
        let table = lookup_table::build(&table_backends, spec.ratio, spec.lut_size);
        let base = installed.regions.inactive(installed.active_base);
        self.dataplane.write_table(base, &table)?;
        let service = Service {
            id: installed.id,
            flags: 0,
            lut_base: base,
            lut_size: spec.lut_size,
            lut_spare_base: installed.regions.inactive(base),
            _pad: 0,
        };
        self.dataplane.set_service(&service_key(&spec.vip), &service)?;
        installed.active_base = base;
        Ok(())
    }

    /// Stops a service: new connections to its VIP pass to the kernel, and its
    /// table space and ids are freed.
    pub fn remove(&mut self, vip: &SocketAddrV4) -> Result<(), ServicesError> {
        let Some(installed) = self.installed.remove(vip) else {
            return Ok(());
        };
        self.dataplane.remove_service(&service_key(vip))?;
        self.regions.release(installed.regions);
        self.service_ids.release(installed.id);
        for id in installed.backend_ids.into_values() {
            self.dataplane.clear_backend(id)?;
            self.backend_ids.release(id);
        }
        Ok(())
    }

    /// Frees backends that left their service's configuration once no flow
    /// names them. `flows_of` counts the flow-table entries of a backend id.
    pub fn reap(
        &mut self,
        live: &HashMap<SocketAddrV4, HashSet<SocketAddrV4>>,
        flows_of: impl Fn(u32) -> u64,
    ) -> Result<(), ServicesError> {
        for (vip, installed) in &mut self.installed {
            let Some(live) = live.get(vip) else { continue };
            let gone: Vec<_> = installed
                .backend_ids
                .iter()
                .filter(|(addr, id)| !live.contains(addr) && flows_of(**id) == 0)
                .map(|(addr, id)| (*addr, *id))
                .collect();
            for (addr, id) in gone {
                self.dataplane.clear_backend(id)?;
                self.backend_ids.release(id);
                installed.backend_ids.remove(&addr);
                tracing::info!(service = %vip, backend = %addr, "removed backend drained; id freed");
            }
        }
        Ok(())
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

    /// Writes every backend of `spec` to BACKENDS (new ones get fresh ids)
    /// and returns them as the table builder needs them.
    fn program_backends(&mut self, spec: &ServiceSpec) -> Result<Vec<TableBackend>, ServicesError> {
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
            let (addr, port) = wire_addr(&b.addr);
            let backend = Backend {
                addr,
                port,
                pool: b.pool.wire(),
                flags: if b.reset_flows { BACKEND_RESET_FLOWS } else { 0 },
                service_id: installed.id,
            };
            self.dataplane.set_backend(id, &backend)?;
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

fn vip_of_key(key: &ServiceKey) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(key.addr.to_ne_bytes()), u16::from_be(key.port))
}

pub fn backend_addr(backend: &Backend) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(backend.addr.to_ne_bytes()), u16::from_be(backend.port))
}

pub fn backend_pool(backend: &Backend) -> Pool {
    if backend.pool == POOL_BLUE {
        Pool::Blue
    } else {
        Pool::Green
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
