//! The daemon with a dual-stack service (root): what it writes to the
//! IPv6 maps (SERVICES6, BACKENDS6, VIP_ADDRESSES6, CONFIG's IPv6 fields,
//! each listener's lookup table), read back from its pins, and `ctl`
//! status, ratio and drain on it. The data plane's IPv6 packet path is
//! proven by the packet tests; this is the control plane's half.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, Map, MapData};
use bg_lb::{
    dataplane::pins::PinLayout,
    family::Family,
    protocol::{BackendHealth, Reply, ServiceStatus},
};
use bg_lb_common::maps::{
    self, Backend, Backend6, DataplaneConfig, IPPROTO_TCP, Ipv6Wire, NO_BACKEND, Service, ServiceKey, ServiceKey6,
    wire_ip6,
};
use bg_lb_tests::{
    daemon::Daemon,
    lookup_slots,
    servers::{NameClient, NameServer},
    topology::OneArm,
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");
const LUT_SIZE: u32 = 7;
const SNAT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);
const VIP4: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 100), 80);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2);
const VIP6: SocketAddrV6 = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 0x100), 80, 0, 0);

/// Backend `i`'s IPv6 address (backend host `b{i}`).
fn backend6(i: u16) -> SocketAddrV6 {
    SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 0x11 + i), 8080, 0, 0)
}

fn backend4(i: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 11 + i), 8080)
}

/// The one-arm topology with two backend hosts, each given an IPv6 address
/// on its segment (the LB's is its IPv6 SNAT address) and a name server
/// (b0, b1) on both of its addresses; and the daemon with one dual-stack
/// service: b0 blue, b1 green, in both families.
/// Fields drop in order: the daemon, then the switch port's XDP program,
/// the servers, then the namespaces.
struct Lab {
    daemon: Daemon,
    _peer_xdp: aya::Ebpf,
    _servers: Vec<NameServer>,
    topo: OneArm,
}

impl Lab {
    fn start() -> Self {
        Self::start_with("", "")
    }

    /// [`Lab::start`] with `settings` (top-level lines) and `tables` (after
    /// the service) in the daemon's config.
    fn start_with(settings: &str, tables: &str) -> Self {
        let topo = OneArm::new(2);
        topo.lb.ns.ip(&format!("addr add {SNAT6}/64 dev eth0 nodad"));
        // As the IPv4 VIP: the LB's kernel answers neighbour solicitations for it.
        topo.lb.ns.ip(&format!("addr add {}/128 dev eth0 nodad", VIP6.ip()));
        topo.client.ns.ip(&format!("addr add {CLIENT6}/64 dev eth0 nodad"));
        let peer_xdp = topo.pass_lb_frames_to_switch();
        // No IPv6 forwarding set here: the daemon turns it on for its
        // interface, as `bpf_fib_lookup` needs.
        let mut servers = Vec::new();
        for (i, host) in topo.backends.iter().enumerate() {
            let v6 = backend6(i as u16);
            host.ns.ip(&format!("addr add {}/64 dev eth0 nodad", v6.ip()));
            for addr in [SocketAddr::V6(v6), SocketAddr::V4(backend4(i as u8))] {
                servers.push(NameServer::start(&host.ns, addr, format!("b{i}")));
            }
        }
        let daemon = Daemon::start(BG_LB, &topo.lb.ns, |paths| {
            let mut text = format!(
                "interface = \"eth0\"\nxdp_mode = \"native\"\nsnat_addresses = [\"10.99.0.1\", \"{SNAT6}\"]\n{settings}{paths}\n\
                 [[service]]\nname = \"web\"\nvip = [\"{VIP4}\", \"[{}]:{}\"]\nlookup_table_size = {LUT_SIZE}\n\
                 [service.health]\ninterval = \"200ms\"\nfast_interval = \"100ms\"\ntimeout = \"100ms\"\n",
                VIP6.ip(),
                VIP6.port()
            );
            for (i, pool) in ["blue", "green"].into_iter().enumerate() {
                for addr in [
                    backend4(i as u8).to_string(),
                    format!("[{}]:8080", backend6(i as u16).ip()),
                ] {
                    text += &format!("[[service.backend]]\npool = \"{pool}\"\naddress = \"{addr}\"\n");
                }
            }
            text + tables
        });
        Lab {
            daemon,
            _peer_xdp: peer_xdp,
            _servers: servers,
            topo,
        }
    }

