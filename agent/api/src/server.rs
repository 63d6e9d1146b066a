//! The server side: the `org.containeros.Agent1` interface object.

use tokio::sync::{mpsc, oneshot};
use zbus::object_server::{InterfaceRef, SignalEmitter};

use crate::{ApiError, OBJECT_PATH, Status};

/// What a method call asks the daemon to do. Each carries the channel the
/// daemon answers on.
#[derive(Debug)]
pub enum Command {
    /// Restart the container engine's systemd unit now.
    RestartEngine(oneshot::Sender<Result<(), String>>),
    /// Make the release in this Compose file the target (answer once it is
    /// validated and stored; applying goes on and ends with a signal).
    ApplyRelease(String, oneshot::Sender<Result<(), String>>),
    /// The release's services as the engine has them.
    ListServices(oneshot::Sender<Result<Vec<ServiceRow>, String>>),
    /// Restart a service's container.
    RestartService(String, oneshot::Sender<Result<(), String>>),
    /// Stop a service and keep it stopped until `StartService`.
    StopService(String, oneshot::Sender<Result<(), String>>),
    /// Start a service an operator stopped.
    StartService(String, oneshot::Sender<Result<(), String>>),
    /// The last lines a service's container wrote.
    ServiceLogs(String, u32, oneshot::Sender<Result<String, String>>),
}

/// One row of `ListServices`: (service, container, state, health, image,
/// release) — strings so every engine can fill them.
pub type ServiceRow = (String, String, String, String, String, String);

/// The interface object. Holds the published status; the daemon changes it
/// through a [`StatusHandle`], which emits `PropertiesChanged`.
#[derive(Debug)]
pub struct AgentInterface {
    status: Status,
    commands: mpsc::Sender<Command>,
}

impl AgentInterface {
    pub fn new(status: Status, commands: mpsc::Sender<Command>) -> Self {
        Self { status, commands }
    }
}

#[zbus::interface(name = "org.containeros.Agent1")]
impl AgentInterface {
    /// Restart the container engine's systemd unit now, and re-arm automatic
    /// restarts if they had given up. Returns when the restart job ended.
    async fn restart_engine(&self) -> Result<(), ApiError> {
        ask(&self.commands, Command::RestartEngine).await
    }

    #[zbus(property)]
    fn agent_version(&self) -> &str {
        &self.status.agent_version
    }

    #[zbus(property)]
    fn os_version(&self) -> &str {
        &self.status.os_version
    }

    #[zbus(property)]
    fn booted_slot(&self) -> &str {
        &self.status.booted_slot
    }

    #[zbus(property)]
    fn operation(&self) -> &str {
        &self.status.operation
    }

    #[zbus(property)]
    fn progress(&self) -> u32 {
        self.status.progress
    }

    #[zbus(property)]
    fn last_error(&self) -> &str {
        &self.status.last_error
    }

    #[zbus(property)]
    fn engine_state(&self) -> &str {
        &self.status.engine_state
    }

    #[zbus(property)]
    fn engine_version(&self) -> &str {
        &self.status.engine_version
    }

    #[zbus(property)]
    fn engine_restarts(&self) -> u32 {
        self.status.engine_restarts
    }
}

/// Lets the daemon change the published status; every changed property is
/// announced with one `PropertiesChanged` signal per property.
#[derive(Clone)]
pub struct StatusHandle {
    iface: InterfaceRef<AgentInterface>,
}

impl std::fmt::Debug for StatusHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatusHandle")
    }
}

impl StatusHandle {
    /// Applies `change` to the status and emits signals for what changed.
    pub async fn update(&self, change: impl FnOnce(&mut Status)) -> zbus::Result<()> {
        let mut iface = self.iface.get_mut().await;
        let before = iface.status.clone();
        change(&mut iface.status);
        let after = iface.status.clone();
        let emitter = self.iface.signal_emitter();
        emit_changes(&iface, emitter, &before, &after).await
    }

    pub async fn get(&self) -> Status {
        self.iface.get().await.status.clone()
    }
}

