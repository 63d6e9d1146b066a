//! The one error type of the crate. Each variant is named after what failed
//! and carries the file, device or URL it failed on; the message ends with
//! what to do where there is something to do.

use std::path::PathBuf;

use containeros_trust::Digest;
use reqwest::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    // --- publisher side ---
    #[error("cannot read image {path}: {source}")]
    ReadImage {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {path} is empty; nothing to archive")]
    EmptyImage { path: PathBuf },
    #[error("cannot write archive {path}: {source}")]
    WriteArchive {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid archive options: {reason}")]
    Options { reason: String },
    #[error("cannot make the patch from {old} to {new}: {reason}")]
    MakePatch {
        old: PathBuf,
        new: PathBuf,
        reason: String,
    },
    #[error("cannot compress a chunk of {path}: {reason}")]
    Compress { path: PathBuf, reason: String },

    // --- device side: the archive ---
    #[error("cannot read archive file {path}: {source}")]
    ReadArchive {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{source_name} is not a usable chunk archive: {reason}; check the release's os.archive")]
    InvalidArchive { source_name: String, reason: String },
    #[error(
        "archive {source_name} is of {what}, but the release manifest says {expected}; the release's \
         os.archive does not belong to its os image: republish the release"
    )]
    ArchiveMismatch {
        source_name: String,
        what: String,
        expected: String,
    },
    #[error("{url} answered {status}; check the channel's files and the server")]
    Status { url: String, status: StatusCode },
    #[error(
        "{url} answered a byte-range request with the whole file: the archive changed on the server \
         during the update (retry the update; chunks already written are reused), or the server does \
         not serve byte ranges (delta updates need them)"
    )]
    RangeIgnored { url: String },
    #[error(
        "gave up on {url} after {attempts} attempts in a row without progress: {last}; retry later \
         (chunks already written to the slot are reused)"
    )]
    GaveUp {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("a chunk ({size} bytes as stored) of {source_name} is corrupt: {reason}; republish the archive")]
    CorruptChunk {
        source_name: String,
        size: usize,
        reason: String,
    },
    #[error("{source_name} ended with {missing} chunks of the image still missing; republish the archive")]
    Incomplete { source_name: String, missing: usize },

    // --- device side: the slot ---
    #[error("cannot open slot {path}: {source}")]
    OpenTarget {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "image of {image} bytes does not fit slot {path} ({slot} bytes); nothing was written — publish a \
         smaller image or repartition"
    )]
    TargetTooSmall { path: PathBuf, slot: u64, image: u64 },
    #[error("cannot read slot {path}: {source}")]
    ReadTarget {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write slot {path}: {source}")]
    WriteTarget {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "image cloned into {path} has SHA-256 {actual}, the manifest says {expected}: the archive does not \
         hold the release's image, or the slot does not keep what is written to it"
    )]
    Digest {
        path: PathBuf,
        expected: Digest,
        actual: Digest,
    },
    // --- device side: a binary patch ---
    #[error("cannot read patch file {path}: {source}")]
    ReadPatch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read seed {path}: {source}")]
    ReadSeed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot apply patch {path} to {seed}: {source}")]
    Patch {
        path: PathBuf,
        seed: PathBuf,
        #[source]
        source: crate::vcdiff::VcdiffError,
    },
    #[error(
        "patch {path} made {written} bytes with SHA-256 {actual}, the manifest says {size} bytes with \
         SHA-256 {expected}: the running slot is not the release the patch was made from, or the patch \
         does not belong to the release"
    )]
    PatchResult {
        path: PathBuf,
        written: u64,
        size: u64,
        expected: Digest,
        actual: Digest,
    },

    #[error("internal error: {0}")]
    Internal(String),
}

impl DeltaError {
    pub(crate) fn joined(e: tokio::task::JoinError) -> Self {
        Self::Internal(format!("a worker thread failed: {e}"))
    }
}
