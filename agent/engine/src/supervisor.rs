//! Keeping the engine alive.
//!
//! Every `check_interval` the engine is pinged. After
//! `failures_before_restart` consecutive failures it is *down* and its
//! systemd unit is restarted; restarts that do not bring it back are spaced
//! by a backoff that doubles from `restart_backoff` up to
//! `restart_backoff_max`, and after `max_restarts` of them the agent stops
//! restarting and reports the engine *failed* (a later successful ping, or a
//! restart asked for over D-Bus, starts over) — unless engine-store recovery
//! is on (`engine.recover_store`): then, once per outage, the store is moved
//! aside and the engine started empty ([`crate::store`]) before giving up.
//! Every decision is logged and published in [`EngineStatus`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containeros_config::EngineSection;
use containeros_systemd::{JobOutcome, UnitManager, UnitManagerError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::status::{EngineInfo, EngineState, EngineStatus};
use crate::store;

/// Asks the engine whether it is alive and who it is.
pub trait Probe {
    fn probe(&mut self) -> impl Future<Output = Result<EngineInfo, String>> + Send;
}

/// Restarts the engine (its systemd unit).
pub trait Restarter {
    /// What is restarted, for messages ("docker.service").
    fn target(&self) -> &str;
    fn restart(&self) -> impl Future<Output = Result<(), String>> + Send;
    /// Stops the engine, moves its store aside keeping the named volumes,
    /// and starts it again; says what it did.
    fn recover_store(&self) -> impl Future<Output = Result<String, String>> + Send;
}

/// A restart asked for from outside (D-Bus); the answer says how it went.
pub type RestartRequest = oneshot::Sender<Result<(), String>>;

/// The supervision rules, from configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    pub check_interval: Duration,
    pub failures_before_restart: u32,
    pub restart_backoff: Duration,
    pub restart_backoff_max: Duration,
    pub max_restarts: u32,
    /// Move a broken store aside once the restarts are used up.
    pub recover_store: bool,
}

impl Policy {
    pub fn from_config(engine: &EngineSection) -> Self {
        Self {
            check_interval: engine.check_interval.get(),
            failures_before_restart: engine.failures_before_restart.get(),
            restart_backoff: engine.restart_backoff.get(),
            restart_backoff_max: engine.restart_backoff_max.get(),
            max_restarts: engine.max_restarts.get(),
            recover_store: engine.recover_store,
        }
    }

    /// Minimum time after restart number `attempt` (1-based) before the
    /// next one: `restart_backoff * 2^(attempt-1)`, capped.
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.restart_backoff
            .checked_mul(factor)
            .unwrap_or(self.restart_backoff_max)
            .min(self.restart_backoff_max)
    }
}

/// What the policy wants done after a ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Nothing,
    /// Restart now; this is restart number `attempt` since the engine was
    /// last seen up.
    Restart {
        attempt: u32,
    },
    /// The restarts are used up: move the engine's store aside and start
    /// it empty.
    RecoverStore,
}

/// The policy's state: pure, driven by ping results and the time.
#[derive(Debug)]
pub struct Supervisor {
    policy: Policy,
    can_restart: bool,
    failures: u32,
    attempts: u32,
    not_before: Option<Instant>,
    /// Store recovery was tried in this outage.
    recovered: bool,
    status: EngineStatus,
}

impl Supervisor {
    pub fn new(policy: Policy, can_restart: bool) -> Self {
        Self {
            policy,
            can_restart,
            failures: 0,
            attempts: 0,
            not_before: None,
            recovered: false,
            status: EngineStatus::default(),
        }
    }

    pub fn status(&self) -> &EngineStatus {
        &self.status
    }

    pub fn ping_ok(&mut self, info: EngineInfo) {
        if self.status.state != EngineState::Up {
            info!(engine = %info, "engine is up");
        }
        self.failures = 0;
        self.attempts = 0;
        self.not_before = None;
        self.recovered = false;
        self.status.state = EngineState::Up;
        self.status.info = Some(info);
        self.status.last_error.clear();
    }

