//! The data plane without the daemon, for tests and the micro benchmark:
//! - [`PacketLab`]: the real XDP program fed crafted frames through
//!   BPF_PROG_TEST_RUN, in a network namespace where `bpf_fib_lookup`
//!   resolves every next hop, with one service programmed (a VIP; two blue
//!   and two green backends). The packet tests and the micro benchmark
//!   share it.
//! - [`AttachedLb`]: the program attached natively to a test namespace's
//!   interfaces, for the smoke tests' real connections.
//!
//! This is the one place the tests call bg-lb's data-plane API
//! (`Dataplane`, `lookup_table`): callers ask for a ratio, a
//! weight, a counter or a flow, and never write maps themselves (except
//! through [`crate::map_surgery`], to force what only an LRU or a race
//! would do).

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream},
    time::Duration,
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData, MapInfo, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp, XdpMode},
};
use bg_lb::{
    dataplane::{
        Dataplane, DataplaneOptions, FlowTimeouts,
        forwarding::Forwarding,
        housekeeping::FlowCensus,
        l4::Protocol,
        listener::ListenerKey,
        lookup_table::{self, TableBackend, blue_share, build_region},
        services::{BackendSpec, ServiceSpec},
        sweep::SweepReport,
        syn_proxy::{SynProxy, SynProxyMode},
    },
    ratio::{Pool, Ratio},
};
use bg_lb_common::{
    counters::Counter,
    flow_hash::{flow_hash, table_slot},
    maps::{
        self as map_names, Backend, Backend6, DEFAULT_LUT_SIZE, DataplaneConfig, Flow, Flow6, FlowKey, FlowKey6,
        IPPROTO_TCP, IPPROTO_UDP, Ipv6Wire, MAX_BACKENDS, MAX_SERVICES, NO_BACKEND, NatKey, NatKey6, NatOwner6,
        NextHop6, POOL_SHARE_SCALE, Service, ServiceKey, ServiceKey6, TrafficStats, ip6, service_table_slots, wire_ip6,
    },
};

use crate::{
    cmd::{self, ifindex, ip},
    lookup_slots,
    map_surgery::{NatMaps, program_map},
    packets::{ACK, ACK_NUMBER, Numbers, SEQ, SYN, SYN_ACK, TcpView, numbered_tcp_frame, parse_checked, tcp_frame},
    topology::NetNs,
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The LB's interface (veth0) and its MAC.
pub const INTERFACE: &str = "veth0";
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The next hop towards the clients (192.168.0.0/16).
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
pub const SNAT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// A second SNAT address, for labs with [`PacketLabOptions::snat_addrs`].
pub const SNAT_2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 80);
pub const BLUE: [SocketAddrV4; 2] = [
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 10), 8080),
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 11), 8080),
];
pub const GREEN: [SocketAddrV4; 2] = [
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 20), 8080),
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 21), 8080),
];
/// The packet tests' SNAT port range.
pub const SNAT_PORTS: (u16, u16) = (20000, 29999);

/// The backend's initial sequence number in [`PacketLab::handshake`] (the
/// client's is [`SEQ`]).
pub const BACKEND_ISN: u32 = 7_000_000;

/// The timeouts the lab's sweeps judge by: the daemon's defaults.
const DAEMON_TIMEOUTS: FlowTimeouts = FlowTimeouts {
    established_idle: Duration::from_secs(3600),
    closing: Duration::from_secs(10),
    syn: Duration::from_secs(10),
};

/// Static neighbours get MAC 02:00:00:00:00:<last octet>, so callers can
/// predict the next hop's MAC.
pub fn mac_of(addr: Ipv4Addr) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, addr.octets()[3]]
}

/// A client behind the gateway.
pub fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 5), port)
}

pub fn is_blue(backend: SocketAddrV4) -> bool {
    BLUE.contains(&backend)
}

/// A frame from `client` to the VIP, as the gateway delivers it.
pub fn from_client(client: SocketAddrV4, flags: u8) -> Vec<u8> {
    tcp_frame(GATEWAY_MAC, LB_MAC, client, VIP, flags, b"")
}

/// The backend's answer (with `flags`) to a frame the LB sent it; an
/// answer to a SYN acknowledges it, as a backend's answer before its
/// SYN-ACK must (`flow_state::backend_may_send`).
pub fn reply_to(to_backend: &TcpView, flags: u8) -> Vec<u8> {
    let ack = if to_backend.flags_syn {
        to_backend.seq.wrapping_add(1)
    } else {
        ACK_NUMBER
    };
    numbered_tcp_frame(
        mac_of(*to_backend.dst.ip()),
        LB_MAC,
        to_backend.dst,
        to_backend.src,
        flags,
        Numbers { seq: SEQ, ack },
        b"",
    )
}

/// Runs `prog` once on `frame`: (verdict, output frame).
pub fn test_run(prog: &Xdp, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 256];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

/// Sizes and settings of a [`PacketLab`].
#[derive(Clone, Debug)]
pub struct PacketLabOptions {
    pub max_flows: u32,
    /// [`SNAT`] unless told otherwise.
    pub snat_addrs: Vec<Ipv4Addr>,
    pub snat_ports: (u16, u16),
    /// Share of new flows for blue, in percent.
    pub blue_percent: u32,
    pub syn_proxy: SynProxy,
    pub forwarding: Forwarding,
}

impl PacketLabOptions {
    /// The packet tests' lab: a small flow table, [`SNAT_PORTS`] and the
    /// SYN proxy off (many tests open flows nobody answers: a flood to
    /// auto mode).
    pub fn with_ratio(blue_percent: u32) -> Self {
        PacketLabOptions {
            max_flows: 4096,
            snat_addrs: vec![SNAT],
            snat_ports: SNAT_PORTS,
            blue_percent,
            syn_proxy: SynProxy {
                mode: SynProxyMode::Off,
                ..SynProxy::default()
            },
            forwarding: Default::default(),
        }
    }
}

pub struct PacketLab {
    dataplane: Dataplane,
    spec: ServiceSpec,
    snat_addrs: Vec<Ipv4Addr>,
}

