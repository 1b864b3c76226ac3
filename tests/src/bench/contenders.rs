//! The contenders: what each one is, its configuration (pure functions, so
//! the unit tests can read them), and starting it in the LB namespace of a
//! fresh [`Lab`]. Every contender serves the same two services: HTTP on
//! VIP:80 to the backends' :8080 and bulk on VIP:5201 to their :5201, split
//! 50:50 between two blue and two green backends; those that balance UDP
//! ([`udp_rr::skipped`]) a third, UDP on VIP:5353 to their :5353. (bg-lb in `dsr` mode
//! keeps the port, so its HTTP service is VIP:8080; its lab's backends are
//! set up for their mode: [`Contender::forwarding`].) Every service is of
//! the lab's family: over IPv6 the VIP, backends and SNAT address are IPv6,
//! nftables NATs in an `ip6` table, and bg-lb runs if it accepts the IPv6
//! config ([`Contender::refuses`]).

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, PerCpuArray};
use bg_lb::{dataplane::forwarding::Forwarding, protocol::BackendHealth};
use bg_lb_common::counters::Counter;
use serde::Serialize;

use crate::{
    bench::{
        lab::{BULK_PORT, HTTP_PORT, Lab, Pools, VIP_HTTP_PORT},
        procs::{self, ChildGuard},
        udp_rr::{self, UDP_PORT},
    },
    daemon::{Daemon, PARSE_ONLY_PATHS},
    http,
    topology::{Family, NetNs},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Contender {
    BgLb,
    BgLbGateway,
    BgLbDsr,
    BgLbGeneric,
    Haproxy,
    NginxStream,
    NftablesDnat,
    Direct,
}

impl Contender {
    /// In the order of the table; bg-lb first as every ratio refers to it.
    pub const ALL: [Contender; 7] = [
        Contender::BgLb,
        Contender::BgLbGateway,
        Contender::BgLbDsr,
        Contender::Haproxy,
        Contender::NginxStream,
        Contender::NftablesDnat,
        Contender::Direct,
    ];

    /// Run only when `--only` names them: bg-lb in generic XDP mode, for
    /// bulk on veth (README "Performance").
    pub const OPT_IN: [Contender; 1] = [Contender::BgLbGeneric];

    /// The name `--only` takes.
    pub fn key(self) -> &'static str {
        match self {
            Contender::BgLb => "bg-lb",
            Contender::BgLbGateway => "bg-lb-gateway",
            Contender::BgLbDsr => "bg-lb-dsr",
            Contender::BgLbGeneric => "bg-lb-generic",
            Contender::Haproxy => "haproxy",
            Contender::NginxStream => "nginx",
            Contender::NftablesDnat => "nftables",
            Contender::Direct => "direct",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Contender::BgLb => "bg-lb (XDP native, full NAT)",
            Contender::BgLbGateway => "bg-lb (XDP native, gateway: DNAT)",
            Contender::BgLbDsr => "bg-lb (XDP native, dsr: replies skip the LB)",
            Contender::BgLbGeneric => "bg-lb (XDP generic, full NAT)",
            Contender::Haproxy => "HAProxy 2.6 (mode tcp)",
            Contender::NginxStream => "nginx 1.22 stream",
            Contender::NftablesDnat => "nftables DNAT + SNAT (numgen)",
            Contender::Direct => "direct to one backend (floor)",
        }
    }

    /// The label of its rows in a run over `family`: IPv6 rows say so.
    pub fn label_in(self, family: Family) -> String {
        match family {
            Family::Ipv4 => self.label().to_owned(),
            Family::Ipv6 => format!("{}, IPv6", self.label()),
        }
    }

    /// How a bg-lb contender forwards (full NAT for the others, whose
    /// backends need no set-up either).
    pub fn forwarding(self) -> Forwarding {
        match self {
            Contender::BgLbGateway => Forwarding::Gateway,
            Contender::BgLbDsr => Forwarding::Dsr,
            _ => Forwarding::FullNat,
        }
    }

    /// A bg-lb contender's `xdp_mode`: native, which the lab's veth supports,
    /// but for the generic variant.
    pub fn xdp_mode(self) -> &'static str {
        if self == Contender::BgLbGeneric {
            "generic"
        } else {
            "native"
        }
    }

    /// Whether it balances (the floor does not, so it is exempt from the
    /// every-backend-served check).
    pub fn balances(self) -> bool {
        self != Contender::Direct
    }

    /// Why the contender cannot run in `lab`, if it cannot: bg-lb over IPv6
    /// until the daemon accepts an IPv6 service. The bench's own bg-lb
    /// library judges the config the daemon would be given, so the row says
    /// why instead of failing at start-up.
    pub fn refuses(self, lab: &Lab) -> Option<String> {
        if !self.is_bg_lb() || lab.family == Family::Ipv4 {
            return None;
        }
        let toml = bg_lb_config(
            lab.vip(),
            lab.lb_addr(),
            (&lab.pools(HTTP_PORT), &lab.pools(BULK_PORT), Some(&lab.pools(UDP_PORT))),
            (self.forwarding(), self.xdp_mode()),
            PARSE_ONLY_PATHS,
        );
        bg_lb::config::parse(std::path::Path::new("bench.toml"), &toml)
            .err()
            .map(|e| format!("IPv6 needs bg-lb to accept an IPv6 service; it refuses the bench's config: {e}"))
    }

    fn is_bg_lb(self) -> bool {
        matches!(
            self,
            Contender::BgLb | Contender::BgLbGateway | Contender::BgLbDsr | Contender::BgLbGeneric
        )
    }

    /// Starts the contender in `lab`'s LB namespace and waits until it
    /// serves HTTP.
    pub fn start(self, lab: &Lab, bg_lb: &'static str) -> Running {
        let vip = lab.vip();
        let snat = lab.lb_addr();
        let http = lab.pools(HTTP_PORT);
        let bulk = lab.pools(BULK_PORT);
        let udp = lab.pools(UDP_PORT);
        let mut running = match self {
            Contender::BgLb | Contender::BgLbGateway | Contender::BgLbDsr | Contender::BgLbGeneric => {
                let services = (&http, &bulk, Some(&udp));
                start_bg_lb(lab, bg_lb, services, (self.forwarding(), self.xdp_mode()), "")
            }
            Contender::Haproxy => start_haproxy(lab.lb(), vip, &http, &bulk),
            Contender::NginxStream => start_nginx(lab.lb(), vip, (&http, &bulk, &udp)),
            Contender::NftablesDnat => start_nftables(lab.lb(), (vip, snat), &http, &bulk, &udp),
            Contender::Direct => Running {
                http: http.blue[0],
                bulk: bulk.blue[0],
                udp: Some(udp.blue[0]),
                guard: Guard::Nothing,
                _dir: None,
            },
        };
        if udp_rr::skipped(self).is_some() {
            running.udp = None;
        }
        running.wait_serving(lab);
        running
    }
}

