//! The client side: a typed proxy and a connection helper whose errors say
//! what to do (daemon not running, bus not reachable, access denied).

use std::collections::HashMap;

use zbus::zvariant::{OwnedValue, Value};

use crate::{BUS_NAME, INSTALLER_INTERFACE, INTERFACE, InstallerStatus, Status};

#[zbus::proxy(
    interface = "org.containeros.Agent1",
    default_service = "org.containeros.Agent1",
    default_path = "/org/containeros/Agent1",
    gen_blocking = false
)]
pub trait Agent {
    fn restart_engine(&self) -> zbus::Result<()>;

    #[zbus(property)]
    fn agent_version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn os_version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn booted_slot(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn operation(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn progress(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn last_error(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn engine_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn engine_version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn engine_restarts(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn device_id(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn provisioning(&self) -> zbus::Result<String>;
}

#[zbus::proxy(
    interface = "org.containeros.Agent1.Apps",
    default_service = "org.containeros.Agent1",
    default_path = "/org/containeros/Agent1",
    gen_blocking = false
)]
pub trait Apps {
    fn apply_release(&self, path: &str) -> zbus::Result<()>;
    fn list_services(&self) -> zbus::Result<Vec<crate::ServiceRow>>;
    fn restart_service(&self, service: &str) -> zbus::Result<()>;
    fn stop_service(&self, service: &str) -> zbus::Result<()>;
    fn start_service(&self, service: &str) -> zbus::Result<()>;
    fn logs(&self, service: &str, lines: u32) -> zbus::Result<String>;

    #[zbus(signal)]
    fn pull_progress(&self, image: String, done: u64, total: u64) -> zbus::Result<()>;

    #[zbus(signal)]
    fn apply_finished(
        &self,
        release: String,
        version: String,
        success: bool,
        error: String,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.containeros.Agent1.Installer",
    default_service = "org.containeros.Agent1",
    default_path = "/org/containeros/Agent1",
    gen_blocking = false
)]
pub trait Installer {
    /// `options`: see [`crate::InstallOptions::to_dbus`].
    fn install(&self, source: &str, options: HashMap<&str, Value<'_>>) -> zbus::Result<()>;
    fn mark_good(&self) -> zbus::Result<String>;
    fn mark_bad(&self) -> zbus::Result<String>;
    fn rollback(&self) -> zbus::Result<String>;
    fn reboot(&self) -> zbus::Result<()>;

    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn target_slot(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn bytes_done(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn bytes_total(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn bytes_fetched(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn last_error(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn last_result(&self) -> zbus::Result<String>;

    #[zbus(signal)]
    fn progress(&self, state: String, done: u64, total: u64) -> zbus::Result<()>;

    #[zbus(signal)]
    fn completed(&self, success: bool, state: String, message: String) -> zbus::Result<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the D-Bus {bus}: {source}; is dbus-daemon running?")]
    Connect {
        bus: String,
        #[source]
        source: zbus::Error,
    },
    #[error(
        "the ContainerOS agent is not running: nobody owns {BUS_NAME} on the {bus} \
         (start it with `systemctl start containeros-agent`, see `journalctl -u containeros-agent`)"
    )]
    NotRunning { bus: String },
    #[error(
        "permission denied: {0} (only root and members of the `containeros` group may change the device)"
    )]
    AccessDenied(String),
    #[error("the agent refused: {0}")]
    Refused(String),
    #[error("D-Bus call failed: {0}")]
    Call(#[source] zbus::Error),
}

impl From<zbus::Error> for ClientError {
    fn from(e: zbus::Error) -> Self {
        match &e {
            zbus::Error::MethodError(name, message, _) => {
                let message = message.clone().unwrap_or_else(|| name.to_string());
                if name.as_str() == "org.freedesktop.DBus.Error.AccessDenied" {
                    ClientError::AccessDenied(message)
                } else if name.as_str().starts_with("org.containeros.Agent1.Error.") {
                    ClientError::Refused(message)
                } else {
                    ClientError::Call(e)
                }
            }
            zbus::Error::FDO(fdo) => match fdo.as_ref() {
                zbus::fdo::Error::AccessDenied(m) => ClientError::AccessDenied(m.clone()),
                zbus::fdo::Error::ServiceUnknown(_) | zbus::fdo::Error::NameHasNoOwner(_) => {
                    ClientError::NotRunning { bus: "bus".into() }
                }
                _ => ClientError::Call(e),
            },
            _ => ClientError::Call(e),
        }
    }
}

/// Connects to `address` (a D-Bus address) or the system bus, and checks
/// that the agent is there.
pub async fn connect(address: Option<&str>) -> Result<AgentProxy<'static>, ClientError> {
    let bus = match address {
        Some(a) => format!("bus at {a}"),
        None => "system bus".to_owned(),
    };
    let connect_error = |source| ClientError::Connect {
        bus: bus.clone(),
        source,
    };
    let builder = match address {
        Some(a) => zbus::connection::Builder::address(a),
        None => zbus::connection::Builder::system(),
    }
    .map_err(connect_error)?;
    let connection = builder.build().await.map_err(connect_error)?;
    let dbus = zbus::fdo::DBusProxy::new(&connection).await?;
    let name = zbus::names::BusName::try_from(BUS_NAME).map_err(|e| ClientError::Call(e.into()))?;
    if !dbus
        .name_has_owner(name)
        .await
        .map_err(|e| ClientError::Call(e.into()))?
    {
        return Err(ClientError::NotRunning { bus });
    }
    Ok(AgentProxy::new(&connection).await?)
}

/// Reads every property in one `GetAll` round trip.
pub async fn status(proxy: &AgentProxy<'_>) -> Result<Status, ClientError> {
    let all = get_all(proxy.inner(), INTERFACE).await?;
    Ok(Status {
        agent_version: string(&all, "AgentVersion"),
        os_version: string(&all, "OsVersion"),
        booted_slot: string(&all, "BootedSlot"),
        operation: string(&all, "Operation"),
        progress: number(&all, "Progress"),
        last_error: string(&all, "LastError"),
        engine_state: string(&all, "EngineState"),
        engine_version: string(&all, "EngineVersion"),
        engine_restarts: number(&all, "EngineRestarts"),
        device_id: string(&all, "DeviceId"),
        provisioning: string(&all, "Provisioning"),
    })
}

/// Reads every installer property in one `GetAll` round trip.
pub async fn installer_status(proxy: &InstallerProxy<'_>) -> Result<InstallerStatus, ClientError> {
    let all = get_all(proxy.inner(), INSTALLER_INTERFACE).await?;
    Ok(InstallerStatus {
        state: string(&all, "State"),
        target_slot: string(&all, "TargetSlot"),
        version: number(&all, "Version"),
        bytes_done: number(&all, "BytesDone"),
        bytes_total: number(&all, "BytesTotal"),
        bytes_fetched: number(&all, "BytesFetched"),
        last_error: string(&all, "LastError"),
        last_result: string(&all, "LastResult"),
    })
}

async fn get_all(
    proxy: &zbus::Proxy<'_>,
    interface: &'static str,
) -> Result<HashMap<String, OwnedValue>, ClientError> {
    let props = zbus::fdo::PropertiesProxy::builder(proxy.connection())
        .destination(BUS_NAME)?
        .path(proxy.path().to_owned())?
        .build()
        .await?;
    let iface = zbus::names::InterfaceName::try_from(interface).map_err(|e| ClientError::Call(e.into()))?;
    props
        .get_all(iface)
        .await
        .map_err(|e| ClientError::from(zbus::Error::from(e)))
}

fn string(all: &HashMap<String, OwnedValue>, key: &str) -> String {
    all.get(key)
        .and_then(|v| v.downcast_ref::<&str>().ok().map(str::to_owned))
        .unwrap_or_default()
}

fn number<T>(all: &HashMap<String, OwnedValue>, key: &str) -> T
where
    T: Default + for<'v> TryFrom<&'v Value<'v>, Error: Into<zbus::zvariant::Error>>,
{
    all.get(key)
        .and_then(|v| v.downcast_ref::<T>().ok())
        .unwrap_or_default()
}
