//! The configuration model. Defaults here are the documented defaults: the
//! shipped sample (`agent/dist/agent.toml`) is tested to equal them.

use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{ConfigError, Duration, Loaded};

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub agent: AgentSection,
    pub dbus: DbusSection,
    pub engine: EngineSection,
    pub apps: AppsSection,
    pub update: UpdateSection,
    pub channel: ChannelSection,
    pub provision: ProvisionSection,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvisionSection {
    /// The provisioning file on the boot partition's mount, imported at each
    /// start when it changed; empty: no provisioning.
    pub file: String,
    /// The persistent host name file, rewritten in place only when
    /// systemd-hostnamed cannot replace it (read-only `/etc`).
    pub hostname_file: AbsPath,
    /// Apply the network settings through NetworkManager's D-Bus API.
    pub network: bool,
    /// Drop-in directory systemd-timesyncd reads (time servers), on tmpfs.
    pub timesyncd_dir: AbsPath,
    /// Where the SSH authorized keys are written; sshd is started only when
    /// the provisioning file lists keys.
    pub authorized_keys: AbsPath,
    /// The systemd unit that runs sshd; empty: SSH is not managed.
    #[serde(deserialize_with = "optional_unit::deserialize")]
    pub ssh_unit: Option<UnitName>,
}

impl Default for ProvisionSection {
    fn default() -> Self {
        Self {
            file: "/boot/firmware/containeros/config.toml".into(),
            hostname_file: AbsPath::new("/etc/hostname"),
            network: true,
            timesyncd_dir: AbsPath::new("/run/systemd/timesyncd.conf.d"),
            authorized_keys: AbsPath::new("/data/containeros/ssh/authorized_keys"),
            ssh_unit: Some(UnitName("sshd.socket".into())),
        }
    }
}

/// What the agent does with a newer release it finds on its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelMode {
    /// Apply it: apps at once, an OS update written and rebooted into
    /// (inside the maintenance window).
    #[default]
    Auto,
    /// Apply apps; write an OS update into the inactive slot, but leave the
    /// reboot to a person (`containeros os reboot`).
    DownloadOnly,
    /// Only report it.
    Manual,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelSection {
    /// The channel: an `https://` URL or a directory (offline, USB) holding
    /// `manifest.json`; empty: no channel.
    pub url: String,
    pub mode: ChannelMode,
    /// Time between two polls (varied by ±25 % per device).
    pub interval: Duration,
    /// `HH:MM-HH:MM` in UTC when OS updates may reboot the device; empty:
    /// any time.
    pub maintenance_window: String,
    /// Extra CA certificate (PEM) the channel's server is trusted by.
    pub ca_file: String,
}

impl Default for ChannelSection {
    fn default() -> Self {
        Self {
            url: String::new(),
            mode: ChannelMode::Auto,
            interval: Duration::from_secs(3600),
            maintenance_window: String::new(),
            ca_file: String::new(),
        }
    }
}

/// How the A/B root slots are switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bootloader {
    /// The U-Boot environment described by `fw_env_config`.
    #[default]
    UBoot,
    /// The GRUB environment block `grubenv`.
    Grub,
    /// Raspberry Pi firmware tryboot (`autoboot`).
    Tryboot,
    /// No A/B slots: OS updates are refused.
    None,
}

impl fmt::Display for Bootloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Bootloader::UBoot => "u-boot",
            Bootloader::Grub => "grub",
            Bootloader::Tryboot => "tryboot",
            Bootloader::None => "none",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateSection {
    pub bootloader: Bootloader,
    /// libubootenv's configuration (bootloader = "u-boot").
    pub fw_env_config: AbsPath,
    /// The GRUB environment block (bootloader = "grub").
    pub grubenv: AbsPath,
    /// The firmware's autoboot.txt (bootloader = "tryboot").
    pub autoboot: AbsPath,
    /// Slot A's and B's block devices: a path, `PARTLABEL=`, `PARTUUID=`
    /// or `LABEL=`; `"auto"`: partitions 2 and 3 of the disk the running
    /// root is on (the layer's layout).
    pub slot_a: String,
    pub slot_b: String,
    /// Boots a new slot gets before the bootloader falls back.
    pub boot_attempts: NonZeroU32,
    /// Trusted release-signing public keys (base64 ed25519); more than one
    /// while keys are rotated. None: every OS release is refused.
    pub trusted_keys: Vec<String>,
    /// How long a new slot has to prove healthy after booting it.
    pub health_timeout: Duration,
    /// How soon an automatic reboot into a new slot is asked again after
    /// it was refused (an app's block inhibitor, most often).
    pub reboot_retry: Duration,
    /// Drop-in health checks: every executable here must exit 0.
    pub health_dir: AbsPath,
    /// Where the kernel command line (`containeros.slot=`) and the boot id
    /// are read; other paths only where /proc is not the device's own.
    pub cmdline: AbsPath,
    pub boot_id: AbsPath,
}

