//! The bg-lb demo (`cargo xtask demo`): a complete zero-downtime blue-green
//! release in network namespaces, narrated step by step under steady client
//! load from many client addresses, with a live view and a summary that
//! includes what client affinity did for each client (none saw v2 and then
//! v1 again); with `--hosts N`, a release across
//! N LB hosts behind a BGP router, one host stopping for good in the middle
//! (`bg_lb_tests::fleet_release`); with `--ipv6`, the single-host release
//! over IPv6 (VIPs, backends, SNAT address and clients in fd00:99::/64).
//! Everything it creates is removed on exit, on error and on Ctrl-C.

use std::{
    process::{Command, ExitCode},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use bg_lb::{
    dataplane::{affinity::Affinity, forwarding::Forwarding},
    protocol::{Reply, ServiceStatus},
};
use bg_lb_tests::{
    affinity::{Journeys, RatioLog},
    cluster::Cluster,
    console::{ConsoleTokens, Forwarder},
    fleet_release::{self, FleetReleaseReport, Narrator},
    lab::{BlueGreenLab, LabOptions, SERVICE},
    load::{Load, LoadSpec, Tally, TallyWatch},
    release::{Narration, ReleaseError, ReleaseReport, release},
    topology::Family,
};
use clap::Parser;
use nix::sys::signal::{SigHandler, Signal, signal};

/// Watch bg-lb release v2 to blue and green with zero failed requests.
#[derive(Parser)]
struct Args {
    /// The bg-lb binary to run (`cargo xtask demo` passes the release build).
    #[arg(long)]
    bin: String,
    /// Roughly how long the release takes, in seconds (each traffic step is
    /// held for a slice of it).
    #[arg(long, default_value_t = 40)]
    duration: u64,
    /// Short requests per second sent through the VIP.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Leave the topology up at the end for exploring with `bg-lb ctl`,
    /// until Ctrl-C.
    #[arg(long)]
    keep: bool,
    /// The service's forwarding: full-nat, gateway (backends see the client
    /// and route replies through the LB) or dsr (backends see the client
    /// and reply to it directly); README, "Forwarding modes".
    #[arg(long, default_value = "full-nat")]
    mode: Forwarding,
    /// LB hosts. 2 or 3: the release runs across that many hosts behind a
    /// router (BGP through BIRD, ECMP, one operator state in etcd; full
    /// NAT), and the last host stops for good in the middle.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
    hosts: u8,
    /// Serve the web console too (`[api]`), reachable from this host's
    /// browser on 127.0.0.1:PORT; prints the URL and tokens, and keeps the
    /// topology up at the end (as --keep).
    #[arg(long, value_name = "PORT", num_args = 0..=1, default_missing_value = "9751")]
    console: Option<u16>,
    /// Run the release over IPv6: the VIPs, backends, SNAT address and
    /// client addresses are IPv6 (fd00:99::/64), on a dual-stack segment.
    #[arg(long)]
    ipv6: bool,
}

impl Args {
    fn family(&self) -> Family {
        if self.ipv6 { Family::Ipv6 } else { Family::Ipv4 }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Client addresses the short requests come from, in turn.
const CLIENTS: u8 = 64;
/// The version the release deploys.
const NEW: &str = "v2";

extern "C" fn on_signal(_: i32) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the demo creates network namespaces and loads XDP: run it as root (cargo xtask demo)");
        return ExitCode::FAILURE;
    }
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { signal(sig, SigHandler::Handler(on_signal)) }.expect("install signal handler");
    }
    let bin: &'static str = Box::leak(args.bin.clone().into_boxed_str());
    let code = if args.hosts > 1 {
        run_fleet(bin, &args)
    } else {
        run(bin, &args)
    };
    println!("\nCleaning up: namespaces, XDP pins and processes...");
    code
}