    pub fn ping_failed(&mut self, problem: String, now: Instant) -> Decision {
        self.failures = self.failures.saturating_add(1);
        let threshold = self.policy.failures_before_restart;
        let was = self.status.state;
        if self.failures < threshold {
            warn!(
                failures = self.failures,
                threshold, "engine did not answer: {problem}"
            );
            if was == EngineState::Unknown {
                self.status.state = EngineState::Down;
            }
            self.status.last_error = problem;
            return Decision::Nothing;
        }
        let down = format!(
            "engine did not answer {} pings in a row: {problem}",
            self.failures
        );
        if !self.can_restart {
            if was != EngineState::Down {
                error!("{down}; no engine unit is configured (engine.unit), so it is not restarted");
            }
            self.status.state = EngineState::Down;
            self.status.last_error = down;
            return Decision::Nothing;
        }
        if self.attempts >= self.policy.max_restarts && self.policy.recover_store && !self.recovered {
            if self.not_before.is_some_and(|t| now < t) {
                self.status.state = EngineState::Down;
                self.status.last_error = down;
                return Decision::Nothing;
            }
            self.recovered = true;
            error!(
                restarts = self.attempts,
                "{down}; {} restarts did not help: recovering the engine store (engine.recover_store): \
                 moving it aside, keeping named volumes, re-creating the release from the registry",
                self.attempts
            );
            self.status.state = EngineState::Restarting;
            self.status.restarts = self.status.restarts.saturating_add(1);
            self.status.last_error = format!("{down}; recovering the engine store");
            return Decision::RecoverStore;
        }
        if self.attempts >= self.policy.max_restarts {
            if was != EngineState::Failed {
                error!(
                    restarts = self.attempts,
                    "{down}; giving up after {} restarts (engine.max_restarts){}; \
                     call RestartEngine or fix the engine",
                    self.attempts,
                    if self.recovered {
                        " and a store recovery"
                    } else {
                        ""
                    }
                );
            }
            self.status.state = EngineState::Failed;
            self.status.last_error = format!("{down}; gave up after {} restarts", self.attempts);
            return Decision::Nothing;
        }
        if self.not_before.is_some_and(|t| now < t) {
            self.status.state = EngineState::Down;
            self.status.last_error = down;
            return Decision::Nothing;
        }
        self.begin_restart(now, down)
    }

    /// A restart asked for by a person: done at once, and it re-arms the
    /// automatic restarts if they had given up.
    pub fn restart_requested(&mut self, now: Instant) -> Decision {
        self.attempts = 0;
        self.begin_restart(now, "restart requested over D-Bus".to_owned())
    }

    fn begin_restart(&mut self, now: Instant, reason: String) -> Decision {
        self.attempts += 1;
        self.not_before = Some(now + self.policy.backoff_after(self.attempts));
        self.status.state = EngineState::Restarting;
        self.status.restarts = self.status.restarts.saturating_add(1);
        self.status.last_error = format!(
            "{reason}; restarting it (attempt {} of {})",
            self.attempts, self.policy.max_restarts
        );
        Decision::Restart {
            attempt: self.attempts,
        }
    }

    pub fn restart_failed(&mut self, problem: String) {
        self.status.state = EngineState::Down;
        self.status.last_error = problem;
    }
}

/// Restarts a systemd unit through systemd's D-Bus API.
#[derive(Debug)]
pub struct SystemdRestarter {
    manager: UnitManager,
    unit: String,
    /// How long a restart job may take (systemd's own start timeout is 90 s
    /// by default; the job ends before that).
    job_timeout: Duration,
    /// The engine's data-root, for store recovery.
    data_root: Option<PathBuf>,
}

impl SystemdRestarter {
    pub fn new(manager: UnitManager, unit: &str) -> Self {
        Self {
            manager,
            unit: unit.to_owned(),
            job_timeout: Duration::from_secs(180),
            data_root: None,
        }
    }

    /// Enables [`Restarter::recover_store`] on the store at `data_root`.
    pub fn with_store(mut self, data_root: &Path) -> Self {
        self.data_root = Some(data_root.to_owned());
        self
    }

