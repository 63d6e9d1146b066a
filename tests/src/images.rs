//! Test images: small, deterministic images built here from the host's
//! static busybox and pushed to the local registry on `127.0.0.1:5000`.
//!
//! Why they are built this way:
//!
//! - No image can be pulled from the internet on the test machines, yet the
//!   agent's pulls must be real pulls: bytes over HTTP from a registry,
//!   progress, manifest digests. So the images are made here and pushed to a
//!   real Docker Distribution registry on loopback (Debian `docker-registry`,
//!   started by `.ci/run` through `scripts/services.sh`).
//! - A static busybox is a whole userland in one file with no libraries:
//!   `sh`, `sleep`, `httpd`, `wget`, `nc`, … are symlinks to it, so one small
//!   layer (about 1 MB compressed) is a complete image.
//! - Deterministic: the same spec gives the same manifest digest in every run
//!   and on every build, so repeated runs don't pile up images in the registry
//!   and tests may compare digests. The layer is a tar written with fixed
//!   mtimes, owners, modes and order; the image config (with a fixed `created`
//!   time) is written here too, and the pair is `docker load`ed, then
//!   `docker push`ed. `docker import` would be the obvious tool, but it stamps
//!   the config with the current time, so every import is a new image with a
//!   new digest; a hand-written config also carries what `docker import
//!   --change` cannot, such as a `HEALTHCHECK`.
//! - The digest is the one `docker push` reports: the registry's manifest
//!   digest, which is what `repository@sha256:…` pulls.
//! - Every (name, variant) is a distinct layer: both are written into the
//!   image (`/etc/containeros-test-image`, `/variant`), so pulling one image
//!   never finds its layer already present because of another.
//! - The default command exits on `SIGTERM` (`sh` traps it), so stopping a
//!   container is immediate: a bare `sleep` as PID 1 ignores `SIGTERM` and
//!   would only die after the stop timeout.
//!
//! Images are built once per test process per spec ([`ImageSpec::get`],
//! [`busybox_image`]); [`ImageSpec::build`] and [`build_busybox_image`]
//! build again. A returned image is guaranteed to be in the registry, not in
//! the local engine: use [`remove_local`] before a test whose pull must be a
//! real one. The tag is `127.0.0.1:5000/containeros-test/<name>:<variant>`, so
//! two different specs must not share a name and variant — within a process
//! that panics; across test binaries, give each file its own names.
//!
//! Everything goes through the `docker` CLI (on `DOCKER_HOST`, by default
//! `/run/docker.sock`) and `curl`: test fixtures are built with the ordinary
//! tools, while the agent under test speaks the engine API itself.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

/// The local registry the images are pushed to (plain HTTP on loopback,
/// which dockerd allows without `insecure-registries`).
pub const REGISTRY: &str = "127.0.0.1:5000";

/// The registry namespace of every test image.
pub const NAMESPACE: &str = "containeros-test";

/// The static busybox the images are made of (Debian `busybox-static`).
pub const BUSYBOX: &str = "/bin/busybox";

/// The default command: stays up, and exits 0 at once on `SIGTERM`/`SIGINT`.
pub const DEFAULT_CMD: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM INT; sleep 100000 & wait"];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const EPOCH: &str = "1970-01-01T00:00:00Z";
const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
                              application/vnd.oci.image.manifest.v1+json";

const HOW_TO_START: &str = "start them with `bash -c '. scripts/services.sh; ensure_dockerd; ensure_registry'` \
                            from the repository root, or run the tests through `bash .ci/run`";

/// An image in the local registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TestImage {
    /// `127.0.0.1:5000/containeros-test/<name>`.
    pub repository: String,
    /// The variant.
    pub tag: String,
    /// The registry's manifest digest, `sha256:…`.
    pub digest: String,
}

impl TestImage {
    /// `repository@sha256:…`, the reference a committed release uses.
    pub fn by_digest(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }

    /// `repository:tag`, the reference of development mode.
    pub fn by_tag(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }

    /// The repository's name inside the registry, `containeros-test/<name>`.
    pub fn registry_name(&self) -> &str {
        self.repository
            .strip_prefix(REGISTRY)
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(&self.repository)
    }
}

