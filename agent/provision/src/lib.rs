//! First-boot provisioning: what a person writes on the card's FAT boot
//! partition before the first boot (`containeros/config.toml`), and what
//! the agent makes of it.
//!
//! - [`parse`]: the file's model ([`Provision`]), every key optional, each
//!   checked with its line and key in the message.
//! - [`import()`]: once per boot, the file is imported into the state
//!   directory on `/data` atomically, only when it changed since the last
//!   import, and its secrets (Wi-Fi passphrases) are then removed from the
//!   boot partition. A file that does not check out changes nothing.
//! - [`identity`]: the device's UUID, made on first boot, kept on `/data`.
//! - [`apply`]: the configuration in force applied through the system's own
//!   D-Bus services: NetworkManager (connections), hostnamed (host name),
//!   systemd (time servers, SSH).
//! - `image` (feature): the host side, editing the file inside a disk image
//!   or on a card's boot partition without mounting it.
//!
//! The agent's own settings the file may change (channel, keys, engine,
//! development mode) become [`agent_overrides`], a layer between the
//! image's `/etc/containeros/agent.toml` and the state directory's
//! override file.

pub mod apply;
mod error;
pub mod identity;
#[cfg(feature = "image")]
pub mod image;
pub mod import;
mod locate;
mod model;
pub mod network;
pub mod scrub;

pub use error::ProvisionError;
pub use import::{Outcome, Record, Report, import};
pub use model::{
    AuthorizedKey, CaCertificates, ChannelSection, ChannelUrl, Cidr, DeviceSection, Eap, Engine,
    EngineSection, Hostname, Ipv4, Ipv4Method, Located, Provision, Psk, Secret, SshSection, Ssid,
    TimeSection, TimeServer, TrustedKey, Violation, Wifi, parse,
};

/// The provisioning file's path on the boot partition.
pub const BOOT_FILE: &str = "containeros/config.toml";
/// The directory under the agent's state directory holding the import.
pub const STORE_DIR: &str = "provision";
/// The template the image puts on the boot partition (every key commented
/// out) and `containeros provision init` writes.
pub const TEMPLATE: &str = include_str!("../../dist/provision-config.toml");

/// Where the agent keeps the provisioned channel CA certificates (under
/// the state directory), written beside the agent settings.
pub const CHANNEL_CA_FILE: &str = "provision/channel-ca.pem";

/// The agent configuration keys this provisioning sets, as a TOML document
/// in the agent configuration's own format (`agent/dist/agent.toml`).
/// `ca_file` is where the caller keeps `channel.ca`'s certificates.
pub fn agent_overrides(p: &Provision, ca_file: &std::path::Path) -> String {
    let mut out = String::new();
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    if p.channel.url.is_some() || p.channel.ca.is_some() {
        out.push_str("[channel]\n");
        if let Some(url) = &p.channel.url {
            out.push_str(&format!("url = {}\n", quote(url.as_str())));
        }
        if p.channel.ca.is_some() {
            out.push_str(&format!("ca_file = {}\n", quote(&ca_file.to_string_lossy())));
        }
    }
    if let Some(keys) = &p.channel.trusted_keys {
        let keys: Vec<String> = keys.iter().map(|k| quote(k.as_str())).collect();
        out.push_str(&format!("[update]\ntrusted_keys = [{}]\n", keys.join(", ")));
    }
    if let Some(development) = p.device.development {
        out.push_str(&format!("[apps]\ndevelopment = {development}\n"));
    }
    if let Some(engine) = p.engine.kind {
        let (socket, unit) = engine.socket_and_unit();
        out.push_str(&format!(
            "[engine]\nsocket = {}\nunit = {}\n",
            quote(socket),
            quote(unit)
        ));
    }
    out
}

/// `2026-11-22T12:00:00Z` from seconds since the epoch.
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests;
