//! The device-side rules. Order matters: the envelope is parsed, a trusted
//! key's signature is verified over the exact payload bytes, and only then
//! is the payload read and its rules checked.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::keys::{KeyId, PublicKey};
use crate::manifest::{Envelope, FORMAT, Manifest};

/// What the device knows when it checks a manifest.
#[derive(Debug, Clone)]
pub struct Checks {
    /// Now, in seconds since the Unix epoch.
    pub now: u64,
    /// The version of the release installed now, if any.
    pub installed_version: Option<u64>,
    /// Accept a version that is not higher than the installed one (an
    /// explicit, logged choice: rolling a fleet back on purpose).
    pub allow_downgrade: bool,
}

/// A manifest that passed every rule, and the key that vouched for it.
#[derive(Debug, Clone)]
pub struct Verified {
    pub manifest: Manifest,
    pub signed_by: KeyId,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    #[error("the release file is not a signed manifest envelope: {0}")]
    ParseEnvelope(String),
    #[error("no trusted keys are configured (update.trusted_keys); add the release signing public key")]
    NoTrustedKeys,
    #[error(
        "the manifest is not signed by a trusted key (signed by: {signers}; trusted: {trusted}); \
         add the release key to update.trusted_keys if it is yours"
    )]
    UntrustedSigners { signers: String, trusted: String },
    #[error(
        "the signature of trusted key {key} does not match the manifest: the file was altered or corrupted"
    )]
    BadSignature { key: KeyId },
    #[error("the signed manifest is not valid: {0}")]
    ParseManifest(String),
    #[error(
        "manifest format {found} is newer than this agent understands ({FORMAT}); update the agent first"
    )]
    UnsupportedFormat { found: u32 },
    #[error(
        "the manifest expired at {expires} (now {now}, Unix seconds); publish a fresh one or check the device clock"
    )]
    Expired { expires: u64, now: u64 },
    #[error(
        "release version {offered} is not newer than the installed version {installed}; \
         refusing a downgrade (allow it explicitly to roll back on purpose)"
    )]
    NotNewer { offered: u64, installed: u64 },
}

/// Checks `envelope` (the bytes of the channel's file) against `trusted`
/// keys and `checks`.
pub fn verify(envelope: &[u8], trusted: &[PublicKey], checks: &Checks) -> Result<Verified, TrustError> {
    if trusted.is_empty() {
        return Err(TrustError::NoTrustedKeys);
    }
    let envelope: Envelope =
        serde_json::from_slice(envelope).map_err(|e| TrustError::ParseEnvelope(e.to_string()))?;

    // One good signature by a trusted key is enough. A bad signature by a
    // trusted key is reported as such (tampering), not as "untrusted".
    let mut bad: Option<KeyId> = None;
    let mut signed_by = None;
    for entry in &envelope.signatures {
        let Some(key) = trusted.iter().find(|k| k.id().to_string() == entry.key) else {
            continue;
        };
        let valid = STANDARD
            .decode(entry.sig.as_bytes())
            .is_ok_and(|sig| key.verifies(envelope.signed.as_bytes(), &sig));
        if valid {
            signed_by = Some(key.id());
            break;
        }
        bad.get_or_insert(key.id());
    }
    let signed_by = match (signed_by, bad) {
        (Some(id), _) => id,
        (None, Some(key)) => return Err(TrustError::BadSignature { key }),
        (None, None) => {
            let list = |v: Vec<String>| {
                if v.is_empty() {
                    "none".to_owned()
                } else {
                    v.join(", ")
                }
            };
            return Err(TrustError::UntrustedSigners {
                signers: list(envelope.signatures.iter().map(|s| s.key.clone()).collect()),
                trusted: list(trusted.iter().map(|k| k.id().to_string()).collect()),
            });
        }
    };

    // The format number is read before the full model so a newer format is
    // named as such rather than reported as an unknown field.
    #[derive(serde::Deserialize)]
    struct FormatOnly {
        format: u32,
    }
    let format: FormatOnly =
        serde_json::from_str(&envelope.signed).map_err(|e| TrustError::ParseManifest(e.to_string()))?;
    if format.format != FORMAT {
        return Err(TrustError::UnsupportedFormat { found: format.format });
    }
    let manifest: Manifest =
        serde_json::from_str(&envelope.signed).map_err(|e| TrustError::ParseManifest(e.to_string()))?;
    if checks.now >= manifest.expires {
        return Err(TrustError::Expired {
            expires: manifest.expires,
            now: checks.now,
        });
    }
    if let Some(installed) = checks.installed_version
        && manifest.version <= installed
        && !checks.allow_downgrade
    {
        return Err(TrustError::NotNewer {
            offered: manifest.version,
            installed,
        });
    }
    Ok(Verified { manifest, signed_by })
}

#[cfg(test)]
mod tests;
