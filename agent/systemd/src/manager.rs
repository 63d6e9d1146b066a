//! The part of systemd's `org.freedesktop.systemd1.Manager` D-Bus API the
//! agent uses: `Subscribe`, `RestartUnit`, `StopUnit`, `StartUnit` (for
//! `reboot.target`) and the `JobRemoved` signal that
//! tells how the job ended. Restarting through the API (rather than spawning
//! `systemctl`) gives the job's real result and needs no extra binary.

use std::time::Duration;

use futures_util::StreamExt;
use zbus::zvariant::OwnedObjectPath;

/// The error systemd answers a repeated `Subscribe` with.
const ALREADY_SUBSCRIBED: &str = "org.freedesktop.systemd1.AlreadySubscribed";

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_blocking = false
)]
pub trait Manager {
    /// Asks systemd to send job/unit signals to this connection.
    fn subscribe(&self) -> zbus::Result<()>;

    /// Queues a restart job for `name`; returns the job's object path.
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// Queues a stop job for `name`; returns the job's object path.
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// Queues a start job for `name`; returns the job's object path.
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    #[zbus(signal)]
    fn job_removed(&self, id: u32, job: OwnedObjectPath, unit: String, result: String) -> zbus::Result<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum UnitManagerError {
    #[error("cannot subscribe to systemd's signals on the bus: {0}")]
    Subscribe(#[source] zbus::Error),
    #[error("systemd refused to {verb} {unit}: {source}")]
    Refused {
        verb: &'static str,
        unit: String,
        #[source]
        source: zbus::Error,
    },
    #[error("{verb} job of {unit} did not finish within {timeout:?}")]
    JobTimeout {
        verb: &'static str,
        unit: String,
        timeout: Duration,
    },
    #[error("lost systemd's job signals during the {verb} job of {unit}")]
    SignalsLost { verb: &'static str, unit: String },
}

/// How a systemd job ended: `done`, `canceled`, `timeout`, `failed`,
/// `dependency` or `skipped` (systemd's own words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome(pub String);

impl JobOutcome {
    pub fn is_done(&self) -> bool {
        self.0 == "done"
    }
}

/// A client for systemd's unit manager on a given bus connection.
#[derive(Debug, Clone)]
pub struct UnitManager {
    proxy: ManagerProxy<'static>,
}

impl UnitManager {
    pub async fn new(connection: &zbus::Connection) -> zbus::Result<Self> {
        Ok(Self {
            proxy: ManagerProxy::new(connection).await?,
        })
    }

    /// Restarts `unit` (mode `replace`; starts it when stopped) and waits up
    /// to `timeout` for the job to finish, returning its result.
    pub async fn restart(&self, unit: &str, timeout: Duration) -> Result<JobOutcome, UnitManagerError> {
        self.job("restart", unit, timeout).await
    }

    /// Stops `unit` (mode `replace`) and waits up to `timeout` for the job
    /// to finish, returning its result.
    pub async fn stop(&self, unit: &str, timeout: Duration) -> Result<JobOutcome, UnitManagerError> {
        self.job("stop", unit, timeout).await
    }

    /// Queues an orderly reboot, as `systemctl reboot` does: a start job
    /// of `reboot.target` that nothing may cancel. Returns once queued.
    pub async fn reboot(&self) -> Result<(), UnitManagerError> {
        self.proxy
            .start_unit("reboot.target", "replace-irreversibly")
            .await
            .map(drop)
            .map_err(|source| UnitManagerError::Refused {
                verb: "start",
                unit: "reboot.target".to_owned(),
                source,
            })
    }

    async fn job(
        &self,
        verb: &'static str,
        unit: &str,
        timeout: Duration,
    ) -> Result<JobOutcome, UnitManagerError> {
        match self.proxy.subscribe().await {
            Ok(()) => {}
            // systemd refuses a second Subscribe from the same connection
            // (the agent's second engine restart); the first one stands.
            Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == ALREADY_SUBSCRIBED => {}
            Err(e) => return Err(UnitManagerError::Subscribe(e)),
        }
        // Listen before queuing the job, or a fast job's signal is missed.
        let mut removed = self
            .proxy
            .receive_job_removed()
            .await
            .map_err(UnitManagerError::Subscribe)?;
        let queued = match verb {
            "stop" => self.proxy.stop_unit(unit, "replace").await,
            _ => self.proxy.restart_unit(unit, "replace").await,
        };
        let job = queued.map_err(|source| UnitManagerError::Refused {
            verb,
            unit: unit.to_owned(),
            source,
        })?;
        let wait = async {
            while let Some(signal) = removed.next().await {
                let Ok(args) = signal.args() else { continue };
                if args.job.as_str() == job.as_str() {
                    return Ok(JobOutcome(args.result));
                }
            }
            Err(UnitManagerError::SignalsLost {
                verb,
                unit: unit.to_owned(),
            })
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => result,
            Err(_elapsed) => Err(UnitManagerError::JobTimeout {
                verb,
                unit: unit.to_owned(),
                timeout,
            }),
        }
    }
}