/// bg-lb serving `http` (the lab's bulk servers as usual, no UDP service)
/// instead of the lab's four HTTP backends, with top-level `settings` added to
/// [`bg_lb_config`]'s; waits until it serves HTTP.
pub fn start_bg_lb_with(lab: &Lab, bg_lb: &'static str, http: &Pools, settings: &str) -> Running {
    let mut running = start_bg_lb(
        lab,
        bg_lb,
        (http, &lab.pools(BULK_PORT), None),
        (Forwarding::FullNat, "native"),
        settings,
    );
    running.wait_serving(lab);
    running
}

/// A started contender: where clients connect, and what stops it on drop.
pub struct Running {
    pub http: SocketAddr,
    pub bulk: SocketAddr,
    /// Where the UDP workload sends, if the contender runs it.
    pub udp: Option<SocketAddr>,
    guard: Guard,
    _dir: Option<ScratchDir>,
}

enum Guard {
    BgLb {
        // The daemon goes first (removing its pins detaches XDP), then the
        // peer's xdp_pass.
        _daemon: Box<Daemon>,
        _peer_xdp: Option<Box<aya::Ebpf>>,
    },
    Process(ChildGuard),
    Nothing,
}

impl Running {
    fn wait_serving(&mut self, lab: &Lab) {
        let target = self.http;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Guard::Process(child) = &mut self.guard {
                assert!(
                    child.running(),
                    "{} exited right after starting (see its log)",
                    child.name
                );
            }
            if lab
                .client()
                .run(move || http::request(target, "GET", "/").is_ok_and(|r| r.status == 200))
            {
                return;
            }
            assert!(Instant::now() < deadline, "{target} did not serve HTTP within 20s");
            procs::sleep(Duration::from_millis(100));
        }
    }

    /// Where bg-lb pinned its maps (the other contenders: `None`).
    pub fn pin_dir(&self) -> Option<&std::path::Path> {
        match &self.guard {
            Guard::BgLb { _daemon: daemon, .. } => Some(&daemon.pin_dir),
            _ => None,
        }
    }

    /// bg-lb's global data-plane counters (summed over CPUs), read from its
    /// pinned COUNTERS map: where packets went that did not take the fast
    /// path. `None` for the other contenders.
    pub fn dataplane_counters(&self) -> Option<BTreeMap<String, u64>> {
        let Guard::BgLb { _daemon: daemon, .. } = &self.guard else {
            return None;
        };
        let pins = bg_lb::dataplane::pins::PinLayout::new(&daemon.pin_dir);
        let data = MapData::from_pin(pins.maps_dir().join(bg_lb_common::maps::COUNTERS)).ok()?;
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(Map::from_map_data(data).ok()?).ok()?;
        Some(
            Counter::ALL
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let sum = counters.get(&(i as u32), 0).ok()?.iter().sum::<u64>();
                    Some((format!("{c:?}"), sum))
                })
                .collect(),
        )
    }
}