impl PacketLab {
    /// Sets up the calling thread's namespace (a fresh one: see
    /// [`crate::netns::in_fresh_netns`]) and loads the program, ready, with
    /// the service: [`BLUE`] and [`GREEN`] behind [`VIP`].
    pub fn new(o: &PacketLabOptions) -> Self {
        prepare_namespace();
        let opts = dataplane_options(o.max_flows);
        let mut dataplane = Dataplane::load(&opts).expect("load the XDP program");
        dataplane.add_tx_port(ifindex(INTERFACE)).expect("TX_PORTS");
        dataplane
            .set_config(&DataplaneConfig::new(&o.snat_addrs, o.snat_ports.0..=o.snat_ports.1))
            .expect("CONFIG");
        let backends = BLUE
            .iter()
            .map(|&addr| (addr, Pool::Blue))
            .chain(GREEN.iter().map(|&addr| (addr, Pool::Green)));
        let mut lab = Self::with_service(dataplane, o.blue_percent, backends);
        lab.snat_addrs.clone_from(&o.snat_addrs);
        lab.spec.forwarding = o.forwarding;
        lab.set_syn_proxy(o.syn_proxy);
        lab
    }

    /// A data plane with one service of `n` backends, half blue and half
    /// green, at 50:50, attached nowhere and not marked ready: for timing
    /// ratio changes, which touch only userspace and the maps.
    pub fn with_backends(n: usize) -> Self {
        assert!(n as u32 <= MAX_BACKENDS);
        let dataplane = Dataplane::load(&dataplane_options(4096)).expect("load the XDP program");
        let backends = (0..n).map(|i| {
            let addr = SocketAddrV4::new(Ipv4Addr::new(10, 1, (i / 250) as u8, 1 + (i % 250) as u8), 8080);
            (addr, if i < n / 2 { Pool::Blue } else { Pool::Green })
        });
        Self::with_service(dataplane, 50, backends)
    }

    fn with_service(
        mut dataplane: Dataplane,
        blue_percent: u32,
        backends: impl Iterator<Item = (SocketAddrV4, Pool)>,
    ) -> Self {
        let spec = service_spec(VIP, blue_percent, backends);
        dataplane.apply(&spec).expect("program the service");
        PacketLab {
            dataplane,
            spec,
            snat_addrs: Vec::new(),
        }
    }

    /// The service's backends' addresses, in its spec's order.
    pub fn backend_addrs(&self) -> Vec<SocketAddrV4> {
        self.spec.backends.iter().map(|b| v4(b.addr)).collect()
    }

    /// The SNAT addresses the lab's data plane was configured with.
    pub fn snat_addrs(&self) -> &[Ipv4Addr] {
        &self.snat_addrs
    }

    /// The loaded `bg_lb` XDP program.
    pub fn program(&self) -> &Xdp {
        self.dataplane.xdp().expect("bg_lb program")
    }

