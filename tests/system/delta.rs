//! Delta OS updates end to end: `containeros-publish` lays a release out
//! (the image and its chunk archive) in a channel directory, served over
//! HTTPS on loopback by the test server; the agent, polling the channel,
//! clones the new image into slot B from its running slot A, fetching only
//! the chunks it lacks — also when the server cuts the connection several
//! times mid-transfer. A release published over an earlier one also
//! carries a binary patch from that one's OS: a device running it fetches
//! the patch instead of chunks.

use std::process::Command;

use containeros_tests::https::{Faults, Server, serve_dir};

use crate::os::{Update, start_with};

const IMAGE: usize = 32 << 20;

/// xorshift64: the same bytes every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, out: &mut Vec<u8>, len: usize) {
        out.extend((0..len).map(|_| self.next().to_le_bytes()[3]));
    }
}

/// `len` bytes laid out like a filesystem image: "files" of 4–512 KiB,
/// incompressible (binaries, compressed data), text-like or zero, each in
/// whole 4 KiB blocks.
fn root_image(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed);
    let mut out = Vec::with_capacity(len + (512 << 10));
    while out.len() < len {
        let size = 4096 * (1 + (rng.next() % 128) as usize);
        match rng.next() % 10 {
            0..=4 => rng.bytes(&mut out, size),
            5..=8 => {
                let words = [
                    "usr", "lib", "share", "systemd", "config", "=", "\n", "the", "error",
                ];
                let start = out.len();
                while out.len() - start < size {
                    out.extend_from_slice(words[(rng.next() % words.len() as u64) as usize].as_bytes());
                    out.push(b' ');
                }
                out.truncate(start + size);
            }
            _ => out.resize(out.len() + size, 0),
        }
    }
    out.truncate(len);
    out
}

/// v1 after a security update: a few files rewritten where they are, a new
/// one in free space.
fn updated(v1: &[u8]) -> Vec<u8> {
    let mut v2 = v1.to_vec();
    let mut rng = Rng(42);
    for (at, len) in [
        (3 << 20, 96 << 10),
        (11 << 20, 256 << 10),
        (19 << 20, 64 << 10),
        (27 << 20, 160 << 10),
    ] {
        let mut fresh = Vec::new();
        rng.bytes(&mut fresh, len);
        v2[at..at + len].copy_from_slice(&fresh);
    }
    let end = v2.len();
    let mut file = Vec::new();
    rng.bytes(&mut file, 128 << 10);
    v2[end - (1 << 20)..end - (1 << 20) + file.len()].copy_from_slice(&file);
    v2
}

