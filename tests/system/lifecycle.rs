//! The life of a release's services on the real engine: update locks,
//! an operator's stop and start, the update strategies, dependency order,
//! garbage collection of images, and a kill -9 of the agent at every step
//! of an update. Each runs on both engines (`…_docker`, `…_native`), but
//! the recovery of a corrupted engine store, which is dockerd's.

use std::time::Duration;

use containeros_tests::{ImageSpec, TestImage, busybox_image, cli, eventually, require_image_services};

use crate::apps::{apply, containers, docker, exec, running, try_docker, variant};
use crate::device::{Backend, Device};

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write release");
    path.display().to_string()
}

/// `apps <verb> <service>`, which must succeed.
fn apps(device: &Device, verb: &str, service: &str) {
    let out = cli(device.bus.address())
        .args(["apps", verb, service])
        .output()
        .expect("cli");
    assert!(
        out.status.success(),
        "apps {verb} {service}: {}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        device.agent.stderr()
    );
}

/// The only container of `service`, when there is exactly one (and the
/// engine answers).
fn only(device: &Device, release: &str, service: &str) -> Option<String> {
    if device.native.is_some() {
        let ids = containers(device, release).remove(service)?;
        return match &ids[..] {
            [id] => Some(id.clone()),
            _ => None,
        };
    }
    let listing = try_docker(
        device,
        &[
            "ps",
            "-a",
            "--filter",
            &format!("label=org.containeros.release={release}"),
            "--filter",
            &format!("label=org.containeros.service={service}"),
            "--format",
            "{{.ID}}",
        ],
    )?;
    let ids: Vec<&str> = listing.lines().collect();
    match ids[..] {
        [id] => Some(id.to_owned()),
        _ => None,
    }
}

fn image_present(device: &Device, image: &TestImage) -> bool {
    match &device.native {
        None => try_docker(device, &["image", "inspect", &image.by_digest()]).is_some(),
        // The native store's record of the reference: images/<sha256 of it>.json.
        Some(native) => {
            let out = std::process::Command::new("sh")
                .args(["-c", "printf %s \"$1\" | sha256sum", "sh", &image.by_digest()])
                .output()
                .expect("sha256sum");
            let hex = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            native
                .data()
                .join("store/images")
                .join(format!("{hex}.json"))
                .exists()
        }
    }
}

