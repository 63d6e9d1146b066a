//! The boundary between the apps logic and a container engine. The Docker
//! API backend (`containeros-engine`) implements it today; the built-in OCI
//! engine for boards without Docker will implement the same trait, so the
//! planner, executor, locks and health logic run unchanged on both.
//!
//! Every call names its target in errors, and [`ErrorKind`] tells the
//! executor what it may do about a failure (a missing container is gone
//! already; a full disk must be reported as such).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use crate::plan::{Observed, ObservedContainer};
use crate::release::{Duration, ImageRef, Release, Service};

/// Everything a backend needs to create one service's container.
#[derive(Debug)]
pub struct ContainerSpec<'a> {
    pub release: &'a Release,
    pub service_name: &'a str,
    pub service: &'a Service,
    /// The container's name (`plan::container_name`).
    pub name: &'a str,
    /// The labels that identify it (`plan::container_labels`).
    pub labels: BTreeMap<String, String>,
    /// The service's update-lock directory on the host, mounted at
    /// [`crate::locks::MOUNT`] with [`crate::locks::ENV`] set.
    pub lock_dir: Option<std::path::PathBuf>,
}

/// Progress of one image pull, in bytes of compressed layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PullProgress {
    pub done: u64,
    /// Known total so far (grows as the engine learns layer sizes).
    pub total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    /// A name is taken (a container or network created already).
    Conflict,
    /// The engine's storage is full.
    NoSpace,
    /// The engine does not answer.
    Unreachable,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineError {
    pub kind: ErrorKind,
    /// What was being done, e.g. "pull image".
    pub operation: &'static str,
    /// On what: image reference, container, network or volume name.
    pub target: String,
    pub message: String,
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.operation, self.target, self.message)
    }
}

impl std::error::Error for EngineError {}

pub type EngineResult<T> = Result<T, EngineError>;

/// A container engine, as the apps executor uses it.
pub trait Engine: Send + Sync {
    /// Containers (all, with labels and state), networks, volumes, images.
    fn observe(&self) -> impl Future<Output = EngineResult<Observed>> + Send;

    /// Pulls `image`, reporting bytes as they arrive.
    fn pull(
        &self,
        image: &ImageRef,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> impl Future<Output = EngineResult<()>> + Send;

    /// Bytes free for the engine's storage (images, containers, volumes).
    fn free_space(&self) -> impl Future<Output = EngineResult<u64>> + Send;

    fn create_network(&self, name: &str, release: &str) -> impl Future<Output = EngineResult<()>> + Send;
    fn remove_network(&self, name: &str) -> impl Future<Output = EngineResult<()>> + Send;
    fn create_volume(&self, name: &str, release: &str) -> impl Future<Output = EngineResult<()>> + Send;

    /// Creates the container (not started); returns its id.
    fn create_container(&self, spec: &ContainerSpec<'_>)
    -> impl Future<Output = EngineResult<String>> + Send;
    fn start(&self, container: &str) -> impl Future<Output = EngineResult<()>> + Send;
    fn stop(
        &self,
        container: &str,
        grace: Duration,
        signal: Option<&str>,
    ) -> impl Future<Output = EngineResult<()>> + Send;
    fn remove(&self, container: &str) -> impl Future<Output = EngineResult<()>> + Send;
    /// Removes an image reference (the image itself once no reference is
    /// left); [`ErrorKind::Conflict`] while a container uses it.
    fn remove_image(&self, reference: &str) -> impl Future<Output = EngineResult<()>> + Send;
    fn inspect(&self, container: &str) -> impl Future<Output = EngineResult<ObservedContainer>> + Send;

    /// Stops (with the container's own stop signal and `grace`) and starts
    /// the container again.
    fn restart(&self, container: &str, grace: Duration) -> impl Future<Output = EngineResult<()>> + Send;

    /// The last `lines` lines the container wrote (stdout and stderr).
    fn logs(&self, container: &str, lines: u32) -> impl Future<Output = EngineResult<String>> + Send;
}
