//! The agent with a real engine: status over D-Bus, readiness and watchdog
//! notifications, engine death and recovery, clean stop.

use std::collections::BTreeSet;
use std::time::Duration;

use containeros_tests::{Agent, Bus, Dockerd, UnitManager, cli, eventually, require_root};
use futures_util::StreamExt;

/// Which engine the agent runs the apps on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A private dockerd, supervised as `docker.service`.
    Docker,
    /// The agent's built-in engine with Debian's `runc` (this machine's
    /// hybrid cgroup layout makes crun refuse).
    Native,
}

/// The built-in engine's directories; what the agent left running in them
/// is killed and unmounted when the device goes.
pub struct NativeDirs {
    /// `engine.native_run_dir` lives here (a tmpfs on a device).
    pub dir: tempfile::TempDir,
    /// `engine.native_dir`.
    pub data: std::path::PathBuf,
}

pub const NATIVE_RUNTIME: &str = "/usr/sbin/runc";

impl NativeDirs {
    pub fn data(&self) -> std::path::PathBuf {
        self.data.clone()
    }

    pub fn runtime_root(&self) -> std::path::PathBuf {
        self.dir.path().join("run/runtime")
    }

    /// `runc --root <ours> args…`.
    pub fn runc(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(NATIVE_RUNTIME)
            .arg("--root")
            .arg(self.runtime_root())
            .args(args)
            .output()
            .expect("runc")
    }
}

impl Drop for NativeDirs {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(self.runtime_root()) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.runc(&["delete", "--force", &id]);
            }
        }
        let quiet = |program: &str, args: &[&str]| {
            let _ = std::process::Command::new(program)
                .args(args)
                .stderr(std::process::Stdio::null())
                .status();
        };
        if let Ok(entries) = std::fs::read_dir(self.data().join("containers")) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let short = &id[..id.len().min(12)];
                quiet("ip", &["netns", "del", &format!("cos{short}")]);
                quiet("nft", &["delete", "table", "ip", &format!("p{short}")]);
                let _ = nix::mount::umount2(&e.path().join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
                for controller in [
                    "memory", "cpu", "cpuacct", "pids", "devices", "freezer", "blkio", "cpuset", "systemd",
                    "",
                ] {
                    let _ = std::fs::remove_dir(
                        std::path::Path::new("/sys/fs/cgroup")
                            .join(controller)
                            .join("containeros")
                            .join(e.file_name()),
                    );
                }
            }
        }
        // The release's bridges and their masquerade tables.
        if let Ok(entries) = std::fs::read_dir(self.data().join("networks")) {
            for e in entries.flatten() {
                let Ok(bytes) = std::fs::read(e.path()) else {
                    continue;
                };
                let Ok(record) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                    continue;
                };
                if let Some(bridge) = record["bridge"].as_str() {
                    quiet("nft", &["delete", "table", "ip", &format!("n{bridge}")]);
                    quiet("ip", &["link", "del", bridge]);
                }
            }
        }
    }
}

/// Fields drop in this order: the agent, then the native engine's
/// containers, then the unit manager (stopping dockerd), then dockerd's
/// directory, then the bus.
pub struct Device {
    pub agent: Agent,
    pub native: Option<NativeDirs>,
    pub units: UnitManager,
    /// With [`Backend::Native`], a directory only: no dockerd is started.
    pub dockerd: Dockerd,
    pub _state: tempfile::TempDir,
    pub bus: Bus,
}

impl Device {
    /// [`Device::start`] on `backend`.
    pub async fn start_on(backend: Backend) -> Self {
        Self::start_on_with(backend, "").await
    }

    /// [`Device::start_with`] on `backend` (the default dockerd for Docker).
    pub async fn start_on_with(backend: Backend, extra_config: &str) -> Self {
        match backend {
            Backend::Docker => Self::start_with(Dockerd::new(), extra_config).await,
            Backend::Native => Self::start_native(extra_config).await,
        }
    }