    fn status(&self) -> ServiceStatus {
        self.daemon.status("web")
    }

    /// Waits until the daemon reports every backend of both families up.
    fn await_all_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status();
            if status.backends.iter().all(|b| b.health == BackendHealth::Up) {
                return;
            }
            assert!(Instant::now() < deadline, "backends never all up: {status:#?}");
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The daemon's pinned maps, opened for reading.
struct Pins {
    dir: std::path::PathBuf,
}

impl Pins {
    fn of(daemon: &Daemon) -> Self {
        Pins {
            dir: PinLayout::new(Path::new(&daemon.pin_dir)).maps_dir(),
        }
    }

    fn open(&self, name: &str) -> Map {
        let data = MapData::from_pin(self.dir.join(name)).unwrap_or_else(|e| panic!("open pinned {name}: {e}"));
        Map::from_map_data(data).expect("a known map type")
    }

    fn services<K: aya::Pod>(&self, name: &str) -> Vec<(K, Service)> {
        let map: HashMap<_, K, Service> = self.open(name).try_into().expect(name);
        map.iter().collect::<Result<_, _>>().expect(name)
    }

    fn backends<B: aya::Pod>(&self, name: &str, ids: impl Iterator<Item = u32>) -> Vec<(u32, B)> {
        let map: Array<_, B> = self.open(name).try_into().expect(name);
        ids.map(|id| (id, map.get(&id, 0).expect(name))).collect()
    }

    /// The tables new flows of `service` read: the backend ids of their
    /// slots.
    fn table(&self, service: &Service) -> Vec<u32> {
        let map: Array<_, u32> = self.open(maps::LOOKUP_TABLES).try_into().expect("LOOKUP_TABLES");
        lookup_slots::read_by_new_flows(service)
            .map(|slot| map.get(&slot, 0).expect("LOOKUP_TABLES"))
            .collect()
    }

    /// The data plane's counters that are not zero, by name.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let map: aya::maps::PerCpuArray<_, u64> = self.open(maps::COUNTERS).try_into().expect("COUNTERS");
        bg_lb_common::counters::Counter::ALL
            .iter()
            .map(|&c| (c.name(), map.get(&(c as u32), 0).expect("COUNTERS").iter().sum()))
            .filter(|&(_, n): &(_, u64)| n > 0)
            .collect()
    }

    fn config(&self) -> DataplaneConfig {
        let map: Array<_, DataplaneConfig> = self.open(maps::CONFIG).try_into().expect("CONFIG");
        map.get(&0, 0).expect("CONFIG")
    }

    /// The one SERVICES and the one SERVICES6 entry.
    fn both_services(&self) -> ((ServiceKey, Service), (ServiceKey6, Service)) {
        let v4 = self.services::<ServiceKey>(maps::SERVICES);
        let v6 = self.services::<ServiceKey6>(maps::SERVICES6);
        assert_eq!((v4.len(), v6.len()), (1, 1), "one listener per family: {v4:?} {v6:?}");
        (v4[0], v6[0])
    }
}

/// The ids a table names, without its empty slots.
fn ids_in(table: &[u32]) -> HashSet<u32> {
    table.iter().copied().filter(|&id| id != NO_BACKEND).collect()
}

