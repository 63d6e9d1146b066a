//! A stand-in for systemd's unit manager on the test bus (see the crate
//! docs for why). It serves `org.freedesktop.systemd1.Manager` at
//! `/org/freedesktop/systemd1` with systemd's own method and signal
//! signatures, and runs each unit's process for real.

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath};

#[derive(Debug, Default)]
struct Units {
    /// Unit name → argv.
    defs: HashMap<String, Vec<String>>,
    running: HashMap<String, Child>,
    next_job: u32,
    restarts: HashMap<String, u32>,
    /// `reboot.target` start requests.
    reboots: u32,
    /// Unique names of the connections that called `Subscribe`.
    subscribers: std::collections::HashSet<String>,
    /// `TryRestartUnit` calls per unit.
    try_restarts: HashMap<String, u32>,
}

/// systemd's own error names for what the stand-in refuses.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.systemd1")]
enum ManagerError {
    #[zbus(error)]
    ZBus(zbus::Error),
    AlreadySubscribed(String),
}

#[derive(Debug)]
pub struct UnitManager {
    units: Arc<Mutex<Units>>,
    dir: tempfile::TempDir,
    _connection: zbus::Connection,
}

struct ManagerIface {
    units: Arc<Mutex<Units>>,
    dir: PathBuf,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl ManagerIface {
    /// As systemd does, a second `Subscribe` from the same connection is
    /// refused with `org.freedesktop.systemd1.AlreadySubscribed`.
    fn subscribe(&self, #[zbus(header)] header: zbus::message::Header<'_>) -> Result<(), ManagerError> {
        let sender = header.sender().map(|s| s.to_string()).unwrap_or_default();
        let mut units = self.units.lock().expect("lock");
        if units.subscribers.insert(sender.clone()) {
            Ok(())
        } else {
            Err(ManagerError::AlreadySubscribed(format!(
                "Client {sender} is already subscribed."
            )))
        }
    }

    async fn restart_unit(
        &self,
        name: String,
        _mode: String,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        let id = {
            let mut units = self.units.lock().expect("lock");
            if !units.defs.contains_key(&name) {
                return Err(zbus::fdo::Error::Failed(format!("Unit {name} not found.")));
            }
            units.next_job += 1;
            units.next_job
        };
        let path = OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{id}"))
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        let units = self.units.clone();
        let dir = self.dir.clone();
        let emitter = emitter.to_owned();
        let job = path.clone();
        // Like systemd: the call returns the queued job; its end is a signal.
        tokio::spawn(async move {
            let unit = name.clone();
            let result = tokio::task::spawn_blocking(move || restart(&units, &dir, &unit))
                .await
                .unwrap_or_else(|_| "failed".to_owned());
            let _ = Self::job_removed(&emitter, id, job.as_ref(), &name, &result).await;
        });
        Ok(path)
    }

    /// `reboot.target`, as `systemctl reboot` asks: the request is counted
    /// (the test decides what a reboot means) and the job is done. Any
    /// other defined unit is started (restarted) like `RestartUnit`.
    async fn start_unit(
        &self,
        name: String,
        mode: String,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        if name != "reboot.target" {
            return self.restart_unit(name, mode, emitter).await;
        }
        let id = {
            let mut units = self.units.lock().expect("lock");
            units.reboots += 1;
            units.next_job += 1;
            units.next_job
        };
        let path = OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{id}"))
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        let _ = Self::job_removed(&emitter, id, path.as_ref(), &name, "done").await;
        Ok(path)
    }

    /// Restarts the unit if it runs; otherwise, as systemd does, nothing
    /// (counted in `try_restarts`).
    async fn try_restart_unit(
        &self,
        name: String,
        mode: String,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        let (running, id) = {
            let mut units = self.units.lock().expect("lock");
            *units.try_restarts.entry(name.clone()).or_default() += 1;
            units.next_job += 1;
            (units.running.contains_key(&name), units.next_job)
        };
        if running {
            return self.restart_unit(name, mode, emitter).await;
        }
        let path = OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{id}"))
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        let _ = Self::job_removed(&emitter, id, path.as_ref(), &name, "done").await;
        Ok(path)
    }

    async fn stop_unit(
        &self,
        name: String,
        _mode: String,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        let (id, child) = {
            let mut units = self.units.lock().expect("lock");
            if !units.defs.contains_key(&name) {
                return Err(zbus::fdo::Error::Failed(format!("Unit {name} not found.")));
            }
            units.next_job += 1;
            (units.next_job, units.running.remove(&name))
        };
        let path = OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{id}"))
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        let emitter = emitter.to_owned();
        let job = path.clone();
        tokio::spawn(async move {
            if let Some(mut child) = child {
                let _ = tokio::task::spawn_blocking(move || stop(&mut child)).await;
            }
            let _ = Self::job_removed(&emitter, id, job.as_ref(), &name, "done").await;
        });
        Ok(path)
    }

    #[zbus(signal)]
    async fn job_removed(
        emitter: &SignalEmitter<'_>,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

/// Stops the unit's process if running, starts it again and waits for
/// `READY=1` (Type=notify). Returns systemd's job result word.
fn restart(units: &Mutex<Units>, dir: &std::path::Path, name: &str) -> String {
    let (argv, old) = {
        let mut u = units.lock().expect("lock");
        *u.restarts.entry(name.to_owned()).or_default() += 1;
        (
            u.defs.get(name).cloned().unwrap_or_default(),
            u.running.remove(name),
        )
    };
    if let Some(mut child) = old {
        stop(&mut child);
    }
    let socket_path = dir.join(format!("notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket_path);
    let Ok(socket) = UnixDatagram::bind(&socket_path) else {
        return "failed".into();
    };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
    let Some((program, args)) = argv.split_first() else {
        return "failed".into();
    };
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).ok();
    let mut command = Command::new(program);
    command
        .args(args)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(Stdio::null());
    if let Some(log) = log {
        if let Ok(copy) = log.try_clone() {
            command.stdout(copy);
        }
        command.stderr(log);
    }
    let Ok(mut child) = command.spawn() else {
        return "failed".into();
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut buf = [0u8; 4096];
    let result = loop {
        if let Ok(n) = socket.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1")
        {
            break "done";
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            break "failed";
        }
        if Instant::now() > deadline {
            break "timeout";
        }
    };
    units.lock().expect("lock").running.insert(name.to_owned(), child);
    result.to_owned()
}

fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl UnitManager {
    /// Serves the manager on `bus` (owning `org.freedesktop.systemd1`) with
    /// the given units (name → argv). Nothing is started yet.
    pub async fn start(bus: &crate::Bus, defs: &[(&str, Vec<String>)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cos-units")
            .tempdir()
            .expect("tempdir");
        let units = Arc::new(Mutex::new(Units {
            defs: defs.iter().map(|(n, a)| ((*n).to_owned(), a.clone())).collect(),
            ..Units::default()
        }));
        let iface = ManagerIface {
            units: units.clone(),
            dir: dir.path().to_owned(),
        };
        let connection = zbus::connection::Builder::address(bus.address())
            .expect("address")
            .name("org.freedesktop.systemd1")
            .expect("name")
            .serve_at("/org/freedesktop/systemd1", iface)
            .expect("serve")
            .build()
            .await
            .expect("unit manager on the test bus");
        Self {
            units,
            dir,
            _connection: connection,
        }
    }

    /// Starts (restarts) a unit and waits until it is ready.
    pub async fn start_unit(&self, name: &str) -> String {
        let units = self.units.clone();
        let dir = self.dir.path().to_owned();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || restart(&units, &dir, &name))
            .await
            .expect("join")
    }

    /// The unit's main process id, if it runs.
    pub fn main_pid(&self, name: &str) -> Option<u32> {
        self.units.lock().expect("lock").running.get(name).map(Child::id)
    }

    /// How many times the unit was (re)started.
    pub fn starts(&self, name: &str) -> u32 {
        self.units
            .lock()
            .expect("lock")
            .restarts
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// How many times `TryRestartUnit` was called for the unit.
    pub fn try_restarts(&self, name: &str) -> u32 {
        self.units
            .lock()
            .expect("lock")
            .try_restarts
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// How many reboots were asked for (`reboot.target` starts).
    pub fn reboots(&self) -> u32 {
        self.units.lock().expect("lock").reboots
    }

    /// The unit's stdout/stderr so far, for failure messages.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for UnitManager {
    fn drop(&mut self) {
        let mut units = self.units.lock().unwrap_or_else(|e| e.into_inner());
        for (_, mut child) in units.running.drain() {
            stop(&mut child);
        }
    }
}
