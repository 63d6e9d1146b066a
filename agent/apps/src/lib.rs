//! Application releases.
//!
//! - [`release`]: the release model parsed from a Compose file (pure).
//! - [`plan`]: the reconcile planner, observed state → ordered steps (pure:
//!   no I/O, the clock is an argument).
//! - [`engine`]: the boundary a container engine backend implements.
//! - [`locks`]: update locks as files an app creates, and the clock of how
//!   long an update has waited on one.
//! - [`apply`]: the executor, which observes, plans and executes on an
//!   [`engine::Engine`] until the engine matches the release.

pub mod apply;
pub mod engine;
pub mod locks;
pub mod plan;
pub mod release;

pub use release::{Mode, Release, ReleaseError, Service};
