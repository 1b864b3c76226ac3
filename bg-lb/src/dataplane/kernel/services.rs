//! Service writes: SERVICES, BACKENDS and VIP_ADDRESSES and their IPv6
//! twins (and the VIP filters in CONFIG), from the family-free values of
//! [`crate::dataplane::services`]; each entry goes to the maps of its
//! address's family ([`Wire`]).

use std::net::{IpAddr, SocketAddr};

use aya::maps::{Array, HashMap, PerCpuArray, PerCpuValues};
use bg_lb_common::maps::{
    self, Backend, Backend6, BackendOf, DataplaneConfig, Ipv6Wire, Service, ServiceKeyOf, TrafficStats,
};

use super::{Kernel, collect, found, ignore_missing, map_err, nr_cpus};
use crate::{
    dataplane::{
        DataplaneError,
        l4::Protocol,
        listener::ListenerKey,
        services::{BackendEntry, ServiceRemoval, ServiceUpdate},
        wire::{Wire, wire_socket},
    },
    ratio::Pool,
};

impl Kernel {
    /// Writes `update` in its field order: backends, then each table into
    /// its pool's buffer packets do not read, then the SERVICES (or
    /// SERVICES6) entry that flips those buffers in and sets the ratio (one
    /// atomic map update), so a packet sees the old tables and ratio or the
    /// new ones.
    pub(in crate::dataplane) fn write_service(&mut self, update: &ServiceUpdate) -> Result<(), DataplaneError> {
        if update.fresh {
            self.clear_syn_flood(update.service.id)?;
        }
        if update.service.forwarding == maps::FORWARDING_GATEWAY {
            self.note_gateway()?;
        }
        for (id, backend) in &update.backends {
            match backend.addr {
                SocketAddr::V4(_) => self.write_backend::<u32>(*id, backend)?,
                SocketAddr::V6(_) => self.write_backend::<Ipv6Wire>(*id, backend)?,
            }
        }
        for table in &update.tables {
            self.tables.write(table.first_slot, &table.slots)?;
        }
        // Before the entry: a frame to an address the VIP filter leaves out
        // never reaches SERVICES.
        self.add_vip_address(update.key.vip.ip())?;
        match update.key.vip {
            SocketAddr::V4(_) => self.insert_service::<u32>(&update.key, update.service),
            SocketAddr::V6(_) => self.insert_service::<Ipv6Wire>(&update.key, update.service),
        }
    }

    fn write_backend<A: Wire>(&mut self, id: u32, backend: &BackendEntry) -> Result<(), DataplaneError> {
        let (addr, port) = wire_socket::<A>(backend.addr).ok_or(DataplaneError::OtherFamily(backend.addr))?;
        let entry = BackendOf::from_wire(
            backend.service_id,
            backend.generation,
            addr,
            port,
            backend.pool.wire(),
            backend.reset_flows,
        );
        self.array_set(A::BACKENDS, id, &entry)
    }

    fn insert_service<A: Wire>(&mut self, key: &ListenerKey, service: Service) -> Result<(), DataplaneError> {
        let key = service_key::<A>(key)?;
        let mut services: HashMap<_, ServiceKeyOf<A>, Service> = self.map_mut(A::SERVICES)?;
        services.insert(key, service, 0).map_err(map_err(A::SERVICES))
    }

    /// Lists `addr` in VIP_ADDRESSES (or VIP_ADDRESSES6) and CONFIG's VIP
    /// filter of its family (idempotent).
    pub(in crate::dataplane) fn add_vip_address(&mut self, addr: IpAddr) -> Result<(), DataplaneError> {
        match addr {
            IpAddr::V4(_) => self.set_vip_address::<u32>(addr, true),
            IpAddr::V6(_) => self.set_vip_address::<Ipv6Wire>(addr, true),
        }
    }

    /// Takes `addr` out of VIP_ADDRESSES (or VIP_ADDRESSES6) and CONFIG's
    /// VIP filter, after its last service's entry went.
    pub(in crate::dataplane) fn remove_vip_address(&mut self, addr: IpAddr) -> Result<(), DataplaneError> {
        match addr {
            IpAddr::V4(_) => self.set_vip_address::<u32>(addr, false),
            IpAddr::V6(_) => self.set_vip_address::<Ipv6Wire>(addr, false),
        }
    }

