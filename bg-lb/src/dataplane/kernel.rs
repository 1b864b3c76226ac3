//! The loaded eBPF object: the one module that calls into the kernel. It
//! loads and attaches the XDP program and reads and writes its maps with the
//! types from bg-lb-common, including the changes [`super::services`]
//! computes as values.

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, DevMapHash, HashMap, Map, MapData, MapError, MapInfo, PerCpuArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use bg_lb_common::{
    counters::{COUNTER_COUNT, Counter},
    maps::{self, DataplaneConfig, FlowKey, FlowKeyOf, FlowOf, NatKey, NatOwner, SynFlood, TrafficStats},
};

mod programs;
pub(super) mod raw;
mod services;

use super::{
    AttachMode, Attached, DataplaneError, DataplaneOptions, EbpfLogger,
    layout::{self, MapDef, Pinned},
    migration::{self, Migration},
    sweep::{FamilyMaps, SweepMaps},
    table_memory::TableMemory,
    wire::Wire,
};
use crate::ebpf_objects;

/// A flow table entry of family `A`: its key and flow.
pub(super) type FlowEntry<A> = (FlowKeyOf<A>, FlowOf<A>);

pub(super) struct Kernel {
    ebpf: Ebpf,
    logger: Option<EbpfLogger>,
    /// Pinned maps moved into maps of a new capacity, to finish once the
    /// program is attached.
    migrations: Vec<Migration>,
    /// LOOKUP_TABLES, mapped: where tables are written.
    tables: TableMemory,
}

