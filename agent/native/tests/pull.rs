//! Pulls from the local registry into a fresh store: platforms, layer
//! sharing, whiteouts through a real overlayfs mount, corrupt images, GC,
//! and a pull killed with SIGKILL that the next pull completes.

mod common;

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Layer, REGISTRY, noise, push_image, push_image_with, push_index};
use containeros_apps::release::ImageRef;
use containeros_native::{Error, Platform, Progress, Registry, Store, pull};

fn registry() -> Registry {
    Registry::new(common::http())
}

fn amd64() -> Platform {
    "linux/amd64".parse().expect("platform")
}

fn image(reference: &str) -> ImageRef {
    reference.parse().expect("test image reference")
}

fn base_layer(name: &str) -> Layer {
    Layer::default()
        .dir("etc", 0o755)
        .file("etc/a", 0o644, format!("a of {name}\n"))
        .file("etc/b", 0o600, "b\n")
        .dir("dir", 0o755)
        .file("dir/x", 0o644, "x\n")
        .dir("bin", 0o755)
        .file("bin/tool", 0o755, format!("#!/bin/sh\necho {name}\n"))
        .symlink("bin/alias", "tool")
}

async fn pull_quiet(
    store: &Store,
    reference: &str,
    device: &Platform,
) -> Result<containeros_native::ImageRecord, Error> {
    pull(store, &registry(), &image(reference), device, &|_| {}).await
}

