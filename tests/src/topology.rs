//! Named network namespaces and the test topologies built from them: one-arm
//! (client, load balancer and backends on one L2 segment, a bridge in its
//! own namespace), two-arm, and a routed path with an MTU per link.
//! Hosts are connected by veth pairs. Everything is deleted on drop, even
//! when a test panics; names carry the test process's pid so parallel runs
//! never collide.

use std::{
    fs::File,
    net::Ipv4Addr,
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};
use bg_lb::dataplane::forwarding::Forwarding;
use nix::sched::{CloneFlags, setns};

use crate::cmd::{ifindex, ip, run};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A named namespace (`ip netns add`), removed on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(role: &str) -> Self {
        let name = format!(
            "bglb{}-{}-{role}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&format!("netns add {name}"));
        let ns = NetNs { name };
        ns.ip("link set lo up");
        ns
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &str) -> String {
        ip(&format!("-n {} {args}", self.name))
    }

    /// The MAC address of `iface`.
    pub fn mac(&self, iface: &str) -> String {
        let links: serde_json::Value =
            serde_json::from_str(&self.ip(&format!("-j link show dev {iface}"))).expect("ip -j output");
        links[0]["address"].as_str().expect("a MAC address").to_owned()
    }

    /// `sysctl -w KEY=VALUE` inside this namespace.
    pub fn sysctl(&self, setting: &str) {
        run("ip", &["netns", "exec", &self.name, "sysctl", "-qw", setting]);
    }

    /// Hands each flow arriving on `iface` to one CPU, chosen by a hash of
    /// its addresses and ports (RPS over every CPU), as a NIC's RSS does.
    ///
    /// A veth delivers a frame on the CPU that sent it, so two segments of
    /// one connection sent from two CPUs (a client's handshake ACK from its
    /// softirq and its first data from its thread) are processed at once.
    /// Linux then races on the passive side: while one CPU swaps the
    /// request socket for the new socket in its lookup table
    /// (`inet_ehash_insert`: delete, then insert), the other finds neither,
    /// falls back to the listener, and sends a RST for the new connection
    /// (upstream commit 1532ed0d0753, "inet: Avoid ehash lookup race in
    /// inet_ehash_insert()"). A NIC's RSS keeps a flow on one queue and CPU,
    /// so that race needs the veth.
    pub fn steer_flows_like_rss(&self, iface: &str) {
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        let mask = cpu_mask(cpus);
        self.sh(&format!("echo {mask} > /sys/class/net/{iface}/queues/rx-0/rps_cpus"));
    }

    /// Runs `script` with `sh -c` inside this namespace; `ip netns exec`
    /// mounts the namespace's own sysfs, so /sys/class/net is its own.
    pub fn sh(&self, script: &str) {
        run("ip", &["netns", "exec", &self.name, "sh", "-c", script]);
    }

    /// Runs `f` on a new thread inside this namespace. Sockets it creates
    /// stay in the namespace whatever thread uses them later.
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
            f()
        })
    }

    /// Like [`NetNs::spawn`], waiting for the result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// The CPU mask of CPUs `0..cpus` as sysfs takes it: hex words of 32 bits,
/// comma-separated, the highest first.
fn cpu_mask(cpus: usize) -> String {
    mask_words(cpus.div_ceil(32), |w| {
        let bits = (cpus - w * 32).min(32);
        (u64::MAX >> (64 - bits)) as u32
    })
}

/// The CPU mask of CPU `cpu` alone, as [`cpu_mask`] writes masks.
fn cpu_mask_of(cpu: usize) -> String {
    mask_words(cpu / 32 + 1, |w| if w == cpu / 32 { 1 << (cpu % 32) } else { 0 })
}

