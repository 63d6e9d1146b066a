//! The self-managing channel: the agent polls a channel served over HTTP on
//! loopback (Python's http.server, which answers If-Modified-Since with
//! 304) or read from a directory, and applies what it finds by itself.

use std::process::{Child, Command, Stdio};

use containeros_tests::{Logind, busybox_image, eventually, require_image_services};

use crate::os::{Update, apps_release, random, start_with, web_variant};

/// `python3 -m http.server` over `dir` on a free loopback port.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(dir: &std::path::Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string()])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 http.server");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes `release` (a signed envelope in the channel directory) as the
/// channel's current manifest.
fn publish(u: &Update, release: &str) {
    std::fs::copy(release, u.path("manifest.json")).expect("publish");
}

/// An apps-only release `version` carrying `apps`.
fn apps_only(
    u: &Update,
    version: u64,
    key: &str,
    apps: &(String, usize, String),
    rollout: Option<u8>,
) -> String {
    let (path, size, digest) = apps.clone();
    u.release(version, &[], key, move |m| {
        if let Some(o) = m.as_object_mut() {
            o.remove("os");
        }
        m["apps"] = serde_json::json!({"size": size, "sha256": digest, "path": path});
        if let Some(r) = rollout {
            m["rollout"] = r.into();
        }
    })
}

fn channel_config(url: &str) -> String {
    format!("[channel]\nurl = \"{url}\"\ninterval = \"10s\"\n")
}

/// This device's rollout bucket, computed as the agent does: from the
/// device id the agent keeps in its state directory.
fn bucket(state_dir: &std::path::Path, channel: &str) -> u8 {
    let device_id = std::fs::read_to_string(state_dir.join("device-id")).expect("the agent's device-id");
    let digest = crate::os::sha256(format!("{}\n{channel}", device_id.trim()).as_bytes());
    let first = u64::from_str_radix(&digest[..16], 16).expect("hex");
    u8::try_from(first % 100).expect("bucket")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_channel_applies_apps_then_an_os_release_by_itself() {
    require_image_services();
    let (web1, web2) = (busybox_image("chan-web", "v1"), busybox_image("chan-web", "v2"));
    // The channel directory is the test's directory, served over HTTP.
    let mut u = start_with("60s", r#"reboot_retry = "1s""#).await;
    let server = Server::start(u.dir.path());
    let url = format!("http://127.0.0.1:{}", server.port);
    u.device.agent.kill9();
    let config = u.device.agent.config_path();
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(&channel_config(&url));
    std::fs::write(&config, text).expect("config");

    let apps1 = apps_release(&u, "1", &web1);
    publish(&u, &apps_only(&u, 1, "release", &apps1, None));
    u.device.agent.restart();
    eventually(60, "apps v1 from the channel", || async {
        (web_variant(&u).as_deref() == Some("v1")).then_some(())
    })
    .await;

    // An OS release with apps v2: installed and rebooted into by itself,
    // the reboot asked of logind (as on the image), not of systemd. An app
    // holds a block inhibitor at first: the reboot is asked again until
    // logind takes it, never taken around logind.
    let apps2 = apps_release(&u, "2", &web2);
    let (path, size, digest) = apps2.clone();
    let logind = Logind::blocking_reboots(&u.device.bus, 2).await;
    let reboots = u.device.units.reboots();
    publish(
        &u,
        &u.release(2, &random(1 << 20, 11), "release", move |m| {
            m["apps"] = serde_json::json!({"size": size, "sha256": digest, "path": path});
        }),
    );
    u.state_becomes("pending-reboot").await;
    eventually(30, "a reboot asked of logind until it takes it", || async {
        (logind.calls()
            == [
                "Reboot interactive=false (blocked)",
                "Reboot interactive=false (blocked)",
                "Reboot interactive=false",
            ])
        .then_some(())
    })
    .await;
    assert_eq!(u.device.units.reboots(), reboots, "not around logind");
    u.reboot_into("B", 2);
    u.state_becomes("committed").await;
    eventually(60, "apps v2 with the new OS", || async {
        (web_variant(&u).as_deref() == Some("v2")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_old_and_not_yet_rolled_out_releases_are_ignored() {
    require_image_services();
    let (web1, web2) = (busybox_image("roll-web", "v1"), busybox_image("roll-web", "v2"));
    let mut u = start_with("60s", "").await;
    // Offline channel: the directory itself.
    u.device.agent.kill9();
    let config = u.device.agent.config_path();
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(&channel_config(&u.dir.path().display().to_string()));
    std::fs::write(&config, text).expect("config");
    let applied = u.device._state.path().join("channel/applied-version");

    // Signed by a key the device does not trust: ignored, said once.
    let apps1 = apps_release(&u, "1", &web1);
    publish(&u, &apps_only(&u, 3, "other", &apps1, None));
    u.device.agent.restart();
    eventually(30, "the untrusted release ignored", || async {
        u.device
            .agent
            .stderr()
            .contains("ignoring the channel's release: the manifest is not signed by a trusted key")
            .then_some(())
    })
    .await;
    assert!(!applied.exists(), "nothing applied");
    assert_eq!(web_variant(&u), None);

    // Rolled out to exactly the devices below this one's bucket: not yet.
    let b = bucket(u.device._state.path(), "stable");
    publish(&u, &apps_only(&u, 4, "release", &apps1, Some(b)));
    eventually(30, "the rollout holding this device back", || async {
        u.device
            .agent
            .stderr()
            .contains("not yet to this one")
            .then_some(())
    })
    .await;
    assert!(!applied.exists(), "nothing applied");
    // One more percent includes it.
    publish(&u, &apps_only(&u, 5, "release", &apps1, Some(b + 1)));
    eventually(60, "apps v1 once rolled out to this device", || async {
        (web_variant(&u).as_deref() == Some("v1")).then_some(())
    })
    .await;
    assert_eq!(std::fs::read_to_string(&applied).expect("applied").trim(), "5");

    // An older release, properly signed: ignored, nothing changes.
    let apps2 = apps_release(&u, "2", &web2);
    publish(&u, &apps_only(&u, 2, "release", &apps2, None));
    eventually(30, "the older release ignored", || async {
        u.device
            .agent
            .stderr()
            .contains("is not newer than the installed version 5")
            .then_some(())
    })
    .await;
    assert_eq!(web_variant(&u).as_deref(), Some("v1"));
    assert_eq!(std::fs::read_to_string(&applied).expect("applied").trim(), "5");
}
