//! A `bg-lb run` process inside a test namespace, with its own config, state
//! dir, admin socket and bpffs pin dir. Dropping it kills the daemon and
//! removes its pins (detaching XDP) and files, even when the test failed.

use std::{
    ffi::OsString,
    fs,
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use bg_lb::dataplane::pins::PinLayout;

use crate::topology::{Family, Host, NetNs};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The `pin_dir`, `state_dir` and `[admin] socket` lines of a config that
/// is only parsed (`bg_lb::config::parse`), never run.
pub const PARSE_ONLY_PATHS: &str =
    "pin_dir = \"/sys/fs/bpf/x\"\nstate_dir = \"/tmp/x\"\n[admin]\nsocket = \"/tmp/x.sock\"\n";

pub struct Daemon {
    /// The bg-lb binary: integration tests pass
    /// `env!("CARGO_BIN_EXE_bg-lb-under-test")`, rebuilt for every run.
    bin: &'static str,
    netns: String,
    pub dir: PathBuf,
    pub pin_dir: PathBuf,
    /// How to start the process, when not `bin run --config FILE`.
    launch: Option<Launch>,
    child: Option<Child>,
}

/// Another way to start the daemon than `BIN run --config FILE`: a container
/// image's ENTRYPOINT and CMD, a systemd unit's ExecStart under `setpriv`, or
/// `podman run` of the image.
pub struct Launch {
    pub program: PathBuf,
    /// In these, [`Launch::NETNS`] and [`Launch::DIR`] stand for what only
    /// the harness knows when it starts the daemon.
    pub args: Vec<OsString>,
    /// Where the test's config is written: the file `args` name.
    pub config: PathBuf,
}

impl Launch {
    /// The namespace the daemon runs in, `/run/netns/NAME`.
    pub const NETNS: &str = "{netns}";
    /// The daemon's directory (state and admin socket), so that a container
    /// can mount it where the config says.
    pub const DIR: &str = "{dir}";
}

impl Daemon {
    /// Writes `config` (whose `pin_dir`, `state_dir` and `[admin] socket`
    /// lines come from [`Daemon::paths_toml`]) and starts the daemon in `ns`,
    /// returning once its admin socket answers.
    pub fn start(bin: &'static str, ns: &NetNs, config: impl FnOnce(&str) -> String) -> Self {
        Self::start_with(bin, ns, None, config)
    }

    /// Like [`Daemon::start`], running `launch` instead; `bin` still serves
    /// `ctl`.
    pub fn start_launched(bin: &'static str, ns: &NetNs, launch: Launch, config: impl FnOnce(&str) -> String) -> Self {
        Self::start_with(bin, ns, Some(launch), config)
    }

    fn start_with(bin: &'static str, ns: &NetNs, launch: Option<Launch>, config: impl FnOnce(&str) -> String) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("bglb-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("test dir");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/bglb-test-{}-{n}", std::process::id()));
        let paths = format!(
            "pin_dir = \"{}\"\nstate_dir = \"{}\"\n[admin]\nsocket = \"{}\"\n",
            pin_dir.display(),
            dir.join("state").display(),
            dir.join("admin.sock").display()
        );
        let mut daemon = Daemon {
            bin,
            netns: ns.name.clone(),
            dir,
            pin_dir,
            launch,
            child: None,
        };
        fs::write(daemon.config_path(), config(&paths)).expect("write config");
        daemon.spawn();
        daemon
    }

    pub fn config_path(&self) -> PathBuf {
        match &self.launch {
            Some(launch) => launch.config.clone(),
            None => self.dir.join("bg-lb.toml"),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// Starts (again) the daemon process and waits for its socket. Only the
    /// network namespace is entered (nsenter), not a mount namespace as with
    /// `ip netns exec`, so the pins land on the host's bpffs and outlive it.
    pub fn spawn(&mut self) {
        let child = self
            .command()
            .spawn()
            .expect("spawn bg-lb run (needs nsenter from util-linux)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ctl(&["status"]).status.success() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("bg-lb run exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "bg-lb run did not answer in 20s:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the daemon (none may be running) for a start that must fail,
    /// and waits for it to exit; panics if it serves instead.
    pub fn run_to_failure(&mut self) -> std::process::ExitStatus {
        assert!(self.child.is_none(), "a daemon is running");
        let mut child = self.command().spawn().expect("spawn bg-lb run");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait for bg-lb run") {
                return status;
            }
            if Instant::now() >= deadline || self.ctl(&["status"]).status.success() {
                let _ = child.kill();
                let _ = child.wait();
                panic!("bg-lb run did not fail:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's command line, inside its network namespace, logging to
    /// `daemon.log`.
    fn command(&self) -> Command {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .expect("log file");
        let mut command = Command::new("nsenter");
        command.arg(format!("--net=/run/netns/{}", self.netns));
        match &self.launch {
            Some(launch) => {
                let netns = format!("/run/netns/{}", self.netns);
                let dir = self.dir.display().to_string();
                let expand = |arg: &OsString| match arg.to_str() {
                    Some(text) => text.replace(Launch::NETNS, &netns).replace(Launch::DIR, &dir).into(),
                    None => arg.clone(),
                };
                command.arg(&launch.program).args(launch.args.iter().map(expand))
            }
            None => command.args([self.bin, "run", "--config"]).arg(self.config_path()),
        };
        command
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            // Its own process group: a terminal's Ctrl-C goes to the test or
            // demo, which then tears everything down in order.
            .process_group(0);
        command
    }

    /// `bg-lb ctl --socket S ARGS` with the terminal's output attached, so
    /// progress bars and tables show as an operator sees them. Its stdin is
    /// closed: a Ctrl-C during `ctl shift` then rolls back at once instead
    /// of asking.
    pub fn ctl_interactive(&self, args: &[&str]) -> std::process::ExitStatus {
        self.ctl_command(args)
            .stdin(std::process::Stdio::null())
            .status()
            .expect("run bg-lb ctl")
    }

    /// `bg-lb ctl --socket S ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_command(args).output().expect("run bg-lb ctl")
    }

    /// `bg-lb ctl --socket S ARGS`, running, its output piped: for
    /// commands that wait (`drain --wait`).
    pub fn ctl_spawn(&self, args: &[&str]) -> std::process::Child {
        self.ctl_command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run bg-lb ctl")
    }

    fn ctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.bin);
        command.arg("ctl").arg("--socket").arg(self.socket()).args(args);
        command
    }

    /// Like [`Daemon::ctl`], panicking with the output unless it succeeds.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "bg-lb ctl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `status --json` for one service, parsed.
    pub fn status(&self, service: &str) -> bg_lb::protocol::ServiceStatus {
        let out = self.ctl_ok(&["--json", "status", service]);
        let reply: bg_lb::protocol::Reply = serde_json::from_str(&out).expect("status JSON");
        reply
            .services
            .and_then(|s| s.into_iter().next())
            .expect("one service in status")
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no cleanup at all, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the daemon process to end on its own (a container killed
    /// from outside, say).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        child.wait().expect("wait for the daemon process")
    }

    /// SIGTERM, waiting for the exit: a clean stop, as `systemctl stop` or
    /// `podman stop` does it; the pinned data plane keeps forwarding.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        child.wait().expect("wait for bg-lb run")
    }

    /// Starts `bg-lb teardown` on the daemon's config (the daemon stopped),
    /// the host stopping for good, without waiting: it withdraws the VIPs at
    /// once and detaches 2 s later. [`finish_teardown`] waits for it.
    pub fn start_teardown(&self) -> Child {
        Command::new(self.bin)
            .arg("teardown")
            .arg("--config")
            .arg(self.config_path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run bg-lb teardown")
    }

    /// SIGHUP: reload the config.
    pub fn hangup(&self) {
        let pid = self.child.as_ref().expect("daemon running").id();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGHUP)
            .expect("SIGHUP");
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Polls the daemon log until it contains `needle` and returns the log.
    /// The 60 s limit only keeps a broken daemon from hanging the test.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} never reached the daemon log:\n{log}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pins_exist(&self) -> bool {
        Path::new(&self.pin_dir).exists()
    }
}

/// Waits for a teardown [`Daemon::start_teardown`] started; panics unless
/// it succeeded. Its output.
pub fn finish_teardown(teardown: Child) -> String {
    let out = teardown.wait_with_output().expect("wait for bg-lb teardown");
    assert!(
        out.status.success(),
        "bg-lb teardown: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        let _ = PinLayout::new(&self.pin_dir).remove_all();
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("daemon log kept in {}:\n{}", self.dir.display(), self.log());
        }
    }
}

/// A `bg-lb demo-backend` process in a backend's namespace, killed on drop.
pub struct DemoBackend {
    bin: &'static str,
    netns: String,
    pub addr: SocketAddr,
    /// Where it listens: `addr`, or every address on its port (`dsr`
    /// backends, which also serve the VIPs on their loopback).
    listen: SocketAddr,
    pub name: String,
    pub version: String,
    /// Extra `demo-backend` flags, e.g. `--fail-percent 50`.
    extra: Vec<String>,
    child: Option<Child>,
}

impl DemoBackend {
    /// Serves HTTP on `addr` (role live) and returns once it accepts
    /// connections.
    pub fn start(bin: &'static str, ns: &NetNs, addr: impl Into<SocketAddr>, name: &str, version: &str) -> Self {
        let addr = addr.into();
        Self::start_listening(bin, ns, addr, addr, name, version)
    }

    /// Like [`DemoBackend::start`], listening on `listen` and reached for
    /// readiness and direct requests at `addr`.
    fn start_listening(
        bin: &'static str,
        ns: &NetNs,
        addr: SocketAddr,
        listen: SocketAddr,
        name: &str,
        version: &str,
    ) -> Self {
        let mut backend = DemoBackend {
            bin,
            netns: ns.name.clone(),
            addr,
            listen,
            name: name.into(),
            version: version.into(),
            extra: Vec::new(),
            child: None,
        };
        backend.spawn(ns, "live");
        backend
    }

    /// One serving v1 on `port` of every host's IPv4 address, named b0, b1,
    /// ... in order.
    pub fn start_on_each(bin: &'static str, hosts: &[Host], port: u16) -> Vec<DemoBackend> {
        Self::start_on_each_listening(bin, hosts, Family::Ipv4, port, false)
    }

    /// Like [`DemoBackend::start_on_each`], on each host's `family`
    /// address; with `any_address`, each listens on every address of that
    /// family on its host.
    pub fn start_on_each_listening(
        bin: &'static str,
        hosts: &[Host],
        family: Family,
        port: u16,
        any_address: bool,
    ) -> Vec<DemoBackend> {
        hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let addr = SocketAddr::new(h.addr_of(family), port);
                let listen = if any_address {
                    SocketAddr::new(family.unspecified(), port)
                } else {
                    addr
                };
                DemoBackend::start_listening(bin, &h.ns, addr, listen, &format!("b{i}"), "v1")
            })
            .collect()
    }

    fn spawn(&mut self, ns: &NetNs, role: &str) {
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args([
                self.bin,
                "demo-backend",
                "--listen",
                &self.listen.to_string(),
                "--name",
                &self.name,
            ])
            .args(["--version", &self.version, "--role", role])
            .args(&self.extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn demo-backend");
        self.child = Some(child);
        let (deadline, addr) = (Instant::now() + Duration::from_secs(10), self.addr);
        while ns.run(move || std::net::TcpStream::connect(addr).is_err()) {
            assert!(Instant::now() < deadline, "demo-backend on {addr} did not start");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as a deploy does: in-flight requests finish first.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    /// Starts it again after [`DemoBackend::kill`], as it was.
    pub fn restart(&mut self, ns: &NetNs) {
        self.kill();
        self.spawn(ns, "live");
    }

    /// A deploy: stop gracefully, start `version` in `role` (a new build
    /// comes up in standby to be checked before it takes live traffic).
    pub fn redeploy(&mut self, ns: &NetNs, version: &str, role: &str) {
        self.redeploy_with(ns, version, role, &[]);
    }

    /// Like [`DemoBackend::redeploy`], with extra `demo-backend` flags (a
    /// faulty build: `--fail-percent N`).
    pub fn redeploy_with(&mut self, ns: &NetNs, version: &str, role: &str, extra: &[&str]) {
        self.stop();
        self.version = version.into();
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.spawn(ns, role);
    }
}

impl Drop for DemoBackend {
    fn drop(&mut self) {
        self.kill();
    }
}
