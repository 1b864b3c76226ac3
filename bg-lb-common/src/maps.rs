//! Map names, default capacities and key/value layouts.
//!
//! Every type is `#[repr(C)]` with explicit padding so the kernel, the eBPF
//! program and userspace see the same bytes. Addresses and ports are stored
//! as on the wire; the constructors and accessors here are the only code that
//! converts them to and from `core::net` types.
//!
//! The address-bearing types are generic over the address family
//! ([`WireAddr`]: `u32` for IPv4, [`Ipv6Wire`] for IPv6), one definition
//! with two instantiations: `ServiceKey`, `Backend`, `FlowKey`, `Flow`,
//! `NatKey`, `NatOwner` for IPv4 (their layouts as before IPv6 came), and
//! the same names with a `6` for IPv6, in maps of their own ([`SERVICES6`],
//! ...). Service and backend ids are one space across both families.

use core::{
    fmt::Debug,
    hash::Hash,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    ops::RangeInclusive,
};

/// An IPv6 address as the data plane reads it: its 16 octets as four
/// `u32::from_ne_bytes` words (wire order, as IPv4's `u32`).
pub type Ipv6Wire = [u32; 4];

/// An address family's address in wire order: `u32` (IPv4) or
/// [`Ipv6Wire`]. What the generic map types and the data plane's generic
/// code need of it.
pub trait WireAddr: Copy + Default + Eq + Hash + Debug + sealed::Sealed + 'static {
    /// The explicit tail padding of a [`FlowOf`] of this family: none for
    /// IPv4 (its layout is unchanged), 4 bytes for IPv6 (to the `u64`
    /// alignment).
    type FlowPad: Copy + Default + Eq + Hash + Debug;

    /// `f` applied over the address's 32-bit words in order, from `init`:
    /// for IPv4 `f(init, addr)`, so a hash over the words is the one
    /// IPv4 always had.
    fn fold<F: Fn(u32, u32) -> u32>(&self, init: u32, f: F) -> u32;

    /// The unspecified address (all zeros): a free [`BackendOf`] slot, an
    /// unused SNAT slot.
    fn is_unspecified(&self) -> bool;

    /// Non-zero if `self` and `other` differ: their words XORed and ORed
    /// together, for a comparison LLVM does not turn into a `bcmp` call.
    fn differs(&self, other: &Self) -> u32;

    /// This family's SNAT addresses in `cfg` and how many are in use.
    fn snat_addrs(cfg: &DataplaneConfig) -> (&[Self; MAX_SNAT_ADDRESSES], u32);

    /// This family's VIP filter in `cfg`.
    fn vip_filter(cfg: &DataplaneConfig) -> &[u32; VIP_FILTER_WORDS];
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for u32 {}
    impl Sealed for super::Ipv6Wire {}
}

impl WireAddr for u32 {
    type FlowPad = [u8; 0];

    #[inline(always)]
    fn fold<F: Fn(u32, u32) -> u32>(&self, init: u32, f: F) -> u32 {
        f(init, *self)
    }

    #[inline(always)]
    fn is_unspecified(&self) -> bool {
        *self == 0
    }

    #[inline(always)]
    fn differs(&self, other: &Self) -> u32 {
        self ^ other
    }

    #[inline(always)]
    fn snat_addrs(cfg: &DataplaneConfig) -> (&[Self; MAX_SNAT_ADDRESSES], u32) {
        (&cfg.snat_addrs, cfg.snat_addr_count)
    }

    #[inline(always)]
    fn vip_filter(cfg: &DataplaneConfig) -> &[u32; VIP_FILTER_WORDS] {
        &cfg.vip_filter
    }
}

impl WireAddr for Ipv6Wire {
    type FlowPad = [u8; 4];

    #[inline(always)]
    fn fold<F: Fn(u32, u32) -> u32>(&self, init: u32, f: F) -> u32 {
        let [a, b, c, d] = *self;
        f(f(f(f(init, a), b), c), d)
    }

    #[inline(always)]
    fn is_unspecified(&self) -> bool {
        let [a, b, c, d] = *self;
        a | b | c | d == 0
    }

    #[inline(always)]
    fn differs(&self, other: &Self) -> u32 {
        (self[0] ^ other[0]) | (self[1] ^ other[1]) | (self[2] ^ other[2]) | (self[3] ^ other[3])
    }

    #[inline(always)]
    fn snat_addrs(cfg: &DataplaneConfig) -> (&[Self; MAX_SNAT_ADDRESSES], u32) {
        (&cfg.snat6_addrs, cfg.snat6_addr_count)
    }

    #[inline(always)]
    fn vip_filter(cfg: &DataplaneConfig) -> &[u32; VIP_FILTER_WORDS] {
        &cfg.vip6_filter
    }
}

/// `HashMap<ServiceKey, Service>`: VIP:port/proto -> service.
pub const SERVICES: &str = "SERVICES";
/// `Array<Backend>` indexed by backend id.
pub const BACKENDS: &str = "BACKENDS";
/// `Array<u32>`: all services' lookup tables of `Service::lut_size`
/// backend ids, each service's four (each pool's two buffers) from
/// `Service::lut_base` ([`table_offset`]). Created
/// with [`LOOKUP_TABLES_FLAGS`], so the daemon writes a table through a
/// memory mapping instead of one syscall per slot.
pub const LOOKUP_TABLES: &str = "LOOKUP_TABLES";
/// The kernel's `BPF_F_MMAPABLE`: LOOKUP_TABLES' creation flags, declared by
/// the program and checked on an adopted pin.
pub const LOOKUP_TABLES_FLAGS: u32 = 1 << 10;
/// `LruHashMap<FlowKey, Flow>`: client flow -> pinned backend.
pub const FLOWS: &str = "FLOWS";
/// `HashMap<NatKey, NatOwner>`: backend reply tuple -> client flow. Not an
/// LRU: an entry goes only when its flow goes, or when a new connection
/// takes the port over from a flow that has ended (`crate::port_reuse`),
/// so a (backend, SNAT port) is never handed to a second flow while the
/// first one lives.
///
/// A `gateway` service's flows keep their keys here too, with the client's
/// address and port where a SNAT address and port would be
/// ([`FORWARDING_GATEWAY`]): one map, so the reply path, the sweep, ICMP
/// translation and the ownership rule (one flow per key, claimed with
/// NOEXIST) serve both modes unchanged. The two kinds cannot be confused:
/// an entry is only ever read through the flow it names, whose service
/// says the mode, and a key both kinds want is owned by whichever claimed
/// it first.
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
/// `HashMap<u32, u32>`: every VIP address (wire order) -> 1, for judging
/// frames whose port cannot be read (a non-first fragment).
pub const VIP_ADDRESSES: &str = "VIP_ADDRESSES";
/// `Array<u64>` indexed by [`crate::counters::Counter`]: when the program
/// last logged that reason (`bpf_ktime_get_ns`), so a flood logs a line a
/// second, not a line a packet.
pub const LOG_TIMES: &str = "LOG_TIMES";

/// `Array<SynFlood>` indexed by service id: the SYN proxy's flood detector.
pub const SYN_FLOOD: &str = "SYN_FLOOD";
/// `ProgramArray` indexed by [`crate::syn_proxy::Job`]: the SYN proxy's job
/// programs ([`crate::syn_proxy::JOB_PROGRAMS`]).
pub const SYN_PROXY_JOBS: &str = "SYN_PROXY_JOBS";
/// `LruHashMap<FlowKey, HeldSegment>`: client segments of proxied flows that
/// arrived before the backend answered.
pub const HELD_SEGMENTS: &str = "HELD_SEGMENTS";
/// `PerCpuArray<HeldSegment>` with one entry: where a segment is put
/// together before it goes into [`HELD_SEGMENTS`] (too big for the stack).
pub const HELD_SCRATCH: &str = "HELD_SCRATCH";
/// `Array<u64>` with one entry: the layout version of the pinned maps (a
/// hash of every map's definition, computed by userspace from the object),
/// so a bg-lb whose maps differ never adopts them. The program never reads it.
pub const LAYOUT: &str = "LAYOUT";
/// Folded into the layout version ([`LAYOUT`]) beside every map's
/// definition: raised whenever entries change meaning but not size, which
/// the definitions cannot show, so a bg-lb never adopts pins it would
/// misread. 1: the traffic ratio moved into SERVICES entries
/// (`blue_share`), and each service's table became one per pool, each
/// double-buffered.
pub const LAYOUT_REVISION: u32 = 1;
/// `PerCpuArray<NextHop>` of [`NEXT_HOP_SLOTS`] entries: each CPU's recent
/// `bpf_fib_lookup` results, so a packet to a destination routed a moment
/// ago skips the lookup (see [`NextHop`]).
pub const NEXT_HOPS: &str = "NEXT_HOPS";

