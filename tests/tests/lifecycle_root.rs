//! End-to-end tests (root) of a flow's life under hostile traffic: `bg-lb
//! run` in a network namespace with real TCP clients and backends, and
//! segments forged from the client's namespace through a raw socket.
//! - a forged RST with a random sequence number does not end a connection;
//! - NAT state that came apart (one half deleted from the pinned maps, as
//!   an eviction would) never delivers one client's data to another;
//! - spoofed SYNs stay embryonic: counted apart from open flows, never
//!   waited for by a drain, gone after the `syn` timeout.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    sync::atomic::AtomicBool,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bg_lb::{protocol::ServiceStatus, ratio::Pool};
use bg_lb_common::maps::FlowKey;
use bg_lb_tests::{
    lab::{NameLab, NameLabConfig},
    map_surgery::NatMaps,
    packets::{ACK, RST, SYN},
    raw::{RawSender, Segment},
    servers::AcceptLoop,
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");
/// Where the labs that read metrics serve them, inside the LB's namespace.
const METRICS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9750);
/// b1's address: disabled where every connection must go to b0.
const B1: &str = "10.99.0.12:8080";

/// The lab with all new connections on blue, `tables` (e.g. `[timeouts]`)
/// and extra top-level `settings`.
fn start_lab(settings: &str, tables: &str) -> NameLab {
    let config = NameLabConfig {
        settings,
        tables,
        service: "ratio = \"100:0\"\n",
        weight: Some(100),
        ..NameLabConfig::default()
    };
    NameLab::start(BG_LB, 4, None, &config)
}

/// Polls `status` until `done`; panics after 30 s with the daemon log.
fn wait_for(lab: &NameLab, what: &str, done: impl Fn(&ServiceStatus) -> bool) -> ServiceStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = lab.daemon.status("web");
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {status:#?}\n{}",
            lab.daemon.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn embryonic(status: &ServiceStatus) -> u64 {
    status.backends.iter().map(|b| b.embryonic_flows).sum()
}

/// The sum of every series of `/metrics` whose line starts with `series`.
fn metric(lab: &NameLab, series: &str) -> f64 {
    lab.metric(METRICS, series)
}

// --- Forged RSTs --------------------------------------------------------------------

#[test]
fn a_forged_rst_with_a_random_sequence_number_does_not_end_a_pinned_connection() {
    let lab = start_lab(&format!("metrics = \"{METRICS}\"\n"), "[timeouts]\nclosing = \"1s\"\n");
    let mut pinned = lab.connect();
    let backend = pinned.ask().expect("the connection works");
    let raw = RawSender::open_in(&lab.topo.client.ns);
    let mut x = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos() | 1;
    for _ in 0..8 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        raw.send(&Segment {
            src: pinned.local_addr(),
            dst: lab.vip(),
            flags: RST | ACK,
            seq: x,
            ack: x.rotate_left(11),
        });
    }
    // Past the closing timeout and the sweeps after it: a flow the RSTs had
    // ended would be gone by now.
    thread::sleep(Duration::from_secs(4));
    for _ in 0..3 {
        assert_eq!(pinned.ask().expect("the connection survives the forged RSTs"), backend);
    }
    let status = lab.daemon.status("web");
    assert_eq!(status.open_flows(Pool::Blue), 1, "{status:#?}");
    let judged = metric(
        &lab,
        r#"bglb_packets_total{reason="rst_out_of_window",verdict="forward"}"#,
    );
    assert_eq!(
        judged, 8.0,
        "each forged RST reached the LB and was judged out of window"
    );
}

// --- One NAT state ------------------------------------------------------------------

/// Backend b0 answers every line with the line itself, so a client that
/// reads another client's line would show it.
fn echo_on_b0(lab: &mut NameLab) -> AcceptLoop {
    lab.stop_server(0);
    let echo = |stream: TcpStream, _: &AtomicBool| {
        let mut writer = stream.try_clone().expect("clone stream");
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            if writeln!(writer, "{line}").is_err() {
                return;
            }
        }
    };
    AcceptLoop::start(&lab.topo.backends[0].ns, lab.backend_addr(0), echo)
}

