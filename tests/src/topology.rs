//! Named network namespaces and the test topologies built from them: one-arm
//! (client, load balancer and backends on one L2 segment, a bridge in its
//! own namespace), two-arm, and a routed path with an MTU per link.
//! Hosts are connected by veth pairs. Everything is deleted on drop, even
//! when a test panics; names carry the test process's pid so parallel runs
//! never collide.
//!
//! Every topology is IPv4; `add_ipv6` makes one dual-stack, with a ULA plan
//! that mirrors the IPv4 one (10.99.0.X is fd00:99::X, 10.97.I.X is
//! fd00:97:I::X). That is opt-in: an IPv6 address joins a multicast group
//! and sends MLD reports and neighbour solicitations through the LB's XDP
//! program, which the IPv4 tests (counters, captures, the bench's CPU
//! accounting) should not see.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
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

    /// The MAC address of `iface`, as bytes.
    pub fn mac_bytes(&self, iface: &str) -> [u8; 6] {
        let text = self.mac(iface);
        let bytes: Vec<u8> = text
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).expect("hex"))
            .collect();
        bytes.try_into().unwrap_or_else(|_| panic!("not a MAC: {text}"))
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

    /// The drop and error counters of `iface` that are not zero (`ethtool
    /// -S`, which for a veth counts XDP_TX frames its peer's ring refused,
    /// and `ip -s link`): for a failing test's message, to tell frames the
    /// test bed lost from frames a program dropped.
    pub fn link_drops(&self, iface: &str) -> String {
        let ethtool: String = self
            .output_of(&["ethtool", "-S", iface])
            .lines()
            .filter(|l| (l.contains("drop") || l.contains("err") || l.contains("full")) && !l.ends_with(": 0"))
            .map(|l| format!("{}\n", l.trim()))
            .collect();
        format!(
            "{}: {ethtool}{}",
            self.name,
            self.output_of(&["ip", "-s", "link", "show", iface])
        )
    }

    /// What `command` printed inside this namespace, or why it could not
    /// run: for a failing test's message, so it never panics itself.
    pub fn output_of(&self, command: &[&str]) -> String {
        std::process::Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(command)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("{command:?}: {e}\n"))
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

/// An address family: what a lab, a workload or the demo runs over (the
/// daemon's own type, so the harness and bg-lb name families alike).
pub use bg_lb::family::Family;

/// One host on the segment: its namespace and addresses (on `eth0`); the
/// IPv6 one once the topology is dual-stack.
pub struct Host {
    pub ns: NetNs,
    pub addr: Ipv4Addr,
    pub addr6: Option<Ipv6Addr>,
}

impl Host {
    /// Its address of `family`; panics if the topology has no IPv6.
    pub fn addr_of(&self, family: Family) -> IpAddr {
        match family {
            Family::Ipv4 => self.addr.into(),
            Family::Ipv6 => self
                .addr6
                .unwrap_or_else(|| panic!("{} has no IPv6 address: the topology is IPv4 only", self.ns.name))
                .into(),
        }
    }

    /// Gives `eth0` the IPv6 address `addr` (/64), usable at once: no
    /// duplicate address detection, which would hold it back for a second
    /// or more (each namespace is its own world, so no duplicate can exist).
    fn add_ipv6(&mut self, addr: Ipv6Addr) {
        enable_ipv6(&self.ns, "eth0", addr, 64);
        self.addr6 = Some(addr);
    }

    /// Sets a backend up for `forwarding` as the README's "Forwarding
    /// modes" says, in its own namespace only: under `gateway` its replies
    /// to `client` go through the LB at `lb` (on one segment, a host route:
    /// the connected route would win over a default route); under `dsr` it
    /// holds the `vips` on its loopback and never answers ARP for them
    /// (nor neighbour solicitations: Linux answers those only for addresses
    /// of the interface they arrive on).
    pub fn serve_for(&self, forwarding: Forwarding, lb: IpAddr, client: IpAddr, vips: &[IpAddr]) {
        match forwarding {
            Forwarding::FullNat => {}
            Forwarding::Gateway => {
                self.ns
                    .ip(&format!("route add {client}/{} via {lb} dev eth0", host_prefix(client)));
            }
            Forwarding::Dsr => {
                // On the loopback: this kernel has no dummy interfaces, and
                // the README gives both.
                for &vip in vips {
                    add_host_addr(&self.ns, "lo", vip);
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
    /// The IPv6 VIP, once [`OneArm::add_ipv6`] made the segment dual-stack.
    pub vip6: Option<Ipv6Addr>,
}

pub const LB_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
pub const VIP_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);
/// Where [`OneArm::add_clients`] puts more client addresses.
const CLIENTS_NET: &str = "10.99.1.0/24";
/// A second VIP address, for a standby VIP that must keep the live VIP's
/// port (`dsr`).
pub const STANDBY_VIP_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 101);
/// The IPv6 plan of the one-arm segment, `fd00:99::/64`, mirroring the IPv4
/// one: the LB (and SNAT address) `::1`, the client `::2`, backends from
/// `::11`, the VIP `::100`, the standby VIP `::101`.
pub const NET6: &str = "fd00:99::/64";
pub const LB_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);
pub const CLIENT_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2);
pub const VIP_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 0x100);
pub const STANDBY_VIP_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 0x101);
/// Where [`OneArm::add_clients`] puts more IPv6 client addresses.
const CLIENTS_NET6: &str = "fd00:99:1::/64";