/// `HashMap<ServiceKey6, Service>`: IPv6 VIP:port/proto -> service (ids
/// shared with [`SERVICES`]).
pub const SERVICES6: &str = "SERVICES6";
/// `Array<Backend6>` indexed by backend id. Backend ids are one space
/// across [`BACKENDS`] and this: an id in use names a backend in exactly one
/// of the two (free in the other). An IPv6 service's lookup tables, in
/// [`LOOKUP_TABLES`], hold ids of entries here.
pub const BACKENDS6: &str = "BACKENDS6";
/// `LruHashMap<FlowKey6, Flow6>`: IPv6 client flow -> pinned backend.
pub const FLOWS6: &str = "FLOWS6";
/// `HashMap<NatKey6, NatOwner6>`: IPv6 backend reply tuple -> client flow,
/// with [`REVERSE_NAT`]'s ownership rules.
pub const REVERSE_NAT6: &str = "REVERSE_NAT6";
/// `HashMap<Ipv6Wire, u32>`: every IPv6 VIP address -> 1, as
/// [`VIP_ADDRESSES`].
pub const VIP_ADDRESSES6: &str = "VIP_ADDRESSES6";
/// `LruHashMap<FlowKey6, HeldSegment>`: [`HELD_SEGMENTS`] for IPv6 flows.
pub const HELD_SEGMENTS6: &str = "HELD_SEGMENTS6";
/// `PerCpuArray<TakenPair6>` with one entry: the SNAT pair an IPv6
/// connection request just claimed, for the program the frame goes to
/// next, which opens its flow on it (see [`TakenPair6`]).
pub const TAKEN_PAIRS6: &str = "TAKEN_PAIRS6";
/// `PerCpuArray<Ipv6Wire>` with one entry: the on-link backend an IPv6
/// `dsr` packet goes to, from the program that chose it to the one that
/// sends it ([`crate::syn_proxy::Job::Dsr6`]): a second route lookup does
/// not fit the choosing programs' stacks.
pub const DSR6_BACKEND: &str = "DSR6_BACKEND";
/// `PerCpuArray<u32>` with one entry: the egress MTU (host order) an IPv6
/// packet found too big for its route, from the program that routed it to
/// the one that answers it with Packet Too Big
/// ([`crate::syn_proxy::Job::TooBig6`]).
pub const TOO_BIG6_MTU: &str = "TOO_BIG6_MTU";
/// `PerCpuArray<NextHop6>` of [`NEXT_HOP_SLOTS`] entries: [`NEXT_HOPS`]
/// for IPv6 destinations (see [`NextHop6`]).
pub const NEXT_HOPS6: &str = "NEXT_HOPS6";

/// Every map of the load balancer object, for pinning and teardown.
pub const ALL_MAPS: [&str; 28] = [
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
    VIP_ADDRESSES,
    LOG_TIMES,
    SYN_FLOOD,
    SYN_PROXY_JOBS,
    HELD_SEGMENTS,
    HELD_SCRATCH,
    LAYOUT,
    NEXT_HOPS,
    SERVICES6,
    BACKENDS6,
    FLOWS6,
    REVERSE_NAT6,
    VIP_ADDRESSES6,
    HELD_SEGMENTS6,
    TAKEN_PAIRS6,
    DSR6_BACKEND,
    TOO_BIG6_MTU,
    NEXT_HOPS6,
];

/// Name of the load balancer's XDP program in the object.
pub const XDP_PROGRAM: &str = "bg_lb";
/// Name of the program that resets a flow at both ends (the drain
/// deadline's), run by the daemon with `BPF_PROG_RUN` on trigger frames.
pub const FLOW_RESET_PROGRAM: &str = "bg_lb_flow_reset";
/// [`FLOW_RESET_PROGRAM`] for IPv6 flows (IPv6 trigger frames).
pub const FLOW_RESET6_PROGRAM: &str = "bg_lb_flow_reset6";

pub const MAX_SERVICES: u32 = 512;
pub const MAX_BACKENDS: u32 = 4096;
pub const MAX_INTERFACES: u32 = 64;
/// Default lookup-table size per service (prime, as Maglev requires).
pub const DEFAULT_LUT_SIZE: u32 = 65_537;
/// Slots of [`LOOKUP_TABLES`] a service of tables of `lut_size` takes: two
/// buffers per pool, one read while the other is written.
pub const fn service_table_slots(lut_size: u32) -> u32 {
    4 * lut_size
}
/// Where `pool`'s (0 blue, 1 green) table in `buffer` (0 or 1) starts,
/// counted from [`Service::lut_base`].
pub const fn table_offset(pool: u32, buffer: u32, lut_size: u32) -> u32 {
    (2 * pool + buffer) * lut_size
}
/// Default capacity of [`LOOKUP_TABLES`]: 16 services of the default table
/// size. Userspace may resize it at load time.
pub const DEFAULT_LOOKUP_CAPACITY: u32 = service_table_slots(DEFAULT_LUT_SIZE) * 16;
/// The scale of [`Service::blue_share`]: 10,000 is every new flow.
pub const POOL_SHARE_SCALE: u32 = 10_000;
/// Default flow-table capacity (and of the reverse-NAT table).
pub const DEFAULT_MAX_FLOWS: u32 = 1 << 20;
/// Capacity of [`HELD_SEGMENTS`]: a segment waits there for one round trip
/// to a backend, so this many proxied handshakes may finish at once.
pub const HELD_SEGMENTS_CAPACITY: u32 = 4096;
/// Most SNAT addresses ([`DataplaneConfig::snat_addrs`]). The reply path
/// compares a packet's destination with each in a bounded loop, and the
/// configuration is copied to the stack; 16 keep both cheap while giving a
/// backend 16 x 64,512 ports, far more than its own connection table holds.
/// A power of two, so an index masked with `MAX - 1` is in bounds.
pub const MAX_SNAT_ADDRESSES: usize = 16;

/// Lookup-table slot value meaning "no backend can take new flows".
pub const NO_BACKEND: u32 = u32::MAX;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

pub const POOL_BLUE: u8 = 0;
pub const POOL_GREEN: u8 = 1;

/// A service's VIP, port and protocol: the key of [`SERVICES`]
/// ([`ServiceKey`]) and [`SERVICES6`] ([`ServiceKey6`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKeyOf<A> {
    pub addr: A,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

pub type ServiceKey = ServiceKeyOf<u32>;
pub type ServiceKey6 = ServiceKeyOf<Ipv6Wire>;

impl<A: WireAddr> ServiceKeyOf<A> {
    /// The key of the `proto` ([`IPPROTO_TCP`] or [`IPPROTO_UDP`]) service
    /// at `addr`:`port`, in wire order as the data plane reads them.
    #[inline(always)]
    pub const fn from_wire(addr: A, port: u16, proto: u8) -> Self {
        Self {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }
}

impl ServiceKey {
    /// The key of the TCP service listening on `vip`.
    pub const fn new(vip: SocketAddrV4) -> Self {
        Self::with_proto(vip, IPPROTO_TCP)
    }

    /// The key of the service listening on `vip` for protocol `proto`
    /// ([`IPPROTO_TCP`] or [`IPPROTO_UDP`]).
    pub const fn with_proto(vip: SocketAddrV4, proto: u8) -> Self {
        Self {
            addr: wire_ip(*vip.ip()),
            port: wire_port(vip.port()),
            proto,
            _pad: 0,
        }
    }

    pub const fn vip(&self) -> SocketAddrV4 {
        socket(self.addr, self.port)
    }
}

impl ServiceKey6 {
    /// The key of the TCP service listening on `vip`.
    pub const fn new(vip: SocketAddrV6) -> Self {
        Self::with_proto(vip, IPPROTO_TCP)
    }

