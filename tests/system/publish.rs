//! Publishing: `containeros-publish` lays a release out as a channel
//! directory, pinning app images by digest against the local registry, and
//! a device takes it from there by itself (an offline channel here).

use std::process::{Command, Output};

use containeros_tests::{bin, busybox_image, eventually, require_image_services};

use crate::os::start_with;

fn publish(args: &[&str]) -> Output {
    Command::new(bin("containeros-publish"))
        .args(args)
        .output()
        .expect("containeros-publish")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_published_channel_pins_images_and_a_device_applies_it() {
    require_image_services();
    let web = busybox_image("pub-web", "v1");
    let channel = tempfile::tempdir().expect("tempdir");
    let ch = channel.path().display().to_string();
    let u = start_with("60s", &format!("[channel]\nurl = \"{ch}\"\ninterval = \"10s\"\n")).await;
    let compose = u.path("compose.yml");
    std::fs::write(
        &compose,
        format!(
            "name: pub\nx-containeros:\n  version: \"1\"\nservices:\n  web:\n    image: {}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 100000 & wait\"]\n",
            web.by_tag()
        ),
    )
    .expect("compose");
    let key = u.p("release.key");
    let out = publish(&[
        "--channel-dir",
        &ch,
        "--key",
        &key,
        "--version",
        "1",
        "--apps",
        &compose.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Pinned to what the registry serves, and signed as devices check it.
    let apps = std::fs::read_to_string(channel.path().join("releases/1/apps.yml")).expect("apps.yml");
    let digest = web
        .by_digest()
        .split_once('@')
        .map(|(_, d)| d.to_owned())
        .expect("digest");
    assert!(
        apps.contains(&format!("{}@{digest}", web.by_tag())),
        "{apps} does not pin {} to {digest}",
        web.by_tag()
    );
    let public = std::fs::read_to_string(u.path("release.pub")).expect("pub");
    let out = Command::new(bin("containeros"))
        .args([
            "release",
            "verify",
            "--key",
            public.trim(),
            &format!("{ch}/manifest.json"),
        ])
        .output()
        .expect("verify");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The device picks it up from the channel directory.
    eventually(60, "the published apps running", || async {
        (web_variant_of(&u, "pub").as_deref() == Some("v1")).then_some(())
    })
    .await;

    // A release is published once, and only above the channel's current.
    let again = publish(&[
        "--channel-dir",
        &ch,
        "--key",
        &key,
        "--version",
        "1",
        "--apps",
        &compose.display().to_string(),
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not above the channel's current release 1"));

    // An OS release with a rollout share.
    let image = u.path("rootfs.img");
    std::fs::write(&image, crate::os::random(1 << 20, 12)).expect("image");
    let out = publish(&[
        "--channel-dir",
        &ch,
        "--key",
        &key,
        "--version",
        "2",
        "--os-image",
        &image.display().to_string(),
        "--os-version",
        "2.0",
        "--rollout",
        "0",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let envelope: serde_json::Value =
        serde_json::from_slice(&std::fs::read(channel.path().join("manifest.json")).expect("manifest"))
            .expect("json");
    let manifest: serde_json::Value =
        serde_json::from_str(envelope["signed"].as_str().expect("signed")).expect("json");
    assert_eq!(manifest["os"]["path"], "releases/2/os/rootfs.img");
    assert_eq!(
        manifest["os"]["sha256"],
        crate::os::sha256(&std::fs::read(&image).expect("image"))
    );
    assert_eq!(manifest["rollout"], 0);
    // Rolled out to no device: this one holds back.
    eventually(30, "the rollout holding the device back", || async {
        u.device
            .agent
            .stderr()
            .contains("not yet to this one")
            .then_some(())
    })
    .await;
}

fn web_variant_of(u: &crate::os::Update, release: &str) -> Option<String> {
    let id = crate::apps::try_docker(
        &u.device,
        &[
            "ps",
            "-q",
            "--filter",
            &format!("label=org.containeros.release={release}"),
            "--filter",
            "status=running",
        ],
    )?;
    let id = id.lines().next()?.to_owned();
    crate::apps::variant(&u.device, &id)
}
