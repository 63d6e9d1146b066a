//! `containeros-agent`: the device agent daemon. This file only wires the
//! parts together; each part lives in its own crate.
//!
//! Exit codes: 0 stopped cleanly, 1 failed while running, 2 bad command
//! line, 78 (EX_CONFIG) invalid configuration — the unit file does not
//! restart on 78, since restarting cannot fix a bad file.

mod apps;
mod args;
mod channel;
mod device;
mod logging;
mod os;
mod provision;
mod run;
mod store;

use std::process::ExitCode;

const EXIT_USAGE: u8 = 2;
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let args = match args::parse(std::env::args_os().skip(1)) {
        Ok(args::Parsed::Run(args)) => args,
        Ok(args::Parsed::Exit(text)) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("containeros-agent: {message}\n\n{}", args::USAGE);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let loaded = match containeros_config::load(&args.config) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("containeros-agent: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_config {
        let files: Vec<String> = loaded
            .sources
            .iter()
            .map(|s| s.path.display().to_string())
            .collect();
        println!("configuration OK: {}", files.join(" + "));
        return ExitCode::SUCCESS;
    }
    if let Err(message) = logging::init(loaded.config.agent.log_level.as_str()) {
        eprintln!(
            "containeros-agent: invalid configuration: {}: agent.log_level: {message}",
            args.config.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("containeros-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (loaded, provisioned) = provision::start(&args.config, loaded);
    match runtime.block_on(run::run(loaded, provisioned)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("containeros-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
