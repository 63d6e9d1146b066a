//! Application releases in the daemon: accepting a target release, and the
//! applier task that keeps the engine matching it.
//!
//! The target is the Compose file itself, stored atomically as
//! `<state_dir>/apps/release.yml` before the caller is answered, so a kill
//! or power cut at any later instant restarts the agent with the same
//! target, and the applier — which always plans from the engine's actual
//! state — finishes the job. The applier also re-reconciles periodically,
//! so containers removed or stopped behind its back come back.
//!
//! Beside the target, `<state_dir>/apps/` holds `stopped` (services an
//! operator stopped, one per line: the planner keeps them stopped until
//! `StartService`) and `images` (every image reference the agent pulled
//! for a release, the garbage collector's candidates: images the agent did
//! not pull are never removed).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use containeros_api::ServiceRow;
use containeros_apps::apply::{ApplyOptions, Event, apply};
use containeros_apps::engine::{ContainerSpec, Engine, EngineResult, PullProgress};
use containeros_apps::locks::{self, LockClock};
use containeros_apps::plan::{ContainerState, Health, Holds, LABEL_RELEASE, LABEL_SERVICE};
use containeros_apps::plan::{Observed, ObservedContainer};
use containeros_apps::release::ImageRef;
use containeros_apps::{Mode, Release};
use containeros_engine::{DockerApps, DockerProbe};
use containeros_native::NativeEngine;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{error, info, warn};

use crate::store;

/// How often a converged release is checked again.
const RECONCILE_EVERY: Duration = Duration::from_secs(60);
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// The longest one engine request of an apply may take.
const ENGINE_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// How often an update waiting on a lock looks at the lock again.
const LOCK_POLL: Duration = Duration::from_secs(5);

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
    /// `<state_dir>/apps`.
    pub dir: PathBuf,
    pub options: ApplyOptions,
    /// `apps.lock_dir`: the services' update-lock directories.
    pub lock_dir: PathBuf,
    /// `apps.update_lock_timeout`.
    pub lock_timeout: Duration,
    /// Services an operator stopped (persisted in `stopped`).
    pub stopped: Arc<Mutex<BTreeSet<String>>>,
    /// Wakes the applier for an apply now.
    pub kick: Arc<Notify>,
    /// The built-in engine, when `engine.kind = "native"`.
    pub native: Option<Arc<NativeEngine>>,
}

impl Settings {
    pub fn new(
        socket: PathBuf,
        timeout: Duration,
        mode: Mode,
        state_dir: &Path,
        options: ApplyOptions,
        lock_dir: PathBuf,
        lock_timeout: Duration,
    ) -> Self {
        let dir = state_dir.join("apps");
        let stopped = read_lines(&dir.join("stopped"));
        if !stopped.is_empty() {
            info!(services = ?stopped, "services stopped by an operator stay stopped");
        }
        Self {
            socket,
            timeout,
            mode,
            options: ApplyOptions {
                lock_dir: Some(lock_dir.clone()),
                ..options
            },
            lock_dir,
            lock_timeout,
            stopped: Arc::new(Mutex::new(stopped)),
            kick: Arc::new(Notify::new()),
            dir,
            native: None,
        }
    }

    /// Runs the apps on the built-in engine instead of the Docker API.
    pub fn with_native(mut self, engine: Arc<NativeEngine>) -> Self {
        self.native = Some(engine);
        self
    }

    fn state_file(&self) -> PathBuf {
        self.dir.join("release.yml")
    }

    /// The stored target's Compose file.
    pub fn target_file(&self) -> PathBuf {
        self.state_file()
    }

    fn stopped_file(&self) -> PathBuf {
        self.dir.join("stopped")
    }

    fn images_file(&self) -> PathBuf {
        self.dir.join("images")
    }

