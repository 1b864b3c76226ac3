//! The blue-green lab used by the release tests and the demo: a one-arm
//! topology with two blue (b0, b1) and two green (b2, b3) `demo-backend`s,
//! and `bg-lb run` with HTTP /live and /standby checks, the live VIP on :80
//! and the standby VIP on :8080.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use bg_lb::{
    protocol::{BackendHealth, ServiceStatus},
    ratio::Pool,
};

use crate::{
    daemon::{Daemon, DemoBackend},
    http,
    topology::{LB_ADDR, OneArm},
};

pub const BACKEND_PORT: u16 = 8080;
pub const SERVICE: &str = "web";

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
        }
    }
}

pub struct BlueGreenLab {
    pub topo: OneArm,
    pub daemon: Daemon,
    pub backends: Vec<DemoBackend>,
    _peer_xdp: aya::Ebpf,
}

impl BlueGreenLab {
    /// Starts everything (v1 everywhere, all live) and waits until every
    /// backend passes its live check.
    pub fn start(bin: &'static str, options: &LabOptions) -> Self {
        crate::require_root();
        let topo = OneArm::new(4);
        let backends = topo
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                DemoBackend::start(
                    bin,
                    &b.ns,
                    SocketAddrV4::new(b.addr, BACKEND_PORT),
                    &format!("b{i}"),
                    "v1",
                )
            })
            .collect();
        let peer_xdp = topo.pass_lb_frames_to_switch();
        let addrs: Vec<_> = topo.backends.iter().map(|b| b.addr).collect();
        let vip = topo.vip;
        let daemon = Daemon::start(bin, &topo.lb.ns, |paths| config(vip, &addrs, options, paths));
        let lab = BlueGreenLab {
            topo,
            daemon,
            backends,
            _peer_xdp: peer_xdp,
        };
        lab.wait(
            |s| s.backends.iter().all(|b| b.health == BackendHealth::Up),
            "every backend up",
        );
        lab
    }

    pub fn live_vip(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.topo.vip, 80)
    }

    pub fn standby_vip(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.topo.vip, BACKEND_PORT)
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
    pub fn serve(&self, vip: SocketAddrV4, n: usize) -> Vec<(String, String)> {
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

fn config(vip: Ipv4Addr, backends: &[Ipv4Addr], o: &LabOptions, paths: &str) -> String {
    let ms = |d: Duration| d.as_millis();
    let mut toml = format!(
        "interface = \"eth0\"\nxdp_mode = \"native\"\nsnat_address = \"{LB_ADDR}\"\nmax_flows = {}\n\
         lookup_capacity = 524296\n{paths}\n[[service]]\nname = \"{SERVICE}\"\nvip = \"{vip}:80\"\n\
         standby_vip = \"{vip}:{BACKEND_PORT}\"\nratio = \"{}\"\n\n[service.health]\ntype = \"{}\"\n\
         interval = \"{}ms\"\nfast_interval = \"{}ms\"\ntimeout = \"{}ms\"\nrise = {}\nfall = {}\n",
        o.max_flows,
        o.ratio,
        o.check,
        ms(o.interval),
        ms(o.fast_interval),
        ms(o.timeout),
        o.rise,
        o.fall
    );
    for (i, addr) in backends.iter().enumerate() {
        let pool = if i < 2 { "blue" } else { "green" };
        toml += &format!("\n[[service.backend]]\npool = \"{pool}\"\naddress = \"{addr}:{BACKEND_PORT}\"\n");
    }
    toml
}
