//! `containeros release ...`: the host-side half of release trust. Keys are
//! made and manifests signed on the publisher's machine; devices only ever
//! hold public keys.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use containeros_trust::{Checks, Envelope, Manifest, PublicKey, SigningKey};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Generate a signing key pair: the secret key file (mode 0600, never
    /// leaves the publisher) and the public key to put in devices' update.trusted_keys.
    Keygen {
        /// Where to write the secret key; refused if it exists.
        #[arg(long, value_name = "FILE")]
        secret: PathBuf,
        /// Where to write the public key (also printed).
        #[arg(long, value_name = "FILE")]
        public: Option<PathBuf>,
    },
    /// Sign a manifest (JSON) into a release envelope, or add a signature to
    /// an existing envelope (co-signing with a new key during a rotation).
    Sign {
        /// The secret key file from `keygen`.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// A manifest JSON file, or an envelope to co-sign.
        input: PathBuf,
        /// Where to write the envelope.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Check an envelope as a device would: signature by one of the given
    /// public keys, format and expiry (against this machine's clock).
    Verify {
        /// A trusted public key (base64); repeat for several.
        #[arg(long = "key", value_name = "BASE64", required = true)]
        keys: Vec<String>,
        /// The release envelope.
        envelope: PathBuf,
    },
}

pub fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Keygen { secret, public } => keygen(&secret, public.as_deref()),
        Command::Sign { key, input, output } => sign(&key, &input, &output),
        Command::Verify { keys, envelope } => verify(&keys, &envelope),
    }
}

fn keygen(secret: &Path, public: Option<&Path>) -> Result<(), String> {
    let key = SigningKey::generate()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(secret)
        .map_err(|e| format!("cannot create secret key file {}: {e}", secret.display()))?;
    file.write_all(key.to_text().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", secret.display()))?;
    let public_text = format!("{}\n", key.public());
    if let Some(path) = public {
        std::fs::write(path, &public_text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    println!("key id {}", key.public().id());
    print!("public key (for update.trusted_keys): {public_text}");
    Ok(())
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn sign(key_path: &Path, input: &Path, output: &Path) -> Result<(), String> {
    let key = SigningKey::parse(&read(key_path)?).map_err(|e| format!("{}: {e}", key_path.display()))?;
    let text = read(input)?;
    let envelope = if let Ok(mut envelope) = serde_json::from_str::<Envelope>(&text) {
        envelope.add_signature(&key);
        envelope
    } else {
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| format!("{} is neither a manifest nor an envelope: {e}", input.display()))?;
        Envelope::sign(&manifest, &key)?
    };
    std::fs::write(output, envelope.to_json())
        .map_err(|e| format!("cannot write {}: {e}", output.display()))?;
    println!("signed with key {} -> {}", key.public().id(), output.display());
    Ok(())
}

fn verify(keys: &[String], envelope: &Path) -> Result<(), String> {
    let trusted = keys
        .iter()
        .map(|k| PublicKey::parse(k).map_err(|e| format!("--key {k}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = std::fs::read(envelope).map_err(|e| format!("cannot read {}: {e}", envelope.display()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| format!("this machine's clock is before 1970: {e}"))?
        .as_secs();
    let checks = Checks {
        now,
        installed_version: None,
        allow_downgrade: false,
    };
    let verified = containeros_trust::verify(&bytes, &trusted, &checks)
        .map_err(|e| format!("{}: {e}", envelope.display()))?;
    let m = &verified.manifest;
    println!(
        "valid: release {} (version {}, channel {}) signed by {}, expires at {}",
        m.name, m.version, m.channel, verified.signed_by, m.expires
    );
    Ok(())
}