    fn stopped(&self) -> BTreeSet<String> {
        self.stopped.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Changes the stopped set, on disk first: the change is only made
    /// when it is durable.
    fn set_stopped(&self, service: &str, stopped: bool) -> Result<(), String> {
        let mut set = self
            .stopped
            .lock()
            .map_err(|_| "internal error: stopped set poisoned")?;
        let mut next = set.clone();
        if stopped {
            next.insert(service.to_owned());
        } else {
            next.remove(service);
        }
        if next != *set {
            write_lines(&self.stopped_file(), &next)?;
            *set = next;
        }
        Ok(())
    }

    /// Adds `release`'s images to the garbage collector's candidates,
    /// before anything is pulled for it.
    fn record_images(&self, release: &Release) -> Result<(), String> {
        let path = self.images_file();
        let mut images = read_lines(&path);
        let before = images.len();
        images.extend(release.services.values().map(|s| s.image.engine_reference()));
        if images.len() != before {
            write_lines(&path, &images)?;
        }
        Ok(())
    }

    async fn engine(&self) -> Result<AnyEngine, String> {
        if let Some(native) = &self.native {
            return Ok(AnyEngine::Native(Arc::clone(native)));
        }
        let client = DockerProbe::new(&self.socket, self.timeout).client().await?;
        // Container operations take far longer than a ping (a stop waits
        // out the service's grace period, a loaded device starts slowly):
        // the ping's timeout (engine.check_timeout) is only for connecting.
        Ok(AnyEngine::Docker(DockerApps::new(
            client.with_timeout(ENGINE_REQUEST_TIMEOUT),
        )))
    }
}

/// The configured engine: the Docker API or the built-in one.
#[derive(Debug)]
pub enum AnyEngine {
    Docker(DockerApps),
    Native(Arc<NativeEngine>),
}

macro_rules! delegate {
    ($self:ident, $e:ident => $call:expr) => {
        match $self {
            AnyEngine::Docker($e) => $call.await,
            AnyEngine::Native($e) => $call.await,
        }
    };
}

impl Engine for AnyEngine {
    async fn observe(&self) -> EngineResult<Observed> {
        delegate!(self, e => e.observe())
    }
    async fn pull(
        &self,
        image: &ImageRef,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> EngineResult<()> {
        delegate!(self, e => e.pull(image, progress))
    }
    async fn free_space(&self) -> EngineResult<u64> {
        delegate!(self, e => e.free_space())
    }
    async fn create_network(&self, name: &str, release: &str) -> EngineResult<()> {
        delegate!(self, e => e.create_network(name, release))
    }
    async fn remove_network(&self, name: &str) -> EngineResult<()> {
        delegate!(self, e => e.remove_network(name))
    }
    async fn create_volume(&self, name: &str, release: &str) -> EngineResult<()> {
        delegate!(self, e => e.create_volume(name, release))
    }
    async fn create_container(&self, spec: &ContainerSpec<'_>) -> EngineResult<String> {
        delegate!(self, e => e.create_container(spec))
    }
    async fn start(&self, container: &str) -> EngineResult<()> {
        delegate!(self, e => e.start(container))
    }
    async fn stop(
        &self,
        container: &str,
        grace: containeros_apps::release::Duration,
        signal: Option<&str>,
    ) -> EngineResult<()> {
        delegate!(self, e => e.stop(container, grace, signal))
    }
    async fn remove(&self, container: &str) -> EngineResult<()> {
        delegate!(self, e => e.remove(container))
    }
    async fn remove_image(&self, reference: &str) -> EngineResult<()> {
        delegate!(self, e => e.remove_image(reference))
    }
    async fn inspect(&self, container: &str) -> EngineResult<ObservedContainer> {
        delegate!(self, e => e.inspect(container))
    }
    async fn restart(&self, container: &str, grace: containeros_apps::release::Duration) -> EngineResult<()> {
        delegate!(self, e => e.restart(container, grace))
    }
    async fn logs(&self, container: &str, lines: u32) -> EngineResult<String> {
        delegate!(self, e => e.logs(container, lines))
    }
}

fn read_lines(path: &Path) -> BTreeSet<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => {
            warn!(file = %path.display(), "cannot read: {e}");
            BTreeSet::new()
        }
    }
}

