//! Operational contracts of `bg-lb run` (root): systemd's notify protocol
//! and the unit's ExecReload, logging (levels, colour, journald), the
//! listeners' connection caps and idle timeouts, and the host checks at
//! startup (SNAT range, bpffs lifetime, XDP mode on veth).

use std::{
    fs,
    io::{ErrorKind, Read as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    os::unix::{
        net::{UnixDatagram, UnixStream},
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use bg_lb::{
    cli::ctl::Client,
    dataplane::pins::PinLayout,
    protocol::{Request, StatusRequest},
};
use bg_lb_tests::{
    daemon::{Daemon, Launch},
    deploy::{Unit, unit_path},
    http,
    lab::{BACKEND_PORT, NameLab, NameLabConfig, SERVICE},
    require_root,
    servers::{NameServer, ask_names},
    topology::{LB_ADDR, NetNs, OneArm},
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");
const METRICS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9750);
const BPFFS_WARNING: &str = "will not outlive this daemon";

/// A directory of the test's own files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("bglb-ops-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("test dir");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A datagram socket standing in for systemd's NOTIFY_SOCKET or journald's
/// socket: the messages the daemon sent, one per datagram.
struct FakeSocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl FakeSocket {
    fn bind(path: PathBuf) -> Self {
        let socket = UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        FakeSocket { socket, path }
    }

    /// Messages until one satisfies `last` (returned too), or `within` ends.
    fn until(&self, within: Duration, last: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut messages = Vec::new();
        let mut buf = vec![0; 64 * 1024];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = last(&message);
                messages.push(message);
                if done {
                    return messages;
                }
            }
        }
        messages
    }

    /// Every message sent during `within`.
    fn during(&self, within: Duration) -> Vec<String> {
        self.until(within, |_| false)
    }

    /// Discards the messages already queued, so that what is read next was
    /// sent from now on (the socket buffers whatever came while the test
    /// was busy elsewhere).
    fn drain(&self) {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = vec![0; 64 * 1024];
        while self.socket.recv(&mut buf).is_ok() {}
        self.socket.set_nonblocking(false).unwrap();
    }
}

/// A process killed (and reaped) on drop, so a failed test leaves no daemon.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sigterm(child: &Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
}

/// The unit's ExecReload, with the built binary and the test daemon's socket.
fn unit_exec_reload(socket: &Path) -> Command {
    let unit = Unit::read(&unit_path());
    let words: Vec<&str> = unit
        .get("Service", "ExecReload")
        .expect("ExecReload")
        .split_whitespace()
        .collect();
    let mut command = Command::new(BG_LB);
    let mut args = words[1..].iter();
    while let Some(word) = args.next() {
        command.arg(word);
        if *word == "--socket" {
            args.next();
            command.arg(socket);
        }
    }
    command
}

/// The daemon of a lab started with `launch`, over two backends.
fn lab_with(launch: Launch, settings: &str, admin: &str) -> NameLab {
    let config = NameLabConfig {
        settings,
        admin,
        ..NameLabConfig::default()
    };
    NameLab::start(BG_LB, 2, Some(launch), &config)
}

/// `sh -c SCRIPT` running the daemon with the config `launch.config`; the
/// script gets the binary as `$0` and the config as `$1`.
fn sh_launch(dir: &TempDir, script: &str, extra: &[&str]) -> Launch {
    let config = dir.path("bg-lb.toml");
    let mut args = vec![
        "-c".into(),
        script.into(),
        BG_LB.into(),
        config.clone().into_os_string(),
    ];
    args.extend(extra.iter().map(Into::into));
    Launch {
        program: PathBuf::from("sh"),
        args,
        config,
    }
}

/// Like [`sh_launch`], in a private mount namespace of its own
/// (`unshare -m`, mounts not propagated back).
fn unshare_launch(dir: &TempDir, script: &str, extra: &[&str]) -> Launch {
    let launch = sh_launch(dir, script, extra);
    Launch {
        program: PathBuf::from("unshare"),
        args: ["-m".into(), "sh".into()].into_iter().chain(launch.args).collect(),
        config: launch.config,
    }
}

