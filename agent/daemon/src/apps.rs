//! Application releases in the daemon: accepting a target release, and the
//! applier task that keeps the engine matching it.
//!
//! The target is the Compose file itself, stored atomically as
//! `<state_dir>/apps/release.yml` before the caller is answered, so a kill
//! or power cut at any later instant restarts the agent with the same
//! target, and the applier — which always plans from the engine's actual
//! state — finishes the job. The applier also re-reconciles periodically,
//! so containers removed or stopped behind its back come back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containeros_api::ServiceRow;
use containeros_apps::apply::{ApplyOptions, Event, apply};
use containeros_apps::engine::Engine as _;
use containeros_apps::plan::{ContainerState, Health, LABEL_RELEASE, LABEL_SERVICE, UpdateLocks};
use containeros_apps::{Mode, Release};
use containeros_engine::{DockerApps, DockerProbe};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::store;

/// How often a converged release is checked again.
const RECONCILE_EVERY: Duration = Duration::from_secs(60);
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// What the applier tells the D-Bus side.
#[derive(Debug)]
pub enum Report {
    Operation {
        text: String,
        progress: u32,
    },
    Pull {
        image: String,
        done: u64,
        total: u64,
    },
    Finished {
        release: String,
        version: String,
        error: Option<String>,
    },
}

/// Where the engine is and how to treat releases.
#[derive(Debug, Clone)]
pub struct Settings {
    pub socket: PathBuf,
    pub timeout: Duration,
    pub mode: Mode,
    pub state_file: PathBuf,
    pub options: ApplyOptions,
}

impl Settings {
    pub fn state_file(state_dir: &Path) -> PathBuf {
        state_dir.join("apps").join("release.yml")
    }

    async fn engine(&self) -> Result<DockerApps, String> {
        let client = DockerProbe::new(&self.socket, self.timeout).client().await?;
        Ok(DockerApps::new(client))
    }
}

/// The stored target, if any, from an earlier run.
pub fn stored_target(settings: &Settings) -> Option<Arc<Release>> {
    let path = &settings.state_file;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            error!(file = %path.display(), "cannot read the stored release: {e}");
            return None;
        }
    };
    match containeros_apps::release::parse(&text, &path.display().to_string(), settings.mode) {
        Ok(release) => Some(Arc::new(release)),
        Err(e) => {
            error!("the stored release is no longer valid, keeping the engine as it is: {e}");
            None
        }
    }
}

/// Validates the release file at `path` and stores it as the target.
pub fn accept(settings: &Settings, path: &str) -> Result<Arc<Release>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read release file {path}: {e}"))?;
    let release = containeros_apps::release::parse(&text, path, settings.mode).map_err(|e| e.to_string())?;
    store::write_atomic(&settings.state_file, text.as_bytes()).map_err(|e| {
        format!(
            "cannot store the release as {}: {e}; is the data partition mounted and writable?",
            settings.state_file.display()
        )
    })?;
    info!(release = %release.name, version = %release.version, file = path, "new target release");
    Ok(Arc::new(release))
}

/// Keeps the engine matching the target until `shutdown` flips.
pub async fn applier(
    settings: Settings,
    mut target: watch::Receiver<Option<Arc<Release>>>,
    reports: mpsc::UnboundedSender<Report>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut retry = RETRY_FIRST;
    // A new target is always announced when its apply ends (a client waits
    // for that); periodic re-checks only when they changed something.
    let mut announce = true;
    loop {
        let current = target.borrow_and_update().clone();
        let wait = match current {
            None => None,
            Some(release) => match apply_once(&settings, &release, &reports, announce).await {
                Ok(deferred) => {
                    retry = RETRY_FIRST;
                    Some(if deferred {
                        RETRY_FIRST * 6
                    } else {
                        RECONCILE_EVERY
                    })
                }
                Err(()) => {
                    let wait = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    Some(wait)
                }
            },
        };
        let sleep = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        announce = false;
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            changed = target.changed() => {
                if changed.is_err() {
                    return;
                }
                announce = true;
            }
            () = sleep => {}
        }
    }
}

