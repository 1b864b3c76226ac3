//! The labs of the end-to-end root tests: a one-arm topology whose
//! backends b0, b1 are blue and b2, b3 green, and `bg-lb run` on the LB
//! serving one service, `web`, on VIP:80.
//! - [`NameLab`]: backends that answer with their name (control plane,
//!   metrics and packaging tests).
//! - [`BlueGreenLab`]: `demo-backend`s with HTTP /live and /standby checks
//!   and a standby VIP on :8080 (release tests and the demo), over IPv4 or,
//!   on a dual-stack segment, IPv6.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use bg_lb::{
    dataplane::{affinity::Affinity, forwarding::Forwarding},
    protocol::{BackendHealth, ServiceStatus},
    ratio::Pool,
};

use crate::{
    daemon::{Daemon, DemoBackend, Launch},
    http,
    servers::{NameClient, NameServer, ask_names},
    topology::{Family, LB_ADDR, LB_ADDR6, OneArm, add_host_addr, client_addr, lb_addr, standby_vip_addr},
};

pub const BACKEND_PORT: u16 = 8080;
pub const SERVICE: &str = "web";

/// The pool of backend `i`.
pub fn pool_of(i: usize) -> Pool {
    if i < 2 { Pool::Blue } else { Pool::Green }
}

/// The index of the backend named `name` (b0, b1, ...).
pub fn backend_index(name: &str) -> usize {
    name.strip_prefix('b')
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("unexpected backend name {name:?}"))
}

/// The pool of the backend named `name`.
pub fn pool_of_name(name: &str) -> Pool {
    pool_of(backend_index(name))
}

/// A config section per backend, in the labs' pools (an IPv6 address is
/// written `[addr]:port`).
fn backend_sections(backends: &[IpAddr], port: u16, extra: &str) -> String {
    backends
        .iter()
        .enumerate()
        .map(|(i, &addr)| {
            format!(
                "\n[[service.backend]]\npool = \"{}\"\naddress = \"{}\"\n{extra}",
                pool_of(i),
                SocketAddr::new(addr, port)
            )
        })
        .collect()
}

/// A lab whose backends answer every line with their name, and `bg-lb run`
/// over them. Drops the daemon first, then the servers, then the topology.
pub struct NameLab {
    pub daemon: Daemon,
    servers: Vec<Option<NameServer>>,
    forwarding: Forwarding,
    family: Family,
    _peer_xdp: aya::Ebpf,
    pub topo: OneArm,
}

/// What a test adds to the [`NameLab`] daemon's config; the rest is fixed:
/// native XDP on eth0, the LB's address for SNAT (unless `snat_addresses`),
/// 65,536 flows (unless told otherwise), and the service `web` on VIP:80
/// over every backend.
#[derive(Clone, Debug, Default)]
pub struct NameLabConfig<'a> {
    /// `snat_addresses`, each added to the LB's eth0 before the daemon
    /// starts; empty: `snat_address` is the LB's address.
    pub snat_addresses: &'a [Ipv4Addr],
    /// Top-level settings, first in the file.
    pub settings: &'a str,
    /// Lines for the `[admin]` table.
    pub admin: &'a str,
    /// Tables before the service, e.g. `[timeouts]`.
    pub tables: &'a str,
    /// The service's lines after its VIP, e.g. `ratio` or `[service.health]`.
    pub service: &'a str,
    /// Every backend's weight, if set.
    pub weight: Option<u32>,
    /// The flow table's size, if not 65,536.
    pub max_flows: Option<u32>,
    /// How many of the backends (the first ones) the config lists, if not
    /// all: the others run, for a test to add at runtime.
    pub listed: Option<usize>,
    /// The service's `forwarding`; the backends are set up for it
    /// ([`crate::topology::Host::serve_for`]). Under `dsr` they listen on
    /// the VIP's port, on every address.
    pub forwarding: Forwarding,
    /// The family of the VIP, the backends and the SNAT address (the
    /// default, IPv4); IPv6 makes the segment dual-stack
    /// ([`OneArm::add_ipv6`]) and lists an SNAT address per family
    /// ([`snat_line`]). The name servers still listen on IPv4: a test of
    /// an IPv6 service starts its own servers on the backends' IPv6
    /// addresses.
    pub family: Family,
}

