//! The content store, on a directory of the data partition:
//!
//! ```text
//! <root>/lock                  flock: one process per store
//! <root>/blobs/sha256/<hex>    verified blobs (manifests, configs; layer
//!                              archives only until they are unpacked)
//! <root>/ingest/<hex>          a blob being downloaded (resumed by the next pull)
//! <root>/layers/<hex>/diff     an unpacked layer, by its diff ID (the digest
//!                              of the uncompressed tar), shared by every
//!                              image that has it
//! <root>/images/<hex>.json     one record per image reference
//! ```
//!
//! Nothing is ever visible under its final name before it is complete:
//! blobs are written to `ingest/`, verified, fsynced and renamed; layers are
//! unpacked into `layers/.tmp-<hex>`, synced (`syncfs`) and renamed; records
//! are written beside their final name, fsynced and renamed. A power cut
//! leaves at worst an ingest file (resumed, then verified as a whole) and a
//! `.tmp-` directory (removed when the store is opened).
//!
//! Pulls hold the GC lock shared, GC holds it exclusively; two pulls that
//! need the same blob or layer take turns on it.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;

use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::platform::Platform;
use crate::registry::{Registry, Repository};

/// One image reference the store holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `registry/repository:tag` or `registry/repository@sha256:…`.
    pub reference: String,
    /// The digest the reference resolved to (an index's when the registry
    /// served one): what `repository@digest` pulls.
    pub digest: Digest,
    /// The image manifest for this device's platform.
    pub manifest: Digest,
    pub config: Digest,
    /// Diff IDs, base layer first.
    pub layers: Vec<Digest>,
    pub platform: Platform,
    /// Compressed bytes of the layers (what a pull downloads).
    pub size: u64,
}

/// What [`Store::gc`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    pub blobs: usize,
    pub layers: usize,
    pub bytes: u64,
}

#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    _lock: File,
    gc: tokio::sync::RwLock<()>,
    busy: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

