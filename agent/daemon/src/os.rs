//! OS updates in the daemon: the persisted state machine
//! (`containeros_update::state`) driven through install, the bootloader
//! switch, the trial boot, the health-gated commit and the rollback.
//!
//! Order of every update, each step persisted before the next:
//! 1. the target (inactive) slot is made unbootable in the bootloader, then
//!    `Downloading` is recorded with the source, and the image is streamed
//!    into the slot, hashed as it is written;
//! 2. `Written`, then `Verified` (size and SHA-256 match the signed
//!    manifest) — only now is the slot made the bootloader's next boot,
//!    with `boot_attempts` tries, and `PendingReboot` recorded;
//! 3. after the reboot the agent finds itself on the target: `Trying`; the
//!    engine, every app container of the release and every check in
//!    `health_dir` must pass within `health_timeout`: then the slot is
//!    marked good and `Committed` recorded, else it is marked bad, the
//!    previous slot made primary, `RolledBack` recorded and the device
//!    rebooted. Committing never needs a server.
//!
//! A release may carry an apps release (the manifest's `apps`: a Compose
//! file with its size and SHA-256). It is fetched and checked with the
//! manifest, kept beside the update, and made the apps target when the new
//! slot boots on trial — so the health check covers it. A commit keeps it;
//! a rollback restores the apps release that ran before, so the OS and the
//! apps go back together.
//!
//! How the image reaches the slot, best first: a binary patch from the OS
//! version the device runs (the manifest's `os.patches`; downloaded to the
//! state directory, checked, applied with the running slot as its source),
//! else the chunk archive (`os.archive`: cloned from what the device holds),
//! else the whole image. Each later way is tried when the one before fails
//! (the running slot not being the patch's seed included); every way ends
//! with the slot's size and SHA-256 checked against the manifest.
//!
//! A kill or power cut anywhere restarts the agent into
//! [`containeros_update::state::recover`], which says what to do from the
//! record, the running slot, this boot's id and the bootloader's view; a
//! boot loop of a broken slot is ended by the bootloader's try counter
//! even when the agent never starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containeros_bootenv::{BootEnv, Bootchooser, GrubEnv, SlotState, Tryboot, UbootEnv};
use containeros_config::{Bootloader, UpdateSection};
use containeros_trust::{Checks, Digest, PublicKey};
use containeros_update::slots::{Host, Slot, SlotConfig, Slots};
use containeros_update::state::{Action, Record, State, Store, TargetBoot, Transition, Update, recover};
use containeros_update::{Expected, Retry, Source};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::store;

/// What the D-Bus side asks for.
#[derive(Debug)]
pub enum Request {
    Install {
        source: String,
        force_downgrade: bool,
        reboot: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    MarkGood(oneshot::Sender<Result<String, String>>),
    MarkBad(oneshot::Sender<Result<String, String>>),
    Rollback(oneshot::Sender<Result<String, String>>),
    Reboot(oneshot::Sender<Result<(), String>>),
}

/// What the updater tells the D-Bus side.
#[derive(Debug, Clone)]
pub enum Report {
    /// The Installer properties.
    Status {
        state: String,
        target_slot: String,
        version: u64,
        bytes_done: u64,
        bytes_total: u64,
        last_error: String,
    },
    Progress {
        state: String,
        done: u64,
        total: u64,
    },
    /// A new update begins: its bandwidth count starts at zero.
    FetchStarted,
    /// Bytes the update fetched from its sources, added to its count.
    Fetched(u64),
    Completed {
        success: bool,
        state: String,
        message: String,
    },
}

/// Asks for a reboot (systemd's `reboot.target`); tryboot passes its
/// reboot argument.
pub trait Rebooter: Send + Sync {
    fn reboot(
        &self,
        argument: Option<&'static str>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>>;
}

/// The checks a trial boot must pass besides `health_dir`.
pub trait Health: Send + Sync {
    /// `Ok(())` when healthy, else what is not (yet).
    fn check(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>>;
}

/// The apps applier's target, as the updater moves it with the OS.
pub trait AppsTarget: Send + Sync {
    /// The stored Compose file of the current target, if any.
    fn current(&self) -> Option<PathBuf>;
    /// Validates the Compose file at `path` without changing anything.
    fn check(&self, path: &Path) -> Result<(), String>;
    /// Makes the Compose file at `path` the target (stored first).
    fn set(&self, path: &Path) -> Result<(), String>;
}

/// The bootloader side.
enum Boot {
    Chooser {
        env: Box<dyn BootEnv + Send + Sync>,
        chooser: Bootchooser,
    },
    Tryboot(Tryboot),
}

impl Boot {
    fn view(&self, slot: Slot) -> TargetBoot {
        match self {
            Boot::Chooser { env, chooser } => {
                let Ok(vars) = env.get_all() else {
                    return TargetBoot::Unknown;
                };
                if chooser.primary(&vars) == Some(slot.name()) {
                    return TargetBoot::Next;
                }
                match chooser.state(&vars, slot.name()) {
                    Ok(SlotState::Good) => TargetBoot::Fallback,
                    Ok(SlotState::Bad) => TargetBoot::Disabled,
                    _ => TargetBoot::Unknown,
                }
            }
            Boot::Tryboot(t) => match (t.trial_slot(), t.default_slot()) {
                (Ok(Some(s)), _) | (_, Ok(Some(s))) if s == slot.name() => TargetBoot::Next,
                (Ok(_), Ok(_)) => TargetBoot::Disabled,
                _ => TargetBoot::Unknown,
            },
        }
    }

    fn chooser_change(
        env: &(dyn BootEnv + Send + Sync),
        change: impl FnOnce(&containeros_bootenv::Vars) -> Result<containeros_bootenv::Changes, String>,
    ) -> Result<(), String> {
        let vars = env.get_all().map_err(|e| e.to_string())?;
        env.set(&change(&vars)?).map_err(|e| e.to_string())
    }