    fn ended(&self, verb: &str, outcome: Result<JobOutcome, UnitManagerError>) -> Result<(), String> {
        match outcome {
            Ok(outcome) if outcome.is_done() => Ok(()),
            Ok(outcome) => Err(format!(
                "{verb} job of {} ended with \"{}\"",
                self.unit, outcome.0
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Restarter for SystemdRestarter {
    fn target(&self) -> &str {
        &self.unit
    }

    async fn restart(&self) -> Result<(), String> {
        self.ended(
            "restart",
            self.manager.restart(&self.unit, self.job_timeout).await,
        )
    }

    async fn recover_store(&self) -> Result<String, String> {
        let data_root = self
            .data_root
            .clone()
            .ok_or("no engine store is configured (engine.data_root)")?;
        self.ended("stop", self.manager.stop(&self.unit, self.job_timeout).await)?;
        let moved = tokio::task::spawn_blocking(move || store::move_aside(&data_root))
            .await
            .map_err(|e| format!("store recovery stopped: {e}"))?;
        let recovered = match moved {
            Ok(r) => r,
            Err(e) => {
                // Whatever happened, the engine must run again.
                let _ = self.manager.restart(&self.unit, self.job_timeout).await;
                return Err(e);
            }
        };
        error!(
            broken = %recovered.broken.display(),
            volumes = ?recovered.volumes,
            "engine store moved aside; named volumes kept; starting the engine empty"
        );
        self.ended("start", self.manager.restart(&self.unit, self.job_timeout).await)?;
        // The broken store only takes space now; remove it behind.
        let broken = recovered.broken.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store::remove_broken(&broken) {
                warn!("{e}; remove it by hand to free the space");
            }
        });
        Ok(format!(
            "engine store moved aside to {}, {} named volume(s) kept",
            recovered.broken.display(),
            recovered.volumes.len()
        ))
    }
}

/// Runs the supervision loop until `shutdown` completes. `restarter` is
/// `None` when no unit is configured. Status changes are published on
/// `status`; restart requests arrive on `requests`.
pub async fn supervise<P, R>(
    mut probe: P,
    restarter: Option<R>,
    policy: Policy,
    status: watch::Sender<EngineStatus>,
    mut requests: mpsc::Receiver<RestartRequest>,
    shutdown: impl Future<Output = ()>,
) where
    P: Probe,
    R: Restarter,
{
    let interval = policy.check_interval;
    let mut supervisor = Supervisor::new(policy, restarter.is_some());
    tokio::pin!(shutdown);
    let mut next_ping = Instant::now();
    loop {
        let mut reply: Option<RestartRequest> = None;
        tokio::select! {
            () = &mut shutdown => return,
            Some(request) = requests.recv() => reply = Some(request),
            () = tokio::time::sleep_until(next_ping) => {}
        }

        let decision = match reply {
            Some(_) => supervisor.restart_requested(Instant::now()),
            None => match probe.probe().await {
                Ok(info) => {
                    supervisor.ping_ok(info);
                    Decision::Nothing
                }
                Err(problem) => supervisor.ping_failed(problem, Instant::now()),
            },
        };
        publish(&status, supervisor.status());

        if decision == Decision::RecoverStore {
            let outcome = match &restarter {
                Some(r) => r.recover_store().await,
                None => Err("no engine unit is configured (engine.unit)".to_owned()),
            };
            match outcome {
                Ok(done) => {
                    error!("engine store recovered: {done}");
                    match probe.probe().await {
                        Ok(info) => supervisor.ping_ok(info),
                        Err(problem) => supervisor.restart_failed(format!(
                            "engine store recovered ({done}) but the engine does not answer yet: {problem}"
                        )),
                    }
                }
                Err(problem) => {
                    error!("engine store recovery failed: {problem}");
                    supervisor.restart_failed(format!("engine store recovery failed: {problem}"));
                }
            }
            publish(&status, supervisor.status());
        }
        if let Decision::Restart { attempt } = decision {
            let outcome = match &restarter {
                Some(r) => {
                    warn!(
                        unit = r.target(),
                        attempt,
                        "restarting the engine: {}",
                        supervisor.status().last_error
                    );
                    r.restart().await
                }
                None => Err("no engine unit is configured (engine.unit)".to_owned()),
            };
            match &outcome {
                Ok(()) => match probe.probe().await {
                    Ok(info) => supervisor.ping_ok(info),
                    Err(problem) => supervisor
                        .restart_failed(format!("engine restarted but does not answer yet: {problem}")),
                },
                Err(problem) => {
                    error!("engine restart failed: {problem}");
                    supervisor.restart_failed(format!("engine restart failed: {problem}"));
                }
            }
            publish(&status, supervisor.status());
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
        }
        next_ping = Instant::now() + interval;
    }
}

fn publish(tx: &watch::Sender<EngineStatus>, status: &EngineStatus) {
    tx.send_if_modified(|current| {
        if current == status {
            false
        } else {
            *current = status.clone();
            true
        }
    });
}

#[cfg(test)]
mod tests;
