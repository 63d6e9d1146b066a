//! Applying the configuration in force through the system's services on
//! the bus — never by writing their private files where they have an API:
//!
//! - host name: systemd-hostnamed's `SetStaticHostname`, only when it
//!   differs (hostnamed persists it in `/etc/hostname`, kept on `/data`).
//!   Where hostnamed cannot replace `/etc/hostname` (a read-only `/etc` with
//!   the file bound from `/data`), the bound file is rewritten in place and
//!   the running name set with `SetHostname`;
//! - networks: NetworkManager's `Settings.AddConnection` or
//!   `Connection.Update` for each provisioned profile (persistent, secrets
//!   included, so NetworkManager keeps them root-only), and `Delete` for
//!   the agent's profiles the file no longer lists. Done when the file was
//!   (re)imported or a profile is missing, so an unchanged boot writes
//!   nothing to flash. A written Ethernet profile is activated at once
//!   (`ActivateConnection`): the port is already up on NetworkManager's
//!   automatic DHCP profile, which NetworkManager would not leave;
//! - time servers: systemd-timesyncd has no API for them, so a drop-in on
//!   tmpfs (written at every start) and a `TryRestartUnit`;
//! - SSH: the authorized keys file (0600) and the sshd unit started — only
//!   when keys are provisioned; with none, the file is removed and the unit
//!   stopped.
//!
//! Each step is independent: one failing is reported and the others still
//! run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use zbus::zvariant::{OwnedObjectPath, OwnedValue};

use crate::Provision;
use crate::network::{self, ID_PREFIX, Settings};

#[zbus::proxy(
    interface = "org.freedesktop.hostname1",
    default_service = "org.freedesktop.hostname1",
    default_path = "/org/freedesktop/hostname1",
    gen_blocking = false
)]
trait Hostname1 {
    fn set_static_hostname(&self, hostname: &str, interactive: bool) -> zbus::Result<()>;
    fn set_hostname(&self, hostname: &str, interactive: bool) -> zbus::Result<()>;
    #[zbus(property)]
    fn static_hostname(&self) -> zbus::Result<String>;
}

#[zbus::proxy(
    interface = "org.freedesktop.NetworkManager.Settings",
    default_service = "org.freedesktop.NetworkManager",
    default_path = "/org/freedesktop/NetworkManager/Settings",
    gen_blocking = false
)]
trait NmSettings {
    fn list_connections(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
    fn add_connection(&self, connection: Settings) -> zbus::Result<OwnedObjectPath>;
    fn get_connection_by_uuid(&self, uuid: &str) -> zbus::Result<OwnedObjectPath>;
}

#[zbus::proxy(
    interface = "org.freedesktop.NetworkManager",
    default_service = "org.freedesktop.NetworkManager",
    default_path = "/org/freedesktop/NetworkManager",
    gen_blocking = false
)]
trait Nm {
    fn activate_connection(
        &self,
        connection: &zbus::zvariant::ObjectPath<'_>,
        device: &zbus::zvariant::ObjectPath<'_>,
        specific_object: &zbus::zvariant::ObjectPath<'_>,
    ) -> zbus::Result<OwnedObjectPath>;
}

#[zbus::proxy(
    interface = "org.freedesktop.NetworkManager.Settings.Connection",
    default_service = "org.freedesktop.NetworkManager",
    gen_blocking = false
)]
trait NmConnection {
    fn update(&self, properties: Settings) -> zbus::Result<()>;
    fn delete(&self) -> zbus::Result<()>;
    fn get_settings(&self) -> zbus::Result<HashMap<String, HashMap<String, OwnedValue>>>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_blocking = false
)]
trait Systemd {
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn try_restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
}

/// Where and what to apply.
#[derive(Debug, Clone)]
pub struct Targets {
    /// The persistent host name file, written in place when hostnamed
    /// cannot replace it.
    pub hostname_file: PathBuf,
    /// Use NetworkManager for networks.
    pub network: bool,
    /// The drop-in directory systemd-timesyncd reads.
    pub timesyncd_dir: PathBuf,
    /// sshd's authorized keys file.
    pub authorized_keys: PathBuf,
    /// sshd's unit; `None`: SSH is not managed.
    pub ssh_unit: Option<String>,
    /// The file was (re)imported this boot: rewrite the network profiles
    /// even when they exist.
    pub changed: bool,
}

