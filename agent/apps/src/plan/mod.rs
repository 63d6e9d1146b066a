//! The reconcile planner: target [`Release`] + observed engine state →
//! ordered [`Step`]s. Pure logic: no I/O, and the current time is an
//! argument.
//!
//! Identity. The agent labels every container it creates with the release
//! name ([`LABEL_RELEASE`]), the release version, the service
//! ([`LABEL_SERVICE`]) and the service's [`Service::config_hash`]
//! ([`LABEL_CONFIG_HASH`]), and names it [`container_name`]:
//! `<release>_<service>_<first 12 hex digits of the config hash>`. A
//! container whose hash label equals the target's hash *is* the service's
//! container, whatever happened before; anything else of the release is
//! stale. That is what makes a crash mid-way converge: re-run on the
//! half-done state, the planner finds the containers already created under
//! their deterministic names, and plans only what is missing — never a
//! second container of the same configuration (the engine refuses a second
//! container of one name anyway).
//!
//! Order of a plan:
//! 1. create missing networks and volumes;
//! 2. stop and remove containers of services no longer in the release;
//! 3. remove stale containers that nothing is waiting on (duplicates, dead
//!    containers, old ones whose replacement already runs);
//! 4. stop and remove the old containers of `kill-then-download` services
//!    (reverse start order), so their storage can be freed before pulling;
//! 5. pull every missing image;
//! 6. stop and remove the old containers of `download-then-kill` services
//!    (reverse start order);
//! 7. in start order (`depends_on`), create and start each new container,
//!    first waiting for each dependency's condition (`WaitStarted`,
//!    `WaitHealthy`, `WaitCompleted`); a `hand-over` service's old
//!    container is stopped only after its new one is up (healthy if it has
//!    a healthcheck) — services publishing host ports cannot run twice at
//!    once and are updated `download-then-kill` instead;
//! 8. remove the release's networks that the release no longer has (not
//!    while an update is deferred: its old container may use one).
//!
//! A held-stopped service ([`Holds::stopped`]) is kept created but not
//! running: its running container is stopped, an update still replaces
//! its container (created, not started), and its dependents start without
//! waiting for it.
//!
//! Update locks defer the *replacement* of a running container: while a
//! service's lock is held and younger than the timeout (the release's
//! `update_lock_timeout`, else the agent's), that service gets no steps
//! and a [`Deferred`] entry; its dependents wait on its old container.
//! First installs and restarts of stopped containers are never deferred.
//!
//! Limits: named volumes are never removed; images are not garbage
//! collected here; free space is checked by the caller. A service that is
//! the target of a `service_completed_successfully` dependency is a
//! one-shot job: once exited with code 0 it is left stopped; any other
//! exited container is started again, as `docker compose up` does. Paused
//! and restarting containers are left to the engine.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use crate::release::{
    Condition, DEFAULT_STOP_GRACE, Duration, HealthTest, ImageRef, Release, Service, UpdateStrategy,
};

/// The release a container or network belongs to.
pub const LABEL_RELEASE: &str = "org.containeros.release";
/// The release version that created the container (informational: a
/// container survives releases that do not change its service).
pub const LABEL_VERSION: &str = "org.containeros.release.version";
/// The service a container runs.
pub const LABEL_SERVICE: &str = "org.containeros.service";
/// The full [`Service::config_hash`] the container was created from.
pub const LABEL_CONFIG_HASH: &str = "org.containeros.config-hash";

/// The container name of a service's configuration:
/// `<release>_<service>_<12 hex digits of the config hash>`. Two
/// configurations of one service get two names, so a hand-over can run both.
pub fn container_name(release: &str, service: &str, config_hash: &str) -> String {
    let short = config_hash.get(..12).unwrap_or(config_hash);
    format!("{release}_{service}_{short}")
}

/// The labels the executor puts on a container it creates for `service`.
pub fn container_labels(release: &Release, service: &str, config_hash: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_RELEASE.to_owned(), release.name.clone()),
        (LABEL_VERSION.to_owned(), release.version.to_string()),
        (LABEL_SERVICE.to_owned(), service.to_owned()),
        (LABEL_CONFIG_HASH.to_owned(), config_hash.to_owned()),
    ])
}

