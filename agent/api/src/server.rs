//! The server side: the interface objects at `/org/containeros/Agent1`
//! (`org.containeros.Agent1`, `.Apps`, `.Installer`).

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};
use zbus::object_server::{InterfaceRef, SignalEmitter};
use zbus::zvariant::{OwnedValue, Value};

use crate::{ApiError, InstallerStatus, OBJECT_PATH, Status};

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
    /// Install the OS release whose signed manifest (envelope) is at `source`
    /// (https:// URL or absolute path on the device). Answer once the
    /// manifest is verified and the update is under way; progress and the end
    /// come as Installer signals.
    InstallOs {
        source: String,
        options: InstallOptions,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Mark the booted slot good (commit) / bad.
    MarkGood(oneshot::Sender<Result<String, String>>),
    MarkBad(oneshot::Sender<Result<String, String>>),
    /// Make the other slot the boot default again (it must hold a verified, committed OS).
    Rollback(oneshot::Sender<Result<String, String>>),
    /// Reboot now (into the slot the bootloader will pick).
    Reboot(oneshot::Sender<Result<(), String>>),
}

/// The options of `Installer.Install`, sent on D-Bus as `a{sv}` so options
/// can be added without changing the method's signature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallOptions {
    /// `force-downgrade` (b): accept a release older than the installed one.
    pub force_downgrade: bool,
    /// `reboot` (b): reboot into the new slot once it is written and verified.
    pub reboot: bool,
}

impl InstallOptions {
    const FORCE_DOWNGRADE: &str = "force-downgrade";
    const REBOOT: &str = "reboot";

    /// Reads the `a{sv}` of a call. Unknown keys and values of the wrong
    /// type are refused by name rather than ignored: a caller that asks for
    /// something the agent does not do must hear so.
    pub fn from_dbus(options: &HashMap<String, OwnedValue>) -> Result<Self, String> {
        let mut parsed = Self::default();
        // Sorted, so that with several bad keys the message is stable.
        let mut keys: Vec<&String> = options.keys().collect();
        keys.sort();
        for key in keys {
            let field = match key.as_str() {
                Self::FORCE_DOWNGRADE => &mut parsed.force_downgrade,
                Self::REBOOT => &mut parsed.reboot,
                _ => {
                    return Err(format!(
                        "unknown install option `{key}` (known: `{}`, `{}`)",
                        Self::FORCE_DOWNGRADE,
                        Self::REBOOT
                    ));
                }
            };
            let value = &options[key];
            *field = match **value {
                Value::Bool(b) => b,
                ref other => {
                    return Err(format!(
                        "install option `{key}` must be a boolean (b), not `{}`",
                        other.value_signature()
                    ));
                }
            };
        }
        Ok(parsed)
    }

    /// The `a{sv}` for an `Install` call (every option, explicitly).
    pub fn to_dbus(&self) -> HashMap<&'static str, Value<'static>> {
        HashMap::from([
            (Self::FORCE_DOWNGRADE, Value::from(self.force_downgrade)),
            (Self::REBOOT, Value::from(self.reboot)),
        ])
    }
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

    #[zbus(property)]
    fn device_id(&self) -> &str {
        &self.status.device_id
    }

    #[zbus(property)]
    fn provisioning(&self) -> &str {
        &self.status.provisioning
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
    if before.device_id != after.device_id {
        iface.device_id_changed(e).await?;
    }
    if before.provisioning != after.provisioning {
        iface.provisioning_changed(e).await?;
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

/// The `org.containeros.Agent1.Installer` interface: OS updates into the
/// other A/B slot. Holds the published [`InstallerStatus`]; the daemon
/// changes it through an [`InstallerHandle`].
#[derive(Debug)]
pub struct InstallerInterface {
    status: InstallerStatus,
    commands: mpsc::Sender<Command>,
}

#[zbus::interface(name = "org.containeros.Agent1.Installer")]
impl InstallerInterface {
    /// Install the OS release whose signed manifest (envelope) is at
    /// `source`: an https:// URL, or an absolute path on the device.
    /// `options`: `force-downgrade` (b) accepts an older release, `reboot`
    /// (b) reboots into it once written and verified; other keys are
    /// refused. Returns once the manifest is verified and the update is
    /// under way; `Progress` follows it and `Completed` ends it.
    async fn install(&self, source: String, options: HashMap<String, OwnedValue>) -> Result<(), ApiError> {
        let options = InstallOptions::from_dbus(&options).map_err(ApiError::Failed)?;
        ask(&self.commands, |reply| Command::InstallOs {
            source,
            options,
            reply,
        })
        .await
    }

    /// Mark the booted slot good (commit the update running now); returns
    /// what was done, in words.
    async fn mark_good(&self) -> Result<String, ApiError> {
        ask(&self.commands, Command::MarkGood).await
    }

    /// Mark the booted slot bad, so the bootloader leaves it; returns what
    /// was done, in words.
    async fn mark_bad(&self) -> Result<String, ApiError> {
        ask(&self.commands, Command::MarkBad).await
    }

    /// Make the other slot the boot default again (it must hold a
    /// verified, committed OS); takes effect at the next reboot. Returns
    /// what was done, in words.
    async fn rollback(&self) -> Result<String, ApiError> {
        ask(&self.commands, Command::Rollback).await
    }

    /// Reboot now, into the slot the bootloader will pick.
    async fn reboot(&self) -> Result<(), ApiError> {
        ask(&self.commands, Command::Reboot).await
    }

    #[zbus(property)]
    fn state(&self) -> &str {
        &self.status.state
    }

    #[zbus(property)]
    fn target_slot(&self) -> &str {
        &self.status.target_slot
    }

    #[zbus(property)]
    fn version(&self) -> u64 {
        self.status.version
    }

    #[zbus(property)]
    fn bytes_done(&self) -> u64 {
        self.status.bytes_done
    }

    #[zbus(property)]
    fn bytes_total(&self) -> u64 {
        self.status.bytes_total
    }

    #[zbus(property)]
    fn bytes_fetched(&self) -> u64 {
        self.status.bytes_fetched
    }

    #[zbus(property)]
    fn last_error(&self) -> &str {
        &self.status.last_error
    }

    #[zbus(property)]
    fn last_result(&self) -> &str {
        &self.status.last_result
    }

    /// Where an install stands: state, bytes done, bytes in total (0 when
    /// not known).
    #[zbus(signal)]
    pub async fn progress(
        emitter: &SignalEmitter<'_>,
        state: &str,
        done: u64,
        total: u64,
    ) -> zbus::Result<()>;

    /// An install ended: success, the state it left, and what happened in
    /// words (the error when it failed).
    #[zbus(signal)]
    pub async fn completed(
        emitter: &SignalEmitter<'_>,
        success: bool,
        state: &str,
        message: &str,
    ) -> zbus::Result<()>;
}

/// Lets the daemon change the installer's published status and emit its
/// signals; every changed property is announced with `PropertiesChanged`.
#[derive(Clone)]
pub struct InstallerHandle {
    iface: InterfaceRef<InstallerInterface>,
}

impl std::fmt::Debug for InstallerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstallerHandle")
    }
}

impl InstallerHandle {
    /// Applies `change` to the status and emits signals for what changed.
    pub async fn update(&self, change: impl FnOnce(&mut InstallerStatus)) -> zbus::Result<()> {
        let mut iface = self.iface.get_mut().await;
        let before = iface.status.clone();
        change(&mut iface.status);
        let after = iface.status.clone();
        emit_installer_changes(&iface, self.iface.signal_emitter(), &before, &after).await
    }

