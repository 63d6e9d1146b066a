//! Token auth as real registries do it: a private Docker Distribution
//! registry on loopback configured for bearer tokens, and a token service
//! written here that issues ES256 JWTs (signed with a certificate the
//! registry trusts) to a user with the right password. The pull follows
//! the registry's challenge to the token service with its credentials.

mod common;

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use common::{Layer, PUSH_TARGET, push_image};
use containeros_apps::release::ImageRef;
use containeros_native::{Credentials, Error, Platform, Registry, Store, pull};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SERVICE: &str = "containeros-test-registry";
const ISSUER: &str = "containeros-test-issuer";
const USER: &str = "tester";
const PASSWORD: &str = "s3cret";

struct Issuer {
    key: ring::signature::EcdsaKeyPair,
    cert_der: Vec<u8>,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Issuer {
    /// The issuer and its certificate (PEM) for the registry's bundle.
    fn new() -> (Self, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["token-issuer".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let signing = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .expect("signing key");
        (
            Self {
                key: signing,
                cert_der: cert.der().to_vec(),
            },
            cert.pem(),
        )
    }

    /// A JWT granting `actions` on repository `name`.
    fn token(&self, name: &str, actions: &[&str]) -> String {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let header = serde_json::json!({
            "alg": "ES256",
            "typ": "JWT",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.cert_der)],
        });
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": USER,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now - 10,
            "jti": format!("{now}-{name}"),
            "access": [{ "type": "repository", "name": name, "actions": actions }],
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let signature = self
            .key
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .expect("sign");
        format!("{signing_input}.{}", b64url(signature.as_ref()))
    }
}

/// The token service: `GET /token?service=…&scope=repository:<name>:pull`
/// with basic auth → `{"token": …}` granting pull; 401 without the right
/// password. Counts the tokens it issued.
async fn token_service(
    issuer: std::sync::Arc<Issuer>,
    issued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let issuer = std::sync::Arc::clone(&issuer);
            let issued = std::sync::Arc::clone(&issued);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&buf).into_owned();
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let expected = format!(
                    "basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
                )
                .to_lowercase();
                let authorized = request.lines().any(|l| {
                    l.to_lowercase().starts_with("authorization:")
                        && l.split_once(':')
                            .is_some_and(|(_, v)| v.trim().to_lowercase() == expected)
                });
                let url = reqwest::Url::parse(&format!("http://token{path}")).expect("token URL");
                let scope = url
                    .query_pairs()
                    .find(|(k, _)| k == "scope")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                let name = scope
                    .strip_prefix("repository:")
                    .and_then(|r| r.rsplit_once(':'))
                    .map(|(name, _)| name.to_owned())
                    .unwrap_or_default();
                let response = if authorized && !name.is_empty() {
                    issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = serde_json::json!({ "token": issuer.token(&name, &["pull"]) }).to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"wrong user or password"}]}"#;
                    format!(
                        "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_with_token_auth_is_pulled_from_with_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (issuer, cert_pem) = Issuer::new();
    let issuer = std::sync::Arc::new(issuer);
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let token_port = token_service(std::sync::Arc::clone(&issuer), std::sync::Arc::clone(&issued)).await;
    std::fs::write(dir.path().join("cert.pem"), cert_pem).expect("cert");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  token:\n    realm: http://127.0.0.1:{token_port}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {d}/cert.pem\n",
        d = dir.path().display()
    );
    std::fs::write(dir.path().join("config.yml"), config).expect("config");
    let mut registry = tokio::process::Command::new("docker-registry")
        .arg("serve")
        .arg(dir.path().join("config.yml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("docker-registry (Debian package docker-registry)");
    let host = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answer = common::http().get(format!("http://{host}/v2/")).send().await;
        if answer.is_ok_and(|r| r.status() == reqwest::StatusCode::UNAUTHORIZED) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the token-auth registry did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let repo = "containeros-test/native-auth";
    let push_token = format!("Bearer {}", issuer.token(repo, &["pull", "push"]));
    let layer = Layer::default().file("secret", 0o644, "behind a token\n");
    PUSH_TARGET
        .scope(
            (host.clone(), Some(push_token)),
            push_image(repo, Some("v1"), "linux/amd64", &[layer]),
        )
        .await;
    let image: ImageRef = format!("{host}/{repo}:v1").parse().expect("reference");
    let amd64: Platform = "linux/amd64".parse().expect("platform");

    // Without credentials: the token service refuses, and the error says where.
    let store = Store::open(&dir.path().join("store")).expect("store");
    let anonymous = Registry::new(common::http());
    let err = pull(&store, &anonymous, &image, &amd64, &|_| {})
        .await
        .expect_err("no credentials");
    assert!(
        matches!(err, Error::Auth { .. })
            && err.to_string().contains(&format!("127.0.0.1:{token_port}/token")),
        "{err}"
    );

    let with_credentials = Registry::new(common::http()).credentials(
        host.clone(),
        Credentials {
            username: USER.to_owned(),
            password: PASSWORD.to_owned(),
        },
    );
    let record = pull(&store, &with_credentials, &image, &amd64, &|_| {})
        .await
        .expect("pull with a token");
    let got =
        std::fs::read_to_string(store.layer_path(&record.layers[0]).join("secret")).expect("layer file");
    assert_eq!(got, "behind a token\n");
    // One token for the repository, reused for manifest, config and layer.
    assert_eq!(issued.load(std::sync::atomic::Ordering::SeqCst), 1);
    registry.kill().await.expect("stop the registry");
}
