//! bg-lb's automation: toolchain setup, the test run, the demo and the
//! benchmark. Each command says what it does before doing it.

mod bench;
mod demo;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "bg-lb build, test and setup automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent): rust-src for
    /// nightly, Debian packages, bpf-linker built against LLVM 22.
    Setup,
    /// Run setup, then formatting and lint checks, unit tests, and the root
    /// packet and network-namespace tests.
    Test(test::Options),
    /// Run setup, build, and watch a narrated zero-downtime blue-green
    /// release under load in network namespaces.
    Demo(demo::Options),
    /// Run setup, install HAProxy, nginx, nftables and wrk, then benchmark
    /// bg-lb against them on one namespace topology, plus the XDP program's
    /// cost per packet (needs root). Tables go to target/bench/.
    Bench(bench::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Test(opts) => test::run(&opts),
        Command::Demo(opts) => demo::run(&opts),
        Command::Bench(opts) => bench::run(&opts),
    }
}