/// One step's result, for the log and the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub what: &'static str,
    pub result: Result<String, String>,
}

/// Applies `p`; returns each step's result.
pub async fn apply(connection: &zbus::Connection, p: &Provision, targets: &Targets) -> Vec<Step> {
    let mut steps = Vec::new();
    if let Some(hostname) = &p.device.hostname {
        steps.push(Step {
            what: "hostname",
            result: set_hostname(connection, hostname.as_str(), &targets.hostname_file).await,
        });
    }
    if targets.network {
        steps.push(Step {
            what: "network",
            result: networks(connection, p, targets.changed).await,
        });
    }
    steps.push(Step {
        what: "time servers",
        result: time_servers(connection, p, &targets.timesyncd_dir).await,
    });
    if let Some(unit) = &targets.ssh_unit {
        steps.push(Step {
            what: "ssh",
            result: ssh(connection, p, &targets.authorized_keys, unit).await,
        });
    }
    steps
}

/// Sets the static host name through hostnamed when it differs.
pub async fn set_hostname(
    connection: &zbus::Connection,
    hostname: &str,
    file: &Path,
) -> Result<String, String> {
    let proxy = Hostname1Proxy::new(connection)
        .await
        .map_err(|e| format!("cannot reach systemd-hostnamed: {e}"))?;
    let current = proxy.static_hostname().await.unwrap_or_default();
    if current == hostname {
        return Ok(format!("{hostname} (unchanged)"));
    }
    let refused = match proxy.set_static_hostname(hostname, false).await {
        Ok(()) => return Ok(hostname.to_owned()),
        Err(e) => e,
    };
    tracing::debug!(
        "SetStaticHostname: {refused}; writing {} in place",
        file.display()
    );
    write_in_place(file, format!("{hostname}\n").as_bytes()).map_err(|e| {
        format!(
            "systemd-hostnamed refused host name {hostname} ({refused}), and {} cannot be written: {e}",
            file.display()
        )
    })?;
    proxy
        .set_hostname(hostname, false)
        .await
        .map_err(|e| format!("{hostname} stored in {}, but not set now: {e}", file.display()))?;
    Ok(format!("{hostname} (in {})", file.display()))
}

/// Rewrites an existing file's content without replacing the file (a file
/// bound over another cannot be renamed onto).
fn write_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

async fn networks(connection: &zbus::Connection, p: &Provision, changed: bool) -> Result<String, String> {
    let settings = NmSettingsProxy::new(connection)
        .await
        .map_err(|e| format!("cannot reach NetworkManager: {e}"))?;
    let wanted = network::profiles(p);
    let mut done = Vec::new();
    for profile in &wanted {
        let written = match settings.get_connection_by_uuid(&profile.uuid).await {
            Ok(path) => {
                if changed {
                    let conn = connection_proxy(connection, path.clone()).await?;
                    conn.update(profile.settings.clone())
                        .await
                        .map_err(|e| format!("NetworkManager refused to update {}: {e}", profile.id))?;
                    done.push(format!("{} updated", profile.id));
                    Some(path)
                } else {
                    done.push(format!("{} unchanged", profile.id));
                    None
                }
            }
            Err(_) => {
                let path = settings
                    .add_connection(profile.settings.clone())
                    .await
                    .map_err(|e| format!("NetworkManager refused to add {}: {e}", profile.id))?;
                done.push(format!("{} added", profile.id));
                Some(path)
            }
        };
        // A wired port is already up on NetworkManager's automatic profile
        // (DHCP), and NetworkManager never leaves a connected device for a
        // new profile by itself: the Ethernet settings are brought up now.
        // (Wi-Fi profiles connect by themselves when their network is seen.)
        if let Some(path) = written
            && profile.kind == network::Kind::Ethernet
        {
            match activate(connection, &path).await {
                Ok(()) => done.push(format!("{} activated", profile.id)),
                Err(e) => done.push(format!("{} not activated now ({e})", profile.id)),
            }
        }
    }
    // The agent's profiles the file no longer lists.
    let paths = settings
        .list_connections()
        .await
        .map_err(|e| format!("cannot list NetworkManager's connections: {e}"))?;
    for path in paths {
        let conn = connection_proxy(connection, path).await?;
        let Ok(current) = conn.get_settings().await else {
            continue;
        };
        let field = |k: &str| {
            current
                .get("connection")
                .and_then(|c| c.get(k))
                .and_then(|v| String::try_from(v.clone()).ok())
                .unwrap_or_default()
        };
        let (id, uuid) = (field("id"), field("uuid"));
        if id.starts_with(ID_PREFIX)
            && uuid == network::uuid_for(&id)
            && !wanted.iter().any(|w| w.uuid == uuid)
        {
            conn.delete()
                .await
                .map_err(|e| format!("NetworkManager refused to delete {id}: {e}"))?;
            done.push(format!("{id} removed"));
        }
    }
    Ok(if done.is_empty() {
        "DHCP on Ethernet (NetworkManager's automatic wired connection)".to_owned()
    } else {
        done.join(", ")
    })
}

