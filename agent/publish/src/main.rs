//! `containeros-publish`: lays a release out as a channel directory of
//! static files that any HTTP server, CDN or object store can serve, and
//! that a USB stick can carry:
//!
//! ```text
//! <channel>/manifest.json                      the current release (signed envelope)
//! <channel>/releases/<version>/manifest.json   the same, kept per release
//! <channel>/releases/<version>/os/rootfs.img   the root filesystem image
//! <channel>/releases/<version>/os/rootfs.cba   its chunk archive (delta updates)
//! <channel>/releases/<version>/os/from-<os version>.patch
//!                                              a binary patch from the previous release's OS
//! <channel>/releases/<version>/apps.yml        the Compose file, images pinned by digest
//! ```
//!
//! Every app image referenced by tag is pinned to the digest its registry
//! serves now (Registry HTTP API v2, anonymous bearer tokens where the
//! registry asks for them), so devices run exactly what was published. The
//! release's files are written first and `manifest.json` last, by rename:
//! a channel never names a file that is not there yet.
//!
//! The chunk archive lets a device clone the new image from the slot it
//! runs, fetching only the chunks it lacks (`containeros-delta`); a device
//! without it, or a server without range requests, takes the whole image.
//!
//! When the channel's current release has another OS image, the new one
//! also gets a binary patch from it: `xdelta3 -e -9 -S none` (VCDIFF, 8 MiB
//! windows, the whole old image as source), Brotli-compressed as a whole.
//! Devices on that OS version fetch it instead of chunks: a changed library
//! costs its changed bytes rather than every chunk it spans.
//!
//! A host-side tool: it is not installed on devices.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use containeros_apps::release::{ImageRef, Mode};
use containeros_trust::{AppsRef, Digest, Envelope, FORMAT, Manifest, OsImage, OsPatch, SigningKey};

#[derive(Debug, Parser)]
#[command(
    about = "Publish a ContainerOS release into a channel directory",
    disable_version_flag = true
)]
struct Args {
    /// The channel directory (created if missing).
    #[arg(long, value_name = "DIR")]
    channel_dir: PathBuf,
    /// The release signing secret key (`containeros release keygen`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Release sequence number: must be above every earlier release.
    #[arg(long)]
    version: u64,
    /// Release name for people (default: the version).
    #[arg(long)]
    name: Option<String>,
    /// The channel's name, as devices' rollout hash sees it.
    #[arg(long, default_value = "stable")]
    channel: String,
    /// The root filesystem image.
    #[arg(long, value_name = "FILE", requires = "os_version")]
    os_image: Option<PathBuf>,
    /// The OS version the image boots as (os-release VERSION_ID).
    #[arg(long)]
    os_version: Option<String>,
    /// Publish the OS image without its chunk archive: devices then download
    /// the whole image.
    #[arg(long)]
    no_delta: bool,
    /// Brotli quality of the chunk archive, 1-11: 11 makes the smallest
    /// downloads and is the slowest to publish (about 1 MB/s per CPU);
    /// 9 is several times faster for a few per cent more bytes.
    #[arg(long, value_name = "1-11", default_value_t = 11,
          value_parser = clap::value_parser!(u32).range(1..=11))]
    delta_level: u32,
    /// Publish the OS image without a binary patch from the channel's
    /// current release (made with the `xdelta3` program otherwise).
    #[arg(long)]
    no_patch: bool,
    /// The apps release (Compose file); images by tag are pinned by digest.
    #[arg(long, value_name = "FILE")]
    apps: Option<PathBuf>,
    /// Staged rollout: the share of devices (0-100) that take the release.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    rollout: Option<u8>,
    /// Days until devices refuse the manifest.
    #[arg(long, default_value_t = 90)]
    expires_days: u64,
    /// A registry spoken to over plain HTTP (localhost and 127.0.0.1 are).
    #[arg(long, value_name = "HOST[:PORT]")]
    insecure_registry: Vec<String>,
}

fn main() {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => fail(&format!("cannot start: {e}")),
    };
    match runtime.block_on(publish(&args)) {
        Ok(summary) => println!("{summary}"),
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("containeros-publish: {message}");
    std::process::exit(1);
}

