//! Real system services on the test bus, in namespaces of their own.
//!
//! - [`Hostnamed`]: Debian's `systemd-hostnamed` in a new mount and UTS
//!   namespace, with an overlay over `/etc`: it writes `/etc/hostname` and
//!   sets the kernel host name as on a device, but the writes land in the
//!   test's directory and the machine's host name stays as it is.
//! - [`NetworkManager`]: Debian's `NetworkManager` in a new mount and network
//!   namespace (only a loopback interface), keyfile profiles in the test's
//!   directory, polkit off (root callers only, as the agent is).
//!
//! Both find the bus through `DBUS_SYSTEM_BUS_ADDRESS`, as on a device they
//! find the system bus.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Bus;

fn spawn_in_namespaces(unshare: &str, script: &str, bus: &Bus, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    use std::os::unix::process::CommandExt;
    Command::new("unshare")
        .args([unshare, "sh", "-c", script])
        // Its own process group: stopping it stops everything it started.
        .process_group(0)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("unshare (util-linux) is needed")
}

async fn wait_for_name(bus: &Bus, name: &str, child: &mut Child, log: &Path) {
    let connection = bus.connect().await;
    let dbus = zbus::fdo::DBusProxy::new(&connection).await.expect("bus proxy");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let owned = zbus::names::BusName::try_from(name)
            .ok()
            .map(|n| dbus.name_has_owner(n));
        if let Some(owned) = owned
            && owned.await.unwrap_or(false)
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{name} exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{name} not on the bus after 30s: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[derive(Debug)]
pub struct Hostnamed {
    child: Child,
    dir: tempfile::TempDir,
}

impl Hostnamed {
    pub async fn start(bus: &Bus) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cos-hostnamed")
            .tempdir()
            .expect("tempdir");
        for d in ["upper", "work"] {
            std::fs::create_dir(dir.path().join(d)).expect("mkdir");
        }
        let program = [
            "/lib/systemd/systemd-hostnamed",
            "/usr/lib/systemd/systemd-hostnamed",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("systemd-hostnamed is needed (Debian package systemd)");
        // hostnamed exits after 30 s without calls and is started again by
        // bus activation when called; here a loop starts it again.
        let script = format!(
            "mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/upper,workdir={d}/work /etc && \
             while :; do {program}; sleep 0.05; done",
            d = dir.path().display()
        );
        let log = dir.path().join("log");
        let mut child = spawn_in_namespaces("-mu", &script, bus, &log);
        wait_for_name(bus, "org.freedesktop.hostname1", &mut child, &log).await;
        Self { child, dir }
    }

    /// What hostnamed wrote to `/etc/hostname`, if it wrote it.
    pub fn static_hostname(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("upper/hostname"))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Hostnamed {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

#[derive(Debug)]
pub struct NetworkManager {
    child: Child,
    dir: tempfile::TempDir,
}

impl NetworkManager {
    pub async fn start(bus: &Bus) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cos-nm")
            .tempdir()
            .expect("tempdir");
        for d in ["connections", "lib", "run"] {
            std::fs::create_dir(dir.path().join(d)).expect("mkdir");
        }
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("NetworkManager.conf"),
            format!(
                "[main]\nplugins=keyfile\nauth-polkit=false\ndhcp=internal\n\
                 [keyfile]\npath={d}/connections\n[logging]\nlevel=INFO\n"
            ),
        )
        .expect("write config");
        let script = format!(
            "mkdir -p /run/NetworkManager /var/lib/NetworkManager && \
             mount --bind {d}/run /run/NetworkManager && mount --bind {d}/lib /var/lib/NetworkManager && \
             exec NetworkManager --no-daemon --config={d}/NetworkManager.conf"
        );
        let log = dir.path().join("log");
        let mut child = spawn_in_namespaces("-mn", &script, bus, &log);
        wait_for_name(bus, "org.freedesktop.NetworkManager", &mut child, &log).await;
        Self { child, dir }
    }

    /// The directory NetworkManager keeps its profiles in (keyfiles).
    pub fn connections(&self) -> PathBuf {
        self.dir.path().join("connections")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for NetworkManager {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
