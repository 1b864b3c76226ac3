//! The load balancer's maps. Names, types and default capacities come from
//! bg-lb-common; userspace resizes FLOWS, REVERSE_NAT and LOOKUP_TABLES at
//! load time from its config.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, ProgramArray},
};
use bg_lb_common::{
    counters::{COUNTER_COUNT, Counter},
    flow_state::Event,
    maps::{
        Backend, Backend6, BackendOf, DEFAULT_LOOKUP_CAPACITY, DEFAULT_MAX_FLOWS, DataplaneConfig, Flow, Flow6,
        FlowKey, FlowKey6, FlowKeyOf, FlowOf, HELD_SEGMENTS_CAPACITY, HeldSegment, Ipv6Wire, LOOKUP_TABLES_FLAGS,
        MAX_BACKENDS, MAX_INTERFACES, MAX_SERVICES, NEXT_HOP_SLOTS, NatKey, NatKey6, NatKeyOf, NatOwner, NatOwner6,
        NatOwnerOf, NextHop, NextHop6, Service, ServiceKey, ServiceKey6, SynFlood, TakenPair6, TrafficStats, WireAddr,
    },
    syn_proxy::JOB_PROGRAMS,
};

// Not preallocated: an update then swaps in a new element under RCU, so a
// packet sees the old or the new service (and its table base), never a mix.
#[map]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

// Mmapable: the daemon writes a whole table through a memory mapping.
const _: () = assert!(LOOKUP_TABLES_FLAGS == aya_ebpf::bindings::BPF_F_MMAPABLE);
#[map]
pub static LOOKUP_TABLES: Array<u32> = Array::with_max_entries(DEFAULT_LOOKUP_CAPACITY, LOOKUP_TABLES_FLAGS);

#[map]
pub static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

// A plain hash, not an LRU: an entry is removed only with its flow (by this
// program or the daemon's sweep), or handed to a new flow when its own has
// ended (`port_takeover`), never evicted under a live one. When it is full,
// new flows find no SNAT port and are refused.
#[map]
pub static REVERSE_NAT: HashMap<NatKey, NatOwner> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<TrafficStats> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map]
pub static SERVICE_STATS: PerCpuArray<TrafficStats> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

#[map]
pub static CONFIG: Array<DataplaneConfig> = Array::with_max_entries(1, 0);

#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_INTERFACES, 0);

#[map]
pub static VIP_ADDRESSES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static LOG_TIMES: Array<u64> = Array::with_max_entries(COUNTER_COUNT, 0);

/// Log lines about one reason are at most this far apart.
const LOG_INTERVAL_NS: u64 = 1_000_000_000;

#[map]
pub static SYN_FLOOD: Array<SynFlood> = Array::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static SYN_PROXY_JOBS: ProgramArray = ProgramArray::with_max_entries(JOB_PROGRAMS.len() as u32, 0);

#[map]
pub static HELD_SEGMENTS: LruHashMap<FlowKey, HeldSegment> = LruHashMap::with_max_entries(HELD_SEGMENTS_CAPACITY, 0);

#[map]
pub static HELD_SCRATCH: PerCpuArray<HeldSegment> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(NEXT_HOP_SLOTS, 0);

// IPv6 counterparts of SERVICES, BACKENDS, FLOWS, REVERSE_NAT and
// VIP_ADDRESSES, created the same way (service and backend ids are shared
// with IPv4: see bg_lb_common::maps::BACKENDS6).
#[map]
pub static SERVICES6: HashMap<ServiceKey6, Service> = HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

#[map]
pub static BACKENDS6: Array<Backend6> = Array::with_max_entries(MAX_BACKENDS, 0);

#[map]
pub static FLOWS6: LruHashMap<FlowKey6, Flow6> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

#[map]
pub static REVERSE_NAT6: HashMap<NatKey6, NatOwner6> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