fn run(bin: &'static str, args: &Args) -> ExitCode {
    println!("bg-lb demo: a zero-downtime blue-green release under load\n");
    println!("Setting up network namespaces: a client, the load balancer, and four backends");
    println!("(b0, b1 = blue; b2, b3 = green; all running demo-backend v1 with GET /live and /standby)...");
    if args.ipv6 {
        println!("(dual-stack segment; the service, its backends and clients use IPv6 only)");
    }
    let tokens = args.console.map(|_| ConsoleTokens::new("demo"));
    let options = LabOptions {
        forwarding: args.mode,
        tables: tokens.as_ref().map(ConsoleTokens::api_table).unwrap_or_default(),
        affinity: Affinity::ClientIp,
        family: args.family(),
        ..LabOptions::default()
    };
    let mut lab = BlueGreenLab::start(bin, &options);
    let clients = lab.topo.add_clients(args.family(), CLIENTS, args.mode);
    let _forwarder = match (args.console, &tokens) {
        (Some(port), Some(tokens)) => match Forwarder::start(&lab.topo.lb.ns, port) {
            Ok(forwarder) => {
                println!("  web console: http://{}/console", forwarder.addr);
                println!("    admin token:     {}", tokens.admin);
                println!("    read-only token: {}", tokens.read_only);
                println!("    (loopback only; from another machine: ssh -L {port}:127.0.0.1:{port} this-host)");
                Some(forwarder)
            }
            Err(e) => {
                println!("the console's port 127.0.0.1:{port} cannot be bound: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    println!("  forwarding {}{}", args.mode, mode_note(args.mode));
    println!("  live VIP {}  ->  ratio blue:green, HTTP /live checks", lab.live_vip());
    println!("  standby VIP {}  ->  backends answering /standby", lab.standby_vip());
    println!("  affinity = \"client-ip\": a client address's new connections go to one pool, and to one");
    println!("  backend in it; raising a pool's share moves clients only into it, never back");
    let hold = Duration::from_secs(args.duration.max(8)) / 8;
    let load = Load::start(
        &lab.topo.client.ns,
        LoadSpec {
            vip: lab.live_vip(),
            rate: args.rate,
            workers: 8,
            long_lived: 4,
            long_lived_lifetime: hold * 2,
            long_lived_period: Duration::from_millis(250),
            sources: clients.clone(),
        },
    );
    println!(
        "  load: {} short requests/s, each from one of {} client addresses in turn ({} to {}),",
        args.rate,
        clients.len(),
        clients[0],
        clients[clients.len() - 1]
    );
    println!(
        "  plus 4 keep-alive connections from {} living {:.0}s each\n",
        lab.topo.client.addr_of(args.family()),
        (hold * 2).as_secs_f64()
    );
    let ratios = RatioLog::start(lab.daemon.socket(), SERVICE);
    let view = LiveView::start(bin, lab.daemon.socket().display().to_string(), load.watch());
    let narration = DemoNarration {
        view: view.paused.clone(),
        load: load.watch(),
        ratios: &ratios,
    };
    let outcome = release(&mut lab, &narration, NEW, hold);
    view.stop();
    let tally = load.stop();
    let journeys = ratios.phases().journeys(&tally, NEW);
    let code = match outcome {
        Ok(report) => summary(&tally, &report, &journeys),
        Err(ReleaseError::Interrupted) => {
            println!("\nInterrupted.");
            return ExitCode::from(130);
        }
        Err(ReleaseError::Failed(why)) => {
            println!("\nThe release stopped: {why}");
            println!("daemon log:\n{}", lab.daemon.log());
            ExitCode::FAILURE
        }
    };
    if args.keep || args.console.is_some() {
        explore(&lab, bin);
    }
    code
}

fn run_fleet(bin: &'static str, args: &Args) -> ExitCode {
    if args.mode != Forwarding::FullNat {
        eprintln!("--hosts runs full NAT only (each host its own SNAT address; docs/deploy.md, \"Several hosts\")");
        return ExitCode::FAILURE;
    }
    if args.console.is_some() {
        eprintln!("--console serves one host's console: run it without --hosts");
        return ExitCode::FAILURE;
    }
    if args.ipv6 {
        eprintln!("--hosts runs over IPv4 only (the fleet's BGP announces an IPv4 VIP): run --ipv6 without --hosts");
        return ExitCode::FAILURE;
    }
    let hosts = usize::from(args.hosts);
    println!("bg-lb demo: a release across {hosts} LB hosts under load, one host stopping for good midway\n");
    println!("Setting up network namespaces: a router running BIRD (BGP, ECMP by the 5-tuple into its kernel");
    println!("table), {hosts} LB hosts each running bg-lb (full NAT) and its own BIRD, one etcd holding the");
    println!("fleet's operator state, behind each host a blue backend (answers hostN) and a green one");
    println!("(answers greenN), and a client behind the router...");
    let mut cluster = Cluster::start(bin, hosts);
    println!(
        "  every host announced the VIP; the router has all {hosts} as next hops after {:.1}s",
        cluster.announced_after.as_secs_f64()
    );
    let hold = Duration::from_secs((args.duration / 4).max(2));
    // Each client opens a connection about every 10 ms.
    let clients = args.rate.div_ceil(100).max(1) as usize;
    let outcome = fleet_release::release(&mut cluster, &FleetNarration, hold, clients);
    let code = match outcome {
        Ok(report) => fleet_summary(&report),
        Err(ReleaseError::Interrupted) => {
            println!("\nInterrupted.");
            return ExitCode::from(130);
        }
        Err(ReleaseError::Failed(why)) => {
            println!("\nThe release stopped: {why}");
            println!("host 0's daemon log:\n{}", cluster.daemons[0].log());
            ExitCode::FAILURE
        }
    };
    if args.keep {
        println!("\nThe topology is still up (--keep). Try:");
        for (i, daemon) in cluster.daemons.iter().enumerate().take(hosts - 1) {
            println!(
                "  {bin} ctl --socket {} status      # host {i}",
                daemon.socket().display()
            );
        }
        println!(
            "  ip netns exec {} ip route show 10.96.100.100",
            cluster.fleet.router.name
        );
        println!("Press Ctrl-C to tear everything down.");
        while !INTERRUPTED.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(200));
        }
    }
    code
}

/// What the clients saw; the demo passes when every connection after the
/// router dropped the stopped host succeeded.
fn fleet_summary(report: &FleetReleaseReport) -> ExitCode {
    println!("\n=== Summary ===");
    let phases = [
        ("until the router dropped the stopped host", &report.before),
        ("after that, to the end of the shift", &report.after),
    ];
    for (phase, probed) in phases {
        println!("{phase}:");
        println!("  connections ok        {}", probed.ok);
        println!("  connections failed    {}", probed.failed);
        println!("  failure window        {:.3}s", probed.failure_window.as_secs_f64());
        let served: Vec<String> = probed.served.iter().map(|(name, n)| format!("{name} {n}")).collect();
        println!("  served by             {}", served.join(", "));
    }
    println!(
        "host {} withdrawn by the router {:.2}s after its SIGTERM",
        report.stopped,
        report.withdrawn_after.as_secs_f64()
    );
    if report.after.failed == 0 {
        println!("result: PASS, every connection after convergence succeeded");
        ExitCode::SUCCESS
    } else {
        println!("result: FAIL, connections failed after convergence");
        ExitCode::FAILURE
    }
}

/// Step banners and notes, as the single-host demo prints them.
struct FleetNarration;

impl Narrator for FleetNarration {
    fn step(&self, title: &str) {
        println!("\n=== {title} ===");
    }

    fn note(&self, text: &str) {
        println!("    {text}");
    }

    fn interrupted(&self) -> bool {
        INTERRUPTED.load(Ordering::Relaxed)
    }
}

/// How the backends were set up for `mode`, and what they see.
fn mode_note(mode: Forwarding) -> &'static str {
    match mode {
        Forwarding::FullNat => ": backends see the LB's SNAT address",
        Forwarding::Gateway => ": backends see the client and route replies to it through the LB",
        Forwarding::Dsr => {
            ": backends hold the VIPs on lo (arp_ignore=1, arp_announce=2), see the client and reply to it \
             directly"
        }
    }
}

/// Prints the summary; the demo passes only with zero failures and every
/// client kept on one version, then the new one.
fn summary(tally: &Tally, report: &ReleaseReport, journeys: &Journeys) -> ExitCode {
    println!("\n=== Summary ===");
    println!("requests sent         {}", tally.sent);
    println!("requests failed       {}   (must be 0)", tally.failed);
    println!("connections reset     {}   (must be 0)", tally.resets);
    for ((name, version), n) in &tally.served {
        println!("  served by {name} {version}: {n}");
    }
    for (pool, took) in &report.drains {
        println!("drain {pool} took       {:.1}s", took.as_secs_f64());
    }
    let moved = tally.long_lived.iter().filter(|b| b.len() > 1).count();
    println!(
        "long-lived connections {} opened; {} finished on the backend they started on",
        tally.long_lived.len(),
        tally.long_lived.len() - moved
    );
    for failure in &tally.failures {
        println!("  failure: {failure}");
    }
    let kept = affinity_summary(journeys);
    if tally.failed == 0 && tally.resets == 0 && moved == 0 && kept {
        println!("result: PASS, zero downtime, and no client saw {NEW} and then v1 again");
        ExitCode::SUCCESS
    } else {
        println!("result: FAIL");
        ExitCode::FAILURE
    }
}

/// What each client saw, phase by phase of the release; true when no
/// client went back to v1, none was split between backends within a phase,
/// and every client ended on the new version.
fn affinity_summary(journeys: &Journeys) -> bool {
    println!(
        "client affinity: {} client addresses, the versions their new connections reached",
        journeys.clients
    );
    println!("  ratio (blue:green)   clients seen   on {NEW}   moved v1 -> {NEW}   split between backends");
    for phase in &journeys.phases {
        println!(
            "  {:<20} {:>12}   {:>5}   {:>14}   {:>22}",
            phase.ratio,
            phase.seen,
            phase.on_new,
            phase.moved,
            phase.split.len()
        );
        for (client, backends) in &phase.split {
            println!(
                "    SPLIT: {client} reached {} while the ratio was {}",
                backends.join(", "),
                phase.ratio
            );
        }
    }
    println!(
        "clients that saw {NEW} and then v1 again   {}   (must be 0)",
        journeys.went_back.len()
    );
    for (client, runs) in &journeys.went_back {
        println!("  WENT BACK: {client}: {}", runs.join(", "));
    }
    let last = journeys.phases.last();
    let all_new = last.is_some_and(|p| p.on_new == journeys.clients);
    println!(
        "clients on {NEW} at the end                {}   (must be all {})",
        last.map_or(0, |p| p.on_new),
        journeys.clients
    );
    journeys.kept() && all_new
}

fn explore(lab: &BlueGreenLab, bin: &str) {
    println!("\nThe topology is still up (--keep). Try:");
    println!("  {bin} ctl --socket {} status", lab.daemon.socket().display());
    println!("  {bin} ctl --socket {} flows {SERVICE}", lab.daemon.socket().display());
    println!(
        "  ip netns exec {} curl -gs http://{}/",
        lab.topo.client.ns.name,
        lab.live_vip()
    );
    println!("Press Ctrl-C to tear everything down.");
    while !INTERRUPTED.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(200));
    }
}

