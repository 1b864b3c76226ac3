//! The benchmark's child processes and Ctrl-C.
//!
//! SIGINT, SIGTERM and SIGHUP only raise a flag: the run notices it between
//! steps (and while it waits for a child), panics with [`INTERRUPTED`], and
//! the unwinding drops every guard, so namespaces, pins and processes are
//! removed as after any other failure. A terminal's Ctrl-C also reaches the
//! children (same process group), which simply end.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

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

/// A long-running child (a proxy, a daemon), killed and reaped on drop.
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