    /// The key of the service listening on `vip` for protocol `proto`.
    pub const fn with_proto(vip: SocketAddrV6, proto: u8) -> Self {
        Self::from_wire(wire_ip6(*vip.ip()), wire_port(vip.port()), proto)
    }

    pub const fn vip(&self) -> SocketAddrV6 {
        socket6(self.addr, self.port)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    pub id: u32,
    /// [`crate::syn_proxy::SYN_PROXY_AUTO`] or [`crate::syn_proxy::SYN_PROXY_ALWAYS`]
    /// (neither: the SYN proxy is off), and [`SERVICE_AFFINITY_CLIENT_IP`].
    pub flags: u32,
    /// First slot of this service's tables in [`LOOKUP_TABLES`]: each
    /// pool's two buffers, blue's then green's ([`service_table_slots`]).
    /// A flag ([`SERVICE_SECOND_BUFFER`]) per pool names the buffer packets
    /// read; userspace writes the other, then flips the flag.
    pub lut_base: u32,
    /// Number of slots of each table (prime); `hash % lut_size` picks one.
    pub lut_size: u32,
    /// How packets reach the backends: [`FORWARDING_FULL_NAT`],
    /// [`FORWARDING_GATEWAY`] or [`FORWARDING_DSR`].
    pub forwarding: u16,
    /// The traffic ratio: blue's share of new flows, in
    /// [`POOL_SHARE_SCALE`]ths. A new flow whose pool point is below it
    /// reads blue's table, any other green's
    /// ([`crate::flow_hash::table_slot`]), so a ratio change writes this
    /// entry and no table.
    pub blue_share: u16,
    /// SYN proxy in auto mode: connection requests in one second that
    /// clients leave unanswered before the proxy engages.
    pub syn_proxy_threshold: u32,
    /// SYN proxy: the MSS its SYN-ACKs offer clients (host order).
    pub syn_proxy_mss: u16,
    /// A UDP service's flows end after this many seconds without a packet
    /// either way; 0 for a TCP service. Read by the daemon's sweep only:
    /// UDP has no end of its own for the data plane to see. (Seconds in
    /// what was padding: a larger entry, copied onto the packet path's
    /// stack, pushed it past the verifier's limit.)
    pub udp_idle_s: u16,
}

/// [`Service::flags`]: a new flow's table slot comes from its client's
/// address alone ([`crate::flow_hash::table_slot`]), so a client keeps its
/// pool and backend across its connections (`affinity = "client-ip"`).
pub const SERVICE_AFFINITY_CLIENT_IP: u32 = 1 << 2;
/// [`Service::flags`]: packets read the blue pool's table in its second
/// buffer (green's: the next bit up).
pub const SERVICE_SECOND_BUFFER: u32 = 1 << 3;

/// The [`Service::flags`] bit of `pool`'s (0 blue, 1 green) second buffer.
pub const fn second_buffer_flag(pool: u32) -> u32 {
    SERVICE_SECOND_BUFFER << pool
}

impl Service {
    /// The buffer (0 or 1) of `pool`'s (0 blue, 1 green) table that
    /// packets read.
    #[inline(always)]
    pub const fn active_buffer(&self, pool: u32) -> u32 {
        (self.flags & second_buffer_flag(pool) != 0) as u32
    }
}

/// [`Service::forwarding`]: source and destination rewritten (the source to
/// a SNAT address and port); replies come back to the SNAT address.
pub const FORWARDING_FULL_NAT: u16 = 0;
/// [`Service::forwarding`]: only the destination rewritten (VIP:port to
/// backend:port); backends route their replies, to the client's own
/// address and port, through the LB. The flow's [`Flow::snat_addr`] and
/// [`Flow::snat_port`] are the client's, so its [`REVERSE_NAT`] key is
/// (backend, client address, client port): what the reply carries.
pub const FORWARDING_GATEWAY: u16 = 1;
/// [`Service::forwarding`]: only the destination MAC rewritten, to the
/// on-link backend's; replies go from the backend to the client directly.
/// A flow has no [`REVERSE_NAT`] entry and no SNAT port.
pub const FORWARDING_DSR: u16 = 2;

/// An entry of [`BACKENDS`] ([`Backend`]) or [`BACKENDS6`] ([`Backend6`]);
/// the default (unspecified address) marks a free slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendOf<A> {
    pub addr: A,
    pub port: u16,
    /// [`POOL_BLUE`] or [`POOL_GREEN`].
    pub pool: u8,
    /// [`BACKEND_RESET_FLOWS`], ...
    pub flags: u8,
    pub service_id: u32,
    /// Which backend holds this id: never 0 in use, and new each time the id
    /// is given to a backend. A flow remembers it ([`Flow::backend_gen`]),
    /// so a flow whose id was handed to another backend is never forwarded
    /// there.
    pub generation: u32,
}

pub type Backend = BackendOf<u32>;
pub type Backend6 = BackendOf<Ipv6Wire>;

impl<A: WireAddr> BackendOf<A> {
    /// Backend at `addr`:`port` (wire order) of service `service_id`,
    /// holding its id as `generation`; `reset_flows` sets
    /// [`BACKEND_RESET_FLOWS`].
    pub const fn from_wire(service_id: u32, generation: u32, addr: A, port: u16, pool: u8, reset_flows: bool) -> Self {
        Self {
            addr,
            port,
            pool,
            flags: if reset_flows { BACKEND_RESET_FLOWS } else { 0 },
            service_id,
            generation,
        }
    }

    #[inline(always)]
    pub fn is_free(&self) -> bool {
        self.addr.is_unspecified()
    }
}

impl Backend {
    /// Backend `addr` of service `service_id`, holding its id as
    /// `generation`; `reset_flows` sets [`BACKEND_RESET_FLOWS`].
    pub const fn new(service_id: u32, generation: u32, addr: SocketAddrV4, pool: u8, reset_flows: bool) -> Self {
        Self::from_wire(
            service_id,
            generation,
            wire_ip(*addr.ip()),
            wire_port(addr.port()),
            pool,
            reset_flows,
        )
    }

    pub const fn addr(&self) -> SocketAddrV4 {
        socket(self.addr, self.port)
    }
}

impl Backend6 {
    /// As [`Backend::new`], for an IPv6 backend.
    pub const fn new(service_id: u32, generation: u32, addr: SocketAddrV6, pool: u8, reset_flows: bool) -> Self {
        Self::from_wire(
            service_id,
            generation,
            wire_ip6(*addr.ip()),
            wire_port(addr.port()),
            pool,
            reset_flows,
        )
    }

    pub const fn addr(&self) -> SocketAddrV6 {
        socket6(self.addr, self.port)
    }
}

/// The backend is down and configured with `on_down = "reset"`: packets of
/// its pinned flows are answered with a RST and the flows removed.
pub const BACKEND_RESET_FLOWS: u8 = 1 << 0;

/// A client flow as the client sees it: client -> VIP. The key of
/// [`FLOWS`] ([`FlowKey`]) and [`FLOWS6`] ([`FlowKey6`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKeyOf<A> {
    pub client_addr: A,
    pub vip_addr: A,
    pub client_port: u16,
    pub vip_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

pub type FlowKey = FlowKeyOf<u32>;
pub type FlowKey6 = FlowKeyOf<Ipv6Wire>;

impl<A: WireAddr> FlowKeyOf<A> {
    /// The TCP flow from `client_addr`:`client_port` to `vip_addr`:`vip_port`,
    /// in wire order as the data plane reads them.
    #[inline(always)]
    pub const fn from_wire(client_addr: A, client_port: u16, vip_addr: A, vip_port: u16) -> Self {
        Self::from_wire_proto(client_addr, client_port, vip_addr, vip_port, IPPROTO_TCP)
    }

    /// [`FlowKeyOf::from_wire`] of protocol `proto`.
    #[inline(always)]
    pub const fn from_wire_proto(client_addr: A, client_port: u16, vip_addr: A, vip_port: u16, proto: u8) -> Self {
        Self {
            client_addr,
            vip_addr,
            client_port,
            vip_port,
            proto,
            _pad: [0; 3],
        }
    }
}

impl FlowKey {
    /// The TCP flow from `client` to `vip`.
    pub const fn from_client(client: SocketAddrV4, vip: SocketAddrV4) -> Self {
        Self::with_proto(client, vip, IPPROTO_TCP)
    }