    /// Boot `slot` next, on trial.
    fn make_next(&self, slot: Slot) -> Result<(), String> {
        match self {
            Boot::Chooser { env, chooser } => Self::chooser_change(env.as_ref(), |v| {
                chooser.set_primary(v, slot.name()).map_err(|e| e.to_string())
            }),
            Boot::Tryboot(t) => t.set_trial(slot.name()).map_err(|e| e.to_string()),
        }
    }

    fn mark_good(&self, slot: Slot) -> Result<(), String> {
        match self {
            Boot::Chooser { env, chooser } => Self::chooser_change(env.as_ref(), |v| {
                chooser.mark_good(v, slot.name()).map_err(|e| e.to_string())
            }),
            Boot::Tryboot(t) => t.commit(slot.name()).map_err(|e| e.to_string()),
        }
    }

    /// Never boot `slot` (it is being written, or failed).
    fn mark_bad(&self, slot: Slot) -> Result<(), String> {
        match self {
            Boot::Chooser { env, chooser } => Self::chooser_change(env.as_ref(), |v| {
                chooser.mark_bad(v, slot.name()).map_err(|e| e.to_string())
            }),
            Boot::Tryboot(t) => {
                if t.trial_slot().ok().flatten().as_deref() == Some(slot.name()) {
                    t.cancel_trial().map_err(|e| e.to_string())
                } else {
                    Ok(())
                }
            }
        }
    }

