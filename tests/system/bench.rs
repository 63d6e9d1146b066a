//! Benchmark (not a test: ignored by default, asserts nothing about time):
//! the agent against `docker-compose up -d` applying the same 5-service
//! release on the same engine and registry, first install and a
//! one-service change, a few runs each. Run it with `bench/apps-vs-compose.sh`.

use std::process::Command;
use std::time::{Duration, Instant};

use containeros_tests::{TestImage, busybox_image, cli, remove_from, require_image_services};

use crate::device::Device;

fn release(dir: &std::path::Path, tag: &str, images: &[TestImage]) -> String {
    let mut text = format!("x-containeros:\n  name: bench\n  version: \"{tag}\"\nservices:\n");
    for (i, image) in images.iter().enumerate() {
        text += &format!("  s{i}:\n    image: {}\n", image.by_digest());
        if i == 0 {
            text += "    healthcheck:\n      test: [\"CMD-SHELL\", \"test -f /variant\"]\n      interval: 1s\n      timeout: 1s\n      retries: 5\n";
        } else {
            text += "    depends_on:\n      s0:\n        condition: service_healthy\n";
        }
        text += "    volumes:\n      - data:/data\n";
    }
    text += "volumes:\n  data: {}\n";
    let path = dir.join(format!("bench-{tag}.yml"));
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

fn compose(device: &Device, args: &[&str]) -> Duration {
    let start = Instant::now();
    let out = Command::new("docker-compose")
        .env(
            "DOCKER_HOST",
            format!("unix://{}", device.dockerd.socket().display()),
        )
        .args(args)
        .output()
        .expect("docker-compose (Debian package docker-compose)");
    assert!(
        out.status.success(),
        "docker-compose {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

fn agent_apply(device: &Device, file: &str) -> Duration {
    let start = Instant::now();
    let out = cli(device.bus.address())
        .args(["apps", "apply", file])
        .output()
        .expect("cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    start.elapsed()
}

fn clean(device: &Device, images: &[TestImage]) {
    let socket = device.dockerd.socket();
    let host = format!("unix://{}", socket.display());
    let ids = Command::new("docker")
        .args(["-H", &host, "ps", "-aq"])
        .output()
        .expect("docker ps");
    for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
        let _ = Command::new("docker")
            .args(["-H", &host, "rm", "-f", id])
            .output();
    }
    for image in images {
        remove_from(image, &socket);
    }
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run bench/apps-vs-compose.sh"]
async fn bench_apps_vs_compose() {
    require_image_services();
    let v1: Vec<TestImage> = (0..5)
        .map(|i| busybox_image(&format!("bench-s{i}"), "v1"))
        .collect();
    let mut v2 = v1.clone();
    v2[4] = busybox_image("bench-s4", "v2");
    let all: Vec<TestImage> = v1.iter().chain(std::iter::once(&v2[4])).cloned().collect();
    let mut device = Device::start().await;
    device.engine_up().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (file1, file2) = (release(dir.path(), "1", &v1), release(dir.path(), "2", &v2));
    let runs = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);

    let mut rows = Vec::new();
    for run in 1..=runs {
        // The agent: a fresh process per run, so its peak RSS is this apply's.
        clean(&device, &all);
        std::fs::remove_file(device._state.path().join("apps/release.yml")).ok();
        device.agent.kill9();
        device.agent.restart();
        let agent_install = agent_apply(&device, &file1);
        let agent_change = agent_apply(&device, &file2);
        let rss = peak_rss_kib(device.agent.pid());
        std::fs::remove_file(device._state.path().join("apps/release.yml")).ok();
        device.agent.kill9();

        clean(&device, &all);
        let compose_install = compose(&device, &["-p", "bench", "-f", &file1, "up", "-d"]);
        let compose_change = compose(&device, &["-p", "bench", "-f", &file2, "up", "-d"]);
        compose(&device, &["-p", "bench", "-f", &file2, "down"]);
        device.agent.restart();
        rows.push((
            run,
            agent_install,
            compose_install,
            agent_change,
            compose_change,
            rss,
        ));
    }
    println!();
    println!("5-service release, private dockerd 20.10, images pulled from the local registry");
    println!(
        "run  agent-install  compose-install  ratio  agent-change  compose-change  ratio  agent-peak-RSS"
    );
    for (run, ai, ci, ac, cc, rss) in &rows {
        println!(
            "{run:>3}  {:>12.2}s  {:>14.2}s  {:>5.2}  {:>11.2}s  {:>13.2}s  {:>5.2}  {:>8} KiB",
            ai.as_secs_f64(),
            ci.as_secs_f64(),
            ai.as_secs_f64() / ci.as_secs_f64(),
            ac.as_secs_f64(),
            cc.as_secs_f64(),
            ac.as_secs_f64() / cc.as_secs_f64(),
            rss
        );
    }
}
