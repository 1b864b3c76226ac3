//! `cargo xtask bench`: installs the contenders, builds bg-lb and the
//! benchmark with `--release`, and runs `bg-lb-bench` (tests/src/bench),
//! which writes its tables to `target/bench/`.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::{setup, test::run_step};

#[derive(clap::Args)]
pub struct Options {
    /// Short run (3 rounds of 3 s per workload, one round of the paced
    /// latency and scale items, fewer micro-benchmark runs): about 10 minutes
    /// on a 2-core machine.
    #[arg(long)]
    quick: bool,
    /// More arguments for bg-lb-bench after `--`, e.g. `--only bg-lb,haproxy`,
    /// `--workloads syn-flood` (or `udp`), `--rounds 7`, `--seconds 20`, `--skip-micro`,
    /// `--items scale` (items: macro, micro, sweep, scale),
    /// `--workloads new-connections,keep-alive,latency`, `--family ipv6`
    /// (the macro item over IPv6).
    #[arg(last = true)]
    bench_args: Vec<String>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    setup::run()?;
    setup::bench_packages()?;
    if !setup::is_root() {
        bail!("the benchmark loads BPF programs and creates network namespaces: run as root");
    }
    let root = workspace_root();
    println!("==> bench: building bg-lb and bg-lb-bench (release)");
    run_step(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "bg-lb-tests",
        "--bin",
        "bg-lb-bench",
        "--bin",
        "bg-lb-under-test",
    ]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let target = if target.is_relative() {
        root.join(target)
    } else {
        target
    };
    let mut bench = Command::new(target.join("release/bg-lb-bench"));
    bench
        .current_dir(&root)
        .arg("--out")
        .arg(target.join("bench"))
        .args(opts.quick.then_some("--quick"))
        .args(&opts.bench_args);
    println!("==> bench: running {bench:?}");
    // Ctrl-C reaches the benchmark too; it cleans up its namespaces and
    // processes before exiting, so wait for it instead of dying first.
    // SAFETY: setting a signal's disposition to "ignore" has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = bench.status().context("running bg-lb-bench")?;
    if !status.success() {
        bail!("bg-lb-bench failed: {status}");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    // xtask/ is one level below the workspace root.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_owned()
}
