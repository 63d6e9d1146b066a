//! The executor: makes an [`Engine`] match a [`Release`].
//!
//! It never trusts its own memory of what it did: each round observes the
//! engine, asks the planner for the steps from *that* state, and executes
//! them in order; then it observes again, until a round plans nothing.
//! Killed at any step and started again, it simply plans from wherever the
//! engine was left — the planner's deterministic container names make that
//! converge without duplicates (see [`crate::plan`]).
//!
//! Before a round that pulls, free space is checked against a floor
//! (`ApplyOptions::min_free`): below it nothing is touched and the running
//! release keeps running. A pull that still runs out of space fails with
//! [`ApplyError::NoSpace`]; with the default download-then-kill strategy
//! every pull happens before any old container is stopped, so the old
//! release keeps running then too.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use tracing::{debug, info, warn};

use crate::engine::{ContainerSpec, Engine, EngineError, ErrorKind, PullProgress};
use crate::plan::{self, ContainerState, Deferred, Health, Holds, Step};
use crate::release::{Healthcheck, Release};

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Rounds of observe → plan → execute before giving up on converging.
    pub max_rounds: u32,
    /// How often waits re-inspect a container.
    pub poll: Duration,
    /// Refuse to pull when the engine's storage has less free than this.
    pub min_free: u64,
    /// Longest wait for a container to run, or for a one-shot to finish.
    pub start_timeout: Duration,
    pub completion_timeout: Duration,
    /// Where the services' update-lock directories are created
    /// ([`crate::locks`]); `None`: containers get no lock directory.
    pub lock_dir: Option<std::path::PathBuf>,
    /// Images the agent pulled for earlier releases (engine references):
    /// those the release does not use are removed when no container uses
    /// them — before pulling, so their space counts, and once converged.
    /// Images the agent did not pull are never touched.
    pub gc_candidates: BTreeSet<String>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            max_rounds: 4,
            poll: Duration::from_millis(250),
            min_free: 64 << 20,
            start_timeout: Duration::from_secs(60),
            completion_timeout: Duration::from_secs(600),
            lock_dir: None,
            gc_candidates: BTreeSet::new(),
        }
    }
}

/// What the executor reports while it works.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// A round's plan: how many steps, and which services wait for a lock.
    Planned {
        round: u32,
        steps: usize,
        deferred: &'a [Deferred],
    },
    /// Step `index` (1-based) of `total` is about to run.
    Step {
        index: usize,
        total: usize,
        step: &'a Step,
    },
    /// Bytes of an image pull.
    Pull { image: &'a str, progress: PullProgress },
}

/// How an apply ended when it succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub steps_done: usize,
    pub rounds: u32,
    /// Updates still held back by locks; apply again later.
    pub deferred: Vec<Deferred>,
    /// Garbage-collection candidates removed (or found gone already).
    pub removed_images: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error(
        "not enough free space for the engine: {free} bytes free, at least {needed} needed before pulling \
         {images}; nothing was changed and the running release keeps running — free space or lower the \
         release's image sizes"
    )]
    NoSpace { free: u64, needed: u64, images: String },
    #[error(
        "the engine ran out of space: {0}; the release was not applied and, unless a service uses \
         kill-then-download, the running release keeps running — free space on the engine's storage"
    )]
    OutOfSpace(EngineError),
    #[error(
        "cannot create the update-lock directory {dir}: {error}; check apps.lock_dir in the agent config"
    )]
    LockDir { dir: std::path::PathBuf, error: String },
    #[error("service `{service}`: container {container} became unhealthy")]
    Unhealthy { service: String, container: String },
    #[error("service `{service}`: container {container} exited with code {code}")]
    Exited {
        service: String,
        container: String,
        code: i64,
    },
    #[error("service `{service}`: container {container} did not become {what} within {after:?}")]
    WaitTimeout {
        service: String,
        container: String,
        what: &'static str,
        after: Duration,
    },
    #[error("the engine still differs from release {release} after {rounds} rounds; see the agent log")]
    NotConverged { release: String, rounds: u32 },
}

