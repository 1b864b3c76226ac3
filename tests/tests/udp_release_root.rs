//! A UDP service through a blue-green release, end to end (root): `bg-lb
//! run` in the one-arm lab with a `protocol = "udp"` service, over IPv4 and
//! over IPv6, real UDP sockets on the client and UDP name servers on the
//! backends (b0, b1 blue; b2, b3 green), health-checked over UDP; and a UDP
//! service forwarding by `gateway` and by `dsr`, the backends set up as the
//! README says.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use bg_lb::{dataplane::forwarding::Forwarding, family::Family, protocol::BackendHealth, ratio::Pool};
use bg_lb_tests::{
    lab::{BACKEND_PORT, NameLab, NameLabConfig, SERVICE, pool_of_name},
    servers::{UdpNameClient, UdpNameServer, ask_names_udp},
    topology::CLIENT_ADDR,
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");

/// The service's `udp_idle`: short, so a drain's wait for an idle flow ends
/// within the test.
const UDP_IDLE: &str = "3s";

/// The lab's `web` service as UDP at `ratio` over `family`, its backends'
/// UDP name servers answering health checks ("health" gets the name, which
/// holds "b").
fn start_udp_lab(ratio: &str, family: Family) -> (NameLab, Vec<UdpNameServer>) {
    let service = format!(
        "protocol = \"udp\"\nudp_idle = \"{UDP_IDLE}\"\nratio = \"{ratio}\"\n\n[service.health]\ntype = \"udp\"\n\
         request = \"health\"\nexpect = \"b\"\ninterval = \"300ms\"\nfast_interval = \"100ms\"\ntimeout = \"200ms\"\n\
         rise = 1\nfall = 3\n"
    );
    let config = NameLabConfig {
        service: &service,
        weight: Some(100),
        family,
        ..NameLabConfig::default()
    };
    let lab = NameLab::start(BG_LB, 4, None, &config);
    let servers = UdpNameServer::start_on_each_of(&lab.topo.backends, family, BACKEND_PORT);
    wait_until_all_up(&lab);
    (lab, servers)
}

/// Polls `web`'s status until its UDP checks find every backend up; the
/// 30 s limit only keeps a broken check from hanging the test.
fn wait_until_all_up(lab: &NameLab) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let status = lab.daemon.status(SERVICE);
        if status.backends.iter().all(|b| b.health == BackendHealth::Up) {
            return;
        }
        assert!(
            Instant::now() < until,
            "UDP health checks never passed: {status:#?}\n{}",
            lab.daemon.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A UDP socket in the client namespace, connected to the service's VIP.
fn udp_client(lab: &NameLab) -> UdpNameClient {
    let vip = lab.service_vip();
    lab.topo
        .client
        .ns
        .run(move || UdpNameClient::connect(vip).expect("UDP socket to the VIP"))
}

/// Who serves `n` fresh UDP flows.
fn fresh_names(lab: &NameLab, vip: SocketAddr, n: usize) -> Vec<String> {
    ask_names_udp(&lab.topo.client.ns, vip, n)
        .unwrap_or_else(|e| panic!("a UDP flow through the VIP got no answer: {e}\n{}", lab.daemon.log()))
}

fn ask(lab: &NameLab, client: &UdpNameClient) -> String {
    client
        .ask()
        .unwrap_or_else(|e| panic!("the long-lived UDP flow got no answer: {e}\n{}", lab.daemon.log()))
}

/// The release of a UDP service: a long-lived flow (one client socket,
/// asking every 200 ms) pinned to blue keeps its backend when the ratio
/// flips 100:0 -> 0:100 while every new socket goes green; `ctl drain web
/// blue --wait` keeps waiting while the flow sends, for longer than
/// `udp_idle`, and returns, successfully, only once the flow has stopped
/// and been idle for `udp_idle`, leaving blue no open flow.
fn release_keeps_the_udp_flow_and_drain_waits_until_it_idles(family: Family) {
    let (lab, _servers) = start_udp_lab("100:0", family);
    let vip = lab.service_vip();
    assert_eq!(Family::of_socket(vip), family, "the service runs over {family:?}");
    // The first flows' sockets stay open through the flip: a closed one's
    // port may be handed to a fresh socket while its blue flow is still
    // pinned (`udp_idle`), and that 5-tuple is, rightly, the same flow.
    let blue_clients: Vec<UdpNameClient> = (0..20).map(|_| udp_client(&lab)).collect();
    let before: Vec<String> = blue_clients.iter().map(|c| ask(&lab, c)).collect();
    assert!(
        before.iter().all(|n| pool_of_name(n) == Pool::Blue),
        "100:0 sends new UDP flows blue: {before:?}"
    );

    let long_lived = udp_client(&lab);
    let pinned = ask(&lab, &long_lived);
    assert_eq!(pool_of_name(&pinned), Pool::Blue, "the long-lived flow starts blue");

    let out = lab.daemon.ctl_ok(&["ratio", SERVICE, "0:100"]);
    assert!(out.contains("100:0 -> 0:100"), "{out}");
    for _ in 0..5 {
        assert_eq!(ask(&lab, &long_lived), pinned, "the flip moved a live UDP flow");
        let fresh = fresh_names(&lab, vip, 5);
        assert!(
            fresh.iter().all(|n| pool_of_name(n) == Pool::Green),
            "0:100 sends new UDP flows green: {fresh:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }

    let mut drain = lab
        .daemon
        .ctl_spawn(&["drain", SERVICE, "blue", "--wait", "--timeout", "60s"]);
    // Keep the flow busy for twice `udp_idle` (25 x 200 ms and the round
    // trips): long enough that a drain counting time rather than idleness
    // would have returned.
    for _ in 0..25 {
        assert_eq!(ask(&lab, &long_lived), pinned, "the drain moved a live UDP flow");
        assert!(
            drain.try_wait().expect("poll ctl drain").is_none(),
            "drain --wait returned while a blue UDP flow was still sending\n{}",
            lab.daemon.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        lab.daemon.status(SERVICE).open_flows(Pool::Blue) >= 1,
        "the busy blue UDP flow counts as open"
    );
    // The flow stops sending: the drain ends once it has been idle for
    // `udp_idle` and the sweep has removed it.
    drop(long_lived);
    let out = drain.wait_with_output().expect("ctl drain");
    assert!(out.status.success(), "{out:?}\n{}", lab.daemon.log());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("drained after"),
        "{out:?}"
    );
    assert_eq!(lab.daemon.status(SERVICE).open_flows(Pool::Blue), 0);
    let after = fresh_names(&lab, vip, 10);
    assert!(
        after.iter().all(|n| pool_of_name(n) == Pool::Green),
        "after the drain new UDP flows go green: {after:?}"
    );
}

#[test]
fn udp_flow_keeps_its_backend_across_a_flip_and_drain_waits_until_it_idles() {
    release_keeps_the_udp_flow_and_drain_waits_until_it_idles(Family::Ipv4);
}

#[test]
fn ipv6_udp_flow_keeps_its_backend_across_a_flip_and_drain_waits_until_it_idles() {
    release_keeps_the_udp_flow_and_drain_waits_until_it_idles(Family::Ipv6);
}

/// The lab's `web` service as UDP at 50:50, forwarding by `forwarding`.
/// Under `gateway` the backends' UDP name servers listen on their own
/// address and are checked over UDP. Under `dsr` they listen on the VIP
/// (which each backend holds), so that they answer from it, and the check
/// is a TCP one of the lab's TCP name servers on the same port, which
/// listen on every address.
fn start_forwarding_lab(forwarding: Forwarding) -> (NameLab, Vec<UdpNameServer>) {
    let health = match forwarding {
        Forwarding::Dsr => "type = \"tcp\"\nport = 80\n",
        _ => "type = \"udp\"\nrequest = \"health\"\nexpect = \"b\"\n",
    };
    let service = format!(
        "protocol = \"udp\"\nudp_idle = \"{UDP_IDLE}\"\nratio = \"50:50\"\n\n[service.health]\n{health}\
         interval = \"300ms\"\nfast_interval = \"100ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 3\n"
    );
    let config = NameLabConfig {
        service: &service,
        weight: Some(100),
        forwarding,
        ..NameLabConfig::default()
    };
    let lab = NameLab::start(BG_LB, 4, None, &config);
    let servers = match forwarding {
        Forwarding::Dsr => lab
            .topo
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| UdpNameServer::start(&b.ns, lab.vip(), format!("b{i}")))
            .collect(),
        _ => UdpNameServer::start_on_each(&lab.topo.backends, BACKEND_PORT),
    };
    wait_until_all_up(&lab);
    (lab, servers)
}

/// Fresh UDP flows through the VIP under `forwarding`: each backend sees
/// the client's own address and port, and the answers reach the client's
/// socket, which is connected to the VIP and so takes datagrams from
/// VIP:port only; every flow keeps its backend.
fn backend_sees_the_client_and_answers_from_the_vip(forwarding: Forwarding) {
    let (lab, _servers) = start_forwarding_lab(forwarding);
    for _ in 0..8 {
        let client = udp_client(&lab);
        let seen = client
            .peer_seen()
            .unwrap_or_else(|e| panic!("no answer from VIP:port: {e}\n{}", lab.daemon.log()));
        let local = client.local_addr();
        assert_eq!(*local.ip(), CLIENT_ADDR);
        assert_eq!(
            seen,
            local.to_string(),
            "the backend sees the client, not a SNAT address"
        );
        let name = ask(&lab, &client);
        for _ in 0..3 {
            assert_eq!(ask(&lab, &client), name, "the flow keeps its backend");
        }
    }
}

#[test]
fn udp_gateway_backend_sees_the_client_and_its_answers_come_back_from_the_vip() {
    backend_sees_the_client_and_answers_from_the_vip(Forwarding::Gateway);
}

#[test]
fn udp_dsr_backend_sees_the_client_and_answers_it_from_the_vip() {
    backend_sees_the_client_and_answers_from_the_vip(Forwarding::Dsr);
}