/// The LB's address of `family` on the one-arm segment (also its SNAT
/// address).
pub fn lb_addr(family: Family) -> IpAddr {
    match family {
        Family::Ipv4 => LB_ADDR.into(),
        Family::Ipv6 => LB_ADDR6.into(),
    }
}

/// The client's main address of `family` on the one-arm segment.
pub fn client_addr(family: Family) -> IpAddr {
    match family {
        Family::Ipv4 => CLIENT_ADDR.into(),
        Family::Ipv6 => CLIENT_ADDR6.into(),
    }
}

/// The standby VIP address of `family` on the one-arm segment.
pub fn standby_vip_addr(family: Family) -> IpAddr {
    match family {
        Family::Ipv4 => STANDBY_VIP_ADDR.into(),
        Family::Ipv6 => STANDBY_VIP_ADDR6.into(),
    }
}

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
            vip6: None,
        }
    }

    /// Makes the segment dual-stack: every host's `eth0` gets its address
    /// of the IPv6 plan ([`NET6`]), the LB the IPv6 VIP too. Neighbour
    /// discovery needs no more: it is multicast on the bridge, and any XDP
    /// program on the LB that passes what is not its own lets it through.
    pub fn add_ipv6(&mut self) -> &mut Self {
        // The bridge would otherwise learn from MLD reports which ports want
        // which solicited-node group, and nothing here sends MLD queries to
        // keep that up to date: flood multicast, as a plain switch does.
        self.switch.ip("link set br0 type bridge mcast_snooping 0");
        self.lb.add_ipv6(LB_ADDR6);
        add_host_addr(&self.lb.ns, "eth0", VIP_ADDR6.into());
        self.client.add_ipv6(CLIENT_ADDR6);
        for (i, backend) in self.backends.iter_mut().enumerate() {
            backend.add_ipv6(Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 0x11 + i as u16));
        }
        self.vip6 = Some(VIP_ADDR6);
        self
    }

    /// The VIP address of `family`; panics if the segment has no IPv6.
    pub fn vip_of(&self, family: Family) -> IpAddr {
        match family {
            Family::Ipv4 => self.vip.into(),
            Family::Ipv6 => self
                .vip6
                .expect("the topology is IPv4 only: call OneArm::add_ipv6")
                .into(),
        }
    }

    /// `n` more client addresses of `family`, 10.99.1.1 or fd00:99:1::1 on,
    /// each a host address on the client's eth0, for tests and the demo that
    /// need many distinct clients (client affinity). The LB routes them
    /// through the client's main address, whose MAC it is given; backends
    /// that answer clients themselves (`gateway` through the LB, `dsr`
    /// straight) get the same route as for that address.
    pub fn add_clients(&self, family: Family, n: u8, forwarding: Forwarding) -> Vec<IpAddr> {
        let net = match family {
            Family::Ipv4 => {
                // The client's ARP for the VIP asks from its main address,
                // whatever address the connection is bound to.
                self.client.ns.sysctl("net.ipv4.conf.all.arp_announce=2");
                self.client.ns.sysctl("net.ipv4.conf.eth0.arp_announce=2");
                CLIENTS_NET
            }
            Family::Ipv6 => CLIENTS_NET6,
        };
        let addrs: Vec<IpAddr> = (1..=n)
            .map(|i| match family {
                Family::Ipv4 => Ipv4Addr::new(10, 99, 1, i).into(),
                Family::Ipv6 => Ipv6Addr::new(0xfd00, 0x99, 1, 0, 0, 0, 0, i.into()).into(),
            })
            .collect();
        for &addr in &addrs {
            add_host_addr(&self.client.ns, "eth0", addr);
        }
        let client = self.client.addr_of(family);
        let mac = self.client.ns.mac("eth0");
        self.lb
            .ns
            .ip(&format!("neigh replace {client} lladdr {mac} dev eth0 nud permanent"));
        self.lb.ns.ip(&format!("route add {net} via {client}"));
        let via = match forwarding {
            Forwarding::FullNat => None,
            Forwarding::Gateway => Some(self.lb.addr_of(family)),
            Forwarding::Dsr => Some(client),
        };
        if let Some(via) = via {
            for backend in &self.backends {
                backend.ns.ip(&format!("route add {net} via {via} dev eth0"));
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
        Host { ns, addr, addr6: None }
    }
}

/// Gives `iface` in `ns` its first IPv6 address, `addr/prefix`, usable at
/// once: no duplicate address detection (each namespace is a world of its
/// own, so no duplicate can exist), which would hold it back for a second
/// or more. `accept_dad=0` covers what the kernel configures by itself
/// afterwards; `nodad` this address.
pub(crate) fn enable_ipv6(ns: &NetNs, iface: &str, addr: Ipv6Addr, prefix: u8) {
    ns.sysctl(&format!("net.ipv6.conf.{iface}.accept_dad=0"));
    add_ipv6_addr(ns, iface, addr, prefix);
}

/// Adds `addr/prefix` to `iface` in `ns` without duplicate address
/// detection.
fn add_ipv6_addr(ns: &NetNs, iface: &str, addr: Ipv6Addr, prefix: u8) {
    ns.ip(&format!("addr add {addr}/{prefix} dev {iface} nodad"));
}

/// Adds `addr` as a host address (/32, /128) to `iface` in `ns`: a VIP, a
/// SNAT address, a client address.
pub fn add_host_addr(ns: &NetNs, iface: &str, addr: IpAddr) {
    match addr {
        IpAddr::V4(v4) => {
            ns.ip(&format!("addr add {v4}/32 dev {iface}"));
        }
        IpAddr::V6(v6) => add_ipv6_addr(ns, iface, v6, 128),
    }
}

/// The prefix length of a host route to `addr`.
fn host_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
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
    /// The IPv6 VIP and SNAT address, once [`TwoArm::add_ipv6`] made it
    /// dual-stack.
    pub vip6: Option<Ipv6Addr>,
    pub snat6: Option<Ipv6Addr>,
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
                addr6: None,
            },
            backends,
            vip: TWO_ARM_VIP,
            snat: Ipv4Addr::new(10, 98, 2, 1),
            vip6: None,
            snat6: None,
        }
    }

    /// Makes both arms dual-stack, mirroring the IPv4 plan: the front
    /// `fd00:98:1::/64` (LB `::1`, client `::2`, VIP `::100`), the back
    /// `fd00:98:2::/64` (LB `::1`, the SNAT address, backends from `::11`).
    pub fn add_ipv6(&mut self) -> &mut Self {
        let addr = |arm: u16, host: u16| Ipv6Addr::new(0xfd00, 0x98, arm, 0, 0, 0, 0, host);
        self.switch.ip("link set br0 type bridge mcast_snooping 0");
        enable_ipv6(&self.lb, "front", addr(1, 1), 64);
        add_host_addr(&self.lb, "front", TWO_ARM_VIP6.into());
        enable_ipv6(&self.lb, "back", addr(2, 1), 64);
        self.client.add_ipv6(addr(1, 2));
        for (i, backend) in self.backends.iter_mut().enumerate() {
            backend.add_ipv6(addr(2, 0x11 + i as u16));
        }
        self.vip6 = Some(TWO_ARM_VIP6);
        self.snat6 = Some(addr(2, 1));
        self
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
pub const TWO_ARM_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x98, 1, 0, 0, 0, 0, 0x100);

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
    /// The IPv6 plan's addresses, once [`RoutedPath::add_ipv6`] made the
    /// path dual-stack.
    pub ipv6: Option<RoutedPathIpv6>,
}