/// What the engine reports, as plain data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// All containers (the planner picks those labelled with the release).
    pub containers: Vec<ObservedContainer>,
    pub networks: Vec<ObservedNetwork>,
    /// Volume names.
    pub volumes: BTreeSet<String>,
    /// Every `RepoTags` and `RepoDigests` entry of the images present
    /// (`reg/web:1`, `reg/web@sha256:...`).
    pub images: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObservedContainer {
    pub id: String,
    /// Without the leading `/` the engine API puts there.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub state: ContainerState,
    pub health: Health,
    /// Exit code of an exited container.
    pub exit_code: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Restarting,
    Paused,
    Exited,
    Dead,
}

impl ContainerState {
    /// Whether the container has a process to stop before removal.
    fn is_up(self) -> bool {
        matches!(
            self,
            ContainerState::Running | ContainerState::Restarting | ContainerState::Paused
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    None,
    Starting,
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedNetwork {
    pub name: String,
    /// Its [`LABEL_RELEASE`] label, if any.
    pub release: Option<String>,
}

/// Update locks held by the apps, by service name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateLocks {
    /// Service → when its lock was taken (only held locks are listed).
    pub held: BTreeMap<String, SystemTime>,
    /// How long a lock may defer an update, unless the release overrides it.
    pub default_timeout: std::time::Duration,
}

/// What the device holds back from the release: update locks, and services
/// an operator stopped (`containeros apps stop`), which stay stopped —
/// across reconciles, engine restarts, reboots and updates that keep the
/// service — until started again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holds {
    pub locks: UpdateLocks,
    pub stopped: BTreeSet<String>,
}

impl From<UpdateLocks> for Holds {
    fn from(locks: UpdateLocks) -> Self {
        Self {
            locks,
            stopped: BTreeSet::new(),
        }
    }
}

/// The planner's answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Services whose update waits for their lock.
    pub deferred: Vec<Deferred>,
    /// Running containers are stopped and removed before the first pull
    /// (`kill-then-download`) to free their storage: free space is judged
    /// at the pull, not before the plan starts.
    pub frees_before_pull: bool,
}

impl Plan {
    /// Nothing to do and nothing waiting: the engine matches the release.
    pub fn is_converged(&self) -> bool {
        self.steps.is_empty() && self.deferred.is_empty()
    }
}

/// One action for the executor. `container` is the container's ID when it
/// exists at planning time, else the name its `CreateContainer` gives it
/// (the engine accepts both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    PullImage {
        image: ImageRef,
    },
    /// `name` is the engine's name (`<release>_<key>`); label it with
    /// [`LABEL_RELEASE`].
    CreateNetwork {
        name: String,
    },
    CreateVolume {
        name: String,
    },
    /// Create `name` from the release's `service` with
    /// [`container_labels`].
    CreateContainer {
        service: String,
        name: String,
        config_hash: String,
    },
    StartContainer {
        service: String,
        container: String,
    },
    /// Wait until the container runs.
    WaitStarted {
        service: String,
        container: String,
    },
    /// Wait until the container's healthcheck passes.
    WaitHealthy {
        service: String,
        container: String,
    },
    /// Wait until the container exited with code 0.
    WaitCompleted {
        service: String,
        container: String,
    },
    StopContainer {
        service: String,
        container: String,
        grace: Duration,
        signal: Option<String>,
    },
    RemoveContainer {
        service: String,
        container: String,
    },
    RemoveNetwork {
        name: String,
    },
}

/// An update held back by a service's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    pub service: String,
    pub held_since: SystemTime,
    /// When the lock stops deferring the update.
    pub expires_at: SystemTime,
}

/// What the planner decided for one target service.
struct ServiceState<'a> {
    name: &'a str,
    service: &'a Service,
    hash: String,
    container_name: String,
    /// The container of the target configuration, if one exists.
    keep: Option<&'a ObservedContainer>,
    /// Every other container of the service.
    stale: Vec<&'a ObservedContainer>,
    /// A new container must be created.
    create: bool,
    /// The service's container must be started.
    start: bool,
    /// The start replaces a running container: strategy and lock apply.
    replacing: bool,
    /// Stopped by an operator: created, never started.
    held: bool,
    deferred: bool,
    strategy: UpdateStrategy,
}

