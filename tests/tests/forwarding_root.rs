//! Forwarding-mode end-to-end tests (root): `bg-lb run` with a `gateway` or
//! `dsr` service, backends in namespaces set up as the README's "Forwarding
//! modes" says, real TCP. Each backend reports the peer address it sees:
//! the client's own, in both modes.

use std::net::SocketAddrV4;

use bg_lb::{dataplane::forwarding::Forwarding, ratio::Pool};
use bg_lb_tests::{
    lab::{NameLab, NameLabConfig, pool_of_name},
    servers::{NameClient, NameServer},
    topology::CLIENT_ADDR,
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");

/// Four backends (b0, b1 blue; b2, b3 green) at `ratio`, forwarding by
/// `forwarding`.
fn start_lab(forwarding: Forwarding, ratio: &str) -> NameLab {
    let config = NameLabConfig {
        service: &format!("ratio = \"{ratio}\"\n"),
        weight: Some(100),
        forwarding,
        ..NameLabConfig::default()
    };
    NameLab::start(BG_LB, 4, None, &config)
}

/// Asserts the backend on the other end of `connection` sees the client's
/// own address and port; returns the backend's name.
fn assert_backend_sees_the_client(lab: &NameLab, connection: &mut NameClient) -> String {
    let seen = connection
        .peer_seen()
        .unwrap_or_else(|e| panic!("ask the backend: {e}\n{}", lab.daemon.log()));
    let client = connection.local_addr();
    assert_eq!(*client.ip(), CLIENT_ADDR);
    assert_eq!(
        seen,
        client.to_string(),
        "the backend sees the client, not a SNAT address"
    );
    connection.ask().expect("ask the backend's name")
}

/// Under `forwarding`: a long-lived blue connection that the backend sees
/// coming from the client keeps `drain web blue --wait` waiting, keeps
/// working while new connections go green, and the drain returns once the
/// client closes it.
fn drain_wait_returns_once_the_connection_closes(forwarding: Forwarding) {
    let lab = start_lab(forwarding, "100:0");
    let mut long_lived = lab.connect();
    let backend = assert_backend_sees_the_client(&lab, &mut long_lived);
    assert_eq!(pool_of_name(&backend), Pool::Blue);
    lab.assert_drain_waits_for(long_lived, &backend);
}

#[test]
fn gateway_backend_sees_the_client_and_drain_wait_returns_once_its_connection_closes() {
    // Both sides' FINs cross the LB and end the flow.
    drain_wait_returns_once_the_connection_closes(Forwarding::Gateway);
}

#[test]
fn gateway_keeps_direct_connections_between_client_and_backend_working_both_ways_and_the_vip_with_them() {
    // The backends route the client through the LB, so a backend's packets
    // to the client that are no VIP reply (the reply to the client's own
    // connection to it, its own connection to the client) cross the LB and
    // must be forwarded by its kernel, untouched, while a VIP flow is open.
    let lab = start_lab(Forwarding::Gateway, "50:50");
    let mut through_vip = lab.connect();
    let backend = assert_backend_sees_the_client(&lab, &mut through_vip);

    for i in 0..lab.topo.backends.len() {
        let to = lab.backend_addr(i);
        let mut direct = lab
            .topo
            .client
            .ns
            .run(move || NameClient::connect(to))
            .unwrap_or_else(|e| panic!("client -> b{i} at {to} directly: {e}\n{}", lab.daemon.log()));
        assert_eq!(direct.ask().expect("the backend answers directly"), format!("b{i}"));
        assert_eq!(
            direct.peer_seen().expect("ask the peer"),
            direct.local_addr().to_string()
        );
    }

    let client_server = SocketAddrV4::new(CLIENT_ADDR, 9000);
    let _client_server = NameServer::start(&lab.topo.client.ns, client_server, "client".to_owned());
    for (i, host) in lab.topo.backends.iter().enumerate() {
        let mut outbound = host
            .ns
            .run(move || NameClient::connect(client_server))
            .unwrap_or_else(|e| panic!("b{i} -> client at {client_server}: {e}\n{}", lab.daemon.log()));
        assert_eq!(outbound.ask().expect("the client answers"), "client");
    }

    // Forwarded out of the interface they came in on, those packets must
    // not earn the backends an ICMP redirect to the client: one taken would
    // send the gateway flows' replies around the LB.
    assert_eq!(lab.names(20).len(), 20, "fresh connections through the VIP work");
    assert_eq!(through_vip.ask().expect("the VIP flow still works"), backend);
}

/// Under `forwarding`: an open connection the backend sees coming from the
/// client works through a kill -9 of the daemon and its restart, which
/// adopts the flow, and `ctl status` names the mode.
fn connection_survives_a_kill9_restart(forwarding: Forwarding) {
    let mut lab = start_lab(forwarding, "0:100");
    let mut long_lived = lab.connect();
    let backend = assert_backend_sees_the_client(&lab, &mut long_lived);
    assert_eq!(pool_of_name(&backend), Pool::Green);

    lab.daemon.kill9();
    assert_eq!(long_lived.ask().expect("works with no daemon"), backend);
    lab.daemon.spawn();
    assert_eq!(long_lived.ask().expect("survives the restart"), backend);
    assert!(lab.daemon.status("web").open_flows(Pool::Green) >= 1);
    let out = lab.daemon.ctl_ok(&["status"]);
    assert!(out.contains(&format!("forwarding {forwarding}")), "{out}");
    let mut fresh = lab.connect();
    assert_backend_sees_the_client(&lab, &mut fresh);
    assert_eq!(long_lived.ask().expect("still pinned"), backend);
}

#[test]
fn gateway_connection_survives_a_kill9_restart_and_status_names_the_mode() {
    connection_survives_a_kill9_restart(Forwarding::Gateway);
}

#[test]
fn dsr_connection_survives_a_kill9_restart_and_status_names_the_mode() {
    connection_survives_a_kill9_restart(Forwarding::Dsr);
}

/// Under `forwarding`, from 100:0: a connection the backend sees coming
/// from the client, then `ctl ratio web 0:100` moves new connections green
/// while the open one stays pinned. Returns the lab and `ctl status`.
fn ratio_change_moves_new_connections(forwarding: Forwarding) -> (NameLab, String) {
    let lab = start_lab(forwarding, "100:0");
    let mut connection = lab.connect();
    let backend = assert_backend_sees_the_client(&lab, &mut connection);
    assert_eq!(pool_of_name(&backend), Pool::Blue);
    assert!(lab.names(20).iter().all(|n| pool_of_name(n) == Pool::Blue));

    lab.daemon.ctl_ok(&["ratio", "web", "0:100"]);
    assert!(lab.names(20).iter().all(|n| pool_of_name(n) == Pool::Green));
    assert_eq!(connection.ask().expect("the pinned connection stays"), backend);
    let status = lab.daemon.ctl_ok(&["status"]);
    (lab, status)
}

/// The backend rows of `ctl status` for the lab's four backends.
fn backend_rows(status: &str) -> Vec<&str> {
    let rows: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("  blue ") || l.starts_with("  green "))
        .collect();
    assert_eq!(rows.len(), 4, "{status}");
    rows
}