    fn reboot_argument(&self) -> Option<&'static str> {
        match self {
            Boot::Chooser { .. } => None,
            Boot::Tryboot(t) => Some(t.reboot_argument()),
        }
    }
}

/// Everything the updater needs, from the configuration.
pub struct Updater {
    boot: Boot,
    slots: Slots,
    host: Host,
    keys: Vec<PublicKey>,
    store: Store,
    dir: PathBuf,
    boot_id_file: PathBuf,
    health_dir: PathBuf,
    health_timeout: Duration,
    reboot_retry: Duration,
    rebooter: Arc<dyn Rebooter>,
    health: Arc<dyn Health>,
    apps: Arc<dyn AppsTarget>,
    reports: mpsc::UnboundedSender<Report>,
    /// A CA bundle trusted besides the system's for every download of an
    /// update (`channel.ca_file`): manifests, images, archives, apps.
    ca_file: Option<PathBuf>,
    /// The running OS's os-release (`agent.os_release`): its VERSION_ID
    /// picks the release's binary patch.
    os_release: PathBuf,
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Why OS updates are off, for the D-Bus answer.
pub const DISABLED: &str = "OS updates are off on this device (update.bootloader = \"none\")";

/// What the daemon sees of the updater: running, off by configuration, or
/// unavailable because its configuration does not fit this device (the
/// rest of the agent runs on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Running,
    Off(String),
}

impl Updater {
    /// `None` when `update.bootloader` is `none`. Errors name the config key.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &UpdateSection,
        ca_file: Option<&Path>,
        os_release: &Path,
        state_dir: &Path,
        rebooter: Arc<dyn Rebooter>,
        health: Arc<dyn Health>,
        apps: Arc<dyn AppsTarget>,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Result<Option<Self>, String> {
        let attempts = config.boot_attempts.get();
        let chooser =
            || Bootchooser::new(["A", "B"], attempts).map_err(|e| format!("update.boot_attempts: {e}"));
        let boot = match config.bootloader {
            Bootloader::None => return Ok(None),
            Bootloader::UBoot => Boot::Chooser {
                env: Box::new(
                    UbootEnv::from_config_file(config.fw_env_config.as_path())
                        .map_err(|e| format!("update.fw_env_config: {e}"))?,
                ),
                chooser: chooser()?,
            },
            Bootloader::Grub => Boot::Chooser {
                env: Box::new(GrubEnv::new(config.grubenv.as_path())),
                chooser: chooser()?,
            },
            Bootloader::Tryboot => Boot::Tryboot(Tryboot::new(config.autoboot.as_path())),
        };
        let host = Host::new().with_cmdline(config.cmdline.as_path());
        let slot = |name: &str, device: &str, key: &str| -> Result<SlotConfig, String> {
            let device = if device == "auto" {
                // Only on a system our boot script started: "auto" must never
                // pick partitions of some other machine's disk.
                let cmdline = std::fs::read_to_string(config.cmdline.as_path()).unwrap_or_default();
                if !cmdline
                    .split_whitespace()
                    .any(|w| w.starts_with("containeros.slot="))
                {
                    return Err(format!(
                        "update.{key} = \"auto\" needs a ContainerOS boot (containeros.slot= on the \
                         kernel command line {}); set update.slot_a and update.slot_b to the slot devices",
                        config.cmdline.as_path().display()
                    ));
                }
                auto_device(name).map_err(|e| format!("update.{key} = \"auto\": {e}"))?
            } else {
                device.to_owned()
            };
            SlotConfig::parse(name, &device).map_err(|e| format!("update.{key}: {e}"))
        };
        let slots = Slots::new(
            slot("A", &config.slot_a, "slot_a")?,
            slot("B", &config.slot_b, "slot_b")?,
        )
        .map_err(|e| e.to_string())?;
        let keys = config
            .trusted_keys
            .iter()
            .map(|k| PublicKey::parse(k).map_err(|e| format!("update.trusted_keys: \"{k}\": {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let dir = state_dir.join("update");
        std::fs::create_dir_all(&dir).map_err(|e| {
            format!(
                "cannot create {}: {e}; is the data partition mounted?",
                dir.display()
            )
        })?;
        Ok(Some(Self {
            boot,
            slots,
            host,
            keys,
            store: Store::new(dir.join("state.toml")),
            dir,
            boot_id_file: config.boot_id.as_path().to_owned(),
            health_dir: config.health_dir.as_path().to_owned(),
            health_timeout: config.health_timeout.get(),
            reboot_retry: config.reboot_retry.get(),
            rebooter,
            health,
            apps,
            reports,
            ca_file: ca_file.map(Path::to_owned),
            os_release: os_release.to_owned(),
        }))
    }

    /// The HTTPS client for the update's downloads.
    fn client(&self) -> Result<reqwest::Client, String> {
        containeros_update::http::client(self.ca_file.as_deref(), false, Default::default()).map_err(|e| {
            format!(
                "{e}{}",
                if self.ca_file.is_some() {
                    "; check channel.ca_file"
                } else {
                    ""
                }
            )
        })
    }

    fn boot_id(&self) -> String {
        std::fs::read_to_string(&self.boot_id_file)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    }

    fn booted(&self) -> Result<Slot, String> {
        self.slots
            .booted(&self.host)
            .map(|b| b.slot)
            .map_err(|e| format!("cannot tell which slot is running: {e}"))
    }

    fn load(&self) -> Record {
        let (record, problem) = self.store.load_or_idle();
        if let Some(e) = problem {
            error!("{e}");
        }
        record
    }

    fn publish(&self, record: &Record) {
        let update = record.update.as_ref();
        let _ = self.reports.send(Report::Status {
            state: record.state.name().to_owned(),
            target_slot: update.map(|u| u.target.to_string()).unwrap_or_default(),
            version: update.map_or(0, |u| u.version),
            bytes_done: update.map_or(0, |u| u.written),
            bytes_total: update.map_or(0, |u| u.size),
            last_error: record.last_error.clone().unwrap_or_default(),
        });
    }

    fn completed(&self, success: bool, state: State, message: String) {
        if success {
            info!("{message}");
        } else {
            error!("{message}");
        }
        let _ = self.reports.send(Report::Completed {
            success,
            state: state.name().to_owned(),
            message,
        });
    }

    /// Persists `transition`; the new record is published.
    fn step(&self, record: &Record, transition: Transition) -> Result<Record, String> {
        let next = self.store.apply(record, transition).map_err(|e| e.to_string())?;
        info!(state = %next.state, "update state");
        self.publish(&next);
        Ok(next)
    }

    /// The version of the OS running now (0 before the first update).
    fn installed_version(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("installed-version"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn source_file(&self) -> PathBuf {
        self.dir.join("source")
    }

    /// Where a binary patch is downloaded to (on the data partition).
    fn patch_file(&self) -> PathBuf {
        self.dir.join("os.patch")
    }

    /// The running OS version (os-release VERSION_ID), if known.
    fn running_os_version(&self) -> Option<String> {
        crate::device::read(&self.os_release).and_then(|t| crate::device::os_version(&t))
    }

    /// The apps release that comes with the update, and the one before.
    fn apps_next(&self) -> PathBuf {
        self.dir.join("apps-next.yml")
    }

    fn apps_previous(&self) -> PathBuf {
        self.dir.join("apps-previous.yml")
    }

    /// The trial boot starts the update's apps release, if it has one.
    fn start_next_apps(&self) -> Result<(), String> {
        let next = self.apps_next();
        if next.exists() {
            info!("starting the apps release that came with the OS update");
            self.apps.set(&next)?;
        }
        Ok(())
    }

    /// A rollback brings back the apps release from before the update.
    fn restore_previous_apps(&self) {
        let previous = self.apps_previous();
        if self.apps_next().exists() && previous.exists() {
            match self.apps.set(&previous) {
                Ok(()) => info!("the apps release from before the update is the target again"),
                Err(e) => error!("cannot restore the apps release from before the update: {e}"),
            }
        }
        let _ = std::fs::remove_file(self.apps_next());
    }

    fn forget_apps(&self) {
        let _ = std::fs::remove_file(self.apps_next());
        let _ = std::fs::remove_file(self.apps_previous());
    }
}

/// The updater's task: recovery at start, then requests one at a time;
/// an install runs beside it, so status calls and marks are answered.
pub async fn run(
    updater: Updater,
    mut requests: mpsc::Receiver<Request>,
    mut shutdown: watch::Receiver<bool>,
) {
    let updater = Arc::new(updater);
    updater.publish(&updater.load());
    let mut job: Option<tokio::task::JoinHandle<()>> = Some(tokio::spawn(resume(updater.clone())));
    loop {
        tokio::select! {
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
            Some(request) = requests.recv() => {
                let busy = job.as_ref().is_some_and(|j| !j.is_finished());
                match request {
                    Request::Install { source, force_downgrade, reboot, reply } => {
                        if busy {
                            let _ = reply.send(Err("an OS update is already in progress".to_owned()));
                            continue;
                        }
                        match begin(&updater, &source, force_downgrade).await {
                            Ok(started) => {
                                let _ = reply.send(Ok(()));
                                job = Some(tokio::spawn(write_and_switch(updater.clone(), started, reboot)));
                            }
                            Err(e) => {
                                warn!(source, "OS release refused: {e}");
                                let _ = reply.send(Err(e));
                            }
                        }
                    }
                    Request::MarkGood(reply) => { let _ = reply.send(mark(&updater, true)); }
                    Request::MarkBad(reply) => { let _ = reply.send(mark(&updater, false)); }
                    Request::Rollback(reply) => { let _ = reply.send(rollback(&updater)); }
                    Request::Reboot(reply) => {
                        let _ = reply.send(updater.rebooter.reboot(updater.boot.reboot_argument()).await);
                    }
                }
            }
        }
    }
    if let Some(job) = job {
        // A write in progress is abandoned: the record says Downloading and
        // the next start writes the image again.
        job.abort();
    }
}

/// What `begin` hands to the writer.
struct Started {
    record: Record,
    image: ImageSource,
    /// The image's chunk archive, when the release has one: the slot is then
    /// cloned from what the device holds, fetching only the missing chunks.
    archive: Option<ImageSource>,
    /// The release's binary patch from the running OS version, if any.
    patch: Option<PatchSource>,
    device: PathBuf,
}

/// A binary patch to fetch: where, and what the manifest says it is.
#[derive(Debug, Clone)]
struct PatchSource {
    location: ImageSource,
    size: u64,
    sha256: Digest,
}

#[derive(Debug, Clone)]
enum ImageSource {
    File(PathBuf),
    Url(String),
}

/// Reads and verifies the signed manifest, makes the target slot
/// unbootable and records `Downloading`. Nothing is changed on error.
async fn begin(updater: &Updater, source: &str, force_downgrade: bool) -> Result<Started, String> {
    let record = updater.load();
    if !matches!(record.state, State::Idle | State::Committed | State::RolledBack) {
        return Err(format!(
            "an OS update is under way (state {}); wait for it, or reboot to finish its trial",
            record.state
        ));
    }
    let booted = updater.booted()?;
    let target = booted.other();
    let envelope = fetch_manifest(updater, source).await?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let installed = updater.installed_version();
    let verified = containeros_trust::verify(
        &envelope,
        &updater.keys,
        &Checks {
            now,
            installed_version: (installed > 0).then_some(installed),
            allow_downgrade: force_downgrade,
        },
    )
    .map_err(|e| format!("{source}: {e}"))?;
    let manifest = verified.manifest;
    let os = manifest
        .os
        .as_ref()
        .ok_or_else(|| format!("{source}: release {} has no OS image", manifest.version))?;
    if force_downgrade && manifest.version <= installed {
        warn!(
            offered = manifest.version,
            installed, "installing an older OS release on request (force-downgrade)"
        );
    }
    let image = resolve(source, &os.path)?;
    let archive = os.archive.as_deref().map(|a| resolve(source, a)).transpose()?;
    let running = updater.running_os_version();
    let patch = match running.as_deref() {
        Some(running) => os
            .patches
            .iter()
            .find(|p| p.from_version == running)
            .map(|p| {
                Ok::<_, String>(PatchSource {
                    location: resolve(source, &p.path)?,
                    size: p.size,
                    sha256: p.sha256,
                })
            })
            .transpose()?,
        None => None,
    };
    updater.forget_apps();
    let _ = updater.reports.send(Report::FetchStarted);
    let _ = updater.reports.send(Report::Fetched(envelope.len() as u64));
    if let Some(apps) = &manifest.apps {
        stage_apps(updater, source, apps).await?;
    }
    let device = updater
        .slots
        .device(target, &updater.host)
        .map_err(|e| e.to_string())?;
    // An image larger than the slot is refused before anything changes.
    let slot_size = std::fs::File::open(&device)
        .and_then(|mut f| std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)))
        .map_err(|e| format!("cannot open slot {target} ({}): {e}", device.display()))?;
    if os.size > slot_size {
        return Err(format!(
            "{source}: the OS image ({} bytes) is larger than slot {target} ({}, {slot_size} bytes); \
             nothing was written",
            os.size,
            device.display()
        ));
    }
    // Before a byte is written: the bootloader must not boot the slot.
    updater
        .boot
        .mark_bad(target)
        .map_err(|e| format!("cannot disable slot {target} in the bootloader before writing it: {e}"))?;
    store::write_atomic(
        &updater.source_file(),
        source_text(&image, archive.as_ref(), patch.as_ref()).as_bytes(),
    )
    .map_err(|e| format!("cannot record the update source: {e}"))?;
    let record = updater.step(
        &record,
        Transition::Begin(Update {
            target,
            previous: booted,
            version: manifest.version,
            sha256: os.sha256,
            size: os.size,
            started: now,
            written: 0,
            boot_id: None,
        }),
    )?;
    info!(
        version = manifest.version,
        os_version = %os.version,
        slot = %target,
        device = %device.display(),
        signed_by = %verified.signed_by,
        running_os_version = running.as_deref().unwrap_or("unknown"),
        way = if patch.is_some() {
            "binary patch"
        } else if archive.is_some() {
            "chunk archive"
        } else {
            "whole image"
        },
        "installing OS release"
    );
    Ok(Started {
        record,
        image,
        archive,
        patch,
        device,
    })
}

/// What `source_file` keeps for a restart: the image's location, the
/// archive's on a second line, and the patch on a line of its own:
/// `patch <size> <sha256> <location>`.
fn source_text(image: &ImageSource, archive: Option<&ImageSource>, patch: Option<&PatchSource>) -> String {
    let mut text = format!("{}\n", image_text(image));
    if let Some(a) = archive {
        text.push_str(&format!("{}\n", image_text(a)));
    }
    if let Some(p) = patch {
        text.push_str(&format!(
            "patch {} {} {}\n",
            p.size,
            p.sha256,
            image_text(&p.location)
        ));
    }
    text
}

/// What [`source_text`] recorded.
type Sources = (ImageSource, Option<ImageSource>, Option<PatchSource>);

/// Reads back [`source_text`].
fn parse_source_text(text: &str) -> Result<Sources, String> {
    let location = |line: &str| {
        if is_url(line) {
            ImageSource::Url(line.to_owned())
        } else {
            ImageSource::File(PathBuf::from(line))
        }
    };
    let mut patch = None;
    let mut locations = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("patch ") {
            let mut parts = rest.splitn(3, ' ');
            let bad = || format!("the interrupted update's source names a bad patch: {line}");
            let size = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            let sha256 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            let at = parts.next().ok_or_else(bad)?;
            patch = Some(PatchSource {
                location: location(at),
                size,
                sha256,
            });
        } else {
            locations.push(location(line));
        }
    }
    let mut locations = locations.into_iter();
    let image = locations
        .next()
        .ok_or("the interrupted update's source is empty")?;
    Ok((image, locations.next(), patch))
}

fn image_text(image: &ImageSource) -> String {
    match image {
        ImageSource::File(p) => p.display().to_string(),
        ImageSource::Url(u) => u.clone(),
    }
}

fn is_url(source: &str) -> bool {
    source.starts_with("https://") || source.starts_with("http://")
}

async fn fetch_manifest(updater: &Updater, source: &str) -> Result<Vec<u8>, String> {
    const LIMIT: u64 = 1 << 20;
    if is_url(source) {
        let client = updater.client()?;
        let response = client
            .get(source)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("cannot fetch the release manifest {source}: {e}"))?;
        if response.content_length().is_some_and(|n| n > LIMIT) {
            return Err(format!("{source}: a release manifest is at most {LIMIT} bytes"));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("cannot fetch the release manifest {source}: {e}"))?;
        Ok(bytes.to_vec())
    } else {
        let path = Path::new(source);
        if !path.is_absolute() {
            return Err(format!("{source}: give an https:// URL or an absolute path"));
        }
        let size = std::fs::metadata(path)
            .map_err(|e| format!("cannot read the release manifest {source}: {e}"))?
            .len();
        if size > LIMIT {
            return Err(format!("{source}: a release manifest is at most {LIMIT} bytes"));
        }
        std::fs::read(path).map_err(|e| format!("cannot read the release manifest {source}: {e}"))
    }
}

/// Fetches the release's Compose file, checks its size, SHA-256 and
/// content, and keeps it (and the current apps target) for the trial.
async fn stage_apps(
    updater: &Updater,
    source: &str,
    apps: &containeros_trust::AppsRef,
) -> Result<(), String> {
    const LIMIT: u64 = 1 << 20;
    let location = resolve(source, &apps.path)?;
    let shown = image_text(&location);
    if apps.size > LIMIT {
        return Err(format!("{shown}: an apps release is at most {LIMIT} bytes"));
    }
    let bytes = match &location {
        ImageSource::File(path) => {
            std::fs::read(path).map_err(|e| format!("cannot read the apps release {shown}: {e}"))?
        }
        ImageSource::Url(url) => {
            let bytes = fetch_manifest(updater, url).await?;
            let _ = updater.reports.send(Report::Fetched(bytes.len() as u64));
            bytes
        }
    };
    if bytes.len() as u64 != apps.size || Digest::of(&bytes) != apps.sha256 {
        return Err(format!(
            "the apps release {shown} is not the one the manifest signs ({} bytes, sha256 {}; expected {} \
             bytes, sha256 {})",
            bytes.len(),
            Digest::of(&bytes),
            apps.size,
            apps.sha256
        ));
    }
    let next = updater.apps_next();
    store::write_atomic(&next, &bytes).map_err(|e| format!("cannot keep the apps release: {e}"))?;
    if let Err(e) = updater.apps.check(&next) {
        updater.forget_apps();
        return Err(format!("the release's apps ({shown}): {e}"));
    }
    if let Some(current) = updater.apps.current() {
        let text = std::fs::read(&current)
            .map_err(|e| format!("cannot read the current apps release {}: {e}", current.display()))?;
        store::write_atomic(&updater.apps_previous(), &text)
            .map_err(|e| format!("cannot keep the current apps release: {e}"))?;
    }
    Ok(())
}

/// The image's location: the manifest's `os.path`, relative to the
/// manifest's own location unless absolute.
fn resolve(source: &str, path: &str) -> Result<ImageSource, String> {
    if is_url(path) {
        return Ok(ImageSource::Url(path.to_owned()));
    }
    if is_url(source) {
        let base = source.rsplit_once('/').map_or(source, |(b, _)| b);
        return Ok(ImageSource::Url(format!(
            "{base}/{}",
            path.trim_start_matches('/')
        )));
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Ok(ImageSource::File(p.to_owned()));
    }
    let dir = Path::new(source).parent().unwrap_or(Path::new("/"));
    Ok(ImageSource::File(dir.join(p)))
}

/// Streams the image into the slot, then verifies and switches.
async fn write_and_switch(updater: Arc<Updater>, started: Started, reboot: bool) {
    let Started {
        record,
        image,
        archive,
        patch,
        device,
    } = started;
    let result = write(
        &updater,
        record,
        &image,
        archive.as_ref(),
        patch.as_ref(),
        &device,
    )
    .await;
    finish_switch(&updater, result, reboot).await;
}

async fn finish_switch(updater: &Updater, result: Result<Record, String>, reboot: bool) {
    match result {
        Ok(record) => {
            let slot = record
                .update
                .as_ref()
                .map(|u| u.target.to_string())
                .unwrap_or_default();
            updater.completed(
                true,
                record.state,
                format!("slot {slot} holds the new OS and boots next on trial; reboot to try it"),
            );
            if reboot {
                reboot_until_taken(
                    updater,
                    updater.boot.reboot_argument(),
                    "the new slot",
                    State::PendingReboot,
                )
                .await;
            }
        }
        Err(e) => {
            updater.forget_apps();
            let record = updater.load();
            let record = match updater.step(&record, Transition::Abort { error: e.clone() }) {
                Ok(r) => r,
                Err(_) => record,
            };
            updater.completed(false, record.state, format!("OS update failed: {e}"));
        }
    }
}

async fn write(
    updater: &Updater,
    record: Record,
    image: &ImageSource,
    archive: Option<&ImageSource>,
    patch: Option<&PatchSource>,
    device: &Path,
) -> Result<Record, String> {
    let update = record.update.clone().ok_or("the update state names no update")?;
    let expected = Expected {
        size: update.size,
        sha256: update.sha256,
    };
    // Built once; its error (a bad `channel.ca_file`) matters only for URLs.
    let client = updater.client();
    fn source<'a>(
        location: &'a ImageSource,
        client: &'a Result<reqwest::Client, String>,
    ) -> Result<Source<'a>, String> {
        Ok(match location {
            ImageSource::File(path) => Source::File(path.as_path()),
            ImageSource::Url(url) => Source::Url {
                client: client.as_ref().map_err(Clone::clone)?,
                url: url.as_str(),
            },
        })
    }
    let reports = updater.reports.clone();
    let mut last = (String::new(), 0u64);
    let mut progress = move |state: &str, done: u64, total: u64| {
        // A report per MiB at most, and one at each change of step.
        if done == total || done >= last.1 + (1 << 20) || done < last.1 || state != last.0 {
            last = (state.to_owned(), done);
            let _ = reports.send(Report::Progress {
                state: state.to_owned(),
                done,
                total,
            });
        }
    };

