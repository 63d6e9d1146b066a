//! The agent's D-Bus API, shared by the daemon (server) and the CLI
//! (client) so both speak the same names and types.
//!
//! - Bus name `org.containeros.Agent1`, object `/org/containeros/Agent1`.
//! - Interface `org.containeros.Agent1` (the `1` is the API version: an
//!   incompatible change gets a new interface name, old clients keep
//!   working): read-only properties with `PropertiesChanged`, and methods.
//!   Later capabilities add sibling interfaces on the same object.
//! - Methods that change the device are refused by the bus itself for
//!   anyone but root and the `containeros` group (`agent/dist/
//!   org.containeros.Agent1.conf`); the server does not second-guess it.
//! - The server never acts by itself: a method becomes a [`Command`] sent to
//!   the daemon, which answers through a oneshot channel. That keeps this
//!   crate free of the agent's logic and lets tests drive it alone.
//!
//! - Interface `org.containeros.Agent1.Installer`: OS updates into the
//!   other A/B slot, modelled on RAUC's `de.pengutronix.rauc.Installer` but
//!   with explicit progress (`Progress`, `Completed`) and the bus policy's
//!   access control; its state is published as properties of its own.
//!
//! The introspection XML of the interfaces is checked in as
//! `agent/dist/org.containeros.Agent1.xml`; a test fails when it drifts.

mod client;
mod server;

pub use client::{AgentProxy, AppsProxy, ClientError, InstallerProxy, connect, installer_status, status};
pub use server::{
    AgentInterface, AppsInterface, Command, InstallOptions, InstallerHandle, InstallerInterface, Served,
    ServiceRow, StatusHandle, serve_on,
};

pub const APPS_INTERFACE: &str = "org.containeros.Agent1.Apps";
pub const INSTALLER_INTERFACE: &str = "org.containeros.Agent1.Installer";

use serde::Serialize;

pub const BUS_NAME: &str = "org.containeros.Agent1";
pub const OBJECT_PATH: &str = "/org/containeros/Agent1";
pub const INTERFACE: &str = "org.containeros.Agent1";

/// Everything `containeros status` shows: the interface's properties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Status {
    pub agent_version: String,
    pub os_version: String,
    /// "A", "B", or "" when the boot did not say.
    pub booted_slot: String,
    /// What the agent is doing: "idle", or the running operation.
    pub operation: String,
    /// Percent done of `operation`, 0–100.
    pub progress: u32,
    /// The last error, in words for people; "" when none.
    pub last_error: String,
    /// unknown, up, down, restarting, failed, unavailable.
    pub engine_state: String,
    /// e.g. "Docker Engine 20.10.24 (API 1.41)"; "" until seen.
    pub engine_version: String,
    /// Restarts of the engine the agent made since it started.
    pub engine_restarts: u32,
    /// The device's UUID, made on first boot and kept on /data (the
    /// staged-rollout key).
    pub device_id: String,
    /// The first-boot provisioning file: what this start's import did (or
    /// why it did not), and anything that could not be applied.
    pub provisioning: String,
}

/// Everything the `org.containeros.Agent1.Installer` interface publishes:
/// where the OS update stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstallerStatus {
    /// idle, downloading, written, verified, pending-reboot, trying,
    /// committed, rolled-back.
    pub state: String,
    /// The slot being written or tried ("A", "B"); "" when none.
    pub target_slot: String,
    /// The release version (manifest sequence number) being installed or
    /// last installed; 0 when none.
    pub version: u64,
    /// Bytes of the OS image written so far.
    pub bytes_done: u64,
    /// Bytes of the OS image in total; 0 when not known yet.
    pub bytes_total: u64,
    /// Bytes fetched from the network (or read from the source) for the
    /// current or last update, including any fetched twice: what the
    /// update cost on a metered link.
    pub bytes_fetched: u64,
    /// The last install problem, in words for people; "" when none.
    pub last_error: String,
    /// How the last install ended, in words for people; "" when none yet.
    pub last_result: String,
}

impl Default for InstallerStatus {
    fn default() -> Self {
        Self {
            state: "idle".into(),
            target_slot: String::new(),
            version: 0,
            bytes_done: 0,
            bytes_total: 0,
            bytes_fetched: 0,
            last_error: String::new(),
            last_result: String::new(),
        }
    }
}

/// Errors returned to D-Bus callers, with stable names clients can match.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.containeros.Agent1.Error")]
pub enum ApiError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The operation was tried and failed; the message says why.
    Failed(String),
    /// The agent cannot do this in its current configuration or state.
    Unavailable(String),
}
