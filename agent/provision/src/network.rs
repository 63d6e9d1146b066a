//! The provisioned networks as NetworkManager connection profiles
//! (`a{sa{sv}}` settings, as `AddConnection` and `Update` take them).
//!
//! Each profile has a fixed id (`containeros-wifi-<ssid>`,
//! `containeros-ethernet`) and a UUID derived from it, so the agent finds
//! its own profiles again at every boot and never touches the ones a person
//! made. Ethernet gets a profile only when it is not plain DHCP:
//! NetworkManager's automatic wired connection already does DHCP on every
//! wired port with no configuration at all.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use zbus::zvariant::{OwnedValue, Value};

use crate::{Eap, Ipv4, Ipv4Method, Provision, Wifi};

/// Prefix of every profile the agent owns.
pub const ID_PREFIX: &str = "containeros-";

pub type Settings = HashMap<String, HashMap<String, OwnedValue>>;

/// One profile: its id, UUID and settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub id: String,
    pub uuid: String,
    pub kind: Kind,
    pub settings: Settings,
}

/// What a profile connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ethernet,
    Wifi,
}

/// Every profile the provisioning asks for.
pub fn profiles(p: &Provision) -> Vec<Profile> {
    let mut out = Vec::new();
    if p.ethernet.ipv4 == Ipv4Method::Static || !p.ethernet.dns.is_empty() {
        let id = format!("{ID_PREFIX}ethernet");
        let mut settings = Settings::new();
        settings.insert("connection".into(), connection(&id, "802-3-ethernet"));
        settings.insert("802-3-ethernet".into(), HashMap::new());
        settings.insert("ipv4".into(), ipv4(&p.ethernet));
        out.push(Profile {
            uuid: uuid_for(&id),
            id,
            kind: Kind::Ethernet,
            settings,
        });
    }
    for w in &p.wifi {
        out.push(wifi(w));
    }
    out
}

fn wifi(w: &Wifi) -> Profile {
    let id = format!("{ID_PREFIX}wifi-{}", w.ssid.as_str());
    let mut settings = Settings::new();
    settings.insert("connection".into(), connection(&id, "802-11-wireless"));
    let mut wireless = HashMap::from([
        (
            "ssid".to_owned(),
            owned(Value::from(w.ssid.as_str().as_bytes().to_vec())),
        ),
        ("mode".to_owned(), owned(Value::from("infrastructure"))),
    ]);
    match (w.eap, &w.psk) {
        (Some(eap), _) => {
            wireless.insert("security".into(), owned(Value::from("802-11-wireless-security")));
            settings.insert(
                "802-11-wireless-security".into(),
                HashMap::from([("key-mgmt".to_owned(), owned(Value::from("wpa-eap")))]),
            );
            let mut dot1x = HashMap::from([
                ("eap".to_owned(), owned(Value::from(vec![eap.as_str()]))),
                (
                    "identity".to_owned(),
                    owned(Value::from(w.identity.clone().unwrap_or_default())),
                ),
                (
                    "phase2-auth".to_owned(),
                    owned(Value::from(match eap {
                        Eap::Peap | Eap::Ttls => "mschapv2",
                    })),
                ),
            ]);
            if let Some(password) = &w.password {
                dot1x.insert("password".into(), owned(Value::from(password.as_str())));
            }
            if let Some(anonymous) = &w.anonymous_identity {
                dot1x.insert(
                    "anonymous-identity".into(),
                    owned(Value::from(anonymous.as_str())),
                );
            }
            settings.insert("802-1x".into(), dot1x);
        }
        (None, Some(psk)) => {
            wireless.insert("security".into(), owned(Value::from("802-11-wireless-security")));
            settings.insert(
                "802-11-wireless-security".into(),
                HashMap::from([
                    ("key-mgmt".to_owned(), owned(Value::from("wpa-psk"))),
                    ("psk".to_owned(), owned(Value::from(psk.as_str()))),
                ]),
            );
        }
        (None, None) => {}
    }
    settings.insert("802-11-wireless".into(), wireless);
    settings.insert("ipv4".into(), ipv4(&w.ip()));
    Profile {
        uuid: uuid_for(&id),
        id,
        kind: Kind::Wifi,
        settings,
    }
}

fn connection(id: &str, kind: &str) -> HashMap<String, OwnedValue> {
    HashMap::from([
        ("id".to_owned(), owned(Value::from(id))),
        ("uuid".to_owned(), owned(Value::from(uuid_for(id)))),
        ("type".to_owned(), owned(Value::from(kind))),
        ("autoconnect".to_owned(), owned(Value::from(true))),
        // Above NetworkManager's automatic wired profile (priority 0).
        ("autoconnect-priority".to_owned(), owned(Value::from(10i32))),
    ])
}

