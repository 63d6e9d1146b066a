//! The manifest and the envelope it travels in.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::keys::SigningKey;

/// The manifest format this agent understands. A publisher that needs new
/// fields raises it; older agents then refuse the manifest by name instead
/// of misreading it.
pub const FORMAT: u32 = 1;

/// What a release is. Fields are refused when unknown (within one format,
/// a stray field is a publishing mistake, not a newer publisher).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// Release sequence number: strictly increasing within a channel. This,
    /// not `name`, decides what is newer.
    pub version: u64,
    /// Release name for people, e.g. "2026.11.1".
    pub name: String,
    pub channel: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Seconds since the Unix epoch after which the manifest is refused, so
    /// a captured old manifest cannot be replayed forever.
    pub expires: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<OsImage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps: Option<AppsRef>,
    /// Staged rollout: the share of devices (0–100) that take this release
    /// from the channel, chosen by a stable per-device hash. Absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<u8>,
}

/// The OS root filesystem image of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsImage {
    /// The OS version (os-release VERSION_ID) the image boots as.
    pub version: String,
    /// Image size in bytes: checked against the slot before writing.
    pub size: u64,
    pub sha256: Digest,
    /// Where the image is, relative to the manifest's URL or directory.
    pub path: String,
    /// The image's chunk archive (bitar), relative like `path`: a device
    /// that has it clones the image from its running slot and fetches only
    /// the chunks it lacks. Absent: the whole image is fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    /// Binary patches to this image from earlier OS versions: a device that
    /// runs one of them fetches the patch instead of chunks. Absent or
    /// empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<OsPatch>,
}

/// A binary patch (VCDIFF, Brotli-compressed as a whole) that turns the
/// image of OS version `from_version` into this release's image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsPatch {
    /// The OS version (os-release VERSION_ID) the patch applies to.
    pub from_version: String,
    /// SHA-256 of that version's image, the patch's seed.
    pub from_sha256: Digest,
    /// The patch file, relative like the image's `path`.
    pub path: String,
    /// Size and SHA-256 of the patch file as served.
    pub size: u64,
    pub sha256: Digest,
}

/// The app release (Compose file) of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppsRef {
    pub size: u64,
    pub sha256: Digest,
    pub path: String,
}

/// A SHA-256 digest, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Digest(out)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

impl std::str::FromStr for Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("\"{s}\" is not a SHA-256 digest (64 lowercase hex digits)");
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(chunk).map_err(|_| bad())?;
            out[i] = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
        }
        Ok(Digest(out))
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The file a channel serves: the manifest's exact bytes and signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The manifest as signed (JSON text).
    pub signed: String,
    pub signatures: Vec<SignatureEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    /// Id of the signing key (hex), to find it among the trusted ones.
    pub key: String,
    /// ed25519 signature, base64.
    pub sig: String,
}

impl Envelope {
    /// Serialises `manifest` and signs it with `key`.
    pub fn sign(manifest: &Manifest, key: &SigningKey) -> Result<Self, String> {
        let signed = serde_json::to_string_pretty(manifest).map_err(|e| e.to_string())?;
        let mut envelope = Envelope {
            signed,
            signatures: Vec::new(),
        };
        envelope.add_signature(key);
        Ok(envelope)
    }

    /// Adds (or replaces) `key`'s signature: co-signing for key rotation.
    pub fn add_signature(&mut self, key: &SigningKey) {
        let id = key.public().id().to_string();
        self.signatures.retain(|s| s.key != id);
        self.signatures.push(SignatureEntry {
            key: id,
            sig: STANDARD.encode(key.sign(self.signed.as_bytes())),
        });
    }

    pub fn to_json(&self) -> String {
        // Serialising plain strings cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}