/// `words` hex words of 32 bits, comma-separated, the highest first.
fn mask_words(words: usize, word: impl Fn(usize) -> u32) -> String {
    let words: Vec<String> = (0..words).rev().map(|w| format!("{:08x}", word(w))).collect();
    words.join(",")
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace removes its interfaces and their peers.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// One host on the segment: its namespace and address (on `eth0`).
pub struct Host {
    pub ns: NetNs,
    pub addr: Ipv4Addr,
}

impl Host {
    /// Sets a backend up for `forwarding` as the README's "Forwarding
    /// modes" says, in its own namespace only: under `gateway` its replies
    /// to `client` go through the LB at `lb` (on one segment, a host route:
    /// the connected route would win over a default route); under `dsr` it
    /// holds the `vips` on its loopback and never answers ARP for them.
    pub fn serve_for(&self, forwarding: Forwarding, lb: Ipv4Addr, client: Ipv4Addr, vips: &[Ipv4Addr]) {
        match forwarding {
            Forwarding::FullNat => {}
            Forwarding::Gateway => {
                self.ns.ip(&format!("route add {client}/32 via {lb} dev eth0"));
            }
            Forwarding::Dsr => {
                // On the loopback: this kernel has no dummy interfaces, and
                // the README gives both.
                for vip in vips {
                    self.ns.ip(&format!("addr add {vip}/32 dev lo"));
                }
                for setting in [
                    "net.ipv4.conf.all.arp_ignore=1",
                    "net.ipv4.conf.all.arp_announce=2",
                    "net.ipv4.conf.eth0.arp_ignore=1",
                    "net.ipv4.conf.eth0.arp_announce=2",
                ] {
                    self.ns.sysctl(setting);
                }
            }
        }
    }
}

/// `10.99.0.0/24` on a bridge: the LB is .1 (also the SNAT address), the
/// client .2, backends from .11; the VIP is an extra address on the LB so
/// its kernel answers ARP for it (and learns the client's MAC on the way).
pub struct OneArm {
    pub switch: NetNs,
    pub lb: Host,
    pub client: Host,
    pub backends: Vec<Host>,
    pub vip: Ipv4Addr,
}

pub const LB_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
pub const VIP_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);
/// Where [`OneArm::add_clients`] puts more client addresses.
const CLIENTS_NET: &str = "10.99.1.0/24";
/// A second VIP address, for a standby VIP that must keep the live VIP's
/// port (`dsr`).
pub const STANDBY_VIP_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 101);
/// The switch-side port of the LB's veth: native XDP_TX frames only reach a
/// veth peer that runs an XDP program, so tests attach `xdp_pass` here.
pub const LB_SWITCH_PORT: &str = "p-lb";

impl OneArm {
    pub fn new(backends: usize) -> Self {
        Self::with_lb_queues(backends, 1)
    }

    /// A topology whose LB link has one queue per CPU, the switch sending
    /// each CPU's frames to that CPU's queue (XPS), as a multi-queue NIC
    /// spreads its load over the CPUs. With one queue every frame to the LB
    /// shares one ring (256 frames) whatever CPU sent it, and an XDP program
    /// runs behind that ring alone; the kernel's own receive path (every
    /// contender without XDP) has a backlog per CPU. So a flood one client
    /// thread sends would crowd out another thread's connections only in
    /// front of XDP.
    pub fn with_lb_queue_per_cpu(backends: usize) -> Self {
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        let topo = Self::with_lb_queues(backends, cpus);
        for cpu in 0..cpus {
            let mask = cpu_mask_of(cpu);
            topo.switch.sh(&format!(
                "echo {mask} > /sys/class/net/{LB_SWITCH_PORT}/queues/tx-{cpu}/xps_cpus"
            ));
        }
        topo
    }

    fn with_lb_queues(backends: usize, queues: usize) -> Self {
        let switch = NetNs::new("sw");
        switch.ip("link add br0 type bridge");
        switch.ip("link set br0 up");
        let lb = Self::host(&switch, "lb", LB_SWITCH_PORT, LB_ADDR, queues);
        lb.ns.ip(&format!("addr add {VIP_ADDR}/32 dev eth0"));
        let client = Self::host(&switch, "client", "p-client", CLIENT_ADDR, 1);
        let backends = (0..backends)
            .map(|i| {
                Self::host(
                    &switch,
                    &format!("b{i}"),
                    &format!("p-b{i}"),
                    Ipv4Addr::new(10, 99, 0, 11 + i as u8),
                    1,
                )
            })
            .collect();
        OneArm {
            switch,
            lb,
            client,
            backends,
            vip: VIP_ADDR,
        }
    }