/// What goes into a test image beyond the busybox base. Built with
/// [`ImageSpec::new`] and the setters; [`ImageSpec::get`] builds it once per
/// test process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageSpec {
    name: String,
    variant: String,
    cmd: Vec<String>,
    entrypoint: Option<Vec<String>>,
    env: Vec<String>,
    labels: BTreeMap<String, String>,
    user: Option<String>,
    workdir: Option<String>,
    expose: Vec<String>,
    healthcheck: Option<(String, Duration)>,
    files: BTreeMap<String, (u32, Vec<u8>)>,
    filler: u64,
}

impl ImageSpec {
    /// The base image `containeros-test/<name>:<variant>`: busybox with
    /// every applet in `/bin`, `/etc/passwd` and `/etc/group` with root and
    /// nobody (65534), `/tmp`, `/root`, the marker
    /// `/etc/containeros-test-image` (`containeros-test/<name>:<variant>`),
    /// `/variant` and `/www/index.html` (both exactly `variant`, for
    /// `cat /variant` and `httpd -h /www`), and [`DEFAULT_CMD`].
    ///
    /// Panics unless `name` is a lowercase repository name component and
    /// `variant` a valid tag.
    pub fn new(name: &str, variant: &str) -> Self {
        assert!(
            !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && name.as_bytes()[0].is_ascii_alphanumeric(),
            "test image name {name:?}: use lowercase letters, digits, '.', '_', '-', starting alphanumeric"
        );
        assert!(
            !variant.is_empty()
                && variant.len() <= 128
                && variant
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && !variant.starts_with(['.', '-']),
            "test image variant {variant:?} is not a valid tag: use letters, digits, '.', '_', '-'"
        );
        let mut labels = BTreeMap::new();
        labels.insert(
            "org.containeros.test.image".to_owned(),
            format!("{name}:{variant}"),
        );
        Self {
            name: name.to_owned(),
            variant: variant.to_owned(),
            cmd: DEFAULT_CMD.iter().map(|s| (*s).to_owned()).collect(),
            entrypoint: None,
            env: vec![DEFAULT_PATH.to_owned()],
            labels,
            user: None,
            workdir: None,
            expose: Vec::new(),
            healthcheck: None,
            files: BTreeMap::new(),
            filler: 0,
        }
    }

    /// The image's `CMD` (exec form).
    pub fn cmd(mut self, argv: &[&str]) -> Self {
        self.cmd = argv.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// `CMD ["sh", "-c", script]`.
    pub fn shell(self, script: &str) -> Self {
        self.cmd(&["sh", "-c", script])
    }

    /// The image's `ENTRYPOINT` (exec form).
    pub fn entrypoint(mut self, argv: &[&str]) -> Self {
        self.entrypoint = Some(argv.iter().map(|s| (*s).to_owned()).collect());
        self
    }

    /// Adds `ENV key=value` (after the default `PATH`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push(format!("{key}={value}"));
        self
    }

