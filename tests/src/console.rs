//! The web console's lab pieces: an `[api]` table with fresh admin and
//! read-only tokens in private files (removed on drop), and a loopback
//! forwarder that lets a browser on the host reach the console inside the
//! LB's namespace (the demo's; the browser test runs its browser inside the
//! namespace instead).

use std::{
    fs,
    io::{self, Read as _},
    net::{Shutdown, SocketAddrV4, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use crate::topology::NetNs;

/// Where the lab's API listens, inside the LB's namespace: plain HTTP on
/// loopback, as docs/deploy.md advises for a console reached through a
/// tunnel.
pub const CONSOLE_LISTEN: &str = "127.0.0.1:9751";

/// The tokens and the `[api]` table naming them.
pub struct ConsoleTokens {
    dir: PathBuf,
    pub admin: String,
    pub read_only: String,
}

impl ConsoleTokens {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("bglb-console-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("console token dir");
        let tokens = ConsoleTokens {
            admin: random_token(),
            read_only: random_token(),
            dir,
        };
        for (name, token) in [("admin.token", &tokens.admin), ("viewer.token", &tokens.read_only)] {
            let path = tokens.dir.join(name);
            fs::write(&path, format!("{token}\n")).expect("token file");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod token file");
        }
        tokens
    }

    /// The `[api]` table: both tokens, listening on [`CONSOLE_LISTEN`].
    pub fn api_table(&self) -> String {
        format!(
            "[api]\nlisten = \"{CONSOLE_LISTEN}\"\ntoken_file = \"{}\"\nread_only_token_file = \"{}\"\n",
            self.dir.join("admin.token").display(),
            self.dir.join("viewer.token").display()
        )
    }
}

impl Drop for ConsoleTokens {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// 24 random bytes, hex.
fn random_token() -> String {
    let mut bytes = [0u8; 24];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Forwards connections to a host loopback port to [`CONSOLE_LISTEN`] in
/// `ns`, until dropped. Only loopback: nothing beyond this host reaches it.
pub struct Forwarder {
    pub addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    pub fn start(ns: &NetNs, port: u16) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let addr = SocketAddrV4::new([127, 0, 0, 1].into(), port);
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, ns_path) = (stop.clone(), format!("/run/netns/{}", ns.name));
        let inside = fs::File::open(&ns_path)?;
        thread::spawn(move || {
            // The listener stays the host's; connections this thread opens
            // from now on are the namespace's.
            if nix::sched::setns(&inside, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                return;
            }
            while !flag.load(Ordering::Relaxed) {
                let Ok((outside, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(50));
                    continue;
                };
                if let (Ok(target), Ok(())) = (TcpStream::connect(CONSOLE_LISTEN), outside.set_nonblocking(false)) {
                    pipe(outside, target);
                }
            }
        });
        Ok(Forwarder { addr, stop })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies both ways between `a` and `b` until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    for (mut from, mut to) in [(a.try_clone(), b.try_clone()), (b.try_clone(), a.try_clone())]
        .into_iter()
        .filter_map(|(f, t)| Some((f.ok()?, t.ok()?)))
    {
        thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    }
}
