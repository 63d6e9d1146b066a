//! The publisher side: a root image split into content-defined chunks,
//! each compressed on its own, written as a bitar archive (`bita`'s `.cba`
//! format, so `bita info`/`bita clone` read it too).
//!
//! Why content-defined: a new image is mostly the old one with some files
//! changed, added or removed, and every change moves what follows it. Chunk
//! boundaries chosen by a rolling hash of the content move with it, so the
//! device finds all unchanged chunks in its running slot at whatever offset
//! they now sit, and downloads only the chunks that hold changed bytes.
//!
//! Why Brotli per chunk: the device decodes it with bitar's pure-Rust
//! decoder, which bitar builds anyway — no C library to cross-compile for
//! ARMv5/MIPS (zstd would add zstd-sys), nothing added to the agent — and
//! its built-in dictionary suits inputs as small as a chunk. Chunks are
//! compressed independently (that is what lets a device fetch any subset),
//! which costs ratio: the whole archive is about 1.3x the image compressed
//! whole by zstd -19, but a delta only holds changed chunks. Level 11 is
//! slow (about 1 MB/s per core), paid once by the publisher on every core;
//! it made deltas 6 % smaller than level 5.
//!
//! The archive is written to a temporary file beside `archive` and renamed
//! into place once complete, so a reader never sees half an archive.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bitar::chunk_dictionary as dict;
use bitar::{Compression, HashSum, chunker};
use blake2::Digest as _;
use containeros_trust::Digest;
use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

use crate::{DeltaError, SHA256_KEY};

/// How chunk boundaries are found. Sizes in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunking {
    pub algorithm: RollingHash,
    /// No chunk is smaller (except the last).
    pub min: u32,
    /// Average distance between boundaries beyond `min`; a power of two.
    pub avg: u32,
    /// No chunk is larger. It also bounds the device's memory: a seed is
    /// scanned with a buffer of about `max` + 1 MiB.
    pub max: u32,
    /// Bytes the rolling hash looks at.
    pub window: u32,
}

/// The rolling hash that picks boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollingHash {
    /// rsync/bup's rolling checksum (bitar's default).
    RollSum,
    /// A cyclic polynomial (buzhash), as casync uses.
    BuzHash,
}

impl Default for Chunking {
    /// Tuned with `bench/delta` on a Debian 12 root image and its security
    /// update (`DELTA_OPTS` reruns it with other values): an average of 32 KiB
    /// beat 16 KiB (the header, 12 % of a delta at 16 KiB, halves) and
    /// 64 KiB (each changed region costs more); min 8 KiB equalled 16 KiB
    /// with smaller chunks around small edits. 256 KiB caps the device's
    /// scan buffer; buzhash and other windows were within 1 %.
    fn default() -> Self {
        Self {
            algorithm: RollingHash::RollSum,
            min: 8 << 10,
            avg: 32 << 10,
            max: 256 << 10,
            window: 64,
        }
    }
}

impl Chunking {
    fn config(&self) -> Result<chunker::Config, DeltaError> {
        let bad = |reason: String| Err(DeltaError::Options { reason });
        if !self.avg.is_power_of_two() || self.avg < 64 {
            return bad(format!(
                "average chunk size {} is not a power of two >= 64",
                self.avg
            ));
        }
        if self.window == 0 || self.window > self.min.max(1) || self.window > 4096 {
            return bad(format!(
                "rolling hash window {} must be 1..=4096 bytes and at most the minimum chunk size {}",
                self.window, self.min
            ));
        }
        if self.min == 0 || self.min > self.max {
            return bad(format!(
                "minimum chunk size {} must be more than 0 and at most the maximum {}",
                self.min, self.max
            ));
        }
        if self.max > 16 << 20 {
            return bad(format!("maximum chunk size {} is above 16 MiB", self.max));
        }
        let filter = chunker::FilterConfig {
            filter_bits: chunker::FilterBits::from_size(self.avg),
            min_chunk_size: self.min as usize,
            max_chunk_size: self.max as usize,
            window_size: self.window as usize,
        };
        Ok(match self.algorithm {
            RollingHash::RollSum => chunker::Config::RollSum(filter),
            RollingHash::BuzHash => chunker::Config::BuzHash(filter),
        })
    }
}

