use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Compiles bg-lb-ebpf for the BPF target so its objects can be embedded with
/// `include_bytes_aligned!` (aya-template practice): `bg-lb` stays one
/// self-contained executable.
fn main() -> anyhow::Result<()> {
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
