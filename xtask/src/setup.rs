//! `cargo xtask setup`: installs only what is missing, and says so.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::test::run_step;

/// Debian packages the build and tests use: LLVM 22 for bpf-linker, iproute2
/// and ethtool for the network-namespace tests, systemd for
/// `systemd-analyze verify` of the unit, man-db (with groff) to check the man
/// page.
const PACKAGES: &[&str] = &["llvm-22-dev", "iproute2", "ethtool", "systemd", "man-db"];
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

pub fn run() -> anyhow::Result<()> {
    println!("==> setup: checking the toolchain (installing only what is missing)");
    rust_src()?;
    debian_packages()?;
    bpf_linker()?;
    println!("==> setup: done");
    Ok(())
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn stdout(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn rust_src() -> anyhow::Result<()> {
    let installed = stdout(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    );
    if installed.lines().any(|l| l.trim() == "rust-src") {
        println!("    rust-src for nightly: present");
        return Ok(());
    }
    println!("    rust-src for nightly: installing (the eBPF crate builds core from source)");
    run_step(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !stdout("dpkg-query", &["-W", "-f=${Status}", p]).contains("install ok installed"))
        .collect();
    if missing.is_empty() {
        println!("    Debian packages {}: present", PACKAGES.join(", "));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "Debian packages {} are missing and installing them needs root: run as root",
            missing.join(", ")
        );
    }
    println!("    Debian packages: installing {}", missing.join(", "));
    run_step(Command::new("apt-get").args(["update", "-qq"]))?;
    run_step(
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn bpf_linker() -> anyhow::Result<()> {
    if succeeds("bpf-linker", &["--version"]) {
        println!("    bpf-linker: present");
        return Ok(());
    }
    println!("    bpf-linker: building it against LLVM 22 (a few minutes, once)");
    let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    run_step(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", path),
    )
    .context("installing bpf-linker")
}

pub fn is_root() -> bool {
    stdout("id", &["-u"]).trim() == "0"
}