/// How an archive is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveOptions {
    pub chunking: Chunking,
    /// Brotli quality, 1–11.
    pub brotli_level: u32,
    /// Bytes of each chunk's BLAKE2b hash kept in the archive (16–64). Every
    /// distinct chunk costs this much in the archive header, which every
    /// device downloads whole (bitar's 64 made the header a fifth of a
    /// typical delta). 20 bytes (160 bits) leave accidental collisions out
    /// of reach; a deliberate one could only fail an update, as the image is
    /// checked against the signed manifest's SHA-256 before it is used.
    pub hash_length: usize,
    /// Chunks hashed and compressed at once (threads); 0: one per CPU.
    pub threads: usize,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        Self {
            chunking: Chunking::default(),
            brotli_level: 11,
            hash_length: 20,
            threads: 0,
        }
    }
}

/// What [`build_archive`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveInfo {
    /// Size of the archive file, header included.
    pub archive_size: u64,
    /// Size of the archive's header (downloaded by every device).
    pub header_size: u64,
    /// Chunks of the image, in order (repeats counted).
    pub chunks: usize,
    /// Distinct chunks stored in the archive.
    pub unique_chunks: usize,
    pub image_size: u64,
    pub image_sha256: Digest,
}

/// Splits `image` into content-defined chunks, compresses each distinct
/// chunk and writes the bitar archive `archive` (replaced if it exists).
pub async fn build_archive(
    image: &Path,
    archive: &Path,
    options: &ArchiveOptions,
) -> Result<ArchiveInfo, DeltaError> {
    let config = options.chunking.config()?;
    let compression = Compression::brotli(options.brotli_level).map_err(|e| DeltaError::Options {
        reason: e.to_string(),
    })?;
    if !(16..=HashSum::MAX_LEN).contains(&options.hash_length) {
        return Err(DeltaError::Options {
            reason: format!("hash length {} is not within 16..=64 bytes", options.hash_length),
        });
    }
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let read_err = |source| DeltaError::ReadImage {
        path: image.to_owned(),
        source,
    };
    let write_err = |source| DeltaError::WriteArchive {
        path: archive.to_owned(),
        source,
    };
    let dir = match archive.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };

    let input = tokio::fs::File::open(image).await.map_err(read_err)?;
    // Chunk data goes to an anonymous file first: the header, which comes
    // first in the archive, is known only at the end.
    let data_file = tempfile::tempfile_in(&dir).map_err(write_err)?;
    let mut data = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(data_file));

    // Hash and compress on blocking threads, in order.
    let mut chunks = config
        .new_chunker(input)
        .map(|result| async move {
            let (_offset, chunk) = result?;
            tokio::task::spawn_blocking(move || {
                let verified = chunk.verify();
                let compressed = verified.chunk().clone().compress(Some(compression));
                (verified, compressed)
            })
            .await
            .map_err(std::io::Error::other)
        })
        .buffered(threads);

    let mut sha256 = ring::digest::Context::new(&ring::digest::SHA256);
    let mut blake2 = blake2::Blake2b512::new();
    let mut image_size = 0u64;
    let mut unique: HashMap<HashSum, u32> = HashMap::new();
    let mut rebuild_order = Vec::new();
    let mut descriptors = Vec::new();
    let mut data_size = 0u64;
    while let Some(result) = chunks.next().await {
        let (verified, compressed) = result.map_err(read_err)?;
        sha256.update(verified.data());
        blake2.update(verified.data());
        image_size += verified.len() as u64;
        let mut hash = verified.hash().clone();
        hash.truncate(options.hash_length);
        if let Some(&index) = unique.get(&hash) {
            rebuild_order.push(index);
            continue;
        }
        let compressed = compressed.map_err(|e| DeltaError::Compress {
            path: image.to_owned(),
            reason: e.to_string(),
        })?;
        // As bitar does: a chunk that does not shrink is stored as is, and a
        // reader takes "archive size == source size" to mean exactly that.
        let stored = if compressed.len() < verified.len() {
            compressed.data()
        } else {
            verified.data()
        };
        data.write_all(stored).await.map_err(write_err)?;
        let index = u32::try_from(descriptors.len()).map_err(|_| DeltaError::Options {
            reason: "more than 2^32 chunks; choose larger chunks".into(),
        })?;
        descriptors.push(dict::ChunkDescriptor {
            checksum: hash.to_vec(),
            archive_size: stored.len() as u32,
            archive_offset: data_size,
            source_size: verified.len() as u32,
        });
        data_size += stored.len() as u64;
        unique.insert(hash, index);
        rebuild_order.push(index);
    }
    drop(chunks);
    if image_size == 0 {
        return Err(DeltaError::EmptyImage {
            path: image.to_owned(),
        });
    }
    data.flush().await.map_err(write_err)?;
    let mut data = data.into_inner();

    let mut digest = [0u8; 32];
    digest.copy_from_slice(sha256.finish().as_ref());
    let image_sha256 = Digest(digest);
    let params = chunker_parameters(&config, options.hash_length);
    let dictionary = dict::ChunkDictionary {
        rebuild_order: rebuild_order.clone(),
        application_version: concat!("containeros-delta ", env!("CARGO_PKG_VERSION")).into(),
        chunk_descriptors: descriptors,
        source_checksum: blake2.finalize().to_vec(),
        source_total_size: image_size,
        chunker_params: Some(params),
        chunk_compression: Some(Some(compression).into()),
        metadata: [(SHA256_KEY.to_owned(), image_sha256.to_string().into_bytes())].into(),
    };
    let header = bitar::header::build(&dictionary, None).map_err(write_err)?;

    let out = tempfile::NamedTempFile::new_in(&dir).map_err(write_err)?;
    let (out_std, out_path) = out.into_parts();
    let mut out = tokio::fs::File::from_std(out_std);
    out.write_all(&header).await.map_err(write_err)?;
    tokio::io::AsyncSeekExt::rewind(&mut data)
        .await
        .map_err(write_err)?;
    tokio::io::copy(&mut data, &mut out).await.map_err(write_err)?;
    // A temporary file is private (0600); an archive is published.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        out.set_permissions(std::fs::Permissions::from_mode(0o644))
            .await
            .map_err(write_err)?;
    }
    out.sync_all().await.map_err(write_err)?;
    drop(out);
    out_path.persist(archive).map_err(|e| write_err(e.error))?;

    Ok(ArchiveInfo {
        archive_size: header.len() as u64 + data_size,
        header_size: header.len() as u64,
        chunks: rebuild_order.len(),
        unique_chunks: unique.len(),
        image_size,
        image_sha256,
    })
}