impl NameLabConfig<'_> {
    /// The config text; `paths` are the daemon harness's `pin_dir`,
    /// `state_dir` and `[admin] socket` lines.
    fn render(&self, vip: SocketAddr, backends: &[IpAddr], paths: &str) -> String {
        let weight = self.weight.map_or(String::new(), |w| format!("weight = {w}\n"));
        let forwarding = format!("forwarding = \"{}\"\n", self.forwarding);
        let snat = if self.snat_addresses.is_empty() {
            snat_line(self.family)
        } else {
            let quoted: Vec<String> = self.snat_addresses.iter().map(|a| format!("\"{a}\"")).collect();
            format!("snat_addresses = [{}]", quoted.join(", "))
        };
        format!(
            "{}interface = \"eth0\"\nxdp_mode = \"native\"\n{snat}\nmax_flows = {}\n\
             lookup_capacity = 1048592\n{paths}{}\n{}[[service]]\nname = \"{SERVICE}\"\nvip = \"{vip}\"\n{forwarding}{}{}",
            self.settings,
            self.max_flows.unwrap_or(65536),
            self.admin,
            self.tables,
            self.service,
            backend_sections(
                &backends[..self.listed.unwrap_or(backends.len())],
                backend_port(self.forwarding),
                &weight
            )
        )
    }
}

impl NameLab {
    /// Starts `backends` name servers and the daemon (`bin run`, or
    /// `launch`) with `config`, returning once its admin socket answers.
    pub fn start(bin: &'static str, backends: usize, launch: Option<Launch>, config: &NameLabConfig) -> Self {
        crate::require_root();
        let mut topo = OneArm::new(backends);
        if config.family == Family::Ipv6 {
            topo.add_ipv6();
        }
        for addr in config.snat_addresses.iter().filter(|&&a| a != LB_ADDR) {
            topo.lb.ns.ip(&format!("addr add {addr}/32 dev eth0"));
        }
        for host in &topo.backends {
            host.serve_for(
                config.forwarding,
                lb_addr(config.family),
                client_addr(config.family),
                &[topo.vip_of(config.family)],
            );
        }
        let servers = (0..backends)
            .map(|i| Some(name_server(&topo, config.forwarding, i)))
            .collect();
        let peer_xdp = topo.pass_lb_frames_to_switch();
        let addrs: Vec<IpAddr> = topo.backends.iter().map(|b| b.addr_of(config.family)).collect();
        let vip = SocketAddr::new(topo.vip_of(config.family), 80);
        let (forwarding, family) = (config.forwarding, config.family);
        let config = |paths: &str| config.render(vip, &addrs, paths);
        let daemon = match launch {
            Some(launch) => Daemon::start_launched(bin, &topo.lb.ns, launch, config),
            None => Daemon::start(bin, &topo.lb.ns, config),
        };
        NameLab {
            daemon,
            servers,
            forwarding,
            family,
            _peer_xdp: peer_xdp,
            topo,
        }
    }