    /// The flow of protocol `proto` from `client` to `vip`.
    pub const fn with_proto(client: SocketAddrV4, vip: SocketAddrV4, proto: u8) -> Self {
        Self {
            client_addr: wire_ip(*client.ip()),
            vip_addr: wire_ip(*vip.ip()),
            client_port: wire_port(client.port()),
            vip_port: wire_port(vip.port()),
            proto,
            _pad: [0; 3],
        }
    }

    /// The VIP the client sent to.
    pub const fn vip(&self) -> SocketAddrV4 {
        socket(self.vip_addr, self.vip_port)
    }

    pub const fn client(&self) -> SocketAddrV4 {
        socket(self.client_addr, self.client_port)
    }
}

impl FlowKey6 {
    /// The TCP flow from `client` to `vip`.
    pub const fn from_client(client: SocketAddrV6, vip: SocketAddrV6) -> Self {
        Self::with_proto(client, vip, IPPROTO_TCP)
    }

    /// The flow of protocol `proto` from `client` to `vip`.
    pub const fn with_proto(client: SocketAddrV6, vip: SocketAddrV6, proto: u8) -> Self {
        Self::from_wire_proto(
            wire_ip6(*client.ip()),
            wire_port(client.port()),
            wire_ip6(*vip.ip()),
            wire_port(vip.port()),
            proto,
        )
    }

    /// The VIP the client sent to.
    pub const fn vip(&self) -> SocketAddrV6 {
        socket6(self.vip_addr, self.vip_port)
    }

    pub const fn client(&self) -> SocketAddrV6 {
        socket6(self.client_addr, self.client_port)
    }
}

/// A pinned flow: the value of [`FLOWS`] ([`Flow`]) and [`FLOWS6`]
/// ([`Flow6`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowOf<A: WireAddr> {
    pub backend_id: u32,
    pub service_id: u32,
    /// Wire order, as in [`NatKey::snat_port`].
    pub snat_port: u16,
    /// Its service's [`Service::forwarding`] when it was pinned: under
    /// [`FORWARDING_GATEWAY`] its "SNAT" pair is the client's own, under
    /// [`FORWARDING_DSR`] it has none.
    pub forwarding: u16,
    /// Bits from [`crate::flow_state`].
    pub state: u32,
    /// `bpf_ktime_get_ns` when the flow was pinned: its port claim.
    pub created_ns: u64,
    /// The flow's last packet that keeps it alive: `bpf_ktime_get_coarse_ns`
    /// (CLOCK_MONOTONIC_COARSE, at most a kernel tick behind
    /// CLOCK_MONOTONIC), which is cheaper and enough for idle timeouts.
    pub last_seen_ns: u64,
    /// [`Backend::generation`] of the backend the flow was pinned to.
    pub backend_gen: u32,
    /// What the client has sent and acknowledged, in its own numbering.
    pub client: SeqState,
    /// What the backend has sent and acknowledged.
    pub backend: SeqState,
    /// The [`DataplaneConfig::nat_epoch`] in which the flow last made sure
    /// its (backend, SNAT port) is its own.
    pub nat_epoch: u32,
    /// SYN proxy bits ([`crate::syn_proxy::PROXIED`], ...); 0 for a flow the
    /// proxy has nothing to do with.
    pub proxy: u32,
    /// The ISN the client got from the VIP: the SYN cookie of a proxied flow;
    /// for a flow the flood detector watches, the backend's (from its SYN-ACK).
    pub server_isn: u32,
    /// A proxied flow's sequence offset, once the backend answered: backend
    /// ISN - cookie. Added to the client's acks, subtracted from the
    /// backend's sequence numbers.
    pub seq_delta: u32,
    /// A proxied flow's client window (unscaled), for the ACK that completes
    /// the backend's handshake on the client's behalf.
    pub client_window: u16,
    /// A proxied flow's client MSS, as its cookie encodes it (host order).
    pub client_mss: u16,
    /// The SNAT address the flow's packets to its backend come from (wire
    /// order, as in [`NatKey::snat_addr`]): one of
    /// [`DataplaneConfig::snat_addrs`] (IPv6: `snat6_addrs`).
    pub snat_addr: A,
    /// The newest TCP timestamp (TSval, host order) of the client's segments
    /// since the backend closed first: the `ts_recent` of the backend's
    /// TIME_WAIT ([`crate::flow_state::CLIENT_TIMESTAMPS`] says it is set).
    pub client_tsval: u32,
    /// None for IPv4; to the `u64` alignment for IPv6.
    pub _pad: A::FlowPad,
}

pub type Flow = FlowOf<u32>;
pub type Flow6 = FlowOf<Ipv6Wire>;

impl<A: WireAddr> FlowOf<A> {
    /// Whether the flow owns a reverse-NAT entry: all but a `dsr` service's
    /// flows.
    #[inline(always)]
    pub const fn has_reply_path(&self) -> bool {
        self.forwarding != FORWARDING_DSR
    }

    /// Whether the flow holds one of its backend's SNAT (address, port)
    /// pairs: a full-NAT flow.
    #[inline(always)]
    pub const fn holds_snat_pair(&self) -> bool {
        self.forwarding == FORWARDING_FULL_NAT
    }

    /// How the flow's backend (`backend`) replies arrive: the reverse-NAT
    /// key the flow owns.
    #[inline(always)]
    pub const fn nat_key(&self, backend: &BackendOf<A>) -> NatKeyOf<A> {
        NatKeyOf::new(backend, self.snat_addr, self.snat_port)
    }
}

/// One side's TCP sequence state, host order, as [`crate::flow_state`]
/// tracks it to judge RSTs: conntrack's `td_end` and `td_maxack`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqState {
    /// The end (sequence number plus length, SYN and FIN) of the furthest
    /// segment this side sent: its `SND.NXT` as far as the LB knows.
    pub end: u32,
    /// The furthest acknowledgment this side sent: its `RCV.NXT` as it last
    /// announced it.
    pub ack: u32,
}

/// A backend's reply as it arrives: backend addr:port -> SNAT addr:snat_port.
/// TCP and UDP flows share one key space, so a (backend, SNAT address,
/// port) is held by one flow of either protocol: both take pairs from one
/// budget, and each reply path translates only for an owner of its own
/// protocol ([`FlowKey::proto`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKeyOf<A> {
    pub backend_addr: A,
    /// Which SNAT address the reply goes to (wire order).
    pub snat_addr: A,
    pub backend_port: u16,
    pub snat_port: u16,
}

pub type NatKey = NatKeyOf<u32>;
pub type NatKey6 = NatKeyOf<Ipv6Wire>;

impl<A: WireAddr> NatKeyOf<A> {
    /// How `backend`'s replies to SNAT address `snat_addr` and port
    /// `snat_port` (wire order, as [`Flow`] holds them) arrive.
    #[inline(always)]
    pub const fn new(backend: &BackendOf<A>, snat_addr: A, snat_port: u16) -> Self {
        Self {
            backend_addr: backend.addr,
            snat_addr,
            backend_port: backend.port,
            snat_port,
        }
    }

    /// The key a backend's packet from `backend_addr`:`backend_port` to
    /// `snat_addr`:`snat_port` (wire order) carries.
    #[inline(always)]
    pub const fn from_wire(backend_addr: A, backend_port: u16, snat_addr: A, snat_port: u16) -> Self {
        Self {
            backend_addr,
            snat_addr,
            backend_port,
            snat_port,
        }
    }
}

impl NatKey {
    /// The SNAT address the reply goes to.
    pub const fn snat_ip(&self) -> Ipv4Addr {
        ip(self.snat_addr)
    }

    /// The backend that sends the reply.
    pub const fn backend(&self) -> SocketAddrV4 {
        socket(self.backend_addr, self.backend_port)
    }
}

impl NatKey6 {
    /// The SNAT address the reply goes to.
    pub const fn snat_ip(&self) -> Ipv6Addr {
        ip6(self.snat_addr)
    }

    /// The backend that sends the reply.
    pub const fn backend(&self) -> SocketAddrV6 {
        socket6(self.backend_addr, self.backend_port)
    }
}