fn assert_no_ansi(log: &str) {
    assert!(
        !log.contains('\u{1b}'),
        "a log that is not a terminal has no ANSI escape codes:\n{log:?}"
    );
}

#[test]
fn ready_comes_only_once_the_data_plane_forwards_and_reload_status_and_watchdog_follow() {
    let mut lab = NameLab::start(BG_LB, 2, None, &NameLabConfig::default());
    // A fresh start, not an adoption: nothing forwards until the new daemon
    // has attached and programmed its own data plane.
    lab.daemon.kill9();
    let out = Command::new(BG_LB)
        .args(["teardown", "--config"])
        .arg(lab.daemon.config_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(ask_names(&lab.topo.client.ns, lab.vip(), 1).is_err(), "torn down");

    let dir = TempDir::new("notify");
    let notify = FakeSocket::bind(dir.path("notify.sock"));
    let (log_read, log_write) = nix::unistd::pipe().expect("pipe");
    // WATCHDOG_PID names the daemon, as systemd sets it: nsenter and sh exec.
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.topo.lb.ns.name))
        .args([
            "sh",
            "-c",
            "export WATCHDOG_PID=$$; exec \"$0\" run --config \"$1\"",
            BG_LB,
        ])
        .arg(lab.daemon.config_path())
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("JOURNAL_STREAM")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_write))
        .process_group(0)
        .spawn()
        .expect("spawn bg-lb run");
    let mut daemon = Killed(child);
    let log = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let log = Arc::clone(&log);
        thread::spawn(move || {
            let mut pipe = fs::File::from(log_read);
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                log.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let log_text = || String::from_utf8_lossy(&log.lock().unwrap()).into_owned();

    let started = notify.until(Duration::from_secs(20), |m| m.contains("READY=1"));
    // Checked at once: READY=1 promises a working LB.
    let served = ask_names(&lab.topo.client.ns, lab.vip(), 5);
    let link = lab.topo.lb.ns.ip("link show eth0");
    let ready = started.last().cloned().unwrap_or_default();
    assert!(
        ready.contains("READY=1"),
        "no READY=1 in 20s: {started:?}\n{}",
        log_text()
    );
    let served = served.unwrap_or_else(|e| panic!("READY=1 came before the VIP served: {e}\n{}", log_text()));
    assert!(served.iter().all(|n| n == "b0" || n == "b1"), "{served:?}");
    assert!(link.contains("xdp"), "XDP attached at READY=1: {link}");
    assert!(ready.contains("STATUS=serving 1 service(s) on eth0; "), "{ready:?}");
    assert_eq!(
        started.iter().filter(|m| m.contains("READY=1")).count(),
        1,
        "{started:?}"
    );

    // WATCHDOG_USEC=400ms: a ping every 200ms from the event loop. Counted
    // from now: the pings sent since READY=1, while the test connected
    // through the VIP, are still queued (13 were counted once, in a CI run
    // on a loaded machine).
    notify.drain();
    let pings = notify
        .during(Duration::from_millis(1500))
        .iter()
        .filter(|m| m.contains("WATCHDOG=1"))
        .count();
    assert!((4..=12).contains(&pings), "{pings} watchdog pings in 1.5s");

    // The unit's ExecReload waits for the daemon's verdict.
    let out = unit_exec_reload(&lab.daemon.socket()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let reload = notify.until(Duration::from_secs(5), |m| m.contains("READY=1"));
    let reloading = reload
        .iter()
        .position(|m| m.contains("RELOADING=1"))
        .expect("RELOADING=1");
    assert!(reload[reloading].contains("MONOTONIC_USEC="), "{reload:?}");
    assert!(
        reload.last().unwrap().contains("STATUS=serving 1 service(s)"),
        "{reload:?}"
    );

    let config = fs::read_to_string(lab.daemon.config_path()).unwrap();
    fs::write(lab.daemon.config_path(), format!("bogus_key = 1\n{config}")).unwrap();
    let out = unit_exec_reload(&lab.daemon.socket()).output().unwrap();
    assert!(!out.status.success(), "a rejected config fails `systemctl reload`");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bg-lb.toml:1:"), "{stderr}");
    let rejected = notify.until(Duration::from_secs(5), |m| m.contains("READY=1"));
    assert!(rejected.iter().any(|m| m.contains("RELOADING=1")), "{rejected:?}");
    assert!(
        rejected
            .last()
            .unwrap()
            .contains("STATUS=reload rejected, still serving the previous config"),
        "{rejected:?}"
    );
    fs::write(lab.daemon.config_path(), config).unwrap();

    sigterm(&daemon.0);
    assert!(daemon.0.wait().unwrap().success());
    let stopping = notify.during(Duration::from_millis(200));
    assert!(stopping.iter().any(|m| m.contains("STOPPING=1")), "{stopping:?}");
    reader.join().unwrap();
    let log = log_text();
    assert!(log.contains("bg-lb running"), "{log}");
    assert_no_ansi(&log);
}

#[test]
fn run_with_detach_on_exit_forwards_until_sigterm_then_detaches_and_unpins_before_it_exits() {
    let dir = TempDir::new("detach-on-exit");
    let launch = sh_launch(&dir, "exec \"$0\" run --config \"$1\" --detach-on-exit", &[]);
    let mut lab = lab_with(launch, "", "");
    let mut open = lab.connect();
    let backend = open.ask().expect("a connection through the VIP");
    assert!(lab.daemon.pins_exist(), "pinned while running");

    let status = lab.daemon.terminate();
    assert!(
        status.success(),
        "bg-lb run --detach-on-exit exited {status}:\n{}",
        lab.daemon.log()
    );
    // All of it is gone when the process has exited, not some time after.
    assert!(
        !lab.daemon.pins_exist(),
        "pins left in {}",
        lab.daemon.pin_dir.display()
    );
    let link = lab.topo.lb.ns.ip("link show eth0");
    assert!(!link.contains("xdp"), "XDP still on eth0 after the exit: {link}");
    assert!(
        lab.daemon.log().contains("data plane detached and unpinned"),
        "{}",
        lab.daemon.log()
    );
    // The VIP is now the LB host's own address with nothing listening on it:
    // the open connection ends and new ones are refused.
    let err = open.ask().expect_err("the connection outlived the detached data plane");
    assert!(
        matches!(err.kind(), ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof),
        "{backend}'s connection ended with {err}"
    );
    let err = ask_names(&lab.topo.client.ns, lab.vip(), 1).expect_err("no load balancing after the exit");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn a_daemon_refused_at_startup_never_says_ready() {
    require_root();
    let lb = NetNs::new("notready");
    let dir = TempDir::new("notready");
    let notify = FakeSocket::bind(dir.path("notify.sock"));
    let config = dir.path("bg-lb.toml");
    fs::write(
        &config,
        format!(
            "interface = \"nope0\"\nsnat_address = \"{LB_ADDR}\"\npin_dir = \"/sys/fs/bpf/bglb-ops-{}-notready\"\n\
             state_dir = \"{}\"\n[admin]\nsocket = \"{}\"\n",
            std::process::id(),
            dir.path("state").display(),
            dir.path("admin.sock").display()
        ),
    )
    .unwrap();
    let out = Command::new("timeout")
        .args(["20", "nsenter"])
        .arg(format!("--net=/run/netns/{}", lb.name))
        .args([BG_LB, "run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify.path)
        .output()
        .unwrap();
    let _ = PinLayout::new(format!("/sys/fs/bpf/bglb-ops-{}-notready", std::process::id())).remove_all();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let messages = notify.during(Duration::from_millis(200));
    assert!(!messages.iter().any(|m| m.contains("READY=1")), "{messages:?}");
}

#[test]
fn log_level_flag_filters_and_wins_over_rust_log_and_files_get_no_colour() {
    let dir = TempDir::new("level");
    let launch = sh_launch(
        &dir,
        "export RUST_LOG=debug; exec \"$0\" run --config \"$1\" --log-level warn",
        &[],
    );
    let lab = lab_with(launch, "", "");
    // An ERROR line: a SIGHUP with a broken config.
    let config = fs::read_to_string(lab.daemon.config_path()).unwrap();
    fs::write(lab.daemon.config_path(), format!("bogus_key = 1\n{config}")).unwrap();
    lab.daemon.hangup();
    let log = lab.daemon.wait_for_log("config rejected");
    for below_warn in ["bg-lb running", "INFO", "DEBUG"] {
        assert!(
            !log.contains(below_warn),
            "--log-level warn logged {below_warn:?}:\n{log}"
        );
    }
    assert_no_ansi(&log);
}

/// `unshare -m` with a tmpfs on /run: no journald unless `fake_journald`
/// is linked in, and JOURNAL_STREAM set to the daemon's stderr (the
/// harness's log file), as systemd sets it for a unit.
fn journal_launch(dir: &TempDir, fake_journald: Option<&Path>) -> Launch {
    let script = "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
                  { [ -z \"$2\" ] || ln -s \"$2\" /run/systemd/journal/socket; } && \
                  export JOURNAL_STREAM=\"$(stat -L -c %d:%i /proc/self/fd/2)\" && \
                  exec \"$0\" run --config \"$1\"";
    let socket = fake_journald.map_or(String::new(), |p| p.display().to_string());
    unshare_launch(dir, script, &[&socket])
}

/// The fields of one record in journald's native protocol: `KEY=value\n`,
/// or `KEY\n`, a little-endian u64 length, the value and `\n`.
fn journal_fields(record: &str) -> Vec<(String, String)> {
    let mut bytes = record.as_bytes();
    let mut fields = Vec::new();
    while let Some(end) = bytes.iter().position(|&b| b == b'=' || b == b'\n') {
        let key = String::from_utf8_lossy(&bytes[..end]).into_owned();
        if bytes[end] == b'=' {
            let rest = &bytes[end + 1..];
            let line = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            fields.push((key, String::from_utf8_lossy(&rest[..line]).into_owned()));
            bytes = rest.get(line + 1..).unwrap_or_default();
        } else {
            let rest = &bytes[end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().expect("8 length bytes")) as usize;
            fields.push((key, String::from_utf8_lossy(&rest[8..8 + len]).into_owned()));
            bytes = rest.get(8 + len + 1..).unwrap_or_default();
        }
    }
    fields
}

#[test]
fn logs_go_to_journald_with_fields_when_stderr_is_the_journal() {
    let dir = TempDir::new("journald");
    let journald = FakeSocket::bind(dir.path("journal.sock"));
    let lab = lab_with(journal_launch(&dir, Some(&journald.path)), "", "");
    let records = journald.until(Duration::from_secs(5), |m| {
        journal_fields(m)
            .iter()
            .any(|(k, v)| k == "MESSAGE" && v == "bg-lb running")
    });
    let running = journal_fields(records.last().expect("records from the daemon"));
    let field = |key: &str| {
        running
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key} in {running:?}"))
    };
    assert_eq!(field("MESSAGE"), "bg-lb running");
    assert_eq!(field("PRIORITY"), "5", "INFO is notice in tracing-journald");
    assert_eq!(field("SYSLOG_IDENTIFIER"), "bg-lb");
    assert_eq!(Path::new(field("F_SOCKET")), lab.daemon.socket());
    assert_eq!(Path::new(field("F_CONFIG")), lab.daemon.config_path());
    assert!(
        !lab.daemon.log().contains("bg-lb running"),
        "journald records do not go to stderr too"
    );
}

#[test]
fn without_journald_the_logs_fall_back_to_stderr_lines() {
    let dir = TempDir::new("nojournald");
    let lab = lab_with(journal_launch(&dir, None), "", "");
    let log = lab.daemon.log();
    assert!(log.contains("journald's socket is unreachable"), "{log}");
    assert!(log.contains("bg-lb running"), "{log}");
    assert_no_ansi(&log);
}

#[test]
fn idle_connections_beyond_the_caps_never_lock_out_ctl_or_scrapes_and_idle_ones_close() {
    let settings = format!("metrics = \"{METRICS}\"\nmetrics_max_connections = 4\nmetrics_idle_timeout = \"4s\"\n");
    let config = NameLabConfig {
        settings: &settings,
        admin: "max_connections = 4\nidle_timeout = \"4s\"\n",
        ..NameLabConfig::default()
    };
    let lab = NameLab::start(BG_LB, 2, None, &config);
    let held_admin: Vec<UnixStream> = (0..10)
        .map(|_| UnixStream::connect(lab.daemon.socket()).expect("connect the admin socket"))
        .collect();
    let held_metrics: Vec<TcpStream> = lab.topo.lb.ns.run(|| {
        (0..10)
            .map(|_| TcpStream::connect(METRICS).expect("connect metrics"))
            .collect()
    });

    let asked = Instant::now();
    let status = lab.daemon.status(SERVICE);
    assert_eq!(status.backends.len(), 2);
    let scrape = lab
        .topo
        .lb
        .ns
        .run(|| http::request(METRICS, "GET", "/metrics"))
        .expect("scrape");
    assert_eq!(scrape.status, 200, "{}", scrape.body);
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "answered only after {:?}: the idle connections were closed by their timeout, not for the new ones",
        asked.elapsed()
    );

    let mut idle_client = Client::connect(&lab.daemon.socket()).unwrap();
    for mut held in held_admin {
        held.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        assert_eq!(held.read(&mut [0; 16]).expect("closed, not timed out"), 0);
    }
    for mut held in held_metrics {
        held.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        match held.read(&mut [0; 16]) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("an idle metrics connection was not closed: {other:?}"),
        }
    }
    // ctl's connection was closed while idle too; it reconnects.
    thread::sleep(Duration::from_millis(4500));
    let reply = idle_client
        .request(&Request::Status(StatusRequest { service: None }))
        .expect("a request after the idle timeout");
    assert!(reply.ok, "{reply:?}");

    let log = lab.daemon.log();
    assert!(!log.contains(BPFFS_WARNING), "pins on the host's bpffs: {log}");
    assert_no_ansi(&log);
    let link = lab.topo.lb.ns.ip("link show eth0");
    assert!(
        link.contains("xdp") && !link.contains("xdpgeneric"),
        "xdp_mode = \"native\" on a veth stays native: {link}"
    );
}

/// A namespace with one veth at LB_ADDR and a config using `snat`, for
/// checks that refuse to start before the daemon touches bpffs.
struct SnatRig {
    lb: NetNs,
    config: PathBuf,
    pin_dir: String,
    _dir: TempDir,
}

impl SnatRig {
    fn new(name: &str, snat: &str) -> Self {
        require_root();
        let lb = NetNs::new(name);
        lb.ip("link add eth0 type veth peer name eth1");
        lb.ip(&format!("addr add {LB_ADDR}/24 dev eth0"));
        lb.ip("link set eth0 up");
        let dir = TempDir::new(name);
        let pin_dir = format!("/sys/fs/bpf/bglb-ops-{}-{name}", std::process::id());
        let config = dir.path("bg-lb.toml");
        fs::write(
            &config,
            format!(
                "interface = \"eth0\"\n{snat}\npin_dir = \"{pin_dir}\"\nstate_dir = \"{}\"\n[admin]\nsocket = \"{}\"\n",
                dir.path("state").display(),
                dir.path("admin.sock").display()
            ),
        )
        .unwrap();
        SnatRig {
            lb,
            config,
            pin_dir,
            _dir: dir,
        }
    }

    /// `bg-lb <args> <config>` in the namespace.
    fn bg_lb(&self, args: &[&str]) -> std::process::Output {
        Command::new("timeout")
            .args(["20", "nsenter"])
            .arg(format!("--net=/run/netns/{}", self.lb.name))
            .arg(BG_LB)
            .args(args)
            .arg(&self.config)
            .output()
            .unwrap()
    }

    /// Runs the daemon, expects exit 1 before bpffs is touched, and gives its stderr.
    fn refused_start(&self) -> String {
        let out = self.bg_lb(&["run", "--config"]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(!Path::new(&self.pin_dir).exists(), "refused before touching bpffs");
        stderr
    }
}

#[test]
fn snat_ports_overlapping_the_ephemeral_ports_refuse_to_start_and_check_config_warns() {
    let rig = SnatRig::new(
        "snat",
        &format!("snat_address = \"{LB_ADDR}\"\nsnat_ports = \"20000-20003\""),
    );
    rig.lb.sysctl("net.ipv4.ip_local_port_range=20000 30000");

    let stderr = rig.refused_start();
    for expected in [
        "snat_ports 20000-20003 overlaps",
        "net.ipv4.ip_local_port_range = 20000 30000",
        "set snat_ports outside 20000-30000",
        "ip_local_reserved_ports=20000-20003",
    ] {
        assert!(stderr.contains(expected), "{expected:?} missing: {stderr}");
    }

    let out = rig.bg_lb(&["check-config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning, not an error: {stderr}");
    assert!(stderr.contains("warning: snat_ports 20000-20003 overlaps"), "{stderr}");
    assert!(stderr.contains("may not be the daemon's"), "{stderr}");

    rig.lb.sysctl("net.ipv4.ip_local_reserved_ports=20000-20003");
    let out = rig.bg_lb(&["check-config"]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "reserved ports never clash: {out:?}"
    );
}

#[test]
fn a_snat_address_the_host_does_not_have_refuses_to_start() {
    let rig = SnatRig::new(
        "snatlocal",
        &format!("snat_addresses = [\"{LB_ADDR}\", \"10.99.0.77\"]"),
    );
    let stderr = rig.refused_start();
    assert!(
        stderr.contains("SNAT address 10.99.0.77 is not local to this host") && stderr.contains("ip addr add"),
        "{stderr}"
    );
}

#[test]
fn a_bpffs_mounted_by_the_daemon_in_a_private_mount_namespace_is_warned_about() {
    let dir = TempDir::new("bpffs");
    // Like `ip netns exec` or a container without -v /sys/fs/bpf: the
    // host's bpffs is out of sight, so the daemon mounts its own.
    let launch = unshare_launch(
        &dir,
        "mount -t tmpfs tmpfs /sys/fs/bpf && exec \"$0\" run --config \"$1\"",
        &[],
    );
    let lab = lab_with(launch, "", "");
    let log = lab.daemon.log();
    for expected in [
        BPFFS_WARNING,
        // "inside a private mount namespace", or where /proc/1 is out of
        // reach (as in some sandboxes) "cannot tell whether ...".
        "mounted bpffs at /sys/fs/bpf itself",
        "breaking every connection",
        "-v /sys/fs/bpf:/sys/fs/bpf",
        "nsenter --net=/run/netns/NAME",
    ] {
        assert!(log.contains(expected), "{expected:?} missing:\n{log}");
    }
    assert!(log.contains("WARN"), "{log}");
}

#[test]
fn xdp_mode_auto_on_a_veth_attaches_generic_and_forwards_without_a_peer_program() {
    require_root();
    let topo = OneArm::new(2);
    let _servers = NameServer::start_on_each(&topo.backends, BACKEND_PORT);
    // No xdp_pass on the switch-side peer: native XDP_TX frames would vanish.
    let vip = SocketAddrV4::new(topo.vip, 80);
    let backends: String = topo
        .backends
        .iter()
        .map(|b| {
            format!(
                "\n[[service.backend]]\npool = \"blue\"\naddress = \"{}:{BACKEND_PORT}\"\n",
                b.addr
            )
        })
        .collect();
    let daemon = Daemon::start(BG_LB, &topo.lb.ns, |paths| {
        format!(
            "interface = \"eth0\"\nxdp_mode = \"auto\"\nsnat_address = \"{LB_ADDR}\"\nmax_flows = 65536\n\
             lookup_capacity = 524296\n{paths}\n[[service]]\nname = \"{SERVICE}\"\nvip = \"{vip}\"\n{backends}"
        )
    });
    let link = topo.lb.ns.ip("link show eth0");
    assert!(link.contains("xdpgeneric"), "auto on a veth is generic: {link}");
    let names = ask_names(&topo.client.ns, vip, 20)
        .unwrap_or_else(|e| panic!("no traffic through the VIP: {e}\n{}", daemon.log()));
    assert!(names.iter().all(|n| n == "b0" || n == "b1"), "{names:?}");
    let log = daemon.log();
    assert!(log.contains("eth0 is a veth"), "{log}");
    assert!(
        log.contains("xdp_mode = \"native\""),
        "the warning names both fixes: {log}"
    );
}