/// Step banners, notes, and `bg-lb ctl` run in the terminal as an operator
/// would, with the live view paused so progress bars draw cleanly; after the
/// shift, what it did to the clients.
struct DemoNarration<'a> {
    view: Arc<AtomicBool>,
    load: TallyWatch,
    ratios: &'a RatioLog,
}

impl Narration for DemoNarration<'_> {
    fn step(&self, title: &str) {
        println!("\n=== {title} ===");
    }

    fn note(&self, text: &str) {
        println!("    {text}");
    }

    fn ctl(&self, lab: &BlueGreenLab, args: &[&str]) -> bool {
        self.view.store(true, Ordering::Relaxed);
        println!("$ bg-lb ctl {}", args.join(" "));
        let ok = lab.daemon.ctl_interactive(args).success();
        self.view.store(false, Ordering::Relaxed);
        ok
    }

    fn interrupted(&self) -> bool {
        INTERRUPTED.load(Ordering::Relaxed)
    }

    fn shifted(&self) {
        let journeys = self.ratios.phases().journeys(&self.load.get(), NEW);
        let moved: Vec<String> = journeys
            .phases
            .iter()
            .filter(|p| p.moved > 0)
            .map(|p| format!("{} at {}", p.moved, p.ratio))
            .collect();
        println!(
            "    client affinity: of {} clients, moved from v1 (green) to {NEW} (blue): {}",
            journeys.clients,
            moved.join(", ")
        );
        match journeys.went_back.len() {
            0 => println!("    no client saw {NEW} and then v1 again"),
            n => println!("    {n} client(s) saw {NEW} and then v1 AGAIN: affinity broken (details in the summary)"),
        }
        let split: usize = journeys.phases.iter().map(|p| p.split.len()).sum();
        if split == 0 {
            println!("    within each step, each client's connections reached one backend");
        } else {
            println!("    {split} time(s) a client's connections reached two backends within a step (see the summary)");
        }
    }
}