async fn publish(args: &Args) -> Result<String, String> {
    if args.os_image.is_none() && args.apps.is_none() {
        return Err("nothing to publish: give --os-image (with --os-version) and/or --apps".into());
    }
    let key_text = std::fs::read_to_string(&args.key)
        .map_err(|e| format!("cannot read the signing key {}: {e}", args.key.display()))?;
    let key = SigningKey::parse(&key_text).map_err(|e| format!("{}: {e}", args.key.display()))?;
    let current = read_current_version(&args.channel_dir);
    if let Some(current) = current
        && args.version <= current
    {
        return Err(format!(
            "version {} is not above the channel's current release {current}; devices would ignore it",
            args.version
        ));
    }
    let dir = args.channel_dir.join("releases").join(args.version.to_string());
    if dir.exists() {
        return Err(format!(
            "{} exists already: a release is published once",
            dir.display()
        ));
    }
    std::fs::create_dir_all(dir.join("os")).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let relative = |p: &str| format!("releases/{}/{p}", args.version);

    let os = match (&args.os_image, &args.os_version) {
        (Some(image), Some(version)) => {
            let target = dir.join("os").join("rootfs.img");
            // A hard link when the image is on the same filesystem.
            if std::fs::hard_link(image, &target).is_err() {
                std::fs::copy(image, &target)
                    .map_err(|e| format!("cannot copy {} into the channel: {e}", image.display()))?;
            }
            let (size, sha256) = hash_file(&target)?;
            let archive = if args.no_delta {
                None
            } else {
                let path = dir.join("os").join("rootfs.cba");
                let options = containeros_delta::ArchiveOptions {
                    brotli_level: args.delta_level,
                    ..Default::default()
                };
                let info = containeros_delta::build_archive(&target, &path, &options)
                    .await
                    .map_err(|e| format!("cannot build the chunk archive of {}: {e}", image.display()))?;
                if info.image_sha256 != sha256 || info.image_size != size {
                    return Err(format!(
                        "{} changed while it was published; publish again",
                        image.display()
                    ));
                }
                Some(relative("os/rootfs.cba"))
            };
            let patches = if args.no_patch {
                Vec::new()
            } else {
                match previous_os(&args.channel_dir)? {
                    Some((old, old_path)) if old.sha256 != sha256 => {
                        let name = format!("os/from-{}.patch", file_safe(&old.version));
                        let made =
                            containeros_delta::make_patch(&old_path, old.size, &target, &dir.join(&name))
                                .map_err(|e| e.to_string())?;
                        vec![OsPatch {
                            from_version: old.version,
                            from_sha256: old.sha256,
                            path: relative(&name),
                            size: made.size,
                            sha256: made.sha256,
                        }]
                    }
                    _ => Vec::new(),
                }
            };
            Some(OsImage {
                version: version.clone(),
                size,
                sha256,
                path: relative("os/rootfs.img"),
                archive,
                patches,
            })
        }
        _ => None,
    };

    let apps = match &args.apps {
        Some(compose) => {
            let pinned = pin_images(compose, &args.insecure_registry).await?;
            let target = dir.join("apps.yml");
            std::fs::write(&target, &pinned)
                .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
            Some(AppsRef {
                size: pinned.len() as u64,
                sha256: Digest::of(pinned.as_bytes()),
                path: relative("apps.yml"),
            })
        }
        None => None,
    };

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let manifest = Manifest {
        format: FORMAT,
        version: args.version,
        name: args.name.clone().unwrap_or_else(|| args.version.to_string()),
        channel: args.channel.clone(),
        created: now,
        expires: now + args.expires_days * 86_400,
        os,
        apps,
        rollout: args.rollout,
    };
    let envelope = Envelope::sign(&manifest, &key)?.to_json();
    write_atomic(&dir.join("manifest.json"), envelope.as_bytes())?;
    write_atomic(&args.channel_dir.join("manifest.json"), envelope.as_bytes())?;
    Ok(format!(
        "published release {} into {}{}{}",
        args.version,
        args.channel_dir.display(),
        manifest.os.as_ref().map_or(String::new(), |o| format!(
            ", OS {} ({} bytes)",
            o.version, o.size
        )),
        manifest
            .apps
            .as_ref()
            .map_or(String::new(), |_| ", apps pinned by digest".to_owned()),
    ))
}

/// The OS image of the channel's current release, and its file, if it
/// has one. The manifest is this publisher's own, read back unverified.
fn previous_os(channel: &Path) -> Result<Option<(OsImage, PathBuf)>, String> {
    let path = channel.join("manifest.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let envelope: Envelope = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a release manifest: {e}", path.display()))?;
    let manifest: Manifest = serde_json::from_str(&envelope.signed)
        .map_err(|e| format!("{}: not a release manifest: {e}", path.display()))?;
    let Some(os) = manifest.os else {
        return Ok(None);
    };
    let file = channel.join(&os.path);
    if !file.is_file() {
        return Err(format!(
            "{} names the OS image {}, which is missing: restore it, or publish with --no-patch",
            path.display(),
            file.display()
        ));
    }
    Ok(Some((os, file)))
}

