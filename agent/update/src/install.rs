//! Streaming an image into a slot.
//!
//! The slot is written from offset 0 with the bytes as they arrive, and the
//! same bytes feed a SHA-256 context, so the image is verified without ever
//! being stored anywhere else (devices rarely have room for a second copy).
//! A broken HTTP download resumes at the first missing byte with `Range`,
//! guarded by `If-Range` (the ETag, else Last-Modified, of the first
//! response): if the file changed on the server meanwhile, the server sends
//! it whole (200) and the install starts over from 0 instead of splicing two
//! different images. Attempts continue while they make progress; only
//! `Retry::attempts_without_progress` failures in a row end the install.
//!
//! What this module guarantees: on `Ok`, the slot holds exactly
//! `expected.size` bytes whose SHA-256 is `expected.sha256`, flushed to the
//! device. On `Err`, the slot's content is undefined — the caller must not
//! mark it bootable (and never had reason to: marking comes after `Ok`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use containeros_trust::Digest;
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use tracing::{info, warn};

/// What the signed manifest says the image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub size: u64,
    pub sha256: Digest,
}

#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    File(&'a Path),
    Url {
        client: &'a reqwest::Client,
        url: &'a str,
    },
}

/// When to give up on a flaky link.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Consecutive failed attempts (no byte gained) before giving up.
    pub attempts_without_progress: u32,
    /// Wait after the first failure; doubled per failure in a row, capped.
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts_without_progress: 8,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// How the install went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Report {
    /// Bytes written to the slot (the image size on success).
    pub written: u64,
    /// Bytes received from the source, including any fetched twice.
    pub fetched: u64,
    /// Times a broken download was resumed.
    pub resumes: u32,
    /// Times the server sent the whole file again (it changed, or it ignores
    /// ranges) and the install started over.
    pub restarts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot open slot {path}: {source}")]
    OpenSlot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "image of {image} bytes does not fit slot {path} ({slot} bytes); nothing was written — \
         publish a smaller image or repartition"
    )]
    SlotTooSmall { path: PathBuf, slot: u64, image: u64 },
    #[error("cannot write slot {path}: {source}")]
    WriteSlot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read image file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image file {path} is {actual} bytes but the manifest says {expected}; nothing was written")]
    FileSize {
        path: PathBuf,
        actual: u64,
        expected: u64,
    },
    #[error("{url} answered {status}; check the channel's files")]
    Status { url: String, status: StatusCode },
    #[error("{url} is {actual} bytes but the manifest says {expected}")]
    RemoteSize { url: String, actual: u64, expected: u64 },
    #[error("{source_name} sent more than the manifest's {expected} bytes")]
    TooLong { source_name: String, expected: u64 },
    #[error(
        "gave up on {url} after {attempts} attempts in a row without progress ({written} of {size} bytes written): {last}"
    )]
    GaveUp {
        url: String,
        attempts: u32,
        written: u64,
        size: u64,
        last: String,
    },
    #[error(
        "image written to {path} has SHA-256 {actual}, the manifest says {expected}: corrupted in transit or wrong file"
    )]
    Digest {
        path: PathBuf,
        expected: Digest,
        actual: Digest,
    },
}

/// Bytes handed to the kernel per write.
const CHUNK: usize = 1 << 20;

/// Alignment of the slot writes: the largest logical block size in use, so
/// `O_DIRECT` accepts the buffer's address, each length and each offset.
const ALIGN: usize = 4096;

/// A `CHUNK`-byte buffer starting at an `ALIGN`ed address (what `O_DIRECT`
/// needs), carved out of a slightly larger `Vec`; `len` bytes are filled.
struct Chunk {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl Chunk {
    fn new() -> Chunk {
        let mem = vec![0u8; CHUNK + ALIGN];
        // Never more than ALIGN for bytes; if it ever were, the writer sees
        // an unaligned buffer and writes through the page cache instead.
        let start = mem.as_ptr().align_offset(ALIGN).min(ALIGN);
        Chunk { mem, start, len: 0 }
    }

    fn data(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }

    /// The unfilled rest of the buffer.
    fn room(&mut self) -> &mut [u8] {
        let from = self.start + self.len;
        &mut self.mem[from..self.start + CHUNK]
    }