/// A [`REVERSE_NAT`] ([`NatOwner`]) or [`REVERSE_NAT6`] ([`NatOwner6`])
/// value: the flow that owns the (backend, SNAT port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatOwnerOf<A> {
    pub flow: FlowKeyOf<A>,
    /// When the port was claimed (`bpf_ktime_get_ns`, even), or
    /// [`NatOwner::TAKING_OVER`] set while a new connection takes it over and
    /// `flow` is being rewritten. The data plane changes an existing entry
    /// only by a compare-and-swap on this word, so of two CPUs taking one
    /// port over only one wins; claims are timestamps, so an entry removed
    /// and inserted again never repeats the value another CPU read.
    pub claim: u64,
}

pub type NatOwner = NatOwnerOf<u32>;
pub type NatOwner6 = NatOwnerOf<Ipv6Wire>;

impl<A: WireAddr> NatOwnerOf<A> {
    /// Bit of [`NatOwner::claim`]: a takeover is rewriting `flow`.
    pub const TAKING_OVER: u64 = 1;

    /// `flow` owns the port from `now_ns` on.
    #[inline(always)]
    pub const fn new(flow: FlowKeyOf<A>, now_ns: u64) -> Self {
        Self {
            flow,
            claim: now_ns & !Self::TAKING_OVER,
        }
    }
}

/// Slots of [`NEXT_HOPS`] per CPU; a power of two. A destination has one
/// slot ([`next_hop_slot`]), so two destinations that share it take turns.
pub const NEXT_HOP_SLOTS: u32 = 1024;
const _: () = assert!(NEXT_HOP_SLOTS.is_power_of_two() && NEXT_HOP_SLOTS >= 2);

/// `x`'s slot among `slots` (a power of two, at least 2): the top bits of
/// its Fibonacci hash, which every bit of `x` mixes into, so nearby values
/// spread.
#[inline(always)]
pub const fn fibonacci_slot(x: u32, slots: u32) -> u32 {
    x.wrapping_mul(0x9e37_79b9) >> (32 - slots.trailing_zeros())
}

/// The [`NEXT_HOPS`] (or [`NEXT_HOPS6`]) slot of destination `addr`: the
/// [`fibonacci_slot`] of the address, or of its words XORed together (IPv6).
#[inline(always)]
pub fn next_hop_slot<A: WireAddr>(addr: &A) -> u32 {
    // For one word (IPv4) the fold is the word itself.
    fibonacci_slot(addr.fold(0, |h, w| h ^ w), NEXT_HOP_SLOTS)
}

/// How many kernel ticks (jiffies) a cached next hop is used before
/// `bpf_fib_lookup` is asked again: a route, neighbour or MTU change takes
/// effect within this, 12 ms to [`NEXT_HOP_TTL_MAX_NS`] as HZ is 1000 to
/// 100 (48 ms at Debian's 250). Ticks, not nanoseconds: the verifier turns
/// `bpf_jiffies64` into one load, where a clock read is a helper call on
/// every forwarded packet. Fewer ticks would cost more lookups than the
/// clock saves (measured: README, "The next hop's clock").
pub const NEXT_HOP_TTL_JIFFIES: u64 = 12;

/// The longest [`NEXT_HOP_TTL_JIFFIES`] lasts: at HZ 100, the lowest a
/// Linux kernel is built with.
pub const NEXT_HOP_TTL_MAX_NS: u64 = 120_000_000;

/// One cached `bpf_fib_lookup` success, entry of [`NEXT_HOPS`]. It answers
/// a later packet with the same destination, source, TOS and ingress
/// interface, no longer than `fits` (a bigger one may need ICMP
/// fragmentation needed, which only the lookup tells), within
/// [`NEXT_HOP_TTL_JIFFIES`] of `looked_up_jiffies`. Addresses wire order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// `bpf_jiffies64` of the lookup.
    pub looked_up_jiffies: u64,
    pub dst_addr: u32,
    pub src_addr: u32,
    /// The ingress interface the lookup was made for (routing rules may
    /// depend on it).
    pub ingress: u32,
    pub ifindex: u32,
    /// The gateway, or the destination itself when on-link.
    pub next_hop: u32,
    /// The largest IP total length (host order) the lookup let through;
    /// 0 in an empty slot, so that it answers nothing.
    pub fits: u16,
    pub tos: u8,
    pub _pad: u8,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub _pad2: [u8; 4],
}

/// [`NextHop`] for an IPv6 destination, entry of [`NEXT_HOPS6`]: it
/// answers a later packet with the same destination, source, traffic class
/// and flow label (`flowinfo`, as the lookup took them) and ingress
/// interface, no longer than `fits`, within [`NEXT_HOP_TTL_JIFFIES`] of
/// `looked_up_jiffies`. Addresses wire order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop6 {
    /// `bpf_jiffies64` of the lookup.
    pub looked_up_jiffies: u64,
    pub dst_addr: Ipv6Wire,
    pub src_addr: Ipv6Wire,
    pub ingress: u32,
    pub ifindex: u32,
    pub flowinfo: u32,
    /// The largest IPv6 length (payload plus header, host order) the lookup
    /// let through; 0 in an empty slot, so that it answers nothing.
    pub fits: u16,
    /// 1 when the destination is on-link (the lookup's next hop is the
    /// destination itself): what a `dsr` packet needs.
    pub on_link: u8,
    pub _pad: u8,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub _pad2: [u8; 4],
}

/// Global settings, entry 0 of [`CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Source addresses of NATed packets towards backends (wire order): the
    /// first `snat_addr_count` are in use. A backend's port budget is their
    /// number times the port range's.
    pub snat_addrs: [u32; MAX_SNAT_ADDRESSES],
    /// 1 to [`MAX_SNAT_ADDRESSES`].
    pub snat_addr_count: u32,
    /// Inclusive SNAT port range, host byte order; the same for every
    /// address.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// Non-zero once userspace has written a complete configuration; until
    /// then every packet passes untouched.
    pub ready: u32,
    /// Moves forward whenever userspace removed reverse-NAT entries (the
    /// only way one goes, besides with its flow) or rewrote this
    /// configuration. A pinned flow whose [`Flow::nat_epoch`] differs makes
    /// sure its SNAT port is still its own before it uses it again.
    pub nat_epoch: u32,
    /// Non-zero once a `gateway` service ([`FORWARDING_GATEWAY`]) was
    /// written to these maps, and from then on (its flows outlive a reload
    /// that changes its mode): until then no frame to a non-SNAT address
    /// can be a gateway flow's reply, and the program skips that lookup.
    pub gateway_seen: u32,
    /// The VIP addresses (those in [`VIP_ADDRESSES`]), as a bitmap of their
    /// [`vip_filter_bit`]s: a TCP frame to an address whose bit is clear is
    /// no VIP's, and passes without a FLOWS or SERVICES lookup. Userspace
    /// sets an address's bit before its first service is written and
    /// clears it after its last one went, unless another VIP address shares
    /// it.
    pub vip_filter: [u32; VIP_FILTER_WORDS],
    /// IPv6 source addresses of NATed packets towards IPv6 backends (wire
    /// order): the first `snat6_addr_count` are in use, with the same port
    /// range and `nat_epoch` as IPv4's.
    pub snat6_addrs: [Ipv6Wire; MAX_SNAT_ADDRESSES],
    /// 0 (no IPv6 SNAT address, so no IPv6 full NAT) to
    /// [`MAX_SNAT_ADDRESSES`].
    pub snat6_addr_count: u32,
    /// The IPv6 VIP addresses (those in [`VIP_ADDRESSES6`]), as
    /// `vip_filter` holds IPv4's ([`vip_filter_bit_of`]).
    pub vip6_filter: [u32; VIP_FILTER_WORDS],
}

/// Words of [`DataplaneConfig::vip_filter`]: 256 bits, so a few VIP
/// addresses leave almost every other address's bit clear.
pub const VIP_FILTER_WORDS: usize = 8;

/// An address's (wire order) bit in [`DataplaneConfig::vip_filter`]: its
/// [`fibonacci_slot`] among the filter's bits.
#[inline(always)]
pub const fn vip_filter_bit(addr: u32) -> usize {
    fibonacci_slot(addr, (VIP_FILTER_WORDS * 32) as u32) as usize
}

