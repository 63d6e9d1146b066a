//! The provisioning file's model. Every key is optional: an absent key
//! leaves the image's own setting in force. Rules on one value live in its
//! type (so serde reports them at the key's line); rules across keys live
//! in [`Provision::validate`].

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::locate;

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Provision {
    pub device: DeviceSection,
    pub channel: ChannelSection,
    pub engine: EngineSection,
    pub ethernet: Ipv4,
    pub wifi: Vec<Wifi>,
    pub ssh: SshSection,
    pub time: TimeSection,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceSection {
    /// The device's static hostname (also its name on the network).
    pub hostname: Option<Hostname>,
    /// Development mode: apps may use images by tag, not only by digest.
    pub development: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelSection {
    /// The release channel the device follows.
    pub url: Option<ChannelUrl>,
    /// Release-signing public keys (base64 ed25519) the device trusts.
    pub trusted_keys: Option<Vec<TrustedKey>>,
    /// CA certificates (PEM) for the channel's server, trusted in addition
    /// to the system's: a channel on a private CA.
    pub ca: Option<CaCertificates>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    /// Which Docker-API engine the agent drives (it must be in the image).
    pub kind: Option<Engine>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Docker,
    Podman,
}

impl Engine {
    /// The engine's API socket and the systemd unit that runs it.
    pub fn socket_and_unit(self) -> (&'static str, &'static str) {
        match self {
            Engine::Docker => ("/run/docker.sock", "docker.service"),
            Engine::Podman => ("/run/podman/podman.sock", "podman.socket"),
        }
    }
}

/// IPv4 settings of one connection: DHCP unless `address` is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ipv4 {
    /// `"dhcp"` (default) or `"static"`.
    pub ipv4: Ipv4Method,
    /// `"192.168.1.20/24"`; required with `ipv4 = "static"`.
    pub address: Option<Cidr>,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ipv4Method {
    #[default]
    Dhcp,
    Static,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Wifi {
    pub ssid: Ssid,
    /// WPA2/WPA3-Personal passphrase (8–63 characters, or 64 hex digits).
    pub psk: Option<Psk>,
    /// An open network (no passphrase).
    pub open: bool,
    /// 802.1X (WPA-Enterprise): `"peap"` or `"ttls"`, with `identity` and
    /// `password` (MSCHAPv2 inside the tunnel).
    pub eap: Option<Eap>,
    pub identity: Option<String>,
    pub password: Option<Secret>,
    /// Outer identity sent before the tunnel is up; default: `identity`.
    pub anonymous_identity: Option<String>,
    /// The network's IPv4 settings, as in `[ethernet]`.
    pub ipv4: Ipv4Method,
    pub address: Option<Cidr>,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

impl Wifi {
    pub fn ip(&self) -> Ipv4 {
        Ipv4 {
            ipv4: self.ipv4,
            address: self.address.clone(),
            gateway: self.gateway,
            dns: self.dns.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Eap {
    Peap,
    Ttls,
}

impl Eap {
    pub fn as_str(self) -> &'static str {
        match self {
            Eap::Peap => "peap",
            Eap::Ttls => "ttls",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SshSection {
    /// OpenSSH public keys allowed to log in as root. None: SSH stays off.
    pub authorized_keys: Option<Vec<AuthorizedKey>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeSection {
    /// NTP servers (host names or addresses) for systemd-timesyncd.
    pub servers: Option<Vec<TimeServer>>,
}

/// A located rule violation across keys: the dotted key (with `[i]` for
/// array items), what is wrong, what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    pub message: String,
    pub hint: String,
}

impl Provision {
    /// Rules across keys. The first violation is returned; the caller locates
    /// its key in the file.
    pub fn validate(&self) -> Result<(), Violation> {
        let v = |key: String, message: &str, hint: &str| Violation {
            key,
            message: message.to_owned(),
            hint: hint.to_owned(),
        };
        check_ipv4(&self.ethernet, "ethernet")?;
        for (i, w) in self.wifi.iter().enumerate() {
            let at = |k: &str| format!("wifi[{i}].{k}");
            if w.ssid.0.is_empty() {
                return Err(v(
                    format!("wifi[{i}]"),
                    "has no ssid",
                    "add ssid = \"<network name>\" or remove the [[wifi]] entry",
                ));
            }
            let kinds = usize::from(w.psk.is_some()) + usize::from(w.open) + usize::from(w.eap.is_some());
            if kinds > 1 {
                return Err(v(
                    at(if w.open { "open" } else { "eap" }),
                    "a network is either open, WPA-Personal (psk) or 802.1X (eap)",
                    "keep one of psk, open = true, eap",
                ));
            }
            if w.eap.is_some() {
                if w.identity.as_deref().is_none_or(str::is_empty) {
                    return Err(v(
                        at("identity"),
                        "is required with eap",
                        "add identity = \"<user name>\"",
                    ));
                }
            } else {
                for (set, key) in [
                    (w.identity.is_some(), "identity"),
                    (w.password.is_some(), "password"),
                    (w.anonymous_identity.is_some(), "anonymous_identity"),
                ] {
                    if set {
                        return Err(v(
                            at(key),
                            "is only for 802.1X networks",
                            "add eap = \"peap\" or \"ttls\", or remove it (use psk for a passphrase)",
                        ));
                    }
                }
            }
            if self.wifi[..i].iter().any(|o| o.ssid == w.ssid) {
                return Err(v(
                    at("ssid"),
                    &format!("network \"{}\" is listed twice", w.ssid.0),
                    "keep one [[wifi]] entry per network",
                ));
            }
            check_ipv4(&w.ip(), &format!("wifi[{i}]"))?;
        }
        Ok(())
    }

    /// Whether this file carries secrets (Wi-Fi passphrases, 802.1X
    /// passwords) that must not stay on the boot partition.
    pub fn has_secrets(&self) -> bool {
        self.wifi.iter().any(|w| w.psk.is_some() || w.password.is_some())
    }

    /// A network whose secret was scrubbed from the boot partition: no psk
    /// and not open (WPA-Personal), or eap without a password.
    pub fn needs_stored_secret(w: &Wifi) -> bool {
        match w.eap {
            Some(_) => w.password.is_none(),
            None => w.psk.is_none() && !w.open,
        }
    }
}

fn check_ipv4(ip: &Ipv4, at: &str) -> Result<(), Violation> {
    match ip.ipv4 {
        Ipv4Method::Static if ip.address.is_none() => Err(Violation {
            key: format!("{at}.ipv4"),
            message: "\"static\" needs an address".into(),
            hint: "add address = \"192.168.1.20/24\" (and gateway, dns), or use ipv4 = \"dhcp\"".into(),
        }),
        Ipv4Method::Dhcp if ip.address.is_some() || ip.gateway.is_some() => Err(Violation {
            key: format!(
                "{at}.{}",
                if ip.address.is_some() {
                    "address"
                } else {
                    "gateway"
                }
            ),
            message: "is only used with ipv4 = \"static\"".into(),
            hint: "add ipv4 = \"static\", or remove it to use DHCP".into(),
        }),
        _ => Ok(()),
    }
}

macro_rules! string_type {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Default, Serialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                let check: fn(&str) -> Result<(), String> = $check;
                check(&s).map_err(serde::de::Error::custom)?;
                Ok($name(s))
            }
        }
    };
}

string_type!(
    /// One or more PEM certificates (`-----BEGIN CERTIFICATE-----` blocks),
    /// as a TOML multi-line string.
    CaCertificates,
    |s| check_pem_certificates(s)
);

fn check_pem_certificates(s: &str) -> Result<(), String> {
    use base64::Engine as _;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let hint = "paste the CA's PEM file (from -----BEGIN CERTIFICATE----- to -----END CERTIFICATE-----) \
                between triple quotes: ca = \"\"\"...\"\"\"";
    let mut rest = s;
    let mut count = 0;
    while let Some(start) = rest.find(BEGIN) {
        let body_and_rest = &rest[start + BEGIN.len()..];
        let Some(end) = body_and_rest.find(END) else {
            return Err(format!("certificate {} has no {END} line; {hint}", count + 1));
        };
        let body: String = body_and_rest[..end].split_whitespace().collect();
        match base64::engine::general_purpose::STANDARD.decode(body.as_bytes()) {
            // A DER certificate is a SEQUENCE.
            Ok(der) if der.first() == Some(&0x30) && der.len() > 64 => {}
            _ => {
                return Err(format!(
                    "certificate {} is not a base64 DER certificate; {hint}",
                    count + 1
                ));
            }
        }
        count += 1;
        rest = &body_and_rest[end + END.len()..];
    }
    if count == 0 {
        return Err(format!("holds no certificate; {hint}"));
    }
    Ok(())
}

string_type!(
    /// RFC 1123 host name: labels of letters, digits and `-`, at most 64
    /// characters (the kernel's limit).
    Hostname,
    |s| {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if s.len() <= 64 && s.split('.').all(label_ok) {
            Ok(())
        } else {
            Err(format!(
                "\"{s}\" is not a host name: use letters, digits and '-' (not first or last), \
                 dots between labels, at most 64 characters"
            ))
        }
    }
);

string_type!(
    /// `https://` or `http://` URL, or an absolute directory (offline).
    ChannelUrl,
    |s| {
        let ok = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
            || s.starts_with('/');
        if ok {
            Ok(())
        } else {
            Err(format!(
                "\"{s}\" is not a channel: use an https:// URL or an absolute directory on the device"
            ))
        }
    }
);

string_type!(
    /// A base64 ed25519 release-signing public key.
    TrustedKey,
    |s| containeros_trust::PublicKey::parse(s)
        .map(|_| ())
        .map_err(|e| format!("\"{s}\": {e} (the public key `containeros release keygen` printed)"))
);

string_type!(
    /// A Wi-Fi network name: 1–32 bytes.
    Ssid,
    |s| {
        if !s.is_empty() && s.len() <= 32 {
            Ok(())
        } else {
            Err(format!("\"{s}\" is not a Wi-Fi network name: it must be 1 to 32 bytes long"))
        }
    }
);

string_type!(
    /// An OpenSSH public key line: type, base64 key, optional comment.
    AuthorizedKey,
    |s| {
        const TYPES: [&str; 8] = [
            "ssh-ed25519",
            "ssh-rsa",
            "ecdsa-sha2-nistp256",
            "ecdsa-sha2-nistp384",
            "ecdsa-sha2-nistp521",
            "sk-ssh-ed25519@openssh.com",
            "sk-ecdsa-sha2-nistp256@openssh.com",
            "ssh-dss",
        ];
        let mut parts = s.split_ascii_whitespace();
        let kind = parts.next().unwrap_or_default();
        let blob = parts.next().unwrap_or_default();
        let base64 = |b: &str| {
            b.len() >= 16 && b.chars().all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
        };
        if TYPES.contains(&kind) && base64(blob) && !s.contains('\n') {
            Ok(())
        } else {
            Err(format!(
                "\"{}\" is not an OpenSSH public key line (\"ssh-ed25519 AAAA... comment\", as in a .pub file)",
                s.chars().take(40).collect::<String>()
            ))
        }
    }
);

string_type!(
    /// An NTP server: host name or address, no spaces.
    TimeServer,
    |s| {
        if !s.is_empty() && s.len() <= 253 && s.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)) {
            Ok(())
        } else {
            Err(format!("\"{s}\" is not an NTP server name or address"))
        }
    }
);

string_type!(
    /// An IPv4 address with its prefix length, `192.168.1.20/24`.
    Cidr,
    |s| {
        let ok = s.split_once('/').is_some_and(|(a, p)| {
            a.parse::<Ipv4Addr>().is_ok() && p.parse::<u8>().is_ok_and(|p| (1..=32).contains(&p))
        });
        if ok {
            Ok(())
        } else {
            Err(format!("\"{s}\" is not an IPv4 address with prefix, such as \"192.168.1.20/24\""))
        }
    }
);

impl Cidr {
    pub fn parts(&self) -> (Ipv4Addr, u32) {
        let (a, p) = self.0.split_once('/').unwrap_or((&self.0, "32"));
        (
            a.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
            p.parse().unwrap_or(32),
        )
    }
}

string_type!(
    /// A WPA passphrase: 8–63 printable ASCII characters, or 64 hex digits.
    Psk,
    |s| {
        let ascii = (8..=63).contains(&s.len()) && s.chars().all(|c| (' '..='~').contains(&c));
        let hex = s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit());
        if ascii || hex {
            Ok(())
        } else {
            // The value is a secret: it is never repeated in a message.
            Err(format!(
                "a WPA passphrase is 8 to 63 printable ASCII characters or 64 hex digits (this one has {} characters)",
                s.chars().count()
            ))
        }
    }
);

string_type!(
    /// An 802.1X password.
    Secret,
    |s| {
        if s.is_empty() {
            Err("is empty".into())
        } else {
            Ok(())
        }
    }
);

// Secrets never appear in logs or debug output.
impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(..)")
    }
}
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}
macro_rules! debug_plain {
    ($($t:ident),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($t), self.0)
            }
        }
    )*};
}
debug_plain!(
    Hostname,
    CaCertificates,
    ChannelUrl,
    TrustedKey,
    Ssid,
    AuthorizedKey,
    TimeServer,
    Cidr
);