    if let Some(patch) = patch {
        match apply_patch(updater, patch, &client, &update, device, &expected, &mut progress).await {
            Ok(()) => {
                let record = updater.step(&record, Transition::Written)?;
                let record = updater.step(&record, Transition::Verified)?;
                return switch(updater, record);
            }
            Err(e) => warn!(
                patch = %image_text(&patch.location),
                "the binary patch failed ({e}); {} instead",
                if archive.is_some() {
                    "cloning from the chunk archive"
                } else {
                    "downloading the whole image"
                }
            ),
        }
    }

    if let Some(archive) = archive {
        // The running slot is the seed: the new image is mostly in it.
        let seed = updater
            .slots
            .device(update.previous, &updater.host)
            .map_err(|e| e.to_string())?;
        let seeds = [containeros_delta::Seed::new(&seed)];
        let cloned = containeros_delta::clone_into(
            source(archive, &client)?,
            &seeds,
            device,
            &expected,
            &Retry::default(),
            &mut |p: containeros_delta::Progress| {
                let state = match p.phase {
                    containeros_delta::Phase::ScanTarget | containeros_delta::Phase::ScanSeed(_) => {
                        "scanning"
                    }
                    containeros_delta::Phase::Fetch => State::Downloading.name(),
                    containeros_delta::Phase::Verify => "verifying",
                };
                progress(state, p.done, p.total);
            },
        )
        .await;
        match cloned {
            Ok(report) => {
                let _ = updater.reports.send(Report::Fetched(report.fetched_bytes));
                info!(
                    fetched = report.fetched_bytes,
                    fetched_chunks = report.fetched_chunks,
                    reused = report.reused_bytes,
                    reused_chunks = report.reused_chunks,
                    resumes = report.resumes,
                    "OS image cloned from the running slot and the delta; its SHA-256 matches the manifest"
                );
                let record = updater.step(&record, Transition::Written)?;
                let record = updater.step(&record, Transition::Verified)?;
                return switch(updater, record);
            }
            Err(e) => warn!(
                archive = %image_text(archive),
                "the delta update failed ({e}); downloading the whole image instead"
            ),
        }
    }

