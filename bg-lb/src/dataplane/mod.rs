//! The XDP data plane and its one owner, [`Dataplane`]: what the daemon (and
//! the packet tests) load, attach, program and read. Inside, [`services`] and
//! [`housekeeping`] decide every change as plain values, [`sweep`] walks the
//! flow table in bounded slices ([`walk`]) on a thread of its own, [`syn_proxy`] is a
//! service's SYN flood defence as settings and state, [`forwarding`] its
//! forwarding mode, [`affinity`] its client affinity (and the table that
//! needs), [`l4`] its protocol (TCP or UDP), [`listener`] a VIP's key above the maps,
//! [`wire`] each address family's maps (the map code is generic over it), [`flow_reset`] what a drain
//! deadline resets, and `kernel` is the
//! one module that talks to the kernel, writing those values to the maps.
//! Before it adopts pinned maps, `layout` judges whether it can (pure), and
//! `migration` moves a map whose capacity changed into one of the new size,
//! and lookup tables are written through `table_memory`, a mapping of their map.

pub mod affinity;
pub mod flow_reset;
pub mod forwarding;
pub mod housekeeping;
mod kernel;
pub mod l4;
mod layout;
pub mod listener;
pub mod lookup_table;
mod migration;
pub mod pins;
pub mod services;
pub mod sweep;
pub mod syn_proxy;
mod table_memory;
pub mod table_regions;
pub mod walk;
pub mod wire;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    maps::{MapError, xdp::XdpMapError},
    programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId},
};
use bg_lb_common::{
    counters::Counter,
    flow_state::{self, FlowPhase},
    maps::{self, BackendOf, DataplaneConfig, Flow, FlowKey, Ipv6Wire, NatKey, TrafficStats},
};
use housekeeping::FlowCensus;
pub use housekeeping::FlowTimeouts;
use kernel::Kernel;
pub use kernel::raw::RawMap;
use listener::ListenerKey;
use services::{ServiceSpec, Services, ServicesError};
use sweep::{FlowQuery, SweepMaps, SweepReport};
use wire::Wire;

