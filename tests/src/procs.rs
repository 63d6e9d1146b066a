//! The processes under test: the workspace's binaries, a private dockerd,
//! and the agent with its readiness read from a `NOTIFY_SOCKET`.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Path of a workspace binary (`containeros-agent`, `containeros`), built
/// once per test run with the same cargo and profile as the tests.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // target/<profile>/deps/system-<hash> → target/<profile>
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut build = Command::new(cargo);
        build
            .current_dir(&workspace)
            .args([
                "build",
                "--bin",
                "containeros-agent",
                "--bin",
                "containeros",
                "--bin",
                "containeros-publish",
            ])
            .env("CARGO_TARGET_DIR", profile_dir.parent().expect("target"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
        profile_dir
    });
    dir.join(name)
}

/// The CLI, pointed at `bus`.
pub fn cli(bus: &str) -> Command {
    let mut c = Command::new(bin("containeros"));
    c.arg("--bus").arg(bus);
    c
}

/// Wraps `command` to run under another uid/gid (util-linux `setpriv`),
/// with the given supplementary groups.
pub fn run_as(command: &Command, uid: u32, gid: u32, groups: &[u32]) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}")).arg(format!("--regid={gid}"));
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        c.arg(format!("--groups={}", list.join(",")));
    }
    c.arg(command.get_program()).args(command.get_args());
    c
}

/// Panics with a clear message when not root (the tests need loop devices,
/// setpriv, a private dockerd).
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the system tests need root (private dockerd, other uids); run them as root or through .ci/run"
    );
}

/// A private dockerd's command line: its own data-root, exec-root and
/// socket, no default bridge, no iptables rules and its own address pool,
/// so it runs beside any other engine on the machine.
#[derive(Debug)]
pub struct Dockerd {
    dir: tempfile::TempDir,
}

impl Default for Dockerd {
    fn default() -> Self {
        Self::new()
    }
}

impl Dockerd {
    pub fn new() -> Self {
        // Short path: dockerd's and containerd's sockets live under it.
        let dir = tempfile::Builder::new()
            .prefix("cd")
            .tempdir_in("/tmp")
            .expect("tempdir");
        std::fs::write(dir.path().join("daemon.json"), "{}").expect("daemon.json");
        Self { dir }
    }

    /// A dockerd whose data-root is an ext4 filesystem of `mib` MiB on a
    /// loop device, for disk-full tests. Unmounted (and the loop device
    /// freed) when this is dropped.
    pub fn with_small_data_root(mib: u64) -> Self {
        let this = Self::new();
        let image = this.dir.path().join("data.img");
        let data = this.dir.path().join("data");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(mib << 20))
            .expect("data image");
        std::fs::create_dir(&data).expect("data dir");
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("run");
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image));
        run(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&data));
        this
    }

    /// Bytes free on the data-root's filesystem.
    pub fn data_free(&self) -> u64 {
        let stat = nix::sys::statvfs::statvfs(&self.dir.path().join("data")).expect("statvfs");
        #[allow(clippy::useless_conversion)]
        let free = u64::from(stat.blocks_available()) * u64::from(stat.fragment_size());
        free
    }

    /// Fills the data-root's filesystem until `leave` bytes are free, with a
    /// file outside dockerd's own directories; returns its path.
    pub fn fill_data_root(&self, leave: u64) -> PathBuf {
        let filler = self.dir.path().join("data").join("filler");
        let _ = std::fs::remove_file(&filler);
        let size = self.data_free().saturating_sub(leave);
        let out = Command::new("fallocate")
            .args(["-l", &size.to_string()])
            .arg(&filler)
            .output()
            .expect("fallocate");
        assert!(
            out.status.success(),
            "fallocate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        filler
    }

    /// The engine's data-root.
    pub fn data_root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    pub fn argv(&self) -> Vec<String> {
        let d = self.dir.path().display();
        [
            "dockerd".to_owned(),
            format!("--config-file={d}/daemon.json"),
            format!("--data-root={d}/data"),
            format!("--exec-root={d}/exec"),
            format!("--pidfile={d}/docker.pid"),
            format!("--host=unix://{d}/docker.sock"),
            "--bridge=none".to_owned(),
            // Networks from a /16 of their own, in /24s, apart from the
            // machine's (Docker's default pools are a few dozen /16s and
            // /20s); the bridges a stopped dockerd leaves are deleted when
            // this is dropped.
            "--default-address-pool=base=10.213.0.0/16,size=24".to_owned(),
            "--iptables=false".to_owned(),
            "--ip-masq=false".to_owned(),
            "--log-level=warn".to_owned(),
        ]
        .into()
    }
}