    let report = containeros_update::install(
        source(image, &client)?,
        device,
        &expected,
        &Retry::default(),
        &mut |done, total| progress(State::Downloading.name(), done, total),
    )
    .await
    .map_err(|e| e.to_string())?;
    let _ = updater.reports.send(Report::Fetched(report.fetched));
    info!(
        written = report.written,
        fetched = report.fetched,
        resumes = report.resumes,
        "OS image written and its SHA-256 matches the manifest"
    );
    let record = updater.step(&record, Transition::Written)?;
    // The installer hashed every byte it wrote and flushed them.
    let record = updater.step(&record, Transition::Verified)?;
    switch(updater, record)
}

/// Downloads the release's binary patch to the state directory (resuming
/// with ranges, checked against the manifest's size and SHA-256) and
/// applies it with the running slot as its source. On `Ok` the slot holds
/// the image, checked and flushed; the patch file is removed either way.
async fn apply_patch(
    updater: &Updater,
    patch: &PatchSource,
    client: &Result<reqwest::Client, String>,
    update: &Update,
    device: &Path,
    expected: &Expected,
    progress: &mut (dyn FnMut(&str, u64, u64) + Send),
) -> Result<(), String> {
    let file = updater.patch_file();
    let result = async {
        let source = match &patch.location {
            ImageSource::File(path) => Source::File(path.as_path()),
            ImageSource::Url(url) => Source::Url {
                client: client.as_ref().map_err(Clone::clone)?,
                url: url.as_str(),
            },
        };
        // The installer writes into an existing file of at least the size.
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(patch.size))
            .map_err(|e| format!("cannot make room for the patch in {}: {e}", file.display()))?;
        let fetched = containeros_update::install(
            source,
            &file,
            &Expected {
                size: patch.size,
                sha256: patch.sha256,
            },
            &Retry::default(),
            &mut |done, total| progress(State::Downloading.name(), done, total),
        )
        .await
        .map_err(|e| e.to_string())?;
        let _ = updater.reports.send(Report::Fetched(fetched.fetched));
        let seed = updater
            .slots
            .device(update.previous, &updater.host)
            .map_err(|e| e.to_string())?;
        let applied = containeros_delta::apply_patch(&file, &seed, device, expected, &mut |done| {
            progress("patching", done, expected.size);
        })
        .await
        .map_err(|e| e.to_string())?;
        info!(
            fetched = fetched.fetched,
            resumes = fetched.resumes,
            windows = applied.windows,
            "OS image made from the running slot and the binary patch; its SHA-256 matches the manifest"
        );
        Ok(())
    }
    .await;
    let _ = std::fs::remove_file(&file);
    result
}

