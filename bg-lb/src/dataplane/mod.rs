//! The loaded XDP data plane: loads the embedded object, attaches it, and
//! reads and writes its maps with the types from bg-lb-common.

pub mod housekeeping;
pub mod lookup_table;
pub mod pins;
pub mod services;
pub mod table_regions;

use std::{
    net::SocketAddrV4,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, DevMapHash, HashMap, MapError, PerCpuArray, PerCpuValues},
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use bg_lb_common::{
    counters::{COUNTER_COUNT, Counter},
    maps::{self, Backend, DataplaneConfig, Flow, FlowKey, IPPROTO_TCP, NatKey, Service, ServiceKey, TrafficStats},
};

use crate::ebpf_objects;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {cause}")]
    Program { name: &'static str, cause: ProgramError },
    #[error("map {name}: {cause}")]
    Map { name: &'static str, cause: MapError },
    #[error("counting possible CPUs: {0}")]
    Cpus(std::io::Error),
    #[error("interface {name}: {cause}")]
    Interface { name: String, cause: nix::Error },
    #[error("XDP link pinned at {path}: {cause}")]
    Link {
        path: PathBuf,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("adding interface to TX_PORTS: {0}")]
    TxPort(#[from] aya::maps::xdp::XdpMapError),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
}

/// Sizes chosen at load time (maps cannot grow once created).
#[derive(Clone, Debug)]
pub struct DataplaneOptions {
    pub max_flows: u32,
    pub lookup_capacity: u32,
    /// Pin every map in this directory (bpffs) so a restarted daemon adopts
    /// them with their contents; `None` for private maps (packet tests).
    pub pin_dir: Option<PathBuf>,
}

/// How to attach XDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic mode with a warning.
    Auto,
    /// Native mode or fail.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
}

/// What attaching did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new attachment in this mode.
    New(XdpMode),
    /// An existing pinned attachment now runs this program (no gap).
    Replaced,
}

impl Default for DataplaneOptions {
    fn default() -> Self {
        Self {
            max_flows: maps::DEFAULT_MAX_FLOWS,
            lookup_capacity: maps::DEFAULT_LOOKUP_CAPACITY,
            pin_dir: None,
        }
    }
}

/// Map keys store addresses as on the wire.
pub fn wire_addr(addr: &SocketAddrV4) -> (u32, u16) {
    (u32::from_ne_bytes(addr.ip().octets()), addr.port().to_be())
}

pub fn service_key(vip: &SocketAddrV4) -> ServiceKey {
    let (addr, port) = wire_addr(vip);
    ServiceKey {
        addr,
        port,
        proto: IPPROTO_TCP,
        _pad: 0,
    }
}

pub type EbpfLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

pub struct Dataplane {
    ebpf: Ebpf,
    logger: Option<EbpfLogger>,
}