/// The IPv6 addresses of a dual-stack [`RoutedPath`].
#[derive(Clone, Copy, Debug)]
pub struct RoutedPathIpv6 {
    pub vip: Ipv6Addr,
    pub snat: Ipv6Addr,
    pub client_addr: Ipv6Addr,
    pub backend_addr: Ipv6Addr,
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
            ipv6: None,
        }
    }

    /// Makes the path dual-stack: link `i` is `fd00:97:<i+1>::/64`, its ends
    /// `::1` and `::2`, with the same routes and forwarding as IPv4; the
    /// IPv6 VIP is `fd00:97:<lb>::100` on the LB's `left`.
    pub fn add_ipv6(&mut self) -> &mut Self {
        let links = self.hosts.len() - 1;
        for i in 0..links {
            let (left, right) = (&self.hosts[i], &self.hosts[i + 1]);
            for (host, iface, addr) in [(left, "right", link_addr6(i, 1)), (right, "left", link_addr6(i, 2))] {
                enable_ipv6(host, iface, addr, 64);
            }
        }
        for (k, host) in self.hosts.iter().enumerate() {
            for j in (0..links).filter(|&j| j + 1 < k) {
                host.ip(&format!(
                    "-6 route add {}/64 via {}",
                    link_addr6(j, 0),
                    link_addr6(k - 1, 1)
                ));
            }
            for j in (0..links).filter(|&j| j > k) {
                host.ip(&format!(
                    "-6 route add {}/64 via {}",
                    link_addr6(j, 0),
                    link_addr6(k, 2)
                ));
            }
            if k != 0 && k != links {
                host.sysctl("net.ipv6.conf.all.forwarding=1");
            }
        }
        let vip = Ipv6Addr::new(0xfd00, 0x97, self.lb_index as u16, 0, 0, 0, 0, 0x100);
        add_host_addr(self.lb(), "left", vip.into());
        self.ipv6 = Some(RoutedPathIpv6 {
            vip,
            snat: link_addr6(self.lb_index, 1),
            client_addr: link_addr6(0, 1),
            backend_addr: link_addr6(links - 1, 2),
        });
        self
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

/// [`link_addr`] in the IPv6 plan.
fn link_addr6(i: usize, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x97, i as u16 + 1, 0, 0, 0, 0, host)
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
