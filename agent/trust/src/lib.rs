//! Trust in releases: what a release manifest says, who may say it, and the
//! rules a device applies before acting on one.
//!
//! - [`Manifest`]: the signed description of a release (sequence number,
//!   expiry, the OS image's size and SHA-256, the app release's digest).
//! - [`Envelope`]: the file a channel serves. The manifest travels as the
//!   exact bytes that were signed (a JSON string inside the envelope), so no
//!   JSON canonicalisation is needed and `jq -r .signed` shows it. Any number
//!   of signatures may accompany it: during a key rotation a release is
//!   signed by the old and the new key, and devices trusting either accept it.
//! - [`verify`]: signature first (nothing in the payload is looked at before
//!   a trusted key has signed it), then format, expiry and version rules —
//!   the version must be higher than the installed one unless a downgrade is
//!   explicitly allowed. The time is an argument, never read here.
//! - [`SigningKey`]: the host side, generating keys and signing.
//!
//! Signatures are ed25519 over a domain-separated message
//! (`"containeros-release-v1\0" ++ manifest bytes`), so a signature made for
//! anything else with the same key can never pass as a release signature.

mod keys;
mod manifest;
mod verify;

pub use keys::{KeyId, PublicKey, SigningKey};
pub use manifest::{AppsRef, Digest, Envelope, FORMAT, Manifest, OsImage, OsPatch, SignatureEntry};
pub use verify::{Checks, TrustError, Verified, verify};

/// Prefix of every signed message: binds signatures to this use.
pub(crate) const DOMAIN: &[u8] = b"containeros-release-v1\0";
