//! Test images for the native engine, pushed straight to the local registry
//! on `127.0.0.1:5000` through the distribution API: layers are tars built
//! here (so they can hold whiteouts, and platforms Docker cannot build
//! here, such as `linux/arm/v5` and `linux/mips`). Deterministic: the same
//! layer is the same blob in every run.

#![allow(dead_code)]

use std::io::Write as _;

use containeros_native::Digest;
use flate2::write::GzEncoder;

pub const REGISTRY: &str = "127.0.0.1:5000";

pub fn http() -> reqwest::Client {
    containeros_update::http::client(None, false, containeros_update::http::Timeouts::default())
        .expect("building the HTTP client")
}

/// Panics with how to start it unless the registry answers.
pub async fn require_registry() {
    let ok = http()
        .get(format!("http://{REGISTRY}/v2/"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    assert!(
        ok,
        "the native engine tests need the registry on {REGISTRY}: start it with \
         `bash -c '. scripts/services.sh; ensure_registry'` from the repository root"
    );
}

/// One layer's entries.
#[derive(Debug, Default, Clone)]
pub struct Layer {
    entries: Vec<(String, Entry)>,
}

#[derive(Debug, Clone)]
enum Entry {
    Dir(u32),
    File(u32, Vec<u8>),
    Symlink(String),
    /// An empty regular file (whiteouts and opaque markers are those).
    Marker,
}

impl Layer {
    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        self.entries.push((path.to_owned(), Entry::Dir(mode)));
        self
    }
    pub fn file(mut self, path: &str, mode: u32, contents: impl Into<Vec<u8>>) -> Self {
        self.entries
            .push((path.to_owned(), Entry::File(mode, contents.into())));
        self
    }
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.entries
            .push((path.to_owned(), Entry::Symlink(target.to_owned())));
        self
    }
    /// `.wh.<name>` next to `path`: deletes `path` of the layers below.
    pub fn whiteout(mut self, path: &str) -> Self {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.entries.push((wh, Entry::Marker));
        self
    }
    /// `<dir>/.wh..wh..opq`: hides what the layers below have in `dir`.
    pub fn opaque(mut self, dir: &str) -> Self {
        self.entries.push((format!("{dir}/.wh..wh..opq"), Entry::Marker));
        self
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            match entry {
                Entry::Dir(mode) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    b.append_data(&mut h, path, std::io::empty()).expect("tar dir");
                }
                Entry::File(mode, data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_slice()).expect("tar file");
                }
                Entry::Marker => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(0);
                    b.append_data(&mut h, path, std::io::empty()).expect("tar marker");
                }
                Entry::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, path, target).expect("tar symlink");
                }
            }
        }
        b.into_inner().expect("finishing the tar")
    }

    /// (gzip blob, its digest, the diff ID).
    pub fn blob(&self) -> (Vec<u8>, Digest, Digest) {
        let tar = self.tar();
        let diff_id = Digest::of(&tar);
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let digest = Digest::of(&gz);
        (gz, digest, diff_id)
    }
}

/// Incompressible, deterministic bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

tokio::task_local! {
    /// Where the push helpers push (host, `Authorization`), when not the
    /// local registry: set with `PUSH_TARGET.scope(…)`.
    pub static PUSH_TARGET: (String, Option<String>);
}

fn target() -> (String, Option<String>) {
    PUSH_TARGET
        .try_with(Clone::clone)
        .unwrap_or_else(|_| (REGISTRY.to_owned(), None))
}

fn with_auth(request: reqwest::RequestBuilder, auth: &Option<String>) -> reqwest::RequestBuilder {
    match auth {
        Some(a) => request.header("authorization", a),
        None => request,
    }
}

pub async fn push_blob(repo: &str, bytes: &[u8]) -> Digest {
    let digest = Digest::of(bytes);
    let http = http();
    let (host, auth) = target();
    let head = with_auth(
        http.head(format!("http://{host}/v2/{repo}/blobs/{digest}")),
        &auth,
    )
    .send()
    .await
    .expect("HEAD blob");
    if head.status().is_success() {
        return digest;
    }
    let start = with_auth(
        http.post(format!("http://{host}/v2/{repo}/blobs/uploads/")),
        &auth,
    )
    .send()
    .await
    .expect("starting an upload");
    assert_eq!(start.status().as_u16(), 202, "starting an upload to {repo}");
    let location = start
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("upload location")
        .to_owned();
    let mut url = if location.starts_with("http") {
        reqwest::Url::parse(&location).expect("upload URL")
    } else {
        reqwest::Url::parse(&format!("http://{host}{location}")).expect("upload URL")
    };
    url.query_pairs_mut().append_pair("digest", digest.as_str());
    let put = with_auth(http.put(url), &auth)
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .expect("uploading a blob");
    assert_eq!(
        put.status().as_u16(),
        201,
        "uploading blob {digest} to {repo}: {:?}",
        put.text().await
    );
    digest
}