/// Activates a connection on the device NetworkManager finds for it.
async fn activate(connection: &zbus::Connection, path: &OwnedObjectPath) -> Result<(), String> {
    let nm = NmProxy::new(connection)
        .await
        .map_err(|e| format!("cannot reach NetworkManager: {e}"))?;
    let none = zbus::zvariant::ObjectPath::from_static_str_unchecked("/");
    nm.activate_connection(path, &none, &none)
        .await
        .map(|_| ())
        .map_err(|e| match e {
            zbus::Error::MethodError(_, Some(message), _) => message,
            e => e.to_string(),
        })
}

async fn connection_proxy(
    connection: &zbus::Connection,
    path: OwnedObjectPath,
) -> Result<NmConnectionProxy<'static>, String> {
    NmConnectionProxy::builder(connection)
        .path(path)
        .map_err(|e| e.to_string())?
        .build()
        .await
        .map_err(|e| format!("cannot reach NetworkManager: {e}"))
}

const TIMESYNCD_DROPIN: &str = "containeros.conf";
const TIMESYNCD: &str = "systemd-timesyncd.service";

async fn time_servers(connection: &zbus::Connection, p: &Provision, dir: &Path) -> Result<String, String> {
    let path = dir.join(TIMESYNCD_DROPIN);
    let servers: Vec<&str> = p.time.servers.iter().flatten().map(|s| s.as_str()).collect();
    let wanted = (!servers.is_empty()).then(|| {
        format!(
            "# Written by containeros-agent from the provisioning file.\n[Time]\nNTP={}\n",
            servers.join(" ")
        )
    });
    let current = std::fs::read_to_string(&path).ok();
    if current == wanted {
        return Ok(if servers.is_empty() {
            "image defaults".to_owned()
        } else {
            format!("{} (unchanged)", servers.join(" "))
        });
    }
    match &wanted {
        Some(text) => std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&path, text))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        None => std::fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?,
    }
    let systemd = SystemdProxy::new(connection)
        .await
        .map_err(|e| format!("cannot reach systemd: {e}"))?;
    systemd
        .try_restart_unit(TIMESYNCD, "replace")
        .await
        .map_err(|e| format!("cannot restart {TIMESYNCD}: {e}"))?;
    Ok(if servers.is_empty() {
        "image defaults".to_owned()
    } else {
        servers.join(" ")
    })
}

async fn ssh(
    connection: &zbus::Connection,
    p: &Provision,
    keys_file: &Path,
    unit: &str,
) -> Result<String, String> {
    let keys: Vec<&str> = p
        .ssh
        .authorized_keys
        .iter()
        .flatten()
        .map(|k| k.as_str())
        .collect();
    let systemd = SystemdProxy::new(connection)
        .await
        .map_err(|e| format!("cannot reach systemd: {e}"))?;
    if keys.is_empty() {
        match std::fs::remove_file(keys_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok("off (no keys provisioned)".into());
            }
            Err(e) => return Err(format!("cannot remove {}: {e}", keys_file.display())),
        }
        systemd
            .stop_unit(unit, "replace")
            .await
            .map_err(|e| format!("cannot stop {unit}: {e}"))?;
        return Ok("off (keys removed)".into());
    }
    let text = format!("{}\n", keys.join("\n"));
    if std::fs::read_to_string(keys_file).ok().as_deref() != Some(text.as_str()) {
        let dir = keys_file.parent().unwrap_or(Path::new("/"));
        let name = keys_file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        crate::import::store_private(dir, &name, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", keys_file.display()))?;
    }
    systemd
        .start_unit(unit, "replace")
        .await
        .map_err(|e| format!("cannot start {unit}: {e}"))?;
    Ok(format!("on, {} key(s), {unit}", keys.len()))
}