#[test]
fn a_dual_stack_service_gets_an_ipv6_listener_with_its_own_table_over_the_ipv6_backends() {
    let lab = Lab::start();
    lab.await_all_up();
    let status = lab.status();
    let listeners: Vec<_> = status.listeners.iter().map(|l| (l.vip, l.family, l.standby)).collect();
    assert_eq!(
        listeners,
        [
            (SocketAddr::V4(VIP4), Family::Ipv4, false),
            (SocketAddr::V6(VIP6), Family::Ipv6, false)
        ]
    );
    let pins = Pins::of(&lab.daemon);
    let ((key4, service4), (key6, service6)) = pins.both_services();
    assert_eq!((key4.vip(), key4.proto), (VIP4, IPPROTO_TCP));
    assert_eq!((key6.vip(), key6.proto), (VIP6, IPPROTO_TCP));
    assert_ne!(service4.id, service6.id, "service ids are one space");
    assert_eq!(service6.lut_size, LUT_SIZE);

    // The IPv6 VIP is listed and in CONFIG's IPv6 filter; the SNAT address too.
    let vips6: HashMap<_, Ipv6Wire, u32> = pins.open(maps::VIP_ADDRESSES6).try_into().unwrap();
    let vips6: Vec<Ipv6Wire> = vips6.keys().collect::<Result<_, _>>().unwrap();
    assert_eq!(vips6, [wire_ip6(*VIP6.ip())]);
    let config = pins.config();
    assert_eq!(config.snat6_ips().collect::<Vec<_>>(), [SNAT6]);
    assert!(config.may_be_vip(wire_ip6(*VIP6.ip())));

    // Each listener's table names only backends of its family, in one id space.
    let table4 = ids_in(&pins.table(&service4));
    let table6 = ids_in(&pins.table(&service6));
    assert!(table4.is_disjoint(&table6), "{table4:?} {table6:?}");
    let b4 = pins.backends::<Backend>(maps::BACKENDS, table4.iter().copied());
    let b6 = pins.backends::<Backend6>(maps::BACKENDS6, table6.iter().copied());
    let addrs4: HashSet<_> = b4.iter().map(|(_, b)| (b.addr(), b.service_id)).collect();
    let addrs6: HashSet<_> = b6.iter().map(|(_, b)| (b.addr(), b.service_id)).collect();
    assert_eq!(
        addrs4,
        HashSet::from([(backend4(0), service4.id), (backend4(1), service4.id)])
    );
    assert_eq!(
        addrs6,
        HashSet::from([(backend6(0), service6.id), (backend6(1), service6.id)])
    );
    let free4 = pins.backends::<Backend>(maps::BACKENDS, table6.iter().copied());
    assert!(
        free4.iter().all(|(_, b)| b.is_free()),
        "an IPv6 backend's id is free in BACKENDS: {free4:?}"
    );

    // One ratio for both families: each table follows it with its own backends.
    let blue6 = b6.iter().find(|(_, b)| b.addr() == backend6(0)).unwrap().0;
    let green6 = b6.iter().find(|(_, b)| b.addr() == backend6(1)).unwrap().0;
    lab.daemon.ctl_ok(&["ratio", "web", "100:0"]);
    let (_, (_, service6)) = pins.both_services();
    assert_eq!(ids_in(&pins.table(&service6)), HashSet::from([blue6]));
    lab.daemon.ctl_ok(&["ratio", "web", "0:100"]);
    let ((_, service4), (_, service6)) = pins.both_services();
    assert_eq!(ids_in(&pins.table(&service6)), HashSet::from([green6]));
    let green4: Vec<_> = pins
        .backends::<Backend>(maps::BACKENDS, ids_in(&pins.table(&service4)).into_iter())
        .into_iter()
        .map(|(_, b)| b.addr())
        .collect();
    assert_eq!(green4, [backend4(1)]);

    // Drain blue (no flow is open): the wait counts both families' flows.
    let out = lab.daemon.ctl_ok(&["--json", "drain", "web", "blue", "--wait"]);
    let reply: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or_default()).expect(&out);
    assert_eq!(
        (&reply["drained"], &reply["open_flows"]),
        (&true.into(), &0.into()),
        "{out}"
    );
    let status = lab.status();
    assert_eq!(status.ratio.to_string(), "0:100");
    let rows: HashSet<_> = status
        .backends
        .iter()
        .map(|b| (Family::of_socket(b.address), b.pool.to_string(), b.open_flows))
        .collect();
    let row = |family, pool: &str| (family, pool.to_owned(), 0);
    assert_eq!(
        rows,
        HashSet::from([
            row(Family::Ipv4, "blue"),
            row(Family::Ipv4, "green"),
            row(Family::Ipv6, "blue"),
            row(Family::Ipv6, "green")
        ]),
        "every backend of both families, none with an open flow"
    );
}

