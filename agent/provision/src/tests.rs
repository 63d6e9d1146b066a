use super::*;
use std::path::Path;

fn err(text: &str) -> String {
    let located = parse(text).expect_err("should be refused");
    let path = std::path::PathBuf::from("config.toml");
    ProvisionError::Invalid {
        path,
        located: Box::new(located),
    }
    .to_string()
}

#[test]
fn template_is_valid_and_sets_nothing() {
    assert_eq!(parse(TEMPLATE).expect("template parses"), Provision::default());
    assert_eq!(agent_overrides(&Provision::default(), Path::new("/ca.pem")), "");
}

#[test]
fn full_file() {
    let p = parse(
        "\u{feff}[device]\nhostname = \"kiosk-01\"\ndevelopment = true\n\
         [channel]\nurl = \"https://updates.example.com/stable\"\n\
         trusted_keys = [\"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\"]\n\
         [engine]\nkind = \"podman\"\n\
         [ssh]\nauthorized_keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0 me@laptop\"]\n\
         [time]\nservers = [\"pool.ntp.org\", \"10.0.0.1\"]\n",
    )
    .expect("valid");
    assert_eq!(p.device.hostname.as_ref().map(Hostname::as_str), Some("kiosk-01"));
    let overrides = agent_overrides(&p, Path::new("/ca.pem"));
    assert_eq!(
        overrides,
        "[channel]\nurl = \"https://updates.example.com/stable\"\n\
         [update]\ntrusted_keys = [\"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\"]\n\
         [apps]\ndevelopment = true\n\
         [engine]\nsocket = \"/run/podman/podman.sock\"\nunit = \"podman.socket\"\n"
    );
    // What the agent's configuration makes of it.
    let loaded = containeros_config_check(&overrides);
    assert!(loaded.contains("podman.sock"), "{loaded}");
}

/// The overrides must be a valid layer of the agent's configuration; the
/// config crate is not a dependency, so only TOML shape is checked here
/// (the system test loads them in the agent).
fn containeros_config_check(text: &str) -> String {
    let table: toml::Table = toml::from_str(text).expect("overrides are TOML");
    format!("{table:?}")
}

