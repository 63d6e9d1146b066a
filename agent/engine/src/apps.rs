//! The apps boundary ([`containeros_apps::engine::Engine`]) on the Docker
//! Engine API.
//!
//! Written for the oldest API the agent must serve, Docker API 1.41
//! (Debian's dockerd 20.10, older balena-engine), and for podman's compat
//! API: mounts are given as `Binds` strings (the `Mounts` objects grew
//! options in 1.42 that older engines reject or silently drop, and a peer
//! agent loops forever on that read-back mismatch); a container is created
//! on one network and connected to the others afterwards (more than one
//! endpoint at create needs 1.44); the stop signal is part of the container
//! config rather than a stop parameter (1.42).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummaryStateEnum, DeviceMapping,
    EndpointSettings, HealthConfig, HealthStatusEnum, HostConfig, NetworkConnectRequest,
    NetworkCreateRequest, NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, ListImagesOptions,
    ListNetworksOptions, LogsOptions, RemoveContainerOptions, RemoveImageOptions, RestartContainerOptions,
    StopContainerOptions,
};
use containeros_apps::engine::{ContainerSpec, Engine, EngineError, EngineResult, ErrorKind, PullProgress};
use containeros_apps::locks;
use containeros_apps::plan::{
    ContainerState, Health, LABEL_RELEASE, Observed, ObservedContainer, ObservedNetwork,
};
use containeros_apps::release::{Duration, HealthTest, ImageRef, MountSource, NetworkMode, Restart};
use futures_util::StreamExt as _;

/// The Docker API backend of the apps executor.
#[derive(Debug, Clone)]
pub struct DockerApps {
    docker: Docker,
}

impl DockerApps {
    /// `docker` should be a client whose version was negotiated
    /// ([`crate::DockerProbe::client`]).
    pub fn new(docker: Docker) -> Self {
        Self { docker }
    }
}

fn error(operation: &'static str, target: &str, e: bollard::errors::Error) -> EngineError {
    use bollard::errors::Error as B;
    let (kind, message) = match &e {
        B::DockerResponseServerError { status_code, message } => {
            let kind = match status_code {
                404 => ErrorKind::NotFound,
                409 => ErrorKind::Conflict,
                _ if message.contains("no space left on device") => ErrorKind::NoSpace,
                _ => ErrorKind::Other,
            };
            (kind, message.clone())
        }
        B::DockerStreamError { error } if error.contains("no space left on device") => {
            (ErrorKind::NoSpace, error.clone())
        }
        B::IOError { .. } | B::HyperResponseError { .. } | B::RequestTimeoutError => {
            (ErrorKind::Unreachable, e.to_string())
        }
        _ => (ErrorKind::Other, e.to_string()),
    };
    EngineError {
        kind,
        operation,
        target: target.to_owned(),
        message,
    }
}

fn label_filter() -> Option<HashMap<String, Vec<String>>> {
    Some(HashMap::from([(
        "label".to_owned(),
        vec![LABEL_RELEASE.to_owned()],
    )]))
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.0.as_nanos()).unwrap_or(i64::MAX)
}

