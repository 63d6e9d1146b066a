//! Logs go to journald (structured, with fields) when the agent runs under
//! systemd, and to stderr as plain text otherwise. `RUST_LOG` wins over the
//! configured filter so a person debugging can turn it up without editing
//! the read-only root.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

pub fn init(configured: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.is_empty() => {
            EnvFilter::try_new(&from_env).map_err(|e| format!("RUST_LOG: {e}"))?
        }
        _ => EnvFilter::try_new(configured).map_err(|e| e.to_string())?,
    };
    // systemd sets JOURNAL_STREAM when stderr is connected to the journal.
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let journald = if under_journald {
        tracing_journald::layer().ok()
    } else {
        None
    };
    let registry = tracing_subscriber::registry().with(filter);
    match journald {
        Some(layer) => registry
            .with(layer.with_syslog_identifier("containeros-agent".into()))
            .init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_ansi(false),
            )
            .init(),
    }
    Ok(())
}