#[test]
fn gateway_backend_sees_the_client_and_a_ratio_change_moves_new_connections() {
    let (_lab, out) = ratio_change_moves_new_connections(Forwarding::Gateway);
    assert!(out.contains("forwarding gateway"), "{out}");
    assert!(!out.contains("replies bypass the LB"), "{out}");
    // Replies cross the LB: their bytes are counted.
    let bytes_out: Vec<u64> = backend_rows(&out)
        .iter()
        .map(|row| row.rsplit(' ').next().and_then(|b| b.parse().ok()).expect("bytes out"))
        .collect();
    assert!(bytes_out.iter().all(|&b| b > 0), "{out}");
}

#[test]
fn dsr_backend_sees_the_client_a_ratio_change_moves_new_connections_and_status_says_what_is_lost() {
    let (_lab, out) = ratio_change_moves_new_connections(Forwarding::Dsr);
    assert!(out.contains("forwarding dsr"), "{out}");
    assert!(out.contains("replies bypass the LB"), "{out}");
    assert!(
        backend_rows(&out).iter().all(|row| row.trim_end().ends_with(" -")),
        "no bytes out is shown as measured: {out}"
    );
}

#[test]
fn dsr_drain_wait_returns_once_the_client_closes_its_connection() {
    // The LB never sees the backend's FIN: the client's ends the flow.
    drain_wait_returns_once_the_connection_closes(Forwarding::Dsr);
}

#[test]
fn dsr_backend_the_lb_cannot_reach_on_link_is_warned_about_at_startup() {
    // 192.0.2.10 has no route in the LB's namespace, let alone a connected one.
    let config = NameLabConfig {
        service: "ratio = \"100:0\"\n\n[[service.backend]]\npool = \"green\"\naddress = \"192.0.2.10:80\"\n",
        weight: Some(100),
        forwarding: Forwarding::Dsr,
        ..NameLabConfig::default()
    };
    let lab = NameLab::start(BG_LB, 2, None, &config);
    let log = lab.daemon.log();
    assert!(log.contains("needs backends on this host's L2 segment"), "{log}");
    assert!(log.contains("192.0.2.10:80"), "{log}");
    assert_eq!(
        log.matches("needs backends on this host's L2 segment").count(),
        1,
        "on-link ones pass"
    );
    let mut connection = lab.connect();
    assert_backend_sees_the_client(&lab, &mut connection);
}
