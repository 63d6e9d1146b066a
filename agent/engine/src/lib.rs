//! The container engine, seen from the agent: reaching it over its API
//! ([`docker`]) and keeping it alive ([`supervisor`]).
//!
//! The supervision *policy* (when is the engine down, when to restart it,
//! when to give up) is pure logic over ping results and time, so it is
//! tested on tables. The driver loop talks to two small traits, [`Probe`]
//! and [`Restarter`], whose real implementations are bollard on the engine's
//! socket and systemd's D-Bus API; the system tests run those against a real
//! dockerd.

pub mod apps;
pub mod docker;
pub mod status;
pub mod store;
pub mod supervisor;

pub use apps::DockerApps;
pub use docker::DockerProbe;
pub use status::{EngineInfo, EngineState, EngineStatus};
pub use supervisor::{Policy, Probe, RestartRequest, Restarter, SystemdRestarter, supervise};
