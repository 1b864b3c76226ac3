//! Several LB hosts behind one router, for the several-hosts tests: the
//! router runs BIRD with ECMP into its kernel table, each LB host runs its
//! own BIRD peering with it over eBGP (every host in one AS), and bg-lb
//! (started by the test) drives that BIRD through `[bgp]`.
//!
//! ```text
//! client 10.96.0.2 --c0-- router 10.96.0.1, AS 65000
//!                           |-- h0 10.96.1.1 -- front 10.96.1.2  host 0, AS 65001 -- back 10.96.11.1 -- backend 10.96.11.2
//!                           |-- h1 10.96.2.1 -- front 10.96.2.2  host 1, AS 65001 -- back 10.96.12.1 -- backend 10.96.12.2
//! ```
//!
//! Every link is dual-stack (`fd96:N::1` and `fd96:N::2` beside
//! `10.96.N.1` and `10.96.N.2`), with an IPv6 BGP session beside each IPv4
//! one, so a host whose config has an IPv6 VIP ([`LbHost::dual_stack_config`],
//! [`VIP6`]) announces it to the router as the IPv4 one.
//!
//! Each host is two-arm (`front`, `back`) with one backend of its own,
//! whose name server answers `host<i>`. Every BIRD is killed by PID and
//! every namespace and file removed on drop, even when a test fails (BIRD's
//! logs are printed then).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use aya::Ebpf;

use crate::{
    cmd::ip,
    servers::{NameClient, NameServer},
    topology::{Host, NetNs, attach_xdp_pass, checksums_in_software, enable_ipv6},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 100, 100), 80);
/// The IPv6 VIP of [`LbHost::dual_stack_config`]'s service.
pub const VIP6: SocketAddrV6 = SocketAddrV6::new(Ipv6Addr::new(0xfd96, 0x100, 0, 0, 0, 0, 0, 0x100), 80, 0, 0);
pub const ROUTER_AS: u32 = 65000;
pub const HOSTS_AS: u32 = 65001;
/// The router's interface to each host (XDP programs want `&'static str`).
const ROUTER_PORTS: [&str; 3] = ["h0", "h1", "h2"];
/// How long a test waits for BGP to converge before it fails.
pub const CONVERGENCE: Duration = Duration::from_secs(60);
/// BGP timers short enough for a test: a session that failed (its peer not
/// up yet) is retried within seconds, not BIRD's default two minutes.
const BGP_TIMERS: &str = "connect delay time 1; connect retry time 2; error wait time 1, 5; hold time 6; \
                          keepalive time 2;";