    /// Runs the program once on `frame`: (verdict, output frame).
    pub fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        test_run(self.program(), frame)
    }

    /// Runs the program once on `frame`, writing the frame it returns into
    /// `out` (which must have room for it): (verdict, output length).
    /// [`PacketLab::run`], checking that the frame moved each of `counted`
    /// by exactly one.
    pub fn run_counting(&self, frame: &[u8], counted: &[Counter]) -> (u32, Vec<u8>) {
        let before: Vec<u64> = counted.iter().map(|&c| self.counter(c)).collect();
        let result = self.run(frame);
        for (&counter, before) in counted.iter().zip(before) {
            assert_eq!(self.counter(counter), before + 1, "{counter:?} counts the frame");
        }
        result
    }

    pub fn run_into(&self, frame: &[u8], out: &mut [u8]) -> (u32, usize) {
        let result = self
            .program()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(out),
                ..TestRunOptions::new()
            })
            .expect("BPF_PROG_TEST_RUN");
        (result.return_value, result.data_size_out as usize)
    }

    pub fn send_from_client(&self, client: SocketAddrV4, flags: u8) -> (u32, Vec<u8>) {
        self.run(&from_client(client, flags))
    }

    /// The client's SYN (sequence number [`SEQ`]), forwarded: an embryonic
    /// flow, whose backend will answer from [`BACKEND_ISN`].
    pub fn open(&self, client: SocketAddrV4) -> Connection {
        let (verdict, out) = self.send_from_client(client, SYN);
        assert_eq!(verdict, XDP_REDIRECT, "the SYN is forwarded");
        let nat = parse_checked(&out);
        Connection {
            client,
            backend: nat.dst,
            snat: nat.src,
            client_next: SEQ + 1,
            backend_next: BACKEND_ISN + 1,
        }
    }

    /// A complete handshake from `client` (SYN, the backend's SYN-ACK, the
    /// client's ACK), each packet forwarded; the connection is established.
    pub fn handshake(&self, client: SocketAddrV4) -> Connection {
        let connection = self.open(client);
        let syn_ack = connection.from_backend_at(SYN_ACK, BACKEND_ISN, SEQ + 1, b"");
        assert_eq!(self.run(&syn_ack).0, XDP_REDIRECT, "the SYN-ACK is forwarded");
        assert_eq!(
            self.run(&connection.from_client(ACK, b"")).0,
            XDP_REDIRECT,
            "the ACK is forwarded"
        );
        connection
    }

    /// The data plane's FLOWS, REVERSE_NAT and BACKENDS, to edit directly.
    pub fn nat_maps(&self) -> NatMaps {
        NatMaps::of_program(self.program())
    }

    /// Takes the service out of the data plane.
    pub fn remove_service(&mut self) {
        self.dataplane
            .remove(&listener(Protocol::Tcp))
            .expect("remove the service");
    }

    /// Programs the service again, after [`PacketLab::remove_service`].
    pub fn restore_service(&mut self) {
        self.dataplane.apply(&self.spec).expect("program the service");
    }

    /// One housekeeping sweep, as the daemon runs it every second (with its
    /// default timeouts, and every backend configured).
    pub fn sweep(&mut self) -> FlowCensus {
        self.sweep_with(&DAEMON_TIMEOUTS)
    }

    /// One housekeeping sweep with `timeouts`.
    pub fn sweep_with(&mut self, timeouts: &FlowTimeouts) -> FlowCensus {
        let backends: HashSet<SocketAddr> = self.spec.backends.iter().map(|b| b.addr).collect();
        let live = HashMap::from([(listener(Protocol::Tcp), backends)]);
        self.dataplane.housekeeping(timeouts, &live).expect("sweep")
    }

    /// One sweep of the tables as they are, nothing settled after it: what
    /// it found ([`SweepReport::ipv6_idle`]); `skip_ipv6` as the sweeper
    /// thread decides it.
    pub fn sweep_report(&self, skip_ipv6: bool) -> SweepReport {
        let maps = self.dataplane.sweep_maps().expect("the sweep's maps");
        maps.sweep(&DAEMON_TIMEOUTS, skip_ipv6, || true).expect("sweep")
    }

    /// Swaps in the table for `blue_percent`.
    pub fn set_ratio(&mut self, blue_percent: u32) {
        self.spec.ratio = Ratio::new(blue_percent).expect("valid ratio");
        self.dataplane.apply(&self.spec).expect("swap the table");
    }

    /// Programs a UDP service on the VIP's own address and port, beside the
    /// TCP service (which stays), with the same backends and settings but
    /// `blue_percent` to blue and flows idle after `udp_idle`. Returns its
    /// spec, for [`PacketLab::apply`].
    pub fn add_udp_service(&mut self, blue_percent: u32, udp_idle: Duration) -> ServiceSpec {
        let spec = ServiceSpec {
            protocol: Protocol::Udp,
            udp_idle,
            ratio: Ratio::new(blue_percent).expect("valid ratio"),
            ..self.spec.clone()
        };
        self.apply(&spec);
        spec
    }

    /// Programs `spec` (a service [`PacketLab::add_udp_service`] returned,
    /// changed).
    pub fn apply(&mut self, spec: &ServiceSpec) {
        self.dataplane.apply(spec).expect("program the service");
    }

    /// One housekeeping sweep with `timeouts`, with the UDP service of
    /// [`PacketLab::add_udp_service`] configured too.
    pub fn sweep_with_udp(&mut self, timeouts: &FlowTimeouts) -> FlowCensus {
        let backends: HashSet<SocketAddr> = self.spec.backends.iter().map(|b| b.addr).collect();
        let live = HashMap::from([
            (listener(Protocol::Tcp), backends.clone()),
            (listener(Protocol::Udp), backends),
        ]);
        self.dataplane.housekeeping(timeouts, &live).expect("sweep")
    }

    /// Programs a second service at `vip`, with the first one's backends
    /// and settings (its backends get ids of their own).
    pub fn add_service(&mut self, vip: SocketAddrV4) {
        let spec = ServiceSpec {
            vip: vip.into(),
            ..self.spec.clone()
        };
        self.dataplane.apply(&spec).expect("program the second service");
    }

    /// Switches the service to `forwarding`, as a reload would.
    pub fn set_forwarding(&mut self, forwarding: Forwarding) {
        self.spec.forwarding = forwarding;
        self.dataplane.apply(&self.spec).expect("apply the forwarding mode");
    }

    /// Applies the service's SYN proxy settings.
    pub fn set_syn_proxy(&mut self, syn_proxy: SynProxy) {
        self.spec.syn_proxy = syn_proxy;
        self.dataplane.apply(&self.spec).expect("apply the SYN proxy settings");
    }

    /// Whether the SYN proxy answers the service's SYNs now.
    pub fn syn_proxy_active(&self) -> bool {
        self.dataplane
            .syn_proxy_active(&listener(Protocol::Tcp))
            .expect("SYN_FLOOD")
    }

    /// Lets `change(addr, weight, reset_flows)` set each backend's weight (0
    /// takes no new flows) and whether its open flows are reset, then
    /// applies the service once.
    pub fn reweigh(&mut self, change: impl Fn(SocketAddrV4, &mut u32, &mut bool)) {
        for b in &mut self.spec.backends {
            change(v4(b.addr), &mut b.weight, &mut b.reset_flows);
        }
        self.dataplane.apply(&self.spec).expect("apply the weights");
    }

    /// Removes every backend but `keep` from the service.
    pub fn keep_only(&mut self, keep: SocketAddrV4) {
        self.spec.backends.retain(|b| b.addr == SocketAddr::V4(keep));
        self.dataplane.apply(&self.spec).expect("apply the backends");
    }

    /// Clears CONFIG, as before userspace has programmed the data plane.
    pub fn mark_not_ready(&mut self) {
        self.dataplane.set_config(&DataplaneConfig::default()).expect("CONFIG");
    }

    /// Deletes `addr`'s neighbour entry, so its next hop no longer resolves.
    pub fn remove_neighbour(&self, addr: Ipv4Addr) {
        ip(&format!("neigh del {addr} dev {INTERFACE}"));
    }

    /// Routes `to` through the gateway, as a backend behind a router.
    pub fn route_via_gateway(&self, to: Ipv4Addr) {
        ip(&format!("route add {to}/32 via {GATEWAY} dev {INTERFACE}"));
    }

    /// Makes the IPv6 address `to` reachable through [`GATEWAY6`] only.
    pub fn route_via_gateway6(&self, to: Ipv6Addr) {
        ip(&format!("-6 route add {to}/128 via {GATEWAY6} dev {INTERFACE}"));
    }

    /// Limits the path towards `to` (IPv4 or IPv6: on-link, or behind the
    /// family's gateway) to `mtu` bytes, as a narrower egress link would: a
    /// locked route MTU, which `bpf_fib_lookup` checks packets against.
    pub fn limit_path_mtu(&self, to: impl Into<IpAddr>, mtu: u16) {
        let to = to.into();
        let (family, on_link, gateway, prefix) = match to {
            IpAddr::V4(v4) => ("", v4.octets()[..3] == SNAT.octets()[..3], IpAddr::from(GATEWAY), 32),
            IpAddr::V6(v6) => ("-6 ", v6.segments()[..4] == SNAT6.segments()[..4], GATEWAY6.into(), 128),
        };
        let via = if on_link {
            String::new()
        } else {
            format!("via {gateway}")
        };
        ip(&format!(
            "{family}route add {to}/{prefix} {via} dev {INTERFACE} mtu lock {mtu}"
        ));
    }

    /// The backend `client`'s pinned flow goes to and its SNAT address and
    /// port.
    pub fn pinned_backend(&self, client: SocketAddrV4) -> Option<(SocketAddrV4, SocketAddrV4)> {
        let flow = self.flow(client)?;
        let backend = self
            .spec
            .backends
            .iter()
            .find(|b| self.dataplane.backend_id(&listener(Protocol::Tcp), &b.addr) == Some(flow.backend_id))?;
        let snat = Ipv4Addr::from(flow.snat_addr.to_ne_bytes());
        Some((v4(backend.addr), SocketAddrV4::new(snat, u16::from_be(flow.snat_port))))
    }

    /// The service's lookup-table inputs as the data plane holds them.
    pub fn table(&self) -> LookupTable {
        let mut service = Service {
            lut_size: DEFAULT_LUT_SIZE,
            ..Service::default()
        };
        self.spec.affinity.program(&mut service);
        let backends = self
            .spec
            .backends
            .iter()
            .map(|b| TableBackend {
                id: self
                    .dataplane
                    .backend_id(&listener(Protocol::Tcp), &b.addr)
                    .expect("installed backend"),
                addr: b.addr,
                pool: b.pool,
                weight: b.weight,
            })
            .collect();
        LookupTable { backends, service }
    }

    /// The service's SERVICES entry, read from the map.
    pub fn service_entry(&self) -> Service {
        let services: BpfHashMap<MapData, ServiceKey, Service> = program_map(self.program(), map_names::SERVICES)
            .try_into()
            .expect("SERVICES is a hash map");
        services.get(&ServiceKey::new(VIP), 0).expect("the service's entry")
    }

    /// Clears CONFIG's VIP filter behind the daemon's back, as a daemon
    /// stopped between listing a VIP and setting its bit left it.
    pub fn clear_vip_filter(&self) {
        let mut config: Array<MapData, DataplaneConfig> = program_map(self.program(), map_names::CONFIG)
            .try_into()
            .expect("CONFIG is an array");
        let cleared = config.get(&0, 0).expect("CONFIG").with_vip_filter([]);
        config.set(0, cleared, 0).expect("write CONFIG");
    }

    /// The tables packets read now (blue's, then green's), slot by slot
    /// through the map API (`BPF_MAP_LOOKUP_ELEM`), not through the
    /// daemon's mapping.
    pub fn table_in_map(&self) -> Vec<u32> {
        let (service, tables) = (self.service_entry(), self.lookup_tables());
        (0..2)
            .flat_map(|pool| lookup_slots::pool_table(&service, pool, false))
            .map(|slot| tables.get(&slot, 0).expect("a slot of the table"))
            .collect()
    }

    /// Writes `tables` (blue's, then green's) into each pool's spare buffer
    /// (which no packet reads) with one `BPF_MAP_UPDATE_ELEM` per slot, as
    /// bg-lb wrote tables before it mapped LOOKUP_TABLES: the old path, for
    /// the bench.
    pub fn write_spare_per_slot(&self, tables: &[u32]) {
        let (service, mut map) = (self.service_entry(), self.lookup_tables());
        let spare_slots = (0..2).flat_map(|pool| lookup_slots::pool_table(&service, pool, true));
        for (slot, &id) in spare_slots.zip(tables) {
            map.set(slot, id, 0).expect("write a slot");
        }
    }

    fn lookup_tables(&self) -> Array<MapData, u32> {
        program_map(self.program(), map_names::LOOKUP_TABLES)
            .try_into()
            .expect("LOOKUP_TABLES is an array")
    }

    /// The backend the current table picks for a new flow from `client`.
    pub fn table_pick(&self, client: SocketAddrV4) -> SocketAddrV4 {
        self.table().pick(self.spec.ratio, client)
    }

    /// A global counter, summed over CPUs.
    pub fn counter(&self, counter: Counter) -> u64 {
        counter_of(&self.dataplane, counter)
    }

    /// Every global counter that moved, summed over CPUs: one read of
    /// COUNTERS, for reports and failure messages.
    pub fn moved_counters(&self) -> Vec<(Counter, u64)> {
        let counters = self.dataplane.counters().expect("COUNTERS");
        counters.into_iter().filter(|&(_, n)| n > 0).collect()
    }

    /// The flow table's entry for `client`'s connection to the VIP.
    pub fn flow(&self, client: SocketAddrV4) -> Option<Flow> {
        let key = flow_key(client);
        self.dataplane
            .flows()
            .expect("FLOWS")
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, f)| f)
    }

    /// The flow table's entry for `key`: one lookup, for checks that run
    /// after every frame.
    pub fn flow_at(&self, key: &FlowKey) -> Option<Flow> {
        self.dataplane.flow(key).expect("FLOWS")
    }

    /// The client flow that owns SNAT port `snat_port` (host order) of
    /// [`SNAT`] towards `backend`, as REVERSE_NAT says.
    pub fn reverse_nat(&self, backend: SocketAddrV4, snat_port: u16) -> Option<FlowKey> {
        self.reverse_nat_on(backend, SocketAddrV4::new(SNAT, snat_port))
    }

    /// The client flow that owns SNAT address and port `snat` towards
    /// `backend`, as REVERSE_NAT says.
    pub fn reverse_nat_on(&self, backend: SocketAddrV4, snat: SocketAddrV4) -> Option<FlowKey> {
        let snat_addr = u32::from_ne_bytes(snat.ip().octets());
        let key = NatKey::new(&Backend::new(0, 0, backend, 0, false), snat_addr, snat.port().to_be());
        self.dataplane.reverse_nat(&key).expect("REVERSE_NAT")
    }

    /// Every entry of the flow table.
    pub fn flows(&self) -> Vec<(FlowKey, Flow)> {
        self.dataplane.flows().expect("FLOWS")
    }

    /// Every entry of the reverse-NAT table.
    pub fn reverse_nats(&self) -> Vec<(NatKey, FlowKey)> {
        self.dataplane.reverse_nats().expect("REVERSE_NAT")
    }

    /// The service's backends by the id their flows name, and by the ids
    /// the UDP service of [`PacketLab::add_udp_service`] gave them, if the
    /// lab has one.
    pub fn backends_by_id(&self) -> Vec<(u32, SocketAddrV4)> {
        let tcp = self.spec.backends.iter().map(|b| {
            (
                self.dataplane
                    .backend_id(&listener(Protocol::Tcp), &b.addr)
                    .expect("installed backend"),
                v4(b.addr),
            )
        });
        let udp_key = listener(Protocol::Udp);
        let udp = self
            .spec
            .backends
            .iter()
            .filter_map(|b| Some((self.dataplane.backend_id(&udp_key, &b.addr)?, v4(b.addr))));
        tcp.chain(udp).collect()
    }

    /// The traffic counted for `backend`.
    pub fn backend_stats(&self, backend: SocketAddrV4) -> TrafficStats {
        let id = self
            .dataplane
            .backend_id(&listener(Protocol::Tcp), &backend.into())
            .expect("installed backend");
        self.dataplane.backend_stats(id).expect("backend stats")
    }
}