    pub async fn get(&self) -> InstallerStatus {
        self.iface.get().await.status.clone()
    }

    /// The emitter for [`InstallerInterface::progress`] and
    /// [`InstallerInterface::completed`].
    pub fn signal_emitter(&self) -> &SignalEmitter<'static> {
        self.iface.signal_emitter()
    }

    /// Emits `Progress` (see [`InstallerInterface::progress`]).
    pub async fn progress(&self, state: &str, done: u64, total: u64) -> zbus::Result<()> {
        InstallerInterface::progress(self.signal_emitter(), state, done, total).await
    }

    /// Emits `Completed` (see [`InstallerInterface::completed`]).
    pub async fn completed(&self, success: bool, state: &str, message: &str) -> zbus::Result<()> {
        InstallerInterface::completed(self.signal_emitter(), success, state, message).await
    }
}

async fn emit_installer_changes(
    iface: &InstallerInterface,
    e: &SignalEmitter<'_>,
    before: &InstallerStatus,
    after: &InstallerStatus,
) -> zbus::Result<()> {
    if before.state != after.state {
        iface.state_changed(e).await?;
    }
    if before.target_slot != after.target_slot {
        iface.target_slot_changed(e).await?;
    }
    if before.version != after.version {
        iface.version_changed(e).await?;
    }
    if before.bytes_done != after.bytes_done {
        iface.bytes_done_changed(e).await?;
    }
    if before.bytes_total != after.bytes_total {
        iface.bytes_total_changed(e).await?;
    }
    if before.bytes_fetched != after.bytes_fetched {
        iface.bytes_fetched_changed(e).await?;
    }
    if before.last_error != after.last_error {
        iface.last_error_changed(e).await?;
    }
    if before.last_result != after.last_result {
        iface.last_result_changed(e).await?;
    }
    Ok(())
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

/// The handles [`serve_on`] returns: one per interface that publishes
/// state.
#[derive(Debug, Clone)]
pub struct Served {
    /// `org.containeros.Agent1`'s properties.
    pub status: StatusHandle,
    /// `org.containeros.Agent1.Installer`'s properties and signals.
    pub installer: InstallerHandle,
}

/// Serves the interfaces at [`OBJECT_PATH`] on `connection` and returns the
/// handles to update them. The installer starts from
/// [`InstallerStatus::default`] (idle); the daemon publishes what it finds
/// through [`Served::installer`]. Owning the bus name is the caller's job
/// (it differs between a bus and a peer-to-peer connection).
pub async fn serve_on(
    connection: &zbus::Connection,
    status: Status,
    commands: mpsc::Sender<Command>,
) -> zbus::Result<Served> {
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
        .at(
            OBJECT_PATH,
            InstallerInterface {
                status: InstallerStatus::default(),
                commands: commands.clone(),
            },
        )
        .await?;
    server
        .at(OBJECT_PATH, AgentInterface::new(status, commands))
        .await?;
    Ok(Served {
        status: StatusHandle {
            iface: server.interface::<_, AgentInterface>(OBJECT_PATH).await?,
        },
        installer: InstallerHandle {
            iface: server.interface::<_, InstallerInterface>(OBJECT_PATH).await?,
        },
    })
}

#[cfg(test)]
mod tests;