    /// The agent on its built-in engine: no dockerd, no engine unit.
    pub async fn start_native(extra_config: &str) -> Self {
        Self::start_native_in(Dockerd::new(), None, extra_config).await
    }

    /// The built-in engine with `engine.native_dir` on the data-root
    /// filesystem of `dockerd` (which is not started): with
    /// [`Dockerd::with_small_data_root`], a small disk to fill.
    pub async fn start_native_on_data_root(dockerd: Dockerd, extra_config: &str) -> Self {
        let data = dockerd
            .socket()
            .parent()
            .expect("dockerd dir")
            .join("data/native");
        Self::start_native_in(dockerd, Some(data), extra_config).await
    }

    async fn start_native_in(dockerd: Dockerd, data: Option<std::path::PathBuf>, extra_config: &str) -> Self {
        require_root();
        let bus = Bus::start();
        let units = UnitManager::start(&bus, &[]).await;
        let state = tempfile::tempdir().expect("tempdir");
        let dir = tempfile::Builder::new()
            .prefix("cos-native")
            .tempdir()
            .expect("tempdir");
        let native = NativeDirs {
            data: data.unwrap_or_else(|| dir.path().join("data")),
            dir,
        };
        let agent = Agent::start(&format!(
            r#"
[agent]
state_dir = "{state}"
log_level = "debug"
[dbus]
bus = "{bus}"
[engine]
kind = "native"
runtime = "{NATIVE_RUNTIME}"
native_dir = "{data}"
native_run_dir = "{run}"
unit = ""
[apps]
lock_dir = "{state}/locks"
{extra_config}
"#,
            state = state.path().display(),
            bus = bus.address(),
            data = native.data().display(),
            run = native.dir.path().join("run").display(),
        ));
        Self {
            agent,
            native: Some(native),
            units,
            dockerd,
            _state: state,
            bus,
        }
    }

    /// A bus, a unit manager running a private dockerd as `docker.service`,
    /// and the agent supervising it with short intervals.
    pub async fn start() -> Self {
        Self::start_with(Dockerd::new(), "").await
    }

    /// The same, with a given dockerd and extra agent configuration: keys
    /// of the `[apps]` section, then any further sections. Update locks
    /// live in the test's own state directory (`<state>/locks`).
    pub async fn start_with(dockerd: Dockerd, extra_config: &str) -> Self {
        Self::start_configured(dockerd, "", extra_config).await
    }

    /// The same, with extra keys for the `[engine]` section too.
    pub async fn start_configured(dockerd: Dockerd, engine_config: &str, extra_config: &str) -> Self {
        require_root();
        let bus = Bus::start();
        let units = UnitManager::start(&bus, &[("docker.service", dockerd.argv())]).await;
        let started = units.start_unit("docker.service").await;
        assert_eq!(
            started,
            "done",
            "dockerd did not start: {}",
            units.log("docker.service")
        );
        let state = tempfile::tempdir().expect("tempdir");
        let agent = Agent::start(&format!(
            r#"
[agent]
state_dir = "{state}"
log_level = "debug"
[dbus]
bus = "{bus}"
[engine]
socket = "{socket}"
unit = "docker.service"
check_interval = "1s"
check_timeout = "1s"
failures_before_restart = 2
restart_backoff = "1s"
restart_backoff_max = "4s"
{engine_config}
[apps]
lock_dir = "{state}/locks"
{extra_config}
"#,
            state = state.path().display(),
            bus = bus.address(),
            socket = dockerd.socket().display(),
        ));
        Self {
            bus,
            dockerd,
            _state: state,
            units,
            native: None,
            agent,
        }
    }

    pub fn status_json(&self) -> serde_json::Value {
        let out = cli(self.bus.address())
            .args(["status", "--json"])
            .output()
            .expect("cli");
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    }

