//! A pull: resolve the reference to a manifest (through a manifest list or
//! OCI index, picking the device's platform), fetch the config, download
//! and unpack each layer the store does not have yet, and only then write
//! the image record — so the store never names an image it does not hold
//! whole, and an interrupted pull is completed by the next one.

use std::sync::atomic::{AtomicU64, Ordering};

use containeros_apps::release::ImageRef;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{self, ImageConfig, Parsed};
use crate::platform::{self, Platform};
use crate::registry::Registry;
use crate::store::{ImageRecord, Store};

/// Bytes of compressed layers: done and total of what this pull downloads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// Pulls `image` for `device` into `store`; returns its record (stored
/// under `image.engine_reference()` and, when pulled by tag, under
/// `name@digest` as well).
pub async fn pull(
    store: &Store,
    registry: &Registry,
    image: &ImageRef,
    device: &Platform,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<ImageRecord> {
    let _pulling = store.pulling().await;
    let reference = image.engine_reference();
    let repo = registry.repository(image)?;
    let wanted = image
        .digest
        .clone()
        .or_else(|| image.tag.clone())
        .unwrap_or_else(|| "latest".to_owned());
    let top = registry.manifest(&repo, &wanted).await?;
    let bad = |url: &str, reason: String| Error::Manifest {
        url: url.to_owned(),
        reason,
    };
    let mut manifests = vec![(top.digest.clone(), top.bytes.clone())];
    let manifest = match oci::parse(&top.bytes, top.media_type.as_deref()).map_err(|r| bad(&top.url, r))? {
        Parsed::Manifest(m) => m,
        Parsed::Index(index) => {
            let platforms: Vec<Platform> = index
                .manifests
                .iter()
                .map(|d| {
                    d.platform.clone().unwrap_or(Platform {
                        os: "unknown".into(),
                        architecture: "unknown".into(),
                        variant: None,
                    })
                })
                .collect();
            let chosen = platform::choose(&platforms, device).ok_or_else(|| Error::NoPlatform {
                reference: reference.clone(),
                platform: device.to_string(),
                available: platforms
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
            let digest = &index.manifests[chosen].digest;
            tracing::debug!(%reference, platform = %platforms[chosen], %digest, "picked a manifest from the index");
            let fetched = registry.manifest(&repo, digest.as_str()).await?;
            let manifest = match oci::parse(&fetched.bytes, fetched.media_type.as_deref())
                .map_err(|r| bad(&fetched.url, r))?
            {
                Parsed::Manifest(m) => m,
                Parsed::Index(_) => {
                    return Err(bad(
                        &fetched.url,
                        "an index inside an index is not supported".into(),
                    ));
                }
            };
            manifests.push((fetched.digest.clone(), fetched.bytes));
            manifest
        }
    };

    let config_url = format!("{}/v2/{}/blobs/{}", repo.base, repo.name, manifest.config.digest);
    store
        .fetch_blob(
            registry,
            &repo,
            &manifest.config.digest,
            manifest.config.size,
            &|_| {},
        )
        .await?;
    let config_bytes = store.read_blob(&manifest.config.digest)?;
    let config: ImageConfig = serde_json::from_slice(&config_bytes)
        .map_err(|e| bad(&config_url, format!("bad image config: {e}")))?;
    let image_platform = Platform {
        os: if config.os.is_empty() {
            device.os.clone()
        } else {
            config.os.clone()
        },
        architecture: if config.architecture.is_empty() {
            device.architecture.clone()
        } else {
            config.architecture.clone()
        },
        variant: config.variant.clone().or_else(|| device.variant.clone()),
    };
    if image_platform.rank_on(device).is_none() {
        return Err(Error::NoPlatform {
            reference,
            platform: device.to_string(),
            available: image_platform.to_string(),
        });
    }
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(bad(
            &config_url,
            format!(
                "the config lists {} layers, the manifest {}",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            ),
        ));
    }

    let pairs: Vec<(&oci::Descriptor, &Digest)> =
        manifest.layers.iter().zip(&config.rootfs.diff_ids).collect();
    let total: u64 = pairs
        .iter()
        .filter(|(_, id)| !store.has_layer(id))
        .map(|(d, _)| d.size)
        .sum();
    let done = AtomicU64::new(0);
    progress(Progress { done: 0, total });
    for (layer, diff_id) in pairs {
        if store.has_layer(diff_id) {
            continue;
        }
        let report = |n: u64| {
            let d = done.fetch_add(n, Ordering::Relaxed) + n;
            progress(Progress {
                done: d.min(total),
                total,
            });
        };
        store
            .fetch_blob(registry, &repo, &layer.digest, layer.size, &report)
            .await?;
        store.unpack_layer(&layer.digest, diff_id).await?;
    }

    for (digest, bytes) in &manifests {
        store.write_blob(digest, bytes)?;
    }
    let record = ImageRecord {
        reference: reference.clone(),
        digest: top.digest.clone(),
        manifest: manifests
            .last()
            .map_or_else(|| top.digest.clone(), |(d, _)| d.clone()),
        config: manifest.config.digest.clone(),
        layers: config.rootfs.diff_ids.clone(),
        platform: image_platform,
        size: manifest.layers.iter().map(|l| l.size).sum(),
    };
    store.put_image(&record)?;
    if image.digest.is_none() {
        let by_digest = ImageRecord {
            reference: format!("{}@{}", image.name(), top.digest),
            ..record.clone()
        };
        store.put_image(&by_digest)?;
    }
    Ok(record)
}
