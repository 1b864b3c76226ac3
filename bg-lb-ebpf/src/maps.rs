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
    flow_state::BackendSignal,
    maps::{
        Backend, DEFAULT_LOOKUP_CAPACITY, DEFAULT_MAX_FLOWS, DataplaneConfig, Flow, FlowKey, HELD_SEGMENTS_CAPACITY,
        HeldSegment, MAX_BACKENDS, MAX_INTERFACES, MAX_SERVICES, NatKey, Service, ServiceKey, SynFlood, TrafficStats,
    },
    syn_proxy::JOB_PROGRAMS,
};

// Not preallocated: an update then swaps in a new element under RCU, so a
// packet sees the old or the new service (and its table base), never a mix.
#[map]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

#[map]
pub static LOOKUP_TABLES: Array<u32> = Array::with_max_entries(DEFAULT_LOOKUP_CAPACITY, 0);

#[map]
pub static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

#[map]
pub static REVERSE_NAT: LruHashMap<NatKey, FlowKey> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

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
pub static SYN_FLOOD: Array<SynFlood> = Array::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static SYN_PROXY_JOBS: ProgramArray = ProgramArray::with_max_entries(JOB_PROGRAMS.len() as u32, 0);

#[map]
pub static HELD_SEGMENTS: LruHashMap<FlowKey, HeldSegment> = LruHashMap::with_max_entries(HELD_SEGMENTS_CAPACITY, 0);

#[map]
pub static HELD_SCRATCH: PerCpuArray<HeldSegment> = PerCpuArray::with_max_entries(1, 0);

/// The pinned flow under `key`, to update in place for this packet.
#[inline(always)]
pub fn flow_entry(key: &FlowKey) -> Option<&'static mut Flow> {
    let ptr = FLOWS.get_ptr_mut(key)?;
    // SAFETY: a preallocated map's values stay mapped for the whole run.
    // Other CPUs may update or delete the same flow meanwhile; its fields are
    // plain integers, so a race leaves at worst a stale state or timestamp.
    Some(unsafe { &mut *ptr })
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(c) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: an array element is never freed, and a per-CPU one is written
        // only by this CPU, which runs one program at a time.
        unsafe { *c += 1 };
    }
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

/// Counts what a backend's reply says about its connection.
#[inline(always)]
pub fn account_signal(flow: &Flow, signal: BackendSignal) {
    let Some(s) = BACKEND_STATS.get_ptr_mut(flow.backend_id) else {
        return;
    };
    // SAFETY: a per-CPU array element, as in `count`.
    let s = unsafe { &mut *s };
    match signal {
        BackendSignal::Handshake => s.handshakes += 1,
        BackendSignal::Refused => s.refused += 1,
        BackendSignal::Reset => s.resets += 1,
        BackendSignal::None => {}
    }
}

#[inline(always)]
pub fn account(flow: &Flow, way: Way, bytes: u16, new_flow: bool) {
    add(BACKEND_STATS.get_ptr_mut(flow.backend_id), way, bytes, new_flow);
    add(SERVICE_STATS.get_ptr_mut(flow.service_id), way, bytes, new_flow);
}
