fn main() -> std::process::ExitCode {
    bg_lb::entry::main()
}
