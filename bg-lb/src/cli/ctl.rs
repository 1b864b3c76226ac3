//! `bg-lb ctl`: the admin client. Human tables by default, the daemon's JSON
//! with `--json`. Exit codes: 0 success, 1 error (the daemon said no, or it
//! could not be reached), 3 timeout while waiting for a drain.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use nix::sys::signal::{SigHandler, Signal, signal};

use crate::{
    cli::{CtlArgs, CtlCommand, DrainTarget},
    dataplane::syn_proxy::SynProxyMode,
    protocol::{
        BgpStatus, FleetStatus, MAX_FLOWS_LIMIT, Reply, Request, ServiceStatus, ShiftAbortRequest, StatusRequest,
        SynProxyStatus,
    },
    shift::{ShiftOutcome, ShiftRecord},
    state_file::DrainDeadline,
};

pub const EXIT_TIMEOUT: u8 = 3;
const POLL_INTERVAL: Duration = Duration::from_millis(250);
const SHIFT_PROGRESS_EVERY: Duration = Duration::from_secs(5);

pub struct Client {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects, explaining the usual failures (daemon down, no permission).
    pub fn connect(socket: &Path) -> anyhow::Result<Self> {
        let stream = UnixStream::connect(socket).map_err(|e| anyhow::anyhow!(connect_error(socket, &e)))?;
        Ok(Client {
            socket: socket.to_owned(),
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// Sends `request` and reads the reply. A connection the daemon closed
    /// while idle (its `[admin] idle_timeout`, or a full listener) fails
    /// the write before the daemon saw anything, so it is reopened once and
    /// the request sent again.
    pub fn request(&mut self, request: &Request) -> anyhow::Result<Reply> {
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        if let Err(e) = self.writer.write_all(&line) {
            if !matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) {
                return Err(e).with_context(|| format!("writing to {}", self.socket.display()));
            }
            *self = Client::connect(&self.socket)?;
            self.writer
                .write_all(&line)
                .with_context(|| format!("writing to {}", self.socket.display()))?;
        }
        let mut reply = String::new();
        self.reader
            .read_line(&mut reply)
            .with_context(|| format!("reading from {}", self.socket.display()))?;
        if reply.is_empty() {
            bail!("the daemon closed {} without replying", self.socket.display());
        }
        serde_json::from_str(&reply).with_context(|| format!("unreadable reply: {reply}"))
    }
}

/// What `bg-lb ctl` says when it cannot reach the daemon: the socket path,
/// the system's reason, and what to do about it.
fn connect_error(socket: &Path, error: &std::io::Error) -> String {
    let hint = match error.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            "is the daemon running? Start it with `systemctl start bg-lb` or `bg-lb run --config FILE`, \
             or pass --socket with the [admin] socket of its config"
        }
        std::io::ErrorKind::PermissionDenied => {
            "only root and members of the daemon's [admin] group may use it: run as root (sudo), \
             or join that group"
        }
        _ => "check the path and the daemon's logs (`journalctl -u bg-lb`)",
    };
    format!(
        "cannot connect to the admin socket {}: {error}; {hint}",
        socket.display()
    )
}