impl Kernel {
    /// Loads the object (creating or, with `pin_dir`, adopting its maps) and
    /// loads the XDP program into the kernel. Nothing is attached yet.
    pub(super) fn load(opts: &DataplaneOptions) -> Result<Self, DataplaneError> {
        let capacities = opts.capacities();
        let mut loader = EbpfLoader::new();
        for (name, entries) in capacities {
            loader.map_max_entries(name, entries);
        }
        let Some(dir) = &opts.pin_dir else {
            return Self::load_with(&mut loader, Vec::new(), None);
        };
        let expected = layout::expected(ebpf_objects::load_balancer(), &capacities).map_err(DataplaneError::Object)?;
        let version = layout::version(&expected, &capacities);
        // Judged before anything is created: a refusal touches nothing.
        let migrate = layout::judge(&read_pinned(dir), &expected, version).map_err(DataplaneError::IncompatiblePin)?;
        let mut migrations = Vec::new();
        for name in maps::ALL_MAPS {
            migration::remove_next_pin(&migration::next_pin(dir, name));
            if migrate.contains(&name) {
                let m = Migration::open(dir, name)?;
                loader.map_pin_path(name, m.next().to_owned());
                migrations.push(m);
            } else {
                // An existing pin is reused with its contents (flows survive).
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let next_pins: Vec<_> = migrations.iter().map(|m| m.next().to_owned()).collect();
        Self::load_with(&mut loader, migrations, Some(version)).inspect_err(|_| {
            for pin in &next_pins {
                migration::remove_next_pin(pin);
            }
        })
    }

    /// Loads with `loader`, fills the maps of `migrations`, and records the
    /// layout `version` of pinned maps.
    fn load_with(
        loader: &mut EbpfLoader,
        migrations: Vec<Migration>,
        version: Option<u64>,
    ) -> Result<Self, DataplaneError> {
        let mut ebpf = loader.load(ebpf_objects::load_balancer())?;
        // The program logs only rare failures; without a reader they are
        // simply dropped, so a missing logger is not fatal.
        let logger = aya_log::EbpfLogger::init(&mut ebpf)
            .inspect_err(|e| tracing::warn!(error = %e, "eBPF log records will not be shown"))
            .ok();
        let tables = map_tables(&ebpf)?;
        let mut kernel = Self {
            ebpf,
            logger,
            migrations: Vec::new(),
            tables,
        };
        for m in migrations {
            let copied = m.fill(kernel.raw_map_mut(m.name)?)?;
            tracing::info!(
                map = m.name,
                entries = copied,
                "copying a pinned map into one of the new capacity"
            );
            kernel.migrations.push(m);
        }
        if let Some(version) = version {
            kernel.array_set(maps::LAYOUT, 0, &version)?;
        }
        load_verified(kernel.xdp_mut()?).map_err(program_err)?;
        kernel.load_syn_proxy_jobs()?;
        kernel.load_flow_reset()?;
        Ok(kernel)
    }

    /// See [`super::Dataplane::finish_migrations`].
    pub(super) fn finish_migrations(&mut self) -> Result<(), DataplaneError> {
        if self.migrations.is_empty() {
            return Ok(());
        }
        for m in std::mem::take(&mut self.migrations) {
            let name = m.name;
            let added = m.finish(self.raw_map_mut(name)?)?;
            tracing::info!(map = name, added, "migrated a pinned map to its new capacity");
        }
        // A reverse entry the old program made after the copy may have lost
        // its port to a new flow: every pinned flow checks its own.
        self.advance_nat_epoch()
    }

    pub(super) fn take_logger(&mut self) -> Option<EbpfLogger> {
        self.logger.take()
    }

    pub(super) fn xdp(&self) -> Result<&Xdp, DataplaneError> {
        let prog = self
            .ebpf
            .program(maps::XDP_PROGRAM)
            .ok_or(DataplaneError::MissingProgram(maps::XDP_PROGRAM))?;
        prog.try_into().map_err(program_err)
    }

    fn xdp_mut(&mut self) -> Result<&mut Xdp, DataplaneError> {
        let prog = self
            .ebpf
            .program_mut(maps::XDP_PROGRAM)
            .ok_or(DataplaneError::MissingProgram(maps::XDP_PROGRAM))?;
        prog.try_into().map_err(program_err)
    }

    pub(super) fn attach(&mut self, ifindex: u32, mode: XdpMode) -> Result<XdpLinkId, DataplaneError> {
        let link = self.attach_in(ifindex, mode)?;
        self.add_tx_port(ifindex)?;
        Ok(link)
    }

    /// See [`super::Dataplane::attach_pinned`].
    pub(super) fn attach_pinned(
        &mut self,
        iface: &str,
        mode: AttachMode,
        pin: &Path,
    ) -> Result<Attached, DataplaneError> {
        let ifindex = nix::net::if_::if_nametoindex(iface).map_err(|e| DataplaneError::Interface {
            name: iface.to_owned(),
            cause: e,
        })?;
        self.add_tx_port(ifindex)?;
        let link_err = |e: Box<dyn std::error::Error + Send + Sync>| DataplaneError::Link {
            path: pin.to_owned(),
            cause: e,
        };
        if pin.exists() {
            let link = PinnedLink::from_pin(pin).map_err(|e| link_err(e.into()))?;
            let link = XdpLink::try_from(FdLink::from(link)).map_err(|e| link_err(e.into()))?;
            self.xdp_mut()?.attach_to_link(link).map_err(program_err)?;
            return Ok(Attached::Replaced);
        }
        let (id, used) = match mode {
            AttachMode::Native => (self.attach_in(ifindex, XdpMode::Driver)?, XdpMode::Driver),
            AttachMode::Generic => (self.attach_in(ifindex, XdpMode::Skb)?, XdpMode::Skb),
            AttachMode::Auto => match self.attach_in(ifindex, XdpMode::Driver) {
                Ok(id) => (id, XdpMode::Driver),
                Err(e) => {
                    tracing::warn!(interface = iface, error = %e, "native XDP unavailable, falling back to generic mode (slower); set xdp_mode = \"native\" to refuse");
                    (self.attach_in(ifindex, XdpMode::Skb)?, XdpMode::Skb)
                }
            },
        };
        let link = self.xdp_mut()?.take_link(id).map_err(program_err)?;
        let link = FdLink::try_from(link).map_err(|e| link_err(e.into()))?;
        link.pin(pin).map_err(|e| link_err(e.into()))?;
        Ok(Attached::New(used))
    }

    fn attach_in(&mut self, ifindex: u32, mode: XdpMode) -> Result<XdpLinkId, DataplaneError> {
        self.xdp_mut()?.attach_to_if_index(ifindex, mode).map_err(program_err)
    }

    /// The capacity LOOKUP_TABLES really has: an adopted pinned map keeps the
    /// size it was created with.
    pub(super) fn lookup_capacity(&self) -> Result<u32, DataplaneError> {
        lookup_tables_capacity(lookup_tables(&self.ebpf)?)
    }

    /// Allows XDP_REDIRECT to `ifindex` (an interface the program may send on).
    pub(super) fn add_tx_port(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        let mut ports: DevMapHash<_> = self.map_mut(maps::TX_PORTS)?;
        Ok(ports.insert(ifindex, ifindex, None, 0)?)
    }

    /// Writes `cfg` with the NAT epoch moved forward from the one in the
    /// map: it never goes back, so no pinned flow skips a port check. Once
    /// set, `gateway_seen` stays set. The VIP filter stays the map's (see
    /// [`Kernel::add_vip_address`]).
    pub(super) fn set_config(&mut self, cfg: &DataplaneConfig) -> Result<(), DataplaneError> {
        let current: Array<_, DataplaneConfig> = self.map(maps::CONFIG)?;
        let current = current.get(&0, 0).map_err(map_err(maps::CONFIG))?;
        let cfg = DataplaneConfig {
            nat_epoch: current.nat_epoch.wrapping_add(1),
            gateway_seen: current.gateway_seen | cfg.gateway_seen,
            vip_filter: current.vip_filter,
            vip6_filter: current.vip6_filter,
            ..*cfg
        };
        self.array_set(maps::CONFIG, 0, &cfg)
    }

    /// Marks the maps as holding (or about to hold) `gateway` flows, before
    /// the first such service is written.
    pub(super) fn note_gateway(&mut self) -> Result<(), DataplaneError> {
        let current: Array<_, DataplaneConfig> = self.map(maps::CONFIG)?;
        let cfg = current.get(&0, 0).map_err(map_err(maps::CONFIG))?;
        if cfg.gateway_seen != 0 {
            return Ok(());
        }
        self.array_set(maps::CONFIG, 0, &DataplaneConfig { gateway_seen: 1, ..cfg })
    }

    /// Tells pinned flows that reverse-NAT entries were removed: each makes
    /// sure its port is its own again (see [`DataplaneConfig::nat_epoch`]).
    pub(super) fn advance_nat_epoch(&mut self) -> Result<(), DataplaneError> {
        let current: Array<_, DataplaneConfig> = self.map(maps::CONFIG)?;
        let cfg = current.get(&0, 0).map_err(map_err(maps::CONFIG))?;
        self.set_config(&cfg)
    }

    /// The SYN proxy's flood detector of service `id`.
    pub(super) fn syn_flood(&self, id: u32) -> Result<SynFlood, DataplaneError> {
        let floods: Array<_, SynFlood> = self.map(maps::SYN_FLOOD)?;
        floods.get(&id, 0).map_err(map_err(maps::SYN_FLOOD))
    }

    /// Clears the flood detector of service `id`, for a new service.
    pub(super) fn clear_syn_flood(&mut self, id: u32) -> Result<(), DataplaneError> {
        self.array_set(maps::SYN_FLOOD, id, &SynFlood::default())
    }

    /// Every entry of the family's flow table.
    pub(super) fn flows<A: Wire>(&self) -> Result<Vec<FlowEntry<A>>, DataplaneError> {
        let flows: HashMap<_, FlowKeyOf<A>, FlowOf<A>> = self.map(A::FLOWS)?;
        collect(flows.iter(), A::FLOWS)
    }

    /// The family's flow table's entry for `key`, if any.
    pub(super) fn flow<A: Wire>(&self, key: &FlowKeyOf<A>) -> Result<Option<FlowOf<A>>, DataplaneError> {
        let flows: HashMap<_, FlowKeyOf<A>, FlowOf<A>> = self.map(A::FLOWS)?;
        found(flows.get(key, 0), A::FLOWS)
    }

    /// Every reverse-NAT entry: (backend, SNAT port) -> the flow owning it.
    pub(super) fn reverse_nat(&self) -> Result<Vec<(NatKey, FlowKey)>, DataplaneError> {
        let nat: HashMap<_, NatKey, NatOwner> = self.map(maps::REVERSE_NAT)?;
        let owners = collect(nat.iter(), maps::REVERSE_NAT)?;
        Ok(owners.into_iter().map(|(nat, owner)| (nat, owner.flow)).collect())
    }

    pub(super) fn reverse_owner(&self, nat: &NatKey) -> Result<Option<FlowKey>, DataplaneError> {
        let map: HashMap<_, NatKey, NatOwner> = self.map(maps::REVERSE_NAT)?;
        Ok(found(map.get(nat, 0), maps::REVERSE_NAT)?.map(|owner| owner.flow))
    }

    /// The maps a flow sweep walks, through fds of their own (see
    /// [`SweepMaps`]).
    pub(super) fn sweep_maps(&self) -> Result<SweepMaps, DataplaneError> {
        Ok(SweepMaps {
            v4: self.family_maps()?,
            v6: self.family_maps()?,
            services: self.duplicate(maps::SERVICES)?,
            services6: self.duplicate(maps::SERVICES6)?,
        })
    }

    fn family_maps<A: Wire>(&self) -> Result<FamilyMaps<A>, DataplaneError> {
        Ok(FamilyMaps {
            flows: self.duplicate(A::FLOWS)?,
            reverse: self.duplicate(A::REVERSE_NAT)?,
            backends: self.duplicate(A::BACKENDS)?,
        })
    }

    /// `name` through a file descriptor of its own.
    fn duplicate<K: Pod, V: Pod>(&self, name: &'static str) -> Result<raw::RawMap<K, V>, DataplaneError> {
        let map = self.ebpf.map(name).ok_or(DataplaneError::MissingMap(name))?;
        raw::RawMap::duplicate(map, name)
    }

    /// A backend's traffic counters, summed over CPUs.
    pub(super) fn backend_stats(&self, id: u32) -> Result<TrafficStats, DataplaneError> {
        self.per_cpu_sum(maps::BACKEND_STATS, id, sum_stats)
    }

    pub(super) fn service_stats(&self, id: u32) -> Result<TrafficStats, DataplaneError> {
        self.per_cpu_sum(maps::SERVICE_STATS, id, sum_stats)
    }

    /// Every global counter, summed over CPUs.
    pub(super) fn counters(&self) -> Result<Vec<(Counter, u64)>, DataplaneError> {
        (0..COUNTER_COUNT)
            .map(|i| {
                Ok((
                    Counter::ALL[i as usize],
                    self.per_cpu_sum(maps::COUNTERS, i, |v: &[u64]| v.iter().sum())?,
                ))
            })
            .collect()
    }

    fn per_cpu_sum<V: Pod, R>(
        &self,
        name: &'static str,
        index: u32,
        sum: impl Fn(&[V]) -> R,
    ) -> Result<R, DataplaneError> {
        let array: PerCpuArray<_, V> = self.map(name)?;
        let values = array.get(&index, 0).map_err(map_err(name))?;
        Ok(sum(&values))
    }

    pub(super) fn array_set<V: Pod>(
        &mut self,
        name: &'static str,
        index: u32,
        value: &V,
    ) -> Result<(), DataplaneError> {
        let mut array: Array<_, V> = self.map_mut(name)?;
        array.set(index, value, 0).map_err(map_err(name))
    }

    fn raw_map_mut(&mut self, name: &'static str) -> Result<&mut Map, DataplaneError> {
        self.ebpf.map_mut(name).ok_or(DataplaneError::MissingMap(name))
    }

    pub(super) fn map<'a, T>(&'a self, name: &'static str) -> Result<T, DataplaneError>
    where
        T: TryFrom<&'a aya::maps::Map, Error = MapError>,
    {
        let map = self.ebpf.map(name).ok_or(DataplaneError::MissingMap(name))?;
        T::try_from(map).map_err(map_err(name))
    }

    pub(super) fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, DataplaneError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        let map = self.ebpf.map_mut(name).ok_or(DataplaneError::MissingMap(name))?;
        T::try_from(map).map_err(map_err(name))
    }
}

/// LOOKUP_TABLES of a loaded object.
fn lookup_tables(ebpf: &Ebpf) -> Result<&MapData, DataplaneError> {
    match ebpf.map(maps::LOOKUP_TABLES) {
        Some(aya::maps::Map::Array(data)) => Ok(data),
        _ => Err(DataplaneError::MissingMap(maps::LOOKUP_TABLES)),
    }
}

fn lookup_tables_capacity(data: &MapData) -> Result<u32, DataplaneError> {
    Ok(data.info().map_err(map_err(maps::LOOKUP_TABLES))?.max_entries())
}

/// Maps all of LOOKUP_TABLES (created, or adopted with its real capacity).
fn map_tables(ebpf: &Ebpf) -> Result<TableMemory, DataplaneError> {
    let data = lookup_tables(ebpf)?;
    Ok(TableMemory::new(data.fd(), lookup_tables_capacity(data)?)?)
}

impl Drop for Kernel {
    /// Removes the pins of maps still being migrated (a start that failed
    /// before [`Kernel::finish_migrations`]): the old pins stay in use.
    fn drop(&mut self) {
        for m in &self.migrations {
            m.abandon();
        }
    }
}

/// What `dir` holds: every pinned map's definition and the layout version.
fn read_pinned(dir: &Path) -> Pinned {
    let mut pinned = Pinned {
        dir: dir.to_owned(),
        ..Pinned::default()
    };
    for name in maps::ALL_MAPS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let def = MapInfo::from_pin(&path).and_then(|info| {
            Ok(MapDef {
                map_type: info.map_type()? as u32,
                key_size: info.key_size(),
                value_size: info.value_size(),
                max_entries: info.max_entries(),
                flags: info.map_flags(),
            })
        });
        if name == maps::LAYOUT && def.is_ok() {
            pinned.version = read_version(&path).ok();
        }
        pinned.maps.insert(name, def.map_err(|e| e.to_string()));
    }
    pinned
}