/// An address's bit in its family's VIP filter: [`vip_filter_bit`] of the
/// address (IPv4), or of its words folded into one (IPv6).
#[inline(always)]
pub fn vip_filter_bit_of<A: WireAddr>(addr: &A) -> usize {
    // For one word (IPv4) the fold is the word itself.
    vip_filter_bit(addr.fold(0, |h, w| h.rotate_left(7).wrapping_mul(0x85eb_ca6b) ^ w))
}

impl DataplaneConfig {
    /// A complete (ready) configuration: NAT towards backends from
    /// `snat_addrs` (up to [`MAX_SNAT_ADDRESSES`]), source ports in
    /// `snat_ports`. The list may be empty only for a host whose services
    /// are all IPv6 ([`DataplaneConfig::with_snat6`]): config validation
    /// wants a SNAT address of each family a VIP has; without one, an IPv4
    /// connection request finds no SNAT pair and is refused.
    pub fn new(snat_addrs: &[Ipv4Addr], snat_ports: RangeInclusive<u16>) -> Self {
        assert!(
            snat_addrs.len() <= MAX_SNAT_ADDRESSES,
            "at most {MAX_SNAT_ADDRESSES} SNAT addresses, not {}",
            snat_addrs.len()
        );
        let mut addrs = [0; MAX_SNAT_ADDRESSES];
        for (slot, addr) in addrs.iter_mut().zip(snat_addrs) {
            *slot = wire_ip(*addr);
        }
        Self {
            snat_addrs: addrs,
            snat_addr_count: snat_addrs.len() as u32,
            snat_port_min: *snat_ports.start(),
            snat_port_max: *snat_ports.end(),
            ready: 1,
            nat_epoch: 0,
            gateway_seen: 0,
            vip_filter: [0; VIP_FILTER_WORDS],
            snat6_addrs: [[0; 4]; MAX_SNAT_ADDRESSES],
            snat6_addr_count: 0,
            vip6_filter: [0; VIP_FILTER_WORDS],
        }
    }

    /// This configuration with the IPv6 SNAT addresses `snat6_addrs` (up to
    /// [`MAX_SNAT_ADDRESSES`]; none: no IPv6 full NAT).
    pub fn with_snat6(self, snat6_addrs: &[Ipv6Addr]) -> Self {
        assert!(
            snat6_addrs.len() <= MAX_SNAT_ADDRESSES,
            "at most {MAX_SNAT_ADDRESSES} IPv6 SNAT addresses, not {}",
            snat6_addrs.len()
        );
        let mut addrs = [[0; 4]; MAX_SNAT_ADDRESSES];
        for (slot, addr) in addrs.iter_mut().zip(snat6_addrs) {
            *slot = wire_ip6(*addr);
        }
        Self {
            snat6_addrs: addrs,
            snat6_addr_count: snat6_addrs.len() as u32,
            ..self
        }
    }

    /// Whether `addr` (wire order, either family) may be a VIP's address:
    /// its bit in its family's filter ([`DataplaneConfig::vip_filter`],
    /// [`DataplaneConfig::vip6_filter`]) is set.
    #[inline(always)]
    pub fn may_be_vip<A: WireAddr>(&self, addr: A) -> bool {
        let bit = vip_filter_bit_of(&addr);
        // The mask only keeps the index in bounds for the verifier.
        A::vip_filter(self)[(bit / 32) & (VIP_FILTER_WORDS - 1)] & (1 << (bit % 32)) != 0
    }

    /// This configuration with the filter of exactly `vips`.
    pub fn with_vip_filter(self, vips: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        Self {
            vip_filter: filter(vips.into_iter().map(wire_ip)),
            ..self
        }
    }

    /// This configuration with the IPv6 filter of exactly `vips`.
    pub fn with_vip6_filter(self, vips: impl IntoIterator<Item = Ipv6Addr>) -> Self {
        Self {
            vip6_filter: filter(vips.into_iter().map(wire_ip6)),
            ..self
        }
    }

    /// Whether `addr` (wire order, either family) is one of its family's
    /// SNAT addresses.
    #[inline(always)]
    pub fn is_snat_addr<A: WireAddr>(&self, addr: A) -> bool {
        let (addrs, count) = A::snat_addrs(self);
        let mut i = 0;
        while i < MAX_SNAT_ADDRESSES {
            if i as u32 >= count {
                return false;
            }
            if addrs[i] == addr {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Whether a packet to `addr`:`port` (wire order) is for the SNAT range:
    /// a backend's reply.
    #[inline(always)]
    pub fn is_snat_port<A: WireAddr>(&self, addr: A, port: u16) -> bool {
        self.in_snat_ports(port) && self.is_snat_addr(addr)
    }

    /// Whether `port` (wire order) is in the SNAT port range.
    #[inline(always)]
    pub fn in_snat_ports(&self, port: u16) -> bool {
        let port = u16::from_be(port);
        port >= self.snat_port_min && port <= self.snat_port_max
    }

    /// SNAT (address, port) candidate `attempt` for a flow hashing to
    /// `hash`, both wire order (see [`crate::snat_port::candidate`]).
    #[inline(always)]
    pub fn snat_candidate(&self, hash: u32, attempt: u32) -> (u32, u16) {
        self.snat_candidate_of(hash, attempt)
    }

    /// [`DataplaneConfig::snat_candidate`] among family `A`'s SNAT
    /// addresses. Without one it names the unspecified address, which no
    /// caller uses: [`DataplaneConfig::has_snat`] says whether there is one.
    #[inline(always)]
    pub fn snat_candidate_of<A: WireAddr>(&self, hash: u32, attempt: u32) -> (A, u16) {
        let (addrs, count) = A::snat_addrs(self);
        let (index, port) = crate::snat_port::candidate(hash, attempt, count, self.snat_port_min, self.snat_port_max);
        // The mask only keeps the index in bounds for the verifier:
        // `candidate` returns one below `count`.
        (addrs[index as usize & (MAX_SNAT_ADDRESSES - 1)], port.to_be())
    }

    /// Whether family `A` has a SNAT address.
    #[inline(always)]
    pub fn has_snat<A: WireAddr>(&self) -> bool {
        A::snat_addrs(self).1 != 0
    }

    /// The SNAT addresses in use.
    pub fn snat_ips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let count = (self.snat_addr_count as usize).min(MAX_SNAT_ADDRESSES);
        self.snat_addrs[..count].iter().map(|&a| ip(a))
    }

    /// The IPv6 SNAT addresses in use.
    pub fn snat6_ips(&self) -> impl Iterator<Item = Ipv6Addr> + '_ {
        let count = (self.snat6_addr_count as usize).min(MAX_SNAT_ADDRESSES);
        self.snat6_addrs[..count].iter().map(|&a| ip6(a))
    }

    /// SNAT (address, port) pairs per backend: the most flows one backend
    /// can hold at once.
    pub const fn snat_capacity(&self) -> u64 {
        self.snat_addr_count as u64 * self.snat_ports()
    }

    /// [`DataplaneConfig::snat_capacity`] for an IPv6 backend.
    pub const fn snat6_capacity(&self) -> u64 {
        self.snat6_addr_count as u64 * self.snat_ports()
    }

    const fn snat_ports(&self) -> u64 {
        self.snat_port_max as u64 - self.snat_port_min as u64 + 1
    }
}

/// The VIP filter words of exactly the addresses `vips`.
fn filter<A: WireAddr>(vips: impl Iterator<Item = A>) -> [u32; VIP_FILTER_WORDS] {
    let mut words = [0; VIP_FILTER_WORDS];
    for vip in vips {
        let bit = vip_filter_bit_of(&vip);
        words[bit / 32] |= 1 << (bit % 32);
    }
    words
}

/// The SYN proxy's flood detector for one service, entry `Service::id` of
/// [`SYN_FLOOD`]: connection requests and completed handshakes in the current
/// one-second window, and until when the proxy stays on (auto mode). Every
/// CPU writes it, the counters with atomic adds; userspace reads it, and
/// clears it for a new service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynFlood {
    /// Start of the current window (`bpf_ktime_get_ns`).
    pub window_start_ns: u64,
    /// SYNs in the window that opened a flow to a backend (proxy off) or were
    /// answered with a cookie (proxy on).
    pub requests: u64,
    /// Handshakes clients completed in the window: their ACK of the
    /// backend's SYN-ACK, or of a cookie.
    pub completed: u64,
    /// The proxy answers SYNs until then (auto mode; 0: not yet engaged).
    pub active_until_ns: u64,
}