impl ServiceState<'_> {
    /// The container the service has once its steps are done.
    fn container_after(&self) -> String {
        if self.deferred
            && let Some(c) = self.stale.iter().find(|c| c.state.is_up())
        {
            return c.id.clone();
        }
        match self.keep {
            Some(c) => c.id.clone(),
            None => self.container_name.clone(),
        }
    }
}

/// Plans the steps that make `observed` match `target` at time `now`.
pub fn plan(target: &Release, observed: &Observed, holds: &Holds, now: SystemTime) -> Plan {
    let release = target.name.as_str();
    let locks = &holds.locks;
    let lock_timeout = target
        .update_lock_timeout
        .map_or(locks.default_timeout, Duration::get);
    let lock_expiry = |service: &str| -> Option<Deferred> {
        let since = *locks.held.get(service)?;
        let expires_at = since.checked_add(lock_timeout).unwrap_or(since);
        (now < expires_at).then(|| Deferred {
            service: service.to_owned(),
            held_since: since,
            expires_at,
        })
    };

    // The release's containers by service label, sorted by ID so that
    // every choice below is deterministic.
    let mut by_service: BTreeMap<&str, Vec<&ObservedContainer>> = BTreeMap::new();
    for c in &observed.containers {
        if c.labels.get(LABEL_RELEASE).map(String::as_str) == Some(release) {
            let service = c.labels.get(LABEL_SERVICE).map_or("", String::as_str);
            by_service.entry(service).or_default().push(c);
        }
    }
    for list in by_service.values_mut() {
        list.sort_by(|a, b| a.id.cmp(&b.id));
    }

    let one_shots: BTreeSet<&str> = target
        .services
        .values()
        .flat_map(|s| s.depends_on.iter())
        .filter(|(_, c)| **c == Condition::ServiceCompletedSuccessfully)
        .map(|(d, _)| d.as_str())
        .collect();

    let order = target.start_order();
    let mut deferred = Vec::new();
    let mut states: Vec<ServiceState> = Vec::with_capacity(order.len());
    for name in &order {
        let Some(service) = target.services.get(*name) else {
            continue;
        };
        let hash = service.config_hash();
        let cname = container_name(release, name, &hash);
        let containers = by_service.remove(*name).unwrap_or_default();
        let matching = |c: &&&ObservedContainer| {
            c.labels.get(LABEL_CONFIG_HASH) == Some(&hash) && c.state != ContainerState::Dead
        };
        // Prefer the container under the scheme's name, then a running one.
        let keep = containers
            .iter()
            .filter(matching)
            .min_by_key(|c| {
                (
                    c.name.trim_start_matches('/') != cname,
                    c.state != ContainerState::Running,
                )
            })
            .copied();
        let stale: Vec<&ObservedContainer> = containers
            .iter()
            .filter(|c| keep.is_none_or(|k| k.id != c.id))
            .copied()
            .collect();
        let create = keep.is_none();
        let done_one_shot = |c: &ObservedContainer| {
            one_shots.contains(name) && c.state == ContainerState::Exited && c.exit_code == Some(0)
        };
        let held = holds.stopped.contains(*name);
        let start = !held
            && match keep {
                None => true,
                Some(c) => {
                    matches!(c.state, ContainerState::Created | ContainerState::Exited) && !done_one_shot(c)
                }
            };
        let replacing = start && stale.iter().any(|c| c.state.is_up());
        let lock = if replacing { lock_expiry(name) } else { None };
        let is_deferred = lock.is_some();
        deferred.extend(lock);
        let publishes = service.ports.iter().any(|p| p.published.is_some());
        let name_taken = stale.iter().any(|c| c.name.trim_start_matches('/') == cname);
        let strategy = match service.update_strategy {
            UpdateStrategy::HandOver if publishes || name_taken => UpdateStrategy::DownloadThenKill,
            s => s,
        };
        states.push(ServiceState {
            name,
            service,
            hash,
            container_name: cname,
            keep,
            stale,
            create,
            start,
            replacing,
            held,
            deferred: is_deferred,
            strategy,
        });
    }
    let after: BTreeMap<&str, String> = states.iter().map(|s| (s.name, s.container_after())).collect();

    let mut steps = Vec::new();

    // 1. Networks and volumes.
    let present_networks: BTreeSet<&str> = observed.networks.iter().map(|n| n.name.as_str()).collect();
    for net in target.networks.values() {
        if !present_networks.contains(net.engine_name.as_str()) {
            steps.push(Step::CreateNetwork {
                name: net.engine_name.clone(),
            });
        }
    }
    for vol in target.volumes.values() {
        if !observed.volumes.contains(&vol.engine_name) {
            steps.push(Step::CreateVolume {
                name: vol.engine_name.clone(),
            });
        }
    }

    // 2. Services no longer in the release (what is left in `by_service`).
    for (service, containers) in by_service.iter().rev() {
        if containers.iter().any(|c| c.state.is_up())
            && let Some(d) = lock_expiry(service)
        {
            deferred.push(d);
            continue;
        }
        for c in containers {
            stop_and_remove(&mut steps, service, c, DEFAULT_STOP_GRACE, None);
        }
    }

    // 3. Stale containers no update waits on, and the running container of
    // a held-stopped service.
    for s in states.iter().rev() {
        if s.held
            && let Some(c) = s.keep.filter(|c| c.state.is_up())
        {
            steps.push(Step::StopContainer {
                service: s.name.to_owned(),
                container: c.id.clone(),
                grace: s.service.stop_grace_period,
                signal: s.service.stop_signal.clone(),
            });
        }
    }
    for s in states.iter().rev().filter(|s| !s.replacing) {
        for c in &s.stale {
            stop_and_remove(
                &mut steps,
                s.name,
                c,
                s.service.stop_grace_period,
                s.service.stop_signal.clone(),
            );
        }
    }

    let active = |s: &&ServiceState| !s.deferred;
    let replaced_with = |strategy: UpdateStrategy| {
        move |s: &&ServiceState| s.replacing && !s.deferred && s.strategy == strategy
    };

    // 4. Old containers of kill-then-download services, before any pull.
    let mut frees_before_pull = false;
    for s in states
        .iter()
        .rev()
        .filter(replaced_with(UpdateStrategy::KillThenDownload))
    {
        frees_before_pull = true;
        stop_and_remove_all(&mut steps, s);
    }

    // 5. Pulls.
    let mut pulled: BTreeSet<String> = BTreeSet::new();
    for s in states.iter().filter(active).filter(|s| s.create) {
        let image = &s.service.image;
        if !image_present(image, &observed.images) && pulled.insert(image.to_string()) {
            steps.push(Step::PullImage { image: image.clone() });
        }
    }

    // 6. Old containers of download-then-kill services.
    for s in states
        .iter()
        .rev()
        .filter(replaced_with(UpdateStrategy::DownloadThenKill))
    {
        stop_and_remove_all(&mut steps, s);
    }

    // 7. Create and start in dependency order.
    let mut waited: BTreeSet<(&str, Condition)> = BTreeSet::new();
    for s in states.iter().filter(active).filter(|s| s.start || s.create) {
        if s.create {
            steps.push(Step::CreateContainer {
                service: s.name.to_owned(),
                name: s.container_name.clone(),
                config_hash: s.hash.clone(),
            });
        }
        if !s.start {
            continue;
        }
        for (dep, condition) in &s.service.depends_on {
            let Some(container) = after.get(dep.as_str()) else {
                continue;
            };
            if holds.stopped.contains(dep.as_str()) {
                continue;
            }
            if waited.insert((dep.as_str(), *condition)) {
                steps.push(wait(*condition, dep, container.clone()));
            }
        }
        let container = after
            .get(s.name)
            .cloned()
            .unwrap_or_else(|| s.container_name.clone());
        steps.push(Step::StartContainer {
            service: s.name.to_owned(),
            container: container.clone(),
        });
        if s.replacing && s.strategy == UpdateStrategy::HandOver {
            let has_healthcheck = s
                .service
                .healthcheck
                .as_ref()
                .is_some_and(|h| h.test != HealthTest::None);
            let condition = if has_healthcheck {
                Condition::ServiceHealthy
            } else {
                Condition::ServiceStarted
            };
            if waited.insert((s.name, condition)) {
                steps.push(wait(condition, s.name, container));
            }
            stop_and_remove_all(&mut steps, s);
        }
    }

    // 8. Networks of this release that it no longer has; not while a
    // deferred service's old container may still be attached to one.
    if deferred.is_empty() {
        let wanted: BTreeSet<&str> = target.networks.values().map(|n| n.engine_name.as_str()).collect();
        for net in &observed.networks {
            if net.release.as_deref() == Some(release) && !wanted.contains(net.name.as_str()) {
                steps.push(Step::RemoveNetwork {
                    name: net.name.clone(),
                });
            }
        }
    }

    Plan {
        steps,
        deferred,
        frees_before_pull,
    }
}