    /// The IPv4 VIP:80 (the service's own unless it is IPv6).
    pub fn vip(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.topo.vip, 80)
    }

    /// The service's VIP:80, of the family it was configured with.
    pub fn service_vip(&self) -> SocketAddr {
        SocketAddr::new(self.topo.vip_of(self.family), 80)
    }

    pub fn backend_addr(&self, i: usize) -> SocketAddrV4 {
        SocketAddrV4::new(self.topo.backends[i].addr, backend_port(self.forwarding))
    }

    /// Stops backend `i`'s server, as in a crash.
    pub fn stop_server(&mut self, i: usize) {
        self.servers[i] = None;
    }

    /// Starts backend `i`'s server again after [`NameLab::stop_server`].
    pub fn start_server(&mut self, i: usize) {
        self.servers[i] = Some(name_server(&self.topo, self.forwarding, i));
    }

    /// The names of the backends serving `n` fresh connections to the VIP,
    /// one after another; panics with the daemon log if one fails.
    pub fn names(&self, n: usize) -> Vec<String> {
        ask_names(&self.topo.client.ns, self.vip(), n)
            .unwrap_or_else(|e| panic!("connection through the VIP failed: {e}\n{}", self.daemon.log()))
    }

    /// The sum of every series of the daemon's `/metrics`, served at `at` in
    /// the LB's namespace, whose line starts with `series` (a name, or a
    /// name and the start of its labels).
    pub fn metric(&self, at: SocketAddrV4, series: &str) -> f64 {
        let response = self
            .topo
            .lb
            .ns
            .run(move || http::request(at, "GET", "/metrics"))
            .expect("scrape /metrics");
        response
            .body
            .lines()
            .filter(|line| line.starts_with(series))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Polls `web`'s status until its ratio is `ratio`; panics after 10 s.
    pub fn wait_for_ratio(&self, ratio: &str) {
        let until = Instant::now() + Duration::from_secs(10);
        while self.daemon.status(SERVICE).ratio.to_string() != ratio {
            assert!(Instant::now() < until, "the ratio did not become {ratio}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Drains blue (`ctl drain web blue --wait`) with `long_lived`, served
    /// by blue `backend`, open: the drain moves the ratio to 0:100 and then
    /// waits while the connection keeps working and new connections go
    /// green; once the connection closes the drain returns, successfully,
    /// and blue has no open flow.
    pub fn assert_drain_waits_for(&self, mut long_lived: NameClient, backend: &str) {
        let mut drain = self
            .daemon
            .ctl_spawn(&["drain", SERVICE, "blue", "--wait", "--timeout", "60s"]);
        self.wait_for_ratio("0:100");
        for _ in 0..5 {
            assert_eq!(long_lived.ask().expect("the draining connection works"), backend);
            assert!(
                drain.try_wait().expect("poll ctl drain").is_none(),
                "drain --wait returned while a blue connection was open"
            );
            assert!(
                self.names(5).iter().all(|n| pool_of_name(n) == Pool::Green),
                "new connections avoid the drained pool"
            );
            thread::sleep(Duration::from_millis(100));
        }
        drop(long_lived);
        let out = drain.wait_with_output().expect("ctl drain");
        assert!(out.status.success(), "{out:?}\n{}", self.daemon.log());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("drained after"),
            "{out:?}"
        );
        assert_eq!(self.daemon.status(SERVICE).open_flows(Pool::Blue), 0);
    }

    /// An open connection through the VIP.
    pub fn connect(&self) -> NameClient {
        let vip = self.vip();
        self.topo
            .client
            .ns
            .run(move || NameClient::connect(vip).expect("connect to the VIP"))
    }
}

/// The backends' port: the VIP's under `dsr`, which keeps it.
fn backend_port(forwarding: Forwarding) -> u16 {
    if forwarding == Forwarding::Dsr {
        80
    } else {
        BACKEND_PORT
    }
}

/// Backend `i`'s name server: on its address, or under `dsr` on every
/// address (the VIP's, on its loopback, included).
fn name_server(topo: &OneArm, forwarding: Forwarding, i: usize) -> NameServer {
    let host = &topo.backends[i];
    let ip = if forwarding == Forwarding::Dsr {
        Ipv4Addr::UNSPECIFIED
    } else {
        host.addr
    };
    NameServer::start(
        &host.ns,
        SocketAddrV4::new(ip, backend_port(forwarding)),
        format!("b{i}"),
    )
}

#[derive(Clone, Debug)]
pub struct LabOptions {
    pub ratio: &'static str,
    /// Health check type: "http" (/live and /standby) or "tcp".
    pub check: &'static str,
    pub interval: Duration,
    pub fast_interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub max_flows: u32,
    /// The service's `forwarding`, the backends set up for it. Under `dsr`
    /// the backends listen on port 80 on every address, and the standby VIP
    /// is [`STANDBY_VIP_ADDR`]:80 (a standby VIP must keep the port).
    pub forwarding: Forwarding,
    /// More top-level config tables (e.g. `[api]`), placed before the
    /// service.
    pub tables: String,
    /// The service's `affinity`.
    pub affinity: Affinity,
    /// The family of the VIPs, the backends and the SNAT address; IPv6
    /// makes the segment dual-stack ([`OneArm::add_ipv6`]).
    pub family: Family,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            ratio: "50:50",
            check: "http",
            interval: Duration::from_millis(300),
            fast_interval: Duration::from_millis(100),
            timeout: Duration::from_millis(200),
            rise: 2,
            fall: 2,
            max_flows: 65536,
            forwarding: Forwarding::default(),
            tables: String::new(),
            affinity: Affinity::None,
            family: Family::Ipv4,
        }
    }
}

