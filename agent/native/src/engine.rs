//! The apps boundary ([`containeros_apps::engine::Engine`]) on the native
//! engine: the same planner, executor, locks and health logic as on Docker.
//!
//! Networks are bridges ([`crate::network`]); `network_mode: host` shares
//! the host's network, `none` and `bridge` (Docker's default bridge, which
//! this engine does not have) give a namespace with loopback only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containeros_apps::engine::{ContainerSpec, Engine, EngineError, EngineResult, ErrorKind, PullProgress};
use containeros_apps::locks;
use containeros_apps::plan::{Observed, ObservedContainer, ObservedNetwork};
use containeros_apps::release::{Duration, ImageRef, MountSource, NetworkMode};

use crate::containers::{Containers, Create, Status};
use crate::error::Error;
use crate::journal::{Journal, LogTarget};
use crate::network::PortMap;
use crate::platform::Platform;
use crate::registry::Registry;
use crate::spec::{Bind, Network};
use crate::store::Store;

/// Where the native engine keeps things and what it runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Persistent: the content store, containers, volumes, networks.
    pub data: PathBuf,
    /// A tmpfs: the runtime's state and container logs.
    pub run: PathBuf,
    /// `crun` or `runc`.
    pub runtime: PathBuf,
    pub platform: Platform,
    /// A Docker `config.json` with registry credentials, if any.
    pub auth_file: Option<PathBuf>,
    /// Where container output goes.
    pub logs: LogTarget,
    /// journald's stdout socket ([`crate::journal::DEFAULT_SOCKET`]).
    pub journal_socket: PathBuf,
}

#[derive(Debug)]
pub struct NativeEngine {
    registry: Registry,
    containers: Arc<Containers>,
    platform: Platform,
}

fn error(operation: &'static str, target: &str, e: &Error) -> EngineError {
    let kind = if e.is_no_space() {
        ErrorKind::NoSpace
    } else if e.is_not_found() {
        ErrorKind::NotFound
    } else if matches!(e, Error::Container { reason, .. } if reason.contains("name is taken")) {
        ErrorKind::Conflict
    } else {
        ErrorKind::Other
    };
    EngineError {
        kind,
        operation,
        target: target.to_owned(),
        message: e.to_string(),
    }
}

impl NativeEngine {
    /// Opens the store and the containers under `settings`; `http` is the
    /// agent's client. Call [`NativeEngine::containers`]`.supervise` to run
    /// restart policies and healthchecks.
    pub fn open(settings: &Settings, http: reqwest::Client) -> Result<Self, Error> {
        let store = Arc::new(Store::open(&settings.data.join("store"))?);
        let containers = Arc::new(
            Containers::new(store, settings.runtime.clone(), &settings.data, &settings.run)?
                .logs_to(settings.logs, Journal::new(settings.journal_socket.clone())),
        );
        let mut registry = Registry::new(http);
        if let Some(path) = settings.auth_file.as_deref().filter(|p| p.exists()) {
            for (host, credentials) in crate::registry::docker_auths(path)? {
                registry = registry.credentials(host, credentials);
            }
        }
        Ok(Self {
            registry,
            containers,
            platform: settings.platform.clone(),
        })
    }

    pub fn containers(&self) -> &Arc<Containers> {
        &self.containers
    }

    fn store(&self) -> &Store {
        self.containers.store()
    }

    fn observed(s: Status) -> ObservedContainer {
        ObservedContainer {
            id: s.record.id,
            name: s.record.name,
            labels: s.record.labels,
            state: s.state,
            health: s.health,
            exit_code: s.exit_code,
        }
    }
}

fn grace(d: Duration) -> std::time::Duration {
    d.0
}

