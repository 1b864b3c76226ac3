//! The benchmark's child processes and Ctrl-C.
//!
//! SIGINT, SIGTERM and SIGHUP only raise a flag: the run notices it between
//! steps (and while it waits for a child), panics with [`INTERRUPTED`], and
//! the unwinding drops every guard, so namespaces, pins and processes are
//! removed as after any other failure. A terminal's Ctrl-C also reaches the
//! children (same process group), which simply end.
//!
//! A proxy is stopped the way its service manager would (SIGTERM, then
//! waiting), so a master process stops its workers; whatever still runs in
//! a lab's namespaces after that is killed by [`kill_leftovers`] before the
//! namespaces go (a deleted namespace's processes live on, unseen).

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction},
    unistd::Pid,
};

use crate::topology::NetNs;

/// The panic message of a run stopped by a signal.
pub const INTERRUPTED: &str = "interrupted by a signal";

static FLAG: AtomicBool = AtomicBool::new(false);

extern "C" fn raise_flag(_signal: std::ffi::c_int) {
    // Only an atomic store: the one thing a signal handler may safely do here.
    FLAG.store(true, Ordering::SeqCst);
}

/// Installs the handlers. Call it before starting any child: a child started
/// while SIGINT is ignored (as `cargo xtask bench` does while it waits) would
/// inherit the ignoring.
pub fn install_signal_handlers() {
    let action = SigAction::new(SigHandler::Handler(raise_flag), SaFlags::SA_RESTART, SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(signal, &action) }.expect("install signal handler");
    }
}

pub fn interrupted() -> bool {
    FLAG.load(Ordering::SeqCst)
}

/// Unwinds the run (dropping its guards) if a signal arrived.
pub fn check_interrupt() {
    if interrupted() {
        panic!("{INTERRUPTED}");
    }
}

/// Sleeps, waking early (and unwinding) on a signal.
pub fn sleep(duration: Duration) {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        check_interrupt();
        thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    check_interrupt();
}

/// How long a proxy may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A long-running child (a proxy), stopped on drop: SIGTERM, waiting for
/// its exit, SIGKILL only if it does not come.
pub struct ChildGuard {
    pub name: String,
    child: Child,
}

impl ChildGuard {
    /// Starts `program args` inside `ns` (network namespace only, through
    /// nsenter) with stdout and stderr appended to `log`.
    pub fn spawn_in(ns: &NetNs, name: &str, program: &str, args: &[&str], log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} (`cargo xtask bench` installs it): {e}"));
        ChildGuard {
            name: name.to_owned(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running (a proxy that exited at once had a bad
    /// config or could not bind).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // A child already reaped keeps its status here; its pid may since
        // belong to another process, so it gets no signal.
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop within {STOP_GRACE:?} of SIGTERM: killed", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills (SIGKILL) every process still running in the named network
/// namespaces, this one excepted, and waits until they are gone. Returns
/// them as `PID command line`, marking any that outlived the wait: an empty
/// list means every process started there had already been stopped.
pub fn kill_leftovers(namespaces: &[String]) -> Vec<String> {
    let me = std::process::id();
    let running = || -> Vec<u32> {
        namespaces
            .iter()
            .flat_map(|ns| netns_pids(ns))
            .filter(|&pid| pid != me)
            .collect()
    };
    let found = running();
    let mut killed: Vec<String> = found.iter().map(|&pid| describe(pid)).collect();
    for &pid in &found {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = running();
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            killed.extend(
                left.into_iter()
                    .map(|pid| format!("{} (survived SIGKILL)", describe(pid))),
            );
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    killed
}

/// The processes in a named namespace (`ip netns pids`; exited ones are
/// not listed, their namespace links being gone).
fn netns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn describe(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let words: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    format!("{pid} {}", words.join(" "))
}

/// Runs `program args` to completion and returns its stdout; an error if it
/// fails, outlives `timeout` (it is killed), or a signal arrives.
pub fn output(program: &str, args: &[String], timeout: Duration) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if interrupted() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            check_interrupt();
            return Err(format!("{program} did not finish within {timeout:?}"));
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("{program} {}: {status}\n{stdout}{stderr}", args.join(" ")));
    }
    Ok(stdout)
}

fn drain(mut pipe: impl std::io::Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}
