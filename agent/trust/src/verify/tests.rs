use super::*;
use crate::{Digest, OsImage, SigningKey};

fn manifest(version: u64) -> Manifest {
    Manifest {
        format: FORMAT,
        version,
        name: format!("2026.11.{version}"),
        channel: "stable".into(),
        created: 1_000,
        expires: 2_000,
        os: Some(OsImage {
            version: "1.4.0".into(),
            size: 512 << 20,
            sha256: Digest::of(b"rootfs"),
            path: "os/rootfs.ext4".into(),
            archive: None,
            patches: Vec::new(),
        }),
        apps: None,
        rollout: None,
    }
}

fn checks() -> Checks {
    Checks {
        now: 1_500,
        installed_version: Some(4),
        allow_downgrade: false,
    }
}

fn signed(version: u64, key: &SigningKey) -> Vec<u8> {
    Envelope::sign(&manifest(version), key)
        .expect("sign")
        .to_json()
        .into_bytes()
}

#[test]
fn a_signed_newer_manifest_is_accepted() {
    let key = SigningKey::generate().expect("key");
    let ok = verify(&signed(5, &key), &[key.public()], &checks()).expect("valid");
    assert_eq!(ok.manifest, manifest(5));
    assert_eq!(ok.signed_by, key.public().id());
}

#[test]
fn every_altered_byte_of_the_payload_is_caught() {
    let key = SigningKey::generate().expect("key");
    let envelope = Envelope::sign(&manifest(5), &key).expect("sign");
    // Flip each byte of the signed text in turn (keeping it valid UTF-8 by
    // flipping within ASCII): every variant must fail the signature.
    for i in 0..envelope.signed.len() {
        let mut altered = envelope.clone();
        let mut bytes = altered.signed.clone().into_bytes();
        bytes[i] ^= 0x01;
        let Ok(text) = String::from_utf8(bytes) else {
            continue;
        };
        altered.signed = text;
        let err = verify(altered.to_json().as_bytes(), &[key.public()], &checks()).expect_err("altered");
        assert_eq!(
            err,
            TrustError::BadSignature {
                key: key.public().id()
            },
            "byte {i}"
        );
    }
}

#[test]
fn refusals_name_what_is_wrong() {
    let key = SigningKey::generate().expect("key");
    let other = SigningKey::generate().expect("key");
    let trusted = [key.public()];
    let c = checks();

    let err = verify(&signed(5, &other), &trusted, &c).expect_err("untrusted");
    assert!(matches!(err, TrustError::UntrustedSigners { .. }), "{err}");
    assert!(
        err.to_string().contains(&other.public().id().to_string()),
        "{err}"
    );

    let err = verify(&signed(4, &key), &trusted, &c).expect_err("same version");
    assert_eq!(
        err,
        TrustError::NotNewer {
            offered: 4,
            installed: 4
        }
    );
    let err = verify(&signed(3, &key), &trusted, &c).expect_err("downgrade");
    assert_eq!(
        err,
        TrustError::NotNewer {
            offered: 3,
            installed: 4
        }
    );

    let late = Checks {
        now: 2_000,
        ..c.clone()
    };
    let err = verify(&signed(5, &key), &trusted, &late).expect_err("expired");
    assert_eq!(
        err,
        TrustError::Expired {
            expires: 2_000,
            now: 2_000
        }
    );

    assert_eq!(
        verify(&signed(5, &key), &[], &c).expect_err("no keys"),
        TrustError::NoTrustedKeys
    );
    assert!(matches!(
        verify(b"<html>", &trusted, &c),
        Err(TrustError::ParseEnvelope(_))
    ));

    let mut envelope = Envelope::sign(&manifest(5), &key).expect("sign");
    envelope.signatures.clear();
    let err = verify(envelope.to_json().as_bytes(), &trusted, &c).expect_err("unsigned");
    assert!(err.to_string().contains("signed by: none"), "{err}");
}

#[test]
fn a_forced_downgrade_is_accepted() {
    let key = SigningKey::generate().expect("key");
    let forced = Checks {
        allow_downgrade: true,
        ..checks()
    };
    assert_eq!(
        verify(&signed(2, &key), &[key.public()], &forced)
            .expect("forced")
            .manifest
            .version,
        2
    );
    let fresh = Checks {
        installed_version: None,
        ..checks()
    };
    assert!(
        verify(&signed(1, &key), &[key.public()], &fresh).is_ok(),
        "first install"
    );
}

#[test]
fn key_rotation_with_co_signed_releases() {
    let old = SigningKey::generate().expect("key");
    let new = SigningKey::generate().expect("key");
    let mut envelope = Envelope::sign(&manifest(5), &old).expect("sign");
    envelope.add_signature(&new);
    envelope.add_signature(&new); // re-signing replaces, never duplicates
    assert_eq!(envelope.signatures.len(), 2);
    let bytes = envelope.to_json().into_bytes();
    for trusted in [
        vec![old.public()],
        vec![new.public()],
        vec![new.public(), old.public()],
    ] {
        assert!(
            verify(&bytes, &trusted, &checks()).is_ok(),
            "trusting {trusted:?}"
        );
    }
    // After the rotation the old key is dropped from devices and releases.
    let only_new = Envelope::sign(&manifest(6), &new)
        .expect("sign")
        .to_json()
        .into_bytes();
    assert!(verify(&only_new, &[old.public()], &checks()).is_err());
}

#[test]
fn a_newer_format_is_named() {
    let key = SigningKey::generate().expect("key");
    let mut envelope = Envelope::sign(&manifest(5), &key).expect("sign");
    envelope.signed = envelope
        .signed
        .replace("\"format\": 1", "\"format\": 2, \"delta\": {}");
    envelope.signatures.clear();
    envelope.add_signature(&key);
    let err = verify(envelope.to_json().as_bytes(), &[key.public()], &checks()).expect_err("format");
    assert_eq!(err, TrustError::UnsupportedFormat { found: 2 });
}

#[test]
fn keys_round_trip_through_their_text_forms() {
    let key = SigningKey::generate().expect("key");
    let again = SigningKey::parse(&key.to_text()).expect("parse secret");
    assert_eq!(again.public(), key.public());
    let public = crate::PublicKey::parse(&key.public().to_string()).expect("parse public");
    assert_eq!(public, key.public());
    assert!(
        crate::PublicKey::parse("AAAA")
            .expect_err("short")
            .contains("32 bytes")
    );
    assert!(SigningKey::parse("hello").is_err());
    let digest: Digest = "ab".repeat(32).parse().expect("digest");
    assert_eq!(digest.to_string(), "ab".repeat(32));
    assert!("AB".repeat(32).parse::<Digest>().is_err(), "uppercase refused");
}

#[test]
fn os_patches_are_optional_and_round_trip() {
    // A manifest from a publisher without patches names none.
    let mut m = manifest(5);
    let text = serde_json::to_string(&m).expect("serialise");
    assert!(!text.contains("patches"), "{text}");
    let back: Manifest = serde_json::from_str(&text).expect("parse");
    assert_eq!(back, m);
    if let Some(os) = m.os.as_mut() {
        os.patches.push(crate::OsPatch {
            from_version: "1.3.0".into(),
            from_sha256: Digest::of(b"old rootfs"),
            path: "os/from-1.3.0.patch".into(),
            size: 1234,
            sha256: Digest::of(b"patch"),
        });
    }
    let text = serde_json::to_string(&m).expect("serialise");
    let back: Manifest = serde_json::from_str(&text).expect("parse");
    assert_eq!(back, m);
}