/// A connection through the lab: its endpoints as the LB NATs them, and
/// each side's next sequence number.
#[derive(Clone, Copy, Debug)]
pub struct Connection {
    pub client: SocketAddrV4,
    pub backend: SocketAddrV4,
    /// The SNAT address and port the backend sees.
    pub snat: SocketAddrV4,
    pub client_next: u32,
    pub backend_next: u32,
}

impl Connection {
    /// A segment from the client at its next sequence number, acknowledging
    /// everything the backend sent.
    pub fn from_client(&self, flags: u8, payload: &[u8]) -> Vec<u8> {
        self.from_client_at(flags, self.client_next, self.backend_next, payload)
    }

    pub fn from_client_at(&self, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
        numbered_tcp_frame(
            GATEWAY_MAC,
            LB_MAC,
            self.client,
            VIP,
            flags,
            Numbers { seq, ack },
            payload,
        )
    }

    /// A segment from the backend at its next sequence number, acknowledging
    /// everything the client sent.
    pub fn from_backend(&self, flags: u8, payload: &[u8]) -> Vec<u8> {
        self.from_backend_at(flags, self.backend_next, self.client_next, payload)
    }

    pub fn from_backend_at(&self, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
        let mac = mac_of(*self.backend.ip());
        numbered_tcp_frame(
            mac,
            LB_MAC,
            self.backend,
            self.snat,
            flags,
            Numbers { seq, ack },
            payload,
        )
    }

