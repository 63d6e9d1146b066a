//! Image references as the engine and registries understand them:
//! `[registry[:port]/]path[:tag][@sha256:<64 hex>]`.
//!
//! The grammar is the one of the distribution reference library that Docker
//! uses: the first `/`-separated component is a registry host only when it
//! contains a `.` or a `:` or is `localhost` (so `library/redis` is a path,
//! `registry.local:5000/app` has a registry). Names are not normalized
//! (`redis` is not rewritten to `docker.io/library/redis`): the engine does
//! that itself, and the reference is passed to it as written. Only `sha256`
//! digests are accepted, the only algorithm registries use.

use std::fmt;

use serde::Serialize;

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct ImageRef {
    /// Registry host with optional port, e.g. `registry.local:5000`.
    pub registry: Option<String>,
    /// The repository path, e.g. `library/redis` or `acme/web`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 lowercase hex>`.
    pub digest: Option<String>,
}

impl ImageRef {
    /// `[registry/]repository`, the name without tag or digest.
    pub fn name(&self) -> String {
        match &self.registry {
            Some(r) => format!("{r}/{}", self.repository),
            None => self.repository.clone(),
        }
    }

    /// `name@digest` when pinned: what the engine lists among an image's
    /// repository digests once it has pulled it.
    pub fn by_digest(&self) -> Option<String> {
        self.digest.as_ref().map(|d| format!("{}@{d}", self.name()))
    }

    /// The reference the engine pulls and stores the image under:
    /// `name@digest` when pinned, else `name:tag` (`latest` by default).
    pub fn engine_reference(&self) -> String {
        self.by_digest()
            .unwrap_or_else(|| format!("{}:{}", self.name(), self.tag.as_deref().unwrap_or("latest")))
    }

    /// Whether the reference names exactly one image (by digest).
    pub fn is_pinned(&self) -> bool {
        self.digest.is_some()
    }
}

impl From<ImageRef> for String {
    fn from(r: ImageRef) -> String {
        r.to_string()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ImageRef {
    type Err = String;

    /// Parses a reference; the error text is shown to users as is.
    fn from_str(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("the image reference is empty".to_owned());
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => (rest, Some(parse_digest(digest)?)),
            None => (text, None),
        };
        // A tag follows the last `:` unless a `/` comes after it (then that
        // `:` separated a registry port).
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(format!(
                "invalid tag `{tag}` in image `{text}`: a tag is up to 128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`"
            ));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                if !valid_registry(first) {
                    return Err(format!("invalid registry `{first}` in image `{text}`"));
                }
                (Some(first), path)
            }
            _ => (None, name),
        };
        if repository.is_empty() || !repository.split('/').all(valid_path_component) {
            return Err(format!(
                "invalid repository `{repository}` in image `{text}`: use lowercase letters, digits and single `.`, `_`, `__` or `-` separators"
            ));
        }
        Ok(ImageRef {
            registry: registry.map(str::to_owned),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }
}

fn parse_digest(digest: &str) -> Result<String, String> {
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return Err(format!(
            "invalid digest `{digest}`: expected `sha256:` and 64 hex digits"
        ));
    };
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "invalid digest `{digest}`: expected `sha256:` and 64 lowercase hex digits"
        ));
    }
    Ok(digest.to_owned())
}

fn valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric() || b == b'_')
        && tag.len() <= 128
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `host[:port]`, host being dotted DNS labels or a bracketed IPv6 address.
fn valid_registry(registry: &str) -> bool {
    let (host, port) = if let Some(after) = registry.strip_prefix('[') {
        match after.split_once(']') {
            Some((ip, rest)) => {
                if ip.is_empty() || !ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                    return false;
                }
                match rest {
                    "" => return true,
                    _ => match rest.strip_prefix(':') {
                        Some(port) => ("x", Some(port)),
                        None => return false,
                    },
                }
            }
            None => return false,
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    let host_ok = host.split('.').all(|label| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    port_ok && host_ok
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_references() {
        let r =
            |registry: Option<&str>, repository: &str, tag: Option<&str>, digest: Option<&str>| ImageRef {
                registry: registry.map(str::to_owned),
                repository: repository.to_owned(),
                tag: tag.map(str::to_owned),
                digest: digest.map(str::to_owned),
            };
        let table = [
            ("redis".to_owned(), r(None, "redis", None, None)),
            ("redis:7.2".to_owned(), r(None, "redis", Some("7.2"), None)),
            (
                "library/redis:7".to_owned(),
                r(None, "library/redis", Some("7"), None),
            ),
            (format!("redis@{D}"), r(None, "redis", None, Some(D))),
            (format!("redis:7@{D}"), r(None, "redis", Some("7"), Some(D))),
            (
                format!("registry.local:5000/acme/web:1.0@{D}"),
                r(Some("registry.local:5000"), "acme/web", Some("1.0"), Some(D)),
            ),
            (
                "localhost:5000/web".to_owned(),
                r(Some("localhost:5000"), "web", None, None),
            ),
            (
                "localhost/web".to_owned(),
                r(Some("localhost"), "web", None, None),
            ),
            (
                "127.0.0.1:5000/a/b/c".to_owned(),
                r(Some("127.0.0.1:5000"), "a/b/c", None, None),
            ),
            (
                "[::1]:5000/web:x".to_owned(),
                r(Some("[::1]:5000"), "web", Some("x"), None),
            ),
            (
                "ghcr.io/a_b/c-d.e__f:v_1".to_owned(),
                r(Some("ghcr.io"), "a_b/c-d.e__f", Some("v_1"), None),
            ),
        ];
        for (text, want) in table {
            let got = text.parse::<ImageRef>();
            assert_eq!(got, Ok(want), "{text}");
            assert_eq!(
                got.map(|r| r.to_string()),
                Ok(text.clone()),
                "round trip of {text}"
            );
        }
    }

    #[test]
    fn refuses_malformed_references() {
        let table = [
            ("", "empty"),
            ("Redis", "invalid repository"),
            ("redis:", "invalid tag"),
            ("redis:-x", "invalid tag"),
            ("redis@sha256:abc", "invalid digest"),
            ("redis@md5:0123", "invalid digest"),
            (
                "redis@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
                "invalid digest",
            ),
            ("a//b", "invalid repository"),
            ("a/-b", "invalid repository"),
            ("a/b.", "invalid repository"),
            ("a...b", "invalid repository"),
            ("reg.local:0/web", "invalid registry"),
            ("reg.local:x/web", "invalid registry"),
            ("bad_host.local/web", "invalid registry"),
            ("reg.local/", "invalid repository"),
        ];
        for (text, want) in table {
            match text.parse::<ImageRef>() {
                Ok(r) => panic!("{text} accepted as {r:?}"),
                Err(e) => assert!(e.contains(want), "{text}: {e}"),
            }
        }
    }

    #[test]
    fn by_digest_drops_the_tag() {
        let r: ImageRef = format!("reg.local:5000/web:1@{D}")
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.by_digest(), Some(format!("reg.local:5000/web@{D}")));
        assert!(r.is_pinned());
    }
}