/// A [`TAKEN_PAIRS6`] entry: the SNAT pair (wire order) an IPv6 connection
/// request claimed, free or taken over from a flow that has ended, in one
/// XDP program (`bg_lb_tcp6_take_over`, which has the stack for the
/// takeover), for the next (`bg_lb_tcp6_taken`, which has the stack for the
/// new flow) on the same CPU, in the same run.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TakenPair6 {
    pub snat_addr: Ipv6Wire,
    pub snat_port: u16,
    pub _pad: [u8; 6],
    /// The claim (`bpf_ktime_get_ns`): the new flow's `created_ns`.
    pub claim: u64,
}

/// A client segment of a proxied flow held until the backend answers, then
/// sent in place of the ACK that completes the backend's handshake.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldSegment {
    /// Its sequence number (host order).
    pub seq: u32,
    /// Payload bytes.
    pub len: u16,
    /// Its TCP flags (ACK, PSH, perhaps FIN).
    pub flags: u8,
    pub _pad: u8,
    /// The payload, zero past `len` up to a multiple of 4 (its checksum sum
    /// is taken a word at a time).
    pub payload: [u8; crate::syn_proxy::HELD_PAYLOAD_MAX],
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
    /// Connection requests refused because every SNAT (address, port)
    /// candidate for the backend was taken (per backend only).
    pub snat_exhausted: u64,
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
        self.snat_exhausted += other.snat_exhausted;
    }
}

const fn wire_ip(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

const fn wire_port(port: u16) -> u16 {
    port.to_be()
}

const fn ip(wire_ip: u32) -> Ipv4Addr {
    let [a, b, c, d] = wire_ip.to_ne_bytes();
    Ipv4Addr::new(a, b, c, d)
}

const fn socket(wire_ip: u32, wire_port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip(wire_ip), u16::from_be(wire_port))
}