pub fn run(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&args.socket)?;
    let request = match args.command {
        CtlCommand::Status(request) => Request::Status(request),
        CtlCommand::Ratio(request) => Request::Ratio(request),
        CtlCommand::Drain { wait, timeout, request } => {
            let (service, pool) = (request.service.clone(), request.pool);
            let reply = client.request(&Request::Drain(request))?;
            if !reply.ok || !wait {
                return Ok(print_reply(&reply, args.json));
            }
            if !args.json {
                print_reply(&reply, false);
            }
            return wait_drained(&mut client, &service, DrainTarget::Pool(pool), timeout, args.json);
        }
        CtlCommand::WaitDrained {
            service,
            target,
            timeout,
        } => {
            return wait_drained(&mut client, &service, target, timeout, args.json);
        }
        CtlCommand::Backend(request) => Request::Backend(request),
        CtlCommand::BackendAdd(request) => Request::BackendAdd(request),
        CtlCommand::BackendRemove(request) => Request::BackendRemove(request),
        CtlCommand::Flows(request) => Request::Flows(request),
        CtlCommand::Reload => Request::Reload,
        CtlCommand::Shift(shift) => {
            let reply = client.request(&shift.request()?)?;
            if !reply.ok || shift.abort || shift.detach {
                return Ok(print_reply(&reply, args.json));
            }
            if !args.json {
                print_reply(&reply, false);
            }
            return follow_shift(&mut client, &shift.service, args.json);
        }
        CtlCommand::Promote(request) => Request::Promote(request),
        CtlCommand::Rollback(request) => Request::Rollback(request),
        CtlCommand::Node(request) => Request::Node(request),
        CtlCommand::Top {
            service,
            interval,
            iterations,
        } => {
            if args.json {
                bail!("top has no --json; use `status --json` for machine-readable output");
            }
            return crate::cli::top::run(&mut client, service, interval, iterations);
        }
    };
    let reply = client.request(&request)?;
    Ok(print_reply(&reply, args.json))
}

/// Prints a reply; the exit code says whether the daemon accepted it.
fn print_reply(reply: &Reply, json: bool) -> ExitCode {
    if json {
        println!("{}", serde_json::to_string_pretty(reply).expect("replies serialize"));
    } else if let Some(error) = &reply.error {
        eprintln!("error: {error}");
    } else {
        print_human(reply);
    }
    if reply.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn print_human(reply: &Reply) {
    if let Some(change) = &reply.ratio {
        println!(
            "ratio {} -> {} (blue:green; new connections only)",
            change.old, change.new
        );
    }
    if let Some(message) = &reply.message {
        println!("{message}");
    }
    for service in reply.services.iter().flatten() {
        print_service(service);
    }
    if let Some(bgp) = &reply.bgp {
        print_bgp(bgp);
    }
    if let Some(fleet) = &reply.fleet {
        print_fleet(fleet);
    }
    if let Some(flows) = &reply.flows {
        println!(
            "{:<5} {:<6} {:<22} {:<22} {:<6} {:>9} {:>9}  STATE",
            "PROTO", "FAMILY", "CLIENT", "BACKEND", "POOL", "AGE", "IDLE"
        );
        for f in flows {
            println!(
                "{:<5} {:<6} {:<22} {:<22} {:<6} {:>8.1}s {:>8.1}s  {}",
                f.protocol.to_string(),
                f.family.to_string(),
                f.client.to_string(),
                f.backend.to_string(),
                f.pool.to_string(),
                f.age_secs,
                f.idle_secs,
                f.state
            );
        }
        println!("{} open flow(s) shown", flows.len());
        if reply.flows_truncated == Some(true) {
            println!(
                "more flows match than shown ({} flow-table entries read); --limit shows more, up to {MAX_FLOWS_LIMIT}",
                reply.flows_scanned.unwrap_or(0)
            );
        }
    }
}

/// Follows a running shift until it completes, rolls back or is aborted.
/// Ctrl-C asks whether to roll back or hold the current ratio.
fn follow_shift(client: &mut Client, service: &str, json: bool) -> anyhow::Result<ExitCode> {
    static INTERRUPTED: AtomicBool = AtomicBool::new(false);
    extern "C" fn on_sigint(_: i32) {
        INTERRUPTED.store(true, Ordering::Relaxed);
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe { signal(Signal::SIGINT, SigHandler::Handler(on_sigint)) }?;
    // A line when the step or outcome changes, and a rates update at most
    // every few seconds in between.
    let mut shown: Option<((usize, ShiftOutcome), Instant)> = None;
    loop {
        if INTERRUPTED.swap(false, Ordering::Relaxed) {
            let rollback = ask_rollback();
            let reply = client.request(&Request::ShiftAbort(ShiftAbortRequest {
                service: service.to_owned(),
                rollback,
            }))?;
            print_reply(&reply, json);
            return Ok(ExitCode::FAILURE);
        }
        let reply = client.request(&Request::Status(StatusRequest {
            service: Some(service.to_owned()),
        }))?;
        let status = reply
            .services
            .as_ref()
            .and_then(|s| s.first())
            .context("no status for the service")?;
        let record = status.shift.as_ref().context("the daemon shows no shift")?;
        let phase = (record.step, record.outcome.clone());
        let due = shown
            .as_ref()
            .is_none_or(|(last, at)| *last != phase || at.elapsed() >= SHIFT_PROGRESS_EVERY);
        if due && !json {
            println!("{}", shift_line(record, status.ratio));
            shown = Some((phase, Instant::now()));
        }
        match &record.outcome {
            ShiftOutcome::Running => thread::sleep(POLL_INTERVAL),
            ShiftOutcome::Completed => return Ok(finish_shift(json, status, ExitCode::SUCCESS)),
            ShiftOutcome::RolledBack { reason } => {
                eprintln!("error: rolled back to {}: {reason}", record.start_ratio);
                return Ok(finish_shift(json, status, ExitCode::FAILURE));
            }
            ShiftOutcome::Aborted { .. } => return Ok(finish_shift(json, status, ExitCode::FAILURE)),
        }
    }
}

fn finish_shift(json: bool, status: &ServiceStatus, code: ExitCode) -> ExitCode {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status.shift).expect("shift serializes")
        );
    }
    code
}