/// One long-running service, `web`, that an update lock can hold.
fn locked_release(dir: &std::path::Path, version: &str, web: &TestImage, lock_timeout: &str) -> String {
    write(
        dir,
        &format!("lock-{version}.yml"),
        &format!(
            r#"name: locks
x-containeros:
  version: "{version}"
  update_lock_timeout: {lock_timeout}
services:
  web:
    image: {web}
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
"#,
            web = web.by_digest()
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_update_lock_defers_the_update_until_released_or_timed_out_docker() {
    an_update_lock_defers_the_update_until_released_or_timed_out(Backend::Docker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_update_lock_defers_the_update_until_released_or_timed_out_native() {
    an_update_lock_defers_the_update_until_released_or_timed_out(Backend::Native).await;
}

async fn an_update_lock_defers_the_update_until_released_or_timed_out(backend: Backend) {
    require_image_services();
    let web: Vec<TestImage> = ["v1", "v2", "v3"]
        .iter()
        .map(|v| busybox_image("lock-web", v))
        .collect();
    let device = Device::start_on(backend).await;
    device.engine_up().await;
    let dir = tempfile::tempdir().expect("tempdir");
    apply(&device, &locked_release(dir.path(), "1", &web[0], "1h"));
    let first = only(&device, "locks", "web").expect("one web");

    // The app sees where its lock goes, and takes it.
    assert_eq!(
        exec(&device, &first, &["sh", "-c", "echo $CONTAINEROS_UPDATE_LOCK"]),
        "/run/containeros/update.lock"
    );
    exec(&device, &first, &["sh", "-c", "touch $CONTAINEROS_UPDATE_LOCK"]);

    // v2 waits: the agent says so, and web keeps running v1.
    let out = cli(device.bus.address())
        .args([
            "apps",
            "apply",
            &locked_release(dir.path(), "2", &web[1], "1h"),
            "--no-wait",
        ])
        .output()
        .expect("cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually(60, "the update to wait on the lock", || async {
        device
            .agent
            .stderr()
            .contains("update waits for the service's update lock")
            .then_some(())
    })
    .await;
    let status = device.status_json();
    assert!(
        status["operation"]
            .as_str()
            .is_some_and(|o| o.contains("web waits for its update lock")),
        "{status}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(only(&device, "locks", "web").as_ref(), Some(&first));
    assert_eq!(exec(&device, &first, &["cat", "/variant"]), "v1");

    // Released: the update goes through, and v1's image, which no release
    // needs any more, is removed.
    exec(&device, &first, &["sh", "-c", "rm $CONTAINEROS_UPDATE_LOCK"]);
    let second = eventually(60, "web updated to v2 after the lock went", || async {
        let id = only(&device, "locks", "web")?;
        (id != first && running(&device, &id) && variant(&device, &id).as_deref() == Some("v2")).then_some(id)
    })
    .await;
    eventually(30, "v1's image garbage-collected", || async {
        (!image_present(&device, &web[0])).then_some(())
    })
    .await;
    assert!(image_present(&device, &web[1]), "the running image is kept");

    // A lock never released defers the update only for the release's
    // update_lock_timeout (3 s here): then the update goes through anyway.
    exec(&device, &second, &["sh", "-c", "touch $CONTAINEROS_UPDATE_LOCK"]);
    let events = apply(&device, &locked_release(dir.path(), "3", &web[2], "3s"));
    assert_eq!(
        events.last().map(|e| e["success"].clone()),
        Some(serde_json::json!(true)),
        "{events:?}"
    );
    let third = only(&device, "locks", "web").expect("one web");
    assert_ne!(third, second);
    assert_eq!(exec(&device, &third, &["cat", "/variant"]), "v3");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_stopped_by_an_operator_stays_stopped_until_started_docker() {
    a_service_stopped_by_an_operator_stays_stopped_until_started(Backend::Docker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_stopped_by_an_operator_stays_stopped_until_started_native() {
    a_service_stopped_by_an_operator_stays_stopped_until_started(Backend::Native).await;
}

async fn a_service_stopped_by_an_operator_stays_stopped_until_started(backend: Backend) {
    require_image_services();
    let (web, worker) = (
        busybox_image("hold-web", "v1"),
        busybox_image("hold-worker", "v1"),
    );
    let mut device = Device::start_on(backend).await;
    device.engine_up().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "hold.yml",
        &format!(
            r#"name: hold
x-containeros:
  version: "1"
services:
  web:
    image: {web}
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
  worker:
    image: {worker}
    restart: always
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
"#,
            web = web.by_digest(),
            worker = worker.by_digest()
        ),
    );
    apply(&device, &file);
    let id = only(&device, "hold", "worker").expect("one worker");
    assert!(running(&device, &id));

    apps(&device, "stop", "worker");
    assert!(!running(&device, &id), "stopped when the call returns");
    let list = cli(device.bus.address())
        .args(["apps", "list", "--json"])
        .output()
        .expect("cli");
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).expect("JSON");
    assert!(
        rows.as_array()
            .expect("rows")
            .iter()
            .any(|r| r["service"] == "worker" && r["state"] == "exited"),
        "{rows}"
    );

    // Started behind the agent's back (as `restart: always` does when the
    // engine restarts), then the agent is killed and started again: it
    // stops the service again instead of "repairing" it.
    // (The native engine is the agent itself: nothing else starts it.)
    if backend == Backend::Docker {
        docker(&device, &["start", &id]);
    }
    device.agent.kill9();
    device.agent.restart();
    eventually(60, "the held service stopped again", || async {
        (!running(&device, &id)).then_some(())
    })
    .await;
    assert_eq!(
        only(&device, "hold", "worker").as_ref(),
        Some(&id),
        "not recreated"
    );
    let web_id = only(&device, "hold", "web").expect("one web");
    assert!(running(&device, &web_id), "the other service runs on");

    apps(&device, "start", "worker");
    assert!(running(&device, &id), "started when the call returns");
    device.agent.kill9();
    device.agent.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(running(&device, &id), "no longer held after a restart");
}

/// db becomes healthy two seconds after it starts; api depends on that and
/// is updated by hand-over. Every start, readiness and stop is appended to
/// one log on a shared volume, in the order it happened.
fn ordered_release(dir: &std::path::Path, version: &str, db: &TestImage, api: &TestImage) -> String {
    write(
        dir,
        &format!("order-{version}.yml"),
        &format!(
            r#"name: order
x-containeros:
  version: "{version}"
services:
  db:
    image: {db}
    volumes: [shared:/shared]
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 2; echo db ready >> /shared/log; touch /tmp/ready; sleep 100000 & wait"]
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ready"]
      interval: 1s
      timeout: 1s
      retries: 30
  api:
    image: {api}
    volumes: [shared:/shared]
    command: ["sh", "-c", "echo api start $$(cat /variant) >> /shared/log; touch /tmp/up; trap 'echo api stop $$(cat /variant) >> /shared/log; exit 0' TERM; sleep 100000 & wait"]
    depends_on:
      db: {{condition: service_healthy}}
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/up"]
      interval: 1s
      timeout: 1s
      retries: 30
    x-containeros:
      update_strategy: hand-over
volumes:
  shared: {{}}
"#,
            db = db.by_digest(),
            api = api.by_digest()
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn dependencies_wait_for_health_and_hand_over_overlaps_docker() {
    dependencies_wait_for_health_and_hand_over_overlaps(Backend::Docker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dependencies_wait_for_health_and_hand_over_overlaps_native() {
    dependencies_wait_for_health_and_hand_over_overlaps(Backend::Native).await;
}

async fn dependencies_wait_for_health_and_hand_over_overlaps(backend: Backend) {
    require_image_services();
    let db = busybox_image("order-db", "v1");
    let (api1, api2) = (busybox_image("order-api", "v1"), busybox_image("order-api", "v2"));
    let device = Device::start_on(backend).await;
    device.engine_up().await;
    let dir = tempfile::tempdir().expect("tempdir");
    apply(&device, &ordered_release(dir.path(), "1", &db, &api1));
    let db_id = only(&device, "order", "db").expect("one db");
    let log = || exec(&device, &db_id, &["cat", "/shared/log"]);
    assert_eq!(log(), "db ready\napi start v1", "api starts once db is healthy");

    apply(&device, &ordered_release(dir.path(), "2", &db, &api2));
    assert_eq!(
        log(),
        "db ready\napi start v1\napi start v2\napi stop v1",
        "hand-over: the new api runs before the old one stops"
    );
    assert_eq!(
        only(&device, "order", "db").as_ref(),
        Some(&db_id),
        "db untouched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_then_download_frees_the_old_image_when_both_do_not_fit_docker() {
    kill_then_download_frees_the_old_image_when_both_do_not_fit(Backend::Docker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_then_download_frees_the_old_image_when_both_do_not_fit_native() {
    kill_then_download_frees_the_old_image_when_both_do_not_fit(Backend::Native).await;
}

async fn kill_then_download_frees_the_old_image_when_both_do_not_fit(backend: Backend) {
    require_image_services();
    // 40 MiB of incompressible data each: pulling one needs about twice
    // that while the download and the extracted layer coexist.
    let big1 = ImageSpec::new("ktd-big", "v1").filler(40 << 20).get();
    let big2 = ImageSpec::new("ktd-big", "v2").filler(40 << 20).get();
    let dockerd = containeros_tests::Dockerd::with_small_data_root(320);
    let device = match backend {
        Backend::Docker => Device::start_with(dockerd, "min_free_mib = 16\n").await,
        Backend::Native => Device::start_native_on_data_root(dockerd, "min_free_mib = 16\n").await,
    };
    device.engine_up().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let release = |version: &str, image: &TestImage| {
        write(
            dir.path(),
            &format!("ktd-{version}.yml"),
            &format!(
                r#"name: ktd
x-containeros:
  version: "{version}"
services:
  big:
    image: {image}
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
    x-containeros:
      update_strategy: kill-then-download
"#,
                image = image.by_digest()
            ),
        )
    };
    apply(&device, &release("1", &big1));
    // 60 MiB left: not enough to pull v2 beside v1, enough once v1's
    // container and image are gone.
    device.dockerd.fill_data_root(60 << 20);
    let events = apply(&device, &release("2", &big2));
    assert_eq!(
        events.last().map(|e| e["success"].clone()),
        Some(serde_json::json!(true)),
        "{events:?}\nagent log:\n{}",
        device.agent.stderr()
    );
    let id = only(&device, "ktd", "big").expect("one container");
    assert_eq!(exec(&device, &id, &["cat", "/variant"]), "v2");
    assert!(
        !image_present(&device, &big1),
        "v1's image was removed to make room"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_at_every_step_of_an_update_the_agent_converges_docker() {
    killed_at_every_step_of_an_update_the_agent_converges(Backend::Docker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_at_every_step_of_an_update_the_agent_converges_native() {
    killed_at_every_step_of_an_update_the_agent_converges(Backend::Native).await;
}

async fn killed_at_every_step_of_an_update_the_agent_converges(backend: Backend) {
    require_image_services();
    let images: Vec<[TestImage; 2]> = ["v1", "v2"]
        .iter()
        .map(|v| [busybox_image("every-web", v), busybox_image("every-worker", v)])
        .collect();
    let mut device = Device::start_on(backend).await;
    device.engine_up().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let release = |n: usize| {
        let [web, worker] = &images[n % 2];
        write(
            dir.path(),
            &format!("every-{n}.yml"),
            &format!(
                r#"name: every
x-containeros:
  version: "{n}"
services:
  db:
    image: {db}
    volumes: [data:/data]
    healthcheck:
      test: ["CMD", "true"]
      interval: 1s
  web:
    image: {web}
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
    depends_on:
      db: {{condition: service_healthy}}
  worker:
    image: {worker}
    restart: always
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
volumes:
  data: {{}}
"#,
                db = images[0][0].by_digest(),
                web = web.by_digest(),
                worker = worker.by_digest()
            ),
        )
    };
    apply(&device, &release(0));
    let db_id = only(&device, "every", "db").expect("one db");
    exec(&device, &db_id, &["sh", "-c", "echo kept > /data/file"]);

    // Update n (v1 <-> v2), killing the agent right after step k starts;
    // k runs over every step of the update's plan.
    let mut k = 1;
    let mut n = 1;
    loop {
        let seen = device.agent.stderr().len();
        let out = cli(device.bus.address())
            .args(["apps", "apply", &release(n), "--no-wait"])
            .output()
            .expect("cli");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let total: usize = eventually(60, &format!("step {k} of update {n}"), || async {
            let log = device.agent.stderr();
            let fresh = log.get(seen..)?;
            let line = fresh.lines().find(|l| l.contains(&format!("step {k}/")))?;
            let rest = line.split(&format!("step {k}/")).nth(1)?;
            rest.split(':').next()?.parse().ok()
        })
        .await;
        device.agent.kill9();
        println!("update {n}: killed at step {k} of {total}");
        device.agent.restart();
        let want = if n % 2 == 0 { "v1" } else { "v2" };
        eventually(120, &format!("convergence after a kill at step {k}"), || async {
            let now = containers(&device, "every");
            if now.len() != 3 || now.values().any(|ids| ids.len() != 1) {
                return None;
            }
            let (web, worker) = (&now["web"][0], &now["worker"][0]);
            (running(&device, web)
                && running(&device, worker)
                && variant(&device, web).as_deref() == Some(want)
                && variant(&device, worker).as_deref() == Some(want))
            .then_some(())
        })
        .await;
        if k >= total {
            break;
        }
        k += 1;
        n += 1;
    }
    assert_eq!(
        only(&device, "every", "db").as_ref(),
        Some(&db_id),
        "db never replaced"
    );
    assert_eq!(
        exec(&device, &db_id, &["cat", "/data/file"]),
        "kept",
        "volume data kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_engine_store_is_recovered_keeping_the_volumes() {
    require_image_services();
    let (web, db) = (
        busybox_image("recover-web", "v1"),
        busybox_image("recover-db", "v1"),
    );
    let dockerd = containeros_tests::Dockerd::new();
    let data_root = dockerd.data_root();
    let device = Device::start_configured(
        dockerd,
        &format!(
            "max_restarts = 2\nrecover_store = true\ndata_root = \"{}\"\n",
            data_root.display()
        ),
        "",
    )
    .await;
    device.engine_up().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "recover.yml",
        &format!(
            r#"name: recover
x-containeros:
  version: "1"
services:
  db:
    image: {db}
    volumes: [data:/data]
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
  web:
    image: {web}
    restart: always
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
volumes:
  data: {{}}
"#,
            db = db.by_digest(),
            web = web.by_digest()
        ),
    );
    apply(&device, &file);
    let old_db = only(&device, "recover", "db").expect("one db");
    exec(&device, &old_db, &["sh", "-c", "echo kept > /data/file"]);

    // The engine stops and its store is found corrupted (as after a power
    // cut on an SD card): it no longer starts, whatever the restarts.
    let pid = device.units.main_pid("docker.service").expect("dockerd runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM dockerd");
    eventually(30, "dockerd stopped", || async {
        (!std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")))
        .then_some(())
    })
    .await;
    std::fs::write(data_root.join("image/overlay2/repositories.json"), "garbage{").expect("corrupt");

    // Restarts fail, the store is moved aside, the engine starts empty and
    // the release is pulled and created again, with the volume's data.
    let new_db = eventually(180, "the release re-created on a recovered store", || async {
        let db = only(&device, "recover", "db")?;
        let web = only(&device, "recover", "web")?;
        (db != old_db && running(&device, &db) && running(&device, &web)).then_some(db)
    })
    .await;
    assert_eq!(
        exec(&device, &new_db, &["cat", "/data/file"]),
        "kept",
        "the named volume survived the recovery"
    );
    let log = device.agent.stderr();
    assert!(log.contains("recovering the engine store"), "{log}");
    assert!(log.contains("engine store recovered"), "{log}");
    eventually(60, "the broken store removed", || async {
        (!containeros_engine_broken(&data_root).exists()).then_some(())
    })
    .await;
}

fn containeros_engine_broken(data_root: &std::path::Path) -> std::path::PathBuf {
    let mut name = data_root.file_name().expect("name").to_os_string();
    name.push(".broken");
    data_root.with_file_name(name)
}
