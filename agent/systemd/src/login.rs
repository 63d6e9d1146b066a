//! Rebooting the device the way `systemctl reboot [ARG]` does: through
//! systemd-logind's `org.freedesktop.login1.Manager`, which honours delay
//! inhibitors (an app finishing a write gets logind's `InhibitDelayMaxSec`
//! before the shutdown starts) and takes the reboot argument (Raspberry
//! Pi tryboot's `0 tryboot`) with `SetRebootParameter`. An image built
//! without logind gets what `systemctl` does there: the argument written to
//! `/run/systemd/reboot-param` (where systemd-shutdown reads it) and a
//! start job of `reboot.target` on systemd's manager.

use std::path::Path;

use crate::{UnitManager, UnitManagerError};

/// Where systemd-shutdown reads the reboot argument from.
pub const REBOOT_PARAM_FILE: &str = "/run/systemd/reboot-param";

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1",
    gen_blocking = false
)]
pub trait Login {
    /// The argument of the next reboot (the kernel passes it to firmware).
    fn set_reboot_parameter(&self, parameter: &str) -> zbus::Result<()>;

    /// Reboots; `interactive` would ask polkit to prompt a user.
    fn reboot(&self, interactive: bool) -> zbus::Result<()>;
}

/// Who took the reboot request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootBy {
    Logind,
    /// No logind on the bus: systemd's `reboot.target`.
    Systemd,
}

#[derive(Debug, thiserror::Error)]
pub enum RebootError {
    #[error("logind refused the reboot argument \"{argument}\": {source}")]
    Parameter {
        argument: String,
        #[source]
        source: zbus::Error,
    },
    #[error("cannot write the reboot argument to {path}: {source}")]
    ParameterFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("logind refused to reboot: {0}")]
    Logind(#[source] zbus::Error),
    #[error("cannot ask the bus whether logind is there: {0}")]
    Bus(#[source] zbus::Error),
    #[error(transparent)]
    Systemd(#[from] UnitManagerError),
}

/// The bus name systemd-logind owns.
const LOGIND: &str = "org.freedesktop.login1";

/// Whether logind is on the bus: running, or started on first call. Asked
/// of the bus itself, because a call to a name nobody owns may come back
/// `AccessDenied` rather than `ServiceUnknown`, by the bus's policy.
async fn logind_on_bus(connection: &zbus::Connection) -> zbus::Result<bool> {
    let bus = zbus::fdo::DBusProxy::new(connection).await?;
    let name = zbus::names::BusName::try_from(LOGIND).map_err(zbus::Error::from)?;
    if bus.name_has_owner(name).await? {
        return Ok(true);
    }
    Ok(bus
        .list_activatable_names()
        .await?
        .iter()
        .any(|n| n.as_str() == LOGIND))
}

/// Whether logind answered that it lacks the call (older than systemd 248
/// has no `SetRebootParameter`).
fn unknown_method(e: &zbus::Error) -> bool {
    match e {
        zbus::Error::MethodError(name, _, _) => name.as_str() == "org.freedesktop.DBus.Error.UnknownMethod",
        zbus::Error::FDO(e) => matches!(**e, zbus::fdo::Error::UnknownMethod(_)),
        _ => false,
    }
}

/// Asks for a reboot with an optional reboot argument: through logind when
/// it is on the bus, else `param_file` and `units`' `reboot.target`.
/// Returns once the reboot is queued.
pub async fn reboot(
    connection: &zbus::Connection,
    units: &UnitManager,
    argument: Option<&str>,
    param_file: &Path,
) -> Result<RebootBy, RebootError> {
    let param_err = |source| RebootError::ParameterFile {
        path: param_file.display().to_string(),
        source,
    };
    if !logind_on_bus(connection).await.map_err(RebootError::Bus)? {
        if let Some(argument) = argument {
            std::fs::write(param_file, argument).map_err(&param_err)?;
        }
        units.reboot().await?;
        return Ok(RebootBy::Systemd);
    }
    let logind = LoginProxy::new(connection).await.map_err(RebootError::Logind)?;
    if let Some(argument) = argument {
        match logind.set_reboot_parameter(argument).await {
            Ok(()) => {}
            Err(e) if unknown_method(&e) => std::fs::write(param_file, argument).map_err(&param_err)?,
            Err(source) => {
                return Err(RebootError::Parameter {
                    argument: argument.to_owned(),
                    source,
                });
            }
        }
    }
    logind.reboot(false).await.map_err(RebootError::Logind)?;
    Ok(RebootBy::Logind)
}