/// Makes the verified target the next boot and records `PendingReboot`.
fn switch(updater: &Updater, record: Record) -> Result<Record, String> {
    let target = record.update.as_ref().map(|u| u.target).ok_or("no update")?;
    updater.boot.make_next(target).map_err(|e| {
        format!("cannot make slot {target} the next boot; the running slot stays the default: {e}")
    })?;
    updater.step(
        &record,
        Transition::PendingReboot {
            boot_id: updater.boot_id(),
        },
    )
}

/// Re-reads `size` bytes of `device` and compares their SHA-256.
fn verify_slot(device: &Path, size: u64, sha256: &Digest) -> Result<(), String> {
    use std::io::Read as _;
    let mut file =
        std::fs::File::open(device).map_err(|e| format!("cannot read slot {}: {e}", device.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut left = size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = file
            .read(&mut buf[..want])
            .map_err(|e| format!("cannot read slot {}: {e}", device.display()))?;
        if n == 0 {
            return Err(format!("slot {} is shorter than the image", device.display()));
        }
        ctx.update(&buf[..n]);
        left -= n as u64;
    }
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(ctx.finish().as_ref());
    let got = Digest(bytes);
    if &got == sha256 {
        Ok(())
    } else {
        Err(format!(
            "slot {} does not hold the image (sha256 {got}, expected {sha256})",
            device.display()
        ))
    }
}

/// After a (re)start: whatever the record and this boot say.
async fn resume(updater: Arc<Updater>) {
    let record = updater.load();
    if record.state == State::Idle {
        return;
    }
    let booted = match updater.booted() {
        Ok(b) => b,
        Err(e) => {
            error!("an OS update is recorded ({}) but {e}", record.state);
            return;
        }
    };
    let Some(target) = record.update.as_ref().map(|u| u.target) else {
        return;
    };
    let action = recover(&record, booted, &updater.boot_id(), updater.boot.view(target));
    info!(state = %record.state, slot = %booted, ?action, "resuming the OS update");
    match action {
        Action::Nothing | Action::Finished { .. } => {}
        Action::Install {
            slot, disable_first, ..
        } => {
            let result = async {
                if disable_first {
                    updater.boot.mark_bad(slot)?;
                }
                let source = std::fs::read_to_string(updater.source_file())
                    .map_err(|e| format!("the interrupted update's source is lost: {e}"))?;
                let (image, archive, patch) = parse_source_text(&source)?;
                let device = updater
                    .slots
                    .device(slot, &updater.host)
                    .map_err(|e| e.to_string())?;
                info!(source = %image_text(&image), "writing the interrupted OS image again");
                write(
                    &updater,
                    record.clone(),
                    &image,
                    archive.as_ref(),
                    patch.as_ref(),
                    &device,
                )
                .await
            }
            .await;
            finish_switch(&updater, result, false).await;
        }
        Action::Verify { slot, disable_first } => {
            let result = (|| {
                if disable_first {
                    updater.boot.mark_bad(slot)?;
                }
                let u = record.update.as_ref().ok_or("no update")?;
                let device = updater
                    .slots
                    .device(slot, &updater.host)
                    .map_err(|e| e.to_string())?;
                verify_slot(&device, u.size, &u.sha256)?;
                let record = updater.step(&record, Transition::Verified)?;
                switch(&updater, record)
            })();
            finish_switch(&updater, result, false).await;
        }
        Action::MakeNext { .. } => {
            let result = switch(&updater, record);
            finish_switch(&updater, result, false).await;
        }
        Action::Reboot { slot } => {
            info!(%slot, "slot {slot} boots next on trial; waiting for a reboot");
        }
        Action::CheckHealth { slot } => trial(&updater, record, slot).await,
        Action::RollBack {
            bad,
            good,
            reboot,
            reason,
        } => roll_back(&updater, &record, bad, good, reboot, reason).await,
        Action::Abandon { reason, disable } => {
            updater.restore_previous_apps();
            if let Some(slot) = disable
                && let Err(e) = updater.boot.mark_bad(slot)
            {
                warn!("cannot disable slot {slot}: {e}");
            }
            let record = updater
                .step(
                    &record,
                    Transition::Abort {
                        error: reason.clone(),
                    },
                )
                .unwrap_or(record);
            updater.completed(false, record.state, format!("OS update abandoned: {reason}"));
        }
    }
}

/// The trial boot of `slot`: healthy within the deadline → commit, else
/// roll back and reboot.
async fn trial(updater: &Updater, record: Record, slot: Slot) {
    let record = if record.state == State::Trying {
        record
    } else {
        match updater.step(&record, Transition::Trying) {
            Ok(r) => r,
            Err(e) => {
                error!("{e}");
                return;
            }
        }
    };
    if let Err(e) = updater.start_next_apps() {
        let previous = record.update.as_ref().map_or(slot.other(), |u| u.previous);
        let reason = format!("the update's apps release cannot start: {e}");
        roll_back(updater, &record, slot, previous, true, reason).await;
        return;
    }
    let deadline = tokio::time::Instant::now() + updater.health_timeout;
    info!(%slot, timeout = ?updater.health_timeout, "trial boot: waiting for the system to be healthy");
    let mut last_problem;
    loop {
        last_problem = match updater.health.check().await {
            Ok(()) => run_health_dir(&updater.health_dir).await.err(),
            Err(e) => Some(e),
        };
        if last_problem.is_none() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let previous = record.update.as_ref().map_or(slot.other(), |u| u.previous);
    match last_problem {
        None => {
            let committed = updater
                .boot
                .mark_good(slot)
                .and_then(|()| updater.step(&record, Transition::Commit));
            match committed {
                Ok(record) => {
                    updater.forget_apps();
                    let version = record.update.as_ref().map_or(0, |u| u.version);
                    if let Err(e) = store::write_atomic(
                        &updater.dir.join("installed-version"),
                        version.to_string().as_bytes(),
                    ) {
                        warn!("cannot record the installed version: {e}");
                    }
                    updater.completed(
                        true,
                        record.state,
                        format!("slot {slot} is healthy and committed (release {version})"),
                    );
                }
                Err(e) => {
                    // Not committed: the try counter runs out and the
                    // bootloader falls back by itself.
                    error!("cannot commit slot {slot}: {e}");
                }
            }
        }
        Some(problem) => {
            let reason = format!(
                "slot {slot} was not healthy within {:?}: {problem}",
                updater.health_timeout
            );
            roll_back(updater, &record, slot, previous, true, reason).await;
        }
    }
}

async fn roll_back(updater: &Updater, record: &Record, bad: Slot, good: Slot, reboot: bool, reason: String) {
    updater.restore_previous_apps();
    if let Err(e) = updater.boot.mark_bad(bad) {
        error!("cannot mark slot {bad} bad: {e}");
    }
    if let Err(e) = updater.boot.make_next(good) {
        error!("cannot make slot {good} the default again: {e}");
    }
    let record = match record.state {
        State::RolledBack => record.clone(),
        _ => updater
            .step(
                record,
                Transition::RollBack {
                    reason: reason.clone(),
                },
            )
            .unwrap_or_else(|_| record.clone()),
    };
    updater.completed(false, record.state, format!("OS update rolled back: {reason}"));
    if reboot {
        info!(slot = %good, "rebooting into slot {good}");
        reboot_until_taken(updater, None, &format!("slot {good}"), State::RolledBack).await;
    }
}

/// A reboot the updater asks for by itself: into a new slot after an
/// install, or back to the good slot after a failed trial. A refusal
/// (logind's answer to an app holding a block inhibitor, most often) is
/// honoured: the reboot is asked again every `reboot_retry` while the
/// update is still `waiting_in`, so the device neither reboots under the
/// app nor stays where it is for good.
async fn reboot_until_taken(
    updater: &Updater,
    argument: Option<&'static str>,
    into: &str,
    waiting_in: State,
) {
    let mut refused = None;
    loop {
        match updater.rebooter.reboot(argument).await {
            Ok(()) => {
                if refused.is_some() {
                    info!("the reboot into {into} was taken this time");
                }
                return;
            }
            Err(e) => {
                if refused.as_ref() != Some(&e) {
                    warn!(
                        "cannot reboot into {into} yet: {e}; asking again every {:?}",
                        updater.reboot_retry
                    );
                    refused = Some(e);
                }
            }
        }
        tokio::time::sleep(updater.reboot_retry).await;
        if updater.load().state != waiting_in {
            return;
        }
    }
}

/// Runs every executable in `dir`, in name order; all must exit 0 within
/// 60 s each. A missing directory is no check.
async fn run_health_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut checks: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .collect();
    checks.sort();
    for check in checks {
        let run = tokio::process::Command::new(&check)
            .stdin(std::process::Stdio::null())
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .map_err(|_| format!("health check {} did not finish within 60 s", check.display()))?
            .map_err(|e| format!("cannot run health check {}: {e}", check.display()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "health check {} failed ({}){}",
                check.display(),
                out.status,
                if stderr.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", stderr.trim())
                }
            ));
        }
    }
    Ok(())
}

