//! Reading an archive: bitar's [`ArchiveReader`] over a local file, or over
//! HTTPS with byte-range requests through the agent's own client
//! ([`containeros_update::http::client`]: rustls on ring).
//!
//! bitar has an HTTP reader of its own, but it takes any answer as the bytes
//! asked for (a `200` with the whole file included), cannot tell that the
//! file changed on the server between two requests, and retries a fixed
//! number of times in all. This one asks for each run of adjacent chunks in
//! one `Range` request; checks that the answer is `206` for the very byte
//! asked; pins every request after the first to the archive's first answer
//! with `If-Range` (its strong ETag, else Last-Modified), so a replaced
//! archive is noticed instead of spliced; and resumes a broken transfer at
//! the first byte not yet received — retrying as long as attempts make
//! progress, like the full-image installer. Bytes received are counted as
//! they arrive, resent ones included (the report's `fetched_bytes`).
//!
//! Counters are behind a mutex, not in an `AtomicU64`: the agent runs on
//! 32-bit ARM and MIPS.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bitar::ChunkOffset;
use bitar::archive_reader::{ArchiveReader, IoReader};
use bytes::{Bytes, BytesMut};
use containeros_update::Retry;
use futures_util::{Stream, StreamExt as _};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use tracing::warn;

use crate::DeltaError;

/// What was received, shared with the caller (the reader itself ends up
/// inside bitar's `Archive`, which does not give it back).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    pub fetched: u64,
    pub resumes: u32,
}

pub(crate) type Shared = Arc<Mutex<Counters>>;

fn add(counters: &Shared, fetched: usize, resumes: u32) {
    // A poisoned lock only means another thread panicked while counting.
    let mut c = counters.lock().unwrap_or_else(|e| e.into_inner());
    c.fetched += fetched as u64;
    c.resumes += resumes;
}

pub(crate) fn snapshot(counters: &Shared) -> Counters {
    *counters.lock().unwrap_or_else(|e| e.into_inner())
}

/// The archive being read.
pub(crate) enum Reader {
    File {
        inner: IoReader<tokio::fs::File>,
        path: PathBuf,
        counters: Shared,
    },
    Http(Http),
}

impl Reader {
    pub(crate) async fn file(path: &Path, counters: Shared) -> Result<Self, DeltaError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| DeltaError::ReadArchive {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self::File {
            inner: IoReader::new(file),
            path: path.to_owned(),
            counters,
        })
    }

    pub(crate) fn http(client: &reqwest::Client, url: &str, retry: &Retry, counters: Shared) -> Self {
        Self::Http(Http {
            client: client.clone(),
            url: url.to_owned(),
            retry: *retry,
            validator: None,
            counters,
        })
    }
}

#[async_trait]
impl ArchiveReader for Reader {
    type Error = DeltaError;

    async fn read_at(&mut self, offset: u64, size: usize) -> Result<Bytes, DeltaError> {
        match self {
            Reader::File {
                inner,
                path,
                counters,
            } => {
                let bytes = inner
                    .read_at(offset, size)
                    .await
                    .map_err(|source| file_error(path, source))?;
                add(counters, bytes.len(), 0);
                Ok(bytes)
            }
            Reader::Http(http) => {
                let mut fetch = Fetch::new(http, vec![ChunkOffset::new(offset, size)]);
                fetch
                    .next_chunk()
                    .await
                    .unwrap_or_else(|| Err(DeltaError::Internal("empty range read".into())))
            }
        }
    }

    fn read_chunks<'a>(
        &'a mut self,
        chunks: Vec<ChunkOffset>,
    ) -> Pin<Box<dyn Stream<Item = Result<Bytes, DeltaError>> + Send + 'a>> {
        match self {
            Reader::File {
                inner,
                path,
                counters,
            } => {
                let (path, counters) = (path.clone(), counters.clone());
                Box::pin(inner.read_chunks(chunks).map(move |r| match r {
                    Ok(bytes) => {
                        add(&counters, bytes.len(), 0);
                        Ok(bytes)
                    }
                    Err(source) => Err(file_error(&path, source)),
                }))
            }
            Reader::Http(http) => Box::pin(futures_util::stream::unfold(
                Fetch::new(http, chunks),
                |mut fetch| async move {
                    let item = fetch.next_chunk().await?;
                    Some((item, fetch))
                },
            )),
        }
    }
}

fn file_error(path: &Path, source: std::io::Error) -> DeltaError {
    if source.kind() == std::io::ErrorKind::UnexpectedEof {
        DeltaError::InvalidArchive {
            source_name: path.display().to_string(),
            reason: "the file ends before a chunk its header lists (truncated copy?)".into(),
        }
    } else {
        DeltaError::ReadArchive {
            path: path.to_owned(),
            source,
        }
    }
}

/// An archive on an HTTPS (or HTTP) server.
pub(crate) struct Http {
    client: reqwest::Client,
    url: String,
    retry: Retry,
    /// The first answer's strong ETag or Last-Modified, sent as `If-Range`.
    validator: Option<String>,
    counters: Shared,
}

/// Why a request did not yield a body.
enum Failure {
    /// Worth retrying (connection, timeout, 5xx).
    Transient(String),
    Fatal(DeltaError),
}

/// The error and its causes on one line (reqwest's own message is only
/// the outermost, e.g. "error sending request").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