    /// `n` more client addresses, 10.99.1.1 on, each a /32 on the client's
    /// eth0, for tests and the demo that need many distinct clients (client
    /// affinity). The LB routes them through the client's main address, whose
    /// MAC it is given; backends that answer clients themselves (`gateway`
    /// through the LB, `dsr` straight) get the same route as for that address.
    pub fn add_clients(&self, n: u8, forwarding: Forwarding) -> Vec<Ipv4Addr> {
        // The client's ARP for the VIP asks from its main address, whatever
        // address the connection is bound to.
        self.client.ns.sysctl("net.ipv4.conf.all.arp_announce=2");
        self.client.ns.sysctl("net.ipv4.conf.eth0.arp_announce=2");
        let addrs: Vec<Ipv4Addr> = (1..=n).map(|i| Ipv4Addr::new(10, 99, 1, i)).collect();
        for addr in &addrs {
            self.client.ns.ip(&format!("addr add {addr}/32 dev eth0"));
        }
        let mac = self.client.ns.mac("eth0");
        self.lb.ns.ip(&format!(
            "neigh replace {CLIENT_ADDR} lladdr {mac} dev eth0 nud permanent"
        ));
        self.lb.ns.ip(&format!("route add {CLIENTS_NET} via {CLIENT_ADDR}"));
        let via = match forwarding {
            Forwarding::FullNat => None,
            Forwarding::Gateway => Some(LB_ADDR),
            Forwarding::Dsr => Some(CLIENT_ADDR),
        };
        if let Some(via) = via {
            for backend in &self.backends {
                backend.ns.ip(&format!("route add {CLIENTS_NET} via {via} dev eth0"));
            }
        }
        addrs
    }

    /// Every namespace of the topology.
    pub fn namespaces(&self) -> impl Iterator<Item = &NetNs> {
        [&self.switch, &self.lb.ns, &self.client.ns]
            .into_iter()
            .chain(self.backends.iter().map(|b| &b.ns))
    }

    /// Attaches `xdp_pass` (native mode) to the switch side of the LB's veth
    /// so frames the LB sends with XDP_TX are delivered. Keep the returned
    /// object alive: dropping it detaches the program.
    pub fn pass_lb_frames_to_switch(&self) -> Ebpf {
        attach_xdp_pass(&self.switch, LB_SWITCH_PORT)
    }

    fn host(switch: &NetNs, role: &str, port: &str, addr: Ipv4Addr, queues: usize) -> Host {
        let ns = NetNs::new(role);
        // A veth takes XDP only with at least as many receive queues as its
        // peer has transmit queues: the same count on both ends.
        let q = format!("numtxqueues {queues} numrxqueues {queues}");
        ip(&format!(
            "link add {port} netns {} {q} type veth peer name eth0 netns {} {q}",
            switch.name, ns.name
        ));
        switch.ip(&format!("link set {port} master br0"));
        switch.ip(&format!("link set {port} up"));
        configure_eth0(&ns, addr);
        Host { ns, addr }
    }
}

/// Gives a host's `eth0` its address and brings it up.
fn configure_eth0(ns: &NetNs, addr: Ipv4Addr) {
    ns.ip(&format!("addr add {addr}/24 dev eth0"));
    ns.ip("link set eth0 up");
    checksums_in_software(ns, "eth0");
}

/// A veth leaves TCP checksums to "hardware" (CHECKSUM_PARTIAL); a frame the
/// LB sends with XDP_TX/REDIRECT loses that mark and arrives with a
/// half-computed checksum. Real NICs hand XDP complete checksums, so make
/// the test hosts (and routers, which segment what GRO merged) compute them
/// in software.
pub fn checksums_in_software(ns: &NetNs, iface: &str) {
    run("ip", &["netns", "exec", &ns.name, "ethtool", "-K", iface, "tx", "off"]);
}