/// An OS version as a file name part (VERSION_ID is already one, normally).
fn file_safe(version: &str) -> String {
    version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The version of the channel's current manifest, if it has one.
fn read_current_version(channel: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(channel.join("manifest.json")).ok()?;
    let envelope: serde_json::Value = serde_json::from_str(&text).ok()?;
    let signed: serde_json::Value = serde_json::from_str(envelope["signed"].as_str()?).ok()?;
    signed["version"].as_u64()
}

fn hash_file(path: &Path) -> Result<(u64, Digest), String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        size += n as u64;
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(ctx.finish().as_ref());
    Ok((size, Digest(digest)))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The Compose file with every service image pinned by digest; refused
/// when it is not a valid release.
async fn pin_images(compose: &Path, insecure: &[String]) -> Result<String, String> {
    let shown = compose.display().to_string();
    let text = std::fs::read_to_string(compose).map_err(|e| format!("cannot read {shown}: {e}"))?;
    // Validated as devices will (tags allowed here: they are pinned next).
    let release =
        containeros_apps::release::parse(&text, &shown, Mode::Development).map_err(|e| e.to_string())?;
    let mut doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
    let client =
        containeros_update::http::client(None, false, Default::default()).map_err(|e| e.to_string())?;
    for (name, service) in &release.services {
        let image = &service.image;
        if image.is_pinned() {
            continue;
        }
        let digest = resolve_digest(&client, image, insecure)
            .await
            .map_err(|e| format!("service `{name}`: cannot pin {image} by digest: {e}"))?;
        let pinned = format!(
            "{}:{}@{digest}",
            image.name(),
            image.tag.as_deref().unwrap_or("latest")
        );
        doc["services"][name.as_str()]["image"] = serde_yaml_ng::Value::String(pinned);
    }
    let out = serde_yaml_ng::to_string(&doc).map_err(|e| format!("{shown}: {e}"))?;
    // What devices will parse: committed mode, every image by digest.
    containeros_apps::release::parse(&out, &shown, Mode::Committed).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The digest the registry serves for `image`'s tag now.
async fn resolve_digest(
    client: &reqwest::Client,
    image: &ImageRef,
    insecure: &[String],
) -> Result<String, String> {
    let registry = image
        .registry
        .clone()
        .unwrap_or_else(|| "registry-1.docker.io".to_owned());
    let host = registry.split(':').next().unwrap_or_default();
    let plain =
        matches!(host, "localhost" | "127.0.0.1" | "[::1]") || insecure.iter().any(|r| r == &registry);
    let scheme = if plain { "http" } else { "https" };
    let repository = if image.registry.is_none() && !image.repository.contains('/') {
        format!("library/{}", image.repository)
    } else {
        image.repository.clone()
    };
    let tag = image.tag.as_deref().unwrap_or("latest");
    let url = format!("{scheme}://{registry}/v2/{repository}/manifests/{tag}");
    const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
         application/vnd.docker.distribution.manifest.list.v2+json, \
         application/vnd.oci.image.manifest.v1+json, \
         application/vnd.docker.distribution.manifest.v2+json";
    let head = |token: Option<String>| {
        let mut request = client.head(&url).header(reqwest::header::ACCEPT, ACCEPT);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let mut response = head(None).await.map_err(|e| format!("{url}: {e}"))?;
    if response.status() == reqwest::StatusCode::UNAUTHORIZED {
        // Anonymous pull token, as the registry's challenge describes.
        let challenge = response
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let token = anonymous_token(client, &challenge).await?;
        response = head(Some(token)).await.map_err(|e| format!("{url}: {e}"))?;
    }
    let response = response.error_for_status().map_err(|e| format!("{url}: {e}"))?;
    response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .filter(|d| d.starts_with("sha256:"))
        .map(str::to_owned)
        .ok_or_else(|| format!("{url} gave no Docker-Content-Digest"))
}

async fn anonymous_token(client: &reqwest::Client, challenge: &str) -> Result<String, String> {
    let params = challenge
        .strip_prefix("Bearer ")
        .ok_or_else(|| format!("the registry asks for authentication this tool lacks ({challenge})"))?;
    let field = |name: &str| {
        params.split(',').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"').to_owned())
        })
    };
    let realm = field("realm").ok_or("the registry's challenge names no realm")?;
    let mut url = realm.clone();
    for (i, name) in ["service", "scope"].into_iter().enumerate() {
        if let Some(v) = field(name) {
            url.push(if i == 0 && !realm.contains('?') { '?' } else { '&' });
            url.push_str(&format!("{name}={}", encode(&v)));
        }
    }
    let bytes = client
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("token from {realm}: {e}"))?
        .bytes()
        .await
        .map_err(|e| format!("token from {realm}: {e}"))?;
    let body: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("token from {realm}: {e}"))?;
    body["token"]
        .as_str()
        .or_else(|| body["access_token"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| format!("{realm} gave no token"))
}

/// Percent-encoding for a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
