//! What the `bg-lb` binary does, kept in the library so the end-to-end tests
//! can build the same program under their own name.

use std::process::ExitCode;

use clap::Parser as _;

use crate::{
    bgp,
    cli::{Cli, Command, LogFormat, ctl, docs as cli_docs},
    config,
    daemon::{self, server},
    demo_backend,
    host::ports::{EphemeralPorts, Overlap},
    logging,
};

pub fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<daemon::PinsRefused>() {
                Some(_) => ExitCode::from(daemon::PinsRefused::EXIT_CODE),
                None => ExitCode::FAILURE,
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            config,
            detach_on_exit,
            log_format,
            log_level,
        } => {
            logging::init(log_format, log_level);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(server::run(config, detach_on_exit))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => {
            let config = config::load(&file)?;
            warn_of_snat_overlap_here(config.snat_ports);
            println!("{}: ok ({} service(s))", file.display(), config.services.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Teardown { config } => {
            let config = config::load(&config)?;
            // Routers first, so they stop sending flows before the data plane goes.
            if let Some(bgp) = &config.bgp {
                match bgp::speaker::withdraw_all(bgp) {
                    Ok(reply) => {
                        println!(
                            "withdrew every VIP from BIRD ({reply}); detaching in {:?}, once the routers rerouted",
                            bgp::WITHDRAW_GRACE
                        );
                        std::thread::sleep(bgp::WITHDRAW_GRACE);
                    }
                    Err(error) => eprintln!(
                        "warning: {} now announces nothing, but BIRD was not reconfigured: {error}",
                        bgp.bird_include.display()
                    ),
                }
            }
            daemon::teardown(&config.pin_dir)?;
            println!("detached XDP and removed the pins under {}", config.pin_dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Ctl(args) => ctl::run(args),
        Command::DemoBackend(args) => {
            logging::init(LogFormat::Human, None);
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

/// `check-config`'s SNAT range check, against this host's ephemeral ports: a
/// warning, since the config may be meant for another host (the daemon
/// checks again where it runs, and refuses to start).
fn warn_of_snat_overlap_here(snat_ports: (u16, u16)) {
    match EphemeralPorts::read() {
        Ok(ephemeral) => {
            if let Some(overlap) = Overlap::check(snat_ports, ephemeral) {
                eprintln!(
                    "warning: {overlap}. (Checked against the host and network namespace running \
                     check-config, which may not be the daemon's; `bg-lb run` checks again where it runs \
                     and refuses to start on an overlap.)"
                );
            }
        }
        Err(e) => eprintln!("warning: snat_ports not checked against the kernel's ephemeral port range: {e}"),
    }
}
