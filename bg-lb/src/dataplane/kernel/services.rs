//! Service writes: SERVICES, BACKENDS and VIP_ADDRESSES (and the VIP filter
//! in CONFIG), from the family-free values of [`super::super::services`];
//! each entry goes to the map of its address's family.

use std::net::{IpAddr, SocketAddr};

use aya::maps::{Array, HashMap, MapError, PerCpuArray, PerCpuValues};
use bg_lb_common::maps::{self, Backend, DataplaneConfig, Service, ServiceKey, TrafficStats};

use super::{Kernel, collect, ignore_missing, map_err, nr_cpus};
use crate::{
    dataplane::{
        DataplaneError,
        l4::Protocol,
        listener::ListenerKey,
        services::{BackendEntry, ServiceRemoval, ServiceUpdate},
    },
    ratio::Pool,
};

impl Kernel {
    /// Writes `update` in its field order: backends, then the table into
    /// the inactive buffer, then the SERVICES entry that swaps it in (one
    /// atomic map update), so a packet sees the old table or the new one.
    pub(in crate::dataplane) fn write_service(&mut self, update: &ServiceUpdate) -> Result<(), DataplaneError> {
        if update.fresh {
            self.clear_syn_flood(update.service.id)?;
        }
        if update.service.forwarding == maps::FORWARDING_GATEWAY {
            self.note_gateway()?;
        }
        for (id, backend) in &update.backends {
            self.write_backend(*id, backend)?;
        }
        self.tables.write(update.service.lut_base, &update.table)?;
        // Before the entry: a frame to an address the VIP filter leaves out
        // never reaches SERVICES.
        self.add_vip_address(update.key.vip.ip())?;
        let key = service_key(&update.key)?;
        let mut services: HashMap<_, ServiceKey, Service> = self.map_mut(maps::SERVICES)?;
        services.insert(key, update.service, 0).map_err(map_err(maps::SERVICES))
    }

    fn write_backend(&mut self, id: u32, backend: &BackendEntry) -> Result<(), DataplaneError> {
        match backend.addr {
            SocketAddr::V4(addr) => {
                let entry = Backend::new(
                    backend.service_id,
                    backend.generation,
                    addr,
                    backend.pool.wire(),
                    backend.reset_flows,
                );
                self.array_set(maps::BACKENDS, id, &entry)
            }
            SocketAddr::V6(_) => Err(DataplaneError::NoIpv6),
        }
    }

    /// Lists `addr` in VIP_ADDRESSES and CONFIG's VIP filter (idempotent).
    pub(in crate::dataplane) fn add_vip_address(&mut self, addr: IpAddr) -> Result<(), DataplaneError> {
        let IpAddr::V4(addr) = addr else {
            return Err(DataplaneError::NoIpv6);
        };
        let mut addresses: HashMap<_, u32, u32> = self.map_mut(maps::VIP_ADDRESSES)?;
        addresses
            .insert(u32::from_ne_bytes(addr.octets()), 1, 0)
            .map_err(map_err(maps::VIP_ADDRESSES))?;
        self.write_vip_filter()
    }

    /// Takes `addr` out of VIP_ADDRESSES and CONFIG's VIP filter, after its
    /// last service's entry went.
    pub(in crate::dataplane) fn remove_vip_address(&mut self, addr: IpAddr) -> Result<(), DataplaneError> {
        let IpAddr::V4(addr) = addr else {
            return Err(DataplaneError::NoIpv6);
        };
        let mut addresses: HashMap<_, u32, u32> = self.map_mut(maps::VIP_ADDRESSES)?;
        ignore_missing(
            addresses.remove(&u32::from_ne_bytes(addr.octets())),
            maps::VIP_ADDRESSES,
        )?;
        self.write_vip_filter()
    }

    /// Makes CONFIG's VIP filter that of the addresses in VIP_ADDRESSES.
    fn write_vip_filter(&mut self) -> Result<(), DataplaneError> {
        let vips = self.vip_addresses()?.into_iter().filter_map(|a| match a {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        });
        let current: Array<_, DataplaneConfig> = self.map(maps::CONFIG)?;
        let cfg = current.get(&0, 0).map_err(map_err(maps::CONFIG))?;
        let cfg = cfg.with_vip_filter(vips);
        self.array_set(maps::CONFIG, 0, &cfg)
    }

