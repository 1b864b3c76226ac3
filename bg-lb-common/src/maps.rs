//! Map names, default capacities and key/value layouts.
//!
//! Every type is `#[repr(C)]` with explicit padding so the kernel, the eBPF
//! program and userspace see the same bytes.

/// `HashMap<ServiceKey, Service>`: VIP:port/proto -> service.
pub const SERVICES: &str = "SERVICES";
/// `Array<Backend>` indexed by backend id.
pub const BACKENDS: &str = "BACKENDS";
/// `Array<u32>`: all services' lookup tables, each a region of
/// `Service::lut_size` backend ids starting at `Service::lut_base`.
pub const LOOKUP_TABLES: &str = "LOOKUP_TABLES";
/// `LruHashMap<FlowKey, Flow>`: client flow -> pinned backend.
pub const FLOWS: &str = "FLOWS";
/// `LruHashMap<NatKey, FlowKey>`: backend reply tuple -> client flow.
pub const REVERSE_NAT: &str = "REVERSE_NAT";
/// `PerCpuArray<TrafficStats>` indexed by backend id.
pub const BACKEND_STATS: &str = "BACKEND_STATS";
/// `PerCpuArray<TrafficStats>` indexed by service id.
pub const SERVICE_STATS: &str = "SERVICE_STATS";
/// `PerCpuArray<u64>` indexed by [`crate::counters::Counter`].
pub const COUNTERS: &str = "COUNTERS";
/// `Array<DataplaneConfig>` with one entry.
pub const CONFIG: &str = "CONFIG";
/// `DevMapHash` keyed by ifindex: interfaces the program may redirect to.
pub const TX_PORTS: &str = "TX_PORTS";

/// Every map of the load balancer object, for pinning and teardown.
pub const ALL_MAPS: [&str; 10] = [
    SERVICES,
    BACKENDS,
    LOOKUP_TABLES,
    FLOWS,
    REVERSE_NAT,
    BACKEND_STATS,
    SERVICE_STATS,
    COUNTERS,
    CONFIG,
    TX_PORTS,
];

/// Name of the load balancer's XDP program in the object.
pub const XDP_PROGRAM: &str = "bg_lb";

pub const MAX_SERVICES: u32 = 512;
pub const MAX_BACKENDS: u32 = 4096;
pub const MAX_INTERFACES: u32 = 64;
/// Default lookup-table size per service (prime, as Maglev requires).
pub const DEFAULT_LUT_SIZE: u32 = 65_537;
/// Default capacity of [`LOOKUP_TABLES`]: two buffers of the default size for
/// 16 services. Userspace may resize it at load time.
pub const DEFAULT_LOOKUP_CAPACITY: u32 = 2 * DEFAULT_LUT_SIZE * 16;
/// Default flow-table capacity (and of the reverse-NAT table).
pub const DEFAULT_MAX_FLOWS: u32 = 1 << 20;

/// Lookup-table slot value meaning "no backend can take new flows".
pub const NO_BACKEND: u32 = u32::MAX;

pub const IPPROTO_TCP: u8 = 6;

pub const POOL_BLUE: u8 = 0;
pub const POOL_GREEN: u8 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    pub id: u32,
    pub flags: u32,
    /// First slot of this service's active table in [`LOOKUP_TABLES`].
    pub lut_base: u32,
    /// Number of slots (prime); `hash % lut_size` picks one.
    pub lut_size: u32,
    /// The other buffer, where the next table is written. Kept here so a
    /// restarted daemon can rebuild its allocation from the pinned maps.
    pub lut_spare_base: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: u32,
    pub port: u16,
    pub pool: u8,
    /// [`BACKEND_RESET_FLOWS`], ...
    pub flags: u8,
    pub service_id: u32,
}

/// The backend is down and configured with `on_down = "reset"`: packets of
/// its pinned flows are answered with a RST and the flows removed.
pub const BACKEND_RESET_FLOWS: u8 = 1 << 0;

/// A client flow as the client sees it: client -> VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client_addr: u32,
    pub vip_addr: u32,
    pub client_port: u16,
    pub vip_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub backend_id: u32,
    pub service_id: u32,
    pub snat_port: u16,
    pub _pad: u16,
    /// Bits from [`crate::flow_state`].
    pub state: u32,
    pub created_ns: u64,
    pub last_seen_ns: u64,
}

/// A backend's reply as it arrives: backend addr:port -> SNAT addr:snat_port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub backend_addr: u32,
    pub backend_port: u16,
    pub snat_port: u16,
}

/// Global settings, entry 0 of [`CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Source address of NATed packets towards backends (wire order).
    pub snat_addr: u32,
    /// Inclusive SNAT port range, host byte order.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// Non-zero once userspace has written a complete configuration; until
    /// then every packet passes untouched.
    pub ready: u32,
    pub _pad: u32,
}

/// Per-backend and per-service traffic counters. `in` is client -> backend,
/// `out` is backend -> client. The last three are each connection's fate as
/// the reply path sees it: what progressive shifts judge a pool by.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub new_flows: u64,
    /// The backend answered a new flow's SYN (SYN-ACK on the reply path).
    pub handshakes: u64,
    /// The backend refused a new flow (RST before its SYN-ACK).
    pub refused: u64,
    /// The backend reset an established flow.
    pub resets: u64,
}

impl TrafficStats {
    /// Field-wise sum: per-CPU values of one entry, or one backend's
    /// counters across listeners.
    pub fn add(&mut self, other: &TrafficStats) {
        self.packets_in += other.packets_in;
        self.bytes_in += other.bytes_in;
        self.packets_out += other.packets_out;
        self.bytes_out += other.bytes_out;
        self.new_flows += other.new_flows;
        self.handshakes += other.handshakes;
        self.refused += other.refused;
        self.resets += other.resets;
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for NatKey {}
    unsafe impl aya::Pod for DataplaneConfig {}
    unsafe impl aya::Pod for TrafficStats {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn map_types_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 8);
        assert_eq!(size_of::<Service>(), 24);
        assert_eq!(size_of::<Backend>(), 12);
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(size_of::<Flow>(), 32);
        assert_eq!(size_of::<NatKey>(), 8);
        assert_eq!(size_of::<DataplaneConfig>(), 16);
        assert_eq!(size_of::<TrafficStats>(), 64);
    }

    #[test]
    fn default_lut_size_is_prime() {
        let n = DEFAULT_LUT_SIZE;
        assert!((2..n).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d)));
    }
}