/// A line-by-line connection to the VIP.
struct EchoClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl EchoClient {
    fn connect(lab: &NameLab) -> std::io::Result<Self> {
        let vip = lab.vip();
        lab.topo.client.ns.run(move || {
            let stream = TcpStream::connect_timeout(&SocketAddr::V4(vip), Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(3)))?;
            Ok(EchoClient {
                writer: stream.try_clone()?,
                reader: BufReader::new(stream),
            })
        })
    }

    /// Sends `line`; what came back (an error if nothing did).
    fn say(&mut self, line: &str) -> std::io::Result<String> {
        writeln!(self.writer, "{line}")?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(answer.trim_end().to_owned())
    }

    fn key(&self, lab: &NameLab) -> FlowKey {
        let SocketAddr::V4(local) = self.writer.local_addr().expect("connected") else {
            panic!("an IPv4 connection")
        };
        FlowKey::from_client(local, lab.vip())
    }
}

/// One SNAT port and every connection on b0 (an echo server): a second
/// flow can only get the first one's port.
fn one_port_lab() -> (NameLab, AcceptLoop) {
    let mut lab = start_lab("snat_ports = \"20000-20000\"\n", "");
    lab.daemon.ctl_ok(&["backend", "web", B1, "disable"]);
    let echo = echo_on_b0(&mut lab);
    (lab, echo)
}

/// Restarts the daemon and checks that its sweep finds one open flow, `who`.
fn restart_and_count(lab: &mut NameLab, who: &str) {
    lab.daemon.spawn();
    let status = wait_for(lab, "one open flow after the sweep", |s| s.open_flows(Pool::Blue) == 1);
    assert_eq!(embryonic(&status), 0, "{who}");
}

#[test]
fn a_connection_whose_reverse_nat_entry_was_evicted_never_gets_the_next_clients_data() {
    let (mut lab, _echo) = one_port_lab();
    let mut a = EchoClient::connect(&lab).expect("a connects");
    assert_eq!(a.say("a-1").unwrap(), "a-1");
    // The data plane alone must hold: no daemon, so no sweep, meanwhile.
    lab.daemon.kill9();
    let mut maps = NatMaps::pinned(&lab.daemon.pin_dir);
    let a_key = a.key(&lab);
    let (a_nat, _) = maps
        .reverse_entries()
        .into_iter()
        .find(|(_, owner)| *owner == a_key)
        .expect("a owns a reverse-NAT entry");
    maps.evict_reverse(&a_nat);

    // b gets a's port. The backend still holds a's connection on that
    // 4-tuple; b's stack resets it when the backend answers b's SYN with a
    // challenge ACK, and b's retransmitted SYN then connects.
    let mut b = EchoClient::connect(&lab).expect("b connects on the only port");
    assert_eq!(maps.owner(&a_nat), Some(b.key(&lab)), "b owns the port now");
    for i in 0..5 {
        let line = format!("b-{i}");
        assert_eq!(
            b.say(&line).expect("b's connection works"),
            line,
            "b reads only its own data"
        );
    }
    match a.say("a-2") {
        Ok(answer) => panic!("a, whose port b owns, read {answer:?}"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
            ),
            "a is reset, not left hanging: {e}"
        ),
    }
    assert_eq!(b.say("b-last").unwrap(), "b-last");
    restart_and_count(&mut lab, "b");
    assert_eq!(b.say("b-after").unwrap(), "b-after");
}

