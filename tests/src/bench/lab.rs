//! One contender's test bed: the one-arm topology (client, LB, four
//! backends on a bridge), an HTTP demo-backend, a bulk server and a UDP
//! name server ([`udp_rr`]) on every backend, all over one address family
//! (IPv6: a dual-stack segment whose servers and VIP are IPv6). Each
//! contender run gets a fresh one, so no state (XDP programs, nftables
//! rules, conntrack, TIME_WAIT sockets) leaks from one to the next.

use std::net::{IpAddr, SocketAddr};

use bg_lb::dataplane::forwarding::Forwarding;

use crate::{
    bench::{bulk::BulkServer, procs, udp_rr},
    daemon::DemoBackend,
    http,
    servers::UdpNameServer,
    topology::{Family, NetNs, OneArm, client_addr, lb_addr},
};

/// Backends' HTTP port (demo-backend).
pub const HTTP_PORT: u16 = 8080;
/// Backends' bulk streaming port, and the VIP's.
pub const BULK_PORT: u16 = 5201;
/// The VIP's HTTP port.
pub const VIP_HTTP_PORT: u16 = 80;
/// Backends b0, b1 are blue; b2, b3 green.
pub const BACKENDS: usize = 4;
/// The split every contender is configured with.
pub const BLUE_PERCENT: u32 = 50;

pub struct Lab {
    // Dropped in this order: the servers stop, leftovers are killed, then
    // the namespaces go.
    _http: Vec<DemoBackend>,
    _bulk: Vec<BulkServer>,
    _udp: Vec<UdpNameServer>,
    leftovers: Leftovers,
    pub topo: OneArm,
    /// The family of the VIP, the servers and the load.
    pub family: Family,
}

/// Kills what still runs in the lab's namespaces, once.
struct Leftovers {
    namespaces: Vec<String>,
}

impl Leftovers {
    fn kill(&mut self) -> Vec<String> {
        procs::kill_leftovers(&std::mem::take(&mut self.namespaces))
    }
}

impl Drop for Leftovers {
    /// After a failed or interrupted run: [`Lab::close`] reports leftovers
    /// of a run that went well.
    fn drop(&mut self) {
        let killed = self.kill();
        if !killed.is_empty() {
            eprintln!("killed processes that outlived the lab: {}", killed.join("; "));
        }
    }
}

impl Lab {
    /// A lab whose backends are set up for `forwarding` (README,
    /// "Forwarding modes"); under `dsr` the servers listen on every address,
    /// the VIP's on the loopback included.
    pub fn new(bg_lb: &'static str, forwarding: Forwarding, family: Family) -> Self {
        let mut topo = OneArm::with_lb_queue_per_cpu(BACKENDS);
        if family == Family::Ipv6 {
            topo.add_ipv6();
        }
        for host in &topo.backends {
            host.serve_for(forwarding, lb_addr(family), client_addr(family), &[topo.vip_of(family)]);
        }
        let dsr = forwarding == Forwarding::Dsr;
        // The load generators open tens of thousands of connections in a few
        // seconds. Whoever closes first keeps the port in TIME_WAIT for 60 s;
        // behind a proxy that is often the client (wrk closes as soon as it
        // has the response), and with the default 28,000 ports connect()
        // then crawls. Give the client the whole range and let it reuse
        // TIME_WAIT ports (safe with TCP timestamps), as load generators do.
        // (Both settings are IPv6's too.)
        topo.client.ns.sysctl("net.ipv4.ip_local_port_range=1024 65535");
        topo.client.ns.sysctl("net.ipv4.tcp_tw_reuse=1");
        // bg-lb uses the example's SNAT ports (20000-29999) and refuses to
        // start if they overlap the LB's own ephemeral range: pin that range
        // to the kernel's default, clear of them, whatever the host sets.
        topo.lb.ns.sysctl("net.ipv4.ip_local_port_range=32768 60999");
        let http = DemoBackend::start_on_each_listening(bg_lb, &topo.backends, family, HTTP_PORT, dsr);
        let bulk = topo
            .backends
            .iter()
            .map(|b| {
                let ip = if dsr { family.unspecified() } else { b.addr_of(family) };
                BulkServer::start(&b.ns, SocketAddr::new(ip, BULK_PORT))
            })
            .collect();
        Lab {
            _http: http,
            _bulk: bulk,
            _udp: udp_rr::start_servers(&topo.backends, family),
            leftovers: Leftovers {
                namespaces: topo.namespaces().map(|ns| ns.name.clone()).collect(),
            },
            topo,
            family,
        }
    }