    /// The connection's key in FLOWS.
    pub fn key(&self) -> FlowKey {
        flow_key(self.client)
    }
}

/// What the lookup tables are built from.
pub struct LookupTable {
    backends: Vec<TableBackend>,
    /// The service's size and affinity flag, as its SERVICES entry has them.
    service: Service,
}

impl LookupTable {
    /// Builds both pools' tables, blue's then green's (a pure computation;
    /// nothing is written).
    pub fn build(&self) -> Vec<u32> {
        let mut tables = self.build_pool(Pool::Blue);
        tables.extend(self.build_pool(Pool::Green));
        tables
    }

    /// Builds `pool`'s table alone.
    pub fn build_pool(&self, pool: Pool) -> Vec<u32> {
        lookup_table::build(&self.backends, pool, DEFAULT_LUT_SIZE)
    }

    /// The backend a new flow from `client` gets at `ratio`, as the data
    /// plane picks it.
    fn pick(&self, ratio: Ratio, client: SocketAddrV4) -> SocketAddrV4 {
        let service = Service {
            blue_share: blue_share(&self.backends, ratio),
            ..self.service
        };
        let key = flow_key(client);
        let slot = table_slot(&key, flow_hash(&key), &service).expect("a table of slots");
        let id = build_region(&self.backends, DEFAULT_LUT_SIZE)[slot as usize];
        let backend = self.backends.iter().find(|b| b.id == id);
        v4(backend.expect("a table slot names a backend").addr)
    }
}

/// The data plane attached in native mode to interfaces of a test
/// namespace, serving one service whose first two backends are blue and
/// the rest green (weight 100 each), dropped with its links.
pub struct AttachedLb {
    dataplane: Dataplane,
    spec: ServiceSpec,
}

impl AttachedLb {
    /// Loads the program in `ns`, attaches it to `interfaces`, and programs
    /// `vip` over `backends` at `blue_percent`, with SNAT to `snat`.
    pub fn start(
        ns: &NetNs,
        interfaces: &'static [&'static str],
        snat: Ipv4Addr,
        vip: SocketAddrV4,
        backends: Vec<SocketAddrV4>,
        blue_percent: u32,
    ) -> Self {
        ns.sysctl("net.ipv4.conf.all.forwarding=1");
        ns.run(move || {
            let opts = DataplaneOptions::default();
            let mut dataplane = Dataplane::load(&opts).expect("load");
            for iface in interfaces {
                dataplane
                    .attach(ifindex(iface), XdpMode::Driver)
                    .expect("attach XDP in native mode");
            }
            dataplane
                .set_config(&DataplaneConfig::new(&[snat], SNAT_PORTS.0..=SNAT_PORTS.1))
                .expect("CONFIG");
            // The fast path needs backends' MACs; a connect resolves them
            // (the daemon's health checks do the same).
            for &b in &backends {
                TcpStream::connect(b).unwrap_or_else(|e| panic!("warm up {b}: {e}"));
            }
            let pools = backends
                .iter()
                .enumerate()
                .map(|(i, &addr)| (addr, if i < 2 { Pool::Blue } else { Pool::Green }));
            let spec = service_spec(vip, blue_percent, pools);
            dataplane.apply(&spec).expect("program the service");
            AttachedLb { dataplane, spec }
        })
    }

    /// Swaps in the table for `blue_percent`.
    pub fn set_ratio(&mut self, blue_percent: u32) {
        self.spec.ratio = Ratio::new(blue_percent).expect("valid ratio");
        self.dataplane.apply(&self.spec).expect("swap the table");
    }

    /// Programs a UDP service on the TCP service's VIP and port, with its
    /// backends (their UDP ports) and ratio.
    pub fn add_udp_service(&mut self) {
        let spec = ServiceSpec {
            protocol: Protocol::Udp,
            udp_idle: Duration::from_secs(30),
            ..self.spec.clone()
        };
        self.dataplane.apply(&spec).expect("program the UDP service");
    }

    /// A global counter, summed over CPUs.
    pub fn counter(&self, counter: Counter) -> u64 {
        counter_of(&self.dataplane, counter)
    }

    /// Where packets went, for a failure message: the service's traffic,
    /// the number of flows and the global counters.
    pub fn diagnostics(&self) -> String {
        let dp = &self.dataplane;
        format!(
            "service stats: {:?}\nflows: {:?}\ncounters: {:?}",
            dp.service_stats(0),
            dp.flows().map(|f| f.len()),
            dp.counters()
        )
    }
}