fn ipv4(ip: &Ipv4) -> HashMap<String, OwnedValue> {
    let mut out = HashMap::new();
    match (ip.ipv4, &ip.address) {
        (Ipv4Method::Static, Some(address)) => {
            let (addr, prefix) = address.parts();
            out.insert("method".to_owned(), owned(Value::from("manual")));
            let entry: HashMap<&str, Value<'_>> = HashMap::from([
                ("address", Value::from(addr.to_string())),
                ("prefix", Value::from(prefix)),
            ]);
            out.insert("address-data".to_owned(), owned(Value::from(vec![entry])));
            if let Some(gateway) = ip.gateway {
                out.insert("gateway".to_owned(), owned(Value::from(gateway.to_string())));
            }
        }
        _ => {
            out.insert("method".to_owned(), owned(Value::from("auto")));
        }
    }
    if !ip.dns.is_empty() {
        out.insert("dns".to_owned(), owned(Value::from(dns_array(&ip.dns))));
        if ip.ipv4 == Ipv4Method::Dhcp {
            // The listed servers replace DHCP's, as a person writing them means.
            out.insert("ignore-auto-dns".to_owned(), owned(Value::from(true)));
        }
    }
    out
}

/// NetworkManager's `ipv4.dns`: addresses as `u32` holding the address's
/// bytes in network order in memory.
fn dns_array(dns: &[Ipv4Addr]) -> Vec<u32> {
    dns.iter().map(|a| u32::from_ne_bytes(a.octets())).collect()
}

fn owned(v: Value<'_>) -> OwnedValue {
    // Only plain values (strings, numbers, arrays, dicts) are built here,
    // and those never hold file descriptors, the one thing that cannot be
    // owned.
    v.try_into_owned().unwrap_or_else(|_| OwnedValue::from(false))
}

/// A stable UUID (RFC 4122 form, version 5-like from SHA-256) for a
/// profile id.
pub fn uuid_for(id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("containeros-nm\0{id}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest.as_ref()[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s<'a>(p: &'a Profile, section: &str, key: &str) -> &'a OwnedValue {
        p.settings
            .get(section)
            .and_then(|s| s.get(key))
            .unwrap_or_else(|| panic!("{section}.{key} missing in {:?}", p.settings))
    }

    #[test]
    fn plain_dhcp_ethernet_needs_no_profile() {
        assert!(profiles(&Provision::default()).is_empty());
    }

    #[test]
    fn wifi_psk_static_and_eap() {
        let p = crate::parse(
            "[ethernet]\nipv4 = \"static\"\naddress = \"10.0.0.5/24\"\ngateway = \"10.0.0.1\"\ndns = [\"10.0.0.1\"]\n\
             [[wifi]]\nssid = \"Shop\"\npsk = \"correct horse\"\n\
             [[wifi]]\nssid = \"Corp\"\neap = \"peap\"\nidentity = \"me\"\npassword = \"pw\"\n",
        )
        .expect("valid");
        let all = profiles(&p);
        assert_eq!(
            all.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            [
                "containeros-ethernet",
                "containeros-wifi-Shop",
                "containeros-wifi-Corp"
            ]
        );
        let eth = &all[0];
        assert_eq!(
            s(eth, "ipv4", "method"),
            &OwnedValue::from(zbus::zvariant::Str::from("manual"))
        );
        assert_eq!(
            s(eth, "ipv4", "dns"),
            &owned(Value::from(vec![u32::from_ne_bytes([10, 0, 0, 1])]))
        );
        let shop = &all[1];
        assert_eq!(
            s(shop, "802-11-wireless", "ssid"),
            &owned(Value::from(b"Shop".to_vec()))
        );
        assert_eq!(
            s(shop, "802-11-wireless-security", "key-mgmt"),
            &owned(Value::from("wpa-psk"))
        );
        assert_eq!(
            s(shop, "connection", "uuid"),
            &owned(Value::from(uuid_for("containeros-wifi-Shop")))
        );
        let corp = &all[2];
        assert_eq!(s(corp, "802-1x", "eap"), &owned(Value::from(vec!["peap"])));
        assert_eq!(s(corp, "802-1x", "phase2-auth"), &owned(Value::from("mschapv2")));
        assert_eq!(uuid_for("x"), uuid_for("x"));
        assert!(crate::identity::is_uuid(&uuid_for("x")));
    }
}