    fn set_vip_address<A: Wire>(&mut self, addr: IpAddr, listed: bool) -> Result<(), DataplaneError> {
        let wire = A::from_ip(addr).ok_or(DataplaneError::OtherFamily(SocketAddr::new(addr, 0)))?;
        if listed && self.vip_address_in_force(wire)? {
            return Ok(());
        }
        let mut addresses: HashMap<_, A, u32> = self.map_mut(A::VIP_ADDRESSES)?;
        if listed {
            addresses.insert(wire, 1, 0).map_err(map_err(A::VIP_ADDRESSES))?;
        } else {
            ignore_missing(addresses.remove(&wire), A::VIP_ADDRESSES)?;
        }
        self.write_vip_filter()
    }

    /// Whether `wire` is listed in VIP_ADDRESSES (or VIP_ADDRESSES6) and its
    /// bit is set in CONFIG's filter, so listing it again would change
    /// nothing. Every service write lists its VIP, and the filter is
    /// recomputed from every listed address (a syscall each): without this
    /// check a health flip across 100 services made 100 x 100 of them. Both
    /// are read, not the list alone: a daemon stopped between the two
    /// writes left the address listed with its bit clear, and the next
    /// write of its service sets the bit.
    fn vip_address_in_force<A: Wire>(&self, wire: A) -> Result<bool, DataplaneError> {
        let addresses: HashMap<_, A, u32> = self.map(A::VIP_ADDRESSES)?;
        if found(addresses.get(&wire, 0), A::VIP_ADDRESSES)?.is_none() {
            return Ok(false);
        }
        let config: Array<_, DataplaneConfig> = self.map(maps::CONFIG)?;
        let cfg = config.get(&0, 0).map_err(map_err(maps::CONFIG))?;
        Ok(cfg.may_be_vip(wire))
    }

    /// Makes CONFIG's VIP filters those of the addresses in VIP_ADDRESSES
    /// and VIP_ADDRESSES6.
    fn write_vip_filter(&mut self) -> Result<(), DataplaneError> {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for addr in self.vip_addresses()? {
            match addr {
                IpAddr::V4(addr) => v4.push(addr),
                IpAddr::V6(addr) => v6.push(addr),
            }
        }
        let current: Array<_, DataplaneConfig> = self.map(maps::CONFIG)?;
        let cfg = current.get(&0, 0).map_err(map_err(maps::CONFIG))?;
        let cfg = cfg.with_vip_filter(v4).with_vip6_filter(v6);
        self.array_set(maps::CONFIG, 0, &cfg)
    }

    /// What VIP_ADDRESSES and VIP_ADDRESSES6 hold.
    pub(in crate::dataplane) fn vip_addresses(&self) -> Result<Vec<IpAddr>, DataplaneError> {
        let mut all = self.vip_addresses_of::<u32>()?;
        all.extend(self.vip_addresses_of::<Ipv6Wire>()?);
        Ok(all)
    }

    fn vip_addresses_of<A: Wire>(&self) -> Result<Vec<IpAddr>, DataplaneError> {
        let addresses: HashMap<_, A, u32> = self.map(A::VIP_ADDRESSES)?;
        let keys = addresses.keys().collect::<Result<Vec<A>, _>>();
        let keys = keys.map_err(map_err(A::VIP_ADDRESSES))?;
        Ok(keys.into_iter().map(A::to_ip).collect())
    }

    /// Removes the SERVICES (or SERVICES6) entry (new connections to the
    /// VIP pass to the kernel), then frees the backends, whose flows'
    /// packets are dropped from then on.
    pub(in crate::dataplane) fn remove_service(&mut self, removal: &ServiceRemoval) -> Result<(), DataplaneError> {
        match removal.key.vip {
            SocketAddr::V4(_) => self.remove_service_entry::<u32>(&removal.key)?,
            SocketAddr::V6(_) => self.remove_service_entry::<Ipv6Wire>(&removal.key)?,
        }
        if removal.release_address {
            self.remove_vip_address(removal.key.vip.ip())?;
        }
        removal.backend_ids.iter().try_for_each(|&id| self.clear_backend(id))
    }

    fn remove_service_entry<A: Wire>(&mut self, key: &ListenerKey) -> Result<(), DataplaneError> {
        let key = service_key::<A>(key)?;
        let mut services: HashMap<_, ServiceKeyOf<A>, Service> = self.map_mut(A::SERVICES)?;
        ignore_missing(services.remove(&key), A::SERVICES)
    }