fn ask_rollback() -> bool {
    eprint!("\nStop the shift: roll back to where it began (r) or hold the current ratio (h)? [R/h] ");
    let mut answer = String::new();
    // No answer (closed stdin) rolls back: the state before the shift is known good.
    let _ = std::io::stdin().read_line(&mut answer);
    !answer.trim().eq_ignore_ascii_case("h")
}

fn shift_line(record: &ShiftRecord, ratio: crate::ratio::Ratio) -> String {
    let plan = &record.plan;
    let [blue, green] = &record.rates;
    let state = match &record.outcome {
        ShiftOutcome::Running => format!("step {}/{}", record.step + 1, plan.steps.len()),
        ShiftOutcome::Completed => "completed".into(),
        ShiftOutcome::RolledBack { .. } => "ROLLED BACK".into(),
        ShiftOutcome::Aborted { rolled_back } => format!("aborted{}", if *rolled_back { ", rolled back" } else { "" }),
    };
    format!(
        "shift to {}: {state}, ratio {ratio} | blue: {blue} | green: {green}",
        plan.to
    )
}

fn syn_proxy_line(p: &SynProxyStatus) -> String {
    let state = match (p.mode, p.active) {
        (SynProxyMode::Off, _) => "off",
        (SynProxyMode::Always, _) => "on: every SYN gets a SYN cookie",
        (SynProxyMode::Auto, true) => "ON: flooded, SYNs get SYN cookies",
        (SynProxyMode::Auto, false) => "standing by",
    };
    format!("syn proxy {}: {state}", p.mode)
}

fn print_bgp(bgp: &BgpStatus) {
    let list = |a: &[std::net::IpAddr]| {
        if a.is_empty() {
            "none".to_owned()
        } else {
            a.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        }
    };
    let drained = if bgp.node_drained {
        " (node DRAINED: ctl node resume)"
    } else {
        ""
    };
    println!(
        "bgp{drained}: announced {}; withdrawn {}",
        list(&bgp.announced),
        list(&bgp.withdrawn)
    );
    let result = match (&bgp.last_configure, bgp.last_configure_ok) {
        (None, _) => "not run yet".to_owned(),
        (Some(reply), true) => format!("ok: {reply}"),
        (Some(error), false) => format!("FAILED (retrying): {error}"),
    };
    println!("  {} -> birdc configure {result}", bgp.include.display());
}

fn print_fleet(fleet: &FleetStatus) {
    let etcd = if fleet.etcd_answers {
        format!("etcd {} answers", fleet.etcd)
    } else {
        format!(
            "etcd {} UNREACHABLE: forwarding with the last fleet state; changes are refused",
            fleet.etcd
        )
    };
    let revision = fleet
        .revision
        .map_or("not read yet".to_owned(), |r| format!("revision {r}"));
    println!("fleet: host {}, {etcd}; fleet state {revision}", fleet.host);
    if !fleet.leads.is_empty() {
        println!("  this host drives the shift of {}", fleet.leads.join(", "));
    }
    for difference in &fleet.health_differs {
        println!("  health differs: {difference}");
    }
}

