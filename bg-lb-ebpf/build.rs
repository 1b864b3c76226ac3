use which::which;

/// Rebuild the eBPF objects when bpf-linker changes (aya-template practice):
/// a new linker can produce different code.
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!(
        "cargo:rerun-if-changed={}",
        bpf_linker.to_str().expect("bpf-linker path is UTF-8")
    );
}
