use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Compiles bg-lb-ebpf for the BPF target so its objects can be embedded with
/// `include_bytes_aligned!` (aya-template practice): `bg-lb` stays one
/// self-contained executable. Also records what `bglb_build_info` reports.
fn main() -> anyhow::Result<()> {
    build_info();
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "bg-lb-ebpf")
        .ok_or_else(|| anyhow!("bg-lb-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("bg-lb-ebpf manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

/// Sets `BGLB_GIT_COMMIT` (the commit checked out, `BGLB_GIT_COMMIT` from the
/// environment when a packager builds from a tarball, else "unknown") and
/// `BGLB_RUSTC_VERSION` for the crate.
fn build_info() {
    println!("cargo:rerun-if-env-changed=BGLB_GIT_COMMIT");
    let commit = env::var("BGLB_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=BGLB_GIT_COMMIT={commit}");
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    // "rustc 1.95.0 (hash date)": the version is the second word.
    let version = output(Command::new(rustc).arg("--version"))
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=BGLB_RUSTC_VERSION={version}");
}

/// The commit HEAD points at, when building from a git checkout; reruns
/// this script when HEAD moves (a commit or a checkout), and only then.
fn git_commit() -> Option<String> {
    let dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR")?);
    let git = |args: &[&str]| output(Command::new("git").args(args).current_dir(&dir));
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let watched = ["HEAD", "packed-refs"]
        .into_iter()
        .map(str::to_owned)
        .chain(branch)
        .filter_map(|name| git(&["rev-parse", "--git-path", &name]));
    for path in watched {
        let path = dir.join(path);
        // A missing file would rerun the script on every build.
        if Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    Some(commit)
}

/// A command's trimmed stdout, if it ran and succeeded.
fn output(command: &mut Command) -> Option<String> {
    let out = command.output().ok().filter(|o| o.status.success())?;
    Some(String::from_utf8(out.stdout).ok()?.trim().to_owned()).filter(|s| !s.is_empty())
}