#[map]
pub static VIP_ADDRESSES6: HashMap<Ipv6Wire, u32> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static HELD_SEGMENTS6: LruHashMap<FlowKey6, HeldSegment> = LruHashMap::with_max_entries(HELD_SEGMENTS_CAPACITY, 0);

#[map]
pub static TAKEN_PAIRS6: PerCpuArray<TakenPair6> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static DSR6_BACKEND: PerCpuArray<Ipv6Wire> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static TOO_BIG6_MTU: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static NEXT_HOPS6: PerCpuArray<NextHop6> = PerCpuArray::with_max_entries(NEXT_HOP_SLOTS, 0);

// Written and read by userspace only (see bg_lb_common::maps::LAYOUT).
#[map]
pub static LAYOUT: Array<u64> = Array::with_max_entries(1, 0);

/// An address family's flow maps, so that one generic path serves both:
/// implemented on the family's address type ([`WireAddr`]), so a call
/// such as `flow_entry(&key)` picks FLOWS or FLOWS6 by its key's type.
pub trait FamilyMaps: WireAddr {
    fn backends() -> &'static Array<BackendOf<Self>>;
    fn flows() -> &'static LruHashMap<FlowKeyOf<Self>, FlowOf<Self>>;
    fn reverse_nat() -> &'static HashMap<NatKeyOf<Self>, NatOwnerOf<Self>>;
    /// The SYN proxy's held segments.
    fn held_segments() -> &'static LruHashMap<FlowKeyOf<Self>, HeldSegment>;
}

impl FamilyMaps for u32 {
    #[inline(always)]
    fn backends() -> &'static Array<Backend> {
        &BACKENDS
    }

    #[inline(always)]
    fn flows() -> &'static LruHashMap<FlowKey, Flow> {
        &FLOWS
    }

    #[inline(always)]
    fn reverse_nat() -> &'static HashMap<NatKey, NatOwner> {
        &REVERSE_NAT
    }

    #[inline(always)]
    fn held_segments() -> &'static LruHashMap<FlowKey, HeldSegment> {
        &HELD_SEGMENTS
    }
}

impl FamilyMaps for Ipv6Wire {
    #[inline(always)]
    fn backends() -> &'static Array<Backend6> {
        &BACKENDS6
    }

    #[inline(always)]
    fn flows() -> &'static LruHashMap<FlowKey6, Flow6> {
        &FLOWS6
    }

    #[inline(always)]
    fn reverse_nat() -> &'static HashMap<NatKey6, NatOwner6> {
        &REVERSE_NAT6
    }

    #[inline(always)]
    fn held_segments() -> &'static LruHashMap<FlowKey6, HeldSegment> {
        &HELD_SEGMENTS6
    }
}

/// The pinned flow under `key`, to update in place for this packet.
/// FLOWS is an LRU: an entry may be evicted under pressure, which the
/// reply path and the daemon's sweep detect (see [`REVERSE_NAT`]).
#[inline(always)]
pub fn flow_entry<A: FamilyMaps>(key: &FlowKeyOf<A>) -> Option<&'static mut FlowOf<A>> {
    let ptr = A::flows().get_ptr_mut(key)?;
    // SAFETY: a preallocated map's values stay mapped for the whole run.
    // Other CPUs may update or delete the same flow meanwhile; its fields are
    // plain integers, so a race leaves at worst a stale state or timestamp.
    Some(unsafe { &mut *ptr })
}

/// The flow that owns `nat`, per its reverse-NAT entry.
#[inline(always)]
pub fn reverse_owner<A: FamilyMaps>(nat: &NatKeyOf<A>) -> Option<FlowKeyOf<A>> {
    // SAFETY: copied at once. REVERSE_NAT is preallocated: should the entry
    // be removed and its slot reused meanwhile, or taken over by a new flow
    // (`port_takeover`), the copy may show the new owner, or a mix of both
    // keys. A caller uses the owner only if its flow names this very
    // (backend, SNAT port), which no mix does.
    unsafe { A::reverse_nat().get(nat) }.map(|owner| owner.flow)
}