impl Dockerd {
    /// Deletes the bridges of this dockerd's networks, which a stopped
    /// dockerd leaves on the host with their routes: over many test runs on
    /// one machine they used up the networks' /16 and the host's routes.
    /// The networks are the `network/v1.0/bridge/<id>` keys of its network
    /// store; Docker names each bridge `br-` and the id's first 12 digits.
    fn delete_bridges(&self) {
        const KEY: &[u8] = b"network/v1.0/bridge/";
        let store = self.data_root().join("network/files/local-kv.db");
        let Ok(bytes) = std::fs::read(store) else {
            return;
        };
        let mut ids: Vec<String> = bytes
            .windows(KEY.len() + 12)
            .filter(|w| w.starts_with(KEY))
            .map(|w| &w[KEY.len()..])
            .filter(|id| id.iter().all(u8::is_ascii_hexdigit))
            .map(|id| String::from_utf8_lossy(id).into_owned())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let _ = Command::new("ip")
                .args(["link", "delete", &format!("br-{id}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Dockerd {
    /// dockerd bind-mounts its data-root onto itself and leaves it mounted
    /// when it exits; detach everything under the directory before it is
    /// removed, and delete the bridges it left. Drop this after the process
    /// has stopped.
    fn drop(&mut self) {
        self.delete_bridges();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|p| p.starts_with(dir.as_str()))
            .collect();
        points.sort_unstable_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A running `containeros-agent`.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    /// Datagrams received on the notify socket, drained continuously by a
    /// thread (as systemd does) so the agent's queue never fills.
    received: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    dir: tempfile::TempDir,
}

fn spawn_agent(dir: &Path) -> Child {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stderr"))
        .expect("stderr file");
    Command::new(bin("containeros-agent"))
        .arg("--config")
        .arg(dir.join("agent.toml"))
        .env("NOTIFY_SOCKET", dir.join("notify.sock"))
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start the agent")
}

impl Agent {
    /// Writes `config` to a file, starts the agent on it with
    /// `WATCHDOG_USEC` set, and waits for `READY=1`.
    pub fn start(config: &str) -> Self {
        let mut agent = Self::spawn(config);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if agent
                .notifications()
                .iter()
                .any(|m| m.lines().any(|l| l == "READY=1"))
            {
                return agent;
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("agent exited before ready ({status}): {}", agent.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready after 30s: {}",
                agent.stderr()
            );
        }
    }

    pub fn spawn(config: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cos-agent")
            .tempdir()
            .expect("tempdir");
        let config_path = dir.path().join("agent.toml");
        std::fs::write(&config_path, config).expect("write config");
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = notify.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        received.lock().unwrap_or_else(|e| e.into_inner()).push(text);
                    }
                }
            });
        }
        let child = spawn_agent(dir.path());
        Self {
            child,
            received,
            stop,
            dir,
        }
    }

    /// SIGKILL, as a crash or power cut would (no clean-up runs).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the agent again on the same configuration and state, and waits
    /// for `READY=1`.
    pub fn restart(&mut self) {
        let _ = self.notifications();
        self.child = spawn_agent(self.dir.path());
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self
                .notifications()
                .iter()
                .any(|m| m.lines().any(|l| l == "READY=1"))
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("agent exited before ready ({status}): {}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready after 30s: {}",
                self.stderr()
            );
        }
    }

    /// Datagrams the agent sent to its notify socket since the last call.
    pub fn notifications(&self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(20));
        std::mem::take(&mut *self.received.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The agent's configuration file; edit it between [`Agent::kill9`] and
    /// [`Agent::restart`].
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent ignored SIGTERM: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