impl Dataplane {
    /// Loads the object (creating or, with `pin_dir`, adopting its maps) and
    /// loads the XDP program into the kernel. Nothing is attached yet.
    pub fn load(opts: &DataplaneOptions) -> Result<Self, DataplaneError> {
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(maps::FLOWS, opts.max_flows);
        loader.map_max_entries(maps::REVERSE_NAT, opts.max_flows);
        loader.map_max_entries(maps::LOOKUP_TABLES, opts.lookup_capacity);
        if let Some(dir) = &opts.pin_dir {
            // An existing pin is reused with its contents (flows survive).
            for name in maps::ALL_MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(ebpf_objects::load_balancer())?;
        // The program logs only rare failures; without a reader they are
        // simply dropped, so a missing logger is not fatal.
        let logger = aya_log::EbpfLogger::init(&mut ebpf)
            .inspect_err(|e| tracing::warn!(error = %e, "eBPF log records will not be shown"))
            .ok();
        let mut dp = Self { ebpf, logger };
        dp.xdp_mut()?.load().map_err(|cause| DataplaneError::Program {
            name: maps::XDP_PROGRAM,
            cause,
        })?;
        Ok(dp)
    }

    /// The reader of the program's aya-log records (once).
    pub fn take_logger(&mut self) -> Option<EbpfLogger> {
        self.logger.take()
    }

    pub fn xdp(&self) -> Result<&Xdp, DataplaneError> {
        let prog = self
            .ebpf
            .program(maps::XDP_PROGRAM)
            .ok_or(DataplaneError::MissingProgram(maps::XDP_PROGRAM))?;
        prog.try_into().map_err(|cause| DataplaneError::Program {
            name: maps::XDP_PROGRAM,
            cause,
        })
    }

    fn xdp_mut(&mut self) -> Result<&mut Xdp, DataplaneError> {
        let prog = self
            .ebpf
            .program_mut(maps::XDP_PROGRAM)
            .ok_or(DataplaneError::MissingProgram(maps::XDP_PROGRAM))?;
        prog.try_into().map_err(|cause| DataplaneError::Program {
            name: maps::XDP_PROGRAM,
            cause,
        })
    }

    /// Attaches the program to `ifindex` and lets it redirect there.
    pub fn attach(&mut self, ifindex: u32, mode: XdpMode) -> Result<XdpLinkId, DataplaneError> {
        let link = self
            .xdp_mut()?
            .attach_to_if_index(ifindex, mode)
            .map_err(|cause| DataplaneError::Program {
                name: maps::XDP_PROGRAM,
                cause,
            })?;
        self.add_tx_port(ifindex)?;
        Ok(link)
    }

    /// Attaches to `iface` through a link pinned at `pin`. If the pin exists
    /// (a previous daemon's attachment) the link is switched to this program
    /// atomically, so not one packet misses the data plane; otherwise a new
    /// link is created in `mode` and pinned.
    pub fn attach_pinned(&mut self, iface: &str, mode: AttachMode, pin: &Path) -> Result<Attached, DataplaneError> {
        let ifindex = nix::net::if_::if_nametoindex(iface).map_err(|e| DataplaneError::Interface {
            name: iface.to_owned(),
            cause: e,
        })?;
        self.add_tx_port(ifindex)?;
        let program_err = |cause| DataplaneError::Program {
            name: maps::XDP_PROGRAM,
            cause,
        };
        if pin.exists() {
            let link = PinnedLink::from_pin(pin).map_err(|e| DataplaneError::Link {
                path: pin.to_owned(),
                cause: e.into(),
            })?;
            let link = XdpLink::try_from(FdLink::from(link)).map_err(|e| DataplaneError::Link {
                path: pin.to_owned(),
                cause: e.into(),
            })?;
            self.xdp_mut()?.attach_to_link(link).map_err(program_err)?;
            return Ok(Attached::Replaced);
        }
        let (id, used) = match mode {
            AttachMode::Native => (
                self.xdp_mut()?
                    .attach_to_if_index(ifindex, XdpMode::Driver)
                    .map_err(program_err)?,
                XdpMode::Driver,
            ),
            AttachMode::Generic => (
                self.xdp_mut()?
                    .attach_to_if_index(ifindex, XdpMode::Skb)
                    .map_err(program_err)?,
                XdpMode::Skb,
            ),
            AttachMode::Auto => match self.xdp_mut()?.attach_to_if_index(ifindex, XdpMode::Driver) {
                Ok(id) => (id, XdpMode::Driver),
                Err(e) => {
                    tracing::warn!(interface = iface, error = %e, "native XDP unavailable, falling back to generic mode (slower); set xdp_mode = \"native\" to refuse");
                    (
                        self.xdp_mut()?
                            .attach_to_if_index(ifindex, XdpMode::Skb)
                            .map_err(program_err)?,
                        XdpMode::Skb,
                    )
                }
            },
        };
        let link = self.xdp_mut()?.take_link(id).map_err(program_err)?;
        let link = FdLink::try_from(link).map_err(|e| DataplaneError::Link {
            path: pin.to_owned(),
            cause: e.into(),
        })?;
        link.pin(pin).map_err(|e| DataplaneError::Link {
            path: pin.to_owned(),
            cause: e.into(),
        })?;
        Ok(Attached::New(used))
    }

    /// The capacity LOOKUP_TABLES really has: an adopted pinned map keeps the
    /// size it was created with.
    pub fn lookup_capacity(&self) -> Result<u32, DataplaneError> {
        let map = self
            .ebpf
            .map(maps::LOOKUP_TABLES)
            .ok_or(DataplaneError::MissingMap(maps::LOOKUP_TABLES))?;
        let aya::maps::Map::Array(data) = map else {
            return Err(DataplaneError::MissingMap(maps::LOOKUP_TABLES));
        };
        Ok(data.info().map_err(map_err(maps::LOOKUP_TABLES))?.max_entries())
    }

    /// Allows XDP_REDIRECT to `ifindex` (an interface the program may send on).
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        let mut ports: DevMapHash<_> = self.map_mut(maps::TX_PORTS)?;
        Ok(ports.insert(ifindex, ifindex, None, 0)?)
    }

