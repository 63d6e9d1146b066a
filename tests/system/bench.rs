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

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The field after the parenthesised command name.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn pid_of(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        (comm(pid) == name).then_some(pid)
    })
}

fn size_of(path: &str) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run bench/native-vs-docker.sh"]
async fn bench_native_vs_docker() {
    use crate::apps::{containers, running};
    use crate::device::Backend;
    require_image_services();
    let images: Vec<TestImage> = (0..3)
        .map(|i| busybox_image(&format!("bench-s{i}"), "v1"))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = release(dir.path(), "1", &images);
    let settle = Duration::from_secs(
        std::env::var("BENCH_SETTLE")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(10),
    );
    let mut rows = Vec::new();
    for backend in [Backend::Docker, Backend::Native] {
        let device = Device::start_on(backend).await;
        device.engine_up().await;
        if backend == Backend::Docker {
            clean(&device, &images);
        }
        let took = agent_apply(&device, &file);
        let ids = containers(&device, "bench");
        assert!(ids.values().flatten().all(|id| running(&device, id)), "{ids:?}");
        tokio::time::sleep(settle).await;
        let agent = device.agent.pid();
        let mut parts = vec![(
            "containeros-agent".to_owned(),
            rss_kib(agent, "VmRSS:"),
            rss_kib(agent, "VmHWM:"),
        )];
        if backend == Backend::Docker {
            let dockerd = device.units.main_pid("docker.service").expect("dockerd runs");
            parts.push((
                "dockerd".to_owned(),
                rss_kib(dockerd, "VmRSS:"),
                rss_kib(dockerd, "VmHWM:"),
            ));
            if let Some(containerd) = pid_of("containerd") {
                parts.push((
                    "containerd".to_owned(),
                    rss_kib(containerd, "VmRSS:"),
                    rss_kib(containerd, "VmHWM:"),
                ));
            }
            // One shim per container: the parent of each container's init.
            let mut shims = 0;
            let mut shim_rss = 0;
            for id in ids.values().flatten() {
                let out = Command::new("docker")
                    .args(["-H", &format!("unix://{}", device.dockerd.socket().display())])
                    .args(["inspect", "-f", "{{.State.Pid}}", id])
                    .output()
                    .expect("docker inspect");
                let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
                if let Some(shim) = parent(pid).filter(|p| comm(*p).starts_with("containerd-shim")) {
                    shims += 1;
                    shim_rss += rss_kib(shim, "VmRSS:");
                }
            }
            parts.push((format!("containerd-shim x{shims}"), shim_rss, 0));
        }
        rows.push((backend, took, parts));
        if backend == Backend::Docker {
            clean(&device, &images);
        }
    }
    println!();
    println!(
        "3-service release (one healthchecked, a shared volume), images from the local registry; RSS {}s after the apply",
        settle.as_secs()
    );
    for (backend, took, parts) in &rows {
        let total: u64 = parts.iter().map(|p| p.1).sum();
        println!(
            "{backend:?}: apply {:.2}s, resident total {total} KiB ({:.1} MiB)",
            took.as_secs_f64(),
            total as f64 / 1024.0
        );
        for (name, rss, hwm) in parts {
            if *hwm > 0 {
                println!("    {name:<24} {rss:>8} KiB  (peak {hwm} KiB)");
            } else {
                println!("    {name:<24} {rss:>8} KiB");
            }
        }
    }
    println!("engine binaries on disk:");
    let docker: Vec<&str> = vec![
        "/usr/sbin/dockerd",
        "/usr/bin/containerd",
        "/usr/bin/containerd-shim-runc-v2",
        "/usr/sbin/runc",
        "/usr/sbin/docker-proxy",
        "/usr/bin/docker-init",
    ];
    let total: u64 = docker.iter().map(|p| size_of(p)).sum();
    for p in &docker {
        println!("    {p:<36} {:>10} bytes", size_of(p));
    }
    println!(
        "    Docker engine total                  {total:>10} bytes ({:.1} MiB)",
        total as f64 / 1048576.0
    );
    for p in ["/usr/bin/crun", "/usr/sbin/runc"] {
        println!(
            "    native engine runtime {p:<14} {:>10} bytes ({:.2} MiB)",
            size_of(p),
            size_of(p) as f64 / 1048576.0
        );
    }
}
