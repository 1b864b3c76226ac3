//! Runs setup commands (`ip`, `sysctl`) and panics with their output on failure.

use std::process::Command;

/// Runs `program args...` and panics with its stderr if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (is iproute2 installed? `cargo xtask setup`)"));
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip ARGS` where ARGS is one whitespace-separated string.
pub fn ip(args: &str) -> String {
    run("ip", &args.split_whitespace().collect::<Vec<_>>())
}

/// The ifindex of `name` in the calling thread's namespace (sysfs would
/// show the namespace it was mounted in instead).
pub fn ifindex(name: &str) -> u32 {
    nix::net::if_::if_nametoindex(name).unwrap_or_else(|e| panic!("no interface {name}: {e}"))
}
