//! Named network namespaces and a one-arm test topology: client, load
//! balancer and backends on one L2 segment (a bridge in its own namespace),
//! connected by veth pairs. Everything is deleted on drop, even when a test
//! panics; names carry the test process's pid so parallel runs never collide.

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

    /// `sysctl -w KEY=VALUE` inside this namespace.
    pub fn sysctl(&self, setting: &str) {
        run("ip", &["netns", "exec", &self.name, "sysctl", "-qw", setting]);
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
/// The switch-side port of the LB's veth: native XDP_TX frames only reach a
/// veth peer that runs an XDP program, so tests attach `xdp_pass` here.
pub const LB_SWITCH_PORT: &str = "p-lb";

impl OneArm {
    pub fn new(backends: usize) -> Self {
        let switch = NetNs::new("sw");
        switch.ip("link add br0 type bridge");
        switch.ip("link set br0 up");
        let lb = Self::host(&switch, "lb", LB_SWITCH_PORT, LB_ADDR);
        lb.ns.ip(&format!("addr add {VIP_ADDR}/32 dev eth0"));
        let client = Self::host(&switch, "client", "p-client", CLIENT_ADDR);
        let backends = (0..backends)
            .map(|i| {
                Self::host(
                    &switch,
                    &format!("b{i}"),
                    &format!("p-b{i}"),
                    Ipv4Addr::new(10, 99, 0, 11 + i as u8),
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

    /// Attaches `xdp_pass` (native mode) to the switch side of the LB's veth
    /// so frames the LB sends with XDP_TX are delivered. Keep the returned
    /// object alive: dropping it detaches the program.
    pub fn pass_lb_frames_to_switch(&self) -> Ebpf {
        self.switch.run(|| {
            let mut ebpf = Ebpf::load(bg_lb::ebpf_objects::aux()).expect("load aux object");
            let prog: &mut Xdp = ebpf
                .program_mut("xdp_pass")
                .expect("xdp_pass")
                .try_into()
                .expect("XDP program");
            prog.load().expect("load xdp_pass");
            prog.attach_to_if_index(ifindex(LB_SWITCH_PORT), XdpMode::Driver)
                .expect("attach xdp_pass");
            ebpf
        })
    }

    fn host(switch: &NetNs, role: &str, port: &str, addr: Ipv4Addr) -> Host {
        let ns = NetNs::new(role);
        ip(&format!(
            "link add {port} netns {} type veth peer name eth0 netns {}",
            switch.name, ns.name
        ));
        switch.ip(&format!("link set {port} master br0"));
        switch.ip(&format!("link set {port} up"));
        ns.ip(&format!("addr add {addr}/24 dev eth0"));
        ns.ip("link set eth0 up");
        // A veth leaves TCP checksums to "hardware" (CHECKSUM_PARTIAL); a
        // frame the LB sends with XDP_TX loses that mark and arrives with a
        // half-computed checksum. Real NICs hand XDP complete checksums, so
        // make the test hosts compute them in software.
        run("ip", &["netns", "exec", &ns.name, "ethtool", "-K", "eth0", "tx", "off"]);
        Host { ns, addr }
    }
}
