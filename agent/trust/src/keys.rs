//! ed25519 keys. Public keys are written as standard base64 of their 32
//! bytes (what goes into `update.trusted_keys` in the agent's config); secret keys as
//! `containeros-secret-key-v1:` + base64 of the PKCS#8 document ring makes.
//! A key's id is the first 8 bytes of its SHA-256, in hex: short enough to
//! read in a log line, long enough that two keys of one fleet never collide.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};

use crate::DOMAIN;

const SECRET_PREFIX: &str = "containeros-secret-key-v1:";

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    bytes: [u8; 32],
    id: KeyId,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.bytes))
    }
}

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        Self { bytes, id: KeyId(id) }
    }

    /// Parses the base64 form; the error text is meant for users.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw = STANDARD
            .decode(text.trim())
            .map_err(|e| format!("not a base64 ed25519 public key ({e})"))?;
        let bytes: [u8; 32] = raw.try_into().map_err(|raw: Vec<u8>| {
            format!("an ed25519 public key is 32 bytes, this one is {}", raw.len())
        })?;
        Ok(Self::from_bytes(bytes))
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Checks `sig` over the domain-separated `payload`.
    pub(crate) fn verifies(&self, payload: &[u8], sig: &[u8]) -> bool {
        let mut message = Vec::with_capacity(DOMAIN.len() + payload.len());
        message.extend_from_slice(DOMAIN);
        message.extend_from_slice(payload);
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.bytes)
            .verify(&message, sig)
            .is_ok()
    }
}

/// A secret key, for the host-side release tooling.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public().id())
    }
}

impl SigningKey {
    pub fn generate() -> Result<Self, String> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "cannot generate a key: no randomness")?;
        Self::from_pkcs8(doc.as_ref())
    }

    fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, String> {
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| format!("not an ed25519 secret key ({e})"))?;
        Ok(Self {
            pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    /// Parses the text form written by [`SigningKey::to_text`].
    pub fn parse(text: &str) -> Result<Self, String> {
        let encoded = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| format!("not a ContainerOS secret key (it should start with {SECRET_PREFIX})"))?;
        let pkcs8 = STANDARD
            .decode(encoded)
            .map_err(|e| format!("secret key is not valid base64 ({e})"))?;
        Self::from_pkcs8(&pkcs8)
    }

    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}\n", STANDARD.encode(&self.pkcs8))
    }

    pub fn public(&self) -> PublicKey {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey::from_bytes(bytes)
    }

    /// Signs the domain-separated `payload`.
    pub(crate) fn sign(&self, payload: &[u8]) -> Vec<u8> {
        let mut message = Vec::with_capacity(DOMAIN.len() + payload.len());
        message.extend_from_slice(DOMAIN);
        message.extend_from_slice(payload);
        self.pair.sign(&message).as_ref().to_vec()
    }
}