impl LabOptions {
    /// Every new connection to green (0:100): where a shift to blue starts.
    pub fn all_green() -> Self {
        LabOptions {
            ratio: "0:100",
            ..LabOptions::default()
        }
    }
}

pub struct BlueGreenLab {
    pub topo: OneArm,
    pub daemon: Daemon,
    pub backends: Vec<DemoBackend>,
    forwarding: Forwarding,
    family: Family,
    _peer_xdp: aya::Ebpf,
}

impl BlueGreenLab {
    /// Starts everything (v1 everywhere, all live) and waits until every
    /// backend passes its live check and, with HTTP checks, has a standby
    /// result: until then the standby table counts it as up.
    pub fn start(bin: &'static str, options: &LabOptions) -> Self {
        crate::require_root();
        let family = options.family;
        let mut topo = OneArm::new(4);
        if family == Family::Ipv6 {
            topo.add_ipv6();
        }
        let vip = topo.vip_of(family);
        let dsr = options.forwarding == Forwarding::Dsr;
        if dsr {
            add_host_addr(&topo.lb.ns, "eth0", standby_vip_addr(family));
        }
        for host in &topo.backends {
            host.serve_for(
                options.forwarding,
                lb_addr(family),
                client_addr(family),
                &[vip, standby_vip_addr(family)],
            );
        }
        let port = backend_port(options.forwarding);
        let backends = DemoBackend::start_on_each_listening(bin, &topo.backends, family, port, dsr);
        let peer_xdp = topo.pass_lb_frames_to_switch();
        let addrs: Vec<_> = topo.backends.iter().map(|b| b.addr_of(family)).collect();
        let daemon = Daemon::start(bin, &topo.lb.ns, |paths| config(vip, &addrs, options, paths));
        let lab = BlueGreenLab {
            topo,
            daemon,
            backends,
            forwarding: options.forwarding,
            family,
            _peer_xdp: peer_xdp,
        };
        let standby_checked = options.check == "http";
        lab.wait(
            |s| {
                s.backends
                    .iter()
                    .all(|b| b.health == BackendHealth::Up && (!standby_checked || b.standby_health.is_some()))
            },
            "every backend up (and its standby check done)",
        );
        lab
    }

    pub fn live_vip(&self) -> SocketAddr {
        SocketAddr::new(self.topo.vip_of(self.family), 80)
    }

    pub fn standby_vip(&self) -> SocketAddr {
        standby_vip(self.topo.vip_of(self.family), self.forwarding)
    }

    /// The family the service runs over.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Backend indices of `pool`.
    pub fn pool(pool: Pool) -> [usize; 2] {
        match pool {
            Pool::Blue => [0, 1],
            Pool::Green => [2, 3],
        }
    }

    pub fn status(&self) -> ServiceStatus {
        self.daemon.status(SERVICE)
    }