/// Attaches `xdp_pass` in native mode to `iface` in `ns`. Keep the returned
/// object alive: dropping it detaches the program.
pub fn attach_xdp_pass(ns: &NetNs, iface: &'static str) -> Ebpf {
    ns.run(move || {
        let mut ebpf = Ebpf::load(bg_lb::ebpf_objects::aux()).expect("load aux object");
        let prog: &mut Xdp = ebpf
            .program_mut("xdp_pass")
            .expect("xdp_pass")
            .try_into()
            .expect("XDP program");
        prog.load().expect("load xdp_pass");
        prog.attach_to_if_index(ifindex(iface), XdpMode::Driver)
            .expect("attach xdp_pass");
        ebpf
    })
}

/// Two-arm: the client is wired straight to the LB's `front` (10.98.1.0/24,
/// VIP on `front`); backends sit on a bridge behind the LB's `back`
/// (10.98.2.0/24, the SNAT address is the LB's back address). Packets cross
/// the LB by XDP_REDIRECT between the two interfaces.
pub struct TwoArm {
    pub switch: NetNs,
    pub lb: NetNs,
    pub client: Host,
    pub backends: Vec<Host>,
    pub vip: Ipv4Addr,
    pub snat: Ipv4Addr,
}

impl TwoArm {
    pub fn new(backends: usize) -> Self {
        let lb = NetNs::new("lb2");
        let client_ns = NetNs::new("client2");
        ip(&format!(
            "link add front netns {} type veth peer name eth0 netns {}",
            lb.name, client_ns.name
        ));
        lb.ip("addr add 10.98.1.1/24 dev front");
        lb.ip(&format!("addr add {TWO_ARM_VIP}/32 dev front"));
        lb.ip("link set front up");
        let client = Ipv4Addr::new(10, 98, 1, 2);
        configure_eth0(&client_ns, client);

        let switch = NetNs::new("sw2");
        switch.ip("link add br0 type bridge");
        switch.ip("link set br0 up");
        ip(&format!(
            "link add p-back netns {} type veth peer name back netns {}",
            switch.name, lb.name
        ));
        switch.ip("link set p-back master br0");
        switch.ip("link set p-back up");
        lb.ip("addr add 10.98.2.1/24 dev back");
        lb.ip("link set back up");
        let backends = (0..backends)
            .map(|i| {
                let addr = Ipv4Addr::new(10, 98, 2, 11 + i as u8);
                OneArm::host(&switch, &format!("b{i}"), &format!("p-b{i}"), addr, 1)
            })
            .collect();
        TwoArm {
            switch,
            lb,
            client: Host {
                ns: client_ns,
                addr: client,
            },
            backends,
            vip: TWO_ARM_VIP,
            snat: Ipv4Addr::new(10, 98, 2, 1),
        }
    }

    /// Native-mode redirects into a veth reach its peer only if the peer runs
    /// XDP: the client's `eth0` and the switch's `p-back` get `xdp_pass`.
    pub fn pass_lb_frames_to_peers(&self) -> [Ebpf; 2] {
        [
            attach_xdp_pass(&self.client.ns, "eth0"),
            attach_xdp_pass(&self.switch, "p-back"),
        ]
    }
}

pub const TWO_ARM_VIP: Ipv4Addr = Ipv4Addr::new(10, 98, 1, 100);

/// A routed line from one client to one backend through the LB, for PMTU
/// tests: client, routers, LB, routers, backend, each link a veth pair with
/// both ends at that link's MTU. Link `i` is `10.97.<i+1>.0/24`, its left
/// end `.1` and its right end `.2`; every host calls its interfaces `left`
/// (towards the client) and `right` (towards the backend). The VIP sits on
/// the LB's `left`, the SNAT address is the LB's `right` address.
pub struct RoutedPath {
    /// Client, routers, LB, routers, backend, in that order.
    hosts: Vec<NetNs>,
    lb_index: usize,
    pub vip: Ipv4Addr,
    pub snat: Ipv4Addr,
    pub client_addr: Ipv4Addr,
    pub backend_addr: Ipv4Addr,
}

