//! The device side: an image cloned into the inactive slot from the chunks
//! the device already has, and the rest from the archive.
//!
//! In order:
//!
//! 1. The archive's header is read (one or two small range requests) and
//!    checked against the signed manifest's size (and, when the archive
//!    records it, SHA-256): an archive of another image is refused before
//!    anything is written.
//! 2. The slot is opened for writing — never created or truncated — and
//!    refused if smaller than the image.
//! 3. The slot itself is scanned first: chunks an interrupted earlier
//!    attempt wrote are already in place, and chunks of whatever image it
//!    held before are moved where the new image wants them (bitar's
//!    in-place reordering). That is how an interrupted update resumes:
//!    nothing about it is stored; what is in the slot is found again.
//! 4. Each seed (the running slot) is scanned with the archive's chunker,
//!    and every chunk the image needs is copied into the slot.
//! 5. The remaining chunks are fetched, decompressed, checked against their
//!    BLAKE2b hash from the header and written.
//! 6. The slot is flushed and read back: its first `expected.size` bytes
//!    must have the manifest's SHA-256, or the clone fails.
//!
//! Every chunk's hash is computed from the bytes themselves (seeds and slot
//! included), so a seed that changed under us costs a download, never a
//! wrong byte; and the final read-back is the same guarantee the
//! full-image installer gives. On `Err` the slot's content is undefined and
//! must not be marked bootable; a later attempt reuses what it holds.
//!
//! Hashing and decompression run on the blocking pool, so a current-thread
//! runtime (the daemon's) keeps answering D-Bus while a slot is scanned.

use std::path::Path;
use std::sync::{Arc, Mutex};

use bitar::{Archive, ChunkIndex, CloneOutput, VerifiedChunk};
use containeros_trust::Digest;
use containeros_update::{Expected, Retry, Source};
use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};
use tracing::{info, warn};

use crate::DeltaError;
use crate::source::{Counters, Reader, snapshot};

/// A readable image the device already has: the running slot, or any
/// earlier image. Only its first `len` bytes are scanned (all of it when
/// `None`): a slot device is usually larger than the image it holds.
#[derive(Debug, Clone, Copy)]
pub struct Seed<'a> {
    pub path: &'a Path,
    pub len: Option<u64>,
}

impl<'a> Seed<'a> {
    pub fn new(path: &'a Path) -> Self {
        Self { path, len: None }
    }

    pub fn with_len(path: &'a Path, len: u64) -> Self {
        Self { path, len: Some(len) }
    }
}

/// What the clone is doing; `done` of `total` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Looking for chunks in the slot itself (bytes scanned of the image size).
    ScanTarget,
    /// Looking for chunks in `seeds[i]` (bytes scanned of its length).
    ScanSeed(usize),
    /// Fetching the missing chunks (image bytes in place of the image size).
    Fetch,
    /// Reading the slot back to check the image's SHA-256.
    Verify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
}

/// How the clone went. Chunk counts are of distinct chunks of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CloneReport {
    /// Bytes received from the source (network, or the archive file): the
    /// archive header, the chunks fetched, and any bytes received twice.
    pub fetched_bytes: u64,
    /// Image bytes taken from the slot itself and from the seeds.
    pub reused_bytes: u64,
    /// Of those, bytes found in the slot itself (in place or moved).
    pub reused_from_target: u64,
    /// Image bytes written from fetched chunks (decompressed).
    pub written_from_source: u64,
    pub fetched_chunks: usize,
    pub reused_chunks: usize,
    /// Broken transfers resumed.
    pub resumes: u32,
    /// Seeds that could not be read (logged; their chunks were fetched).
    pub seeds_skipped: u32,
}

/// Blocks in flight on the blocking pool at once (hashing, decompression).
const IN_FLIGHT: usize = 2;

/// Scans report progress every this many bytes, not every chunk.
const REPORT_EVERY: u64 = 16 << 20;