/// A directory for configs and logs, removed on drop (kept after a panic,
/// for its logs).
pub struct ScratchDir(pub PathBuf);

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

impl ScratchDir {
    pub fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "bglb-bench-{}-{}-{what}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        ScratchDir(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("logs kept in {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

// --- bg-lb -------------------------------------------------------------------

/// The bench's services (`udp`: a UDP service too) with the example
/// config's defaults (examples/bg-lb.toml: `snat_ports`
/// 20000-29999, its timeouts, `max_flows`) except what the topology needs:
/// the interface, the SNAT address (the LB's address in the lab) and
/// `xdp_mode` (usually `"native"`, which the lab's veth supports when the
/// peer runs an XDP program, and which `auto` would replace by generic
/// mode on a veth).
/// The LB namespace keeps the kernel's ephemeral range (32768-60999, see
/// [`Lab::new`]), clear of the SNAT ports as the daemon requires. Over IPv6
/// the VIP, backends and SNAT address are IPv6 (`"[addr]:port"`).
pub fn bg_lb_config(
    vip: IpAddr,
    snat: IpAddr,
    (http, bulk, udp): (&Pools, &Pools, Option<&Pools>),
    (forwarding, xdp_mode): (Forwarding, &str),
    paths: &str,
) -> String {
    let mut toml = format!("interface = \"eth0\"\nxdp_mode = \"{xdp_mode}\"\nsnat_address = \"{snat}\"\n{paths}\n");
    let udp = udp.map(|pools| (UDP_SERVICE, UDP_PORT, pools));
    for (name, port, pools) in [("web", http_vip_port(forwarding), http), ("bulk", BULK_PORT, bulk)]
        .into_iter()
        .chain(udp)
    {
        toml += &format!(
            "\n[[service]]\nname = \"{name}\"\nvip = \"{}\"\nratio = \"{}:{}\"\nforwarding = \"{forwarding}\"\n",
            SocketAddr::new(vip, port),
            pools.blue_percent,
            100 - pools.blue_percent
        );
        if name == UDP_SERVICE {
            // The name servers answer every datagram with their name, b0..b3.
            toml += "protocol = \"udp\"\n\n[service.health]\ntype = \"udp\"\nrequest = \"health\"\nexpect = \"b\"\n";
        }
        for (pool, addrs) in [("blue", &pools.blue), ("green", &pools.green)] {
            for addr in addrs {
                toml += &format!("\n[[service.backend]]\npool = \"{pool}\"\naddress = \"{addr}\"\n");
            }
        }
    }
    toml
}

/// bg-lb's UDP service: the lab's UDP name servers ([`udp_rr`]).
const UDP_SERVICE: &str = "udp";

/// The VIP port of bg-lb's HTTP service: the backends' under `dsr`, which
/// keeps the port.
fn http_vip_port(forwarding: Forwarding) -> u16 {
    if forwarding == Forwarding::Dsr {
        HTTP_PORT
    } else {
        VIP_HTTP_PORT
    }
}

fn start_bg_lb(
    lab: &Lab,
    bin: &'static str,
    services: (&Pools, &Pools, Option<&Pools>),
    (forwarding, xdp_mode): (Forwarding, &str),
    settings: &str,
) -> Running {
    // In generic mode the LB's frames reach the switch without it (and the
    // switch port keeps GSO).
    let peer_xdp = (xdp_mode == "native").then(|| lab.topo.pass_lb_frames_to_switch());
    let vip = lab.vip();
    let daemon = Daemon::start(bin, lab.lb(), |paths| {
        bg_lb_config(
            vip,
            lab.lb_addr(),
            services,
            (forwarding, xdp_mode),
            &format!("{settings}{paths}"),
        )
    });
    let udp = services.2.is_some();
    // New connections go only to backends the health checks found up.
    let deadline = Instant::now() + Duration::from_secs(20);
    for service in ["web", "bulk"].into_iter().chain(udp.then_some(UDP_SERVICE)) {
        loop {
            let status = daemon.status(service);
            let down: Vec<String> = status
                .backends
                .iter()
                .filter(|b| b.health != BackendHealth::Up)
                .map(|b| {
                    format!(
                        "{} {:?} ({})",
                        b.address,
                        b.health,
                        b.last_check.as_deref().unwrap_or("no check yet")
                    )
                })
                .collect();
            if down.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "bg-lb: {} of {} backends of {service} not up after 20 s: {}",
                down.len(),
                status.backends.len(),
                down.join(", ")
            );
            procs::sleep(Duration::from_millis(100));
        }
    }
    Running {
        http: SocketAddr::new(vip, http_vip_port(forwarding)),
        bulk: SocketAddr::new(vip, BULK_PORT),
        udp: udp.then_some(SocketAddr::new(vip, UDP_PORT)),
        guard: Guard::BgLb {
            _daemon: Box::new(daemon),
            _peer_xdp: peer_xdp.map(Box::new),
        },
        _dir: None,
    }
}

// --- HAProxy -----------------------------------------------------------------

/// HAProxy in TCP mode; an IPv6 address is written `[addr]:port`, which it
/// takes in `bind` and `server` lines.
pub fn haproxy_config(vip: IpAddr, http: &Pools, bulk: &Pools) -> String {
    let mut cfg = "global\n    maxconn 8000\n    nbthread 2\n\ndefaults\n    mode tcp\n    \
                   timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n"
        .to_owned();
    for (name, port, pools) in [("web", VIP_HTTP_PORT, http), ("bulk", BULK_PORT, bulk)] {
        cfg += &format!(
            "\nfrontend {name}\n    bind {}\n    default_backend {name}\n\nbackend {name}\n    balance roundrobin\n",
            SocketAddr::new(vip, port)
        );
        for (i, (addr, weight)) in pools.weights().into_iter().enumerate() {
            cfg += &format!("    server s{i} {addr} weight {weight}\n");
        }
    }
    cfg
}

fn start_haproxy(lb: &NetNs, vip: IpAddr, http: &Pools, bulk: &Pools) -> Running {
    let dir = ScratchDir::new("haproxy");
    let cfg = dir.write("haproxy.cfg", &haproxy_config(vip, http, bulk));
    let log = dir.0.join("haproxy.log");
    let child = ChildGuard::spawn_in(lb, "haproxy", "haproxy", &["-db", "-f", &cfg.to_string_lossy()], &log);
    proxy_running(vip, child, dir)
}

fn proxy_running(vip: IpAddr, child: ChildGuard, dir: ScratchDir) -> Running {
    Running {
        http: SocketAddr::new(vip, VIP_HTTP_PORT),
        bulk: SocketAddr::new(vip, BULK_PORT),
        udp: None,
        guard: Guard::Process(child),
        _dir: Some(dir),
    }
}

// --- nginx stream ------------------------------------------------------------

pub const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// nginx stream: TCP for the HTTP and bulk services, and UDP (one answer
/// datagram per request) for the UDP one.
pub fn nginx_config(vip: IpAddr, (http, bulk, udp): (&Pools, &Pools, &Pools), dir: &str) -> String {
    let mut cfg = format!(
        "load_module {NGINX_STREAM_MODULE};\ndaemon off;\nmaster_process on;\nworker_processes 2;\n\
         worker_rlimit_nofile 18000;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{\n    worker_connections 8000;\n}}\n\nstream {{\n"
    );
    for (name, port, pools) in [
        ("web", VIP_HTTP_PORT, http),
        ("bulk", BULK_PORT, bulk),
        ("udp", UDP_PORT, udp),
    ] {
        cfg += &format!("    upstream {name} {{\n");
        for (addr, weight) in pools.weights() {
            // nginx has no weight 0: a backend without a share is `down`.
            match weight {
                0 => cfg += &format!("        server {addr} down;\n"),
                w => cfg += &format!("        server {addr} weight={w};\n"),
            }
        }
        let (listen, udp_only) = match name {
            "udp" => (" udp", "        proxy_responses 1;\n        proxy_timeout 2s;\n"),
            _ => ("", ""),
        };
        cfg += &format!(
            "    }}\n    server {{\n        listen {}{listen};\n        proxy_pass {name};\n{udp_only}    }}\n",
            SocketAddr::new(vip, port)
        );
    }
    cfg + "}\n"
}

fn start_nginx(lb: &NetNs, vip: IpAddr, pools: (&Pools, &Pools, &Pools)) -> Running {
    let dir = ScratchDir::new("nginx");
    let d = dir.0.to_string_lossy().into_owned();
    let cfg = dir.write("nginx.conf", &nginx_config(vip, pools, &d));
    let log = dir.0.join("nginx.log");
    let args = ["-e", &format!("{d}/error.log"), "-p", &d, "-c", &cfg.to_string_lossy()];
    let child = ChildGuard::spawn_in(lb, "nginx", "nginx", &args, &log);
    Running {
        udp: Some(SocketAddr::new(vip, UDP_PORT)),
        ..proxy_running(vip, child, dir)
    }
}

// --- nftables DNAT -------------------------------------------------------------

/// `numgen random mod TOTAL` ranges, one per backend with a non-zero weight:
/// a backend of weight w owns w consecutive values.
pub fn numgen_ranges(weights: &[(SocketAddr, u32)]) -> (u32, Vec<(u32, u32, SocketAddr)>) {
    let mut next = 0;
    let mut ranges = Vec::new();
    for &(addr, weight) in weights.iter().filter(|w| w.1 > 0) {
        ranges.push((next, next + weight - 1, addr));
        next += weight;
    }
    (next, ranges)
}

/// Kernel NAT: DNAT new connections (and new UDP flows, by conntrack) to a
/// backend picked by weighted `numgen`, and SNAT them to the LB's address so
/// replies come back through it (one-arm, like the others' full NAT). The
/// table is of the VIP's family (`ip` or `ip6`).
pub fn nft_ruleset(vip: IpAddr, snat: IpAddr, http: &Pools, bulk: &Pools, udp: &Pools) -> String {
    let ip = if vip.is_ipv4() { "ip" } else { "ip6" };
    let mut rules = format!(
        "table {ip} bglb_bench {{\n    chain prerouting {{\n        \
         type nat hook prerouting priority dstnat; policy accept;\n"
    );
    for (proto, port, pools) in [
        ("tcp", VIP_HTTP_PORT, http),
        ("tcp", BULK_PORT, bulk),
        ("udp", UDP_PORT, udp),
    ] {
        let (total, ranges) = numgen_ranges(&pools.weights());
        let map: Vec<String> = ranges
            .iter()
            .map(|(lo, hi, addr)| match lo == hi {
                true => format!("{lo} : {} . {}", addr.ip(), addr.port()),
                false => format!("{lo}-{hi} : {} . {}", addr.ip(), addr.port()),
            })
            .collect();
        rules += &format!(
            "        {ip} daddr {vip} {proto} dport {port} dnat {ip} addr . port to numgen random mod {total} map {{ {} }}\n",
            map.join(", ")
        );
    }
    rules += &format!(
        "    }}\n    chain postrouting {{\n        type nat hook postrouting priority srcnat; policy accept;\n        \
         ct status dnat snat to {snat}\n    }}\n}}\n"
    );
    rules
}

fn start_nftables(lb: &NetNs, (vip, snat): (IpAddr, IpAddr), http: &Pools, bulk: &Pools, udp: &Pools) -> Running {
    // Forward what DNAT sends back out of eth0, and do not tell the client
    // about a "better route" to the backend (one-arm redirects; IPv6 has no
    // switch for them, and the client only learns a route to the backend,
    // which its connections to the VIP never use).
    let settings: &[&str] = if vip.is_ipv4() {
        &[
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.eth0.send_redirects=0",
        ]
    } else {
        &["net.ipv6.conf.all.forwarding=1"]
    };
    for setting in settings {
        lb.sysctl(setting);
    }
    let dir = ScratchDir::new("nft");
    load_nft(lb, &dir, &nft_ruleset(vip, snat, http, bulk, udp));
    // The rules live in the LB namespace and vanish with it.
    Running {
        http: SocketAddr::new(vip, VIP_HTTP_PORT),
        bulk: SocketAddr::new(vip, BULK_PORT),
        udp: Some(SocketAddr::new(vip, UDP_PORT)),
        guard: Guard::Nothing,
        _dir: Some(dir),
    }
}

/// Loads the nftables `ruleset` in `ns` (it vanishes with the namespace),
/// through a file in `dir`.
fn load_nft(ns: &NetNs, dir: &ScratchDir, ruleset: &str) {
    let rules = dir.write("rules.nft", ruleset);
    let args = [
        format!("--net=/run/netns/{}", ns.name),
        "nft".to_owned(),
        "-f".to_owned(),
        rules.to_string_lossy().into_owned(),
    ];
    procs::output("nsenter", &args, Duration::from_secs(10)).unwrap_or_else(|e| panic!("nft in {}: {e}", ns.name));
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn pools(port: u16) -> Pools {
        let addr = |last| SocketAddr::new(Ipv4Addr::new(10, 99, 0, last).into(), port);
        Pools {
            blue: vec![addr(11), addr(12)],
            green: vec![addr(13), addr(14)],
            blue_percent: 50,
        }
    }

    const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 99, 0, 100));
    const LB_ADDR: IpAddr = IpAddr::V4(crate::topology::LB_ADDR);
    const PATHS: &str = PARSE_ONLY_PATHS;

    /// The bench's three services (port 80, 5201 and UDP 5353 pools) in one
    /// forwarding mode.
    fn bench_toml(forwarding: Forwarding, xdp_mode: &str, paths: &str) -> String {
        bg_lb_config(
            VIP,
            LB_ADDR,
            (&pools(8080), &pools(5201), Some(&pools(5353))),
            (forwarding, xdp_mode),
            paths,
        )
    }

    #[test]
    fn numgen_ranges_give_each_backend_as_many_values_as_its_weight() {
        let p = pools(80);
        let weights = [(p.blue[0], 3), (p.blue[1], 0), (p.green[0], 1), (p.green[1], 2)];
        let (total, ranges) = numgen_ranges(&weights);
        assert_eq!(total, 6);
        assert_eq!(ranges, [(0, 2, p.blue[0]), (3, 3, p.green[0]), (4, 5, p.green[1])]);
    }

    #[test]
    fn nft_rules_dnat_every_service_over_all_backends_and_snat_replies_through_the_lb() {
        let rules = nft_ruleset(VIP, LB_ADDR, &pools(8080), &pools(5201), &pools(5353));
        assert!(rules.contains(
            "ip daddr 10.99.0.100 udp dport 5353 dnat ip addr . port to numgen random mod 4 map \
             { 0 : 10.99.0.11 . 5353, 1 : 10.99.0.12 . 5353, 2 : 10.99.0.13 . 5353, 3 : 10.99.0.14 . 5353 }"
        ));
        assert!(rules.contains(
            "ip daddr 10.99.0.100 tcp dport 80 dnat ip addr . port to numgen random mod 4 map \
             { 0 : 10.99.0.11 . 8080, 1 : 10.99.0.12 . 8080, 2 : 10.99.0.13 . 8080, 3 : 10.99.0.14 . 8080 }"
        ));
        assert!(rules.contains("tcp dport 5201 dnat"));
        assert!(rules.contains("ct status dnat snat to 10.99.0.1"));
    }

    #[test]
    fn haproxy_balances_round_robin_with_the_split_as_weights() {
        let cfg = haproxy_config(VIP, &pools(8080), &pools(5201));
        assert!(cfg.contains("mode tcp"));
        assert!(cfg.contains("bind 10.99.0.100:80"));
        assert!(cfg.contains("bind 10.99.0.100:5201"));
        assert_eq!(cfg.matches("balance roundrobin").count(), 2);
        assert!(cfg.contains("server s3 10.99.0.14:8080 weight 1"));
    }

    #[test]
    fn nginx_marks_zero_share_backends_down() {
        let mut http = pools(8080);
        http.blue_percent = 100;
        let cfg = nginx_config(VIP, (&http, &pools(5201), &pools(5353)), "/tmp/x");
        assert!(cfg.contains("server 10.99.0.11:8080 weight=1;"));
        assert!(cfg.contains("server 10.99.0.13:8080 down;"));
        assert!(cfg.contains("listen 10.99.0.100:5201;"));
        assert!(cfg.contains("listen 10.99.0.100:5353 udp;\n        proxy_pass udp;\n        proxy_responses 1;"));
        assert!(cfg.contains("load_module /usr/lib/nginx/modules/ngx_stream_module.so;"));
    }

    #[test]
    fn bg_lb_config_has_every_service_with_the_ratio_and_every_backend() {
        let toml = bench_toml(Forwarding::FullNat, "native", "pin_dir = \"/x\"\n");
        let without_udp = bg_lb_config(
            VIP,
            LB_ADDR,
            (&pools(8080), &pools(5201), None),
            (Forwarding::FullNat, "native"),
            "",
        );
        assert!(!without_udp.contains("5353"));
        assert!(toml.contains("vip = \"10.99.0.100:80\"\nratio = \"50:50\""));
        assert!(toml.contains("vip = \"10.99.0.100:5201\""));
        assert_eq!(toml.matches("[[service.backend]]").count(), 12);
        assert!(toml.contains("vip = \"10.99.0.100:5353\""));
        assert!(toml.contains("pool = \"green\"\naddress = \"10.99.0.14:5353\""));
        assert!(toml.contains("pool = \"green\"\naddress = \"10.99.0.14:5201\""));
        let toml = bench_toml(Forwarding::FullNat, "native", PATHS);
        bg_lb::config::parse(std::path::Path::new("bench.toml"), &toml).expect("bg-lb accepts the bench config");
    }

    #[test]
    fn bg_lb_contenders_in_gateway_and_dsr_modes_have_configs_bg_lb_accepts() {
        for contender in [Contender::BgLbGateway, Contender::BgLbDsr] {
            let forwarding = contender.forwarding();
            let toml = bench_toml(forwarding, contender.xdp_mode(), PATHS);
            assert_eq!(toml.matches(&format!("forwarding = \"{forwarding}\"")).count(), 3);
            let config = bg_lb::config::parse(std::path::Path::new("bench.toml"), &toml)
                .unwrap_or_else(|e| panic!("{forwarding}: {e}"));
            assert!(config.services.iter().all(|s| s.forwarding == forwarding));
        }
        let dsr = bench_toml(Forwarding::Dsr, "native", PATHS);
        assert!(dsr.contains("vip = \"10.99.0.100:8080\""), "dsr keeps the port");
    }

    #[test]
    fn bg_lb_bench_config_keeps_the_example_configs_ports_timeouts_and_flow_table() {
        let example_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bg-lb.toml");
        let example = bg_lb::config::parse(&example_path, &fs::read_to_string(&example_path).unwrap()).unwrap();
        let toml = bench_toml(Forwarding::FullNat, "native", PATHS);
        let bench = bg_lb::config::parse(std::path::Path::new("bench.toml"), &toml).unwrap();
        assert_eq!(bench.snat_ports, example.snat_ports);
        assert_eq!(bench.timeouts, example.timeouts);
        assert_eq!(bench.max_flows, example.max_flows);
        assert_eq!(bench.lookup_capacity, example.lookup_capacity);
    }

    fn pools6(port: u16) -> Pools {
        let addr = |last| SocketAddr::new(Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, last).into(), port);
        Pools {
            blue: vec![addr(0x11), addr(0x12)],
            green: vec![addr(0x13), addr(0x14)],
            blue_percent: 50,
        }
    }

    const VIP6: IpAddr = IpAddr::V6(crate::topology::VIP_ADDR6);
    const LB_ADDR6: IpAddr = IpAddr::V6(crate::topology::LB_ADDR6);

    #[test]
    fn over_ipv6_every_contender_is_configured_with_bracketed_ipv6_addresses_and_nftables_uses_ip6() {
        let rules = nft_ruleset(VIP6, LB_ADDR6, &pools6(8080), &pools6(5201), &pools6(5353));
        assert!(rules.starts_with("table ip6 bglb_bench {"), "{rules}");
        assert!(rules.contains(
            "ip6 daddr fd00:99::100 tcp dport 80 dnat ip6 addr . port to numgen random mod 4 map \
             { 0 : fd00:99::11 . 8080, 1 : fd00:99::12 . 8080, 2 : fd00:99::13 . 8080, 3 : fd00:99::14 . 8080 }"
        ));
        assert!(rules.contains("ct status dnat snat to fd00:99::1\n"));
        let haproxy = haproxy_config(VIP6, &pools6(8080), &pools6(5201));
        assert!(haproxy.contains("bind [fd00:99::100]:80\n"));
        assert!(haproxy.contains("server s3 [fd00:99::14]:8080 weight 1"));
        let nginx = nginx_config(VIP6, (&pools6(8080), &pools6(5201), &pools6(5353)), "/tmp/x");
        assert!(nginx.contains("listen [fd00:99::100]:5353 udp;"));
        assert!(nginx.contains("server [fd00:99::11]:8080 weight=1;"));
        let toml = bg_lb_config(
            VIP6,
            LB_ADDR6,
            (&pools6(8080), &pools6(5201), Some(&pools6(5353))),
            (Forwarding::FullNat, "native"),
            PATHS,
        );
        assert!(toml.contains("snat_address = \"fd00:99::1\"\n"));
        assert!(toml.contains("vip = \"[fd00:99::100]:80\"\nratio = \"50:50\""));
        assert!(toml.contains("pool = \"green\"\naddress = \"[fd00:99::14]:5353\""));
    }
}