    /// Adds a `LABEL`.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// The image's `USER` (`nobody`, `65534:65534`, …).
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_owned());
        self
    }

    /// The image's `WORKDIR`.
    pub fn workdir(mut self, dir: &str) -> Self {
        self.workdir = Some(dir.to_owned());
        self
    }

    /// Adds `EXPOSE port` (`"80/tcp"`, `"53/udp"`).
    pub fn expose(mut self, port: &str) -> Self {
        self.expose.push(port.to_owned());
        self
    }

    /// `HEALTHCHECK --interval=<interval> --timeout=<interval> --retries=3
    /// CMD-SHELL <script>`.
    pub fn healthcheck(mut self, script: &str, interval: Duration) -> Self {
        self.healthcheck = Some((script.to_owned(), interval));
        self
    }

    /// Adds a regular file at the absolute `path` with `mode`; parent
    /// directories are created 0755. Replaces a file of the base image.
    pub fn file(mut self, path: &str, mode: u32, contents: impl Into<Vec<u8>>) -> Self {
        assert!(
            path.starts_with('/') && !path.ends_with('/') && !path.split('/').any(|c| c == ".."),
            "test image file {path:?}: give an absolute path to a file, without '..'"
        );
        self.files.insert(path.to_owned(), (mode, contents.into()));
        self
    }

    /// Adds `/filler`: `bytes` of incompressible pseudo-random data (the
    /// same for the same name and variant), to make pulls long enough to
    /// report progress or large enough to fill a small disk.
    pub fn filler(mut self, bytes: u64) -> Self {
        self.filler = bytes;
        self
    }

    /// `127.0.0.1:5000/containeros-test/<name>`.
    pub fn repository(&self) -> String {
        format!("{REGISTRY}/{NAMESPACE}/{}", self.name)
    }

    /// `127.0.0.1:5000/containeros-test/<name>:<variant>`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repository(), self.variant)
    }

    /// The image, built and pushed once per test process for this spec.
    /// Panics if another spec was built under the same name and variant.
    pub fn get(&self) -> TestImage {
        type Slot = Arc<OnceLock<TestImage>>;
        static CACHE: OnceLock<Mutex<HashMap<String, (ImageSpec, Slot)>>> = OnceLock::new();
        let slot = {
            let mut cache = CACHE
                .get_or_init(Mutex::default)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let (spec, slot) = cache
                .entry(self.reference())
                .or_insert_with(|| (self.clone(), Slot::default()));
            assert!(
                spec == self,
                "two different test images named {}: give each spec its own name or variant",
                self.reference()
            );
            Arc::clone(slot)
        };
        // Concurrent callers of the same spec wait for one build; other
        // specs build in parallel.
        slot.get_or_init(|| self.build()).clone()
    }

    /// Builds the image, loads it into the local engine and pushes it to
    /// the registry, every time (no cache). Panics with what failed.
    pub fn build(&self) -> TestImage {
        require_image_services();
        build(self).unwrap_or_else(|e| panic!("building test image {} failed: {e:#}", self.reference()))
    }
}

/// The base image `containeros-test/<name>:<variant>` (see
/// [`ImageSpec::new`]), built and pushed once per test process.
pub fn busybox_image(name: &str, variant: &str) -> TestImage {
    ImageSpec::new(name, variant).get()
}

/// Like [`busybox_image`], but builds and pushes again, bypassing the cache.
pub fn build_busybox_image(name: &str, variant: &str) -> TestImage {
    ImageSpec::new(name, variant).build()
}

/// Whether the registry answers on `127.0.0.1:5000`.
pub fn registry_available() -> bool {
    curl(&[&format!("http://{REGISTRY}/v2/")]).is_ok()
}

/// Whether a Docker engine answers the `docker` CLI (on `DOCKER_HOST`, by
/// default `/run/docker.sock`).
pub fn docker_available() -> bool {
    docker_server_arch().is_ok()
}

/// Panics, saying how to start them, unless both the engine and the
/// registry answer.
pub fn require_image_services() {
    if let Err(e) = docker_server_arch() {
        panic!(
            "test images need dockerd on /run/docker.sock (or DOCKER_HOST), which did not answer ({e:#}): {HOW_TO_START}"
        );
    }
    if let Err(e) = curl(&[&format!("http://{REGISTRY}/v2/")]) {
        panic!("test images need the registry on {REGISTRY}, which did not answer ({e:#}): {HOW_TO_START}");
    }
}

/// Removes the image from the local engine (tag and digest references), so
/// that a later pull of it is a real pull from the registry. Nothing to do
/// when it is not there; panics if it cannot be removed (a container still
/// uses it).
pub fn remove_local(image: &TestImage) {
    remove(image, None)
        .unwrap_or_else(|e| panic!("removing {} from the local engine: {e:#}", image.by_tag()));
}

/// [`remove_local`] on the engine listening on `socket` (a private dockerd).
pub fn remove_from(image: &TestImage, socket: &Path) {
    let host = format!("unix://{}", socket.display());
    remove(image, Some(&host))
        .unwrap_or_else(|e| panic!("removing {} from the engine on {host}: {e:#}", image.by_tag()));
}

/// The compressed size of the image's layers as the registry's manifest
/// lists them: the bytes a pull of it downloads (the config blob aside).
pub fn layer_bytes(image: &TestImage) -> u64 {
    let manifest = manifest(image).unwrap_or_else(|e| panic!("{e:#}"));
    let layers = manifest["layers"].as_array().unwrap_or_else(|| {
        panic!(
            "manifest of {} has no layers array: {manifest}",
            image.by_digest()
        )
    });
    layers
        .iter()
        .map(|l| {
            l["size"].as_u64().unwrap_or_else(|| {
                panic!(
                    "layer without a size in the manifest of {}: {l}",
                    image.by_digest()
                )
            })
        })
        .sum()
}

