//! Applying a release's binary patch: the new image as a VCDIFF patch from
//! the image the device runs (see [`mod@crate::vcdiff`]), Brotli-compressed
//! as a whole, on a file the device already downloaded.
//!
//! The patch is decoded as a stream (Brotli, then VCDIFF window by window),
//! so memory stays at one patch window whatever the image size. The seed is
//! only read; the target slot is written from offset 0 and verified on the
//! way: on `Ok`, it holds exactly `expected.size` bytes whose SHA-256 is
//! `expected.sha256`, flushed. On `Err` the slot's content is undefined, as
//! with the other ways of writing it; the caller falls back to them.

use std::path::{Path, PathBuf};

use containeros_update::Expected;

use crate::DeltaError;
use crate::vcdiff::{self, VcdiffError};

/// How applying the patch went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchReport {
    pub written: u64,
    pub windows: u64,
}

/// Applies the Brotli-compressed VCDIFF `patch` to `seed`, writing `target`
/// (a slot: never created or truncated). `progress` gets the bytes written.
pub async fn apply_patch(
    patch: &Path,
    seed: &Path,
    target: &Path,
    expected: &Expected,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<PatchReport, DeltaError> {
    let (tx, mut rx) = tokio::sync::watch::channel(0u64);
    let (patch_path, seed_path, target_path, expected_copy) =
        (patch.to_owned(), seed.to_owned(), target.to_owned(), *expected);
    let job = tokio::task::spawn_blocking(move || {
        apply_blocking(&patch_path, &seed_path, &target_path, &expected_copy, &mut |n| {
            let _ = tx.send(n);
        })
    });
    // Ends when the worker drops its sender.
    while rx.changed().await.is_ok() {
        let done = *rx.borrow_and_update();
        progress(done);
    }
    job.await.map_err(DeltaError::joined)?
}

fn apply_blocking(
    patch: &Path,
    seed: &Path,
    target: &Path,
    expected: &Expected,
    progress: &mut dyn FnMut(u64),
) -> Result<PatchReport, DeltaError> {
    let patch_err = |source: VcdiffError| DeltaError::Patch {
        path: patch.to_owned(),
        seed: seed.to_owned(),
        source,
    };
    let file = std::fs::File::open(patch).map_err(|source| DeltaError::ReadPatch {
        path: patch.to_owned(),
        source,
    })?;
    // As it is on the medium: the running root's page cache may hold
    // blocks the kernel changed in memory (medium.rs).
    let seed_file = crate::medium::Medium::open(seed).map_err(|source| DeltaError::ReadSeed {
        path: seed.to_owned(),
        source,
    })?;
    let target_file = open_target(target, expected.size)?;
    let stream = brotli_decompressor::Decompressor::new(std::io::BufReader::new(file), 1 << 16);
    let applied =
        vcdiff::apply(stream, &seed_file, &target_file, expected.size, progress).map_err(patch_err)?;
    if applied.written != expected.size || applied.sha256 != expected.sha256 {
        return Err(DeltaError::PatchResult {
            path: patch.to_owned(),
            written: applied.written,
            size: expected.size,
            expected: expected.sha256,
            actual: applied.sha256,
        });
    }
    target_file.sync_all().map_err(|source| DeltaError::WriteTarget {
        path: target.to_owned(),
        source,
    })?;
    Ok(PatchReport {
        written: applied.written,
        windows: applied.windows,
    })
}

fn open_target(path: &Path, size: u64) -> Result<std::fs::File, DeltaError> {
    use std::io::Seek as _;
    let open_err = |source| DeltaError::OpenTarget {
        path: PathBuf::from(path),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(open_err)?;
    let slot = file.seek(std::io::SeekFrom::End(0)).map_err(open_err)?;
    if size > slot {
        return Err(DeltaError::TargetTooSmall {
            path: path.to_owned(),
            slot,
            image: size,
        });
    }
    Ok(file)
}
