//! Containers of the native engine: one overlayfs per container over the
//! image's unpacked layers, the OCI config from [`crate::spec`], the
//! runtime binary to run it, and the supervision Docker would do —
//! restart policies, healthchecks (`<runtime> exec`), stop with the
//! service's signal and grace period.
//!
//! ```text
//! <data>/containers/<id>/container.json  what the container is (written at create)
//! <data>/containers/<id>/desired         `running` / `stopped` (written on start/stop only)
//! <data>/containers/<id>/{config.json,upper,work,rootfs}   the OCI bundle
//! <data>/volumes/<name>/_data            named volumes
//! <run>/runtime                          the runtime's state (--root)
//! <run>/logs/<id>.log                    stdout and stderr (logs to a file)
//! <run>/logs/<id>.journal                its journal identifier and since when (logs to journald)
//! <run>/logs/<id>.runtime.log            the runtime's own messages (logs to journald)
//! ```
//!
//! `<run>` is a tmpfs: the runtime's state and the logs never touch flash,
//! and after a reboot every container is simply not running; the desired
//! state and the restart policy bring them back. After an agent restart the
//! runtime's state says which containers still run: they are adopted, not
//! started twice.
//!
//! Exit codes: the agent is made a child subreaper, so a container's init
//! becomes its child once the runtime has exited, and its exit status is
//! reaped. A container that ended while the agent was not running has no
//! exit code (`None`).
//!
//! Output goes to journald under the service's name ([`crate::journal`]:
//! the container holds the connection, so an agent restart loses no line)
//! or, as configured or when journald is not there, to a file on the
//! tmpfs, cut when it passes 1 MiB at a start.
//!
//! Limits: health is kept in memory (`starting` again after an agent
//! restart). Reading a container's output back from the journal selects
//! its service name since the container's first start this boot: two
//! containers of one service name running at once (a hand-over, or two
//! releases with a like-named service) show each other's lines there.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use containeros_apps::plan::{ContainerState, Health};
use containeros_apps::release::{HealthTest, Restart, Service};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::journal::{Journal, LogTarget, PRIORITY_STDERR, PRIORITY_STDOUT};
use crate::network::{self, Attachment, Networks, PortMap};
use crate::oci::{ImageConfig, RunConfig};
use crate::runtime::{Output, Runtime};
use crate::spec::{self, Bind, DeviceNode, Network, Plan};
use crate::store::{ImageRecord, Store, write_atomic};

/// Docker's healthcheck defaults.
const HEALTH_INTERVAL: Duration = Duration::from_secs(30);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
const HEALTH_RETRIES: u32 = 3;
/// Logs beyond this are cut (they live in RAM).
const LOG_LIMIT: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    Always,
    UnlessStopped,
    OnFailure { max: Option<u32> },
}

impl From<Restart> for RestartPolicy {
    fn from(r: Restart) -> Self {
        match r {
            Restart::No => Self::No,
            Restart::Always => Self::Always,
            Restart::UnlessStopped => Self::UnlessStopped,
            Restart::OnFailure(max) => Self::OnFailure { max },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    /// Run as is by `exec` (`CMD-SHELL` is `/bin/sh -c`).
    pub argv: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    pub start_period_ms: u64,
}

/// What a container is, as written at create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The reference it was created from.
    pub image: String,
    pub image_digest: Digest,
    pub layers: Vec<Digest>,
    pub restart: RestartPolicy,
    pub stop_signal: String,
    pub stop_grace_ms: u64,
    pub health: Option<HealthSpec>,
    /// Bridge networks, the first one the default route.
    #[serde(default)]
    pub networks: Vec<Attachment>,
    #[serde(default)]
    pub ports: Vec<PortMap>,
    #[serde(default)]
    pub hostname: String,
}

/// A container whose output goes to journald: under which identifier,
/// since when (seconds since the epoch).
#[derive(Debug, Serialize, Deserialize)]
struct Journaled {
    identifier: String,
    since: u64,
}

/// A container's observed status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub record: Record,
    pub state: ContainerState,
    pub health: Health,
    pub exit_code: Option<i64>,
    pub pid: Option<i32>,
    pub restarts: u32,
}

