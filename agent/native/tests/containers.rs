//! Containers run by the real runtime binary (`runc` here; set
//! `CONTAINEROS_TEST_RUNTIME` to try another) over images pulled from the
//! local registry: lifecycle, stop signal and grace, memory limit,
//! restart policies, healthchecks, and adoption after an agent restart.
//! Needs root (overlayfs, cgroups).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Layer, REGISTRY, busybox_layer, push_image};
use containeros_apps::plan::{ContainerState, Health};
use containeros_apps::release::{Mode, Service, parse};
use containeros_native::containers::{Containers, Create};
use containeros_native::spec::{Bind, Network};
use containeros_native::{ImageRecord, Registry, Store, pull};

fn runtime() -> PathBuf {
    std::env::var_os("CONTAINEROS_TEST_RUNTIME").map_or_else(|| PathBuf::from("runc"), PathBuf::from)
}

struct Harness {
    _dir: tempfile::TempDir,
    root: PathBuf,
    containers: Arc<Containers>,
    image: ImageRecord,
}

impl Harness {
    async fn new() -> Self {
        common::require_registry().await;
        let repo = "containeros-test/native-busybox";
        let marker = Layer::default().file("etc/native-test", 0o644, "busybox\n");
        push_image(repo, Some("v1"), "linux/amd64", &[busybox_layer(), marker]).await;
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
        let containers = Arc::new(
            Containers::new(store, runtime(), &root.join("data"), &root.join("run")).expect("containers"),
        );
        Self {
            _dir: dir,
            root,
            containers,
            image,
        }
    }

    /// A second engine over the same directories: the agent after a restart.
    fn reopen(&self) -> Arc<Containers> {
        Arc::new(
            Containers::new(
                Arc::clone(self.containers.store()),
                runtime(),
                &self.root.join("data"),
                &self.root.join("run"),
            )
            .expect("containers"),
        )
    }

    async fn create(&self, name: &str, yaml: &str) -> String {
        self.create_with(name, yaml, Network::Isolated, vec![]).await
    }

    async fn create_with(&self, name: &str, yaml: &str, network: Network, binds: Vec<Bind>) -> String {
        let service = service(yaml);
        self.containers
            .create(Create {
                name,
                labels: [("test".to_owned(), name.to_owned())].into(),
                service: &service,
                image: &self.image,
                binds,
                network,
                networks: vec![],
                ports: vec![],
                extra_env: vec![],
            })
            .await
            .expect("create")
    }

