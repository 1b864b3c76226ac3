//! Health-check end-to-end tests (root): `bg-lb run` with HTTP /live and
//! /standby checks against `bg-lb demo-backend` processes in namespaces.

use std::{
    net::SocketAddrV4,
    thread,
    time::{Duration, Instant},
};

use bg_lb_tests::{
    daemon::{Daemon, DemoBackend},
    http::{self, Connection},
    require_root,
    topology::{LB_ADDR, OneArm},
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");
const PORT: u16 = 8080;
const INTERVAL: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_millis(200);
const RISE: u32 = 2;
const FALL: u32 = 2;
/// Slack for polling status and process scheduling on a busy 2-core box.
const SLACK: Duration = Duration::from_millis(700);

struct Lab {
    topo: OneArm,
    daemon: Daemon,
    backends: Vec<DemoBackend>,
    _peer_xdp: aya::Ebpf,
}

impl Lab {
    /// b0, b1 blue; b2, b3 green; all live; ratio 100:0.
    fn new() -> Self {
        require_root();
        let topo = OneArm::new(4);
        let backends = topo
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| DemoBackend::start(BG_LB, &b.ns, SocketAddrV4::new(b.addr, PORT), &format!("b{i}"), "v1"))
            .collect();
        let peer_xdp = topo.pass_lb_frames_to_switch();
        let addrs: Vec<_> = topo.backends.iter().map(|b| b.addr).collect();
        let vip = topo.vip;
        let daemon = Daemon::start(BG_LB, &topo.lb.ns, |paths| config(vip, &addrs, paths));
        let lab = Lab {
            topo,
            daemon,
            backends,
            _peer_xdp: peer_xdp,
        };
        lab.wait_health(|h| h.iter().all(|s| s == "up"), "all backends up");
        lab
    }

    fn addr(&self, i: usize) -> SocketAddrV4 {
        SocketAddrV4::new(self.topo.backends[i].addr, PORT)
    }

    fn live_vip(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.topo.vip, 80)
    }

    fn standby_vip(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.topo.vip, PORT)
    }

    /// Live health of b0..b3 as status reports it.
    fn health(&self) -> Vec<String> {
        self.daemon
            .status("web")
            .backends
            .into_iter()
            .map(|b| b.health)
            .collect()
    }

    fn wait_health(&self, done: impl Fn(&[String]) -> bool, what: &str) -> Duration {
        let started = Instant::now();
        while !done(&self.health()) {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{what}: still {:?}\n{}",
                self.health(),
                self.daemon.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        started.elapsed()
    }

    /// Names of the backends serving `n` fresh connections to `vip`.
    fn names(&self, vip: SocketAddrV4, n: usize) -> Vec<String> {
        let names = self.topo.client.ns.run(move || {
            (0..n)
                .map(|_| http::request(vip, "GET", "/").map(|r| r.backend_name()))
                .collect::<std::io::Result<Vec<_>>>()
        });
        names.unwrap_or_else(|e| panic!("request through {vip} failed: {e}\n{}", self.daemon.log()))
    }

    /// POST /enable/ROLE straight to backend `i`.
    fn set_role(&self, i: usize, role: &str) {
        let addr = self.addr(i);
        let path = format!("/enable/{role}");
        let response = self
            .topo
            .client
            .ns
            .run(move || http::request(addr, "POST", &path))
            .expect("POST /enable");
        assert_eq!(response.status, 200);
    }
}

fn config(vip: std::net::Ipv4Addr, backends: &[std::net::Ipv4Addr], paths: &str) -> String {
    let mut toml = format!(
        "interface = \"eth0\"\nxdp_mode = \"native\"\nsnat_address = \"{LB_ADDR}\"\nmax_flows = 65536\n\
         lookup_capacity = 524296\n{paths}\n[[service]]\nname = \"web\"\nvip = \"{vip}:80\"\n\
         standby_vip = \"{vip}:{PORT}\"\nratio = \"100:0\"\n\n[service.health]\ntype = \"http\"\n\
         interval = \"{}ms\"\nfast_interval = \"100ms\"\ntimeout = \"{}ms\"\nrise = {RISE}\nfall = {FALL}\n",
        INTERVAL.as_millis(),
        TIMEOUT.as_millis()
    );
    for (i, addr) in backends.iter().enumerate() {
        let pool = if i < 2 { "blue" } else { "green" };
        toml += &format!("\n[[service.backend]]\npool = \"{pool}\"\naddress = \"{addr}:{PORT}\"\n");
    }
    toml
}

