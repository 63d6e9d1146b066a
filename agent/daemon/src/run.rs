//! The running daemon: bus, API object, engine supervision, systemd
//! notifications, and a clean stop on SIGTERM/SIGINT.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use containeros_api::{AppsInterface, BUS_NAME, Command, OBJECT_PATH, Status, StatusHandle};
use containeros_apps::Mode;
use containeros_apps::apply::ApplyOptions;
use containeros_config::{Bus, EngineKind, Loaded};
use containeros_engine::{DockerProbe, EngineState, EngineStatus, Policy, RestartRequest, SystemdRestarter};
use containeros_systemd::{Notifier, UnitManager};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::apps;
use crate::channel;
use crate::device;
use crate::os;
use crate::provision::{self, Provisioned};

/// How often the built-in engine applies restart policies and healthchecks.
const NATIVE_SUPERVISION: Duration = Duration::from_secs(1);

/// Opens the built-in engine of `engine.kind = "native"`; the error says
/// which setting or path to fix.
fn open_native(config: &containeros_config::Config) -> Result<Arc<containeros_native::NativeEngine>, String> {
    let e = &config.engine;
    let runtime = e.runtime.as_path();
    if !runtime.exists() {
        return Err(format!(
            "engine.runtime {}: no such file; install crun (or runc) there or point engine.runtime at it",
            runtime.display()
        ));
    }
    let http = containeros_update::http::client(None, false, containeros_update::http::Timeouts::default())
        .map_err(|e| format!("the native engine's HTTP client: {e}"))?;
    let settings = containeros_native::Settings {
        data: e.native_dir.as_path().to_owned(),
        run: e.native_run_dir.as_path().to_owned(),
        runtime: runtime.to_owned(),
        platform: containeros_native::Platform::host(),
        auth_file: Some(e.native_auth_file.as_path().to_owned()),
        logs: match e.native_logs {
            containeros_config::NativeLogs::Auto => containeros_native::LogTarget::Auto,
            containeros_config::NativeLogs::Journald => containeros_native::LogTarget::Journald,
            containeros_config::NativeLogs::File => containeros_native::LogTarget::File,
        },
        journal_socket: e.native_journal_socket.as_path().to_owned(),
    };
    containeros_native::NativeEngine::open(&settings, http)
        .map(Arc::new)
        .map_err(|err| {
            format!(
                "the native engine (engine.native_dir {}): {err}",
                e.native_dir.as_path().display()
            )
        })
}