    /// What VIP_ADDRESSES holds.
    pub(in crate::dataplane) fn vip_addresses(&self) -> Result<Vec<IpAddr>, DataplaneError> {
        let addresses: HashMap<_, u32, u32> = self.map(maps::VIP_ADDRESSES)?;
        let keys = addresses.keys().collect::<Result<Vec<u32>, _>>();
        let keys = keys.map_err(map_err(maps::VIP_ADDRESSES))?;
        Ok(keys.into_iter().map(|k| IpAddr::from(k.to_ne_bytes())).collect())
    }

    /// Removes the SERVICES entry (new connections to the VIP pass to the
    /// kernel), then frees the backends, whose flows' packets are dropped
    /// from then on.
    pub(in crate::dataplane) fn remove_service(&mut self, removal: &ServiceRemoval) -> Result<(), DataplaneError> {
        let key = service_key(&removal.key)?;
        let mut services: HashMap<_, ServiceKey, Service> = self.map_mut(maps::SERVICES)?;
        ignore_missing(services.remove(&key), maps::SERVICES)?;
        if removal.release_address {
            self.remove_vip_address(removal.key.vip.ip())?;
        }
        removal.backend_ids.iter().try_for_each(|&id| self.clear_backend(id))
    }

    /// Frees a backend slot and zeroes its counters, ready for reuse.
    pub(in crate::dataplane) fn clear_backend(&mut self, id: u32) -> Result<(), DataplaneError> {
        self.array_set(maps::BACKENDS, id, &Backend::default())?;
        let mut stats: PerCpuArray<_, TrafficStats> = self.map_mut(maps::BACKEND_STATS)?;
        let cpus = nr_cpus().map_err(DataplaneError::Cpus)?;
        let zeros = PerCpuValues::try_from(vec![TrafficStats::default(); cpus]).map_err(DataplaneError::Cpus)?;
        stats.set(id, zeros, 0).map_err(map_err(maps::BACKEND_STATS))
    }

    /// The SERVICES entry of `key`.
    pub(in crate::dataplane) fn service(&self, key: &ListenerKey) -> Result<Option<Service>, DataplaneError> {
        let key = service_key(key)?;
        let services: HashMap<_, ServiceKey, Service> = self.map(maps::SERVICES)?;
        match services.get(&key, 0) {
            Ok(service) => Ok(Some(service)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(maps::SERVICES)(e)),
        }
    }

    /// Every SERVICES entry, by listener (an entry of a protocol bg-lb never
    /// writes is left out).
    pub(in crate::dataplane) fn services(&self) -> Result<Vec<(ListenerKey, Service)>, DataplaneError> {
        let services: HashMap<_, ServiceKey, Service> = self.map(maps::SERVICES)?;
        let entries = collect(services.iter(), maps::SERVICES)?;
        Ok(entries
            .into_iter()
            .filter_map(|(key, service)| {
                let protocol = Protocol::from_wire(key.proto)?;
                Some((ListenerKey::new(key.vip().into(), protocol), service))
            })
            .collect())
    }

    /// Backends in use (free slots left out).
    pub(in crate::dataplane) fn backends(&self) -> Result<Vec<(u32, BackendEntry)>, DataplaneError> {
        Ok(self
            .backends4()?
            .into_iter()
            .map(|(id, b)| {
                let entry = BackendEntry {
                    service_id: b.service_id,
                    generation: b.generation,
                    addr: b.addr().into(),
                    pool: Pool::from_wire(b.pool),
                    reset_flows: b.flags & maps::BACKEND_RESET_FLOWS != 0,
                };
                (id, entry)
            })
            .collect())
    }

    /// The IPv4 backends in use, as BACKENDS holds them.
    pub(in crate::dataplane) fn backends4(&self) -> Result<Vec<(u32, Backend)>, DataplaneError> {
        let backends: Array<_, Backend> = self.map(maps::BACKENDS)?;
        let mut used = Vec::new();
        for (id, backend) in backends.iter().enumerate() {
            let backend = backend.map_err(map_err(maps::BACKENDS))?;
            if !backend.is_free() {
                used.push((id as u32, backend));
            }
        }
        Ok(used)
    }
}

/// The SERVICES key of `key`.
fn service_key(key: &ListenerKey) -> Result<ServiceKey, DataplaneError> {
    match key.vip {
        SocketAddr::V4(vip) => Ok(ServiceKey::with_proto(vip, key.protocol.wire())),
        SocketAddr::V6(_) => Err(DataplaneError::NoIpv6),
    }
}