    async fn wait_for(
        &self,
        id: &str,
        what: &str,
        pred: impl Fn(&containeros_native::containers::Status) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.containers.supervise_once().await.expect("supervise");
            let status = self.containers.status(id).await.expect("status");
            if pred(&status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {status:?}\nlogs:\n{}",
                self.logs(id).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn logs(&self, id: &str) -> String {
        self.containers.logs(id, 100).await.expect("logs")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Kill what a failed test left running (runc kill + delete).
        let run = self.root.join("run/runtime");
        if let Ok(entries) = std::fs::read_dir(&run) {
            for e in entries.flatten() {
                let id = e.file_name();
                let _ = std::process::Command::new(runtime())
                    .arg("--root")
                    .arg(&run)
                    .arg("delete")
                    .arg("--force")
                    .arg(&id)
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

fn service(yaml: &str) -> Service {
    let text = format!(
        "name: t\nx-containeros: {{ version: \"1\" }}\nservices:\n  s:\n    image: {REGISTRY}/containeros-test/native-busybox:v1\n{yaml}"
    );
    let release = parse(&text, "test.yml", Mode::Development).expect("test release parses");
    release.services["s"].clone()
}

const WAIT_TERM: &str = "trap 'echo got-term; exit 0' TERM; echo started; sleep 100000 & wait";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_runs_stops_on_its_signal_and_is_removed() {
    let h = Harness::new().await;
    let id = h
        .create(
            "lifecycle",
            &format!("    command: [\"sh\", \"-c\", \"{WAIT_TERM}\"]\n"),
        )
        .await;
    let status = h.containers.status(&id).await.expect("status");
    assert_eq!(status.state, ContainerState::Created);
    h.containers.start("lifecycle").await.expect("start by name");
    h.wait_for(&id, "output", |_| true).await;
    h.wait_for(&id, "started", |s| s.state == ContainerState::Running)
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !h.logs(&id).await.contains("started") {
        assert!(Instant::now() < deadline, "no output: {}", h.logs(&id).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = Instant::now();
    h.containers
        .stop(&id, Duration::from_secs(30), None)
        .await
        .expect("stop");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "SIGTERM stopped it, no grace wait: {:?}",
        t.elapsed()
    );
    let status = h.containers.status(&id).await.expect("status");
    assert_eq!(
        (status.state, status.exit_code),
        (ContainerState::Exited, Some(0)),
        "{status:?}"
    );
    assert!(h.logs(&id).await.contains("got-term"));
    // Stopped by request: no restart policy brings it back.
    h.containers.supervise_once().await.expect("supervise");
    assert_eq!(
        h.containers.status(&id).await.expect("status").state,
        ContainerState::Exited
    );

    h.containers.remove(&id).await.expect("remove");
    assert!(h.containers.status(&id).await.is_err());
    assert!(!h.root.join("data/containers").join(&id).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_ignoring_the_stop_signal_is_killed_after_the_grace_period() {
    let h = Harness::new().await;
    let id = h
        .create(
            "stubborn",
            "    command: [\"sh\", \"-c\", \"trap '' TERM; echo started; while true; do sleep 1; done\"]\n",
        )
        .await;
    h.containers.start(&id).await.expect("start");
    h.wait_for(&id, "running", |s| s.state == ContainerState::Running)
        .await;
    let t = Instant::now();
    h.containers
        .stop(&id, Duration::from_secs(1), None)
        .await
        .expect("stop");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "killed after the grace: {took:?}"
    );
    let status = h.containers.status(&id).await.expect("status");
    assert_eq!(status.exit_code, Some(137), "SIGKILL: {status:?}");
    h.containers.remove(&id).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_limit_is_enforced() {
    let h = Harness::new().await;
    // 64 MiB into a shell variable under a 16 MiB limit.
    let id = h
        .create(
            "memhog",
            "    mem_limit: 16m\n    command: [\"sh\", \"-c\", \"echo start; x=$$(head -c 67108864 /dev/zero | tr '\\\\0' a); echo survived $${#x}\"]\n",
        )
        .await;
    h.containers.start(&id).await.expect("start");
    let limit_v1 = PathBuf::from(format!(
        "/sys/fs/cgroup/memory/containeros/{id}/memory.limit_in_bytes"
    ));
    let limit_v2 = PathBuf::from(format!("/sys/fs/cgroup/containeros/{id}/memory.max"));
    let limit = std::fs::read_to_string(&limit_v1).or_else(|_| std::fs::read_to_string(&limit_v2));
    h.wait_for(&id, "the OOM kill", |s| s.state == ContainerState::Exited)
        .await;
    let status = h.containers.status(&id).await.expect("status");
    let logs = h.logs(&id).await;
    assert!(
        !logs.contains("survived"),
        "the hog finished under the limit: {logs}"
    );
    assert_eq!(
        status.exit_code,
        Some(137),
        "killed by the OOM killer: {status:?} {logs}"
    );
    if let Ok(limit) = limit {
        assert_eq!(limit.trim(), (16u64 << 20).to_string());
    }
    h.containers.remove(&id).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policies_bring_containers_back_as_told() {
    let h = Harness::new().await;
    let failing = h
        .create(
            "failing",
            "    restart: on-failure:2\n    command: [\"sh\", \"-c\", \"echo run; exit 3\"]\n",
        )
        .await;
    let always = h
        .create(
            "always",
            "    restart: always\n    command: [\"sh\", \"-c\", \"echo run; sleep 0.2\"]\n",
        )
        .await;
    let once = h
        .create(
            "once",
            "    restart: \"no\"\n    command: [\"sh\", \"-c\", \"exit 5\"]\n",
        )
        .await;
    for id in [&failing, &always, &once] {
        h.containers.start(id).await.expect("start");
    }
    h.wait_for(&failing, "two restarts, then rest", |s| {
        s.state == ContainerState::Exited && s.restarts == 2
    })
    .await;
    // It stays down now.
    for _ in 0..5 {
        h.containers.supervise_once().await.expect("supervise");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = h.containers.status(&failing).await.expect("status");
    assert_eq!((s.restarts, s.exit_code), (2, Some(3)), "{s:?}");
    assert_eq!(h.logs(&failing).await.matches("run").count(), 3);
    h.wait_for(&always, "restarts of an always container", |s| s.restarts >= 2)
        .await;
    let s = h.containers.status(&once).await.expect("status");
    assert_eq!(
        (s.state, s.exit_code, s.restarts),
        (ContainerState::Exited, Some(5), 0),
        "{s:?}"
    );
    for id in [&failing, &always, &once] {
        h.containers.remove(id).await.expect("remove");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthchecks_run_inside_the_container() {
    let h = Harness::new().await;
    let cmd = format!("    command: [\"sh\", \"-c\", \"{WAIT_TERM}\"]\n");
    let good = h
        .create(
            "healthy",
            &format!("{cmd}    healthcheck: {{ test: [\"CMD-SHELL\", \"test -f /etc/native-test\"], interval: 200ms, retries: 1 }}\n"),
        )
        .await;
    let bad = h
        .create(
            "unhealthy",
            &format!("{cmd}    healthcheck: {{ test: [\"CMD\", \"false\"], interval: 200ms, retries: 2 }}\n"),
        )
        .await;
    h.containers.start(&good).await.expect("start");
    h.containers.start(&bad).await.expect("start");
    assert_eq!(
        h.containers.status(&good).await.expect("status").health,
        Health::Starting
    );
    h.wait_for(&good, "healthy", |s| s.health == Health::Healthy)
        .await;
    h.wait_for(&bad, "unhealthy", |s| s.health == Health::Unhealthy)
        .await;
    for id in [&good, &bad] {
        h.containers.remove(id).await.expect("remove");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_container_is_found_again_after_an_agent_restart() {
    let h = Harness::new().await;
    let id = h
        .create(
            "survivor",
            &format!("    restart: always\n    command: [\"sh\", \"-c\", \"{WAIT_TERM}\"]\n"),
        )
        .await;
    h.containers.start(&id).await.expect("start");
    h.wait_for(&id, "running", |s| s.state == ContainerState::Running)
        .await;
    let pid = h.containers.status(&id).await.expect("status").pid.expect("pid");

    let after = h.reopen();
    let listed = after.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].record.id.as_str(), listed[0].state, listed[0].pid),
        (id.as_str(), ContainerState::Running, Some(pid))
    );
    // Starting and supervising it again adopts it: same process, no second one.
    after.start(&id).await.expect("start again");
    after.supervise_once().await.expect("supervise");
    assert_eq!(after.status(&id).await.expect("status").pid, Some(pid));
    after
        .stop(&id, Duration::from_secs(10), None)
        .await
        .expect("stop");
    assert_eq!(
        after.status(&id).await.expect("status").state,
        ContainerState::Exited
    );
    after.remove(&id).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_config_reaches_the_process() {
    let h = Harness::new().await;
    let volume = h.root.join("data/volumes/t_data/_data");
    std::fs::create_dir_all(&volume).expect("volume dir");
    let script = "id -u; echo FOO=$$FOO; hostname; pwd; touch /rootfile 2>/dev/null || echo read-only-root; \
                  touch /scratch/x && echo tmpfs-ok; echo kept > /data/file; sleep 100000";
    let id = h
        .create_with(
            "config",
            &format!(
                "    user: nobody\n    environment: {{ FOO: bar }}\n    hostname: box\n    working_dir: /tmp\n    read_only: true\n    tmpfs: [\"/scratch\"]\n    command: [\"sh\", \"-c\", \"{script}\"]\n"
            ),
            Network::Isolated,
            vec![Bind {
                source: volume.display().to_string(),
                target: "/data".into(),
                read_only: false,
            }],
        )
        .await;
    std::fs::set_permissions(&volume, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod volume");
    h.containers.start(&id).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(&volume.join("file")).exists() {
        assert!(
            Instant::now() < deadline,
            "no file in the volume; logs:\n{}",
            h.logs(&id).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = h.logs(&id).await;
    assert_eq!(logs, "65534\nFOO=bar\nbox\n/tmp\nread-only-root\ntmpfs-ok\n");
    let (code, out) = h
        .containers
        .exec(
            &id,
            &["cat".into(), "/etc/native-test".into()],
            Duration::from_secs(5),
        )
        .await
        .expect("exec");
    assert_eq!((code, out.as_str()), (0, "busybox\n"));
    h.containers.remove(&id).await.expect("remove");
    assert_eq!(
        std::fs::read_to_string(volume.join("file")).expect("volume file"),
        "kept\n",
        "volumes outlive containers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_on_a_bridge_reach_each_other_by_name_and_publish_ports() {
    use containeros_native::network::PortMap;
    let h = Harness::new().await;
    let net = format!("t_net{}", std::process::id());
    assert!(h.containers.networks().create(&net, "t").expect("create network"));
    let record = h
        .containers
        .networks()
        .get(&net)
        .expect("read")
        .expect("network record");
    assert!(
        Path::new("/sys/class/net").join(&record.bridge).exists(),
        "bridge is up"
    );
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let create = |name: &'static str, yaml: String, aliases: Vec<String>, ports: Vec<PortMap>| {
        let service = service(&yaml);
        let h = &h;
        let net = net.clone();
        async move {
            h.containers
                .create(Create {
                    name,
                    labels: Default::default(),
                    service: &service,
                    image: &h.image,
                    binds: vec![],
                    network: Network::Isolated,
                    networks: vec![(net, aliases)],
                    ports,
                    extra_env: vec![],
                })
                .await
                .expect("create")
        }
    };
    let web = create(
        "web",
        "    command: [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/etc\"]\n".to_owned(),
        vec!["web".into(), "www".into()],
        vec![PortMap {
            host_ip: None,
            host_port: port,
            target: 80,
            protocol: "tcp".into(),
        }],
    )
    .await;
    let client = create(
        "client",
        "    command: [\"sh\", \"-c\", \"until wget -q -O - http://www/native-test; do sleep 0.2; done; sleep 100000\"]\n".to_owned(),
        vec!["client".into()],
        vec![],
    )
    .await;
    h.containers.start(&web).await.expect("start web");
    h.containers.start(&client).await.expect("start client");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !h.logs(&client).await.contains("busybox") {
        assert!(
            Instant::now() < deadline,
            "client never reached web by name; client log:\n{}\nweb log:\n{}",
            h.logs(&client).await,
            h.logs(&web).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The published port, from the host, through a local address.
    let body = tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let mut s =
            std::net::TcpStream::connect((record.gateway(), port)).expect("connect to the published port");
        s.write_all(b"GET /native-test HTTP/1.0\r\n\r\n")
            .expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("response");
        out
    })
    .await
    .expect("join");
    assert!(body.ends_with("busybox\n"), "{body}");
    let bridge = h
        .containers
        .networks()
        .get(&net)
        .expect("read")
        .expect("record")
        .bridge;
    h.containers.remove(&client).await.expect("remove");
    h.containers.remove(&web).await.expect("remove");
    assert!(h.containers.networks().remove(&net).expect("remove network"));
    assert!(!Path::new("/sys/class/net").join(&bridge).exists(), "bridge gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_interrupted_create_left_is_removed_at_start() {
    let h = Harness::new().await;
    let net = format!("t_orphan{}", std::process::id());
    assert!(h.containers.networks().create(&net, "t").expect("create network"));
    let kept = h
        .create(
            "kept",
            &format!("    command: [\"sh\", \"-c\", \"{WAIT_TERM}\"]\n"),
        )
        .await;
    // A create cut short: a directory without its record, an address leased
    // to it, and a lease whose holder was never written.
    let half = h.root.join("data/containers").join("f".repeat(64));
    std::fs::create_dir_all(half.join("upper")).expect("half-created container");
    let leases = h.root.join("data/networks").join(&net);
    std::fs::write(leases.join("10.213.0.99"), "f".repeat(64)).expect("orphan lease");
    std::fs::write(leases.join("10.213.0.98"), "").expect("empty lease");

    let after = h.reopen();
    assert!(!half.exists(), "the half-created container is gone");
    assert_eq!(
        std::fs::read_dir(&leases).expect("leases").count(),
        0,
        "orphan leases released"
    );
    assert_eq!(after.records().expect("records").len(), 1);
    after.remove(&kept).await.expect("remove");
    assert!(after.networks().remove(&net).expect("remove network"));
}
