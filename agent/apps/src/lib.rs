//! Application releases: the Compose-file release model ([`release`]) and
//! the reconcile planner ([`plan`]).
//!
//! Both are pure: they read no files, talk to no engine and never look at
//! the clock. The daemon reads the release file and the engine's state, asks
//! [`plan::plan`] what to do, and executes the steps itself.

pub mod plan;
pub mod release;

pub use release::{Mode, Release, ReleaseError, Service};