/// One apply; `Ok(true)` when updates wait on locks.
async fn apply_once(
    settings: &Settings,
    release: &Release,
    reports: &mpsc::UnboundedSender<Report>,
    announce: bool,
) -> Result<bool, ()> {
    let name = release.name.clone();
    let version = release.version.to_string();
    let finished = |error: Option<String>| {
        let _ = reports.send(Report::Finished {
            release: name.clone(),
            version: version.clone(),
            error,
        });
    };
    let engine = match settings.engine().await {
        Ok(e) => e,
        Err(e) => {
            warn!(release = %name, "cannot apply the release now, the engine does not answer: {e}");
            finished(Some(format!("the engine does not answer: {e}")));
            return Err(());
        }
    };
    let operation = format!("apply {name} {version}");
    let events = |event: Event<'_>| {
        let report = match event {
            Event::Planned { steps: 0, .. } => return,
            Event::Planned { .. } => Report::Operation {
                text: operation.clone(),
                progress: 0,
            },
            Event::Step { index, total, .. } => Report::Operation {
                text: operation.clone(),
                progress: u32::try_from(index.saturating_sub(1) * 100 / total.max(1)).unwrap_or(0),
            },
            Event::Pull { image, progress } => Report::Pull {
                image: image.to_owned(),
                done: progress.done,
                total: progress.total,
            },
        };
        let _ = reports.send(report);
    };
    let locks = UpdateLocks::default();
    let result = apply(
        &engine,
        release,
        &locks,
        &SystemTime::now,
        &settings.options,
        &events,
    )
    .await;
    match result {
        Ok(outcome) => {
            if outcome.steps_done > 0 {
                info!(release = %name, %version, steps = outcome.steps_done, rounds = outcome.rounds, "release applied");
            }
            if announce || outcome.steps_done > 0 {
                finished(None);
            }
            Ok(!outcome.deferred.is_empty())
        }
        Err(e) => {
            error!(release = %name, %version, "applying the release failed: {e}");
            finished(Some(e.to_string()));
            Err(())
        }
    }
}

/// The running container of `service` in the target release.
async fn container_of(
    engine: &DockerApps,
    target: Option<&Release>,
    service: &str,
) -> Result<(String, containeros_apps::release::Duration), String> {
    let release = target.ok_or("no release is applied on this device")?;
    let definition = release
        .services
        .get(service)
        .ok_or_else(|| format!("release {} has no service `{service}`", release.name))?;
    let observed = engine.observe().await.map_err(|e| e.to_string())?;
    let mut candidates: Vec<_> = observed
        .containers
        .into_iter()
        .filter(|c| {
            c.labels.get(LABEL_RELEASE) == Some(&release.name)
                && c.labels.get(LABEL_SERVICE).map(String::as_str) == Some(service)
        })
        .collect();
    // The running one first, if an update left two for a moment.
    candidates.sort_by_key(|c| c.state != ContainerState::Running);
    let container = candidates
        .into_iter()
        .next()
        .ok_or_else(|| format!("service `{service}` has no container yet"))?;
    Ok((container.id, definition.stop_grace_period))
}

pub async fn restart_service(
    settings: &Settings,
    target: Option<Arc<Release>>,
    service: &str,
) -> Result<(), String> {
    let engine = settings.engine().await?;
    let (id, grace) = container_of(&engine, target.as_deref(), service).await?;
    info!(service, container = %id, "restarting service on request");
    engine.restart(&id, grace).await.map_err(|e| e.to_string())
}

pub async fn logs(
    settings: &Settings,
    target: Option<Arc<Release>>,
    service: &str,
    lines: u32,
) -> Result<String, String> {
    let engine = settings.engine().await?;
    let (id, _) = container_of(&engine, target.as_deref(), service).await?;
    engine.logs(&id, lines).await.map_err(|e| e.to_string())
}

/// The release's containers as rows for `ListServices`; images are named
/// as the target release names them.
pub async fn list(settings: &Settings, target: Option<Arc<Release>>) -> Result<Vec<ServiceRow>, String> {
    let engine = settings.engine().await?;
    let observed = engine.observe().await.map_err(|e| e.to_string())?;
    let mut rows: Vec<ServiceRow> = Vec::new();
    for c in observed.containers {
        let label = |key: &str| c.labels.get(key).cloned().unwrap_or_default();
        let state = match c.state {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Restarting => "restarting",
            ContainerState::Paused => "paused",
            ContainerState::Exited => "exited",
            ContainerState::Dead => "dead",
        };
        let health = match c.health {
            Health::None => "",
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        };
        rows.push((
            label(LABEL_SERVICE),
            c.name.clone(),
            state.to_owned(),
            health.to_owned(),
            target
                .as_ref()
                .and_then(|r| r.services.get(&label(LABEL_SERVICE)))
                .map(|s| s.image.to_string())
                .unwrap_or_default(),
            label(LABEL_RELEASE),
        ));
    }
    rows.sort();
    Ok(rows)
}