/// `owner`'s flow, if it is pinned to `nat`: its backend id still names
/// the backend it was pinned to, and its (backend, SNAT address and port)
/// is `nat`. Only then may a packet keyed by `nat` reach `owner`'s client:
/// a reverse entry whose flow was evicted or forgotten, or a mix of keys
/// read during a takeover, names no one.
#[inline(always)]
pub fn flow_pinned_to<A: FamilyMaps>(owner: &FlowKeyOf<A>, nat: &NatKeyOf<A>) -> Option<&'static mut FlowOf<A>> {
    let flow = flow_entry(owner)?;
    let backend = A::backends().get(flow.backend_id)?;
    (backend.generation == flow.backend_gen && flow.nat_key(backend) == *nat).then_some(flow)
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(c) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: an array element is never freed, and a per-CPU one is written
        // only by this CPU, which runs one program at a time.
        unsafe { *c += 1 };
    }
}

/// Whether a line about `counter` may be logged at `now_ns`: at most one a
/// second per reason, so a flood of drops logs a line a second. CPUs share
/// the timestamp; two racing at the same instant may both log.
#[inline(always)]
pub fn log_due(counter: Counter, now_ns: u64) -> bool {
    let Some(last) = LOG_TIMES.get_ptr_mut(counter as u32) else {
        return false;
    };
    // SAFETY: an array element is never freed; a racing write from another
    // CPU only makes a second line possible.
    unsafe {
        if now_ns.wrapping_sub(*last) < LOG_INTERVAL_NS {
            return false;
        }
        *last = now_ns;
    }
    true
}

/// Which way a packet crosses the LB, for the traffic statistics.
#[derive(Clone, Copy)]
pub enum Way {
    ToBackend,
    ToClient,
}

#[inline(always)]
fn add(stats: Option<*mut TrafficStats>, way: Way, bytes: u16, new_flow: bool) {
    let Some(s) = stats else { return };
    // SAFETY: `account` passes per-CPU array elements, as in `count`.
    let s = unsafe { &mut *s };
    match way {
        Way::ToBackend => {
            s.packets_in += 1;
            s.bytes_in += bytes as u64;
        }
        Way::ToClient => {
            s.packets_out += 1;
            s.bytes_out += bytes as u64;
        }
    }
    if new_flow {
        s.new_flows += 1;
    }
}

/// Counts what a backend's reply said about its connection.
#[inline(always)]
pub fn account_event(backend_id: u32, event: Event) {
    if event == Event::RstOutOfWindow {
        count(Counter::RstOutOfWindow);
        return;
    }
    let Some(s) = BACKEND_STATS.get_ptr_mut(backend_id) else {
        return;
    };
    // SAFETY: a per-CPU array element, as in `count`.
    let s = unsafe { &mut *s };
    match event {
        Event::Handshake => s.handshakes += 1,
        Event::Refused => s.refused += 1,
        Event::Reset => s.resets += 1,
        Event::None | Event::Established | Event::RstOutOfWindow => {}
    }
}

/// Counts a connection request refused because no SNAT (address, port)
/// for `backend_id` was free.
#[inline(always)]
pub fn account_exhausted(backend_id: u32) {
    if let Some(s) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: a per-CPU array element, as in `count`.
        unsafe { (*s).snat_exhausted += 1 };
    }
}

/// Counts a packet of a flow of `backend_id` and `service_id`; `new_flow`
/// when it completed the handshake.
#[inline(always)]
pub fn account(backend_id: u32, service_id: u32, way: Way, bytes: u16, new_flow: bool) {
    add(BACKEND_STATS.get_ptr_mut(backend_id), way, bytes, new_flow);
    add(SERVICE_STATS.get_ptr_mut(service_id), way, bytes, new_flow);
}