    /// A placeholder while the buffer is lent to a reading thread.
    fn empty() -> Chunk {
        Chunk {
            mem: Vec::new(),
            start: 0,
            len: 0,
        }
    }
}

/// The open slot. Written with `O_DIRECT` where the kernel allows it: the
/// image goes from the chunk buffer to the device without a copy into the
/// page cache, which would otherwise grow by the image's size (evicting
/// everything else on a small device) and cost a kernel copy of every byte.
/// The last partial block, and any slot that refuses `O_DIRECT` (`EINVAL`:
/// a filesystem without it, an unaligned length), is written through the
/// page cache; `sync_all` at the end makes both durable.
struct SlotFile {
    file: std::fs::File,
    direct: bool,
}

impl SlotFile {
    fn open(path: &Path) -> std::io::Result<SlotFile> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true);
        match options.clone().custom_flags(nix::libc::O_DIRECT).open(path) {
            Ok(file) => Ok(SlotFile { file, direct: true }),
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => Ok(SlotFile {
                file: options.open(path)?,
                direct: false,
            }),
            Err(e) => Err(e),
        }
    }

    /// Leaves `O_DIRECT` for the rest of the install.
    fn buffered(&mut self) -> std::io::Result<()> {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        let flags = OFlag::from_bits_retain(fcntl(&self.file, FcntlArg::F_GETFL)?);
        fcntl(&self.file, FcntlArg::F_SETFL(flags - OFlag::O_DIRECT))?;
        self.direct = false;
        Ok(())
    }

    /// Writes all of `data` at the file position.
    fn write_all(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        use std::io::Write as _;
        while !data.is_empty() {
            let n = if self.direct {
                let aligned = if data.as_ptr().align_offset(ALIGN) == 0 {
                    data.len() / ALIGN * ALIGN
                } else {
                    0
                };
                if aligned == 0 {
                    self.buffered()?;
                    continue;
                }
                aligned
            } else {
                data.len()
            };
            match self.file.write(&data[..n]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if self.direct && e.raw_os_error() == Some(nix::libc::EINVAL) => {
                    self.buffered()?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A chunk in flight: one blocking-pool thread hashes it while another
/// writes it; the file, the hash state and the buffer come back.
struct InFlight {
    write: tokio::task::JoinHandle<(SlotFile, std::io::Result<()>)>,
    hash: tokio::task::JoinHandle<ring::digest::Context>,
    buf: std::sync::Arc<Chunk>,
}

/// The slot being written, with the hash of everything written so far.
///
/// Bytes are gathered into a 1 MiB buffer; a full buffer is hashed by one
/// blocking-pool thread and written by another while the next one fills,
/// so the source (TLS, file reads), SHA-256 and the device write overlap
/// instead of alternating. Two buffers in all, reused; the bytes are copied
/// once, into the buffer the device reads from (a file source reads
/// straight into it). (A `BufWriter` over `tokio::fs::File`, before, copied
/// every byte twice in user space; then hashing on the producer's thread
/// kept the source waiting; then writing through the page cache added a
/// kernel copy and grew the cache by the image's size.)
struct Sink<'a> {
    path: &'a Path,
    /// `None` while a chunk is in flight.
    file: Option<SlotFile>,
    hash: Option<ring::digest::Context>,
    in_flight: Option<InFlight>,
    /// Filling; flushed when full.
    buf: Chunk,
    /// The other buffer while no chunk is in flight.
    spare: Option<Chunk>,
    written: u64,
    size: u64,
}

impl<'a> Sink<'a> {
    async fn open(path: &'a Path, size: u64) -> Result<Sink<'a>, InstallError> {
        use std::io::Seek as _;
        let open_err = |source| InstallError::OpenSlot {
            path: path.to_owned(),
            source,
        };
        // Never truncate or create: a slot is a block device (or, in tests, a
        // file of the slot's size) and its size is the limit.
        let owned = path.to_owned();
        let (file, slot) = tokio::task::spawn_blocking(move || {
            let mut file = SlotFile::open(&owned)?;
            let slot = file.file.seek(std::io::SeekFrom::End(0))?;
            file.file.seek(std::io::SeekFrom::Start(0))?;
            Ok((file, slot))
        })
        .await
        .map_err(|e| open_err(std::io::Error::other(e)))?
        .map_err(open_err)?;
        if size > slot {
            return Err(InstallError::SlotTooSmall {
                path: path.to_owned(),
                slot,
                image: size,
            });
        }
        Ok(Sink {
            path,
            file: Some(file),
            hash: Some(ring::digest::Context::new(&ring::digest::SHA256)),
            in_flight: None,
            buf: Chunk::new(),
            spare: Some(Chunk::new()),
            written: 0,
            size,
        })
    }

    fn write_err(&self, source: std::io::Error) -> InstallError {
        InstallError::WriteSlot {
            path: self.path.to_owned(),
            source,
        }
    }

    fn lost(&self) -> InstallError {
        self.write_err(std::io::Error::other("slot writer lost its file"))
    }

    fn too_long(&self, source_name: &str) -> InstallError {
        InstallError::TooLong {
            source_name: source_name.to_owned(),
            expected: self.size,
        }
    }

    async fn write(&mut self, mut bytes: &[u8], source_name: &str) -> Result<(), InstallError> {
        if self.written + bytes.len() as u64 > self.size {
            return Err(self.too_long(source_name));
        }
        self.written += bytes.len() as u64;
        while !bytes.is_empty() {
            let room = self.buf.room();
            let n = room.len().min(bytes.len());
            room[..n].copy_from_slice(&bytes[..n]);
            self.buf.len += n;
            bytes = &bytes[n..];
            if self.buf.len == CHUNK {
                self.submit().await?;
            }
        }
        Ok(())
    }

    /// Reads the next bytes of `file` straight into the buffer, on a
    /// blocking-pool thread (`tokio::fs` reads into a buffer of its own and
    /// copies), at most what the image still lacks. Returns the file and
    /// how many bytes came: 0 at its end. A file longer than the image is
    /// refused.
    async fn read_from(
        &mut self,
        file: std::fs::File,
        name: &Path,
    ) -> Result<(std::fs::File, std::io::Result<usize>), InstallError> {
        use std::io::Read as _;
        let want = usize::try_from(self.size - self.written)
            .unwrap_or(usize::MAX)
            .min(CHUNK - self.buf.len);
        let mut buf = std::mem::replace(&mut self.buf, Chunk::empty());
        let (file, buf, result) = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let result = if want == 0 {
                file.read(&mut [0u8; 1])
            } else {
                file.read(&mut buf.room()[..want])
            };
            (file, buf, result)
        })
        .await
        .map_err(|e| InstallError::ReadFile {
            path: name.to_owned(),
            source: std::io::Error::other(e),
        })?;
        self.buf = buf;
        match result {
            Ok(n) if n > 0 && want == 0 => Err(self.too_long(&name.display().to_string())),
            Ok(n) => {
                self.buf.len += n;
                self.written += n as u64;
                if self.buf.len == CHUNK {
                    self.submit().await?;
                }
                Ok((file, Ok(n)))
            }
            Err(e) => Ok((file, Err(e))),
        }
    }

    /// Waits for the chunk in flight, if any; the file, the hash state and
    /// its buffer are back afterwards.
    async fn settle(&mut self) -> Result<(), InstallError> {
        if let Some(job) = self.in_flight.take() {
            let joined = |e: tokio::task::JoinError| std::io::Error::other(e);
            let hash = job.hash.await.map_err(|e| self.write_err(joined(e)));
            let write = job.write.await.map_err(|e| self.write_err(joined(e)));
            let mut buf = std::sync::Arc::try_unwrap(job.buf).unwrap_or_else(|_| Chunk::new());
            buf.len = 0;
            self.spare = Some(buf);
            self.hash = Some(hash?);
            let (file, result) = write?;
            self.file = Some(file);
            result.map_err(|e| self.write_err(e))?;
        }
        Ok(())
    }

    /// Hands the filled buffer to the hashing and the writing thread.
    async fn submit(&mut self) -> Result<(), InstallError> {
        self.settle().await?;
        let (Some(mut file), Some(mut hash), Some(spare)) =
            (self.file.take(), self.hash.take(), self.spare.take())
        else {
            return Err(self.lost());
        };
        let full = std::sync::Arc::new(std::mem::replace(&mut self.buf, spare));
        let (to_hash, to_write) = (full.clone(), full.clone());
        self.in_flight = Some(InFlight {
            hash: tokio::task::spawn_blocking(move || {
                hash.update(to_hash.data());
                hash
            }),
            write: tokio::task::spawn_blocking(move || {
                let result = file.write_all(to_write.data());
                (file, result)
            }),
            buf: full,
        });
        Ok(())
    }

    /// Back to byte 0 (the server sent the whole file again).
    async fn rewind(&mut self) -> Result<(), InstallError> {
        use std::io::Seek as _;
        self.settle().await?;
        self.buf.len = 0;
        if let Some(file) = self.file.as_mut() {
            file.file
                .seek(std::io::SeekFrom::Start(0))
                .map_err(|e| InstallError::WriteSlot {
                    path: self.path.to_owned(),
                    source: e,
                })?;
        }
        self.hash = Some(ring::digest::Context::new(&ring::digest::SHA256));
        self.written = 0;
        Ok(())
    }

    /// Flushes to the device and checks the digest.
    async fn finish(mut self, expected: &Expected) -> Result<u64, InstallError> {
        if self.buf.len > 0 {
            self.submit().await?;
        }
        self.settle().await?;
        let (Some(file), Some(hash)) = (self.file.take(), self.hash.take()) else {
            return Err(self.lost());
        };
        tokio::task::spawn_blocking(move || file.file.sync_all())
            .await
            .map_err(|e| self.write_err(std::io::Error::other(e)))?
            .map_err(|e| self.write_err(e))?;
        let mut actual = [0u8; 32];
        actual.copy_from_slice(hash.finish().as_ref());
        let actual = Digest(actual);
        if actual != expected.sha256 {
            return Err(InstallError::Digest {
                path: self.path.to_owned(),
                expected: expected.sha256,
                actual,
            });
        }
        Ok(self.written)
    }
}

/// Writes the image from `source` into `slot` and verifies it. `progress`
/// is called with (bytes written, image size) as bytes land.
pub async fn install(
    source: Source<'_>,
    slot: &Path,
    expected: &Expected,
    retry: &Retry,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<Report, InstallError> {
    match source {
        Source::File(path) => from_file(path, slot, expected, progress).await,
        Source::Url { client, url } => from_url(client, url, slot, expected, retry, progress).await,
    }
}

async fn from_file(
    path: &Path,
    slot: &Path,
    expected: &Expected,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<Report, InstallError> {
    let read_err = |source| InstallError::ReadFile {
        path: path.to_owned(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(read_err)?;
    let actual = file.metadata().await.map_err(read_err)?.len();
    if actual != expected.size {
        return Err(InstallError::FileSize {
            path: path.to_owned(),
            actual,
            expected: expected.size,
        });
    }
    let mut file = file.into_std().await;
    let mut sink = Sink::open(slot, expected.size).await?;
    let mut fetched = 0;
    loop {
        let (back, read) = sink.read_from(file, path).await?;
        file = back;
        let n = read.map_err(read_err)?;
        if n == 0 {
            break;
        }
        fetched += n as u64;
        progress(sink.written, expected.size);
    }
    let written = sink.finish(expected).await?;
    Ok(Report {
        written,
        fetched,
        ..Report::default()
    })
}

/// One HTTP attempt's outcome when it did not fail for good.
enum Attempt {
    Complete,
    /// The connection broke or stalled; resume.
    Broken(String),
}

async fn from_url(
    client: &reqwest::Client,
    url: &str,
    slot: &Path,
    expected: &Expected,
    retry: &Retry,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<Report, InstallError> {
    let mut sink = Sink::open(slot, expected.size).await?;
    let mut report = Report::default();
    let mut validator: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let before = sink.written;
        let attempt = attempt(
            client,
            url,
            expected,
            &mut sink,
            &mut validator,
            &mut report,
            progress,
        )
        .await?;
        match attempt {
            Attempt::Complete => break,
            Attempt::Broken(reason) => {
                failures = if sink.written > before { 1 } else { failures + 1 };
                if failures >= retry.attempts_without_progress {
                    return Err(InstallError::GaveUp {
                        url: url.to_owned(),
                        attempts: failures,
                        written: sink.written,
                        size: expected.size,
                        last: reason,
                    });
                }
                let factor = 1u32 << (failures - 1).min(16);
                let wait = retry.backoff.saturating_mul(factor).min(retry.backoff_max);
                warn!(
                    url,
                    written = sink.written,
                    size = expected.size,
                    "download broke ({reason}); resuming in {wait:?}"
                );
                tokio::time::sleep(wait).await;
                report.resumes += 1;
            }
        }
    }
    report.written = sink.finish(expected).await?;
    info!(
        url,
        bytes = report.written,
        fetched = report.fetched,
        resumes = report.resumes,
        "image written and verified"
    );
    Ok(report)
}

async fn attempt(
    client: &reqwest::Client,
    url: &str,
    expected: &Expected,
    sink: &mut Sink<'_>,
    validator: &mut Option<String>,
    report: &mut Report,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<Attempt, InstallError> {
    let mut request = client.get(url);
    if sink.written > 0 {
        request = request.header(RANGE, format!("bytes={}-", sink.written));
        if let Some(v) = validator.as_deref() {
            request = request.header(IF_RANGE, v);
        }
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return Ok(Attempt::Broken(e.to_string())),
    };
    let status = response.status();
    match status {
        StatusCode::OK => {
            if let Some(len) = response.content_length()
                && len != expected.size
            {
                return Err(InstallError::RemoteSize {
                    url: url.to_owned(),
                    actual: len,
                    expected: expected.size,
                });
            }
            if sink.written > 0 {
                // The file changed under If-Range, or ranges are not served.
                sink.rewind().await?;
                report.restarts += 1;
                progress(0, expected.size);
            }
            *validator = response
                .headers()
                .get(ETAG)
                .filter(|v| !v.as_bytes().starts_with(b"W/")) // weak ETags are not valid for If-Range
                .or_else(|| response.headers().get(LAST_MODIFIED))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
        }
        StatusCode::PARTIAL_CONTENT => {
            let start = response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if start != Some(sink.written) {
                return Ok(Attempt::Broken(format!(
                    "server resumed at {start:?} instead of byte {}",
                    sink.written
                )));
            }
        }
        s if s.is_server_error()
            || s == StatusCode::TOO_MANY_REQUESTS
            || s == StatusCode::REQUEST_TIMEOUT =>
        {
            return Ok(Attempt::Broken(format!("{url} answered {s}")));
        }
        s => {
            return Err(InstallError::Status {
                url: url.to_owned(),
                status: s,
            });
        }
    }

    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return Ok(Attempt::Broken(e.to_string())),
        };
        report.fetched += chunk.len() as u64;
        sink.write(&chunk, url).await?;
        progress(sink.written, expected.size);
    }
    if sink.written == expected.size {
        Ok(Attempt::Complete)
    } else {
        Ok(Attempt::Broken(format!(
            "connection closed at byte {}",
            sink.written
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buffers and lengths O_DIRECT refuses are written through the page
    /// cache instead, and the bytes land all the same.
    #[test]
    fn unaligned_writes_fall_back_to_the_page_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("slot");
        std::fs::write(&path, vec![0u8; 3 * ALIGN]).expect("slot");
        let mut slot = SlotFile::open(&path).expect("open");
        let mut chunk = Chunk::new();
        chunk.room()[..ALIGN + 1].fill(1);
        chunk.len = ALIGN + 1;
        // One aligned block (direct, where supported), then one byte.
        slot.write_all(chunk.data()).expect("aligned start");
        assert!(!slot.direct, "the odd byte left O_DIRECT");
        // From an unaligned address.
        let data = vec![2u8; ALIGN + 3];
        slot.write_all(&data[1..]).expect("unaligned");
        slot.file.sync_all().expect("sync");
        let back = std::fs::read(&path).expect("read");
        assert!(back[..=ALIGN].iter().all(|b| *b == 1));
        assert!(back[ALIGN + 1..2 * ALIGN + 3].iter().all(|b| *b == 2));
        assert!(back[2 * ALIGN + 3..].iter().all(|b| *b == 0));
    }
}