fn print_service(s: &ServiceStatus) {
    let effective = if s.effective_ratio == s.ratio {
        String::new()
    } else {
        format!(" (effective {})", s.effective_ratio)
    };
    println!(
        "{}  {} {}  ratio {}{effective}",
        s.name,
        s.protocol,
        s.vips_text(),
        s.ratio
    );
    println!("  forwarding {}  affinity {}", s.forwarding, s.affinity);
    if let Some(limits) = s.forwarding.limits() {
        println!("    {limits}");
    }
    println!("  {}", syn_proxy_line(&s.syn_proxy));
    if let Some(deadline) = &s.drain_deadline {
        println!("  {}", drain_deadline_line(deadline));
    }
    if let Some(record) = &s.shift {
        println!("  {}", shift_line(record, s.ratio));
    }
    println!(
        "  {:<6} {:<22} {:>6} {:>7} {:<10} {:>6} {:>9} {:>15} {:>9} {:>10} {:>12} {:>12}",
        "POOL",
        "BACKEND",
        "WEIGHT",
        "ENABLED",
        "HEALTH",
        "OPEN",
        "EMBRYONIC",
        "SNAT PORTS",
        "EXHAUSTED",
        "NEW FLOWS",
        "BYTES IN",
        "BYTES OUT"
    );
    // A column the mode cannot fill shows "-", not a zero that looks measured.
    let shown = |applies: bool, value: String| if applies { value } else { "-".to_owned() };
    let snat = s.forwarding.uses_snat();
    for b in &s.backends {
        println!(
            "  {:<6} {:<22} {:>6} {:>7} {:<10} {:>6} {:>9} {:>15} {:>9} {:>10} {:>12} {:>12}{}",
            b.pool.to_string(),
            b.address.to_string(),
            b.weight,
            if b.enabled { "yes" } else { "no" },
            b.health,
            b.open_flows,
            b.embryonic_flows,
            shown(snat, format!("{}/{}", b.snat_ports_in_use, b.snat_ports_capacity)),
            shown(snat, b.snat_ports_exhausted.to_string()),
            b.new_flows,
            b.bytes_in,
            shown(s.forwarding.sees_replies(), b.bytes_out.to_string()),
            if b.added_at_runtime { "  (added at runtime)" } else { "" }
        );
    }
}