impl Http {
    /// Asks for archive bytes `start..end`.
    async fn request(&mut self, start: u64, end: u64) -> Result<reqwest::Response, Failure> {
        let mut request = self
            .client
            .get(&self.url)
            .header(RANGE, format!("bytes={start}-{}", end - 1));
        if let Some(v) = self.validator.as_deref() {
            request = request.header(IF_RANGE, v);
        }
        let response = request.send().await.map_err(|e| Failure::Transient(chain(&e)))?;
        let status = response.status();
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let first = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if first != Some(start) {
                    return Err(Failure::Transient(format!(
                        "asked for byte {start} on, the server sent from {first:?}"
                    )));
                }
            }
            // The whole file: fine only when its start was asked for (the
            // reader stops at `end`); otherwise ranges are not served or
            // If-Range failed because the archive changed.
            StatusCode::OK if start == 0 && self.validator.is_none() => {}
            StatusCode::OK => {
                return Err(Failure::Fatal(DeltaError::RangeIgnored {
                    url: self.url.clone(),
                }));
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                return Err(Failure::Fatal(DeltaError::InvalidArchive {
                    source_name: self.url.clone(),
                    reason: format!("it ends before byte {end}, which its header lists (truncated upload?)"),
                }));
            }
            s if s.is_server_error()
                || s == StatusCode::TOO_MANY_REQUESTS
                || s == StatusCode::REQUEST_TIMEOUT =>
            {
                return Err(Failure::Transient(format!("the server answered {s}")));
            }
            s => {
                return Err(Failure::Fatal(DeltaError::Status {
                    url: self.url.clone(),
                    status: s,
                }));
            }
        }
        if self.validator.is_none() {
            self.validator = response
                .headers()
                .get(ETAG)
                .filter(|v| !v.as_bytes().starts_with(b"W/")) // weak ETags are not valid for If-Range
                .or_else(|| response.headers().get(LAST_MODIFIED))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
        }
        Ok(response)
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// One `read_chunks` in progress: chunks are yielded in the order asked,
/// each run of adjacent chunks fetched with one range request.
struct Fetch<'a> {
    http: &'a mut Http,
    chunks: Vec<ChunkOffset>,
    /// The next chunk to yield.
    next: usize,
    /// Received bytes from `chunks[next].offset` on.
    buf: BytesMut,
    /// The next archive byte to receive, and the end of the current run.
    pos: u64,
    run_end: u64,
    body: Option<Body>,
    /// Failed attempts in a row without a byte gained, and where the last
    /// failure left off.
    failures: u32,
    failed_at: u64,
}

impl<'a> Fetch<'a> {
    fn new(http: &'a mut Http, chunks: Vec<ChunkOffset>) -> Self {
        Self {
            http,
            chunks,
            next: 0,
            buf: BytesMut::new(),
            pos: 0,
            run_end: 0,
            body: None,
            failures: 0,
            failed_at: u64::MAX,
        }
    }

    async fn next_chunk(&mut self) -> Option<Result<Bytes, DeltaError>> {
        loop {
            let chunk = *self.chunks.get(self.next)?;
            if self.buf.len() >= chunk.size {
                self.next += 1;
                return Some(Ok(self.buf.split_to(chunk.size).freeze()));
            }
            let broken = match self.body.as_mut() {
                Some(body) => match body.next().await {
                    Some(Ok(bytes)) => {
                        add(&self.http.counters, bytes.len(), 0);
                        let want = usize::try_from(self.run_end - self.pos).unwrap_or(usize::MAX);
                        let take = bytes.len().min(want);
                        self.buf.extend_from_slice(&bytes[..take]);
                        self.pos += take as u64;
                        if self.pos == self.run_end {
                            // All of this run is here; drop any excess.
                            self.body = None;
                        }
                        continue;
                    }
                    Some(Err(e)) => chain(&e),
                    None => format!("the connection closed at archive byte {}", self.pos),
                },
                None => {
                    if self.pos >= self.run_end {
                        self.start_run();
                    }
                    match self.http.request(self.pos, self.run_end).await {
                        Ok(response) => {
                            self.body = Some(Box::pin(response.bytes_stream()));
                            continue;
                        }
                        Err(Failure::Fatal(e)) => return Some(Err(e)),
                        Err(Failure::Transient(reason)) => reason,
                    }
                }
            };
            self.body = None;
            if let Err(e) = self.backoff(broken).await {
                return Some(Err(e));
            }
        }
    }

    /// The run of chunks adjacent in the archive from `chunks[next]` on.
    fn start_run(&mut self) {
        let first = self.chunks[self.next];
        let mut end = first.offset + first.size as u64;
        for c in &self.chunks[self.next + 1..] {
            if c.offset != end {
                break;
            }
            end += c.size as u64;
        }
        self.buf.clear();
        self.pos = first.offset;
        self.run_end = end;
    }

    async fn backoff(&mut self, reason: String) -> Result<(), DeltaError> {
        let retry = self.http.retry;
        self.failures = if self.pos != self.failed_at {
            1
        } else {
            self.failures + 1
        };
        self.failed_at = self.pos;
        if self.failures >= retry.attempts_without_progress {
            return Err(DeltaError::GaveUp {
                url: self.http.url.clone(),
                attempts: self.failures,
                last: reason,
            });
        }
        let factor = 1u32 << (self.failures - 1).min(16);
        let wait = retry.backoff.saturating_mul(factor).min(retry.backoff_max);
        warn!(
            url = self.http.url,
            byte = self.pos,
            "archive download broke ({reason}); resuming in {wait:?}"
        );
        add(&self.http.counters, 0, 1);
        tokio::time::sleep(wait).await;
        Ok(())
    }
}
