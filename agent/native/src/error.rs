//! Errors of the native engine's image side. Each variant names the
//! operation that failed and what it failed on (URL, path, digest), so that
//! the message a user sees says where to look.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("image `{reference}`: {reason}")]
    Reference { reference: String, reason: String },
    #[error("GET {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: the registry answered {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status { url: String, status: u16, body: String },
    #[error("GET {url}: authentication failed: {reason}")]
    Auth { url: String, reason: String },
    #[error("manifest {url}: {reason}")]
    Manifest { url: String, reason: String },
    #[error(
        "{url}: the content does not match its digest {expected} (got {actual}, {bytes} bytes); it was discarded, pull again"
    )]
    DigestMismatch {
        url: String,
        expected: String,
        actual: String,
        bytes: u64,
    },
    #[error(
        "{url}: the registry sent {got} bytes where the manifest says {expected}; it was discarded, pull again"
    )]
    SizeMismatch { url: String, expected: u64, got: u64 },
    #[error(
        "image `{reference}` has no manifest for this device's platform {platform} (it has: {available})"
    )]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("content store {}: in use by another process (one agent per store)", path.display())]
    Locked { path: PathBuf },
    #[error("layer {digest}: {reason}")]
    Layer { digest: String, reason: String },
    #[error("image `{0}` is not in the store: pull it first")]
    ImageNotFound(String),
    #[error("container {container}: {op} failed: {reason}")]
    Runtime {
        op: &'static str,
        container: String,
        reason: String,
    },
    #[error("{what}: {reason}")]
    Network { what: String, reason: String },
    #[error("no container `{0}`")]
    NoContainer(String),
    #[error("container `{name}`: {reason}")]
    Container { name: String, reason: String },
    #[error("container logs in the journal: {reason}")]
    Journal { reason: String },
    #[error("store record {}: {reason}; remove the file and pull the image again", path.display())]
    Record { path: PathBuf, reason: String },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }

    /// Whether the store's file system is full (the executor reports that
    /// as such instead of as a generic failure).
    pub fn is_no_space(&self) -> bool {
        match self {
            Self::Io { source, .. } => source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()),
            Self::Layer { reason, .. } => reason.contains("No space left on device"),
            _ => false,
        }
    }

    /// Whether the registry reported the image (or the blob) missing.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::Status { status: 404, .. } | Self::ImageNotFound(_) | Self::NoContainer(_)
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