fn counter_of(dataplane: &Dataplane, counter: Counter) -> u64 {
    let counters = dataplane.counters().expect("COUNTERS");
    counters
        .into_iter()
        .find(|(c, _)| *c == counter)
        .expect("every counter is reported")
        .1
}

/// The lab service's listener for `protocol`.
fn listener(protocol: Protocol) -> ListenerKey {
    ListenerKey::new(VIP.into(), protocol)
}

/// A backend of the lab's (IPv4) services.
fn v4(address: SocketAddr) -> SocketAddrV4 {
    match address {
        SocketAddr::V4(address) => address,
        SocketAddr::V6(address) => panic!("the packet lab's services are IPv4, not {address}"),
    }
}

fn service_spec(
    vip: SocketAddrV4,
    blue_percent: u32,
    backends: impl Iterator<Item = (SocketAddrV4, Pool)>,
) -> ServiceSpec {
    ServiceSpec {
        vip: vip.into(),
        lut_size: DEFAULT_LUT_SIZE,
        ratio: Ratio::new(blue_percent).expect("valid ratio"),
        backends: backends
            .map(|(addr, pool)| BackendSpec {
                addr: addr.into(),
                pool,
                weight: 100,
                reset_flows: false,
            })
            .collect(),
        syn_proxy: SynProxy::default(),
        forwarding: Default::default(),
        affinity: Default::default(),
        protocol: Protocol::Tcp,
        udp_idle: Duration::ZERO,
    }
}

fn dataplane_options(max_flows: u32) -> DataplaneOptions {
    DataplaneOptions {
        max_flows,
        reverse_nat_entries: max_flows,
        // Room for a second service ([`PacketLab::add_service`]) and,
        // past what the daemon's allocator ever takes of it, for the IPv6
        // services' tables ([`PacketLab::add_ipv6_services`] writes the last
        // slots).
        lookup_capacity: 2 * service_table_slots(DEFAULT_LUT_SIZE) + 2 * service_table_slots(LUT6_SIZE),
        ipv6: true,
        pin_dir: None,
    }
}

fn flow_key(client: SocketAddrV4) -> FlowKey {
    FlowKey::from_client(client, VIP)
}

/// veth0 is the LB's interface (10.0.0.1/24); the backends and the
/// clients' gateway are permanent neighbours, so `bpf_fib_lookup` resolves
/// every next hop without ARP.
fn prepare_namespace() {
    ip("link set lo up");
    ip(&format!(
        "link add {INTERFACE} address {} type veth peer name veth1",
        mac_text(LB_MAC)
    ));
    ip(&format!("link set {INTERFACE} up"));
    ip("link set veth1 up");
    ip(&format!("addr add {SNAT}/24 dev {INTERFACE}"));
    ip(&format!("route add 192.168.0.0/16 via {GATEWAY}"));
    for addr in BLUE.iter().chain(&GREEN).map(|b| *b.ip()).chain([GATEWAY]) {
        let mac = mac_text(mac_of(addr));
        ip(&format!("neigh add {addr} lladdr {mac} dev {INTERFACE} nud permanent"));
    }
    // bpf_fib_lookup forwards only where forwarding is on; test runs arrive
    // on lo.
    cmd::run(
        "sysctl",
        &["-qw", "net.ipv4.conf.all.forwarding=1", "net.ipv4.conf.lo.forwarding=1"],
    );
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// The lab's IPv6 addresses: veth0 holds [`SNAT6`]; backends are on-link,
/// clients ([`client6`]) behind [`GATEWAY6`].
pub const SNAT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xfe);
pub const VIP6: SocketAddrV6 = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100), 80, 0, 0);
pub const BACKENDS6: [SocketAddrV6; 2] = [
    SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x11), 8080, 0, 0),
    SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x12), 8080, 0, 0),
];
/// The IPv6 services' ids and their backends' (ids of neither family's
/// daemon-written entries: the lab's IPv4 service takes the lowest).
const TCP6_SERVICE_ID: u32 = MAX_SERVICES - 1;
const UDP6_SERVICE_ID: u32 = MAX_SERVICES - 2;
const BACKEND6_IDS: [u32; 2] = [MAX_BACKENDS - 2, MAX_BACKENDS - 1];
/// Slots of each IPv6 service's lookup table (prime).
const LUT6_SIZE: u32 = 7;

/// An IPv6 client at `port`.
pub fn client6(port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0xc, 0, 0, 0, 0, 0, 5), port, 0, 0)
}

/// The MAC the lab's neighbour table gives an IPv6 address.
pub fn mac_of6(addr: Ipv6Addr) -> [u8; 6] {
    [0x02, 0, 0, 6, 0, addr.octets()[15]]
}

/// An IPv6 TCP service and an IPv6 UDP service at [`VIP6`], both full NAT
/// over [`BACKENDS6`] from [`SNAT6`], written straight into the IPv6 maps
/// (the daemon's IPv6 writer is another change's): what the packet tests
/// need of them, and their maps to read.
pub struct Ipv6Services {
    config: Array<MapData, DataplaneConfig>,
    services: BpfHashMap<MapData, ServiceKey6, Service>,
    backends: Array<MapData, Backend6>,
    tables: Array<MapData, u32>,
    flows: BpfHashMap<MapData, FlowKey6, Flow6>,
    reverse: BpfHashMap<MapData, NatKey6, NatOwner6>,
    stats: PerCpuArray<MapData, TrafficStats>,
    /// First slot of the TCP and the UDP service's tables.
    lut_bases: [u32; 2],
}

