//! `cargo xtask test`: the one command that proves the tree works.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::setup;

#[derive(clap::Args)]
pub struct Options {
    /// Extra arguments for `cargo test` after `--` (e.g. a test name filter).
    #[arg(last = true)]
    test_args: Vec<String>,
}

const EBPF_CLIPPY: &[&str] = &[
    "+nightly",
    "clippy",
    "--package",
    "bg-lb-ebpf",
    "--release",
    "--target",
    "bpfel-unknown-none",
    "-Z",
    "build-std=core",
    "--",
    "-D",
    "warnings",
];

pub fn run(opts: &Options) -> anyhow::Result<()> {
    setup::run()?;
    if !setup::is_root() {
        bail!("the packet and namespace tests load BPF programs and create network namespaces: run as root");
    }
    println!("==> test: formatting (cargo +nightly fmt --check)");
    run_step(Command::new("cargo").args(["+nightly", "fmt", "--all", "--check"]))?;
    println!("==> test: lints (clippy, warnings denied) on userspace and on the eBPF crate");
    // Default members only: the eBPF crate builds for the BPF target alone.
    run_step(Command::new("cargo").args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    run_step(Command::new("cargo").args(EBPF_CLIPPY))?;
    println!("==> test: unit, packet (BPF_PROG_TEST_RUN) and network-namespace tests");
    run_step(Command::new("cargo").args(["test", "--"]).args(&opts.test_args))?;
    println!("==> test: all passed");
    Ok(())
}

/// Runs a command with inherited output; fails with the command line.
pub fn run_step(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