/// What to create.
#[derive(Debug)]
pub struct Create<'a> {
    pub name: &'a str,
    pub labels: BTreeMap<String, String>,
    pub service: &'a Service,
    pub image: &'a ImageRecord,
    /// Named volumes, binds and the update-lock dir, sources resolved.
    pub binds: Vec<Bind>,
    /// Host or isolated; ignored when `networks` is not empty.
    pub network: Network,
    /// Bridge networks to join: (network name, aliases).
    pub networks: Vec<(String, Vec<String>)>,
    /// Published ports (only with `networks`).
    pub ports: Vec<PortMap>,
    pub extra_env: Vec<String>,
}

#[derive(Debug, Default)]
struct Live {
    /// The init of a container this process started (and can reap).
    pid: Option<i32>,
    /// The init last seen running, started by this process or not: lets
    /// supervision skip running the runtime binary while it lives.
    seen_running: Option<i32>,
    exit_code: Option<i64>,
    health: Option<Health>,
    failures: u32,
    next_check: Option<Instant>,
    started: Option<Instant>,
    restarts: u32,
}

#[derive(Debug)]
pub struct Containers {
    store: Arc<Store>,
    runtime: Runtime,
    networks: Networks,
    data: PathBuf,
    run: PathBuf,
    logs: LogTarget,
    journal: Journal,
    live: Mutex<HashMap<String, Live>>,
    /// One lifecycle operation per container at a time (start/stop/remove/supervise).
    ops: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Containers {
    /// `data`: persistent (containers, volumes); `run`: a tmpfs directory.
    /// Makes this process a child subreaper (see the module doc).
    pub fn new(store: Arc<Store>, runtime_binary: PathBuf, data: &Path, run: &Path) -> Result<Self> {
        for dir in [
            data.join("containers"),
            data.join("volumes"),
            run.join("runtime"),
            run.join("logs"),
        ] {
            std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        }
        rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(|e| Error::Io {
            op: "becoming the child subreaper of",
            path: PathBuf::from("/proc/self"),
            source: e.into(),
        })?;
        let this = Self {
            store,
            runtime: Runtime::new(runtime_binary, run.join("runtime")),
            networks: Networks::open(&data.join("networks"))?,
            data: data.to_owned(),
            run: run.to_owned(),
            logs: LogTarget::File,
            journal: Journal::new(crate::journal::DEFAULT_SOCKET.into()),
            live: Mutex::default(),
            ops: Mutex::default(),
        };
        this.remove_interrupted()?;
        Ok(this)
    }

    /// Where containers started from now on send their output (a file
    /// unless told).
    #[must_use]
    pub fn logs_to(mut self, target: LogTarget, journal: Journal) -> Self {
        self.logs = target;
        self.journal = journal;
        self
    }

    /// Removes what a create interrupted by a kill or power cut left: a
    /// container directory without its record, addresses leased to no
    /// container.
    fn remove_interrupted(&self) -> Result<()> {
        let dir = self.data.join("containers");
        for e in std::fs::read_dir(&dir).map_err(Error::io("reading", &dir))? {
            let path = e.map_err(Error::io("reading", &dir))?.path();
            if path.join("container.json").exists() {
                continue;
            }
            tracing::info!(path = %path.display(), "removing a container whose create was interrupted");
            let rootfs = path.join("rootfs");
            if is_mounted(&rootfs) {
                let _ = rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::DETACH);
            }
            if let Some(id) = path.file_name().and_then(|n| n.to_str()) {
                network::detach(id);
            }
            std::fs::remove_dir_all(&path).map_err(Error::io("removing", &path))?;
        }
        let ids: std::collections::BTreeSet<String> = self.records()?.into_iter().map(|r| r.id).collect();
        self.networks.release_orphans(&ids)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn networks(&self) -> &Networks {
        &self.networks
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.data.join("containers").join(id)
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.run.join("logs").join(format!("{id}.log"))
    }

    fn journal_path(&self, id: &str) -> PathBuf {
        self.run.join("logs").join(format!("{id}.journal"))
    }

    fn journaled(&self, id: &str) -> Option<Journaled> {
        let text = std::fs::read(self.journal_path(id)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Where the container's output goes at this start.
    fn output(&self, record: &Record) -> Result<Output> {
        let id = &record.id;
        let journald = match self.logs {
            LogTarget::File => false,
            LogTarget::Journald => true,
            LogTarget::Auto => self.journal.available(),
        };
        if !journald {
            let _ = std::fs::remove_file(self.journal_path(id));
            let log = self.log_path(id);
            // The log lives in RAM: a restart begins it again when it grew large.
            if std::fs::metadata(&log).is_ok_and(|m| m.len() > LOG_LIMIT) {
                let _ = std::fs::remove_file(&log);
            }
            return Ok(Output::File(log));
        }
        let identifier = record
            .labels
            .get(containeros_apps::plan::LABEL_SERVICE)
            .unwrap_or(&record.name)
            .clone();
        let stdout = self.journal.stream(&identifier, PRIORITY_STDOUT)?;
        let stderr = self.journal.stream(&identifier, PRIORITY_STDERR)?;
        // Kept from the first start this boot, so its earlier runs' lines
        // are read back too (as the file keeps them).
        if self.journaled(id).is_none_or(|j| j.identifier != identifier) {
            let since = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let j = Journaled { identifier, since };
            let text = serde_json::to_vec(&j).map_err(|e| Error::Journal {
                reason: format!("encoding {}: {e}", self.journal_path(id).display()),
            })?;
            write_atomic(&self.journal_path(id), &text)?;
        }
        Ok(Output::Journal {
            stdout,
            stderr,
            log: self.run.join("logs").join(format!("{id}.runtime.log")),
        })
    }

    pub fn volume_path(&self, name: &str) -> PathBuf {
        self.data.join("volumes").join(name).join("_data")
    }

    async fn op(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut ops = self.ops.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(ops.entry(id.to_owned()).or_default())
        };
        lock.lock_owned().await
    }

    fn with_live<T>(&self, id: &str, f: impl FnOnce(&mut Live) -> T) -> T {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        f(live.entry(id.to_owned()).or_default())
    }

    /// Creates a volume directory (nothing when it exists).
    pub fn create_volume(&self, name: &str) -> Result<()> {
        let path = self.volume_path(name);
        std::fs::create_dir_all(&path).map_err(Error::io("creating", &path))
    }

    pub fn volumes(&self) -> Result<Vec<String>> {
        let dir = self.data.join("volumes");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(Error::io("reading", &dir))? {
            let e = e.map_err(Error::io("reading", &dir))?;
            out.push(e.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }

    /// Every container record.
    pub fn records(&self) -> Result<Vec<Record>> {
        let dir = self.data.join("containers");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(Error::io("reading", &dir))? {
            let path = e
                .map_err(Error::io("reading", &dir))?
                .path()
                .join("container.json");
            match std::fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice::<Record>(&bytes) {
                    Ok(r) => out.push(r),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "skipping an unreadable container record: {e}")
                    }
                },
                // A create interrupted before its record was written.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("reading", &path)(e)),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The record of the container with this id, name or id prefix.
    pub fn find(&self, key: &str) -> Result<Record> {
        let records = self.records()?;
        if let Some(r) = records.iter().find(|r| r.id == key || r.name == key) {
            return Ok(r.clone());
        }
        let mut prefixed = records
            .into_iter()
            .filter(|r| key.len() >= 4 && r.id.starts_with(key));
        match (prefixed.next(), prefixed.next()) {
            (Some(r), None) => Ok(r),
            _ => Err(Error::NoContainer(key.to_owned())),
        }
    }

    /// Creates (does not start) a container; returns its id. The name must
    /// be free.
    pub async fn create(&self, c: Create<'_>) -> Result<String> {
        if self.find(c.name).is_ok() {
            return Err(Error::Container {
                name: c.name.to_owned(),
                reason: "the name is taken".to_owned(),
            });
        }
        let image_config: ImageConfig = serde_json::from_slice(&self.store.read_blob(&c.image.config)?)
            .map_err(|e| Error::Container {
                name: c.name.to_owned(),
                reason: format!("the config of image {} is unreadable: {e}", c.image.reference),
            })?;
        let run = image_config.config.clone().unwrap_or_default();
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let id = Digest::of(format!("{}:{nanos}:{}", c.name, std::process::id()).as_bytes())
            .hex()
            .to_owned();
        let dir = self.dir(&id);
        let bad = |reason: String| Error::Container {
            name: c.name.to_owned(),
            reason,
        };
        // The user is resolved against the image's own passwd and group.
        let passwd = self.image_file(&c.image.layers, "etc/passwd");
        let group = self.image_file(&c.image.layers, "etc/group");
        let user = c.service.user.as_deref().or(run.user.as_deref());
        let (uid, gid, additional_gids) = spec::resolve_user(user, &passwd, &group).map_err(bad)?;
        let devices = c
            .service
            .devices
            .iter()
            .map(|d| device_node(&d.host, &d.container, &d.permissions))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(bad)?;
        let mut attachments = Vec::new();
        for (net, aliases) in &c.networks {
            match self.networks.lease(net, &id, aliases.clone()) {
                Ok(a) => attachments.push(a),
                Err(e) => {
                    attachments.iter().for_each(|a| self.networks.release(a));
                    return Err(e);
                }
            }
        }
        let network = if attachments.is_empty() {
            c.network.clone()
        } else {
            Network::Join(network::netns_path(&id).display().to_string())
        };
        let hostname = c.service.hostname.clone().unwrap_or_else(|| {
            if network == Network::Host {
                host_name()
            } else {
                id[..12].to_owned()
            }
        });
        let mut binds = c.binds.clone();
        for file in ["hosts", "resolv.conf", "hostname"] {
            binds.push(Bind {
                source: dir.join(file).display().to_string(),
                target: format!("/etc/{file}"),
                read_only: false,
            });
        }
        let plan = Plan {
            uid,
            gid,
            additional_gids,
            hostname: hostname.clone(),
            binds,
            devices,
            network: network.clone(),
            cgroups_path: format!("/containeros/{id}"),
            extra_env: c.extra_env.clone(),
        };
        let config = spec::build(c.service, &run, &plan);
        let health = health_spec(c.service, &run);
        let record = Record {
            id: id.clone(),
            name: c.name.to_owned(),
            labels: c.labels.clone(),
            image: c.image.reference.clone(),
            image_digest: c.image.digest.clone(),
            layers: c.image.layers.clone(),
            restart: c.service.restart.into(),
            stop_signal: c
                .service
                .stop_signal
                .clone()
                .or_else(|| run.stop_signal.clone())
                .unwrap_or_else(|| "SIGTERM".to_owned()),
            stop_grace_ms: u64::try_from(c.service.stop_grace_period.0.as_millis()).unwrap_or(u64::MAX),
            health,
            ports: if attachments.is_empty() {
                Vec::new()
            } else {
                c.ports.clone()
            },
            networks: attachments,
            hostname: hostname.clone(),
        };
        for sub in ["upper", "work", "rootfs"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(Error::io("creating", &p))?;
        }
        let hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
        );
        let resolv = if network == Network::Host {
            std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
        } else {
            std::fs::read_to_string("/etc/resolv.conf")
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.contains("127.0.0."))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        let host_hosts = if network == Network::Host {
            std::fs::read_to_string("/etc/hosts").unwrap_or(hosts)
        } else {
            hosts
        };
        for (file, text) in [
            ("hosts", host_hosts),
            ("resolv.conf", resolv),
            ("hostname", format!("{hostname}\n")),
        ] {
            write_atomic(&dir.join(file), text.as_bytes())?;
        }
        let json = serde_json::to_vec_pretty(&config).map_err(|e| bad(e.to_string()))?;
        write_atomic(&dir.join("config.json"), &json)?;
        // The record last: a container without it was never created.
        let json = serde_json::to_vec_pretty(&record).map_err(|e| bad(e.to_string()))?;
        write_atomic(&dir.join("container.json"), &json)?;
        if !record.networks.is_empty() {
            self.refresh_hosts()?;
        }
        Ok(id)
    }

    /// Rewrites `/etc/hosts` of every container on a bridge network: its
    /// peers by service name and alias. In place: the file is bind-mounted.
    fn refresh_hosts(&self) -> Result<()> {
        let records = self.records()?;
        for r in records.iter().filter(|r| !r.networks.is_empty()) {
            let mut members: BTreeMap<std::net::Ipv4Addr, Vec<String>> = BTreeMap::new();
            for peer in &records {
                for a in peer
                    .networks
                    .iter()
                    .filter(|a| r.networks.iter().any(|o| o.network == a.network))
                {
                    let names = members.entry(a.address).or_default();
                    for n in a.aliases.iter().chain([&peer.name]) {
                        if !names.contains(n) {
                            names.push(n.clone());
                        }
                    }
                }
            }
            let text = network::hosts_file(&r.hostname, &r.networks, &members);
            let path = self.dir(&r.id).join("hosts");
            std::fs::write(&path, text).map_err(Error::io("writing", &path))?;
        }
        Ok(())
    }

    /// The contents of `path` in the image's layers (top first, honouring
    /// whiteouts); empty when absent.
    fn image_file(&self, layers: &[Digest], path: &str) -> String {
        use std::os::unix::fs::FileTypeExt as _;
        for layer in layers.iter().rev() {
            let p = self.store.layer_path(layer).join(path);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_char_device() => return String::new(),
                Ok(m) if m.is_file() => return std::fs::read_to_string(&p).unwrap_or_default(),
                _ => {}
            }
        }
        String::new()
    }

    fn desired(&self, id: &str) -> Option<String> {
        std::fs::read_to_string(self.dir(id).join("desired"))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    fn set_desired(&self, id: &str, state: &str) -> Result<()> {
        if self.desired(id).as_deref() == Some(state) {
            return Ok(());
        }
        write_atomic(&self.dir(id).join("desired"), state.as_bytes())
    }

    /// Starts the container (nothing when it runs).
    pub async fn start(&self, key: &str) -> Result<()> {
        let record = self.find(key)?;
        let _op = self.op(&record.id).await;
        self.set_desired(&record.id, "running")?;
        self.with_live(&record.id, |l| l.restarts = 0);
        self.launch(&record).await
    }

    /// Runs the container's process (the caller holds its op lock).
    async fn launch(&self, record: &Record) -> Result<()> {
        let id = &record.id;
        if let Some(state) = self.runtime.state(id).await?
            && state.status == "running"
        {
            return Ok(());
        }
        self.runtime.delete(id).await?;
        // First: without journald (when it is required) nothing is set up.
        let output = self.output(record)?;
        self.mount_rootfs(record)?;
        if let Some(first) = record.networks.first() {
            for a in &record.networks {
                self.networks.ensure(&a.network)?;
            }
            network::attach(id, &record.networks)?;
            network::publish(id, first.address, &record.ports)?;
        }
        let dir = self.dir(id);
        self.runtime.create(id, &dir, output).await?;
        self.runtime.start(id).await?;
        let pid = std::fs::read_to_string(dir.join("pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        let health = record.health.as_ref().map(|h| {
            (
                Health::Starting,
                Instant::now()
                    + Duration::from_millis(h.interval_ms.min(h.start_period_ms.max(h.interval_ms))),
            )
        });
        self.with_live(id, |l| {
            l.pid = pid;
            l.exit_code = None;
            l.started = Some(Instant::now());
            l.failures = 0;
            l.health = health.map(|h| h.0);
            l.next_check = health.map(|h| h.1);
        });
        Ok(())
    }

    fn mount_rootfs(&self, record: &Record) -> Result<()> {
        let dir = self.dir(&record.id);
        let rootfs = dir.join("rootfs");
        if is_mounted(&rootfs) {
            return Ok(());
        }
        let missing: Vec<&Digest> = record
            .layers
            .iter()
            .filter(|l| !self.store.has_layer(l))
            .collect();
        if !missing.is_empty() {
            return Err(Error::Container {
                name: record.name.clone(),
                reason: format!(
                    "layers of image {} are missing from the store ({missing:?}): pull it again",
                    record.image
                ),
            });
        }
        let lower: Vec<String> = record
            .layers
            .iter()
            .rev()
            .map(|l| self.store.layer_path(l).display().to_string())
            .collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        let data = std::ffi::CString::new(data).map_err(|e| Error::Container {
            name: record.name.clone(),
            reason: e.to_string(),
        })?;
        rustix::mount::mount(
            "overlay",
            &rootfs,
            "overlay",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )
        .map_err(|e| Error::Io {
            op: "mounting the overlay on",
            path: rootfs.clone(),
            source: e.into(),
        })
    }

    fn unmount_rootfs(&self, id: &str) {
        let rootfs = self.dir(id).join("rootfs");
        if is_mounted(&rootfs)
            && let Err(e) = rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::DETACH)
        {
            tracing::warn!(path = %rootfs.display(), "cannot unmount: {e}");
        }
    }

    /// Stops the container: `signal` (the container's own when `None`),
    /// then SIGKILL after `grace`. It stays stopped (no restart policy
    /// applies) until started again.
    pub async fn stop(&self, key: &str, grace: Duration, signal: Option<&str>) -> Result<()> {
        let record = self.find(key)?;
        let _op = self.op(&record.id).await;
        self.set_desired(&record.id, "stopped")?;
        self.halt(&record, grace, signal.unwrap_or(&record.stop_signal))
            .await
    }

    async fn halt(&self, record: &Record, grace: Duration, signal: &str) -> Result<()> {
        let id = &record.id;
        if let Some(state) = self.runtime.state(id).await?
            && state.status == "running"
        {
            // It may exit between the state and the kill.
            let _ = self.runtime.kill(id, signal).await;
            if !self.wait_stopped(id, grace).await? {
                tracing::info!(container = %record.name, "did not stop within {grace:?}: SIGKILL");
                let _ = self.runtime.kill(id, "KILL").await;
                self.wait_stopped(id, Duration::from_secs(10)).await?;
            }
        }
        self.reap(id);
        self.runtime.delete(id).await?;
        self.unmount_rootfs(id);
        if !record.ports.is_empty() {
            network::unpublish(id);
        }
        Ok(())
    }

    async fn wait_stopped(&self, id: &str, within: Duration) -> Result<bool> {
        let deadline = Instant::now() + within;
        loop {
            self.reap(id);
            match self.runtime.state(id).await? {
                None => return Ok(true),
                Some(s) if s.status == "stopped" => return Ok(true),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Collects the exit status of the container's init if it is our child.
    fn reap(&self, id: &str) {
        let Some(pid) = self.with_live(id, |l| l.pid) else {
            return;
        };
        let Some(raw) = rustix::process::Pid::from_raw(pid) else {
            return;
        };
        match rustix::process::waitpid(Some(raw), rustix::process::WaitOptions::NOHANG) {
            Ok(Some((_, status))) => {
                let code = status
                    .exit_status()
                    .map(i64::from)
                    .or_else(|| status.terminating_signal().map(|s| 128 + i64::from(s)));
                self.with_live(id, |l| {
                    l.exit_code = code;
                    l.pid = None;
                });
            }
            Ok(None) => {}
            // Not our child (adopted after an agent restart): no code to get.
            Err(_) => self.with_live(id, |l| l.pid = None),
        }
    }

    /// Stops (with its own signal) and starts the container again.
    pub async fn restart(&self, key: &str, grace: Duration) -> Result<()> {
        let record = self.find(key)?;
        let _op = self.op(&record.id).await;
        self.set_desired(&record.id, "running")?;
        self.halt(&record, grace, &record.stop_signal).await?;
        self.launch(&record).await
    }

    /// Kills, deletes and forgets the container (its volumes stay).
    pub async fn remove(&self, key: &str) -> Result<()> {
        let record = self.find(key)?;
        let _op = self.op(&record.id).await;
        self.set_desired(&record.id, "stopped")?;
        self.halt(&record, Duration::ZERO, "KILL").await?;
        network::detach(&record.id);
        let dir = self.dir(&record.id);
        // The record first, so a half-removed container is not listed.
        let _ = std::fs::remove_file(dir.join("container.json"));
        std::fs::remove_dir_all(&dir).map_err(Error::io("removing", &dir))?;
        let _ = std::fs::remove_file(self.log_path(&record.id));
        let _ = std::fs::remove_file(self.journal_path(&record.id));
        let _ = std::fs::remove_file(self.run.join("logs").join(format!("{}.runtime.log", record.id)));
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&record.id);
        for a in &record.networks {
            self.networks.release(a);
        }
        if !record.networks.is_empty() {
            self.refresh_hosts()?;
        }
        for controller in [
            "", "memory/", "cpu/", "cpuacct/", "pids/", "devices/", "freezer/", "blkio/", "cpuset/",
            "systemd/",
        ] {
            let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{controller}containeros/{}", record.id));
        }
        Ok(())
    }

    /// The container's status now.
    pub async fn status(&self, key: &str) -> Result<Status> {
        let record = self.find(key)?;
        self.status_of(record).await
    }

    async fn status_of(&self, record: Record) -> Result<Status> {
        let runtime = self.runtime.state(&record.id).await?;
        let desired = self.desired(&record.id);
        self.reap(&record.id);
        let (exit_code, health, pid, restarts) =
            self.with_live(&record.id, |l| (l.exit_code, l.health, l.pid, l.restarts));
        let state = match runtime.as_ref().map(|s| s.status.as_str()) {
            Some("running") => ContainerState::Running,
            Some("paused") => ContainerState::Paused,
            Some("created") => ContainerState::Created,
            _ if desired.is_none() => ContainerState::Created,
            _ => ContainerState::Exited,
        };
        let health = match (state, &record.health) {
            (_, None) => Health::None,
            (ContainerState::Running, Some(_)) => health.unwrap_or(Health::Starting),
            (_, Some(_)) => health.unwrap_or(Health::None),
        };
        Ok(Status {
            pid: runtime.filter(|s| s.status == "running").map(|s| s.pid).or(pid),
            record,
            state,
            health,
            exit_code: if state == ContainerState::Exited {
                exit_code
            } else {
                None
            },
            restarts,
        })
    }

    pub async fn list(&self) -> Result<Vec<Status>> {
        let mut out = Vec::new();
        for record in self.records()? {
            out.push(self.status_of(record).await?);
        }
        Ok(out)
    }

    /// The last `lines` lines of the container's output.
    pub async fn logs(&self, key: &str, lines: usize) -> Result<String> {
        let record = self.find(key)?;
        if let Some(j) = self.journaled(&record.id) {
            let since = SystemTime::UNIX_EPOCH + Duration::from_secs(j.since);
            return self.journal.read(&j.identifier, since, lines).await;
        }
        let path = self.log_path(&record.id);
        if !path.exists() {
            return Ok(String::new());
        }
        tail(&path, lines).map_err(Error::io("reading", &path))
    }

    /// Runs `argv` in the running container.
    pub async fn exec(&self, key: &str, argv: &[String], timeout: Duration) -> Result<(i32, String)> {
        let record = self.find(key)?;
        self.runtime.exec(&record.id, argv, timeout).await
    }

    /// One round of supervision: restart policies for containers that
    /// should run and stopped, and healthchecks that are due.
    pub async fn supervise_once(&self) -> Result<()> {
        for record in self.records()? {
            if self.desired(&record.id).as_deref() != Some("running") {
                continue;
            }
            let _op = self.op(&record.id).await;
            let known = self.with_live(&record.id, |l| l.seen_running);
            let running = if known.is_some_and(|pid| init_alive(pid, &record.id)) {
                true
            } else {
                let state = self.runtime.state(&record.id).await?;
                let pid = state.filter(|s| s.status == "running").map(|s| s.pid);
                self.with_live(&record.id, |l| l.seen_running = pid);
                pid.is_some()
            };
            if running {
                self.check_health(&record).await;
                continue;
            }
            self.reap(&record.id);
            let (code, restarts) = self.with_live(&record.id, |l| (l.exit_code, l.restarts));
            let again = match record.restart {
                RestartPolicy::No => false,
                RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
                RestartPolicy::OnFailure { max } => code != Some(0) && max.is_none_or(|m| restarts < m),
            };
            if !again {
                continue;
            }
            tracing::info!(container = %record.name, exit_code = ?code, "restarting per its restart policy");
            let restarts = restarts + 1;
            if let Err(e) = self
                .halt(&record, Duration::ZERO, "KILL")
                .await
                .and(self.launch(&record).await)
            {
                tracing::warn!(container = %record.name, "restart failed: {e}");
            }
            self.with_live(&record.id, |l| l.restarts = restarts);
        }
        Ok(())
    }

    async fn check_health(&self, record: &Record) {
        let Some(spec) = &record.health else {
            return;
        };
        let due = self.with_live(&record.id, |l| {
            let now = Instant::now();
            let next = *l.next_check.get_or_insert(now);
            (next <= now).then_some(l.started)
        });
        let Some(started) = due else {
            return;
        };
        let (code, _) = self
            .runtime
            .exec(&record.id, &spec.argv, Duration::from_millis(spec.timeout_ms))
            .await
            .unwrap_or((-1, String::new()));
        let in_start_period =
            started.is_some_and(|s| s.elapsed() < Duration::from_millis(spec.start_period_ms));
        self.with_live(&record.id, |l| {
            if code == 0 {
                l.failures = 0;
                l.health = Some(Health::Healthy);
            } else if !in_start_period {
                l.failures += 1;
                if l.failures >= spec.retries.max(1) {
                    l.health = Some(Health::Unhealthy);
                }
            }
            l.next_check = Some(Instant::now() + Duration::from_millis(spec.interval_ms));
        });
    }

    /// Supervises every `interval` until `shutdown` resolves.
    pub async fn supervise(
        self: Arc<Self>,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.supervise_once().await {
                tracing::warn!("container supervision: {e}");
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}

fn health_spec(service: &Service, image: &RunConfig) -> Option<HealthSpec> {
    let ms = |d: Option<Duration>, default: Duration| {
        u64::try_from(d.unwrap_or(default).as_millis()).unwrap_or(u64::MAX)
    };
    if let Some(h) = &service.healthcheck {
        let argv = match &h.test {
            HealthTest::None => return None,
            HealthTest::Cmd(args) => args.clone(),
            HealthTest::CmdShell(line) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
        };
        return Some(HealthSpec {
            argv,
            interval_ms: ms(h.interval.map(|d| d.0), HEALTH_INTERVAL),
            timeout_ms: ms(h.timeout.map(|d| d.0), HEALTH_TIMEOUT),
            retries: h.retries.unwrap_or(HEALTH_RETRIES),
            start_period_ms: ms(h.start_period.map(|d| d.0), Duration::ZERO),
        });
    }
    let h = image.healthcheck.as_ref()?;
    let test = h.test.as_ref()?;
    let argv = match test.first().map(String::as_str) {
        Some("CMD") => test[1..].to_vec(),
        Some("CMD-SHELL") => vec!["/bin/sh".into(), "-c".into(), test[1..].join(" ")],
        _ => return None,
    };
    let nanos =
        |n: Option<u64>, default: Duration| n.filter(|n| *n > 0).map_or(default, Duration::from_nanos);
    Some(HealthSpec {
        argv,
        interval_ms: ms(Some(nanos(h.interval, HEALTH_INTERVAL)), HEALTH_INTERVAL),
        timeout_ms: ms(Some(nanos(h.timeout, HEALTH_TIMEOUT)), HEALTH_TIMEOUT),
        retries: h.retries.filter(|r| *r > 0).unwrap_or(HEALTH_RETRIES),
        start_period_ms: ms(Some(nanos(h.start_period, Duration::ZERO)), Duration::ZERO),
    })
}

fn device_node(host: &str, container: &str, permissions: &str) -> std::result::Result<DeviceNode, String> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    let meta = std::fs::metadata(host).map_err(|e| format!("device {host}: {e}"))?;
    let kind = if meta.file_type().is_char_device() {
        'c'
    } else if meta.file_type().is_block_device() {
        'b'
    } else {
        return Err(format!("device {host} is not a device node"));
    };
    let rdev = meta.rdev();
    Ok(DeviceNode {
        container_path: container.to_owned(),
        kind,
        major: u64::from(rustix::fs::major(rdev)),
        minor: u64::from(rustix::fs::minor(rdev)),
        mode: meta.mode() & 0o7777,
        permissions: permissions.to_owned(),
    })
}

fn host_name() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = path.display().to_string();
    info.lines().any(|l| l.split(' ').nth(4) == Some(target.as_str()))
}

/// Whether `pid` is still the running init of container `id`: alive, not
/// a zombie, and in the container's cgroup (so a reused pid is not taken
/// for it). Reads /proc only: cheaper than running the runtime binary,
/// which matters on a small board polled every second.
fn init_alive(pid: i32, id: &str) -> bool {
    let running = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with(['R', 'S', 'D']))
        })
        .unwrap_or(false);
    running
        && std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|cgroup| cgroup.contains(&format!("/containeros/{id}")))
}

/// The last `lines` lines of the file at `path`.
pub fn tail(path: &Path, lines: usize) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(LOG_LIMIT.min(256 << 10));
    file.seek(std::io::SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    let mut out = all[from..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    Ok(out)
}
