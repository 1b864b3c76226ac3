//! Control-plane end-to-end tests (root): `bg-lb run` in a network namespace
//! driven by `bg-lb ctl`, with real TCP clients and backends.

use std::{
    fs,
    io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::net::UnixStream,
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use bg_lb::ratio::Pool;
use bg_lb_tests::{
    lab::{NameLab, NameLabConfig, pool_of_name},
    servers::{AcceptLoop, NameClient, ask_names},
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");
const METRICS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9750);

/// Four backends (b0, b1 blue; b2, b3 green) of weight 100 at `ratio`.
fn start_lab(ratio: &str) -> NameLab {
    start_lab_with(ratio, "")
}

/// Like [`start_lab`], with extra top-level config lines.
fn start_lab_with(ratio: &str, settings: &str) -> NameLab {
    let config = NameLabConfig {
        settings,
        service: &format!("ratio = \"{ratio}\"\n"),
        weight: Some(100),
        ..NameLabConfig::default()
    };
    NameLab::start(BG_LB, 4, None, &config)
}

#[test]
fn ctl_ratio_splits_new_connections_30_70() {
    let lab = start_lab("50:50");
    let out = lab.daemon.ctl_ok(&["ratio", "web", "30:70"]);
    assert!(out.contains("50:50 -> 30:70"), "{out}");
    let names = lab.names(1000);
    let blue = names.iter().filter(|n| pool_of_name(n) == Pool::Blue).count();
    assert!(
        (250..=350).contains(&blue),
        "30:70 sent {blue}/1000 connections to blue"
    );
    let status = lab.daemon.status("web");
    let new_flows: u64 = status.backends.iter().map(|b| b.new_flows).sum();
    assert!(new_flows >= 1000, "status counts the new flows: {new_flows}");
}

#[test]
fn ratio_to_a_pool_without_enabled_backends_is_refused_unless_forced() {
    let lab = start_lab("100:0");
    for b in ["10.99.0.13:8080", "10.99.0.14:8080"] {
        lab.daemon.ctl_ok(&["backend", "web", b, "disable"]);
    }
    let out = lab.daemon.ctl(&["ratio", "web", "0:100"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("green has no enabled backend"),
        "{out:?}"
    );
    assert_eq!(
        lab.daemon.status("web").ratio.to_string(),
        "100:0",
        "a refused request changes nothing"
    );
    lab.daemon.ctl_ok(&["ratio", "web", "0:100", "--force"]);
    let status = lab.daemon.status("web");
    assert_eq!(
        (status.ratio.to_string(), status.effective_ratio.to_string()),
        ("0:100".into(), "100:0".into())
    );
    assert!(
        lab.names(20).iter().all(|n| pool_of_name(n) == Pool::Blue),
        "green's share spills to blue, not into a blackhole"
    );
}

#[test]
fn drain_wait_returns_only_after_the_long_lived_connection_to_the_pool_closes() {
    let lab = start_lab("100:0");
    let mut long_lived = lab.connect();
    let backend = long_lived.ask().unwrap();
    assert_eq!(pool_of_name(&backend), Pool::Blue);

    lab.assert_drain_waits_for(long_lived, &backend);
}

#[test]
fn wait_drained_times_out_with_a_distinct_exit_code() {
    let lab = start_lab("100:0");
    let mut long_lived = lab.connect();
    long_lived.ask().unwrap();
    let out = lab.daemon.ctl(&["wait-drained", "web", "blue", "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("still 1 open flow"),
        "{out:?}"
    );
}

#[test]
fn daemon_kill9_and_restart_keeps_open_connections_and_serves_during_the_gap() {
    let mut lab = start_lab("50:50");
    lab.daemon.ctl_ok(&["ratio", "web", "0:100"]);
    let mut long_lived = lab.connect();
    let backend = long_lived.ask().unwrap();
    assert_eq!(pool_of_name(&backend), Pool::Green);

    lab.daemon.kill9();
    for _ in 0..10 {
        assert_eq!(long_lived.ask().expect("open connection works with no daemon"), backend);
    }
    let during_gap = lab.names(50);
    assert!(
        during_gap.iter().all(|n| pool_of_name(n) == Pool::Green),
        "the pinned data plane serves new connections: {during_gap:?}"
    );

    lab.daemon.spawn();
    assert_eq!(long_lived.ask().expect("open connection survives the restart"), backend);
    let status = lab.daemon.status("web");
    assert_eq!(
        status.ratio.to_string(),
        "0:100",
        "the operator's ratio survives the restart"
    );
    assert!(
        status.open_flows(Pool::Green) >= 1,
        "the adopted flow table still counts the open connection"
    );
    assert!(lab.names(50).iter().all(|n| pool_of_name(n) == Pool::Green));
    for _ in 0..10 {
        assert_eq!(long_lived.ask().unwrap(), backend);
    }
}

#[test]
fn reload_with_a_broken_config_is_rejected_and_traffic_is_unaffected() {
    let lab = start_lab("100:0");
    let mut long_lived = lab.connect();
    let backend = long_lived.ask().unwrap();
    let good = fs::read_to_string(lab.daemon.config_path()).unwrap();
    let broken = good.replacen("weight = 100", "weight = 5000", 1);
    let line = broken.lines().position(|l| l.contains("weight = 5000")).unwrap() + 1;
    fs::write(lab.daemon.config_path(), &broken).unwrap();

    let out = lab.daemon.ctl(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("bg-lb.toml:{line}:")) && err.contains("weight"),
        "{err}"
    );
    // SIGHUP with a broken config is logged as rejected.
    lab.daemon.hangup();
    lab.daemon.wait_for_log("config rejected");
    assert!(
        lab.names(20).iter().all(|n| pool_of_name(n) == Pool::Blue),
        "still serving the previous config"
    );
    assert_eq!(long_lived.ask().unwrap(), backend);

    // A valid change then applies: b0 leaves blue, so blue is b1 alone.
    let without_b0 = good.replacen(
        "pool = \"blue\"\naddress = \"10.99.0.11:8080\"\nweight = 100",
        "pool = \"blue\"\naddress = \"10.99.0.11:8080\"\nweight = 0",
        1,
    );
    fs::write(lab.daemon.config_path(), without_b0).unwrap();
    lab.daemon.ctl_ok(&["reload"]);
    assert!(lab.names(20).iter().all(|n| n == "b1"));
}

#[test]
fn malformed_admin_requests_get_error_replies_and_change_nothing() {
    let lab = start_lab("100:0");
    let stream = UnixStream::connect(lab.daemon.socket()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut ask = |line: &[u8]| {
        // The daemon refuses an oversized request after 64 KiB and closes the
        // connection, so the rest of our write may fail; its reply is
        // already waiting to be read.
        let _ = writer.write_all(line).and_then(|()| writer.write_all(b"\n"));
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap();
        reply
    };
    for bad in [
        &b"garbage"[..],
        b"{\"cmd\":\"explode\"}",
        b"{\"cmd\":\"ratio\",\"service\":\"web\",\"ratio\":\"70:70\"}",
        b"{\"cmd\":\"drain\",\"service\":\"nope\",\"pool\":\"blue\"}",
    ] {
        let reply = ask(bad);
        assert!(reply.starts_with("{\"ok\":false,\"error\":"), "{reply}");
    }
    let reply = ask(&vec![b'x'; 70 * 1024]);
    assert!(reply.contains("over 64 KiB"), "{reply}");
    assert_eq!(lab.daemon.status("web").ratio.to_string(), "100:0");
    assert!(lab.names(5).iter().all(|n| pool_of_name(n) == Pool::Blue));
}

#[test]
fn teardown_detaches_the_data_plane_and_removes_the_pins() {
    let mut lab = start_lab("100:0");
    assert!(lab.names(3).iter().all(|n| pool_of_name(n) == Pool::Blue));
    lab.daemon.kill9();
    let out = Command::new(BG_LB)
        .args(["teardown", "--config"])
        .arg(lab.daemon.config_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!lab.daemon.pins_exist());
    // Detached when teardown returns, not some time after.
    let link = lab.topo.lb.ns.ip("link show eth0");
    assert!(!link.contains("xdp"), "XDP still on eth0 after teardown: {link}");
    // The VIP is the LB host's own address with nothing listening on :80.
    let err = ask_names(&lab.topo.client.ns, lab.vip(), 1).expect_err("no load balancing after teardown");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn snat_port_exhaustion_refuses_new_connections_at_once_and_the_data_plane_logs_why_once_a_second() {
    // Four SNAT ports and all traffic on b0: four connections fit.
    let lab = start_lab_with("100:0", "snat_ports = \"20000-20003\"\n");
    lab.daemon.ctl_ok(&["backend", "web", "10.99.0.12:8080", "disable"]);
    let mut open: Vec<_> = (0..4).map(|_| lab.connect()).collect();
    for c in &mut open {
        assert_eq!(c.ask().unwrap(), "b0");
    }
    let vip = lab.vip();
    let started = Instant::now();
    let refused = lab
        .topo
        .client
        .ns
        .run(move || (0..20).map(|_| NameClient::connect(vip).err()).collect::<Vec<_>>());
    for e in refused {
        let e = e.expect("a fifth concurrent connection cannot get a SNAT port");
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "refused with a RST, not left to SYN retries: {e}"
        );
    }
    // One line a second; CPUs racing at the same instant may add one.
    let allowed = started.elapsed().as_secs() as usize + 2;
    let lines = lab
        .daemon
        .wait_for_log("no free SNAT (address, port)")
        .matches("no free SNAT (address, port)")
        .count();
    assert!(
        lines <= allowed,
        "{lines} log lines for 20 refusals (at most {allowed})"
    );
    for c in &mut open {
        assert_eq!(c.ask().unwrap(), "b0", "existing connections are unaffected");
    }
}

/// `ctl drain --deadline`: an idle blue connection left open past the
/// deadline is reset at both ends by the data plane (the client's and the
/// backend's reads fail with ECONNRESET), `wait-drained` then returns and
/// says how many were reset, as do `ctl status` and the `deadline_reset`
/// series on /metrics, and the deadline outlives a daemon restart in
/// between.
#[test]
fn a_drain_deadline_resets_a_leftover_idle_connection_at_both_ends_even_across_a_restart() {
    let mut lab = start_lab_with("100:0", &format!("metrics = \"{METRICS}\"\n"));
    let deadline_resets = r#"bglb_packets_total{reason="deadline_reset",verdict="reset"}"#;
    assert_eq!(lab.metric(METRICS, deadline_resets), 0.0, "none before the deadline");
    let (ended, backend_saw) = mpsc::channel();
    lab.stop_server(0);
    lab.stop_server(1);
    let _watchers = [
        watching_backend(&lab, 0, ended.clone()),
        watching_backend(&lab, 1, ended),
    ];
    let mut idle = lab.connect();
    let name = idle.ask().expect("the connection works");
    assert_eq!(pool_of_name(&name), Pool::Blue);

    let out = lab.daemon.ctl_ok(&["drain", "web", "blue", "--deadline", "4s"]);
    assert!(out.contains("will be reset"), "{out}");
    lab.daemon.terminate();
    lab.daemon.spawn();
    let out = lab.daemon.ctl_ok(&["wait-drained", "web", "blue", "--timeout", "60s"]);
    assert!(
        out.contains("1 connection(s) reset at the drain deadline"),
        "{out}\n{}",
        lab.daemon.log()
    );
    let client_saw = idle.next_line().expect_err("the client's connection was reset");
    assert_eq!(client_saw.kind(), ErrorKind::ConnectionReset, "{client_saw}");
    let backend_saw = backend_saw
        .recv_timeout(Duration::from_secs(30))
        .expect("the backend's read ended");
    assert_eq!(backend_saw, ErrorKind::ConnectionReset);
    let deadline = lab.daemon.status("web").drain_deadline.expect("the deadline is shown");
    assert_eq!((deadline.pool, deadline.reset), (Pool::Blue, Some(1)));
    assert!(lab.daemon.log().contains("drain deadline passed"));
    assert_eq!(
        lab.metric(METRICS, deadline_resets),
        1.0,
        "one connection reset (two RSTs) counts once"
    );
}

/// Stands in for blue backend `i`: answers a connection's first line with
/// its name, then reports how its next read ended (health checks, which
/// send nothing, are not reported).
fn watching_backend(lab: &NameLab, i: usize, ended: mpsc::Sender<ErrorKind>) -> AcceptLoop {
    let name = format!("b{i}");
    AcceptLoop::start(&lab.topo.backends[i].ns, lab.backend_addr(i), move |stream, _| {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
        let Ok(mut writer) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || writeln!(writer, "{name}").is_err() {
            return;
        }
        let kind = match reader.read(&mut [0; 64]) {
            Ok(0) => ErrorKind::UnexpectedEof,
            Ok(_) => ErrorKind::InvalidData,
            Err(e) => e.kind(),
        };
        let _ = ended.send(kind);
    })
}
