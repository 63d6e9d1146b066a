//! `containeros engine ...`: the container engine.

use containeros_api::{AgentProxy, ClientError};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Restart the engine's systemd unit now (root or the `containeros` group).
    Restart,
}

pub async fn run(agent: &AgentProxy<'_>, command: Command) -> Result<(), ClientError> {
    match command {
        Command::Restart => {
            agent.restart_engine().await?;
            println!("engine restarted");
        }
    }
    Ok(())
}