pub async fn push_manifest(repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Digest {
    let (host, auth) = target();
    let put = with_auth(
        http().put(format!("http://{host}/v2/{repo}/manifests/{reference}")),
        &auth,
    )
    .header("content-type", media_type)
    .body(body.to_vec())
    .send()
    .await
    .expect("pushing a manifest");
    assert_eq!(
        put.status().as_u16(),
        201,
        "pushing manifest {repo}:{reference}: {:?}",
        put.text().await
    );
    Digest::of(body)
}

/// An image of `layers` for `platform` (`os/arch[/variant]`); pushed under
/// `tag` when given. Returns (manifest digest, manifest size).
pub async fn push_image(repo: &str, tag: Option<&str>, platform: &str, layers: &[Layer]) -> (Digest, u64) {
    push_image_with(repo, tag, platform, layers, |_| {}).await
}

/// [`push_image`], letting `tweak` change the config before it is pushed.
pub async fn push_image_with(
    repo: &str,
    tag: Option<&str>,
    platform: &str,
    layers: &[Layer],
    tweak: impl FnOnce(&mut serde_json::Value),
) -> (Digest, u64) {
    let mut parts = platform.split('/');
    let os = parts.next().expect("os");
    let arch = parts.next().expect("arch");
    let variant = parts.next();
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        let (gz, _, diff_id) = layer.blob();
        let digest = push_blob(repo, &gz).await;
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest.as_str(),
            "size": gz.len(),
        }));
        diff_ids.push(diff_id.to_string());
    }
    let mut config = serde_json::json!({
        "architecture": arch,
        "os": os,
        "config": { "Env": ["PATH=/bin"], "Cmd": ["sh"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    if let Some(v) = variant {
        config["variant"] = serde_json::json!(v);
    }
    tweak(&mut config);
    let config = serde_json::to_vec(&config).expect("config JSON");
    let config_digest = push_blob(repo, &config).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.as_str(),
            "size": config.len(),
        },
        "layers": descriptors,
    });
    let body = serde_json::to_vec(&manifest).expect("manifest JSON");
    let reference = Digest::of(&body).to_string();
    let digest = push_manifest(
        repo,
        tag.unwrap_or(&reference),
        "application/vnd.oci.image.manifest.v1+json",
        &body,
    )
    .await;
    (digest, body.len() as u64)
}

/// An OCI index of `(platform, manifest digest, size)` under `tag`.
pub async fn push_index(repo: &str, tag: &str, entries: &[(&str, Digest, u64)]) -> Digest {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(platform, digest, size)| {
            let mut parts = platform.split('/');
            let mut p = serde_json::json!({
                "os": parts.next().expect("os"),
                "architecture": parts.next().expect("arch"),
            });
            if let Some(v) = parts.next() {
                p["variant"] = serde_json::json!(v);
            }
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest.as_str(),
                "size": size,
                "platform": p,
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let body = serde_json::to_vec(&index).expect("index JSON");
    push_manifest(repo, tag, "application/vnd.oci.image.index.v1+json", &body).await
}

/// A layer with the host's static busybox as `/bin/busybox` and every
/// applet linked to it, `/etc/passwd` and `/etc/group` (root, nobody),
/// `/tmp`: a whole userland in one layer.
pub fn busybox_layer() -> Layer {
    let busybox =
        std::fs::read("/bin/busybox").expect("reading /bin/busybox (install Debian's busybox-static)");
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    let mut layer = Layer::default()
        .dir("bin", 0o755)
        .file("bin/busybox", 0o755, busybox)
        .dir("etc", 0o755)
        .file(
            "etc/passwd",
            0o644,
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        .file("etc/group", 0o644, "root:x:0:\nnobody:x:65534:\n")
        .dir("tmp", 0o1777)
        .dir("root", 0o700);
    for applet in String::from_utf8_lossy(&list.stdout).lines().map(str::trim) {
        if !applet.is_empty() && applet != "busybox" && !applet.contains('/') {
            layer = layer.symlink(&format!("bin/{applet}"), "busybox");
        }
    }
    layer
}