fn write_lines(path: &Path, lines: &BTreeSet<String>) -> Result<(), String> {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    store::write_atomic(path, text.as_bytes()).map_err(|e| {
        format!(
            "cannot write {}: {e}; is the data partition mounted and writable?",
            path.display()
        )
    })
}

/// The stored target, if any, from an earlier run.
pub fn stored_target(settings: &Settings) -> Option<Arc<Release>> {
    let path = &settings.state_file();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            error!(file = %path.display(), "cannot read the stored release: {e}");
            return None;
        }
    };
    match containeros_apps::release::parse(&text, &path.display().to_string(), settings.mode) {
        Ok(release) => {
            if let Err(e) = settings.record_images(&release) {
                warn!("{e}");
            }
            Some(Arc::new(release))
        }
        Err(e) => {
            error!("the stored release is no longer valid, keeping the engine as it is: {e}");
            None
        }
    }
}

/// Validates the release file at `path`, changing nothing.
pub fn check(settings: &Settings, path: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read release file {path}: {e}"))?;
    containeros_apps::release::parse(&text, path, settings.mode)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Validates the release file at `path` and stores it as the target.
pub fn accept(settings: &Settings, path: &str) -> Result<Arc<Release>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read release file {path}: {e}"))?;
    let release = containeros_apps::release::parse(&text, path, settings.mode).map_err(|e| e.to_string())?;
    settings.record_images(&release)?;
    let state_file = settings.state_file();
    store::write_atomic(&state_file, text.as_bytes()).map_err(|e| {
        format!(
            "cannot store the release as {}: {e}; is the data partition mounted and writable?",
            state_file.display()
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
    // A new target is always announced when its apply ends — after any
    // update that waits on a lock went through too (a client waits
    // for that); periodic re-checks only when they changed something.
    let mut announce = true;
    let mut clock = LockClock::default();
    loop {
        let current = target.borrow_and_update().clone();
        let mut waiting = false;
        let wait = match current {
            None => None,
            Some(release) => match apply_once(&settings, &release, &reports, announce, &mut clock).await {
                Ok(deferred) => {
                    retry = RETRY_FIRST;
                    waiting = deferred;
                    Some(if deferred { LOCK_POLL } else { RECONCILE_EVERY })
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
        announce = announce && waiting;
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            changed = target.changed() => {
                if changed.is_err() {
                    return;
                }
                announce = true;
            }
            () = sleep => {}
            () = settings.kick.notified() => {}
        }
    }
}

/// One apply; `Ok(true)` when updates wait on locks.
async fn apply_once(
    settings: &Settings,
    release: &Release,
    reports: &mpsc::UnboundedSender<Report>,
    announce: bool,
    clock: &mut LockClock,
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
    let held = locks::held(&settings.lock_dir, &release.name);
    let holds = Holds {
        locks: clock.locks(&held, settings.lock_timeout, SystemTime::now()),
        stopped: settings.stopped(),
    };
    let images_file = settings.images_file();
    let known = read_lines(&images_file);
    let options = ApplyOptions {
        gc_candidates: known.clone(),
        ..settings.options.clone()
    };
    let result = apply(&engine, release, &holds, &SystemTime::now, &options, &events).await;
    match result {
        Ok(outcome) => {
            for d in outcome.deferred.iter().filter(|d| !clock.waiting(&d.service)) {
                info!(service = %d.service, release = %name, "update waits for the service's update lock");
            }
            clock.settle(&outcome.deferred);
            if !outcome.removed_images.is_empty() {
                let mut left = known;
                for r in &outcome.removed_images {
                    left.remove(r);
                }
                if let Err(e) = write_lines(&images_file, &left) {
                    warn!("{e}");
                }
            }
            if outcome.steps_done > 0 {
                info!(release = %name, %version, steps = outcome.steps_done, rounds = outcome.rounds, "release applied");
            }
            if let Some(d) = outcome.deferred.first() {
                let until = d
                    .expires_at
                    .duration_since(SystemTime::now())
                    .map_or(0, |left| left.as_secs());
                let _ = reports.send(Report::Operation {
                    text: format!(
                        "apply {name} {version}: {} waits for its update lock (at most {until} s more)",
                        d.service
                    ),
                    progress: 0,
                });
            } else if announce || outcome.steps_done > 0 {
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
    engine: &AnyEngine,
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

/// Stops `service` and keeps it stopped (persisted first) until
/// [`start_service`].
pub async fn stop_service(
    settings: &Settings,
    target: Option<Arc<Release>>,
    service: &str,
) -> Result<(), String> {
    let release = target.as_deref().ok_or("no release is applied on this device")?;
    let definition = release
        .services
        .get(service)
        .ok_or_else(|| format!("release {} has no service `{service}`", release.name))?;
    settings.set_stopped(service, true)?;
    info!(
        service,
        "service stopped on request; it stays stopped until started"
    );
    let engine = settings.engine().await?;
    let observed = engine.observe().await.map_err(|e| e.to_string())?;
    for c in observed.containers.iter().filter(|c| {
        c.labels.get(LABEL_RELEASE) == Some(&release.name)
            && c.labels.get(LABEL_SERVICE).map(String::as_str) == Some(service)
            && matches!(
                c.state,
                ContainerState::Running | ContainerState::Restarting | ContainerState::Paused
            )
    }) {
        engine
            .stop(
                &c.id,
                definition.stop_grace_period,
                definition.stop_signal.as_deref(),
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Releases an operator's stop of `service` and starts it.
pub async fn start_service(
    settings: &Settings,
    target: Option<Arc<Release>>,
    service: &str,
) -> Result<(), String> {
    let release = target.as_deref().ok_or("no release is applied on this device")?;
    if !release.services.contains_key(service) {
        return Err(format!("release {} has no service `{service}`", release.name));
    }
    settings.set_stopped(service, false)?;
    info!(service, "service started on request");
    let engine = settings.engine().await?;
    let started = match container_of(&engine, Some(release), service).await {
        Ok((id, _)) => {
            let state = engine.inspect(&id).await.map_err(|e| e.to_string())?.state;
            if matches!(state, ContainerState::Created | ContainerState::Exited) {
                engine.start(&id).await.map_err(|e| e.to_string())?;
            }
            true
        }
        Err(_) => false,
    };
    // The applier creates a missing container and checks the rest.
    settings.kick.notify_one();
    if started {
        Ok(())
    } else {
        Err(format!(
            "service `{service}` has no container yet; the agent creates and starts it with the release"
        ))
    }
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

/// The release's health for a trial boot: every service has its current
/// container running (healthy, when it has a healthcheck), except services
/// an operator stopped and one-shot jobs that completed. No release: healthy.
pub async fn healthy(settings: &Settings, target: Option<Arc<Release>>) -> Result<(), String> {
    let Some(release) = target else {
        return Ok(());
    };
    let engine = settings.engine().await?;
    let observed = engine.observe().await.map_err(|e| e.to_string())?;
    let stopped = settings.stopped();
    for (name, service) in &release.services {
        if stopped.contains(name) {
            continue;
        }
        let hash = service.config_hash();
        let container = observed.containers.iter().find(|c| {
            c.labels.get(LABEL_RELEASE) == Some(&release.name)
                && c.labels.get(LABEL_SERVICE) == Some(name)
                && c.labels.get(containeros_apps::plan::LABEL_CONFIG_HASH) == Some(&hash)
        });
        let Some(c) = container else {
            return Err(format!(
                "service `{name}` of release {} has no container yet",
                release.name
            ));
        };
        let ok = match c.state {
            ContainerState::Running => matches!(c.health, Health::None | Health::Healthy),
            // A one-shot job that finished.
            ContainerState::Exited => {
                c.exit_code == Some(0) && matches!(service.restart, containeros_apps::release::Restart::No)
            }
            _ => false,
        };
        if !ok {
            return Err(format!(
                "service `{name}` is not healthy yet (container {}: {:?}, health {:?})",
                c.name, c.state, c.health
            ));
        }
    }
    Ok(())
}