impl Default for UpdateSection {
    fn default() -> Self {
        Self {
            bootloader: Bootloader::UBoot,
            fw_env_config: AbsPath::new("/etc/fw_env.config"),
            grubenv: AbsPath::new("/boot/efi/EFI/BOOT/grubenv"),
            autoboot: AbsPath::new("/boot/firmware/autoboot.txt"),
            slot_a: "auto".into(),
            slot_b: "auto".into(),
            boot_attempts: nonzero(3),
            trusted_keys: Vec::new(),
            health_timeout: Duration::from_secs(600),
            reboot_retry: Duration::from_secs(60),
            health_dir: AbsPath::new("/etc/containeros/health.d"),
            cmdline: AbsPath::new("/proc/cmdline"),
            boot_id: AbsPath::new("/proc/sys/kernel/random/boot_id"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppsSection {
    /// Accept images referenced by tag only (a development device); a
    /// committed release pins every image by digest.
    pub development: bool,
    /// Refuse to pull images when the engine's storage has less free space
    /// than this many MiB (the running release keeps running).
    pub min_free_mib: u64,
    /// Host directory (on tmpfs) under which each service gets
    /// `<release>/<service>/`, mounted at `/run/containeros` in its
    /// containers; an `update.lock` file there defers the service's update.
    pub lock_dir: AbsPath,
    /// How long a held update lock may defer an update, unless the release
    /// sets `x-containeros.update_lock_timeout`.
    pub update_lock_timeout: Duration,
}

impl Default for AppsSection {
    fn default() -> Self {
        Self {
            development: false,
            min_free_mib: 64,
            lock_dir: AbsPath::new("/run/containeros/locks"),
            update_lock_timeout: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSection {
    /// Directory on the data partition for the agent's state and the
    /// override configuration file.
    pub state_dir: AbsPath,
    /// tracing filter: a level or directives (`info,containeros_engine=debug`).
    pub log_level: LogFilter,
    /// os-release file the OS version (VERSION_ID) is read from.
    pub os_release: AbsPath,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            state_dir: AbsPath::new("/data/containeros"),
            log_level: LogFilter("info".into()),
            os_release: AbsPath::new("/etc/os-release"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DbusSection {
    pub bus: Bus,
}

/// Which message bus the agent serves its API on (and reaches systemd on).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Bus {
    #[default]
    System,
    /// A D-Bus address, e.g. `unix:path=/run/containeros/bus`.
    Address(String),
}

impl<'de> Deserialize<'de> for Bus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "system" {
            return Ok(Bus::System);
        }
        // Every D-Bus address is `transport:key=value,...`.
        match s.split_once(':') {
            Some((transport, rest))
                if !transport.is_empty()
                    && transport.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && rest.contains('=') =>
            {
                Ok(Bus::Address(s))
            }
            _ => Err(serde::de::Error::custom(format!(
                "\"{s}\" is neither \"system\" nor a D-Bus address such as \"unix:path=/run/bus\""
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// A Docker Engine API on a Unix socket (moby/docker, balena-engine,
    /// podman's compat API).
    #[default]
    Docker,
    /// The agent's built-in OCI engine driving `runtime` (crun/runc).
    Native,
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineKind::Docker => "docker",
            EngineKind::Native => "native",
        })
    }
}

/// Where the native engine sends container output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NativeLogs {
    /// journald when its socket (`native_journal_socket`) exists, else a
    /// file.
    #[default]
    Auto,
    /// journald under the service's name; a container does not start
    /// without it.
    Journald,
    /// A file per container in `native_run_dir`.
    File,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    pub kind: EngineKind,
    pub socket: AbsPath,
    pub runtime: AbsPath,
    /// The native engine's persistent directory (kind = "native"): image
    /// store, containers, named volumes, networks.
    pub native_dir: AbsPath,
    /// The native engine's runtime directory on a tmpfs (kind = "native"):
    /// the OCI runtime's state and container logs.
    pub native_run_dir: AbsPath,
    /// Registry credentials of the native engine: a Docker `config.json`
    /// (`docker login` writes one); none when the file does not exist.
    pub native_auth_file: AbsPath,
    /// Where the native engine sends container output.
    pub native_logs: NativeLogs,
    /// journald's stdout stream socket (a journal namespace's
    /// `/run/systemd/journal.<namespace>/stdout` works too).
    pub native_journal_socket: AbsPath,
    /// The engine's systemd unit; `None` (empty in the file): never restart.
    #[serde(deserialize_with = "optional_unit::deserialize")]
    pub unit: Option<UnitName>,
    pub check_interval: Duration,
    pub check_timeout: Duration,
    pub failures_before_restart: NonZeroU32,
    pub restart_backoff: Duration,
    pub restart_backoff_max: Duration,
    pub max_restarts: NonZeroU32,
    /// The engine's data-root (kind = "docker"); read by store recovery.
    pub data_root: AbsPath,
    /// When the engine stays down after `max_restarts` restarts, move its
    /// store aside (keeping named volumes), start it empty and re-create the
    /// release from the registry.
    pub recover_store: bool,
}

const fn nonzero(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => panic!("zero"),
    }
}

impl Default for EngineSection {
    fn default() -> Self {
        Self {
            kind: EngineKind::Docker,
            socket: AbsPath::new("/run/docker.sock"),
            runtime: AbsPath::new("/usr/bin/crun"),
            native_dir: AbsPath::new("/data/containeros/native"),
            native_run_dir: AbsPath::new("/run/containeros/native"),
            native_auth_file: AbsPath::new("/data/containeros/registry-auth.json"),
            native_logs: NativeLogs::Auto,
            native_journal_socket: AbsPath::new("/run/systemd/journal/stdout"),
            unit: Some(UnitName("docker.service".into())),
            check_interval: Duration::from_secs(10),
            check_timeout: Duration::from_secs(5),
            failures_before_restart: nonzero(3),
            restart_backoff: Duration::from_secs(5),
            restart_backoff_max: Duration::from_secs(300),
            max_restarts: nonzero(5),
            data_root: AbsPath::new("/data/docker"),
            recover_store: false,
        }
    }
}

impl Config {
    /// Rules that span several keys, checked on the merged configuration.
    pub(crate) fn validate(&self, loaded: &Loaded) -> Result<(), ConfigError> {
        let e = &self.engine;
        let located = |key: &str, message: String, hint: &str| {
            let at = loaded.locate(key);
            let path = at
                .as_ref()
                .map(|l| l.path.clone())
                .or_else(|| loaded.sources.last().map(|s| s.path.clone()))
                .unwrap_or_default();
            ConfigError::invalid_at(&path, at.map(|l| (l.line, l.column)), Some(key), &message, hint)
        };
        if !self.provision.file.is_empty() && !self.provision.file.starts_with('/') {
            return Err(located(
                "provision.file",
                format!("\"{}\" is not an absolute path", self.provision.file),
                "use the file's path on the boot partition's mount, e.g. \"/boot/firmware/containeros/config.toml\", or \"\" for none",
            ));
        }
        if !self.channel.maintenance_window.is_empty()
            && maintenance_window(&self.channel.maintenance_window).is_none()
        {
            return Err(located(
                "channel.maintenance_window",
                format!("\"{}\" is not a time window", self.channel.maintenance_window),
                "write it as \"HH:MM-HH:MM\" in UTC, e.g. \"02:00-05:00\", or \"\" for any time",
            ));
        }
        if self.channel.interval.get() < std::time::Duration::from_secs(10) {
            return Err(located(
                "channel.interval",
                format!("{} is too short for polling a server", self.channel.interval),
                "use at least \"10s\"",
            ));
        }
        if e.check_interval.get() < std::time::Duration::from_secs(1) {
            return Err(located(
                "engine.check_interval",
                format!(
                    "{} is too short: pinging the engine more than once a second wastes CPU",
                    e.check_interval
                ),
                "use at least \"1s\"",
            ));
        }
        if e.check_timeout.get().is_zero() || e.check_timeout > e.check_interval {
            return Err(located(
                "engine.check_timeout",
                format!(
                    "{} must be more than 0 and at most engine.check_interval ({})",
                    e.check_timeout, e.check_interval
                ),
                "lower engine.check_timeout or raise engine.check_interval",
            ));
        }
        if e.restart_backoff.get().is_zero() {
            return Err(located(
                "engine.restart_backoff",
                "must be more than 0".into(),
                "use e.g. \"5s\"",
            ));
        }
        if e.restart_backoff > e.restart_backoff_max {
            return Err(located(
                "engine.restart_backoff_max",
                format!(
                    "{} is less than engine.restart_backoff ({})",
                    e.restart_backoff_max, e.restart_backoff
                ),
                "raise engine.restart_backoff_max or lower engine.restart_backoff",
            ));
        }
        Ok(())
    }
}

/// An absolute path (relative paths in a daemon's config depend on the
/// working directory systemd happens to give it, so they are refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsPath(PathBuf);

impl AbsPath {
    fn new(p: &str) -> Self {
        Self(PathBuf::from(p))
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl<'de> Deserialize<'de> for AbsPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.starts_with('/') && !s.contains('\0') {
            Ok(AbsPath(PathBuf::from(s)))
        } else {
            Err(serde::de::Error::custom(format!(
                "\"{s}\" is not an absolute path: start it with /"
            )))
        }
    }
}

/// A systemd unit name such as `docker.service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitName(String);

impl UnitName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Deserializes `""` as `None` ("no unit"), anything else as a unit name.
impl<'de> Deserialize<'de> for UnitName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        const SUFFIXES: [&str; 4] = [".service", ".socket", ".target", ".scope"];
        let valid_chars = s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c));
        if valid_chars && SUFFIXES.iter().any(|x| s.len() > x.len() && s.ends_with(x)) {
            Ok(UnitName(s))
        } else {
            Err(serde::de::Error::custom(format!(
                "\"{s}\" is not a systemd unit name such as \"docker.service\" (use \"\" for none)"
            )))
        }
    }
}

/// A tracing filter, checked for shape here (the daemon compiles it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter(String);

impl LogFilter {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for LogFilter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
        // Each directive is a level, or `target=level`; a bare word that is
        // not a level is almost always a typo, so it is refused even though
        // tracing would read it as a target name.
        let ok = !s.is_empty()
            && s.split(',').all(|directive| match directive.split_once('=') {
                None => LEVELS.contains(&directive),
                Some((target, level)) => {
                    !target.is_empty()
                        && target
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_:-".contains(c))
                        && LEVELS.contains(&level)
                }
            });
        if ok {
            Ok(LogFilter(s))
        } else {
            Err(serde::de::Error::custom(format!(
                "\"{s}\" is not a log filter: use one of off, error, warn, info, debug, trace, \
                 or directives such as \"info,containeros_engine=debug\""
            )))
        }
    }
}

/// `unit = ""` means no unit; serde's `Option` would otherwise want the key
/// to be absent for `None`.
mod optional_unit {
    use super::UnitName;
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<UnitName>, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Ok(None);
        }
        UnitName::deserialize(serde::de::value::StringDeserializer::<D::Error>::new(s)).map(Some)
    }
}

/// A `HH:MM-HH:MM` window as minutes of the day (start, end); the end may
/// be before the start (a window across midnight).
pub fn maintenance_window(text: &str) -> Option<(u32, u32)> {
    let minutes = |t: &str| -> Option<u32> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60 && t.trim().len() == 5).then_some(h * 60 + m)
    };
    let (a, b) = text.split_once('-')?;
    let (a, b) = (minutes(a)?, minutes(b)?);
    (a != b).then_some((a, b))
}