pub async fn run(loaded: Loaded, provisioned: Provisioned) -> Result<()> {
    let config = &loaded.config;
    let notifier = Notifier::from_env().context("cannot use $NOTIFY_SOCKET")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;

    let connection = connect(&config.dbus.bus).await?;
    let (commands_tx, mut commands) = mpsc::channel::<Command>(8);
    let mut status = initial_status(config.agent.os_release.as_path(), config.update.cmdline.as_path());
    status.device_id = provisioned.device_id.clone();
    status.provisioning = provisioned.summary.clone();
    let os_version = status.os_version.clone();
    let served = containeros_api::serve_on(&connection, status, commands_tx)
        .await
        .context("cannot serve the D-Bus API object")?;
    let api = served.status.clone();
    connection.request_name(BUS_NAME).await.with_context(|| {
        format!(
            "cannot own the bus name {BUS_NAME}: another agent may be running, or the D-Bus policy \
             (org.containeros.Agent1.conf in /usr/share/dbus-1/system.d) is not installed"
        )
    })?;

    // The provisioned network, host name, time servers and SSH, through
    // their services on the bus; the outcome joins the Provisioning property.
    let provisioner = provisioned.in_force.clone().map(|p| {
        let (connection, api) = (connection.clone(), api.clone());
        let targets = provision::targets(config, provisioned.changed);
        let summary = provisioned.summary.clone();
        tokio::spawn(async move {
            let problems = provision::apply(&connection, &p, &targets).await;
            if !problems.is_empty() {
                let _ = api
                    .update(|s| s.provisioning = format!("{summary}; not applied: {problems}"))
                    .await;
            }
        })
    });

    // Engine supervision publishes into a watch; one task mirrors it onto D-Bus.
    let (engine_tx, engine_rx) = watch::channel(EngineStatus::default());
    let engine_watch = engine_rx.clone();
    let (restart_tx, restart_rx) = mpsc::channel::<RestartRequest>(1);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = {
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }
    };
    let engine_kind = config.engine.kind;
    let mut native = None;
    // Why apps cannot run (the native engine did not open), if so.
    let mut native_error: Option<String> = None;
    let unit = config.engine.unit.as_ref().map(|u| u.as_str().to_owned());
    let supervisor = match engine_kind {
        EngineKind::Docker => {
            let probe = DockerProbe::new(config.engine.socket.as_path(), config.engine.check_timeout.get());
            let restarter = match &unit {
                Some(unit) => {
                    let restarter = SystemdRestarter::new(
                        UnitManager::new(&connection)
                            .await
                            .context("cannot reach systemd on the bus")?,
                        unit,
                    );
                    Some(if config.engine.recover_store {
                        info!(data_root = %config.engine.data_root.as_path().display(), "engine-store recovery is on");
                        restarter.with_store(config.engine.data_root.as_path())
                    } else {
                        restarter
                    })
                }
                None => None,
            };
            let policy = Policy::from_config(&config.engine);
            info!(socket = %config.engine.socket.as_path().display(), unit = unit.as_deref().unwrap_or("(none)"), "supervising the engine");
            Some(tokio::spawn(containeros_engine::supervise(
                probe, restarter, policy, engine_tx, restart_rx, stopped,
            )))
        }
        EngineKind::Native => match open_native(config) {
            Ok(engine) => {
                info!(
                    dir = %config.engine.native_dir.as_path().display(),
                    runtime = %config.engine.runtime.as_path().display(),
                    "the built-in engine is up"
                );
                engine_tx.send_replace(EngineStatus {
                    state: EngineState::Up,
                    info: Some(containeros_engine::EngineInfo {
                        name: "ContainerOS native engine".to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        api_version: "oci".to_owned(),
                    }),
                    ..EngineStatus::default()
                });
                let containers = Arc::clone(engine.containers());
                native = Some(engine);
                Some(tokio::spawn(containers.supervise(NATIVE_SUPERVISION, stopped)))
            }
            Err(e) => {
                error!("{e}");
                engine_tx.send_replace(EngineStatus {
                    state: EngineState::Unavailable,
                    last_error: e.clone(),
                    ..EngineStatus::default()
                });
                native_error = Some(e);
                None
            }
        },
    };
    // Application releases: the stored target is applied again at start.
    let apps_settings = apps::Settings::new(
        config.engine.socket.as_path().to_owned(),
        config.engine.check_timeout.get(),
        if config.apps.development {
            Mode::Development
        } else {
            Mode::Committed
        },
        config.agent.state_dir.as_path(),
        ApplyOptions {
            min_free: config.apps.min_free_mib.saturating_mul(1 << 20),
            ..ApplyOptions::default()
        },
        config.apps.lock_dir.as_path().to_owned(),
        config.apps.update_lock_timeout.get(),
    );
    let apps_settings = match native {
        Some(engine) => apps_settings.with_native(engine),
        None => apps_settings,
    };
    let apps_off = native_error.clone();
    let mirror = tokio::spawn(mirror_engine_status(
        engine_rx,
        api.clone(),
        apps_settings.kick.clone(),
    ));
    let (target_tx, target_rx) = watch::channel(match &apps_off {
        None => apps::stored_target(&apps_settings),
        Some(_) => None,
    });
    let target_rx_health = target_rx.clone();
    let target_tx = Arc::new(target_tx);
    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    let applier = apps_off.is_none().then(|| {
        tokio::spawn(apps::applier(
            apps_settings.clone(),
            target_rx,
            reports_tx,
            stop_rx.clone(),
        ))
    });
    let reporter = tokio::spawn(publish_apps_reports(reports_rx, api.clone(), connection.clone()));

    // OS updates: recovery of an update under way first, then requests.
    let (os_reports_tx, os_reports_rx) = mpsc::unbounded_channel();
    let (os_tx, os_rx) = mpsc::channel::<os::Request>(4);
    let rebooter: Arc<dyn os::Rebooter> = Arc::new(SystemdReboot {
        connection: connection.clone(),
        units: UnitManager::new(&connection)
            .await
            .context("cannot reach systemd on the bus")?,
    });
    let health: Arc<dyn os::Health> = Arc::new(TrialHealth {
        engine: engine_watch.clone(),
        apps: apps_settings.clone(),
        target: target_rx_health,
        apps_off: apps_off.clone(),
    });
    let apps_target: Arc<dyn os::AppsTarget> = Arc::new(AppsTargetOf {
        settings: apps_settings.clone(),
        target: target_tx.clone(),
        apps_off: apps_off.clone(),
    });
    let (availability, os_task) = match os::Updater::new(
        &config.update,
        (!config.channel.ca_file.is_empty()).then(|| Path::new(&config.channel.ca_file)),
        config.agent.os_release.as_path(),
        config.agent.state_dir.as_path(),
        rebooter,
        health,
        apps_target.clone(),
        os_reports_tx,
    ) {
        Ok(Some(updater)) => (
            os::Availability::Running,
            Some(tokio::spawn(os::run(updater, os_rx, stop_rx.clone()))),
        ),
        Ok(None) => (os::Availability::Off(os::DISABLED.to_owned()), None),
        Err(e) => {
            let why = format!("OS updates are unavailable: {e}");
            error!("{why}");
            let _ = served.installer.update(|s| s.last_error = why.clone()).await;
            (os::Availability::Off(why), None)
        }
    };
    let os_reporter = tokio::spawn(publish_os_reports(os_reports_rx, served.installer.clone()));

    // The release channel, when one is configured.
    let channel_task = (!config.channel.url.is_empty()).then(|| {
        let keys = config
            .update
            .trusted_keys
            .iter()
            .filter_map(|k| containeros_trust::PublicKey::parse(k).ok())
            .collect();
        tokio::spawn(channel::run(
            channel::Channel {
                config: config.channel.clone(),
                keys,
                state_dir: config.agent.state_dir.as_path().to_owned(),
                os_version: os_version.clone(),
                device_id: provisioned.device_id.clone(),
                os: (availability == os::Availability::Running).then(|| os_tx.clone()),
                apps: apps_target.clone(),
            },
            stop_rx.clone(),
        ))
    });

    let ready = format!("serving {BUS_NAME}");
    notifier
        .ready(&ready)
        .context("cannot notify systemd of readiness")?;
    info!(version = env!("CARGO_PKG_VERSION"), config = %loaded.sources.iter().map(|s| s.path.display().to_string()).collect::<Vec<_>>().join(" + "), "agent ready, {ready}");

    let watchdog_period = notifier.watchdog_timeout().map(|t| t / 2);
    let mut watchdog = tokio::time::interval(watchdog_period.unwrap_or(Duration::from_secs(3600)));
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
            _ = watchdog.tick(), if watchdog_period.is_some() => {
                if let Err(e) = notifier.watchdog() {
                    warn!("cannot ping the systemd watchdog: {e}");
                }
            }
            Some(command) = commands.recv() => match command {
                Command::ApplyRelease(path, reply) => {
                    let result = match &apps_off {
                        None => apps::accept(&apps_settings, &path).map(|release| {
                            target_tx.send_replace(Some(release));
                        }),
                        Some(e) => Err(e.clone()),
                    };
                    let _ = reply.send(result);
                }
                Command::ListServices(reply) => {
                    let settings = apps_settings.clone();
                    let target = target_tx.borrow().clone();
                    tokio::spawn(async move {
                        let _ = reply.send(apps::list(&settings, target).await);
                    });
                }
                Command::RestartService(service, reply) => {
                    let (settings, target) = (apps_settings.clone(), target_tx.borrow().clone());
                    tokio::spawn(async move {
                        let _ = reply.send(apps::restart_service(&settings, target, &service).await);
                    });
                }
                Command::StopService(service, reply) => {
                    let (settings, target) = (apps_settings.clone(), target_tx.borrow().clone());
                    tokio::spawn(async move {
                        let _ = reply.send(apps::stop_service(&settings, target, &service).await);
                    });
                }
                Command::StartService(service, reply) => {
                    let (settings, target) = (apps_settings.clone(), target_tx.borrow().clone());
                    tokio::spawn(async move {
                        let _ = reply.send(apps::start_service(&settings, target, &service).await);
                    });
                }
                Command::ServiceLogs(service, lines, reply) => {
                    let (settings, target) = (apps_settings.clone(), target_tx.borrow().clone());
                    tokio::spawn(async move {
                        let _ = reply.send(apps::logs(&settings, target, &service, lines).await);
                    });
                }
                Command::RestartEngine(reply) => restart_engine(reply, &restart_tx, engine_kind, unit.is_some()),
                Command::InstallOs { source, options, reply } => {
                    os_request(&availability, &os_tx, os::Request::Install {
                        source,
                        force_downgrade: options.force_downgrade,
                        reboot: options.reboot,
                        reply,
                    }).await;
                }
                Command::MarkGood(reply) => os_request(&availability, &os_tx, os::Request::MarkGood(reply)).await,
                Command::MarkBad(reply) => os_request(&availability, &os_tx, os::Request::MarkBad(reply)).await,
                Command::Rollback(reply) => os_request(&availability, &os_tx, os::Request::Rollback(reply)).await,
                Command::Reboot(reply) => os_request(&availability, &os_tx, os::Request::Reboot(reply)).await,
            },
        }
    }

    let _ = notifier.stopping();
    let _ = stop_tx.send(true);
    if let Some(task) = supervisor {
        let _ = task.await;
    }
    if let Some(task) = applier {
        // An apply in progress is abandoned here; the next start plans from
        // whatever the engine has and finishes it.
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    if let Some(task) = os_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    if let Some(task) = channel_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    mirror.abort();
    reporter.abort();
    if let Some(task) = provisioner {
        task.abort();
    }
    os_reporter.abort();
    let _ = connection.release_name(BUS_NAME).await;
    info!("stopped");
    Ok(())
}