fn chunker_parameters(config: &chunker::Config, hash_length: usize) -> dict::ChunkerParameters {
    use dict::chunker_parameters::ChunkingAlgorithm;
    let (filter, algorithm) = match config {
        chunker::Config::BuzHash(f) => (f, ChunkingAlgorithm::Buzhash),
        chunker::Config::RollSum(f) => (f, ChunkingAlgorithm::Rollsum),
        chunker::Config::FixedSize(size) => {
            return dict::ChunkerParameters {
                chunk_filter_bits: 0,
                min_chunk_size: 0,
                max_chunk_size: *size as u32,
                rolling_hash_window_size: 0,
                chunk_hash_length: hash_length as u32,
                chunking_algorithm: ChunkingAlgorithm::FixedSize as i32,
            };
        }
    };
    dict::ChunkerParameters {
        chunk_filter_bits: filter.filter_bits.bits(),
        min_chunk_size: filter.min_chunk_size as u32,
        max_chunk_size: filter.max_chunk_size as u32,
        rolling_hash_window_size: filter.window_size as u32,
        chunk_hash_length: hash_length as u32,
        chunking_algorithm: algorithm as i32,
    }
}

/// A binary patch as written by [`make_patch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchInfo {
    /// Size and SHA-256 of the patch file.
    pub size: u64,
    pub sha256: Digest,
    /// Size of the VCDIFF before Brotli.
    pub vcdiff_size: u64,
}