/// A BIRD in a namespace, its config, control socket and log in `dir`.
pub struct Bird {
    /// Behind a lock so a test can stop and start it while others read the fleet.
    child: Mutex<Option<Child>>,
    netns: String,
    name: String,
    conf: PathBuf,
    pid: PathBuf,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Bird {
    /// Writes `config` and starts `bird -f` in `ns`, returning once its
    /// control socket answers.
    pub fn start(ns: &NetNs, dir: &Path, name: &str, config: &str) -> Self {
        let conf = dir.join(format!("{name}.conf"));
        fs::write(&conf, config).expect("write bird config");
        let bird = Bird {
            child: Mutex::new(None),
            netns: ns.name.clone(),
            name: name.to_owned(),
            conf,
            pid: dir.join(format!("{name}.pid")),
            socket: dir.join(format!("{name}.ctl")),
            log: dir.join(format!("{name}.log")),
        };
        bird.spawn();
        bird
    }

    /// Starts it (again), returning once its control socket answers.
    pub fn spawn(&self) {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("bird log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["bird", "-f", "-c"])
            .arg(&self.conf)
            .arg("-s")
            .arg(&self.socket)
            .arg("-P")
            .arg(&self.pid)
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("spawn bird (bird2 installed? `cargo xtask setup`)");
        let mut slot = self.child.lock().expect("bird child");
        assert!(slot.is_none(), "bird {} is running", self.name);
        let child = slot.insert(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.birdc_status(&["show", "status"]).0 {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("bird {} exited ({status}):\n{}", self.name, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "bird {} did not answer:\n{}",
                self.name,
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, by PID: its BGP sessions drop and its control socket stops
    /// answering.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().expect("bird child").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn birdc_status(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run birdc");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `birdc -s SOCKET ARGS`.
    pub fn birdc(&self, args: &[&str]) -> String {
        self.birdc_status(args).1
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One LB host: its namespace (interfaces `front` and `back`), its BIRD,
/// its backend and the include file its bg-lb writes.
pub struct LbHost {
    pub ns: NetNs,
    /// The address the router sends the VIP's traffic to.
    pub front: Ipv4Addr,
    /// The SNAT address (on `back`).
    pub snat: Ipv4Addr,
    /// The IPv6 SNAT address (on `back`).
    pub snat6: Ipv6Addr,
    pub backend: Host,
    pub bird: Bird,
    pub include: PathBuf,
    /// The backend's servers, IPv4 and IPv6, behind a lock so a test can
    /// stop them while others read the fleet.
    servers: Mutex<Vec<NameServer>>,
}

impl LbHost {
    pub fn backend_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.backend.addr, VIP.port())
    }

    pub fn backend_addr6(&self) -> SocketAddrV6 {
        SocketAddrV6::new(
            self.backend.addr6.expect("every fleet backend is dual-stack"),
            VIP6.port(),
            0,
            0,
        )
    }

    /// Stops the backend's servers: connections to it are refused and its
    /// health checks fail.
    pub fn stop_backend(&self) {
        self.servers.lock().expect("servers").clear();
    }

    /// bg-lb's config for this host, given the harness's paths
    /// ([`crate::daemon::Daemon::start`]): two-arm, `[bgp]` driving this
    /// host's BIRD, one service on [`VIP`] with this host's backend, and
    /// TCP health checks quick to notice a dead backend (`fall` x
    /// `fast_interval`) but with timeouts a loaded machine still meets.
    pub fn config(&self, paths: &str) -> String {
        self.config_checking(paths, None)
    }

    /// Like [`LbHost::config`], the health checks going to `health_port`
    /// of each backend when given.
    pub fn config_checking(&self, paths: &str, health_port: Option<u16>) -> String {
        let port = health_port.map_or(String::new(), |port| format!("port = {port}\n"));
        format!(
            "front_interface = \"front\"\nback_interface = \"back\"\nxdp_mode = \"native\"\n\
             snat_address = \"{snat}\"\n{paths}\
             [bgp]\nbird_include = \"{include}\"\nbird_socket = \"{socket}\"\n\
             [[service]]\nname = \"web\"\nvip = \"{VIP}\"\n\
             [service.health]\n{port}interval = \"1s\"\nfast_interval = \"200ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 3\n\
             [[service.backend]]\npool = \"blue\"\naddress = \"{backend}\"\n",
            snat = self.snat,
            include = self.include.display(),
            socket = self.bird.socket.display(),
            backend = self.backend_addr(),
        )
    }

    /// Like [`LbHost::config`], dual-stack: the service has [`VIP`] and
    /// [`VIP6`], and this host's backend by each of its addresses.
    pub fn dual_stack_config(&self, paths: &str) -> String {
        self.config(paths)
            .replacen(
                &format!("snat_address = \"{}\"", self.snat),
                &format!("snat_addresses = [\"{}\", \"{}\"]", self.snat, self.snat6),
                1,
            )
            .replacen(
                &format!("vip = \"{VIP}\""),
                &format!("vip = [\"{VIP}\", \"{VIP6}\"]"),
                1,
            )
            + &format!(
                "[[service.backend]]\npool = \"blue\"\naddress = \"{}\"\n",
                self.backend_addr6()
            )
    }
}

/// The whole fleet; see the module docs.
pub struct Fleet {
    /// Dropped first: BIRDs and servers stop before their namespaces go.
    pub hosts: Vec<LbHost>,
    pub router_bird: Bird,
    pub router: NetNs,
    pub client: Host,
    /// `xdp_pass` on the peers of the hosts' interfaces, so native-mode
    /// redirects reach them.
    _pass: Vec<Ebpf>,
    dir: PathBuf,
}

impl Fleet {
    pub fn new(hosts: usize) -> Self {
        assert!((1..=ROUTER_PORTS.len()).contains(&hosts));
        let dir = std::env::temp_dir().join(format!(
            "bglb-fleet-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("fleet dir");
        let router = NetNs::new("rtr");
        router.sysctl("net.ipv4.conf.all.forwarding=1");
        router.sysctl("net.ipv6.conf.all.forwarding=1");
        // ECMP by the 5-tuple: one client's connections spread over hosts.
        router.sysctl("net.ipv4.fib_multipath_hash_policy=1");
        router.sysctl("net.ipv6.fib_multipath_hash_policy=1");
        let client = Host {
            ns: NetNs::new("client"),
            addr: Ipv4Addr::new(10, 96, 0, 2),
            addr6: Some(link_addr6(0, 2)),
        };
        link(&router, "c0", 0, &client.ns, "eth0");
        client.ns.ip("route add default via 10.96.0.1");
        client.ns.ip(&format!("-6 route add default via {}", link_addr6(0, 1)));

        let mut pass = Vec::new();
        let mut neighbors = String::new();
        let lb_hosts: Vec<LbHost> = (0..hosts)
            .map(|i| {
                let n = i as u8;
                let ns = NetNs::new(&format!("lb{i}"));
                let (gateway, front) = (link_addr(n + 1, 1), link_addr(n + 1, 2));
                let (gateway6, front6) = (link_addr6(n + 1, 1), link_addr6(n + 1, 2));
                link(&router, ROUTER_PORTS[i], n + 1, &ns, "front");
                ns.ip(&format!("route add 10.96.0.0/24 via {gateway}"));
                ns.ip(&format!("-6 route add {}/64 via {gateway6}", link_addr6(0, 0)));
                let backend = Host {
                    ns: NetNs::new(&format!("be{i}")),
                    addr: link_addr(n + 11, 2),
                    addr6: Some(link_addr6(n + 11, 2)),
                };
                let (snat, snat6) = (link_addr(n + 11, 1), link_addr6(n + 11, 1));
                link(&ns, "back", n + 11, &backend.ns, "eth0");
                pass.push(attach_xdp_pass(&router, ROUTER_PORTS[i]));
                pass.push(attach_xdp_pass(&backend.ns, "eth0"));
                for (family, local, neighbor, suffix) in [("ipv4", gateway.into(), front.into(), ""), ("ipv6", IpAddr::from(gateway6), IpAddr::from(front6), "v6")] {
                    neighbors.push_str(&format!(
                        "protocol bgp lb{i}{suffix} {{ local {local} as {ROUTER_AS}; neighbor {neighbor} as {HOSTS_AS}; \
                         {BGP_TIMERS} {family} {{ import all; export none; }}; }}\n"
                    ));
                }
                let host_dir = dir.join(format!("lb{i}"));
                fs::create_dir_all(&host_dir).expect("host dir");
                let include = host_dir.join("bird-vips.conf");
                // What bg-lb writes with nothing to announce: BIRD must find
                // the file when it starts, before bg-lb runs.
                fs::write(&include, bg_lb::bgp::render("bglb_vips", &BTreeSet::new())).expect("include");
                let bird = Bird::start(
                    &ns,
                    &host_dir,
                    "bird",
                    &host_bird_conf((front, gateway), (front6, gateway6), &include),
                );
                let servers = [IpAddr::from(backend.addr), IpAddr::from(link_addr6(n + 11, 2))]
                    .map(|addr| NameServer::start(&backend.ns, SocketAddr::new(addr, VIP.port()), format!("host{i}")));
                LbHost {
                    ns,
                    front,
                    snat,
                    snat6,
                    backend,
                    bird,
                    include,
                    servers: Mutex::new(servers.into()),
                }
            })
            .collect();
        let router_bird = Bird::start(&router, &dir, "router", &router_bird_conf(&neighbors));
        Fleet {
            hosts: lb_hosts,
            router_bird,
            router,
            client,
            _pass: pass,
            dir,
        }
    }

    /// The hosts the router's kernel route to [`VIP6`] spreads new flows
    /// over (none when no host announces it), by their index. By the
    /// router's interface, because an IPv6 next hop may be the host's
    /// link-local address.
    pub fn next_hops6(&self) -> BTreeSet<usize> {
        let routes = self.router.ip(&format!("-6 route show {}/128", VIP6.ip()));
        let words: Vec<&str> = routes.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0] == "dev")
            .map(|w| {
                ROUTER_PORTS
                    .iter()
                    .position(|port| *port == w[1])
                    .unwrap_or_else(|| panic!("a router port in {routes:?}"))
            })
            .collect()
    }

    /// Polls the router until its IPv6 next hops are the hosts `want`;
    /// returns how long that took. Panics after [`CONVERGENCE`].
    pub fn await_next_hops6(&self, want: &[usize]) -> Duration {
        let want: BTreeSet<usize> = want.iter().copied().collect();
        self.await_route(VIP6, &want, Fleet::next_hops6)
    }

    /// The next hops of the router's kernel route to the VIP: the hosts it
    /// spreads new flows over (none when no host announces it).
    pub fn next_hops(&self) -> BTreeSet<Ipv4Addr> {
        let routes = self.router.ip(&format!("route show {}/32", VIP.ip()));
        let words: Vec<&str> = routes.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| {
                w[1].parse()
                    .unwrap_or_else(|_| panic!("a gateway address in {routes:?}"))
            })
            .collect()
    }

    /// The fronts of hosts `indices`.
    pub fn fronts(&self, indices: &[usize]) -> BTreeSet<Ipv4Addr> {
        indices.iter().map(|&i| self.hosts[i].front).collect()
    }

    /// Polls the router until its next hops are `want`; returns how long
    /// that took. Panics with the routers' views after [`CONVERGENCE`].
    pub fn await_next_hops(&self, want: &BTreeSet<Ipv4Addr>) -> Duration {
        self.await_route(VIP, want, Fleet::next_hops)
    }

    /// Polls `hops` (the router's next hops to `vip`) until they are `want`.
    fn await_route<T: PartialEq + std::fmt::Debug>(
        &self,
        vip: impl std::fmt::Display,
        want: &T,
        hops: impl Fn(&Fleet) -> T,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let got = hops(self);
            if &got == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < CONVERGENCE,
                "the router's next hops to {vip} are {got:?}, not {want:?}, after {CONVERGENCE:?}:\n{}",
                self.describe()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The router's and hosts' BGP state, for failure messages.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "router:\n{}{}",
            self.router_bird.birdc(&["show", "protocols"]),
            self.router_bird.birdc(&["show", "route"])
        );
        for (i, host) in self.hosts.iter().enumerate() {
            text.push_str(&format!(
                "host {i} include:\n{}{}",
                fs::read_to_string(&host.include).unwrap_or_default(),
                host.bird.birdc(&["show", "route"])
            ));
        }
        text
    }

    /// Opens `n` connections to the VIP from the client, one after
    /// another; the name of the host whose backend served each.
    pub fn ask_names(&self, n: usize) -> Vec<String> {
        crate::servers::ask_names(&self.client.ns, VIP, n)
            .unwrap_or_else(|e| panic!("a connection through the router failed: {e}\n{}", self.describe()))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("router BIRD log:\n{}", self.router_bird.log());
            for (i, host) in self.hosts.iter().enumerate() {
                eprintln!("host {i} BIRD log:\n{}", host.bird.log());
            }
        }
        // Programs and processes before their namespaces and files.
        self._pass.clear();
        self.hosts.clear();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Link `n`'s IPv4 address of `host` (1: the side towards the router or
/// the LB host, 2: the other): `10.96.n.host`.
fn link_addr(n: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, n, host)
}

/// Link `n`'s IPv6 address of `host`: `fd96:n::host` (host 0: the prefix).
fn link_addr6(n: u8, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd96, n.into(), 0, 0, 0, 0, 0, host)
}

/// A veth pair, link `n`, from `a` (`a_if`, address 1 of the link, /24 and
/// /64) to `b` (address 2).
fn link(a: &NetNs, a_if: &str, n: u8, b: &NetNs, b_if: &str) {
    ip(&format!(
        "link add {a_if} netns {} type veth peer name {b_if} netns {}",
        a.name, b.name
    ));
    for (ns, iface, host) in [(a, a_if, 1), (b, b_if, 2)] {
        ns.ip(&format!("addr add {}/24 dev {iface}", link_addr(n, host)));
        enable_ipv6(ns, iface, link_addr6(n, host.into()), 64);
        ns.ip(&format!("link set {iface} up"));
        checksums_in_software(ns, iface);
    }
}

/// The router: every host a neighbour, and ECMP into the kernel table
/// (`merge paths on` turns the equal BGP routes into one multipath route).
fn router_bird_conf(neighbors: &str) -> String {
    format!(
        "router id 10.96.0.1;\nprotocol device {{ }}\n\
         protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
         protocol kernel {{ ipv6 {{ import none; export all; }}; merge paths on; }}\n{neighbors}"
    )
}

/// An LB host, as docs/deploy.md sets it up: the include bg-lb writes, and
/// its static protocols exported to the router, each over the session of
/// its family. No kernel protocol: the blackhole routes must not reach this
/// host's table.
fn host_bird_conf(
    (front, gateway): (Ipv4Addr, Ipv4Addr),
    (front6, gateway6): (Ipv6Addr, Ipv6Addr),
    include: &Path,
) -> String {
    format!(
        "router id {front};\nprotocol device {{ }}\ninclude \"{}\";\n\
         protocol bgp uplink {{ local {front} as {HOSTS_AS}; neighbor {gateway} as {ROUTER_AS}; {BGP_TIMERS} \
         ipv4 {{ import none; export where proto = \"bglb_vips\"; }}; }}\n\
         protocol bgp uplink6 {{ local {front6} as {HOSTS_AS}; neighbor {gateway6} as {ROUTER_AS}; {BGP_TIMERS} \
         ipv6 {{ import none; export where proto = \"bglb_vips6\"; }}; }}\n",
        include.display()
    )
}

/// New connections from the client to the VIP, one every few milliseconds
/// from each of its clients, each asking who served it, until stopped:
/// what an event cost.
pub struct Prober {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<Attempt>>>,
    threads: Vec<JoinHandle<()>>,
}

/// One connection: when it ended, and who served it or why it failed.
type Attempt = (Instant, Result<String, String>);

/// What a [`Prober`] saw.
#[derive(Debug)]
pub struct Probed {
    pub ok: usize,
    pub failed: usize,
    /// From the first failed connection to the last one (zero when none
    /// failed).
    pub failure_window: Duration,
    /// Connections served, by the name of the host whose backend served them.
    pub served: BTreeMap<String, usize>,
}

impl Prober {
    /// One client.
    pub fn start(fleet: &Fleet) -> Self {
        Prober::with_clients(fleet, 1)
    }

    /// `clients` clients connecting side by side.
    pub fn with_clients(fleet: &Fleet, clients: usize) -> Self {
        let (stop, results) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let threads = (0..clients)
            .map(|_| {
                let (stopping, record) = (stop.clone(), results.clone());
                fleet.client.ns.spawn(move || {
                    while !stopping.load(Ordering::Relaxed) {
                        let answer = NameClient::connect(VIP)
                            .and_then(|mut c| c.ask())
                            .map_err(|e| e.to_string());
                        record.lock().expect("results").push((Instant::now(), answer));
                        thread::sleep(Duration::from_millis(10));
                    }
                })
            })
            .collect();
        Prober { stop, results, threads }
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }

    pub fn stop(mut self) -> Probed {
        self.halt();
        let mut results = std::mem::take(&mut *self.results.lock().expect("results"));
        results.sort_by_key(|(at, _)| *at);
        let failures: Vec<Instant> = results.iter().filter(|(_, r)| r.is_err()).map(|(at, _)| *at).collect();
        Probed {
            ok: results.len() - failures.len(),
            failed: failures.len(),
            failure_window: match (failures.first(), failures.last()) {
                (Some(first), Some(last)) => *last - *first,
                _ => Duration::ZERO,
            },
            served: results
                .into_iter()
                .filter_map(|(_, r)| r.ok())
                .fold(BTreeMap::new(), |mut served, name| {
                    *served.entry(name).or_default() += 1;
                    served
                }),
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.halt();
    }
}