use crate::ratio::Pool;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {cause}")]
    Program { name: &'static str, cause: ProgramError },
    #[error("map {name}: {cause}")]
    Map { name: &'static str, cause: MapError },
    #[error("map {name}: {call}: {cause}")]
    Syscall {
        name: &'static str,
        call: &'static str,
        cause: std::io::Error,
    },
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
    TxPort(#[from] XdpMapError),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("duplicating a program's file descriptor: {0}")]
    ProgramFd(std::io::Error),
    #[error(transparent)]
    Services(#[from] ServicesError),
    /// Pinned maps this build cannot adopt; nothing was changed.
    #[error("{0}")]
    IncompatiblePin(layout::Mismatch),
    #[error("reading the map definitions of the embedded eBPF object: {0}")]
    Object(String),
    #[error("migrating pinned map {0}")]
    Migration(#[from] migration::MigrationError),
    #[error(transparent)]
    TableMemory(#[from] table_memory::TableMemoryError),
    /// An address of one family where the other's map was meant (a bug).
    #[error("{0}: not of the address family of the map it was meant for")]
    OtherFamily(SocketAddr),
}

/// The IPv6 flow maps' capacity on a host without IPv6 SNAT addresses, where
/// no IPv6 flow can be created: small, not zero (a map needs entries).
pub const UNUSED_FAMILY_FLOWS: u32 = 1024;

/// Sizes chosen at load time (maps cannot grow once created).
#[derive(Clone, Debug)]
pub struct DataplaneOptions {
    pub max_flows: u32,
    /// REVERSE_NAT evicts nothing, so it needs room for every (backend,
    /// SNAT port) in use; at least `max_flows` (see
    /// [`crate::config::Config::reverse_nat_entries`]).
    pub reverse_nat_entries: u32,
    pub lookup_capacity: u32,
    /// Whether IPv6 services can exist (an IPv6 SNAT address is
    /// configured): FLOWS6 and REVERSE_NAT6 are then sized as FLOWS and
    /// REVERSE_NAT, else at [`UNUSED_FAMILY_FLOWS`], so an IPv4-only host
    /// does not preallocate a second pair of million-entry tables (about
    /// 350 MiB). A restart that changes it migrates the pins.
    pub ipv6: bool,
    /// Pin every map in this directory (bpffs) so a restarted daemon adopts
    /// them with their contents; `None` for private maps (packet tests).
    pub pin_dir: Option<PathBuf>,
}

impl DataplaneOptions {
    /// The load-time capacity of each map sized from the config.
    pub fn capacities(&self) -> [(&'static str, u32); 5] {
        let (flows, reverse_nat) = (self.max_flows, self.reverse_nat_entries.max(self.max_flows));
        let (flows6, reverse_nat6) = if self.ipv6 {
            (flows, reverse_nat)
        } else {
            (UNUSED_FAMILY_FLOWS, UNUSED_FAMILY_FLOWS)
        };
        [
            (maps::FLOWS, flows),
            (maps::REVERSE_NAT, reverse_nat),
            (maps::LOOKUP_TABLES, self.lookup_capacity),
            (maps::FLOWS6, flows6),
            (maps::REVERSE_NAT6, reverse_nat6),
        ]
    }
}

impl Default for DataplaneOptions {
    fn default() -> Self {
        Self {
            max_flows: maps::DEFAULT_MAX_FLOWS,
            reverse_nat_entries: maps::DEFAULT_MAX_FLOWS,
            lookup_capacity: maps::DEFAULT_LOOKUP_CAPACITY,
            ipv6: true,
            pin_dir: None,
        }
    }
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

pub type EbpfLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// An open flow, as `ctl flows` lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowView {
    /// Of the flow's family, as `backend`.
    pub client: SocketAddr,
    pub backend: SocketAddr,
    pub pool: Pool,
    pub phase: FlowPhase,
    /// Since the flow was created.
    pub age: Duration,
    /// Since its last packet.
    pub idle: Duration,
    /// `None` for a protocol bg-lb never writes (a corrupt entry).
    pub protocol: Option<l4::Protocol>,
}

/// The loaded data plane and the bookkeeping of what is programmed into it.
pub struct Dataplane {
    kernel: Kernel,
    services: Services,
    /// Service writes so far (see [`Dataplane::writes`]).
    writes: u64,
}

impl Dataplane {
    /// Loads the object (creating or, with `pin_dir`, adopting its maps),
    /// loads the XDP program into the kernel, and rebuilds service and
    /// backend ids from whatever the maps hold, so a previous daemon's pinned
    /// flows keep their backends. Nothing is attached yet.
    pub fn load(opts: &DataplaneOptions) -> Result<Self, DataplaneError> {
        let mut kernel = Kernel::load(opts)?;
        let flows = kernel.sweep_maps()?.flow_ids()?;
        let (services, orphans) = Services::adopt(
            kernel.lookup_capacity()?,
            kernel.services()?,
            kernel.backends()?,
            &flows,
        )?;
        for id in orphans {
            kernel.clear_backend(id)?;
        }
        let addresses = services.vip_addresses();
        for addr in kernel.vip_addresses()? {
            if !addresses.contains(&addr) {
                kernel.remove_vip_address(addr)?;
            }
        }
        for &addr in &addresses {
            kernel.add_vip_address(addr)?;
        }
        Ok(Self {
            kernel,
            services,
            writes: 0,
        })
    }

    /// Finishes migrating the pinned maps whose capacity changed (a new
    /// `max_flows`), once this program is attached on every pinned link:
    /// copies what the old program added meanwhile and replaces their pins.
    /// Until then the old pins stay, so a start that fails keeps them.
    pub fn finish_migrations(&mut self) -> Result<(), DataplaneError> {
        self.kernel.finish_migrations()
    }

    /// The reader of the program's aya-log records (once).
    pub fn take_logger(&mut self) -> Option<EbpfLogger> {
        self.kernel.take_logger()
    }

    /// Attaches to `iface` through a link pinned at `pin`. If the pin exists
    /// (a previous daemon's attachment) the link is switched to this program
    /// atomically, so not one packet misses the data plane; otherwise a new
    /// link is created in `mode` and pinned.
    pub fn attach_pinned(&mut self, iface: &str, mode: AttachMode, pin: &Path) -> Result<Attached, DataplaneError> {
        self.kernel.attach_pinned(iface, mode, pin)
    }

    /// Attaches the program to `ifindex` without a pin (it detaches when
    /// this is dropped) and lets it redirect there.
    pub fn attach(&mut self, ifindex: u32, mode: XdpMode) -> Result<XdpLinkId, DataplaneError> {
        self.kernel.attach(ifindex, mode)
    }

    /// Allows XDP_REDIRECT to `ifindex` (an interface the program may send on).
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.kernel.add_tx_port(ifindex)
    }

    /// The loaded program, for `BPF_PROG_TEST_RUN`.
    pub fn xdp(&self) -> Result<&Xdp, DataplaneError> {
        self.kernel.xdp()
    }

    /// The runtime settings; packets pass untouched until one marked ready
    /// is set.
    pub fn set_config(&mut self, cfg: &DataplaneConfig) -> Result<(), DataplaneError> {
        self.kernel.set_config(cfg)
    }

    /// Creates or updates a service. New flows follow the new table as soon
    /// as this returns; pinned flows are untouched.
    pub fn apply(&mut self, spec: &ServiceSpec) -> Result<(), DataplaneError> {
        self.writes += 1;
        let update = self.services.update(spec)?;
        self.kernel.write_service(&update)?;
        self.services.swapped(&update);
        Ok(())
    }

    /// Stops a service: new connections to its VIP pass to the kernel, and its
    /// table space and ids are freed.
    pub fn remove(&mut self, key: &ListenerKey) -> Result<(), DataplaneError> {
        self.writes += 1;
        match self.services.remove(key) {
            Some(removal) => self.kernel.remove_service(&removal),
            None => Ok(()),
        }
    }

    /// Keys (VIP and protocol) of the services in the data plane.
    pub fn keys(&self) -> Vec<ListenerKey> {
        self.services.keys()
    }

    /// The id flows of `backend` on service `key` are pinned to.
    pub fn backend_id(&self, key: &ListenerKey, backend: &SocketAddr) -> Option<u32> {
        self.services.backend_id(key, backend)
    }

    /// Sweeps the flow table here and now: removes expired flows and the
    /// orphans of a NAT state that came apart (see [`housekeeping`]), counts
    /// the rest, and [`Dataplane::settle`]s. The daemon sweeps on a thread
    /// of its own instead (see [`sweep`]); this is for start-up and tests.
    pub fn housekeeping(
        &mut self,
        timeouts: &FlowTimeouts,
        live: &HashMap<ListenerKey, HashSet<SocketAddr>>,
    ) -> Result<FlowCensus, DataplaneError> {
        let writes = self.writes;
        let report = self.sweep_maps()?.sweep(timeouts, false, || true)?;
        self.settle(&report, writes, live)?;
        Ok(report.census)
    }

    /// The maps a sweep or a flow listing reads, through fds of their own,
    /// for another thread.
    pub fn sweep_maps(&self) -> Result<SweepMaps, DataplaneError> {
        self.kernel.sweep_maps()
    }

    /// How many times services were written: a sweep begun before the
    /// latest write may have missed what it changed.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// What follows from a sweep begun when [`Dataplane::writes`] was
    /// `writes`: pinned flows re-check their ports if a reverse-NAT entry
    /// went, and the ids no flow names any more are freed, of backends that
    /// left their service (`live` backends per service key) and of removed services.
    /// Ids are freed only on a complete count taken after the last write,
    /// so no flow the sweep could not see keeps a freed id.
    pub fn settle(
        &mut self,
        report: &SweepReport,
        writes: u64,
        live: &HashMap<ListenerKey, HashSet<SocketAddr>>,
    ) -> Result<(), DataplaneError> {
        if report.removed_reverse {
            // A flow pinned again meanwhile may have lost its entry: every
            // pinned flow checks its port on its next packet.
            self.kernel.advance_nat_epoch()?;
        }
        let census = &report.census;
        if census.orphans > 0 {
            tracing::info!(
                orphans = census.orphans,
                "flow sweep removed flows and reverse-NAT entries whose other half was gone"
            );
        }
        if !report.complete || writes != self.writes {
            return Ok(());
        }
        let freed = self
            .services
            .reap(live, |id| census.total_of(id), |id| census.total_of_service(id));
        for id in freed {
            self.kernel.clear_backend(id)?;
        }
        Ok(())
    }

    /// What `ctl flows` asks for: up to `limit` flows of the services on
    /// `keys` that have not ended, of `pool` if given ([`SweepMaps::list`]).
    pub fn flow_query(&self, keys: &[ListenerKey], pool: Option<Pool>, limit: usize) -> FlowQuery {
        FlowQuery {
            service_ids: keys.iter().filter_map(|key| self.services.service_id(key)).collect(),
            pool,
            limit,
        }
    }

    /// Whether the SYN proxy answers the SYNs of service `vip` now: always
    /// in mode "always", while flooded in mode "auto".
    pub fn syn_proxy_active(&self, key: &ListenerKey) -> Result<bool, DataplaneError> {
        let (Some(id), Some(service)) = (self.services.service_id(key), self.kernel.service(key)?) else {
            return Ok(false);
        };
        let flood = self.kernel.syn_flood(id)?;
        Ok(syn_proxy::is_active(&service, &flood, housekeeping::monotonic_now_ns()))
    }

    /// Resets, at both ends, every open TCP flow (of either family) of the
    /// services on `keys` pinned to a backend of `pool` ([`flow_reset`]),
    /// running the family's program on its triggers as if they arrived on
    /// `ifindex`; the connections it ended. Reads the whole flow tables: a
    /// drain deadline's one-off.
    pub fn reset_flows(&self, keys: &[ListenerKey], pool: Pool, ifindex: u32) -> Result<u64, DataplaneError> {
        let ids: HashSet<u32> = keys.iter().filter_map(|key| self.services.service_id(key)).collect();
        Ok(self.reset_family_flows::<u32>(&ids, pool, ifindex)?
            + self.reset_family_flows::<Ipv6Wire>(&ids, pool, ifindex)?)
    }

    fn reset_family_flows<A: Wire>(&self, ids: &HashSet<u32>, pool: Pool, ifindex: u32) -> Result<u64, DataplaneError> {
        let backends: HashMap<u32, BackendOf<A>> = self.kernel.family_backends::<A>()?.into_iter().collect();
        let mut reset = 0;
        for (key, flow) in self.kernel.flows::<A>()? {
            let Some(backend) = backends
                .get(&flow.backend_id)
                .filter(|b| b.generation == flow.backend_gen && Pool::from_wire(b.pool) == pool)
            else {
                continue;
            };
            if !ids.contains(&flow.service_id) || !flow_reset::resettable(&key, &flow) {
                continue;
            }
            for trigger in flow_reset::triggers(&key, &flow, backend) {
                self.kernel.run_flow_reset::<A>(&trigger, ifindex)?;
            }
            // The program's verdicts are not reported in live mode: the
            // flow's own state says whether it was reset.
            if self
                .kernel
                .flow(&key)?
                .is_some_and(|f| f.state & flow_state::RESET != 0)
            {
                reset += 1;
            }
        }
        Ok(reset)
    }

    /// Every entry of the flow table.
    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>, DataplaneError> {
        self.kernel.flows()
    }

    /// The flow table's entry for `key`, if any.
    pub fn flow(&self, key: &FlowKey) -> Result<Option<Flow>, DataplaneError> {
        self.kernel.flow(key)
    }

    /// The client flow that owns the reverse-NAT entry `nat`, if any.
    pub fn reverse_nat(&self, nat: &NatKey) -> Result<Option<FlowKey>, DataplaneError> {
        self.kernel.reverse_owner(nat)
    }

    /// Every entry of the reverse-NAT table.
    pub fn reverse_nats(&self) -> Result<Vec<(NatKey, FlowKey)>, DataplaneError> {
        self.kernel.reverse_nat()
    }

    /// A backend's traffic counters, summed over CPUs.
    pub fn backend_stats(&self, id: u32) -> Result<TrafficStats, DataplaneError> {
        self.kernel.backend_stats(id)
    }

    /// A service's traffic counters, summed over CPUs.
    pub fn service_stats(&self, id: u32) -> Result<TrafficStats, DataplaneError> {
        self.kernel.service_stats(id)
    }

    /// Every global counter, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, DataplaneError> {
        self.kernel.counters()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(opts: &DataplaneOptions, map: &str) -> u32 {
        opts.capacities().iter().find(|(name, _)| *name == map).expect(map).1
    }

    #[test]
    fn ipv6_flow_maps_are_sized_like_ipv4_s_only_where_ipv6_services_can_exist() {
        let opts = DataplaneOptions {
            max_flows: 1 << 20,
            reverse_nat_entries: 1 << 21,
            ipv6: false,
            ..DataplaneOptions::default()
        };
        assert_eq!(capacity(&opts, maps::FLOWS6), UNUSED_FAMILY_FLOWS);
        assert_eq!(capacity(&opts, maps::REVERSE_NAT6), UNUSED_FAMILY_FLOWS);
        assert_eq!(capacity(&opts, maps::REVERSE_NAT), 1 << 21);
        let dual = DataplaneOptions { ipv6: true, ..opts };
        assert_eq!(capacity(&dual, maps::FLOWS6), 1 << 20);
        assert_eq!(capacity(&dual, maps::REVERSE_NAT6), 1 << 21);
    }
}