/// Applies `release` until the engine matches it (or updates wait on locks).
pub async fn apply<E: Engine>(
    engine: &E,
    release: &Release,
    holds: &Holds,
    now: &(dyn Fn() -> SystemTime + Send + Sync),
    options: &ApplyOptions,
    events: &(dyn Fn(Event<'_>) + Send + Sync),
) -> Result<Outcome, ApplyError> {
    let mut outcome = Outcome::default();
    for round in 1..=options.max_rounds {
        let observed = engine.observe().await?;
        let plan = plan::plan(release, &observed, holds, now());
        outcome.rounds = round;
        outcome.deferred = plan.deferred.clone();
        events(Event::Planned {
            round,
            steps: plan.steps.len(),
            deferred: &plan.deferred,
        });
        if plan.steps.is_empty() {
            info!(release = %release.name, round, deferred = plan.deferred.len(), "release applied");
            if plan.deferred.is_empty() {
                collect_garbage(engine, release, options, &mut outcome.removed_images).await;
            }
            return Ok(outcome);
        }
        // Garbage collection and the free-space check come before the
        // plan's first step, or, when it frees storage first
        // (kill-then-download), right before its first pull.
        let first_pull = plan
            .steps
            .iter()
            .position(|s| matches!(s, Step::PullImage { .. }));
        let check_at = first_pull.map(|i| if plan.frees_before_pull { i } else { 0 });
        let total = plan.steps.len();
        let mut i = 0;
        while i < total {
            if check_at == Some(i) {
                collect_garbage(engine, release, options, &mut outcome.removed_images).await;
                preflight(engine, &plan.steps, options).await?;
            }
            // Consecutive pulls run together, as `docker compose` pulls:
            // the registry and the engine overlap the layers of several
            // images. The first failure fails the round.
            let batch = plan.steps[i..]
                .iter()
                .take_while(|s| matches!(s, Step::PullImage { .. }))
                .count()
                .max(1);
            let steps = &plan.steps[i..i + batch];
            for (k, step) in steps.iter().enumerate() {
                events(Event::Step {
                    index: i + k + 1,
                    total,
                    step,
                });
                info!(release = %release.name, "step {}/{total}: {step}", i + k + 1);
            }
            let results = futures_util::future::join_all(
                steps
                    .iter()
                    .map(|step| execute(engine, release, step, options, events)),
            )
            .await;
            for result in results {
                result?;
                outcome.steps_done += 1;
            }
            i += batch;
        }
    }
    Err(ApplyError::NotConverged {
        release: release.name.clone(),
        rounds: options.max_rounds,
    })
}

/// Removes the candidates the release does not use, unless a container
/// still does (the engine refuses those). Failures only log: garbage
/// collection never fails an apply.
async fn collect_garbage<E: Engine>(
    engine: &E,
    release: &Release,
    options: &ApplyOptions,
    removed: &mut Vec<String>,
) {
    let needed: BTreeSet<String> = release
        .services
        .values()
        .map(|s| s.image.engine_reference())
        .collect();
    for reference in options.gc_candidates.difference(&needed) {
        if removed.contains(reference) {
            continue;
        }
        match engine.remove_image(reference).await {
            Ok(()) => {
                info!(image = %reference, "removed an image no release needs");
                removed.push(reference.clone());
            }
            Err(e) if e.kind == ErrorKind::NotFound => removed.push(reference.clone()),
            Err(e) if e.kind == ErrorKind::Conflict => debug!(image = %reference, "still in use: {e}"),
            Err(e) => warn!(image = %reference, "cannot remove an image no release needs: {e}"),
        }
    }
}

async fn preflight<E: Engine>(engine: &E, steps: &[Step], options: &ApplyOptions) -> Result<(), ApplyError> {
    let pulls: Vec<String> = steps
        .iter()
        .filter_map(|s| match s {
            Step::PullImage { image } => Some(image.to_string()),
            _ => None,
        })
        .collect();
    if pulls.is_empty() {
        return Ok(());
    }
    let free = engine.free_space().await?;
    if free < options.min_free {
        return Err(ApplyError::NoSpace {
            free,
            needed: options.min_free,
            images: pulls.join(", "),
        });
    }
    Ok(())
}

/// `Ok` for errors that mean the step's goal is reached already.
fn tolerate(result: Result<(), EngineError>, done_when: &[ErrorKind]) -> Result<(), ApplyError> {
    match result {
        Err(e) if done_when.contains(&e.kind) => {
            debug!("{e} (already done)");
            Ok(())
        }
        Err(e) if e.kind == ErrorKind::NoSpace => Err(ApplyError::OutOfSpace(e)),
        other => Ok(other?),
    }
}

async fn execute<E: Engine>(
    engine: &E,
    release: &Release,
    step: &Step,
    options: &ApplyOptions,
    events: &(dyn Fn(Event<'_>) + Send + Sync),
) -> Result<(), ApplyError> {
    match step {
        Step::PullImage { image } => {
            let shown = image.to_string();
            let progress = |p: PullProgress| {
                events(Event::Pull {
                    image: &shown,
                    progress: p,
                })
            };
            tolerate(engine.pull(image, &progress).await, &[])
        }
        Step::CreateNetwork { name } => tolerate(
            engine.create_network(name, &release.name).await,
            &[ErrorKind::Conflict],
        ),
        Step::CreateVolume { name } => tolerate(
            engine.create_volume(name, &release.name).await,
            &[ErrorKind::Conflict],
        ),
        Step::CreateContainer {
            service,
            name,
            config_hash,
        } => {
            let Some(definition) = release.services.get(service) else {
                return Ok(());
            };
            let lock_dir = match &options.lock_dir {
                Some(root) => {
                    let dir = crate::locks::service_dir(root, &release.name, service);
                    std::fs::create_dir_all(&dir).map_err(|e| ApplyError::LockDir {
                        dir: dir.clone(),
                        error: e.to_string(),
                    })?;
                    Some(dir)
                }
                None => None,
            };
            let spec = ContainerSpec {
                release,
                service_name: service,
                service: definition,
                name,
                labels: plan::container_labels(release, service, config_hash),
                lock_dir,
            };
            // A name conflict means an earlier (interrupted) run created it.
            tolerate(
                engine.create_container(&spec).await.map(drop),
                &[ErrorKind::Conflict],
            )
        }
        Step::StartContainer { container, .. } => tolerate(engine.start(container).await, &[]),
        Step::StopContainer {
            container,
            grace,
            signal,
            ..
        } => tolerate(
            engine.stop(container, *grace, signal.as_deref()).await,
            &[ErrorKind::NotFound],
        ),
        Step::RemoveContainer { container, .. } => {
            tolerate(engine.remove(container).await, &[ErrorKind::NotFound])
        }
        Step::RemoveNetwork { name } => tolerate(engine.remove_network(name).await, &[ErrorKind::NotFound]),
        Step::WaitStarted { service, container } => {
            wait(
                engine,
                service,
                container,
                Until::Running,
                options.start_timeout,
                options,
            )
            .await
        }
        Step::WaitHealthy { service, container } => {
            let limit = health_timeout(release.services.get(service).and_then(|s| s.healthcheck.as_ref()));
            wait(engine, service, container, Until::Healthy, limit, options).await
        }
        Step::WaitCompleted { service, container } => {
            wait(
                engine,
                service,
                container,
                Until::Completed,
                options.completion_timeout,
                options,
            )
            .await
        }
    }
}

#[derive(Clone, Copy)]
enum Until {
    Running,
    Healthy,
    Completed,
}

/// The longest a healthcheck can take to pass, with Docker's defaults for
/// what the release leaves out (interval 30 s, timeout 30 s, 3 retries),
/// plus a margin for a loaded device.
fn health_timeout(check: Option<&Healthcheck>) -> Duration {
    let get =
        |d: Option<crate::release::Duration>, default: u64| d.map_or(Duration::from_secs(default), |d| d.0);
    let (interval, timeout, retries, start) = match check {
        Some(c) => (
            get(c.interval, 30),
            get(c.timeout, 30),
            c.retries.unwrap_or(3),
            get(c.start_period, 0),
        ),
        None => (
            Duration::from_secs(30),
            Duration::from_secs(30),
            3,
            Duration::ZERO,
        ),
    };
    start + (interval + timeout) * (retries + 1) + Duration::from_secs(30)
}

async fn wait<E: Engine>(
    engine: &E,
    service: &str,
    container: &str,
    until: Until,
    limit: Duration,
    options: &ApplyOptions,
) -> Result<(), ApplyError> {
    let started = tokio::time::Instant::now();
    loop {
        let c = engine.inspect(container).await?;
        let exited = matches!(c.state, ContainerState::Exited | ContainerState::Dead);
        let code = c.exit_code.unwrap_or(-1);
        let failed_exit = || ApplyError::Exited {
            service: service.to_owned(),
            container: c.name.clone(),
            code,
        };
        match until {
            Until::Running if c.state == ContainerState::Running => return Ok(()),
            Until::Healthy if c.health == Health::Healthy => return Ok(()),
            Until::Healthy if c.health == Health::Unhealthy => {
                return Err(ApplyError::Unhealthy {
                    service: service.to_owned(),
                    container: c.name.clone(),
                });
            }
            Until::Completed if exited && code == 0 => return Ok(()),
            Until::Completed if exited => return Err(failed_exit()),
            Until::Running | Until::Healthy if exited => return Err(failed_exit()),
            _ => {}
        }
        if started.elapsed() > limit {
            return Err(ApplyError::WaitTimeout {
                service: service.to_owned(),
                container: c.name.clone(),
                what: match until {
                    Until::Running => "running",
                    Until::Healthy => "healthy",
                    Until::Completed => "completed",
                },
                after: limit,
            });
        }
        tokio::time::sleep(options.poll).await;
    }
}