impl PacketLab {
    /// Programs [`Ipv6Services`], with the namespace's IPv6 routes and
    /// neighbours, and the configuration's IPv6 SNAT address and VIP filter.
    pub fn add_ipv6_services(&self) -> Ipv6Services {
        ip(&format!("-6 addr add {SNAT6}/64 dev {INTERFACE} nodad"));
        for addr in BACKENDS6.iter().map(|b| *b.ip()).chain([GATEWAY6]) {
            let mac = mac_text(mac_of6(addr));
            ip(&format!(
                "-6 neigh add {addr} lladdr {mac} dev {INTERFACE} nud permanent"
            ));
        }
        ip(&format!("-6 route add fd00:c::/64 via {GATEWAY6} dev {INTERFACE}"));
        cmd::run(
            "sysctl",
            &["-qw", "net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.lo.forwarding=1"],
        );
        let mut config: Array<MapData, DataplaneConfig> = program_map(self.program(), map_names::CONFIG)
            .try_into()
            .expect("CONFIG");
        let cfg = config.get(&0, 0).expect("the configuration");
        let cfg = cfg.with_snat6(&[SNAT6]).with_vip6_filter([*VIP6.ip()]);
        config.set(0, cfg, 0).expect("write CONFIG");
        let mut vips: BpfHashMap<MapData, Ipv6Wire, u32> = self
            .ipv6_map(map_names::VIP_ADDRESSES6)
            .try_into()
            .expect("VIP_ADDRESSES6");
        vips.insert(wire_ip6(*VIP6.ip()), 1, 0).expect("VIP_ADDRESSES6");
        let tables = self.lookup_tables();
        let end = tables.len();
        let lut_bases = [
            end - 2 * service_table_slots(LUT6_SIZE),
            end - service_table_slots(LUT6_SIZE),
        ];
        let mut backends: Array<MapData, Backend6> = self.ipv6_map(map_names::BACKENDS6).try_into().expect("BACKENDS6");
        let mut services: BpfHashMap<MapData, ServiceKey6, Service> =
            self.ipv6_map(map_names::SERVICES6).try_into().expect("SERVICES6");
        let protocols = [(TCP6_SERVICE_ID, IPPROTO_TCP, 0), (UDP6_SERVICE_ID, IPPROTO_UDP, 30)];
        for ((id, proto, udp_idle_s), lut_base) in protocols.into_iter().zip(lut_bases) {
            let service = Service {
                id,
                lut_base,
                lut_size: LUT6_SIZE,
                // Blue's table in its first buffer only: the lab writes no
                // other.
                blue_share: POOL_SHARE_SCALE as u16,
                udp_idle_s,
                ..Service::default()
            };
            services
                .insert(ServiceKey6::with_proto(VIP6, proto), service, 0)
                .expect("SERVICES6");
        }
        // Both services' backends: one id each serves one service's table
        // (the flows keep to the service they were opened for).
        for (id, addr) in BACKEND6_IDS.into_iter().zip(BACKENDS6) {
            backends
                .set(id, Backend6::new(TCP6_SERVICE_ID, 1, addr, 0, false), 0)
                .expect("BACKENDS6");
        }
        let mut ipv6 = Ipv6Services {
            config,
            services,
            backends,
            tables,
            flows: self.ipv6_map(map_names::FLOWS6).try_into().expect("FLOWS6"),
            reverse: self.ipv6_map(map_names::REVERSE_NAT6).try_into().expect("REVERSE_NAT6"),
            stats: program_map(self.program(), map_names::BACKEND_STATS)
                .try_into()
                .expect("BACKEND_STATS"),
            lut_bases,
        };
        ipv6.split_tables();
        ipv6
    }

    /// Each CPU's cached IPv6 next hops (`NEXT_HOPS6`), to read and to
    /// forge.
    pub fn next_hops6(&self) -> PerCpuArray<MapData, NextHop6> {
        self.ipv6_map(map_names::NEXT_HOPS6).try_into().expect("NEXT_HOPS6")
    }

    /// A map of the IPv6 program loaded with this lab's `bg_lb`: the one
    /// `bg_lb_ipv6` whose maps include `bg_lb`'s CONFIG (other data planes
    /// may be loaded on the host at the same time).
    fn ipv6_map(&self, name: &str) -> Map {
        let named = |ids: &[u32], name: &str| {
            ids.iter()
                .copied()
                .find(|&id| MapInfo::from_id(id).is_ok_and(|info| info.name_as_str() == Some(name)))
        };
        let own_ids = self
            .program()
            .info()
            .expect("bg_lb info")
            .map_ids()
            .expect("map ids")
            .expect("map ids");
        let config = named(&own_ids, map_names::CONFIG).expect("bg_lb's CONFIG");
        let ids = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| p.name_as_str() == Some("bg_lb_ipv6"))
            .filter_map(|p| p.map_ids().ok().flatten())
            .find(|ids| ids.contains(&config))
            .expect("this lab's bg_lb_ipv6 program");
        let id = named(&ids, name).unwrap_or_else(|| panic!("bg_lb_ipv6 uses no map {name}"));
        Map::from_map_data(MapData::from_id(id).expect("open map by id")).expect("a known map type")
    }
}

impl Ipv6Services {
    /// Switches both IPv6 services to `forwarding`, as a reload would: the
    /// daemon marks CONFIG's `gateway_seen` before it writes a gateway
    /// service.
    pub fn set_forwarding(&mut self, forwarding: Forwarding) {
        if forwarding == Forwarding::Gateway {
            let cfg = self.config.get(&0, 0).expect("the configuration");
            let cfg = DataplaneConfig { gateway_seen: 1, ..cfg };
            self.config.set(0, cfg, 0).expect("write CONFIG");
        }
        let keys: Vec<ServiceKey6> = self.services.keys().map(|k| k.expect("SERVICES6 key")).collect();
        for key in keys {
            let mut service = self.services.get(&key, 0).expect("SERVICES6");
            forwarding.program(&mut service);
            self.services.insert(key, service, 0).expect("SERVICES6");
        }
    }