/// MarkGood / MarkBad of the running slot; a good mark during a trial
/// commits it.
fn mark(updater: &Updater, good: bool) -> Result<String, String> {
    let booted = updater.booted()?;
    if good {
        updater.boot.mark_good(booted)?;
        let record = updater.load();
        if record.state == State::Trying && record.update.as_ref().is_some_and(|u| u.target == booted) {
            updater.step(&record, Transition::Commit)?;
        }
        Ok(format!("slot {booted} marked good"))
    } else {
        updater.boot.mark_bad(booted)?;
        Ok(format!(
            "slot {booted} marked bad; the next boot falls back to slot {}",
            booted.other()
        ))
    }
}

/// Makes the other slot the default again, if the bootloader holds it good.
fn rollback(updater: &Updater) -> Result<String, String> {
    let booted = updater.booted()?;
    let other = booted.other();
    if updater.boot.view(other) == TargetBoot::Disabled {
        return Err(format!(
            "slot {other} is marked bad (or being written): there is nothing to roll back to"
        ));
    }
    let record = updater.load();
    if matches!(
        record.state,
        State::Downloading | State::Written | State::Verified
    ) {
        return Err(format!(
            "an OS update is writing slot {other} (state {}); wait for it to end",
            record.state
        ));
    }
    updater.boot.make_next(other)?;
    Ok(format!("slot {other} boots next; reboot to roll back"))
}

