//! Container output to journald: a real `systemd-journald` (Debian's, run
//! as a journal namespace of its own, so it neither needs nor touches the
//! host's journal) receives a container's lines under the service's name,
//! and keeps receiving them while the engine is dropped and opened again;
//! the stream header on the wire, read by a socket the test listens on;
//! the file when there is no journald; a failed start quoting the
//! runtime. Needs root, `runc` and the local registry (as `containers.rs`).

mod common;

use std::io::Read as _;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{REGISTRY, busybox_layer, push_image};
use containeros_apps::plan::LABEL_SERVICE;
use containeros_apps::release::{Mode, parse};
use containeros_native::containers::{Containers, Create};
use containeros_native::journal::Journal;
use containeros_native::spec::Network;
use containeros_native::{ImageRecord, LogTarget, Registry, Store, pull};

const JOURNALD: &str = "/lib/systemd/systemd-journald";

fn runtime() -> PathBuf {
    std::env::var_os("CONTAINEROS_TEST_RUNTIME").map_or_else(|| PathBuf::from("runc"), PathBuf::from)
}

struct Harness {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: Arc<Store>,
    image: ImageRecord,
}

impl Harness {
    async fn new() -> Self {
        common::require_registry().await;
        let repo = "containeros-test/native-busybox-journal";
        push_image(repo, Some("v1"), "linux/amd64", &[busybox_layer()]).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_owned();
        let store = Arc::new(Store::open(&root.join("store")).expect("open store"));
        let image = pull(
            &store,
            &Registry::new(common::http()),
            &format!("{REGISTRY}/{repo}:v1").parse().expect("reference"),
            &containeros_native::Platform::host(),
            &|_| {},
        )
        .await
        .expect("pull busybox");
        Self {
            _dir: dir,
            root,
            store,
            image,
        }
    }

    /// The engine's containers (a second call: the agent after a restart).
    fn open(&self, logs: LogTarget, socket: &Path) -> Containers {
        Containers::new(
            Arc::clone(&self.store),
            runtime(),
            &self.root.join("data"),
            &self.root.join("run"),
        )
        .expect("containers")
        .logs_to(logs, Journal::new(socket.to_owned()))
    }

    async fn create(&self, containers: &Containers, name: &str, service: &str, command: &str) -> String {
        let text = format!(
            "name: t\nx-containeros: {{ version: \"1\" }}\nservices:\n  s:\n    image: {REGISTRY}/containeros-test/native-busybox-journal:v1\n    command: [\"sh\", \"-c\", \"{command}\"]\n"
        );
        let release = parse(&text, "test.yml", Mode::Development).expect("test release parses");
        containers
            .create(Create {
                name,
                labels: [(LABEL_SERVICE.to_owned(), service.to_owned())].into(),
                service: &release.services["s"],
                image: &self.image,
                binds: vec![],
                network: Network::Isolated,
                networks: vec![],
                ports: vec![],
                extra_env: vec![],
            })
            .await
            .expect("create")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let run = self.root.join("run/runtime");
        if let Ok(entries) = std::fs::read_dir(&run) {
            for e in entries.flatten() {
                let _ = Command::new(runtime())
                    .arg("--root")
                    .arg(&run)
                    .args(["delete", "--force"])
                    .arg(e.file_name())
                    .status();
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.root.join("data/containers")) {
            for e in entries.flatten() {
                let _ = rustix::mount::unmount(e.path().join("rootfs"), rustix::mount::UnmountFlags::DETACH);
            }
        }
    }
}

/// `systemd-journald <namespace>`: its sockets in
/// `/run/systemd/journal.<namespace>/`, its files in
/// `/var/log/journal/<machine-id>.<namespace>`, both removed on drop.
struct Journald {
    child: Child,
    namespace: String,
}

impl Journald {
    fn start() -> Self {
        let namespace = format!("ctostest{}x{}", std::process::id(), rand_suffix());
        let child = Command::new(JOURNALD)
            .arg(&namespace)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("systemd-journald runs");
        let this = Self { child, namespace };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !this.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "journald made no {}",
                this.socket().display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        this
    }

    fn socket(&self) -> PathBuf {
        PathBuf::from(format!("/run/systemd/journal.{}/stdout", self.namespace))
    }

