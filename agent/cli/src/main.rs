//! `containeros`: the command-line client for people and scripts. It talks
//! to the agent over D-Bus only, so it works the same on the device and
//! through a forwarded bus, and it can do nothing the D-Bus policy does not
//! allow its user.
//!
//! Commands are grouped by what they act on (`status`, `engine`, and the
//! `apps`, `os`, and the groups later capabilities add), one module each.
//!
//! Exit codes: 0 done, 1 failed, 2 bad command line, 3 the agent is not
//! running, 4 permission denied.

mod apps;
mod engine;
mod os;
mod provision;
mod release;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use containeros_api::ClientError;

#[derive(Debug, Parser)]
#[command(
    name = "containeros",
    version,
    about = "Control the ContainerOS agent on this device"
)]
struct Cli {
    /// D-Bus address of the bus the agent is on (default: the system bus).
    #[arg(long, global = true, env = "CONTAINEROS_DBUS_ADDRESS", value_name = "ADDRESS")]
    bus: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the agent's status: versions, booted slot, operation, engine.
    Status(status::Args),
    /// Application releases: apply one from a file, list services.
    #[command(subcommand)]
    Apps(apps::Command),
    /// The container engine.
    #[command(subcommand)]
    Engine(engine::Command),
    /// OS updates (A/B slots): install a release, show its state, commit or
    /// roll back, reboot.
    #[command(subcommand)]
    Os(os::Command),
    /// Host side: release signing keys, signing and checking manifests
    /// (runs anywhere; does not talk to an agent).
    #[command(subcommand)]
    Release(release::Command),
    /// Host side: the first-boot provisioning file on a disk image's or
    /// card's boot partition, without mounting it (does not talk to an
    /// agent).
    #[command(subcommand)]
    Provision(provision::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("containeros: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Release(command) = cli.command {
        return match release::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("containeros release: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Provision(command) = cli.command {
        return match provision::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("containeros provision: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let result = runtime.block_on(async {
        let agent = containeros_api::connect(cli.bus.as_deref()).await?;
        match cli.command {
            Command::Status(args) => status::run(&agent, args).await,
            Command::Apps(command) => apps::run(&agent, command).await,
            Command::Engine(command) => engine::run(&agent, command).await,
            Command::Os(command) => os::run(&agent, command).await,
            Command::Release(_) | Command::Provision(_) => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("containeros: {e}");
            ExitCode::from(match e {
                ClientError::NotRunning { .. } | ClientError::Connect { .. } => 3,
                ClientError::AccessDenied(_) => 4,
                _ => 1,
            })
        }
    }
}