impl Store {
    /// Opens (creating) the store at `root`, taking its lock and removing
    /// what an interrupted unpack left.
    pub fn open(root: &Path) -> Result<Self> {
        for dir in ["blobs/sha256", "ingest", "layers", "images"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(Error::io("creating", &path))?;
        }
        let lock_path = root.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io("opening", &lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
            Error::Locked {
                path: root.to_owned(),
            }
        })?;
        for dir in ["layers", "blobs/sha256", "images"] {
            let path = root.join(dir);
            for entry in std::fs::read_dir(&path).map_err(Error::io("reading", &path))? {
                let entry = entry.map_err(Error::io("reading", &path))?;
                if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    let p = entry.path();
                    tracing::info!(path = %p.display(), "removing what an interrupted write left");
                    remove_any(&p)?;
                }
            }
        }
        Ok(Self {
            root: root.to_owned(),
            _lock: lock,
            gc: tokio::sync::RwLock::new(()),
            busy: Mutex::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    fn ingest_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("ingest").join(digest.hex())
    }

    /// The directory of an unpacked layer (the overlayfs lower dir).
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex()).join("diff")
    }

    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_path(diff_id).is_dir()
    }

    /// Shared against GC for the duration of a pull.
    pub(crate) async fn pulling(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gc.read().await
    }

    /// Serialises work on one blob or layer within this process.
    pub(crate) async fn claim(&self, digest: &Digest) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(busy.entry(digest.clone()).or_default())
        };
        lock.lock_owned().await
    }

    /// A small blob (manifest, config), read whole and verified again.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path).map_err(Error::io("reading", &path))?;
        let actual = Digest::of(&bytes);
        if &actual != digest {
            // Bit rot or a foreign write: drop it so the next pull fetches it again.
            let _ = std::fs::remove_file(&path);
            return Err(Error::DigestMismatch {
                url: path.display().to_string(),
                expected: digest.to_string(),
                actual: actual.to_string(),
                bytes: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }

    /// Stores a small blob already in memory, after checking its digest.
    pub fn write_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        let actual = Digest::of(bytes);
        if &actual != digest {
            return Err(Error::DigestMismatch {
                url: format!("blob {digest}"),
                expected: digest.to_string(),
                actual: actual.to_string(),
                bytes: bytes.len() as u64,
            });
        }
        let path = self.blob_path(digest);
        if path.exists() {
            return Ok(());
        }
        write_atomic(&path, bytes)
    }

    /// Downloads blob `digest` of `size` bytes into the store unless it is
    /// there, resuming an interrupted download, verifying size and digest;
    /// `progress` gets the bytes of each chunk as it is written.
    pub async fn fetch_blob(
        &self,
        registry: &Registry,
        repo: &Repository,
        digest: &Digest,
        size: u64,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<PathBuf> {
        let _claim = self.claim(digest).await;
        let path = self.blob_path(digest);
        if path.exists() {
            progress(size);
            return Ok(path);
        }
        let ingest = self.ingest_path(digest);
        match self
            .download(registry, repo, digest, size, &ingest, progress)
            .await
        {
            Err(Error::DigestMismatch { .. }) if size > 0 => {
                // A resumed download whose earlier part was damaged (a power
                // cut can leave garbage at the end of a file): once more from zero.
                tracing::warn!(%digest, "download did not verify; fetching it again from the start");
                let _ = std::fs::remove_file(&ingest);
                self.download(registry, repo, digest, size, &ingest, progress)
                    .await?;
            }
            other => other?,
        }
        commit(&ingest, &path)?;
        Ok(path)
    }

    async fn download(
        &self,
        registry: &Registry,
        repo: &Repository,
        digest: &Digest,
        size: u64,
        ingest: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<()> {
        // What an earlier attempt wrote is hashed again (the hasher's state
        // is not persisted) and the rest asked for with a range.
        let (mut hasher, mut have) = {
            let ingest = ingest.to_owned();
            let size_limit = size;
            tokio::task::spawn_blocking(move || rehash(&ingest, size_limit))
                .await
                .map_err(|e| Error::Layer {
                    digest: digest.to_string(),
                    reason: format!("hashing the partial download failed: {e}"),
                })??
        };
        let (url, response) = registry.blob(repo, digest, have).await?;
        let resumed = response.status() == reqwest::StatusCode::PARTIAL_CONTENT;
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(ingest)
            .await
            .map_err(Error::io("opening", ingest))?;
        if have > 0 && !resumed {
            // The registry sent the whole blob: start over.
            file.set_len(0).await.map_err(Error::io("truncating", ingest))?;
            hasher = Hasher::new();
            have = 0;
        }
        if have > 0 {
            tracing::info!(%digest, have, size, "resuming an interrupted download");
        }
        progress(have);
        let mut file = tokio::io::BufWriter::with_capacity(64 << 10, file);
        {
            use tokio::io::AsyncSeekExt as _;
            file.seek(std::io::SeekFrom::Start(have))
                .await
                .map_err(Error::io("seeking", ingest))?;
        }
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| Error::Http {
                url: url.clone(),
                source,
            })?;
            have += chunk.len() as u64;
            if have > size {
                drop(file);
                let _ = std::fs::remove_file(ingest);
                return Err(Error::SizeMismatch {
                    url,
                    expected: size,
                    got: have,
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(Error::io("writing", ingest))?;
            progress(chunk.len() as u64);
        }
        file.flush().await.map_err(Error::io("writing", ingest))?;
        let file = file.into_inner();
        file.sync_all().await.map_err(Error::io("syncing", ingest))?;
        drop(file);
        if have != size {
            // Short: the connection ended early. Keep it to resume.
            return Err(Error::SizeMismatch {
                url,
                expected: size,
                got: have,
            });
        }
        let actual = hasher.finish();
        if &actual != digest {
            let _ = std::fs::remove_file(ingest);
            return Err(Error::DigestMismatch {
                url,
                expected: digest.to_string(),
                actual: actual.to_string(),
                bytes: have,
            });
        }
        Ok(())
    }

    /// Unpacks the verified layer archive `blob` into the layer directory
    /// for `diff_id` (checking the uncompressed digest), then drops the
    /// archive: only the unpacked tree is kept.
    pub async fn unpack_layer(&self, blob: &Digest, diff_id: &Digest) -> Result<()> {
        let _claim = self.claim(diff_id).await;
        if self.has_layer(diff_id) {
            return Ok(());
        }
        let archive = self.blob_path(blob);
        let final_dir = self.root.join("layers").join(diff_id.hex());
        let tmp = self.root.join("layers").join(format!(".tmp-{}", diff_id.hex()));
        let (archive2, tmp2, diff_id2, blob2) = (archive.clone(), tmp.clone(), diff_id.clone(), blob.clone());
        tokio::task::spawn_blocking(move || -> Result<()> {
            if tmp2.exists() {
                remove_any(&tmp2)?;
            }
            let diff = tmp2.join("diff");
            std::fs::create_dir_all(&diff).map_err(Error::io("creating", &diff))?;
            if let Err(reason) = crate::unpack::unpack(&archive2, &diff, &diff_id2) {
                // Nothing half-unpacked stays behind, not even under `.tmp-`.
                let _ = std::fs::remove_dir_all(&tmp2);
                return Err(Error::Layer {
                    digest: blob2.to_string(),
                    reason,
                });
            }
            let dir = File::open(&tmp2).map_err(Error::io("opening", &tmp2))?;
            rustix::fs::syncfs(&dir).map_err(|e| Error::Io {
                op: "syncing",
                path: tmp2.clone(),
                source: e.into(),
            })?;
            Ok(())
        })
        .await
        .map_err(|e| Error::Layer {
            digest: blob.to_string(),
            reason: format!("unpacking failed: {e}"),
        })??;
        std::fs::rename(&tmp, &final_dir).map_err(Error::io("renaming", &tmp))?;
        sync_dir(&self.root.join("layers"))?;
        let _ = std::fs::remove_file(&archive);
        Ok(())
    }

    fn record_path(&self, reference: &str) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", Digest::of(reference.as_bytes()).hex()))
    }

    pub fn put_image(&self, record: &ImageRecord) -> Result<()> {
        let path = self.record_path(&record.reference);
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &bytes)
    }

    /// The record of `reference` when the store has the image whole.
    pub fn image(&self, reference: &str) -> Result<Option<ImageRecord>> {
        let path = self.record_path(reference);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let record: ImageRecord = serde_json::from_slice(&bytes).map_err(|e| Error::Record {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                let complete = record.layers.iter().all(|l| self.has_layer(l))
                    && self.blob_path(&record.config).exists();
                Ok(complete.then_some(record))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading", &path)(e)),
        }
    }

    /// Every image record (unreadable ones are skipped with a warning).
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(Error::io("reading", &dir))? {
            let path = entry.map_err(Error::io("reading", &dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<ImageRecord>(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(path = %path.display(), "skipping an unreadable image record: {e}"),
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// Forgets `reference`; its blobs and layers go at the next GC unless
    /// another reference has them. `false` when it was not there.
    pub fn remove_image(&self, reference: &str) -> Result<bool> {
        let path = self.record_path(reference);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.root.join("images"))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("removing", &path)(e)),
        }
    }

    /// Removes every blob, layer and partial download no image record
    /// refers to. Waits for running pulls to finish.
    pub async fn gc(&self) -> Result<GcReport> {
        let _exclusive = self.gc.write().await;
        let images = self.images()?;
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        for image in &images {
            blobs.extend([
                image.digest.hex().to_owned(),
                image.manifest.hex().to_owned(),
                image.config.hex().to_owned(),
            ]);
            layers.extend(image.layers.iter().map(|l| l.hex().to_owned()));
        }
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || -> Result<GcReport> {
            let mut report = GcReport::default();
            for (dir, keep, is_layer) in [
                (root.join("blobs/sha256"), &blobs, false),
                (root.join("ingest"), &BTreeSet::new(), false),
                (root.join("layers"), &layers, true),
            ] {
                for entry in std::fs::read_dir(&dir).map_err(Error::io("reading", &dir))? {
                    let entry = entry.map_err(Error::io("reading", &dir))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if keep.contains(&name) {
                        continue;
                    }
                    let path = entry.path();
                    report.bytes += disk_usage(&path);
                    remove_any(&path)?;
                    if is_layer {
                        report.layers += 1;
                    } else {
                        report.blobs += 1;
                    }
                }
                sync_dir(&dir)?;
            }
            Ok(report)
        })
        .await
        .map_err(|e| Error::Layer {
            digest: String::new(),
            reason: format!("garbage collection failed: {e}"),
        })?
    }

    /// Bytes free on the store's file system for an unprivileged writer.
    pub fn free_space(&self) -> Result<u64> {
        let st = rustix::fs::statvfs(&self.root).map_err(|e| Error::Io {
            op: "statvfs",
            path: self.root.clone(),
            source: e.into(),
        })?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }
}

/// Hashes what an earlier attempt left at `path` (nothing when absent or
/// longer than the blob can be).
fn rehash(path: &Path, size: u64) -> Result<(Hasher, u64)> {
    let mut hasher = Hasher::new();
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((hasher, 0)),
        Err(e) => return Err(Error::io("opening", path)(e)),
    };
    let len = file.metadata().map_err(Error::io("reading", path))?.len();
    if len > size {
        drop(file);
        std::fs::remove_file(path).map_err(Error::io("removing", path))?;
        return Ok((Hasher::new(), 0));
    }
    let mut buf = vec![0; 64 << 10];
    let mut have = 0;
    loop {
        let n = file.read(&mut buf).map_err(Error::io("reading", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        have += n as u64;
    }
    Ok((hasher, have))
}

/// Renames a complete, synced file into place and syncs the directory.
fn commit(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(Error::io("renaming", from))?;
    if let Some(dir) = to.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// temp + fsync + rename + fsync dir.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".tmp-{name}"));
    let mut file = File::create(&tmp).map_err(Error::io("creating", &tmp))?;
    file.write_all(bytes).map_err(Error::io("writing", &tmp))?;
    file.sync_all().map_err(Error::io("syncing", &tmp))?;
    drop(file);
    commit(&tmp, path)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("syncing", dir))
}

fn remove_any(path: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).map_err(Error::io("reading", path))?;
    if meta.is_dir() {
        std::fs::remove_dir_all(path).map_err(Error::io("removing", path))
    } else {
        std::fs::remove_file(path).map_err(Error::io("removing", path))
    }
}

fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    own + std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| disk_usage(&e.path())).sum())
        .unwrap_or(0)
}