impl RoutedPath {
    /// `client_side`: the MTUs of the links from the client to the LB, in
    /// order, with a router between each two; `backend_side`: of the links
    /// from the LB to the backend.
    pub fn new(client_side: &[u32], backend_side: &[u32]) -> Self {
        assert!(!client_side.is_empty() && !backend_side.is_empty());
        let lb_index = client_side.len();
        let links: Vec<u32> = client_side.iter().chain(backend_side).copied().collect();
        let hosts: Vec<NetNs> = (0..=links.len())
            .map(|i| {
                NetNs::new(match i {
                    0 => "client",
                    i if i == lb_index => "lb",
                    i if i == links.len() => "backend",
                    _ => "router",
                })
            })
            .collect();
        for (i, mtu) in links.iter().enumerate() {
            let (left, right) = (&hosts[i], &hosts[i + 1]);
            ip(&format!(
                "link add right netns {} mtu {mtu} type veth peer name left netns {} mtu {mtu}",
                left.name, right.name
            ));
            for (host, iface, addr) in [(left, "right", link_addr(i, 1)), (right, "left", link_addr(i, 2))] {
                host.ip(&format!("addr add {addr}/24 dev {iface}"));
                host.ip(&format!("link set {iface} up"));
                checksums_in_software(host, iface);
            }
        }
        // Every link not attached to a host is reached through the
        // neighbour on its side.
        for (k, host) in hosts.iter().enumerate() {
            for j in (0..links.len()).filter(|&j| j + 1 < k) {
                host.ip(&format!("route add {}/24 via {}", link_addr(j, 0), link_addr(k - 1, 1)));
            }
            for j in (0..links.len()).filter(|&j| j > k) {
                host.ip(&format!("route add {}/24 via {}", link_addr(j, 0), link_addr(k, 2)));
            }
            if k != 0 && k != links.len() {
                host.sysctl("net.ipv4.conf.all.forwarding=1");
            }
        }
        let vip = Ipv4Addr::new(10, 97, lb_index as u8, 100);
        hosts[lb_index].ip(&format!("addr add {vip}/32 dev left"));
        RoutedPath {
            snat: link_addr(lb_index, 1),
            client_addr: link_addr(0, 1),
            backend_addr: link_addr(links.len() - 1, 2),
            hosts,
            lb_index,
            vip,
        }
    }

    pub fn client(&self) -> &NetNs {
        &self.hosts[0]
    }

    pub fn lb(&self) -> &NetNs {
        &self.hosts[self.lb_index]
    }

    pub fn backend(&self) -> &NetNs {
        self.hosts.last().expect("a backend")
    }

    /// Native-mode XDP_TX/REDIRECT frames reach a veth peer only if the peer
    /// runs XDP: the LB's neighbours get `xdp_pass` on the links to it.
    pub fn pass_lb_frames_to_peers(&self) -> [Ebpf; 2] {
        [
            attach_xdp_pass(&self.hosts[self.lb_index - 1], "right"),
            attach_xdp_pass(&self.hosts[self.lb_index + 1], "left"),
        ]
    }
}

/// Address `host` (1: left end, 2: right end, 0: the network) on link `i`.
fn link_addr(i: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 97, i as u8 + 1, host)
}

#[cfg(test)]
mod tests {
    use super::{cpu_mask, cpu_mask_of};

    #[test]
    fn cpu_masks_are_32_bit_hex_words_highest_first() {
        assert_eq!(cpu_mask(1), "00000001");
        assert_eq!(cpu_mask(2), "00000003");
        assert_eq!(cpu_mask(32), "ffffffff");
        assert_eq!(cpu_mask(36), "0000000f,ffffffff");
    }

    #[test]
    fn a_single_cpu_mask_sets_only_that_cpus_bit() {
        assert_eq!(cpu_mask_of(0), "00000001");
        assert_eq!(cpu_mask_of(1), "00000002");
        assert_eq!(cpu_mask_of(33), "00000002,00000000");
    }
}
