//! The host-side release commands, as a publisher runs them: keygen, sign,
//! co-sign for a key rotation, verify — and tampering caught.

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output};

use containeros_tests::bin;

fn containeros(args: &[&str]) -> Output {
    Command::new(bin("containeros"))
        .args(args)
        .output()
        .expect("run containeros")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn keygen_sign_cosign_verify_and_tamper() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| dir.path().join(name).display().to_string();

    for name in ["old", "new"] {
        let out = containeros(&[
            "release",
            "keygen",
            "--secret",
            &p(&format!("{name}.key")),
            "--public",
            &p(&format!("{name}.pub")),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let mode = std::fs::metadata(p(&format!("{name}.key")))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "secret key is private");
    }
    let out = containeros(&["release", "keygen", "--secret", &p("old.key")]);
    assert!(
        !out.status.success(),
        "an existing secret key is never overwritten"
    );
    let old_pub = std::fs::read_to_string(p("old.pub"))
        .expect("pub")
        .trim()
        .to_owned();
    let new_pub = std::fs::read_to_string(p("new.pub"))
        .expect("pub")
        .trim()
        .to_owned();

    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 86_400;
    std::fs::write(
        p("manifest.json"),
        format!(
            r#"{{"format": 1, "version": 7, "name": "2026.11.7", "channel": "stable",
                "created": 1, "expires": {expires},
                "os": {{"version": "1.4.0", "size": 1024, "sha256": "{}", "path": "os/rootfs.ext4"}}}}"#,
            "0".repeat(64)
        ),
    )
    .expect("manifest");

    let out = containeros(&[
        "release",
        "sign",
        "--key",
        &p("old.key"),
        &p("manifest.json"),
        "-o",
        &p("release.json"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // Rotation: the new key co-signs the same envelope.
    let out = containeros(&[
        "release",
        "sign",
        "--key",
        &p("new.key"),
        &p("release.json"),
        "-o",
        &p("release.json"),
    ]);
    assert!(out.status.success(), "{}", text(&out));

    for key in [&old_pub, &new_pub] {
        let out = containeros(&["release", "verify", "--key", key, &p("release.json")]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("valid: release 2026.11.7 (version 7"),
            "{}",
            text(&out)
        );
    }

    let tampered = std::fs::read_to_string(p("release.json"))
        .expect("read")
        .replace("1024", "2048");
    std::fs::write(p("tampered.json"), tampered).expect("write");
    let out = containeros(&["release", "verify", "--key", &old_pub, &p("tampered.json")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("does not match the manifest"),
        "{}",
        text(&out)
    );

    let stranger = containeros(&[
        "release",
        "keygen",
        "--secret",
        &p("x.key"),
        "--public",
        &p("x.pub"),
    ]);
    assert!(stranger.status.success());
    let x_pub = std::fs::read_to_string(p("x.pub"))
        .expect("pub")
        .trim()
        .to_owned();
    let out = containeros(&["release", "verify", "--key", &x_pub, &p("release.json")]);
    assert!(
        text(&out).contains("not signed by a trusted key"),
        "{}",
        text(&out)
    );
}
