//! A private system-like D-Bus daemon.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The agent's policy file as shipped (installed to
/// /usr/share/dbus-1/system.d on the device).
pub fn shipped_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/dist/org.containeros.Agent1.conf")
}

#[derive(Debug)]
pub struct Bus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Bus {
    /// Starts `dbus-daemon` with `scripts/private-bus.conf.in`: a policy
    /// modelled on Debian's system bus, including the shipped agent policy.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cos-bus")
            .tempdir()
            .expect("tempdir");
        // Other uids (the policy tests) must reach the socket.
        set_mode(dir.path(), 0o755);
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        let template = include_str!("../../scripts/private-bus.conf.in");
        let text = template
            .replace("@SOCKET@", &socket.display().to_string())
            .replace("@POLICY@", &shipped_policy().display().to_string());
        std::fs::write(&config, text).expect("write bus config");
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("dbus-daemon is needed (Debian package dbus-daemon)");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read bus address");
        let address = line.trim().to_owned();
        assert!(address.starts_with("unix:"), "dbus-daemon printed {address:?}");
        Self {
            child,
            address,
            _dir: dir,
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub async fn connect(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .expect("address")
            .build()
            .await
            .expect("connect to the test bus")
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}
