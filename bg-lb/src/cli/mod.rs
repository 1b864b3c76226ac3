//! Command line: the daemon, config checking, teardown and the admin client.
//! Doc comments are the help text.

pub mod ctl;
pub mod docs;
pub mod top;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    config::{DEFAULT_ADMIN_SOCKET, DEFAULT_CONFIG},
    demo_backend::DemoBackendArgs,
    protocol::{
        BackendAddRequest, BackendRemoveRequest, BackendRequest, FlowsRequest, NodeRequest, PoolRequest, RatioRequest,
        Request, ServiceRequest, ShiftAbortRequest, ShiftRequest, StatusRequest,
    },
    ratio::Pool,
    shift::{self, hooks::PrometheusCheck},
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
        /// Where and how to log: auto sends records with their fields to
        /// journald when stderr is the journal (under systemd) and human
        /// lines to stderr otherwise; human and json always write lines to
        /// stderr. Lines are coloured only on a terminal.
        #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
        log_format: LogFormat,
        /// The least severe level logged. Overrides RUST_LOG, which is used
        /// (as tracing filter directives, e.g. `info,bg_lb::health=debug`)
        /// only without this flag; the default is info.
        #[arg(long, value_enum)]
        log_level: Option<LogLevel>,
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
    Auto,
    Human,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// As a tracing filter directive.
    pub fn directive(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
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

/// `ctl` subcommands: the requests of [`crate::protocol`], whose payloads
/// clap parses directly, plus what only the client does (waiting, following
/// a shift, `top`).
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Ratio, backends, health and flows of every service (or one).
    Status(StatusRequest),
    /// Split new connections BLUE:GREEN (e.g. 30:70); open ones stay put.
    Ratio(RatioRequest),
    /// Send all new connections to the other pool.
    Drain {
        /// Then wait until the pool has no open connection.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (e.g. 90s, 10m).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        #[command(flatten)]
        request: PoolRequest,
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
    Backend(BackendRequest),
    /// Add a backend to a service at runtime (checked like the config's,
    /// kept across restarts); `status` marks it "added at runtime".
    BackendAdd(BackendAddRequest),
    /// Remove a backend added at runtime; its open connections drain.
    BackendRemove(BackendRemoveRequest),
    /// Open flows: client, backend, age, state.
    Flows(FlowsRequest),
    /// Re-read the daemon's config file.
    Reload,
    /// Shift new connections to a pool in steps, holding each, and roll back
    /// automatically if the pool's backends go down or refuse/reset more
    /// than the allowed share of new connections. Runs inside the daemon;
    /// this command follows it (Ctrl-C asks whether to roll back or hold).
    Shift(ShiftArgs),
    /// Send all new connections to a pool at once, after checking its health.
    Promote(PoolRequest),
    /// Go back to the ratio before the latest change (a running shift is
    /// rolled back to where it began).
    Rollback(ServiceRequest),
    /// This host as a whole (`[bgp]`): `drain` withdraws its VIPs from the
    /// routers, `resume` announces them again.
    Node(NodeRequest),
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

/// `ctl shift`: a [`ShiftRequest`] with a duration for the interval, or
/// `--abort` for a `shift-abort` request.
#[derive(Debug, clap::Args)]
pub struct ShiftArgs {
    pub service: String,
    /// The pool to shift new connections to.
    #[arg(long, required_unless_present = "abort")]
    pub to: Option<Pool>,
    /// The target pool's share at each step, in percent.
    #[arg(long, default_value = shift::DEFAULT_STEPS, value_parser = shift::parse_steps)]
    pub steps: std::vec::Vec<u8>,
    /// How long each step is held (and judged) before the next.
    #[arg(long, default_value = shift::DEFAULT_INTERVAL, value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Roll back if more than this share of new connections to the target
    /// pool fail (refused or reset by the backend), e.g. 1% or 0.01.
    #[arg(long, default_value = shift::DEFAULT_MAX_ERROR_RATE, value_parser = shift::parse_rate)]
    pub max_error_rate: f64,
    /// New connections the target pool needs in the window before its
    /// error rate is judged.
    #[arg(long, default_value_t = shift::DEFAULT_MIN_FLOWS)]
    pub min_flows: u64,
    /// Stop the running shift and roll back to where it began.
    #[arg(long, conflicts_with = "to")]
    pub abort: bool,
    /// Start the shift and return at once instead of following it.
    #[arg(long)]
    pub detach: bool,
    /// Analysis hook: GET this http:// URL during each step; a status other
    /// than 2xx, or no answer in 5 s, rolls the shift back. Each step ends
    /// only after a check passed during it.
    #[arg(long, value_name = "URL")]
    pub check_url: Option<String>,
    /// Analysis hook: a Prometheus server (http://HOST:PORT) to run --query
    /// on during each step; a value over --max, or no data, rolls back.
    #[arg(long, value_name = "URL", requires_all = ["query", "max"])]
    pub check_prometheus: Option<String>,
    /// The PromQL instant query of --check-prometheus.
    #[arg(long, requires = "check_prometheus")]
    pub query: Option<String>,
    /// The highest value --query may return.
    #[arg(long, requires = "check_prometheus")]
    pub max: Option<f64>,
}

impl ShiftArgs {
    /// The request to send: `shift-abort` with `--abort`, else `shift`.
    pub fn request(&self) -> anyhow::Result<Request> {
        if self.abort {
            return Ok(Request::ShiftAbort(ShiftAbortRequest {
                service: self.service.clone(),
                rollback: true,
            }));
        }
        Ok(Request::Shift(ShiftRequest {
            service: self.service.clone(),
            to: self.to.context("--to POOL is required")?,
            steps: self.steps.clone(),
            interval_secs: self.interval.as_secs_f64(),
            max_error_rate: self.max_error_rate,
            min_flows: self.min_flows,
            check_url: self.check_url.clone(),
            check_prometheus: match (&self.check_prometheus, &self.query, self.max) {
                (Some(url), Some(query), Some(max)) => Some(PrometheusCheck {
                    url: url.clone(),
                    query: query.clone(),
                    max,
                }),
                _ => None,
            },
        }))
    }
}

/// What `wait-drained` waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainTarget {
    Pool(Pool),
    Backend(SocketAddr),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse_request;

    fn ctl(line: &str) -> CtlCommand {
        let argv = ["bg-lb", "ctl"].into_iter().chain(line.split_whitespace());
        match Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{line}: {e}"))
            .command
        {
            Command::Ctl(args) => args.command,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn wire(line: &str) -> Request {
        parse_request(line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    /// `ctl shift` parses its interval and rate from text, the wire takes
    /// numbers: both must fill a left-out field with the same value.
    #[test]
    fn ctl_defaults_are_the_protocol_defaults() {
        let CtlCommand::Shift(shift) = ctl("shift web --to blue") else {
            panic!("not a shift")
        };
        assert_eq!(
            shift.request().unwrap(),
            wire(r#"{"cmd":"shift","service":"web","to":"blue"}"#)
        );
        let CtlCommand::Flows(flows) = ctl("flows web") else {
            panic!("not flows")
        };
        assert_eq!(Request::Flows(flows), wire(r#"{"cmd":"flows","service":"web"}"#));
    }

    #[test]
    fn ctl_commands_send_the_documented_requests() {
        let CtlCommand::Backend(backend) = ctl("backend web 10.0.0.1:80 weight 7") else {
            panic!("not backend")
        };
        assert_eq!(
            Request::Backend(backend),
            wire(r#"{"cmd":"backend","service":"web","address":"10.0.0.1:80","action":{"weight":7}}"#)
        );
        let CtlCommand::Shift(abort) = ctl("shift web --abort") else {
            panic!("not a shift")
        };
        assert_eq!(
            abort.request().unwrap(),
            wire(r#"{"cmd":"shift-abort","service":"web"}"#)
        );
        let CtlCommand::Drain { wait, request, .. } = ctl("drain web blue --wait --force") else {
            panic!("not drain")
        };
        assert!(wait);
        assert_eq!(
            Request::Drain(request),
            wire(r#"{"cmd":"drain","service":"web","pool":"blue","force":true}"#)
        );
        let CtlCommand::BackendAdd(add) = ctl("backend-add web 10.0.0.9:80 --pool green") else {
            panic!("not backend-add")
        };
        assert_eq!(
            Request::BackendAdd(add),
            wire(r#"{"cmd":"backend-add","service":"web","address":"10.0.0.9:80","pool":"green","weight":100}"#)
        );
    }

    #[test]
    fn shift_hooks_go_on_the_wire_and_a_prometheus_check_needs_its_query_and_max() {
        let CtlCommand::Shift(shift) =
            ctl("shift web --to blue --check-url http://c/ok --check-prometheus http://p:9090 --query up --max 1")
        else {
            panic!("not a shift")
        };
        let Request::Shift(request) = shift.request().unwrap() else {
            panic!("not a shift request")
        };
        assert_eq!(request.check_url.as_deref(), Some("http://c/ok"));
        assert_eq!(
            request.check_prometheus,
            Some(PrometheusCheck {
                url: "http://p:9090".into(),
                query: "up".into(),
                max: 1.0
            })
        );
        let missing_max =
            Cli::try_parse_from("bg-lb ctl shift web --to blue --check-prometheus http://p:9090 --query up".split(' '));
        assert!(missing_max.is_err());
    }
}