async fn emit_changes(
    iface: &AgentInterface,
    e: &SignalEmitter<'_>,
    before: &Status,
    after: &Status,
) -> zbus::Result<()> {
    // One arm per property: zbus generates a `*_changed` per property.
    if before.agent_version != after.agent_version {
        iface.agent_version_changed(e).await?;
    }
    if before.os_version != after.os_version {
        iface.os_version_changed(e).await?;
    }
    if before.booted_slot != after.booted_slot {
        iface.booted_slot_changed(e).await?;
    }
    if before.operation != after.operation {
        iface.operation_changed(e).await?;
    }
    if before.progress != after.progress {
        iface.progress_changed(e).await?;
    }
    if before.last_error != after.last_error {
        iface.last_error_changed(e).await?;
    }
    if before.engine_state != after.engine_state {
        iface.engine_state_changed(e).await?;
    }
    if before.engine_version != after.engine_version {
        iface.engine_version_changed(e).await?;
    }
    if before.engine_restarts != after.engine_restarts {
        iface.engine_restarts_changed(e).await?;
    }
    Ok(())
}

/// The `org.containeros.Agent1.Apps` interface: application releases.
#[derive(Debug)]
pub struct AppsInterface {
    commands: mpsc::Sender<Command>,
}

#[zbus::interface(name = "org.containeros.Agent1.Apps")]
impl AppsInterface {
    /// Make the release described by the Compose file at `path` (on the
    /// device: an offline/USB release) the target. Returns once the file is
    /// validated and stored as the target; the agent then pulls and
    /// reconciles, reporting `PullProgress` and ending with `ApplyFinished`.
    async fn apply_release(&self, path: String) -> Result<(), ApiError> {
        ask(&self.commands, |tx| Command::ApplyRelease(path, tx)).await
    }

    /// The services of the running release: (service, container, state,
    /// health, image, release).
    async fn list_services(&self) -> Result<Vec<ServiceRow>, ApiError> {
        ask(&self.commands, Command::ListServices).await
    }

    /// Restart the service's container (stop with its signal and grace
    /// period, start again).
    async fn restart_service(&self, service: String) -> Result<(), ApiError> {
        ask(&self.commands, |tx| Command::RestartService(service, tx)).await
    }

    /// Stop the service's container (its signal and grace period) and keep
    /// it stopped — across reconciles, engine restarts, reboots and updates
    /// that keep the service — until `StartService`.
    async fn stop_service(&self, service: String) -> Result<(), ApiError> {
        ask(&self.commands, |tx| Command::StopService(service, tx)).await
    }

    /// Start a service stopped by `StopService` (or found stopped).
    async fn start_service(&self, service: String) -> Result<(), ApiError> {
        ask(&self.commands, |tx| Command::StartService(service, tx)).await
    }

    /// The last `lines` lines (stdout and stderr) of the service's
    /// container. Logs may hold secrets: only root and the `containeros`
    /// group may read them.
    async fn logs(&self, service: String, lines: u32) -> Result<String, ApiError> {
        ask(&self.commands, |tx| Command::ServiceLogs(service, lines, tx)).await
    }

    /// Bytes of an image pull: image, bytes done, bytes known in total.
    #[zbus(signal)]
    pub async fn pull_progress(
        emitter: &SignalEmitter<'_>,
        image: &str,
        done: u64,
        total: u64,
    ) -> zbus::Result<()>;

    /// A release apply ended: release name, version, success, and the error
    /// in words when it failed.
    #[zbus(signal)]
    pub async fn apply_finished(
        emitter: &SignalEmitter<'_>,
        release: &str,
        version: &str,
        success: bool,
        error: &str,
    ) -> zbus::Result<()>;
}

/// Sends a command to the daemon and waits for its answer.
async fn ask<T>(
    commands: &mpsc::Sender<Command>,
    make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Command,
) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    commands
        .send(make(tx))
        .await
        .map_err(|_| ApiError::Unavailable("the agent is shutting down".into()))?;
    rx.await
        .map_err(|_| ApiError::Unavailable("the agent is shutting down".into()))?
        .map_err(ApiError::Failed)
}

/// Serves the interface at [`OBJECT_PATH`] on `connection` and returns the
/// handle to update it. Owning the bus name is the caller's job (it differs
/// between a bus and a peer-to-peer connection).
pub async fn serve_on(
    connection: &zbus::Connection,
    status: Status,
    commands: mpsc::Sender<Command>,
) -> zbus::Result<StatusHandle> {
    let server = connection.object_server();
    server
        .at(
            OBJECT_PATH,
            AppsInterface {
                commands: commands.clone(),
            },
        )
        .await?;
    server
        .at(OBJECT_PATH, AgentInterface::new(status, commands))
        .await?;
    let iface = server.interface::<_, AgentInterface>(OBJECT_PATH).await?;
    Ok(StatusHandle { iface })
}

#[cfg(test)]
mod tests;
