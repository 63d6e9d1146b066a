//! The release model: one Compose file, parsed and normalized.
//!
//! A release is exactly one Compose file, so that `docker compose -f
//! release.yml up -d` runs the very same file. The release name is Compose's
//! top-level `name:`; the release metadata lives in the top-level extension
//! `x-containeros:` (`version`, `os_version`, `update_lock_timeout`), which
//! Compose ignores. Compose v1 (Debian 12's `docker-compose` 1.29) refuses
//! a top-level `name:`, so `x-containeros.name` may carry the name instead
//! (run that Compose with `-p NAME` to get the same volume and network
//! names); when both are given they must agree. Per service, `x-containeros: { update_strategy: ... }`
//! chooses how the service is updated.
//!
//! Design: the YAML is read into a generic tree (`serde_yaml_ng::Value`) and
//! walked by hand rather than deserialized with derived types, because the
//! one thing a user needs from a refusal is *which service, which field and
//! why* — derived serde errors (untagged short/long forms especially) cannot
//! say that. Every field of the Compose Specification the agent does not
//! implement is refused with a reason, unknown fields too: nothing is
//! silently ignored, except `x-*` extension fields, which Compose itself
//! ignores (they carry YAML anchors). YAML anchors and `<<` merge keys work.
//!
//! Every service is normalized to one long form (ports, mounts, networks,
//! depends_on, healthcheck, durations, sizes), which is what
//! [`Service::config_hash`] hashes, so two spellings of one configuration
//! have one hash.
//!
//! Limits (each refused with its reason): no `build`, `env_file`, `deploy`,
//! `secrets`, `configs`, `extends`, `profiles`, no variable interpolation
//! (`$VAR`; write `$$` for a literal `$`), no port ranges (list each port),
//! no anonymous volumes and no relative bind sources, no external or
//! non-default-driver volumes and networks, `network_mode` only `host`,
//! `none` or `bridge`. Line numbers in refusals of valid YAML are found by
//! looking the field up in block-style YAML; flow style gets none.

mod error;
mod image;
mod locate;
mod parse;
mod units;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest, Sha256};

pub use error::{Place, ReleaseError};
pub use image::ImageRef;
pub use units::{Duration, NanoCpus, Size, Version, parse_cpus, parse_duration, parse_size};

/// How strict the parse is about image references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A committed release: every image must be pinned by digest, so that
    /// every device runs exactly the same bytes.
    Committed,
    /// Development: tag-only references (`app:dev`) are accepted.
    Development,
}

/// Parses the release in `text`. `file` names it in errors (a path or any
/// label the caller chooses).
pub fn parse(text: &str, file: &str, mode: Mode) -> Result<Release, ReleaseError> {
    parse::parse(text, file, mode)
}

/// A parsed, validated release.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    /// Compose's project name: `[a-z0-9][a-z0-9_-]*`.
    pub name: String,
    pub version: Version,
    /// The OS version the release needs, if it says.
    pub os_version: Option<Version>,
    /// Overrides the agent's update-lock timeout for this release.
    pub update_lock_timeout: Option<Duration>,
    pub services: BTreeMap<String, Service>,
    /// Named volumes by their key in the file; includes only declared ones.
    pub volumes: BTreeMap<String, VolumeDef>,
    /// Networks by their key in the file, including Compose's implicit
    /// `default` when a service uses no explicit network and no
    /// `network_mode`.
    pub networks: BTreeMap<String, NetworkDef>,
}

/// A named volume of the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDef {
    /// The engine's name for it, `<release>_<key>` as Compose names it, so
    /// that `docker compose` and the agent share data.
    pub engine_name: String,
}

/// A network of the release (bridge driver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDef {
    /// `<release>_<key>`, as Compose names it.
    pub engine_name: String,
}

impl Release {
    /// Service names in an order where every service comes after the
    /// services it depends on: repeated passes over the names in order, each
    /// placing every service whose dependencies are placed, so the order is
    /// stable.
    pub fn start_order(&self) -> Vec<&str> {
        let mut order: Vec<&str> = Vec::with_capacity(self.services.len());
        let mut placed: BTreeSet<&str> = BTreeSet::new();
        // The parse refused cycles and unknown dependencies, so every pass
        // places at least one service; the bound only guards that promise.
        for _ in 0..=self.services.len() {
            for (name, service) in &self.services {
                if !placed.contains(name.as_str())
                    && service.depends_on.keys().all(|d| placed.contains(d.as_str()))
                {
                    placed.insert(name);
                    order.push(name);
                }
            }
            if order.len() == self.services.len() {
                break;
            }
        }
        order
    }
}