    pub async fn engine_up(&self) -> serde_json::Value {
        eventually(60, "engine up", || async {
            let s = self.status_json();
            (s["engine_state"] == "up").then_some(s)
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_over_dbus_shows_the_engine_and_the_agent() {
    let device = Device::start().await;
    let status = device.engine_up().await;
    assert_eq!(status["agent_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["operation"], "idle");
    assert_eq!(status["engine_restarts"], 0);
    let engine = status["engine_version"].as_str().unwrap_or_default();
    // The private dockerd is Debian's 20.10 (Docker API 1.41): the agent
    // must have negotiated down to it rather than speak bollard's newest.
    assert!(
        engine.ends_with("(API 1.41)"),
        "negotiated API version in {engine:?}"
    );

    let out = cli(device.bus.address()).arg("status").output().expect("cli");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("Engine:       up, "), "{text}");
    assert!(text.contains("Agent:        "), "{text}");

    // Readiness came with READY=1 (Agent::start waited for it); the
    // watchdog (WATCHDOG_USEC=1s) is pinged at half the period.
    let mut pings = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pings < 3 && std::time::Instant::now() < deadline {
        pings += device
            .agent
            .notifications()
            .iter()
            .filter(|m| m.as_str() == "WATCHDOG=1")
            .count();
    }
    assert!(pings >= 3, "{pings} watchdog pings in 10 s");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_engine_is_reported_down_and_restarted_through_systemd() {
    let device = Device::start().await;
    device.engine_up().await;

    // Watch the API's own signals, as a dashboard would.
    let connection = device.bus.connect().await;
    let props = zbus::fdo::PropertiesProxy::builder(&connection)
        .destination(containeros_api::BUS_NAME)
        .expect("name")
        .path(containeros_api::OBJECT_PATH)
        .expect("path")
        .build()
        .await
        .expect("proxy");
    let mut changes = props.receive_properties_changed().await.expect("subscribe");

    let pid = device.units.main_pid("docker.service").expect("dockerd runs");
    let starts_before = device.units.starts("docker.service");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill dockerd");

    let mut states = Vec::new();
    let seen = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(signal) = changes.next().await {
            let Ok(args) = signal.args() else { continue };
            if let Some(value) = args.changed_properties().get("EngineState") {
                let state: String = value
                    .try_clone()
                    .ok()
                    .and_then(|v| String::try_from(v).ok())
                    .unwrap_or_default();
                states.push(state.clone());
                if state == "up" {
                    return;
                }
            }
        }
    })
    .await;
    assert!(
        seen.is_ok(),
        "engine never came back; states {states:?}; agent log:\n{}",
        device.agent.stderr()
    );
    let distinct: BTreeSet<&str> = states.iter().map(String::as_str).collect();
    assert!(distinct.contains("restarting"), "states {states:?}");

    let status = device.engine_up().await;
    assert_eq!(status["engine_restarts"], 1, "{status}");
    assert_eq!(device.units.starts("docker.service"), starts_before + 1);
    assert_ne!(
        device.units.main_pid("docker.service"),
        Some(pid),
        "a new dockerd runs"
    );
    let log = device.agent.stderr();
    assert!(
        log.contains("restarting the engine"),
        "the restart is logged:\n{log}"
    );

    // A second death is restarted too: the agent's connection is already
    // subscribed to systemd's job signals, which systemd answers with
    // AlreadySubscribed.
    let pid = device
        .units
        .main_pid("docker.service")
        .expect("dockerd runs again");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill dockerd again");
    eventually(120, "the engine restarted a second time", || async {
        let s = device.status_json();
        (s["engine_state"] == "up" && s["engine_restarts"] == 2).then_some(())
    })
    .await;
    assert_eq!(device.units.starts("docker.service"), starts_before + 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly_and_releases_the_name() {
    let mut device = Device::start().await;
    let status = device.agent.terminate();
    assert!(status.success(), "exit {status}: {}", device.agent.stderr());
    assert!(device.agent.notifications().iter().any(|m| m == "STOPPING=1"));
    let out = cli(device.bus.address()).arg("status").output().expect("cli");
    assert_eq!(out.status.code(), Some(3), "not running → exit 3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the ContainerOS agent is not running"),
        "{stderr}"
    );
}