async fn connect(bus: &Bus) -> Result<zbus::Connection> {
    let (builder, name) = match bus {
        Bus::System => (zbus::connection::Builder::system(), "the system bus".to_owned()),
        Bus::Address(a) => (
            zbus::connection::Builder::address(a.as_str()),
            format!("the bus at {a} (dbus.bus)"),
        ),
    };
    builder
        .with_context(|| format!("cannot use {name}"))?
        .build()
        .await
        .with_context(|| format!("cannot connect to {name}; is dbus-daemon running?"))
}

fn initial_status(os_release: &Path, cmdline: &Path) -> Status {
    let os_version = device::read(os_release).and_then(|t| device::os_version(&t));
    if os_version.is_none() {
        warn!(file = %os_release.display(), "no VERSION_ID in the os-release file (agent.os_release); OS version unknown");
    }
    let booted_slot = device::read(cmdline)
        .and_then(|t| device::booted_slot(&t))
        .unwrap_or_default();
    Status {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        os_version: os_version.unwrap_or_default(),
        booted_slot,
        operation: "idle".to_owned(),
        engine_state: EngineState::Unknown.as_str().to_owned(),
        ..Status::default()
    }
}

/// Mirrors the engine status onto D-Bus, and wakes the apps applier when
/// the engine comes (back) up: after a restart or a store recovery the
/// release is re-checked at once, not at the applier's next retry.
async fn mirror_engine_status(
    mut rx: watch::Receiver<EngineStatus>,
    api: StatusHandle,
    kick: std::sync::Arc<tokio::sync::Notify>,
) {
    let mut was_up = false;
    loop {
        let engine = rx.borrow_and_update().clone();
        let up = engine.state == EngineState::Up;
        if up && !was_up {
            kick.notify_one();
        }
        was_up = up;
        let result = api
            .update(|s| {
                s.engine_state = engine.state.as_str().to_owned();
                s.engine_version = engine.info.as_ref().map(ToString::to_string).unwrap_or_default();
                s.engine_restarts = engine.restarts;
                s.last_error = engine.last_error.clone();
            })
            .await;
        if let Err(e) = result {
            warn!("cannot publish the engine status on D-Bus: {e}");
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Mirrors the applier's reports onto the API: status properties, and the
/// Apps interface's signals.
async fn publish_apps_reports(
    mut reports: mpsc::UnboundedReceiver<apps::Report>,
    api: StatusHandle,
    connection: zbus::Connection,
) {
    let Ok(emitter) = zbus::object_server::SignalEmitter::new(&connection, OBJECT_PATH) else {
        return;
    };
    while let Some(report) = reports.recv().await {
        let result = match report {
            apps::Report::Operation { text, progress } => {
                api.update(|s| {
                    s.operation = text;
                    s.progress = progress;
                })
                .await
            }
            apps::Report::Pull { image, done, total } => {
                AppsInterface::pull_progress(&emitter, &image, done, total).await
            }
            apps::Report::Finished {
                release,
                version,
                error,
            } => {
                let message = error.clone().unwrap_or_default();
                let updated = api
                    .update(|s| {
                        s.operation = "idle".to_owned();
                        s.progress = 0;
                        if let Some(e) = &error {
                            s.last_error = format!("release {release} {version}: {e}");
                        }
                    })
                    .await;
                let signalled =
                    AppsInterface::apply_finished(&emitter, &release, &version, error.is_none(), &message)
                        .await;
                updated.and(signalled)
            }
        };
        if let Err(e) = result {
            warn!("cannot publish apps progress on D-Bus: {e}");
        }
    }
}

fn restart_engine(
    reply: RestartRequest,
    restart: &mpsc::Sender<RestartRequest>,
    kind: EngineKind,
    has_unit: bool,
) {
    if kind != EngineKind::Docker || !has_unit {
        let _ = reply.send(Err(
            "no engine unit to restart: set engine.unit (and engine.kind = \"docker\")".to_owned(),
        ));
        return;
    }
    info!("engine restart requested over D-Bus");
    // The supervisor answers on `reply` once the restart job ended; the main
    // loop never waits for it.
    match restart.try_send(reply) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(reply)) => {
            let _ = reply.send(Err("an engine restart is already in progress".to_owned()));
        }
        Err(mpsc::error::TrySendError::Closed(reply)) => {
            let _ = reply.send(Err("the engine supervisor has stopped".to_owned()));
        }
    }
}

/// Hands a request to the OS updater, or answers that OS updates are off.
async fn os_request(availability: &os::Availability, tx: &mpsc::Sender<os::Request>, request: os::Request) {
    fn refuse<T>(reply: tokio::sync::oneshot::Sender<Result<T, String>>, why: &str) {
        let _ = reply.send(Err(why.to_owned()));
    }
    if let os::Availability::Off(why) = availability {
        match request {
            os::Request::Install { reply, .. } | os::Request::Reboot(reply) => refuse(reply, why),
            os::Request::MarkGood(reply) | os::Request::MarkBad(reply) | os::Request::Rollback(reply) => {
                refuse(reply, why)
            }
        }
        return;
    }
    if let Err(mpsc::error::SendError(request)) = tx.send(request).await {
        let why = "the OS updater has stopped";
        match request {
            os::Request::Install { reply, .. } | os::Request::Reboot(reply) => refuse(reply, why),
            os::Request::MarkGood(reply) | os::Request::MarkBad(reply) | os::Request::Rollback(reply) => {
                refuse(reply, why)
            }
        }
    }
}

/// Mirrors the OS updater's reports onto the Installer interface.
async fn publish_os_reports(
    mut reports: mpsc::UnboundedReceiver<os::Report>,
    installer: containeros_api::InstallerHandle,
) {
    while let Some(report) = reports.recv().await {
        let result = match report {
            os::Report::Status {
                state,
                target_slot,
                version,
                bytes_done,
                bytes_total,
                last_error,
            } => {
                installer
                    .update(|s| {
                        s.state = state;
                        s.target_slot = target_slot;
                        s.version = version;
                        s.bytes_done = bytes_done;
                        s.bytes_total = bytes_total;
                        s.last_error = last_error;
                    })
                    .await
            }
            os::Report::FetchStarted => installer.update(|s| s.bytes_fetched = 0).await,
            os::Report::Fetched(bytes) => installer.update(|s| s.bytes_fetched += bytes).await,
            os::Report::Progress { state, done, total } => {
                let updated = installer
                    .update(|s| {
                        s.bytes_done = done;
                        s.bytes_total = total;
                    })
                    .await;
                updated.and(installer.progress(&state, done, total).await)
            }
            os::Report::Completed {
                success,
                state,
                message,
            } => {
                let updated = installer
                    .update(|s| {
                        s.last_result = message.clone();
                        if !success {
                            s.last_error = message.clone();
                        }
                    })
                    .await;
                updated.and(installer.completed(success, &state, &message).await)
            }
        };
        if let Err(e) = result {
            warn!("cannot publish OS update progress on D-Bus: {e}");
        }
    }
}

/// Reboots through logind, as `systemctl reboot ARG` does (the argument is
/// Raspberry Pi tryboot's); without logind on the bus, through systemd's
/// `reboot.target` with the argument in `/run/systemd/reboot-param`.
struct SystemdReboot {
    connection: zbus::Connection,
    units: UnitManager,
}

impl os::Rebooter for SystemdReboot {
    fn reboot(
        &self,
        argument: Option<&'static str>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            info!(argument, "asking for a reboot");
            let by = containeros_systemd::reboot(
                &self.connection,
                &self.units,
                argument,
                Path::new(containeros_systemd::REBOOT_PARAM_FILE),
            )
            .await
            .map_err(|e| e.to_string())?;
            info!(
                "reboot queued by {}",
                match by {
                    containeros_systemd::RebootBy::Logind => "logind",
                    containeros_systemd::RebootBy::Systemd => "systemd (no logind on the bus)",
                }
            );
            Ok(())
        })
    }
}