impl std::fmt::Display for Step {
    /// One line for logs and progress reports.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::PullImage { image } => write!(f, "pull {image}"),
            Step::CreateNetwork { name } => write!(f, "create network {name}"),
            Step::CreateVolume { name } => write!(f, "create volume {name}"),
            Step::CreateContainer { service, name, .. } => write!(f, "create {name} ({service})"),
            Step::StartContainer { service, container } => write!(f, "start {container} ({service})"),
            Step::WaitStarted { service, container } => {
                write!(f, "wait for {container} ({service}) to start")
            }
            Step::WaitHealthy { service, container } => {
                write!(f, "wait for {container} ({service}) to be healthy")
            }
            Step::WaitCompleted { service, container } => {
                write!(f, "wait for {container} ({service}) to complete")
            }
            Step::StopContainer {
                service,
                container,
                grace,
                signal,
            } => write!(
                f,
                "stop {container} ({service}) with {} and {grace} grace",
                signal.as_deref().unwrap_or("its stop signal")
            ),
            Step::RemoveContainer { service, container } => write!(f, "remove {container} ({service})"),
            Step::RemoveNetwork { name } => write!(f, "remove network {name}"),
        }
    }
}

fn wait(condition: Condition, service: &str, container: String) -> Step {
    let service = service.to_owned();
    match condition {
        Condition::ServiceStarted => Step::WaitStarted { service, container },
        Condition::ServiceHealthy => Step::WaitHealthy { service, container },
        Condition::ServiceCompletedSuccessfully => Step::WaitCompleted { service, container },
    }
}

