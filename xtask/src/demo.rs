//! `cargo xtask demo`: set up, build, and run the narrated release demo.

use std::{os::unix::process::CommandExt as _, path::PathBuf, process::Command};

use anyhow::bail;

use crate::{setup, test::run_step};

#[derive(clap::Args)]
pub struct Options {
    /// Roughly how long the release takes, in seconds.
    #[arg(long)]
    duration: Option<u64>,
    /// Short requests per second sent through the VIP during the release.
    #[arg(long)]
    rate: Option<u32>,
    /// Leave the topology up at the end for exploring with `bg-lb ctl`.
    #[arg(long)]
    keep: bool,
    /// The service's forwarding: full-nat (default), gateway or dsr.
    #[arg(long, value_parser = ["full-nat", "gateway", "dsr"])]
    mode: Option<String>,
    /// LB hosts: 2 or 3 run the release across that many hosts behind a
    /// BGP router (BIRD, ECMP, etcd), stopping one for good midway.
    #[arg(long)]
    hosts: Option<u8>,
    /// Serve the web console as well, on 127.0.0.1:PORT of this host (9751
    /// when no port is given); prints its URL and tokens and keeps the lab
    /// up until Ctrl-C.
    #[arg(long, value_name = "PORT", num_args = 0..=1, default_missing_value = "9751")]
    console: Option<u16>,
    /// Run the release over IPv6: an IPv6 VIP, backends and SNAT address
    /// (ULA fd00:99::/64), IPv6 clients.
    #[arg(long)]
    ipv6: bool,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    setup::run()?;
    if !setup::is_root() {
        bail!("the demo creates network namespaces and loads XDP: run it as root");
    }
    println!("==> demo: building bg-lb and the demo driver (release)");
    run_step(Command::new("cargo").args([
        "build",
        "--release",
        "--package",
        "bg-lb",
        "--bin",
        "bg-lb",
        "--package",
        "bg-lb-tests",
        "--bin",
        "bg-lb-demo",
    ]))?;
    let release = target_dir().join("release");
    let mut demo = Command::new(release.join("bg-lb-demo"));
    demo.arg("--bin").arg(release.join("bg-lb"));
    if let Some(duration) = opts.duration {
        demo.args(["--duration", &duration.to_string()]);
    }
    if let Some(rate) = opts.rate {
        demo.args(["--rate", &rate.to_string()]);
    }
    if opts.keep {
        demo.arg("--keep");
    }
    if let Some(mode) = &opts.mode {
        demo.args(["--mode", mode]);
    }
    if let Some(hosts) = opts.hosts {
        demo.args(["--hosts", &hosts.to_string()]);
    }
    if let Some(port) = opts.console {
        demo.args(["--console", &port.to_string()]);
    }
    if opts.ipv6 {
        demo.arg("--ipv6");
    }
    println!("==> demo: running (Ctrl-C stops it and cleans everything up)\n");
    // Replace this process so Ctrl-C reaches only the demo, which cleans up.
    Err(demo.exec().into())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target"))
}
