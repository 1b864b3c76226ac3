//! The demo backend's command line, the [`Role`] it starts in, and the
//! [`AppConfig`] they give the app.

use std::{fmt, net::SocketAddr};

use serde::{Deserialize, Serialize};

/// Run the reference backend (a tiny HTTP app server for demos and tests).
#[derive(Debug, Clone, clap::Args)]
pub struct DemoBackendArgs {
    /// HTTP listen address, e.g. 10.0.1.11:8080
    #[arg(long)]
    pub listen: SocketAddr,
    /// Instance name, returned in the X-Backend header and in `GET /`.
    #[arg(long)]
    pub name: String,
    /// Application version reported by `GET /`.
    #[arg(long, default_value = "v1")]
    pub version: String,
    /// Role at startup: which of /live and /standby answers 200.
    #[arg(long, value_enum, default_value_t = Role::Live)]
    pub role: Role,
    /// Raw TCP echo port for long-lived connection tests (optional)
    #[arg(long)]
    pub echo_listen: Option<SocketAddr>,
    /// Reset this percentage (0..=100) of accepted HTTP connections instead
    /// of serving them (fault injection for rollout tests)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub fail_percent: u8,
}

/// Which of `/live` and `/standby` answers 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Live,
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Live => "live",
            Role::Standby => "standby",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the app reports and how it misbehaves; the listeners are separate so
/// tests can bind port 0.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub name: String,
    pub version: String,
    /// The role at startup; `POST /enable/...` changes it afterwards.
    pub role: Role,
    /// Percentage (0..=100) of accepted HTTP connections to reset.
    pub fail_percent: u8,
}

impl From<&DemoBackendArgs> for AppConfig {
    fn from(args: &DemoBackendArgs) -> Self {
        AppConfig {
            name: args.name.clone(),
            version: args.version.clone(),
            role: args.role,
            fail_percent: args.fail_percent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_parse_with_defaults_and_reject_fail_percent_over_100() {
        use clap::Parser as _;

        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: DemoBackendArgs,
        }

        let cli = Cli::try_parse_from(["demo", "--listen", "127.0.0.1:8080", "--name", "green-2"]).unwrap();
        let config = AppConfig::from(&cli.args);
        assert_eq!(cli.args.echo_listen, None);
        assert_eq!(
            (config.version.as_str(), config.role, config.fail_percent),
            ("v1", Role::Live, 0)
        );

        let cli = Cli::try_parse_from([
            "demo",
            "--listen",
            "127.0.0.1:8080",
            "--name",
            "green-2",
            "--role",
            "standby",
            "--fail-percent",
            "100",
            "--echo-listen",
            "127.0.0.1:9000",
        ])
        .unwrap();
        assert_eq!((cli.args.role, cli.args.fail_percent), (Role::Standby, 100));
        assert!(
            Cli::try_parse_from([
                "demo",
                "--listen",
                "127.0.0.1:8080",
                "--name",
                "x",
                "--fail-percent",
                "101"
            ])
            .is_err()
        );
    }
}