/// Writes `patch` = Brotli(VCDIFF from `old` to `new`), the binary patch a
/// device applies with [`crate::apply_patch`]. Runs the `xdelta3` program
/// (Debian package xdelta3) with `-S none` (no secondary compression: the
/// device decodes plain VCDIFF; the whole patch is Brotli-compressed
/// instead, which also compresses better), `-B <old size>` (the whole old
/// image is the source window, so a file that moved is still found) and
/// `-W 8 MiB` (target windows: the device's memory).
///
/// xdelta3's levels are not monotonic: `-9` makes the smallest patch of
/// real root images, but on images with long runs of repetitive text it
/// loses the source and makes patches ten times larger than `-3` does. Both
/// are made and the smaller kept (each takes seconds; the chunk archive
/// takes minutes).
pub fn make_patch(old: &Path, old_size: u64, new: &Path, patch: &Path) -> Result<PatchInfo, DeltaError> {
    let mut best: Option<(Vec<u8>, u64)> = None;
    for level in ["-9", "-3"] {
        let vcdiff = run_xdelta3(old, old_size, new, patch, level)?;
        let compressed = brotli_whole(&vcdiff).map_err(|e| DeltaError::MakePatch {
            old: old.to_owned(),
            new: new.to_owned(),
            reason: format!("cannot compress the patch: {e}"),
        })?;
        if best.as_ref().is_none_or(|(b, _)| compressed.len() < b.len()) {
            best = Some((compressed, vcdiff.len() as u64));
        }
    }
    let (compressed, vcdiff_size) = best.unwrap_or_default();
    std::fs::write(patch, &compressed).map_err(|source| DeltaError::WriteArchive {
        path: patch.to_owned(),
        source,
    })?;
    Ok(PatchInfo {
        size: compressed.len() as u64,
        sha256: Digest::of(&compressed),
        vcdiff_size,
    })
}

/// The VCDIFF from `old` to `new` at xdelta3 `level`, made beside `patch`.
fn run_xdelta3(
    old: &Path,
    old_size: u64,
    new: &Path,
    patch: &Path,
    level: &str,
) -> Result<Vec<u8>, DeltaError> {
    let fail = |reason: String| DeltaError::MakePatch {
        old: old.to_owned(),
        new: new.to_owned(),
        reason,
    };
    let raw = patch.with_extension("vcdiff.tmp");
    let output = std::process::Command::new("xdelta3")
        .args(["-e", level, "-f", "-S", "none", "-W", "8388608", "-B"])
        .arg(old_size.max(1 << 20).to_string())
        .arg("-s")
        .arg(old)
        .arg(new)
        .arg(&raw)
        .output()
        .map_err(|e| {
            fail(if e.kind() == std::io::ErrorKind::NotFound {
                "the `xdelta3` program is missing (Debian package xdelta3); install it, or publish \
                 with --no-patch"
                    .to_owned()
            } else {
                format!("cannot run xdelta3: {e}")
            })
        })?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&raw);
        return Err(fail(format!(
            "xdelta3 failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let vcdiff = std::fs::read(&raw).map_err(|e| fail(format!("cannot read {}: {e}", raw.display())));
    let _ = std::fs::remove_file(&raw);
    vcdiff
}

/// Brotli at quality 11 with a 16 MiB window, the largest standard one
/// (large windows are a Brotli extension): patches are a few MiB at most,
/// so the window spans one whole.
fn brotli_whole(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(bytes.len() / 2);
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 1 << 16, 11, 24);
        w.write_all(bytes)?;
        w.flush()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_chunking_is_valid() {
        assert!(Chunking::default().config().is_ok());
    }

    #[test]
    fn bad_chunking_is_refused_with_the_reason() {
        let c = Chunking {
            avg: 3000,
            ..Chunking::default()
        };
        let e = c.config().expect_err("not a power of two");
        assert!(e.to_string().contains("3000"), "{e}");
        let c = Chunking {
            min: 1 << 20,
            max: 1 << 16,
            ..Chunking::default()
        };
        assert!(c.config().is_err());
        let c = Chunking {
            window: 0,
            ..Chunking::default()
        };
        assert!(c.config().is_err());
    }

    #[test]
    fn parameters_round_trip_through_the_dictionary() {
        let config = Chunking::default().config().expect("valid");
        let p = chunker_parameters(&config, 32);
        let chunker::Config::RollSum(f) = config else {
            panic!("rollsum expected");
        };
        assert_eq!(p.chunk_filter_bits, f.filter_bits.bits());
        assert_eq!(p.min_chunk_size as usize, f.min_chunk_size);
        assert_eq!(p.max_chunk_size as usize, f.max_chunk_size);
        assert_eq!(p.chunk_hash_length, 32);
    }
}
