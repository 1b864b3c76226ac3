//! Command line: the daemon, config checking, teardown and the admin client.
//! Doc comments are the help text.

pub mod ctl;
pub mod docs;
pub mod top;

use std::{net::SocketAddrV4, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    config::{DEFAULT_ADMIN_SOCKET, DEFAULT_CONFIG},
    demo_backend::DemoBackendArgs,
    ratio::{Pool, Ratio},
};

/// bg-lb: XDP layer-4 load balancer for zero-downtime blue-green deployments.
#[derive(Debug, Parser)]
#[command(name = "bg-lb", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: load and attach the data plane, program the services,
    /// serve the admin socket. SIGHUP reloads the config; SIGTERM/SIGINT
    /// exit, leaving the pinned data plane forwarding for the next daemon.
    Run {
        /// The config file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// On exit, detach XDP and remove every pin (stopping for good).
        #[arg(long)]
        detach_on_exit: bool,
        /// Log lines for people (human) or for log collectors (json).
        #[arg(long, value_enum, default_value_t = LogFormat::Human)]
        log_format: LogFormat,
    },
    /// Validate a config file without root; errors name the file and line.
    CheckConfig {
        /// The config file to check.
        file: PathBuf,
    },
    /// Stop the data plane for good: detach XDP and remove every pin (open
    /// connections through the LB break). Stop the daemon first.
    Teardown {
        /// Take the pin directory from this config.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Talk to a running daemon.
    Ctl(CtlArgs),
    /// Run the reference backend: a small HTTP/1.1 app with GET /live and
    /// GET /standby (exactly one answers 200, switched by POST
    /// /enable/live|standby), GET / (name, version, role, request count),
    /// GET /slow?ms=N, and an optional raw TCP echo port. Finishes in-flight
    /// requests on SIGTERM.
    DemoBackend(DemoBackendArgs),
    /// Print a shell completion script, e.g.
    /// `bg-lb completions bash > /etc/bash_completion.d/bg-lb`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), covering every subcommand, e.g.
    /// `bg-lb man > /usr/local/share/man/man1/bg-lb.1`.
    Man,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The daemon's admin socket.
    #[arg(long, default_value = DEFAULT_ADMIN_SOCKET, global = true)]
    pub socket: PathBuf,
    /// Print the daemon's JSON reply instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Ratio, backends, health and flows of every service (or one).
    Status { service: Option<String> },
    /// Split new connections BLUE:GREEN (e.g. 30:70); open ones stay put.
    Ratio {
        service: String,
        ratio: Ratio,
        /// Allow a share for a pool with no enabled backend.
        #[arg(long)]
        force: bool,
    },
    /// Send all new connections to the other pool.
    Drain {
        service: String,
        pool: Pool,
        /// Then wait until the pool has no open connection.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (e.g. 90s, 10m).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        #[arg(long)]
        force: bool,
    },
    /// Wait until a pool (blue/green) or one backend (ADDR:PORT) has no open
    /// connection.
    WaitDrained {
        service: String,
        target: DrainTarget,
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// Change one backend.
    Backend {
        service: String,
        address: SocketAddrV4,
        #[command(subcommand)]
        action: BackendCommand,
    },
    /// Open flows: client, backend, age, state.
    Flows {
        service: String,
        #[arg(long)]
        pool: Option<Pool>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Re-read the daemon's config file.
    Reload,
    /// Shift new connections to a pool in steps, holding each, and roll back
    /// automatically if the pool's backends go down or refuse/reset more
    /// than the allowed share of new connections. Runs inside the daemon;
    /// this command follows it (Ctrl-C asks whether to roll back or hold).
    Shift {
        service: String,
        /// The pool to shift new connections to.
        #[arg(long, required_unless_present = "abort")]
        to: Option<Pool>,
        /// The target pool's share at each step, in percent.
        #[arg(long, default_value = "10,25,50,100", value_parser = crate::shift::parse_steps)]
        steps: std::vec::Vec<u8>,
        /// How long each step is held (and judged) before the next.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Roll back if more than this share of new connections to the target
        /// pool fail (refused or reset by the backend), e.g. 1% or 0.01.
        #[arg(long, default_value = "1%", value_parser = crate::shift::parse_rate)]
        max_error_rate: f64,
        /// New connections the target pool needs in the window before its
        /// error rate is judged.
        #[arg(long, default_value_t = 20)]
        min_flows: u64,
        /// Stop the running shift and roll back to where it began.
        #[arg(long, conflicts_with = "to")]
        abort: bool,
        /// Start the shift and return at once instead of following it.
        #[arg(long)]
        detach: bool,
    },
    /// Send all new connections to a pool at once, after checking its health.
    Promote {
        service: String,
        pool: Pool,
        #[arg(long)]
        force: bool,
    },
    /// Go back to the ratio before the latest change (a running shift is
    /// rolled back to where it began).
    Rollback { service: String },
    /// Live view for watching a release: ratio, per-pool and per-backend
    /// open flows, new flows/s and bytes/s, health. `q` or Ctrl-C quits.
    Top {
        service: Option<String>,
        /// Time between refreshes (e.g. 1s, 500ms).
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Stop after this many refreshes.
        #[arg(short = 'n', long)]
        iterations: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// New-flow weight, 0..=1000 (0 drains it).
    Weight { weight: u32 },
    /// Back into rotation.
    Enable,
    /// Out of rotation regardless of health; open flows drain.
    Disable,
}

/// What `wait-drained` waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainTarget {
    Pool(Pool),
    Backend(SocketAddrV4),
}

impl std::str::FromStr for DrainTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse()
            .map(DrainTarget::Pool)
            .or_else(|_| s.parse().map(DrainTarget::Backend))
            .map_err(|_| format!("{s:?} is neither a pool (blue, green) nor a backend ADDR:PORT"))
    }
}