/// One service, normalized to long forms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub image: ImageRef,
    /// `None`: the image's default. Short (string) forms are split like a
    /// shell would, as Compose does.
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    /// Every variable has a value (the device has no shell environment to
    /// take one from).
    pub environment: BTreeMap<String, String>,
    pub ports: Vec<Port>,
    pub volumes: Vec<Mount>,
    /// Networks by release key; empty when `network_mode` is set.
    pub networks: BTreeMap<String, NetworkAttachment>,
    pub network_mode: Option<NetworkMode>,
    /// Dependencies and the condition each must meet before this service
    /// starts.
    pub depends_on: BTreeMap<String, Condition>,
    /// `None`: the image's own healthcheck, if any.
    pub healthcheck: Option<Healthcheck>,
    pub restart: Restart,
    pub labels: BTreeMap<String, String>,
    pub devices: Vec<Device>,
    pub privileged: bool,
    /// Capability names upper-cased without `CAP_` (`NET_ADMIN`, `ALL`).
    pub cap_add: BTreeSet<String>,
    pub cap_drop: BTreeSet<String>,
    /// Mount point → options (`size=64m`), `""` for none.
    pub tmpfs: BTreeMap<String, String>,
    pub read_only: bool,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub mem_limit: Option<Size>,
    pub cpus: Option<NanoCpus>,
    /// Time between the stop signal and SIGKILL; Compose's default 10s.
    pub stop_grace_period: Duration,
    /// `SIGTERM` style; `None`: the image's (usually SIGTERM).
    pub stop_signal: Option<String>,
    pub hostname: Option<String>,
    pub update_strategy: UpdateStrategy,
}

/// Stop grace period when the file gives none (Compose's default).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

impl Service {
    /// A sha256 (64 hex digits) over everything that requires recreating the
    /// container when it changes: all fields except `depends_on` (start
    /// ordering only) and `update_strategy` (how to update, not what runs).
    /// Deterministic: maps are sorted, values canonical, and the encoding is
    /// fixed here rather than left to serde features elsewhere in the build.
    /// Any change to what is hashed or how (the `containeros-config-v1`
    /// prefix) recreates every container once after an agent update, so
    /// such a change needs a new prefix and a release note.
    pub fn config_hash(&self) -> String {
        // Destructured so that a new field is a compile error until someone
        // decides whether it belongs in the hash.
        let Service {
            image,
            command,
            entrypoint,
            environment,
            ports,
            volumes,
            networks,
            network_mode,
            depends_on: _,
            healthcheck,
            restart,
            labels,
            devices,
            privileged,
            cap_add,
            cap_drop,
            tmpfs,
            read_only,
            user,
            working_dir,
            mem_limit,
            cpus,
            stop_grace_period,
            stop_signal,
            hostname,
            update_strategy: _,
        } = self;
        let hashed = serde_json::json!({
            "image": image,
            "command": command,
            "entrypoint": entrypoint,
            "environment": environment,
            "ports": ports,
            "volumes": volumes,
            "networks": networks,
            "network_mode": network_mode,
            "healthcheck": healthcheck,
            "restart": restart,
            "labels": labels,
            "devices": devices,
            "privileged": privileged,
            "cap_add": cap_add,
            "cap_drop": cap_drop,
            "tmpfs": tmpfs,
            "read_only": read_only,
            "user": user,
            "working_dir": working_dir,
            "mem_limit": mem_limit,
            "cpus": cpus,
            "stop_grace_period": stop_grace_period,
            "stop_signal": stop_signal,
            "hostname": hostname,
        });
        let mut hasher = Sha256::new();
        hasher.update(b"containeros-config-v1\n");
        write_canonical(&hashed, &mut hasher);
        hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Writes `v` as JSON with object keys sorted, whatever map type
/// `serde_json` was built with (another crate may enable `preserve_order`).
fn write_canonical(v: &serde_json::Value, out: &mut Sha256) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.update(b"{");
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.update(b",");
                }
                out.update(serde_json::Value::String(k.clone()).to_string().as_bytes());
                out.update(b":");
                if let Some(value) = map.get(k) {
                    write_canonical(value, out);
                }
            }
            out.update(b"}");
        }
        serde_json::Value::Array(items) => {
            out.update(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.update(b",");
                }
                write_canonical(item, out);
            }
            out.update(b"]");
        }
        scalar => out.update(scalar.to_string().as_bytes()),
    }
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Port {
    /// Host address to bind; `None`: all addresses.
    pub host_ip: Option<String>,
    /// Host port; `None`: one the engine picks.
    pub published: Option<u16>,
    pub target: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A volume or bind mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub source: MountSource,
    /// Absolute path in the container.
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountSource {
    /// A named volume, by its key in the release's `volumes:`.
    Volume(String),
    /// An absolute host path.
    Bind(String),
}

/// A service's membership in one network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetworkAttachment {
    /// Extra DNS names, beside the service name every member gets.
    pub aliases: BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    Host,
    None,
    Bridge,
}

/// What a dependency must reach before its dependent starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    ServiceStarted,
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Healthcheck {
    pub test: HealthTest,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    pub start_period: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthTest {
    /// `["CMD", args...]`: run without a shell.
    Cmd(Vec<String>),
    /// `["CMD-SHELL", "..."]` or a plain string: run by `/bin/sh -c`.
    CmdShell(String),
    /// `["NONE"]` or `disable: true`: turn the image's healthcheck off.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    No,
    Always,
    /// With the maximum number of retries, if given.
    OnFailure(Option<u32>),
    UnlessStopped,
}

/// A host device passed to the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub host: String,
    pub container: String,
    /// Some of `r`, `w`, `m`; default `rwm`.
    pub permissions: String,
}

/// How a service whose configuration changed is replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateStrategy {
    /// Pull the new image while the old container runs, then stop the old
    /// container and start the new one: the shortest downtime that never
    /// runs both at once.
    #[default]
    DownloadThenKill,
    /// Stop and remove the old container before pulling, so the old image
    /// can be freed first: for devices short of storage.
    KillThenDownload,
    /// Start the new container next to the old one and stop the old one
    /// once the new one is up (healthy, if it has a healthcheck).
    HandOver,
}
