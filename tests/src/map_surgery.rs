//! Direct edits of the data plane's NAT maps, to force what only the kernel
//! or a race would otherwise do: the FLOWS LRU evicting a flow, a reverse
//! entry gone or claimed by another flow under a live one (as only a race
//! with the daemon's sweep could leave it; like the sweep, the edit moves
//! the NAT epoch forward), a backend id handed to another backend while a
//! flow still names it; a map pinned as an older bg-lb left it. The daemon
//! and the packet lab never do this; tests do it to prove the data plane
//! survives it.

use std::path::Path;

use aya::{
    maps::{Array, HashMap, Map, MapData, MapInfo},
    programs::Xdp,
};
use bg_lb::dataplane::{RawMap, pins::PinLayout};
use bg_lb_common::maps::{self, Backend, DataplaneConfig, Flow, FlowKey, NatKey, NatOwner};

/// The map `name` that `prog` (a loaded `bg_lb`) uses, opened by its id.
pub fn program_map(prog: &Xdp, name: &str) -> Map {
    let ids = prog
        .info()
        .expect("program info")
        .map_ids()
        .expect("map ids")
        .expect("the kernel reports map ids");
    let id = ids
        .iter()
        .copied()
        .find(|&id| MapInfo::from_id(id).is_ok_and(|info| info.name_as_str() == Some(name)))
        .unwrap_or_else(|| panic!("the program uses no map {name}"));
    Map::from_map_data(MapData::from_id(id).expect("open map by id")).expect("a known map type")
}

/// FLOWS, REVERSE_NAT, BACKENDS and CONFIG of one data plane.
pub struct NatMaps {
    flows: HashMap<MapData, FlowKey, Flow>,
    /// FLOWS again, for batch writes (aya has none).
    flows_batch: RawMap<FlowKey, Flow>,
    reverse: HashMap<MapData, NatKey, NatOwner>,
    /// REVERSE_NAT again, for batch writes.
    reverse_batch: RawMap<NatKey, NatOwner>,
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
        let open = |name| program_map(prog, name);
        Self::from_maps([
            open(maps::FLOWS),
            open(maps::REVERSE_NAT),
            open(maps::BACKENDS),
            open(maps::CONFIG),
        ])
    }

    fn from_maps([flows, reverse, backends, config]: [Map; 4]) -> Self {
        let flows_batch = RawMap::duplicate(&flows, maps::FLOWS).expect("FLOWS through a fd of its own");
        let reverse_batch =
            RawMap::duplicate(&reverse, maps::REVERSE_NAT).expect("REVERSE_NAT through a fd of its own");
        NatMaps {
            flows_batch,
            reverse_batch,
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

    /// Writes a flow entry, as the data plane pins a flow.
    pub fn insert_flow(&mut self, key: &FlowKey, flow: &Flow) {
        self.flows.insert(key, flow, 0).expect("write the flow entry");
    }

    /// Writes many flow entries with few syscalls (BPF_MAP_UPDATE_BATCH), so
    /// a table of a million fills in well under a second.
    pub fn insert_flows(&mut self, entries: &[(FlowKey, Flow)]) {
        self.flows_batch.update_batch(entries).expect("batch write of FLOWS");
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

    /// Makes each flow the owner of its (backend, SNAT address and port)
    /// with few syscalls (BPF_MAP_UPDATE_BATCH). New pairs only: unlike
    /// [`NatMaps::set_owner`] it leaves the NAT epoch alone, as no pinned
    /// flow loses its pair.
    pub fn add_owners(&mut self, entries: &[(NatKey, FlowKey)]) {
        let owners: Vec<(NatKey, NatOwner)> = entries
            .iter()
            .map(|(nat, key)| (*nat, NatOwner::new(*key, 0)))
            .collect();
        self.reverse_batch
            .update_batch(&owners)
            .expect("batch write of REVERSE_NAT");
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

    /// The (backend, SNAT address and port) a pinned flow uses.
    pub fn nat_of(&self, flow: &Flow) -> NatKey {
        flow.nat_key(&self.backend(flow.backend_id))
    }
}

/// Creates an array of `u32` values named `name` with no creation flags, as
/// a bg-lb from before LOOKUP_TABLES was mmapable left it, and pins it at
/// `path` (on bpffs). Raw `bpf()`: aya creates maps only from an object.
pub fn pin_plain_u32_array(path: &Path, name: &str, entries: u32) {
    use std::{ffi::CString, os::unix::ffi::OsStrExt as _};

    // The leading fields of `union bpf_attr` for BPF_MAP_CREATE (the kernel
    // reads the rest as zero).
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
    }
    // ... and for BPF_OBJ_PIN.
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;

    let mut map_name = [0u8; 16];
    map_name[..name.len()].copy_from_slice(name.as_bytes());
    let create = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: entries,
        map_flags: 0,
        inner_map_fd: 0,
        numa_node: 0,
        map_name,
    };
    // SAFETY: bpf() reads `size_of::<MapCreate>()` bytes of `create`.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, &create, size_of::<MapCreate>()) };
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    let path_c = CString::new(path.as_os_str().as_bytes()).expect("a path without NUL");
    let pin = ObjPin {
        pathname: path_c.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    // SAFETY: bpf() reads `pin`, whose path outlives the call.
    let pinned = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, &pin, size_of::<ObjPin>()) };
    let error = std::io::Error::last_os_error();
    // SAFETY: the map's fd, not used after this; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
    assert_eq!(pinned, 0, "BPF_OBJ_PIN {}: {error}", path.display());
}