    /// Polls status until `done`; panics after 30 s with the daemon log.
    pub fn wait(&self, done: impl Fn(&ServiceStatus) -> bool, what: &str) -> Duration {
        let started = Instant::now();
        loop {
            let status = self.status();
            if done(&status) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{what}: still {status:#?}\n{}",
                self.daemon.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Names and versions serving `n` fresh connections to `vip`.
    pub fn serve(&self, vip: SocketAddr, n: usize) -> Vec<(String, String)> {
        let served = self.topo.client.ns.run(move || {
            (0..n)
                .map(|_| http::request(vip, "GET", "/").map(|r| (r.backend_name(), r.backend_version())))
                .collect::<std::io::Result<Vec<_>>>()
        });
        served.unwrap_or_else(|e| panic!("request through {vip} failed: {e}\n{}", self.daemon.log()))
    }

    /// POST /enable/ROLE straight to backend `i`, as an operator would.
    pub fn set_role(&self, i: usize, role: &str) {
        let addr = self.backends[i].addr;
        let path = format!("/enable/{role}");
        let response = self
            .topo
            .client
            .ns
            .run(move || http::request(addr, "POST", &path))
            .expect("POST /enable");
        assert_eq!(response.status, 200, "POST /enable/{role} to b{i}");
    }

    /// Deploys `version` on backend `i`: graceful stop, start in standby.
    pub fn deploy(&mut self, i: usize, version: &str) {
        self.backends[i].redeploy(&self.topo.backends[i].ns, version, "standby");
    }
}

/// The [`BlueGreenLab`]'s standby VIP: another port of the live VIP's
/// address, or under `dsr`, which keeps the port, another address.
fn standby_vip(vip: IpAddr, forwarding: Forwarding) -> SocketAddr {
    if forwarding == Forwarding::Dsr {
        SocketAddr::new(standby_vip_addr(Family::of(vip)), 80)
    } else {
        SocketAddr::new(vip, BACKEND_PORT)
    }
}

/// The SNAT line of a lab whose services run over `family`: IPv4, the LB's
/// address; IPv6, both of the LB's addresses, one per family, as a
/// dual-stack host lists them.
pub fn snat_line(family: Family) -> String {
    match family {
        Family::Ipv4 => format!("snat_address = \"{LB_ADDR}\""),
        Family::Ipv6 => format!("snat_addresses = [\"{LB_ADDR}\", \"{LB_ADDR6}\"]"),
    }
}

fn config(vip: IpAddr, backends: &[IpAddr], o: &LabOptions, paths: &str) -> String {
    let ms = |d: Duration| d.as_millis();
    format!(
        "interface = \"eth0\"\nxdp_mode = \"native\"\n{}\nmax_flows = {}\n\
         lookup_capacity = 1048592\n{paths}\n{}\n[[service]]\nname = \"{SERVICE}\"\nvip = \"{}\"\n\
         standby_vip = \"{}\"\nforwarding = \"{}\"\nratio = \"{}\"\naffinity = \"{}\"\n\n[service.health]\ntype = \"{}\"\n\
         interval = \"{}ms\"\nfast_interval = \"{}ms\"\ntimeout = \"{}ms\"\nrise = {}\nfall = {}\n{}",
        snat_line(o.family),
        o.max_flows,
        o.tables,
        SocketAddr::new(vip, 80),
        standby_vip(vip, o.forwarding),
        o.forwarding,
        o.ratio,
        o.affinity.name(),
        o.check,
        ms(o.interval),
        ms(o.fast_interval),
        ms(o.timeout),
        o.rise,
        o.fall,
        backend_sections(backends, backend_port(o.forwarding), "")
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::topology::VIP_ADDR6;

    const PATHS: &str = crate::daemon::PARSE_ONLY_PATHS;

    fn ipv6_config() -> String {
        let options = LabOptions {
            family: Family::Ipv6,
            ..LabOptions::default()
        };
        let backends: Vec<IpAddr> = (0x11..0x15)
            .map(|i| std::net::Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, i).into())
            .collect();
        config(VIP_ADDR6.into(), &backends, &options, PATHS)
    }

    #[test]
    fn ipv6_lab_config_brackets_every_ipv6_socket_address_and_lists_a_snat_address_per_family() {
        let toml = ipv6_config();
        assert!(
            toml.contains("snat_addresses = [\"10.99.0.1\", \"fd00:99::1\"]\n"),
            "{toml}"
        );
        assert!(toml.contains("vip = \"[fd00:99::100]:80\"\nstandby_vip = \"[fd00:99::100]:8080\""));
        assert!(toml.contains("pool = \"blue\"\naddress = \"[fd00:99::11]:8080\""));
        assert!(toml.contains("pool = \"green\"\naddress = \"[fd00:99::14]:8080\""));
    }

    #[test]
    fn ipv4_lab_config_is_unchanged_by_the_family_option() {
        let backends: Vec<IpAddr> = (11..15).map(|i| Ipv4Addr::new(10, 99, 0, i).into()).collect();
        let toml = config(
            crate::topology::VIP_ADDR.into(),
            &backends,
            &LabOptions::default(),
            PATHS,
        );
        assert!(toml.contains("snat_address = \"10.99.0.1\"\n"));
        assert!(toml.contains("vip = \"10.99.0.100:80\"\nstandby_vip = \"10.99.0.100:8080\""));
        assert!(toml.contains("address = \"10.99.0.14:8080\""));
        bg_lb::config::parse(Path::new("lab.toml"), &toml).expect("bg-lb accepts the IPv4 lab config");
    }

    #[test]
    fn bg_lb_accepts_the_ipv6_lab_config() {
        bg_lb::config::parse(Path::new("lab.toml"), &ipv6_config()).expect("bg-lb accepts the IPv6 lab config");
    }
}