/// A connection to the IPv6 VIP (through the IPv6 data path to an IPv6
/// backend) is an IPv6 flow to the control plane: `ctl flows` lists it
/// with its family, the sweep counts it open on its backend.
#[test]
fn an_ipv6_connection_is_listed_and_counted_as_an_open_ipv6_flow() {
    let lab = Lab::start();
    lab.await_all_up();
    let stream = lab
        .topo
        .client
        .ns
        .run(|| TcpStream::connect_timeout(&SocketAddr::V6(VIP6), Duration::from_secs(10)));
    let stream = stream.unwrap_or_else(|e| {
        panic!(
            "connect to the IPv6 VIP: {e}; data-plane counters: {:?}",
            Pins::of(&lab.daemon).counters()
        )
    });
    let client = stream.local_addr().expect("the client's address");
    let deadline = Instant::now() + Duration::from_secs(30);
    let flow = loop {
        let out = lab.daemon.ctl_ok(&["--json", "flows", "web"]);
        let reply: Reply = serde_json::from_str(&out).expect("flows JSON");
        let flows = reply.flows.unwrap_or_default();
        if let Some(flow) = flows.iter().find(|f| f.client == client) {
            break flow.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the flow of {client} is never listed: {flows:?}"
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(flow.family, Family::Ipv6);
    assert_eq!(flow.state, "established");
    assert!(
        [backend6(0), backend6(1)].map(SocketAddr::V6).contains(&flow.backend),
        "{flow:?}"
    );
    loop {
        let status = lab.status();
        let open = |address| {
            status
                .backends
                .iter()
                .find(|b| b.address == address)
                .map(|b| b.open_flows)
        };
        if open(flow.backend) == Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "the flow is never counted open: {status:#?}");
        thread::sleep(Duration::from_millis(100));
    }
    drop(stream);
}

/// A connection to the IPv6 VIP that asks its backend's name and closes.
fn ask_over_ipv6(lab: &Lab) -> std::io::Result<String> {
    lab.topo
        .client
        .ns
        .run(|| NameClient::connect(SocketAddr::V6(VIP6)).and_then(|mut c| c.ask()))
}

/// SNAT port takeover on IPv6: with 4 SNAT ports and connections kept
/// `closing` for 60 s, sequential IPv6 connections (the client closing
/// first) go on succeeding far beyond the 4 a minute that free pairs
/// allow, each taking over an ended connection's pair.
#[test]
fn sequential_ipv6_connections_outnumber_the_snat_ports_by_taking_over_ended_ones() {
    let lab = Lab::start_with("snat_ports = \"20000-20003\"\n", "[timeouts]\nclosing = \"60s\"\n");
    lab.await_all_up();
    for i in 0..20 {
        if let Err(e) = ask_over_ipv6(&lab) {
            panic!(
                "connection {i}: {e}; data-plane counters: {:?}",
                Pins::of(&lab.daemon).counters()
            );
        }
        // Paced, so that a pair comes round again after the data plane's
        // settling time (`port_reuse::SETTLE_NS`), not for the assertion.
        thread::sleep(Duration::from_millis(100));
    }
    let counters = Pins::of(&lab.daemon).counters();
    assert!(
        !counters.iter().any(|&(name, _)| name == "snat_ports_exhausted"),
        "no connection refused: {counters:?}"
    );
}

/// `ctl drain --deadline` on a dual-stack service: an idle IPv6
/// connection left open past the deadline is reset at both ends by the
/// data plane, as IPv4 ones are, and `wait-drained` says so.
#[test]
fn a_drain_deadline_resets_a_leftover_ipv6_connection() {
    let lab = Lab::start();
    lab.await_all_up();
    let mut idle = lab
        .topo
        .client
        .ns
        .run(|| NameClient::connect(SocketAddr::V6(VIP6)))
        .expect("connect to the IPv6 VIP");
    let name = idle.ask().expect("the connection works");
    let pool = if name == "b0" { "blue" } else { "green" };
    let out = lab.daemon.ctl_ok(&["drain", "web", pool, "--deadline", "2s"]);
    assert!(out.contains("will be reset"), "{out}");
    let out = lab.daemon.ctl_ok(&["wait-drained", "web", pool, "--timeout", "60s"]);
    assert!(
        out.contains("1 connection(s) reset at the drain deadline"),
        "{out}\n{}",
        lab.daemon.log()
    );
    let client_saw = idle.next_line().expect_err("the client's connection was reset");
    assert_eq!(client_saw.kind(), std::io::ErrorKind::ConnectionReset, "{client_saw}");
    let counters = Pins::of(&lab.daemon).counters();
    assert!(
        counters.contains(&("deadline_reset", 1)),
        "one connection reset (two RSTs) counts once: {counters:?}"
    );
}
