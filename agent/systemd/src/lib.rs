//! Talking to systemd, the two ways the agent needs:
//!
//! - [`notify`]: the `sd_notify` datagram protocol (readiness, watchdog,
//!   status, stopping) — a few lines over a Unix datagram socket, so no
//!   libsystemd is linked.
//! - [`manager`]: the `org.freedesktop.systemd1.Manager` D-Bus API, used to
//!   restart a unit and wait for the job's result. Only the calls the agent
//!   makes are declared; anything implementing them on the bus (systemd, or
//!   the stand-in unit manager of the system tests) works.
//! - [`login`]: rebooting through systemd-logind's manager, with the
//!   reboot argument, as `systemctl reboot` does.

pub mod login;
pub mod manager;
pub mod notify;

pub use login::{REBOOT_PARAM_FILE, RebootBy, RebootError, reboot};
pub use manager::{JobOutcome, UnitManager, UnitManagerError};
pub use notify::Notifier;
