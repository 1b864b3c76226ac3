//! What the `bg-lb` binary does, kept in the library so the end-to-end tests
//! can build the same program under their own name.

use std::process::ExitCode;

use clap::Parser as _;

use crate::{
    cli::{Cli, Command, LogFormat, ctl, docs as cli_docs},
    config,
    daemon::{self, server},
    demo_backend, logging,
};

pub fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            config,
            detach_on_exit,
            log_format,
        } => {
            logging::init(log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(server::run(config, detach_on_exit))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => {
            let config = config::load(&file)?;
            println!("{}: ok ({} service(s))", file.display(), config.services.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Teardown { config } => {
            let config = config::load(&config)?;
            daemon::teardown(&config.pin_dir)?;
            println!("detached XDP and removed the pins under {}", config.pin_dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Ctl(args) => ctl::run(args),
        Command::DemoBackend(args) => {
            logging::init(LogFormat::Human);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(demo_backend::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            cli_docs::completions(shell, &mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            cli_docs::man_page(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
