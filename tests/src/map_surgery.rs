//! Direct edits of the data plane's NAT maps, to force what only the kernel
//! or a race would otherwise do: the FLOWS LRU evicting a flow, a reverse
//! entry gone or claimed by another flow under a live one (as only a race
//! with the daemon's sweep could leave it; like the sweep, the edit moves
//! the NAT epoch forward), a backend id handed to another backend while a
//! flow still names it. The daemon and the packet lab never do this; tests
//! do it to prove the data plane survives it.

use std::path::Path;

use aya::{
    maps::{Array, HashMap, Map, MapData, MapInfo},
    programs::Xdp,
};
use bg_lb::dataplane::pins::PinLayout;
use bg_lb_common::maps::{self, Backend, DataplaneConfig, Flow, FlowKey, NatKey, NatOwner};

/// FLOWS, REVERSE_NAT, BACKENDS and CONFIG of one data plane.
pub struct NatMaps {
    flows: HashMap<MapData, FlowKey, Flow>,
    reverse: HashMap<MapData, NatKey, NatOwner>,
    backends: Array<MapData, Backend>,
    config: Array<MapData, DataplaneConfig>,
}

impl NatMaps {
    /// The maps a daemon pinned under `pin_dir` (its config's `pin_dir`).
    pub fn pinned(pin_dir: &Path) -> Self {
        let dir = PinLayout::new(pin_dir).maps_dir();
        let open = |name: &str| {
            let data = MapData::from_pin(dir.join(name)).unwrap_or_else(|e| panic!("open pinned {name}: {e}"));
            Map::from_map_data(data).expect("a known map type")
        };
        Self::from_maps([
            open(maps::FLOWS),
            open(maps::REVERSE_NAT),
            open(maps::BACKENDS),
            open(maps::CONFIG),
        ])
    }

    /// The maps `prog` (a loaded `bg_lb`) uses.
    pub fn of_program(prog: &Xdp) -> Self {
        let ids = prog
            .info()
            .expect("program info")
            .map_ids()
            .expect("map ids")
            .expect("the kernel reports map ids");
        let open = |name: &str| {
            let id = ids
                .iter()
                .copied()
                .find(|&id| MapInfo::from_id(id).is_ok_and(|info| info.name_as_str() == Some(name)))
                .unwrap_or_else(|| panic!("the program uses no map {name}"));
            Map::from_map_data(MapData::from_id(id).expect("open map by id")).expect("a known map type")
        };
        Self::from_maps([
            open(maps::FLOWS),
            open(maps::REVERSE_NAT),
            open(maps::BACKENDS),
            open(maps::CONFIG),
        ])
    }

    fn from_maps([flows, reverse, backends, config]: [Map; 4]) -> Self {
        NatMaps {
            flows: flows.try_into().expect("FLOWS is a hash map"),
            reverse: reverse.try_into().expect("REVERSE_NAT is a hash map"),
            backends: backends.try_into().expect("BACKENDS is an array"),
            config: config.try_into().expect("CONFIG is an array"),
        }
    }

    pub fn flow(&self, key: &FlowKey) -> Option<Flow> {
        self.flows.get(key, 0).ok()
    }

    /// Every flow of the table.
    pub fn flows(&self) -> Vec<(FlowKey, Flow)> {
        self.flows.iter().map(|e| e.expect("read FLOWS")).collect()
    }

    /// Drops a flow entry, as the LRU evicts one.
    pub fn evict_flow(&mut self, key: &FlowKey) {
        self.flows.remove(key).expect("remove the flow entry");
    }

    /// The flow that owns `nat`.
    pub fn owner(&self, nat: &NatKey) -> Option<FlowKey> {
        self.reverse.get(nat, 0).ok().map(|owner| owner.flow)
    }

    /// Every reverse-NAT entry.
    pub fn reverse_entries(&self) -> Vec<(NatKey, FlowKey)> {
        self.reverse
            .iter()
            .map(|e| e.map(|(nat, owner)| (nat, owner.flow)).expect("read REVERSE_NAT"))
            .collect()
    }

    /// Drops a reverse-NAT entry.
    pub fn evict_reverse(&mut self, nat: &NatKey) {
        self.reverse.remove(nat).expect("remove the reverse-NAT entry");
        self.advance_nat_epoch();
    }

    /// Makes `owner` the flow that owns `nat`.
    pub fn set_owner(&mut self, nat: &NatKey, owner: &FlowKey) {
        self.set_reverse_entry(nat, &NatOwner::new(*owner, 0));
    }

    /// The whole reverse-NAT entry of `nat`, claim word included.
    pub fn reverse_entry(&self, nat: &NatKey) -> Option<NatOwner> {
        self.reverse.get(nat, 0).ok()
    }

    /// Overwrites the whole reverse-NAT entry of `nat`.
    pub fn set_reverse_entry(&mut self, nat: &NatKey, entry: &NatOwner) {
        self.reverse.insert(nat, entry, 0).expect("write the reverse-NAT entry");
        self.advance_nat_epoch();
    }

    /// What the sweep does after it removed reverse entries.
    fn advance_nat_epoch(&mut self) {
        let mut config = self.config.get(&0, 0).expect("read CONFIG");
        config.nat_epoch = config.nat_epoch.wrapping_add(1);
        self.config.set(0, config, 0).expect("write CONFIG");
    }

    pub fn backend(&self, id: u32) -> Backend {
        self.backends.get(&id, 0).expect("read BACKENDS")
    }

    /// Overwrites BACKENDS entry `id`.
    pub fn set_backend(&mut self, id: u32, backend: &Backend) {
        self.backends.set(id, backend, 0).expect("write BACKENDS");
    }

    /// The (backend, SNAT port) a pinned flow uses.
    pub fn nat_of(&self, flow: &Flow) -> NatKey {
        NatKey::new(&self.backend(flow.backend_id), flow.snat_port)
    }
}