/// The image's manifest as the registry serves it for its digest.
pub fn manifest(image: &TestImage) -> Result<serde_json::Value> {
    let url = format!(
        "http://{REGISTRY}/v2/{}/manifests/{}",
        image.registry_name(),
        image.digest
    );
    let body = curl(&["-H", &format!("Accept: {MANIFEST_TYPES}"), &url])
        .with_context(|| format!("fetching the manifest of {}", image.by_digest()))?;
    serde_json::from_str(&body)
        .with_context(|| format!("manifest of {} is not JSON: {body}", image.by_digest()))
}

/// The manifest digest the registry currently serves for the image's tag
/// (its `Docker-Content-Digest`), or `None` when the tag is unknown.
pub fn registry_tag_digest(image: &TestImage) -> Option<String> {
    let url = format!(
        "http://{REGISTRY}/v2/{}/manifests/{}",
        image.registry_name(),
        image.tag
    );
    let headers = curl(&["--head", "-H", &format!("Accept: {MANIFEST_TYPES}"), &url]).ok()?;
    headers.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case("docker-content-digest")
            .then(|| value.trim().to_owned())
    })
}

fn build(spec: &ImageSpec) -> Result<TestImage> {
    let arch = docker_server_arch()?;
    let dir = tempfile::Builder::new()
        .prefix("containeros-image-")
        .tempdir()
        .context("creating a temporary directory")?;
    let root = dir.path().join("root");
    let load = dir.path().join("load");
    std::fs::create_dir(&load).context("creating the load directory")?;
    write_rootfs(spec, &root)?;

    let layer = load.join("layer.tar");
    run(Command::new("tar")
        .arg("--create")
        .arg("--file")
        .arg(&layer)
        .arg("--directory")
        .arg(&root)
        .args([
            "--format=gnu",
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            ".",
        ]))
    .context("writing the layer tar (GNU tar is needed)")?;
    let diff_id = sha256_file(&layer)?;

    let config = image_config(spec, &arch, &diff_id);
    std::fs::write(load.join("config.json"), config.to_string()).context("writing config.json")?;
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [spec.reference()],
        "Layers": ["layer.tar"],
    }]);
    std::fs::write(load.join("manifest.json"), manifest.to_string()).context("writing manifest.json")?;
    let archive = dir.path().join("image.tar");
    run(Command::new("tar")
        .arg("--create")
        .arg("--file")
        .arg(&archive)
        .arg("--directory")
        .arg(&load)
        .args(["manifest.json", "config.json", "layer.tar"]))
    .context("writing the image archive")?;

    run(docker(None).arg("load").arg("--input").arg(&archive)).context("docker load")?;
    let reference = spec.reference();
    let pushed = run(docker(None).args(["push", &reference]))
        .with_context(|| format!("docker push {reference} (is the registry on {REGISTRY} up?)"))?;
    let digest = push_digest(&pushed, &spec.variant)
        .with_context(|| format!("no manifest digest in the output of docker push {reference}:\n{pushed}"))?;
    Ok(TestImage {
        repository: spec.repository(),
        tag: spec.variant.clone(),
        digest,
    })
}