/// A device running `v1` from slot A, polling the channel `server` serves;
/// it trusts `key` (a public key), else the one it made.
async fn device(v1: &[u8], server: &Server, key: Option<&str>) -> Update {
    let u = start_with("60s", "").await;
    {
        use std::io::Write as _;
        let mut a = std::fs::OpenOptions::new()
            .write(true)
            .open(u.path("slotA.img"))
            .expect("slot A");
        a.write_all(v1).expect("v1 in slot A");
    }
    let mut u = u;
    u.device.agent.kill9();
    let config = u.device.agent.config_path();
    let mut text = std::fs::read_to_string(&config).expect("config");
    // The device runs OS version 1.0 (what `publish` names v1).
    let os_release = u.path("os-release");
    std::fs::write(&os_release, "ID=containeros\nVERSION_ID=\"1.0\"\n").expect("os-release");
    text = text.replacen(
        "[agent]\n",
        &format!("[agent]\nos_release = \"{}\"\n", os_release.display()),
        1,
    );
    if let Some(key) = key {
        text = text
            .lines()
            .map(|l| {
                if l.starts_with("trusted_keys =") {
                    format!("trusted_keys = [\"{}\"]\n", key.trim())
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
    }
    text.push_str(&format!(
        "[channel]\nurl = \"{}\"\nca_file = \"{}\"\ninterval = \"10s\"\n",
        server.url,
        server.ca_pem.path().display()
    ));
    std::fs::write(&config, text).expect("config");
    u.device.agent.restart();
    u
}

/// The status once the update waits for its reboot; the agent's log if it
/// does not get there.
async fn pending_reboot(u: &Update) -> serde_json::Value {
    for _ in 0..1200 {
        let status = u.status();
        if status["state"] == "pending-reboot" {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!(
        "no pending reboot after 120 s: {}\nagent log:\n{}",
        u.status(),
        u.device.agent.stderr()
    );
}

/// The first `len` bytes of slot B.
fn slot_b(u: &Update, len: usize) -> Vec<u8> {
    let mut bytes = std::fs::read(u.path("slotB.img")).expect("slot B");
    bytes.truncate(len);
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delta_update_fetches_what_changed_and_survives_cut_connections() {
    let v1 = root_image(IMAGE, 1);
    let v2 = updated(&v1);
    let channel = tempfile::tempdir().expect("channel dir");
    let v2_file = channel.path().join("v2.img");
    std::fs::write(&v2_file, &v2).expect("v2");

    // A clean run: the delta's size, and the update through to commit.
    let server = serve_dir(channel.path(), Faults::default()).await;
    let mut u = device(&v1, &server, None).await;
    let key = std::fs::read_to_string(u.path("release.pub")).expect("release key");
    let out = Command::new(containeros_tests::bin("containeros-publish"))
        .arg("--channel-dir")
        .arg(channel.path())
        .args([
            "--key",
            &u.p("release.key"),
            "--version",
            "2",
            "--os-version",
            "2.0",
        ])
        .arg("--os-image")
        .arg(&v2_file)
        .output()
        .expect("containeros-publish");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let archive = std::fs::metadata(channel.path().join("releases/2/os/rootfs.cba"))
        .expect("the release's chunk archive")
        .len();
    let status = pending_reboot(&u).await;
    let delta = status["bytes_fetched"].as_u64().expect("bytes_fetched");
    assert!(slot_b(&u, IMAGE) == v2, "slot B does not hold v2");
    let raw = IMAGE as u64;
    println!(
        "delta: {delta} bytes fetched for a {raw}-byte image ({:.1}%; whole archive {archive} bytes)",
        100.0 * delta as f64 / raw as f64
    );
    assert!(
        delta < raw / 10 && delta < archive / 4,
        "the delta fetched {delta} bytes: not much less than the image ({raw}) or its archive ({archive})"
    );
    u.reboot_into("B", 2);
    let status = u.state_becomes("committed").await;
    assert_eq!(status["booted_slot"], "B", "{status}");
    drop(u);
    drop(server);

    // The same update on another device, the connection cut three times
    // in the middle of the chunks.
    let manifests = 4 << 10;
    let cuts = vec![
        manifests + delta / 4,
        manifests + delta / 2,
        manifests + 3 * delta / 4,
    ];
    let server = serve_dir(
        channel.path(),
        Faults {
            cuts: cuts.clone(),
            ..Faults::default()
        },
    )
    .await;
    let u = device(&v1, &server, Some(&key)).await;
    let status = pending_reboot(&u).await;
    let fetched = status["bytes_fetched"].as_u64().expect("bytes_fetched");
    let stats = server.stats();
    println!(
        "delta with {} cut connections: {fetched} bytes fetched (clean: {delta}), {} requests",
        stats.cuts,
        stats.requests.len()
    );
    assert_eq!(stats.cuts, cuts.len(), "the connection was not cut as planned");
    assert!(slot_b(&u, IMAGE) == v2, "slot B does not hold v2");
    assert!(
        fetched <= delta + delta / 5 + (64 << 10),
        "with cut connections the update fetched {fetched} bytes, one delta is {delta}"
    );
}

/// Publishes `image` as release `version` (OS version `os_version`) into
/// `channel`, signed with `key`.
fn publish(channel: &std::path::Path, key: &std::path::Path, version: &str, os_version: &str, image: &[u8]) {
    let file = channel.join(format!("v{version}.img"));
    std::fs::write(&file, image).expect("image");
    let out = Command::new(containeros_tests::bin("containeros-publish"))
        .arg("--channel-dir")
        .arg(channel)
        .arg("--key")
        .arg(key)
        .args([
            "--version",
            version,
            "--os-version",
            os_version,
            "--delta-level",
            "5",
        ])
        .arg("--os-image")
        .arg(&file)
        .output()
        .expect("containeros-publish");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_patch_update_fetches_the_patch_and_falls_back_on_another_seed() {
    let v1 = root_image(IMAGE, 1);
    let v2 = updated(&v1);
    let channel = tempfile::tempdir().expect("channel dir");
    let keys = tempfile::tempdir().expect("key dir");
    let (secret, public) = (keys.path().join("release.key"), keys.path().join("release.pub"));
    let out = Command::new(containeros_tests::bin("containeros"))
        .args(["release", "keygen", "--secret"])
        .arg(&secret)
        .arg("--public")
        .arg(&public)
        .output()
        .expect("containeros release keygen");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = std::fs::read_to_string(&public).expect("public key");
    publish(channel.path(), &secret, "1", "1.0", &v1);
    publish(channel.path(), &secret, "2", "2.0", &v2);
    let patch = channel.path().join("releases/2/os/from-1.0.patch");
    let patch_size = std::fs::metadata(&patch)
        .expect("the release's patch from 1.0")
        .len();
    let manifest = std::fs::read_to_string(channel.path().join("manifest.json")).expect("manifest");
    assert!(manifest.contains("from-1.0.patch"), "{manifest}");

    // A device on v1: the patch, and nothing else of the OS.
    let server = serve_dir(channel.path(), Faults::default()).await;
    let mut u = device(&v1, &server, Some(&key)).await;
    let status = pending_reboot(&u).await;
    let fetched = status["bytes_fetched"].as_u64().expect("bytes_fetched");
    assert!(slot_b(&u, IMAGE) == v2, "slot B does not hold v2");
    println!("patch: {fetched} bytes fetched for a {IMAGE}-byte image (patch {patch_size} bytes)");
    assert!(
        fetched >= patch_size && fetched <= patch_size + (64 << 10),
        "fetched {fetched} bytes, the patch is {patch_size}"
    );
    assert!(
        u.device.agent.stderr().contains("binary patch"),
        "the update did not go by the patch:\n{}",
        u.device.agent.stderr()
    );
    u.reboot_into("B", 2);
    let status = u.state_becomes("committed").await;
    assert_eq!(status["booted_slot"], "B", "{status}");
    drop(u);
    drop(server);

    // The same with the connection cut twice in the patch: resumed.
    let manifests = 4 << 10;
    let cuts = vec![manifests + patch_size / 3, manifests + 2 * patch_size / 3];
    let server = serve_dir(
        channel.path(),
        Faults {
            cuts: cuts.clone(),
            ..Faults::default()
        },
    )
    .await;
    let u = device(&v1, &server, Some(&key)).await;
    let status = pending_reboot(&u).await;
    let cut_fetched = status["bytes_fetched"].as_u64().expect("bytes_fetched");
    let stats = server.stats();
    println!(
        "patch with {} cut connections: {cut_fetched} bytes fetched (clean: {fetched})",
        stats.cuts
    );
    assert_eq!(stats.cuts, cuts.len(), "the connection was not cut as planned");
    assert!(slot_b(&u, IMAGE) == v2, "slot B does not hold v2");
    assert!(
        cut_fetched <= fetched + fetched / 5 + (64 << 10),
        "with cut connections the update fetched {cut_fetched} bytes, the patch alone {fetched}"
    );
    drop(u);
    drop(server);

    // A device that says it runs 1.0 but holds other bytes: the patch
    // fails its checksums, the chunk archive makes the image instead.
    let mut other = v1.clone();
    for b in &mut other[(5 << 20)..(5 << 20) + 4096] {
        *b ^= 0xa5;
    }
    let server = serve_dir(channel.path(), Faults::default()).await;
    let u = device(&other, &server, Some(&key)).await;
    pending_reboot(&u).await;
    assert!(slot_b(&u, IMAGE) == v2, "slot B does not hold v2");
    let log = u.device.agent.stderr();
    assert!(
        log.contains("the binary patch failed") && log.contains("Adler-32"),
        "no fallback from the patch:\n{log}"
    );
}