    /// Gives every link of the lab MTU `mtu` (the switch's ports before its
    /// bridge), before a contender starts. Native XDP on a veth takes at most
    /// about 3,500 bytes (a frame must fit a page) without multi-buffer
    /// support.
    pub fn set_mtu(&self, mtu: u32) {
        for ns in self.topo.namespaces() {
            let mut links: Vec<String> = ns
                .ip("-o link show")
                .lines()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|name| name.split('@').next().unwrap_or(name).to_owned())
                .filter(|name| name != "lo")
                .collect();
            links.sort_by_key(|name| name == "br0");
            for link in links {
                ns.ip(&format!("link set {link} mtu {mtu}"));
            }
        }
    }

    /// Tears the lab down, the contender already stopped: stops the
    /// servers, then kills whatever still runs in the lab's namespaces.
    /// Returns what had to be killed, which should be nothing: every process
    /// the run started has a guard that stops it.
    pub fn close(self) -> Vec<String> {
        let Lab {
            _http,
            _bulk,
            _udp,
            mut leftovers,
            topo,
            family: _,
        } = self;
        drop((_http, _bulk, _udp));
        let killed = leftovers.kill();
        drop(topo);
        killed
    }

    pub fn client(&self) -> &NetNs {
        &self.topo.client.ns
    }

    pub fn lb(&self) -> &NetNs {
        &self.topo.lb.ns
    }

    /// The VIP address, of the lab's family.
    pub fn vip(&self) -> IpAddr {
        self.topo.vip_of(self.family)
    }

    /// The LB's address of the lab's family: the contenders' SNAT address.
    pub fn lb_addr(&self) -> IpAddr {
        lb_addr(self.family)
    }

    /// `(blue, green)` backend addresses on `port`.
    pub fn pools(&self, port: u16) -> Pools {
        let addrs: Vec<_> = self
            .topo
            .backends
            .iter()
            .map(|b| SocketAddr::new(b.addr_of(self.family), port))
            .collect();
        Pools {
            blue: addrs[..BACKENDS / 2].to_vec(),
            green: addrs[BACKENDS / 2..].to_vec(),
            blue_percent: BLUE_PERCENT,
        }
    }

    /// Requests each demo-backend has served so far (its own count, asked
    /// directly from the LB host; the asking adds one to each). Not from
    /// the client: under `gateway` a backend sees the client's own address
    /// and port, so a direct connection from a client port that a workload's
    /// flow to that backend just used has that flow's 4-tuple while the
    /// flow lingers on the LB, and its replies are taken for the flow's.
    pub fn requests_served(&self) -> Vec<u64> {
        let addrs: Vec<_> = self.pools(HTTP_PORT).all().collect();
        self.lb().run(move || {
            addrs
                .iter()
                .map(|&a| {
                    let response = http::request(a, "GET", "/").unwrap_or_else(|e| panic!("GET / from {a}: {e}"));
                    let json: serde_json::Value = serde_json::from_str(&response.body).unwrap_or_default();
                    json["requests"].as_u64().unwrap_or(0)
                })
                .collect()
        })
    }
}

/// Two pools and the share of new connections the blue one gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pools {
    pub blue: Vec<SocketAddr>,
    pub green: Vec<SocketAddr>,
    pub blue_percent: u32,
}

impl Pools {
    pub fn all(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.blue.iter().chain(&self.green).copied()
    }

    /// Every backend with an integer weight such that weight / total is its
    /// share of new connections (pool share split evenly inside the pool),
    /// reduced by their common divisor so proxies with small weight limits
    /// (HAProxy: 256) take them. Backends of an empty share get 0.
    pub fn weights(&self) -> Vec<(SocketAddr, u32)> {
        let per_backend = |percent: u32, pool: &[SocketAddr]| {
            let others = (self.blue.len() * self.green.len()).max(1) as u32;
            let each = percent * others / pool.len().max(1) as u32;
            pool.iter().map(move |&a| (a, each)).collect::<Vec<_>>()
        };
        let mut weights = per_backend(self.blue_percent, &self.blue);
        weights.extend(per_backend(100 - self.blue_percent, &self.green));
        let divisor = weights.iter().map(|w| w.1).filter(|&w| w > 0).fold(0, gcd).max(1);
        weights.into_iter().map(|(a, w)| (a, w / divisor)).collect()
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn pools(blue: usize, green: usize, blue_percent: u32) -> Pools {
        let addr = |i: usize| SocketAddr::new(Ipv4Addr::new(10, 0, 0, i as u8).into(), 80);
        Pools {
            blue: (0..blue).map(addr).collect(),
            green: (blue..blue + green).map(addr).collect(),
            blue_percent,
        }
    }

    #[test]
    fn even_split_over_two_and_two_gives_equal_unit_weights() {
        let w: Vec<u32> = pools(2, 2, 50).weights().into_iter().map(|w| w.1).collect();
        assert_eq!(w, [1, 1, 1, 1]);
    }

    #[test]
    fn weights_carry_the_pool_ratio_and_pool_sizes() {
        let w: Vec<u32> = pools(2, 2, 30).weights().into_iter().map(|w| w.1).collect();
        assert_eq!(w, [3, 3, 7, 7]);
        let w: Vec<u32> = pools(1, 3, 50).weights().into_iter().map(|w| w.1).collect();
        assert_eq!(w, [3, 1, 1, 1], "one blue backend carries half");
    }

    #[test]
    fn a_pool_with_no_share_gets_zero_weights() {
        let w: Vec<u32> = pools(2, 2, 100).weights().into_iter().map(|w| w.1).collect();
        assert_eq!(w, [1, 1, 0, 0]);
    }
}