/// An IPv6 address as [`Ipv6Wire`].
pub const fn wire_ip6(ip: Ipv6Addr) -> Ipv6Wire {
    let o = ip.octets();
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The IPv6 address of a wire-order one.
pub const fn ip6(wire: Ipv6Wire) -> Ipv6Addr {
    let [a, b, c, d] = wire;
    let (a, b, c, d) = (a.to_ne_bytes(), b.to_ne_bytes(), c.to_ne_bytes(), d.to_ne_bytes());
    Ipv6Addr::new(
        u16::from_be_bytes([a[0], a[1]]),
        u16::from_be_bytes([a[2], a[3]]),
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
        u16::from_be_bytes([c[0], c[1]]),
        u16::from_be_bytes([c[2], c[3]]),
        u16::from_be_bytes([d[0], d[1]]),
        u16::from_be_bytes([d[2], d[3]]),
    )
}

/// Flowinfo and scope id 0: the data plane keeps neither.
const fn socket6(wire_ip: Ipv6Wire, wire_port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(ip6(wire_ip), u16::from_be(wire_port), 0, 0)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // For every family at once: `WireAddr` is sealed (`u32`, `Ipv6Wire`), and
    // the size test shows neither family's instantiation has implicit
    // padding. Generic, so the daemon's family-generic map code needs no
    // `Pod` bounds of its own.
    unsafe impl<A: WireAddr> aya::Pod for ServiceKeyOf<A> {}
    unsafe impl<A: WireAddr> aya::Pod for BackendOf<A> {}
    unsafe impl<A: WireAddr> aya::Pod for FlowKeyOf<A> {}
    unsafe impl<A: WireAddr> aya::Pod for FlowOf<A> {}
    unsafe impl<A: WireAddr> aya::Pod for NatKeyOf<A> {}
    unsafe impl<A: WireAddr> aya::Pod for NatOwnerOf<A> {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for SeqState {}
    unsafe impl aya::Pod for DataplaneConfig {}
    unsafe impl aya::Pod for TrafficStats {}
    unsafe impl aya::Pod for SynFlood {}
    unsafe impl aya::Pod for HeldSegment {}
    unsafe impl aya::Pod for TakenPair6 {}
    unsafe impl aya::Pod for NextHop6 {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn map_types_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 8);
        assert_eq!(size_of::<Service>(), 28);
        assert_eq!(size_of::<Backend>(), 16);
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(size_of::<SeqState>(), 8);
        assert_eq!(size_of::<Flow>(), 80);
        assert_eq!(size_of::<NatKey>(), 12);
        assert_eq!(size_of::<NatOwner>(), 24);
        assert_eq!(
            size_of::<DataplaneConfig>(),
            20 + 4 * MAX_SNAT_ADDRESSES + 4 * VIP_FILTER_WORDS + 16 * MAX_SNAT_ADDRESSES + 4 + 4 * VIP_FILTER_WORDS
        );
        // IPv6: the same fields, 16-byte addresses, explicit tail padding.
        assert_eq!(size_of::<ServiceKey6>(), 20);
        assert_eq!(size_of::<Backend6>(), 28);
        assert_eq!(size_of::<FlowKey6>(), 40);
        assert_eq!(size_of::<Flow6>(), 96);
        assert_eq!(size_of::<NatKey6>(), 36);
        assert_eq!(size_of::<NatOwner6>(), 48);
        assert_eq!(size_of::<NextHop>(), 48);
        assert_eq!(size_of::<NextHop6>(), 72);
        assert_eq!(size_of::<TrafficStats>(), 72);
        assert_eq!(size_of::<SynFlood>(), 32);
        assert_eq!(size_of::<HeldSegment>(), 8 + crate::syn_proxy::HELD_PAYLOAD_MAX);
        assert_eq!(size_of::<TakenPair6>(), 32);
    }

    #[test]
    fn the_vip_filter_lets_through_its_vips_and_few_other_addresses() {
        let vips = [Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(192, 0, 2, 7)];
        let cfg = DataplaneConfig::new(&[Ipv4Addr::new(10, 0, 0, 1)], 20000..=29999).with_vip_filter(vips);
        assert!(vips.iter().all(|&vip| cfg.may_be_vip(wire_ip(vip))));
        let others = (0..=255u8).map(|i| Ipv4Addr::new(10, 0, 1, i));
        let let_through = others.filter(|&a| cfg.may_be_vip(wire_ip(a))).count();
        assert!(let_through <= 8, "{let_through} of 256 other addresses pass the filter");
        let empty = cfg.with_vip_filter([]);
        assert!(vips.iter().all(|&vip| !empty.may_be_vip(wire_ip(vip))));
    }

    #[test]
    fn next_hop_slots_spread_nearby_destinations_and_fold_ipv6_words() {
        assert_eq!(fibonacci_slot(1, 1024), 0x278, "the top 10 bits of 0x9e37_79b9");
        let slots: std::collections::HashSet<u32> = (0..=255u8)
            .map(|i| next_hop_slot(&wire_ip(Ipv4Addr::new(10, 0, 1, i))))
            .collect();
        assert!(slots.iter().all(|&slot| slot < NEXT_HOP_SLOTS));
        assert!(slots.len() >= 200, "256 neighbours share {} slots", slots.len());
        let addr6 = [1, 2, 4, 8];
        assert_eq!(next_hop_slot(&addr6), next_hop_slot(&15u32), "IPv6 words XORed");
    }

    /// The bytes of `value` as the kernel sees them.
    fn bytes<T: Copy, const N: usize>(value: &T) -> [u8; N] {
        assert_eq!(size_of::<T>(), N);
        // SAFETY: `T` is one of the `#[repr(C)]` map types without implicit
        // padding (see above), so all `N` bytes are initialised.
        unsafe { core::mem::transmute_copy(value) }
    }

    const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 5), 40000);
    const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 80);
    const BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 10), 8080);

    #[test]
    fn keys_hold_addresses_and_ports_in_network_byte_order() {
        assert_eq!(bytes(&ServiceKey::new(VIP)), [10, 0, 0, 100, 0, 80, IPPROTO_TCP, 0]);
        let flow = FlowKey::from_client(CLIENT, VIP);
        assert_eq!(
            bytes(&flow),
            [192, 168, 1, 5, 10, 0, 0, 100, 0x9c, 0x40, 0, 80, IPPROTO_TCP, 0, 0, 0]
        );
        let backend = Backend::new(7, 3, BACKEND, POOL_GREEN, true);
        assert_eq!(
            bytes(&backend),
            [
                10,
                0,
                0,
                10,
                0x1f,
                0x90,
                POOL_GREEN,
                BACKEND_RESET_FLOWS,
                7,
                0,
                0,
                0,
                3,
                0,
                0,
                0
            ]
        );
        let snat_port = 20000u16.to_be();
        let snat_addr = u32::from_ne_bytes([10, 0, 0, 2]);
        assert_eq!(
            bytes(&NatKey::new(&backend, snat_addr, snat_port)),
            [10, 0, 0, 10, 10, 0, 0, 2, 0x1f, 0x90, 0x4e, 0x20]
        );
        assert_eq!(
            bytes(&ServiceKey::with_proto(VIP, IPPROTO_UDP)),
            [10, 0, 0, 100, 0, 80, IPPROTO_UDP, 0]
        );
    }

    #[test]
    fn accessors_read_back_what_constructors_wrote() {
        assert_eq!(ServiceKey::new(VIP).vip(), VIP);
        assert_eq!(FlowKey::from_client(CLIENT, VIP).client(), CLIENT);
        assert_eq!(Backend::new(0, 1, BACKEND, POOL_BLUE, false).addr(), BACKEND);
        assert!(Backend::default().is_free() && !Backend::new(0, 1, BACKEND, POOL_BLUE, false).is_free());
    }

    #[test]
    fn config_holds_the_snat_addresses_on_the_wire_and_ports_in_host_order() {
        let addrs = [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)];
        let cfg = DataplaneConfig::new(&addrs, 20000..=29999);
        assert_eq!(cfg.snat_addrs[0].to_ne_bytes(), [10, 0, 0, 1]);
        assert_eq!(cfg.snat_addrs[1].to_ne_bytes(), [10, 0, 0, 2]);
        assert_eq!(cfg.snat_addrs[2], 0);
        assert_eq!(
            (cfg.snat_addr_count, cfg.snat_port_min, cfg.snat_port_max, cfg.ready),
            (2, 20000, 29999, 1)
        );
        assert_eq!(cfg.snat_ips().collect::<Vec<_>>(), addrs);
        assert_eq!(cfg.snat_capacity(), 20_000);
    }

    #[test]
    fn only_configured_snat_addresses_inside_the_port_range_are_snat_ports() {
        let cfg = DataplaneConfig::new(&[Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)], 20000..=20003);
        let wire = |a: [u8; 4]| u32::from_ne_bytes(a);
        assert!(cfg.is_snat_port(wire([10, 0, 0, 1]), 20000u16.to_be()));
        assert!(cfg.is_snat_port(wire([10, 0, 0, 2]), 20003u16.to_be()));
        assert!(!cfg.is_snat_port(wire([10, 0, 0, 2]), 20004u16.to_be()));
        assert!(!cfg.is_snat_port(wire([10, 0, 0, 3]), 20000u16.to_be()));
        // An unused slot (0.0.0.0) is no SNAT address.
        assert!(!cfg.is_snat_addr(0));
    }

    #[test]
    fn snat_candidates_name_configured_addresses_in_wire_order() {
        let addrs = [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)];
        let cfg = DataplaneConfig::new(&addrs, 20000..=20003);
        let pairs: std::collections::HashSet<_> = (0..8).map(|a| cfg.snat_candidate(12345, a)).collect();
        assert_eq!(pairs.len(), 8);
        for (addr, port) in pairs {
            assert!(cfg.is_snat_port(addr, port), "{addr:x}:{port}");
        }
    }

    const CLIENT6: SocketAddrV6 = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5), 40000, 0, 0);
    const VIP6: SocketAddrV6 = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100), 80, 0, 0);
    const BACKEND6: SocketAddrV6 = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x11), 8080, 0, 0);

    #[test]
    fn ipv6_keys_hold_the_address_octets_and_ports_in_network_byte_order() {
        let vip = VIP6.ip().octets();
        let key: [u8; 20] = bytes(&ServiceKey6::with_proto(VIP6, IPPROTO_UDP));
        assert_eq!(key[..16], vip);
        assert_eq!(key[16..], [0, 80, IPPROTO_UDP, 0]);
        let flow: [u8; 40] = bytes(&FlowKey6::from_client(CLIENT6, VIP6));
        assert_eq!(flow[..16], CLIENT6.ip().octets());
        assert_eq!(flow[16..32], vip);
        assert_eq!(flow[32..], [0x9c, 0x40, 0, 80, IPPROTO_TCP, 0, 0, 0]);
        let backend = Backend6::new(7, 3, BACKEND6, POOL_GREEN, false);
        let snat = wire_ip6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
        let nat: [u8; 36] = bytes(&NatKey6::new(&backend, snat, 20000u16.to_be()));
        assert_eq!(nat[..16], BACKEND6.ip().octets());
        assert_eq!(nat[16..32], Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).octets());
        assert_eq!(nat[32..], [0x1f, 0x90, 0x4e, 0x20]);
    }

    #[test]
    fn ipv6_accessors_read_back_what_constructors_wrote() {
        assert_eq!(ServiceKey6::new(VIP6).vip(), VIP6);
        let flow = FlowKey6::from_client(CLIENT6, VIP6);
        assert_eq!((flow.client(), flow.vip()), (CLIENT6, VIP6));
        let backend = Backend6::new(0, 1, BACKEND6, POOL_BLUE, false);
        assert_eq!(backend.addr(), BACKEND6);
        assert!(Backend6::default().is_free() && !backend.is_free());
        let nat = NatKey6::new(&backend, wire_ip6(*VIP6.ip()), 1u16.to_be());
        assert_eq!((nat.backend(), nat.snat_ip()), (BACKEND6, *VIP6.ip()));
    }

    #[test]
    fn ipv6_snat_addresses_and_vip_filter_are_their_own() {
        let v4 = [Ipv4Addr::new(10, 0, 0, 1)];
        let v6 = [
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
        ];
        let cfg = DataplaneConfig::new(&v4, 20000..=20003)
            .with_snat6(&v6)
            .with_vip6_filter([*VIP6.ip()]);
        assert_eq!(cfg.snat6_ips().collect::<Vec<_>>(), v6);
        assert_eq!(cfg.snat_ips().collect::<Vec<_>>(), v4);
        assert_eq!((cfg.snat_capacity(), cfg.snat6_capacity()), (4, 8));
        assert!(cfg.is_snat_port(wire_ip6(v6[1]), 20001u16.to_be()));
        assert!(!cfg.is_snat_port(wire_ip6(v6[1]), 20004u16.to_be()));
        assert!(!cfg.is_snat_addr([0u32; 4]), "an unused slot is no SNAT address");
        let pairs: std::collections::HashSet<_> = (0..8).map(|a| cfg.snat_candidate_of::<Ipv6Wire>(99, a)).collect();
        assert_eq!(pairs.len(), 8);
        assert!(pairs.iter().all(|&(addr, port)| cfg.is_snat_port(addr, port)));
        assert!(cfg.may_be_vip(wire_ip6(*VIP6.ip())));
        assert!(cfg.vip_filter == [0; VIP_FILTER_WORDS], "the IPv4 filter is untouched");
        let others = (0..=255u16).map(|i| wire_ip6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, i)));
        let let_through = others.filter(|&a| cfg.may_be_vip(a)).count();
        assert!(let_through <= 8, "{let_through} of 256 other addresses pass the filter");
        let v6_only = DataplaneConfig::new(&[], 20000..=20003).with_snat6(&v6);
        assert!(v6_only.has_snat::<Ipv6Wire>() && !v6_only.has_snat::<u32>());
    }

    #[test]
    fn wire_ipv6_addresses_convert_both_ways() {
        let addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 0xffff);
        assert_eq!(ip6(wire_ip6(addr)), addr);
        let words = wire_ip6(addr);
        assert_eq!(words[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
    }

    #[test]
    fn default_lut_size_is_prime() {
        let n = DEFAULT_LUT_SIZE;
        assert!((2..n).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d)));
    }
}
