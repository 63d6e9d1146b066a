//! Delta OS updates: a root image published as a content-defined chunk
//! archive (bitar's format), and cloned on the device into the inactive
//! slot from the chunks the device already has — the running slot, and
//! whatever the inactive slot itself holds (an interrupted earlier attempt,
//! or the image before last) — fetching only the rest over HTTPS range
//! requests.
//!
//! - [`build_archive`] (feature `publish`, on by default; devices build
//!   without it): the publisher's side. See [`mod@publish`] for the format
//!   and the choice of chunking and compression.
//! - [`clone_into`]: the device's side. See [`mod@clone`] for the steps and
//!   what is guaranteed on `Ok` (the same as the full-image installer: the
//!   slot holds exactly the manifest's size and SHA-256) and on `Err`.
//!
//! - [`apply_patch`]: the device's other side, for a release that carries a
//!   binary patch from the OS version the device runs: a VCDIFF patch
//!   ([`mod@vcdiff`]) applied to the running slot. Smaller than the chunks
//!   (a changed library spoils every chunk it spans, a patch only its
//!   changed bytes), but useful only to devices on that exact version.
//!
//! HTTP goes through the agent's one update client
//! ([`containeros_update::http::client`]: rustls on ring); bitar's own HTTP
//! reader is not used (the `source` module says why). Sources, expected image
//! and retry policy are the installer's types
//! ([`Source`], [`Expected`], [`Retry`]), so the daemon can hand the same
//! values to either path.

pub mod clone;
mod error;
pub mod medium;
pub mod patch;
#[cfg(feature = "publish")]
pub mod publish;
mod source;
pub mod vcdiff;

pub use clone::{CloneReport, Phase, Progress, Seed, clone_into};
pub use containeros_update::{Expected, Retry, Source};
pub use error::DeltaError;
pub use patch::{PatchReport, apply_patch};
#[cfg(feature = "publish")]
pub use publish::{ArchiveInfo, ArchiveOptions, Chunking, PatchInfo, RollingHash, build_archive, make_patch};

/// Archive metadata key holding the image's SHA-256 (lowercase hex), so a
/// device refuses an archive of another image before fetching a chunk.
/// Informative only: the image written is verified against the signed
/// manifest's digest, never against this.
pub const SHA256_KEY: &str = "containeros.sha256";