/// A status line every two seconds: ratio, each backend's version, health
/// and open connections, request rate, failures so far.
struct LiveView {
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<()>,
}

impl LiveView {
    fn start(bin: &'static str, socket: String, tally: TallyWatch) -> Self {
        let (paused, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (p, s) = (paused.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let started = Instant::now();
            let mut last = (Instant::now(), 0);
            while !s.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_secs(2));
                if p.load(Ordering::Relaxed) {
                    continue;
                }
                let now = tally.get();
                let rate = (now.sent - last.1) as f64 / last.0.elapsed().as_secs_f64();
                last = (Instant::now(), now.sent);
                if let Some(status) = status(bin, &socket) {
                    println!("  [{:>3}s] {}", started.elapsed().as_secs(), line(&status, rate, &now));
                }
            }
        });
        LiveView { paused, stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

fn status(bin: &str, socket: &str) -> Option<ServiceStatus> {
    let out = Command::new(bin)
        .args(["ctl", "--socket", socket, "--json", "status", SERVICE])
        .output()
        .ok()?;
    serde_json::from_slice::<Reply>(&out.stdout)
        .ok()?
        .services?
        .into_iter()
        .next()
}

fn line(status: &ServiceStatus, rate: f64, tally: &Tally) -> String {
    let backends: Vec<String> = status
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let version = tally
                .served
                .keys()
                .filter(|(name, _)| *name == format!("b{i}"))
                .map(|(_, v)| v.as_str())
                .max()
                .unwrap_or("v1");
            format!("b{i} {} {version} {} {} open", b.pool, b.health, b.open_flows)
        })
        .collect();
    format!(
        "ratio {} | {} | {rate:.0} req/s | {} ok, {} failed",
        status.ratio,
        backends.join(" | "),
        tally.ok,
        tally.failed
    )
}
