//! The `bg-lb` program under another name, so the end-to-end tests get a
//! binary cargo rebuilds for every test run (`CARGO_BIN_EXE_bg-lb-under-test`).
fn main() -> std::process::ExitCode {
    bg_lb::entry::main()
}