impl Engine for DockerApps {
    async fn observe(&self) -> EngineResult<Observed> {
        let list = ListContainersOptions {
            all: true,
            filters: label_filter(),
            ..Default::default()
        };
        let summaries = self
            .docker
            .list_containers(Some(list))
            .await
            .map_err(|e| error("list containers", "", e))?;
        let mut containers = Vec::with_capacity(summaries.len());
        for s in summaries {
            let id = s.id.unwrap_or_default();
            let state = match s.state {
                Some(ContainerSummaryStateEnum::RUNNING) => ContainerState::Running,
                Some(ContainerSummaryStateEnum::PAUSED) => ContainerState::Paused,
                Some(ContainerSummaryStateEnum::RESTARTING) => ContainerState::Restarting,
                Some(ContainerSummaryStateEnum::EXITED) => ContainerState::Exited,
                Some(ContainerSummaryStateEnum::DEAD | ContainerSummaryStateEnum::REMOVING) => {
                    ContainerState::Dead
                }
                _ => ContainerState::Created,
            };
            // The list carries health only in its status text; an exited
            // container's code needs an inspect (rare: one-shot jobs).
            let status = s.status.unwrap_or_default();
            let health = if status.contains("(healthy)") {
                Health::Healthy
            } else if status.contains("(unhealthy)") {
                Health::Unhealthy
            } else if status.contains("(health: starting)") {
                Health::Starting
            } else {
                Health::None
            };
            let exit_code = if state == ContainerState::Exited {
                self.inspect(&id).await.ok().and_then(|c| c.exit_code)
            } else {
                None
            };
            containers.push(ObservedContainer {
                name: s
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .unwrap_or_default(),
                labels: s.labels.unwrap_or_default().into_iter().collect(),
                id,
                state,
                health,
                exit_code,
            });
        }
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: label_filter(),
            }))
            .await
            .map_err(|e| error("list networks", "", e))?
            .into_iter()
            .map(|n| ObservedNetwork {
                release: n.labels.as_ref().and_then(|l| l.get(LABEL_RELEASE).cloned()),
                name: n.name.unwrap_or_default(),
            })
            .collect();
        let volumes: BTreeSet<String> = self
            .docker
            .list_volumes(None::<bollard::query_parameters::ListVolumesOptions>)
            .await
            .map_err(|e| error("list volumes", "", e))?
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect();
        let images: BTreeSet<String> = self
            .docker
            .list_images(Some(ListImagesOptions {
                digests: true,
                ..Default::default()
            }))
            .await
            .map_err(|e| error("list images", "", e))?
            .into_iter()
            .flat_map(|i| i.repo_tags.into_iter().chain(i.repo_digests))
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
        let options = CreateImageOptions {
            from_image: Some(reference.clone()),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(options), None, None);
        // Layer id → (bytes done, bytes total).
        let layers: Mutex<BTreeMap<String, (u64, u64)>> = Mutex::new(BTreeMap::new());
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| error("pull image", &reference, e))?;
            if let Some(detail) = info.error_detail {
                let message = detail.message.unwrap_or_default();
                let kind = if message.contains("no space left on device") {
                    ErrorKind::NoSpace
                } else {
                    ErrorKind::Other
                };
                return Err(EngineError {
                    kind,
                    operation: "pull image",
                    target: reference,
                    message,
                });
            }
            let (Some(id), Some(status)) = (info.id, info.status) else {
                continue;
            };
            let mut map = layers.lock().unwrap_or_else(|e| e.into_inner());
            let entry = map.entry(id).or_default();
            match status.as_str() {
                "Downloading" => {
                    if let Some(d) = info.progress_detail {
                        let total = d.total.and_then(|t| u64::try_from(t).ok()).unwrap_or(entry.1);
                        let current = d.current.and_then(|c| u64::try_from(c).ok()).unwrap_or(entry.0);
                        *entry = (current, total.max(current));
                    }
                }
                "Download complete" | "Pull complete" | "Already exists" => entry.0 = entry.1,
                _ => continue,
            }
            let (done, total) = map.values().fold((0, 0), |(d, t), (cd, ct)| (d + cd, t + ct));
            drop(map);
            progress(PullProgress { done, total });
        }
        Ok(())
    }

    async fn free_space(&self) -> EngineResult<u64> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| error("read engine info", "", e))?;
        let root = PathBuf::from(
            info.docker_root_dir
                .unwrap_or_else(|| "/var/lib/docker".to_owned()),
        );
        let stat = nix::sys::statvfs::statvfs(&root).map_err(|e| EngineError {
            kind: ErrorKind::Other,
            operation: "measure free space of",
            target: root.display().to_string(),
            message: e.to_string(),
        })?;
        // fsblkcnt_t and c_ulong are 32-bit on the 32-bit ARM and MIPS
        // boards: the conversions are only useless on 64-bit hosts.
        #[allow(clippy::useless_conversion)]
        let free = u64::from(stat.blocks_available()) * u64::from(stat.fragment_size());
        Ok(free)
    }

    async fn create_network(&self, name: &str, release: &str) -> EngineResult<()> {
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            labels: Some(HashMap::from([(LABEL_RELEASE.to_owned(), release.to_owned())])),
            ..Default::default()
        };
        self.docker
            .create_network(request)
            .await
            .map(drop)
            .map_err(|e| error("create network", name, e))
    }

    async fn remove_network(&self, name: &str) -> EngineResult<()> {
        self.docker
            .remove_network(name)
            .await
            .map_err(|e| error("remove network", name, e))
    }

    async fn create_volume(&self, name: &str, release: &str) -> EngineResult<()> {
        let request = VolumeCreateRequest {
            name: Some(name.to_owned()),
            labels: Some(HashMap::from([(LABEL_RELEASE.to_owned(), release.to_owned())])),
            ..Default::default()
        };
        self.docker
            .create_volume(request)
            .await
            .map(drop)
            .map_err(|e| error("create volume", name, e))
    }

    async fn create_container(&self, spec: &ContainerSpec<'_>) -> EngineResult<String> {
        let (body, extra_networks) = container_body(spec);
        let options = CreateContainerOptions {
            name: Some(spec.name.to_owned()),
            ..Default::default()
        };
        let id = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| error("create container", spec.name, e))?
            .id;
        for (network, aliases) in extra_networks {
            let request = NetworkConnectRequest {
                container: id.clone(),
                endpoint_config: Some(EndpointSettings {
                    aliases: Some(aliases),
                    ..Default::default()
                }),
            };
            self.docker
                .connect_network(&network, request)
                .await
                .map_err(|e| error("connect container to network", &network, e))?;
        }
        Ok(id)
    }

    async fn start(&self, container: &str) -> EngineResult<()> {
        self.docker
            .start_container(
                container,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| error("start container", container, e))
    }

    async fn stop(&self, container: &str, grace: Duration, _signal: Option<&str>) -> EngineResult<()> {
        // The signal is the container's StopSignal, set at create: the stop
        // request's own signal parameter needs API 1.42.
        let options = StopContainerOptions {
            t: Some(i32::try_from(grace.0.as_secs()).unwrap_or(i32::MAX)),
            signal: None,
        };
        match self.docker.stop_container(container, Some(options)).await {
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            other => other.map_err(|e| error("stop container", container, e)),
        }
    }

    async fn remove(&self, container: &str) -> EngineResult<()> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        self.docker
            .remove_container(container, Some(options))
            .await
            .map_err(|e| error("remove container", container, e))
    }

    async fn remove_image(&self, reference: &str) -> EngineResult<()> {
        // Not forced: the engine refuses (409) while any container uses it.
        let options = RemoveImageOptions {
            force: false,
            noprune: false,
            ..Default::default()
        };
        self.docker
            .remove_image(reference, Some(options), None)
            .await
            .map(drop)
            .map_err(|e| error("remove image", reference, e))
    }

    async fn inspect(&self, container: &str) -> EngineResult<ObservedContainer> {
        let c = self
            .docker
            .inspect_container(
                container,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(|e| error("inspect container", container, e))?;
        let state = c.state.unwrap_or_default();
        let status = match state.status {
            Some(ContainerStateStatusEnum::RUNNING) => ContainerState::Running,
            Some(ContainerStateStatusEnum::PAUSED) => ContainerState::Paused,
            Some(ContainerStateStatusEnum::RESTARTING) => ContainerState::Restarting,
            Some(ContainerStateStatusEnum::EXITED) => ContainerState::Exited,
            Some(ContainerStateStatusEnum::DEAD | ContainerStateStatusEnum::REMOVING) => ContainerState::Dead,
            _ => ContainerState::Created,
        };
        let health = match state.health.and_then(|h| h.status) {
            Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
            Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
            Some(HealthStatusEnum::STARTING) => Health::Starting,
            _ => Health::None,
        };
        Ok(ObservedContainer {
            id: c.id.unwrap_or_default(),
            name: c.name.unwrap_or_default().trim_start_matches('/').to_owned(),
            labels: c
                .config
                .and_then(|c| c.labels)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            state: status,
            health,
            exit_code: state.exit_code,
        })
    }

    async fn restart(&self, container: &str, grace: Duration) -> EngineResult<()> {
        let options = RestartContainerOptions {
            t: Some(i32::try_from(grace.0.as_secs()).unwrap_or(i32::MAX)),
            signal: None,
        };
        self.docker
            .restart_container(container, Some(options))
            .await
            .map_err(|e| error("restart container", container, e))
    }

    async fn logs(&self, container: &str, lines: u32) -> EngineResult<String> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        let mut stream = self.docker.logs(container, Some(options));
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| error("read logs of container", container, e))?;
            text.push_str(&chunk.to_string());
        }
        Ok(text)
    }
}