fn read_version(path: &Path) -> Result<u64, MapError> {
    let map = Map::from_map_data(MapData::from_pin(path)?)?;
    let array: Array<_, u64> = map.try_into()?;
    array.get(&0, 0)
}

/// A lookup's value, `None` for a missing key.
fn found<V>(result: Result<V, MapError>, name: &'static str) -> Result<Option<V>, DataplaneError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(map_err(name)(e)),
    }
}

fn ignore_missing(result: Result<(), MapError>, name: &'static str) -> Result<(), DataplaneError> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(map_err(name)(e)),
    }
}

fn nr_cpus() -> Result<usize, std::io::Error> {
    aya::util::nr_cpus().map_err(|(_, e)| e)
}

/// How many times a program load is tried while the verifier gives up with
/// EAGAIN.
const LOAD_ATTEMPTS: usize = 5;

/// Loads `prog`. The verifier abandons a load with EAGAIN when a signal is
/// pending (a child process of ours exiting, say), which says nothing about
/// the program: libbpf retries such loads, and so does this.
fn load_verified(prog: &mut Xdp) -> Result<(), aya::programs::ProgramError> {
    let mut attempt = 1;
    loop {
        match prog.load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(nix::libc::EAGAIN) && attempt < LOAD_ATTEMPTS =>
            {
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn program_err(cause: aya::programs::ProgramError) -> DataplaneError {
    DataplaneError::Program {
        name: maps::XDP_PROGRAM,
        cause,
    }
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |cause| DataplaneError::Map { name, cause }
}

fn collect<K, V, I>(iter: I, name: &'static str) -> Result<Vec<(K, V)>, DataplaneError>
where
    I: Iterator<Item = Result<(K, V), MapError>>,
{
    iter.collect::<Result<_, _>>().map_err(map_err(name))
}

fn sum_stats(per_cpu: &[TrafficStats]) -> TrafficStats {
    per_cpu.iter().fold(TrafficStats::default(), |mut sum, s| {
        sum.add(s);
        sum
    })
}
