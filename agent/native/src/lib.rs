//! The built-in OCI engine, for boards where Docker does not run (MIPS,
//! the smallest ARM devices): images pulled straight from OCI/Docker
//! registries into a content store on the data partition, layers unpacked
//! for overlayfs.
//!
//! - [`registry`]: the distribution API client (token and basic auth).
//! - [`platform`]: the device's platform and the choice in manifest lists.
//! - [`store`]: blobs, unpacked layers and image records, written
//!   atomically; garbage collection.
//! - [`unpack`]: layer archives with whiteouts into overlayfs lower dirs.
//! - [`pull`]: the pull that ties them together.

pub mod containers;
pub mod digest;
pub mod engine;
pub mod error;
pub mod journal;
pub mod network;
pub mod oci;
pub mod platform;
pub mod pull;
pub mod registry;
pub mod runtime;
pub mod spec;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use engine::{NativeEngine, Settings};
pub use error::{Error, Result};
pub use journal::LogTarget;
pub use platform::Platform;
pub use pull::{Progress, pull};
pub use registry::{Credentials, Registry};
pub use store::{GcReport, ImageRecord, Store};