/// The create request for a service, and the networks (with aliases) to
/// connect it to after creation.
fn container_body(spec: &ContainerSpec<'_>) -> (ContainerCreateBody, Vec<(String, Vec<String>)>) {
    let s = spec.service;
    let release = spec.release;
    let mut binds: Vec<String> = s
        .volumes
        .iter()
        .map(|m| {
            let source = match &m.source {
                MountSource::Volume(key) => release
                    .volumes
                    .get(key)
                    .map_or_else(|| format!("{}_{key}", release.name), |v| v.engine_name.clone()),
                MountSource::Bind(path) => path.clone(),
            };
            let mode = if m.read_only { ":ro" } else { "" };
            format!("{source}:{}{mode}", m.target)
        })
        .collect();
    let mut env: Vec<String> = s.environment.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Some(dir) = &spec.lock_dir {
        binds.push(format!("{}:{}", dir.display(), locks::MOUNT));
        env.push(format!("{}={}/{}", locks::ENV, locks::MOUNT, locks::FILE));
    }
    let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &s.ports {
        let key = format!("{}/{}", p.target, p.protocol.as_str());
        port_bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: p.host_ip.clone(),
                host_port: p.published.map(|n| n.to_string()),
            });
    }
    let restart_policy = match s.restart {
        Restart::No => RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        },
        Restart::Always => RestartPolicy {
            name: Some(RestartPolicyNameEnum::ALWAYS),
            maximum_retry_count: None,
        },
        Restart::UnlessStopped => RestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        },
        Restart::OnFailure(n) => RestartPolicy {
            name: Some(RestartPolicyNameEnum::ON_FAILURE),
            maximum_retry_count: n.map(i64::from),
        },
    };
    // Networks: every member answers to its service name as well.
    let mut networks: Vec<(String, Vec<String>)> = s
        .networks
        .iter()
        .map(|(key, attachment)| {
            let name = release
                .networks
                .get(key)
                .map_or_else(|| format!("{}_{key}", release.name), |n| n.engine_name.clone());
            let mut aliases = vec![spec.service_name.to_owned()];
            aliases.extend(attachment.aliases.iter().cloned());
            (name, aliases)
        })
        .collect();
    let (network_mode, networking_config) = match s.network_mode {
        Some(NetworkMode::Host) => (Some("host".to_owned()), None),
        Some(NetworkMode::None) => (Some("none".to_owned()), None),
        Some(NetworkMode::Bridge) => (Some("bridge".to_owned()), None),
        None if networks.is_empty() => (None, None),
        None => {
            let (first, aliases) = networks.remove(0);
            let endpoints = HashMap::from([(
                first.clone(),
                EndpointSettings {
                    aliases: Some(aliases),
                    ..Default::default()
                },
            )]);
            (
                Some(first),
                Some(NetworkingConfig {
                    endpoints_config: Some(endpoints),
                }),
            )
        }
    };
    let healthcheck = s.healthcheck.as_ref().map(|h| HealthConfig {
        test: Some(match &h.test {
            HealthTest::Cmd(args) => std::iter::once("CMD".to_owned())
                .chain(args.iter().cloned())
                .collect(),
            HealthTest::CmdShell(line) => vec!["CMD-SHELL".to_owned(), line.clone()],
            HealthTest::None => vec!["NONE".to_owned()],
        }),
        interval: h.interval.map(nanos),
        timeout: h.timeout.map(nanos),
        retries: h.retries.map(i64::from),
        start_period: h.start_period.map(nanos),
        start_interval: None,
    });
    let mut labels: HashMap<String, String> = s.labels.clone().into_iter().collect();
    labels.extend(spec.labels.clone());
    let host_config = HostConfig {
        binds: (!binds.is_empty()).then_some(binds),
        port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
        restart_policy: Some(restart_policy),
        devices: (!s.devices.is_empty()).then(|| {
            s.devices
                .iter()
                .map(|d| DeviceMapping {
                    path_on_host: Some(d.host.clone()),
                    path_in_container: Some(d.container.clone()),
                    cgroup_permissions: Some(d.permissions.clone()),
                })
                .collect()
        }),
        privileged: Some(s.privileged),
        cap_add: (!s.cap_add.is_empty()).then(|| s.cap_add.iter().cloned().collect()),
        cap_drop: (!s.cap_drop.is_empty()).then(|| s.cap_drop.iter().cloned().collect()),
        tmpfs: (!s.tmpfs.is_empty()).then(|| s.tmpfs.clone().into_iter().collect()),
        readonly_rootfs: Some(s.read_only),
        memory: s.mem_limit.map(|m| i64::try_from(m.0).unwrap_or(i64::MAX)),
        nano_cpus: s.cpus.map(|c| i64::try_from(c.0).unwrap_or(i64::MAX)),
        network_mode,
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(s.image.engine_reference()),
        cmd: s.command.clone(),
        entrypoint: s.entrypoint.clone(),
        env: Some(env),
        user: s.user.clone(),
        working_dir: s.working_dir.clone(),
        hostname: s.hostname.clone(),
        labels: Some(labels),
        stop_signal: s.stop_signal.clone(),
        stop_timeout: i64::try_from(s.stop_grace_period.0.as_secs()).ok(),
        healthcheck,
        exposed_ports: (!s.ports.is_empty()).then(|| {
            s.ports
                .iter()
                .map(|p| format!("{}/{}", p.target, p.protocol.as_str()))
                .collect()
        }),
        host_config: Some(host_config),
        networking_config,
        ..Default::default()
    };
    (body, networks)
}
