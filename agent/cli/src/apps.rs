//! `containeros apps ...`: application releases.

use std::io::Write as _;

use containeros_api::{AgentProxy, AppsProxy, ClientError};
use futures_util::StreamExt as _;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Make the release in a Compose file the target (offline/USB update) and
    /// follow it until it is applied: a progress line for people, JSON lines
    /// with --json.
    Apply {
        /// The release's Compose file (on this device).
        file: std::path::PathBuf,
        /// Print one JSON object per event instead of a progress line.
        #[arg(long)]
        json: bool,
        /// Return once the release is accepted, without following the apply.
        #[arg(long)]
        no_wait: bool,
    },
    /// List the release's services with state and health.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Restart a service's container (root or the `containeros` group).
    Restart { service: String },
    /// Stop a service and keep it stopped, across reboots and updates, until
    /// `apps start` (root or the `containeros` group).
    Stop { service: String },
    /// Start a service stopped by `apps stop` (root or the `containeros` group).
    Start { service: String },
    /// Show the last lines a service wrote (root or the `containeros` group).
    Logs {
        service: String,
        /// How many lines.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: u32,
    },
}

pub async fn run(agent: &AgentProxy<'_>, command: Command) -> Result<(), ClientError> {
    let apps = AppsProxy::builder(agent.inner().connection())
        .destination(containeros_api::BUS_NAME)?
        .build()
        .await?;
    match command {
        Command::Apply { file, json, no_wait } => apply(&apps, &file, json, no_wait).await,
        Command::List { json } => list(&apps, json).await,
        Command::Restart { service } => {
            apps.restart_service(&service).await?;
            println!("service {service} restarted");
            Ok(())
        }
        Command::Stop { service } => {
            apps.stop_service(&service).await?;
            println!("service {service} stopped; it stays stopped until `containeros apps start {service}`");
            Ok(())
        }
        Command::Start { service } => {
            apps.start_service(&service).await?;
            println!("service {service} started");
            Ok(())
        }
        Command::Logs { service, lines } => {
            print!("{}", apps.logs(&service, lines).await?);
            Ok(())
        }
    }
}

async fn apply(
    apps: &AppsProxy<'_>,
    file: &std::path::Path,
    json: bool,
    no_wait: bool,
) -> Result<(), ClientError> {
    // The agent reads the file itself: give it an absolute path.
    let path =
        std::path::absolute(file).map_err(|e| ClientError::Refused(format!("{}: {e}", file.display())))?;
    let path = path.to_string_lossy().into_owned();
    // Subscribe before asking, or a quick apply's signals are missed.
    let mut pulls = apps.receive_pull_progress().await?;
    let mut finished = apps.receive_apply_finished().await?;
    apps.apply_release(&path).await?;
    if no_wait {
        println!("release accepted: {path}");
        return Ok(());
    }
    let mut stderr = std::io::stderr();
    loop {
        tokio::select! {
            Some(signal) = pulls.next() => {
                let Ok(a) = signal.args() else { continue };
                if json {
                    println!("{}", serde_json::json!({"event": "pull", "image": a.image, "done": a.done, "total": a.total}));
                } else {
                    let _ = write!(stderr, "\r\x1b[Kpulling {}: {} / {}", a.image, mib(a.done), mib(a.total));
                }
            }
            Some(signal) = finished.next() => {
                let Ok(a) = signal.args() else { continue };
                if json {
                    println!("{}", serde_json::json!({
                        "event": "finished", "release": a.release, "version": a.version,
                        "success": a.success, "error": a.error,
                    }));
                } else {
                    let _ = writeln!(stderr, "\r\x1b[K");
                }
                if a.success {
                    if !json {
                        println!("release {} {} applied", a.release, a.version);
                    }
                    return Ok(());
                }
                return Err(ClientError::Refused(format!(
                    "release {} {} not applied (the agent keeps retrying): {}",
                    a.release, a.version, a.error
                )));
            }
            else => return Err(ClientError::Refused("lost the agent's signals".into())),
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

async fn list(apps: &AppsProxy<'_>, json: bool) -> Result<(), ClientError> {
    let rows = apps.list_services().await?;
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(service, container, state, health, image, release)| {
                serde_json::json!({
                    "service": service, "container": container, "state": state,
                    "health": health, "image": image, "release": release,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    println!(
        "{:<16} {:<10} {:<10} {:<40} CONTAINER",
        "SERVICE", "STATE", "HEALTH", "IMAGE"
    );
    for (service, container, state, health, image, _release) in rows {
        println!(
            "{service:<16} {state:<10} {:<10} {image:<40} {container}",
            if health.is_empty() { "-" } else { &health }
        );
    }
    Ok(())
}