/// A trial boot's checks besides health.d: the engine is up and the apps
/// release runs.
struct TrialHealth {
    engine: watch::Receiver<EngineStatus>,
    apps: apps::Settings,
    target: watch::Receiver<Option<Arc<containeros_apps::Release>>>,
    /// Why apps cannot run here, if so: then they are not checked.
    apps_off: Option<String>,
}

impl os::Health for TrialHealth {
    fn check(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            if self.apps_off.is_some() {
                return Ok(());
            }
            let engine = self.engine.borrow().clone();
            if engine.state != EngineState::Up {
                return Err(format!("the engine is {}", engine.state.as_str()));
            }
            let target = self.target.borrow().clone();
            apps::healthy(&self.apps, target).await
        })
    }
}

/// The apps applier's target, for the OS updater.
struct AppsTargetOf {
    settings: apps::Settings,
    target: Arc<watch::Sender<Option<Arc<containeros_apps::Release>>>>,
    /// Why apps cannot run here, if so.
    apps_off: Option<String>,
}

impl os::AppsTarget for AppsTargetOf {
    fn current(&self) -> Option<std::path::PathBuf> {
        let path = self.settings.target_file();
        path.exists().then_some(path)
    }

    fn check(&self, path: &Path) -> Result<(), String> {
        apps::check(&self.settings, &path.display().to_string())
    }

    fn set(&self, path: &Path) -> Result<(), String> {
        if let Some(e) = &self.apps_off {
            return Err(e.clone());
        }
        let release = apps::accept(&self.settings, &path.display().to_string())?;
        self.target.send_replace(Some(release));
        Ok(())
    }
}