/// Clones the image that `source` (a bitar archive: a local file or a URL)
/// describes into `target` (the inactive slot: a block device, or a file of
/// the slot's size), reusing the chunks that `target` itself and `seeds`
/// already hold, and verifies it against `expected` before returning `Ok`.
///
/// `retry` governs broken downloads; `progress` is called as work is done.
pub async fn clone_into(
    source: Source<'_>,
    seeds: &[Seed<'_>],
    target: &Path,
    expected: &Expected,
    retry: &Retry,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<CloneReport, DeltaError> {
    let counters = Arc::new(Mutex::new(Counters::default()));
    let (reader, source_name) = match source {
        Source::File(path) => (
            Reader::file(path, counters.clone()).await?,
            path.display().to_string(),
        ),
        Source::Url { client, url } => (Reader::http(client, url, retry, counters.clone()), url.to_owned()),
    };
    let mut archive = Archive::try_init(reader).await.map_err(|e| match e {
        bitar::ArchiveError::ReaderError(e) => e,
        bitar::ArchiveError::InvalidArchive(reason) => DeltaError::InvalidArchive {
            source_name: source_name.clone(),
            reason: chain(reason.as_ref()),
        },
    })?;
    check_archive(&archive, &source_name, expected)?;

    let mut report = CloneReport::default();
    let slot = open_target(target, expected.size).await?;
    let source_index = archive.build_source_index();
    let unique_chunks = source_index.len();
    let hash_length = archive.chunk_hash_length();
    let config = archive.chunker_config().clone();

    // 3. The slot itself.
    let scan = tokio::fs::File::open(target)
        .await
        .map_err(|source| DeltaError::ReadTarget {
            path: target.to_owned(),
            source,
        })?;
    let mut in_target = ChunkIndex::new_empty(hash_length);
    {
        let mut chunks = hashed_chunks(scan.take(expected.size), &config);
        let mut reported = 0;
        while let Some(result) = chunks.next().await {
            let (offset, chunk) = result.map_err(|source| DeltaError::ReadTarget {
                path: target.to_owned(),
                source,
            })?;
            if source_index.contains(chunk.hash()) {
                in_target.add_chunk(chunk.hash().clone(), chunk.len(), &[offset]);
            }
            let end = offset + chunk.len() as u64;
            if end - reported >= REPORT_EVERY {
                progress(Progress {
                    phase: Phase::ScanTarget,
                    done: end,
                    total: expected.size,
                });
                reported = end;
            }
        }
    }
    let mut output = CloneOutput::new(slot, source_index);
    report.reused_from_target =
        output
            .reorder_in_place(in_target)
            .await
            .map_err(|source| DeltaError::WriteTarget {
                path: target.to_owned(),
                source,
            })?;
    report.reused_bytes = report.reused_from_target;

    // 4. The seeds.
    for (i, seed) in seeds.iter().enumerate() {
        if output.is_empty() {
            break;
        }
        match scan_seed(
            seed,
            i,
            &config,
            &mut output,
            target,
            &mut report.reused_bytes,
            progress,
        )
        .await
        {
            Ok(()) => {}
            Err(SeedError::Target(e)) => return Err(e),
            Err(SeedError::Seed(e)) => {
                warn!(
                    seed = %seed.path.display(),
                    "cannot read seed ({e}); its chunks are fetched instead"
                );
                report.seeds_skipped += 1;
            }
        }
    }
    report.reused_chunks = unique_chunks - output.len();
    info!(
        target = %target.display(),
        reused = report.reused_bytes,
        from_target = report.reused_from_target,
        missing_chunks = output.len(),
        "chunks found on the device"
    );

    // 5. The archive.
    let placed = expected.size.saturating_sub(remaining_bytes(output.chunks()));
    progress(Progress {
        phase: Phase::Fetch,
        done: placed,
        total: expected.size,
    });
    let mut placed = placed;
    let fetched = fetch_missing(&mut archive, &mut output, &source_name, target, &mut |written| {
        report.fetched_chunks += 1;
        report.written_from_source += written;
        placed += written;
        progress(Progress {
            phase: Phase::Fetch,
            done: placed,
            total: expected.size,
        });
    })
    .await;
    if let Err(e) = fetched {
        // What arrived stays useful: the next attempt finds it in the slot.
        let mut slot = output.into_inner();
        let _ = slot.flush().await;
        let _ = slot.sync_data().await;
        return Err(e);
    }
    if !output.is_empty() {
        return Err(DeltaError::Incomplete {
            source_name,
            missing: output.len(),
        });
    }
    let c = snapshot(&counters);
    report.fetched_bytes = c.fetched;
    report.resumes = c.resumes;

    // 6. Flush and read back.
    let mut slot = output.into_inner();
    let write_err = |source| DeltaError::WriteTarget {
        path: target.to_owned(),
        source,
    };
    slot.flush().await.map_err(write_err)?;
    slot.sync_all().await.map_err(write_err)?;
    drop(slot);
    let actual = digest_of(target, expected.size, progress).await?;
    if actual != expected.sha256 {
        return Err(DeltaError::Digest {
            path: target.to_owned(),
            expected: expected.sha256,
            actual,
        });
    }
    info!(
        source = source_name,
        target = %target.display(),
        fetched = report.fetched_bytes,
        reused = report.reused_bytes,
        resumes = report.resumes,
        "image cloned and verified"
    );
    Ok(report)
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

fn check_archive<R>(archive: &Archive<R>, source_name: &str, expected: &Expected) -> Result<(), DeltaError> {
    if archive.total_source_size() != expected.size {
        return Err(DeltaError::ArchiveMismatch {
            source_name: source_name.to_owned(),
            what: format!("a {}-byte image", archive.total_source_size()),
            expected: format!("{} bytes", expected.size),
        });
    }
    if let Some(recorded) = archive.metadata_value(crate::SHA256_KEY) {
        let recorded = String::from_utf8_lossy(recorded);
        if recorded != expected.sha256.to_string() {
            return Err(DeltaError::ArchiveMismatch {
                source_name: source_name.to_owned(),
                what: format!("an image with SHA-256 {recorded}"),
                expected: expected.sha256.to_string(),
            });
        }
    }
    Ok(())
}

/// Opens the slot read-write, never creating or truncating it, and checks
/// the image fits.
async fn open_target(path: &Path, size: u64) -> Result<tokio::fs::File, DeltaError> {
    let open_err = |source| DeltaError::OpenTarget {
        path: path.to_owned(),
        source,
    };
    let mut file = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .await
        .map_err(open_err)?;
    // The end of a block device is its size (its metadata says 0).
    let slot = file.seek(std::io::SeekFrom::End(0)).await.map_err(open_err)?;
    if size > slot {
        return Err(DeltaError::TargetTooSmall {
            path: path.to_owned(),
            slot,
            image: size,
        });
    }
    file.rewind().await.map_err(open_err)?;
    Ok(file)
}

/// Fetches the chunks `output` still lacks, checks and writes them;
/// `written` is told the image bytes each one filled.
async fn fetch_missing(
    archive: &mut Archive<Reader>,
    output: &mut CloneOutput<tokio::fs::File>,
    source_name: &str,
    target: &Path,
    written: &mut (dyn FnMut(u64) + Send),
) -> Result<(), DeltaError> {
    let mut fetched = archive
        .chunk_stream(output.chunks())
        .map(|result| async move {
            let compressed = result?;
            let size = compressed.len();
            tokio::task::spawn_blocking(move || {
                let chunk = compressed.decompress().map_err(|e| (size, chain(&e)))?;
                chunk.verify().map_err(|e| (size, e.to_string()))
            })
            .await
            .map_err(DeltaError::joined)
        })
        .buffered(IN_FLIGHT);
    while let Some(result) = fetched.next().await {
        let verified = result?.map_err(|(size, reason)| DeltaError::CorruptChunk {
            source_name: source_name.to_owned(),
            size,
            reason,
        })?;
        let bytes = output
            .feed(&verified)
            .await
            .map_err(|source| DeltaError::WriteTarget {
                path: target.to_owned(),
                source,
            })?;
        written(bytes as u64);
    }
    Ok(())
}

/// Sum of the bytes the chunks left in `index` cover (every offset).
fn remaining_bytes(index: &ChunkIndex) -> u64 {
    index
        .iter_chunks()
        .map(|(_, loc)| loc.size() as u64 * loc.offsets().len() as u64)
        .sum()
}

/// The archive's chunker over `input`: (offset, chunk with its hash), the
/// hashing done on the blocking pool, in order.
fn hashed_chunks<'r, R>(
    input: R,
    config: &bitar::chunker::Config,
) -> impl futures_util::Stream<Item = std::io::Result<(u64, VerifiedChunk)>> + Unpin + Send + 'r
where
    R: tokio::io::AsyncRead + Unpin + Send + 'r,
{
    config
        .new_chunker(input)
        .map(|result| async move {
            let (offset, chunk) = result?;
            tokio::task::spawn_blocking(move || (offset, chunk.verify()))
                .await
                .map_err(std::io::Error::other)
        })
        .buffered(IN_FLIGHT)
}

enum SeedError {
    /// The seed cannot be read: skip it.
    Seed(std::io::Error),
    /// The slot cannot be written: fail.
    Target(DeltaError),
}

/// Copies every chunk the image still needs from `seed` into the slot,
/// adding the image bytes filled to `reused`.
async fn scan_seed(
    seed: &Seed<'_>,
    index: usize,
    config: &bitar::chunker::Config,
    output: &mut CloneOutput<tokio::fs::File>,
    target: &Path,
    reused: &mut u64,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(), SeedError> {
    let mut file = tokio::fs::File::open(seed.path).await.map_err(SeedError::Seed)?;
    let len = match seed.len {
        Some(len) => len,
        None => {
            let len = file
                .seek(std::io::SeekFrom::End(0))
                .await
                .map_err(SeedError::Seed)?;
            file.rewind().await.map_err(SeedError::Seed)?;
            len
        }
    };
    let mut chunks = hashed_chunks(file.take(len), config);
    let mut last = 0;
    while let Some(result) = chunks.next().await {
        let (offset, chunk) = result.map_err(SeedError::Seed)?;
        if output.chunks().contains(chunk.hash()) {
            *reused += output.feed(&chunk).await.map_err(|source| {
                SeedError::Target(DeltaError::WriteTarget {
                    path: target.to_owned(),
                    source,
                })
            })? as u64;
            if output.is_empty() {
                break;
            }
        }
        let end = offset + chunk.len() as u64;
        if end - last >= REPORT_EVERY {
            progress(Progress {
                phase: Phase::ScanSeed(index),
                done: end,
                total: len,
            });
            last = end;
        }
    }
    Ok(())
}

/// SHA-256 of the first `size` bytes of `path`, read in 1 MiB blocks,
/// each hashed on the blocking pool while the next is read.
async fn digest_of(
    path: &Path,
    size: u64,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Digest, DeltaError> {
    const BLOCK: usize = 1 << 20;
    let read_err = |source| DeltaError::ReadTarget {
        path: path.to_owned(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(read_err)?.take(size);
    let mut ctx = Some(ring::digest::Context::new(&ring::digest::SHA256));
    let mut spare = Some(vec![0u8; BLOCK]);
    let mut fill = vec![0u8; BLOCK];
    let mut hashing: Option<tokio::task::JoinHandle<(ring::digest::Context, Vec<u8>)>> = None;
    let mut done = 0u64;
    loop {
        let mut filled = 0;
        while filled < BLOCK {
            let n = file.read(&mut fill[filled..]).await.map_err(read_err)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if let Some(job) = hashing.take() {
            let (c, buf) = job.await.map_err(DeltaError::joined)?;
            ctx = Some(c);
            spare = Some(buf);
        }
        if filled == 0 {
            break;
        }
        let (Some(mut c), Some(next)) = (ctx.take(), spare.take()) else {
            return Err(DeltaError::Internal("digest state lost".into()));
        };
        let block = std::mem::replace(&mut fill, next);
        hashing = Some(tokio::task::spawn_blocking(move || {
            c.update(&block[..filled]);
            (c, block)
        }));
        done += filled as u64;
        progress(Progress {
            phase: Phase::Verify,
            done,
            total: size,
        });
    }
    let Some(ctx) = ctx else {
        return Err(DeltaError::Internal("digest state lost".into()));
    };
    if done != size {
        return Err(read_err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the slot ended after {done} of {size} bytes"),
        )));
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(Digest(out))
}
