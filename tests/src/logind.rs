//! A stand-in for systemd-logind's manager on the test bus (logind needs
//! systemd as PID 1, which the test machines do not run). It serves the
//! two `org.freedesktop.login1.Manager` calls a reboot takes, with
//! logind's signatures, and records them in order; `refusing` answers them
//! as logind answers a caller polkit denies, `blocking_reboots` the first
//! reboots as logind does while an app holds a block inhibitor.

use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct Logind {
    calls: Arc<Mutex<Vec<String>>>,
    _connection: zbus::Connection,
}

struct ManagerIface {
    calls: Arc<Mutex<Vec<String>>>,
    refuse: bool,
    /// Reboots still to refuse as blocked.
    blocked: Mutex<u32>,
}

/// logind's own error names.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.login1")]
enum LoginError {
    #[zbus(error)]
    ZBus(zbus::Error),
    BlockedByInhibitorLock(String),
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl ManagerIface {
    fn set_reboot_parameter(&self, parameter: String) -> zbus::fdo::Result<()> {
        self.answer(format!("SetRebootParameter {parameter}"))
    }

    fn reboot(&self, interactive: bool) -> Result<(), LoginError> {
        {
            let mut blocked = self.blocked.lock().expect("lock");
            if *blocked > 0 {
                *blocked -= 1;
                self.calls
                    .lock()
                    .expect("lock")
                    .push(format!("Reboot interactive={interactive} (blocked)"));
                return Err(LoginError::BlockedByInhibitorLock(
                    "Operation denied due to active block inhibitor".into(),
                ));
            }
        }
        self.answer(format!("Reboot interactive={interactive}"))
            .map_err(|e| LoginError::ZBus(e.into()))
    }
}

impl ManagerIface {
    fn answer(&self, call: String) -> zbus::fdo::Result<()> {
        self.calls.lock().expect("lock").push(call);
        if self.refuse {
            return Err(zbus::fdo::Error::AccessDenied("Access denied".into()));
        }
        Ok(())
    }
}

impl Logind {
    /// Serves the manager on `bus`, owning `org.freedesktop.login1`.
    pub async fn start(bus: &crate::Bus) -> Self {
        Self::serve(bus, false, 0).await
    }

    /// The same, refusing every call with `AccessDenied`.
    pub async fn refusing(bus: &crate::Bus) -> Self {
        Self::serve(bus, true, 0).await
    }

    /// The same, refusing the first `n` reboots with
    /// `BlockedByInhibitorLock` (recorded with " (blocked)").
    pub async fn blocking_reboots(bus: &crate::Bus, n: u32) -> Self {
        Self::serve(bus, false, n).await
    }

    async fn serve(bus: &crate::Bus, refuse: bool, blocked: u32) -> Self {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let iface = ManagerIface {
            calls: calls.clone(),
            refuse,
            blocked: Mutex::new(blocked),
        };
        let connection = zbus::connection::Builder::address(bus.address())
            .expect("address")
            .name("org.freedesktop.login1")
            .expect("name")
            .serve_at("/org/freedesktop/login1", iface)
            .expect("serve")
            .build()
            .await
            .expect("logind stand-in on the test bus");
        Self {
            calls,
            _connection: connection,
        }
    }

    /// The calls so far, e.g. `SetRebootParameter 0 tryboot`, then
    /// `Reboot interactive=false`.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("lock").clone()
    }
}