/// Parses and checks a provisioning file's text. Errors carry the key and
/// its position in `text`.
pub fn parse(text: &str) -> Result<Provision, Located> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Some(at) = text.find('\0') {
        let (line, column) = locate::line_column(text, at);
        return Err(Located {
            position: Some((line, column)),
            key: None,
            message: "the file contains NUL bytes: it was not completely written (power cut or card \
                      pulled out while saving?)"
                .into(),
            hint: "write the file again".into(),
        });
    }
    let provision: Provision = toml::from_str(text).map_err(|e| Located::from_toml(text, &e))?;
    provision.validate().map_err(|v| Located {
        // A missing key is reported where its table starts.
        position: std::iter::successors(Some(v.key.as_str()), |k| k.rsplit_once('.').map(|(head, _)| head))
            .find_map(|k| locate::key_position(text, k)),
        key: Some(v.key),
        message: v.message,
        hint: v.hint,
    })?;
    Ok(provision)
}

/// A problem in the file's text, located when possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// 1-based line and column.
    pub position: Option<(usize, usize)>,
    pub key: Option<String>,
    pub message: String,
    pub hint: String,
}

impl Located {
    fn from_toml(text: &str, e: &toml::de::Error) -> Self {
        let span = e.span();
        let position = span.as_ref().map(|s| locate::line_column(text, s.start));
        let key = span.as_ref().and_then(|s| locate::key_at(text, s.start));
        let raw = e.message().trim_end();
        let (message, hint) = if let Some(rest) = raw.strip_prefix("unknown field ") {
            let (field, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
            (
                format!("unknown key `{}`", field.trim_matches('`')),
                if expected.is_empty() {
                    "remove it".to_owned()
                } else {
                    format!(
                        "remove it or check its spelling (known keys here: {})",
                        expected.trim_start_matches("one of ")
                    )
                },
            )
        } else if key.is_some() {
            (
                raw.to_owned(),
                "fix the value, or remove the key to keep the image's setting (see the provisioning \
                 reference in the README)"
                    .to_owned(),
            )
        } else {
            (raw.to_owned(), "fix the file's TOML syntax".to_owned())
        };
        Located {
            position,
            key,
            message,
            hint,
        }
    }
}