#[tokio::test]
async fn a_pulled_image_is_unpacked_recorded_and_reported() {
    common::require_registry().await;
    let repo = "containeros-test/native-basic";
    let (digest, _) = push_image(repo, Some("v1"), "linux/amd64", &[base_layer("basic")]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open store");
    let seen = Mutex::new(Vec::<Progress>::new());
    let reference = format!("{REGISTRY}/{repo}:v1");
    let record = pull(&store, &registry(), &image(&reference), &amd64(), &|p| {
        seen.lock().expect("progress lock").push(p);
    })
    .await
    .expect("pull");
    assert_eq!(record.digest, digest);
    assert_eq!(record.layers.len(), 1);
    let layer = store.layer_path(&record.layers[0]);
    assert_eq!(
        std::fs::read_to_string(layer.join("etc/a")).expect("etc/a"),
        "a of basic\n"
    );
    assert_eq!(
        std::fs::metadata(layer.join("etc/b")).expect("etc/b").mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_link(layer.join("bin/alias")).expect("symlink"),
        Path::new("tool")
    );
    let seen = seen.into_inner().expect("progress lock");
    let last = seen.last().expect("progress was reported");
    assert!(
        last.total > 0 && last.done == last.total,
        "progress ends complete: {seen:?}"
    );

    // Found again by tag and by digest, also after reopening the store.
    drop(store);
    let store = Store::open(dir.path()).expect("reopen store");
    assert_eq!(store.image(&reference).expect("record").as_ref(), Some(&record));
    let by_digest = format!("{REGISTRY}/{repo}@{digest}");
    assert_eq!(
        store.image(&by_digest).expect("record").map(|r| r.layers),
        Some(record.layers.clone())
    );
    // The layer archive itself is not kept once unpacked.
    let blobs: Vec<_> = std::fs::read_dir(dir.path().join("blobs/sha256"))
        .expect("blobs")
        .collect();
    assert_eq!(blobs.len(), 2, "manifest and config only: {blobs:?}");
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _store = Store::open(dir.path()).expect("open store");
    let err = Store::open(dir.path()).expect_err("second open is refused");
    assert!(matches!(err, Error::Locked { .. }), "{err}");
}

#[tokio::test]
async fn the_index_entry_for_the_device_platform_is_pulled() {
    common::require_registry().await;
    let repo = "containeros-test/native-multiarch";
    let mut entries = Vec::new();
    for platform in [
        "linux/amd64",
        "linux/arm/v5",
        "linux/arm/v7",
        "linux/mips",
        "linux/mipsle",
    ] {
        let layer = Layer::default().file("platform", 0o644, platform);
        let (digest, size) = push_image(repo, None, platform, &[layer]).await;
        entries.push((platform, digest, size));
    }
    let index = push_index(repo, "multi", &entries).await;
    let reference = format!("{REGISTRY}/{repo}:multi");
    for (device, expected) in [
        ("linux/arm/v5", "linux/arm/v5"),
        ("linux/arm/v6", "linux/arm/v5"),
        ("linux/arm/v7", "linux/arm/v7"),
        ("linux/mips", "linux/mips"),
        ("linux/mipsle", "linux/mipsle"),
        ("linux/amd64", "linux/amd64"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open store");
        let device: Platform = device.parse().expect("platform");
        let record = pull_quiet(&store, &reference, &device).await.expect("pull");
        assert_eq!(record.digest, index, "the record names the index digest");
        assert_eq!(record.platform.to_string(), expected);
        let got = std::fs::read_to_string(store.layer_path(&record.layers[0]).join("platform"))
            .expect("platform file");
        assert_eq!(got, expected, "device {device}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open store");
    let err = pull_quiet(&store, &reference, &"linux/riscv64".parse().expect("platform"))
        .await
        .expect_err("no riscv64 entry");
    let text = err.to_string();
    assert!(
        matches!(err, Error::NoPlatform { .. })
            && text.contains("linux/arm/v5")
            && text.contains("linux/riscv64"),
        "{text}"
    );
    assert!(store.images().expect("records").is_empty());
}

#[tokio::test]
async fn images_share_layers_and_gc_keeps_what_is_referenced() {
    common::require_registry().await;
    let repo = "containeros-test/native-shared";
    let base = base_layer("shared").file("big", 0o644, noise(7, 300_000));
    let top_one = Layer::default().file("one", 0o644, noise(8, 100_000));
    let top_two = Layer::default().file("two", 0o644, noise(9, 50_000));
    push_image(repo, Some("one"), "linux/amd64", &[base.clone(), top_one.clone()]).await;
    push_image(repo, Some("two"), "linux/amd64", &[base.clone(), top_two.clone()]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open store");
    let one = pull_quiet(&store, &format!("{REGISTRY}/{repo}:one"), &amd64())
        .await
        .expect("pull one");
    let totals = Mutex::new(Vec::new());
    let two = pull(
        &store,
        &registry(),
        &image(&format!("{REGISTRY}/{repo}:two")),
        &amd64(),
        &|p| {
            totals.lock().expect("lock").push(p.total);
        },
    )
    .await
    .expect("pull two");
    assert_eq!(one.layers[0], two.layers[0], "same base layer");
    let top_size = top_two.blob().0.len() as u64;
    assert_eq!(
        totals.into_inner().expect("lock").last(),
        Some(&top_size),
        "only the new layer is downloaded"
    );

    // GC with both images: nothing goes.
    let report = store.gc().await.expect("gc");
    assert_eq!((report.blobs, report.layers), (0, 0), "{report:?}");
    // Without image one (both of its references): its own layer goes, the shared base stays.
    assert!(store.remove_image(&one.reference).expect("remove"));
    assert!(
        store
            .remove_image(&format!("{REGISTRY}/{repo}@{}", one.digest))
            .expect("remove")
    );
    let report = store.gc().await.expect("gc");
    assert_eq!(report.layers, 1, "{report:?}");
    assert!(report.blobs >= 2, "manifest and config of one: {report:?}");
    assert!(!store.has_layer(&one.layers[1]));
    assert!(
        store.image(&two.reference).expect("record").is_some(),
        "image two still whole"
    );
    assert!(store.has_layer(&two.layers[0]) && store.has_layer(&two.layers[1]));
}

#[tokio::test]
async fn whiteouts_and_opaque_directories_hide_the_base_layer_under_overlayfs() {
    common::require_registry().await;
    let repo = "containeros-test/native-whiteout";
    let base = base_layer("whiteout");
    let top = Layer::default()
        .dir("etc", 0o755)
        .whiteout("etc/a")
        .dir("dir", 0o755)
        .opaque("dir")
        .file("dir/y", 0o644, "y\n")
        .whiteout("bin/alias");
    push_image(repo, Some("v1"), "linux/amd64", &[base, top]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store")).expect("open store");
    let record = pull_quiet(&store, &format!("{REGISTRY}/{repo}:v1"), &amd64())
        .await
        .expect("pull");
    let lower = store.layer_path(&record.layers[0]);
    let upper = store.layer_path(&record.layers[1]);

    // In the layer directory: overlayfs's own forms.
    let wh = std::fs::symlink_metadata(upper.join("etc/a")).expect("whiteout node");
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "etc/a is a 0:0 char device"
    );
    assert!(!upper.join("etc/.wh.a").exists() && !upper.join("dir/.wh..wh..opq").exists());
    let mut opaque = [0u8; 4];
    let n =
        rustix::fs::getxattr(upper.join("dir"), "trusted.overlay.opaque", &mut opaque).expect("opaque xattr");
    assert_eq!(&opaque[..n], b"y");

    // Through a real overlay mount: what the container sees.
    let merged = dir.path().join("merged");
    std::fs::create_dir(&merged).expect("mkdir merged");
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={}:{}", upper.display(), lower.display()))
        .arg(&merged)
        .status()
        .expect("running mount");
    assert!(status.success(), "mounting the overlay (needs root)");
    let check = || {
        assert!(!merged.join("etc/a").exists(), "etc/a deleted by the top layer");
        assert_eq!(
            std::fs::read_to_string(merged.join("etc/b")).expect("etc/b"),
            "b\n"
        );
        assert!(!merged.join("dir/x").exists(), "dir/x hidden by the opaque dir");
        assert_eq!(
            std::fs::read_to_string(merged.join("dir/y")).expect("dir/y"),
            "y\n"
        );
        assert!(
            merged.join("bin/tool").exists() && std::fs::symlink_metadata(merged.join("bin/alias")).is_err()
        );
    };
    let result = std::panic::catch_unwind(check);
    let _ = Command::new("umount").arg(&merged).status();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn an_image_whose_layer_does_not_match_its_diff_id_is_refused_and_leaves_nothing() {
    common::require_registry().await;
    let repo = "containeros-test/native-corrupt";
    let layer = Layer::default().file("f", 0o644, "corrupt test\n");
    push_image_with(repo, Some("bad-diff-id"), "linux/amd64", &[layer], |config| {
        config["rootfs"]["diff_ids"] = serde_json::json!([format!("sha256:{}", "0".repeat(64))]);
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open store");
    let err = pull_quiet(&store, &format!("{REGISTRY}/{repo}:bad-diff-id"), &amd64())
        .await
        .expect_err("a wrong diff ID fails the pull");
    assert!(err.to_string().contains("the image config says"), "{err}");
    assert!(store.images().expect("records").is_empty());
    let layers: Vec<_> = std::fs::read_dir(dir.path().join("layers"))
        .expect("layers")
        .collect();
    assert!(layers.is_empty(), "no layer dir is left: {layers:?}");

    let err = pull_quiet(&store, &format!("{REGISTRY}/{repo}:no-such-tag"), &amd64())
        .await
        .expect_err("unknown tag");
    assert!(
        err.is_not_found() && err.to_string().contains("no-such-tag"),
        "{err}"
    );
}

#[tokio::test]
async fn interrupted_unpacks_are_removed_when_the_store_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::open(dir.path()).expect("open store"));
    let tmp = dir.path().join("layers/.tmp-0000/diff");
    std::fs::create_dir_all(&tmp).expect("mkdir");
    std::fs::write(tmp.join("half"), "half").expect("write");
    drop(Store::open(dir.path()).expect("reopen store"));
    assert!(!dir.path().join("layers/.tmp-0000").exists());
}

/// The child side of the power-cut test: pulls, then exits. Does nothing
/// unless started by [`a_pull_killed_mid_download_is_completed_by_the_next`].
#[tokio::test]
async fn child_pull() {
    let (Ok(store), Ok(reference)) = (
        std::env::var("NATIVE_CHILD_STORE"),
        std::env::var("NATIVE_CHILD_REF"),
    ) else {
        return;
    };
    let store = Store::open(Path::new(&store)).expect("child opens the store");
    pull_quiet(&store, &reference, &amd64())
        .await
        .expect("child pull");
}

/// A TCP proxy to the registry that sends responses at about 4 MB/s, so
/// that a pull can be killed in the middle of a download.
async fn slow_proxy() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let port = listener.local_addr().expect("proxy addr").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let Ok(server) = tokio::net::TcpStream::connect(REGISTRY).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                let mut buf = vec![0u8; 16 << 10];
                loop {
                    match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(4)).await;
                        }
                    }
                }
                up.abort();
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_killed_mid_download_is_completed_by_the_next() {
    common::require_registry().await;
    let repo = "containeros-test/native-powercut";
    let big = noise(42, 12 << 20);
    let layer = base_layer("powercut").file("big", 0o644, big.clone());
    let (_, layer_digest, _) = layer.blob();
    push_image(repo, Some("v1"), "linux/amd64", &[layer]).await;
    let port = slow_proxy().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let partial = dir.path().join("ingest").join(layer_digest.hex());

    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_pull", "--nocapture", "--test-threads=1"])
        .env("NATIVE_CHILD_STORE", dir.path())
        .env("NATIVE_CHILD_REF", format!("127.0.0.1:{port}/{repo}:v1"))
        .spawn()
        .expect("starting the child pull");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if have > 2 << 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the child pull never got 2 MiB into the layer"
        );
        assert!(
            child.try_wait().expect("child status").is_none(),
            "the child finished before it was killed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reaping the child");
    let left = std::fs::metadata(&partial)
        .expect("partial download is left")
        .len();
    assert!(left < big.len() as u64, "killed mid-download ({left} bytes)");

    // The next pull (straight to the registry) resumes and completes.
    let store = Store::open(dir.path()).expect("open store after the kill");
    assert!(
        store.images().expect("records").is_empty(),
        "no record of a half pull"
    );
    let first = Mutex::new(None::<Progress>);
    let record = pull(
        &store,
        &registry(),
        &image(&format!("{REGISTRY}/{repo}:v1")),
        &amd64(),
        &|p| {
            let mut f = first.lock().expect("lock");
            if f.is_none() && p.done > 0 {
                *f = Some(p);
            }
        },
    )
    .await
    .expect("pull after the kill");
    let resumed_at = first.into_inner().expect("lock").expect("progress reported").done;
    assert!(
        resumed_at >= left.min(2 << 20),
        "resumed from {resumed_at}, not from zero (left {left})"
    );
    let got = std::fs::read(store.layer_path(&record.layers[0]).join("big")).expect("big file");
    assert!(got == big, "the unpacked file is intact");
    assert!(!partial.exists());
}
