//! OS updates. This crate holds the parts that touch a slot:
//!
//! - [`http`]: the one HTTP client the agent uses for updates — rustls with
//!   the `ring` provider (no aws-lc, no OpenSSL: it builds for ARMv5 and
//!   MIPS), per-read timeouts rather than a total one, so a slow satellite
//!   link is fine as long as bytes keep coming.
//! - [`install`]: streaming a root image from HTTPS or a local file straight
//!   into the inactive slot — no temporary copy — refusing an image larger
//!   than the slot before a byte is written, hashing every byte as it is
//!   written, resuming a broken download with `Range` + `If-Range`, and
//!   verifying size and SHA-256 against the signed manifest before the
//!   caller may ever mark the slot bootable.
//!
//! The update state machine, slot selection and bootloader switching build
//! on these.

pub mod http;
pub mod install;

pub use install::{Expected, InstallError, Report, Retry, Source, install};
