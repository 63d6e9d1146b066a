//! First-boot provisioning at start: the device id, the import of the boot
//! partition's provisioning file, and the agent settings it gives (written
//! where `containeros_config::load` reads them, then the configuration is
//! loaded again). Applying the rest (network, host name, time, SSH) needs
//! the bus and happens in `run`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use containeros_config::{Config, Loaded, PROVISIONED_FILE};
use containeros_provision::{CHANNEL_CA_FILE, Outcome, Provision, Report, STORE_DIR, apply};
use tracing::{error, info, warn};

/// What start-up learnt.
#[derive(Debug)]
pub struct Provisioned {
    pub device_id: String,
    /// The import's one-line summary (D-Bus `Provisioning`).
    pub summary: String,
    /// The configuration in force, to apply once the bus is up.
    pub in_force: Option<Provision>,
    /// Imported this boot: rewrite what was applied before.
    pub changed: bool,
}

/// Runs the import and returns the configuration to run with (reloaded
/// when the provisioned settings changed it).
pub fn start(config_path: &Path, loaded: Loaded) -> (Loaded, Provisioned) {
    let state_dir = loaded.config.agent.state_dir.as_path().to_owned();
    let device_id = match containeros_provision::identity::device_id(&state_dir) {
        Ok(id) => id,
        Err(e) => {
            // Without /data there is no stable id; the machine id is the
            // next most stable thing, and the failure is reported.
            error!("{e}");
            std::fs::read_to_string("/etc/machine-id")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        }
    };
    info!(device_id = %device_id, "device identity");
    let file = loaded.config.provision.file.clone();
    if file.is_empty() {
        return (
            loaded,
            Provisioned {
                device_id,
                summary: "off (provision.file is empty)".into(),
                in_force: None,
                changed: false,
            },
        );
    }
    let report =
        containeros_provision::import(Path::new(&file), &state_dir.join(STORE_DIR), SystemTime::now());
    log(&report);
    let summary = report.summary();
    let changed = matches!(report.outcome, Outcome::Imported { .. });
    let loaded = match &report.in_force {
        Some(p) => with_overrides(config_path, loaded, &state_dir, p),
        None => loaded,
    };
    (
        loaded,
        Provisioned {
            device_id,
            summary,
            in_force: report.in_force,
            changed,
        },
    )
}

fn log(report: &Report) {
    match &report.outcome {
        Outcome::Imported { scrub_error: None } => info!("provisioning: {}", report.summary()),
        Outcome::Imported { scrub_error: Some(_) } => warn!("provisioning: {}", report.summary()),
        Outcome::Unchanged | Outcome::NoFile => info!("provisioning: {}", report.summary()),
        Outcome::Failed(_) => error!("provisioning: {}", report.summary()),
    }
}

/// Writes the provisioned agent settings and reloads the configuration;
/// if the result does not load (which the provisioning checks should rule
/// out), the agent runs without them rather than not at all.
fn with_overrides(config_path: &Path, loaded: Loaded, state_dir: &Path, p: &Provision) -> Loaded {
    let path: PathBuf = state_dir.join(PROVISIONED_FILE);
    let ca_path: PathBuf = state_dir.join(CHANNEL_CA_FILE);
    // The CA first: the settings that name it must never be in force
    // without it.
    if let Some(ca) = &p.channel.ca
        && let Err(e) = write_if_changed(&ca_path, ca.as_str())
    {
        error!(
            "cannot write the provisioned channel CA to {}: {e}",
            ca_path.display()
        );
        return loaded;
    }
    let text = format!(
        "# Written by containeros-agent from the provisioning file; edits are replaced.\n{}",
        containeros_provision::agent_overrides(p, &ca_path)
    );
    if let Err(e) = write_if_changed(&path, &text) {
        error!(
            "cannot write the provisioned agent settings to {}: {e}",
            path.display()
        );
        return loaded;
    }
    match containeros_config::load(config_path) {
        Ok(reloaded) => reloaded,
        Err(e) => {
            error!("the provisioned agent settings are not usable, running without them: {e}");
            loaded
        }
    }
}

fn write_if_changed(path: &Path, text: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    crate::store::write_atomic(path, text.as_bytes())
}

/// What `apply` needs from the agent's configuration.
pub fn targets(config: &Config, changed: bool) -> apply::Targets {
    apply::Targets {
        hostname_file: config.provision.hostname_file.as_path().to_owned(),
        network: config.provision.network,
        timesyncd_dir: config.provision.timesyncd_dir.as_path().to_owned(),
        authorized_keys: config.provision.authorized_keys.as_path().to_owned(),
        ssh_unit: config.provision.ssh_unit.as_ref().map(|u| u.as_str().to_owned()),
        changed,
    }
}

/// Applies the configuration in force; returns the problems in one line
/// ("" when none).
pub async fn apply(connection: &zbus::Connection, p: &Provision, targets: &apply::Targets) -> String {
    let mut problems = Vec::new();
    for step in apply::apply(connection, p, targets).await {
        match step.result {
            Ok(done) => info!("provisioning: {}: {done}", step.what),
            Err(e) => {
                warn!("provisioning: {}: {e}", step.what);
                problems.push(format!("{}: {e}", step.what));
            }
        }
    }
    problems.join("; ")
}
