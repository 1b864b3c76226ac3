//! Programs services into the data plane: stable ids for services and
//! backends, Maglev tables built from ratio and weights, and atomic swaps.
//!
//! Backend ids are what flows are pinned to, so a backend keeps its id for as
//! long as the process runs, even once it leaves the table: its open flows
//! keep reaching it and drain.

use std::{collections::HashMap, net::SocketAddrV4};

use bg_lb_common::maps::{Backend, MAX_BACKENDS, MAX_SERVICES, Service};

use crate::{
    dataplane::{Dataplane, DataplaneError, service_key, wire_addr},
    lookup_table::{self, TableBackend},
    ratio::{Pool, Ratio},
    table_regions::{RegionAllocator, RegionsExhausted, TableRegions},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: SocketAddrV4,
    pub pool: Pool,
    /// 0 takes no new flows.
    pub weight: u32,
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
    #[error("more than {MAX_BACKENDS} backends")]
    TooManyBackends,
    #[error("service {vip}: lookup table size {size} changed to {new}; remove and re-add the service")]
    TableSizeChanged { vip: SocketAddrV4, size: u32, new: u32 },
}

struct Installed {
    id: u32,
    regions: TableRegions,
    active_base: u32,
    backend_ids: HashMap<SocketAddrV4, u32>,
}

pub struct Services {
    dataplane: Dataplane,
    regions: RegionAllocator,
    installed: HashMap<SocketAddrV4, Installed>,
    next_service_id: u32,
    next_backend_id: u32,
}

impl Services {
    pub fn new(dataplane: Dataplane, lookup_capacity: u32) -> Self {
        Self {
            dataplane,
            regions: RegionAllocator::new(lookup_capacity),
            installed: HashMap::new(),
            next_service_id: 0,
            next_backend_id: 0,
        }
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
    }

    pub fn dataplane_mut(&mut self) -> &mut Dataplane {
        &mut self.dataplane
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
        let installed = self.installed.get(&spec.vip).expect("installed above");
        if installed.regions.size != spec.lut_size {
            return Err(ServicesError::TableSizeChanged {
                vip: spec.vip,
                size: installed.regions.size,
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
        };
        self.dataplane.set_service(&service_key(&spec.vip), &service)?;
        installed.active_base = base;
        Ok(())
    }

    fn install(&mut self, spec: &ServiceSpec) -> Result<(), ServicesError> {
        if self.next_service_id >= MAX_SERVICES {
            return Err(ServicesError::TooManyServices);
        }
        let regions = self.regions.allocate(spec.lut_size)?;
        let id = self.next_service_id;
        self.next_service_id += 1;
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
                    if self.next_backend_id >= MAX_BACKENDS {
                        return Err(ServicesError::TooManyBackends);
                    }
                    let id = self.next_backend_id;
                    self.next_backend_id += 1;
                    installed.backend_ids.insert(b.addr, id);
                    id
                }
            };
            let (addr, port) = wire_addr(&b.addr);
            let backend = Backend {
                addr,
                port,
                pool: b.pool.wire(),
                _pad: 0,
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