#[test]
fn errors_name_line_key_and_remedy() {
    let cases: &[(&str, &str)] = &[
        (
            "[device]\nhostnme = \"a\"\n",
            "config.toml:2:1: device.hostnme: unknown key `hostnme`; remove it or check its spelling (known keys here: `hostname` or `development`)",
        ),
        (
            "[device]\nhostname = \"-bad\"\n",
            "config.toml:2:12: device.hostname: \"-bad\" is not a host name",
        ),
        (
            "[[wifi]]\nssid = \"a\"\n\n[[wifi]]\nssid = \"b\"\npsk = \"short\"\n",
            "config.toml:6:7: wifi[1].psk: a WPA passphrase is 8 to 63 printable ASCII characters or 64 hex digits (this one has 5 characters)",
        ),
        (
            "[ethernet]\nipv4 = \"static\"\n",
            "config.toml:2:1: ethernet.ipv4: \"static\" needs an address",
        ),
        (
            "[ethernet]\naddress = \"10.0.0.2/24\"\n",
            "config.toml:2:1: ethernet.address: is only used with ipv4 = \"static\"",
        ),
        (
            "[[wifi]]\nssid = \"x\"\npsk = \"12345678\"\nopen = true\n",
            "config.toml:4:1: wifi[0].open: a network is either open",
        ),
        (
            "[[wifi]]\nssid = \"x\"\neap = \"peap\"\n",
            "config.toml:1:1: wifi[0].identity: is required with eap",
        ),
        (
            "[channel]\nurl = \"ftp://x\"\n",
            "config.toml:2:7: channel.url: \"ftp://x\" is not a channel",
        ),
        (
            "[channel]\ntrusted_keys = [\"nope\"]\n",
            "config.toml:2:16: channel.trusted_keys: \"nope\": an ed25519 public key is 32 bytes",
        ),
        (
            "[ssh]\nauthorized_keys = [\"hello\"]\n",
            "config.toml:2:19: ssh.authorized_keys: \"hello\" is not an OpenSSH public key line",
        ),
        ("[device\nhostname = \"a\"\n", "config.toml:1:8: "),
        (
            "[device]\nhostname = \"kiosk\"\n[channel]\nurl = \"https://upd\0\0\0\0",
            "config.toml:4:19: the file contains NUL bytes: it was not completely written",
        ),
        (
            "[device]\nhostname = \"kio",
            "config.toml:2:16: invalid basic string, expected `\"`; fix the file's TOML syntax",
        ),
    ];
    let mut wrong = Vec::new();
    for (text, wanted) in cases {
        let got = err(text);
        if !got.starts_with(wanted) {
            wrong.push(format!("{text:?}\n got: {got}\nwant: {wanted}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn secrets_never_show_in_errors_or_debug() {
    let got = err("[[wifi]]\nssid = \"x\"\npsk = \"hunter2\"\n");
    assert!(!got.contains("hunter2"), "{got}");
    let p = parse("[[wifi]]\nssid = \"x\"\npsk = \"hunter22\"\n").expect("valid");
    assert!(!format!("{p:?}").contains("hunter22"));
}

#[test]
fn dates() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_795_350_000), "2026-11-22T12:20:00Z");
}

const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBlTCCATugAwIBAgIURO/7+Mq0FTADe/IMfTFS1Y4umDwwCgYIKoZIzj0EAwIw
HzEdMBsGA1UEAwwUUHJvdmlzaW9uaW5nIHRlc3QgQ0EwIBcNMjYxMTIyMTUxOTAz
WhgPMjEyNjEwMjkxNTE5MDNaMB8xHTAbBgNVBAMMFFByb3Zpc2lvbmluZyB0ZXN0
IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEk1MyGThljUNaevgeSpsgl9uE
QPlXWvL8I2HcBXqk9j4MeXHOWCGbr6/3d4EpsSWb3J81RqrIjYoVtZ1ij1KRZqNT
MFEwHQYDVR0OBBYEFOA2L5XrkhFnZyiyXroaIRYMiZBgMB8GA1UdIwQYMBaAFOA2
L5XrkhFnZyiyXroaIRYMiZBgMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwID
SAAwRQIhAL3bwTPc+EajXdiZlza9Dzd91tOAI2tkDyFBa0BwI/uaAiAy/EHLROmB
IaWpsWA2Crr45QlfPpKzHTMZmnU+hWMdnQ==
-----END CERTIFICATE-----
";

#[test]
fn channel_ca_becomes_the_channel_ca_file() {
    let p = parse(&format!(
        "[channel]\nurl = \"https://updates.example.com/stable\"\nca = \"\"\"\n{TEST_CA}\"\"\"\n"
    ))
    .expect("valid");
    assert_eq!(p.channel.ca.as_ref().map(CaCertificates::as_str), Some(TEST_CA));
    let overrides = agent_overrides(&p, Path::new("/data/containeros/provision/channel-ca.pem"));
    assert_eq!(
        overrides,
        "[channel]\nurl = \"https://updates.example.com/stable\"\n\
         ca_file = \"/data/containeros/provision/channel-ca.pem\"\n"
    );
    // Two certificates (a chain or a rotation) are one bundle.
    parse(&format!("[channel]\nca = \"\"\"\n{TEST_CA}{TEST_CA}\"\"\"\n")).expect("two certificates");
}

#[test]
fn channel_ca_that_is_not_a_certificate_is_refused_at_its_line() {
    let e = err("[channel]\nca = \"my-ca.pem\"\n");
    assert!(e.starts_with("config.toml:2:"), "{e}");
    assert!(
        e.contains("channel.ca") && e.contains("holds no certificate"),
        "{e}"
    );
    let cut = &TEST_CA[..TEST_CA.len() - 30];
    let e = err(&format!("[channel]\nca = \"\"\"\n{cut}\n\"\"\"\n"));
    assert!(e.contains("has no -----END CERTIFICATE----- line"), "{e}");
    let garbled = TEST_CA.replace("MIIB", "!!!!");
    let e = err(&format!("[channel]\nca = \"\"\"\n{garbled}\"\"\"\n"));
    assert!(e.contains("is not a base64 DER certificate"), "{e}");
}