fn stop_and_remove_all(steps: &mut Vec<Step>, s: &ServiceState) {
    for c in &s.stale {
        stop_and_remove(
            steps,
            s.name,
            c,
            s.service.stop_grace_period,
            s.service.stop_signal.clone(),
        );
    }
}

/// Stops `c` if it has a process, then removes it. The grace period and
/// signal are the target's for the service (the old container's own are
/// not known), Compose's defaults for removed services.
fn stop_and_remove(
    steps: &mut Vec<Step>,
    service: &str,
    c: &ObservedContainer,
    grace: Duration,
    signal: Option<String>,
) {
    if c.state.is_up() {
        steps.push(Step::StopContainer {
            service: service.to_owned(),
            container: c.id.clone(),
            grace,
            signal,
        });
    }
    steps.push(Step::RemoveContainer {
        service: service.to_owned(),
        container: c.id.clone(),
    });
}

/// Whether the engine has `image`: by digest when pinned (the engine lists
/// `name@digest` among the image's repository digests), else by tag
/// (`latest` when none is given).
pub fn image_present(image: &ImageRef, images: &BTreeSet<String>) -> bool {
    match image.by_digest() {
        Some(by_digest) => images.contains(&by_digest),
        None => {
            let tag = image.tag.as_deref().unwrap_or("latest");
            images.contains(&format!("{}:{tag}", image.name()))
        }
    }
}