impl Engine for NativeEngine {
    async fn observe(&self) -> EngineResult<Observed> {
        let containers = self
            .containers
            .list()
            .await
            .map_err(|e| error("list containers", "", &e))?
            .into_iter()
            .map(Self::observed)
            .collect();
        let networks = self
            .containers
            .networks()
            .list()
            .map_err(|e| error("list networks", "", &e))?
            .into_iter()
            .map(|n| ObservedNetwork {
                name: n.name,
                release: Some(n.release),
            })
            .collect();
        let volumes: BTreeSet<String> = self
            .containers
            .volumes()
            .map_err(|e| error("list volumes", "", &e))?
            .into_iter()
            .collect();
        let images: BTreeSet<String> = self
            .store()
            .images()
            .map_err(|e| error("list images", "", &e))?
            .into_iter()
            .filter(|r| self.store().image(&r.reference).ok().flatten().is_some())
            .map(|r| r.reference)
            .collect();
        Ok(Observed {
            containers,
            networks,
            volumes,
            images,
        })
    }

    async fn pull(
        &self,
        image: &ImageRef,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> EngineResult<()> {
        let reference = image.engine_reference();
        crate::pull::pull(self.store(), &self.registry, image, &self.platform, &|p| {
            progress(PullProgress {
                done: p.done,
                total: p.total,
            });
        })
        .await
        .map(drop)
        .map_err(|e| error("pull image", &reference, &e))
    }

    async fn free_space(&self) -> EngineResult<u64> {
        self.store().free_space().map_err(|e| {
            error(
                "measure free space of",
                &self.store().root().display().to_string(),
                &e,
            )
        })
    }

    async fn create_network(&self, name: &str, release: &str) -> EngineResult<()> {
        match self.containers.networks().create(name, release) {
            Ok(true) => Ok(()),
            Ok(false) => Err(EngineError {
                kind: ErrorKind::Conflict,
                operation: "create network",
                target: name.to_owned(),
                message: "a network of this name exists".to_owned(),
            }),
            Err(e) => Err(error("create network", name, &e)),
        }
    }

    async fn remove_network(&self, name: &str) -> EngineResult<()> {
        match self.containers.networks().remove(name) {
            Ok(true) => Ok(()),
            Ok(false) => Err(EngineError {
                kind: ErrorKind::NotFound,
                operation: "remove network",
                target: name.to_owned(),
                message: "no such network".to_owned(),
            }),
            Err(e) => Err(error("remove network", name, &e)),
        }
    }

    async fn create_volume(&self, name: &str, _release: &str) -> EngineResult<()> {
        self.containers
            .create_volume(name)
            .map_err(|e| error("create volume", name, &e))
    }

    async fn create_container(&self, spec: &ContainerSpec<'_>) -> EngineResult<String> {
        let s = spec.service;
        let reference = s.image.engine_reference();
        let image = self
            .store()
            .image(&reference)
            .map_err(|e| error("create container", spec.name, &e))?
            .ok_or_else(|| EngineError {
                kind: ErrorKind::NotFound,
                operation: "create container",
                target: spec.name.to_owned(),
                message: format!("image {reference} is not in the store: pull it first"),
            })?;
        let mut binds = Vec::new();
        for m in &s.volumes {
            let source = match &m.source {
                MountSource::Volume(key) => {
                    let name = spec.release.volumes.get(key).map_or_else(
                        || format!("{}_{key}", spec.release.name),
                        |v| v.engine_name.clone(),
                    );
                    self.containers
                        .create_volume(&name)
                        .map_err(|e| error("create volume", &name, &e))?;
                    self.containers.volume_path(&name)
                }
                MountSource::Bind(path) => {
                    // Docker creates a missing bind source as a directory.
                    let path = Path::new(path);
                    if !path.exists() {
                        std::fs::create_dir_all(path).map_err(|e| {
                            error("create container", spec.name, &Error::io("creating", path)(e))
                        })?;
                    }
                    path.to_owned()
                }
            };
            binds.push(Bind {
                source: source.display().to_string(),
                target: m.target.clone(),
                read_only: m.read_only,
            });
        }
        let mut extra_env = Vec::new();
        if let Some(dir) = &spec.lock_dir {
            binds.push(Bind {
                source: dir.display().to_string(),
                target: locks::MOUNT.to_owned(),
                read_only: false,
            });
            extra_env.push(format!("{}={}/{}", locks::ENV, locks::MOUNT, locks::FILE));
        }
        let network = match s.network_mode {
            Some(NetworkMode::Host) => Network::Host,
            _ => Network::Isolated,
        };
        // Every member answers to its service name on each of its networks.
        let networks: Vec<(String, Vec<String>)> = s
            .networks
            .iter()
            .map(|(key, attachment)| {
                let name = spec.release.networks.get(key).map_or_else(
                    || format!("{}_{key}", spec.release.name),
                    |n| n.engine_name.clone(),
                );
                let mut aliases = vec![spec.service_name.to_owned()];
                aliases.extend(attachment.aliases.iter().cloned());
                (name, aliases)
            })
            .collect();
        let mut ports = Vec::new();
        for p in &s.ports {
            let host_port = match p.published {
                Some(port) => port,
                None => free_port().map_err(|e| {
                    error(
                        "create container",
                        spec.name,
                        &Error::io("finding a free port for", "/proc/net")(e),
                    )
                })?,
            };
            ports.push(PortMap {
                host_ip: p.host_ip.clone(),
                host_port,
                target: p.target,
                protocol: p.protocol.as_str().to_owned(),
            });
        }
        let mut labels: BTreeMap<String, String> = s.labels.clone();
        labels.extend(spec.labels.clone());
        self.containers
            .create(Create {
                name: spec.name,
                labels,
                service: s,
                image: &image,
                binds,
                network,
                networks,
                ports,
                extra_env,
            })
            .await
            .map_err(|e| error("create container", spec.name, &e))
    }

    async fn start(&self, container: &str) -> EngineResult<()> {
        self.containers
            .start(container)
            .await
            .map_err(|e| error("start container", container, &e))
    }

    async fn stop(&self, container: &str, grace_period: Duration, signal: Option<&str>) -> EngineResult<()> {
        self.containers
            .stop(container, grace(grace_period), signal)
            .await
            .map_err(|e| error("stop container", container, &e))
    }

    async fn remove(&self, container: &str) -> EngineResult<()> {
        self.containers
            .remove(container)
            .await
            .map_err(|e| error("remove container", container, &e))
    }

    async fn remove_image(&self, reference: &str) -> EngineResult<()> {
        let store = self.store();
        let record = store
            .image(reference)
            .map_err(|e| error("remove image", reference, &e))?
            .ok_or_else(|| EngineError {
                kind: ErrorKind::NotFound,
                operation: "remove image",
                target: reference.to_owned(),
                message: "no such image".to_owned(),
            })?;
        // Like Docker: a reference goes freely while another names the same
        // image; the last one only when no container uses the image.
        let others = store
            .images()
            .map_err(|e| error("remove image", reference, &e))?
            .into_iter()
            .filter(|r| r.reference != reference && r.manifest == record.manifest)
            .count();
        if others == 0 {
            let records = self
                .containers
                .records()
                .map_err(|e| error("remove image", reference, &e))?;
            if let Some(user) = records.iter().find(|c| c.layers == record.layers) {
                return Err(EngineError {
                    kind: ErrorKind::Conflict,
                    operation: "remove image",
                    target: reference.to_owned(),
                    message: format!("container {} uses it", user.name),
                });
            }
        }
        store
            .remove_image(reference)
            .map_err(|e| error("remove image", reference, &e))?;
        if others == 0 {
            let report = store
                .gc()
                .await
                .map_err(|e| error("remove image", reference, &e))?;
            tracing::debug!(reference, ?report, "image removed");
        }
        Ok(())
    }

    async fn inspect(&self, container: &str) -> EngineResult<ObservedContainer> {
        self.containers
            .status(container)
            .await
            .map(Self::observed)
            .map_err(|e| error("inspect container", container, &e))
    }

    async fn restart(&self, container: &str, grace_period: Duration) -> EngineResult<()> {
        self.containers
            .restart(container, grace(grace_period))
            .await
            .map_err(|e| error("restart container", container, &e))
    }

    async fn logs(&self, container: &str, lines: u32) -> EngineResult<String> {
        self.containers
            .logs(container, usize::try_from(lines).unwrap_or(usize::MAX))
            .await
            .map_err(|e| error("read logs of container", container, &e))
    }
}

/// A port no one listens on now (what an unpublished `ports:` entry gets).
fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}