    pub fn set_config(&mut self, cfg: &DataplaneConfig) -> Result<(), DataplaneError> {
        self.array_set(maps::CONFIG, 0, cfg)
    }

    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), DataplaneError> {
        self.array_set(maps::BACKENDS, id, backend)
    }

    pub fn set_service(&mut self, key: &ServiceKey, service: &Service) -> Result<(), DataplaneError> {
        let mut services: HashMap<_, ServiceKey, Service> = self.map_mut(maps::SERVICES)?;
        services.insert(key, service, 0).map_err(map_err(maps::SERVICES))
    }

    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DataplaneError> {
        let mut services: HashMap<_, ServiceKey, Service> = self.map_mut(maps::SERVICES)?;
        ignore_missing(services.remove(key), maps::SERVICES)
    }

    /// Backends in use (a zero address marks a free slot).
    pub fn backends(&self) -> Result<Vec<(u32, Backend)>, DataplaneError> {
        let backends: Array<_, Backend> = self.map(maps::BACKENDS)?;
        let mut used = Vec::new();
        for (id, backend) in backends.iter().enumerate() {
            let backend = backend.map_err(map_err(maps::BACKENDS))?;
            if backend.addr != 0 {
                used.push((id as u32, backend));
            }
        }
        Ok(used)
    }

    /// Frees a backend slot and zeroes its counters, ready for reuse.
    pub fn clear_backend(&mut self, id: u32) -> Result<(), DataplaneError> {
        self.set_backend(id, &Backend::default())?;
        let mut stats: PerCpuArray<_, TrafficStats> = self.map_mut(maps::BACKEND_STATS)?;
        let cpus = nr_cpus().map_err(DataplaneError::Cpus)?;
        let zeros = PerCpuValues::try_from(vec![TrafficStats::default(); cpus]).map_err(DataplaneError::Cpus)?;
        stats.set(id, zeros, 0).map_err(map_err(maps::BACKEND_STATS))
    }

    /// Removes a flow and its reverse-NAT entry (housekeeping), unless they
    /// changed since the sweep judged them: a client may have reused the
    /// 5-tuple for a new connection, or another flow claimed the SNAT port.
    pub fn remove_flow(&mut self, key: &FlowKey, judged: &Flow, reverse: &NatKey) -> Result<(), DataplaneError> {
        let mut flows: HashMap<_, FlowKey, Flow> = self.map_mut(maps::FLOWS)?;
        match flows.get(key, 0) {
            Ok(flow) if flow.created_ns == judged.created_ns => ignore_missing(flows.remove(key), maps::FLOWS)?,
            Ok(_) | Err(MapError::KeyNotFound) => return Ok(()),
            Err(e) => return Err(map_err(maps::FLOWS)(e)),
        }
        let mut nat: HashMap<_, NatKey, FlowKey> = self.map_mut(maps::REVERSE_NAT)?;
        match nat.get(reverse, 0) {
            Ok(owner) if owner == *key => ignore_missing(nat.remove(reverse), maps::REVERSE_NAT),
            Ok(_) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(maps::REVERSE_NAT)(e)),
        }
    }

    pub fn services(&self) -> Result<Vec<(ServiceKey, Service)>, DataplaneError> {
        let services: HashMap<_, ServiceKey, Service> = self.map(maps::SERVICES)?;
        collect(services.iter(), maps::SERVICES)
    }

    /// Writes `table` into LOOKUP_TABLES starting at `base`.
    pub fn write_table(&mut self, base: u32, table: &[u32]) -> Result<(), DataplaneError> {
        let mut tables: Array<_, u32> = self.map_mut(maps::LOOKUP_TABLES)?;
        for (i, backend_id) in table.iter().enumerate() {
            tables
                .set(base + i as u32, backend_id, 0)
                .map_err(map_err(maps::LOOKUP_TABLES))?;
        }
        Ok(())
    }

    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>, DataplaneError> {
        let flows: HashMap<_, FlowKey, Flow> = self.map(maps::FLOWS)?;
        collect(flows.iter(), maps::FLOWS)
    }

    /// A backend's traffic counters, summed over CPUs.
    pub fn backend_stats(&self, id: u32) -> Result<TrafficStats, DataplaneError> {
        self.per_cpu_sum(maps::BACKEND_STATS, id, sum_stats)
    }

    pub fn service_stats(&self, id: u32) -> Result<TrafficStats, DataplaneError> {
        self.per_cpu_sum(maps::SERVICE_STATS, id, sum_stats)
    }

    /// Every global counter, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, DataplaneError> {
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

    fn array_set<V: Pod>(&mut self, name: &'static str, index: u32, value: &V) -> Result<(), DataplaneError> {
        let mut array: Array<_, V> = self.map_mut(name)?;
        array.set(index, value, 0).map_err(map_err(name))
    }

    fn map<'a, T>(&'a self, name: &'static str) -> Result<T, DataplaneError>
    where
        T: TryFrom<&'a aya::maps::Map, Error = MapError>,
    {
        let map = self.ebpf.map(name).ok_or(DataplaneError::MissingMap(name))?;
        T::try_from(map).map_err(map_err(name))
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, DataplaneError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        let map = self.ebpf.map_mut(name).ok_or(DataplaneError::MissingMap(name))?;
        T::try_from(map).map_err(map_err(name))
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