/// "auto": partition 2 (A) or 3 (B) of the disk the running root is on.
fn auto_device(slot: &str) -> Result<String, String> {
    let number = match slot {
        "A" => 2,
        _ => 3,
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let majmin = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .and_then(|l| l.split(' ').nth(2))
        .ok_or("no mount on / in /proc/self/mountinfo")?;
    // /sys/dev/block/M:m -> .../block/<disk>/<partition>
    let part = std::fs::canonicalize(format!("/sys/dev/block/{majmin}"))
        .map_err(|e| format!("the root device {majmin} is not in /sys/dev/block: {e}"))?;
    let disk = part.parent().ok_or("the root device has no disk")?;
    if !part.join("partition").exists() {
        return Err(format!(
            "the root filesystem is not on a partition ({}); set update.slot_a and update.slot_b",
            part.display()
        ));
    }
    for entry in std::fs::read_dir(disk)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
    {
        let n = std::fs::read_to_string(entry.path().join("partition")).unwrap_or_default();
        if n.trim() == number.to_string() {
            return Ok(format!("/dev/{}", entry.file_name().to_string_lossy()));
        }
    }
    Err(format!(
        "disk {} has no partition {number}; set update.slot_a and update.slot_b",
        disk.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_update_source_record_round_trips_with_and_without_a_patch() {
        let image = ImageSource::Url("https://updates.example/releases/2/os/rootfs.img".into());
        let archive = ImageSource::Url("https://updates.example/releases/2/os/rootfs.cba".into());
        let patch = PatchSource {
            location: ImageSource::File(PathBuf::from("/media/usb/releases/2/os/from-1.0.patch")),
            size: 1234,
            sha256: Digest::of(b"patch"),
        };
        let text = source_text(&image, Some(&archive), Some(&patch));
        let (i, a, p) = parse_source_text(&text).expect("parse");
        assert_eq!(image_text(&i), image_text(&image));
        assert_eq!(a.as_ref().map(image_text), Some(image_text(&archive)));
        let p = p.expect("the patch is kept");
        assert_eq!((p.size, p.sha256), (1234, patch.sha256));
        assert_eq!(image_text(&p.location), image_text(&patch.location));

        // Records written before patches existed read as before.
        let (i, a, p) = parse_source_text("/data/v2.img\n").expect("parse");
        assert_eq!(image_text(&i), "/data/v2.img");
        assert!(a.is_none() && p.is_none());
        let text = source_text(&image, None, Some(&patch));
        let (_, a, p) = parse_source_text(&text).expect("parse");
        assert!(a.is_none() && p.is_some(), "{text}");
        assert!(parse_source_text("x\npatch 12 nothex y\n").is_err());
    }
}
