fn main() {
    eprintln!("bg-lb: the daemon and CLI arrive with the control plane; see README.md");
    std::process::exit(2);
}