/// The root filesystem of `spec` under `root`, with explicit modes so that
/// the umask changes nothing.
fn write_rootfs(spec: &ImageSpec, root: &Path) -> Result<()> {
    let busybox = std::fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX}: install Debian's busybox-static (.ci/run does)"))?;
    ensure!(
        is_static_elf(&busybox)?,
        "{BUSYBOX} is dynamically linked and would not run in an image without libraries: \
         install Debian's busybox-static instead of busybox"
    );
    let applets = run(Command::new(BUSYBOX).arg("--list")).context("busybox --list")?;

    for (dir, mode) in [
        ("", 0o755),
        ("bin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("www", 0o755),
    ] {
        mkdir(&root.join(dir), mode)?;
    }
    write_file(&root.join("bin/busybox"), 0o755, &busybox)?;
    for applet in applets.lines().map(str::trim) {
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = root.join("bin").join(applet);
        symlink("busybox", &link).with_context(|| format!("symlinking {}", link.display()))?;
    }
    let marker = format!("{NAMESPACE}/{}:{}\n", spec.name, spec.variant);
    let files: [(&str, &[u8]); 5] = [
        (
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", b"root:x:0:\nnobody:x:65534:\n"),
        ("etc/containeros-test-image", marker.as_bytes()),
        ("variant", spec.variant.as_bytes()),
        ("www/index.html", spec.variant.as_bytes()),
    ];
    for (path, contents) in files {
        write_file(&root.join(path), 0o644, contents)?;
    }
    if spec.filler > 0 {
        write_file(&root.join("filler"), 0o644, &filler(spec, spec.filler))?;
    }
    for (path, (mode, contents)) in &spec.files {
        let path = root.join(path.trim_start_matches('/'));
        let mut missing = Vec::new();
        let mut parent = path.parent();
        while let Some(p) = parent.filter(|p| !p.exists()) {
            missing.push(p.to_owned());
            parent = p.parent();
        }
        for p in missing.iter().rev() {
            mkdir(p, 0o755)?;
        }
        if path.is_symlink() {
            std::fs::remove_file(&path).with_context(|| format!("replacing {}", path.display()))?;
        }
        write_file(&path, *mode, contents)?;
    }
    Ok(())
}

fn mkdir(path: &Path, mode: u32) -> Result<()> {
    if !path.is_dir() {
        std::fs::create_dir(path).with_context(|| format!("creating {}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

fn write_file(path: &Path, mode: u32, contents: &[u8]) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// The image config (the `docker save` format `docker load` reads), with
/// a fixed creation time so that the same spec is the same image.
fn image_config(spec: &ImageSpec, arch: &str, diff_id: &str) -> serde_json::Value {
    let mut config = serde_json::json!({
        "Env": spec.env,
        "Cmd": spec.cmd,
        "Labels": spec.labels,
    });
    if let Some(entrypoint) = &spec.entrypoint {
        config["Entrypoint"] = serde_json::json!(entrypoint);
    }
    if let Some(user) = &spec.user {
        config["User"] = serde_json::json!(user);
    }
    if let Some(workdir) = &spec.workdir {
        config["WorkingDir"] = serde_json::json!(workdir);
    }
    if !spec.expose.is_empty() {
        let ports: serde_json::Map<String, serde_json::Value> = spec
            .expose
            .iter()
            .map(|p| (p.clone(), serde_json::json!({})))
            .collect();
        config["ExposedPorts"] = serde_json::Value::Object(ports);
    }
    if let Some((script, interval)) = &spec.healthcheck {
        let nanos = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
        config["Healthcheck"] = serde_json::json!({
            "Test": ["CMD-SHELL", script],
            "Interval": nanos,
            "Timeout": nanos,
            "Retries": 3,
        });
    }
    serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "created": EPOCH,
        "author": "containeros-tests",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
        "history": [{
            "created": EPOCH,
            "created_by": format!("containeros-tests: busybox image {}:{}", spec.name, spec.variant),
        }],
    })
}

/// Incompressible bytes, the same for the same name and variant
/// (xorshift64* seeded with their FNV-1a hash).
fn filler(spec: &ImageSpec, len: u64) -> Vec<u8> {
    let mut state = format!("{}:{}", spec.name, spec.variant)
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
        | 1;
    let len = usize::try_from(len).expect("filler size fits in memory");
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

fn remove(image: &TestImage, host: Option<&str>) -> Result<()> {
    let inspect = docker(host)
        .args(["image", "inspect", "--format", "{{.Id}}"])
        .arg(image.by_digest())
        .arg(image.by_tag())
        .output()
        .context("running docker image inspect (is the docker CLI installed?)")?;
    // One line per reference found; none when the image is not there.
    let ids: Vec<String> = String::from_utf8_lossy(&inspect.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let out = docker(host)
        .args(["image", "rm", &image.by_tag(), &image.by_digest()])
        .output()
        .context("running docker image rm")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("No such image"))
        .collect();
    ensure!(
        errors.is_empty(),
        "docker image rm: {} (stop and remove the containers using it first)",
        errors.join("; ")
    );
    for id in ids {
        let still = docker(host)
            .args([
                "image",
                "inspect",
                "--format",
                "{{.RepoTags}} {{.RepoDigests}}",
                &id,
            ])
            .output()
            .context("running docker image inspect")?;
        ensure!(
            !still.status.success(),
            "image {id} is still in the engine under other references: {}",
            String::from_utf8_lossy(&still.stdout).trim()
        );
    }
    Ok(())
}

/// The digest in `docker push` output: `<tag>: digest: sha256:… size: N`.
fn push_digest(output: &str, tag: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let rest = line.trim().strip_prefix(tag)?.strip_prefix(": digest: ")?;
        let digest = rest.split_whitespace().next()?;
        let hex = digest.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| digest.to_owned())
    })
}

/// The engine's architecture in OCI terms (`amd64`, `arm64`, …); also the
/// check that the engine answers.
fn docker_server_arch() -> Result<String> {
    let arch = run(docker(None).args(["version", "--format", "{{.Server.Arch}}"]))?;
    let arch = arch.trim();
    ensure!(!arch.is_empty(), "docker version reported no server architecture");
    Ok(arch.to_owned())
}

/// The `docker` CLI, on `host` when given (else `DOCKER_HOST` or the default socket).
fn docker(host: Option<&str>) -> Command {
    let mut c = Command::new("docker");
    if let Some(host) = host {
        c.env("DOCKER_HOST", host);
    }
    c
}

fn curl(args: &[&str]) -> Result<String> {
    run(Command::new("curl")
        .args(["--fail", "--silent", "--show-error", "--max-time", "10"])
        .args(args))
}

fn sha256_file(path: &Path) -> Result<String> {
    let out = run(Command::new("sha256sum").arg(path))?;
    let hex = out.split_whitespace().next().unwrap_or_default();
    ensure!(hex.len() == 64, "unexpected sha256sum output: {out}");
    Ok(hex.to_owned())
}

/// Runs `command`, returning its stdout; fails with its stderr.
fn run(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {:?}", command.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed ({}): {}",
            command.get_program(),
            command.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the ELF file has no program interpreter (`PT_INTERP`), i.e.
/// runs without a dynamic loader.
fn is_static_elf(bytes: &[u8]) -> Result<bool> {
    ensure!(
        bytes.starts_with(b"\x7fELF") && bytes.len() > 64,
        "{BUSYBOX} is not an ELF file"
    );
    let little = bytes[5] == 1;
    let read = |at: usize, len: usize| -> Result<u64> {
        let b = bytes.get(at..at + len).context("truncated ELF header")?;
        let mut v = 0u64;
        for i in 0..len {
            let byte = if little { b[len - 1 - i] } else { b[i] };
            v = (v << 8) | u64::from(byte);
        }
        Ok(v)
    };
    let (phoff, phentsize, phnum) = match bytes[4] {
        1 => (read(0x1c, 4)?, read(0x2a, 2)?, read(0x2c, 2)?),
        2 => (read(0x20, 8)?, read(0x36, 2)?, read(0x38, 2)?),
        class => bail!("unknown ELF class {class}"),
    };
    for i in 0..phnum {
        let at = usize::try_from(phoff + i * phentsize).context("ELF offset")?;
        if read(at, 4)? == 3 {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_digest_is_read_from_the_tag_line() {
        let hex = "49e41b1f9ef3fa29883a25dc96dd23fdcbd84544125ea22811bd8c9cef4ffff1";
        let out = format!(
            "The push refers to repository [127.0.0.1:5000/containeros-test/web]\n\
             3a5e173bd899: Layer already exists\nv1: digest: sha256:{hex} size: 527\n"
        );
        assert_eq!(push_digest(&out, "v1"), Some(format!("sha256:{hex}")));
        assert_eq!(push_digest(&out, "v2"), None);
        assert_eq!(push_digest("v1: digest: sha256:abc size: 1", "v1"), None);
    }

    #[test]
    fn filler_is_deterministic_and_per_variant() {
        let a = ImageSpec::new("web", "a");
        assert_eq!(filler(&a, 1000), filler(&a, 1000));
        assert_eq!(filler(&a, 1001).len(), 1001);
        assert_ne!(filler(&a, 64), filler(&ImageSpec::new("web", "b"), 64));
    }
}
