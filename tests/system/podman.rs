//! The Docker API of another engine: podman's compat API (Debian's podman
//! 4.3, `podman system service`). The agent must negotiate with it and
//! report it up, the same code path as with dockerd.

use std::process::{Child, Command, Stdio};

use containeros_tests::{Agent, Bus, cli, eventually, require_root};

struct Podman {
    child: Child,
    dir: tempfile::TempDir,
}

impl Podman {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cp")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let d = dir.path().display();
        let child = Command::new("podman")
            // vfs: no overlay mount is left behind in the temp dir when the test ends.
            .args([
                "--cgroup-manager=cgroupfs",
                "--events-backend=file",
                "--storage-driver=vfs",
            ])
            .arg(format!("--root={d}/root"))
            .arg(format!("--runroot={d}/run"))
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{d}/podman.sock"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("podman is needed (Debian package podman)");
        Self { child, dir }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn podman_compat_api_is_negotiated_and_reported() {
    require_root();
    let bus = Bus::start();
    let podman = Podman::start();
    let state = tempfile::tempdir().expect("tempdir");
    let _agent = Agent::start(&format!(
        "[agent]\nstate_dir = \"{}\"\n[dbus]\nbus = \"{}\"\n\
         [engine]\nsocket = \"{}/podman.sock\"\nunit = \"\"\ncheck_interval = \"1s\"\ncheck_timeout = \"1s\"\n",
        state.path().display(),
        bus.address(),
        podman.dir.path().display(),
    ));
    let status = eventually(60, "podman engine up", || async {
        let out = cli(bus.address()).args(["status", "--json"]).output().ok()?;
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (s["engine_state"] == "up").then_some(s)
    })
    .await;
    let engine = status["engine_version"].as_str().unwrap_or_default();
    assert!(engine.starts_with("Podman Engine 4."), "{engine}");
    // podman 4.3 speaks Docker API 1.41: negotiated down from bollard's newest.
    assert!(engine.ends_with("(API 1.41)"), "{engine}");
}
