//! OS updates end to end: the agent installs a signed release into the
//! inactive slot (a file of the slot's size), switches the U-Boot
//! environment (read and written by Debian's fw_printenv/fw_setenv here),
//! and after a simulated reboot — the agent killed and started with the
//! other slot on its kernel command line and a new boot id — commits a
//! healthy slot or rolls back a broken one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use containeros_tests::{Dockerd, bin, cli, eventually, require_root};

use crate::device::Device;

const SLOT_SIZE: u64 = 160 << 20;

pub struct Update {
    pub dir: tempfile::TempDir,
    pub device: Device,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Update {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// The U-Boot environment as fw_printenv prints it.
    pub fn env(&self) -> String {
        let out = run(Command::new("fw_printenv").args(["-c", &self.p("fw_env.config")]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn var(&self, name: &str) -> String {
        self.env()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_owned))
            .unwrap_or_default()
    }

    pub fn set_var(&self, name: &str, value: &str) {
        run(Command::new("fw_setenv").args(["-c", &self.p("fw_env.config"), name, value]));
    }

    /// A signed release `version` whose OS image is `image` (written as
    /// `rootfs-<version>.img` beside the manifest), with `tweak` applied
    /// to the manifest JSON before signing.
    pub fn release(
        &self,
        version: u64,
        image: &[u8],
        key: &str,
        tweak: impl Fn(&mut serde_json::Value),
    ) -> String {
        let image_name = format!("rootfs-{version}.img");
        std::fs::write(self.path(&image_name), image).expect("image");
        let expires = now() + 86_400;
        let mut manifest = serde_json::json!({
            "format": 1, "version": version, "name": version.to_string(), "channel": "stable",
            "created": 1, "expires": expires,
            "os": {"version": format!("{version}.0"), "size": image.len(), "sha256": sha256(image), "path": image_name},
        });
        tweak(&mut manifest);
        let manifest = manifest.to_string();
        let manifest_path = self.p(&format!("manifest-{version}-{key}.json"));
        std::fs::write(&manifest_path, manifest).expect("manifest");
        let out_path = self.p(&format!("release-{version}-{key}.json"));
        run(Command::new(bin("containeros")).args([
            "release",
            "sign",
            "--key",
            &self.p(&format!("{key}.key")),
            &manifest_path,
            "-o",
            &out_path,
        ]));
        out_path
    }

    /// `os install`, as JSON lines; the process's output.
    pub fn install(&self, release: &str) -> Output {
        cli(self.device.bus.address())
            .args(["os", "install", release, "--json"])
            .output()
            .expect("cli")
    }

    pub fn status(&self) -> serde_json::Value {
        let out = cli(self.device.bus.address())
            .args(["os", "status", "--json"])
            .output()
            .expect("cli");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON")
    }

    /// Power-cycles into `slot`: the agent dies, the boot script spends one
    /// try of the slot it boots, and the agent starts on the new boot.
    pub fn reboot_into(&mut self, slot: &str, boot: u32) {
        self.device.agent.kill9();
        let left = format!("BOOT_{slot}_LEFT");
        let tries: u32 = self.var(&left).parse().unwrap_or(1);
        self.set_var(&left, &tries.saturating_sub(1).to_string());
        std::fs::write(
            self.path("cmdline"),
            format!("console=ttyS0 containeros.slot={slot}\n"),
        )
        .expect("cmdline");
        std::fs::write(self.path("boot_id"), format!("boot-{boot}\n")).expect("boot id");
        self.device.agent.restart();
    }

    pub async fn state_becomes(&self, state: &str) -> serde_json::Value {
        eventually(60, &format!("OS update state {state}"), || async {
            let s = self.status();
            (s["state"] == state).then_some(s)
        })
        .await
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

pub fn sha256(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().expect("stdin").write_all(bytes)?;
            child.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)[..64].to_owned()
}

pub fn random(len: usize, seed: u8) -> Vec<u8> {
    // xorshift: incompressible enough, different per seed.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn file_hash(path: &Path) -> String {
    sha256(&std::fs::read(path).expect("read"))
}

async fn start(health_timeout: &str) -> Update {
    start_with(health_timeout, "").await
}

/// [`start`], with more configuration after the `[update]` section.
pub async fn start_with(health_timeout: &str, extra: &str) -> Update {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| dir.path().join(name).display().to_string();
    for slot in ["slotA.img", "slotB.img"] {
        std::fs::File::create(p(slot))
            .and_then(|f| f.set_len(SLOT_SIZE))
            .expect("slot");
    }
    {
        use std::io::Write as _;
        let mut a = std::fs::OpenOptions::new()
            .write(true)
            .open(p("slotA.img"))
            .expect("slot A");
        a.write_all(&random(1 << 20, 1)).expect("slot A content");
    }
    std::fs::File::create(p("uboot.env"))
        .and_then(|f| f.set_len(0x4000))
        .expect("env");
    std::fs::write(p("fw_env.config"), format!("{} 0x0000 0x4000\n", p("uboot.env"))).expect("config");
    std::fs::write(p("env.script"), "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n").expect("script");
    // An empty default environment, so fw_setenv can initialise the blank one.
    std::fs::write(p("defenv"), "").expect("defenv");
    run(Command::new("fw_setenv").args([
        "-c",
        &p("fw_env.config"),
        "-f",
        &p("defenv"),
        "-s",
        &p("env.script"),
    ]));
    std::fs::write(p("cmdline"), "console=ttyS0 containeros.slot=A\n").expect("cmdline");
    std::fs::write(p("boot_id"), "boot-1\n").expect("boot id");
    std::fs::create_dir(p("health.d")).expect("health.d");
    for key in ["release", "other"] {
        run(Command::new(bin("containeros")).args([
            "release",
            "keygen",
            "--secret",
            &p(&format!("{key}.key")),
            "--public",
            &p(&format!("{key}.pub")),
        ]));
    }
    let public = std::fs::read_to_string(p("release.pub")).expect("pub");
    let update = format!(
        r#"
[update]
bootloader = "u-boot"
fw_env_config = "{}"
slot_a = "{}"
slot_b = "{}"
trusted_keys = ["{}"]
health_timeout = "{health_timeout}"
health_dir = "{}"
cmdline = "{}"
boot_id = "{}"
{extra}
"#,
        p("fw_env.config"),
        p("slotA.img"),
        p("slotB.img"),
        public.trim(),
        p("health.d"),
        p("cmdline"),
        p("boot_id"),
    );
    let device = Device::start_with(Dockerd::new(), &update).await;
    device.engine_up().await;
    let u = Update { dir, device };
    assert_eq!(u.var("BOOT_A_LEFT"), "3", "initial environment: {}", u.env());
    u
}

fn last_event(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .next_back()
        .unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_os_update_is_installed_switched_tried_and_committed() {
    let mut u = start("60s").await;
    assert_eq!(u.status()["state"], "idle");
    let image = random(5 << 20, 2);
    let release = u.release(2, &image, "release", |_| {});

    let out = u.install(&release);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let done = last_event(&out);
    assert_eq!(done["success"], true, "{done}");
    assert_eq!(done["state"], "pending-reboot", "{done}");
    let slot_b = std::fs::read(u.path("slotB.img")).expect("slot B");
    assert_eq!(&slot_b[..image.len()], &image[..], "the image is in slot B");
    assert_eq!(u.var("BOOT_ORDER"), "B A", "slot B boots next");
    assert_eq!(u.var("BOOT_B_LEFT"), "3");
    let manifest = std::fs::metadata(&release).expect("release").len();
    assert_eq!(
        u.status()["bytes_fetched"],
        image.len() as u64 + manifest,
        "bandwidth accounted: the manifest and the image"
    );

    // The trial boot of B: healthy (engine up, no apps, no checks) → committed.
    u.reboot_into("B", 2);
    assert_eq!(u.var("BOOT_B_LEFT"), "2", "the boot spent a try");
    let status = u.state_becomes("committed").await;
    assert_eq!(status["target_slot"], "B");
    assert_eq!(status["version"], 2);
    assert_eq!(u.var("BOOT_B_LEFT"), "3", "committed: tries refilled");
    assert_eq!(u.var("BOOT_ORDER"), "B A");

    // Release 1 is older than the installed 2: refused, nothing changes;
    // forced, it installs (rolling a fleet back on purpose).
    let older = u.release(1, &random(1 << 20, 6), "release", |_| {});
    let env = u.env();
    let slot_a = file_hash(&u.path("slotA.img"));
    let out = u.install(&older);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not newer than the installed version 2"),
        "{stderr}"
    );
    assert_eq!(u.env(), env, "the environment is untouched");
    assert_eq!(file_hash(&u.path("slotA.img")), slot_a, "slot A is untouched");
    let out = cli(u.device.bus.address())
        .args(["os", "install", &older, "--force-downgrade", "--json"])
        .output()
        .expect("cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(last_event(&out)["state"], "pending-reboot");
    assert_eq!(u.var("BOOT_ORDER"), "A B", "slot A boots next");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_releases_are_refused_and_leave_slots_and_env_alone() {
    let u = start("60s").await;
    let image = random(2 << 20, 3);
    let cases: Vec<(&str, String)> = vec![
        (
            "not signed by a trusted key",
            u.release(5, &image, "other", |_| {}),
        ),
        (
            "expired",
            u.release(6, &image, "release", |m| m["expires"] = 1000.into()),
        ),
        (
            "larger than slot",
            u.release(7, &image, "release", |m| m["os"]["size"] = (SLOT_SIZE + 1).into()),
        ),
    ];
    // A signed envelope altered after signing.
    let good = u.release(8, &image, "release", |_| {});
    let tampered = u.p("tampered.json");
    let text = std::fs::read_to_string(&good).expect("release");
    let altered = text.replacen(r#"\"version\": 8,"#, r#"\"version\": 80,"#, 1);
    assert_ne!(altered, text, "the envelope has a signed field: {text}");
    std::fs::write(&tampered, altered).expect("tampered");
    let mut cases = cases;
    cases.push(("altered", tampered));

    let env_before = u.env();
    let slot_a = file_hash(&u.path("slotA.img"));
    let slot_b = file_hash(&u.path("slotB.img"));
    for (wanted, release) in &cases {
        let out = u.install(release);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{release}: {stderr}");
        assert!(stderr.contains(wanted), "{release}: {stderr} lacks {wanted:?}");
        assert_eq!(u.env(), env_before, "{release}: the environment is untouched");
        assert_eq!(
            file_hash(&u.path("slotA.img")),
            slot_a,
            "the running slot is untouched"
        );
        assert_eq!(
            file_hash(&u.path("slotB.img")),
            slot_b,
            "{release}: nothing written"
        );
    }
    assert_eq!(u.status()["state"], "idle");

    // A manifest whose hash does not match the image: accepted, written,
    // and refused at the end; slot B never becomes bootable, A stays first.
    let wrong = u.release(9, &image, "release", |m| {
        m["os"]["sha256"] = "0".repeat(64).into()
    });
    let out = u.install(&wrong);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SHA-256") || stderr.contains("sha256"),
        "{stderr}"
    );
    let env = u.env();
    assert_eq!(u.var("BOOT_ORDER"), "A", "slot B is out of the boot order: {env}");
    assert_eq!(u.var("BOOT_A_LEFT"), "3", "{env}");
    assert_eq!(u.status()["state"], "idle");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unhealthy_trial_is_rolled_back_and_rebooted() {
    let mut u = start("3s").await;
    let image = random(3 << 20, 4);
    let release = u.release(2, &image, "release", |_| {});
    let out = u.install(&release);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(u.var("BOOT_ORDER"), "B A");

    // B boots, but a drop-in health check fails.
    let check = u.path("health.d/10-app-ready");
    std::fs::write(&check, "#!/bin/sh\necho app not ready >&2\nexit 1\n").expect("check");
    std::fs::set_permissions(&check, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let reboots = u.device.units.reboots();
    u.reboot_into("B", 2);
    let status = u.state_becomes("rolled-back").await;
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("app not ready")),
        "{status}"
    );
    assert_eq!(u.var("BOOT_ORDER"), "A", "B is out of the boot order");
    assert_eq!(u.var("BOOT_B_LEFT"), "0");
    eventually(30, "a reboot asked for", || async {
        (u.device.units.reboots() > reboots).then_some(())
    })
    .await;

    // Back on A: the update stays rolled back; A is what runs.
    u.reboot_into("A", 3);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(u.status()["state"], "rolled-back");
    assert_eq!(u.var("BOOT_ORDER"), "A");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_while_pending_or_trying_the_update_still_ends_well() {
    let mut u = start("60s").await;
    let image = random(4 << 20, 5);
    let release = u.release(2, &image, "release", |_| {});
    let out = u.install(&release);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Killed in pending-reboot, started on the same boot: still pending.
    u.device.agent.kill9();
    u.device.agent.restart();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(u.status()["state"], "pending-reboot");
    assert_eq!(u.var("BOOT_ORDER"), "B A");

    // The trial boot's check takes a while; killed during the trial, the
    // agent comes back on the same boot and still commits.
    let check = u.path("health.d/20-slow");
    std::fs::write(&check, "#!/bin/sh\nsleep 1\nexit 0\n").expect("check");
    std::fs::set_permissions(&check, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    u.reboot_into("B", 2);
    u.state_becomes("trying").await;
    u.device.agent.kill9();
    u.device.agent.restart();
    u.state_becomes("committed").await;
    assert_eq!(u.var("BOOT_ORDER"), "B A");
    assert_eq!(u.var("BOOT_B_LEFT"), "3");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_fitting_update_configuration_the_agent_runs_and_says_why() {
    // The harness's device has no [update] section: U-Boot by default, with
    // no /etc/fw_env.config and no containeros.slot= on this kernel's
    // command line. The agent serves everything else.
    let device = Device::start().await;
    device.engine_up().await;
    let out = cli(device.bus.address())
        .args(["os", "install", "/nonexistent/release.json"])
        .output()
        .expect("cli");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("OS updates are unavailable: update."), "{stderr}");
    let out = cli(device.bus.address())
        .args(["os", "status", "--json"])
        .output()
        .expect("cli");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(status["state"], "idle");
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("unavailable")),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_while_writing_the_slot_stays_out_of_boot_and_is_written_again() {
    let mut u = start("60s").await;
    // Big enough that the write takes a moment to catch.
    let image = random(128 << 20, 7);
    let release = u.release(2, &image, "release", |_| {});
    let mut killed = false;
    for _attempt in 0..5 {
        let out = cli(u.device.bus.address())
            .args(["os", "install", &release, "--no-wait"])
            .output()
            .expect("cli");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let state = eventually(30, "the write under way or done", || async {
            let s = u.status();
            let state = s["state"].as_str().unwrap_or_default().to_owned();
            (state != "idle").then_some(state)
        })
        .await;
        if state == "downloading" {
            u.device.agent.kill9();
            killed = true;
            break;
        }
        // Too quick this time: start over from a fresh record.
        println!("write already {state}; trying again");
        u.device.agent.kill9();
        std::fs::remove_file(u.device._state.path().join("update/state.toml")).ok();
        u.set_var("BOOT_ORDER", "A B");
        u.device.agent.restart();
    }
    assert!(killed, "never caught the agent writing the slot");
    // Dead mid-write: the half-written slot B is out of the boot order.
    assert_eq!(
        u.var("BOOT_ORDER"),
        "A",
        "slot B must not be bootable while written"
    );
    assert_eq!(u.var("BOOT_B_LEFT"), "0");
    u.device.agent.restart();
    u.state_becomes("pending-reboot").await;
    let slot_b = std::fs::read(u.path("slotB.img")).expect("slot B");
    assert!(slot_b[..image.len()] == image[..], "the image is whole in slot B");
    assert_eq!(u.var("BOOT_ORDER"), "B A");
    u.reboot_into("B", 2);
    u.state_becomes("committed").await;
}

/// A one-service apps release running `web` (variant `variant` of the
/// test image), written beside the manifests; (file name, size, sha256).
pub fn apps_release(
    u: &Update,
    version: &str,
    web: &containeros_tests::TestImage,
) -> (String, usize, String) {
    let text = format!(
        r#"name: travel
x-containeros:
  version: "{version}"
services:
  web:
    image: {web}
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
"#,
        web = web.by_digest()
    );
    let name = format!("apps-{version}.yml");
    std::fs::write(u.path(&name), &text).expect("apps release");
    (name, text.len(), sha256(text.as_bytes()))
}

pub fn web_variant(u: &Update) -> Option<String> {
    let id = crate::apps::try_docker(
        &u.device,
        &[
            "ps",
            "-q",
            "--filter",
            "label=org.containeros.release=travel",
            "--filter",
            "status=running",
        ],
    )?;
    let id = id.lines().next()?.to_owned();
    crate::apps::variant(&u.device, &id)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_apps_release_travels_with_the_os_and_rolls_back_with_it() {
    containeros_tests::require_image_services();
    let (web1, web2) = (
        containeros_tests::busybox_image("travel-web", "v1"),
        containeros_tests::busybox_image("travel-web", "v2"),
    );
    let mut u = start("5s").await;
    let (apps1, ..) = apps_release(&u, "1", &web1);
    crate::apps::apply(&u.device, &u.p(&apps1));
    assert_eq!(web_variant(&u).as_deref(), Some("v1"));

    // OS release 2 carries apps v2; its trial fails a health check.
    let (apps2, size, digest) = apps_release(&u, "2", &web2);
    let release = u.release(2, &random(1 << 20, 8), "release", |m| {
        m["apps"] = serde_json::json!({"size": size, "sha256": digest, "path": apps2});
    });
    let out = u.install(&release);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(
        web_variant(&u).as_deref(),
        Some("v1"),
        "apps wait for the trial boot"
    );

    let check = u.path("health.d/10-fail");
    std::fs::write(&check, "#!/bin/sh\nexit 1\n").expect("check");
    std::fs::set_permissions(&check, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    u.reboot_into("B", 2);
    // The trial runs apps v2, fails the check, and rolls both back.
    eventually(60, "apps v2 on the trial boot", || async {
        (web_variant(&u).as_deref() == Some("v2")).then_some(())
    })
    .await;
    u.state_becomes("rolled-back").await;
    u.reboot_into("A", 3);
    eventually(60, "apps v1 again after the rollback", || async {
        (web_variant(&u).as_deref() == Some("v1")).then_some(())
    })
    .await;

    // Release 3 with apps v2 and no failing check: committed, with v2.
    std::fs::remove_file(&check).expect("remove check");
    let release = u.release(3, &random(1 << 20, 9), "release", |m| {
        m["apps"] = serde_json::json!({"size": size, "sha256": digest, "path": apps2});
    });
    let out = u.install(&release);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    u.reboot_into("B", 4);
    u.state_becomes("committed").await;
    assert_eq!(web_variant(&u).as_deref(), Some("v2"));

    // An apps file that is not the signed one is refused up front.
    std::fs::write(u.path(&apps2), "name: travel\n").expect("tamper");
    let release = u.release(4, &random(1 << 20, 10), "release", |m| {
        m["apps"] = serde_json::json!({"size": size, "sha256": digest, "path": apps2});
    });
    let out = u.install(&release);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not the one the manifest signs"), "{stderr}");
}