    /// Frees a backend id in both families' arrays and zeroes its
    /// counters, ready for reuse by a backend of either family.
    pub(in crate::dataplane) fn clear_backend(&mut self, id: u32) -> Result<(), DataplaneError> {
        self.array_set(maps::BACKENDS, id, &Backend::default())?;
        self.array_set(maps::BACKENDS6, id, &Backend6::default())?;
        let mut stats: PerCpuArray<_, TrafficStats> = self.map_mut(maps::BACKEND_STATS)?;
        let cpus = nr_cpus().map_err(DataplaneError::Cpus)?;
        let zeros = PerCpuValues::try_from(vec![TrafficStats::default(); cpus]).map_err(DataplaneError::Cpus)?;
        stats.set(id, zeros, 0).map_err(map_err(maps::BACKEND_STATS))
    }

    /// The SERVICES (or SERVICES6) entry of `key`.
    pub(in crate::dataplane) fn service(&self, key: &ListenerKey) -> Result<Option<Service>, DataplaneError> {
        match key.vip {
            SocketAddr::V4(_) => self.service_of::<u32>(key),
            SocketAddr::V6(_) => self.service_of::<Ipv6Wire>(key),
        }
    }

    fn service_of<A: Wire>(&self, key: &ListenerKey) -> Result<Option<Service>, DataplaneError> {
        let key = service_key::<A>(key)?;
        let services: HashMap<_, ServiceKeyOf<A>, Service> = self.map(A::SERVICES)?;
        found(services.get(&key, 0), A::SERVICES)
    }

    /// Every SERVICES and SERVICES6 entry, by listener (an entry of a
    /// protocol bg-lb never writes is left out).
    pub(in crate::dataplane) fn services(&self) -> Result<Vec<(ListenerKey, Service)>, DataplaneError> {
        let mut all = self.services_of::<u32>()?;
        all.extend(self.services_of::<Ipv6Wire>()?);
        Ok(all)
    }

    fn services_of<A: Wire>(&self) -> Result<Vec<(ListenerKey, Service)>, DataplaneError> {
        let services: HashMap<_, ServiceKeyOf<A>, Service> = self.map(A::SERVICES)?;
        let entries = collect(services.iter(), A::SERVICES)?;
        Ok(entries
            .into_iter()
            .filter_map(|(key, service)| {
                let protocol = Protocol::from_wire(key.proto)?;
                Some((ListenerKey::new(A::socket(key.addr, key.port), protocol), service))
            })
            .collect())
    }

    /// Backends in use in BACKENDS and BACKENDS6 (free slots left out).
    pub(in crate::dataplane) fn backends(&self) -> Result<Vec<(u32, BackendEntry)>, DataplaneError> {
        let mut all = self.backend_entries::<u32>()?;
        all.extend(self.backend_entries::<Ipv6Wire>()?);
        Ok(all)
    }

    fn backend_entries<A: Wire>(&self) -> Result<Vec<(u32, BackendEntry)>, DataplaneError> {
        let entry = |b: BackendOf<A>| BackendEntry {
            service_id: b.service_id,
            generation: b.generation,
            addr: A::socket(b.addr, b.port),
            pool: Pool::from_wire(b.pool),
            reset_flows: b.flags & maps::BACKEND_RESET_FLOWS != 0,
        };
        let backends = self.family_backends::<A>()?;
        Ok(backends.into_iter().map(|(id, b)| (id, entry(b))).collect())
    }

    /// A family's backends in use, as its array holds them.
    pub(in crate::dataplane) fn family_backends<A: Wire>(&self) -> Result<Vec<(u32, BackendOf<A>)>, DataplaneError> {
        let backends: Array<_, BackendOf<A>> = self.map(A::BACKENDS)?;
        let mut used = Vec::new();
        for (id, backend) in backends.iter().enumerate() {
            let backend = backend.map_err(map_err(A::BACKENDS))?;
            if !backend.is_free() {
                used.push((id as u32, backend));
            }
        }
        Ok(used)
    }
}

/// The SERVICES or SERVICES6 key of `key`, of family `A`.
fn service_key<A: Wire>(key: &ListenerKey) -> Result<ServiceKeyOf<A>, DataplaneError> {
    let (addr, port) = wire_socket::<A>(key.vip).ok_or(DataplaneError::OtherFamily(key.vip))?;
    Ok(ServiceKeyOf::from_wire(addr, port, key.protocol.wire()))
}
