//! `cargo xtask setup`: installs only what is missing, and says so.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::test::run_step;

/// Debian packages the build and tests use: LLVM 22 for bpf-linker, iproute2
/// and ethtool for the network-namespace tests, systemd for
/// `systemd-analyze verify` of the unit, man-db (with groff) to check the man
/// page, prometheus for `promtool` (checks and unit tests of the alert
/// rules), podman, runc and debootstrap to build and run the container
/// image from a locally made Debian base, bird2 (BIRD 2), the BGP speaker
/// of the several-hosts tests (`[bgp]`), etcd-server (etcd 3.4), the
/// fleet state of the several-hosts tests (`[cluster]`), curl and openssl
/// for the remote API's tests (a client, and a certificate for its TLS),
/// chromium and chromium-driver for the web console's browser test
/// (headless, through WebDriver).
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "iproute2",
    "ethtool",
    "systemd",
    "man-db",
    "prometheus",
    "podman",
    "runc",
    "debootstrap",
    "bird2",
    "etcd-server",
    "curl",
    "openssl",
    "chromium",
    "chromium-driver",
];
/// What `cargo xtask bench` compares bg-lb with, and its load generator;
/// installed only for the benchmark.
const BENCH_PACKAGES: &[&str] = &["haproxy", "nginx", "libnginx-mod-stream", "nftables", "wrk"];
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

pub fn run() -> anyhow::Result<()> {
    println!("==> setup: checking the toolchain (installing only what is missing)");
    rust_src()?;
    debian_packages(PACKAGES)?;
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

/// The benchmark's Debian packages (after [`run`]).
pub fn bench_packages() -> anyhow::Result<()> {
    debian_packages(BENCH_PACKAGES)
}

/// apt's own retry of a failed download.
const APT_RETRIES: &str = "-oAcquire::Retries=5";

fn debian_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !stdout("dpkg-query", &["-W", "-f=${Status}", p]).contains("install ok installed"))
        .collect();
    if missing.is_empty() {
        println!("    Debian packages {}: present", packages.join(", "));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "Debian packages {} are missing and installing them needs root: run as root",
            missing.join(", ")
        );
    }
    println!("    Debian packages: installing {}", missing.join(", "));
    // A mirror's passing hiccup must not fail a whole CI run.
    run_step(Command::new("apt-get").args(["update", "-qq", APT_RETRIES]))?;
    // Installing a daemon's package must not start it on the host (haproxy,
    // nginx, prometheus): the benchmark runs its own instances in namespaces,
    // and the tests need only promtool. Where invoke-rc.d is not already told
    // so, tell it for this install only.
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        std::fs::write(
            policy,
            "#!/bin/sh\n# installed by cargo xtask setup for one apt-get run\nexit 101\n",
        )
        .and_then(|()| std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755)))
        .context("writing /usr/sbin/policy-rc.d")?;
    }
    let installed = run_step(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", APT_RETRIES])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    if own_policy {
        let _ = std::fs::remove_file(policy);
    }
    installed
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