/// Polls status until `target` has no open flow, showing a progress bar of
/// open flows counting down.
fn wait_drained(
    client: &mut Client,
    service: &str,
    target: DrainTarget,
    timeout: Option<Duration>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} draining {msg}: {pos}/{len} flows closed [{elapsed}]")
            .expect("valid template"),
    );
    let label = match target {
        DrainTarget::Pool(pool) => format!("{service} {pool}"),
        DrainTarget::Backend(addr) => format!("{service} {addr}"),
    };
    bar.set_message(label.clone());
    let mut initial = None;
    loop {
        let reply = client.request(&Request::Status(StatusRequest {
            service: Some(service.to_owned()),
        }))?;
        let Some(status) = reply.services.as_ref().and_then(|s| s.first()) else {
            bar.abandon();
            return Ok(print_reply(&reply, json));
        };
        let open = open_flows(status, target)?;
        let first = *initial.get_or_insert(open);
        bar.set_length(first.max(open));
        bar.set_position(first.saturating_sub(open));
        if drained(open, reply.flows_counted_secs_ago, started.elapsed()) {
            bar.finish();
            report(json, &label, true, started.elapsed(), 0);
            if let (DrainTarget::Pool(pool), Some(deadline)) = (target, &status.drain_deadline)
                && deadline.pool == pool
                && let Some(reset) = deadline.reset
                && !json
            {
                println!("{label}: {reset} connection(s) reset at the drain deadline");
            }
            return Ok(ExitCode::SUCCESS);
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            bar.abandon();
            report(json, &label, false, started.elapsed(), open);
            return Ok(ExitCode::from(EXIT_TIMEOUT));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// A drain deadline as `status` shows it.
fn drain_deadline_line(deadline: &DrainDeadline) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(deadline.at_unix_ms);
    let at = humantime::format_rfc3339_seconds(at);
    match deadline.reset {
        None => format!(
            "drain deadline {at}: {}'s connections still open then will be reset",
            deadline.pool
        ),
        Some(reset) => format!(
            "drain deadline {at} passed: {reset} {} connection(s) reset",
            deadline.pool
        ),
    }
}

/// Zero open flows means drained only if they were counted after the wait
/// began: an older count may predate connections still open.
fn drained(open: u64, counted_secs_ago: Option<f64>, waited: Duration) -> bool {
    open == 0 && counted_secs_ago.is_none_or(|ago| ago < waited.as_secs_f64())
}

fn open_flows(status: &ServiceStatus, target: DrainTarget) -> anyhow::Result<u64> {
    match target {
        DrainTarget::Pool(pool) => Ok(status.open_flows(pool)),
        DrainTarget::Backend(addr) => status
            .backends
            .iter()
            .find(|b| b.address == addr)
            .map(|b| b.open_flows)
            .with_context(|| format!("service {} has no backend {addr}", status.name)),
    }
}

fn report(json: bool, label: &str, drained: bool, elapsed: Duration, open: u64) {
    let secs = elapsed.as_secs_f64();
    if json {
        let value = serde_json::json!({ "ok": drained, "drained": drained, "open_flows": open, "waited_secs": secs });
        println!("{value}");
    } else if drained {
        println!("{label}: drained after {secs:.1}s");
    } else {
        eprintln!("error: {label}: still {open} open flow(s) after {secs:.1}s (timeout)");
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Error, ErrorKind},
        os::unix::net::UnixListener,
    };

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bglb-ctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn connect_message(socket: &Path) -> String {
        match Client::connect(socket) {
            Ok(_) => panic!("connected to {}", socket.display()),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn missing_socket_names_the_path_and_says_how_to_start_the_daemon() {
        let dir = temp_dir("missing");
        let socket = dir.join("admin.sock");
        let message = connect_message(&socket);
        assert!(message.contains(&socket.display().to_string()), "{message}");
        assert!(message.contains("No such file or directory"), "{message}");
        assert!(message.contains("is the daemon running?"), "{message}");
        assert!(message.contains("systemctl start bg-lb"), "{message}");
        assert!(message.contains("--socket"), "{message}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn stale_socket_of_an_exited_daemon_says_how_to_start_it() {
        let dir = temp_dir("stale");
        let socket = dir.join("admin.sock");
        // Binding creates the socket file; dropping the listener leaves it
        // with nobody accepting, as a killed daemon does.
        drop(UnixListener::bind(&socket).expect("bind"));
        let message = connect_message(&socket);
        assert!(message.contains(&socket.display().to_string()), "{message}");
        assert!(message.contains("Connection refused"), "{message}");
        assert!(message.contains("is the daemon running?"), "{message}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Root bypasses file permissions, so the denial is built directly here;
    /// tests/tests/packaging_root.rs gets a real EACCES as an unprivileged user.
    #[test]
    fn permission_denied_names_the_path_and_the_admin_group() {
        let socket = Path::new("/run/bg-lb/admin.sock");
        let message = connect_error(socket, &Error::from(ErrorKind::PermissionDenied));
        assert!(
            message.starts_with("cannot connect to the admin socket /run/bg-lb/admin.sock: "),
            "{message}"
        );
        assert!(message.contains("run as root"), "{message}");
        assert!(message.contains("[admin] group"), "{message}");
    }

    #[test]
    fn a_zero_counted_before_the_wait_began_is_not_drained() {
        let waited = Duration::from_millis(300);
        assert!(drained(0, Some(0.1), waited));
        assert!(!drained(0, Some(0.5), waited), "counted before the wait began");
        assert!(!drained(2, Some(0.0), waited));
        assert!(
            drained(0, None, waited),
            "a daemon that does not say trusts its own count"
        );
    }
}