    /// Makes `vip` a second address of the TCP service (its table, its
    /// backends), as a second VIP over the same backends would be.
    pub fn add_tcp_vip(&mut self, lab: &PacketLab, vip: SocketAddrV6) {
        let service = self
            .services
            .get(&ServiceKey6::with_proto(VIP6, IPPROTO_TCP), 0)
            .expect("the TCP service");
        self.services
            .insert(ServiceKey6::with_proto(vip, IPPROTO_TCP), service, 0)
            .expect("SERVICES6");
        let cfg = self.config.get(&0, 0).expect("the configuration");
        self.config
            .set(0, cfg.with_vip6_filter([*VIP6.ip(), *vip.ip()]), 0)
            .expect("write CONFIG");
        let mut vips: BpfHashMap<MapData, Ipv6Wire, u32> = lab
            .ipv6_map(map_names::VIP_ADDRESSES6)
            .try_into()
            .expect("VIP_ADDRESSES6");
        vips.insert(wire_ip6(*vip.ip()), 1, 0).expect("VIP_ADDRESSES6");
    }

    /// The pinned flow of `client`'s `proto` flow to [`VIP6`].
    pub fn flow(&self, client: SocketAddrV6, proto: u8) -> Option<Flow6> {
        self.flows.get(&FlowKey6::with_proto(client, VIP6, proto), 0).ok()
    }

    /// The backend the flow is pinned to, and its SNAT address and port.
    pub fn pinned(&self, client: SocketAddrV6, proto: u8) -> Option<(SocketAddrV6, SocketAddrV6)> {
        let flow = self.flow(client, proto)?;
        let backend = self.backends.get(&flow.backend_id, 0).ok()?;
        let snat = SocketAddrV6::new(ip6(flow.snat_addr), u16::from_be(flow.snat_port), 0, 0);
        Some((backend.addr(), snat))
    }

    /// Which flow owns `backend`'s replies to `snat`.
    pub fn reverse_owner(&self, backend: SocketAddrV6, snat: SocketAddrV6) -> Option<FlowKey6> {
        let key = NatKey6::new(
            &Backend6::new(0, 0, backend, 0, false),
            wire_ip6(*snat.ip()),
            snat.port().to_be(),
        );
        self.reverse.get(&key, 0).ok().map(|owner| owner.flow)
    }

    /// Every slot of both services' tables names `backend` (one of
    /// [`BACKENDS6`]): new flows go there.
    pub fn send_all_to(&mut self, backend: SocketAddrV6) {
        let index = BACKENDS6.iter().position(|&b| b == backend).expect("an IPv6 backend");
        self.fill_tables(|_| BACKEND6_IDS[index]);
    }

    /// Both services' tables split between [`BACKENDS6`] (slot by slot), as
    /// they start.
    pub fn split_tables(&mut self) {
        self.fill_tables(|slot| BACKEND6_IDS[(slot % 2) as usize]);
    }

    /// Writes backend id `id_of(slot)` into each slot of both tables.
    fn fill_tables(&mut self, id_of: impl Fn(u32) -> u32) {
        for base in self.lut_bases {
            for slot in 0..LUT6_SIZE {
                self.tables.set(base + slot, id_of(slot), 0).expect("LOOKUP_TABLES");
            }
        }
    }

    /// Removes both IPv6 services from SERVICES6, as a reload without them
    /// would; their flows stay until a sweep ends them.
    pub fn remove_services(&mut self) {
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            self.services
                .remove(&ServiceKey6::with_proto(VIP6, proto))
                .expect("remove from SERVICES6");
        }
    }

    /// Every slot of both services' tables names no backend: new flows
    /// find none.
    pub fn clear_tables(&mut self) {
        self.fill_tables(|_| NO_BACKEND);
    }

    /// Sets the TCP service's SYN proxy: its mode bits (`syn_proxy::SYN_PROXY_*`),
    /// the auto mode's threshold and the MSS its SYN-ACKs offer (as for IPv4).
    pub fn set_tcp_syn_proxy(&mut self, mode: u32, threshold: u32, mss: u16) {
        self.change_tcp_service(|service| {
            service.flags = mode;
            service.syn_proxy_threshold = threshold;
            service.syn_proxy_mss = mss;
        });
    }

    /// Sets the TCP service's SYN proxy as the daemon programs `syn_proxy`.
    pub fn apply_syn_proxy(&mut self, syn_proxy: &SynProxy) {
        self.change_tcp_service(|service| syn_proxy.program(service));
    }

    fn change_tcp_service(&mut self, change: impl FnOnce(&mut Service)) {
        let key = ServiceKey6::with_proto(VIP6, IPPROTO_TCP);
        let mut service = self.services.get(&key, 0).expect("the TCP service");
        change(&mut service);
        self.services.insert(key, service, 0).expect("SERVICES6");
    }

    /// The backends by the id their flows name (both services').
    pub fn backends_by_id(&self) -> Vec<(u32, SocketAddrV6)> {
        BACKEND6_IDS.into_iter().zip(BACKENDS6).collect()
    }

    /// The FLOWS6 entry at `key`.
    pub fn flow_at(&self, key: &FlowKey6) -> Option<Flow6> {
        self.flows.get(key, 0).ok()
    }

    /// Every entry of FLOWS6.
    pub fn flows(&self) -> Vec<(FlowKey6, Flow6)> {
        self.flows.iter().map(|entry| entry.expect("FLOWS6 entry")).collect()
    }

    /// Every entry of REVERSE_NAT6, by the flow that owns it.
    pub fn reverse_nats(&self) -> Vec<(NatKey6, FlowKey6)> {
        self.reverse
            .iter()
            .map(|entry| entry.expect("REVERSE_NAT6 entry"))
            .map(|(key, owner)| (key, owner.flow))
            .collect()
    }

    /// `backend`'s traffic counters, summed over CPUs.
    pub fn backend_stats(&self, backend: SocketAddrV6) -> TrafficStats {
        let index = BACKENDS6.iter().position(|&b| b == backend).expect("an IPv6 backend");
        let mut sum = TrafficStats::default();
        for stats in self.stats.get(&BACKEND6_IDS[index], 0).expect("BACKEND_STATS").iter() {
            sum.add(stats);
        }
        sum
    }
}
