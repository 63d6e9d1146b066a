//! Application releases on the real engine: a private dockerd — or the
//! agent's built-in engine with runc — pulling test images from the local
//! registry, the agent driven through the CLI as a person would. Every
//! test runs on both backends (`…_docker`, `…_native`); the helpers look
//! at containers with the backend's own tools (the docker CLI, or runc and
//! the native engine's records).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use containeros_tests::{TestImage, busybox_image, cli, eventually, require_image_services};

use crate::device::{Backend, Device};

/// `docker` against the device's private engine.
pub fn docker(device: &Device, args: &[&str]) -> String {
    let out = Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", device.dockerd.socket().display()))
        .args(args)
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `docker` that may fail: the agent may remove a container between a
/// listing and a look at it.
pub fn try_docker(device: &Device, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", device.dockerd.socket().display()))
        .args(args)
        .output()
        .expect("docker CLI");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub fn running(device: &Device, container: &str) -> bool {
    match &device.native {
        None => {
            try_docker(device, &["inspect", "-f", "{{.State.Running}}", container]).as_deref() == Some("true")
        }
        Some(native) => {
            let out = native.runc(&["state", container]);
            out.status.success()
                && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                    .is_ok_and(|s| s["status"] == "running")
        }
    }
}

/// Runs `argv` in the container; `None` when that fails.
pub fn try_exec(device: &Device, container: &str, argv: &[&str]) -> Option<String> {
    match &device.native {
        None => {
            let mut args = vec!["exec", container];
            args.extend_from_slice(argv);
            try_docker(device, &args)
        }
        Some(native) => {
            let mut args = vec!["exec", container];
            args.extend_from_slice(argv);
            let out = native.runc(&args);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
    }
}

/// Runs `argv` in the container, which must succeed.
pub fn exec(device: &Device, container: &str, argv: &[&str]) -> String {
    try_exec(device, container, argv).unwrap_or_else(|| {
        panic!(
            "exec {argv:?} in {container} failed; agent log:\n{}",
            device.agent.stderr()
        )
    })
}

/// Stops a container behind the agent's back, as an operator with the
/// engine's own tool would.
pub fn stop_behind_its_back(device: &Device, container: &str) {
    match &device.native {
        None => {
            docker(device, &["stop", "-t", "1", container]);
        }
        Some(native) => {
            let out = native.runc(&["kill", container, "KILL"]);
            assert!(
                out.status.success(),
                "runc kill: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

pub fn variant(device: &Device, container: &str) -> Option<String> {
    try_exec(device, container, &["cat", "/variant"])
}

/// Service → container id of the release's containers (all states).
pub fn containers(device: &Device, release: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(native) = &device.native {
        let Ok(entries) = std::fs::read_dir(native.data().join("containers")) else {
            return map;
        };
        for e in entries.flatten() {
            // A container being created or removed may have no record.
            let Ok(bytes) = std::fs::read(e.path().join("container.json")) else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue;
            };
            let labels = &record["labels"];
            if labels["org.containeros.release"] == release {
                let service = labels["org.containeros.service"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let id = record["id"].as_str().unwrap_or_default().to_owned();
                map.entry(service).or_default().push(id);
            }
        }
        return map;
    }
    let listing = docker(
        device,
        &[
            "ps",
            "-a",
            "--filter",
            &format!("label=org.containeros.release={release}"),
            "--format",
            "{{.Label \"org.containeros.service\"}} {{.ID}}",
        ],
    );
    for line in listing.lines() {
        if let Some((service, id)) = line.split_once(' ') {
            map.entry(service.to_owned()).or_default().push(id.to_owned());
        }
    }
    map
}

fn release_file(
    dir: &std::path::Path,
    version: &str,
    web: &TestImage,
    worker: &TestImage,
    db: &TestImage,
) -> String {
    let text = format!(
        r#"name: demo
x-containeros:
  version: "{version}"
services:
  db:
    image: {db}
    volumes:
      - data:/data
    healthcheck:
      test: ["CMD-SHELL", "test -f /variant"]
      interval: 1s
      timeout: 1s
      retries: 5
  web:
    image: {web}
    command: ["sh", "-c", "echo started $$GREETING; trap 'exit 0' TERM; sleep 100000 & wait"]
    depends_on:
      db:
        condition: service_healthy
    environment:
      GREETING: hello
  worker:
    image: {worker}
    restart: always
volumes:
  data: {{}}
"#,
        db = db.by_digest(),
        web = web.by_digest(),
        worker = worker.by_digest(),
    );
    let path = dir.join(format!("release-{version}.yml"));
    std::fs::write(&path, text).expect("write release");
    path.display().to_string()
}

pub fn apply(device: &Device, file: &str) -> Vec<serde_json::Value> {
    let out = cli(device.bus.address())
        .args(["apps", "apply", file, "--json"])
        .output()
        .expect("cli");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "apply {file}: {}{stdout}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        device.agent.stderr()
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn install_then_update_one_service_keeps_the_others_docker() {
    install_then_update_one_service_keeps_the_others(Backend::Docker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn install_then_update_one_service_keeps_the_others_native() {
    install_then_update_one_service_keeps_the_others(Backend::Native).await;
}

async fn install_then_update_one_service_keeps_the_others(backend: Backend) {
    require_image_services();
    let (web1, web2) = (busybox_image("apps-web", "v1"), busybox_image("apps-web", "v2"));
    let (worker, db) = (busybox_image("apps-worker", "v1"), busybox_image("apps-db", "v1"));
    let device = Device::start_on(backend).await;
    device.engine_up().await;
    let dir = tempfile::tempdir().expect("tempdir");

    // First install: everything is pulled from the registry, with progress.
    let events = apply(&device, &release_file(dir.path(), "1", &web1, &worker, &db));
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "pull" && e["done"].as_u64() > Some(0)),
        "{events:?}"
    );
    assert_eq!(
        events.last().map(|e| e["success"].clone()),
        Some(serde_json::json!(true))
    );
    let before = containers(&device, "demo");
    assert_eq!(before.keys().collect::<Vec<_>>(), ["db", "web", "worker"]);
    assert!(before.values().all(|ids| ids.len() == 1), "{before:?}");

    let out = cli(device.bus.address())
        .args(["apps", "list", "--json"])
        .output()
        .expect("cli");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let rows = list.as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["state"] == "running"), "{list}");
    assert!(
        rows.iter()
            .any(|r| r["service"] == "db" && r["health"] == "healthy"),
        "{list}"
    );

    let db_id = &before["db"][0];
    exec(&device, db_id, &["sh", "-c", "echo kept > /data/file"]);

    // Update: only web changes; db and worker keep their containers.
    apply(&device, &release_file(dir.path(), "2", &web2, &worker, &db));
    let after = containers(&device, "demo");
    assert_eq!(after["db"], before["db"], "db untouched");
    assert_eq!(after["worker"], before["worker"], "worker untouched");
    assert_ne!(after["web"], before["web"], "web replaced");
    assert_eq!(after["web"].len(), 1, "old web removed: {after:?}");
    assert_eq!(exec(&device, &after["web"][0], &["cat", "/variant"]), "v2");
    assert_eq!(
        exec(&device, &after["web"][0], &["sh", "-c", "echo $GREETING"]),
        "hello"
    );
    assert_eq!(
        exec(&device, db_id, &["cat", "/data/file"]),
        "kept",
        "volume data kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_mid_apply_the_agent_converges_without_duplicates_docker() {
    killed_mid_apply_the_agent_converges_without_duplicates(Backend::Docker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_mid_apply_the_agent_converges_without_duplicates_native() {
    killed_mid_apply_the_agent_converges_without_duplicates(Backend::Native).await;
}

async fn killed_mid_apply_the_agent_converges_without_duplicates(backend: Backend) {
    require_image_services();
    let (web1, web2) = (busybox_image("crash-web", "v1"), busybox_image("crash-web", "v2"));
    let (worker1, worker2) = (
        busybox_image("crash-worker", "v1"),
        busybox_image("crash-worker", "v2"),
    );
    let db = busybox_image("crash-db", "v1");
    let mut device = Device::start_on(backend).await;
    device.engine_up().await;
    let dir = tempfile::tempdir().expect("tempdir");
    apply(&device, &release_file(dir.path(), "1", &web1, &worker1, &db));
    let first = containers(&device, "demo");
    let db_id = first["db"][0].clone();
    exec(&device, &db_id, &["sh", "-c", "echo kept > /data/file"]);
    // Someone stops a service behind the agent's back: it must come back.
    stop_behind_its_back(&device, &first["worker"][0]);

    // Kill -9 at different points of the next apply (seeded, printed).
    let releases = [
        release_file(dir.path(), "2", &web2, &worker2, &db),
        release_file(dir.path(), "3", &web1, &worker1, &db),
        release_file(dir.path(), "4", &web2, &worker1, &db),
    ];
    for (round, (file, delay_ms)) in releases.iter().zip([150u64, 600, 1200]).enumerate() {
        println!("round {round}: apply {file}, kill -9 after {delay_ms} ms");
        let out = cli(device.bus.address())
            .args(["apps", "apply", file, "--no-wait"])
            .output()
            .expect("cli");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        device.agent.kill9();
        device.agent.restart();
        // The stored target is applied again: one running container per
        // service, the wanted images, no leftovers.
        let want_web = if round == 1 { "v1" } else { "v2" };
        eventually(120, "convergence after kill -9", || async {
            let now = containers(&device, "demo");
            let one_each = now.len() == 3 && now.values().all(|ids| ids.len() == 1);
            if !one_each {
                return None;
            }
            // The agent may remove a listed container before it is looked at.
            let web = &now["web"][0];
            (running(&device, web)
                && running(&device, &now["worker"][0])
                && variant(&device, web).as_deref() == Some(want_web))
            .then_some(())
        })
        .await;
    }
    assert_eq!(
        containers(&device, "demo")["db"],
        vec![db_id.clone()],
        "db never replaced"
    );
    assert_eq!(
        exec(&device, &db_id, &["cat", "/data/file"]),
        "kept",
        "volume data kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_releases_are_refused_with_service_and_field_docker() {
    malformed_releases_are_refused_with_service_and_field(Backend::Docker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_releases_are_refused_with_service_and_field_native() {
    malformed_releases_are_refused_with_service_and_field(Backend::Native).await;
}

async fn malformed_releases_are_refused_with_service_and_field(backend: Backend) {
    let device = Device::start_on(backend).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "name: demo\nx-containeros: {version: \"1\"}\nservices:\n  web:\n    image: 127.0.0.1:5000/x@sha256:0000000000000000000000000000000000000000000000000000000000000000\n    build: .\n",
            ["web", "build"],
        ),
        (
            "name: demo\nx-containeros: {version: \"1\"}\nservices:\n  web:\n    image: 127.0.0.1:5000/x:latest\n",
            ["web", "image"],
        ),
    ];
    for (i, (text, wanted)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.yml"));
        std::fs::write(&path, text).expect("write");
        let out = cli(device.bus.address())
            .args(["apps", "apply", &path.display().to_string()])
            .output()
            .expect("cli");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        for w in wanted {
            assert!(stderr.contains(w), "{stderr} lacks {w}");
        }
    }
    assert!(
        !device._state.path().join("apps/release.yml").exists(),
        "nothing stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_full_refuses_the_update_and_keeps_the_old_release_docker() {
    disk_full_refuses_the_update_and_keeps_the_old_release(Backend::Docker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_full_refuses_the_update_and_keeps_the_old_release_native() {
    disk_full_refuses_the_update_and_keeps_the_old_release(Backend::Native).await;
}

/// The engine's storage is a 320 MiB filesystem (dockerd's data-root, or
/// the native engine's directory on it).
async fn disk_full_refuses_the_update_and_keeps_the_old_release(backend: Backend) {
    require_image_services();
    let (web1, worker, db) = (
        busybox_image("full-web", "v1"),
        busybox_image("full-worker", "v1"),
        busybox_image("full-db", "v1"),
    );
    let web2 = busybox_image("full-web", "v2");
    // 48 MiB of incompressible data: more than the disk will have left.
    let web3 = containeros_tests::ImageSpec::new("full-web", "v3-big")
        .filler(48 << 20)
        .get();
    let dockerd = containeros_tests::Dockerd::with_small_data_root(320);
    let device = match backend {
        Backend::Docker => Device::start_with(dockerd, "min_free_mib = 16\n").await,
        Backend::Native => Device::start_native_on_data_root(dockerd, "min_free_mib = 16\n").await,
    };
    device.engine_up().await;
    let dir = tempfile::tempdir().expect("tempdir");
    apply(&device, &release_file(dir.path(), "1", &web1, &worker, &db));
    let before = containers(&device, "demo");

    let refused = |file: &str| {
        let out = cli(device.bus.address())
            .args(["apps", "apply", file])
            .output()
            .expect("cli");
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let unchanged = || {
        assert_eq!(
            containers(&device, "demo"),
            before,
            "the old release's containers are untouched"
        );
        let web = &before["web"][0];
        assert!(running(&device, web), "web still runs");
        assert_eq!(exec(&device, web, &["cat", "/variant"]), "v1");
    };

    // Pre-flight: 8 MiB free is under the 16 MiB floor, so nothing starts.
    let filler = device.dockerd.fill_data_root(8 << 20);
    let stderr = refused(&release_file(dir.path(), "2", &web2, &worker, &db));
    assert!(
        stderr.contains("not enough free space for the engine"),
        "{stderr}"
    );
    assert!(stderr.contains("running release keeps running"), "{stderr}");
    unchanged();

    // Past the pre-flight, the pull itself runs out of space: still refused
    // before the old containers are touched (download-then-kill).
    std::fs::remove_file(&filler).expect("remove filler");
    device.dockerd.fill_data_root(32 << 20);
    let stderr = refused(&release_file(dir.path(), "3", &web3, &worker, &db));
    assert!(
        stderr.to_lowercase().contains("no space left on device") || stderr.contains("not enough free space"),
        "{stderr}"
    );
    unchanged();
}

#[tokio::test(flavor = "multi_thread")]
async fn services_reach_each_other_by_name_docker() {
    services_reach_each_other_by_name(Backend::Docker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn services_reach_each_other_by_name_native() {
    services_reach_each_other_by_name(Backend::Native).await;
}

/// Two services on the release's default network: one serves `/variant`
/// over HTTP, the other fetches it by the first one's service name.
async fn services_reach_each_other_by_name(backend: Backend) {
    require_image_services();
    let (server, client) = (
        busybox_image("names-server", "v1"),
        busybox_image("names-client", "v1"),
    );
    let device = Device::start_on(backend).await;
    device.engine_up().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        r#"name: names
x-containeros:
  version: "1"
services:
  server:
    image: {server}
    command: ["httpd", "-f", "-p", "80", "-h", "/"]
  client:
    image: {client}
    command: ["sh", "-c", "until wget -q -O /tmp/got http://server/variant; do sleep 0.2; done; trap 'exit 0' TERM; sleep 100000 & wait"]
"#,
        server = server.by_digest(),
        client = client.by_digest(),
    );
    let path = dir.path().join("names.yml");
    std::fs::write(&path, text).expect("write release");
    apply(&device, &path.display().to_string());
    let ids = containers(&device, "names");
    let client_id = ids["client"][0].clone();
    eventually(30, "the client fetched the server's page by name", || async {
        (try_exec(&device, &client_id, &["cat", "/tmp/got"]).as_deref() == Some("v1")).then_some(())
    })
    .await;
}
