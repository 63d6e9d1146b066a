//! A client for the distribution API (v2) — just what a pull needs:
//! manifests (image manifests, manifest lists, OCI indexes) and blobs,
//! anonymous or with credentials, with bearer-token or basic auth.
//!
//! HTTP goes through the agent's one `reqwest` client (rustls on `ring`),
//! passed in. Registries on loopback, and hosts listed as plain-HTTP, are
//! reached over `http://`; every other registry over `https://`.
//! Nothing here trusts what it fetched: the store checks digests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use base64::Engine as _;
use containeros_apps::release::ImageRef;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// Manifests are small; anything larger is refused rather than buffered.
const MAX_MANIFEST: usize = 4 << 20;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <password>)", self.username)
    }
}

/// A repository on a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    /// `http://127.0.0.1:5000`, `https://registry.example`.
    pub base: String,
    /// `host[:port]`.
    pub host: String,
    /// The repository path, `acme/web`.
    pub name: String,
}

/// A manifest as fetched, with the digest of its exact bytes.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// `Content-Type`, when the registry sent one.
    pub media_type: Option<String>,
    pub digest: Digest,
    pub url: String,
}

#[derive(Debug)]
pub struct Registry {
    http: reqwest::Client,
    default_registry: Option<String>,
    plain_http: Vec<String>,
    credentials: BTreeMap<String, Credentials>,
    /// `Authorization` header per `host/repository`, learnt from challenges.
    auth: Mutex<HashMap<String, String>>,
}