    /// `journalctl --namespace=… <args>`, as the user would read it.
    fn journalctl(&self, args: &[&str]) -> String {
        let out = Command::new("journalctl")
            .arg(format!("--namespace={}", self.namespace))
            .args(["--quiet", "--no-pager"])
            .args(args)
            .output()
            .expect("journalctl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(format!("/run/systemd/journal.{}", self.namespace));
        if let Ok(id) = std::fs::read_to_string("/etc/machine-id") {
            for base in ["/var/log/journal", "/run/log/journal"] {
                let _ = std::fs::remove_dir_all(format!("{base}/{}.{}", id.trim(), self.namespace));
            }
        }
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match check().await {
            None => return,
            Some(last) => assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last:\n{last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints `tick N` every 200 ms on stdout, `oops` once on stderr.
const TICKER: &str = "echo oops >&2; i=0; while true; do i=$$((i+1)); echo tick $$i; sleep 0.2; done";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_reaches_a_real_journald_under_the_service_name_across_agent_restarts() {
    assert!(
        Path::new(JOURNALD).exists(),
        "{JOURNALD} is missing: install Debian's systemd package"
    );
    let journald = Journald::start();
    let h = Harness::new().await;
    let containers = h.open(LogTarget::Journald, &journald.socket());
    let id = h.create(&containers, "shop_ticker_1", "ticker", TICKER).await;
    containers.start(&id).await.expect("start");

    wait_for("the container's lines through the engine", async || {
        let logs = containers.logs(&id, 5).await.expect("logs");
        (!logs.contains("tick 3")).then_some(logs)
    })
    .await;
    let logs = containers.logs(&id, 3).await.expect("logs");
    // The newest lines: the stderr line came first.
    assert_eq!(logs.lines().count(), 3, "{logs}");
    assert!(logs.lines().all(|l| l.starts_with("tick ")), "{logs}");
    // As the user reads it: under the service's name, stderr at LOG_ERR.
    assert!(
        journald
            .journalctl(&["-t", "ticker", "-o", "cat"])
            .contains("tick 1")
    );
    assert_eq!(
        journald
            .journalctl(&["-t", "ticker", "-o", "cat", "-p", "err"])
            .trim(),
        "oops"
    );
    let entry = journald.journalctl(&["-t", "ticker", "-o", "export", "-n", "1"]);
    assert!(entry.contains("SYSLOG_IDENTIFIER=ticker\n"), "{entry}");
    assert!(entry.contains("_TRANSPORT=stdout\n"), "{entry}");
    assert!(entry.contains("PRIORITY=6\n"), "{entry}");

    // The agent goes away; the container keeps the connection.
    drop(containers);
    let count = |text: &str| text.lines().filter(|l| l.starts_with("tick ")).count();
    let before = count(&journald.journalctl(&["-t", "ticker", "-o", "cat"]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = count(&journald.journalctl(&["-t", "ticker", "-o", "cat"]));
    assert!(
        during > before,
        "no line while the engine was gone: {before} then {during}"
    );

    let again = h.open(LogTarget::Journald, &journald.socket());
    let last = |logs: &str| {
        logs.lines()
            .filter_map(|l| l.strip_prefix("tick ")?.parse::<u32>().ok())
            .max()
            .unwrap_or(0)
    };
    let seen = last(&again.logs(&id, 5).await.expect("logs"));
    wait_for("more lines after the restart", async || {
        let logs = again.logs(&id, 5).await.expect("logs");
        (last(&logs) <= seen).then_some(logs)
    })
    .await;
    // Every line once, in order: the same stream, not a second one.
    let all = journald.journalctl(&["-t", "ticker", "-o", "cat", "-p", "info..info"]);
    let ticks: Vec<u32> = all
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert_eq!(ticks, (1..=ticks.len() as u32).collect::<Vec<_>>());

    again.remove(&id).await.expect("remove");
    assert!(!h.root.join("run/logs").join(format!("{id}.journal")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_header_is_what_journald_reads() {
    let h = Harness::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("stdout");
    let listener = UnixListener::bind(&socket).expect("listen");
    let containers = h.open(LogTarget::Auto, &socket);
    let id = h
        .create(&containers, "shop_web_1", "web", "echo hello; echo bad >&2")
        .await;
    containers.start(&id).await.expect("start");
    let mut streams = Vec::new();
    for _ in 0..2 {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read to the end");
        streams.push(text);
    }
    assert_eq!(
        streams,
        ["web\n\n6\n0\n0\n0\n0\nhello\n", "web\n\n3\n0\n0\n0\n0\nbad\n"]
    );
    containers.remove(&id).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_journald_output_goes_to_the_file_or_the_start_fails_as_told() {
    let h = Harness::new().await;
    let missing = h.root.join("no-journald/stdout");
    let auto = h.open(LogTarget::Auto, &missing);
    let id = h.create(&auto, "shop_file_1", "file", "echo to-the-file").await;
    auto.start(&id).await.expect("start");
    wait_for("the file", async || {
        let logs = auto.logs(&id, 10).await.expect("logs");
        (logs != "to-the-file\n").then_some(logs)
    })
    .await;
    assert!(h.root.join("run/logs").join(format!("{id}.log")).exists());

    let strict = h.open(LogTarget::Journald, &missing);
    let err = strict.start(&id).await.expect_err("no journald");
    let message = err.to_string();
    assert!(message.contains(&missing.display().to_string()), "{message}");
    assert!(message.contains("engine.native_logs"), "{message}");
    strict.remove(&id).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_quotes_the_runtime_not_the_journal() {
    let h = Harness::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("stdout");
    let listener = UnixListener::bind(&socket).expect("listen");
    let containers = h.open(LogTarget::Journald, &socket);
    let text = format!(
        "name: t\nx-containeros: {{ version: \"1\" }}\nservices:\n  s:\n    image: {REGISTRY}/containeros-test/native-busybox-journal:v1\n    command: [\"/no/such/program\"]\n"
    );
    let release = parse(&text, "test.yml", Mode::Development).expect("test release parses");
    let id = containers
        .create(Create {
            name: "shop_broken_1",
            labels: [(LABEL_SERVICE.to_owned(), "broken".to_owned())].into(),
            service: &release.services["s"],
            image: &h.image,
            binds: vec![],
            network: Network::Isolated,
            networks: vec![],
            ports: vec![],
            extra_env: vec![],
        })
        .await
        .expect("create");
    let err = containers.start(&id).await.expect_err("no such program");
    let message = err.to_string();
    // From the runtime's own log file (--log): its stderr went to the journal.
    assert!(message.contains("create failed"), "{message}");
    assert!(message.contains("/no/such/program"), "{message}");
    drop(listener);
    containers.remove(&id).await.expect("remove");
}
