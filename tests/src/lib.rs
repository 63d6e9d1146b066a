//! The system-test harness: real parts, started per test, cleaned up on drop.
//!
//! - [`Bus`]: a private `dbus-daemon` whose policy mirrors Debian's
//!   system bus (method calls denied by default) and includes the agent's
//!   shipped policy file, so access control is tested as installed.
//! - [`UnitManager`]: a stand-in for systemd on that bus. It implements the
//!   `org.freedesktop.systemd1.Manager` calls the agent makes (`Subscribe`,
//!   `RestartUnit`, `StartUnit`, `TryRestartUnit`, `StopUnit`, the `JobRemoved` signal) and really runs the unit's
//!   process — here a private `dockerd` — waiting for its `READY=1` on a
//!   `NOTIFY_SOCKET` the way systemd does for `Type=notify` units. systemd
//!   itself is not PID 1 on the test machines, hence the stand-in.
//! - [`Logind`]: a stand-in for systemd-logind's manager (the reboot calls),
//!   for the same reason.
//! - [`Dockerd`]: the command line of a private dockerd (own data-root,
//!   exec-root, socket; no bridge, no iptables) beside any other engine.
//! - [`Agent`]: the built `containeros-agent`, started with a config made by
//!   the test and a `NOTIFY_SOCKET` the harness reads readiness from.
//! - [`bin`]: the workspace's binaries, built once per test run.
//! - [`https`]: an HTTPS file server on loopback that can cut connections.
//! - [`Hostnamed`], [`NetworkManager`]: the real systemd-hostnamed and
//!   NetworkManager (Debian's), each on the test bus in namespaces of its own
//!   (mount, UTS, network) so they change nothing on the machine.
//! - [`busybox_image`]: test images built from Debian's static busybox and
//!   pushed to the local registry, so the agent's pulls are real pulls.

mod bus;
pub mod https;
mod images;
mod logind;
mod procs;
mod services;
mod units;

pub use bus::Bus;
pub use images::*;
pub use logind::Logind;
pub use procs::{Agent, Dockerd, bin, cli, require_root, run_as};
pub use services::{Hostnamed, NetworkManager};
pub use units::UnitManager;

/// Polls `check` every 100 ms until it returns `Some`, or panics after
/// `secs` seconds with `what`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