impl Registry {
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            default_registry: None,
            plain_http: Vec::new(),
            credentials: BTreeMap::new(),
            auth: Mutex::default(),
        }
    }

    /// The registry of references that name none (`acme/web:1`).
    pub fn default_registry(mut self, host: Option<String>) -> Self {
        self.default_registry = host;
        self
    }

    /// Hosts (`host[:port]`) reached over plain HTTP besides loopback ones.
    pub fn plain_http(mut self, hosts: Vec<String>) -> Self {
        self.plain_http = hosts;
        self
    }

    pub fn credentials(mut self, host: String, credentials: Credentials) -> Self {
        self.credentials.insert(host, credentials);
        self
    }

    /// Where `image` lives.
    pub fn repository(&self, image: &ImageRef) -> Result<Repository> {
        let host = image
            .registry
            .clone()
            .or_else(|| self.default_registry.clone())
            .ok_or_else(|| Error::Reference {
                reference: image.to_string(),
                reason: "it names no registry and no default registry is configured: write the registry host in the reference (host[:port]/repository)".to_owned(),
            })?;
        let scheme = if is_loopback(&host) || self.plain_http.iter().any(|h| h == &host) {
            "http"
        } else {
            "https"
        };
        Ok(Repository {
            base: format!("{scheme}://{host}"),
            host,
            name: image.repository.clone(),
        })
    }

    /// The manifest `reference` (a tag or a digest) of `repo`, verified
    /// against `reference` when that is a digest.
    pub async fn manifest(&self, repo: &Repository, reference: &str) -> Result<Fetched> {
        let url = format!("{}/v2/{}/manifests/{reference}", repo.base, repo.name);
        let accept = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST].join(", ");
        let response = self.get(repo, &url, Some(&accept), None).await?;
        let media_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        if response.content_length().is_some_and(|l| l > MAX_MANIFEST as u64) {
            return Err(Error::Manifest {
                url,
                reason: format!("larger than {MAX_MANIFEST} bytes"),
            });
        }
        let bytes = read_limited(response, &url, MAX_MANIFEST).await?;
        let digest = Digest::of(&bytes);
        if let Ok(expected) = Digest::parse(reference)
            && expected != digest
        {
            return Err(Error::DigestMismatch {
                url,
                expected: expected.to_string(),
                actual: digest.to_string(),
                bytes: bytes.len() as u64,
            });
        }
        Ok(Fetched {
            bytes,
            media_type,
            digest,
            url,
        })
    }

    /// The blob `digest`, from byte `from` on (the response is `206` when
    /// the registry honoured the range, `200` with the whole blob if not).
    pub async fn blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        from: u64,
    ) -> Result<(String, reqwest::Response)> {
        let url = format!("{}/v2/{}/blobs/{digest}", repo.base, repo.name);
        let response = self.get(repo, &url, None, (from > 0).then_some(from)).await?;
        Ok((url, response))
    }

    async fn get(
        &self,
        repo: &Repository,
        url: &str,
        accept: Option<&str>,
        from: Option<u64>,
    ) -> Result<reqwest::Response> {
        let key = format!("{}/{}", repo.host, repo.name);
        let mut retried = false;
        loop {
            let mut request = self.http.get(url);
            if let Some(accept) = accept {
                request = request.header(reqwest::header::ACCEPT, accept);
            }
            if let Some(from) = from {
                request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
            }
            let cached = self
                .auth
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&key)
                .cloned();
            if let Some(auth) = &cached {
                request = request.header(reqwest::header::AUTHORIZATION, auth);
            }
            let response = request.send().await.map_err(|source| Error::Http {
                url: url.to_owned(),
                source,
            })?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            if status == reqwest::StatusCode::UNAUTHORIZED && !retried {
                retried = true;
                let challenge = response
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .ok_or_else(|| Error::Auth {
                        url: url.to_owned(),
                        reason: "401 without a WWW-Authenticate challenge".to_owned(),
                    })?;
                let auth = self.authorize(repo, url, &challenge).await?;
                self.auth
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key.clone(), auth);
                continue;
            }
            let code = status.as_u16();
            let body = response.text().await.unwrap_or_default();
            let body: String = body.trim().chars().take(300).collect();
            if code == 401 || code == 403 {
                let hint = if self.credentials.contains_key(&repo.host) {
                    "check the credentials configured for this registry"
                } else {
                    "the registry wants credentials: configure them for this registry"
                };
                return Err(Error::Auth {
                    url: url.to_owned(),
                    reason: format!("{code} {body} ({hint})"),
                });
            }
            return Err(Error::Status {
                url: url.to_owned(),
                status: code,
                body,
            });
        }
    }

    /// Answers a `WWW-Authenticate` challenge: a bearer token from the
    /// challenge's realm (with credentials when configured), or basic auth.
    async fn authorize(&self, repo: &Repository, url: &str, challenge: &str) -> Result<String> {
        let auth_error = |reason: String| Error::Auth {
            url: url.to_owned(),
            reason,
        };
        let (scheme, params) = parse_challenge(challenge)
            .ok_or_else(|| auth_error(format!("unreadable challenge `{challenge}`")))?;
        let credentials = self.credentials.get(&repo.host);
        let basic = |c: &Credentials| {
            let pair = format!("{}:{}", c.username, c.password);
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
        };
        if scheme.eq_ignore_ascii_case("basic") {
            return credentials.map(basic).ok_or_else(|| {
                auth_error(
                    "the registry wants a user name and password: configure them for this registry"
                        .to_owned(),
                )
            });
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(auth_error(format!("unsupported auth scheme `{scheme}`")));
        }
        let realm = params
            .get("realm")
            .ok_or_else(|| auth_error(format!("bearer challenge without a realm: `{challenge}`")))?;
        let mut token_url =
            reqwest::Url::parse(realm).map_err(|e| auth_error(format!("token realm `{realm}`: {e}")))?;
        {
            let mut query = token_url.query_pairs_mut();
            if let Some(service) = params.get("service") {
                query.append_pair("service", service);
            }
            let scope = params
                .get("scope")
                .cloned()
                .unwrap_or_else(|| format!("repository:{}:pull", repo.name));
            query.append_pair("scope", &scope);
        }
        let shown = token_url.to_string();
        let mut request = self.http.get(token_url);
        if let Some(c) = credentials {
            request = request.header(reqwest::header::AUTHORIZATION, basic(c));
        }
        let response = request.send().await.map_err(|source| Error::Http {
            url: shown.clone(),
            source,
        })?;
        let status = response.status();
        let body = read_limited(response, &shown, 1 << 20).await?;
        if !status.is_success() {
            return Err(auth_error(format!(
                "token service {shown} answered {status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            )));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let token: Token =
            serde_json::from_slice(&body).map_err(|e| auth_error(format!("token service {shown}: {e}")))?;
        token
            .token
            .or(token.access_token)
            .filter(|t| !t.is_empty())
            .map(|t| format!("Bearer {t}"))
            .ok_or_else(|| auth_error(format!("token service {shown} sent no token")))
    }
}

/// Registry credentials from a Docker `config.json` (`{"auths": {"host":
/// {"auth": base64("user:password")}}}`, or `username`/`password`), the
/// file operators already have from `docker login`. The error names the
/// file and what is wrong with it.
pub fn docker_auths(path: &std::path::Path) -> Result<Vec<(String, Credentials)>> {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let bad = |reason: String| Error::Record {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(Error::io("reading", path))?;
    let file: File =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a Docker config.json: {e}")))?;
    let mut out = Vec::new();
    for (host, entry) in file.auths {
        // `docker login` may key by URL: keep the host[:port].
        let key = host
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let credentials = match (entry.auth, entry.username, entry.password) {
            (Some(auth), _, _) if !auth.is_empty() => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| bad(format!("auths.{host}.auth is not base64 of \"user:password\"")))?;
                let (username, password) = decoded
                    .split_once(':')
                    .ok_or_else(|| bad(format!("auths.{host}.auth is not base64 of \"user:password\"")))?;
                Credentials {
                    username: username.to_owned(),
                    password: password.to_owned(),
                }
            }
            (_, Some(username), Some(password)) => Credentials { username, password },
            _ => {
                return Err(bad(format!(
                    "auths.{host} has neither auth nor username and password"
                )));
            }
        };
        out.push((key, credentials));
    }
    Ok(out)
}

async fn read_limited(mut response: reqwest::Response, url: &str, limit: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|source| Error::Http {
        url: url.to_owned(),
        source,
    })? {
        if out.len() + chunk.len() > limit {
            return Err(Error::Manifest {
                url: url.to_owned(),
                reason: format!("larger than {limit} bytes"),
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `Bearer realm="…",service="…",scope="…"` → (`Bearer`, params).
pub fn parse_challenge(header: &str) -> Option<(String, BTreeMap<String, String>)> {
    let header = header.trim();
    let (scheme, mut rest) = match header.split_once(' ') {
        Some((s, r)) => (s, r.trim()),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.insert(key, value);
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme.to_owned(), params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_are_parsed_with_commas_inside_quotes() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .expect("challenge parses");
        assert_eq!(scheme, "Bearer");
        assert_eq!(params["realm"], "https://auth.example/token");
        assert_eq!(params["service"], "registry.example");
        assert_eq!(params["scope"], "repository:a/b:pull,push");
        let (scheme, params) = parse_challenge(r#"Basic realm="Registry Realm""#).expect("basic parses");
        assert_eq!(scheme, "Basic");
        assert_eq!(params["realm"], "Registry Realm");
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
    }

    #[test]
    fn docker_config_auths_are_read_by_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths": {"https://registry.example/v1/": {"auth": "dXNlcjpwYTpzcw=="}, "lab.local:5000": {"username": "u", "password": "p"}}}"#,
        )
        .expect("write");
        let auths = docker_auths(&path).expect("parses");
        assert_eq!(auths.len(), 2);
        let example = auths
            .iter()
            .find(|(h, _)| h == "registry.example")
            .expect("by host");
        assert_eq!(
            (example.1.username.as_str(), example.1.password.as_str()),
            ("user", "pa:ss")
        );
        assert!(
            auths
                .iter()
                .any(|(h, c)| h == "lab.local:5000" && c.username == "u")
        );
        std::fs::write(&path, r#"{"auths": {"x": {"auth": "!!"}}}"#).expect("write");
        let err = docker_auths(&path).expect_err("bad auth").to_string();
        assert!(
            err.contains("config.json") && err.contains("auths.x.auth"),
            "{err}"
        );
    }

    #[test]
    fn loopback_registries_use_plain_http() {
        let http =
            containeros_update::http::client(None, false, containeros_update::http::Timeouts::default())
                .expect("HTTP client");
        let registry = Registry::new(http).plain_http(vec!["lab.local:5000".into()]);
        let repo = |r: &str| {
            let image: ImageRef = r.parse().expect("test reference");
            registry.repository(&image).expect("repository").base
        };
        assert_eq!(repo("127.0.0.1:5000/a/b:1"), "http://127.0.0.1:5000");
        assert_eq!(repo("localhost:5000/a:1"), "http://localhost:5000");
        assert_eq!(repo("[::1]:5000/a:1"), "http://[::1]:5000");
        assert_eq!(repo("lab.local:5000/a:1"), "http://lab.local:5000");
        assert_eq!(repo("registry.example/a:1"), "https://registry.example");
        let bare: ImageRef = "acme/web:1".parse().expect("test reference");
        assert!(registry.repository(&bare).is_err());
    }
}