#[test]
fn a_connection_whose_flow_entry_was_evicted_is_pinned_again_and_keeps_its_port_to_itself() {
    let (mut lab, _echo) = one_port_lab();
    let mut a = EchoClient::connect(&lab).expect("a connects");
    assert_eq!(a.say("a-1").unwrap(), "a-1");
    lab.daemon.kill9();
    let mut maps = NatMaps::pinned(&lab.daemon.pin_dir);
    maps.evict_flow(&a.key(&lab));

    let refused = EchoClient::connect(&lab).err().expect("b finds no free port");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "refused at once with a RST: {refused}"
    );
    for i in 2..6 {
        let line = format!("a-{i}");
        assert_eq!(a.say(&line).expect("a keeps working"), line);
    }
    assert!(maps.flow(&a.key(&lab)).is_some(), "a's flow is pinned again");
    restart_and_count(&mut lab, "a");
    assert_eq!(a.say("a-after").unwrap(), "a-after");
}

// --- Embryonic flows ----------------------------------------------------------------

/// `n` SYNs to the VIP from sources the LB has no route back to, so no
/// client ever acknowledges a SYN-ACK.
fn spoof_syns(lab: &NameLab, n: u16) {
    let raw = RawSender::open_in(&lab.topo.client.ns);
    for i in 0..n {
        let src = SocketAddrV4::new(Ipv4Addr::new(198, 18, (i / 250) as u8, 1 + (i % 250) as u8), 10_000 + i);
        raw.send(&Segment {
            src,
            dst: lab.vip(),
            flags: SYN,
            seq: 1_000_000 + u32::from(i),
            ack: 0,
        });
    }
}

#[test]
fn spoofed_syns_are_embryonic_not_open_and_a_drain_does_not_wait_for_them() {
    let lab = start_lab(&format!("metrics = \"{METRICS}\"\n"), "[timeouts]\nsyn = \"60s\"\n");
    let mut real = lab.connect();
    real.ask().expect("a real connection");
    spoof_syns(&lab, 100);
    let status = wait_for(&lab, "100 embryonic flows", |s| embryonic(s) == 100);
    assert_eq!(status.open_flows(Pool::Blue), 1, "only the real connection is open");
    let new_flows: u64 = status.backends.iter().map(|b| b.new_flows).sum();
    assert_eq!(new_flows, 1, "spoofed SYNs are no new connections");
    let table = lab.daemon.ctl_ok(&["status", "web"]);
    assert!(table.contains("EMBRYONIC"), "{table}");
    assert_eq!(metric(&lab, "bglb_backend_embryonic_flows{"), 100.0);
    assert_eq!(metric(&lab, "bglb_backend_open_flows{"), 1.0);

    drop(real);
    let out = lab.daemon.ctl(&["wait-drained", "web", "blue", "--timeout", "20s"]);
    assert!(
        out.status.success(),
        "the drain waited for spoofed flows: {out:?}\n{:#?}",
        lab.daemon.status("web")
    );
    assert_eq!(
        embryonic(&lab.daemon.status("web")),
        100,
        "they were still there: the drain did not wait for them"
    );
}

#[test]
fn spoofed_syns_expire_after_the_syn_timeout_and_give_their_ports_back() {
    let lab = start_lab("", "[timeouts]\nsyn = \"5s\"\n");
    spoof_syns(&lab, 100);
    wait_for(&lab, "100 embryonic flows", |s| embryonic(s) == 100);
    wait_for(&lab, "every embryonic flow expired", |s| embryonic(s) == 0);
    let maps = NatMaps::pinned(&lab.daemon.pin_dir);
    assert!(maps.flows().is_empty(), "{:?}", maps.flows());
    // Reverse entries whose flow is gone are free ports, which the data
    // plane reuses (the sweep leaves them to it).
    assert!(
        maps.reverse_entries()
            .iter()
            .all(|(_, owner)| maps.flow(owner).is_none()),
        "no SNAT port is held: {:?}",
        maps.reverse_entries()
    );
    assert_eq!(lab.names(5).len(), 5, "real connections are served");
}
