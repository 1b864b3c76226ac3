//! One etcd (Debian's etcd-server) for the fleet tests: on loopback for the
//! store tests, or in a namespace for the several-hosts tests. Its data
//! lives in a temporary directory; it is killed by PID and the directory
//! removed on drop (its log printed if the test failed).

use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::topology::NetNs;

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    /// `host:port` of its client URL.
    pub client: SocketAddrV4,
}

impl Etcd {
    /// On 127.0.0.1, on ports free now: no root needed.
    pub fn start_on_loopback() -> Self {
        // Both bound at once, so they differ; released just before etcd binds.
        let bind = || TcpListener::bind("127.0.0.1:0").expect("a free port");
        let (client, peer) = (bind(), bind());
        let port = |l: &TcpListener| l.local_addr().expect("bound").port();
        let (client_port, peer_port) = (port(&client), port(&peer));
        drop((client, peer));
        Etcd::start(None, SocketAddrV4::new(Ipv4Addr::LOCALHOST, client_port), peer_port)
    }

    /// In `ns`, its clients served on `address:2379` (peers on the
    /// namespace's loopback).
    pub fn start_in(ns: &NetNs, address: Ipv4Addr) -> Self {
        Etcd::start(Some(ns), SocketAddrV4::new(address, 2379), 2380)
    }

    fn start(ns: Option<&NetNs>, client: SocketAddrV4, peer: u16) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "bglb-etcd-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("etcd dir");
        let log = fs::File::create(dir.join("etcd.log")).expect("etcd log");
        let mut cmd = match ns {
            Some(ns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{}", ns.name)).arg("etcd");
                cmd
            }
            None => Command::new("etcd"),
        };
        let peer_url = format!("http://127.0.0.1:{peer}");
        cmd.arg("--name=fleet")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls=http://{client}"))
            .arg(format!("--advertise-client-urls=http://{client}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=fleet={peer_url}"))
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .process_group(0);
        let child = cmd
            .spawn()
            .expect("spawn etcd (etcd-server installed? `cargo xtask setup`)");
        let mut etcd = Etcd {
            child: Some(child),
            dir,
            client,
        };
        etcd.await_ready();
        etcd
    }

    /// Until etcd logs that it serves clients.
    fn await_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log().contains("ready to serve client requests") {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("etcd exited ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "etcd did not start:\n{}", self.log());
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://HOST:PORT`, for `[cluster] etcd`.
    pub fn url(&self) -> String {
        format!("http://{}", self.client)
    }

    /// SIGKILL, by PID.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("etcd log:\n{}", self.log());
        }
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
