//! The BGP fleet of [`crate::fleet`] with one operator state (`[cluster]`):
//! an etcd in the router's namespace that every host's daemon uses, and on
//! each host a blue backend (the fleet's name server on port 80, answering
//! `host<i>`) and a green one (port [`GREEN_PORT`], answering `green<i>`).
//! For the cluster tests and `cargo xtask demo --hosts N`. Daemons stop
//! before etcd, etcd before the fleet's namespaces.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use bg_lb::protocol::{FleetStatus, Reply};

use crate::{
    daemon::{Daemon, finish_teardown},
    etcd::Etcd,
    fleet::{Fleet, LbHost},
    servers::NameServer,
};

/// Where etcd serves the hosts: the router's address on the client link,
/// which every host routes to.
pub const ETCD_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
pub const GREEN_PORT: u16 = 8080;
/// Far beyond the 1 s the fleet promises a change takes, and the few
/// seconds a lease takes to expire: a loaded CI machine must not fail it.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct Cluster {
    /// Dropped first: daemons before etcd and the fleet.
    pub daemons: Vec<Daemon>,
    greens: Vec<Option<NameServer>>,
    _health: Vec<NameServer>,
    pub etcd: Etcd,
    pub fleet: Fleet,
    /// How long the router took to spread the VIP over every host.
    pub announced_after: Duration,
}

impl Cluster {
    /// `hosts` LB hosts, their etcd and a daemon on each, once the router
    /// spreads the VIP over all of them.
    pub fn start(bin: &'static str, hosts: usize) -> Self {
        Cluster::start_checking(bin, hosts, None)
    }

    /// Like [`Cluster::start`], with the health checks on `health_port`
    /// of every backend (a listener of its own there), so that a backend's
    /// service port can refuse connections while its checks pass.
    pub fn start_checking(bin: &'static str, hosts: usize, health_port: Option<u16>) -> Self {
        let fleet = Fleet::new(hosts);
        let etcd = Etcd::start_in(&fleet.router, ETCD_ADDRESS);
        let greens = fleet
            .hosts
            .iter()
            .enumerate()
            .map(|(i, host)| Some(NameServer::start(&host.backend.ns, green(host), format!("green{i}"))))
            .collect();
        let health = (fleet.hosts.iter())
            .flat_map(|host| health_port.map(|port| (host, port)))
            .map(|(host, port)| {
                let at = SocketAddrV4::new(host.backend.addr, port);
                NameServer::start(&host.backend.ns, at, "health".into())
            })
            .collect();
        let daemons = fleet
            .hosts
            .iter()
            .enumerate()
            .map(|(i, host)| Daemon::start(bin, &host.ns, |paths| config(host, paths, &etcd, i, health_port)))
            .collect();
        let all: Vec<usize> = (0..hosts).collect();
        let announced_after = fleet.await_next_hops(&fleet.fronts(&all));
        Cluster {
            daemons,
            greens,
            _health: health,
            etcd,
            fleet,
            announced_after,
        }
    }

    /// Stops host `i`'s green server: connections to it are refused.
    pub fn stop_green(&mut self, i: usize) {
        self.greens[i] = None;
    }

    /// `status --json`'s fleet part on host `i`.
    pub fn fleet_status(&self, i: usize) -> FleetStatus {
        let reply: Reply = serde_json::from_str(&self.daemons[i].ctl_ok(&["--json", "status"])).expect("status JSON");
        reply.fleet.expect("status shows [cluster]")
    }

    /// Stops host `i` for good, as docs/deploy.md says: the daemon stops
    /// (SIGTERM), then `bg-lb teardown` withdraws the VIP and, once the
    /// routers rerouted, detaches the data plane. Returns once both are
    /// done: how long the router took to drop the host, from the SIGTERM.
    pub fn stop_host_for_good(&mut self, i: usize) -> Duration {
        let start = Instant::now();
        self.daemons[i].terminate();
        let teardown = self.daemons[i].start_teardown();
        let others: Vec<usize> = (0..self.daemons.len()).filter(|&h| h != i).collect();
        self.fleet.await_next_hops(&self.fleet.fronts(&others));
        let withdrawn = start.elapsed();
        let said = finish_teardown(teardown);
        assert!(said.contains("withdrew every VIP from BIRD"), "{said}");
        withdrawn
    }
}

/// Host `host`'s green backend.
pub fn green(host: &LbHost) -> SocketAddrV4 {
    SocketAddrV4::new(host.backend.addr, GREEN_PORT)
}

/// The host's `[bgp]` config, a green backend, and `[cluster]`.
fn config(host: &LbHost, paths: &str, etcd: &Etcd, i: usize, health_port: Option<u16>) -> String {
    let config = host.config_checking(paths, health_port);
    format!(
        "{config}[[service.backend]]\npool = \"green\"\naddress = \"{}\"\n[cluster]\netcd = [\"{}\"]\nhost = \"lb{i}\"\n",
        green(host),
        etcd.url()
    )
}

/// Polls `done` until it holds; how long that took. Panics after
/// [`DEADLINE`].
pub fn until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "{what} after {DEADLINE:?}");
        thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}