#[test]
fn killed_backend_leaves_rotation_within_fall_intervals_and_returns_after_rise_intervals() {
    let mut lab = Lab::new();
    lab.backends[0].kill();
    let down_after = lab.wait_health(|h| h[0] == "down", "b0 down after its process died");
    assert!(
        down_after <= INTERVAL * FALL + TIMEOUT + SLACK,
        "marked down after {down_after:?}"
    );
    let b0 = &lab.daemon.status("web").backends[0];
    assert_eq!(b0.last_check.as_deref(), Some("connection refused"));
    assert_eq!(b0.weight, 0, "a down backend takes no new flows");
    let names = lab.names(lab.live_vip(), 40);
    assert!(
        names.iter().all(|n| n == "b1"),
        "no new connection to the down backend: {names:?}"
    );

    let (ns, addr) = (&lab.topo.backends[0].ns, lab.addr(0));
    lab.backends[0].restart(ns, addr);
    let up_after = lab.wait_health(|h| h[0] == "up", "b0 up after it returned");
    assert!(
        up_after <= INTERVAL * RISE + TIMEOUT + SLACK,
        "marked up after {up_after:?}"
    );
    assert!(
        lab.names(lab.live_vip(), 40).iter().any(|n| n == "b0"),
        "b0 is back in rotation"
    );
}

#[test]
fn backend_flipped_to_standby_keeps_its_open_connection_while_new_ones_go_elsewhere() {
    let lab = Lab::new();
    let vip = lab.live_vip();
    let mut open = lab
        .topo
        .client
        .ns
        .run(move || Connection::open(vip).expect("keep-alive connection"));
    let first = open.request("GET", "/").unwrap().backend_name();
    let index: usize = first[1..].parse().unwrap();

    lab.set_role(index, "standby");
    lab.wait_health(|h| h[index] == "down", "the standby backend leaves the live rotation");
    assert_eq!(
        lab.daemon.status("web").backends[index].last_check.as_deref(),
        Some("HTTP 500")
    );
    for _ in 0..10 {
        let response = open.request("GET", "/").expect("the open connection keeps working");
        assert_eq!((response.status, response.backend_name()), (200, first.clone()));
    }
    let names = lab.names(vip, 30);
    assert!(
        names.iter().all(|n| *n != first),
        "new connections avoid {first}: {names:?}"
    );
}

#[test]
fn standby_vip_reaches_only_standby_enabled_backends() {
    let lab = Lab::new();
    let standby = lab.standby_vip();
    let refused = lab.topo.client.ns.run(move || http::request(standby, "GET", "/").err());
    assert_eq!(
        refused.map(|e| e.kind()),
        Some(std::io::ErrorKind::ConnectionRefused),
        "no standby backend yet"
    );

    lab.set_role(2, "standby");
    let started = Instant::now();
    while lab.daemon.status("web").backends[2].standby_health.as_deref() != Some("up") {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "b2 never passed the standby check"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let names = lab.names(standby, 20);
    assert!(names.iter().all(|n| n == "b2"), "standby VIP: {names:?}");
    let live = lab.names(lab.live_vip(), 20);
    assert!(
        live.iter().all(|n| n == "b0" || n == "b1"),
        "the live VIP still follows the ratio: {live:?}"
    );
}

#[test]
fn pool_with_every_backend_down_fails_over_to_the_other_pool() {
    let mut lab = Lab::new();
    lab.backends[0].kill();
    lab.backends[1].kill();
    lab.wait_health(|h| h[0] == "down" && h[1] == "down", "blue down");
    let status = lab.daemon.status("web");
    assert_eq!(
        (status.ratio.to_string(), status.effective_ratio.to_string()),
        ("100:0".into(), "0:100".into())
    );
    let names = lab.names(lab.live_vip(), 20);
    assert!(
        names.iter().all(|n| n == "b2" || n == "b3"),
        "blue's share goes to green: {names:?}"
    );
    assert!(
        lab.daemon.log().contains("pool has no healthy backend"),
        "said loudly in the log"
    );
}

#[test]
fn both_pools_down_refuses_new_connections_at_once() {
    let mut lab = Lab::new();
    for backend in &mut lab.backends {
        backend.kill();
    }
    lab.wait_health(|h| h.iter().all(|s| s == "down"), "all down");
    let vip = lab.live_vip();
    let error = lab
        .topo
        .client
        .ns
        .run(move || http::request(vip, "GET", "/").expect_err("nothing can serve"));
    assert_eq!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "a RST, not a hang: {error}"
    );
    assert!(lab.daemon.log().contains("NO healthy backend in either pool"));
}
